//! Schema 3, the daemon's scenario-risk state: the price samples it records (`[risk]
//! record_every`, kept for `record_keep`) so `history = ["recorded"]` can build scenarios from
//! the prices the engine actually used, and the per-account `risk_warning` states, committed in
//! the same transaction as the events that changed them so a restart never repeats one.
//!
//! The DDL is idempotent (`CREATE … IF NOT EXISTS`): it runs in the open transaction that
//! stamps `user_version`, beside any other schema-3 table, and migrating a version-2 journal
//! only adds these tables (every existing row stays).

use rust_decimal::Decimal;

use super::*;

/// Schema version 3: recorded prices and risk-warning states.
pub(super) const SCHEMA_V3_PRICES: &str = "
CREATE TABLE IF NOT EXISTS recorded_prices (
    instrument TEXT NOT NULL,
    time_ms    INTEGER NOT NULL,
    price      TEXT NOT NULL,
    PRIMARY KEY (instrument, time_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recorded_prices_time ON recorded_prices(time_ms);
CREATE TABLE IF NOT EXISTS risk_states (
    account_id TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// One recorded price sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedPrice {
    /// Canonical instrument id (`BTCUSDT-PERP`).
    pub instrument: String,
    /// When it was sampled, ms since the epoch.
    pub time_ms: TimestampMs,
    /// The engine's price then.
    pub price: Decimal,
}

/// Writes pending risk-warning states inside the flush transaction (`None` deletes the row).
pub(super) fn write_risk_states(
    tx: &rusqlite::Transaction<'_>,
    pending: &[(String, Option<String>)],
    now: TimestampMs,
) -> Result<(), rusqlite::Error> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut up = tx.prepare_cached(
        "INSERT INTO risk_states(account_id, state, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(account_id) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
    )?;
    let mut del = tx.prepare_cached("DELETE FROM risk_states WHERE account_id = ?1")?;
    for (a, s) in pending {
        match s {
            Some(s) => up.execute(params![a, s, now])?,
            None => del.execute([a])?,
        };
    }
    Ok(())
}

impl Journal {
    /// Records one sample per instrument at `time_ms` and forgets samples older than
    /// `keep_from_ms`, in one transaction. A sample already recorded at that time is kept.
    pub fn record_prices(
        &self,
        time_ms: TimestampMs,
        prices: &[(String, Decimal)],
        keep_from_ms: TimestampMs,
    ) -> Result<usize, JournalError> {
        let mut w = self.writer.lock();
        let tx = w.conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO recorded_prices(instrument, time_ms, price) VALUES (?1, ?2, ?3)
                 ON CONFLICT(instrument, time_ms) DO NOTHING",
            )?;
            for (i, p) in prices {
                ins.execute(params![i, time_ms, p.to_string()])?;
            }
            tx.execute(
                "DELETE FROM recorded_prices WHERE time_ms < ?1",
                [keep_from_ms],
            )?;
        }
        tx.commit()?;
        Ok(prices.len())
    }

    /// Every recorded sample at or after `since_ms`, by instrument then time. A row whose price
    /// does not parse is an error naming it (never skipped silently).
    pub fn recorded_prices(
        &self,
        since_ms: TimestampMs,
    ) -> Result<Vec<RecordedPrice>, JournalError> {
        let r = self.reader.lock();
        let mut st = r.prepare_cached(
            "SELECT instrument, time_ms, price FROM recorded_prices WHERE time_ms >= ?1
             ORDER BY instrument, time_ms",
        )?;
        let rows: Vec<(String, i64, String)> = st
            .query_map([since_ms], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(
                |(instrument, time_ms, text)| match text.parse::<Decimal>() {
                    Ok(price) => Ok(RecordedPrice {
                        instrument,
                        time_ms,
                        price,
                    }),
                    Err(e) => Err(JournalError::CorruptRow {
                        seq: u64::try_from(time_ms).unwrap_or(0),
                        reason: format!(
                            "recorded_prices row ({instrument}, {time_ms}): price {text:?}: {e}"
                        ),
                    }),
                },
            )
            .collect()
    }

    /// Commits `events` and the risk-warning `states` that go with them (`None`: back to
    /// clear) in one transaction, like [`Journal::append`] does for the monitor's states.
    pub fn append_risk(
        &self,
        events: &[RiskEvent],
        states: &[(AccountId, Option<String>)],
    ) -> Result<Vec<u64>, JournalError> {
        self.writer.lock().pending_risk.extend(
            states
                .iter()
                .map(|(a, s)| (a.as_str().to_owned(), s.clone())),
        );
        self.append(events, &[])
    }

    /// Every risk-warning state (committed, then any held in memory), by account.
    pub fn load_risk_states(&self) -> Result<Vec<(AccountId, String)>, JournalError> {
        let mut out: std::collections::BTreeMap<String, Option<String>> = {
            let r = self.reader.lock();
            let mut st = r.prepare_cached("SELECT account_id, state FROM risk_states")?;
            st.query_map([], |row| Ok((row.get(0)?, Some(row.get(1)?))))?
                .collect::<Result<_, _>>()?
        };
        for (a, s) in &self.writer.lock().pending_risk {
            out.insert(a.clone(), s.clone());
        }
        Ok(out
            .into_iter()
            .filter_map(|(a, s)| s.map(|s| (AccountId::from(a), s)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples round-trip, repeats at one time are kept once, old samples are pruned.
    #[test]
    fn record_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path().join("j.sqlite")).unwrap();
        let p = |s: &str| s.parse::<Decimal>().unwrap();
        j.record_prices(1_000, &[("BTCUSDT-PERP".into(), p("50000.5"))], 0)
            .unwrap();
        j.record_prices(2_000, &[("BTCUSDT-PERP".into(), p("49000"))], 0)
            .unwrap();
        j.record_prices(2_000, &[("BTCUSDT-PERP".into(), p("1"))], 0)
            .unwrap();
        let got = j.recorded_prices(0).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].price, p("49000"));
        j.record_prices(3_000, &[("ETHUSDT-PERP".into(), p("3000"))], 2_000)
            .unwrap();
        let got = j.recorded_prices(0).unwrap();
        assert_eq!(
            got.iter().map(|r| r.time_ms).collect::<Vec<_>>(),
            vec![2_000, 3_000]
        );
    }

    /// A version-2 journal migrates to 3 on open and keeps its events.
    #[test]
    fn migrates_from_v2_keeping_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        {
            let j = Journal::create(&path).unwrap();
            j.upsert_accounts(&[(AccountId::from("a"), "{}".into())])
                .unwrap();
        }
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TABLE recorded_prices; DROP TABLE risk_states; PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.load_accounts().unwrap().len(), 1);
        let v: i64 = j
            .reader
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 3);
        assert!(j.recorded_prices(0).unwrap().is_empty());
        j.append_risk(&[], &[(AccountId::from("a"), Some("{\"x\":1}".into()))])
            .unwrap();
        assert_eq!(j.load_risk_states().unwrap().len(), 1);
        j.append_risk(&[], &[(AccountId::from("a"), None)]).unwrap();
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert!(j.load_risk_states().unwrap().is_empty());
    }
}
