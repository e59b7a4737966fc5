//! Event sinks: the [`Sink`] trait and the one generic driver that delivers journaled events
//! from the sink's own cursor, in batches, with retry, backoff and metrics.
//!
//! ## Adding a sink
//!
//! 1. One file, `src/sinks/<name>.rs` (or a `src/sinks/<name>/` directory when it grows), with
//!    - the sink, implementing [`Sink`];
//!    - its config type: `#[derive(Deserialize)] #[serde(deny_unknown_fields)]`, holding only
//!      the sink's own keys of a `[[sinks]]` entry (the common `type`, `name`, `filter`,
//!      `delivery` are the config module's). It implements [`SinkConfig`]: `TYPE` is the
//!      `type = "…"` name, and `into_settings` checks what serde cannot, reads secrets from the
//!      environment (`*_env` keys name variables, never values) and returns every problem at
//!      once, each message starting with the key it is about (`"secret_env: …"`) so the
//!      config module can point at its file, line and key;
//!    - its settings type (what `into_settings` returns; it may be the config type itself),
//!      implementing [`SinkSettings::build`], which the daemon calls at startup.
//! 2. One line in [`register_all`]: `r.register::<<name>::<Name>Config>();` plus `pub mod
//!    <name>;` above it. Config parsing, `check-config` and the daemon's startup pick it up.
//! 3. A test file that runs the shared sink contract (`tests/it/support/sink_contract.rs`:
//!    delivery, retriable vs permanent errors, resume after restart) against it, and the
//!    sink's keys documented in `deploy/liqwatch.example.toml`.
//!
//! The driver ([`spawn_sink`]) never sees an event before it is committed to the journal. It
//! reads at the sink's cursor, drops what the sink's [`SinkFilter`] does not want (those just
//! advance the cursor), calls [`Sink::deliver`], advances the cursor past what was delivered,
//! retries [`SinkError::Retriable`] with jittered exponential backoff (honouring
//! `retry_after`; the backoff starts over after any attempt that delivered at least one event),
//! dead-letters [`SinkError::Permanent`] and moves on. It sleeps on the journal's commit
//! notification instead of polling, and on every commit — even mid-delivery or mid-backoff —
//! republishes the sink's lag (`journal head − cursor`). A failing sink raises its own alarm
//! ([`SinkHealth`], metrics, an ERROR log) and stops nothing else.

pub mod jsonl;
pub mod nats;
pub mod noise;
pub mod stdout;
pub mod webhook;

use std::any::Any;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::journal::{Journal, JournalError, JournalHandle};
use crate::model::{AccountId, EventKind, RiskEvent, TimestampMs, now_ms};
use crate::runtime::Backoff;

pub use crate::journal::JournalEntry;

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying (network error, 5xx, 429, broker unavailable).
    #[error("retriable: {reason}")]
    Retriable {
        /// What went wrong.
        reason: String,
        /// The receiver asked us to wait this long (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Will never succeed (4xx other than 429, payload rejected): dead-letter the event.
    #[error("permanent: {reason}")]
    Permanent {
        /// What went wrong.
        reason: String,
    },
}

impl SinkError {
    /// True when the driver should retry.
    pub fn is_retriable(&self) -> bool {
        matches!(self, SinkError::Retriable { .. })
    }
}

/// A destination for events. Delivery is at least once: the driver calls [`Sink::deliver`] with
/// a batch in journal order and advances the sink's cursor past every entry reported done.
pub trait Sink: Send + 'static {
    /// The sink's configured name (used for its cursor, metrics and logs).
    fn name(&self) -> &str;

    /// Delivers `batch` in order. Returns how many leading entries were delivered; an error
    /// applies to the entry right after them.
    fn deliver<'a>(
        &'a mut self,
        batch: &'a [JournalEntry],
    ) -> BoxFuture<'a, (usize, Option<SinkError>)>;
}

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

/// Every sink type the daemon knows, one line each: `type = "…"` in a `[[sinks]]` entry is
/// looked up here. Adding a sink type adds one line.
pub fn register_all(r: &mut impl SinkTypes) {
    r.register::<stdout::StdoutSinkConfig>();
    r.register::<jsonl::JsonlSinkConfig>();
    r.register::<webhook::WebhookConfig>();
    r.register::<nats::NatsConfig>();
}

