//! liqwatch's integration tests, in one binary (one link instead of one per file), with a
//! module per pipeline stage. Shared harnesses live in [`support`]: mock venues, a webhook
//! receiver, a NATS server, the sink contract, the daemon environment.
//!
//! Run one stage with a filter: `cargo test --test it feeds::` (or `sinks::webhook_`).
//!
//! Proptest keeps failing seeds for `tests/it/<stage>/<file>.rs` in
//! `tests/proptest-regressions/<stage>/<file>.txt` and replays them first: its default
//! `SourceParallel` persistence, which mirrors the tree below the directory holding `main.rs`.
// Helpers outside `#[test]` fns unwrap too: a failure there should fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod api;
mod daemon;
mod engine;
mod feeds;
mod journal;
mod margin;
mod sinks;
mod sources;
