//! What every long-lived part of the daemon shares: one [`Backoff`](backoff::Backoff) policy,
//! task ownership ([`tasks::Tasks`]) and telemetry (logging, signals, the metrics recorder).

pub mod backoff; // jittered exponential backoff, used by every retry loop
pub mod tasks; // one tracker for every task, named laggards on shutdown
pub mod telemetry; // tracing, signals, Prometheus recorder

pub use backoff::Backoff;
pub use tasks::Tasks;