/// The registered sink type names, in registry order (`stdout`, `jsonl`, …).
pub fn type_names() -> Vec<&'static str> {
    struct Names(Vec<&'static str>);
    impl SinkTypes for Names {
        fn register<C: SinkConfig>(&mut self) {
            self.0.push(C::TYPE);
        }
    }
    let mut names = Names(Vec::new());
    register_all(&mut names);
    names.0
}

/// A visitor over the registered sink types (see [`register_all`]). The config module
/// implements it to read a `[[sinks]]` entry with the config type its `type` names.
pub trait SinkTypes {
    /// Called once per registered sink type.
    fn register<C: SinkConfig>(&mut self);
}

/// What a sink type's config is resolved against: the environment (secrets are only ever
/// named in the file) and the config file's directory (relative paths).
pub struct SinkContext<'a> {
    /// Looks up an environment variable (`std::env::var(k).ok()` in the daemon).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The directory of the config file.
    pub base_dir: &'a Path,
}

impl SinkContext<'_> {
    /// `path` resolved against the config file's directory (absolute paths are kept).
    pub fn path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// A sink type's own keys of a `[[sinks]]` entry (everything except the common `type`, `name`,
/// `filter`, `delivery`), read with serde (`deny_unknown_fields`) and then resolved.
pub trait SinkConfig: DeserializeOwned + Send + Sync + 'static {
    /// The `type = "…"` name in `[[sinks]]`.
    const TYPE: &'static str;

    /// The validated form, with secrets read and paths resolved; it builds the sink.
    type Settings: SinkSettings;

    /// Checks what serde cannot and reads the named environment variables. Returns every
    /// problem at once; a message that starts with (or mentions) one of the type's keys is
    /// reported at that key.
    fn into_settings(self, cx: &SinkContext<'_>) -> Result<Self::Settings, Vec<String>>;
}

/// A sink type's validated settings (secrets resolved), ready to build the sink at startup.
pub trait SinkSettings: Any + fmt::Debug + Send + Sync {
    /// Builds the sink named `name`.
    fn build(&self, name: &str) -> Result<Box<dyn Sink>, SinkBuildError>;
}

/// Why a configured sink could not be built at startup.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkBuildError(pub String);

// ---------------------------------------------------------------------------------------------
// Filter
// ---------------------------------------------------------------------------------------------

/// Minimum event severity a sink wants (see [`EventKind::severity`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Everything: `recovered`, `feed_restored` and up (severity 0).
    #[default]
    Info,
    /// `liquidation_warning`, `feed_stale`, `risk_warning` and up (severity 1).
    Warning,
    /// `liquidation_trigger` only (severity 2).
    Critical,
}

impl Severity {
    /// The numeric level compared with [`EventKind::severity`].
    pub fn level(self) -> u8 {
        match self {
            Severity::Info => 0,
            Severity::Warning => 1,
            Severity::Critical => 2,
        }
    }
}

/// Which events a sink wants. Empty lists mean "all". An event passes when its kind is listed
/// (or `kinds` is empty), its severity is at least `min_severity`, and — for account events —
/// its account is listed (or `accounts` is empty). Feed events carry no account and pass the
/// accounts test. Filtered-out events simply advance the sink's cursor.
///
/// Config form: `filter = { kinds = ["liquidation_trigger"], min_severity = "warning",
/// accounts = ["acct-1"] }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkFilter {
    /// Event kinds to deliver; empty = every kind.
    #[serde(default)]
    pub kinds: BTreeSet<EventKind>,
    /// Minimum severity to deliver.
    #[serde(default)]
    pub min_severity: Severity,
    /// Accounts to deliver; empty = every account.
    #[serde(default)]
    pub accounts: BTreeSet<AccountId>,
}

impl SinkFilter {
    /// A filter that lets everything through.
    pub fn all() -> Self {
        Self::default()
    }

