//! The webhook sink emits the metrics docs/metrics.md documents, with the documented
//! names and labels (rendered through a real Prometheus recorder).

use std::time::Duration;

use liqwatch::model::{AccountId, EventKind, RiskEvent};
use liqwatch::sinks::noise::{GroupConfig, RateLimit};
use liqwatch::sinks::webhook::{WebhookFormat, WebhookSettings, WebhookSink};
use liqwatch::sinks::{JournalEntry, Sink};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::support::webhook_receiver::{Receiver, Scripted};

fn entry(seq: u64, kind: EventKind, account: &str) -> JournalEntry {
    let event = RiskEvent {
        event_id: RiskEvent::new_id(),
        kind,
        time: liqwatch::model::format_rfc3339_ms(1_621_428_600_000),
        time_ms: 1_621_428_600_000 + seq as i64,
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

/// Requests (by outcome), latency, grouped events and rate-limit delays are counted per sink.
#[test]
fn documented_metrics_are_emitted() {
    // The receiver runs on its own runtime thread; the sink runs on this thread so the local
    // recorder sees its metrics.
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let rx = server_rt.block_on(Receiver::start(None));
    rx.script([Scripted::status(503)]);

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut s = WebhookSettings::new(rx.url.clone(), WebhookFormat::Slack);
            s.group = Some(GroupConfig::default());
            s.rate_limit = Some(RateLimit {
                messages: 1,
                per: Duration::from_millis(100),
            });
            let mut sink = WebhookSink::new("chat", s).unwrap();
            let batch: Vec<JournalEntry> = (1..=4)
                .map(|i| entry(i, EventKind::LiquidationWarning, &format!("m{i}")))
                .collect();
            let (n, err) = sink.deliver(&batch).await;
            assert_eq!(n, 0, "the scripted 503");
            assert!(err.is_some());
            assert_eq!(sink.deliver(&batch).await, (4, None));
        });
    });
    let text = handle.render();
    for needle in [
        r#"liqwatch_webhook_requests_total{sink="chat",outcome="retriable"} 1"#,
        r#"liqwatch_webhook_requests_total{sink="chat",outcome="ok"} 1"#,
        r#"liqwatch_webhook_grouped_events_total{sink="chat"} 4"#,
        r#"liqwatch_webhook_rate_limited_total{sink="chat"} 1"#,
        r#"liqwatch_webhook_request_seconds_count{sink="chat"} 2"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert!(!text.contains("account"), "no account label:\n{text}");
}
