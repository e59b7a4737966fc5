//! End-to-end: the real `liqwatch` binary against a loopback mock of Binance USD-M and a real
//! signed-webhook receiver. A correlated drop produces a warning and then a trigger, delivered
//! signed with the right figures; the daemon is SIGKILLed during a webhook outage, restarted,
//! and every journaled event is delivered with no account lost.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::Value;

use crate::support::daemon_env::{
    Daemon, MockBinance, WebhookReceiver, http_client, journal_cli, poll_until, scrape_metrics,
};

const SECRET: &str = "e2e-webhook-secret";
const TOKEN: &str = "e2e-api-token";

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .unwrap()
}

fn cents(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

/// W3's positions (margin-math §3) with its BTC collateral folded into USDT, so each price
/// frame moves exactly one instrument and the figures at each step are deterministic.
const ACCOUNTS: &str = r#"{"accounts": [
  {"id": "e2e-desk", "collateral": {"USDT": "137450"},
   "positions": [
     {"instrument": "BTCUSDT-PERP", "quantity": "10.5", "entry_price": "62000"},
     {"instrument": "ETHUSDT-PERP", "quantity": "150", "entry_price": "3100"},
     {"instrument": "SOLUSDT-PERP", "quantity": "-2000", "entry_price": "140"}]},
  {"id": "calm", "collateral": {"USDT": "1000000"},
   "positions": [{"instrument": "BTCUSDT-PERP", "quantity": "1", "entry_price": "60000"}]}
]}"#;

