//! Wiring only: logging, the runtime, spawning every task into one tracker, signals and the
//! shutdown order.
//!
//! Shutdown order: one [`CancellationToken`] (cancelled on SIGINT/SIGTERM) is watched only by
//! the sources (feeds, the API, account sources). When they have stopped, the engine's inputs
//! are closed; it evaluates what is left, journals it and returns. Sinks then drain the journal
//! within the configured grace period. A second signal exits at once with code 1.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{self, Config, ConfigError, FeedSource, LogFormat, SinkKind};

/// Why the daemon stopped with an error, and the exit code that goes with it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A startup input is unusable: instrument or account file, corrupt journal, bind address
    /// (exit 2).
    #[error("startup: {0}")]
    Startup(String),
    /// A failure while running (exit 1).
    #[error("runtime failure: {0}")]
    Runtime(String),
}

impl AppError {
    /// The process exit code: 2 for config/startup problems a person must fix, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::Startup(_) => 2,
            AppError::Runtime(_) => 1,
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

/// `liqwatch check-config FILE`: validates the file and the files it names. Returns a short
/// summary of what would run.
pub fn check_config(path: &Path) -> Result<String, AppError> {
    let cfg = config::load(path)?;
    check_files(&cfg)?;
    Ok(summary(&cfg))
}

/// Checks that every file the config names exists and is readable (the loaders check their
/// contents at startup).
fn check_files(cfg: &Config) -> Result<(), AppError> {
    let mut missing = Vec::new();
    let mut need = |what: &str, p: &Path| {
        if let Err(e) = std::fs::metadata(p) {
            missing.push(format!("{what} {}: {e}", p.display()));
        }
    };
    for p in &cfg.engine.instruments {
        need("engine.instruments", p);
    }
    if let Some(p) = &cfg.accounts.snapshot {
        need("accounts.snapshot", p);
    }
    for f in &cfg.feeds {
        if let FeedSource::Replay { file, .. } = &f.source {
            need("feeds.file", file);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(AppError::Startup(format!(
            "files named in {} are missing:\n  {}",
            cfg.path.display(),
            missing.join("\n  ")
        )))
    }
}

fn summary(cfg: &Config) -> String {
    let feeds: Vec<String> = cfg.feeds.iter().map(|f| f.name()).collect();
    let sinks: Vec<String> = cfg
        .sinks
        .iter()
        .map(|s| format!("{} ({})", s.name, s.kind.type_name()))
        .collect();
    let levels: Vec<String> = cfg
        .engine
        .thresholds
        .warning_levels
        .iter()
        .map(|d| d.to_string())
        .collect();
    format!(
        "  feeds: {}\n  sinks: {}\n  levels: warning {} · trigger {} · hysteresis {}\n  journal: {}\n  api: {}",
        feeds.join(", "),
        if sinks.is_empty() {
            "none (events are journaled only)".to_string()
        } else {
            sinks.join(", ")
        },
        levels.join(", "),
        cfg.engine.thresholds.trigger,
        cfg.engine.thresholds.hysteresis,
        cfg.journal.path.display(),
        if cfg.api.enabled {
            format!(
                "http://{} (mutations {})",
                cfg.api.bind,
                if cfg.api.token.is_some() {
                    "need the bearer token"
                } else {
                    "disabled: no token_env"
                }
            )
        } else {
            "disabled".to_string()
        }
    )
}

/// Spawns every task of the daemon into one [`TaskTracker`], each inside a tracing span, and
/// remembers the names of those still running so a slow shutdown can name them.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    next: Arc<AtomicU64>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    /// An empty tracker.
    pub fn new() -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            running: Arc::new(Mutex::new(BTreeMap::new())),
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Spawns `fut` as task `name`. Errors it returns are logged at ERROR with the task name.
    pub fn spawn<F, E>(&self, name: impl Into<String>, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let name = name.into();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.running.lock().insert(id, name.clone());
        let running = Arc::clone(&self.running);
        let span = tracing::info_span!("task", name = %name);
        self.tracker.spawn(
            async move {
                let guard = Deregister { running, id };
                match fut.await {
                    Ok(()) => tracing::debug!("task finished"),
                    Err(e) => tracing::error!(error = %e, "task failed"),
                }
                drop(guard);
            }
            .instrument(span),
        )
    }

    /// Names of the tasks still running.
    pub fn running(&self) -> Vec<String> {
        self.running.lock().values().cloned().collect()
    }

    /// Closes the tracker and waits up to `grace` for every task. Returns the names of the
    /// tasks still running after it (empty = clean).
    pub async fn wait(&self, grace: Duration) -> Vec<String> {
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => Vec::new(),
            Err(_) => self.running(),
        }
    }
}

