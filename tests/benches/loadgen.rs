//! End-to-end load generator: the real `liqwatch` binary with many accounts against a loopback
//! mock of Binance USD-M and a loopback signed-webhook receiver.
//!
//! `cargo bench --bench loadgen` runs a small default (10,000 accounts, 20,000 frames/s for
//! 3 s). The full run:
//!
//! ```sh
//! LOADGEN_ACCOUNTS=100000 LOADGEN_RATE=100000 LOADGEN_SECS=10 cargo bench --bench loadgen
//! ```
//!
//! Phases: (1) sustained — mark-price frames for BTC/ETH/SOL at the chosen rate, prices jittering
//! ±0.05 % (no account moves), reporting frames/s sent and frames/s the daemon counted
//! (`liqwatch_feed_frames_total`); (2) crash — BTC, ETH and SOL −12 % at once, which takes every
//! account past the trigger; reports the time until every account's event was delivered to the
//! webhook, and the engine latency histograms scraped from `/metrics`
//! (`liqwatch_engine_tick_to_event_seconds`, `liqwatch_engine_wake_to_commit_seconds`);
//! finally the daemon's RSS.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

#[path = "../support/daemon_env.rs"]
mod daemon_env;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use daemon_env::{Daemon, MockBinance, WebhookReceiver, free_port, http_client, mark_frame};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const BASE: [(&str, f64); 3] = [("BTCUSDT", 40000.0), ("ETHUSDT", 3000.0), ("SOLUSDT", 50.0)];

fn price_text(p: f64, dp: usize) -> String {
    // Frames carry decimal text; the daemon parses it exactly.
    format!("{p:.dp$}")
}

/// Scrapes a histogram from Prometheus text: (count, sum, [(le, cumulative)]).
fn histogram(text: &str, name: &str) -> (f64, f64, Vec<(f64, f64)>) {
    let mut buckets = Vec::new();
    let (mut count, mut sum) = (0.0, 0.0);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{le=\"")) {
            if let Some((le, v)) = rest.split_once("\"} ") {
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(0.0)
                };
                buckets.push((le, v.trim().parse().unwrap_or(0.0)));
            }
        } else if let Some(v) = line.strip_prefix(&format!("{name}_count ")) {
            count = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix(&format!("{name}_sum ")) {
            sum = v.trim().parse().unwrap_or(0.0);
        }
    }
    (count, sum, buckets)
}

/// The smallest bucket bound holding quantile `q` (an upper bound of the true quantile).
fn quantile(buckets: &[(f64, f64)], count: f64, q: f64) -> f64 {
    buckets
        .iter()
        .find(|(_, c)| *c >= q * count)
        .map(|(le, _)| *le)
        .unwrap_or(f64::NAN)
}

fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let accounts = env_or("LOADGEN_ACCOUNTS", 10_000);
    let rate = env_or("LOADGEN_RATE", 20_000);
    let secs = env_or("LOADGEN_SECS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(accounts, rate, secs));
}

