//! The risk page's per-account history in the journal (schema version 3): downsampled risk
//! points per account, so the drill-down chart survives a restart, and the index that serves one
//! account's events (`GET /v1/accounts/{id}/events`) without scanning the journal.
//!
//! The journal stores each point as opaque JSON keyed by `(account_id, t_ms)`; what a point
//! holds is the API's business (`crate::api::HistoryPoint`), as accounts are opaque JSON here.
//! Everything here is derived data: it is bounded three ways ([`HistoryBounds`]: points per
//! account, age, total rows), written in batches off the engine's path by the daemon's history
//! task, and its commits are not fsynced on their own (a power loss can only lose the last
//! batch of points, never an event).

use super::*;

/// The v3 tables (idempotent: run on every open, like the v1 and v2 DDL).
pub(super) const SCHEMA_V3_HISTORY: &str = "
CREATE TABLE IF NOT EXISTS history_points (
    account_id TEXT NOT NULL,
    t_ms       INTEGER NOT NULL,
    json       TEXT NOT NULL,
    PRIMARY KEY (account_id, t_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS history_points_time ON history_points(t_ms);
CREATE INDEX IF NOT EXISTS events_account ON events(account_id, seq);
";

/// The fields of a journaled event that the risk page's accounts table shows
/// ([`Journal::last_account_event`]); every other field of the event is skipped unread.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct EventHead {
    /// What happened.
    pub kind: crate::model::EventKind,
    /// When it was detected, ms since the epoch.
    pub time_ms: crate::model::TimestampMs,
    /// The level crossed, if any (as [`crate::model::RiskEvent::level`]).
    #[serde(default)]
    pub level: Option<rust_decimal::Decimal>,
}

/// One stored history point of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRow {
    /// The account.
    pub account_id: AccountId,
    /// When, ms since the epoch.
    pub t_ms: TimestampMs,
    /// The point, as the API encodes it.
    pub json: String,
}

/// How much history the journal keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryBounds {
    /// Newest points kept per account (older ones are deleted when a batch is written).
    pub max_points_per_account: usize,
    /// Points older than this are deleted by [`Journal::prune_history`].
    pub max_age: Duration,
    /// At most this many points in all; the oldest go first.
    pub max_total: usize,
}

impl Default for HistoryBounds {
    fn default() -> Self {
        HistoryBounds {
            max_points_per_account: 2_880,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_total: 500_000,
        }
    }
}

