//! Unit tests of the journal: gap-free sequence numbers, durability across reopen, cursors, dead letters, retention, a full disk.

use super::*;
use crate::model::EventKind;

impl Journal {
    /// Overwrites every event of `account` with JSON that is not an event (a corrupt row).
    pub(crate) fn corrupt_account_events_for_tests(&self, account: &str) {
        self.writer
            .lock()
            .conn
            .execute(
                "UPDATE events SET json = '{}' WHERE account_id = ?1",
                [account],
            )
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A warning of `account` (no level, no snapshot): tests set what they need on it.
pub(crate) fn event(account: &str, seq: u64, time_ms: i64) -> RiskEvent {
    RiskEvent {
        event_id: RiskEvent::new_id(),
        kind: EventKind::LiquidationWarning,
        time: crate::model::format_rfc3339_ms(time_ms),
        time_ms,
        account_id: Some(AccountId::from(account)),
        seq,
        level: None,
        crossed_levels: vec![],
        level_type: None,
        previous_state: None,
        state: None,
        snapshot: None,
        prices: vec![],
        stale_prices: false,
        instrument_change: None,
        feed: None,
        risk: None,
    }
}

fn open_tmp() -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::create(dir.path().join("journal.db")).unwrap();
    (dir, j)
}

/// Seqs are gap-free across bursts and reopen; a repeated event id keeps its first seq.
#[test]
fn seqs_gap_free_and_durable_across_reopen() {
    let (dir, j) = open_tmp();
    let a: Vec<RiskEvent> = (1..=3).map(|i| event("a", i, 1000 + i as i64)).collect();
    assert_eq!(j.append(&a, &[]).unwrap(), vec![1, 2, 3]);
    let b = vec![event("b", 1, 2000), a[1].clone()];
    assert_eq!(j.append(&b, &[]).unwrap(), vec![4, 2]);
    drop(j);
    let j = Journal::open(dir.path().join("journal.db")).unwrap();
    assert_eq!(j.last_seq(), 4);
    let all = j.read_after(0, 100).unwrap();
    let ids: Vec<_> = all.iter().map(|e| e.event.event_id).collect();
    assert_eq!(
        ids,
        vec![a[0].event_id, a[1].event_id, a[2].event_id, b[0].event_id]
    );
    assert_eq!(all[0].json, serde_json::to_string(&a[0]).unwrap());
    assert_eq!(j.append(&[event("c", 1, 3000)], &[]).unwrap(), vec![5]);
}

/// Monitor states commit with the events; later upserts win; accounts, states and
/// cursors survive a reopen.
#[test]
fn monitor_states_and_accounts() {
    let (dir, j) = open_tmp();
    let a = AccountId::from("a");
    j.append(&[event("a", 1, 1)], &[(a.clone(), "{\"s\":1}".into())])
        .unwrap();
    j.append(&[], &[(a.clone(), "{\"s\":2}".into())]).unwrap();
    assert_eq!(
        j.load_monitor_states().unwrap(),
        vec![(a.clone(), "{\"s\":2}".to_owned())]
    );
    j.upsert_accounts(&[(a.clone(), "{}".into()), ("b".into(), "{\"x\":1}".into())])
        .unwrap();
    j.upsert_accounts(&[("b".into(), "{\"x\":2}".into())])
        .unwrap();
    assert_eq!(
        j.load_accounts().unwrap(),
        vec![
            (a.clone(), "{}".to_owned()),
            ("b".into(), "{\"x\":2}".to_owned())
        ]
    );
    j.register_sink("s").unwrap();
    j.advance("s", 1).unwrap();
    drop(j);
    let j = Journal::open(dir.path().join("journal.db")).unwrap();
    assert_eq!(j.load_accounts().unwrap().len(), 2);
    assert_eq!(
        j.load_monitor_states().unwrap(),
        vec![(a.clone(), "{\"s\":2}".to_owned())]
    );
    assert_eq!(j.cursor("s").unwrap(), 1);
    assert!(j.delete_account(&a).unwrap());
    assert!(!j.delete_account(&a).unwrap());
    assert_eq!(j.load_accounts().unwrap().len(), 1);
    assert!(j.load_monitor_states().unwrap().is_empty());
}

/// Cursors only move forward; lag, dead letters and history queries agree with them.
#[test]
fn cursors_lag_dead_letters_history() {
    let (_dir, j) = open_tmp();
    let evs: Vec<RiskEvent> = (1..=5).map(|i| event("a", i, i as i64 * 1000)).collect();
    j.append(&evs, &[]).unwrap();
    assert_eq!(j.register_sink("s").unwrap(), 0);
    assert_eq!(j.lag("s").unwrap(), 5);
    j.advance("s", 3).unwrap();
    j.advance("s", 2).unwrap();
    assert_eq!(j.cursor("s").unwrap(), 3);
    // The relaxed cursor commit leaves the connection at synchronous = FULL (2).
    let sync: i64 = j
        .writer
        .lock()
        .conn
        .pragma_query_value(None, "synchronous", |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2);
    j.dead_letter("s", 4, "HTTP 400: bad payload").unwrap();
    assert_eq!(j.cursor("s").unwrap(), 4);
    assert_eq!(j.lag("s").unwrap(), 1);
    let dl = j.dead_letters("s").unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].seq, 4);
    assert_eq!(dl[0].event_id, evs[3].event_id.to_string());
    assert_eq!(dl[0].reason, "HTTP 400: bad payload");
    let after = j.read_after(3, 10).unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
    let since = j.events_since(Since::TimeMs(2500), 2).unwrap();
    assert_eq!(since.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    let since = j.events_since(Since::Seq(4), 10).unwrap();
    assert_eq!(since.len(), 1);
}

