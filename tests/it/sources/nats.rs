//! The NATS JetStream account-update consumer against a real `nats-server -js`: updates are
//! applied then acked, malformed and invalid messages are terminated (never redelivered),
//! transient failures are nak'ed and come back, the durable consumer resumes after a restart, and
//! cancellation stops it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use liqwatch::model::AccountUpdate;
use liqwatch::sources::{ApplyError, NatsIngest, NatsIngestConfig, Shard, UpdateOrigin, shard_of};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support;
use crate::support::api_backend::MemBackend;
use crate::support::nats_server;

const DEADLINE: Duration = Duration::from_secs(20);

fn config(url: &str, durable: &str) -> NatsIngestConfig {
    NatsIngestConfig {
        url: url.to_string(),
        stream: format!("ACCTS_{durable}"),
        subject: format!("{durable}.accounts.>"),
        durable: durable.to_string(),
        nak_delay: Duration::from_millis(50),
        // A message handed to a consumer that stops comes back after this (at least once).
        ack_wait: Duration::from_secs(2),
        ..NatsIngestConfig::default()
    }
}

async fn run(
    cfg: NatsIngestConfig,
    backend: &Arc<MemBackend>,
) -> (CancellationToken, JoinHandle<()>) {
    let ingest = NatsIngest::connect(cfg).await.unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(ingest.run(backend.clone(), cancel.clone()));
    (cancel, task)
}

