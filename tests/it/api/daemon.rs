//! The HTTP API of the real `liqwatch` binary (loopback mock Binance feed, temp journal): every
//! endpoint answers with the real engine behind it, mutations are validated, applied and
//! persisted across a restart, and the SSE stream carries the warning a price drop causes.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::support::daemon_env::{Daemon, MockBinance, http_client, poll_until, scrape_metrics};

fn dec(v: &Value) -> Option<Decimal> {
    v.as_str()?.parse().ok()
}

const TOKEN: &str = "api-daemon-token";
const DEADLINE: Duration = Duration::from_secs(20);

fn write_config(dir: &Path, venue_url: &str) -> PathBuf {
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    let cfg = format!(
        r#"
[engine]
instruments = ["{presets}"]
warning_levels = ["0.8"]
trigger = "1.0"
hysteresis = "0.05"

[[feeds]]
venue = "binance-usdm"
url = "{venue_url}"
backoff_initial = "50ms"
backoff_max = "200ms"

[prices]
composite = "binance-usdm"
stale_after = "1h"

[journal]
path = "journal.sqlite"

[[sinks]]
type = "jsonl"
name = "archive"
path = "events.jsonl"

[api]
bind = "127.0.0.1:0"
token_env = "API_DAEMON_TOKEN"

[shutdown]
grace = "3s"
"#,
        presets = presets.display()
    );
    let p = dir.join("liqwatch.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// Start `n`. The first (1) runs on a new journal created as an operator would; later ones
/// pass `--init-journal`, as a container entrypoint does, which must leave the existing journal
/// (and the accounts added over HTTP) alone.
fn start(cfg: &Path, dir: &Path, n: u32) -> Daemon {
    let bin = env!("CARGO_BIN_EXE_liqwatch");
    if n == 1 {
        Daemon::init_journal(bin, cfg, &[("API_DAEMON_TOKEN", TOKEN)]);
    }
    Daemon::start_args(
        bin,
        if n == 1 { &[] } else { &["--init-journal"] },
        cfg,
        &[("API_DAEMON_TOKEN", TOKEN)],
        dir.join(format!("daemon-{n}.log")),
    )
}

async fn wait_healthy(client: &reqwest::Client, api: &str) {
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(r) = client.get(format!("{api}/healthz")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(std::time::Instant::now() < end, "API never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls `GET url` until `check` accepts the JSON body.
async fn wait_json(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(r) = client.get(url).send().await
            && let Ok(v) = r.json::<Value>().await
            && check(&v)
        {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Against the real daemon: PUT an account over HTTP, see it priced, stream the warning a
/// price drop causes, refuse bad bodies, apply a fill, restart and find the account persisted,
/// then delete it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_against_the_real_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let cfg = write_config(dir.path(), &venue.url);
    let client = http_client();
    let mut daemon = start(&cfg, dir.path(), 1);
    let api = format!("http://{}", daemon.api_addr(DEADLINE).await);
    wait_healthy(&client, &api).await;
    poll_until("the daemon to subscribe", DEADLINE, || {
        (venue.subscribes.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    venue.push_mark("BTCUSDT", "50000");

    // Create: 1 BTC long at 50000 with 5000 USDT. MM at mark 50000 (0.4 % tier) = 200,
    // equity = 5000 → ratio 0.04.
    let account = json!({"id":"api-1","collateral":{"USDT":"5000"},
        "positions":[{"instrument":"BTCUSDT-PERP","quantity":"1","entry_price":"50000"}]});
    let put = |body: Value| {
        client
            .put(format!("{api}/v1/accounts/api-1"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let (status, body) = json_of(put(account.clone()).await.unwrap()).await;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!("created")),
        "{body}"
    );
    let view = wait_json(
        &client,
        &format!("{api}/v1/accounts/api-1"),
        "the account priced",
        |v| dec(&v["snapshot"]["equity"]) == Some(Decimal::new(5000, 0)),
    )
    .await;
    assert_eq!(view["state"]["state"], "healthy");

    // Without the token, with a float, with an unknown instrument: refused, nothing changes.
    let r = client
        .put(format!("{api}/v1/accounts/api-1"))
        .json(&account)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, body) = json_of(
        put(json!({"id":"api-1","collateral":{"USDT":5000}}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("number_not_string")),
        "{body}"
    );
    let (status, body) = json_of(
        put(json!({"id":"api-1","positions":[{"instrument":"NOPE-PERP","quantity":"1","entry_price":"1"}]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("unknown_instrument")),
        "{body}"
    );

    // Live stream: a drop to 46000 loses 4000 → equity 1000, MM 184 → ratio 0.184 (healthy);
    // to 45100: equity 100, MM 180.4 → ratio 1.804 → warning and trigger.
    let mut stream = client
        .get(format!("{api}/v1/events/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    venue.push_mark("BTCUSDT", "45100");
    let mut buf = String::new();
    let end = std::time::Instant::now() + DEADLINE;
    while !(buf.contains("event: liquidation_trigger") && buf.contains("\"api-1\"")) {
        let chunk = tokio::time::timeout(DEADLINE, stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        assert!(
            std::time::Instant::now() < end,
            "no trigger on the stream: {buf}"
        );
    }
    drop(stream);
    let riskiest = wait_json(
        &client,
        &format!("{api}/v1/accounts?order=risk&limit=1"),
        "riskiest",
        |v| v["accounts"][0]["account_id"] == "api-1",
    )
    .await;
    assert_eq!(riskiest["accounts"][0]["state"]["state"], "triggered");
    let history: Value = client
        .get(format!("{api}/v1/events?since=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        history["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["kind"] == "liquidation_trigger")
    );

    // A fill closes half: quantity 0.5.
    let r = client
        .post(format!("{api}/v1/accounts/api-1/fills"))
        .bearer_auth(TOKEN)
        .json(&json!({"instrument":"BTCUSDT-PERP","quantity":"-0.5","price":"45100","fee":"0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_json(
        &client,
        &format!("{api}/v1/accounts/api-1"),
        "the fill",
        |v| dec(&v["snapshot"]["positions"][0]["quantity"]) == Some(Decimal::new(5, 1)),
    )
    .await;

    // Feeds, readiness and metrics answer from the real components.
    let feeds: Value = client
        .get(format!("{api}/v1/feeds"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        feeds["feeds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["venue"] == "binance-usdm"),
        "{feeds}"
    );
    let metrics = scrape_metrics(&client, &api, None).await;
    assert!(metrics.contains("liqwatch_api_requests_total"), "{metrics}");
    assert!(
        metrics.contains("liqwatch_ingest_updates_total"),
        "{metrics}"
    );
    // Accounts per state: one gauge per state, summing to the accounts loaded.
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let by_state: f64 = ["healthy", "warning", "triggered"]
        .iter()
        .map(|s| gauge(&format!("liqwatch_accounts_by_state{{state=\"{s}\"}}")))
        .sum();
    assert_eq!(by_state, gauge("liqwatch_accounts_loaded"), "{metrics}");
    assert!(by_state >= 1.0, "{metrics}");

    // Restart: the account comes back from the store with the fill applied.
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
    let subscribed_before = venue.subscribes.load(Ordering::SeqCst);
    let mut daemon = start(&cfg, dir.path(), 2);
    // The restarted daemon binds a new port.
    let api = format!("http://{}", daemon.api_addr(DEADLINE).await);
    wait_healthy(&client, &api).await;
    // A price pushed before the new connection subscribes would be lost: wait for it.
    poll_until("the restarted daemon to subscribe", DEADLINE, || {
        (venue.subscribes.load(Ordering::SeqCst) > subscribed_before).then_some(())
    })
    .await;
    venue.push_mark("BTCUSDT", "45100");
    let back = wait_json(
        &client,
        &format!("{api}/v1/accounts/api-1"),
        "the account after restart",
        |v| dec(&v["snapshot"]["positions"][0]["quantity"]) == Some(Decimal::new(5, 1)),
    )
    .await;
    assert_eq!(back["account_id"], "api-1");

    let r = client
        .delete(format!("{api}/v1/accounts/api-1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{api}/v1/accounts/api-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
}