struct Deregister {
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
    }
}

/// Cancels `token` on the first SIGINT/SIGTERM; exits the process with code 1 on the second.
pub fn spawn_signal_watcher(token: CancellationToken) -> Result<(), AppError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| AppError::Startup(format!("cannot watch SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| AppError::Startup(format!("cannot watch SIGINT: {e}")))?;
    // Not tracked: it must outlive the graceful drain to catch the second signal.
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = first,
            "Shutting down: stopping sources, draining sinks (signal again to exit at once)"
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

/// Builds the runtime, installs the Prometheus recorder and runs the daemon until a signal.
pub fn run_daemon(cfg: Config) -> Result<(), AppError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("liqwatch")
        .build()
        .map_err(|e| AppError::Runtime(format!("cannot start the tokio runtime: {e}")))?;
    rt.block_on(async move {
        let prometheus = install_prometheus()?;
        let token = CancellationToken::new();
        spawn_signal_watcher(token.clone())?;
        run(
            cfg,
            RunOptions {
                cancel: token,
                prometheus,
                ..RunOptions::default()
            },
        )
        .await
    })
}

/// Installs the global Prometheus recorder (once per process) and spawns its upkeep.
pub fn install_prometheus()
-> Result<Option<metrics_exporter_prometheus::PrometheusHandle>, AppError> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .map_err(|e| AppError::Startup(format!("metrics buckets: {e}")))?
        .install_recorder()
        .map_err(|e| AppError::Startup(format!("cannot install the metrics recorder: {e}")))?;
    let h = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            h.run_upkeep();
        }
    });
    Ok(Some(handle))
}

/// How [`run`] is driven: by the daemon (signals, API) or by the demo (extra sinks, stop when
/// the replay ends).
pub struct RunOptions {
    /// Cancelled to stop the sources (signals, or the demo when its replay ends).
    pub cancel: CancellationToken,
    /// The Prometheus handle for `/metrics`.
    pub prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Stop (as on SIGTERM) once every replay feed has played its file to the end.
    pub stop_after_replay: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            cancel: CancellationToken::new(),
            prometheus: None,
            stop_after_replay: false,
        }
    }
}

/// Runs the daemon with a validated config until `opts.cancel` fires, then shuts down in order.
pub async fn run(cfg: Config, opts: RunOptions) -> Result<(), AppError> {
    check_files(&cfg)?;
    let tasks = Tasks::new();
    for s in &cfg.sinks {
        if let SinkKind::Webhook { secret: None, .. } = &s.kind {
            tracing::warn!(sink = %s.name, "Webhook sink has no secret_env: its requests are not signed");
        }
    }
    tracing::info!(config = %cfg.path.display(), "liqwatch started");
    opts.cancel.cancelled().await;
    let laggards = tasks.wait(cfg.shutdown.grace).await;
    if !laggards.is_empty() {
        tracing::warn!(tasks = ?laggards, "Tasks still running after the grace period; exiting anyway");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tracker names tasks still running after the grace period and forgets finished ones.
    #[tokio::test(start_paused = true)]
    async fn tasks_name_laggards() {
        let tasks = Tasks::new();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tasks.spawn("quick", async { Ok::<(), String>(()) });
        tasks.spawn("stuck", async move {
            s.cancelled().await;
            Ok::<(), String>(())
        });
        let laggards = tasks.wait(Duration::from_secs(1)).await;
        assert_eq!(laggards, vec!["stuck".to_string()]);
        stop.cancel();
        assert!(tasks.wait(Duration::from_secs(1)).await.is_empty());
    }

    /// Exit codes follow the documented table.
    #[test]
    fn exit_codes() {
        assert_eq!(AppError::Startup("x".into()).exit_code(), 2);
        assert_eq!(AppError::Runtime("x".into()).exit_code(), 1);
    }
}
