//! Issue 11 item 5 against the real daemon: `PUT /v1/accounts/x` with no positions and no
//! collateral used to journal a `liquidation_trigger` with ratio ∞. An account with no exposure
//! (MM = 0) is healthy whatever its equity; one with a position and negative equity triggers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon_env::{
    Daemon, MockBinance, binance_config, get_json, http_client, poll_until,
};

const TOKEN: &str = "empty-account-token";
const DEADLINE: Duration = Duration::from_secs(20);

/// Empty and collateral-only (negative balance) accounts put over HTTP journal no event and
/// read back healthy with ratio 0; an account with a position and negative equity triggers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_account_does_not_trigger_issue_11_item_5() {
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    // Port 0: the daemon binds a free port and logs it.
    let cfg = binance_config(dir.path(), &venue.url, "EMPTY_ACCOUNT_TOKEN");
    let client = http_client();
    Daemon::init_journal(
        env!("CARGO_BIN_EXE_liqwatch"),
        &cfg,
        &[("EMPTY_ACCOUNT_TOKEN", TOKEN)],
    );
    let mut daemon = Daemon::start(
        env!("CARGO_BIN_EXE_liqwatch"),
        &cfg,
        &[("EMPTY_ACCOUNT_TOKEN", TOKEN)],
        dir.path().join("daemon.log"),
    );
    let api = format!("http://{}", daemon.api_addr(DEADLINE).await);
    let end = std::time::Instant::now() + DEADLINE;
    while !matches!(client.get(format!("{api}/healthz")).send().await, Ok(r) if r.status() == 200) {
        assert!(std::time::Instant::now() < end, "API never became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    poll_until("the daemon to subscribe", DEADLINE, || {
        (venue.subscribes.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    venue.push_mark("BTCUSDT", "50000");

    let put = |id: &str, body: Value| {
        client
            .put(format!("{api}/v1/accounts/{id}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    for (id, body) in [
        ("x", json!({"id":"x","positions":[]})),
        (
            "owes",
            json!({"id":"owes","collateral":{"USDT":"-1000"},"positions":[]}),
        ),
        (
            "exposed",
            json!({"id":"exposed","collateral":{"USDT":"-1000"},
                "positions":[{"instrument":"BTCUSDT-PERP","quantity":"1","entry_price":"50000"}]}),
        ),
    ] {
        let r = put(id, body).await.unwrap();
        assert_eq!(r.status(), 200, "{id}: {:?}", r.text().await);
    }

    // The exposed account triggers once BTC is priced; the events before it are all there is.
    let mut events = Vec::new();
    let end = std::time::Instant::now() + DEADLINE;
    while !events
        .iter()
        .any(|e: &Value| e["account_id"] == "exposed" && e["kind"] == "liquidation_trigger")
    {
        assert!(
            std::time::Instant::now() < end,
            "no trigger for the exposed account: {events:?}\n{}",
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
    for quiet in ["x", "owes"] {
        assert!(
            !events.iter().any(|e| e["account_id"] == quiet),
            "{quiet} fired: {events:?}"
        );
        let view = get_json(&client, &format!("{api}/v1/accounts/{quiet}"))
            .await
            .unwrap();
        assert_eq!(view["snapshot"]["margin_ratio"], "0", "{view}");
        assert_eq!(view["state"]["state"], "healthy", "{view}");
    }
    let exposed = get_json(&client, &format!("{api}/v1/accounts/exposed"))
        .await
        .unwrap();
    assert_eq!(exposed["snapshot"]["margin_ratio"], "inf", "{exposed}");
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
}