/// Retention deletes only events every sink is past and that are old; seqs never reuse.
#[test]
fn retention_prunes_delivered_old_only() {
    let (dir, j) = open_tmp();
    let old = now_ms() - 3_600_000;
    let evs: Vec<RiskEvent> = (1..=4).map(|i| event("a", i, old)).collect();
    j.append(&evs, &[]).unwrap();
    j.append(&[event("a", 5, now_ms())], &[]).unwrap();
    // No sink registered: nothing counts as delivered.
    assert_eq!(j.prune(Duration::from_secs(60)).unwrap(), 0);
    j.register_sink("fast").unwrap();
    j.register_sink("slow").unwrap();
    j.advance("fast", 5).unwrap();
    j.advance("slow", 2).unwrap();
    assert_eq!(j.prune(Duration::from_secs(60)).unwrap(), 2);
    assert_eq!(
        j.read_after(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    j.advance("slow", 5).unwrap();
    // Seq 5 is delivered but young: kept.
    assert_eq!(j.prune(Duration::from_secs(60)).unwrap(), 2);
    assert_eq!(j.read_after(0, 10).unwrap().len(), 1);
    j.advance("slow", 5).unwrap();
    drop(j);
    let j = Journal::open(dir.path().join("journal.db")).unwrap();
    assert_eq!(j.append(&[event("a", 6, now_ms())], &[]).unwrap(), vec![6]);
}

/// Retention may delete every row, the newest included: the journal still numbers on from
/// its last seq after a reopen. Commits themselves leave `meta.last_seq` alone (the events'
/// MAX(seq) is the last seq; one page fewer per commit); only a prune writes it.
#[test]
fn prune_of_every_row_keeps_the_numbering() {
    let (dir, j) = open_tmp();
    let old = now_ms() - 3_600_000;
    let evs: Vec<RiskEvent> = (1..=3).map(|i| event("a", i, old)).collect();
    assert_eq!(j.append(&evs, &[]).unwrap(), vec![1, 2, 3]);
    let meta = |j: &Journal| -> Option<String> {
        j.writer
            .lock()
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .optional()
            .unwrap()
    };
    assert_eq!(meta(&j), None, "a commit wrote meta.last_seq");
    j.register_sink("only").unwrap();
    j.advance("only", 3).unwrap();
    assert_eq!(j.prune(Duration::from_secs(60)).unwrap(), 3);
    assert!(j.read_after(0, 10).unwrap().is_empty());
    assert_eq!(meta(&j).as_deref(), Some("3"));
    drop(j);
    let j = Journal::open(dir.path().join("journal.db")).unwrap();
    assert_eq!(j.last_seq(), 3);
    assert_eq!(j.append(&[event("a", 4, now_ms())], &[]).unwrap(), vec![4]);
}

/// A full database holds the burst in memory (alarm on), keeps order, and commits it all
/// once space returns.
#[test]
fn full_disk_buffers_in_order_then_recovers() {
    let (_dir, j) = open_tmp();
    j.append(&[event("a", 1, 1)], &[]).unwrap();
    let pages: i64 = {
        let w = j.writer.lock();
        w.conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap()
    };
    j.writer
        .lock()
        .conn
        .pragma_update(None, "max_page_count", pages)
        .unwrap();
    let big: Vec<RiskEvent> = (0..200).map(|i| event("b", i, 2)).collect();
    let err = j
        .append(&big, &[("b".into(), "{\"s\":1}".into())])
        .unwrap_err();
    assert!(
        matches!(err, JournalError::Buffered { buffered: 200, .. }),
        "{err}"
    );
    assert!(j.is_write_failing());
    let more = vec![event("c", 1, 3)];
    assert!(matches!(
        j.append(&more, &[]),
        Err(JournalError::Buffered { buffered: 201, .. })
    ));
    assert_eq!(j.last_seq(), 1);
    assert_eq!(j.read_after(0, 1000).unwrap().len(), 1);
    // Buffered monitor states are visible to a reload in this process.
    assert_eq!(j.load_monitor_states().unwrap().len(), 1);
    j.writer
        .lock()
        .conn
        .pragma_update(None, "max_page_count", 1_073_741_823i64)
        .unwrap();
    assert_eq!(j.retry_pending().unwrap(), 201);
    assert!(!j.is_write_failing());
    let all = j.read_after(0, 1000).unwrap();
    let want: Vec<_> = std::iter::once(all[0].event.event_id)
        .chain(big.iter().map(|e| e.event_id))
        .chain(more.iter().map(|e| e.event_id))
        .collect();
    assert_eq!(
        all.iter().map(|e| e.event.event_id).collect::<Vec<_>>(),
        want
    );
    assert_eq!(all.last().unwrap().seq, 202);
}

/// The flusher task commits the in-memory backlog on its own once writes work again, and
/// wakes sink drivers through the commit notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flusher_commits_backlog_when_space_returns() {
    let (_dir, j) = open_tmp();
    let j = Arc::new(j);
    j.append(&[event("a", 1, 1)], &[]).unwrap();
    let pages: i64 = j
        .writer
        .lock()
        .conn
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .unwrap();
    j.writer
        .lock()
        .conn
        .pragma_update(None, "max_page_count", pages)
        .unwrap();
    let burst: Vec<RiskEvent> = (0..300).map(|i| event("b", i, 2)).collect();
    assert!(j.append(&burst, &[]).is_err());
    assert!(j.is_write_failing());
    let mut committed = j.subscribe();
    let cancel = CancellationToken::new();
    let flusher = j.spawn_flusher(cancel.clone());
    j.writer
        .lock()
        .conn
        .pragma_update(None, "max_page_count", 1_073_741_823i64)
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while *committed.borrow_and_update() < 301 {
            committed.changed().await.unwrap();
        }
    })
    .await
    .expect("flusher committed the backlog");
    assert!(!j.is_write_failing());
    assert_eq!(j.buffered(), 0);
    assert_eq!(j.read_after(1, 1000).unwrap().len(), 300);
    cancel.cancel();
    flusher.await.unwrap();
}

