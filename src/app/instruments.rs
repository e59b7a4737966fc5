//! The instrument refresh tasks: one per `[[instruments.sources]]` entry with `urls`. Each
//! fetches the venue's responses every `every` (the first at once: the start-up files may be
//! old), and hands every good set that differs from the last one to the engine task, which
//! replaces the changed terms ([`Engine::replace_instruments`](crate::engine::Engine::replace_instruments))
//! and journals what it returns. A slow, failing or malformed response keeps the terms in force
//! and says so in `/readyz` (`instruments`) and in the metrics.
//!
//! Metrics: `liqwatch_instruments_refresh_total{venue, outcome}` (the refresher),
//! `liqwatch_instruments_last_success_timestamp_seconds{venue}`,
//! `liqwatch_instruments_changed_total{venue}`.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::runner::EngineRequest;
use crate::instruments::refresh::{InstrumentSet, Refresher};
use crate::instruments::source::{InstrumentHealth, InstrumentSourceConfig};
use crate::model::{Instrument, now_ms};

/// What the engine did with a refreshed set.
#[derive(Debug, Default)]
pub(crate) struct InstrumentsApplied {
    /// Instruments whose terms were replaced.
    pub changed: usize,
    /// Account events the re-evaluation fired.
    pub account_events: usize,
    /// Definitions refused, with why.
    pub refused: Vec<String>,
    /// Definitions of instruments the daemon was not started with.
    pub not_configured: usize,
}

/// Runs source `index`'s refresh loop until `cancel`.
pub(crate) async fn refresh_source(
    index: usize,
    cfg: InstrumentSourceConfig,
    engine: mpsc::Sender<EngineRequest>,
    health: InstrumentHealth,
    cancel: CancellationToken,
) -> Result<(), String> {
    let venue = cfg.name();
    let mut refresher =
        Refresher::new(cfg.venue, cfg.urls.clone(), cfg.timeout).map_err(|e| e.to_string())?;
    let source = format!(
        "{venue} refresh from {}",
        cfg.urls
            .iter()
            .map(|u| u.url.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut last: Option<Arc<InstrumentSet>> = None;
    let mut tick = tokio::time::interval(cfg.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = refresher.refresh_once() => r,
        };
        let set = match result {
            Ok(set) => set,
            Err(e) => {
                // The refresher has logged and counted it; the terms in force stay.
                let status = refresher.status().clone();
                health.update(index, |h| {
                    h.last_error = Some(e.to_string());
                    h.consecutive_failures = status.consecutive_failures;
                });
                continue;
            }
        };
        let differs = last
            .as_ref()
            .is_none_or(|l| l.instruments != set.instruments);
        if differs {
            let mut defs: Vec<Instrument> = cfg.filter(set.instruments.values().cloned().collect());
            defs.sort_by(|a, b| a.id.cmp(&b.id));
            let (reply, rx) = oneshot::channel();
            let req = EngineRequest::Instruments {
                source: source.clone(),
                defs,
                reply,
            };
            if engine.send(req).await.is_err() {
                return Ok(()); // shutting down
            }
            let applied = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = rx => match r {
                    Ok(a) => a,
                    Err(_) => return Ok(()),
                },
            };
            if applied.changed > 0 {
                metrics::counter!("liqwatch_instruments_changed_total", "venue" => venue)
                    .increment(applied.changed as u64);
            }
            tracing::info!(
                venue,
                changed = applied.changed,
                account_events = applied.account_events,
                refused = applied.refused.len(),
                not_configured = applied.not_configured,
                "Instrument set refreshed"
            );
            health.update(index, |h| h.refused = applied.refused);
            last = Some(Arc::clone(&set));
        }
        let ms = set.fetched_ts;
        metrics::gauge!("liqwatch_instruments_last_success_timestamp_seconds", "venue" => venue)
            .set(ms as f64 / 1000.0);
        health.update(index, |h| {
            h.last_success_ms = ms;
            h.last_error = None;
            h.consecutive_failures = 0;
        });
    }
}

/// Registers each source's gauge at its start-up read time.
pub(crate) fn register(sources: &[InstrumentSourceConfig]) {
    let now = now_ms() as f64 / 1000.0;
    for s in sources {
        metrics::gauge!("liqwatch_instruments_last_success_timestamp_seconds", "venue" => s.name())
            .set(now);
        metrics::counter!("liqwatch_instruments_changed_total", "venue" => s.name()).increment(0);
        for outcome in ["ok", "fetch_failed", "malformed"] {
            metrics::counter!("liqwatch_instruments_refresh_total", "venue" => s.name(), "outcome" => outcome)
                .increment(0);
        }
    }
}