    /// True when the sink wants `event`.
    pub fn matches(&self, event: &RiskEvent) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&event.kind) {
            return false;
        }
        if event.kind.severity() < self.min_severity.level() {
            return false;
        }
        match &event.account_id {
            Some(a) if !self.accounts.is_empty() => self.accounts.contains(a),
            _ => true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// Tuning of the delivery driver (config: a sink's `delivery = { … }` table; every key is
/// optional, durations in humantime form such as `"200ms"`, `"30s"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriverOptions {
    /// Most entries read from the journal (and handed to the sink) at once.
    pub batch_size: usize,
    /// First retry delay (then doubling, jittered).
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest retry delay (a receiver's `retry_after` may ask for more, up to 10 min).
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Upper bound on one `deliver` call; hitting it counts as a retriable failure.
    #[serde(with = "humantime_serde")]
    pub deliver_timeout: Duration,
    /// A sink failing continuously this long is reported stuck (ERROR log, gauge, health).
    #[serde(with = "humantime_serde")]
    pub stuck_after: Duration,
    /// After cancellation, how long the driver keeps delivering what is already journaled.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Safety-net re-check of the journal when no commit notification arrives.
    #[serde(with = "humantime_serde")]
    pub idle_recheck: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            batch_size: 256,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            deliver_timeout: Duration::from_secs(30),
            stuck_after: Duration::from_secs(60),
            drain_grace: Duration::from_secs(10),
            idle_recheck: Duration::from_secs(5),
        }
    }
}

/// What a sink's driver is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Not started yet.
    Starting,
    /// Caught up with the journal, waiting for new events.
    Idle,
    /// Delivering a backlog.
    Delivering,
    /// The last attempt failed; retrying with backoff.
    Retrying,
    /// Failing continuously for longer than `stuck_after`.
    Stuck,
    /// The driver has stopped (shutdown).
    Stopped,
}

/// A sink's health snapshot, for `/readyz`, `GET /v1/sinks` (the `SinkList` schema of
/// `src/api/openapi.json`), the risk page and logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SinkHealth {
    /// The sink's name.
    pub sink: String,
    /// What the driver is doing.
    pub state: SinkState,
    /// Every event with seq ≤ cursor is done for this sink.
    pub cursor: u64,
    /// The journal's last committed seq as last seen.
    pub last_seq: u64,
    /// `last_seq − cursor`.
    pub lag: u64,
    /// Events delivered since start.
    pub delivered: u64,
    /// Events skipped by the filter since start.
    pub filtered: u64,
    /// Retries since start.
    pub retries: u64,
    /// Dead letters this sink holds in the journal: counted at start, one more for each event
    /// a receiver refuses for good, one less for each redelivered.
    pub dead_letters: u64,
    /// Failed attempts in a row.
    pub consecutive_failures: u32,
    /// The most recent error, if the sink is failing.
    pub last_error: Option<String>,
    /// When the current failure streak began (ms since the epoch).
    pub failing_since_ms: Option<TimestampMs>,
    /// When the sink last delivered something (ms since the epoch): a receiver accepted at
    /// least one event (a redelivered dead letter counts). Refusals do not move it.
    pub last_delivery_ms: Option<TimestampMs>,
    /// When an event was last dead-lettered (a receiver refused it for good, or its journal
    /// row was unreadable) or a redelivery was refused again, ms since the epoch; `None` until
    /// that happens after start.
    #[serde(default)]
    pub last_dead_letter_ms: Option<TimestampMs>,
}

impl SinkHealth {
    fn new(sink: &str) -> Self {
        Self {
            sink: sink.to_owned(),
            state: SinkState::Starting,
            cursor: 0,
            last_seq: 0,
            lag: 0,
            delivered: 0,
            filtered: 0,
            retries: 0,
            dead_letters: 0,
            consecutive_failures: 0,
            last_error: None,
            failing_since_ms: None,
            last_delivery_ms: None,
            last_dead_letter_ms: None,
        }
    }

    /// False when the sink is stuck (the `/readyz` detail should name it).
    pub fn is_healthy(&self) -> bool {
        self.state != SinkState::Stuck
    }
}

/// A running sink driver.
#[derive(Debug)]
pub struct SinkTask {
    /// The sink's name.
    pub name: String,
    /// The driver task; it ends after cancellation once drained (or the grace period passed).
    pub join: JoinHandle<()>,
    /// Live health; `borrow()` for a snapshot.
    pub health: watch::Receiver<SinkHealth>,
    /// Asks the driver to deliver its dead letters again ([`SinkTask::redeliver_dead_letters`]).
    pub redeliver: Arc<RedeliverRequest>,
}

impl SinkTask {
    /// A snapshot of the sink's health.
    pub fn health(&self) -> SinkHealth {
        self.health.borrow().clone()
    }

