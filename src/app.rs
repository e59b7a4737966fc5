//! Wiring only: logging, the runtime, loading the startup inputs, spawning every task into one
//! tracker, the engine loop that ties prices and account updates to the monitor and the journal,
//! signals and the shutdown order.
//!
//! ```text
//!  feeds / replay ──publish──▶ PriceBoard ──changed()──┐
//!  HTTP API, NATS ──EngineRequest (bounded mpsc)───────┤
//!  staleness tick (250 ms) ────────────────────────────┤
//!                                                      ▼
//!                     engine task: AccountMap + Monitor (owned, &mut)
//!                                                      │ one journal transaction per burst
//!                                                      ▼ (events + monitor states + accounts)
//!                         Journal (SQLite) ──commit notification──▶ sink drivers, SSE
//! ```
//!
//! **One writer.** Every change to the account map goes through the engine task: price bursts,
//! account updates from the API and NATS (each answered only after it is applied *and*
//! persisted), and staleness transitions. So the monitor needs no locks and events of one
//! account are journaled in order.
//!
//! **Shutdown order.** One [`CancellationToken`] (cancelled on SIGINT/SIGTERM, or by the demo
//! when its replay ends) is watched only by the sources: feeds, the API, the NATS consumer.
//! When they have stopped, the engine's inputs are closed: it evaluates what is left, journals
//! it and returns. The sink drivers are then told to stop; each keeps delivering what is
//! journaled for up to `[shutdown] grace`. Tasks still running after that are named in a WARN
//! and abandoned (their events stay in the journal for the next start). A second signal exits at
//! once with code 1.
//!
//! **Reload.** SIGHUP is not handled (the default action would terminate the process, so it is
//! ignored with a log line): thresholds live in the monitor's per-account state machines and
//! sinks own cursors, and changing either safely needs a restart, which loses nothing (the
//! journal keeps accounts, monitor states and cursors).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::accounts::{AccountMap, Touched, UpdateOutcome};
use crate::api::{self, ApiBackend, ApiState, BackendError, EventsSince, ReadinessCheck};
use crate::config::{self, Config, ConfigError, FeedSource, LogFormat, SinkKind};
use crate::feeds::{self, FeedRegistry, SymbolRoutes, replay};
use crate::ingest::{AccountWriter, Applied, ApplyError, NatsIngest, UpdateOrigin};
use crate::journal::{Journal, JournalOptions, Since};
use crate::model::{
    Account, AccountId, AccountState, AccountUpdate, Instrument, InstrumentId, InstrumentKind,
    PriceField, PriceTick, PriceUsed, RiskEvent, Venue, now_ms,
};
use crate::monitor::{Emitted, Monitor, MonitorConfig, MonitorState, PriceInfo};
use crate::prices::PriceBoard;
use crate::sinks::{self, DriverOptions, JournalEntry, Sink, SinkFilter, SinkHealth};

// ---------------------------------------------------------------------------------------------
// Errors and exit codes
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------------

/// `liqwatch check-config FILE`: validates the file, the instrument presets and the account
/// snapshot it names. Returns a short summary of what would run.
pub fn check_config(path: &Path) -> Result<String, AppError> {
    let cfg = config::load(path)?;
    check_files(&cfg)?;
    let instruments = load_instruments(&cfg)?;
    let accounts = match &cfg.accounts.snapshot {
        Some(p) => crate::inputs::load_accounts_checked(p, &instruments)
            .map_err(|e| AppError::Startup(e.to_string()))?
            .len(),
        None => 0,
    };
    Ok(format!(
        "{}\n  instruments: {} · snapshot accounts: {}",
        summary(&cfg),
        instruments.len(),
        accounts
    ))
}

/// Checks that every file the config names exists.
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

/// Loads and merges every instrument preset file; an id defined in two files is an error.
fn load_instruments(cfg: &Config) -> Result<HashMap<InstrumentId, Instrument>, AppError> {
    let mut all: HashMap<InstrumentId, Instrument> = HashMap::new();
    let mut from: HashMap<InstrumentId, String> = HashMap::new();
    for path in &cfg.engine.instruments {
        let map =
            crate::inputs::load_instruments(path).map_err(|e| AppError::Startup(e.to_string()))?;
        for (id, inst) in map {
            if let Some(first) = from.get(&id) {
                return Err(AppError::Startup(format!(
                    "instrument {id} is defined in both {first} and {}",
                    path.display()
                )));
            }
            from.insert(id.clone(), path.display().to_string());
            all.insert(id, inst);
        }
    }
    Ok(all)
}

// ---------------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------------

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

    /// Spawns `fut` as task `name`. An error it returns is logged at ERROR with the task name.
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
                    Ok(()) => tracing::debug!("Task finished"),
                    Err(e) => tracing::error!(error = %e, "Task failed"),
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

/// Waits for `handles` up to `grace`; returns false on timeout.
async fn join_all(handles: Vec<tokio::task::JoinHandle<()>>, grace: Duration) -> bool {
    tokio::time::timeout(grace, futures::future::join_all(handles))
        .await
        .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Signals and the runtime
// ---------------------------------------------------------------------------------------------

/// Cancels `token` on the first SIGINT/SIGTERM; exits the process with code 1 on the second.
/// SIGHUP is logged and ignored (see the module docs).
pub fn spawn_signal_watcher(token: CancellationToken) -> Result<(), AppError> {
    use tokio::signal::unix::{SignalKind, signal};
    let watch = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| AppError::Startup(format!("cannot watch {name}: {e}")))
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
                prometheus: Some(prometheus),
                ..RunOptions::default()
            },
        )
        .await
        .map(|_| ())
    })
}

