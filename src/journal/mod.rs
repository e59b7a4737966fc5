//! SQLite event journal: the durable record every event is committed to before any sink sees it,
//! plus the per-sink cursors, the dead-letter table, the monitor's per-account state and the
//! accounts store.
//!
//! # Durability
//!
//! The database runs in WAL mode. By default (`synchronous = full`) every [`Journal::append`]
//! commit is fsynced before it returns, so a committed event survives a process crash **and** a
//! power loss. With [`Synchronous::Normal`] a commit survives a process crash (SIGKILL, panic,
//! OOM kill) but a power loss or kernel crash may roll back the last few transactions; the
//! database stays consistent, and because events and monitor states commit in one transaction
//! they roll back together, so the restarted engine re-evaluates and re-emits what still holds
//! (with new event ids). We pick FULL as the default because a lost liquidation alert is the
//! worst failure of the product, and one fsync per *burst* (not per event) keeps it cheap.
//!
//! # Write failures
//!
//! A failing write at runtime (disk full, I/O error, file removed) never loses events: the burst
//! stays in memory in order, `liqwatch_journal_write_failing` goes to 1, an ERROR is logged, and
//! every later append (and [`Journal::spawn_flusher`]) retries the whole backlog first, so order
//! is kept. Sinks only ever see committed rows.
//!
//! # Never started afresh silently
//!
//! The journal holds accounts, monitor states and cursors, so losing it must never look like a
//! first start (design invariant 9). [`Journal::open_with`] only opens: a missing directory or
//! file, an empty file, another program's SQLite database (checked with `PRAGMA
//! application_id`, [`APPLICATION_ID`]) or a non-SQLite file is an error before anything
//! writes to it. [`Journal::create_with`] only creates, never over an existing file; the
//! binary calls it for `liqwatch journal init`, `run --init-journal` and the demo.
//!
//! The core is synchronous (rusqlite); async code uses [`JournalHandle`], which runs each call
//! on tokio's blocking pool.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::model::{AccountId, InstrumentId, RiskEvent, TimestampMs, now_ms};

/// One journaled event as a sink sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// Position in the journal (monotonic, gap-free per journal).
    pub seq: u64,
    /// The event.
    pub event: RiskEvent,
    /// The event's canonical JSON, exactly as journaled.
    pub json: String,
}

/// The schema version this build writes (`PRAGMA user_version`). Version 2 added the
/// `update_ids` table ([`update_ids`]), version 3 the risk page's history ([`history`]), the
/// recorded prices and the risk-warning states ([`prices`]); older journals are migrated on open.
pub const SCHEMA_VERSION: i64 = 3;

/// `PRAGMA application_id` of a liqwatch journal (`LQWJ`): it tells a journal from any other
/// SQLite file. Journals created before it was stamped (id 0, our schema version and tables) are
/// recognised and stamped on their next open.
pub const APPLICATION_ID: i32 = 0x4c51_574a;

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL,
    account_id   TEXT,
    time_ms      INTEGER NOT NULL,
    journaled_ms INTEGER NOT NULL,
    json         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events(time_ms);
CREATE TABLE IF NOT EXISTS monitor_states (
    account_id TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT PRIMARY KEY,
    json       TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    sink       TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    sink     TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    reason   TEXT NOT NULL,
    time_ms  INTEGER NOT NULL,
    json     TEXT NOT NULL,
    PRIMARY KEY (sink, seq)
);
";