    /// Asks the driver to deliver this sink's dead letters again, oldest first, each as a batch
    /// of one, between two batches (the driver owns the sink, so nothing is sent twice at
    /// once). Each one delivered
    /// leaves the dead-letter table; one refused again stays with the new reason; a retriable
    /// failure ends the pass, leaving the rest for the next request.
    pub fn redeliver_dead_letters(&self) {
        self.redeliver.request();
    }
}

/// A pending request to redeliver a sink's dead letters.
#[derive(Debug, Default)]
pub struct RedeliverRequest {
    requested: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

impl RedeliverRequest {
    /// Sets the request and wakes an idle driver.
    pub fn request(&self) {
        self.requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn take(&self) -> bool {
        self.requested
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

/// Spawns the delivery driver for `sink` with default [`DriverOptions`].
pub fn spawn_sink(
    sink: Box<dyn Sink>,
    filter: SinkFilter,
    journal: Arc<Journal>,
    cancel: CancellationToken,
) -> SinkTask {
    spawn_sink_with(sink, filter, journal, DriverOptions::default(), cancel)
}

/// Spawns the delivery driver for `sink`. On `cancel` it keeps delivering what is already
/// journaled for up to `options.drain_grace`, then stops.
pub fn spawn_sink_with(
    sink: Box<dyn Sink>,
    filter: SinkFilter,
    journal: Arc<Journal>,
    options: DriverOptions,
    cancel: CancellationToken,
) -> SinkTask {
    let name = sink.name().to_owned();
    let (health_tx, health) = watch::channel(SinkHealth::new(&name));
    let redeliver = Arc::new(RedeliverRequest::default());
    let driver = Driver {
        name: name.clone(),
        filter,
        journal: JournalHandle::new(journal),
        options,
        cancel,
        health: health_tx,
        stuck: false,
        redeliver: Arc::clone(&redeliver),
    };
    let span = tracing::info_span!("sink", sink = %name);
    let join = tokio::spawn(tracing::Instrument::instrument(driver.run(sink), span));
    SinkTask {
        name,
        join,
        health,
        redeliver,
    }
}

struct Driver {
    name: String,
    filter: SinkFilter,
    journal: JournalHandle,
    options: DriverOptions,
    cancel: CancellationToken,
    health: watch::Sender<SinkHealth>,
    stuck: bool,
    redeliver: Arc<RedeliverRequest>,
}

enum Wait {
    Done,
    DeadlinePassed,
}

impl Driver {
    /// Sleeps `d`, or less when draining and the deadline comes first.
    async fn pause(&self, d: Duration, deadline: Option<Instant>) -> Wait {
        match deadline {
            Some(dl) => {
                let until = (Instant::now() + d).min(dl);
                tokio::time::sleep_until(until).await;
                if Instant::now() >= dl {
                    Wait::DeadlinePassed
                } else {
                    Wait::Done
                }
            }
            None => {
                tokio::select! {
                    _ = self.cancel.cancelled() => {}
                    _ = tokio::time::sleep(d) => {}
                }
                Wait::Done
            }
        }
    }

    fn set_state(&self, state: SinkState, cursor: u64) {
        let last_seq = self.journal.journal().last_seq();
        let lag = last_seq.saturating_sub(cursor);
        metrics::gauge!("liqwatch_sink_lag_events", "sink" => self.name.clone()).set(lag as f64);
        self.health.send_modify(|h| {
            h.state = if self.stuck { SinkState::Stuck } else { state };
            h.cursor = cursor;
            h.last_seq = last_seq;
            h.lag = lag;
        });
    }

    /// Re-reads the journal head and publishes `head − cursor` (gauge and health), state
    /// unchanged. Called on every journal commit, whatever the driver is doing.
    fn refresh_lag(&self, cursor: u64) {
        let last_seq = self.journal.journal().last_seq();
        let lag = last_seq.saturating_sub(cursor);
        metrics::gauge!("liqwatch_sink_lag_events", "sink" => self.name.clone()).set(lag as f64);
        self.health.send_if_modified(|h| {
            let changed = h.last_seq != last_seq || h.lag != lag;
            h.last_seq = last_seq;
            h.lag = lag;
            changed
        });
    }

    /// Awaits `fut` while refreshing the lag on every journal commit, so
    /// `liqwatch_sink_lag_events` follows the journal head during a long delivery or a backoff
    /// sleep (issue 11 item 12: it used to move only on delivery attempts). The notifications
    /// it consumes are harmless: the main loop always re-reads the journal before it idles.
    async fn refreshing<F: std::future::Future>(
        &self,
        committed: &mut watch::Receiver<u64>,
        cursor: u64,
        fut: F,
    ) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return out,
                changed = committed.changed(), if open => match changed {
                    Ok(()) => self.refresh_lag(cursor),
                    Err(_) => open = false, // the journal is gone; just wait
                },
            }
        }
    }