/// Histogram buckets (seconds) for the latency histograms: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Installs the global Prometheus recorder (once per process) and spawns its upkeep.
pub fn install_prometheus() -> Result<PrometheusHandle, AppError> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
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
    Ok(handle)
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// How [`run`] is driven: by the daemon (signals, API) or by the demo (extra sinks, stop when
/// the replay ends).
pub struct RunOptions {
    /// Cancelled to stop the sources (signals, or [`RunOptions::stop_after_replay`]).
    pub cancel: CancellationToken,
    /// The Prometheus handle for `/metrics`.
    pub prometheus: Option<PrometheusHandle>,
    /// Stop (as on SIGTERM) once every replay feed has played its file to the end.
    pub stop_after_replay: bool,
    /// Sinks added to the configured ones (the demo's printer).
    pub extra_sinks: Vec<(Box<dyn Sink>, SinkFilter)>,
    /// Receives the wall-clock ms at which replay feeds started, once they do.
    pub replay_started: Option<oneshot::Sender<i64>>,
    /// Times carried by replayed ticks: shifted to now (the daemon) or as recorded (the demo
    /// shows the market time of each event).
    pub replay_clock: replay::ReplayClock,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            cancel: CancellationToken::new(),
            prometheus: None,
            stop_after_replay: false,
            extra_sinks: Vec::new(),
            replay_started: None,
            replay_clock: replay::ReplayClock::Shifted,
        }
    }
}

/// What a run did, for the demo's summary and tests.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    /// Accounts in the map at the end.
    pub accounts: usize,
    /// Events journaled by this run.
    pub events: u64,
    /// Price ticks replayed by replay feeds.
    pub replay_ticks: u64,
    /// Sinks that had not drained when the grace period ended.
    pub undrained_sinks: Vec<String>,
}

/// A request to the engine task.
enum EngineRequest {
    Update {
        update: AccountUpdate,
        origin: UpdateOrigin,
        reply: oneshot::Sender<Result<Applied, ApplyError>>,
    },
}

