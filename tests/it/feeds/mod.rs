//! Price feeds: each venue adapter over a real loopback WebSocket through the generic driver,
//! the venues' protocols, replay, and parsers under fuzzing.

mod binance;
mod bybit;
mod driver;
mod fuzz;
mod protocol;
mod replay;
mod subscriptions;