    fn record_failure(&mut self, error: &str, cursor: u64) {
        let now = now_ms();
        let stuck_ms = i64::try_from(self.options.stuck_after.as_millis()).unwrap_or(i64::MAX);
        let mut became_stuck = false;
        self.health.send_modify(|h| {
            h.consecutive_failures = h.consecutive_failures.saturating_add(1);
            h.last_error = Some(error.to_owned());
            let since = *h.failing_since_ms.get_or_insert(now);
            if !self.stuck && now.saturating_sub(since) >= stuck_ms {
                became_stuck = true;
            }
        });
        if became_stuck {
            self.stuck = true;
            metrics::gauge!("liqwatch_sink_stuck", "sink" => self.name.clone()).set(1.0);
            tracing::error!(sink = %self.name, %error, cursor, lag = self.journal.journal().last_seq().saturating_sub(cursor),
                "Sink stuck: failing for longer than stuck_after; events wait in the journal, detection and other sinks continue");
        }
        self.set_state(SinkState::Retrying, cursor);
    }

    /// One more dead letter held, refused just now.
    fn count_dead_letter(&self) {
        self.health.send_modify(|h| {
            h.dead_letters += 1;
            h.last_dead_letter_ms = Some(now_ms());
        });
    }

    /// The attempt ended without an error; `delivered`: a receiver accepted at least one event
    /// (a permanent refusal dead-lettered with nothing before it is not a delivery).
    fn record_success(&mut self, cursor: u64, delivered: bool) {
        let was_failing = self.health.borrow().consecutive_failures > 0;
        if self.stuck {
            self.stuck = false;
            metrics::gauge!("liqwatch_sink_stuck", "sink" => self.name.clone()).set(0.0);
        }
        if was_failing {
            tracing::warn!(sink = %self.name, cursor, "Sink recovered");
        }
        self.health.send_modify(|h| {
            h.consecutive_failures = 0;
            h.last_error = None;
            h.failing_since_ms = None;
            if delivered {
                h.last_delivery_ms = Some(now_ms());
            }
        });
    }

