//! Webhook sink against a real HTTP receiver on 127.0.0.1: signatures verified with the
//! documented procedure, body formats, retry classification, grouping and rate limiting.

use std::time::Duration;

use liqwatch::model::{
    AccountId, AccountState, EventKind, MarginRatio, RiskEvent, RiskSnapshot, ShockDistance,
};
use liqwatch::sinks::noise::{GroupConfig, RateLimit};
use liqwatch::sinks::webhook::{
    Secret, WebhookConfig, WebhookFormat, WebhookSettings, WebhookSink,
};
use liqwatch::sinks::{JournalEntry, Sink, SinkError};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use crate::support;
use crate::support::webhook_receiver::{Receiver, Scripted};

const SECRET: &[u8] = b"whsec_test_0123456789";

fn entry(seq: u64, kind: EventKind, account: &str, ratio: Decimal) -> JournalEntry {
    let level = match kind {
        EventKind::LiquidationTrigger => dec!(1),
        _ => dec!(0.8),
    };
    let time_ms = 1_621_428_600_000 + seq as i64 * 100;
    let event = RiskEvent {
        event_id: RiskEvent::new_id(),
        kind,
        time: liqwatch::model::format_rfc3339_ms(time_ms),
        time_ms,
        account_id: Some(AccountId::from(account)),
        seq,
        level: Some(level),
        crossed_levels: vec![level],
        level_type: None,
        previous_state: Some(AccountState::Healthy),
        state: Some(AccountState::Warning { level }),
        snapshot: Some(Box::new(RiskSnapshot {
            equity: dec!(25000),
            maintenance_margin: dec!(25000) * ratio,
            margin_ratio: MarginRatio::Finite(ratio),
            free_margin: dec!(25000) - dec!(25000) * ratio,
            shock_distance: ShockDistance {
                down: Some(dec!(-0.031)),
                up: None,
                nearest: Some(dec!(-0.031)),
            },
            liquidation_penalty: dec!(50),
            positions: vec![],
            collateral: vec![],
            liquidation_cost: None,
            funding: None,
            margin_call: None,
        })),
        prices: vec![],
        stale_prices: false,
        instrument_change: None,
        feed: None,
        risk: None,
    };
    let json = serde_json::to_string(&event).unwrap();
    JournalEntry { seq, event, json }
}

fn settings(url: &str, format: WebhookFormat) -> WebhookSettings {
    let mut cfg = WebhookConfig::generic(url);
    cfg.format = format;
    cfg.secret_env = Some("SECRET".into());
    if format == WebhookFormat::Pagerduty {
        cfg.routing_key_env = Some("PD_KEY".into());
    }
    cfg.timeout = Duration::from_secs(5);
    cfg.resolve(&|k| match k {
        "SECRET" => Some(String::from_utf8(SECRET.to_vec()).unwrap()),
        "PD_KEY" => Some("pd-routing-key".into()),
        _ => None,
    })
    .unwrap()
}

/// Drives a sink like the delivery driver does: retries retriable errors (without waiting),
/// stops at a permanent one. Returns the errors seen.
async fn drive(
    sink: &mut WebhookSink,
    batch: &[JournalEntry],
    max_attempts: usize,
) -> Vec<SinkError> {
    let mut pos = 0;
    let mut errors = Vec::new();
    for _ in 0..max_attempts {
        if pos == batch.len() {
            break;
        }
        let (n, err) = sink.deliver(&batch[pos..]).await;
        pos += n;
        match err {
            None => {}
            Some(e) => {
                let permanent = !e.is_retriable();
                errors.push(e);
                if permanent {
                    break;
                }
            }
        }
    }
    errors
}

