//! Per-sink cursors, reads of the journal after a cursor or since a time, and dead letters: the
//! part of the journal that sinks and the API's history use.

use super::*;

impl Journal {
    /// Makes sure `sink` has a cursor; a new sink starts at 0 (everything retained). Returns
    /// the cursor.
    pub fn register_sink(&self, sink: &str) -> Result<u64, JournalError> {
        let w = self.writer.lock();
        w.conn.execute(
            "INSERT INTO cursors(sink, seq, updated_ms) VALUES (?1, 0, ?2) ON CONFLICT(sink) DO NOTHING",
            params![sink, now_ms()],
        )?;
        drop(w);
        self.cursor(sink)
    }

    /// Forgets a sink that is no longer configured, so it stops holding back retention.
    pub fn remove_sink(&self, sink: &str) -> Result<bool, JournalError> {
        let w = self.writer.lock();
        let n = w
            .conn
            .execute("DELETE FROM cursors WHERE sink = ?1", [sink])?;
        Ok(n > 0)
    }

    /// The sink's cursor: every event with seq ≤ cursor is done for it (0 when unknown).
    pub fn cursor(&self, sink: &str) -> Result<u64, JournalError> {
        let r = self.reader.lock();
        let v: Option<i64> = r
            .prepare_cached("SELECT seq FROM cursors WHERE sink = ?1")?
            .query_row([sink], |row| row.get(0))
            .optional()?;
        Ok(u64_of(v.unwrap_or(0)))
    }

    /// Moves the sink's cursor forward to `seq` (never backwards).
    ///
    /// The commit is not fsynced on its own (it rides on the next event commit's fsync): a
    /// power loss can only move a cursor back, which means a re-delivery, never a loss. This
    /// keeps sinks delivering busily from stealing fsyncs from the append path.
    pub fn advance(&self, sink: &str, seq: u64) -> Result<(), JournalError> {
        let w = self.writer.lock();
        let relax = self.synchronous == Synchronous::Full;
        if relax {
            w.conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        let result = w
            .conn
            .prepare_cached(
                "INSERT INTO cursors(sink, seq, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(sink) DO UPDATE SET seq = MAX(seq, excluded.seq), updated_ms = excluded.updated_ms",
            )
            .and_then(|mut st| st.execute(params![sink, i64_of(seq), now_ms()]));
        if relax {
            // Only an API misuse could make this fail; if it did, later commits would be
            // NORMAL, so say so loudly.
            if let Err(error) = w.conn.pragma_update(None, "synchronous", "FULL") {
                tracing::error!(%error, "Cannot restore synchronous=FULL on the journal");
            }
        }
        result?;
        Ok(())
    }

    /// How many committed events the sink has not finished.
    pub fn lag(&self, sink: &str) -> Result<u64, JournalError> {
        Ok(self.last_seq().saturating_sub(self.cursor(sink)?))
    }

    /// Up to `limit` committed events with seq > `after`, in journal order. The batch stops
    /// before an unreadable row; [`JournalError::CorruptRow`] is returned when the first row
    /// is unreadable (the driver dead-letters it).
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<JournalEntry>, JournalError> {
        let r = self.reader.lock();
        let mut st =
            r.prepare_cached("SELECT seq, json FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows: Vec<(i64, String)> = st
            .query_map(
                params![i64_of(after), i64::try_from(limit).unwrap_or(i64::MAX)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?
            .collect::<Result<_, _>>()?;
        drop(st);
        drop(r);
        decode_rows(rows)
    }

    /// Up to `limit` committed events from `since`, in journal order (the API's history).
    pub fn events_since(
        &self,
        since: Since,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, JournalError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let r = self.reader.lock();
        let rows: Vec<(i64, String)> = match since {
            Since::Seq(s) => {
                let mut st = r.prepare_cached(
                    "SELECT seq, json FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                st.query_map(params![i64_of(s), limit], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<Result<_, _>>()?
            }
            Since::TimeMs(t) => {
                let mut st = r.prepare_cached(
                    "SELECT seq, json FROM events WHERE seq >= COALESCE(
                        (SELECT MIN(seq) FROM events WHERE time_ms >= ?1), 9223372036854775807)
                     ORDER BY seq LIMIT ?2",
                )?;
                st.query_map(params![t, limit], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<Result<_, _>>()?
            }
        };
        drop(r);
        decode_rows(rows)
    }

    /// Records that `sink` gave up on event `seq` for `reason`, and moves its cursor past it,
    /// in one transaction.
    pub fn dead_letter(&self, sink: &str, seq: u64, reason: &str) -> Result<(), JournalError> {
        let mut w = self.writer.lock();
        let tx = w.conn.transaction()?;
        let row: Option<(String, String)> = tx
            .query_row(
                "SELECT event_id, json FROM events WHERE seq = ?1",
                [i64_of(seq)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (event_id, json) = row.unwrap_or_else(|| (String::new(), String::new()));
        let now = now_ms();
        tx.execute(
            "INSERT INTO dead_letters(sink, seq, event_id, reason, time_ms, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(sink, seq) DO UPDATE SET reason = excluded.reason, time_ms = excluded.time_ms",
            params![sink, i64_of(seq), event_id, reason, now, json],
        )?;
        tx.execute(
            "INSERT INTO cursors(sink, seq, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(sink) DO UPDATE SET seq = MAX(seq, excluded.seq), updated_ms = excluded.updated_ms",
            params![sink, i64_of(seq), now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The sink's dead letters, oldest first.
    pub fn dead_letters(&self, sink: &str) -> Result<Vec<DeadLetter>, JournalError> {
        let r = self.reader.lock();
        let mut st = r.prepare_cached(
            "SELECT sink, seq, event_id, reason, time_ms, json FROM dead_letters WHERE sink = ?1 ORDER BY seq",
        )?;
        let rows = st
            .query_map([sink], |row| {
                Ok(DeadLetter {
                    sink: row.get(0)?,
                    seq: u64_of(row.get(1)?),
                    event_id: row.get(2)?,
                    reason: row.get(3)?,
                    time_ms: row.get(4)?,
                    json: row.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Forgets the sink's dead letter of `seq` (it was redelivered); false when there was none.
    pub fn remove_dead_letter(&self, sink: &str, seq: u64) -> Result<bool, JournalError> {
        let w = self.writer.lock();
        let n = w.conn.execute(
            "DELETE FROM dead_letters WHERE sink = ?1 AND seq = ?2",
            params![sink, i64_of(seq)],
        )?;
        Ok(n == 1)
    }
}
