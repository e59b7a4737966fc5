//! Batched webhook bodies (`batch_max > 1`, generic format) against a real HMAC-verifying HTTP
//! receiver on 127.0.0.1: body shape, signature over the whole body, deterministic batch keys,
//! per-account order over lanes, whole-batch retry, poison isolation, and the shared sink
//! contract through the real journal and driver.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use liqwatch::model::{EventKind, RiskEvent};
use liqwatch::sinks::webhook::{Secret, WebhookConfig, WebhookFormat, WebhookSink};
use liqwatch::sinks::{JournalEntry, Sink, SinkError};
use uuid::Uuid;

use crate::support::sink_contract::{self, SinkFixture, contract_tests};
use crate::support::webhook_receiver::{Receiver, Scripted};

const SECRET: &[u8] = b"whsec_batch_0123456789";

fn entry(seq: u64, account: &str, account_seq: u64) -> JournalEntry {
    let mut event =
        sink_contract::sample_event(account, account_seq, EventKind::LiquidationWarning);
    event.seq = seq;
    let json = serde_json::to_string(&event).unwrap();
    JournalEntry { seq, event, json }
}

fn sink(url: &str, batch_max: usize, concurrency: usize) -> WebhookSink {
    named_sink("batch-hook", url, batch_max, concurrency)
}

fn named_sink(name: &str, url: &str, batch_max: usize, concurrency: usize) -> WebhookSink {
    let mut cfg = WebhookConfig::generic(url);
    cfg.timeout = Duration::from_secs(5);
    cfg.batch_max = batch_max;
    cfg.concurrency = concurrency;
    let mut settings = cfg.resolve(&|_| None).unwrap();
    settings.secret = Some(Secret::new(String::from_utf8_lossy(SECRET)));
    WebhookSink::new(name, settings).unwrap()
}

/// Drives a sink like the delivery driver: retries retriable errors at once, skips (dead-letters)
/// the entry after the delivered prefix on a permanent error. Returns the errors seen.
async fn drive(sink: &mut WebhookSink, batch: &[JournalEntry], max_calls: usize) -> Vec<SinkError> {
    let mut pos = 0;
    let mut errors = Vec::new();
    for _ in 0..max_calls {
        if pos >= batch.len() {
            break;
        }
        let (n, err) = sink.deliver(&batch[pos..]).await;
        pos += n;
        if let Some(e) = err {
            if !e.is_retriable() {
                pos += 1;
            }
            errors.push(e);
        }
    }
    assert!(pos >= batch.len(), "not finished after {max_calls} calls");
    errors
}

/// One POST carries `{"events":[…]}` with each event's journaled JSON byte for byte in journal
/// order, signed over the whole body, keyed `batch:<first>:<last>:<count>`.
#[tokio::test]
async fn batch_body_shape_signature_and_key() {
    let rx = Receiver::start(Some(SECRET)).await;
    let mut s = sink(&rx.url, 500, 1);
    let batch: Vec<JournalEntry> = (1..=7).map(|i| entry(i, &format!("acct-{i}"), 1)).collect();
    let errors = drive(&mut s, &batch, 3).await;
    assert!(errors.is_empty(), "{errors:?}");
    let got = rx.received();
    assert_eq!(got.len(), 1, "seven events in one request");
    let r = &got[0];
    assert_eq!(r.status, 200, "signature verified by the receiver");
    let mut want = b"{\"events\":[".to_vec();
    want.extend(
        batch
            .iter()
            .map(|e| e.json.clone())
            .collect::<Vec<_>>()
            .join(",")
            .into_bytes(),
    );
    want.extend_from_slice(b"]}");
    assert_eq!(
        r.body, want,
        "journaled JSON byte for byte, in journal order"
    );
    let first = batch[0].event.event_id;
    let last = batch[6].event.event_id;
    assert_eq!(
        r.idempotency_key.as_deref(),
        Some(format!("batch:{first}:{last}:7").as_str())
    );
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
}

/// `batch_max` bounds the events per request; `batch_max = 1` keeps one event per request with
/// the event id as key (today's behaviour).
#[tokio::test]
async fn batch_max_bounds_request_size() {
    let rx = Receiver::start(Some(SECRET)).await;
    let mut s = sink(&rx.url, 4, 1);
    let batch: Vec<JournalEntry> = (1..=10).map(|i| entry(i, "acct-1", i)).collect();
    assert!(drive(&mut s, &batch, 3).await.is_empty());
    let sizes: Vec<usize> = rx.accepted().iter().map(|r| r.events().len()).collect();
    assert_eq!(sizes, vec![4, 4, 2]);

    let rx1 = Receiver::start(Some(SECRET)).await;
    let mut s1 = sink(&rx1.url, 1, 1);
    assert!(drive(&mut s1, &batch[..3], 3).await.is_empty());
    let keys: Vec<String> = rx1
        .accepted()
        .iter()
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    let ids: Vec<String> = batch[..3]
        .iter()
        .map(|e| e.event.event_id.to_string())
        .collect();
    assert_eq!(keys, ids);
    assert!(
        rx1.accepted()
            .iter()
            .all(|r| r.json().get("events").is_none())
    );
}

