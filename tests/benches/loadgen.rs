//! End-to-end load generator: runs the real `liqwatch` binary with N accounts against a loopback
//! mock of Binance USD-M and a real signed-webhook receiver, then reports
//!
//! - frames/s the daemon sustained (`liqwatch_feed_frames_total` delta over the load phase),
//! - tick-to-event latency p50/p99 (bucket upper bounds of `liqwatch_engine_tick_to_event_seconds`
//!   scraped from `/metrics`) and the largest bucket hit, and beside it the engine's share (from
//!   the board waking the engine to the commit, `liqwatch_engine_wake_to_commit_seconds`) and the
//!   journal commits' own distribution in the same phase (`liqwatch_journal_append_seconds`: with
//!   `synchronous = full` each ends in an fsync, so the disk's share is visible),
//! - the time for a correlated crash that moves every account into warning or trigger to be fully
//!   delivered to the webhook receiver,
//! - the daemon's RSS at the end,
//! - the time to start (accounts from the snapshot file) and to restart on the same journal
//!   (accounts and monitor states from its store), each with the daemon's own start milestones.
//!
//! `cargo bench --bench loadgen` runs a small default (10,000 accounts, 10,000 frames/s, 3 s).
//! The full run: `cargo bench --bench loadgen -- --accounts 100000 --rate 100000 --secs 10`
//! (or `LOADGEN_ACCOUNTS`, `LOADGEN_RATE`, `LOADGEN_SECS`). `--batch-max N` (or
//! `LOADGEN_BATCH_MAX`) sets the webhook sink's `batch_max` (default 1: one event per request).
//! `--eager` (or `LOADGEN_EAGER=1`) turns the distance index off; `--sync normal` (or
//! `LOADGEN_SYNC=normal`) sets the journal's SQLite `synchronous` (default `full`).
//! `--cross-pct P` (or `LOADGEN_CROSS_PCT`, default 100) makes only P % of the accounts thin
//! enough to cross in the cascade (the rest hold 30,000 USDT and stay healthy), e.g. the issue-10
//! cascade: `-- --accounts 1000000 --secs 1 --cross-pct 16` (~160k events). The cascade reports
//! when the first event and when the last crossing account's event were journaled.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // the bench uses only some of the shared helpers
#[path = "../it/support/daemon_env.rs"]
mod daemon_env;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use daemon_env::{Daemon, MockBinance, WebhookReceiver, http_client, mark_frame, now_ms};

/// The daemon's allocator (`src/main.rs`), so what is timed here is what runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "loadgen-webhook-secret";
const TOKEN: &str = "loadgen-api-token";
/// Accounts on SOL whose state flips with every probe frame (latency samples during load).
const PROBES: usize = 10;

struct Opts {
    accounts: usize,
    rate: u64,
    secs: u64,
    batch_max: u64,
    /// `[engine] distance_index` (`--eager` turns it off).
    index: bool,
    /// `[journal] synchronous` (`--sync normal`; default `full`).
    sync: String,
    /// Percent of accounts that cross in the cascade (`--cross-pct`; default 100).
    cross_pct: usize,
}

fn opts() -> Opts {
    let env = |k: &str, d: u64| -> u64 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut o = Opts {
        accounts: env("LOADGEN_ACCOUNTS", 10_000) as usize,
        rate: env("LOADGEN_RATE", 10_000),
        secs: env("LOADGEN_SECS", 3),
        batch_max: env("LOADGEN_BATCH_MAX", 1),
        index: std::env::var("LOADGEN_EAGER").is_err(),
        sync: std::env::var("LOADGEN_SYNC").unwrap_or_else(|_| "full".into()),
        cross_pct: env("LOADGEN_CROSS_PCT", 100).min(100) as usize,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let next = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), next) {
            ("--accounts", Some(v)) => o.accounts = v as usize,
            ("--rate", Some(v)) => o.rate = v,
            ("--secs", Some(v)) => o.secs = v,
            ("--batch-max", Some(v)) => o.batch_max = v,
            ("--cross-pct", Some(v)) => o.cross_pct = v.min(100) as usize,
            ("--eager", _) => o.index = false,
            ("--sync", _) => {
                if let Some(v) = args.get(i + 1) {
                    o.sync = v.clone();
                }
            }
            _ => {} // `--bench` and other cargo flags
        }
        i += 1;
    }
    o
}