/// Garbage, a newer schema and a missing directory are clear open errors.
#[test]
fn open_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let e = Journal::open(&garbage).unwrap_err();
    assert!(matches!(e, JournalError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("garbage.db"));

    let newer = dir.path().join("newer.db");
    drop(Journal::create(&newer).unwrap());
    let c = Connection::open(&newer).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let e = Journal::open(&newer).unwrap_err();
    assert!(
        matches!(e, JournalError::SchemaTooNew { found: 99, .. }),
        "{e}"
    );

    let missing = dir.path().join("no/such/dir/journal.db");
    let e = Journal::open(&missing).unwrap_err();
    assert!(matches!(e, JournalError::MissingDir { .. }), "{e}");
    let e = Journal::create(&missing).unwrap_err();
    assert!(matches!(e, JournalError::MissingDir { .. }), "{e}");
    assert!(!dir.path().join("no").exists(), "no directory is created");
}

/// Issue 11 item 4: a journal is never created or re-initialised by `open`; `create` never
/// overwrites; a foreign SQLite file is refused before anything writes to it.
#[test]
fn never_started_afresh_silently() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let e = Journal::open(&missing).unwrap_err();
    assert!(matches!(e, JournalError::Missing { .. }), "{e}");
    assert!(!missing.exists());

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let e = Journal::open(&empty).unwrap_err();
    assert!(matches!(e, JournalError::Empty { .. }), "{e}");
    let e = Journal::create(&empty).unwrap_err();
    assert!(matches!(e, JournalError::Exists { .. }), "{e}");
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

    let foreign = dir.path().join("foreign.db");
    let c = Connection::open(&foreign).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(c);
    let before = std::fs::read(&foreign).unwrap();
    let e = Journal::open(&foreign).unwrap_err();
    assert!(matches!(e, JournalError::Foreign { .. }), "{e}");
    assert_eq!(std::fs::read(&foreign).unwrap(), before, "left untouched");

    let path = dir.path().join("journal.db");
    let j = Journal::create(&path).unwrap();
    let a = AccountId::from("a");
    j.upsert_accounts(&[(a.clone(), "{}".into())]).unwrap();
    drop(j);
    let e = Journal::create(&path).unwrap_err();
    assert!(matches!(e, JournalError::Exists { .. }), "{e}");
    let j = Journal::open(&path).unwrap();
    assert_eq!(j.load_accounts().unwrap().len(), 1);
    drop(j);
    let c = Connection::open(&path).unwrap();
    let id: i32 = c
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_eq!(id, APPLICATION_ID);
    // A journal from before the id was stamped is still recognised, and stamped.
    c.pragma_update(None, "application_id", 0).unwrap();
    drop(c);
    drop(Journal::open(&path).unwrap());
    let c = Connection::open(&path).unwrap();
    let id: i32 = c
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_eq!(id, APPLICATION_ID);
}