/// A retriable failure retries the whole batch with the same key and body; nothing is lost.
#[tokio::test]
async fn retriable_failure_retries_whole_batch() {
    let rx = Receiver::start(Some(SECRET)).await;
    rx.script([
        Scripted::status(503),
        Scripted::status(429).retry_after("0"),
    ]);
    let mut s = sink(&rx.url, 50, 1);
    let batch: Vec<JournalEntry> = (1..=20)
        .map(|i| entry(i, &format!("acct-{}", i % 3), i))
        .collect();
    let errors = drive(&mut s, &batch, 5).await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().all(SinkError::is_retriable));
    let got = rx.received();
    assert_eq!(got.len(), 3);
    assert!(
        got.windows(2)
            .all(|w| w[0].body == w[1].body && w[0].idempotency_key == w[1].idempotency_key)
    );
    assert_eq!(got[2].status, 200);
    assert_eq!(got[2].events().len(), 20);
}

/// A receiver rejecting a batch (4xx) gets its events one by one: only the event it rejects on
/// its own is dead-lettered, every other event is delivered.
#[tokio::test]
async fn permanent_failure_isolates_the_rejected_event() {
    let rx = Receiver::start(Some(SECRET)).await;
    let mut s = sink(&rx.url, 10, 1);
    let batch: Vec<JournalEntry> = (1..=10).map(|i| entry(i, "acct-1", i)).collect();
    let bad = batch[4].event.event_id.to_string();
    rx.poison(&bad);
    let errors = drive(&mut s, &batch, 5).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(!errors[0].is_retriable());
    let delivered: Vec<String> = rx.accepted().iter().flat_map(|r| r.event_ids()).collect();
    let want: Vec<String> = batch
        .iter()
        .map(|e| e.event.event_id.to_string())
        .filter(|id| *id != bad)
        .collect();
    let unique: Vec<String> = {
        let mut seen = HashSet::new();
        delivered
            .into_iter()
            .filter(|id| seen.insert(id.clone()))
            .collect()
    };
    assert_eq!(unique, want, "all but the poisoned event, in order");
}

/// Batches over several lanes keep each account's events in order and deliver every event,
/// across a scripted 503 mid-way.
#[tokio::test]
async fn lanes_with_batches_keep_per_account_order() {
    let rx = Receiver::start(Some(SECRET)).await;
    rx.script([Scripted::status(200), Scripted::status(503)]);
    let mut s = sink(&rx.url, 16, 4);
    let batch: Vec<JournalEntry> = (1..=300)
        .map(|i| entry(i, &format!("acct-{}", i % 25), i))
        .collect();
    let errors = drive(&mut s, &batch, 20).await;
    assert!(errors.iter().all(SinkError::is_retriable), "{errors:?}");
    let acct_of: HashMap<String, (String, u64)> = batch
        .iter()
        .map(|e| {
            (
                e.event.event_id.to_string(),
                (e.event.account_id.clone().unwrap().to_string(), e.event.seq),
            )
        })
        .collect();
    let mut seen = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let accepted = rx.accepted();
    assert!(
        accepted.iter().any(|r| r.events().len() > 1),
        "bodies are batched"
    );
    for id in accepted.iter().flat_map(|r| r.event_ids()) {
        if !seen.insert(id.clone()) {
            continue;
        }
        let (acct, seq) = acct_of[&id].clone();
        let prev = last.insert(acct.clone(), seq).unwrap_or(0);
        assert!(seq > prev, "{acct}: seq {seq} after {prev}");
    }
    assert_eq!(seen.len(), 300, "every event accepted");
}

/// `batch_max` is validated: 0 and above the maximum are rejected, and chat formats refuse it.
#[test]
fn batch_max_is_validated() {
    for bad in [0, 1001] {
        let mut cfg = WebhookConfig::generic("http://127.0.0.1:1/hook");
        cfg.batch_max = bad;
        let errs = cfg.resolve(&|_| None).unwrap_err();
        assert!(errs.iter().any(|e| e.contains("batch_max")), "{errs:?}");
    }
    let mut cfg = WebhookConfig::generic("http://127.0.0.1:1/hook");
    cfg.format = WebhookFormat::Slack;
    cfg.batch_max = 10;
    let errs = cfg.resolve(&|_| None).unwrap_err();
    assert!(errs.iter().any(|e| e.contains("generic only")), "{errs:?}");
    let parsed: WebhookConfig =
        toml::from_str("url = \"http://127.0.0.1:1/hook\"\nbatch_max = 500\n").unwrap();
    assert_eq!(parsed.resolve(&|_| None).unwrap().batch_max, 500);
    let default: WebhookConfig = toml::from_str("url = \"http://127.0.0.1:1/hook\"\n").unwrap();
    assert_eq!(default.batch_max, 1);
}

struct BatchFixture {
    rx: Receiver,
}

impl SinkFixture for BatchFixture {
    async fn make_sink(&mut self, name: &str) -> Box<dyn Sink> {
        Box::new(named_sink(name, &self.rx.url, 8, 1))
    }

    async fn received(&mut self) -> Vec<Uuid> {
        self.rx
            .accepted()
            .iter()
            .flat_map(|r| r.event_ids())
            .map(|id| id.parse().unwrap())
            .collect()
    }

    async fn fail(&mut self) {
        self.rx.set_failing(true);
    }

    async fn heal(&mut self) {
        self.rx.set_failing(false);
    }

    fn poison(&mut self, event: &mut RiskEvent) {
        self.rx.poison(&event.event_id.to_string());
    }
}

contract_tests!(
    webhook_batched,
    BatchFixture {
        rx: Receiver::start(Some(SECRET)).await
    }
);
