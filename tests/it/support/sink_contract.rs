//! The shared sink contract: one generic test suite every sink passes, run against a real
//! journal in a temp dir and the real delivery driver.
//!
//! # Plugging a sink in
//!
//! Implement [`SinkFixture`] for your sink in your test file (receiver set-up lives there), then
//! generate the four contract tests with the macro:
//!
//! ```ignore
//! use crate::support::sink_contract::{SinkFixture, contract_tests};
//!
//! struct WebhookFixture { /* a real axum receiver on 127.0.0.1:0 */ }
//! impl SinkFixture for WebhookFixture {
//!     async fn make_sink(&mut self, name: &str) -> Box<dyn Sink> { /* WebhookSink to receiver */ }
//!     async fn received(&mut self) -> Vec<Uuid> { /* ids the receiver accepted (2xx), in order */ }
//!     async fn fail(&mut self) { /* receiver answers 503 from now on */ }
//!     async fn heal(&mut self) { /* receiver answers 200 again */ }
//!     fn poison(&mut self, event: &mut RiskEvent) { /* remember event.event_id: receiver answers 400 */ }
//! }
//! contract_tests!(webhook, WebhookFixture::start().await);
//! ```
//!
//! For NATS: `fail` stops the `nats-server` (or its stream), `heal` restarts it; `received`
//! reads the stream; `poison` can bloat the event past the stream's `max_msg_size`.
//!
//! What the suite asserts (each a separate `#[tokio::test]`):
//! 1. `delivers_everything_in_order` — three bursts over several accounts arrive exactly once,
//!    in journal order; cursor at the end, lag 0, no dead letters.
//! 2. `retries_retriable_errors` — while the receiver fails the driver retries (health shows
//!    retries and the sink stuck-free backlog), then delivers everything in order once healed.
//! 3. `dead_letters_permanent_errors` — a poisoned event lands in the dead-letter table with a
//!    reason; every other event is delivered in order.
//! 4. `resumes_after_drop_mid_batch` — the sink is dropped after delivering part of a batch and
//!    a new instance resumes from the journal cursor: nothing lost, duplicates only as
//!    re-deliveries of already-received ids, first arrivals in journal order.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use liqwatch::journal::Journal;
use liqwatch::model::{
    AccountId, AccountState, CollateralRisk, EventKind, InstrumentId, MarginRatio, PositionRisk,
    PositionSide, PriceUsed, RiskEvent, RiskSnapshot, ShockDistance,
};
use liqwatch::sinks::{
    DriverOptions, JournalEntry, Sink, SinkError, SinkFilter, SinkTask, spawn_sink_with,
};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long any wait in the contract may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// What a sink's test fixture provides to the contract suite.
#[allow(async_fn_in_trait)]
pub trait SinkFixture {
    /// A new sink instance named `name`, delivering to the fixture's receiver. Called again
    /// to simulate a restart; instances never run at the same time.
    async fn make_sink(&mut self, name: &str) -> Box<dyn Sink>;
    /// Event ids the receiver has accepted so far, in arrival order, duplicates included.
    async fn received(&mut self) -> Vec<Uuid>;
    /// From now on, every delivery attempt fails in a way the sink reports as retriable.
    async fn fail(&mut self);
    /// Deliveries succeed again.
    async fn heal(&mut self);
    /// Changes `event` (before it is journaled) so the sink reports a permanent failure for it.
    fn poison(&mut self, event: &mut RiskEvent);
}

/// Driver options for tests: short backoffs, small batches, generous timeouts.
pub fn test_options() -> DriverOptions {
    DriverOptions {
        batch_size: 8,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        deliver_timeout: Duration::from_secs(10),
        stuck_after: Duration::from_secs(3600),
        drain_grace: Duration::from_secs(2),
        idle_recheck: Duration::from_secs(1),
    }
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap_or_default()
}

