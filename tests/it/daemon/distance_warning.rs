//! Issue 13 part 1 against the real daemon on a replay: an account whose ratio is far from any
//! level (4.8 %) but whose uniform move to the trigger is 8 % gets a `liquidation_warning` with
//! `level_type: "shock_distance"` in the journal and the JSONL sink; after a restart on the same
//! journal nothing is emitted again.
//!
//! Long 10 BTC from 50,000 with 60,000 USDT, one tier at 0.4 %: `E = 60,000 + 10·(p − 50,000)`,
//! `MM = 0.04·p`, trigger where they meet, `p* = 440,000 / 9.96 = 44,176.71`. At 48,000 the
//! distance is `1 − p*/48,000 = 7.97 %` (within 10 %, outside 5 %), the ratio 1,920 / 40,000.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon_env::{Daemon, binance_mark_line, http_client, poll_until};

const DEADLINE: Duration = Duration::from_secs(30);

const INSTRUMENTS: &str = r#"
[[instrument]]
id = "USDT"
kind = "collateral"
underlying = "USDT"
stable = true
collateral_ratio = "1"

[[instrument]]
id = "BTCUSDT-PERP"
kind = "linear_perpetual"
underlying = "BTC"
contract_size = "1"
sources = [{ venue = "binance-usdm", symbol = "BTCUSDT", field = "mark" }]
tiers = [{ notional_floor = "0", notional_cap = "1000000000", mmr = "0.004", cum = "0" }]
"#;

fn config(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("instruments.toml"), INSTRUMENTS).unwrap();
    std::fs::write(
        dir.join("accounts.jsonl"),
        r#"{"id":"desk-1","collateral":{"USDT":"60000"},"positions":[{"instrument":"BTCUSDT-PERP","quantity":"10","entry_price":"50000"}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("recording.jsonl"),
        binance_mark_line("BTCUSDT", 1_722_816_000_000, "48000") + "\n",
    )
    .unwrap();
    let cfg = r#"
[engine]
instruments = ["instruments.toml"]
warn_within_shock = ["10%", "5%"]
shock_hysteresis = "1%"

[accounts]
snapshot = "accounts.jsonl"

[[feeds]]
venue = "replay"
file = "recording.jsonl"
speed = "max"

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

[shutdown]
grace = "3s"
"#;
    let p = dir.join("liqwatch.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn jsonl(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Runs the daemon until `desk-1` reads back at the replayed price (and, with `event`, shows
/// its last event), then stops it gracefully (the engine finishes and the sinks drain).
/// Returns the account as the API showed it.
async fn run_once(dir: &Path, cfg: &Path, log: &str, event: bool) -> Value {
    let bin = env!("CARGO_BIN_EXE_liqwatch");
    let mut daemon = Daemon::start(bin, cfg, &[], dir.join(log));
    let api = format!("http://{}", daemon.api_addr(DEADLINE).await);
    let client = http_client();
    let mut seen = None;
    let end = std::time::Instant::now() + DEADLINE;
    while seen.is_none() {
        assert!(
            std::time::Instant::now() < end,
            "desk-1 never valued at 48,000\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let view: Option<Value> = match client.get(format!("{api}/v1/accounts/desk-1")).send().await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        seen = view.filter(|v| {
            v["snapshot"]["positions"][0]["mark_price"] == "48000"
                && (!event || !v["last_event"].is_null())
        });
    }
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
    seen.unwrap_or_default()
}

/// The distance warning is journaled and delivered once, with the distance in its snapshot;
/// a restart on the same journal restores the distance state and emits nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_emits_a_shock_distance_warning_once_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    Daemon::init_journal(env!("CARGO_BIN_EXE_liqwatch"), &cfg, &[]);
    let view = run_once(dir.path(), &cfg, "first.log", true).await;
    // The API's state is the ratio's: the distance warning does not make the account `warning`.
    assert_eq!(
        view["state"],
        serde_json::json!({"state":"healthy"}),
        "{view:#}"
    );
    assert_eq!(view["last_event"]["level"], "0.1", "{view:#}");
    assert_eq!(
        view["levels"]["warn_within_shock"],
        serde_json::json!(["0.1", "0.05"])
    );
    let events = poll_until("the JSONL sink to deliver", DEADLINE, || {
        let e = jsonl(dir.path());
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let w = &events[0];
    assert_eq!(w["kind"], "liquidation_warning", "{w:#}");
    assert_eq!(w["level_type"], "shock_distance", "{w:#}");
    assert_eq!(w["level"], "0.1", "{w:#}");
    assert_eq!(w["crossed_levels"], serde_json::json!(["0.1"]), "{w:#}");
    assert_eq!(
        w["state"],
        serde_json::json!({"state":"warning","level":"0.1"})
    );
    assert_eq!(w["seq"], 1);
    let nearest: rust_decimal::Decimal = w["snapshot"]["shock_distance"]["nearest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // 1 − (440,000 / 9.96) / 48,000, to 4 places.
    assert_eq!(
        nearest.round_dp(4),
        rust_decimal_macros::dec!(-0.0797),
        "{w:#}"
    );
    assert_eq!(w["snapshot"]["margin_ratio"], "0.048", "{w:#}");

    let view = run_once(dir.path(), &cfg, "second.log", false).await;
    assert_eq!(
        view["state"],
        serde_json::json!({"state":"healthy"}),
        "{view:#}"
    );
    let again = jsonl(dir.path());
    assert_eq!(again.len(), 1, "repeated after restart: {again:#?}");
}
