//! NATS sink against a real `nats-server -js`: subjects and `Nats-Msg-Id`, JetStream
//! de-duplication, and a broker restart mid-stream with nothing lost.

use std::time::Duration;

use liqwatch::model::{AccountId, EventKind, RiskEvent};
use liqwatch::sinks::nats::{NatsConfig, NatsSink, StreamConfig};
use liqwatch::sinks::{JournalEntry, Sink, SinkError};

use crate::support::nats_server::NatsServer;

fn entry(seq: u64, kind: EventKind, account: &str) -> JournalEntry {
    let time_ms = 1_621_428_600_000 + seq as i64;
    let event = RiskEvent {
        event_id: RiskEvent::new_id(),
        kind,
        time: liqwatch::model::format_rfc3339_ms(time_ms),
        time_ms,
        account_id: Some(AccountId::from(account)),
        seq,
        level: Some(rust_decimal::Decimal::ONE),
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
    };
    let json = serde_json::to_string(&event).unwrap();
    JournalEntry { seq, event, json }
}

/// A sink on its own subject prefix and stream, so tests can share an external server.
fn sink(url: &str, timeout: Duration) -> (NatsSink, String, String) {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("lwtest{tag}");
    let stream = format!("LWTEST_{tag}");
    let mut cfg = NatsConfig::new(url);
    cfg.subject = format!("{prefix}.{{kind}}");
    cfg.timeout = timeout;
    cfg.stream = Some(StreamConfig {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        duplicate_window: Duration::from_secs(120),
        create: true,
    });
    let settings = cfg.resolve(&|_| None).unwrap();
    (NatsSink::new("nats", settings), prefix, stream)
}

async fn stream_messages(
    url: &str,
    stream: &str,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let mut s = js.get_stream(stream).await.unwrap();
    let n = s.info().await.unwrap().state.messages;
    let mut out = Vec::new();
    for seq in 1..=n {
        out.push(s.get_raw_message(seq).await.unwrap());
    }
    out
}

/// Each event lands on `<prefix>.<kind>` with `Nats-Msg-Id` = event id and the journaled JSON.
#[tokio::test]
async fn publishes_arrive_with_subject_and_msg_id() {
    let server = NatsServer::start().await;
    let (mut sink, prefix, stream) = sink(&server.url, Duration::from_secs(5));
    let batch = vec![
        entry(1, EventKind::LiquidationWarning, "a1"),
        entry(2, EventKind::LiquidationTrigger, "a1"),
        entry(3, EventKind::Recovered, "a1"),
    ];
    assert_eq!(sink.deliver(&batch).await, (3, None));
    let msgs = stream_messages(&server.url, &stream).await;
    assert_eq!(msgs.len(), 3);
    for (m, e) in msgs.iter().zip(&batch) {
        assert_eq!(
            m.subject.as_str(),
            format!("{prefix}.{}", e.event.kind.as_str())
        );
        assert_eq!(
            m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string()),
            Some(e.event.event_id.to_string())
        );
        assert_eq!(m.payload.as_ref(), e.json.as_bytes());
    }
}

/// Re-delivering the same events is accepted and JetStream stores each event once.
#[tokio::test]
async fn duplicates_are_deduplicated() {
    let server = NatsServer::start().await;
    let (mut sink, _, stream) = sink(&server.url, Duration::from_secs(5));
    let batch: Vec<JournalEntry> = (1..=50)
        .map(|i| entry(i, EventKind::LiquidationWarning, &format!("acct-{i}")))
        .collect();
    assert_eq!(sink.deliver(&batch).await, (50, None));
    assert_eq!(sink.deliver(&batch[10..30]).await, (20, None));
    let msgs = stream_messages(&server.url, &stream).await;
    let ids: Vec<String> = msgs
        .iter()
        .map(|m| m.headers.get("Nats-Msg-Id").unwrap().as_str().to_string())
        .collect();
    let want: Vec<String> = batch.iter().map(|e| e.event.event_id.to_string()).collect();
    assert_eq!(ids, want);
}

/// With the broker stopped the sink reports retriable errors; after a restart on the same
/// store, retrying delivers everything, in order, each event stored once.
#[tokio::test]
async fn broker_restart_loses_nothing() {
    let mut server = NatsServer::start().await;
    let (mut sink, _, stream) = sink(&server.url, Duration::from_millis(500));
    let batch: Vec<JournalEntry> = (1..=40)
        .map(|i| entry(i, EventKind::LiquidationWarning, &format!("acct-{}", i % 7)))
        .collect();
    assert_eq!(sink.deliver(&batch[..10]).await, (10, None));

    server.stop();
    let mut pos = 10;
    let (n, err) = sink.deliver(&batch[pos..20]).await;
    pos += n;
    assert!(
        matches!(err, Some(SinkError::Retriable { .. })),
        "stopped broker must be retriable: {err:?}"
    );
    assert!(pos < 20, "nothing can be acked while the broker is down");

    server.restart().await;
    // Retry like the driver does until everything is acked (poll with a deadline).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut retriable_errors = 1;
    while pos < batch.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered after restart: {pos}"
        );
        let (n, err) = sink.deliver(&batch[pos..]).await;
        pos += n;
        if let Some(e) = err {
            assert!(e.is_retriable(), "{e:?}");
            retriable_errors += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(retriable_errors >= 1);
    let msgs = stream_messages(&server.url, &stream).await;
    let ids: Vec<String> = msgs
        .iter()
        .map(|m| m.headers.get("Nats-Msg-Id").unwrap().as_str().to_string())
        .collect();
    let want: Vec<String> = batch.iter().map(|e| e.event.event_id.to_string()).collect();
    assert_eq!(
        ids, want,
        "every event stored exactly once, in journal order"
    );
}

/// With no stream capturing the subject, publishing is retriable and says how to fix it.
#[tokio::test]
async fn missing_stream_is_retriable_with_advice() {
    let server = NatsServer::start().await;
    let mut cfg = NatsConfig::new(&server.url);
    cfg.subject = format!("nostream{}.{{kind}}", uuid::Uuid::now_v7().simple());
    cfg.timeout = Duration::from_secs(2);
    let mut sink = NatsSink::new("nats", cfg.resolve(&|_| None).unwrap());
    let (n, err) = sink
        .deliver(&[entry(1, EventKind::LiquidationTrigger, "a")])
        .await;
    assert_eq!(n, 0);
    match err {
        Some(SinkError::Retriable { reason, .. }) => {
            assert!(reason.contains("no JetStream stream"), "{reason}")
        }
        other => panic!("expected retriable, got {other:?}"),
    }
}

/// An event larger than the server's max_payload is permanent (dead-lettered), and the events
/// before it are delivered.
#[tokio::test]
async fn oversized_event_is_permanent() {
    let server = NatsServer::start().await;
    let (mut sink, _, stream) = sink(&server.url, Duration::from_secs(5));
    let mut big = entry(2, EventKind::LiquidationWarning, "a");
    big.json = format!("{{\"pad\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let batch = vec![entry(1, EventKind::LiquidationWarning, "a"), big];
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!(n, 1);
    assert!(matches!(err, Some(SinkError::Permanent { .. })), "{err:?}");
    assert_eq!(stream_messages(&server.url, &stream).await.len(), 1);
}