/// A realistic account event (snapshot with three positions, two collateral assets and the
/// prices used), as the engine emits it during a crash like 2021-05-19.
pub fn sample_event(account: &str, account_seq: u64, kind: EventKind) -> RiskEvent {
    let time_ms = 1_621_428_600_000 + account_seq as i64 * 1000;
    let pos = |inst: &str, qty: &str, entry: &str, mark: &str, mm: &str| PositionRisk {
        instrument: InstrumentId::from(inst),
        side: PositionSide::Both,
        quantity: d(qty),
        entry_price: d(entry),
        mark_price: d(mark),
        notional: d(mark) * d(qty).abs(),
        unrealized_pnl: (d(mark) - d(entry)) * d(qty),
        maintenance_margin: d(mm),
        tier: 1,
        liquidation_price: Some(d(mark) * d("0.93")),
        liquidation_price_down: Some(d(mark) * d("0.93")),
        liquidation_price_up: None,
    };
    let price = |inst: &str, p: &str| PriceUsed {
        instrument: InstrumentId::from(inst),
        price: d(p),
        source: "binance-usdm".into(),
        received_ts: time_ms - 120,
        age_ms: 120,
        stale: false,
    };
    let (level, state) = match kind {
        EventKind::LiquidationTrigger => (d("1.0"), AccountState::Triggered),
        EventKind::Recovered => (d("0.8"), AccountState::Healthy),
        _ => (d("0.8"), AccountState::Warning { level: d("0.8") }),
    };
    RiskEvent {
        event_id: RiskEvent::new_id(),
        kind,
        time: liqwatch::model::format_rfc3339_ms(time_ms),
        time_ms,
        account_id: Some(AccountId::from(account)),
        seq: account_seq,
        level: Some(level),
        crossed_levels: vec![level],
        level_type: None,
        previous_state: Some(AccountState::Healthy),
        state: Some(state),
        snapshot: Some(Box::new(RiskSnapshot {
            equity: d("9134.52"),
            maintenance_margin: d("7552.18"),
            margin_ratio: MarginRatio::Finite(d("0.8267")),
            free_margin: d("1582.34"),
            shock_distance: ShockDistance {
                down: Some(d("-0.0412")),
                up: None,
                nearest: Some(d("-0.0412")),
            },
            liquidation_penalty: d("2316.40"),
            positions: vec![
                pos("BTCUSDT-PERP", "2.5", "42650.1", "37215.32", "4651.91"),
                pos("ETHUSDT-PERP", "-10", "2410.55", "2476.18", "247.61"),
                pos("SOLUSDT-PERP", "400", "48.20", "41.37", "165.48"),
            ],
            collateral: vec![
                CollateralRisk {
                    asset: InstrumentId::from("USDT"),
                    amount: d("25000"),
                    price: d("1"),
                    value: d("25000"),
                },
                CollateralRisk {
                    asset: InstrumentId::from("BTC"),
                    amount: d("0.1"),
                    price: d("37215.32"),
                    value: d("3535.45"),
                },
            ],
            liquidation_cost: None,
            funding: None,
            margin_call: None,
        })),
        prices: vec![
            price("BTCUSDT-PERP", "37215.32"),
            price("ETHUSDT-PERP", "2476.18"),
            price("SOLUSDT-PERP", "41.37"),
        ],
        stale_prices: false,
        feed: None,
        instrument_change: None,
        risk: None,
    }
}

/// `n` events spread over `accounts` accounts (round robin), with per-account seqs.
pub fn burst(n: usize, accounts: usize, first_account_seq: u64) -> Vec<RiskEvent> {
    (0..n)
        .map(|i| {
            let account = format!("acct-{:05}", i % accounts.max(1));
            let seq = first_account_seq + (i / accounts.max(1)) as u64;
            let kind = if i % 7 == 6 {
                EventKind::LiquidationTrigger
            } else {
                EventKind::LiquidationWarning
            };
            sample_event(&account, seq, kind)
        })
        .collect()
}

