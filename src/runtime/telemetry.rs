//! Telemetry set-up: `tracing` on stderr (text or JSON lines), signals, and the Prometheus
//! recorder behind `/metrics`.

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
        .with_writer(std::io::stderr);
    let r = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    r.map_err(|e| e.to_string())
}

/// Cancels `token` on the first SIGINT/SIGTERM; exits the process with code 1 on the second.
/// SIGHUP is logged and ignored (see the module docs).
pub fn spawn_signal_watcher(token: CancellationToken) -> Result<(), String> {
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
                _ = hup.recv() => tracing::warn!("SIGHUP ignored: liqwatch does not reload its config; restart it (nothing is lost: accounts, monitor states and sink cursors are in the journal)"),
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

/// Histogram buckets (seconds) for the latency histograms: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Installs the global Prometheus recorder (once per process) and spawns its upkeep.
pub fn install_prometheus() -> Result<PrometheusHandle, String> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| format!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
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