/// Runs the daemon with a validated config until `opts.cancel` fires (or the replay ends with
/// `stop_after_replay`), then shuts down in order.
pub async fn run(cfg: Config, mut opts: RunOptions) -> Result<RunReport, AppError> {
    check_files(&cfg)?;
    let instruments = load_instruments(&cfg)?;
    let instrument_list: Vec<Instrument> = instruments.values().cloned().collect();

    // Journal first: a corrupt or unwritable journal is a startup error (exit 2).
    if let Some(dir) = cfg
        .journal
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            AppError::Startup(format!(
                "cannot create the journal directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    let journal = Journal::open_with(
        &cfg.journal.path,
        JournalOptions {
            synchronous: cfg.journal.synchronous,
            ..JournalOptions::default()
        },
    )
    .map_err(|e| AppError::Startup(e.to_string()))?;
    let journal = Arc::new(journal);

    // Accounts: the store, or the snapshot on the first start.
    let map = Arc::new(AccountMap::new(instrument_list.clone()));
    load_accounts(&cfg, &journal, &map, &instruments)?;

    // Monitor with its restored states; the shared view of states for the API.
    let mut monitor = Monitor::new(MonitorConfig {
        thresholds: cfg.engine.thresholds.clone(),
        trigger_on_stale: cfg.engine.trigger_on_stale,
    })
    .map_err(|e| AppError::Startup(format!("engine levels: {e}")))?;
    let stored_states = journal
        .load_monitor_states()
        .map_err(|e| AppError::Startup(e.to_string()))?;
    let states: Arc<DashMap<AccountId, AccountState>> = Arc::new(DashMap::new());
    for (id, json) in &stored_states {
        if let Ok(s) = serde_json::from_str::<MonitorState>(json) {
            states.insert(id.clone(), s.state);
        }
    }
    let report = monitor.restore(stored_states);
    tracing::info!(
        accounts = map.len(),
        monitor_states = report.restored,
        rejected = report.rejected.len(),
        "Accounts loaded"
    );

    let board = Arc::new(PriceBoard::new(cfg.prices.clone()));
    let registry = Arc::new(FeedRegistry::new());
    let tasks = Tasks::new();
    let sources = opts.cancel.clone();
    let (events_tx, _) = broadcast::channel::<Arc<JournalEntry>>(1024);
    let (engine_tx, engine_rx) = mpsc::channel::<EngineRequest>(1024);

    // The API binds now so a bad address is a startup error.
    let listener = if cfg.api.enabled {
        Some(
            tokio::net::TcpListener::bind(cfg.api.bind)
                .await
                .map_err(|e| {
                    AppError::Startup(format!("cannot bind the API to {}: {e}", cfg.api.bind))
                })?,
        )
    } else {
        None
    };

    // Sinks (their own stop token: they stop after the engine has journaled everything).
    let sinks_stop = CancellationToken::new();
    let mut sink_tasks = Vec::new();
    let driver_options = DriverOptions {
        drain_grace: cfg.shutdown.grace,
        ..DriverOptions::default()
    };
    for entry in &cfg.sinks {
        let sink: Box<dyn Sink> = match &entry.kind {
            SinkKind::Stdout(c) => Box::new(sinks::stdout::StdoutSink::new(&entry.name, c)),
            SinkKind::Jsonl(c) => Box::new(sinks::jsonl::JsonlSink::new(&entry.name, c.clone())),
            SinkKind::Webhook(s) => Box::new(
                sinks::webhook::WebhookSink::new(&entry.name, s.clone())
                    .map_err(|e| AppError::Startup(e.to_string()))?,
            ),
            SinkKind::Nats(s) => Box::new(sinks::nats::NatsSink::new(&entry.name, s.clone())),
        };
        if matches!(&entry.kind, SinkKind::Webhook(s) if s.secret.is_none()) {
            tracing::warn!(sink = %entry.name, "Webhook sink has no secret_env: its requests are not signed");
        }
        sink_tasks.push(sinks::spawn_sink_with(
            sink,
            entry.filter.clone(),
            Arc::clone(&journal),
            entry
                .delivery
                .clone()
                .unwrap_or_else(|| driver_options.clone()),
            sinks_stop.clone(),
        ));
    }
    for (sink, filter) in std::mem::take(&mut opts.extra_sinks) {
        sink_tasks.push(sinks::spawn_sink_with(
            sink,
            filter,
            Arc::clone(&journal),
            driver_options.clone(),
            sinks_stop.clone(),
        ));
    }
    let sink_health: Vec<watch::Receiver<SinkHealth>> =
        sink_tasks.iter().map(|t| t.health.clone()).collect();
    let journal_stop = CancellationToken::new();
    let flusher = journal.spawn_flusher(journal_stop.clone());
    let retention = journal.spawn_retention(
        cfg.journal.retention,
        Duration::from_secs(3600),
        journal_stop.clone(),
    );

    // The engine.
    let engine_stop = CancellationToken::new();
    let events_count = Arc::new(AtomicU64::new(0));
    let index = cfg
        .engine
        .distance_index
        .then(|| crate::distance::DistanceIndex::for_map(&map));
    let engine = Engine {
        index,
        wake: Vec::new(),
        map: Arc::clone(&map),
        board: Arc::clone(&board),
        journal: Arc::clone(&journal),
        monitor,
        states: Arc::clone(&states),
        events_tx: events_tx.clone(),
        events: Arc::clone(&events_count),
        feed_seq: HashMap::new(),
        nats_seen: HashMap::new(),
        state_counts: StateCounts::from_states(&states),
    };
    let engine_task = tokio::spawn(
        engine
            .run(engine_rx, engine_stop.clone())
            .instrument(tracing::info_span!("engine")),
    );

    // Feeds (sources).
    let mut replays = Vec::new();
    let replay_ticks = Arc::new(AtomicU64::new(0));
    let mut replay_started = opts.replay_started.take();
    for entry in &cfg.feeds {
        let wanted: Vec<Instrument> = if entry.instruments.is_empty() {
            instrument_list.clone()
        } else {
            instrument_list
                .iter()
                .filter(|i| entry.instruments.iter().any(|w| w == i.id.as_str()))
                .cloned()
                .collect()
        };
        match &entry.source {
            FeedSource::Venue(venue) => {
                let feed = feeds::feed_for(*venue).map_err(|e| AppError::Startup(e.to_string()))?;
                let fcfg = entry.driver.clone().with_instruments(*venue, &wanted);
                if fcfg.routes.symbols().is_empty() {
                    tracing::warn!(%venue, "No instrument is priced by this venue: the feed is not started");
                    continue;
                }
                let status = registry.register(*venue, &fcfg.routes);
                let (board, cancel) = (Arc::clone(&board), sources.clone());
                tasks.spawn(format!("feed {venue}"), async move {
                    feeds::run_feed(feed, fcfg, board, status, cancel).await;
                    Ok::<(), String>(())
                });
            }
            FeedSource::Replay { file, speed } => {
                let routes: HashMap<Venue, SymbolRoutes> = Venue::ALL
                    .iter()
                    .map(|v| (*v, SymbolRoutes::from_instruments(*v, &wanted)))
                    .collect();
                for (venue, r) in &routes {
                    for (_, inst, _) in r.iter() {
                        board.track(inst, &[*venue]);
                    }
                }
                if let Some(tx) = replay_started.take() {
                    let _ = tx.send(now_ms());
                }
                let (board, cancel, file, speed) =
                    (Arc::clone(&board), sources.clone(), file.clone(), *speed);
                let ticks = Arc::clone(&replay_ticks);
                let clock = opts.replay_clock;
                let done = CancellationToken::new();
                replays.push(done.clone());
                tasks.spawn("feed replay", async move {
                    let opts = replay::ReplayOptions { speed, clock };
                    let r = replay::play(
                        &file,
                        &opts,
                        |v| feeds::feed_for(v).ok(),
                        &cancel,
                        |venue, tick, received_ts| {
                            publish_venue_tick(&board, &routes, venue, tick, received_ts);
                        },
                    )
                    .await;
                    done.cancel();
                    match r {
                        Ok(stats) => {
                            ticks.fetch_add(stats.ticks, Ordering::Relaxed);
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                });
            }
        }
    }

    // Account sources: the API and NATS.
    let backend = Arc::new(Backend {
        map: Arc::clone(&map),
        board: Arc::clone(&board),
        registry: Arc::clone(&registry),
        journal: Arc::clone(&journal),
        states: Arc::clone(&states),
        sinks: sink_health,
        engine: engine_tx.clone(),
        kinds: instruments
            .iter()
            .map(|(k, v)| (k.clone(), v.kind))
            .collect(),
        default_trigger: cfg.engine.thresholds.trigger,
        accounts_loaded: AtomicBool::new(true),
    });
    if let Some(listener) = listener {
        let mut state = ApiState::new(backend.clone(), events_tx.clone())
            .with_body_limit(cfg.api.max_body_bytes)
            .with_shutdown(sources.clone());
        if let Some(h) = &opts.prometheus {
            state = state.with_metrics(h.clone());
        }
        if let Some(t) = &cfg.api.token {
            state = state.with_token(t.expose());
        }
        let router = api::router(state);
        let cancel = sources.clone();
        tasks.spawn("api", async move {
            api::serve_on(listener, router, cancel).await
        });
    }
    if let Some(ncfg) = cfg.accounts.nats.clone() {
        let writer: Arc<dyn AccountWriter> = backend.clone();
        let cancel = sources.clone();
        tasks.spawn("nats-ingest", async move {
            let mut delay = Duration::from_millis(200);
            let ingest = loop {
                let attempt = tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    r = NatsIngest::connect(ncfg.clone()) => r,
                };
                match attempt {
                    Ok(i) => break i,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "NATS account ingest cannot connect; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            };
            ingest.run(writer, cancel).await;
            Ok::<(), String>(())
        });
    }
    drop(engine_tx);
    tracing::info!(
        config = %cfg.path.display(),
        feeds = cfg.feeds.len(),
        sinks = sink_tasks.len(),
        accounts = map.len(),
        "liqwatch running"
    );

    // Wait for the stop signal (or the end of every replay).
    let all_replays_done = async {
        for r in &replays {
            r.cancelled().await;
        }
    };
    tokio::select! {
        _ = sources.cancelled() => {}
        _ = all_replays_done, if opts.stop_after_replay && !replays.is_empty() => {
            tracing::info!("Replay finished: shutting down");
            sources.cancel();
        }
        r = wait_engine_death(&engine_task) => {
            sources.cancel();
            return Err(AppError::Runtime(format!("the engine stopped unexpectedly: {r}")));
        }
    }

    // 1. Sources stop.
    let grace = cfg.shutdown.grace;
    let laggards = tasks.wait(grace).await;
    if !laggards.is_empty() {
        tracing::warn!(tasks = ?laggards, "Sources still running after the grace period");
    }
    // 2. The engine evaluates what is left and journals it.
    engine_stop.cancel();
    drop(backend);
    let engine_ok = match tokio::time::timeout(grace, engine_task).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "Engine task failed");
            false
        }
        Err(_) => {
            tracing::warn!("Engine did not finish within the grace period");
            false
        }
    };
    // 3. Sinks drain what is journaled, within the grace period.
    sinks_stop.cancel();
    let mut undrained = Vec::new();
    let names: Vec<String> = sink_tasks.iter().map(|t| t.name.clone()).collect();
    let healths: Vec<watch::Receiver<SinkHealth>> =
        sink_tasks.iter().map(|t| t.health.clone()).collect();
    let joins: Vec<_> = sink_tasks.into_iter().map(|t| t.join).collect();
    if !join_all(joins, grace + Duration::from_secs(1)).await {
        tracing::warn!("Sinks did not stop within the grace period");
    }
    for (name, h) in names.iter().zip(healths) {
        let h = h.borrow().clone();
        if h.lag > 0 {
            tracing::warn!(sink = %name, lag = h.lag, "Sink stopped with undelivered events; it resumes from its cursor on the next start");
            undrained.push(name.clone());
        }
    }
    // 4. The journal's background tasks.
    journal_stop.cancel();
    let _ = join_all(vec![flusher, retention], Duration::from_secs(2)).await;
    if !engine_ok {
        return Err(AppError::Runtime(
            "the engine did not finish cleanly; undelivered events stay in the journal".into(),
        ));
    }
    tracing::info!(
        events = events_count.load(Ordering::Relaxed),
        "liqwatch stopped"
    );
    Ok(RunReport {
        accounts: map.len(),
        events: events_count.load(Ordering::Relaxed),
        replay_ticks: replay_ticks.load(Ordering::Relaxed),
        undrained_sinks: undrained,
    })
}

/// Resolves only if the engine task has ended (it never should before shutdown).
async fn wait_engine_death(task: &tokio::task::JoinHandle<()>) -> String {
    loop {
        if task.is_finished() {
            return "engine task ended".to_string();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Publishes one replayed venue tick to the board through the venue's symbol routes.
fn publish_venue_tick(
    board: &PriceBoard,
    routes: &HashMap<Venue, SymbolRoutes>,
    venue: Venue,
    tick: &feeds::VenueTick<'_>,
    received_ts: i64,
) {
    let Some(targets) = routes.get(&venue).and_then(|r| r.get(tick.symbol)) else {
        metrics::counter!("liqwatch_feed_unknown_symbols_total", "venue" => venue.as_str())
            .increment(1);
        return;
    };
    for (inst, field) in targets {
        let price = match field {
            PriceField::Mark => tick.mark,
            PriceField::Index => tick.index,
        };
        if let Some(price) = price {
            board.publish(PriceTick {
                instrument: inst.clone(),
                venue,
                price,
                index: tick.index,
                exchange_ts: tick.exchange_ts,
                received_ts,
            });
        }
    }
}

/// Seeds the map from the journal's accounts store, or from the snapshot file when the store
/// is empty (first start), persisting the snapshot into the store.
fn load_accounts(
    cfg: &Config,
    journal: &Journal,
    map: &AccountMap,
    instruments: &HashMap<InstrumentId, Instrument>,
) -> Result<(), AppError> {
    let stored = journal
        .load_accounts()
        .map_err(|e| AppError::Startup(e.to_string()))?;
    if !stored.is_empty() {
        let mut bad = 0usize;
        for (id, json) in stored {
            let applied = serde_json::from_str::<Account>(&json)
                .map_err(|e| e.to_string())
                .and_then(|account| {
                    map.apply_update(AccountUpdate::Replace { account })
                        .map_err(|e| e.to_string())
                });
            if let Err(error) = applied {
                bad += 1;
                metrics::counter!("liqwatch_daemon_store_accounts_rejected_total").increment(1);
                tracing::error!(account = %id, %error, "Stored account cannot be loaded (kept in the store, not watched): fix the instrument presets or replace it");
            }
        }
        if let Some(p) = &cfg.accounts.snapshot {
            tracing::info!(snapshot = %p.display(), accounts = map.len(), rejected = bad, "Accounts restored from the journal's store; the snapshot file only seeds an empty store");
        }
        return Ok(());
    }
    let Some(path) = &cfg.accounts.snapshot else {
        return Ok(());
    };
    let accounts = crate::inputs::load_accounts_checked(path, instruments)
        .map_err(|e| AppError::Startup(e.to_string()))?;
    let mut rows = Vec::with_capacity(accounts.len());
    for account in accounts {
        let id = account.id.clone();
        let json = serde_json::to_string(&account)
            .map_err(|e| AppError::Startup(format!("account {id}: {e}")))?;
        map.apply_update(AccountUpdate::Replace { account })
            .map_err(|e| AppError::Startup(format!("{}: {e}", path.display())))?;
        rows.push((id, json));
    }
    for chunk in rows.chunks(10_000) {
        journal
            .upsert_accounts(chunk)
            .map_err(|e| AppError::Startup(e.to_string()))?;
    }
    tracing::info!(snapshot = %path.display(), accounts = rows.len(), "Accounts seeded from the snapshot");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The engine task
// ---------------------------------------------------------------------------------------------

/// The price board as the monitor's source of price details (source, age, stale flag).
struct BoardPrices<'a>(&'a PriceBoard);

impl PriceInfo for BoardPrices<'_> {
    fn price_info(&self, instrument: &InstrumentId) -> Option<PriceUsed> {
        self.0
            .composite(instrument)
            .map(|c| c.price_used(instrument))
    }
}

struct Engine {
    /// Which accounts a tick may change (`engine.distance_index`); `None` revalues every holder.
    index: Option<crate::distance::DistanceIndex>,
    /// Scratch space for the index's wake-up list.
    wake: Vec<crate::accounts::AccountKey>,
    map: Arc<AccountMap>,
    board: Arc<PriceBoard>,
    journal: Arc<Journal>,
    monitor: Monitor,
    states: Arc<DashMap<AccountId, AccountState>>,
    events_tx: broadcast::Sender<Arc<JournalEntry>>,
    events: Arc<AtomicU64>,
    /// Per-instrument sequence of feed events.
    feed_seq: HashMap<InstrumentId, u64>,
    /// Highest NATS stream sequence applied, per stream (redeliveries in this process).
    nats_seen: HashMap<String, u64>,
    /// Accounts per monitor state, for `liqwatch_accounts_by_state`.
    state_counts: StateCounts,
}

/// Counts of accounts in warning and triggered state (healthy = loaded − both), kept
/// incrementally as the engine changes the shared state view.
#[derive(Default)]
struct StateCounts {
    warning: i64,
    triggered: i64,
}

impl StateCounts {
    fn from_states(states: &DashMap<AccountId, AccountState>) -> Self {
        let mut c = StateCounts::default();
        for s in states.iter() {
            c.adjust(s.value(), 1);
        }
        c
    }

    fn adjust(&mut self, state: &AccountState, by: i64) {
        match state {
            AccountState::Healthy => {}
            AccountState::Warning { .. } => self.warning += by,
            AccountState::Triggered => self.triggered += by,
        }
    }

    /// Sets `liqwatch_accounts_by_state{state}` for `loaded` accounts in the map.
    fn publish(&self, loaded: usize) {
        let loaded = i64::try_from(loaded).unwrap_or(i64::MAX);
        let healthy = (loaded - self.warning - self.triggered).max(0);
        metrics::gauge!("liqwatch_accounts_by_state", "state" => "healthy").set(healthy as f64);
        metrics::gauge!("liqwatch_accounts_by_state", "state" => "warning")
            .set(self.warning.max(0) as f64);
        metrics::gauge!("liqwatch_accounts_by_state", "state" => "triggered")
            .set(self.triggered.max(0) as f64);
    }
}

impl Engine {
    async fn run(mut self, mut requests: mpsc::Receiver<EngineRequest>, stop: CancellationToken) {
        let mut touched: Vec<Touched> = Vec::with_capacity(1024);
        let mut stale_tick = tokio::time::interval(Duration::from_millis(250));
        stale_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let board = Arc::clone(&self.board);
        loop {
            tokio::select! {
                biased;
                changed = board.changed() => {
                    let woke = std::time::Instant::now();
                    self.on_prices(changed, &mut touched, woke).await;
                }
                Some(req) = requests.recv() => self.on_request(req).await,
                _ = stale_tick.tick() => {
                    self.on_staleness().await;
                    self.state_counts.publish(self.map.len());
                }
                _ = stop.cancelled() => break,
            }
        }
        // Inputs are closed: evaluate what is left.
        let changed = board.take_changed();
        if !changed.is_empty() {
            self.on_prices(changed, &mut touched, std::time::Instant::now())
                .await;
        }
        requests.close();
        while let Ok(req) = requests.try_recv() {
            self.on_request(req).await;
        }
        tracing::info!("Engine finished");
    }

    async fn on_prices(
        &mut self,
        changed: Vec<(InstrumentId, crate::prices::Composite)>,
        touched: &mut Vec<Touched>,
        woke: std::time::Instant,
    ) {
        touched.clear();
        let oldest_rx = changed.iter().map(|(_, c)| c.received_at).min();
        if let Some(index) = self.index.as_mut() {
            crate::distance::wake_and_value(
                &self.map,
                index,
                changed.iter().map(|(i, c)| (i, c.price)),
                &mut self.wake,
                touched,
            );
        } else {
            for (inst, c) in &changed {
                if let Err(error) = self.map.apply_price(inst, c.price, touched) {
                    tracing::warn!(instrument = %inst, %error, "Price not applied");
                }
            }
            // An account holding two changed instruments is evaluated once, on its final
            // totals (the last report of each key: reverse, then a stable sort keeps it first).
            touched.reverse();
            touched.sort_by_key(|t| t.key);
            touched.dedup_by_key(|t| t.key);
        }
        if touched.is_empty() {
            return;
        }
        let now = now_ms();
        let emitted = self
            .monitor
            .evaluate(&self.map, touched, &BoardPrices(&self.board), now);
        if let Some(index) = self.index.as_mut() {
            crate::distance::rebuild_touched(&self.map, &self.monitor, index, touched);
        }
        if emitted.is_empty() {
            return;
        }
        self.commit(emitted, Vec::new()).await;
        if let Some(rx) = oldest_rx {
            metrics::histogram!("liqwatch_engine_tick_to_event_seconds")
                .record(rx.elapsed().as_secs_f64());
        }
        metrics::histogram!("liqwatch_engine_wake_to_commit_seconds")
            .record(woke.elapsed().as_secs_f64());
    }

    async fn on_staleness(&mut self) {
        let transitions = self.board.check_staleness(tokio::time::Instant::now());
        if transitions.is_empty() {
            return;
        }
        let now = now_ms();
        let mut feed_events = Vec::new();
        let mut emitted = Vec::new();
        for t in transitions {
            let seq = self.feed_seq.entry(t.info.instrument.clone()).or_insert(0);
            *seq += 1;
            let mut ev = t.to_event(now);
            ev.seq = *seq;
            tracing::warn!(instrument = %t.info.instrument, kind = %t.kind, "Feed staleness changed");
            if t.kind == crate::model::EventKind::FeedRestored {
                emitted.extend(self.monitor.reevaluate_holders(
                    &self.map,
                    &t.info.instrument,
                    &BoardPrices(&self.board),
                    now,
                ));
                if let Some(index) = self.index.as_mut() {
                    for key in self.map.holder_keys(&t.info.instrument) {
                        index.rebuild(&self.map, &self.monitor, key);
                    }
                }
            }
            feed_events.push(ev);
        }
        self.commit(emitted, feed_events).await;
    }

    async fn on_request(&mut self, req: EngineRequest) {
        match req {
            EngineRequest::Update {
                update,
                origin,
                reply,
            } => {
                let r = self.apply_update(update, &origin).await;
                let _ = reply.send(r);
            }
        }
    }

    async fn apply_update(
        &mut self,
        update: AccountUpdate,
        origin: &UpdateOrigin,
    ) -> Result<Applied, ApplyError> {
        if let UpdateOrigin::Nats {
            stream,
            stream_sequence,
            ..
        } = origin
        {
            if self
                .nats_seen
                .get(stream)
                .is_some_and(|s| *stream_sequence <= *s)
            {
                return Ok(Applied::Duplicate);
            }
        }
        let id = update.account_id().clone();
        let before = self.map.account(&id);
        let outcome = self.map.apply_update(update).map_err(|e| match e {
            crate::accounts::AccountError::UnknownAccount(id) => ApplyError::NotFound(id),
            other => ApplyError::Invalid {
                field: "account".into(),
                message: other.to_string(),
            },
        })?;
        // Persist before answering; undo on failure so memory and store agree.
        let persisted = match &outcome {
            UpdateOutcome::Removed(_) => {
                let j = Arc::clone(&self.journal);
                let id2 = id.clone();
                tokio::task::spawn_blocking(move || j.delete_account(&id2).map(|_| ()))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            _ => match self.map.account(&id).map(|a| serde_json::to_string(&a)) {
                Some(Ok(json)) => {
                    let j = Arc::clone(&self.journal);
                    let row = vec![(id.clone(), json)];
                    tokio::task::spawn_blocking(move || j.upsert_accounts(&row))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                }
                Some(Err(e)) => Err(e.to_string()),
                None => Err("account vanished".into()),
            },
        };
        if let Err(reason) = persisted {
            let undo = match before {
                Some(account) => AccountUpdate::Replace { account },
                None => AccountUpdate::Remove {
                    account_id: id.clone(),
                },
            };
            match self.map.apply_update(undo) {
                Ok(o) => {
                    if let Some(index) = self.index.as_mut() {
                        index.track(&self.map, o.key());
                    }
                }
                Err(e) => {
                    tracing::error!(account = %id, error = %e, "Could not undo an update that failed to persist");
                }
            }
            tracing::error!(account = %id, %reason, "Account update not persisted; undone");
            return Err(ApplyError::Persist(reason));
        }
        if let UpdateOrigin::Nats {
            stream,
            stream_sequence,
            ..
        } = origin
        {
            let e = self.nats_seen.entry(stream.clone()).or_insert(0);
            *e = (*e).max(*stream_sequence);
        }
        let applied = match outcome {
            UpdateOutcome::Created(key) | UpdateOutcome::Updated(key) => {
                if let Some(index) = self.index.as_mut() {
                    index.track(&self.map, key);
                }
                let emitted = self.monitor.evaluate_account(
                    &self.map,
                    key,
                    &BoardPrices(&self.board),
                    now_ms(),
                );
                if let Some(index) = self.index.as_mut() {
                    index.rebuild(&self.map, &self.monitor, key);
                }
                if !emitted.is_empty() {
                    self.commit(emitted, Vec::new()).await;
                }
                if matches!(outcome, UpdateOutcome::Created(_)) {
                    Applied::Created
                } else {
                    Applied::Updated
                }
            }
            UpdateOutcome::Removed(key) => {
                self.monitor.forget(key, &id);
                if let Some(index) = self.index.as_mut() {
                    index.forget(key);
                }
                if let Some((_, old)) = self.states.remove(&id) {
                    self.state_counts.adjust(&old, -1);
                }
                Applied::Removed
            }
        };
        Ok(applied)
    }

    /// Journals account events (with their monitor states) and feed events in one transaction,
    /// then tells the live stream.
    async fn commit(&mut self, emitted: Vec<Emitted>, feed_events: Vec<RiskEvent>) {
        if emitted.is_empty() && feed_events.is_empty() {
            return;
        }
        let mut events: Vec<RiskEvent> = Vec::with_capacity(emitted.len() + feed_events.len());
        let mut states: Vec<(AccountId, String)> = Vec::with_capacity(emitted.len());
        for e in emitted {
            if let Some(s) = &e.event.state {
                if let Some(old) = self.states.insert(e.account_id.clone(), s.clone()) {
                    self.state_counts.adjust(&old, -1);
                }
                self.state_counts.adjust(s, 1);
            }
            states.push((e.account_id, e.state_json));
            events.push(e.event);
        }
        events.extend(feed_events);
        let n = events.len() as u64;
        let j = Arc::clone(&self.journal);
        let live = self.events_tx.receiver_count() > 0;
        let result = tokio::task::spawn_blocking(move || {
            let r = j.append(&events, &states);
            (r, events)
        })
        .await;
        match result {
            Ok((Ok(seqs), events)) => {
                self.events.fetch_add(n, Ordering::Relaxed);
                if live {
                    for (seq, event) in seqs.into_iter().zip(events) {
                        let json = serde_json::to_string(&event).unwrap_or_default();
                        let _ = self
                            .events_tx
                            .send(Arc::new(JournalEntry { seq, event, json }));
                    }
                }
            }
            Ok((Err(error), _)) => {
                // Buffered in memory by the journal and retried; nothing is lost.
                self.events.fetch_add(n, Ordering::Relaxed);
                tracing::error!(%error, "Journal append failed; events held in memory and retried");
            }
            Err(error) => {
                tracing::error!(%error, "Journal append task failed");
            }
        }
        self.state_counts.publish(self.map.len());
    }
}

// ---------------------------------------------------------------------------------------------
// The API backend over the real components
// ---------------------------------------------------------------------------------------------

struct Backend {
    map: Arc<AccountMap>,
    board: Arc<PriceBoard>,
    registry: Arc<FeedRegistry>,
    journal: Arc<Journal>,
    states: Arc<DashMap<AccountId, AccountState>>,
    sinks: Vec<watch::Receiver<SinkHealth>>,
    engine: mpsc::Sender<EngineRequest>,
    kinds: HashMap<InstrumentId, InstrumentKind>,
    default_trigger: Decimal,
    accounts_loaded: AtomicBool,
}

impl Backend {
    fn view(&self, id: &AccountId) -> Option<api::AccountView> {
        let trigger = self.map.trigger_for(id, self.default_trigger);
        let snapshot = self.map.snapshot(id, trigger).ok()?;
        let account = self.map.account(id)?;
        let mut prices: Vec<PriceUsed> = Vec::new();
        let ids = account
            .positions
            .iter()
            .map(|p| &p.instrument)
            .chain(account.collateral.keys());
        for inst in ids {
            if prices.iter().any(|p| &p.instrument == inst) {
                continue;
            }
            if let Some(c) = self.board.composite(inst) {
                prices.push(c.price_used(inst));
            }
        }
        let stale_prices = prices.iter().any(|p| p.stale);
        Some(api::AccountView {
            account_id: id.clone(),
            state: self
                .states
                .get(id)
                .map(|s| s.clone())
                .unwrap_or(AccountState::Healthy),
            snapshot,
            prices,
            stale_prices,
            as_of_ms: now_ms(),
        })
    }
}

impl AccountWriter for Backend {
    fn instrument_kind(&self, id: &InstrumentId) -> Option<InstrumentKind> {
        self.kinds.get(id).copied()
    }

    fn apply(
        &self,
        update: AccountUpdate,
        origin: UpdateOrigin,
    ) -> BoxFuture<'_, Result<Applied, ApplyError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let req = EngineRequest::Update {
                update,
                origin,
                reply,
            };
            match tokio::time::timeout(Duration::from_secs(10), self.engine.send(req)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ApplyError::Unavailable("shutting down".into())),
                Err(_) => return Err(ApplyError::Unavailable("engine busy".into())),
            }
            match tokio::time::timeout(Duration::from_secs(30), rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(ApplyError::Unavailable("shutting down".into())),
                Err(_) => Err(ApplyError::Unavailable(
                    "engine did not answer in 30 s".into(),
                )),
            }
        })
    }
}

