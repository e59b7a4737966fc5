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

/// How often kept points are written to the journal (a kill -9 loses at most this much).
pub(super) const HISTORY_WRITE_EVERY: Duration = Duration::from_secs(2);
/// One point per account per this long goes to the journal (plus every event's point): with
/// [`HistoryBounds`]' 2880 points per account, a day of history survives a restart.
pub(super) const HISTORY_PERSIST_SPACING_MS: i64 = 30_000;
/// How often the table is pruned to its bounds.
const HISTORY_PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Most rows written in one transaction (the journal's writer lock is held that long).
const MAX_BATCH: usize = 5_000;

/// Refills `history` from the journal — the newest points of the accounts it can keep
/// ([`HistoryStore::max_accounts`], those with the most recent points), then each kept
/// account's last event — and turns on its queue for the journal. Returns how many points were
/// read back; an unreadable point or event is skipped with a warning (it is derived data, never
/// worth refusing to start over).
///
/// Bounded by what the store keeps, not by what the journal holds: after a 1M-account cascade
/// the table has points of 160,000 accounts, and reading each one's last event (decoded whole)
/// held the start up for ~3 s at 1M — for accounts the store evicted at once.
pub(super) fn restore(journal: &Journal, history: &HistoryStore, bounds: &HistoryBounds) -> usize {
    history.persist(HISTORY_PERSIST_SPACING_MS);
    let rows = match journal.load_history(bounds.max_total, history.max_accounts()) {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, "Cannot read the page's history back from the journal; the charts start empty");
            return 0;
        }
    };
    let mut restored = 0;
    for r in rows {
        match serde_json::from_str::<HistoryPoint>(&r.json) {
            Ok(p) => {
                history.restore(&r.account_id, p);
                restored += 1;
            }
            Err(error) => {
                tracing::warn!(account = %r.account_id, t_ms = r.t_ms, %error, "Skipping an unreadable history point in the journal");
            }
        }
    }
    // The accounts table's "last event": every event point is in the history, so the accounts
    // with a history are the ones that can have one (one indexed read each, the event's head
    // only).
    let accounts = history.accounts();
    for id in &accounts {
        match journal.last_account_event(id) {
            Ok(Some((seq, head))) => {
                let event = LastEvent {
                    seq,
                    kind: head.kind,
                    time_ms: head.time_ms,
                    level: head.level,
                };
                history.record_event(id, event, None);
            }
            Ok(None) => {}
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

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;
    use crate::model::{AccountId, EventKind, MarginRatio, RiskEvent, TimestampMs};

    fn point(id: &str, t_ms: TimestampMs) -> HistoryRow {
        let p = HistoryPoint {
            t_ms,
            equity: Decimal::new(1000, 0),
            maintenance_margin: Decimal::new(10, 0),
            margin_ratio: MarginRatio::Finite(Decimal::new(1, 2)),
        };
        HistoryRow {
            account_id: AccountId::from(id),
            t_ms,
            json: serde_json::to_string(&p).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    fn event(id: &str, kind: EventKind, time_ms: TimestampMs, level: Decimal) -> RiskEvent {
        let mut e = crate::journal::tests::event(id, 1, time_ms);
        e.kind = kind;
        e.level = Some(level);
        e
    }

    /// A store that keeps two accounts gets back the two whose points are newest, with their
    /// points and each one's last event; the third account is not read into it.
    #[test]
    fn restore_fills_what_the_store_keeps() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let j = Journal::create(dir.path().join("j.sqlite")).unwrap_or_else(|e| panic!("{e}"));
        let now = crate::model::now_ms();
        let rows = [
            point("x", now - 9_000),
            point("y", now - 8_000),
            point("y", now - 3_000),
            point("z", now - 2_000),
        ];
        j.write_history(&rows, 100)
            .unwrap_or_else(|e| panic!("{e}"));
        let warn = Decimal::new(8, 1);
        let seqs = j
            .append(
                &[
                    event("x", EventKind::LiquidationWarning, now - 9_000, warn),
                    event("y", EventKind::LiquidationWarning, now - 8_000, warn),
                    event(
                        "y",
                        EventKind::LiquidationTrigger,
                        now - 3_000,
                        Decimal::ONE,
                    ),
                    event("z", EventKind::LiquidationWarning, now - 2_000, warn),
                ],
                &[],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let store = HistoryStore::new(2, 720, 1_000);
        let restored = restore(&j, &store, &HistoryBounds::default());
        let mut kept: Vec<String> = store
            .accounts()
            .into_iter()
            .map(|a| a.as_str().to_owned())
            .collect();
        kept.sort();
        assert_eq!(kept, ["y", "z"]);
        assert_eq!(restored, 3, "y's two points and z's one");
        assert_eq!(store.points(&AccountId::from("y")).len(), 2);
        assert_eq!(
            store.last_event(&AccountId::from("y")),
            Some(LastEvent {
                seq: seqs[2],
                kind: EventKind::LiquidationTrigger,
                time_ms: now - 3_000,
                level: Some(Decimal::ONE),
            })
        );
        assert_eq!(
            store.last_event(&AccountId::from("z")).map(|e| e.seq),
            Some(seqs[3])
        );
        assert_eq!(store.last_event(&AccountId::from("x")), None);

        // An unreadable event costs its account the "last event" (with a warning), nothing
        // else: the other accounts and every point are restored.
        j.corrupt_account_events_for_tests("y");
        let store = HistoryStore::new(2, 720, 1_000);
        assert_eq!(restore(&j, &store, &HistoryBounds::default()), 3);
        assert_eq!(store.points(&AccountId::from("y")).len(), 2);
        assert_eq!(store.last_event(&AccountId::from("y")), None);
        assert_eq!(
            store.last_event(&AccountId::from("z")).map(|e| e.seq),
            Some(seqs[3])
        );
    }
}
