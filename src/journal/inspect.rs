//! Read-only views of a journal for `liqwatch journal status | dead-letters | events`: what an
//! operator asks after an outage or a kill -9 — how many events, which sink is behind by how
//! much, which events were given up on and why — answered from the file alone, with or without
//! the daemon running (WAL readers do not block its writer) and without `sqlite3` on the host.
//!
//! The file is opened read-only, checked to be a liqwatch journal exactly as [`Journal::open`]
//! checks it, and never migrated or written: a journal of an older schema is read as it is
//! (the tables this reads are in every version).
//!
//! [`Journal::open`]: super::Journal::open

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

use super::{JournalError, check_dir, check_ours, classify_open_error};

/// What `liqwatch journal status` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JournalStatus {
    /// The file.
    pub path: String,
    /// Its size on disk, the WAL beside it included, in bytes.
    pub bytes: u64,
    /// `PRAGMA user_version`.
    pub schema_version: i64,
    /// Events retained.
    pub events: u64,
    /// The oldest retained event's seq (`null` when none is).
    pub first_seq: Option<u64>,
    /// The newest event's seq.
    pub last_seq: Option<u64>,
    /// The newest event's detection time, RFC 3339.
    pub last_event_time: Option<String>,
    /// Accounts in the store.
    pub accounts: u64,
    /// Accounts by their stored monitor state (`healthy`, `warning`, `triggered`): the state
    /// an account's last event left it in. An account that never had an event has none.
    pub states: std::collections::BTreeMap<String, u64>,
    /// Every sink with a cursor, by name.
    pub sinks: Vec<SinkStatus>,
    /// The daemon running on this journal, as its lock says (`liqwatch pid 4242 since …`);
    /// `null` when none is.
    pub daemon: Option<String>,
}

/// One sink's place in the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SinkStatus {
    /// The sink's name.
    pub sink: String,
    /// The last seq it is done with.
    pub cursor: u64,
    /// Events after its cursor: what it has still to deliver.
    pub lag: u64,
    /// Events it gave up on (see `journal dead-letters`).
    pub dead_letters: u64,
    /// When its cursor last moved, RFC 3339.
    pub updated: String,
}

/// One event a sink gave up on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetterRow {
    /// The sink.
    pub sink: String,
    /// The event's seq.
    pub seq: u64,
    /// The event's id.
    pub event_id: String,
    /// Why it was given up on.
    pub reason: String,
    /// When, RFC 3339.
    pub time: String,
    /// The event JSON as journaled.
    pub event: serde_json::Value,
}

