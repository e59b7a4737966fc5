//! Keeps the metrics documentation true: every metric an alert rule in
//! `deploy/prometheus/alerts.yml` uses is in the metrics table of docs/metrics.md, and every metric in that
//! table is emitted somewhere in `src/`.

use std::collections::{BTreeMap, BTreeSet};
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

/// Metric names emitted in `src/`: the string literal a `counter!`, `gauge!` or `histogram!`
/// invocation starts with, with the type that macro makes (`counter`, `gauge`, `histogram`).
/// Other literals naming metrics (docs, the zero registration in `src/app/metrics.rs`) do not
/// count, so a documented metric no code emits is found.
fn code_metrics() -> BTreeMap<String, BTreeSet<&'static str>> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, BTreeSet<&'static str>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (name, kind) in emitted(&text) {
                    out.entry(name).or_default().insert(kind);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&root().join("src"), &mut out);
    out
}

/// `(name, type)` of every `counter!("liqwatch_…"`, `gauge!(…` and `histogram!(…` in `text`
/// (not `describe_*!`).
fn emitted(text: &str) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for kind in ["counter", "gauge", "histogram"] {
        let pat = format!("{kind}!(");
        let mut i = 0;
        while let Some(pos) = text[i..].find(&pat) {
            let start = i + pos;
            i = start + pat.len();
            if text[..start].ends_with("describe_") {
                continue;
            }
            let rest = text[i..].trim_start();
            let Some(lit) = rest.strip_prefix('"') else {
                continue;
            };
            let name: String = lit.chars().take_while(|c| *c != '"').collect();
            if name.starts_with("liqwatch_") {
                out.push((name, kind));
            }
        }
    }
    out
}

/// The docs/metrics.md table: name → (type, meaning).
fn doc_rows() -> BTreeMap<String, (String, String)> {
    let doc = read("docs/metrics.md");
    doc.lines()
        .filter(|l| l.starts_with("| `liqwatch_"))
        .map(|l| {
            let cols: Vec<&str> = l
                .trim_matches('|')
                .splitn(4, " | ")
                .map(str::trim)
                .collect();
            assert_eq!(cols.len(), 4, "{l}");
            let name = cols[0].trim_matches('`').to_string();
            (
                name,
                (
                    cols[1].to_string(),
                    cols[3].trim_end_matches(" |").to_string(),
                ),
            )
        })
        .collect()
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
    let emitted: BTreeSet<String> = code_metrics().into_keys().collect();
    let phantom: Vec<_> = documented.difference(&emitted).collect();
    assert!(
        phantom.is_empty(),
        "docs/metrics.md documents metrics no code emits: {phantom:?}"
    );
}

/// Issue 11 item 1: every metric the code emits is a row of docs/metrics.md (whose meaning
/// column the daemon serves as its `# HELP` text, `telemetry::describe_all`), with the type of the
/// macro that emits it.
#[test]
fn every_emitted_metric_is_described_with_its_type() {
    let rows = doc_rows();
    let emitted = code_metrics();
    assert!(emitted.len() > 50, "{emitted:?}");
    for (name, kinds) in &emitted {
        let (kind, meaning) = rows.get(name).unwrap_or_else(|| {
            panic!("{name} is emitted in src/ but has no row (no HELP text) in docs/metrics.md")
        });
        assert!(!meaning.is_empty(), "{name}: empty meaning");
        assert_eq!(
            kinds.iter().copied().collect::<Vec<_>>(),
            [kind.as_str()],
            "{name}: emitted as {kinds:?}, documented as {kind}"
        );
    }
}

/// The emission scanner reads the macro's first literal and ignores descriptions.
#[test]
fn emission_scanner_finds_macros() {
    let got = emitted(
        "metrics::counter!(\n    \"liqwatch_a_total\", \"k\" => v)\n gauge!(\"liqwatch_g\")\n \
         describe_counter!(\"liqwatch_d_total\") histogram!(name) let s = \"liqwatch_s\";",
    );
    let want = [
        ("liqwatch_a_total".to_string(), "counter"),
        ("liqwatch_g".to_string(), "gauge"),
    ];
    assert_eq!(got, want);
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
