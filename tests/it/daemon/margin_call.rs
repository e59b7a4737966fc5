//! The margin call against the real daemon: an account in warning is read with the deposit that
//! makes it healthy again (`margin_call` of `GET /v1/accounts/{id}`); depositing one cent less
//! (`POST …/collateral`) leaves it in warning, the last cent makes it recover — one `recovered`
//! event, journaled — and a healthy account has no margin call.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon_env::{
    Daemon, MockBinance, binance_config, get_ok, http_client, poll_until_json, put_one_btc_long,
};

const BIN: &str = env!("CARGO_BIN_EXE_liqwatch");
const TOKEN_ENV: &str = "MARGIN_CALL_TOKEN";
const TOKEN: &str = "margin-call-token";
const DEADLINE: Duration = Duration::from_secs(20);

async fn deposit(client: &reqwest::Client, api: &str, id: &str, amount: &str) {
    let r = client
        .post(format!("{api}/v1/accounts/hot/collateral"))
        .bearer_auth(TOKEN)
        .header("Idempotency-Key", id)
        .json(&json!({"asset": "USDT", "delta": amount}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depositing_the_margin_call_recovers_the_account_and_a_cent_less_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let cfg = binance_config(dir.path(), &venue.url, TOKEN_ENV);
    let (mut daemon, api) = Daemon::init_and_start_subscribed(
        BIN,
        &cfg,
        &[(TOKEN_ENV, TOKEN)],
        dir.path().join("daemon.log"),
        &venue,
        DEADLINE,
    )
    .await;
    let client = http_client();
    venue.push_mark("BTCUSDT", "50000");
    assert_eq!(put_one_btc_long(&client, &api, TOKEN, "hot").await, 200);
    let account = format!("{api}/v1/accounts/hot");
    // Healthy (ratio 0.5 under the default levels 0.8 / 1, hysteresis 0.05): no margin call.
    let healthy = get_ok(&client, account.clone()).await;
    assert_eq!(healthy["state"]["state"], "healthy", "{healthy}");
    assert!(
        healthy["snapshot"].get("margin_call").is_none(),
        "{healthy}"
    );

    // At 49,840: equity 240, MM 199.36, ratio 0.83 — a warning. Back under 0.75 takes
    // 199.36 / 0.75 − 240 = 25.8133… of equity: 25.82.
    venue.push_mark("BTCUSDT", "49840");
    let warned = poll_until_json(&client, account.clone(), DEADLINE, |v| {
        v["state"]["state"] == "warning"
    })
    .await;
    assert_eq!(
        warned["snapshot"]["margin_call"],
        json!({"below_ratio": "0.75", "deposit": "25.82"}),
        "{warned}"
    );

    // One cent short: 199.36 / 265.81 = 0.750009… — still in warning, and the call is a cent.
    deposit(&client, &api, "dep-1", "25.81").await;
    let short = poll_until_json(&client, account.clone(), DEADLINE, |v| {
        v["snapshot"]["equity"]
            .as_str()
            .is_some_and(|e| e.starts_with("265.81"))
    })
    .await;
    assert_eq!(short["state"]["state"], "warning", "{short}");
    assert_eq!(
        short["snapshot"]["margin_call"],
        json!({"below_ratio": "0.75", "deposit": "0.01"}),
        "{short}"
    );

    // The last cent: recovered, journaled, no margin call any more.
    deposit(&client, &api, "dep-2", "0.01").await;
    let recovered = poll_until_json(&client, account.clone(), DEADLINE, |v| {
        v["state"]["state"] == "healthy"
    })
    .await;
    assert!(
        recovered["snapshot"].get("margin_call").is_none(),
        "{recovered}"
    );
    let events = poll_until_json(
        &client,
        format!("{api}/v1/accounts/hot/events"),
        DEADLINE,
        |v| v["events"].as_array().is_some_and(|e| e.len() >= 2),
    )
    .await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["recovered", "liquidation_warning"], "{events}");
    let ratio: Value = events["events"][0]["event"]["snapshot"]["margin_ratio"].clone();
    assert!(
        ratio.as_str().is_some_and(|r| r.starts_with("0.7499")),
        "{events}"
    );
    assert_eq!(daemon.terminate(DEADLINE), Some(0));
}