impl ApiBackend for Backend {
    fn readiness(&self) -> Vec<ReadinessCheck> {
        let mut out = Vec::new();
        let feeds = self.registry.snapshot(&self.board);
        let mut problems = Vec::new();
        for f in &feeds {
            if !f.connected {
                problems.push(format!("{} not connected", f.venue));
            }
            for i in &f.instruments {
                if i.stale {
                    problems.push(format!("{} {} stale", f.venue, i.symbol));
                }
            }
        }
        out.push(ReadinessCheck {
            name: "feeds".into(),
            ok: problems.is_empty(),
            detail: if problems.is_empty() {
                format!("{} feed(s) connected and fresh", feeds.len())
            } else {
                problems.join("; ")
            },
        });
        out.push(ReadinessCheck {
            name: "accounts".into(),
            ok: self.accounts_loaded.load(Ordering::Relaxed),
            detail: format!("{} accounts loaded", self.map.len()),
        });
        let stuck: Vec<String> = self
            .sinks
            .iter()
            .map(|h| h.borrow().clone())
            .filter(|h| !h.is_healthy())
            .map(|h| {
                format!(
                    "{} stuck ({} behind): {}",
                    h.sink,
                    h.lag,
                    h.last_error.unwrap_or_default()
                )
            })
            .collect();
        out.push(ReadinessCheck {
            name: "sinks".into(),
            ok: stuck.is_empty(),
            detail: if stuck.is_empty() {
                format!("{} sink(s) delivering", self.sinks.len())
            } else {
                stuck.join("; ")
            },
        });
        let failing = self.journal.is_write_failing();
        out.push(ReadinessCheck {
            name: "journal".into(),
            ok: !failing,
            detail: if failing {
                format!(
                    "writes failing, {} events held in memory",
                    self.journal.buffered()
                )
            } else {
                "writable".into()
            },
        });
        out
    }

