//! Keeps the risk page's per-account history in the journal: restores the in-memory
//! [`HistoryStore`] from it at start, then writes the points the store kept in batches every
//! [`HISTORY_WRITE_EVERY`] (and once more at shutdown) on tokio's blocking pool, and prunes the
//! table to its [`HistoryBounds`] every [`HISTORY_PRUNE_EVERY`]. The engine never waits for any
//! of it: the store queues points in memory and this task drains the queue.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::{HistoryPoint, HistoryStore, LastEvent};
use crate::journal::Journal;
use crate::journal::history::{HistoryBounds, HistoryRow};
use crate::model::AccountId;

/// How often kept points are written to the journal (a kill -9 loses at most this much).
pub(super) const HISTORY_WRITE_EVERY: Duration = Duration::from_secs(2);
/// One point per account per this long goes to the journal (plus every event's point): with
/// [`HistoryBounds`]' 2880 points per account, a day of history survives a restart.
pub(super) const HISTORY_PERSIST_SPACING_MS: i64 = 30_000;
/// How often the table is pruned to its bounds.
const HISTORY_PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Most rows written in one transaction (the journal's writer lock is held that long).
const MAX_BATCH: usize = 5_000;

/// Refills `history` from the journal (the newest points within the bounds, and each of those
/// accounts' last event) and turns on its queue for the journal. Returns how many points were read back; an unreadable point is
/// skipped with a warning (it is derived data, never worth refusing to start over).
pub(super) fn restore(journal: &Journal, history: &HistoryStore, bounds: &HistoryBounds) -> usize {
    history.persist(HISTORY_PERSIST_SPACING_MS);
    let rows = match journal.load_history(bounds.max_total) {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, "Cannot read the page's history back from the journal; the charts start empty");
            return 0;
        }
    };
    let mut restored = 0;
    let mut accounts: Vec<AccountId> = Vec::new();
    for r in rows {
        match serde_json::from_str::<HistoryPoint>(&r.json) {
            Ok(p) => {
                if accounts.last() != Some(&r.account_id) {
                    accounts.push(r.account_id.clone());
                }
                history.restore(&r.account_id, p);
                restored += 1;
            }
            Err(error) => {
                tracing::warn!(account = %r.account_id, t_ms = r.t_ms, %error, "Skipping an unreadable history point in the journal");
            }
        }
    }
    // The accounts table's "last event": every event point is in the history, so the accounts
    // with a history are the ones that can have one (one indexed read each).
    for id in &accounts {
        match journal.account_events(id, None, 1) {
            Ok(last) => {
                if let Some(e) = last.first() {
                    let event = LastEvent {
                        seq: e.seq,
                        kind: e.event.kind,
                        time_ms: e.event.time_ms,
                        level: e.event.level,
                    };
                    history.record_event(id, event, None);
                }
            }
            Err(error) => {
                tracing::warn!(account = %id, %error, "Cannot read the account's last event back from the journal");
            }
        }
    }
    tracing::info!(
        points = restored,
        accounts = accounts.len(),
        "Page history restored from the journal"
    );
    restored
}

/// Writes one batch of queued points; a failed write puts them back for the next round.
async fn write_batch(journal: &Arc<Journal>, history: &Arc<HistoryStore>, bounds: &HistoryBounds) {
    let mut batch = history.take_unsaved();
    while !batch.is_empty() {
        let rest = if batch.len() > MAX_BATCH {
            batch.split_off(MAX_BATCH)
        } else {
            Vec::new()
        };
        let rows: Vec<HistoryRow> = batch
            .iter()
            .filter_map(|(id, p)| {
                Some(HistoryRow {
                    account_id: id.clone(),
                    t_ms: p.t_ms,
                    json: serde_json::to_string(p).ok()?,
                })
            })
            .collect();
        let (j, per_account) = (Arc::clone(journal), bounds.max_points_per_account);
        let done = tokio::task::spawn_blocking(move || j.write_history(&rows, per_account)).await;
        match done {
            Ok(Ok(n)) => {
                metrics::counter!("liqwatch_history_points_written_total").increment(n as u64);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, points = batch.len(), "Cannot write the page's history to the journal; retrying");
                batch.extend(rest);
                history.requeue(batch);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "History write task failed");
                batch.extend(rest);
                history.requeue(batch);
                return;
            }
        }
        batch = rest;
    }
}

/// Writes the queued points every [`HISTORY_WRITE_EVERY`] and prunes every
/// [`HISTORY_PRUNE_EVERY`] until `cancel`, then writes what is left.
pub(super) async fn persist_history(
    journal: Arc<Journal>,
    history: Arc<HistoryStore>,
    bounds: HistoryBounds,
    cancel: CancellationToken,
) {
    let mut since_prune = HISTORY_PRUNE_EVERY; // prune once at start
    loop {
        if since_prune >= HISTORY_PRUNE_EVERY {
            since_prune = Duration::ZERO;
            let j = Arc::clone(&journal);
            match tokio::task::spawn_blocking(move || j.prune_history(&bounds)).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(pruned = n, "Page history pruned"),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "Page history prune failed"),
                Err(error) => tracing::warn!(%error, "Page history prune task failed"),
            }
        }
        let stop = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tokio::time::sleep(HISTORY_WRITE_EVERY) => false,
        };
        since_prune += HISTORY_WRITE_EVERY;
        write_batch(&journal, &history, &bounds).await;
        if stop {
            return;
        }
    }
}