/// Polls `f` every 10 ms until it yields `Some`, failing the test after [`DEADLINE`].
pub async fn wait_for<T, Fut>(what: &str, mut f: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asserts at-least-once, in-order delivery: every expected id arrived, nothing unexpected
/// did, first arrivals follow journal order, and any repeat is of an id already received.
pub fn assert_delivered(expected: &[Uuid], received: &[Uuid]) {
    let want: HashSet<Uuid> = expected.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    for id in received {
        assert!(
            want.contains(id),
            "received an id that was not expected: {id}"
        );
        if seen.insert(*id) {
            firsts.push(*id);
        }
    }
    assert_eq!(
        firsts.len(),
        expected.len(),
        "missing events: {:?}",
        expected
            .iter()
            .filter(|id| !seen.contains(id))
            .collect::<Vec<_>>()
    );
    assert_eq!(firsts, expected, "first arrivals are not in journal order");
}

/// A fresh journal in a temp dir.
pub fn temp_journal() -> (tempfile::TempDir, Arc<Journal>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = Journal::create(dir.path().join("journal.db")).expect("create journal");
    (dir, Arc::new(journal))
}

fn start(sink: Box<dyn Sink>, journal: &Arc<Journal>) -> (SinkTask, CancellationToken) {
    let cancel = CancellationToken::new();
    let task = spawn_sink_with(
        sink,
        SinkFilter::all(),
        Arc::clone(journal),
        test_options(),
        cancel.clone(),
    );
    (task, cancel)
}

async fn stop(task: SinkTask, cancel: CancellationToken) {
    cancel.cancel();
    let _ = tokio::time::timeout(DEADLINE, task.join).await;
}

async fn wait_received<F: SinkFixture>(fx: &mut F, at_least: usize) -> Vec<Uuid> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = fx.received().await;
        if got.iter().collect::<HashSet<_>>().len() >= at_least {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {at_least} distinct events; receiver has {}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ids(events: &[RiskEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

/// Contract 1: everything journaled arrives exactly once, in journal order.
pub async fn delivers_everything_in_order<F: SinkFixture>(fx: &mut F) {
    let (_dir, journal) = temp_journal();
    let mut all = Vec::new();
    for b in 0..3u64 {
        let events = burst(10, 4, 1 + b * 3);
        journal.append(&events, &[]).expect("append");
        all.extend(ids(&events));
    }
    let sink = fx.make_sink("contract").await;
    let (task, cancel) = start(sink, &journal);
    let got = wait_received(fx, all.len()).await;
    assert_eq!(got, all, "a clean run delivers exactly once, in order");
    // Events appended while the driver idles are picked up via the commit notification.
    let late = burst(5, 2, 100);
    journal.append(&late, &[]).expect("append");
    all.extend(ids(&late));
    let got = wait_received(fx, all.len()).await;
    assert_eq!(got, all);
    wait_for("cursor at the end", || async {
        (journal.cursor("contract").ok()? == journal.last_seq()).then_some(())
    })
    .await;
    assert_eq!(journal.lag("contract").expect("lag"), 0);
    assert!(
        journal
            .dead_letters("contract")
            .expect("dead letters")
            .is_empty()
    );
    let h = task.health();
    assert_eq!(h.delivered, all.len() as u64);
    assert_eq!(h.retries, 0);
    stop(task, cancel).await;
}

/// Contract 2: retriable failures are retried until the receiver heals; nothing is lost.
pub async fn retries_retriable_errors<F: SinkFixture>(fx: &mut F) {
    let (_dir, journal) = temp_journal();
    let first = burst(6, 3, 1);
    journal.append(&first, &[]).expect("append");
    let sink = fx.make_sink("contract").await;
    let (task, cancel) = start(sink, &journal);
    wait_received(fx, first.len()).await;
    fx.fail().await;
    let second = burst(12, 3, 10);
    journal.append(&second, &[]).expect("append");
    let mut health = task.health.clone();
    wait_for("at least two retries", || {
        let h = health.borrow_and_update().clone();
        async move { (h.retries >= 2 && h.last_error.is_some()).then_some(()) }
    })
    .await;
    assert!(
        journal.lag("contract").expect("lag") > 0,
        "cursor must not pass failed events"
    );
    fx.heal().await;
    let expected: Vec<Uuid> = ids(&first).into_iter().chain(ids(&second)).collect();
    let got = wait_received(fx, expected.len()).await;
    assert_delivered(&expected, &got);
    wait_for("lag 0 after healing", || async {
        (journal.lag("contract").ok()? == 0).then_some(())
    })
    .await;
    assert!(
        journal
            .dead_letters("contract")
            .expect("dead letters")
            .is_empty()
    );
    wait_for("health clears the error", || {
        let h = task.health();
        async move { (h.consecutive_failures == 0 && h.last_error.is_none()).then_some(()) }
    })
    .await;
    stop(task, cancel).await;
}

/// Contract 3: a permanently rejected event is dead-lettered with a reason; the rest arrive.
pub async fn dead_letters_permanent_errors<F: SinkFixture>(fx: &mut F) {
    let (_dir, journal) = temp_journal();
    let mut events = burst(9, 3, 1);
    fx.poison(&mut events[4]);
    let poisoned = events[4].event_id;
    journal.append(&events, &[]).expect("append");
    let sink = fx.make_sink("contract").await;
    let (task, cancel) = start(sink, &journal);
    let expected: Vec<Uuid> = ids(&events)
        .into_iter()
        .filter(|id| *id != poisoned)
        .collect();
    let got = wait_received(fx, expected.len()).await;
    wait_for("lag 0", || async {
        (journal.lag("contract").ok()? == 0).then_some(())
    })
    .await;
    let got_after = fx.received().await;
    assert!(got_after.len() >= got.len());
    assert_delivered(&expected, &got_after);
    let dl = journal.dead_letters("contract").expect("dead letters");
    assert_eq!(
        dl.len(),
        1,
        "exactly the poisoned event is dead-lettered: {dl:?}"
    );
    assert_eq!(dl[0].event_id, poisoned.to_string());
    assert_eq!(dl[0].seq, 5);
    assert!(!dl[0].reason.is_empty(), "a dead letter says why");
    assert!(!dl[0].json.is_empty(), "a dead letter keeps the event");
    assert_eq!(task.health().dead_letters, 1);
    stop(task, cancel).await;
}

/// Wraps a sink: the first `deliver` hands only `deliver_first` entries to the inner sink,
/// then never returns (the process "dies" mid-batch).
pub struct DiesMidBatch {
    inner: Box<dyn Sink>,
    deliver_first: usize,
    died: bool,
}

impl Sink for DiesMidBatch {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn deliver<'a>(
        &'a mut self,
        batch: &'a [JournalEntry],
    ) -> BoxFuture<'a, (usize, Option<SinkError>)> {
        Box::pin(async move {
            if self.died {
                return futures::future::pending().await;
            }
            self.died = true;
            let k = self.deliver_first.min(batch.len());
            let _ = self.inner.deliver(&batch[..k]).await;
            futures::future::pending().await
        })
    }
}

/// Contract 4: dropped mid-batch and restarted, the sink resumes with nothing lost.
pub async fn resumes_after_drop_mid_batch<F: SinkFixture>(fx: &mut F) {
    let (_dir, journal) = temp_journal();
    let events = burst(20, 5, 1);
    journal.append(&events, &[]).expect("append");
    let inner = fx.make_sink("contract").await;
    let dying = Box::new(DiesMidBatch {
        inner,
        deliver_first: 3,
        died: false,
    });
    let (task, cancel) = start(dying, &journal);
    let partial = wait_received(fx, 3).await;
    assert_eq!(partial.len(), 3);
    // Kill it: abort the driver with the delivery in flight.
    task.join.abort();
    let _ = task.join.await;
    cancel.cancel();
    assert_eq!(
        journal.cursor("contract").expect("cursor"),
        0,
        "nothing was acknowledged, so the cursor did not move"
    );
    let sink = fx.make_sink("contract").await;
    let (task, cancel) = start(sink, &journal);
    let expected = ids(&events);
    let got = wait_received(fx, expected.len()).await;
    assert_delivered(&expected, &got);
    let dups = got.len() - expected.len();
    assert!(
        dups <= 3,
        "only the 3 unacknowledged events may repeat, got {dups} repeats"
    );
    wait_for("lag 0", || async {
        (journal.lag("contract").ok()? == 0).then_some(())
    })
    .await;
    stop(task, cancel).await;
}

/// Generates the four contract tests in a module named `$name`, building a fresh fixture
/// with `$make` (an expression, may use `.await`) for each.
macro_rules! contract_tests {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            /// Contract: everything arrives exactly once, in journal order.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delivers_everything_in_order() {
                let mut fx = $make;
                $crate::support::sink_contract::delivers_everything_in_order(&mut fx).await;
            }

            /// Contract: retriable failures are retried until the receiver heals.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retries_retriable_errors() {
                let mut fx = $make;
                $crate::support::sink_contract::retries_retriable_errors(&mut fx).await;
            }

            /// Contract: a permanent failure is dead-lettered and delivery moves on.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dead_letters_permanent_errors() {
                let mut fx = $make;
                $crate::support::sink_contract::dead_letters_permanent_errors(&mut fx).await;
            }

            /// Contract: dropped mid-batch and restarted, nothing is lost.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn resumes_after_drop_mid_batch() {
                let mut fx = $make;
                $crate::support::sink_contract::resumes_after_drop_mid_batch(&mut fx).await;
            }
        }
    };
}
pub(crate) use contract_tests;