/// Generic bodies are the journaled JSON byte for byte, keyed by event id, and every signature
/// verifies with the documented procedure.
#[tokio::test]
async fn generic_bodies_signed_and_keyed() {
    let rx = Receiver::start(Some(SECRET)).await;
    let mut sink = WebhookSink::new("hook", settings(&rx.url, WebhookFormat::Generic)).unwrap();
    let batch: Vec<JournalEntry> = (1..=3)
        .map(|i| {
            entry(
                i,
                EventKind::LiquidationWarning,
                &format!("acct-{i}"),
                dec!(0.85),
            )
        })
        .collect();
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!((n, err), (3, None));
    let got = rx.accepted();
    assert_eq!(got.len(), 3);
    for (r, e) in got.iter().zip(&batch) {
        assert_eq!(r.body, e.json.as_bytes());
        assert_eq!(
            r.idempotency_key.as_deref(),
            Some(e.event.event_id.to_string().as_str())
        );
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert!(r.signature.as_deref().unwrap().starts_with("t="));
    }
}

/// A sink signing with the wrong secret is rejected (401 → permanent): the receiver's check works.
#[tokio::test]
async fn wrong_secret_is_rejected() {
    let rx = Receiver::start(Some(SECRET)).await;
    let mut s = settings(&rx.url, WebhookFormat::Generic);
    s.secret = Some(Secret::new("not-the-secret"));
    let mut sink = WebhookSink::new("hook", s).unwrap();
    let batch = vec![entry(1, EventKind::LiquidationTrigger, "a", dec!(1.1))];
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!(n, 0);
    match err {
        Some(SinkError::Permanent { reason }) => {
            assert!(
                reason.contains("401") && reason.contains("bad signature"),
                "{reason}"
            )
        }
        other => panic!("expected permanent, got {other:?}"),
    }
}

/// 500 and 429 (with Retry-After) are retriable, then the event goes through; nothing is lost.
#[tokio::test]
async fn server_errors_and_429_are_retried() {
    let rx = Receiver::start(Some(SECRET)).await;
    rx.script([
        Scripted::status(503),
        Scripted::status(429).retry_after("2"),
        Scripted::status(429).retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
    ]);
    let mut sink = WebhookSink::new("hook", settings(&rx.url, WebhookFormat::Generic)).unwrap();
    let batch: Vec<JournalEntry> = (1..=2)
        .map(|i| entry(i, EventKind::LiquidationTrigger, "acct-x", dec!(1.2)))
        .collect();
    let errors = drive(&mut sink, &batch, 10).await;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        matches!(&errors[0], SinkError::Retriable { reason, retry_after: None } if reason.contains("503"))
    );
    assert_eq!(
        errors[1],
        SinkError::Retriable {
            reason: "HTTP 429 Too Many Requests: scripted 429".into(),
            retry_after: Some(Duration::from_secs(2))
        }
    );
    // An HTTP date in the past means "retry now".
    assert!(matches!(&errors[2], SinkError::Retriable { retry_after: Some(d), .. } if d.is_zero()));
    let ok = rx.accepted();
    let keys: Vec<_> = ok
        .iter()
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    let want: Vec<_> = batch.iter().map(|e| e.event.event_id.to_string()).collect();
    assert_eq!(keys, want);
}

