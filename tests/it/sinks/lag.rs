//! Issue 11 item 12, metrics accuracy of the delivery driver: `liqwatch_sink_lag_events` is the
//! journal head − the sink's cursor after every commit, even while the sink is failing and the
//! driver sleeps in its backoff (it used to move only on delivery attempts: 632 read while the
//! true lag was 952); and the backoff starts over after an attempt that delivered something (a
//! 2 s outage used to take 29 s to drain).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use liqwatch::sinks::{JournalEntry, Sink, SinkError, SinkFilter, SinkState, spawn_sink_with};
use metrics_exporter_prometheus::PrometheusBuilder;
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::sink_contract::{burst, temp_journal, test_options};

/// What the sink does on one call.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Deliver nothing, retriable error.
    Fail,
    /// Deliver this many entries, then a retriable error.
    Partial(usize),
}

/// A sink that follows a script, then accepts everything; it records when it was called.
#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Step>>>,
    fail_forever: bool,
    calls: Arc<Mutex<Vec<Instant>>>,
    delivered: Arc<Mutex<usize>>,
}

impl Scripted {
    fn new(script: &[Step], fail_forever: bool) -> Self {
        Scripted {
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            fail_forever,
            calls: Arc::default(),
            delivered: Arc::default(),
        }
    }
}

fn outage() -> Option<SinkError> {
    Some(SinkError::Retriable {
        reason: "HTTP 503".into(),
        retry_after: None,
    })
}

impl Sink for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn deliver<'a>(
        &'a mut self,
        batch: &'a [JournalEntry],
    ) -> BoxFuture<'a, (usize, Option<SinkError>)> {
        Box::pin(async move {
            self.calls.lock().push(Instant::now());
            let step = self.script.lock().pop_front();
            let (n, error) = match step {
                Some(Step::Fail) => (0, outage()),
                Some(Step::Partial(n)) => (n.min(batch.len()), outage()),
                None if self.fail_forever => (0, outage()),
                None => (batch.len(), None),
            };
            *self.delivered.lock() += n;
            (n, error)
        })
    }
}

/// The gauge's value for sink `scripted` in a Prometheus rendering.
fn lag_gauge(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(r#"liqwatch_sink_lag_events{sink="scripted"} "#))
        .and_then(|v| v.trim().parse().ok())
}

/// While a sink keeps failing and sleeps in a long backoff, every commit moves its lag (health
/// and the Prometheus gauge) to journal head − cursor.
#[test]
fn lag_follows_every_commit_while_failing_issue_11_item_12() {
    // A local recorder sees the metrics of tasks polled on this thread: a current-thread
    // runtime inside `with_local_recorder`.
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (_dir, journal) = temp_journal();
            let cancel = CancellationToken::new();
            let mut opts = test_options();
            // Once failing, the driver sleeps far longer than this test runs.
            opts.backoff_initial = Duration::from_secs(600);
            opts.backoff_max = Duration::from_secs(600);
            opts.drain_grace = Duration::ZERO;
            let sink = Scripted::new(&[], true);
            let task = spawn_sink_with(
                Box::new(sink.clone()),
                SinkFilter::all(),
                Arc::clone(&journal),
                opts,
                cancel.clone(),
            );
            let mut health = task.health.clone();
            let events = burst(40, 4, 1);
            journal.append(&events[..3], &[]).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let h = health.borrow_and_update().clone();
                if h.state == SinkState::Retrying && h.lag == 3 {
                    break;
                }
                assert!(Instant::now() < deadline, "never failed: {h:?}");
                let _ = tokio::time::timeout(Duration::from_secs(1), health.changed()).await;
            }
            assert_eq!(sink.calls.lock().len(), 1);
            // The driver now sleeps for minutes; events keep arriving, one commit each.
            for (i, e) in events[3..].iter().enumerate() {
                journal.append(std::slice::from_ref(e), &[]).unwrap();
                let head = journal.last_seq();
                let cursor = journal.cursor("scripted").unwrap();
                let want = head - cursor;
                assert_eq!(want, 4 + i as u64);
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let h = health.borrow_and_update().clone();
                    if h.lag == want
                        && h.last_seq == head
                        && lag_gauge(&handle.render()) == Some(want)
                    {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "lag {} (gauge {:?}) while head − cursor = {want}",
                        h.lag,
                        lag_gauge(&handle.render())
                    );
                    let _ =
                        tokio::time::timeout(Duration::from_millis(100), health.changed()).await;
                }
            }
            assert_eq!(
                sink.calls.lock().len(),
                1,
                "no extra delivery attempt was needed"
            );
            assert_eq!(task.health().cursor, 0);
            cancel.cancel();
            task.join.await.unwrap();
        });
    });
}

/// After the backoff has grown through an outage, an attempt that delivers at least one event
/// (partial progress) resets it: the next retry comes after at most the initial delay. Paused
/// tokio time: the delays are exact, nothing sleeps on the wall clock.
#[tokio::test(start_paused = true)]
async fn backoff_resets_after_partial_progress_issue_11_item_12() {
    let (_dir, journal) = temp_journal();
    let cancel = CancellationToken::new();
    let mut opts = test_options();
    opts.batch_size = 8;
    opts.backoff_initial = Duration::from_millis(100);
    opts.backoff_max = Duration::from_secs(30);
    let script = [
        Step::Fail,
        Step::Fail,
        Step::Fail,
        Step::Fail,
        Step::Fail,
        Step::Partial(2),
        Step::Partial(1),
    ];
    let sink = Scripted::new(&script, false);
    let events = burst(8, 2, 1);
    journal.append(&events, &[]).unwrap();
    let task = spawn_sink_with(
        Box::new(sink.clone()),
        SinkFilter::all(),
        Arc::clone(&journal),
        opts,
        cancel.clone(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while *sink.delivered.lock() < 8 {
        assert!(Instant::now() < deadline, "not drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = sink.calls.lock().clone();
    assert_eq!(calls.len(), script.len() + 1, "{calls:?}");
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    // Five failures in a row: the fifth retry waits for the cap 100 ms × 2⁴ (jittered down
    // to at least half of it).
    assert!(gaps[4] >= Duration::from_millis(800), "{gaps:?}");
    // Partial progress on call 6 and on call 7: each next retry is back at the initial delay.
    assert!(gaps[5] <= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[6] <= Duration::from_millis(100), "{gaps:?}");
    assert_eq!(journal.cursor("scripted").unwrap(), 8);
    cancel.cancel();
    task.join.await.unwrap();
}
