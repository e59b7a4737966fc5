//! The generic delivery driver: filters, stuck-sink alarm and isolation, `retry_after`,
//! unreadable journal rows, and draining on shutdown.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use liqwatch::model::{AccountId, EventKind};
use liqwatch::sinks::{
    JournalEntry, Severity, Sink, SinkError, SinkFilter, SinkState, spawn_sink_with,
};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::sink_contract::{burst, sample_event, temp_journal, test_options, wait_for};

/// What the scripted sink does on each call.
#[derive(Clone)]
enum Mode {
    Accept,
    FailAlways(SinkError),
    /// Fail the first call with this error, then accept.
    FailOnce(SinkError),
}

#[derive(Clone)]
struct Scripted {
    name: String,
    mode: Arc<Mutex<Mode>>,
    got: Arc<Mutex<Vec<Uuid>>>,
    calls: Arc<Mutex<Vec<tokio::time::Instant>>>,
}

impl Scripted {
    fn new(name: &str, mode: Mode) -> Self {
        Self {
            name: name.into(),
            mode: Arc::new(Mutex::new(mode)),
            got: Arc::default(),
            calls: Arc::default(),
        }
    }
    fn got(&self) -> Vec<Uuid> {
        self.got.lock().clone()
    }
}

impl Sink for Scripted {
    fn name(&self) -> &str {
        &self.name
    }
    fn deliver<'a>(
        &'a mut self,
        batch: &'a [JournalEntry],
    ) -> BoxFuture<'a, (usize, Option<SinkError>)> {
        Box::pin(async move {
            self.calls.lock().push(tokio::time::Instant::now());
            let mode = self.mode.lock().clone();
            match mode {
                Mode::Accept => {}
                Mode::FailAlways(e) => return (0, Some(e)),
                Mode::FailOnce(e) => {
                    *self.mode.lock() = Mode::Accept;
                    return (0, Some(e));
                }
            }
            self.got
                .lock()
                .extend(batch.iter().map(|e| e.event.event_id));
            (batch.len(), None)
        })
    }
}

/// Kind, severity and account filters deliver only matching events; the rest advance the cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_selects_and_skipped_events_advance_cursor() {
    let (_dir, journal) = temp_journal();
    let mut events = burst(14, 2, 1); // acct-00000 / acct-00001, every 7th a trigger
    events.push(sample_event("acct-00000", 50, EventKind::Recovered));
    journal.append(&events, &[]).unwrap();
    let cancel = CancellationToken::new();

    let triggers = Scripted::new("triggers", Mode::Accept);
    let t = spawn_sink_with(
        Box::new(triggers.clone()),
        SinkFilter {
            kinds: BTreeSet::from([EventKind::LiquidationTrigger]),
            ..SinkFilter::default()
        },
        Arc::clone(&journal),
        test_options(),
        cancel.clone(),
    );
    let warnings_up = Scripted::new("warnings-up", Mode::Accept);
    let w = spawn_sink_with(
        Box::new(warnings_up.clone()),
        SinkFilter {
            min_severity: Severity::Warning,
            accounts: BTreeSet::from([AccountId::from("acct-00001")]),
            ..SinkFilter::default()
        },
        Arc::clone(&journal),
        test_options(),
        cancel.clone(),
    );
    for name in ["triggers", "warnings-up"] {
        wait_for("cursor at the end", || async {
            (journal.cursor(name).ok()? == journal.last_seq()).then_some(())
        })
        .await;
    }
    let want_t: Vec<Uuid> = events
        .iter()
        .filter(|e| e.kind == EventKind::LiquidationTrigger)
        .map(|e| e.event_id)
        .collect();
    assert_eq!(want_t.len(), 2);
    assert_eq!(triggers.got(), want_t);
    let want_w: Vec<Uuid> = events
        .iter()
        .filter(|e| {
            e.kind.severity() >= 1 && e.account_id.as_ref().unwrap().as_str() == "acct-00001"
        })
        .map(|e| e.event_id)
        .collect();
    assert_eq!(warnings_up.got(), want_w);
    assert_eq!(t.health().filtered, 13);
    assert_eq!(w.health().filtered, (15 - want_w.len()) as u64);
    cancel.cancel();
    t.join.await.unwrap();
    w.join.await.unwrap();
}

