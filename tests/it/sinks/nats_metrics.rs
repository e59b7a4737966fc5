//! The NATS sink emits the metrics docs/metrics.md documents (rendered through a real
//! Prometheus recorder), including JetStream's duplicate acks.

use std::time::Duration;

use liqwatch::model::{AccountId, EventKind, RiskEvent};
use liqwatch::sinks::nats::{NatsConfig, NatsSink, StreamConfig};
use liqwatch::sinks::{JournalEntry, Sink};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::support::nats_server::NatsServer;

fn entry(seq: u64) -> JournalEntry {
    let event = RiskEvent {
        event_id: RiskEvent::new_id(),
        kind: EventKind::LiquidationTrigger,
        time: liqwatch::model::format_rfc3339_ms(1_621_428_600_000),
        time_ms: 1_621_428_600_000,
        account_id: Some(AccountId::from("m")),
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

/// Publishes are counted by outcome, duplicates counted, and ack latency recorded per sink.
#[test]
fn documented_metrics_are_emitted() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(NatsServer::start());
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let tag = uuid::Uuid::now_v7().simple().to_string();
            let mut cfg = NatsConfig::new(server.url.clone());
            cfg.subject = format!("lwmetrics{tag}.{{kind}}");
            cfg.timeout = Duration::from_secs(5);
            cfg.stream = Some(StreamConfig {
                name: format!("LWMETRICS_{tag}"),
                subjects: vec![format!("lwmetrics{tag}.>")],
                ..StreamConfig::default()
            });
            let mut sink = NatsSink::new("bus", cfg.resolve(&|_| None).unwrap());
            let batch: Vec<JournalEntry> = (1..=3).map(entry).collect();
            assert_eq!(sink.deliver(&batch).await, (3, None));
            assert_eq!(sink.deliver(&batch[..2]).await, (2, None));
        });
    });
    let text = handle.render();
    for needle in [
        r#"liqwatch_nats_publish_total{sink="bus",outcome="ok"} 5"#,
        r#"liqwatch_nats_duplicates_total{sink="bus"} 2"#,
        r#"liqwatch_nats_publish_seconds_count{sink="bus"} 5"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}