/// A 400 is permanent and says why, with the status and the receiver's body; the entries before
/// it count as delivered.
#[tokio::test]
async fn client_error_is_permanent_with_reason() {
    let rx = Receiver::start(None).await;
    rx.script([
        Scripted::status(200),
        Scripted::status(400).body(r#"{"error":"unknown field kind"}"#),
    ]);
    let mut s = settings(&rx.url, WebhookFormat::Generic);
    s.secret = None;
    let mut sink = WebhookSink::new("hook", s).unwrap();
    let batch: Vec<JournalEntry> = (1..=3)
        .map(|i| entry(i, EventKind::LiquidationWarning, "a", dec!(0.9)))
        .collect();
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!(n, 1);
    assert_eq!(
        err,
        Some(SinkError::Permanent {
            reason: r#"HTTP 400 Bad Request: {"error":"unknown field kind"}"#.into()
        })
    );
    // Unsigned when no secret is configured.
    assert!(rx.received().iter().all(|r| r.signature.is_none()));
}

/// A receiver slower than the timeout, and a closed port, are retriable.
#[tokio::test]
async fn timeouts_and_refused_connections_are_retriable() {
    let rx = Receiver::start(None).await;
    rx.script([Scripted::status(200).delay(Duration::from_secs(3))]);
    let mut s = settings(&rx.url, WebhookFormat::Generic);
    s.secret = None;
    s.timeout = Duration::from_millis(200);
    let mut sink = WebhookSink::new("hook", s.clone()).unwrap();
    let batch = vec![entry(1, EventKind::LiquidationTrigger, "a", dec!(1.5))];
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!(n, 0);
    assert!(err.as_ref().is_some_and(SinkError::is_retriable), "{err:?}");

    let (_reserved, addr) = support::refused_addr();
    s.url = format!("http://{addr}/hook");
    let mut sink = WebhookSink::new("hook", s).unwrap();
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!(n, 0);
    match err {
        Some(SinkError::Retriable { reason, .. }) => {
            assert!(reason.contains("connect"), "{reason}")
        }
        other => panic!("expected retriable, got {other:?}"),
    }
}

/// Slack: a cascade of warnings becomes one grouped message listing the worst accounts, while
/// the trigger in the middle still goes on its own; every event is reported delivered.
#[tokio::test]
async fn slack_groups_warnings_but_never_triggers() {
    let rx = Receiver::start(Some(SECRET)).await;
    let mut s = settings(&rx.url, WebhookFormat::Slack);
    s.group = Some(GroupConfig {
        window: Duration::from_secs(10),
        min_events: 3,
        top: 3,
    });
    let mut sink = WebhookSink::new("slack", s).unwrap();
    let mut batch: Vec<JournalEntry> = (1..=20)
        .map(|i| {
            let ratio = dec!(0.8) + Decimal::new(i as i64, 3);
            entry(
                i,
                EventKind::LiquidationWarning,
                &format!("acct-{i:02}"),
                ratio,
            )
        })
        .collect();
    batch.insert(
        10,
        entry(21, EventKind::LiquidationTrigger, "whale", dec!(1.01)),
    );
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!((n, err), (21, None));
    let got = rx.accepted();
    assert_eq!(got.len(), 2, "one group + one trigger");
    let group = got[0].json();
    let header = group["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(header.contains("20 liquidation warnings"), "{header}");
    let list = group["blocks"][1]["text"]["text"].as_str().unwrap();
    assert!(list.contains("acct-20") && list.contains("acct-19") && list.contains("acct-18"));
    assert!(!list.contains("acct-17"), "top 3 only: {list}");
    let trig = got[1].json();
    assert!(
        trig["text"]
            .as_str()
            .unwrap()
            .contains("LIQUIDATION TRIGGER: whale")
    );
}

/// PagerDuty: warning and trigger open incidents keyed by account+level, and the recovery
/// resolves both keys.
#[tokio::test]
async fn pagerduty_recovery_resolves_its_incidents() {
    let rx = Receiver::start(None).await;
    let mut s = settings(&rx.url, WebhookFormat::Pagerduty);
    s.secret = None;
    let mut sink = WebhookSink::new("pd", s).unwrap();
    let mut rec = entry(3, EventKind::Recovered, "acct-9", dec!(0.5));
    rec.event.level = Some(dec!(1));
    rec.event.crossed_levels = vec![dec!(0.8), dec!(1)];
    let batch = vec![
        entry(1, EventKind::LiquidationWarning, "acct-9", dec!(0.85)),
        entry(2, EventKind::LiquidationTrigger, "acct-9", dec!(1.05)),
        rec,
    ];
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!((n, err), (3, None));
    let got: Vec<(String, String)> = rx
        .accepted()
        .iter()
        .map(|r| {
            let v = r.json();
            assert_eq!(v["routing_key"], "pd-routing-key");
            (
                v["event_action"].as_str().unwrap().to_string(),
                v["dedup_key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("trigger", "liqwatch:acct-9:0.8"),
        ("trigger", "liqwatch:acct-9:1"),
        ("resolve", "liqwatch:acct-9:0.8"),
        ("resolve", "liqwatch:acct-9:1"),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(rx.accepted()[1].json()["payload"]["severity"], "critical");
}

/// Discord: a rate-limited sink delays but delivers every message, in journal order.
#[tokio::test]
async fn discord_rate_limit_delays_not_drops() {
    let rx = Receiver::start(Some(SECRET)).await;
    let mut s = settings(&rx.url, WebhookFormat::Discord);
    s.rate_limit = Some(RateLimit {
        messages: 2,
        per: Duration::from_millis(200),
    });
    let mut sink = WebhookSink::new("discord", s).unwrap();
    let batch: Vec<JournalEntry> = (1..=5)
        .map(|i| {
            entry(
                i,
                EventKind::LiquidationWarning,
                &format!("d{i}"),
                dec!(0.9),
            )
        })
        .collect();
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!((n, err), (5, None));
    let contents: Vec<String> = rx
        .accepted()
        .iter()
        .map(|r| r.json()["content"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (1..=5)
        .map(|i| format!("⚠️ Liquidation warning: d{i}"))
        .collect();
    assert_eq!(contents, want);
}

/// With concurrency, every event arrives and each account's events arrive in journal order,
/// also across a retried failure (re-deliveries only repeat ids already sent).
#[tokio::test]
async fn concurrent_lanes_keep_per_account_order() {
    let rx = Receiver::start(Some(SECRET)).await;
    rx.script([
        Scripted::status(200),
        Scripted::status(200),
        Scripted::status(503),
    ]);
    let mut s = settings(&rx.url, WebhookFormat::Generic);
    s.concurrency = 8;
    let mut sink = WebhookSink::new("hook", s).unwrap();
    let batch: Vec<JournalEntry> = (1..=200)
        .map(|i| {
            entry(
                i,
                EventKind::LiquidationWarning,
                &format!("acct-{}", i % 20),
                dec!(0.9),
            )
        })
        .collect();
    let errors = drive(&mut sink, &batch, 20).await;
    assert_eq!(errors.len(), 1, "exactly the scripted 503: {errors:?}");
    assert!(errors[0].is_retriable());
    let accepted = rx.accepted();
    let seq_of: std::collections::HashMap<String, (String, u64)> = batch
        .iter()
        .map(|e| {
            (
                e.event.event_id.to_string(),
                (e.event.account_id.clone().unwrap().to_string(), e.event.seq),
            )
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut last: std::collections::HashMap<String, u64> = Default::default();
    for r in &accepted {
        let key = r.idempotency_key.clone().unwrap();
        let (acct, seq) = seq_of[&key].clone();
        if !seen.insert(key) {
            continue; // a re-delivery of an id already sent
        }
        let prev = last.insert(acct.clone(), seq).unwrap_or(0);
        assert!(seq > prev, "{acct}: seq {seq} after {prev}");
    }
    assert_eq!(seen.len(), 200, "every event accepted");
}

/// When the rate limit holds a warning back, a later trigger of another account goes first,
/// but never ahead of an earlier event of its own account; nothing is dropped.
#[tokio::test]
async fn triggers_overtake_rate_limited_warnings_of_other_accounts() {
    let rx = Receiver::start(Some(SECRET)).await;
    let mut s = settings(&rx.url, WebhookFormat::Slack);
    s.rate_limit = Some(RateLimit {
        messages: 1,
        per: Duration::from_secs(1),
    });
    let mut sink = WebhookSink::new("slack", s).unwrap();
    let batch = vec![
        entry(1, EventKind::LiquidationWarning, "alice", dec!(0.85)),
        entry(2, EventKind::LiquidationWarning, "bob", dec!(0.86)),
        entry(3, EventKind::LiquidationTrigger, "bob", dec!(1.01)),
        entry(4, EventKind::LiquidationTrigger, "carol", dec!(1.02)),
    ];
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!((n, err), (4, None));
    let headers: Vec<String> = rx
        .accepted()
        .iter()
        .map(|r| {
            r.json()["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        headers,
        vec![
            "⚠️ Liquidation warning: alice",
            "🚨 LIQUIDATION TRIGGER: carol",
            "⚠️ Liquidation warning: bob",
            "🚨 LIQUIDATION TRIGGER: bob",
        ]
    );
}

/// A slow receiver: one delivery call stops starting requests after `max_batch_time` and
/// reports its progress (retriable, retry at once), so the driver's own timeout never throws
/// delivered work away; driving on delivers each event exactly once.
#[tokio::test]
async fn batch_time_budget_reports_progress() {
    let rx = Receiver::start(Some(SECRET)).await;
    rx.script((0..10).map(|_| Scripted::status(200).delay(Duration::from_millis(150))));
    let mut s = settings(&rx.url, WebhookFormat::Generic);
    s.max_batch_time = Duration::from_millis(300);
    let mut sink = WebhookSink::new("hook", s).unwrap();
    let batch: Vec<JournalEntry> = (1..=10)
        .map(|i| entry(i, EventKind::LiquidationWarning, "slow", dec!(0.9)))
        .collect();
    let (n, err) = sink.deliver(&batch).await;
    assert!((1..10).contains(&n), "partial progress, got {n}");
    match &err {
        Some(SinkError::Retriable {
            reason,
            retry_after,
        }) => {
            assert!(reason.contains("budget"), "{reason}");
            assert_eq!(*retry_after, Some(Duration::ZERO));
        }
        other => panic!("expected retriable, got {other:?}"),
    }
    let errors = drive(&mut sink, &batch[n..], 50).await;
    assert!(errors.iter().all(SinkError::is_retriable), "{errors:?}");
    let keys: Vec<String> = rx
        .accepted()
        .iter()
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    let want: Vec<String> = batch.iter().map(|e| e.event.event_id.to_string()).collect();
    assert_eq!(keys, want, "each event exactly once, in order");
}

/// A rate limit that would outlast the batch budget returns at once with the wait as
/// `retry_after`, instead of sleeping inside the delivery call.
#[tokio::test]
async fn long_rate_limit_wait_becomes_retry_after() {
    let rx = Receiver::start(Some(SECRET)).await;
    let mut s = settings(&rx.url, WebhookFormat::Slack);
    s.rate_limit = Some(RateLimit {
        messages: 1,
        per: Duration::from_secs(60),
    });
    let mut sink = WebhookSink::new("slack", s).unwrap();
    let batch = vec![
        entry(1, EventKind::LiquidationWarning, "a", dec!(0.85)),
        entry(2, EventKind::LiquidationWarning, "b", dec!(0.85)),
    ];
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!(n, 1);
    match err {
        Some(SinkError::Retriable {
            retry_after: Some(d),
            reason,
        }) => {
            assert!(d > Duration::from_secs(15), "{d:?}");
            assert!(reason.contains("rate limit"), "{reason}");
        }
        other => panic!("expected retriable with retry_after, got {other:?}"),
    }
    assert_eq!(rx.accepted().len(), 1);
}

/// A grouped message's events count as delivered only once the receiver accepts it: a 503 on
/// the group delivers nothing, the retry delivers all of them.
#[tokio::test]
async fn grouped_events_delivered_only_when_accepted() {
    let rx = Receiver::start(Some(SECRET)).await;
    rx.script([Scripted::status(503)]);
    let mut s = settings(&rx.url, WebhookFormat::Discord);
    s.group = Some(GroupConfig::default());
    let mut sink = WebhookSink::new("discord", s).unwrap();
    let batch: Vec<JournalEntry> = (1..=6)
        .map(|i| {
            entry(
                i,
                EventKind::LiquidationWarning,
                &format!("g{i}"),
                dec!(0.9),
            )
        })
        .collect();
    let (n, err) = sink.deliver(&batch).await;
    assert_eq!(n, 0);
    assert!(err.as_ref().is_some_and(SinkError::is_retriable), "{err:?}");
    assert!(rx.accepted().is_empty());
    assert_eq!(sink.deliver(&batch).await, (6, None));
    let got = rx.accepted();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].json()["content"]
            .as_str()
            .unwrap()
            .contains("6 liquidation warnings")
    );
}