/// A sink that keeps failing is reported stuck (and keeps its events), while another sink on
/// the same journal delivers everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_sink_alarms_without_blocking_others() {
    let (_dir, journal) = temp_journal();
    let cancel = CancellationToken::new();
    let mut opts = test_options();
    opts.stuck_after = Duration::from_millis(200);
    let dead = Scripted::new(
        "dead",
        Mode::FailAlways(SinkError::Retriable {
            reason: "connection refused".into(),
            retry_after: None,
        }),
    );
    let d = spawn_sink_with(
        Box::new(dead.clone()),
        SinkFilter::all(),
        Arc::clone(&journal),
        opts,
        cancel.clone(),
    );
    let live = Scripted::new("live", Mode::Accept);
    let l = spawn_sink_with(
        Box::new(live.clone()),
        SinkFilter::all(),
        Arc::clone(&journal),
        test_options(),
        cancel.clone(),
    );
    let events = burst(30, 3, 1);
    journal.append(&events, &[]).unwrap();
    let want: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    wait_for("live sink delivers all", || async {
        (live.got() == want).then_some(())
    })
    .await;
    let mut health = d.health.clone();
    let h = wait_for("dead sink reported stuck", || {
        let h = health.borrow_and_update().clone();
        async move { (h.state == SinkState::Stuck).then_some(h) }
    })
    .await;
    assert!(!h.is_healthy());
    assert_eq!(h.last_error.as_deref(), Some("connection refused"));
    assert_eq!(h.lag, 30);
    assert_eq!(journal.cursor("dead").unwrap(), 0);
    assert!(l.health().is_healthy());
    // Recovery clears the alarm.
    *dead.mode.lock() = Mode::Accept;
    wait_for("dead sink recovers", || {
        let h = health.borrow_and_update().clone();
        async move { (h.state != SinkState::Stuck && h.lag == 0).then_some(()) }
    })
    .await;
    assert_eq!(dead.got(), want);
    cancel.cancel();
    d.join.await.unwrap();
    l.join.await.unwrap();
}

/// A receiver's `retry_after` is honoured: the retry waits at least that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let (_dir, journal) = temp_journal();
    let cancel = CancellationToken::new();
    let s = Scripted::new(
        "slow-down",
        Mode::FailOnce(SinkError::Retriable {
            reason: "HTTP 429".into(),
            retry_after: Some(Duration::from_millis(300)),
        }),
    );
    let t = spawn_sink_with(
        Box::new(s.clone()),
        SinkFilter::all(),
        Arc::clone(&journal),
        test_options(),
        cancel.clone(),
    );
    let events = burst(3, 1, 1);
    journal.append(&events, &[]).unwrap();
    wait_for("delivered", || async { (s.got().len() == 3).then_some(()) }).await;
    let calls = s.calls.lock().clone();
    assert_eq!(calls.len(), 2);
    assert!(
        calls[1] - calls[0] >= Duration::from_millis(300),
        "retried after {:?}",
        calls[1] - calls[0]
    );
    assert_eq!(t.health().retries, 1);
    cancel.cancel();
    t.join.await.unwrap();
}

/// An unreadable journal row is dead-lettered with the reason and delivery continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_row_is_dead_lettered() {
    let (dir, journal) = temp_journal();
    let events = burst(5, 1, 1);
    journal.append(&events, &[]).unwrap();
    let raw = rusqlite::Connection::open(dir.path().join("journal.db")).unwrap();
    raw.execute("UPDATE events SET json = '{not json' WHERE seq = 2", [])
        .unwrap();
    drop(raw);
    let cancel = CancellationToken::new();
    let s = Scripted::new("s", Mode::Accept);
    let t = spawn_sink_with(
        Box::new(s.clone()),
        SinkFilter::all(),
        Arc::clone(&journal),
        test_options(),
        cancel.clone(),
    );
    wait_for("the rest delivered", || async {
        (s.got().len() == 4).then_some(())
    })
    .await;
    let want: Vec<Uuid> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, e)| e.event_id)
        .collect();
    assert_eq!(s.got(), want);
    let dl = journal.dead_letters("s").unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].seq, 2);
    assert!(dl[0].reason.contains("unreadable"), "{}", dl[0].reason);
    cancel.cancel();
    t.join.await.unwrap();
}

/// On shutdown the driver delivers what is already journaled, then stops; a sink that keeps
/// failing stops at the grace period with its cursor intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_on_shutdown_within_grace() {
    let (_dir, journal) = temp_journal();
    let cancel = CancellationToken::new();
    let ok = Scripted::new("ok", Mode::Accept);
    let failing = Scripted::new(
        "failing",
        Mode::FailAlways(SinkError::Retriable {
            reason: "503".into(),
            retry_after: None,
        }),
    );
    let mut opts = test_options();
    opts.drain_grace = Duration::from_millis(300);
    let a = spawn_sink_with(
        Box::new(ok.clone()),
        SinkFilter::all(),
        Arc::clone(&journal),
        opts.clone(),
        cancel.clone(),
    );
    let b = spawn_sink_with(
        Box::new(failing.clone()),
        SinkFilter::all(),
        Arc::clone(&journal),
        opts,
        cancel.clone(),
    );
    let events = burst(40, 4, 1);
    journal.append(&events, &[]).unwrap();
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), a.join)
        .await
        .expect("ok sink stops")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), b.join)
        .await
        .expect("failing sink stops at the grace period")
        .unwrap();
    assert_eq!(
        ok.got(),
        events.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
    assert_eq!(journal.cursor("ok").unwrap(), 40);
    assert_eq!(journal.cursor("failing").unwrap(), 0);
    assert_eq!(a.health.borrow().state, SinkState::Stopped);
}
