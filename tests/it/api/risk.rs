//! `GET /v1/accounts/{id}/risk`: on the real binary with `[risk]` configured from the shipped
//! episode, and on a backend without `[risk]` (404 saying how to configure it).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use liqwatch::api::{self, ApiState};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::support::api_backend::MemBackend;
use crate::support::daemon_env::{Daemon, MockBinance, http_client, poll_until};

const TOKEN: &str = "risk-api-token";
const DEADLINE: Duration = Duration::from_secs(20);

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .expect("decimal string")
}

/// A daemon with `[risk]` over the crash-2021-05-19 episode (1-hour windows): a 1 BTC long at
/// 50,000 with 5,000 USDT is worth 5,000, its ES is at least its VaR, its components sum to
/// ES, and some 2021-05-19 hours liquidate it; an unknown account is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_endpoint_on_the_real_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    let cfg = dir.path().join("liqwatch.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[engine]
instruments = ["{presets}"]

[[feeds]]
venue = "binance-usdm"
url = "{url}"

[prices]
composite = "binance-usdm"
stale_after = "1h"

[journal]
path = "journal.sqlite"

[api]
bind = "127.0.0.1:0"
token_env = "RISK_API_TOKEN"

[risk]
history = ["episode:crash-2021-05-19"]
horizon = "1h"
alpha = "0.99"
"#,
            presets = presets.display(),
            url = venue.url
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_liqwatch");
    let env = [("RISK_API_TOKEN", TOKEN)];
    Daemon::init_journal(bin, &cfg, &env);
    let mut daemon = Daemon::start_args(bin, &[], &cfg, &env, dir.path().join("daemon.log"));
    let api = format!("http://{}", daemon.api_addr(DEADLINE).await);
    let client = http_client();
    poll_until("the daemon to subscribe", DEADLINE, || {
        (venue.subscribes.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    venue.push_mark("BTCUSDT", "50000");
    let r = client
        .put(format!("{api}/v1/accounts/r-1"))
        .bearer_auth(TOKEN)
        .json(&json!({"id":"r-1","collateral":{"USDT":"5000"},
            "positions":[{"instrument":"BTCUSDT-PERP","quantity":"1","entry_price":"50000"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let end = std::time::Instant::now() + DEADLINE;
    let body: Value = loop {
        let r = client
            .get(format!("{api}/v1/accounts/r-1/risk"))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        if status == 200 {
            break v;
        }
        assert!(std::time::Instant::now() < end, "no risk: {status} {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["account"], "r-1");
    assert_eq!(dec(&body["equity"]), Decimal::new(5000, 0));
    let n = body["scenarios"].as_u64().unwrap();
    assert!(n > 500, "{n} scenarios");
    assert_eq!(body["k"].as_u64().unwrap(), n.div_ceil(100));
    let (var, es) = (dec(&body["var"]), dec(&body["es"]));
    assert!(es >= var && var > Decimal::ZERO, "{body}");
    let sum: Decimal = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| dec(&c["es"]))
        .sum();
    assert_eq!(sum, es);
    assert!(
        body["liquidating_scenarios"].as_u64().unwrap() > 0,
        "{body}"
    );
    let r = client
        .get(format!("{api}/v1/accounts/nobody/risk"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    drop(daemon);
}

/// Without `[risk]` the endpoint answers 404 and says which section to add.
#[tokio::test]
async fn risk_endpoint_not_configured() {
    let backend = MemBackend::new(4);
    let app = api::router(ApiState::new(backend.clone(), backend.events_tx.clone()));
    let resp = app
        .oneshot(
            Request::get("/v1/accounts/a/risk")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("[risk]"),
        "{v}"
    );
}

/// `check-config` names a missing `[risk]` history file (exit 2) like any other file.
#[test]
fn check_config_names_a_missing_history_file() {
    let dir = tempfile::tempdir().unwrap();
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    let cfg = dir.path().join("l.toml");
    std::fs::write(
        &cfg,
        format!(
            "[engine]\ninstruments = [\"{}\"]\n\n[[feeds]]\nvenue = \"binance-usdm\"\n\n[journal]\npath = \"j.sqlite\"\n\n[risk]\nhistory = [\"gone.csv\"]\n",
            presets.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_liqwatch"))
        .args(["check-config", "--no-env"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("risk.history") && err.contains("gone.csv"),
        "{err}"
    );
}