/// Each instrument's last feed-event `seq` is kept with the events and read back after a
/// reopen; a lower one journaled later does not move it back; account events do not count.
#[test]
fn feed_event_seqs_survive_a_reopen() {
    let feed = |instrument: &str, seq: u64| {
        let mut e = event("x", seq, 1000);
        e.kind = EventKind::FeedStale;
        e.account_id = None;
        e.feed = Some(Box::new(crate::model::FeedEventInfo {
            instrument: instrument.into(),
            venues: Vec::new(),
            last_price: None,
            age_ms: None,
            stale_after_ms: 30_000,
        }));
        e
    };
    let (dir, j) = open_tmp();
    j.append(&[feed("BTC", 1), feed("BTC", 2), feed("ETH", 5)], &[])
        .unwrap();
    j.append(&[feed("BTC", 1), event("a", 9, 1000)], &[])
        .unwrap();
    drop(j);
    let j = Journal::open(dir.path().join("journal.db")).unwrap();
    assert_eq!(
        j.load_feed_seqs().unwrap(),
        vec![
            (InstrumentId::from("BTC"), 2),
            (InstrumentId::from("ETH"), 5)
        ]
    );
    // Held in memory by a full disk: counted all the same, and journaled once it frees.
    j.simulate_disk_full(true).unwrap();
    let mut burst: Vec<RiskEvent> = (0..200).map(|i| event(&format!("f{i}"), 1, 1000)).collect();
    burst.push(feed("BTC", 3));
    assert!(j.append(&burst, &[]).is_err(), "the disk is full");
    let expected = vec![
        (InstrumentId::from("BTC"), 3),
        (InstrumentId::from("ETH"), 5),
    ];
    assert_eq!(j.load_feed_seqs().unwrap(), expected);
    j.simulate_disk_full(false).unwrap();
    assert_eq!(j.retry_pending().unwrap(), 201);
    drop(j);
    let j = Journal::open(dir.path().join("journal.db")).unwrap();
    assert_eq!(j.load_feed_seqs().unwrap(), expected);
}

