//! The engine: account map, monitor and distance index under property tests and real threads,
//! and the event examples of docs/events.md.

mod after_trigger;
mod concurrency;
mod distance_doc;
pub mod distance_oracle;
mod events_doc;
mod exposure;
mod extremes;
mod funding_doc;
mod index_props;
mod props;
