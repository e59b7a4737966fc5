//! The real `liqwatch` binary: CLI, stress command, end to end, its `/metrics`, and the deploy
//! files.

mod backtest;
mod cli;
mod deploy_files;
mod distance_warning;
mod docker_image;
mod e2e;
mod empty_account;
mod funding;
mod held_staleness;
mod idempotent_updates;
mod instruments_import;
mod instruments_refresh;
mod journal_cli;
mod journal_init;
mod margin_call;
mod metrics_exposition;
mod reload;
mod reload_feeds;
mod risk_cli;
mod stress;
mod stress_extremes;
mod stress_funding;
