//! liqwatch — a daemon that watches cross-margin accounts and warns before the whole portfolio
//! is liquidated.
//!
//! ```text
//!  exchange WebSockets ──PriceTick──▶ price board ──latest price──▶ account map (DashMap)
//!  (feeds::*)                         (prices)                      incremental revaluation
//!                                                                   (accounts, margin)
//!  account sources ──AccountUpdate──────────────────────────────▶  threshold monitor (monitor)
//!                                                                        │ RiskEvent
//!                                                                        ▼
//!                                                    event journal, SQLite WAL (journal)
//!                                                                        │ one cursor per sink
//!                                                     stdout · jsonl · webhook · NATS (sinks)
//! ```
//!
//! One line per module:
pub mod accounts; // account map over DashMap + instrument → holders index, incremental caches
pub mod api; // axum router: health, readiness, metrics, accounts, feeds, events
pub mod app; // wiring only: spawn, channels, supervision, shutdown order
pub mod config; // TOML config: raw serde structs → validated Config, all errors at once
pub mod demo; // `liqwatch demo`: replayed crash, sample accounts, readable event lines
pub mod distance; // distance index: wakes only the accounts a price move can change
pub mod feeds; // Feed trait, generic socket driver, one adapter per venue
pub mod ingest; // account sources: update validation, AccountWriter, NATS JetStream consumer
pub mod inputs; // instrument preset and account snapshot files, with file/line/field errors
pub mod journal; // SQLite event journal, sink cursors, monitor state, accounts store
pub mod margin; // pure Decimal margin model
pub mod model; // core types: Instrument, PriceTick, Account, RiskSnapshot, RiskEvent
pub mod monitor; // thresholds, hysteresis, event creation
pub mod prices; // price board: latest per instrument and venue, composite, staleness, sanity
pub mod sinks; // Sink trait, generic delivery driver, stdout/jsonl/webhook/nats
pub mod stress; // `liqwatch stress`: scenario shocks over accounts from files
