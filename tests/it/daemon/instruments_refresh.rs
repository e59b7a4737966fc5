//! Issue 15 part 2 against the real daemon: `[[instruments.sources]]` loads Binance's brackets
//! from the saved response at start-up and refreshes them from a loopback HTTP server. A 500,
//! a response slower than the timeout and a malformed body each keep the terms in force and
//! say so in `/readyz` and the metrics (a refresh failing past `max_age` makes the daemon not
//! ready); a changed bracket revalues the holder, fires its trigger and is journaled as an
//! `instrument_changed` event.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::Value;

use crate::support::daemon_env::{Daemon, MockBinance, get_json, http_client};

const DEADLINE: Duration = Duration::from_secs(30);
const FIXTURE: &str = "feeds/binance-usdm/rest/leverage_tiers_freqtrade_2024-10-24.json";

/// What the loopback "venue" answers.
#[derive(Clone)]
enum Mode {
    Body(String),
    Status(u16),
    /// The body, after this long (longer than the configured timeout).
    Slow(Duration, String),
}

#[derive(Clone)]
struct Venue {
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
}

async fn brackets(State(v): State<Venue>) -> Response {
    v.hits.fetch_add(1, Ordering::SeqCst);
    let mode = v.mode.lock().clone();
    match mode {
        Mode::Body(b) => b.into_response(),
        Mode::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Mode::Slow(d, b) => {
            tokio::time::sleep(d).await;
            b.into_response()
        }
    }
}