/// Everything that can go wrong in the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal's directory does not exist. It is never created: a missing directory
    /// usually means a volume that is not mounted.
    #[error(
        "journal directory {dir} does not exist: create it (it should be persistent storage), then create the journal with `liqwatch journal init --config FILE`"
    )]
    MissingDir {
        /// The directory.
        dir: PathBuf,
    },
    /// There is no journal file. A new one is only ever created on request.
    #[error(
        "journal {path} does not exist: if this is the first start, create it with `liqwatch journal init --config FILE` (or `liqwatch run --init-journal`); otherwise restore it from a backup — starting afresh would lose accounts, monitor states and sink cursors"
    )]
    Missing {
        /// The journal path.
        path: PathBuf,
    },
    /// The journal file is empty (zero bytes): left untouched, never re-initialised.
    #[error(
        "journal {path} is empty (0 bytes), so its accounts, monitor states and sink cursors are gone: restore it from a backup, or remove it and run `liqwatch journal init --config FILE` to start afresh on purpose"
    )]
    Empty {
        /// The journal path.
        path: PathBuf,
    },
    /// `create` was asked for a file that already exists.
    #[error("journal {path} already exists; it was left unchanged")]
    Exists {
        /// The journal path.
        path: PathBuf,
    },
    /// An SQLite database that is not a liqwatch journal.
    #[error(
        "{path} is an SQLite database but not a liqwatch journal (application_id {application_id:#x}, user_version {user_version}): check `[journal] path`"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// Its `PRAGMA application_id`.
        application_id: i32,
        /// Its `PRAGMA user_version`.
        user_version: i64,
    },
    /// Another process (another liqwatch daemon) holds the journal's lock ([`lock`]).
    #[error(
        "journal {path} is in use by {holder}: two daemons on one journal would number events \
         over each other and deliver them twice; stop the other one, or give this one its own \
         [journal] path"
    )]
    InUse {
        /// The journal.
        path: PathBuf,
        /// Who holds it, as its lock file says (`liqwatch pid 1234 since …`).
        holder: String,
    },
    /// The file could not be inspected or created (permissions, I/O).
    #[error("cannot access journal {path}: {source}")]
    Io {
        /// The journal path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file could not be opened (permissions, I/O).
    #[error("cannot open journal {path}: {source} (check the directory exists and is writable)")]
    Open {
        /// The journal path.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file is not an SQLite database, or fails its integrity check.
    #[error(
        "journal {path} is corrupt or not a liqwatch journal: {detail} (move it aside and restore from a backup, or start with a new path)"
    )]
    Corrupt {
        /// The journal path.
        path: PathBuf,
        /// What SQLite reported.
        detail: String,
    },
    /// The file opened but cannot be written (read-only file or file system).
    #[error("journal {path} is not writable: {source}")]
    Unwritable {
        /// The journal path.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file was written by a newer liqwatch.
    #[error(
        "journal {path} has schema version {found}; this liqwatch supports up to {supported} (upgrade liqwatch)"
    )]
    SchemaTooNew {
        /// The journal path.
        path: PathBuf,
        /// Version found in the file.
        found: i64,
        /// Version this build writes.
        supported: i64,
    },
    /// The write failed; the events are held in memory (in order) and retried.
    #[error(
        "journal write failed, {buffered} events held in memory until it can write again: {source}"
    )]
    Buffered {
        /// Events now held in memory.
        buffered: usize,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// An event could not be encoded as JSON.
    #[error("cannot encode event {event_id}: {source}")]
    Encode {
        /// The event.
        event_id: uuid::Uuid,
        /// serde_json's error.
        source: serde_json::Error,
    },
    /// A journal row could not be decoded.
    #[error("journal row seq {seq} is unreadable: {reason}")]
    CorruptRow {
        /// The row.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// Any other SQLite error.
    #[error("journal database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A blocking task running a journal call panicked or was cancelled.
    #[error("journal task failed: {0}")]
    Task(String),
}

/// The SQLite `synchronous` setting (see the module docs for what each survives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// fsync on every commit: survives process crash and power loss.
    #[default]
    Full,
    /// fsync only at WAL checkpoints: survives process crash; power loss may lose the last
    /// commits (consistently: events and monitor states together).
    Normal,
}

/// How to open a journal.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// The SQLite `synchronous` setting.
    pub synchronous: Synchronous,
    /// Run `PRAGMA quick_check` on open (cost grows with the file; catches corruption early).
    pub verify_on_open: bool,
    /// How long a statement waits for a lock held by another connection.
    pub busy_timeout: Duration,
    /// The background checkpoint runs once the WAL holds this many pages
    /// ([`CHECKPOINT_PAGES`] by default).
    pub checkpoint_pages: u32,
    /// WAL pages past which the committing connection checkpoints itself ([`BACKSTOP_PAGES`]
    /// by default): the backstop should the background checkpoint fall behind.
    pub backstop_pages: u32,
}

/// WAL pages after which the background checkpoint runs (16 MiB with the journal's 16 KiB pages;
/// SQLite's own automatic checkpoint runs at 1,000). Once the WAL file has grown that far, later
/// rounds overwrite blocks the file already has, which is several times faster than extending
/// it (12 µs against 63 µs per 16 KiB page in the load generator's run). Checkpointing less often matters for latency,
/// not only for throughput: once a checkpoint has copied the whole WAL back, the next commit
/// starts the WAL over and, under `synchronous = normal`, fsyncs its header — so checkpointing
/// after every commit (as the journal did before) made every few small commits pay an fsync,
/// and the checkpoints' own fsyncs of the database file competed with the commits for the disk.
pub const CHECKPOINT_PAGES: u32 = 1_024;

/// WAL pages past which the committing connection checkpoints itself (SQLite's automatic
/// checkpoint, which the journal's WAL hook replaces): a backstop should the background
/// checkpoint fall behind (readers holding old snapshots, a stuck thread).
pub const BACKSTOP_PAGES: u32 = 65_536;

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            verify_on_open: true,
            busy_timeout: Duration::from_secs(5),
            checkpoint_pages: CHECKPOINT_PAGES,
            backstop_pages: BACKSTOP_PAGES,
        }
    }
}

/// Where [`Journal::events_since`] starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// Events with a journal seq greater than this.
    Seq(u64),
    /// Events detected at or after this time (ms since the epoch).
    TimeMs(TimestampMs),
}

/// A dead-lettered event: one sink gave up on it permanently.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The sink.
    pub sink: String,
    /// Journal seq of the event.
    pub seq: u64,
    /// The event id.
    pub event_id: String,
    /// Why the sink rejected it.
    pub reason: String,
    /// When it was dead-lettered (ms since the epoch).
    pub time_ms: TimestampMs,
    /// The event JSON, as journaled.
    pub json: String,
}