    async fn run(mut self, mut sink: Box<dyn Sink>) {
        let name = self.name.clone();
        metrics::gauge!("liqwatch_sink_stuck", "sink" => name.clone()).set(0.0);
        let mut backoff = Backoff::new(self.options.backoff_initial, self.options.backoff_max);
        let mut deadline: Option<Instant> = None;
        let mut committed = self.journal.journal().subscribe();

        // The cursor: registered once, then kept in memory and persisted after each batch.
        let mut cursor = loop {
            let n = name.clone();
            match self.journal.run(move |j| j.register_sink(&n)).await {
                Ok(c) => break c,
                Err(error) => {
                    tracing::error!(sink = %name, %error, "Cannot read sink cursor; retrying");
                    if self.cancel.is_cancelled() {
                        self.set_state(SinkState::Stopped, 0);
                        return;
                    }
                    let d = backoff.next_delay(None);
                    self.pause(d, None).await;
                }
            }
        };
        backoff.reset();
        let n = name.clone();
        if let Ok(held) = self.journal.run(move |j| j.dead_letters(&n)).await {
            self.health
                .send_modify(|h| h.dead_letters = held.len() as u64);
        }
        tracing::info!(sink = %name, cursor, "Sink driver started");
        self.set_state(SinkState::Delivering, cursor);

        loop {
            if deadline.is_none() && self.cancel.is_cancelled() {
                deadline = Some(Instant::now() + self.options.drain_grace);
                tracing::info!(sink = %name, cursor, "Sink draining before shutdown");
            }
            if deadline.is_some_and(|dl| Instant::now() >= dl) {
                tracing::warn!(sink = %name, cursor, lag = self.journal.journal().last_seq().saturating_sub(cursor),
                    "Sink drain grace period over; the rest is delivered after restart");
                break;
            }
            if deadline.is_none() && self.redeliver.take() {
                self.redeliver_dead_letters(sink.as_mut()).await;
            }
            // Mark what we've seen before reading so a commit racing the read wakes us again.
            committed.borrow_and_update();
            let batch = match self
                .journal
                .read_after(cursor, self.options.batch_size)
                .await
            {
                Ok(b) => b,
                Err(JournalError::CorruptRow { seq, reason }) => {
                    let why = format!("journal row unreadable: {reason}");
                    tracing::error!(sink = %name, seq, %reason, "Dead-lettering unreadable journal row");
                    metrics::counter!("liqwatch_sink_dead_letters_total", "sink" => name.clone())
                        .increment(1);
                    if self
                        .journal
                        .dead_letter(name.clone(), seq, why)
                        .await
                        .is_ok()
                    {
                        cursor = cursor.max(seq);
                        self.count_dead_letter();
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(sink = %name, %error, "Cannot read the journal; retrying");
                    let d = backoff.next_delay(None);
                    let wait = self.pause(d, deadline);
                    if let Wait::DeadlinePassed =
                        self.refreshing(&mut committed, cursor, wait).await
                    {
                        break;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                self.set_state(SinkState::Idle, cursor);
                if deadline.is_some() {
                    break; // drained
                }
                tokio::select! {
                    _ = self.cancel.cancelled() => {}
                    _ = committed.changed() => {}
                    _ = self.redeliver.wake.notified() => {}
                    _ = tokio::time::sleep(self.options.idle_recheck) => {}
                }
                continue;
            }
            self.set_state(SinkState::Delivering, cursor);
            let raw_last = batch.last().map(|e| e.seq).unwrap_or(cursor);
            let raw_len = batch.len();
            let wanted: Vec<JournalEntry> = batch
                .into_iter()
                .filter(|e| self.filter.matches(&e.event))
                .collect();
            let skipped = raw_len - wanted.len();
            if skipped > 0 {
                metrics::counter!("liqwatch_sink_filtered_total", "sink" => name.clone())
                    .increment(skipped as u64);
                self.health.send_modify(|h| h.filtered += skipped as u64);
            }
            if wanted.is_empty() {
                cursor = self.persist(cursor, raw_last).await;
                continue;
            }

            let started = Instant::now();
            let attempt = {
                let fut = tokio::time::timeout(self.options.deliver_timeout, sink.deliver(&wanted));
                let fut = async {
                    match deadline {
                        Some(dl) => tokio::select! {
                            r = fut => Some(r),
                            _ = tokio::time::sleep_until(dl) => None,
                        },
                        None => Some(fut.await),
                    }
                };
                self.refreshing(&mut committed, cursor, fut).await
            };
            let Some(attempt) = attempt else {
                tracing::warn!(sink = %name, cursor, "Sink drain grace period over mid-batch; the batch is re-delivered after restart");
                break;
            };
            let (n, error) = match attempt {
                Ok((n, e)) => (n.min(wanted.len()), e),
                Err(_) => (
                    0,
                    Some(SinkError::Retriable {
                        reason: format!(
                            "delivery timed out after {:?}",
                            self.options.deliver_timeout
                        ),
                        retry_after: None,
                    }),
                ),
            };
            metrics::histogram!("liqwatch_sink_delivery_seconds", "sink" => name.clone())
                .record(started.elapsed().as_secs_f64());
            if n > 0 {
                metrics::counter!("liqwatch_sink_delivered_total", "sink" => name.clone())
                    .increment(n as u64);
                self.health.send_modify(|h| h.delivered += n as u64);
            }
            let error = match (error, n < wanted.len()) {
                (None, true) => Some(SinkError::Retriable {
                    reason: format!(
                        "sink delivered {n} of {} entries without an error",
                        wanted.len()
                    ),
                    retry_after: None,
                }),
                (e, _) => e,
            };
            // Everything before the first undelivered wanted entry is done (delivered or
            // filtered out).
            let done_to = match wanted.get(n) {
                Some(e) => e.seq.saturating_sub(1),
                None => raw_last,
            };
            cursor = self.persist(cursor, done_to).await;

            match error {
                None => {
                    backoff.reset();
                    self.record_success(cursor, n > 0);
                }
                Some(SinkError::Permanent { reason }) => {
                    // n < wanted.len() here, so the entry exists.
                    let Some(bad) = wanted.get(n) else { continue };
                    tracing::warn!(sink = %name, seq = bad.seq, event_id = %bad.event.event_id, %reason,
                        "Sink rejected event permanently; dead-lettered");
                    metrics::counter!("liqwatch_sink_failures_total", "sink" => name.clone(), "kind" => "permanent").increment(1);
                    metrics::counter!("liqwatch_sink_dead_letters_total", "sink" => name.clone())
                        .increment(1);
                    let seq = bad.seq;
                    match self
                        .journal
                        .dead_letter(name.clone(), seq, reason.clone())
                        .await
                    {
                        Ok(()) => {
                            cursor = cursor.max(seq);
                            self.count_dead_letter();
                            backoff.reset();
                            self.record_success(cursor, n > 0);
                        }
                        Err(error) => {
                            tracing::error!(sink = %name, seq, %error, "Cannot record dead letter; will retry the event");
                            self.record_failure(&error.to_string(), cursor);
                            let d = backoff.next_delay(None);
                            let wait = self.pause(d, deadline);
                            if let Wait::DeadlinePassed =
                                self.refreshing(&mut committed, cursor, wait).await
                            {
                                break;
                            }
                        }
                    }
                }
                Some(SinkError::Retriable {
                    reason,
                    retry_after,
                }) => {
                    metrics::counter!("liqwatch_sink_failures_total", "sink" => name.clone(), "kind" => "retriable").increment(1);
                    metrics::counter!("liqwatch_sink_retries_total", "sink" => name.clone())
                        .increment(1);
                    self.health.send_modify(|h| h.retries += 1);
                    // Progress (≥ 1 event delivered) means the receiver is back: start the
                    // backoff over, or a short outage leaves a long delay behind it (issue 11
                    // item 12: a 2 s outage took 29 s to drain).
                    if n > 0 {
                        backoff.reset();
                    }
                    let d = backoff.next_delay(retry_after);
                    tracing::warn!(sink = %name, cursor, %reason, retry_in = ?d, attempt = backoff.attempts(), "Sink delivery failed; retrying");
                    self.record_failure(&reason, cursor);
                    let wait = self.pause(d, deadline);
                    if let Wait::DeadlinePassed =
                        self.refreshing(&mut committed, cursor, wait).await
                    {
                        break;
                    }
                }
            }
        }
        self.set_state(SinkState::Stopped, cursor);
        tracing::info!(sink = %name, cursor, "Sink driver stopped");
    }

    /// One pass over the sink's dead letters, oldest first ([`SinkTask::redeliver_dead_letters`]).
    async fn redeliver_dead_letters(&self, sink: &mut dyn Sink) {
        let name = self.name.clone();
        let n = name.clone();
        let letters = match self.journal.run(move |j| j.dead_letters(&n)).await {
            Ok(l) => l,
            Err(error) => {
                tracing::error!(sink = %name, %error, "Cannot read the dead letters to redeliver them");
                return;
            }
        };
        tracing::info!(sink = %name, dead_letters = letters.len(), "Redelivering dead letters");
        let (mut delivered, mut refused, mut unreadable) = (0u64, 0u64, 0u64);
        let mut left = letters.len();
        for dl in letters {
            let entry = match serde_json::from_str::<RiskEvent>(&dl.json) {
                Ok(event) => JournalEntry {
                    seq: dl.seq,
                    event,
                    json: dl.json,
                },
                Err(e) => {
                    // An unreadable journal row has no event to send: it stays listed.
                    tracing::warn!(sink = %name, seq = dl.seq, error = %e, "Dead letter has no readable event; kept");
                    unreadable += 1;
                    left -= 1;
                    continue;
                }
            };
            let attempt = tokio::time::timeout(
                self.options.deliver_timeout,
                sink.deliver(std::slice::from_ref(&entry)),
            )
            .await;
            match attempt {
                Ok((1, None)) => {
                    let (n, seq) = (name.clone(), dl.seq);
                    if let Err(error) = self
                        .journal
                        .run(move |j| j.remove_dead_letter(&n, seq))
                        .await
                    {
                        tracing::error!(sink = %name, seq, %error, "Redelivered, but cannot remove the dead letter: it may be sent again");
                    }
                    metrics::counter!("liqwatch_sink_redelivered_total", "sink" => name.clone())
                        .increment(1);
                    self.health.send_modify(|h| {
                        h.delivered += 1;
                        h.dead_letters = h.dead_letters.saturating_sub(1);
                        h.last_delivery_ms = Some(now_ms());
                    });
                    delivered += 1;
                    left -= 1;
                }
                Ok((_, Some(SinkError::Permanent { reason }))) => {
                    tracing::warn!(sink = %name, seq = dl.seq, %reason, "Dead letter refused again; kept");
                    let (n, seq, r) = (name.clone(), dl.seq, reason);
                    let _ = self.journal.run(move |j| j.dead_letter(&n, seq, &r)).await;
                    self.health
                        .send_modify(|h| h.last_dead_letter_ms = Some(now_ms()));
                    refused += 1;
                    left -= 1;
                }
                Ok((_, error)) => {
                    let reason = match error {
                        Some(e) => e.to_string(),
                        None => "the sink delivered nothing without an error".to_string(),
                    };
                    tracing::warn!(sink = %name, seq = dl.seq, %reason, left, "Redelivery stopped by a retriable failure; the rest stay dead letters (ask again)");
                    break;
                }
                Err(_) => {
                    tracing::warn!(sink = %name, seq = dl.seq, left, "Redelivery timed out; the rest stay dead letters (ask again)");
                    break;
                }
            }
        }
        tracing::info!(sink = %name, delivered, refused, unreadable, left, "Dead letters redelivered");
    }

    /// Moves the cursor to `to` (when ahead) and persists it; a failed write is logged and
    /// retried with the next batch (worst case a re-delivery after restart).
    async fn persist(&self, cursor: u64, to: u64) -> u64 {
        if to <= cursor {
            return cursor;
        }
        if let Err(error) = self.journal.advance(self.name.clone(), to).await {
            tracing::warn!(sink = %self.name, %error, seq = to, "Cannot persist sink cursor; events may be re-delivered after a restart");
        }
        self.set_state(SinkState::Delivering, to);
        to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Filter and delivery tables parse from TOML with defaults, and unknown keys are errors.
    #[test]
    fn filter_and_options_parse() {
        #[derive(Deserialize)]
        struct T {
            filter: SinkFilter,
            delivery: DriverOptions,
        }
        let t: T = toml::from_str(
            r#"
            filter = { kinds = ["liquidation_trigger", "liquidation_warning"], min_severity = "warning", accounts = ["a1"] }
            delivery = { batch_size = 10, backoff_max = "5s" }
            "#,
        )
        .unwrap();
        assert_eq!(t.filter.kinds.len(), 2);
        assert_eq!(t.filter.min_severity, Severity::Warning);
        assert!(t.filter.accounts.contains("a1"));
        assert_eq!(t.delivery.batch_size, 10);
        assert_eq!(t.delivery.backoff_max, Duration::from_secs(5));
        assert_eq!(t.delivery.drain_grace, DriverOptions::default().drain_grace);
        assert!(toml::from_str::<SinkFilter>("kind = []").is_err());
        assert!(toml::from_str::<SinkFilter>("min_severity = \"loud\"").is_err());
    }

    /// The filter matches on kind, severity and account; feed events pass the account test.
    #[test]
    fn filter_matches() {
        let mut e = RiskEvent {
            event_id: RiskEvent::new_id(),
            kind: EventKind::LiquidationWarning,
            time: String::new(),
            time_ms: 0,
            account_id: Some(AccountId::from("a1")),
            seq: 1,
            level: None,
            crossed_levels: vec![],
            level_type: None,
            previous_state: None,
            state: None,
            snapshot: None,
            prices: vec![],
            stale_prices: false,
            instrument_change: None,
            feed: None,
            risk: None,
        };
        let only_a2 = SinkFilter {
            accounts: BTreeSet::from([AccountId::from("a2")]),
            ..SinkFilter::default()
        };
        let critical = SinkFilter {
            min_severity: Severity::Critical,
            ..SinkFilter::default()
        };
        assert!(SinkFilter::all().matches(&e));
        assert!(!only_a2.matches(&e));
        assert!(!critical.matches(&e));
        e.kind = EventKind::LiquidationTrigger;
        assert!(critical.matches(&e));
        e.kind = EventKind::FeedStale;
        e.account_id = None;
        assert!(only_a2.matches(&e));
        assert!(!critical.matches(&e));
    }
}