/// Account `i`: long 0.5 BTC from 60,000 with 10,040–10,099 USDT. At 60,000 the ratio is ~1.2 %;
/// at 40,000 equity is 40–99 against maintenance margin 80, so every account is in warning
/// (ratio ≥ 0.8) or trigger (≥ 1). Only accounts with `i % 100 < cross_pct` are that thin;
/// the others hold 30,000 USDT (ratio 0.4 % at 40,000) and never cross.
fn crosses(i: usize, cross_pct: usize) -> bool {
    i % 100 < cross_pct
}

fn write_accounts(dir: &Path, n: usize, cross_pct: usize) {
    let mut s = String::with_capacity(n * 160);
    s.push_str("{\"accounts\": [\n");
    for i in 0..n {
        let c = if crosses(i, cross_pct) {
            10_040 + (i % 60)
        } else {
            30_000
        };
        s.push_str(&format!(
            "{{\"id\":\"acct-{i}\",\"collateral\":{{\"USDT\":\"{c}\"}},\"positions\":[{{\"instrument\":\"BTCUSDT-PERP\",\"quantity\":\"0.5\",\"entry_price\":\"60000\"}}]}},\n"
        ));
    }
    // Probes: short-lived warnings on SOL. 100 SOL from 150 with 100 USDT: at 149.9 the ratio
    // is 74.95 / 90 = 0.83 (warning), at 151 it is 75.5 / 200 = 0.38 (recovered).
    for p in 0..PROBES {
        s.push_str(&format!(
            "{{\"id\":\"probe-{p}\",\"collateral\":{{\"USDT\":\"100\"}},\"positions\":[{{\"instrument\":\"SOLUSDT-PERP\",\"quantity\":\"100\",\"entry_price\":\"150\"}}]}}{}\n",
            if p + 1 < PROBES { "," } else { "" }
        ));
    }
    s.push_str("]}\n");
    std::fs::write(dir.join("accounts.json"), s).unwrap();
}