/// Opens the journal at `path` read-only after the same checks as [`super::Journal::open`]: a
/// missing directory or file, an empty, foreign, corrupt or too-new file is an error.
pub fn open_read_only(path: &Path) -> Result<Connection, JournalError> {
    check_dir(path)?;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(JournalError::Missing {
                path: path.to_path_buf(),
            });
        }
        Err(e) => {
            return Err(JournalError::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
        Ok(m) if m.len() == 0 => {
            return Err(JournalError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => {}
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let conn = if Path::new(&wal).exists() {
        // The daemon is running, or was killed: read through its WAL and index.
        Connection::open_with_flags(path, flags)
    } else {
        // Closed cleanly, so everything is in the file. A plain read-only open of a WAL
        // database would create the `-wal` and `-shm` beside it — owned by whoever runs this
        // (root, say), which would then keep the service's own user from opening its journal.
        // `immutable` reads the file as it is and creates nothing.
        Connection::open_with_flags(
            format!("file:{}?immutable=1", uri_path(path)),
            flags | OpenFlags::SQLITE_OPEN_URI,
        )
    }
    .map_err(|e| classify_open_error(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| classify_open_error(path, e))?;
    check_ours(&conn, path)?;
    Ok(conn)
}

/// `path` as the path of an SQLite URI: `%`, `?` and `#` escaped (they would end or change it).
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// A count or seq as stored (SQLite integers are signed; ours are never negative).
fn u(x: i64) -> u64 {
    u64::try_from(x).unwrap_or(0)
}

fn q(path: &Path) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |e| classify_open_error(path, e)
}

/// The journal's counts, range and sinks.
pub fn status(path: &Path) -> Result<JournalStatus, JournalError> {
    let conn = open_read_only(path)?;
    let err = q(path);
    let schema_version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&err)?;
    let (events, first_seq, last_seq): (i64, Option<i64>, Option<i64>) = conn
        .query_row("SELECT COUNT(*), MIN(seq), MAX(seq) FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(&err)?;
    let (events, first_seq, last_seq) = (u(events), first_seq.map(u), last_seq.map(u));
    let last_event_time: Option<i64> = conn
        .query_row(
            "SELECT time_ms FROM events ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(&err)?;
    let accounts = u(conn
        .query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))
        .map_err(&err)?);
    let mut states: std::collections::BTreeMap<String, u64> = Default::default();
    {
        let mut stmt = conn
            .prepare("SELECT state FROM monitor_states")
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(&err)?;
        for s in rows {
            let s = s.map_err(&err)?;
            // The stored JSON of an `AccountState`: `{"state":"warning","level":"0.8"}`.
            let name = serde_json::from_str::<serde_json::Value>(&s)
                .ok()
                .and_then(|v| v.get("state").and_then(|x| x.as_str()).map(str::to_string))
                .unwrap_or_else(|| "unreadable".to_string());
            *states.entry(name).or_default() += 1;
        }
    }
    let last = last_seq.unwrap_or(0);
    let mut sinks = Vec::new();
    {
        let mut stmt = conn
            .prepare(
                "SELECT c.sink, c.seq, c.updated_ms,
                        (SELECT COUNT(*) FROM dead_letters d WHERE d.sink = c.sink)
                   FROM cursors c ORDER BY c.sink",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u(r.get(1)?),
                    r.get::<_, i64>(2)?,
                    u(r.get(3)?),
                ))
            })
            .map_err(&err)?;
        for row in rows {
            let (sink, cursor, updated_ms, dead_letters) = row.map_err(&err)?;
            sinks.push(SinkStatus {
                sink,
                cursor,
                lag: last.saturating_sub(cursor),
                dead_letters,
                updated: crate::model::format_rfc3339_ms(updated_ms),
            });
        }
    }
    let mut bytes = 0;
    for suffix in ["", "-wal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    }
    Ok(JournalStatus {
        path: path.display().to_string(),
        bytes,
        schema_version,
        events,
        first_seq,
        last_seq,
        last_event_time: last_event_time.map(crate::model::format_rfc3339_ms),
        accounts,
        states,
        sinks,
        daemon: super::lock::JournalLock::holder(path),
    })
}

/// Dead letters, oldest first, of one sink or all.
pub fn dead_letters(path: &Path, sink: Option<&str>) -> Result<Vec<DeadLetterRow>, JournalError> {
    let conn = open_read_only(path)?;
    let err = q(path);
    let mut stmt = conn
        .prepare(
            "SELECT sink, seq, event_id, reason, time_ms, json FROM dead_letters
              WHERE ?1 IS NULL OR sink = ?1 ORDER BY time_ms, sink, seq",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map(params![sink], |r| {
            Ok((
                r.get::<_, String>(0)?,
                u(r.get(1)?),
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(&err)?;
    let mut out = Vec::new();
    for row in rows {
        let (sink, seq, event_id, reason, time_ms, json) = row.map_err(&err)?;
        out.push(DeadLetterRow {
            sink,
            seq,
            event_id,
            reason,
            time: crate::model::format_rfc3339_ms(time_ms),
            // The copy is the journaled JSON; one that does not parse is shown as its text.
            event: serde_json::from_str(&json).unwrap_or(serde_json::Value::String(json)),
        });
    }
    Ok(out)
}

/// Calls `each` with the JSON of every retained event after `since` in journal order (of one
/// account when `account` is given), at most `limit`, until `each` returns false; returns how
/// many it was called with.
pub fn events(
    path: &Path,
    since: u64,
    account: Option<&str>,
    limit: Option<u64>,
    mut each: impl FnMut(&str) -> bool,
) -> Result<u64, JournalError> {
    let conn = open_read_only(path)?;
    let err = q(path);
    let mut stmt = conn
        .prepare(
            "SELECT json FROM events WHERE seq > ?1 AND (?2 IS NULL OR account_id = ?2)
              ORDER BY seq LIMIT ?3",
        )
        .map_err(&err)?;
    let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let mut rows = stmt.query(params![since, account, limit]).map_err(&err)?;
    let mut n = 0;
    while let Some(row) = rows.next().map_err(&err)? {
        let json: String = row.get(0).map_err(&err)?;
        n += 1;
        if !each(&json) {
            break;
        }
    }
    Ok(n)
}