async fn start_venue(body: String) -> (String, Venue) {
    let v = Venue {
        mode: Arc::new(Mutex::new(Mode::Body(body))),
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let app = axum::Router::new()
        .route("/fapi/v1/leverageBracket", axum::routing::get(brackets))
        .with_state(v.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/fapi/v1/leverageBracket"), v)
}

/// The fixture with every BTCUSDT bracket at a 5 % rate and no deduction.
fn raised_btc_brackets(fixture: &str) -> String {
    let mut v: Value = serde_json::from_str(fixture).unwrap();
    let tiers = v["BTC/USDT:USDT"].as_array_mut().unwrap();
    for t in tiers {
        t["info"]["maintMarginRatio"] = Value::from("0.05");
        t["info"]["cum"] = Value::from("0");
    }
    serde_json::to_string(&v).unwrap()
}

fn config(dir: &Path, feed_url: &str, refresh_url: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // F1: 10 BTC long at 60,000 (notional 600,000: bracket 3, MM 2,950) against 20,000 USDT:
    // ratio 0.1475. At a flat 5 % the MM is 30,000 and the account is past its trigger.
    std::fs::write(
        dir.join("accounts.jsonl"),
        r#"{"id":"F1","collateral":{"USDT":"20000"},"positions":[{"instrument":"BTCUSDT-PERP","quantity":"10","entry_price":"60000"}]}"#,
    )
    .unwrap();
    let cfg = format!(
        r#"
[engine]
instruments = ["{presets}"]

[instruments]
[[instruments.sources]]
venue = "binance-usdm"
files = ["{fixture}"]
urls = ["{refresh_url}"]
instruments = ["BTCUSDT-PERP", "ETHUSDT-PERP"]
every = "200ms"
timeout = "300ms"
max_age = "2s"

[accounts]
snapshot = "{accounts}"

[[feeds]]
venue = "binance-usdm"
url = "{feed_url}"
instruments = ["BTCUSDT-PERP"]
backoff_initial = "50ms"
backoff_max = "200ms"

[prices]
composite = "binance-usdm"
stale_after = "120s"

[journal]
path = "journal.sqlite"

[api]
bind = "127.0.0.1:0"

[shutdown]
grace = "3s"
"#,
        presets = root.join("feeds/presets.toml").display(),
        fixture = root.join(FIXTURE).display(),
        accounts = dir.join("accounts.jsonl").display(),
    );
    let p = dir.join("liqwatch.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// The `instruments` check of `/readyz`.
async fn instruments_check(client: &reqwest::Client, api: &str) -> Option<Value> {
    let body = get_json(client, &format!("{api}/readyz")).await?;
    body["checks"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == "instruments")
        .cloned()
}

async fn metric(client: &reqwest::Client, api: &str, series: &str) -> f64 {
    let text = match client.get(format!("{api}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0.0,
    };
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `f` (async) until it returns `Some`, or fails the test naming `what`.
async fn until<T, F, Fut>(what: &str, daemon: &Daemon, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 15 part 2: failures keep the last good set (500, timeout, malformed body: each named
/// in `/readyz` and counted; past `max_age` the daemon is not ready), and a changed bracket
/// revalues the holder, fires its trigger and is journaled as `instrument_changed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_keeps_the_last_good_set_and_applies_a_changed_bracket() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = std::fs::read_to_string(root.join(FIXTURE)).unwrap();
    let (refresh_url, venue) = start_venue(fixture.clone()).await;
    let feed = MockBinance::start().await;
    let cfg = config(dir.path(), &feed.url, &refresh_url);
    let bin = env!("CARGO_BIN_EXE_liqwatch");
    let (mut daemon, api) = Daemon::init_and_start_subscribed(
        bin,
        &cfg,
        &[],
        dir.path().join("daemon.log"),
        &feed,
        DEADLINE,
    )
    .await;
    let client = http_client();
    feed.push_mark("BTCUSDT", "60000");
    let ok_series = r#"liqwatch_instruments_refresh_total{venue="binance-usdm",outcome="ok"}"#;
    until("a good refresh", &daemon, || async {
        (metric(&client, &api, ok_series).await >= 1.0).then_some(())
    })
    .await;
    // The same brackets as the files: nothing changed, nothing journaled.
    let check = instruments_check(&client, &api).await.unwrap();
    assert_eq!(check["ok"], true, "{check}");

    // A 500: named, counted, the terms kept; past max_age (2 s) the daemon is not ready.
    *venue.mode.lock() = Mode::Status(500);
    let failed =
        r#"liqwatch_instruments_refresh_total{venue="binance-usdm",outcome="fetch_failed"}"#;
    let check = until("readiness to fail on the 500s", &daemon, || async {
        instruments_check(&client, &api)
            .await
            .filter(|c| c["ok"] == false)
    })
    .await;
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.contains("HTTP 500"), "{detail}");
    assert!(detail.contains("keeping the last good set"), "{detail}");
    assert!(detail.contains("older than max_age"), "{detail}");
    assert!(metric(&client, &api, failed).await >= 1.0);

    // Slower than the timeout.
    *venue.mode.lock() = Mode::Slow(Duration::from_secs(2), fixture.clone());
    until("a timed-out refresh", &daemon, || async {
        instruments_check(&client, &api).await.filter(|c| {
            c["detail"]
                .as_str()
                .is_some_and(|d| d.contains("timed out"))
        })
    })
    .await;

    // A malformed body: the file/line/field error, counted as malformed.
    *venue.mode.lock() = Mode::Body(
        r#"{"BTC/USDT:USDT": [{"info": {"notionalFloor": "0", "notionalCap": "x"}}]}"#.into(),
    );
    let malformed =
        r#"liqwatch_instruments_refresh_total{venue="binance-usdm",outcome="malformed"}"#;
    until("a malformed refresh", &daemon, || async {
        (metric(&client, &api, malformed).await >= 1.0).then_some(())
    })
    .await;
    let check = instruments_check(&client, &api).await.unwrap();
    assert!(
        check["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&refresh_url) && d.contains("keeping the last good set")),
        "{check}"
    );
    // Nothing was applied by any failure.
    let events = get_json(&client, &format!("{api}/v1/events?since=0"))
        .await
        .unwrap();
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(0),
        "{events}"
    );

    // A changed bracket: applied, the holder revalued and triggered, the change journaled.
    *venue.mode.lock() = Mode::Body(raised_btc_brackets(&fixture));
    let events: Vec<Value> = until("the instrument change and the trigger", &daemon, || async {
        let evs: Vec<Value> = get_json(&client, &format!("{api}/v1/events?since=0"))
            .await?
            .get("events")?
            .as_array()?
            .iter()
            .map(|e| e["event"].clone())
            .collect();
        (evs.iter().any(|e| e["kind"] == "liquidation_trigger")
            && evs.iter().any(|e| e["kind"] == "instrument_changed"))
        .then_some(evs)
    })
    .await;
    let change = events
        .iter()
        .find(|e| e["kind"] == "instrument_changed")
        .unwrap();
    let c = &change["instrument_change"];
    assert_eq!(c["instrument"], "BTCUSDT-PERP", "{change}");
    assert_eq!(c["changed"], serde_json::json!(["tiers"]), "{change}");
    assert_eq!(c["holders_revalued"], 1, "{change}");
    assert_eq!(c["after"]["tiers"][0]["mmr"], "0.05", "{change}");
    assert_eq!(c["before"]["tiers"][0]["mmr"], "0.004", "{change}");
    assert!(
        c["source"].as_str().unwrap().contains(&refresh_url),
        "{change}"
    );
    // ETHUSDT-PERP (unchanged) raised nothing.
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "instrument_changed")
            .count(),
        1
    );
    let trigger = events
        .iter()
        .find(|e| e["kind"] == "liquidation_trigger")
        .unwrap();
    assert_eq!(trigger["account_id"], "F1");
    assert_eq!(
        trigger["snapshot"]["maintenance_margin"], "30000.000000000000",
        "{trigger}"
    );
    // The preset's fee (0.003) is kept: brackets alone do not publish one.
    assert_eq!(
        trigger["snapshot"]["liquidation_cost"]["penalty_rate"],
        "0.09"
    );
    // The good refresh cleared the failure; the daemon's account view agrees.
    let check = until("readiness to recover", &daemon, || async {
        instruments_check(&client, &api)
            .await
            .filter(|c| c["ok"] == true)
    })
    .await;
    assert!(
        !check["detail"].as_str().unwrap().contains("failed"),
        "{check}"
    );
    assert!(venue.hits.load(Ordering::SeqCst) >= 5);
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
}
