//! Telemetry set-up: `tracing` on stderr (text or JSON lines), signals, and the Prometheus
//! recorder behind `/metrics` with the `# HELP` text of every metric family.
//!
//! The metrics table of `docs/metrics.md` is compiled in and is the one catalog of metrics:
//! [`catalog`] parses it and [`describe_all`] gives every family its type, unit and `# HELP`
//! text (the table's meaning column), so the documentation and the exposition cannot disagree.

use std::io::IsTerminal;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Parses `text` / `json`.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Sets up `tracing` on stderr: readable text by default, one JSON object per line with
/// `LogFormat::Json`. `filter` is an `EnvFilter` directive; `RUST_LOG` overrides it.
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => f,
        _ => filter.to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .map_err(|e| format!("log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").is_some(),
        ))
        .with_writer(std::io::stderr);
    let r = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    r.map_err(|e| e.to_string())
}

/// Whether text logs are coloured: only on a terminal, and not when `NO_COLOR` is set. Under
/// systemd, Kubernetes or a log file stderr is not a terminal, and escape codes would land in
/// journald and the log shippers as text.
fn colour(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
}

/// Cancels `token` on the first SIGINT/SIGTERM; exits the process with code 1 on the second.
/// SIGHUP notifies `reload` (the daemon reloads its config); without one (the demo) it is
/// logged and ignored.
pub fn spawn_signal_watcher(
    token: CancellationToken,
    reload: Option<std::sync::Arc<tokio::sync::Notify>>,
) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let watch = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| format!("cannot watch {name}: {e}"))
    };
    let mut term = watch(SignalKind::terminate(), "SIGTERM")?;
    let mut int = watch(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = watch(SignalKind::hangup(), "SIGHUP")?;
    // Not tracked: it must outlive the graceful drain to catch the second signal.
    tokio::spawn(async move {
        let first = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => match &reload {
                    // One stored permit: signals that arrive during a reload coalesce into one.
                    Some(r) => r.notify_one(),
                    None => tracing::warn!("SIGHUP ignored: this command does not reload"),
                },
            }
        };
        tracing::info!(
            signal = first,
            "Shutting down: stopping sources, finishing evaluation, draining sinks (signal again to exit at once)"
        );
        token.cancel();
        let second = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = second, "Second signal: exiting at once");
        std::process::exit(1);
    });
    Ok(())
}

/// Histogram buckets (seconds) for the latency histograms: 50 µs to 10 s, finer around the
/// 1 ms a tick-to-event p99 is held to.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global Prometheus recorder (once per process), describes every metric family
/// ([`describe_all`]) and spawns the recorder's upkeep.
pub fn install_prometheus() -> Result<PrometheusHandle, String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| format!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe_all();
    let h = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            h.run_upkeep();
        }
    });
    Ok(handle)
}

/// `docs/metrics.md`, whose table is the catalog of metrics.
const METRICS_DOC: &str = include_str!("../../docs/metrics.md");

/// The Prometheus type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricType {
    /// A monotonic counter (`_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A histogram (`_seconds`).
    Histogram,
}

/// One row of the metrics table in `docs/metrics.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricDoc {
    /// `liqwatch_…`.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricType,
    /// Label names (none for `–`).
    pub labels: Vec<&'static str>,
    /// The meaning column, Markdown as written.
    pub meaning: &'static str,
}

impl MetricDoc {
    /// The `# HELP` text: the meaning without Markdown code marks.
    pub fn help(&self) -> String {
        self.meaning.replace('`', "")
    }
}

/// Every row of the metrics table (lines starting with `` | `liqwatch_ ``), in table order. A
/// row that does not parse (unknown type, missing column) is left out; a unit test proves none
/// is.
pub fn catalog() -> Vec<MetricDoc> {
    METRICS_DOC
        .lines()
        .filter(|l| l.starts_with("| `liqwatch_"))
        .filter_map(parse_row)
        .collect()
}

/// `| `name` | type | `a`, `b` | meaning |` → a [`MetricDoc`].
fn parse_row(line: &'static str) -> Option<MetricDoc> {
    let inner = line.strip_prefix("| ")?.strip_suffix(" |")?;
    let mut cols = inner.splitn(4, " | ");
    let name = cols.next()?.trim().strip_prefix('`')?.strip_suffix('`')?;
    let kind = match cols.next()?.trim() {
        "counter" => MetricType::Counter,
        "gauge" => MetricType::Gauge,
        "histogram" => MetricType::Histogram,
        _ => return None,
    };
    let labels = match cols.next()?.trim() {
        "–" | "-" | "" => Vec::new(),
        list => list
            .split(',')
            .map(|l| l.trim().trim_matches('`'))
            .collect(),
    };
    let meaning = cols.next()?.trim();
    Some(MetricDoc {
        name,
        kind,
        labels,
        meaning,
    })
}

/// Gives every metric of [`catalog`] its `# HELP` text and unit (seconds for `_seconds`) in the
/// installed recorder. Called by [`install_prometheus`].
pub fn describe_all() {
    use metrics::Unit;
    for m in catalog() {
        let help = m.help();
        let seconds = m.name.ends_with("_seconds");
        match (m.kind, seconds) {
            (MetricType::Counter, _) => metrics::describe_counter!(m.name, Unit::Count, help),
            (MetricType::Gauge, true) => metrics::describe_gauge!(m.name, Unit::Seconds, help),
            (MetricType::Gauge, false) => metrics::describe_gauge!(m.name, help),
            (MetricType::Histogram, _) => {
                metrics::describe_histogram!(m.name, Unit::Seconds, help)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Colour only on a terminal, and never with `NO_COLOR` (the daemon tests check the other
    /// half: a log written to a file has no escape codes).
    #[test]
    fn text_logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(colour(true, false));
        assert!(!colour(true, true), "NO_COLOR");
        assert!(!colour(false, false), "not a terminal");
        assert!(!colour(false, true));
    }

    /// Every table row parses, names are unique, and the types agree with the naming rule.
    #[test]
    fn every_table_row_is_in_the_catalog() {
        let rows = METRICS_DOC
            .lines()
            .filter(|l| l.starts_with("| `liqwatch_"))
            .count();
        let cat = catalog();
        assert!(rows > 50, "{rows}");
        assert_eq!(cat.len(), rows, "a row of docs/metrics.md does not parse");
        let names: std::collections::BTreeSet<_> = cat.iter().map(|m| m.name).collect();
        assert_eq!(names.len(), cat.len(), "duplicate rows");
        for m in &cat {
            assert_eq!(
                m.name.ends_with("_total"),
                m.kind == MetricType::Counter,
                "{m:?}"
            );
            if m.kind == MetricType::Histogram {
                assert!(m.name.ends_with("_seconds"), "{m:?}");
            }
            assert!(!m.help().is_empty() && !m.help().contains('`'), "{m:?}");
        }
    }

    /// Columns split the way the table writes them.
    #[test]
    fn rows_parse() {
        let m = parse_row("| `liqwatch_x_total` | counter | `kind`, `sink` | a `b` c |").unwrap();
        assert_eq!(m.name, "liqwatch_x_total");
        assert_eq!(m.kind, MetricType::Counter);
        assert_eq!(m.labels, ["kind", "sink"]);
        assert_eq!(m.help(), "a b c");
        let m = parse_row("| `liqwatch_y` | gauge | – | y |").unwrap();
        assert!(m.labels.is_empty());
        assert_eq!(parse_row("| `liqwatch_z` | summary | – | z |"), None);
    }
}
