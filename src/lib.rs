//! liqwatch — a daemon that watches cross-margin accounts and warns before the whole portfolio
//! is liquidated.
//!
//! The modules are named after the stages of the pipeline, and imports follow the data:
//!
//! ```text
//!  exchange WebSockets                          account sources (sources)
//!  (feeds: binance-usdm, bybit, okx,            snapshot file · HTTP API · NATS JetStream
//!   deribit, hyperliquid, replay)                       │ AccountUpdate (validated once)
//!        │ PriceTick                                    ▼
//!        ▼                                 ┌─────────────────────────────────────────┐
//!  ┌──────────────┐  latest price per      │ engine::Engine — one synchronous step    │
//!  │ price board  │──instrument, coalesced─▶│  map: accounts + instrument → holders    │
//!  │ (prices)     │  never blocks a feed   │  index: wakes only accounts a move can   │
//!  │ staleness,   │                        │         carry across a level             │
//!  │ sanity holds │                        │  monitor: levels, hysteresis, events     │
//!  └──────────────┘                        │  margin: exact Decimal (+ i128 fast path)│
//!                                          └───────────────────┬─────────────────────┘
//!                                                              │ RiskEvent
//!                                                              ▼
//!                                          journal: SQLite WAL, durable before anyone is told
//!                                                              │ one cursor per sink
//!                                 sinks: stdout · jsonl · webhook (generic, Slack, Discord,
//!                                        PagerDuty) · NATS JetStream
//! ```
//!
//! Beside the pipeline: `api` (HTTP: health, readiness, metrics, accounts, feeds, events, the
//! live risk page), `config` (composes each component's own config type), `backtest` (replay →
//! engine in recorded time → report and charts), `cli` (run, demo, stress, risk, backtest,
//! instruments, check-config), `risk` (historical scenarios, VaR/ES, P(liquidation) on the
//! margin model), `runtime` (backoff, task tracking, telemetry) and `app` (wiring only).

pub mod api; // axum router: health, readiness, metrics, accounts, feeds, events, risk page
pub mod app; // wiring only: spawn, channels, supervision, shutdown order
pub mod backtest; // deterministic backtests: replay → engine in recorded time → report, SVG charts
pub mod cli; // commands other than the daemon: demo, stress, backtest, check-config
pub mod config; // TOML config: raw serde structs → validated Config, all errors at once
pub mod engine; // the one synchronous engine: account map, monitor, distance index
pub mod feeds; // Feed trait, generic socket driver, one adapter per venue, replay
pub mod instruments; // venue REST responses (brackets, margin tables) → instrument presets
pub mod journal; // SQLite event journal, sink cursors, monitor state, accounts store
pub mod margin; // pure Decimal margin model
pub mod model; // core types: Instrument, PriceTick, Account, RiskSnapshot, RiskEvent
pub mod prices; // price board: latest per instrument and venue, composite, staleness, sanity
pub mod risk; // historical scenarios, VaR/ES, P(liquidation), component ES; shipped episodes
pub mod runtime; // backoff, task tracking, signals, logging and metrics set-up
pub mod sinks; // Sink trait, generic delivery driver, stdout/jsonl/webhook/nats
pub mod sources; // account input: validation, files, the HTTP/NATS writer contract
mod venues; // the venue table, read by `model` (the Venue enum) and `feeds` (the adapters)