fn write_config(dir: &Path, venue_url: &str, hook_url: &str, o: &Opts) -> std::path::PathBuf {
    let (batch_max, index, sync) = (o.batch_max, o.index, &o.sync);
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    let cfg = format!(
        r#"
[engine]
instruments = ["{presets}"]
distance_index = {index}

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
synchronous = "{sync}"

[[sinks]]
type = "webhook"
name = "hook"
url = "{hook_url}"
secret_env = "LOADGEN_WEBHOOK_SECRET"
timeout = "5s"
concurrency = 32
batch_max = {batch_max}

[api]
bind = "127.0.0.1:0"
token_env = "LOADGEN_API_TOKEN"

[log]
# `liqwatch::api` at INFO for its `HTTP API listening addr=…` line (the port is picked at bind);
# `liqwatch::app` for the start's milestones (accounts seeded, loaded, running), printed with
# the start-up time.
level = "warn,liqwatch::api=info,liqwatch::app=info"

[shutdown]
grace = "5s"
"#,
        presets = presets.display()
    );
    let p = dir.join("liqwatch.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

async fn scrape(client: &reqwest::Client, api: &str) -> String {
    let r = client
        .get(format!("{api}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await;
    match r {
        Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
        _ => String::new(),
    }
}

/// Sum of every sample of `name` (all label sets).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `(le, cumulative count)` of histogram `name`.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut v: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The cumulative buckets of what was recorded between two scrapes of one histogram.
fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map(|(_, c)| *c)
                .unwrap_or(0.0);
            (*le, c - b)
        })
        .collect()
}

/// The mean of histogram `name` from its `_sum` and `_count` (of what was recorded between two
/// scrapes when `before` is given): exact, where the quantiles are bucket bounds.
fn mean(before: Option<&str>, after: &str, name: &str) -> Option<f64> {
    let (sum, count) = (format!("{name}_sum"), format!("{name}_count"));
    let at = |text: &str| (metric(text, &sum), metric(text, &count));
    let (s1, c1) = at(after);
    let (s0, c0) = before.map(at).unwrap_or((0.0, 0.0));
    (c1 > c0).then(|| (s1 - s0) / (c1 - c0))
}

/// The upper bound of the highest bucket that holds a sample.
fn top_bucket(b: &[(f64, f64)]) -> Option<f64> {
    let mut prev = 0.0;
    let mut top = None;
    for (le, c) in b {
        if *c > prev {
            top = Some(*le);
        }
        prev = *c;
    }
    top
}

/// Upper bound of the bucket holding quantile `q`.
fn quantile(b: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = b.last()?.1;
    if total == 0.0 {
        return None;
    }
    b.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn wait_for<T>(what: &str, deadline: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A mean in ms (exact, unlike a bucket bound).
fn fmt_mean(v: Option<f64>) -> String {
    v.map_or_else(|| "no samples".into(), |s| format!("{:.3} ms", s * 1000.0))
}

fn fmt_s(v: Option<f64>) -> String {
    match v {
        Some(s) if s.is_infinite() => "> 10 s".into(),
        Some(s) => format!("≤ {:.3} ms", s * 1000.0),
        None => "no samples".into(),
    }
}

fn main() {
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(o));
}

async fn run(o: Opts) {
    let dir = tempfile::tempdir().unwrap();
    let venue = Arc::new(MockBinance::start().await);
    let hook = WebhookReceiver::start(SECRET).await;
    write_accounts(dir.path(), o.accounts, o.cross_pct);
    let cfg = write_config(dir.path(), &venue.url, &hook.url, &o);
    let client = http_client();
    println!(
        "loadgen: {} accounts (+{PROBES} probes; {} % cross in the cascade), {} frames/s offered for {} s, webhook batch_max {}, distance index {}, journal synchronous {}",
        o.accounts, o.cross_pct, o.rate, o.secs, o.batch_max, o.index, o.sync
    );

    let env = [
        ("LOADGEN_WEBHOOK_SECRET", SECRET),
        ("LOADGEN_API_TOKEN", TOKEN),
    ];
    Daemon::init_journal(env!("CARGO_BIN_EXE_liqwatch"), &cfg, &env);
    let (mut daemon, api) = start_and_load(
        &o,
        &cfg,
        &env,
        &dir.path().join("daemon.log"),
        &venue,
        "startup (load",
    )
    .await;
    let pid = daemon.child.id();
    // Base prices; wait until the probes are priced (their state is known: healthy).
    venue.push_mark("BTCUSDT", "60000");
    venue.push_mark("SOLUSDT", "151");

    // Load phase: BTC frames alternating around 60,000 (revalue every account, no level crossed)
    // at the offered rate, plus 20 SOL probe frames/s flipping the probes warning/recovered.
    let before = scrape(&client, &api).await;
    let frames0 = metric(&before, "liqwatch_feed_frames_total");
    let stop = Arc::new(AtomicBool::new(false));
    let generator = {
        let (venue, stop, rate, secs) = (venue.clone(), stop.clone(), o.rate, o.secs);
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut sent: u64 = 0;
            let mut probes: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while t0.elapsed() < Duration::from_secs(secs) && !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
                let ms = now_ms();
                while sent < due {
                    let p = if sent.is_multiple_of(2) {
                        "59990.5"
                    } else {
                        "60010.5"
                    };
                    venue.push_raw(mark_frame("BTCUSDT", p, ms));
                    sent += 1;
                }
                let due_probes = (t0.elapsed().as_secs_f64() * 20.0) as u64;
                while probes < due_probes {
                    let p = if probes.is_multiple_of(2) {
                        "149.9"
                    } else {
                        "151"
                    };
                    venue.push_raw(mark_frame("SOLUSDT", p, ms));
                    probes += 1;
                }
            }
            (sent, probes, t0.elapsed())
        })
    };
    let (sent, probes, took) = generator.await.unwrap();
    // Let the daemon drain what is in its sockets, then read the counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = scrape(&client, &api).await;
    let frames = metric(&after, "liqwatch_feed_frames_total") - frames0;
    let lat = buckets(&after, "liqwatch_engine_tick_to_event_seconds");
    let max_bucket = top_bucket(&lat);
    println!(
        "  load: offered {} frames ({:.0}/s) + {probes} probe frames in {:.2} s; daemon received {frames:.0} frames = {:.0} frames/s sustained",
        sent,
        sent as f64 / took.as_secs_f64(),
        took.as_secs_f64(),
        frames / took.as_secs_f64()
    );
    println!(
        "  tick-to-event (frame receive → journal commit), {} commits: mean {}, p50 {}, p99 {}, max bucket {}",
        lat.last().map(|b| b.1).unwrap_or(0.0),
        fmt_mean(mean(None, &after, "liqwatch_engine_tick_to_event_seconds")),
        fmt_s(quantile(&lat, 0.5)),
        fmt_s(quantile(&lat, 0.99)),
        fmt_s(max_bucket)
    );
    // The engine's share: from the board waking the engine to the commit (the rest of
    // tick-to-event is the frame's wait for the engine: parsing, the board, the scheduler).
    let wake = bucket_delta(
        &buckets(&before, "liqwatch_engine_wake_to_commit_seconds"),
        &buckets(&after, "liqwatch_engine_wake_to_commit_seconds"),
    );
    println!(
        "  engine wake → journal commit, {} steps with events in the load phase: mean {}, p50 {}, p99 {}, max bucket {}",
        wake.last().map(|b| b.1).unwrap_or(0.0),
        fmt_mean(mean(
            Some(&before),
            &after,
            "liqwatch_engine_wake_to_commit_seconds"
        )),
        fmt_s(quantile(&wake, 0.5)),
        fmt_s(quantile(&wake, 0.99)),
        fmt_s(top_bucket(&wake))
    );
    // The disk's share: the journal commits of the load phase (under `synchronous = full` each
    // one ends in an fsync), from the same scrapes.
    let commits = bucket_delta(
        &buckets(&before, "liqwatch_journal_append_seconds"),
        &buckets(&after, "liqwatch_journal_append_seconds"),
    );
    println!(
        "  journal commit ({}), {} commits in the load phase: p50 {}, p99 {}, max bucket {}",
        if o.sync == "normal" {
            "synchronous = normal: no fsync per commit"
        } else {
            "synchronous = full: fsync per commit"
        },
        commits.last().map(|b| b.1).unwrap_or(0.0),
        fmt_s(quantile(&commits, 0.5)),
        fmt_s(quantile(&commits, 0.99)),
        fmt_s(top_bucket(&commits))
    );
    println!("  RSS after load: {} MiB", rss_kib(pid) / 1024);

    // Cascade: put the probes back to healthy, note the events so far, then crash BTC by a third
    // in four steps (each pushed a few times so a held jump is confirmed).
    venue.push_mark("SOLUSDT", "151");
    let base_events = wait_for(
        "probe events delivered",
        Duration::from_secs(60),
        async || {
            let m = scrape(&client, &api).await;
            let appended = metric(&m, "liqwatch_journal_appended_total");
            let delivered = metric(&m, "liqwatch_sink_delivered_total");
            (appended > 0.0 && delivered >= appended).then_some(appended)
        },
    )
    .await;
    let hook_before = hook.received.lock().len();
    let crash = Instant::now();
    for p in ["55000", "50000", "45000", "40000"] {
        for _ in 0..3 {
            venue.push_mark("BTCUSDT", p);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let accounts = (0..o.accounts).filter(|i| crosses(*i, o.cross_pct)).count();
    // Incremental: each poll reads only the requests that arrived since the last one, so the
    // measurement does not hold the receiver's lock (or a core) for O(all requests) per poll.
    let (mut seen, mut cursor) = (HashSet::<String>::new(), hook_before);
    let (mut first_at, mut journaled_at) = (None, None);
    let delivered_at = wait_for(
        "the cascade delivered",
        Duration::from_secs(600),
        async || {
            if journaled_at.is_none() {
                let m = scrape(&client, &api).await;
                let appended = metric(&m, "liqwatch_journal_appended_total") - base_events;
                if first_at.is_none() && appended > 0.0 {
                    first_at = Some(crash.elapsed());
                }
                if appended >= accounts as f64 {
                    journaled_at = Some(crash.elapsed());
                }
            }
            {
                let got = hook.received.lock();
                for r in &got[cursor..] {
                    seen.extend(
                        r.events()
                            .into_iter()
                            .filter_map(|e| e["account_id"].as_str())
                            .filter(|a| a.starts_with("acct-"))
                            .map(str::to_string),
                    );
                }
                cursor = got.len();
            }
            (seen.len() >= accounts).then(|| crash.elapsed())
        },
    )
    .await;
    let m = scrape(&client, &api).await;
    let cascade_events = metric(&m, "liqwatch_journal_appended_total") - base_events;
    let (received, received_events) = {
        let got = hook.received.lock();
        let after = &got[hook_before..];
        (
            after.len(),
            after.iter().map(|r| r.events().len()).sum::<usize>(),
        )
    };
    println!(
        "  cascade: {accounts} accounts into warning/trigger, {cascade_events:.0} events journaled (first {} and one per crossing account {} after the crash; 20 ms polls), {received} webhook requests carrying {received_events} events; fully delivered {:.2} s after the crash",
        first_at.map_or_else(|| "—".to_string(), |t| format!("{:.2} s", t.as_secs_f64())),
        journaled_at.map_or_else(|| "—".to_string(), |t| format!("{:.2} s", t.as_secs_f64())),
        delivered_at.as_secs_f64()
    );
    println!(
        "  bad signatures at the receiver: {}",
        hook.bad_signatures.load(Ordering::SeqCst)
    );
    println!("  RSS at the end: {} MiB", rss_kib(pid) / 1024);
    let code = daemon.terminate(Duration::from_secs(30));
    println!("  daemon exit on SIGTERM: {code:?}");
    // A restart: every account and monitor state comes back from the journal's store.
    let (mut daemon, _) = start_and_load(
        &o,
        &cfg,
        &env,
        &dir.path().join("daemon-restart.log"),
        &venue,
        "restart (restore",
    )
    .await;
    let code = daemon.terminate(Duration::from_secs(30));
    println!("  restarted daemon exit on SIGTERM: {code:?}");
}

/// Starts the daemon and waits until every account is loaded and the feed subscribed (a new
/// subscription on `venue`), printing the time it took (`what`: how the line starts) and the
/// daemon's own start milestones with its timestamps.
async fn start_and_load(
    o: &Opts,
    cfg: &Path,
    env: &[(&str, &str)],
    log: &Path,
    venue: &MockBinance,
    what: &str,
) -> (Daemon, String) {
    let client = http_client();
    let subscribed = venue.subscribes.load(Ordering::SeqCst);
    let started = Instant::now();
    let started_utc = liqwatch::model::format_rfc3339_ms(now_ms());
    let mut daemon = Daemon::start(env!("CARGO_BIN_EXE_liqwatch"), cfg, env, log.to_path_buf());
    let pid = daemon.child.id();
    // The API binds after the accounts are loaded: allow the same 300 s as below.
    let api = format!("http://{}", daemon.api_addr(Duration::from_secs(300)).await);
    let want = (o.accounts + PROBES) as f64;
    let mut last = 0.0;
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let m = scrape(&client, &api).await;
        last = metric(&m, "liqwatch_accounts_loaded").max(last);
        if last >= want {
            break;
        }
        if Instant::now() > end || !daemon.alive() {
            let log = daemon.log_text();
            let tail = &log[log.len().saturating_sub(3000)..];
            panic!("accounts not loaded ({last} of {want}); daemon log tail:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("subscription", Duration::from_secs(30), async || {
        (venue.subscribes.load(Ordering::SeqCst) > subscribed).then_some(())
    })
    .await;
    println!(
        "  {what} {} accounts, subscribe): {:.2} s, RSS {} MiB",
        o.accounts + PROBES,
        started.elapsed().as_secs_f64(),
        rss_kib(pid) / 1024
    );
    // Where the start went: the daemon's own milestones, with its timestamps.
    println!("    daemon started {started_utc}");
    for line in daemon.log_text().lines().filter(|l| {
        [
            "Accounts seeded",
            "Accounts restored",
            "Accounts loaded",
            "liqwatch running",
            "HTTP API listening",
            "Page history restored",
        ]
        .iter()
        .any(|m| l.contains(m))
    }) {
        println!("    daemon: {}", line.chars().take(160).collect::<String>());
    }
    (daemon, api)
}
