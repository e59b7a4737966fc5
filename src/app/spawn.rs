//! Spawning the sources and the sinks: one feed task per configured venue or replay, one
//! delivery driver per sink, and the NATS account consumer (reconnecting with the one
//! [`Backoff`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::AppError;
use super::sinkset::SinkSet;
use crate::config::{Config, FeedSource};
use crate::feeds::{FeedRegistry, replay};
use crate::journal::Journal;
use crate::model::{Instrument, now_ms};
use crate::prices::PriceBoard;
use crate::runtime::{Backoff, Tasks};
use crate::sinks::{Sink, SinkFilter};
use crate::sources::{AccountWriter, NatsIngest, NatsIngestConfig};

/// The replay feeds started: one token each, cancelled when its file has been played, and the
/// ticks they replayed.
pub(super) struct Replays {
    pub done: Vec<CancellationToken>,
    pub ticks: Arc<AtomicU64>,
}

/// Spawns a delivery driver for every configured sink and every extra one (the demo's printer),
/// each under its own child of `stop`. They stop on `stop`, after draining what is journaled
/// for up to the grace period.
pub(super) fn sinks(
    cfg: &Config,
    journal: &Arc<Journal>,
    extra: Vec<(Box<dyn Sink>, SinkFilter)>,
    stop: &CancellationToken,
) -> Result<SinkSet, AppError> {
    let set = SinkSet::default();
    for entry in &cfg.sinks {
        let sink = entry
            .build()
            .map_err(|e| AppError::Startup(e.to_string()))?;
        set.start(sink, Some(entry), cfg, journal, stop, entry.filter.clone());
    }
    for (sink, filter) in extra {
        set.start(sink, None, cfg, journal, stop, filter);
    }
    Ok(set)
}

/// Spawns one task per configured feed into `tasks`, each registered in `registry` before this
/// returns (so `/v1/feeds` lists them at once). Replay feeds play their file into the board;
/// `replay_started` receives the wall-clock ms when the first one starts.
#[allow(clippy::too_many_arguments)]
pub(super) fn feeds(
    cfg: &Config,
    instruments: &[Instrument],
    board: &Arc<PriceBoard>,
    registry: &FeedRegistry,
    tasks: &Tasks,
    cancel: &CancellationToken,
    feeds_set: &super::feedset::FeedSet,
    mut replay_started: Option<oneshot::Sender<i64>>,
    clock: replay::ReplayClock,
) -> Result<Replays, AppError> {
    let mut replays = Replays {
        done: Vec::new(),
        ticks: Arc::new(AtomicU64::new(0)),
    };
    for entry in &cfg.feeds {
        let wanted = super::feedset::wanted(entry, instruments);
        match &entry.source {
            FeedSource::Venue(_) => {
                feeds_set
                    .start(entry, instruments)
                    .map_err(AppError::Startup)?;
            }
            FeedSource::Replay { file, speed } => {
                // Only the venues the recording holds: an instrument no line can price would
                // never be ready and would raise `feed_stale`. A file that cannot be read is
                // the replay task's error, as before.
                let only = match replay::recorded_venues(file) {
                    Ok(venues) => {
                        let routed = replay::routes_for(&wanted);
                        let mut absent: Vec<&str> = routed
                            .keys()
                            .filter(|v| !venues.contains(v))
                            .map(|v| v.as_str())
                            .collect();
                        absent.sort_unstable();
                        if !absent.is_empty() {
                            tracing::info!(
                                file = %file.display(),
                                absent = %absent.join(", "),
                                "Replay: instruments of venues with no line in the recording are not tracked"
                            );
                        }
                        Some(venues)
                    }
                    Err(_) => None,
                };
                // Registered now, so `/v1/feeds` lists the replayed venues from the start.
                let prepared = replay::prepare(&wanted, only.as_ref(), board, registry);
                if let Some(tx) = replay_started.take() {
                    let _ = tx.send(now_ms());
                }
                let (board, cancel, file, speed) =
                    (Arc::clone(board), cancel.clone(), file.clone(), *speed);
                let ticks = Arc::clone(&replays.ticks);
                let done = CancellationToken::new();
                replays.done.push(done.clone());
                tasks.spawn("feed replay", async move {
                    let opts = replay::ReplayOptions { speed, clock };
                    let r = replay::play_routed(&file, &opts, prepared, board, cancel).await;
                    done.cancel();
                    let stats = r.map_err(|e| e.to_string())?;
                    ticks.fetch_add(stats.ticks, Ordering::Relaxed);
                    Ok::<(), String>(())
                });
            }
        }
    }
    Ok(replays)
}

/// The NATS account consumer: connects (retrying with backoff until `cancel`), then consumes
/// until `cancel`.
pub(super) async fn nats_ingest(
    cfg: NatsIngestConfig,
    writer: Arc<dyn AccountWriter>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let ingest = loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = NatsIngest::connect(cfg.clone()) => r,
        };
        match attempt {
            Ok(i) => break i,
            Err(e) => {
                let delay = backoff.next_delay(None);
                tracing::warn!(error = %e, retry_in = ?delay, "NATS account ingest cannot connect; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    ingest.run(writer, cancel).await;
    Ok(())
}
