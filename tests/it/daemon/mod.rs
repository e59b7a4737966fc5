//! The real `liqwatch` binary: CLI, stress command, end to end, its `/metrics`, and the deploy
//! files.

mod cli;
mod deploy_files;
mod e2e;
mod empty_account;
mod journal_init;
mod metrics_exposition;
mod risk_cli;
mod stress;
mod stress_extremes;