fn write_config(dir: &Path, venue_url: &str, hook_url: &str) -> std::path::PathBuf {
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    std::fs::write(dir.join("accounts.json"), ACCOUNTS).unwrap();
    let cfg = format!(
        r#"
[engine]
instruments = ["{presets}"]

[accounts]
snapshot = "accounts.json"

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
type = "webhook"
name = "desk-hook"
url = "{hook_url}"
secret_env = "E2E_WEBHOOK_SECRET"
timeout = "2s"

[api]
bind = "127.0.0.1:0"
token_env = "E2E_API_TOKEN"

[log]
level = "info"

[shutdown]
grace = "3s"
"#,
        presets = presets.display()
    );
    let p = dir.join("liqwatch.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

/// Start `n` (the first is 1, on a new journal created as an operator would).
fn start(cfg: &Path, dir: &Path, n: u32) -> Daemon {
    if n == 1 {
        Daemon::init_journal(
            env!("CARGO_BIN_EXE_liqwatch"),
            cfg,
            &[("E2E_WEBHOOK_SECRET", SECRET), ("E2E_API_TOKEN", TOKEN)],
        );
    }
    Daemon::start(
        env!("CARGO_BIN_EXE_liqwatch"),
        cfg,
        &[("E2E_WEBHOOK_SECRET", SECRET), ("E2E_API_TOKEN", TOKEN)],
        dir.join(format!("daemon-{n}.log")),
    )
}

fn push(venue: &MockBinance, prices: &[(&str, &str)]) {
    for (s, p) in prices {
        venue.push_mark(s, p);
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> Option<Value> {
    let r = client.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Polls the API until `account`'s equity equals `equity` (so the engine has applied the
/// prices just pushed).
async fn wait_equity(client: &reqwest::Client, api: &str, account: &str, equity: &str) {
    let want: Decimal = equity.parse().unwrap();
    let url = format!("{api}/v1/accounts/{account}");
    let end = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = get_json(client, &url).await
            && dec(&v["snapshot"]["equity"]) == want
        {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{account} never reached equity {equity}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The whole daemon: warning then trigger at the webhook, signed and to the cent; SIGKILL
/// during a webhook outage; restart delivers every journaled event and keeps every account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warning_trigger_crash_restart() {
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let hook = WebhookReceiver::start(SECRET).await;
    let cfg = write_config(dir.path(), &venue.url, &hook.url);
    let client = http_client();

    let mut daemon = start(&cfg, dir.path(), 1);
    let api = format!("http://{}", daemon.api_addr(Duration::from_secs(20)).await);
    poll_until("the daemon to subscribe", Duration::from_secs(20), || {
        (venue.subscribes.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    {
        let streams = venue.streams.lock().clone();
        for s in [
            "btcusdt@markprice@1s",
            "ethusdt@markprice@1s",
            "solusdt@markprice@1s",
        ] {
            assert!(
                streams.iter().any(|x| x.to_lowercase() == s),
                "{s} not in {streams:?}"
            );
        }
    }

    // W3 prices: healthy, equity 90,000 − 85,500 + 137,450 − 60,500 = 81,450.
    push(
        &venue,
        &[
            ("BTCUSDT", "60000"),
            ("ETHUSDT", "3000"),
            ("SOLUSDT", "150"),
        ],
    );
    wait_equity(&client, &api, "e2e-desk", "81450").await;
    // SOL and ETH fall first (ratio 11 %), then BTC crosses the 80 % warning level. Each
    // frame moves one instrument, so every intermediate state is known to stay below a level.
    push(&venue, &[("SOLUSDT", "142"), ("ETHUSDT", "2800")]);
    wait_equity(&client, &api, "e2e-desk", "67450").await;
    push(&venue, &[("BTCUSDT", "54400")]);
    let warning = poll_until(
        "the warning at the webhook",
        Duration::from_secs(15),
        || {
            hook.bodies()
                .into_iter()
                .find(|b| b["kind"] == "liquidation_warning")
        },
    )
    .await;
    assert_eq!(warning["account_id"], "e2e-desk");
    assert_eq!(dec(&warning["level"]), Decimal::new(8, 1));
    let s = &warning["snapshot"];
    assert_eq!(cents(dec(&s["equity"])), Decimal::new(865_000, 2));
    assert_eq!(
        cents(dec(&s["maintenance_margin"])),
        Decimal::new(731_600, 2)
    );

    // The rest of the −10 % move (W4): SOL (the hedge) then ETH keep it below the trigger,
    // BTC crosses it.
    push(&venue, &[("SOLUSDT", "135"), ("ETHUSDT", "2700")]);
    wait_equity(&client, &api, "e2e-desk", "7650").await;
    push(&venue, &[("BTCUSDT", "54000")]);
    let trigger = poll_until(
        "the trigger at the webhook",
        Duration::from_secs(15),
        || {
            hook.bodies()
                .into_iter()
                .find(|b| b["kind"] == "liquidation_trigger")
        },
    )
    .await;
    assert_eq!(trigger["account_id"], "e2e-desk");
    assert_eq!(dec(&trigger["level"]), Decimal::ONE);
    let s = &trigger["snapshot"];
    assert_eq!(cents(dec(&s["equity"])), Decimal::new(345_000, 2));
    assert_eq!(
        cents(dec(&s["maintenance_margin"])),
        Decimal::new(708_000, 2)
    );
    assert_eq!(
        dec(&s["margin_ratio"]).round_dp(6),
        Decimal::new(2_052_174, 6)
    );
    assert!(trigger["seq"].as_u64() > warning["seq"].as_u64());
    assert_eq!(hook.bad_signatures.load(Ordering::SeqCst), 0);
    for r in hook.received.lock().iter() {
        assert_eq!(
            r.idempotency_key.as_deref(),
            r.body["event_id"].as_str(),
            "Idempotency-Key is the event id"
        );
    }
    assert!(
        !hook.bodies().iter().any(|b| b["account_id"] == "calm"),
        "the calm account never alerts"
    );
    // Each step that journaled events (the warning's, the trigger's) is timed once, from the
    // price to its commit and from the engine's wake to it, in the 0.75 ms-resolution buckets.
    let metrics = scrape_metrics(&client, &api, Some(TOKEN)).await;
    // A histogram's `_count` series: `name` and its labels (`{...}`, or empty).
    let count = |name: &str, labels: &str| -> u64 {
        let series = format!("{name}_count{labels} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
    };
    let timed = count("liqwatch_engine_tick_to_event_seconds", "");
    assert!(timed >= 2, "{timed} steps timed:\n{metrics}");
    assert_eq!(count("liqwatch_engine_wake_to_commit_seconds", ""), timed);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(r#"liqwatch_engine_tick_to_event_seconds_bucket{le="0.00075"}"#)),
        "{metrics}"
    );
    // Every step that valued an account is timed by phase, once per phase; the steps that
    // journaled events are among them.
    let phases: Vec<u64> = ["value", "evaluate", "reband"]
        .iter()
        .map(|p| {
            count(
                "liqwatch_engine_step_seconds",
                &format!(r#"{{phase="{p}"}}"#),
            )
        })
        .collect();
    assert!(phases[0] >= timed, "{phases:?} < {timed}:\n{metrics}");
    assert!(phases.iter().all(|&n| n == phases[0]), "{phases:?}");

    // Webhook outage: the recovery is journaled but cannot be delivered.
    hook.down.store(true, Ordering::SeqCst);
    let late = r#"{"id":"late-1","collateral":{"USDT":"5000"},"positions":[]}"#;
    let r = client
        .put(format!("{api}/v1/accounts/late-1"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(late)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "PUT late-1: {}", r.status());
    push(
        &venue,
        &[
            ("BTCUSDT", "60000"),
            ("ETHUSDT", "3000"),
            ("SOLUSDT", "150"),
        ],
    );
    poll_until(
        "the recovery in the journal",
        Duration::from_secs(15),
        || {
            let refused = hook.refused.load(Ordering::SeqCst);
            (refused > 0).then_some(())
        },
    )
    .await;
    let journaled: Value = get_json(&client, &format!("{api}/v1/events?since=0&limit=1000"))
        .await
        .expect("events");
    let ids_before: Vec<String> = journaled["events"]
        .as_array()
        .expect("events array")
        .iter()
        .map(|e| {
            e["event"]["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        journaled["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["kind"] == "recovered"),
        "{journaled}"
    );
    let subscribed_before = venue.subscribes.load(Ordering::SeqCst);
    daemon.kill9();

    // What an operator reads right after the crash, before restarting: the journal as the
    // killed daemon left it — its last commits still in the WAL, no daemon holding it — read
    // by `liqwatch journal`, which changes nothing the restart below depends on.
    let wal = dir.path().join("journal.sqlite-wal");
    assert!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0,
        "the killed daemon leaves its WAL behind"
    );
    let read = |args: &[&str]| journal_cli(env!("CARGO_BIN_EXE_liqwatch"), args, "--config", &cfg);
    let status: Value = serde_json::from_str(&read(&["status", "--format", "json"])).unwrap();
    assert_eq!(status["events"], ids_before.len(), "{status}");
    assert!(
        status["daemon"].is_null(),
        "the lock died with the daemon: {status}"
    );
    let hook_status = status["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["sink"] == "desk-hook")
        .unwrap_or_else(|| panic!("no desk-hook sink: {status}"));
    assert!(
        hook_status["lag"].as_u64() > Some(0),
        "undelivered: {status}"
    );
    let listed: Vec<String> = read(&["events"])
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        listed, ids_before,
        "every event journaled before the kill, in order"
    );

    // Restart with the receiver healthy: everything journaled is delivered, nothing is lost.
    hook.down.store(false, Ordering::SeqCst);
    let mut daemon = start(&cfg, dir.path(), 2);
    // The restarted daemon binds a new port.
    let api = format!("http://{}", daemon.api_addr(Duration::from_secs(20)).await);
    let delivered = poll_until(
        "every journaled event delivered",
        Duration::from_secs(20),
        || {
            let got: HashSet<String> = hook
                .bodies()
                .iter()
                .filter_map(|b| b["event_id"].as_str().map(str::to_string))
                .collect();
            ids_before.iter().all(|id| got.contains(id)).then_some(got)
        },
    )
    .await;
    assert!(delivered.len() >= 3, "{delivered:?}");
    // A price pushed before the new connection subscribes is lost, and the killed daemon's
    // connection may still count as connected: wait for a new SUBSCRIBE.
    poll_until("resubscribe after restart", Duration::from_secs(20), || {
        (venue.subscribes.load(Ordering::SeqCst) > subscribed_before).then_some(())
    })
    .await;
    push(
        &venue,
        &[
            ("BTCUSDT", "60000"),
            ("ETHUSDT", "3000"),
            ("SOLUSDT", "150"),
        ],
    );
    wait_equity(&client, &api, "e2e-desk", "81450").await;
    for id in ["calm", "late-1"] {
        assert!(
            get_json(&client, &format!("{api}/v1/accounts/{id}"))
                .await
                .is_some(),
            "account {id} lost across the SIGKILL"
        );
    }
    // The restart did not repeat the trigger (monitor state was journaled with it).
    let triggers = hook
        .bodies()
        .iter()
        .filter(|b| b["kind"] == "liquidation_trigger")
        .map(|b| b["event_id"].as_str().unwrap_or_default().to_string())
        .collect::<HashSet<_>>();
    assert_eq!(triggers.len(), 1, "{triggers:?}");
    assert_eq!(hook.bad_signatures.load(Ordering::SeqCst), 0);

    // Graceful stop: SIGTERM exits 0.
    let code = daemon.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", daemon.log_text());
}
