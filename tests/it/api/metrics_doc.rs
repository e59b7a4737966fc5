//! Keeps the metrics documentation true: every metric an alert rule in
//! `deploy/prometheus/alerts.yml` uses is in the metrics table of docs/metrics.md, and every metric in that
//! table is emitted somewhere in `src/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::support::tools;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every `liqwatch_*` token in `text`, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("liqwatch_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if boundary && !text[start..end].ends_with('_') {
            let mut name = &text[start..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    name = base;
                }
            }
            out.insert(name.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// Metric names in the docs/metrics.md table (rows starting with `` | `liqwatch_ ``).
fn readme_metrics() -> BTreeSet<String> {
    let readme = read("docs/metrics.md");
    let section = readme
        .split("| Metric | Type | Labels | Meaning |")
        .nth(1)
        .expect("docs/metrics.md table marker")
        .split("<!-- section:")
        .next()
        .unwrap_or_default()
        .to_string();
    section
        .lines()
        .filter(|l| l.starts_with("| `liqwatch_"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_string))
        .collect()
}

/// String literals naming metrics anywhere in `src/`.
fn code_metrics() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split('"').skip(1).step_by(2) {
                    if piece.starts_with("liqwatch_")
                        && piece
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    {
                        out.insert(piece.to_string());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&root().join("src"), &mut out);
    out
}

/// Every metric an alert rule uses is in the docs/metrics.md table, and every metric in the table
/// is emitted somewhere in the code.
#[test]
fn alert_metrics_are_documented_and_emitted() {
    let alerts = metric_names(&read("deploy/prometheus/alerts.yml"));
    assert!(alerts.len() >= 8, "{alerts:?}");
    let documented = readme_metrics();
    let undocumented: Vec<_> = alerts.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "alert rules use metrics missing from docs/metrics.md: {undocumented:?}"
    );
    let emitted = code_metrics();
    let phantom: Vec<_> = documented.difference(&emitted).collect();
    assert!(
        phantom.is_empty(),
        "docs/metrics.md documents metrics no code emits: {phantom:?}"
    );
}

/// The scanner finds metric names (and strips histogram suffixes) the way the test relies on.
#[test]
fn metric_scanner_finds_names() {
    let got = metric_names(
        "rate(liqwatch_a_total[5m]) + x_liqwatch_no + liqwatch_lat_seconds_bucket{le=\"1\"}",
    );
    let want: BTreeSet<String> = ["liqwatch_a_total", "liqwatch_lat_seconds"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

/// The rules file is structurally what Prometheus expects (groups of named alerts with an
/// expression and a severity), and promtool loads the rules and passes their unit tests
/// (`alerts.test.yml`).
#[test]
fn alert_rules_are_valid() {
    let rules = read("deploy/prometheus/alerts.yml");
    let alerts = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert: "))
        .count();
    let exprs = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr: "))
        .count();
    let severities = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("severity: "))
        .count();
    assert!(rules.starts_with("# ") && rules.contains("\ngroups:\n"));
    assert!(alerts >= 10);
    assert_eq!(alerts, exprs, "every alert has one expr");
    assert_eq!(alerts, severities, "every alert has a severity");
    let promtool = tools::require("promtool", "prometheus");
    let dir = root().join("deploy/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts.test.yml"][..],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