async fn publish(js: &jetstream::Context, subject: &str, payload: &str) {
    js.publish(subject.to_string(), payload.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Polls `check` until it holds or the deadline passes.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the consumer has nothing pending and nothing awaiting an ack.
async fn drained(js: &jetstream::Context, cfg: &NatsIngestConfig) -> (u64, usize) {
    let mut last = (0, 0);
    eventually("the consumer to drain", async || {
        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_stream(&cfg.stream)
            .await
            .unwrap()
            .get_consumer(&cfg.durable)
            .await
            .unwrap();
        let info = consumer.info().await.unwrap();
        last = (info.delivered.stream_sequence, info.num_ack_pending);
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    last
}

async fn js(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

/// Good updates are applied (origin carries the stream sequence) and acked; malformed, float
/// money and unknown instruments are terminated without reaching the engine and without
/// blocking the messages behind them.
#[tokio::test]
async fn applies_good_and_terminates_bad() {
    let server = nats_server::NatsServer::start().await;
    let backend = MemBackend::new(16);
    let cfg = config(&server.url, "t1");
    let (cancel, task) = run(cfg.clone(), &backend).await;
    let js = js(&server.url).await;

    publish(&js, "t1.accounts.a1", r#"{"type":"replace","account":{"id":"a1","collateral":{"USDT":"1000"},"positions":[{"instrument":"BTCUSDT-PERP","quantity":"0.01","entry_price":"40000"}]}}"#).await;
    publish(&js, "t1.accounts.a1", "this is not json").await;
    publish(&js, "t1.accounts.a1", r#"{"type":"fill","account_id":"a1","fill":{"instrument":"BTCUSDT-PERP","quantity":0.01,"price":"39000"}}"#).await;
    publish(&js, "t1.accounts.a1", r#"{"type":"fill","account_id":"a1","fill":{"instrument":"PEPEUSDT-PERP","quantity":"1","price":"1"}}"#).await;
    publish(
        &js,
        "t1.accounts.a1",
        r#"{"type":"teleport","account_id":"a1"}"#,
    )
    .await;
    publish(&js, "t1.accounts.a1", r#"{"type":"fill","account_id":"a1","fill":{"instrument":"BTCUSDT-PERP","quantity":"-0.005","price":"39000","fee":"0.08"}}"#).await;

    let (delivered_to, _) = drained(&js, &cfg).await;
    assert_eq!(delivered_to, 6);
    let applied = backend.applied.lock().unwrap().clone();
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert!(matches!(applied[0].0, AccountUpdate::Replace { .. }));
    let (
        AccountUpdate::Fill { fill, .. },
        UpdateOrigin::Nats {
            stream_sequence,
            subject,
            ..
        },
    ) = &applied[1]
    else {
        panic!("expected a NATS fill, got {:?}", applied[1]);
    };
    assert_eq!(fill.quantity.to_string(), "-0.005");
    assert_eq!(*stream_sequence, 6);
    assert_eq!(subject, "t1.accounts.a1");

    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}

/// A transient failure is nak'ed and the message comes back and is applied exactly once; a
/// permanent rejection (unknown account) is terminated.
#[tokio::test]
async fn transient_failure_is_redelivered() {
    let server = nats_server::NatsServer::start().await;
    let backend = MemBackend::new(16);
    backend
        .fail_next
        .lock()
        .unwrap()
        .push(ApplyError::Persist("disk full".into()));
    let cfg = config(&server.url, "t2");
    let (cancel, task) = run(cfg.clone(), &backend).await;
    let js = js(&server.url).await;

    publish(
        &js,
        "t2.accounts.b",
        r#"{"type":"replace","account":{"id":"b","collateral":{"USDT":"5"}}}"#,
    )
    .await;
    eventually("the update to be applied after a retry", async || {
        backend.applied.lock().unwrap().len() == 1
    })
    .await;
    assert!(
        backend.fail_next.lock().unwrap().is_empty(),
        "the first attempt must have failed"
    );

    publish(
        &js,
        "t2.accounts.c",
        r#"{"type":"remove","account_id":"ghost"}"#,
    )
    .await;
    drained(&js, &cfg).await;
    assert_eq!(backend.applied.lock().unwrap().len(), 1);
    assert!(backend.accounts.lock().unwrap().contains_key("b"));

    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}

/// The durable consumer keeps its position: after a stop, only messages published since are
/// consumed by the next run.
#[tokio::test]
async fn durable_consumer_resumes_after_restart() {
    let server = nats_server::NatsServer::start().await;
    let backend = MemBackend::new(16);
    let cfg = config(&server.url, "t3");
    let js = js(&server.url).await;

    let (cancel, task) = run(cfg.clone(), &backend).await;
    publish(
        &js,
        "t3.accounts.x",
        r#"{"type":"replace","account":{"id":"x"}}"#,
    )
    .await;
    drained(&js, &cfg).await;
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();

    publish(
        &js,
        "t3.accounts.y",
        r#"{"type":"replace","account":{"id":"y"}}"#,
    )
    .await;
    let (cancel, task) = run(cfg.clone(), &backend).await;
    drained(&js, &cfg).await;
    let ids: Vec<String> = backend
        .applied
        .lock()
        .unwrap()
        .iter()
        .map(|(u, _)| u.account_id().to_string())
        .collect();
    assert_eq!(ids, ["x", "y"]);
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}

/// Connecting to a server that is not there fails with a clear, retriable error.
#[tokio::test]
async fn connect_failure_is_reported() {
    let (_reserved, addr) = support::refused_addr();
    let port = addr.port();
    let cfg = NatsIngestConfig {
        url: format!("nats://127.0.0.1:{port}"),
        timeout: Duration::from_secs(2),
        ..NatsIngestConfig::default()
    };
    let err = match NatsIngest::connect(cfg).await {
        Ok(_) => panic!("connecting to a closed port must fail"),
        Err(e) => e,
    };
    assert!(err.is_retriable());
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

/// A sharded instance applies its own accounts and terminates updates for another shard.
#[tokio::test]
async fn wrong_shard_is_terminated() {
    let server = nats_server::NatsServer::start().await;
    let backend = MemBackend::new(16);
    let mine = shard_of("mine", 2);
    let other = (0..100)
        .map(|i| format!("other-{i}"))
        .find(|id| shard_of(id, 2) != mine)
        .unwrap();
    let cfg = NatsIngestConfig {
        shard: Some(Shard {
            index: mine,
            count: 2,
        }),
        ..config(&server.url, "t4")
    };
    let (cancel, task) = run(cfg.clone(), &backend).await;
    let js = js(&server.url).await;
    publish(
        &js,
        "t4.accounts.x",
        &format!(r#"{{"type":"replace","account":{{"id":"{other}"}}}}"#),
    )
    .await;
    publish(
        &js,
        "t4.accounts.x",
        r#"{"type":"replace","account":{"id":"mine"}}"#,
    )
    .await;
    drained(&js, &cfg).await;
    let ids: Vec<String> = backend
        .applied
        .lock()
        .unwrap()
        .iter()
        .map(|(u, _)| u.account_id().to_string())
        .collect();
    assert_eq!(ids, ["mine"]);
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}

/// Two shards share one stream (`liqwatch.accounts.>`), each consuming only its own subtree
/// through its own durable consumer.
#[tokio::test]
async fn shards_share_one_stream() {
    let server = nats_server::NatsServer::start().await;
    let js = js(&server.url).await;
    let mut running = Vec::new();
    for i in 0..2u32 {
        let backend = MemBackend::new(16);
        let cfg = NatsIngestConfig {
            url: server.url.clone(),
            subject: format!("liqwatch.accounts.shard-{i}.>"),
            durable: format!("liqwatch-shard-{i}"),
            shard: Some(Shard { index: i, count: 2 }),
            ..NatsIngestConfig::default()
        };
        assert_eq!(cfg.stream_subjects(), ["liqwatch.accounts.>"]);
        let (cancel, task) = run(cfg.clone(), &backend).await;
        running.push((backend, cfg, cancel, task));
    }
    let mut expected: [Vec<String>; 2] = [vec![], vec![]];
    for n in 0..10 {
        let id = format!("acct-{n}");
        let shard = shard_of(&id, 2);
        publish(
            &js,
            &format!("liqwatch.accounts.shard-{shard}.{id}"),
            &format!(r#"{{"type":"replace","account":{{"id":"{id}"}}}}"#),
        )
        .await;
        expected[shard as usize].push(id);
    }
    for (i, (backend, cfg, cancel, task)) in running.into_iter().enumerate() {
        drained(&js, &cfg).await;
        let ids: Vec<String> = backend
            .applied
            .lock()
            .unwrap()
            .iter()
            .map(|(u, _)| u.account_id().to_string())
            .collect();
        assert_eq!(ids, expected[i], "shard {i}");
        cancel.cancel();
        tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    }
}

/// The consumer survives a NATS server restart: the client reconnects, the durable consumer
/// (file store) keeps its position, and updates published after the restart are applied.
#[tokio::test]
async fn survives_server_restart() {
    let mut server = nats_server::NatsServer::start().await;
    let backend = MemBackend::new(16);
    let cfg = config(&server.url, "t5");
    let (cancel, task) = run(cfg.clone(), &backend).await;
    publish(
        &js(&server.url).await,
        "t5.accounts.a",
        r#"{"type":"replace","account":{"id":"before"}}"#,
    )
    .await;
    drained(&js(&server.url).await, &cfg).await;

    server.restart().await;
    publish(
        &js(&server.url).await,
        "t5.accounts.b",
        r#"{"type":"replace","account":{"id":"after"}}"#,
    )
    .await;
    eventually("the update published after the restart", async || {
        backend.applied.lock().unwrap().len() == 2
    })
    .await;
    let ids: Vec<String> = backend
        .applied
        .lock()
        .unwrap()
        .iter()
        .map(|(u, _)| u.account_id().to_string())
        .collect();
    assert_eq!(ids, ["before", "after"]);
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}