async fn run(n_accounts: u64, rate: u64, secs: u64) {
    println!("loadgen: {n_accounts} accounts, {rate} frames/s for {secs} s");
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let secret = "loadgen-secret";
    let hook = WebhookReceiver::start(secret).await;
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");

    // Accounts: long 0.5 BTC, 5 ETH, 100 SOL (40,000 USDT notional, tier 1), collateral
    // 4,200–4,900 USDT: ratio ≈ 3.5 % at the base prices, past the trigger after −12 %.
    let accounts_path = dir.path().join("accounts.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&accounts_path).unwrap());
        for i in 0..n_accounts {
            let usdt = 4200 + (i * 7) % 700;
            writeln!(
                f,
                r#"{{"id":"acct-{i}","collateral":{{"USDT":"{usdt}"}},"positions":[{{"instrument":"BTCUSDT-PERP","quantity":"0.5","entry_price":"40000"}},{{"instrument":"ETHUSDT-PERP","quantity":"5","entry_price":"3000"}},{{"instrument":"SOLUSDT-PERP","quantity":"100","entry_price":"50"}}]}}"#
            )
            .unwrap();
        }
    }
    let presets = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    let cfg = dir.path().join("liqwatch.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[engine]
instruments = ["{}"]
[accounts]
snapshot = "accounts.jsonl"
[[feeds]]
venue = "binance-usdm"
url = "{}"
[prices]
composite = "binance-usdm"
stale_after = "1h"
[journal]
path = "journal.sqlite"
[[sinks]]
type = "webhook"
name = "desk"
url = "{}"
secret_env = "LOADGEN_SECRET"
concurrency = 64
delivery = {{ batch_size = 1024 }}
[api]
bind = "127.0.0.1:{port}"
[log]
level = "warn"
[shutdown]
grace = "30s"
"#,
            presets.display(),
            venue.url,
            hook.url
        ),
    )
    .unwrap();

    let started = Instant::now();
    let mut daemon = Daemon::start(
        env!("CARGO_BIN_EXE_liqwatch"),
        &cfg,
        &[("LOADGEN_SECRET", secret)],
        dir.path().join("daemon.log"),
    );
    let client = http_client();
    while venue.subscribes.load(Ordering::SeqCst) == 0 {
        assert!(daemon.alive(), "daemon died:\n{}", daemon.log_text());
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no subscription"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "startup (load {n_accounts} accounts, subscribe): {:.2} s, RSS {} MiB",
        started.elapsed().as_secs_f64(),
        rss_kib(daemon.child.id()) / 1024
    );
    // Base prices, then wait until the engine has them (an account view exists).
    for (s, p) in BASE {
        venue.push_mark(s, &price_text(p, 2));
    }
    loop {
        if let Ok(r) = client.get(format!("{api}/v1/accounts/acct-0")).send().await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Phase 1: sustained frames.
    let metrics_url = format!("{api}/metrics");
    let before = client
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let frames_before = counter(&before, "liqwatch_feed_frames_total");
    let total = rate * secs;
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut k = 0u64;
    while sent < total {
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        let target = due.min(total);
        while sent < target {
            let (sym, base) = BASE[(k % 3) as usize];
            let jitter = 1.0 + (((k * 7919) % 1000) as f64 - 500.0) * 1e-6;
            venue.push_raw(mark_frame(
                sym,
                &price_text(base * jitter, 2),
                daemon_env::now_ms(),
            ));
            sent += 1;
            k += 1;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let send_secs = t0.elapsed().as_secs_f64();
    // Let the daemon catch up, then count.
    let mut frames_after = frames_before;
    let catch_up = Instant::now();
    while catch_up.elapsed() < Duration::from_secs(10) {
        let m = client
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        frames_after = counter(&m, "liqwatch_feed_frames_total");
        if frames_after - frames_before >= total as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = frames_after - frames_before;
    let recv_secs = catch_up.elapsed().as_secs_f64() + send_secs;
    println!(
        "sustained: sent {total} frames in {send_secs:.2} s ({:.0}/s); daemon counted {received:.0} ({:.0}/s over {recv_secs:.2} s); mock dropped {}",
        total as f64 / send_secs,
        received / recv_secs,
        daemon_env::LAGGED.load(Ordering::Relaxed)
    );

    // Phase 2: correlated crash, every account past the trigger.
    let crash = Instant::now();
    for (s, p) in BASE {
        venue.push_mark(s, &price_text(p * 0.88, 2));
    }
    let mut delivered = HashSet::new();
    loop {
        {
            let got = hook.received.lock();
            for r in got
                .iter()
                .skip(delivered.len().saturating_sub(0).min(got.len()))
            {
                if let Some(a) = r.body["account_id"].as_str() {
                    delivered.insert(a.to_string());
                }
            }
        }
        if delivered.len() as u64 >= n_accounts {
            break;
        }
        if crash.elapsed() > Duration::from_secs(300) {
            println!(
                "crash: only {} of {n_accounts} delivered after 300 s",
                delivered.len()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cascade = crash.elapsed().as_secs_f64();
    println!(
        "cascade: {} accounts' events delivered to the webhook in {cascade:.2} s ({:.0} events/s), bad signatures {}",
        delivered.len(),
        delivered.len() as f64 / cascade,
        hook.bad_signatures.load(Ordering::SeqCst)
    );
    let m = client
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "liqwatch_engine_tick_to_event_seconds",
        "liqwatch_engine_wake_to_commit_seconds",
    ] {
        let (count, sum, b) = histogram(&m, name);
        println!(
            "{name}: n={count} mean={:.3} ms p50≤{} ms p99≤{} ms max≤{} ms",
            if count > 0.0 {
                sum / count * 1e3
            } else {
                f64::NAN
            },
            quantile(&b, count, 0.5) * 1e3,
            quantile(&b, count, 0.99) * 1e3,
            quantile(&b, count, 1.0) * 1e3,
        );
    }
    println!("RSS at the end: {} MiB", rss_kib(daemon.child.id()) / 1024);
    let code = daemon.terminate(Duration::from_secs(60));
    println!("daemon exit code after SIGTERM: {code:?}");
}