    fn account(&self, id: &AccountId) -> Option<api::AccountView> {
        self.view(id)
    }

    fn riskiest(&self, limit: usize) -> BoxFuture<'_, Result<Vec<api::AccountView>, BackendError>> {
        Box::pin(async move {
            let map = Arc::clone(&self.map);
            let rows = tokio::task::spawn_blocking(move || map.riskiest(limit))
                .await
                .map_err(|e| BackendError(e.to_string()))?;
            Ok(rows.iter().filter_map(|r| self.view(&r.id)).collect())
        })
    }

    fn feeds(&self) -> Vec<api::FeedStatus> {
        self.registry
            .snapshot(&self.board)
            .into_iter()
            .map(|f| {
                let rejected = f.rejected_symbols.clone();
                let unconfirmed = f.unconfirmed_symbols.clone();
                api::FeedStatus {
                    venue: f.venue,
                    connected: f.connected,
                    reconnects: f.reconnects,
                    instruments: f
                        .instruments
                        .into_iter()
                        .map(|i| api::InstrumentFeedStatus {
                            subscribed: f.connected
                                && !rejected.contains(&i.symbol)
                                && !unconfirmed.contains(&i.symbol),
                            instrument: i.instrument,
                            symbol: i.symbol,
                            last_price: i.last_price,
                            received_ts: i.last_price_ts,
                            age_ms: i.age_ms,
                            stale: i.stale,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    fn events(
        &self,
        since: EventsSince,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalEntry>, BackendError>> {
        Box::pin(async move {
            let j = Arc::clone(&self.journal);
            let since = match since {
                EventsSince::Seq(s) => Since::Seq(s),
                EventsSince::Time(t) => Since::TimeMs(t),
            };
            tokio::task::spawn_blocking(move || j.events_since(since, limit))
                .await
                .map_err(|e| BackendError(e.to_string()))?
                .map_err(|e| BackendError(e.to_string()))
        })
    }
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