struct PendingEvent {
    event_id: String,
    kind: &'static str,
    account_id: Option<String>,
    time_ms: TimestampMs,
    json: String,
    /// A feed or instrument event's instrument and per-instrument `seq` (kept in `meta`, so the
    /// numbering continues after a restart).
    instrument_seq: Option<(String, u64)>,
}

/// `meta` key prefix of an instrument's last feed / instrument event `seq`.
const FEED_SEQ_KEY: &str = "feed_seq:";

/// The instrument and per-instrument `seq` of a feed or instrument event.
fn instrument_seq(e: &RiskEvent) -> Option<(String, u64)> {
    let instrument = match (&e.feed, &e.instrument_change) {
        (Some(f), _) => &f.instrument,
        (None, Some(c)) => &c.instrument,
        (None, None) => return None,
    };
    Some((instrument.as_str().to_owned(), e.seq))
}

struct Writer {
    conn: Connection,
    last_seq: u64,
    /// Events not yet committed (only non-empty while writes fail), in append order.
    pending: VecDeque<PendingEvent>,
    /// Monitor states not yet committed, in upsert order (later wins).
    pending_states: Vec<(String, String)>,
    /// Risk-warning states not yet committed (`None` deletes), in order ([`prices`]).
    pending_risk: Vec<(String, Option<String>)>,
}

/// The event journal. Share it as `Arc<Journal>`; every method is synchronous and short.
pub struct Journal {
    path: PathBuf,
    synchronous: Synchronous,
    /// Woken by the writer connection's WAL hook once the WAL holds
    /// [`JournalOptions::checkpoint_pages`]; held for its `Drop` (a last `TRUNCATE`).
    _checkpointer: Checkpointer,
    writer: Mutex<Writer>,
    reader: Mutex<Connection>,
    committed: watch::Sender<u64>,
    failing: AtomicBool,
    failing_changed: tokio::sync::Notify,
    /// Events held in memory now (mirrors `writer.pending.len()` without its lock).
    buffered_now: AtomicUsize,
    /// Past this many held events the daemon stops taking prices ([`Journal::over_buffer_limit`]).
    buffer_limit: AtomicUsize,
}

/// Default of [`Journal::set_buffer_limit`]: about 200 MB of held events (~2 KB each).
pub const DEFAULT_BUFFER_LIMIT: usize = 100_000;

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("last_seq", &*self.committed.borrow())
            .finish()
    }
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn classify_open_error(path: &Path, e: rusqlite::Error) -> JournalError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => JournalError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        Some(ErrorCode::ReadOnly) | Some(ErrorCode::PermissionDenied) => JournalError::Unwritable {
            path: path.to_path_buf(),
            source: e,
        },
        _ => JournalError::Open {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Refuses a path whose directory is missing (never created here).
fn check_dir(path: &Path) -> Result<(), JournalError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Ok(()),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(JournalError::MissingDir {
            dir: dir.to_path_buf(),
        })
    }
}

/// Whether the database `conn` opened is a liqwatch journal: ours by `application_id`, or a
/// journal from before the id was stamped (id 0, a known schema version and our tables).
/// Reads only; a file that is not SQLite at all fails here with [`JournalError::Corrupt`].
fn check_ours(conn: &Connection, path: &Path) -> Result<(), JournalError> {
    let application_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| classify_open_error(path, e))?;
    let user_version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| classify_open_error(path, e))?;
    if application_id == APPLICATION_ID {
        return Ok(());
    }
    let legacy = application_id == 0 && (1..=SCHEMA_VERSION).contains(&user_version) && {
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'
                   AND name IN ('meta', 'events', 'cursors', 'accounts', 'monitor_states')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| classify_open_error(path, e))?;
        tables == 5
    };
    if legacy {
        return Ok(());
    }
    Err(JournalError::Foreign {
        path: path.to_path_buf(),
        application_id,
        user_version,
    })
}