/// The WAL header's checkpoint sequence number: SQLite raises it each time a commit starts the
/// WAL over, which it does only after a checkpoint has copied the whole WAL back.
fn wal_restarts(db: &Path) -> u32 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let head = std::fs::read(std::path::PathBuf::from(wal)).unwrap();
    u32::from_be_bytes(head[12..16].try_into().unwrap())
}

/// A new journal in a temporary directory with `options` at `synchronous = normal` (the
/// checkpoint tests' setting), its path, and the directory that must outlive it.
fn normal_journal(options: JournalOptions) -> (tempfile::TempDir, std::path::PathBuf, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let j = Journal::create_with(
        &path,
        JournalOptions {
            synchronous: Synchronous::Normal,
            ..options
        },
    )
    .unwrap();
    (dir, path, j)
}

/// Small commits do not wake the checkpoint (each checkpoint that empties the WAL makes the next
/// commit start it over — under `synchronous = normal` with an fsync); once the WAL holds
/// `checkpoint_pages`, the background checkpoint runs and the WAL starts over. Dropping the
/// journal stops the thread although the writer's hook holds a waker (no hang).
#[test]
fn the_wal_is_checkpointed_by_size_not_per_commit() {
    let run = |pages: u32, until_restart: bool| -> (u32, u32) {
        let (_dir, path, j) = normal_journal(JournalOptions {
            checkpoint_pages: pages,
            ..JournalOptions::default()
        });
        j.append(&[event("a", 1, 1)], &[]).unwrap();
        let before = wal_restarts(&path);
        let mut seq = 1;
        let mut commit = |j: &Journal| {
            seq += 1;
            let state = (AccountId::from(format!("s{seq}")), "{}".to_owned());
            j.append(&[event("a", seq, seq as i64)], &[state]).unwrap();
        };
        for i in 2..=40 {
            commit(&j);
            // Past the checkpointer's 50 ms gathering now and then.
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(120));
            }
        }
        // A busy machine may delay the checkpoint thread: up to ~10 s more for it.
        for _ in 0..80 {
            if !until_restart || wal_restarts(&path) > before {
                break;
            }
            std::thread::sleep(Duration::from_millis(120));
            commit(&j);
        }
        let after = wal_restarts(&path);
        drop(j);
        (before, after)
    };
    let (before, after) = run(CHECKPOINT_PAGES, false);
    assert_eq!(after, before, "40 small commits started the WAL over");
    let (before, after) = run(2, true);
    assert!(
        after > before,
        "a WAL past its pages was never checkpointed"
    );
}

/// The backstop checkpoint runs inside the commit that grew the WAL past it. It can fail — the
/// background checkpoint (here: another connection's, in a loop) holds the checkpoint lock —
/// but the commit has happened by then: the append must report success, or the journal would
/// keep the events to write them again (a doubled event).
#[test]
fn a_busy_backstop_checkpoint_does_not_fail_a_commit() {
    let (_dir, path, j) = normal_journal(JournalOptions {
        checkpoint_pages: u32::MAX,
        backstop_pages: 1,
        ..JournalOptions::default()
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rival = {
        let (path, stop) = (path.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&path).unwrap();
            let mut busy = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r: (i64, i64, i64) = c
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .unwrap_or((1, 0, 0));
                busy += u32::from(r.0 != 0);
            }
            busy
        })
    };
    let mut failed = Vec::new();
    for seq in 1..=400u64 {
        if let Err(e) = j.append(&[event("a", seq, seq as i64)], &[]) {
            failed.push((seq, e.to_string()));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rival_busy = rival.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} commits reported failed, first {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(j.last_seq(), 400, "every event journaled once");
    let c = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = c
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        rows, 400,
        "no event written twice (rival busy {rival_busy} times)"
    );
}
