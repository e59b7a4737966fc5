//! Issue 15 part 3 (funding) against the real daemon and a mock Binance speaking the real
//! protocol: the funding rate and time of `markPriceUpdate` (`r`, `T`) reach the snapshot of
//! `GET /v1/accounts/{id}` (the next payment and the ratio after it); `warn_before_funding`
//! journals a `liquidation_warning` with `level_type: "funding"` before the funding time;
//! `apply_funding` applies the payment once, and not again after a restart.

use std::time::Duration;

use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::{Value, json};

use crate::support::daemon_env::{
    Daemon, MockBinance, binance_config, get_json, http_client, now_ms,
};

const TOKEN: &str = "funding-token";
const TOKEN_ENV: &str = "FUNDING_TOKEN";
const DEADLINE: Duration = Duration::from_secs(30);

/// A `markPriceUpdate` with funding rate `r` settling at `t`.
fn frame(price: &str, r: &str, t: i64) -> String {
    format!(
        "{{\"stream\":\"btcusdt@markPrice@1s\",\"data\":{{\"e\":\"markPriceUpdate\",\"E\":{e},\"s\":\"BTCUSDT\",\"p\":\"{price}\",\"i\":\"{price}\",\"P\":\"{price}\",\"r\":\"{r}\",\"T\":{t}}}}}",
        e = now_ms()
    )
}

fn dec_of(v: &Value) -> Option<Decimal> {
    v.as_str()?.parse::<Decimal>().ok()
}

async fn start(
    cfg: &std::path::Path,
    dir: &std::path::Path,
    venue: &MockBinance,
    n: u32,
) -> (Daemon, String) {
    Daemon::start_subscribed(
        env!("CARGO_BIN_EXE_liqwatch"),
        cfg,
        &[(TOKEN_ENV, TOKEN)],
        dir.join(format!("daemon-{n}.log")),
        venue,
        DEADLINE,
    )
    .await
}

/// Account `f`'s USDT balance as the API reports it.
async fn usdt(client: &reqwest::Client, api: &str) -> Option<Decimal> {
    usdt_of(client, api, "f").await
}

/// An account's USDT balance as the API reports it.
async fn usdt_of(client: &reqwest::Client, api: &str, id: &str) -> Option<Decimal> {
    let v = get_json(client, &format!("{api}/v1/accounts/{id}")).await?;
    v["snapshot"]["collateral"]
        .as_array()?
        .iter()
        .find(|c| c["asset"] == "USDT")
        .and_then(|c| dec_of(&c["amount"]))
}

/// 3,700 USDT and 10 BTCUSDT-PERP long at 60,000 (MM 2,950, ratio 0.797); 0.01 % funding costs
/// 60: equity 3,640, ratio 0.8104, across the 0.8 warning. The snapshot shows the payment, a
/// funding warning is journaled before the funding time, the payment is applied once at it —
/// only to the account that asks for it (`"apply_funding": true`; the same book without it, as a
/// balance-reporting source sends it, keeps its balance) — and a restart that hears the same
/// funding time again does not apply it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funding_payment_warning_and_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let cfg = binance_config(dir.path(), &venue.url, TOKEN_ENV);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replacen("[[feeds]]", "warn_before_funding = \"10m\"\n\n[[feeds]]", 1);
    std::fs::write(&cfg, text).unwrap();
    Daemon::init_journal(env!("CARGO_BIN_EXE_liqwatch"), &cfg, &[(TOKEN_ENV, TOKEN)]);
    let client = http_client();
    let (mut daemon, api) = start(&cfg, dir.path(), &venue, 1).await;

    let r = client
        .put(format!("{api}/v1/accounts/f"))
        .bearer_auth(TOKEN)
        .json(
            &json!({"id":"f","collateral":{"USDT":"3700"},"apply_funding":true,
            "positions":[{"instrument":"BTCUSDT-PERP","quantity":"10","entry_price":"60000"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = client
        .put(format!("{api}/v1/accounts/reports-balances"))
        .bearer_auth(TOKEN)
        .json(
            &json!({"id":"reports-balances","collateral":{"USDT":"3700"},
            "positions":[{"instrument":"BTCUSDT-PERP","quantity":"10","entry_price":"60000"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    // Settles 8 s from now: inside the 10-minute window at once.
    let t = now_ms() + 8_000;
    venue.push_raw(frame("60000", "0.00010000", t));

    // The account read shows the next payment and the ratio after it.
    let mut view = Value::Null;
    let end = std::time::Instant::now() + DEADLINE;
    while view["snapshot"]["funding"].is_null() {
        assert!(
            std::time::Instant::now() < end,
            "no funding in the snapshot: {view}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        view = get_json(&client, &format!("{api}/v1/accounts/f"))
            .await
            .unwrap_or_default();
    }
    let f = &view["snapshot"]["funding"];
    assert_eq!(dec_of(&f["total"]), Some(dec!(-60)), "{view}");
    assert_eq!(
        dec_of(&f["positions"][0]["payment"]),
        Some(dec!(-60)),
        "{view}"
    );
    assert_eq!(
        dec_of(&f["positions"][0]["rate"]),
        Some(dec!(0.0001)),
        "{view}"
    );
    assert_eq!(f["next_funding_ms"], json!(t), "{view}");
    assert_eq!(dec_of(&f["equity_after"]), Some(dec!(3640)), "{view}");
    let after = dec_of(&f["margin_ratio_after"]).unwrap();
    assert_eq!(after.round_dp(6), dec!(0.810440), "{view}");

    // A funding warning is journaled before the funding time, the state left healthy.
    let mut events: Vec<Value> = Vec::new();
    let end = std::time::Instant::now() + DEADLINE;
    while !events.iter().any(|e| e["level_type"] == "funding") {
        assert!(
            std::time::Instant::now() < end,
            "no funding warning: {events:?}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        events = get_json(&client, &format!("{api}/v1/events?since=0"))
            .await
            .and_then(|v| v["events"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|e| e["event"].clone())
            .collect();
    }
    let w = events
        .iter()
        .find(|e| e["level_type"] == "funding")
        .unwrap();
    assert_eq!(w["kind"], "liquidation_warning", "{w}");
    assert_eq!(w["level"], "0.8", "{w}");
    assert_eq!(w["state"]["state"], "healthy", "{w}");
    assert!(w["time_ms"].as_i64().unwrap() < t, "{w}");
    assert_eq!(
        dec_of(&w["snapshot"]["funding"]["total"]),
        Some(dec!(-60)),
        "{w}"
    );

    // At the funding time the payment is applied to the collateral, once.
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        if usdt(&client, &api).await == Some(dec!(3640)) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "payment never applied\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        usdt_of(&client, &api, "reports-balances").await,
        Some(dec!(3700)),
        "an account without apply_funding keeps the balance its source reports"
    );
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());

    // A restart hears the same (now past) funding time again: a duplicate, not a payment.
    let (mut daemon, api) = start(&cfg, dir.path(), &venue, 2).await;
    venue.push_raw(frame("60000", "0.00010000", t));
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let metrics = client
            .get(format!("{api}/metrics"))
            .send()
            .await
            .ok()
            .map(|r| r.text());
        let text = match metrics {
            Some(f) => f.await.unwrap_or_default(),
            None => String::new(),
        };
        if text.lines().any(|l| {
            l.starts_with("liqwatch_engine_funding_duplicates_total") && !l.ends_with(" 0")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the repeat was never seen\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(usdt(&client, &api).await, Some(dec!(3640)));
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
}
