//! Idempotent account input (design invariant 9): the ids of applied account updates, stored in
//! the same transaction as the account write they belong to, so a crash can neither apply an
//! update twice nor record an id whose update was lost.
//!
//! A key is looked up with [`Journal::seen_update`] before the update is applied; the account
//! write and the key commit together in [`Journal::store_account_update`]. Keys are kept for a
//! window ([`UpdateIdWindow`]: at most `max_ids` of them and none older than `max_age`); the
//! same transaction prunes what fell out of it, so the table never grows past the window.

use super::*;

/// Schema version 2 adds the `update_ids` table. Every journal gets it on open (`CREATE … IF NOT
/// EXISTS` in the open transaction that also stamps `user_version`).
pub(super) const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS update_ids (
    seq         INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,
    digest      TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    result      TEXT NOT NULL,
    recorded_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS update_ids_time ON update_ids(recorded_ms);
";

/// How long applied update ids are remembered: a repeat inside the window is recognised, one
/// after it is applied again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateIdWindow {
    /// At most this many ids are kept (the oldest go first).
    pub max_ids: u64,
    /// Ids older than this are forgotten.
    pub max_age: Duration,
}

impl Default for UpdateIdWindow {
    fn default() -> Self {
        UpdateIdWindow {
            max_ids: 100_000,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// What the journal remembers of an applied update id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenUpdate {
    /// Digest of the update the id was first used with (a repeat must carry the same update).
    pub digest: String,
    /// The account it changed.
    pub account_id: String,
    /// What applying it did (`created`, `updated`, `removed`).
    pub result: String,
    /// When it was applied, ms since the epoch.
    pub recorded_ms: TimestampMs,
}

/// The id to record with an account write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateIdRecord {
    /// The stored key (namespaced by the source: see `sources::UpdateKey`).
    pub key: String,
    /// Digest of the update.
    pub digest: String,
    /// What applying it did.
    pub result: String,
}

/// The account store change an update makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountWrite {
    /// Insert or replace the account (opaque JSON).
    Upsert {
        /// The account.
        account_id: AccountId,
        /// Its JSON.
        json: String,
    },
    /// Remove the account and its monitor state.
    Delete {
        /// The account.
        account_id: AccountId,
    },
}

