//! Issue 11 item 8 against the real daemon and `kill -HUP`: a reload applies new levels (an
//! account the lower warning level crosses fires at once), a rotated token file and a new sink
//! (which delivers from the journal's start); a broken
//! config is refused, the running configuration kept, the failure counted and logged; a key
//! that needs a restart is named.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::daemon_env::{
    Daemon, MockBinance, binance_config, http_client, poll_until, put_one_btc_long,
};

const DEADLINE: Duration = Duration::from_secs(20);

pub(super) fn hup(daemon: &Daemon) {
    let st = Command::new("kill")
        .arg("-HUP")
        .arg(daemon.child.id().to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

/// The value of the series `name` (exact text before the value) in `/metrics`.
async fn metric(client: &reqwest::Client, api: &str, series: &str) -> Option<f64> {
    let text = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn wait_metric(
    client: &reqwest::Client,
    api: &str,
    series: &str,
    want: f64,
    daemon: &Daemon,
) {
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let got = metric(client, api, series).await;
        if got == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{series} is {got:?}, want {want}; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn put(client: &reqwest::Client, api: &str, token: &str) -> u16 {
    put_one_btc_long(client, api, token, "a").await
}

async fn state(client: &reqwest::Client, api: &str) -> Value {
    client
        .get(format!("{api}/v1/accounts/a"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["state"]
        .clone()
}

/// SIGHUP applies new levels, a rotated token file and a new sink; a broken file changes nothing and is
/// counted as a failure; a changed `[journal]` is named as needing a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_levels_and_token_issue_11_item_8() {
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let cfg = binance_config(dir.path(), &venue.url, "UNUSED");
    let base = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("token_env = \"UNUSED\"", "token_file = \"token\"");
    let with_levels = |levels: &str, extra: &str| {
        base.replace(
            "[engine]\n",
            &format!("[engine]\nwarning_levels = [{levels}]\n"),
        ) + extra
    };
    std::fs::write(&cfg, with_levels("\"0.8\"", "")).unwrap();
    std::fs::write(dir.path().join("token"), "old-token\n").unwrap();
    let (mut daemon, api) = Daemon::init_and_start_subscribed(
        env!("CARGO_BIN_EXE_liqwatch"),
        &cfg,
        &[],
        dir.path().join("daemon.log"),
        &venue,
        DEADLINE,
    )
    .await;
    let client = http_client();
    venue.push_mark("BTCUSDT", "50000");

    // MM 200 (0.4 % of 50,000), equity 400: ratio 0.5, healthy under 0.8.
    assert_eq!(put(&client, &api, "old-token").await, 200);
    let end = std::time::Instant::now() + DEADLINE;
    while state(&client, &api).await != json!({"state":"healthy"}) {
        assert!(std::time::Instant::now() < end, "{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Reload: warning at 0.4, a new token, a second sink.
    let second = "\n[[sinks]]\ntype = \"jsonl\"\nname = \"second\"\npath = \"second.jsonl\"\n";
    std::fs::write(&cfg, with_levels("\"0.4\"", second)).unwrap();
    std::fs::write(dir.path().join("token"), "new-token\n").unwrap();
    hup(&daemon);
    wait_metric(
        &client,
        &api,
        "liqwatch_config_reloads_total{outcome=\"success\"}",
        1.0,
        &daemon,
    )
    .await;
    assert_eq!(
        state(&client, &api).await,
        json!({"state":"warning","level":"0.4"})
    );
    let events: Value = client
        .get(format!("{api}/v1/events?since=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["kind"] == "liquidation_warning" && e["event"]["account_id"] == "a"),
        "{events}"
    );
    assert_eq!(put(&client, &api, "old-token").await, 401);
    assert_eq!(put(&client, &api, "new-token").await, 200);
    // The new sink delivers from the start of the journal, the warning included.
    poll_until("the new sink to deliver the warning", DEADLINE, || {
        std::fs::read_to_string(dir.path().join("second.jsonl"))
            .ok()
            .filter(|t| t.contains("liquidation_warning"))
    })
    .await;

    // A broken file (warning level above the trigger) and a changed journal: refused, nothing
    // changes, the failure is counted and logged.
    std::fs::write(
        &cfg,
        with_levels("\"2\"", second).replace("[journal]\n", "[journal]\nretention = \"1d\"\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("token"), "third-token\n").unwrap();
    hup(&daemon);
    wait_metric(
        &client,
        &api,
        "liqwatch_config_reloads_total{outcome=\"failure\"}",
        1.0,
        &daemon,
    )
    .await;
    assert_eq!(
        metric(&client, &api, "liqwatch_config_last_reload_successful").await,
        Some(0.0)
    );
    assert!(
        daemon.log_text().contains("Reload failed"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(put(&client, &api, "third-token").await, 401);
    assert_eq!(put(&client, &api, "new-token").await, 200);

    // Valid again, with the journal change: applied but named as needing a restart.
    std::fs::write(
        &cfg,
        with_levels("\"0.4\"", second).replace("[journal]\n", "[journal]\nretention = \"1d\"\n"),
    )
    .unwrap();
    hup(&daemon);
    wait_metric(
        &client,
        &api,
        "liqwatch_config_reloads_total{outcome=\"success\"}",
        2.0,
        &daemon,
    )
    .await;
    assert_eq!(
        metric(&client, &api, "liqwatch_config_last_reload_successful").await,
        Some(1.0)
    );
    let log = daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("only after a restart") && l.contains("journal")),
        "{log}"
    );
    assert_eq!(put(&client, &api, "third-token").await, 200);
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
}