fn limit_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Journal {
    /// Writes a batch of points in one transaction (a point already stored at the same time is
    /// replaced), then trims each account in the batch to its newest
    /// `max_points_per_account`. Returns how many rows were written.
    pub fn write_history(
        &self,
        rows: &[HistoryRow],
        max_points_per_account: usize,
    ) -> Result<usize, JournalError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let mut w = self.writer.lock();
        let relax = self.synchronous == Synchronous::Full;
        if relax {
            // Derived data: ride on the next event commit's fsync (see `advance`).
            w.conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let result = (|| -> Result<usize, rusqlite::Error> {
            let tx = w.conn.transaction()?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO history_points(account_id, t_ms, json) VALUES (?1, ?2, ?3)
                     ON CONFLICT(account_id, t_ms) DO UPDATE SET json = excluded.json",
                )?;
                for r in rows {
                    ins.execute(params![r.account_id.as_str(), r.t_ms, r.json])?;
                }
                let mut trim = tx.prepare_cached(
                    "DELETE FROM history_points WHERE account_id = ?1 AND t_ms <= (
                       SELECT t_ms FROM history_points WHERE account_id = ?1
                       ORDER BY t_ms DESC LIMIT 1 OFFSET ?2)",
                )?;
                let mut seen = std::collections::HashSet::new();
                for r in rows {
                    if seen.insert(r.account_id.as_str()) {
                        trim.execute(params![
                            r.account_id.as_str(),
                            limit_of(max_points_per_account)
                        ])?;
                    }
                }
            }
            tx.commit()?;
            Ok(rows.len())
        })();
        if relax && let Err(error) = w.conn.pragma_update(None, "synchronous", "FULL") {
            tracing::error!(%error, "Cannot restore synchronous=FULL on the journal");
        }
        Ok(result?)
    }

    /// Deletes points older than `max_age` and, past `max_total`, the oldest ones. Returns how
    /// many rows were deleted.
    pub fn prune_history(&self, bounds: &HistoryBounds) -> Result<usize, JournalError> {
        let age_ms = i64::try_from(bounds.max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(age_ms);
        let w = self.writer.lock();
        let mut n = w
            .conn
            .execute("DELETE FROM history_points WHERE t_ms < ?1", [cutoff])?;
        let total: i64 = w
            .conn
            .query_row("SELECT COUNT(*) FROM history_points", [], |r| r.get(0))?;
        let excess = total.saturating_sub(limit_of(bounds.max_total));
        if excess > 0 {
            // The time of the oldest point that stays; everything before it goes.
            let keep_from: Option<i64> = w
                .conn
                .query_row(
                    "SELECT t_ms FROM history_points ORDER BY t_ms LIMIT 1 OFFSET ?1",
                    [excess],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(t) = keep_from {
                n += w
                    .conn
                    .execute("DELETE FROM history_points WHERE t_ms < ?1", [t])?;
            }
        }
        Ok(n)
    }

    /// The newest `max_total` stored points of the `max_accounts` accounts whose newest point
    /// is the most recent, ordered by account and time (for the daemon to restore its
    /// in-memory history at start, which keeps that many accounts: the others' points would
    /// only be read to be evicted again — a 1M-account cascade leaves 160,000 accounts here).
    pub fn load_history(
        &self,
        max_total: usize,
        max_accounts: usize,
    ) -> Result<Vec<HistoryRow>, JournalError> {
        let r = self.reader.lock();
        let mut st = r.prepare_cached(
            "SELECT account_id, t_ms, json FROM (
               SELECT account_id, t_ms, json FROM history_points
               WHERE account_id IN (
                 SELECT account_id FROM history_points
                 GROUP BY account_id ORDER BY MAX(t_ms) DESC, account_id LIMIT ?2)
               ORDER BY t_ms DESC LIMIT ?1)
             ORDER BY account_id, t_ms",
        )?;
        let rows = st
            .query_map([limit_of(max_total), limit_of(max_accounts)], |row| {
                Ok(HistoryRow {
                    account_id: AccountId::from(row.get::<_, String>(0)?),
                    t_ms: row.get(1)?,
                    json: row.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The newest committed event of `account` as the risk page shows it — its seq, kind,
    /// time and level — read without decoding the rest of the event (its snapshot and prices:
    /// most of its bytes). `None` when it has none; an unreadable row is
    /// [`JournalError::CorruptRow`].
    pub fn last_account_event(
        &self,
        account: &AccountId,
    ) -> Result<Option<(u64, EventHead)>, JournalError> {
        let r = self.reader.lock();
        let mut st = r.prepare_cached(
            "SELECT seq, json FROM events WHERE account_id = ?1 ORDER BY seq DESC LIMIT 1",
        )?;
        let row: Option<(i64, String)> = st
            .query_map([account.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?
            .next()
            .transpose()?;
        drop(st);
        drop(r);
        let Some((seq, json)) = row else {
            return Ok(None);
        };
        let seq = u64_of(seq);
        serde_json::from_str::<EventHead>(&json)
            .map(|head| Some((seq, head)))
            .map_err(|e| JournalError::CorruptRow {
                seq,
                reason: e.to_string(),
            })
    }

    /// Up to `limit` committed events of `account` with seq < `before_seq` (all when `None`),
    /// newest first. Served by the `events_account` index. Unreadable rows end the batch as in
    /// [`Journal::read_after`].
    pub fn account_events(
        &self,
        account: &AccountId,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, JournalError> {
        let before = before_seq.map(i64_of).unwrap_or(i64::MAX);
        let r = self.reader.lock();
        let mut st = r.prepare_cached(
            "SELECT seq, json FROM events WHERE account_id = ?1 AND seq < ?2
             ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows: Vec<(i64, String)> = st
            .query_map(params![account.as_str(), before, limit_of(limit)], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        drop(st);
        drop(r);
        decode_rows(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, t: i64) -> HistoryRow {
        HistoryRow {
            account_id: AccountId::from(id),
            t_ms: t,
            json: format!("{{\"t_ms\":{t}}}"),
        }
    }

    fn open() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let j = Journal::create(dir.path().join("j.sqlite")).unwrap_or_else(|e| panic!("{e}"));
        (dir, j)
    }

    /// A batch is written and trimmed per account to its newest points; a rewrite at the same
    /// time replaces; the points survive a reopen; a load takes the newest.
    #[test]
    fn write_trim_reload() {
        let (dir, j) = open();
        let now = now_ms();
        let rows: Vec<HistoryRow> = (0..10).map(|i| row("a", now - 10_000 + i)).collect();
        assert_eq!(j.write_history(&rows, 4).unwrap_or(0), 10);
        j.write_history(&[row("b", now), row("a", now - 1)], 4)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut replaced = row("b", now);
        replaced.json = "{\"again\":1}".into();
        j.write_history(&[replaced.clone()], 4)
            .unwrap_or_else(|e| panic!("{e}"));
        drop(j);
        let j = Journal::open(dir.path().join("j.sqlite")).unwrap_or_else(|e| panic!("{e}"));
        let got = j.load_history(100, 100).unwrap_or_else(|e| panic!("{e}"));
        let a: Vec<i64> = got
            .iter()
            .filter(|r| r.account_id.as_str() == "a")
            .map(|r| r.t_ms)
            .collect();
        assert_eq!(
            a,
            vec![
                now - 10_000 + 7,
                now - 10_000 + 8,
                now - 10_000 + 9,
                now - 1
            ]
        );
        assert_eq!(
            got.iter()
                .filter(|r| r.account_id.as_str() == "b")
                .cloned()
                .collect::<Vec<_>>(),
            vec![replaced]
        );
        // The newest `max_total` only.
        assert_eq!(j.load_history(2, 100).unwrap_or_default().len(), 2);
    }

    /// The store keeps `max_accounts` accounts: only theirs are read, those with the newest
    /// points, each with all of its points (within the total).
    #[test]
    fn load_reads_the_accounts_with_the_newest_points() {
        let (_dir, j) = open();
        let now = now_ms();
        let rows = vec![
            row("old", now - 5_000),
            row("old", now - 100),
            row("mid", now - 3_000),
            row("mid", now - 2_000),
            row("new", now - 4_000),
            row("new", now - 1_000),
        ];
        j.write_history(&rows, 100)
            .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<(String, i64)> = j
            .load_history(100, 2)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|r| (r.account_id.as_str().to_owned(), now - r.t_ms))
            .collect();
        // `old` has the newest point of all (100 ms ago) and `new` the next (1 s): `mid`'s
        // newest is 2 s old.
        assert_eq!(
            got,
            vec![
                ("new".to_owned(), 4_000),
                ("new".to_owned(), 1_000),
                ("old".to_owned(), 5_000),
                ("old".to_owned(), 100),
            ]
        );
        assert_eq!(j.load_history(100, 3).unwrap_or_default().len(), 6);
    }

    /// The head of an account's newest event — kind, time, level — and nothing for an account
    /// without events; a row that is not an event is an error, not a silent skip.
    #[test]
    fn last_account_event_is_the_head_of_the_newest() {
        let (_dir, j) = open();
        let mut first = crate::journal::tests::event("a", 1, 1_000);
        first.level = Some(rust_decimal::Decimal::new(8, 1));
        let mut second = crate::journal::tests::event("a", 2, 2_000);
        second.kind = crate::model::EventKind::LiquidationTrigger;
        second.level = Some(rust_decimal::Decimal::ONE);
        second.crossed_levels = vec![rust_decimal::Decimal::new(8, 1), rust_decimal::Decimal::ONE];
        let other = crate::journal::tests::event("b", 1, 3_000);
        let seqs = j
            .append(&[first, second, other], &[])
            .unwrap_or_else(|e| panic!("{e}"));
        let (Some(&a_seq), Some(&b_seq)) = (seqs.get(1), seqs.get(2)) else {
            panic!("{seqs:?}");
        };
        assert_eq!(
            j.last_account_event(&AccountId::from("a"))
                .unwrap_or_else(|e| panic!("{e}")),
            Some((
                a_seq,
                EventHead {
                    kind: crate::model::EventKind::LiquidationTrigger,
                    time_ms: 2_000,
                    level: Some(rust_decimal::Decimal::ONE),
                }
            ))
        );
        assert_eq!(
            j.last_account_event(&AccountId::from("b"))
                .unwrap_or_else(|e| panic!("{e}")),
            Some((
                b_seq,
                EventHead {
                    kind: crate::model::EventKind::LiquidationWarning,
                    time_ms: 3_000,
                    level: None,
                }
            ))
        );
        assert_eq!(
            j.last_account_event(&AccountId::from("c"))
                .unwrap_or_else(|e| panic!("{e}")),
            None
        );
        j.corrupt_account_events_for_tests("b");
        assert!(matches!(
            j.last_account_event(&AccountId::from("b")),
            Err(JournalError::CorruptRow { seq, .. }) if seq == b_seq
        ));
    }

    /// Pruning drops points past the age and, past the total, the oldest.
    #[test]
    fn prune_by_age_and_total() {
        let (_dir, j) = open();
        let now = now_ms();
        let mut rows = vec![row("old", now - 3_600_000)];
        rows.extend((0..6).map(|i| row(&format!("k{i}"), now - 60_000 + i)));
        j.write_history(&rows, 100)
            .unwrap_or_else(|e| panic!("{e}"));
        let bounds = HistoryBounds {
            max_points_per_account: 100,
            max_age: Duration::from_secs(600),
            max_total: 4,
        };
        assert_eq!(j.prune_history(&bounds).unwrap_or(0), 3);
        let left: Vec<String> = j
            .load_history(100, 100)
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.account_id.as_str().to_owned())
            .collect();
        assert_eq!(left, vec!["k2", "k3", "k4", "k5"]);
    }
}
