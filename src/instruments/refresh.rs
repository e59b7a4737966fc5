//! Live refresh of instrument sets from configurable URLs (the venues' REST endpoints, or a
//! proxy that signs Binance's `USER_DATA` brackets request), keeping the last good set.
//!
//! One [`Refresher`] per venue: each refresh fetches every URL of the source (with a timeout),
//! runs the venue's importer over the bodies and, only if every step succeeds, replaces the
//! current set. A slow, failing (non-2xx) or malformed response leaves the last good set in
//! place; [`RefreshStatus`] says what happened (for readiness) and the counters
//! `liqwatch_instruments_refresh_total{venue, outcome}` count it. [`changed_ids`] names the
//! instruments whose definition changed between two sets (what a holder revaluation needs).
//!
//! The daemon runs one per `[[instruments.sources]]` entry with URLs (`app/instruments.rs`),
//! and the engine applies each changed set (`Engine::replace_instruments`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{ImportError, ImportVenue, Input, import};
use crate::model::{Instrument, InstrumentId, TimestampMs, now_ms};

/// One URL to fetch: `GET url`, or `POST url` with a JSON body (Hyperliquid's `/info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshUrl {
    /// The URL.
    pub url: String,
    /// A JSON body to POST instead of a GET (`{"type":"meta"}`).
    pub post_json: Option<String>,
}

/// Why one refresh failed (the last good set is kept).
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Connect, timeout or body read failure (retriable).
    #[error("{url}: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A non-success HTTP status (retriable).
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The body is not a valid response of the venue's format.
    #[error("{0}")]
    Import(#[from] ImportError),
}

impl RefreshError {
    /// Fetch failures and non-success statuses may pass; a malformed body waits for the venue
    /// (or the URL) to change, but is retried on the next tick all the same.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, RefreshError::Import(_))
    }
}

/// A refreshed instrument set.
#[derive(Clone, Debug, PartialEq)]
pub struct InstrumentSet {
    /// The instruments by id.
    pub instruments: HashMap<InstrumentId, Instrument>,
    /// When it was fetched (ms).
    pub fetched_ts: TimestampMs,
}

/// What the last refreshes did, for readiness and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshStatus {
    /// When the current set was fetched, if there is one.
    pub last_success_ts: Option<TimestampMs>,
    /// The last failure's message, cleared by a success.
    pub last_error: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

/// Fetches one venue's responses and keeps the last good instrument set.
pub struct Refresher {
    venue: ImportVenue,
    urls: Vec<RefreshUrl>,
    client: reqwest::Client,
    current: Option<Arc<InstrumentSet>>,
    status: RefreshStatus,
}

impl Refresher {
    /// A refresher for `venue` over `urls`, each fetch bounded by `timeout`.
    pub fn new(
        venue: ImportVenue,
        urls: Vec<RefreshUrl>,
        timeout: Duration,
    ) -> Result<Refresher, RefreshError> {
        crate::sinks::webhook::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("liqwatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RefreshError::Fetch {
                url: String::new(),
                reason: e.to_string(),
            })?;
        Ok(Refresher {
            venue,
            urls,
            client,
            current: None,
            status: RefreshStatus::default(),
        })
    }

    /// The last good set, if any refresh has succeeded (or one was seeded).
    pub fn current(&self) -> Option<Arc<InstrumentSet>> {
        self.current.clone()
    }

    /// Seeds the set (e.g. from the preset files loaded at start-up).
    pub fn seed(&mut self, set: InstrumentSet) {
        self.current = Some(Arc::new(set));
    }

    /// The status of the last refreshes.
    pub fn status(&self) -> &RefreshStatus {
        &self.status
    }

    /// Ready when a set is held (fresh or last good).
    pub fn ready(&self) -> bool {
        self.current.is_some()
    }

    async fn fetch(&self, u: &RefreshUrl) -> Result<Input, RefreshError> {
        let req = match &u.post_json {
            Some(body) => self
                .client
                .post(&u.url)
                .header("content-type", "application/json")
                .body(body.clone()),
            None => self.client.get(&u.url),
        };
        let fetch_err = |e: reqwest::Error| RefreshError::Fetch {
            url: u.url.clone(),
            reason: if e.is_timeout() {
                "timed out".into()
            } else {
                e.to_string()
            },
        };
        let resp = req.send().await.map_err(fetch_err)?;
        if !resp.status().is_success() {
            return Err(RefreshError::Status {
                url: u.url.clone(),
                status: resp.status().as_u16(),
            });
        }
        let text = resp.text().await.map_err(fetch_err)?;
        Ok(Input {
            path: u.url.clone().into(),
            text,
        })
    }

    /// Fetches and imports once. On success the new set replaces the current one and is
    /// returned; on failure the current set is kept and the error returned.
    pub async fn refresh_once(&mut self) -> Result<Arc<InstrumentSet>, RefreshError> {
        let result = self.fetch_and_import().await;
        let outcome = match &result {
            Ok(set) => {
                self.current = Some(set.clone());
                self.status = RefreshStatus {
                    last_success_ts: Some(set.fetched_ts),
                    last_error: None,
                    consecutive_failures: 0,
                };
                "ok"
            }
            Err(e) => {
                self.status.last_error = Some(e.to_string());
                self.status.consecutive_failures =
                    self.status.consecutive_failures.saturating_add(1);
                tracing::warn!(venue = self.venue.as_str(), error = %e, "Instrument refresh failed; keeping the last good set");
                match e {
                    RefreshError::Import(_) => "malformed",
                    _ => "fetch_failed",
                }
            }
        };
        metrics::counter!("liqwatch_instruments_refresh_total", "venue" => self.venue.as_str(), "outcome" => outcome)
            .increment(1);
        result
    }

    async fn fetch_and_import(&self) -> Result<Arc<InstrumentSet>, RefreshError> {
        let mut inputs = Vec::with_capacity(self.urls.len());
        for u in &self.urls {
            inputs.push(self.fetch(u).await?);
        }
        let imported = import(self.venue, &inputs)?;
        Ok(Arc::new(InstrumentSet {
            instruments: imported
                .instruments
                .into_iter()
                .map(|i| (i.id.clone(), i))
                .collect(),
            fetched_ts: now_ms(),
        }))
    }
}

/// Refreshes now and then every `interval` until `cancel`, publishing each good set that
/// differs from the last on `tx` (a failure publishes nothing: subscribers keep the last good
/// set). Returns the refresher for its final status.
pub async fn run(
    mut refresher: Refresher,
    interval: Duration,
    cancel: tokio_util::sync::CancellationToken,
    tx: tokio::sync::watch::Sender<Option<Arc<InstrumentSet>>>,
) -> Refresher {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return refresher,
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return refresher,
            r = refresher.refresh_once() => r,
        };
        if let Ok(set) = result {
            tx.send_if_modified(|cur| {
                let changed = cur
                    .as_ref()
                    .is_none_or(|c| c.instruments != set.instruments);
                if changed {
                    *cur = Some(set.clone());
                }
                changed
            });
        }
    }
}

/// Ids whose definition differs between `old` and `new` (added, removed or changed), sorted.
pub fn changed_ids(old: &InstrumentSet, new: &InstrumentSet) -> Vec<InstrumentId> {
    let mut out: Vec<InstrumentId> = new
        .instruments
        .iter()
        .filter(|(id, i)| old.instruments.get(*id) != Some(*i))
        .map(|(id, _)| id.clone())
        .chain(
            old.instruments
                .keys()
                .filter(|id| !new.instruments.contains_key(*id))
                .cloned(),
        )
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests;
