//! Webhook delivery throughput to a loopback HTTP receiver (axum on 127.0.0.1:0): signed
//! generic POSTs one event per request (sequential, keep-alive), and a Slack sink grouping a
//! cascade of warnings into one message. Also NATS JetStream publish throughput (pipelined
//! acks) against a `nats-server -js` it starts (it fails, naming the Debian package, without one).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // the bench uses only some of the shared helpers
#[path = "../it/support/nats_server.rs"]
mod nats_server;
#[path = "../it/support/tools.rs"]
mod tools;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use liqwatch::model::{
    AccountId, AccountState, EventKind, MarginRatio, RiskEvent, RiskSnapshot, ShockDistance,
};
use liqwatch::sinks::nats::{NatsConfig, NatsSink, StreamConfig};
use liqwatch::sinks::noise::GroupConfig;
use liqwatch::sinks::webhook::{Secret, WebhookConfig, WebhookFormat, WebhookSink};
use liqwatch::sinks::{JournalEntry, Sink};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

/// The daemon's allocator (`src/main.rs`), so what is timed here is what runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn entry(seq: u64, kind: EventKind) -> JournalEntry {
    let ratio = dec!(0.8) + Decimal::new((seq % 200) as i64, 3);
    let time_ms = 1_621_428_600_000 + seq as i64;
    let event = RiskEvent {
        event_id: RiskEvent::new_id(),
        kind,
        time: liqwatch::model::format_rfc3339_ms(time_ms),
        time_ms,
        account_id: Some(AccountId::from(format!("acct-{seq:06}"))),
        seq,
        level: Some(dec!(0.8)),
        crossed_levels: vec![dec!(0.8)],
        level_type: None,
        previous_state: Some(AccountState::Healthy),
        state: Some(AccountState::Warning { level: dec!(0.8) }),
        snapshot: Some(Box::new(RiskSnapshot {
            equity: dec!(25000),
            maintenance_margin: dec!(25000) * ratio,
            margin_ratio: MarginRatio::Finite(ratio),
            free_margin: dec!(25000) * (Decimal::ONE - ratio),
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

async fn receiver(count: Arc<AtomicU64>) -> String {
    let slow_count = count.clone();
    let app = Router::new()
        .route(
            "/hook",
            post(move |_body: axum::body::Bytes| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::Relaxed);
                    "ok"
                }
            }),
        )
        // A receiver that takes 2 ms per request, like a real one across a network.
        .route(
            "/slow",
            post(move |_body: axum::body::Bytes| {
                let count = slow_count.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    count.fetch_add(1, Ordering::Relaxed);
                    "ok"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

fn bench_webhook(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let url = rt.block_on(receiver(count.clone()));

    let mut cfg = WebhookConfig::generic(url.clone());
    cfg.timeout = Duration::from_secs(5);
    let mut settings = cfg.resolve(&|_| None).unwrap();
    settings.secret = Some(Secret::new("bench-secret"));
    let mut generic = WebhookSink::new("bench", settings.clone()).unwrap();

    let batch: Vec<JournalEntry> = (0..100)
        .map(|i| entry(i, EventKind::LiquidationWarning))
        .collect();
    let mut g = c.benchmark_group("webhook");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.sample_size(20);
    g.bench_function("generic_signed_sequential_100", |b| {
        b.iter(|| {
            let (n, err) = rt.block_on(generic.deliver(&batch));
            assert_eq!((n, err), (100, None));
        })
    });

    let mut slow = settings.clone();
    slow.url = url.replace("/hook", "/slow");
    for concurrency in [1usize, 16] {
        slow.concurrency = concurrency;
        let mut sink = WebhookSink::new("bench-slow", slow.clone()).unwrap();
        g.bench_function(
            format!("generic_2ms_receiver_concurrency_{concurrency}_100"),
            |b| {
                b.iter(|| {
                    let (n, err) = rt.block_on(sink.deliver(&batch));
                    assert_eq!((n, err), (100, None));
                })
            },
        );
    }

    let mut slack_settings = settings;
    slack_settings.format = WebhookFormat::Slack;
    slack_settings.group = Some(GroupConfig {
        window: Duration::from_secs(10),
        min_events: 3,
        top: 5,
    });
    let mut slack = WebhookSink::new("bench-slack", slack_settings).unwrap();
    let cascade: Vec<JournalEntry> = (0..10_000)
        .map(|i| entry(i, EventKind::LiquidationWarning))
        .collect();
    g.throughput(Throughput::Elements(cascade.len() as u64));
    g.bench_function("slack_grouped_cascade_10000", |b| {
        b.iter(|| {
            let (n, err) = rt.block_on(slack.deliver(&cascade));
            assert_eq!((n, err), (10_000, None));
        })
    });
    g.finish();
    // (With a name filter nothing may have run, so the receiver count is not asserted.)
    let _ = count.load(Ordering::Relaxed);
}

/// JetStream publish-to-ack throughput of the NATS sink against a local `nats-server -js`.
fn bench_nats(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The server picks its port (`-p -1`) and reports it; waits until JetStream answers.
    let server = rt.block_on(nats_server::NatsServer::start());
    let mut cfg = NatsConfig::new(server.url.clone());
    cfg.stream = Some(StreamConfig::default());
    let settings = cfg.resolve(&|_| None).unwrap();
    let mut g = c.benchmark_group("nats");
    g.sample_size(20);
    for in_flight in [1usize, 256] {
        let mut s = settings.clone();
        s.max_in_flight = in_flight;
        let mut sink = NatsSink::new("bench-nats", s);
        // Connect (and create the stream), waiting for the server to come up.
        rt.block_on(async {
            for _ in 0..200 {
                if sink.connect().await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("nats-server did not come up");
        });
        let batch: Vec<JournalEntry> = (0..1000)
            .map(|i| entry(i, EventKind::LiquidationWarning))
            .collect();
        g.throughput(Throughput::Elements(batch.len() as u64));
        g.bench_function(
            format!("jetstream_publish_in_flight_{in_flight}_1000"),
            |b| {
                b.iter_batched(
                    // Fresh event ids each iteration, so JetStream stores rather than de-duplicates.
                    || {
                        batch
                            .iter()
                            .map(|e| {
                                let mut e = e.clone();
                                e.event.event_id = RiskEvent::new_id();
                                e
                            })
                            .collect::<Vec<_>>()
                    },
                    |b| {
                        let (n, err) = rt.block_on(sink.deliver(&b));
                        assert_eq!((n, err), (1000, None));
                    },
                    criterion::BatchSize::LargeInput,
                )
            },
        );
    }
    g.finish();
    drop(server); // kills nats-server
}

criterion_group!(benches, bench_webhook, bench_nats);
criterion_main!(benches);