impl Journal {
    /// Opens the existing journal at `path` with default options (see [`Journal::open_with`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Journal, JournalError> {
        Self::open_with(path, JournalOptions::default())
    }

    /// Opens (and migrates) the existing journal at `path`. It never creates one: a missing
    /// directory or file, an empty file, a foreign SQLite file, a corrupt, too-new or
    /// unwritable file is an error here, never later, and the file is left as it was.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: JournalOptions,
    ) -> Result<Journal, JournalError> {
        let path = path.as_ref().to_path_buf();
        check_dir(&path)?;
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(JournalError::Missing { path });
            }
            Err(e) => {
                return Err(JournalError::Io { path, source: e });
            }
            Ok(m) if m.len() == 0 => return Err(JournalError::Empty { path }),
            Ok(_) => {}
        }
        Self::open_inner(path, options, false)
    }

    /// Creates a new journal at `path` with default options (see [`Journal::create_with`]).
    pub fn create(path: impl AsRef<Path>) -> Result<Journal, JournalError> {
        Self::create_with(path, JournalOptions::default())
    }

    /// Creates a new, empty journal at `path` and opens it. The directory must exist; an
    /// existing file (even an empty one) is an error and is left unchanged.
    pub fn create_with(
        path: impl AsRef<Path>,
        options: JournalOptions,
    ) -> Result<Journal, JournalError> {
        let path = path.as_ref().to_path_buf();
        check_dir(&path)?;
        // `create_new` is atomic: of two racing creators exactly one wins.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(JournalError::Exists { path });
            }
            Err(e) => {
                return Err(JournalError::Io { path, source: e });
            }
        }
        let journal = Self::open_inner(path.clone(), options, true).inspect_err(|_| {
            // Leave nothing half-made behind: the next attempt can create it again.
            for suffix in ["", "-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        })?;
        tracing::info!(path = %path.display(), "New journal created");
        Ok(journal)
    }

    /// Opens the file at `path`; `fresh` when [`Journal::create_with`] has just made it.
    fn open_inner(
        path: PathBuf,
        options: JournalOptions,
        fresh: bool,
    ) -> Result<Journal, JournalError> {
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify_open_error(&path, e))?;
        // Before anything writes to it: is this file ours?
        if !fresh {
            check_ours(&conn, &path)?;
        }
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| classify_open_error(&path, e))?;
        // Bigger pages: a ~2 KB event JSON per row means fewer WAL frames per burst. Only
        // takes effect when the file is created (ignored for an existing journal).
        conn.pragma_update(None, "page_size", 16_384)
            .map_err(|e| classify_open_error(&path, e))?;
        // The first real read of the header happens here: a foreign file fails with NOTADB.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| classify_open_error(&path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::Unwritable {
                path: path.clone(),
                source: rusqlite::Error::InvalidParameterName(format!(
                    "journal_mode is {mode}, WAL could not be enabled"
                )),
            });
        }
        let sync = match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(|e| classify_open_error(&path, e))?;
        // A crash burst is one big transaction: give it room so SQLite does not spill dirty
        // pages to the WAL mid-transaction (64 MiB of page cache, negative = KiB).
        conn.pragma_update(None, "cache_size", -65_536)
            .map_err(|e| classify_open_error(&path, e))?;
        if options.verify_on_open {
            let result: String = conn
                .pragma_query_value(None, "quick_check", |r| r.get(0))
                .map_err(|e| classify_open_error(&path, e))?;
            if result != "ok" {
                return Err(JournalError::Corrupt {
                    path: path.clone(),
                    detail: result,
                });
            }
        }
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| classify_open_error(&path, e))?;
        if version > SCHEMA_VERSION {
            return Err(JournalError::SchemaTooNew {
                path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        // Creating the schema and stamping the open time proves the file is writable now.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA_V1} {SCHEMA_V2} {SCHEMA_V3_HISTORY} {SCHEMA_V3_PRICES} PRAGMA user_version = {SCHEMA_VERSION};
             PRAGMA application_id = {APPLICATION_ID};
             INSERT INTO meta(key, value) VALUES ('opened_ms', '{}')
               ON CONFLICT(key) DO UPDATE SET value = excluded.value;
             COMMIT;",
            now_ms()
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            match classify_open_error(&path, e) {
                JournalError::Open { path, source } => JournalError::Unwritable { path, source },
                other => other,
            }
        })?;
        let meta_seq: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let max_seq: Option<i64> =
            conn.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
        let last_seq = meta_seq
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            .max(u64_of(max_seq.unwrap_or(0)));

        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify_open_error(&path, e))?;
        reader
            .busy_timeout(options.busy_timeout)
            .map_err(|e| classify_open_error(&path, e))?;

        // Checkpoints (copying the WAL back into the database file) run on their own thread
        // and connection so a commit never pays for them, and only once the WAL has grown to
        // `checkpoint_pages` ([`CHECKPOINT_PAGES`]). The hook replaces SQLite's automatic
        // checkpoint, and keeps it as a backstop at [`BACKSTOP_PAGES`] (1 GiB of WAL).
        let checkpointer = Checkpointer::spawn(&path, options.busy_timeout)
            .map_err(|e| classify_open_error(&path, e))?;
        let mut conn = conn;
        {
            let wake = checkpointer.waker();
            let pages = i32::try_from(options.checkpoint_pages).unwrap_or(i32::MAX);
            let backstop = i32::try_from(options.backstop_pages).unwrap_or(i32::MAX);
            conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, in_wal: i32| {
                if in_wal >= backstop {
                    // The commit has happened by now: an error returned here would be reported
                    // as the commit's, and the journal would write the committed events again
                    // (SQLite's own automatic checkpoint ignores its result the same way). A
                    // busy checkpoint (the background one running) is retried next commit.
                    if let Err(error) = wal.checkpoint() {
                        tracing::debug!(%error, in_wal, "Journal backstop checkpoint deferred");
                    }
                } else if in_wal >= pages {
                    // Full: a wake is already pending.
                    let _ = wake.try_send(());
                }
                Ok(())
            }))
            .map_err(|e| classify_open_error(&path, e))?;
        }
        // After a crash burst the WAL file is cut back to 64 MiB once it is reset.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(|e| classify_open_error(&path, e))?;

        metrics::gauge!("liqwatch_journal_write_failing").set(0.0);
        metrics::gauge!("liqwatch_journal_buffered_events").set(0.0);
        metrics::gauge!("liqwatch_journal_last_seq").set(last_seq as f64);
        if fresh {
            // `create_with` says "New journal created" for it.
            tracing::debug!(path = %path.display(), synchronous = sync, "New journal opened");
        } else {
            tracing::info!(path = %path.display(), last_seq, synchronous = sync, "Journal opened");
        }
        let (committed, _) = watch::channel(last_seq);
        Ok(Journal {
            path,
            synchronous: options.synchronous,
            _checkpointer: checkpointer,
            writer: Mutex::new(Writer {
                conn,
                last_seq,
                pending: VecDeque::new(),
                pending_states: Vec::new(),
                pending_risk: Vec::new(),
            }),
            reader: Mutex::new(reader),
            committed,
            failing: AtomicBool::new(false),
            failing_changed: tokio::sync::Notify::new(),
            buffered_now: AtomicUsize::new(0),
            buffer_limit: AtomicUsize::new(DEFAULT_BUFFER_LIMIT),
        })
    }

    /// The journal's file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits a burst of events and the monitor states that go with them in one transaction.
    /// Returns the journal seq of each event, in order (gap-free; an event id already in the
    /// journal keeps its original seq).
    ///
    /// When the write fails, the events and states stay in memory behind any earlier backlog
    /// and [`JournalError::Buffered`] is returned: nothing is lost, and the next append or
    /// [`Journal::retry_pending`] writes them first, in order.
    pub fn append(
        &self,
        events: &[RiskEvent],
        monitor_states: &[(AccountId, String)],
    ) -> Result<Vec<u64>, JournalError> {
        let mut rows = Vec::with_capacity(events.len());
        for e in events {
            let json = serde_json::to_string(e).map_err(|source| {
                metrics::counter!("liqwatch_journal_encode_errors_total").increment(1);
                tracing::error!(event_id = %e.event_id, %source, "Cannot encode event");
                JournalError::Encode {
                    event_id: e.event_id,
                    source,
                }
            })?;
            rows.push(PendingEvent {
                event_id: e.event_id.to_string(),
                kind: e.kind.as_str(),
                account_id: e.account_id.as_ref().map(|a| a.as_str().to_owned()),
                time_ms: e.time_ms,
                json,
                instrument_seq: instrument_seq(e),
            });
        }
        let started = std::time::Instant::now();
        let mut w = self.writer.lock();
        if rows.is_empty()
            && monitor_states.is_empty()
            && w.pending.is_empty()
            && w.pending_risk.is_empty()
        {
            return Ok(Vec::new());
        }
        w.pending.extend(rows);
        w.pending_states.extend(
            monitor_states
                .iter()
                .map(|(a, s)| (a.as_str().to_owned(), s.clone())),
        );
        match w.flush() {
            Ok(seqs) => {
                let last = w.last_seq;
                drop(w);
                self.after_commit(last, seqs.len(), started);
                let skip = seqs.len().saturating_sub(events.len());
                Ok(seqs.into_iter().skip(skip).collect())
            }
            Err(source) => {
                let buffered = w.pending.len();
                drop(w);
                self.set_failing(true, buffered, &source);
                Err(JournalError::Buffered { buffered, source })
            }
        }
    }

    /// Writes the in-memory backlog, if any. Returns how many events were committed.
    pub fn retry_pending(&self) -> Result<usize, JournalError> {
        let started = std::time::Instant::now();
        let mut w = self.writer.lock();
        if w.pending.is_empty() && w.pending_states.is_empty() && w.pending_risk.is_empty() {
            return Ok(0);
        }
        match w.flush() {
            Ok(seqs) => {
                let last = w.last_seq;
                drop(w);
                self.after_commit(last, seqs.len(), started);
                Ok(seqs.len())
            }
            Err(source) => {
                let buffered = w.pending.len();
                drop(w);
                self.set_failing(true, buffered, &source);
                Err(JournalError::Buffered { buffered, source })
            }
        }
    }

    fn after_commit(&self, last_seq: u64, n: usize, started: std::time::Instant) {
        metrics::counter!("liqwatch_journal_appended_total").increment(n as u64);
        metrics::histogram!("liqwatch_journal_append_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::gauge!("liqwatch_journal_last_seq").set(last_seq as f64);
        self.buffered_now.store(0, Ordering::SeqCst);
        if self.failing.swap(false, Ordering::SeqCst) {
            metrics::gauge!("liqwatch_journal_write_failing").set(0.0);
            metrics::gauge!("liqwatch_journal_buffered_events").set(0.0);
            tracing::warn!(path = %self.path.display(), last_seq, "Journal writes recovered; in-memory backlog committed");
            self.failing_changed.notify_waiters();
        }
        // Wake sink drivers only when there is something new for them.
        self.committed.send_if_modified(|seq| {
            let moved = *seq != last_seq;
            *seq = last_seq;
            moved
        });
    }

    fn set_failing(&self, failing: bool, buffered: usize, error: &rusqlite::Error) {
        self.buffered_now.store(buffered, Ordering::SeqCst);
        metrics::counter!("liqwatch_journal_write_failures_total").increment(1);
        metrics::gauge!("liqwatch_journal_buffered_events").set(buffered as f64);
        let was = self.failing.swap(failing, Ordering::SeqCst);
        metrics::gauge!("liqwatch_journal_write_failing").set(1.0);
        if !was {
            tracing::error!(path = %self.path.display(), buffered, %error,
                "Journal write failing (disk full or I/O error?): events are held in memory and retried; free space or fix the file system");
            self.failing_changed.notify_waiters();
        } else {
            tracing::warn!(path = %self.path.display(), buffered, %error, "Journal write still failing");
        }
    }

    /// True while writes fail and events are held in memory.
    pub fn is_write_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    /// Events held in memory because writes fail.
    pub fn buffered(&self) -> usize {
        self.writer.lock().pending.len()
    }

    /// Sets the bound on events held in memory while writes fail (`[journal]
    /// max_buffered_events`). The journal itself never drops one: the bound is for the caller
    /// that produces events, which stops taking new work while [`Journal::over_buffer_limit`].
    pub fn set_buffer_limit(&self, limit: usize) {
        self.buffer_limit.store(limit.max(1), Ordering::SeqCst);
    }

    /// The bound set by [`Journal::set_buffer_limit`].
    pub fn buffer_limit(&self) -> usize {
        self.buffer_limit.load(Ordering::SeqCst)
    }

    /// True while at least [`Journal::buffer_limit`] events wait in memory for a write that
    /// fails (lock-free: the engine asks before every price burst).
    pub fn over_buffer_limit(&self) -> bool {
        self.buffered_now.load(Ordering::SeqCst) >= self.buffer_limit()
    }

    /// Fault injection for tests: `true` caps the database at its current size (`PRAGMA
    /// max_page_count`), so every write that needs a new page fails with SQLite's real
    /// "database or disk is full" error, exactly as on a full disk; `false` lifts the cap.
    #[doc(hidden)]
    pub fn simulate_disk_full(&self, full: bool) -> Result<(), JournalError> {
        let w = self.writer.lock();
        let pages: i64 = if full {
            w.conn
                .pragma_query_value(None, "page_count", |r| r.get(0))?
        } else {
            1_073_741_823
        };
        let _: i64 = w
            .conn
            .pragma_update_and_check(None, "max_page_count", pages, |r| r.get(0))?;
        Ok(())
    }

    /// The seq of the last committed event (0 when empty).
    pub fn last_seq(&self) -> u64 {
        *self.committed.borrow()
    }

    /// A receiver that changes whenever events are committed (value: last committed seq).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Spawns the task that retries the in-memory backlog while writes fail (jittered
    /// exponential backoff from 100 ms to 5 s). On cancel it makes one last attempt.
    pub fn spawn_flusher(self: &Arc<Self>, cancel: CancellationToken) -> JoinHandle<()> {
        let journal = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff =
                crate::runtime::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                if !journal.is_write_failing() {
                    backoff.reset();
                    let changed = journal.failing_changed.notified();
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = changed => continue,
                        // Safety net: a missed notification costs at most a second.
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay(None)) => {}
                }
                let j = Arc::clone(&journal);
                let _ = tokio::task::spawn_blocking(move || j.retry_pending()).await;
            }
            let j = Arc::clone(&journal);
            let left = tokio::task::spawn_blocking(move || {
                let _ = j.retry_pending();
                j.buffered()
            })
            .await
            .unwrap_or(0);
            if left > 0 {
                tracing::error!(
                    buffered = left,
                    "Shutting down with journal writes failing: these events were never committed"
                );
            }
        })
    }

    /// Loads the monitor's per-account states (committed plus any held in memory).
    pub fn load_monitor_states(&self) -> Result<Vec<(AccountId, String)>, JournalError> {
        let mut out: std::collections::BTreeMap<String, String> = {
            let r = self.reader.lock();
            let mut st = r.prepare_cached("SELECT account_id, state FROM monitor_states")?;
            st.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        for (a, s) in &self.writer.lock().pending_states {
            out.insert(a.clone(), s.clone());
        }
        Ok(out
            .into_iter()
            .map(|(a, s)| (AccountId::from(a), s))
            .collect())
    }

    /// The last `seq` of each instrument's feed and instrument events (`feed_stale`,
    /// `feed_restored`, `instrument_changed`), journaled or still buffered: the engine continues
    /// the numbering from them after a restart.
    pub fn load_feed_seqs(&self) -> Result<Vec<(InstrumentId, u64)>, JournalError> {
        let mut out: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        {
            let r = self.reader.lock();
            // The keys that start with the prefix (`LIKE` would read its `_` as a wildcard).
            let mut st =
                r.prepare_cached("SELECT key, value FROM meta WHERE key >= ?1 AND key < ?2")?;
            let end = FEED_SEQ_KEY.replace(':', ";"); // the next string after every `feed_seq:…`
            let rows = st.query_map([FEED_SEQ_KEY, end.as_str()], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?;
            for row in rows {
                let (key, value) = row?;
                let (Some(instrument), Ok(seq)) =
                    (key.strip_prefix(FEED_SEQ_KEY), value.parse::<u64>())
                else {
                    tracing::warn!(%key, %value, "Unreadable feed event sequence in the journal; ignored");
                    continue;
                };
                out.insert(instrument.to_owned(), seq);
            }
        }
        for p in &self.writer.lock().pending {
            if let Some((instrument, seq)) = &p.instrument_seq {
                let e = out.entry(instrument.clone()).or_insert(0);
                *e = (*e).max(*seq);
            }
        }
        Ok(out
            .into_iter()
            .map(|(i, s)| (InstrumentId::from(i), s))
            .collect())
    }

    /// Inserts or replaces accounts (opaque JSON), in one transaction.
    pub fn upsert_accounts(&self, accounts: &[(AccountId, String)]) -> Result<(), JournalError> {
        let mut w = self.writer.lock();
        let tx = w.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO accounts(account_id, json, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(account_id) DO UPDATE SET json = excluded.json, updated_ms = excluded.updated_ms",
            )?;
            let now = now_ms();
            for (id, json) in accounts {
                st.execute(params![id.as_str(), json, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes an account (and its monitor state). Returns true when it existed.
    pub fn delete_account(&self, account: &AccountId) -> Result<bool, JournalError> {
        let mut w = self.writer.lock();
        w.pending_states.retain(|(a, _)| a != account.as_str());
        let tx = w.conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM accounts WHERE account_id = ?1",
            [account.as_str()],
        )?;
        tx.execute(
            "DELETE FROM monitor_states WHERE account_id = ?1",
            [account.as_str()],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Every stored account (opaque JSON), ordered by id.
    pub fn load_accounts(&self) -> Result<Vec<(AccountId, String)>, JournalError> {
        let r = self.reader.lock();
        let mut st =
            r.prepare_cached("SELECT account_id, json FROM accounts ORDER BY account_id")?;
        let rows = st
            .query_map([], |row| {
                Ok((AccountId::from(row.get::<_, String>(0)?), row.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Deletes events delivered by every registered sink (seq ≤ the lowest cursor) whose
    /// detection time is older than `max_age`. Undelivered events are never pruned; with no
    /// sink registered nothing is. Returns how many rows were deleted.
    pub fn prune(&self, max_age: Duration) -> Result<usize, JournalError> {
        let age_ms = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(age_ms);
        let mut w = self.writer.lock();
        let min_cursor: Option<i64> =
            w.conn
                .query_row("SELECT MIN(seq) FROM cursors", [], |r| r.get(0))?;
        let Some(min_cursor) = min_cursor else {
            return Ok(0);
        };
        // Deleting rows may delete the newest: the last seq is kept in `meta` first, in the
        // same transaction, so a reopened journal never numbers an event twice.
        let last = w.last_seq;
        let tx = w.conn.transaction()?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('last_seq', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value
             WHERE CAST(excluded.value AS INTEGER) > CAST(meta.value AS INTEGER)",
            [last.to_string()],
        )?;
        let n = tx.execute(
            "DELETE FROM events WHERE seq <= ?1 AND time_ms < ?2",
            params![min_cursor, cutoff],
        )?;
        tx.commit()?;
        drop(w);
        if n > 0 {
            metrics::counter!("liqwatch_journal_pruned_total").increment(n as u64);
            tracing::info!(pruned = n, "Journal retention pruned delivered events");
        }
        Ok(n)
    }

    /// Spawns the retention task: prunes every `every` (and once at start).
    pub fn spawn_retention(
        self: &Arc<Self>,
        max_age: Duration,
        every: Duration,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let journal = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let j = Arc::clone(&journal);
                match tokio::task::spawn_blocking(move || j.prune(max_age)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "Journal retention failed"),
                    Err(error) => tracing::warn!(%error, "Journal retention task failed"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    }
}

/// A thread with its own connection that runs a passive WAL checkpoint when the writer's WAL
/// hook wakes it (the WAL has reached [`JournalOptions::checkpoint_pages`]).
/// It stops (after a last checkpoint) when the journal is dropped.
struct Checkpointer {
    wake: std::sync::mpsc::SyncSender<()>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn spawn(path: &Path, busy_timeout: Duration) -> Result<Checkpointer, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(busy_timeout)?;
        let (wake, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("journal-checkpoint".into())
            .spawn(move || {
                let checkpoint = |mode: &str| {
                    let r: Result<(i64, i64, i64), _> =
                        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                        });
                    if let Err(error) = r {
                        tracing::warn!(path = %shown, %error, "Journal WAL checkpoint failed");
                    }
                };
                // `stop` is set before the last wake is sent: checked after every wake and
                // before waiting, the thread cannot wait on a channel nobody will close.
                while !stopping.load(Ordering::SeqCst) {
                    if rx.recv().is_err() || stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    // Let a burst of commits accumulate before copying.
                    std::thread::sleep(Duration::from_millis(50));
                    while rx.try_recv().is_ok() {}
                    checkpoint("PASSIVE");
                }
                checkpoint("TRUNCATE");
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            wake,
            stop,
            thread: Some(thread),
        })
    }

    /// What wakes the checkpoint (the writer's WAL hook holds one; a full channel means a wake
    /// is pending already).
    fn waker(&self) -> std::sync::mpsc::SyncSender<()> {
        self.wake.clone()
    }
}

impl Drop for Checkpointer {
    /// Stops the thread after a last `TRUNCATE` checkpoint. The writer's hook may still hold a
    /// waker, so the thread is told to stop rather than waiting for the channel to close.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // A full channel already holds a wake, which the thread takes before seeing `stop`.
        let _ = self.wake.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Decodes rows in order. An unreadable row ends the batch before it, so every good row ahead
/// of it is still returned; only when the first row is unreadable is it an error.
fn decode_rows(rows: Vec<(i64, String)>) -> Result<Vec<JournalEntry>, JournalError> {
    let mut out = Vec::with_capacity(rows.len());
    for (seq, json) in rows {
        match decode_entry(u64_of(seq), json) {
            Ok(e) => out.push(e),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(out)
}

fn decode_entry(seq: u64, json: String) -> Result<JournalEntry, JournalError> {
    match serde_json::from_str::<RiskEvent>(&json) {
        Ok(event) => Ok(JournalEntry { seq, event, json }),
        Err(e) => Err(JournalError::CorruptRow {
            seq,
            reason: e.to_string(),
        }),
    }
}

impl Writer {
    /// Commits every pending event and state in one transaction. On error nothing changes.
    fn flush(&mut self) -> Result<Vec<u64>, rusqlite::Error> {
        let mut seqs = Vec::with_capacity(self.pending.len());
        let mut seq = self.last_seq;
        let now = now_ms();
        let tx = self.conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO events(seq, event_id, kind, account_id, time_ms, journaled_ms, json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(event_id) DO NOTHING",
            )?;
            for p in &self.pending {
                let next = seq + 1;
                let n = ins.execute(params![
                    i64_of(next),
                    p.event_id,
                    p.kind,
                    p.account_id,
                    p.time_ms,
                    now,
                    p.json
                ])?;
                if n == 1 {
                    seq = next;
                    seqs.push(next);
                    if let Some((instrument, event_seq)) = &p.instrument_seq {
                        tx.prepare_cached(
                            "INSERT INTO meta(key, value) VALUES (?1, ?2)
                             ON CONFLICT(key) DO UPDATE SET value = excluded.value
                             WHERE CAST(excluded.value AS INTEGER) > CAST(meta.value AS INTEGER)",
                        )?
                        .execute(params![
                            format!("{FEED_SEQ_KEY}{instrument}"),
                            event_seq.to_string()
                        ])?;
                    }
                } else {
                    let existing: i64 = tx
                        .prepare_cached("SELECT seq FROM events WHERE event_id = ?1")?
                        .query_row([&p.event_id], |r| r.get(0))?;
                    tracing::warn!(event_id = %p.event_id, seq = existing, "Event already journaled; kept its original seq");
                    seqs.push(u64_of(existing));
                }
            }
            let mut up = tx.prepare_cached(
                "INSERT INTO monitor_states(account_id, state, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(account_id) DO UPDATE SET state = excluded.state, updated_ms = excluded.updated_ms",
            )?;
            for (a, s) in &self.pending_states {
                up.execute(params![a, s, now])?;
            }
            prices::write_risk_states(&tx, &self.pending_risk, now)?;
            // The last seq is the events' own MAX(seq): `meta.last_seq` is written only when
            // retention deletes rows ([`Journal::prune`]), so a commit dirties one page fewer.
        }
        tx.commit()?;
        self.last_seq = seq;
        self.pending.clear();
        self.pending_states.clear();
        self.pending_risk.clear();
        Ok(seqs)
    }
}

mod cursors; // per-sink cursors, history reads and dead letters
pub mod history; // v3: the risk page's per-account history and per-account event reads
use history::SCHEMA_V3_HISTORY;
mod handle; // the async handle: journal calls on tokio's blocking pool
pub mod inspect; // read-only views for `liqwatch journal status | dead-letters | events`
pub mod lock; // one daemon per journal: an exclusive lock on `<journal>.lock` while it runs
pub mod prices; // schema 3: recorded price samples and risk-warning states
pub mod update_ids; // ids of applied account updates, committed with the account write
pub use handle::JournalHandle;
use prices::SCHEMA_V3_PRICES;
use update_ids::SCHEMA_V2;
pub use update_ids::{AccountWrite, SeenUpdate, UpdateIdRecord, UpdateIdWindow};

#[cfg(test)]
pub(crate) mod tests; // and `event`, a journaled event for other modules' tests
