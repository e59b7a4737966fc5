//! Harnesses shared by the integration tests (and, through `#[path]`, by some benches).
// Not every test uses every helper of a harness.
#![allow(dead_code)]

pub mod api_backend;
pub mod daemon_env;
pub mod engine_fixtures;
pub mod mock_more;
pub mod mock_venue;
pub mod nats_server;
pub mod sink_contract;
pub mod tools;
pub mod webhook_receiver;
