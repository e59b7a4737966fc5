//! Issue 12 item 5 against the real daemon: staleness is watched only for instruments some
//! account holds (or `[prices] watch` lists) — the shipped presets track many instruments no
//! account holds, and they raise no `feed_stale`; a held instrument no feed prices is reported
//! once, loudly, at start and in `/readyz`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon_env::{Daemon, MockBinance, get_json, http_client};

const TOKEN: &str = "held-staleness-token";
const DEADLINE: Duration = Duration::from_secs(20);

fn config(dir: &Path, venue_url: &str) -> std::path::PathBuf {
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    // F1 holds BTCUSDT-PERP (priced by the Binance feed) and BYBIT-BTC collateral (priced
    // only by Bybit, which is not configured).
    std::fs::write(
        dir.join("accounts.jsonl"),
        r#"{"id":"F1","collateral":{"USDT":"100000","BYBIT-BTC":"1"},"positions":[{"instrument":"BTCUSDT-PERP","quantity":"1","entry_price":"60000"}]}"#,
    )
    .unwrap();
    let cfg = format!(
        r#"
[engine]
instruments = ["{presets}"]

[accounts]
snapshot = "{accounts}"

[[feeds]]
venue = "binance-usdm"
url = "{venue_url}"
backoff_initial = "50ms"
backoff_max = "200ms"

[prices]
composite = "binance-usdm"
stale_after = "300ms"

[journal]
path = "journal.sqlite"

[[sinks]]
type = "jsonl"
name = "archive"
path = "events.jsonl"

[api]
bind = "127.0.0.1:0"
token_env = "HELD_STALENESS_TOKEN"

[shutdown]
grace = "3s"
"#,
        presets = presets.display(),
        accounts = dir.join("accounts.jsonl").display(),
    );
    let p = dir.join("liqwatch.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// Issue 12 item 5: only the held BTCUSDT-PERP goes `feed_stale` (the other instruments the
/// Binance feed tracks, never priced, stay quiet); the held but unserved BYBIT-BTC is logged
/// at ERROR once and named in `/readyz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_held_instruments_go_stale_and_unserved_ones_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let cfg = config(dir.path(), &venue.url);
    let env = [("HELD_STALENESS_TOKEN", TOKEN)];
    let bin = env!("CARGO_BIN_EXE_liqwatch");
    let (mut daemon, api) = Daemon::init_and_start_subscribed(
        bin,
        &cfg,
        &env,
        dir.path().join("daemon.log"),
        &venue,
        DEADLINE,
    )
    .await;
    let client = http_client();
    venue.push_mark("BTCUSDT", "60000");

    // BTCUSDT-PERP had a price and lost it: stale. Every other instrument of the feed never had
    // one and went past `stale_after` earlier — and raised nothing.
    let mut events: Vec<Value> = Vec::new();
    let end = std::time::Instant::now() + DEADLINE;
    while !events
        .iter()
        .any(|e| e["kind"] == "feed_stale" && e["feed"]["instrument"] == "BTCUSDT-PERP")
    {
        assert!(
            std::time::Instant::now() < end,
            "no feed_stale for BTCUSDT-PERP: {events:?}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        events = get_json(&client, &format!("{api}/v1/events?since=0"))
            .await
            .and_then(|v| v["events"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|e| e["event"].clone())
            .collect();
    }
    let stale: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "feed_stale")
        .map(|e| &e["feed"]["instrument"])
        .collect();
    assert_eq!(stale, vec!["BTCUSDT-PERP"], "{events:#?}");

    let ready = client.get(format!("{api}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(
        body.contains("BYBIT-BTC is held (or watched) but no feed prices it"),
        "{body}"
    );
    assert!(!body.contains("ETHUSDT-PERP"), "{body}");
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
    let log = daemon.log_text();
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no feed pricing them"))
        .collect();
    assert_eq!(reports.len(), 1, "{log}");
    assert!(
        reports[0].contains("BYBIT-BTC") && reports[0].contains("ERROR"),
        "{}",
        reports[0]
    );
}
