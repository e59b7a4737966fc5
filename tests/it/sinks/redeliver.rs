//! `POST /v1/sinks/{name}/redeliver` on a real daemon: a webhook receiver refuses a warning
//! (HTTP 410), the sink dead-letters it and moves on; asked to redeliver while the receiver
//! still refuses, the dead letter stays with the new reason; asked again once it accepts, the
//! warning is delivered (signed, same `Idempotency-Key`) and leaves the dead-letter table —
//! read with `liqwatch journal dead-letters`, beside the running daemon. Unknown sinks are 404,
//! and redelivery is a mutation: no token, 401.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon_env::{
    Daemon, MockBinance, binance_config, get_ok, http_client, journal_cli, poll_until,
    put_one_btc_long,
};
use crate::support::webhook_receiver::{Receiver, Scripted};

const BIN: &str = env!("CARGO_BIN_EXE_liqwatch");
const TOKEN: &str = "redeliver-token";
const DEADLINE: Duration = Duration::from_secs(20);

fn dead_letters(journal: &std::path::Path) -> Vec<Value> {
    let out = journal_cli(
        BIN,
        &["dead-letters", "--format", "json"],
        "--file",
        journal,
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v["dead_letters"].as_array().unwrap().clone()
}

/// The `hook` sink's entry of `GET /v1/sinks`.
async fn hook_health(client: &reqwest::Client, api: &str) -> Value {
    let sinks = get_ok(client, format!("{api}/v1/sinks")).await;
    sinks["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["sink"] == "hook")
        .unwrap_or_else(|| panic!("no hook sink: {sinks}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_redelivered_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let rx = Receiver::start(Some(b"redeliver-secret")).await;
    // The first two requests are refused for good; later ones are accepted.
    rx.script([Scripted::status(410), Scripted::status(410)]);
    // The shared daemon config (a JSONL archive beside it), plus the webhook under test.
    let cfg = binance_config(dir.path(), &venue.url, "REDELIVER_TOKEN");
    let hook = format!(
        "\n[[sinks]]\ntype = \"webhook\"\nname = \"hook\"\nurl = \"{}\"\nsecret_env = \"HOOK_SECRET\"\n",
        rx.url
    );
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap() + &hook).unwrap();
    let env = [
        ("REDELIVER_TOKEN", TOKEN),
        ("HOOK_SECRET", "redeliver-secret"),
    ];
    let (mut daemon, api) = Daemon::init_and_start_subscribed(
        BIN,
        &cfg,
        &env,
        dir.path().join("daemon.log"),
        &venue,
        DEADLINE,
    )
    .await;
    let client = http_client();

    // 1 BTC long from 50,000 on 400 USDT: ratio 0.5 at 50,000; at 49,840 MM 199.36 over
    // equity 240 = 0.83, past the 0.8 warning.
    venue.push_mark("BTCUSDT", "50000");
    assert_eq!(put_one_btc_long(&client, &api, TOKEN, "hot").await, 200);
    venue.push_mark("BTCUSDT", "49840");
    let journal = dir.path().join("journal.sqlite");
    let first = poll_until("the warning dead-lettered", DEADLINE, || {
        let d = dead_letters(&journal);
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["sink"], "hook");
    assert_eq!(first[0]["event"]["kind"], "liquidation_warning");
    let event_id = first[0]["event_id"].as_str().unwrap().to_string();
    let first_reason = first[0]["reason"].as_str().unwrap().to_string();
    assert!(first_reason.contains("410"), "{first_reason}");

    // A refusal is not a delivery: nothing delivered yet, one dead letter just now.
    let health = hook_health(&client, &api).await;
    assert_eq!(health["dead_letters"], 1, "{health}");
    assert!(health["last_delivery_ms"].is_null(), "{health}");
    let refused_at = health["last_dead_letter_ms"].as_u64().unwrap_or(0);
    assert!(refused_at > 0, "{health}");

    let redeliver = |auth: bool, sink: &str| {
        let mut req = client.post(format!("{api}/v1/sinks/{sink}/redeliver"));
        if auth {
            req = req.bearer_auth(TOKEN);
        }
        req.send()
    };
    // A mutation: no token, no redelivery. An unknown sink: 404.
    assert_eq!(redeliver(false, "hook").await.unwrap().status(), 401);
    assert_eq!(redeliver(true, "nope").await.unwrap().status(), 404);

    // Refused again: kept, with the new refusal's time.
    let r = redeliver(true, "hook").await.unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"sink": "hook", "dead_letters": 1}));
    poll_until("the second refusal", DEADLINE, || {
        (rx.received().len() >= 2).then_some(())
    })
    .await;
    let kept = poll_until("the dead letter updated", DEADLINE, || {
        let d = dead_letters(&journal);
        (d.len() == 1 && d[0]["time"] != first[0]["time"]).then_some(d)
    })
    .await;
    assert_eq!(kept[0]["event_id"], event_id.as_str());
    // The second refusal moves the sink's dead-letter time, and it still delivered nothing.
    let end = std::time::Instant::now() + DEADLINE;
    let health = loop {
        let h = hook_health(&client, &api).await;
        if h["last_dead_letter_ms"].as_u64() > Some(refused_at) {
            break h;
        }
        assert!(
            std::time::Instant::now() < end,
            "no second refusal time: {h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(health["last_delivery_ms"].is_null(), "{health}");

    // Accepted: delivered once more, signed, and gone from the table.
    assert_eq!(redeliver(true, "hook").await.unwrap().status(), 202);
    let accepted = rx.wait_accepted(1, DEADLINE).await;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].json()["event_id"], event_id.as_str());
    assert!(accepted[0].signature.is_some());
    assert_eq!(
        accepted[0].idempotency_key.as_deref(),
        Some(event_id.as_str())
    );
    poll_until("the dead letter removed", DEADLINE, || {
        dead_letters(&journal).is_empty().then_some(())
    })
    .await;
    // The sink's health counts what the table holds: none now.
    let health = hook_health(&client, &api).await;
    assert_eq!(health["dead_letters"], 0, "{health}");
    assert!(health["delivered"].as_u64() >= Some(1), "{health}");
    assert!(
        health["last_delivery_ms"].as_u64() >= Some(refused_at),
        "the redelivery is a delivery: {health}"
    );
    // Nothing else was sent: three requests in all, one event.
    assert_eq!(rx.received().len(), 3);
    assert_eq!(daemon.terminate(DEADLINE), Some(0));
}
