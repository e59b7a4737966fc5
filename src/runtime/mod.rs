//! What every long-lived part of the daemon shares: one [`Backoff`] policy,
//! task ownership ([`tasks::Tasks`]), secrets ([`secret::Secret`]) and telemetry (logging, signals,
//! the metrics recorder).

pub mod backoff; // jittered exponential backoff, used by every retry loop
pub mod memory; // process memory settings (transparent huge pages off)
pub mod secret; // secrets from the environment: redacted, compared in constant time
pub mod tasks; // one tracker for every task, named laggards on shutdown
pub mod telemetry; // tracing, signals, Prometheus recorder

pub use backoff::Backoff;
pub use secret::Secret;
pub use tasks::Tasks;
