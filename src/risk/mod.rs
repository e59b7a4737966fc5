//! Correlated risk from history: historical scenarios, VaR and expected shortfall of account
//! equity, the probability of liquidation and component ES (issue 13, parts 2 and 3).
//!
//! ```text
//!  price history (CSV ts,symbol,price · freqtrade candles · replay JSONL · embedded episodes)
//!        │ scenarios: symbol → underlying, overlapping windows over a horizon
//!        ▼
//!  ScenarioSet: N joint multipliers m = 1 + r per underlying (r exact, 8 places)
//!        │ var: full revaluation at P·m (equity and tiered MM, collateral included),
//!        │      linear terms folded into one line per underlying where that is exact
//!        ▼
//!  AccountRisk: VaR, ES (k = ⌈N·(1 − α)⌉), P(liquidation), component ES
//! ```
//!
//! The convention is margin-math §4.2's; `docs/risk.md` has a worked example. Every figure
//! comes from the margin model in [`crate::margin`] (there is no second margin model here); the
//! fast path in `linear.rs` is a compiled form of the same sums and is checked against the
//! full revaluation in the property tests.

pub mod episodes; // named episodes shipped in the binary (crash-2021-05-19:1h/4h/1d)
mod linear; // the exact i128 fast path: one line per underlying, tier walks for MM
pub mod scenarios; // history files → joint return windows over a horizon
pub mod schedule; // the daemon's [risk] schedule keys: recompute, recording, warning levels
pub mod store; // the daemon's latest result per account, ranked for the riskiest list
pub mod var; // VaR, ES, P(liquidation), component ES by full revaluation
pub mod warnings; // risk_warning levels: edge-triggered with hysteresis

pub use scenarios::{History, HistoryError, RETURN_SCALE, ScenarioSet, Window};
pub use var::{AccountRisk, Component, ComponentKind, RiskBook, RiskError, TailScenario};

#[cfg(test)]
mod tests;
