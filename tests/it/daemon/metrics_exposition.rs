//! Issue 11 item 1 against the real daemon: `/metrics` passes `promtool check metrics` (every
//! family has `# HELP`, the meaning column of docs/metrics.md), and the series whose labels are
//! known at start are there at 0 before any event, so `increase()` sees the first one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::daemon_env::{Daemon, MockBinance, binance_config, http_client};
use crate::support::tools;

const TOKEN: &str = "metrics-exposition-token";
const DEADLINE: Duration = Duration::from_secs(20);

/// `# HELP` text by family, from the exposition.
fn help_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect()
}

/// The meaning column of docs/metrics.md as `# HELP` text (code marks removed), by name.
fn documented_help() -> BTreeMap<String, String> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"))
            .unwrap();
    doc.lines()
        .filter(|l| l.starts_with("| `liqwatch_"))
        .map(|l| {
            let cols: Vec<&str> = l
                .strip_prefix("| ")
                .and_then(|l| l.strip_suffix(" |"))
                .unwrap()
                .splitn(4, " | ")
                .collect();
            (
                cols[0].trim_matches('`').to_string(),
                cols[3].replace('`', ""),
            )
        })
        .collect()
}

/// A fresh daemon's `/metrics`, before any price or account, has HELP text from docs/metrics.md
/// for every family, passes `promtool check metrics` (it exited 3 for missing HELP before the
/// fix), has no series twice, and has the alerting series at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_with_zero_series_issue_11_item_1() {
    let promtool = tools::require("promtool", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let venue = MockBinance::start().await;
    let cfg = binance_config(dir.path(), &venue.url, "METRICS_EXPOSITION_TOKEN");
    let client = http_client();
    // The journal is created explicitly, as an operator does once (`liqwatch journal init`).
    Daemon::init_journal(
        env!("CARGO_BIN_EXE_liqwatch"),
        &cfg,
        &[("METRICS_EXPOSITION_TOKEN", TOKEN)],
    );
    let mut daemon = Daemon::start(
        env!("CARGO_BIN_EXE_liqwatch"),
        &cfg,
        &[("METRICS_EXPOSITION_TOKEN", TOKEN)],
        dir.path().join("daemon.log"),
    );
    let api = format!("http://{}", daemon.api_addr(DEADLINE).await);
    let end = std::time::Instant::now() + DEADLINE;
    let text = loop {
        let r = client
            .get(format!("{api}/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == 200
        {
            break r.text().await.unwrap();
        }
        assert!(
            std::time::Instant::now() < end,
            "/metrics never answered: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Zero series a first increment must be measured against.
    for series in [
        r#"liqwatch_monitor_events_total{kind="liquidation_trigger"} 0"#,
        r#"liqwatch_monitor_events_total{kind="liquidation_warning"} 0"#,
        r#"liqwatch_sink_delivered_total{sink="archive"} 0"#,
        r#"liqwatch_sink_dead_letters_total{sink="archive"} 0"#,
        r#"liqwatch_sink_failures_total{sink="archive",kind="permanent"} 0"#,
        r#"liqwatch_feed_disconnects_total{venue="binance-usdm"} 0"#,
        r#"liqwatch_feed_parse_errors_total{venue="binance-usdm"} 0"#,
        r#"liqwatch_accounts_ticks_total{instrument="BTCUSDT-PERP"} 0"#,
        r#"liqwatch_prices_feed_stale_total{instrument="BTCUSDT-PERP"} 0"#,
        r#"liqwatch_ingest_updates_total{source="http",outcome="malformed"} 0"#,
        "liqwatch_journal_write_failures_total 0",
        "liqwatch_engine_tick_to_event_seconds_count 0",
        r#"liqwatch_engine_step_seconds_count{phase="evaluate"} 0"#,
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "`{series}` missing from /metrics:\n{text}"
        );
    }

    // No series twice (a zero registered with labels in another order would be a second one).
    let mut seen = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
        labels.sort_unstable();
        assert!(
            seen.insert((name.to_string(), labels.join(","))),
            "series twice: {series}"
        );
    }

    // HELP text is the docs' meaning column, for every family served.
    let docs = documented_help();
    let help = help_lines(&text);
    assert!(help.len() > 40, "{help:?}");
    for (name, h) in &help {
        assert_eq!(Some(h), docs.get(name), "HELP of {name}");
    }

    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics exited {:?}: {}{}\n{text}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
}
