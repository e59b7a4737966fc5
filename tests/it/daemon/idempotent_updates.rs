//! Issue 11 item 6 against the real daemon, a real `nats-server -js` and real HTTP: an account
//! update that carries an id (`Idempotency-Key`, `fill_id`, `update_id`, `Nats-Msg-Id`) is
//! applied once however often it is delivered, across a kill -9 and restart too; an id reused
//! for another update is refused with 409; a `PUT` without `positions` is refused with 422.
//! Deposits and withdrawals (`POST …/collateral`) likewise.

use std::time::Duration;

use async_nats::jetstream;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::{Value, json};

use crate::support::daemon_env::{Daemon, MockBinance, binance_config, http_client};
use crate::support::nats_server::NatsServer;

const TOKEN: &str = "idempotency-token";
const TOKEN_ENV: &str = "IDEMPOTENT_UPDATES_TOKEN";
const DEADLINE: Duration = Duration::from_secs(20);
const STREAM: &str = "IDEM_ACCOUNTS";

/// Starts the daemon and waits for its API and its feed subscription; returns the API base URL.
async fn start(
    cfg: &std::path::Path,
    dir: &std::path::Path,
    venue: &MockBinance,
    n: u32,
) -> (Daemon, String) {
    let (daemon, api) = Daemon::start_subscribed(
        env!("CARGO_BIN_EXE_liqwatch"),
        cfg,
        &[(TOKEN_ENV, TOKEN)],
        dir.join(format!("daemon-{n}.log")),
        venue,
        DEADLINE,
    )
    .await;
    venue.push_mark("BTCUSDT", "50000");
    (daemon, api)
}