impl Journal {
    /// The applied update recorded under `key`, if it is still inside the window.
    pub fn seen_update(
        &self,
        key: &str,
        window: &UpdateIdWindow,
    ) -> Result<Option<SeenUpdate>, JournalError> {
        let cutoff = cutoff_ms(window);
        let r = self.reader.lock();
        let row = r
            .prepare_cached(
                "SELECT digest, account_id, result, recorded_ms FROM update_ids
                 WHERE key = ?1 AND recorded_ms >= ?2",
            )?
            .query_row(params![key, cutoff], |row| {
                Ok(SeenUpdate {
                    digest: row.get(0)?,
                    account_id: row.get(1)?,
                    result: row.get(2)?,
                    recorded_ms: row.get(3)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    /// Writes the account change and, when given, the update's id in **one transaction**, then
    /// prunes ids outside `window` in the same transaction. Returns true when a deleted account
    /// existed (always true for an upsert). On error nothing was written.
    pub fn store_account_update(
        &self,
        write: &AccountWrite,
        id: Option<&UpdateIdRecord>,
        window: &UpdateIdWindow,
    ) -> Result<bool, JournalError> {
        let mut w = self.writer.lock();
        if let AccountWrite::Delete { account_id } = write {
            w.pending_states.retain(|(a, _)| a != account_id.as_str());
        }
        let now = now_ms();
        let tx = w.conn.transaction()?;
        let existed = match write {
            AccountWrite::Upsert { account_id, json } => {
                tx.prepare_cached(
                    "INSERT INTO accounts(account_id, json, updated_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT(account_id) DO UPDATE SET json = excluded.json, updated_ms = excluded.updated_ms",
                )?
                .execute(params![account_id.as_str(), json, now])?;
                true
            }
            AccountWrite::Delete { account_id } => {
                let n = tx.execute(
                    "DELETE FROM accounts WHERE account_id = ?1",
                    [account_id.as_str()],
                )?;
                tx.execute(
                    "DELETE FROM monitor_states WHERE account_id = ?1",
                    [account_id.as_str()],
                )?;
                n > 0
            }
        };
        if let Some(id) = id {
            let account_id = match write {
                AccountWrite::Upsert { account_id, .. } | AccountWrite::Delete { account_id } => {
                    account_id.as_str()
                }
            };
            // A key that fell out of the window (but is not pruned yet) is replaced.
            tx.prepare_cached("DELETE FROM update_ids WHERE key = ?1")?
                .execute([&id.key])?;
            tx.prepare_cached(
                "INSERT INTO update_ids(seq, key, digest, account_id, result, recorded_ms)
                 VALUES ((SELECT IFNULL(MAX(seq), 0) + 1 FROM update_ids), ?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![id.key, id.digest, account_id, id.result, now])?;
            prune_ids(&tx, window)?;
        }
        tx.commit()?;
        Ok(existed)
    }

    /// How many update ids are remembered now.
    pub fn update_id_count(&self) -> Result<u64, JournalError> {
        let r = self.reader.lock();
        let n: i64 = r.query_row("SELECT COUNT(*) FROM update_ids", [], |row| row.get(0))?;
        Ok(u64_of(n))
    }
}

fn cutoff_ms(window: &UpdateIdWindow) -> TimestampMs {
    let age = i64::try_from(window.max_age.as_millis()).unwrap_or(i64::MAX);
    now_ms().saturating_sub(age)
}

/// Deletes ids outside the window: older than `max_age`, or beyond the newest `max_ids`.
/// `seq` only grows, so the count bound is one range delete on the primary key.
fn prune_ids(tx: &rusqlite::Transaction<'_>, window: &UpdateIdWindow) -> rusqlite::Result<()> {
    let aged = tx
        .prepare_cached("DELETE FROM update_ids WHERE recorded_ms < ?1")?
        .execute([cutoff_ms(window)])?;
    let keep = i64::try_from(window.max_ids).unwrap_or(i64::MAX);
    let counted = tx
        .prepare_cached(
            "DELETE FROM update_ids WHERE seq <= (SELECT MAX(seq) FROM update_ids) - ?1",
        )?
        .execute([keep])?;
    let pruned = aged + counted;
    if pruned > 0 {
        metrics::counter!("liqwatch_ingest_update_ids_pruned_total").increment(pruned as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, digest: &str) -> UpdateIdRecord {
        UpdateIdRecord {
            key: key.to_string(),
            digest: digest.to_string(),
            result: "updated".to_string(),
        }
    }

    fn upsert(id: &str) -> AccountWrite {
        AccountWrite::Upsert {
            account_id: AccountId::from(id),
            json: format!(r#"{{"id":"{id}"}}"#),
        }
    }

    /// The id commits with the account write; a reopened journal still knows it.
    #[test]
    fn id_and_account_commit_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("j.sqlite");
        let window = UpdateIdWindow::default();
        {
            let j = Journal::create(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(j.seen_update("id:f1", &window).ok(), Some(None));
            j.store_account_update(&upsert("a"), Some(&record("id:f1", "d1")), &window)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let j = Journal::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let seen = j
            .seen_update("id:f1", &window)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the id was not kept"));
        assert_eq!(seen.digest, "d1");
        assert_eq!(seen.account_id, "a");
        assert_eq!(j.load_accounts().map(|a| a.len()).ok(), Some(1));
    }

    /// When the transaction fails (here: the account table is gone), neither the account nor
    /// the id is written.
    #[test]
    fn a_failed_write_records_no_id() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let j = Journal::create(dir.path().join("j.sqlite")).unwrap_or_else(|e| panic!("{e}"));
        let window = UpdateIdWindow::default();
        j.writer
            .lock()
            .conn
            .execute_batch("DROP TABLE accounts")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            j.store_account_update(&upsert("a"), Some(&record("id:f1", "d1")), &window)
                .is_err()
        );
        assert_eq!(j.seen_update("id:f1", &window).ok(), Some(None));
        assert_eq!(j.update_id_count().ok(), Some(0));
    }

    /// The window keeps at most `max_ids` (the newest), and an id older than `max_age` is
    /// neither reported nor kept.
    #[test]
    fn window_prunes_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let j = Journal::create(dir.path().join("j.sqlite")).unwrap_or_else(|e| panic!("{e}"));
        let window = UpdateIdWindow {
            max_ids: 3,
            max_age: Duration::from_secs(3600),
        };
        for i in 0..10 {
            j.store_account_update(&upsert("a"), Some(&record(&format!("k{i}"), "d")), &window)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(j.update_id_count().ok(), Some(3));
        assert_eq!(j.seen_update("k6", &window).ok(), Some(None));
        assert!(matches!(j.seen_update("k7", &window), Ok(Some(_))));
        // Age: backdate one id past the window.
        j.writer
            .lock()
            .conn
            .execute("UPDATE update_ids SET recorded_ms = 0 WHERE key = 'k9'", [])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(j.seen_update("k9", &window).ok(), Some(None));
        j.store_account_update(&upsert("a"), Some(&record("k10", "d")), &window)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(j.seen_update("k9", &window).ok(), Some(None));
        assert_eq!(j.update_id_count().ok(), Some(2));
        // A forgotten key can be used again.
        j.store_account_update(&upsert("a"), Some(&record("k9", "d2")), &window)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            j.seen_update("k9", &window)
                .ok()
                .flatten()
                .map(|s| s.digest),
            Some("d2".to_string())
        );
    }

    /// A journal written before schema 2 (no `update_ids` table, `user_version` 1) gains the
    /// table on open and keeps its accounts.
    #[test]
    fn schema_1_journal_is_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("j.sqlite");
        {
            let j = Journal::create(&path).unwrap_or_else(|e| panic!("{e}"));
            j.upsert_accounts(&[(AccountId::from("old"), r#"{"id":"old"}"#.to_string())])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        {
            let c = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
            c.execute_batch("DROP TABLE update_ids; PRAGMA user_version = 1;")
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let j = Journal::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let window = UpdateIdWindow::default();
        j.store_account_update(&upsert("new"), Some(&record("id:x", "d")), &window)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(j.update_id_count().ok(), Some(1));
        assert_eq!(j.load_accounts().map(|a| a.len()).ok(), Some(2));
        let version: i64 = j
            .reader
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(version, SCHEMA_VERSION);
    }
}
