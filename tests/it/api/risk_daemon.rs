//! `[risk]` in the real daemon (issue 13 part 3): the scheduled recompute from a history file
//! stored and served at `GET /v1/accounts/{id}/risk`, the riskiest ranking by ES, ES/equity and
//! P(liquidation), the gauges, `risk_warning` events journaled (seen on JSONL) and not repeated
//! after a restart, their `recovered`; and recorded prices that survive a restart and feed the
//! scenario set.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::support::daemon_env::{
    Daemon, MockBinance, binance_config, http_client, poll_until, scrape_metrics,
};

const TOKEN: &str = "risk-daemon-token";
const DEADLINE: Duration = Duration::from_secs(30);

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("decimal string: {v}"))
}

/// The shared Binance daemon config with a `[risk]` section.
fn config(dir: &Path, venue_url: &str, risk: &str) -> PathBuf {
    let cfg = binance_config(dir, venue_url, "RISK_DAEMON_TOKEN");
    let text = std::fs::read_to_string(&cfg).unwrap() + &format!("\n[risk]\n{risk}\n");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

struct Running {
    daemon: Daemon,
    api: String,
}

async fn start(cfg: &Path, dir: &Path, venue: &MockBinance, n: u32) -> Running {
    let bin = env!("CARGO_BIN_EXE_liqwatch");
    let env = [("RISK_DAEMON_TOKEN", TOKEN)];
    if n == 1 {
        Daemon::init_journal(bin, cfg, &env);
    }
    let (daemon, api) = Daemon::start_subscribed(
        bin,
        cfg,
        &env,
        dir.join(format!("daemon-{n}.log")),
        venue,
        DEADLINE,
    )
    .await;
    Running { daemon, api }
}

async fn put(api: &str, id: &str, usdt: &str, btc: &str) {
    let r = http_client()
        .put(format!("{api}/v1/accounts/{id}"))
        .bearer_auth(TOKEN)
        .json(&json!({"id": id, "collateral": {"USDT": usdt},
            "positions": [{"instrument": "BTCUSDT-PERP", "quantity": btc, "entry_price": "50000"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

async fn get(url: String) -> (u16, Value) {
    let r = http_client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls `GET url` until `ok(status, body)`, returning the body.
async fn get_until(url: String, what: &str, ok: impl Fn(u16, &Value) -> bool) -> Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let (status, body) = get(url.clone()).await;
        if ok(status, &body) {
            return body;
        }
        assert!(Instant::now() < end, "{what}: last answer {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn jsonl(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn of<'a>(events: &'a [Value], kind: &str, account: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["account_id"] == account)
        .collect()
}

/// Every field path of a JSON value (array elements merged as `[]`).
fn shape(v: &Value, at: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{at}.{k}");
                out.insert(p.clone());
                out.extend(shape(x, &p));
            }
        }
        Value::Array(a) => {
            for x in a {
                out.extend(shape(x, &format!("{at}[]")));
            }
        }
        _ => {}
    }
    out
}

/// The JSON block after the `<!-- section: risk_warning -->` marker of docs/events.md.
fn documented_risk_warning() -> Value {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).unwrap();
    let at = page
        .find("<!-- section: risk_warning -->")
        .expect("docs/events.md risk_warning marker");
    let block = page[at..]
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a JSON block after the marker");
    serde_json::from_str(block).expect("the docs/events.md risk_warning example parses")
}

fn ids(body: &Value) -> Vec<String> {
    body["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["account_id"].as_str().unwrap().to_string())
        .collect()
}

/// Ten 1-hour windows of BTC: one −20 %, one +25 %, eight flat. With α = 0.9 (k = 1) a 1 BTC
/// long at 50,000 with 10,000 USDT loses all its equity in one window: P(liquidation) = 10 %,
/// ES = 10,000 = 100 % of equity. It warns on both level types once, the warnings survive a
/// restart without repeating, and more collateral recovers both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_risk_riskiest_warnings_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("ts,symbol,price\n");
    let hour = 3_600_000i64;
    let start_ms = 1_700_000_000_000i64 - 1_700_000_000_000i64 % hour;
    for (i, p) in [100, 80, 100, 100, 100, 100, 100, 100, 100, 100, 100]
        .iter()
        .enumerate()
    {
        csv.push_str(&format!("{},BTCUSDT,{p}\n", start_ms + i as i64 * hour));
    }
    std::fs::write(dir.path().join("history.csv"), csv).unwrap();
    let venue = MockBinance::start().await;
    let cfg = config(
        dir.path(),
        &venue.url,
        r#"history = ["history.csv"]
horizon = "1h"
alpha = "0.9"
every = "1s"
warn_p_liquidation = ["5%"]
warn_es_to_equity = ["50%"]"#,
    );
    let mut run = start(&cfg, dir.path(), &venue, 1).await;
    venue.push_mark("BTCUSDT", "50000");
    put(&run.api, "hot", "10000", "1").await;
    put(&run.api, "mid", "20000", "0.5").await;
    put(&run.api, "big", "1000000", "2").await;

    let api = run.api.clone();
    let body = get_until(
        format!("{api}/v1/risk/riskiest?by=es"),
        "three stored results",
        |s, b| s == 200 && b["total"] == 3,
    )
    .await;
    assert_eq!(ids(&body), ["big", "hot", "mid"], "{body}");
    let (_, body) = get(format!("{api}/v1/risk/riskiest?by=es_to_equity")).await;
    assert_eq!(ids(&body), ["hot", "mid", "big"], "{body}");
    assert_eq!(dec(&body["accounts"][0]["es_to_equity"]), Decimal::ONE);
    let (_, body) = get(format!(
        "{api}/v1/risk/riskiest?by=p_liquidation&limit=2&offset=1"
    ))
    .await;
    assert_eq!(ids(&body), ["big", "mid"], "{body}");
    assert_eq!(
        (body["total"].as_u64(), body["offset"].as_u64()),
        (Some(3), Some(1))
    );
    let (status, _) = get(format!("{api}/v1/risk/riskiest?by=var")).await;
    assert_eq!(status, 400);

    let hot = get_until(
        format!("{api}/v1/accounts/hot/risk"),
        "hot's risk",
        |s, b| s == 200 && b["source"] == "scheduled",
    )
    .await;
    assert_eq!(dec(&hot["p_liquidation"]), Decimal::new(1, 1), "{hot}");
    assert_eq!(dec(&hot["es"]), Decimal::from(10_000), "{hot}");
    assert_eq!(hot["scenarios"], 10);
    assert!(hot["computed_at"].as_str().unwrap().ends_with('Z'), "{hot}");

    // Both warnings, once each, on JSONL (every sink reads the journal).
    let warnings = poll_until("hot's two risk warnings on JSONL", DEADLINE, || {
        let ev = jsonl(dir.path());
        let w: Vec<Value> = of(&ev, "risk_warning", "hot")
            .into_iter()
            .cloned()
            .collect();
        (w.len() >= 2).then_some(w)
    })
    .await;
    let mut types: Vec<&str> = warnings
        .iter()
        .map(|e| e["level_type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(types, ["es_to_equity", "p_liquidation"]);
    let p = warnings
        .iter()
        .find(|e| e["level_type"] == "p_liquidation")
        .unwrap();
    assert_eq!(dec(&p["level"]), Decimal::new(5, 2));
    assert_eq!(dec(&p["risk"]["p_liquidation"]), Decimal::new(1, 1), "{p}");
    assert_eq!(p["risk"]["horizon"], "1h");
    assert!(of(&jsonl(dir.path()), "risk_warning", "big").is_empty());
    if std::env::var_os("LIQWATCH_PRINT_EVENTS").is_some() {
        // In wire order (the event's field order), as the sinks send it.
        let e: liqwatch::model::RiskEvent = serde_json::from_value(p.clone()).unwrap();
        println!(
            "```json\n{}\n```",
            serde_json::to_string_pretty(&e).unwrap()
        );
    }
    // docs/events.md shows a real one: the same fields, all the way down.
    let documented = documented_risk_warning();
    assert_eq!(documented["kind"], "risk_warning");
    assert_eq!(
        shape(&documented, ""),
        shape(p, ""),
        "docs/events.md risk_warning example"
    );

    // The gauges.
    let text = scrape_metrics(&http_client(), &api, None).await;
    assert!(
        text.contains("liqwatch_risk_accounts_p_liquidation_above{level=\"0.05\"} 1"),
        "{text}"
    );
    assert!(text.contains("liqwatch_risk_scenarios 10"), "{text}");

    // Restart: the warnings stand and are not repeated.
    assert_eq!(run.daemon.terminate(DEADLINE), Some(0));
    run = start(&cfg, dir.path(), &venue, 2).await;
    venue.push_mark("BTCUSDT", "50000");
    let api = run.api.clone();
    get_until(
        format!("{api}/v1/risk/riskiest"),
        "results after the restart",
        |s, b| s == 200 && b["total"] == 3,
    )
    .await;
    // A new account that warns: once its event is on JSONL, every earlier one is too.
    put(&api, "late", "10000", "1").await;
    poll_until("late's warnings", DEADLINE, || {
        (of(&jsonl(dir.path()), "risk_warning", "late").len() >= 2).then_some(())
    })
    .await;
    assert_eq!(of(&jsonl(dir.path()), "risk_warning", "hot").len(), 2);

    // More collateral: both warnings recover, with the same level types.
    put(&api, "hot", "1000000", "1").await;
    let rec = poll_until("hot's recoveries", DEADLINE, || {
        let ev = jsonl(dir.path());
        let r: Vec<Value> = of(&ev, "recovered", "hot").into_iter().cloned().collect();
        (r.len() >= 2).then_some(r)
    })
    .await;
    let mut types: Vec<&str> = rec
        .iter()
        .map(|e| e["level_type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(types, ["es_to_equity", "p_liquidation"]);
    assert_eq!(run.daemon.terminate(DEADLINE), Some(0));
}

/// `history = ["recorded"]`: the daemon samples the prices it uses every second into the
/// journal; once two samples a second apart exist the set has windows; after a restart (with a
/// flat price only) the set still holds the moves recorded before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_prices_survive_restart_and_feed_the_set() {
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let cfg = config(
        dir.path(),
        &venue.url,
        r#"history = ["recorded"]
horizon = "1s"
alpha = "0.5"
every = "1s"
record_every = "1s"
record_keep = "1h""#,
    );
    let mut run = start(&cfg, dir.path(), &venue, 1).await;
    venue.push_mark("BTCUSDT", "50000");
    put(&run.api, "a", "100000", "1").await;
    // Until a falling move is recorded: the price steps down every 100 ms.
    let api = run.api.clone();
    let end = Instant::now() + DEADLINE;
    let mut price = 50_000;
    let before = loop {
        price -= 10;
        venue.push_mark("BTCUSDT", &price.to_string());
        let (status, body) = get(format!("{api}/v1/accounts/a/risk")).await;
        if status == 200 && dec(&body["es"]) > Decimal::ZERO {
            break body;
        }
        assert!(
            Instant::now() < end,
            "no recorded scenarios: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(before["scenarios"].as_u64().unwrap() >= 1, "{before}");
    assert_eq!(run.daemon.terminate(DEADLINE), Some(0));

    run = start(&cfg, dir.path(), &venue, 2).await;
    venue.push_mark("BTCUSDT", "50000");
    let api = run.api.clone();
    let after = get_until(
        format!("{api}/v1/accounts/a/risk"),
        "risk after restart",
        |s, _| s == 200,
    )
    .await;
    // Only a flat price since the restart: a loss can only come from recorded moves before it.
    assert!(dec(&after["es"]) > Decimal::ZERO, "{after}");
    assert!(
        after["scenarios"].as_u64() >= before["scenarios"].as_u64(),
        "{after}"
    );
    assert_eq!(run.daemon.terminate(DEADLINE), Some(0));
}

/// Without `[risk]` the riskiest list answers 404 naming the section; a bad `by` is 400.
#[tokio::test]
async fn riskiest_not_configured() {
    use axum::body::Body;
    use axum::http::Request;
    use liqwatch::api::{self, ApiState};
    use tower::ServiceExt as _;

    let backend = crate::support::api_backend::MemBackend::new(4);
    let app = api::router(ApiState::new(backend.clone(), backend.events_tx.clone()));
    for (uri, status) in [
        ("/v1/risk/riskiest", 404),
        ("/v1/risk/riskiest?by=p_liquidation&limit=5", 404),
        ("/v1/risk/riskiest?by=var", 400),
        ("/v1/risk/riskiest?limit=0", 400),
    ] {
        let resp = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{uri}");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        if status == 404 {
            assert!(
                v["error"]["message"].as_str().unwrap().contains("[risk]"),
                "{v}"
            );
        }
    }
}
