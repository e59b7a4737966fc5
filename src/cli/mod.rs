//! Commands other than the daemon itself (`liqwatch run` lives in [`crate::app`]): the demo,
//! `stress`, `risk`, and `check-config`.

pub mod backtest; // `liqwatch backtest`: replay through the engine in recorded time, report + charts
pub mod check; // `liqwatch check-config`: validate a config and the files it names
pub mod demo; // `liqwatch demo`: replayed crash, sample accounts, readable event lines
pub mod instruments; // `liqwatch instruments import`: venue REST responses → presets TOML
pub mod risk; // `liqwatch risk`: historical VaR, ES, P(liquidation), component ES
pub mod stress; // `liqwatch stress`: scenario shocks over accounts from files
pub mod stress_funding; // `liqwatch stress --funding`: next funding payment and ratio after it
