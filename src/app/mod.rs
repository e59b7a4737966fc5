//! Wiring only: loading the startup inputs, spawning every task into one tracker, and the
//! shutdown order. The engine loop is `app/runner.rs`, the API's view of the daemon `app/backend.rs`.
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
//! **Reload.** SIGHUP re-reads and validates the config ([`reload`](mod@reload)): levels (the
//! engine is rebuilt over the same map, as at start), sinks (each driver has its own stop
//! token), the update-id window and the API token apply live; other changed keys are named as needing a restart; any error keeps the running
//! config.

mod backend;
#[cfg(test)]
mod backpressure_tests; // issue 11 item 7: a full disk pauses prices at a bound
mod distance_sort; // sort=distance: exact shock distance among the riskiest by ratio
mod error;
mod feedset;
mod history_persist; // the page's history in the journal: restore at start, batched writes
mod instruments; // the instrument refresh tasks ([[instruments.sources]] urls)
mod metrics;
mod relayout; // the account map laid out again as it changes
mod reload;
mod risk;
mod risk_queries;
mod risk_task; // [risk] in the daemon: recorded prices, scheduled recompute, risk_warning
mod runner;
mod sinkset; // the running sink drivers, swappable on reload
mod spawn;
mod startup;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::engine::AccountMap;
use crate::feeds::{FeedRegistry, replay};
use crate::journal::JournalHandle;
use crate::model::Instrument;
use crate::prices::PriceBoard;
use crate::runtime::tasks::join_all;
use crate::runtime::{Tasks, telemetry};
use crate::sinks::{JournalEntry, Sink, SinkFilter, SinkHealth};
use backend::Backend;
use runner::{EngineRequest, Runner, StateCounts, wait_engine_death};

pub use crate::runtime::telemetry::init_logging;
pub use error::AppError;
pub use startup::init_journal;
use startup::load_accounts;
pub(crate) use startup::{api_token, check_files, journal_problem, load_instruments};

// ---------------------------------------------------------------------------------------------

/// Builds the runtime, installs the Prometheus recorder and runs the daemon until a signal.
pub fn run_daemon(cfg: Config) -> Result<(), AppError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("liqwatch")
        .build()
        .map_err(|e| AppError::Runtime(format!("cannot start the tokio runtime: {e}")))?;
    rt.block_on(async move {
        let prometheus = telemetry::install_prometheus().map_err(AppError::Startup)?;
        let token = CancellationToken::new();
        let reload = Arc::new(tokio::sync::Notify::new());
        telemetry::spawn_signal_watcher(token.clone(), Some(Arc::clone(&reload)))
            .map_err(AppError::Startup)?;
        run(
            cfg,
            RunOptions {
                cancel: token,
                prometheus: Some(prometheus),
                reload: Some(reload),
                ..RunOptions::default()
            },
        )
        .await
        .map(|_| ())
    })
}

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
    /// Notified on SIGHUP: reload the config ([`reload`](mod@reload)).
    pub reload: Option<Arc<tokio::sync::Notify>>,
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
            reload: None,
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