/// `POST /v1/accounts/f/{what}` (`fills` or `collateral`), with an `Idempotency-Key` if given.
async fn post(
    client: &reqwest::Client,
    api: &str,
    what: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut req = client
        .post(format!("{api}/v1/accounts/f/{what}"))
        .bearer_auth(TOKEN)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post_fill(
    client: &reqwest::Client,
    api: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    post(client, api, "fills", key, body).await
}

async fn post_collateral(
    client: &reqwest::Client,
    api: &str,
    key: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    post(client, api, "collateral", key, body).await
}

fn fill(quantity: &str) -> Value {
    json!({"instrument":"BTCUSDT-PERP","quantity":quantity,"price":"50000","fee":"1"})
}

/// The account's BTC position and USDT balance as the API reports them (once priced).
async fn holdings(client: &reqwest::Client, api: &str) -> (Decimal, Decimal) {
    let mut last = Value::Null;
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(r) = client.get(format!("{api}/v1/accounts/f")).send().await
            && let Ok(v) = r.json::<Value>().await
        {
            let qty = v["snapshot"]["positions"][0]["quantity"]
                .as_str()
                .map(str::to_string);
            let usdt = v["snapshot"]["collateral"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["asset"] == "USDT"))
                .and_then(|c| c["amount"].as_str())
                .map(str::to_string);
            if let (Some(q), Some(u)) = (qty, usdt) {
                let d = |s: &str| s.parse::<Decimal>().unwrap().normalize();
                return (d(&q), d(&u));
            }
            last = v;
        }
        assert!(
            std::time::Instant::now() < end,
            "account f never readable: {last}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the daemon's consumer has acked everything in the stream.
async fn nats_drained(js: &jetstream::Context) {
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let info = async {
            let mut consumer: jetstream::consumer::PullConsumer = js
                .get_stream(STREAM)
                .await
                .ok()?
                .get_consumer("idem")
                .await
                .ok()?;
            consumer.info().await.ok().map(|i| {
                (
                    i.num_pending,
                    i.num_ack_pending,
                    i.delivered.stream_sequence,
                )
            })
        }
        .await;
        if let Some((0, 0, delivered)) = info
            && delivered > 0
        {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "NATS consumer never drained: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish(js: &jetstream::Context, msg_id: Option<&str>, payload: Value) {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(id) = msg_id {
        headers.insert("Nats-Msg-Id", id);
    }
    js.publish_with_headers("idem.accounts.f", headers, payload.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A retried fill is applied once: over HTTP (`Idempotency-Key`, `fill_id`), over NATS
/// (`Nats-Msg-Id` with the id an HTTP fill already used, `update_id` in two messages), and
/// again after a kill -9 and restart. A reused id with another fill answers 409; a `PUT`
/// without `positions` answers 422 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_fills_apply_once_issue_11_item_6() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let cfg = binance_config(dir.path(), &venue.url, TOKEN_ENV);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        r#"
[accounts]
update_id_window = "1h"
update_id_limit = 1000

[accounts.nats]
url = "{}"
subject = "idem.accounts.>"
stream = "{STREAM}"
durable = "idem"
"#,
        nats.url
    ));
    std::fs::write(&cfg, text).unwrap();
    Daemon::init_journal(env!("CARGO_BIN_EXE_liqwatch"), &cfg, &[(TOKEN_ENV, TOKEN)]);
    let client = http_client();
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());

    let (mut daemon, api) = start(&cfg, dir.path(), &venue, 1).await;

    // PUT without positions: refused, naming the field; nothing is created.
    let r = client
        .put(format!("{api}/v1/accounts/f"))
        .bearer_auth(TOKEN)
        .json(&json!({"id":"f","collateral":{"USDT":"10000"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["field"], "positions", "{body}");
    assert_eq!(body["error"]["code"], "missing_field", "{body}");
    let r = client
        .put(format!("{api}/v1/accounts/f"))
        .bearer_auth(TOKEN)
        .json(&json!({"id":"f","collateral":{"USDT":"10000"},"positions":[]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    // HTTP, Idempotency-Key: the retry is a duplicate.
    let (status, body) = post_fill(&client, &api, Some("fill-1"), &fill("1")).await;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!("updated")),
        "{body}"
    );
    let (status, body) = post_fill(&client, &api, Some("fill-1"), &fill("1")).await;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!("duplicate")),
        "{body}"
    );
    assert_eq!(body["update_id"], "fill-1", "{body}");
    // The same key with another fill: refused, nothing applied.
    let (status, body) = post_fill(&client, &api, Some("fill-1"), &fill("2")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "update_id_conflict", "{body}");
    // Header and body ids that disagree: 422 naming the header.
    let mut with_id = fill("2");
    with_id["fill_id"] = json!("other");
    let (status, body) = post_fill(&client, &api, Some("fill-9"), &with_id).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (422, &json!("Idempotency-Key")),
        "{body}"
    );

    // HTTP, fill_id in the body.
    let mut f2 = fill("0.5");
    f2["fill_id"] = json!("fill-2");
    assert_eq!(
        post_fill(&client, &api, None, &f2).await.1["result"],
        "updated"
    );
    assert_eq!(
        post_fill(&client, &api, None, &f2).await.1["result"],
        "duplicate"
    );

    // NATS: Nats-Msg-Id "fill-1" is the HTTP fill already applied (one namespace); then a
    // new fill sent twice with its id in the body (two stream messages, same update_id).
    let nats_fill = |qty: &str| json!({"type":"fill","account_id":"f","fill":fill(qty)});
    publish(&js, Some("fill-1"), nats_fill("1")).await;
    let mut f4 = nats_fill("0.125");
    f4["update_id"] = json!("fill-4");
    publish(&js, None, f4.clone()).await;
    publish(&js, None, f4.clone()).await;
    nats_drained(&js).await;

    // 1 + 0.5 + 0.125, one fee each.
    assert_eq!(holdings(&client, &api).await, (dec!(1.625), dec!(9997)));

    // Deposits and withdrawals over HTTP: a retried one is applied once (header or body id).
    let deposit = json!({"asset":"USDT","delta":"2500"});
    for want in ["updated", "duplicate"] {
        let (status, body) = post_collateral(&client, &api, Some("dep-1"), &deposit).await;
        assert_eq!((status, &body["result"]), (200, &json!(want)), "{body}");
    }
    let withdrawal = json!({"asset":"USDT","delta":"-497","update_id":"wd-1"});
    for want in ["updated", "duplicate"] {
        let (status, body) = post_collateral(&client, &api, None, &withdrawal).await;
        assert_eq!((status, &body["result"]), (200, &json!(want)), "{body}");
    }
    // The same id for another amount: refused, nothing applied.
    let (status, body) = post_collateral(
        &client,
        &api,
        Some("dep-1"),
        &json!({"asset":"USDT","delta":"25000"}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(holdings(&client, &api).await, (dec!(1.625), dec!(12000)));

    // kill -9, restart: the ids are still known.
    daemon.kill9();
    let (mut daemon, api) = start(&cfg, dir.path(), &venue, 2).await;
    let (status, body) = post_fill(&client, &api, Some("fill-1"), &fill("1")).await;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!("duplicate")),
        "{body}"
    );
    assert_eq!(
        post_fill(&client, &api, None, &f2).await.1["result"],
        "duplicate"
    );
    publish(&js, None, f4).await;
    nats_drained(&js).await;
    let (status, body) = post_collateral(&client, &api, Some("dep-1"), &deposit).await;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!("duplicate")),
        "{body}"
    );
    assert_eq!(holdings(&client, &api).await, (dec!(1.625), dec!(12000)));
    // A new id still applies.
    let (status, body) = post_fill(&client, &api, Some("fill-5"), &fill("0.375")).await;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!("updated")),
        "{body}"
    );
    assert_eq!(holdings(&client, &api).await, (dec!(2), dec!(11999)));
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
}
