//! Event sinks: the [`Sink`] trait and the one generic driver that delivers journaled events
//! from the sink's own cursor, in batches, with retry, backoff and metrics.
//!
//! Adding a sink = one file here implementing [`Sink`] that passes the shared sink contract test.

pub mod jsonl;
pub mod nats;
pub mod noise;
pub mod stdout;
pub mod webhook;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::model::RiskEvent;

/// One journaled event as a sink sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// Position in the journal (monotonic, gap-free per journal).
    pub seq: u64,
    /// The event.
    pub event: RiskEvent,
    /// The event's canonical JSON, exactly as journaled.
    pub json: String,
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying (network error, 5xx, 429, broker unavailable).
    #[error("retriable: {reason}")]
    Retriable {
        /// What went wrong.
        reason: String,
        /// The receiver asked us to wait this long (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Will never succeed (4xx other than 429, payload rejected): dead-letter the event.
    #[error("permanent: {reason}")]
    Permanent {
        /// What went wrong.
        reason: String,
    },
}

impl SinkError {
    /// True when the driver should retry.
    pub fn is_retriable(&self) -> bool {
        matches!(self, SinkError::Retriable { .. })
    }
}

/// A destination for events. Delivery is at least once: the driver calls [`Sink::deliver`] with
/// a batch in journal order and advances the sink's cursor past every entry reported done.
pub trait Sink: Send + 'static {
    /// The sink's configured name (used for its cursor, metrics and logs).
    fn name(&self) -> &str;

    /// Delivers `batch` in order. Returns how many leading entries were delivered; an error
    /// applies to the entry right after them.
    fn deliver<'a>(
        &'a mut self,
        batch: &'a [JournalEntry],
    ) -> BoxFuture<'a, (usize, Option<SinkError>)>;
}
