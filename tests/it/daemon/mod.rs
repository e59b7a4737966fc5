//! The real `liqwatch` binary: CLI, stress command, end to end, its `/metrics`, and the deploy
//! files.

mod cli;
mod deploy_files;
mod e2e;
mod empty_account;
mod held_staleness;
mod journal_init;
mod metrics_exposition;
mod stress;
mod stress_extremes;