/// Runs the daemon with a validated config until `opts.cancel` fires (or the replay ends with
/// `stop_after_replay`), then shuts down in order.
pub async fn run(cfg: Config, mut opts: RunOptions) -> Result<RunReport, AppError> {
    check_files(&cfg)?;
    let instruments = load_instruments(&cfg)?;
    let instrument_list: Vec<Instrument> = instruments.values().cloned().collect();
    let risk = match &cfg.risk {
        Some(r) => Some(Arc::new(risk::settings(r, &instruments)?)),
        None => None,
    };

    // Journal first: a missing, empty, foreign, corrupt or unwritable journal is a startup
    // error (exit 2); it is never created here. One daemon per journal: its lock is taken
    // before the journal is opened and held until this returns (a missing journal is left to
    // `open_journal`'s message).
    let _journal_lock = if cfg.journal.path.exists() {
        Some(
            crate::journal::lock::JournalLock::acquire(&cfg.journal.path)
                .map_err(|e| AppError::Startup(e.to_string()))?,
        )
    } else {
        None
    };
    let journal = Arc::new(startup::open_journal(&cfg)?);
    journal.set_buffer_limit(cfg.journal.max_buffered_events);

    // Accounts: the store, or the snapshot on the first start.
    let map = Arc::new(AccountMap::new(instrument_list.clone()));
    load_accounts(&cfg, &journal, &map, &instruments)?;
    // The slots in the order ticks read them (`AccountMap::relayout`).
    let started = std::time::Instant::now();
    let moved = map.relayout();
    tracing::debug!(accounts = moved, took = ?started.elapsed(), "Account slots laid out in key order");

    // The engine with its restored monitor states; the shared view of states for the API.
    let (engine, states, report) = startup::engine(&cfg, &map, &journal)?;
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
    // The live event stream reads what the journal committed (whoever wrote it, whenever the
    // write succeeded), so SSE clients see exactly what sinks see.
    let (events_tx, _) = broadcast::channel::<Arc<JournalEntry>>(1024);
    tasks.spawn(
        "events-forwarder",
        api::forward_journal(
            JournalHandle(Arc::clone(&journal)),
            events_tx.clone(),
            sources.clone(),
        )
        .map(Ok::<(), String>),
    );
    let (engine_tx, engine_rx) = mpsc::channel::<EngineRequest>(1024);
    tasks.spawn(
        "relayout",
        relayout::relayout_when_due(Arc::clone(&map), relayout::CHECK_EVERY, sources.clone()),
    );

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
    let extra = std::mem::take(&mut opts.extra_sinks);
    let sink_set = spawn::sinks(&cfg, &journal, extra, &sinks_stop)?;
    metrics::register_zeros(&cfg, &instrument_list, &sink_set.names());
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
    let runner = Runner {
        engine,
        board: Arc::clone(&board),
        journal: Arc::clone(&journal),
        states: Arc::clone(&states),
        events: Arc::clone(&events_count),
        update_ids: cfg.accounts.update_ids,
        state_counts: StateCounts::from_states(&states),
        paused: false,
        settlements: Some(crate::engine::settlement::SettlementTracker::default()),
        funding_sources: runner::FundingSources {
            http: cfg.accounts.apply_funding,
            nats: cfg.accounts.apply_funding_nats,
        },
    };
    let engine_task = tokio::spawn(
        runner
            .run(engine_rx, engine_stop.clone())
            .instrument(tracing::info_span!("engine")),
    );

    // Feeds (sources).
    let feed_set = feedset::FeedSet::new(
        Arc::clone(&board),
        Arc::clone(&registry),
        tasks.clone(),
        sources.clone(),
    );
    let replays = spawn::feeds(
        &cfg,
        &instrument_list,
        &board,
        &registry,
        &tasks,
        &sources,
        &feed_set,
        opts.replay_started.take(),
        opts.replay_clock,
    )?;
    // The risk page's bounded history: committed events and periodic samples.
    let history = Arc::new(api::HistoryStore::default());
    if cfg.api.enabled {
        let bounds = crate::journal::history::HistoryBounds::default();
        history_persist::restore(&journal, &history, &bounds);
        tasks.spawn("history-persist", {
            let f = history_persist::persist_history(
                Arc::clone(&journal),
                history.clone(),
                bounds,
                sources.clone(),
            );
            async move {
                f.await;
                Ok::<(), std::convert::Infallible>(())
            }
        });
        tasks.spawn("history-events", {
            let f = risk_queries::record_events(
                events_tx.subscribe(),
                history.clone(),
                sources.clone(),
            );
            async move {
                f.await;
                Ok::<(), std::convert::Infallible>(())
            }
        });
        tasks.spawn("history-sampler", {
            let f = risk_queries::sample_history(
                Arc::clone(&map),
                Arc::clone(&states),
                history.clone(),
                sources.clone(),
            );
            async move {
                f.await;
                Ok::<(), std::convert::Infallible>(())
            }
        });
    }
    // Instrument sources with URLs: refreshed live, each change applied by the engine task.
    let instrument_health =
        crate::instruments::source::InstrumentHealth::new(&cfg.instruments, crate::model::now_ms());
    instruments::register(&cfg.instruments);
    for (i, s) in cfg.instruments.iter().enumerate() {
        if !s.urls.is_empty() {
            tasks.spawn(
                format!("instrument-refresh-{}", s.name()),
                instruments::refresh_source(
                    i,
                    s.clone(),
                    engine_tx.clone(),
                    instrument_health.clone(),
                    sources.clone(),
                ),
            );
        }
    }
    // Held instruments no feed prices: reported once, loudly, now (and in readiness).
    board.set_held(map.held_instruments());
    board.report_unserved();
    // [risk]: the scheduled recompute, its store, and the account changes that wake it.
    let default_trigger = Arc::new(parking_lot::RwLock::new(cfg.engine.thresholds.trigger));
    let risk_store = Arc::new(crate::risk::store::RiskStore::default());
    let risk_changes = risk
        .as_ref()
        .map(|_| Arc::new(risk_task::RiskChanges::default()));
    if let (Some(settings), Some(changes)) = (&risk, &risk_changes) {
        let task = risk_task::RiskTask {
            settings: Arc::clone(settings),
            map: Arc::clone(&map),
            board: Arc::clone(&board),
            journal: Arc::clone(&journal),
            store: Arc::clone(&risk_store),
            changes: Arc::clone(changes),
            default_trigger: Arc::clone(&default_trigger),
        };
        tasks.spawn(
            "risk",
            task.run(sources.clone())
                .map(Ok::<(), std::convert::Infallible>),
        );
    }
    // Account sources: the API and NATS.
    let backend = Arc::new(Backend {
        map: Arc::clone(&map),
        board: Arc::clone(&board),
        registry: Arc::clone(&registry),
        journal: Arc::clone(&journal),
        states: Arc::clone(&states),
        sinks: sink_set.clone(),
        engine: engine_tx.clone(),
        kinds: instruments
            .iter()
            .map(|(k, v)| (k.clone(), v.kind))
            .collect(),
        default_trigger,
        default_levels: Arc::new(parking_lot::RwLock::new(cfg.engine.thresholds.clone())),
        risk,
        risk_store,
        risk_changes,
        history: Arc::clone(&history),
        instruments: instrument_health,
        gauges_at: Default::default(),
    });
    let token = api_token(&cfg)?;
    let mut api_token_handle = None;
    if let Some(listener) = listener {
        let mut state = ApiState::new(backend.clone(), events_tx.clone())
            .with_body_limit(cfg.api.max_body_bytes)
            .with_shutdown(sources.clone());
        if let Some(h) = &opts.prometheus {
            state = state.with_metrics(h.clone());
        }
        if let Some(t) = &token {
            state = state.with_token(t);
        }
        api_token_handle = Some(state.token_handle());
        let router = api::router(state);
        let cancel = sources.clone();
        let (limits, lowered) = cfg
            .api
            .limits
            .within_fd_budget(api::open_files_soft_limit());
        if let Some(note) = lowered {
            tracing::warn!("{note}");
        }
        tasks.spawn("api", async move {
            api::serve_on_with(listener, router, limits, cancel).await
        });
    }
    if let Some(ncfg) = cfg.accounts.nats.clone() {
        let writer: Arc<dyn crate::sources::AccountWriter> = backend.clone();
        tasks.spawn(
            "nats-ingest",
            spawn::nats_ingest(ncfg, writer, sources.clone()),
        );
    }
    if let Some(signal) = opts.reload.take() {
        let reloader = reload::Reloader {
            current: cfg.clone(),
            instruments: instruments.clone(),
            token,
            engine: engine_tx.clone(),
            api_token: api_token_handle,
            default_trigger: Arc::clone(&backend.default_trigger),
            default_levels: Arc::clone(&backend.default_levels),
            feeds: feed_set.clone(),
            sinks: sink_set.clone(),
            sinks_stop: sinks_stop.clone(),
            journal: Arc::clone(&journal),
            instrument_list: instrument_list.clone(),
        };
        tasks.spawn(
            "reload",
            reloader.run(signal, sources.clone()).map(Ok::<(), String>),
        );
    }
    drop(engine_tx);
    tracing::info!(
        config = %cfg.path.display(),
        feeds = cfg.feeds.len(),
        sinks = sink_set.len(),
        accounts = map.len(),
        "liqwatch running"
    );

    // Wait for the stop signal (or the end of every replay).
    let all_replays_done = async {
        for r in &replays.done {
            r.cancelled().await;
        }
    };
    tokio::select! {
        _ = sources.cancelled() => {}
        _ = all_replays_done, if opts.stop_after_replay && !replays.done.is_empty() => {
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
    let sink_tasks = sink_set.take_all();
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
        replay_ticks: replays.ticks.load(Ordering::Relaxed),
        undrained_sinks: undrained,
    })
}
