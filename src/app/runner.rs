//! The daemon's engine runner: a thin async loop around the one synchronous
//! [`Engine`](crate::engine::Engine). It owns the engine, takes price bursts from the board,
//! account requests from the API and NATS, and staleness transitions every 250 ms, and journals
//! what the engine returns (events and monitor states in one transaction).
//!
//! ```text
//!  PriceBoard::changed() ──burst──┐
//!  EngineRequest (bounded mpsc) ──┼─▶ Engine::{on_prices, begin_update/settle, on_feed}
//!  staleness tick (250 ms) ───────┘                  │ Emitted / feed events
//!                                                    ▼
//!                                    Journal::append (spawn_blocking) → sinks, SSE
//! ```
//!
//! An account update is answered only after it is applied **and** persisted; when persisting
//! fails the engine reverts the map, so memory and store agree.
//!
//! The same tick drives funding on the wall clock: `Engine::on_funding_clock`
//! (`warn_before_funding`) and, with `[accounts] apply_funding`, the settlements due
//! (`engine::settlement`), applied through the same idempotent update path as any update.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::engine::{Emitted, Engine, EngineConfig, PendingUpdate, UpdateOutcome};
use crate::journal::{AccountWrite, Journal, UpdateIdRecord, UpdateIdWindow};
use crate::model::{AccountId, AccountState, AccountUpdate, InstrumentId, RiskEvent, now_ms};
use crate::prices::{Composite, PriceBoard};
use crate::sources::{Applied, ApplyError, UpdateKey, UpdateOrigin, update_digest};

/// A request to the engine task.
pub(crate) enum EngineRequest {
    /// An account update from the API or NATS; answered once applied and persisted.
    Update {
        update: AccountUpdate,
        origin: UpdateOrigin,
        /// The update's id: applied once within the window ([`UpdateIdWindow`]).
        key: Option<UpdateKey>,
        reply: oneshot::Sender<Result<Applied, ApplyError>>,
    },
    /// A SIGHUP reload: new levels (the engine is rebuilt over the same map and re-evaluates
    /// every account) and a new update-id window. Answered with what changed.
    Reload {
        engine: EngineConfig,
        update_ids: UpdateIdWindow,
        reply: oneshot::Sender<Result<Vec<String>, String>>,
    },
    /// A refreshed instrument set from `source`: the changed terms are replaced, the holders
    /// revalued and re-evaluated, and the events journaled before the answer.
    Instruments {
        source: String,
        defs: Vec<crate::model::Instrument>,
        reply: oneshot::Sender<super::instruments::InstrumentsApplied>,
    },
}

/// The engine task.
pub(crate) struct Runner {
    pub engine: Engine,
    pub board: Arc<PriceBoard>,
    pub journal: Arc<Journal>,
    /// The shared view of account states, for the API.
    pub states: Arc<DashMap<AccountId, AccountState>>,
    /// Events journaled since start.
    pub events: Arc<AtomicU64>,
    /// How long applied update ids are remembered (a NATS redelivery is keyed by its stream
    /// sequence, so it is recognised across restarts too).
    pub update_ids: UpdateIdWindow,
    /// Accounts per monitor state, for `liqwatch_accounts_by_state`.
    pub state_counts: StateCounts,
    /// True while prices are not taken because the journal holds its limit of unwritten
    /// events (disk full): the board coalesces them meanwhile, nothing queues.
    pub paused: bool,
    /// The funding settlements applied so far to accounts with `apply_funding` (`None`: off,
    /// in tests that do not exercise it).
    pub settlements: Option<crate::engine::settlement::SettlementTracker>,
    /// `[accounts] apply_funding` / `[accounts.nats] apply_funding`: a full account from that
    /// source gets `apply_funding` (its balances do not include funding).
    pub funding_sources: FundingSources,
}

/// Which account sources do not report balances, so the daemon applies funding to their
/// accounts (`Account::apply_funding`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FundingSources {
    /// The snapshot file and the HTTP API (`[accounts] apply_funding`).
    pub http: bool,
    /// NATS (`[accounts.nats] apply_funding`).
    pub nats: bool,
}

impl FundingSources {
    /// Whether updates from `origin` mark their accounts `apply_funding`.
    pub fn applies(&self, origin: &UpdateOrigin) -> bool {
        match origin {
            UpdateOrigin::Http => self.http,
            UpdateOrigin::Nats { .. } => self.nats,
            UpdateOrigin::Funding => false,
        }
    }
}

/// Counts of accounts in warning and triggered state (healthy = loaded − both), kept
/// incrementally as the runner changes the shared state view.
#[derive(Default)]
pub(crate) struct StateCounts {
    warning: i64,
    triggered: i64,
}

impl StateCounts {
    pub fn from_states(states: &DashMap<AccountId, AccountState>) -> Self {
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

impl Runner {
    /// Runs until `stop`, then evaluates what is left (the last price burst, queued requests).
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<EngineRequest>,
        stop: CancellationToken,
    ) {
        let mut stale_tick = tokio::time::interval(Duration::from_millis(250));
        stale_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let board = Arc::clone(&self.board);
        loop {
            // Backpressure (issue 11 item 7): while the journal cannot write and already holds
            // its limit of events, take no prices and check staleness no more — each could add
            // events to memory. The board keeps only the latest price per instrument, so
            // memory stays flat; the tick re-checks every 250 ms and resumes once it writes.
            let paused = self.journal.over_buffer_limit();
            self.note_pause(paused);
            tokio::select! {
                biased;
                changed = board.changed(), if !paused => {
                    let woke = std::time::Instant::now();
                    self.on_prices(changed, woke).await;
                }
                Some(req) = requests.recv() => self.on_request(req).await,
                _ = stale_tick.tick() => {
                    if !paused {
                        self.on_staleness().await;
                        self.on_funding().await;
                    }
                    self.state_counts.publish(self.engine.map().len());
                }
                _ = stop.cancelled() => break,
            }
        }
        // Inputs are closed: evaluate what is left.
        let changed = board.take_changed();
        if !changed.is_empty() {
            self.on_prices(changed, std::time::Instant::now()).await;
        }
        requests.close();
        while let Ok(req) = requests.try_recv() {
            self.on_request(req).await;
        }
        tracing::info!("Engine finished");
    }

    /// Logs and exports a change of the backpressure pause.
    fn note_pause(&mut self, paused: bool) {
        if paused == self.paused {
            return;
        }
        self.paused = paused;
        metrics::gauge!("liqwatch_engine_paused").set(if paused { 1.0 } else { 0.0 });
        if paused {
            tracing::error!(
                buffered = self.journal.buffered(),
                limit = self.journal.buffer_limit(),
                "Journal cannot write and holds its limit of events in memory: prices are not evaluated until it writes again (free disk space)"
            );
        } else {
            tracing::warn!("Journal writes again: taking prices");
        }
    }

    async fn on_prices(
        &mut self,
        changed: Vec<(InstrumentId, Composite)>,
        woke: std::time::Instant,
    ) {
        let oldest_rx = changed.iter().map(|(_, c)| c.received_at).min();
        // A step that wakes much of the book (a correlated move) hands its events over in
        // chunks; one blocking writer journals them in order while the engine computes the
        // next, so the first triggers are durable (and on their way to the sinks) long before
        // the last account of the step is evaluated.
        // The writer is started by the step's first events (a step without any costs nothing).
        type Batch = (Vec<RiskEvent>, Vec<(AccountId, String)>);
        type Writer = (
            std::sync::mpsc::Sender<Batch>,
            tokio::task::JoinHandle<(u64, Option<CommitTimes>)>,
        );
        let mut pipe: Option<Writer> = None;
        {
            let states = &*self.states;
            let counts = &mut self.state_counts;
            let journal = &self.journal;
            self.engine.on_prices_chunked(
                changed.iter().map(|(i, c)| (i, c.price)),
                &*self.board,
                now_ms(),
                COMMIT_CHUNK,
                &mut |emitted| {
                    let batch = journal_batch(states, counts, emitted, Vec::new());
                    let (tx, _) = pipe.get_or_insert_with(|| {
                        let (tx, rx) = std::sync::mpsc::channel::<Batch>();
                        let journal = Arc::clone(journal);
                        let writer = tokio::task::spawn_blocking(move || {
                            let mut written = 0u64;
                            let mut last = None;
                            for batch in rx {
                                written += append_logged(&journal, &batch);
                                last = Some(CommitTimes::since(oldest_rx, woke));
                            }
                            (written, last)
                        });
                        (tx, writer)
                    });
                    // The writer ends only when the sender is dropped (after the step), so
                    // this cannot fail.
                    let _ = tx.send(batch);
                },
            );
        }
        record_step(self.engine.last_step());
        let Some((tx, writer)) = pipe else {
            return;
        };
        drop(tx);
        let (written, last) = match writer.await {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "Journal append task failed");
                return;
            }
        };
        // Timed at the step's last commit (when its events were durable and the sinks woken),
        // not at the engine task's own wake-up after it.
        let Some(last) = last else {
            return;
        };
        if let Some(rx) = last.rx {
            metrics::histogram!("liqwatch_engine_tick_to_event_seconds").record(rx.as_secs_f64());
        }
        metrics::histogram!("liqwatch_engine_wake_to_commit_seconds")
            .record(last.woke.as_secs_f64());
        self.events.fetch_add(written, Ordering::Relaxed);
        self.state_counts.publish(self.engine.map().len());
    }

    async fn on_staleness(&mut self) {
        // Staleness is watched only for held (or explicitly watched) instruments.
        self.board.set_held(self.engine.map().held_instruments());
        let transitions = self.board.check_staleness(tokio::time::Instant::now());
        if transitions.is_empty() {
            return;
        }
        // The board logged each transition already (WARN stale, INFO restored).
        for t in &transitions {
            tracing::debug!(instrument = %t.info.instrument, kind = %t.kind, "Feed staleness changed");
        }
        let step = self.engine.on_feed(&transitions, &*self.board, now_ms());
        self.commit(step.emitted, step.feed_events).await;
    }

    /// The funding step on the engine's clock (`warn_before_funding`).
    async fn on_funding(&mut self) {
        let now = now_ms();
        let emitted = self.engine.on_funding_clock(&*self.board, now);
        if !emitted.is_empty() {
            self.commit(emitted, Vec::new()).await;
        }
        self.settle_funding(now).await;
    }

    /// `apply_funding`: every settlement due applied to its holders' collateral through the
    /// idempotent update path, each with its `funding:…` update id (once per account, also
    /// across restarts: a repeat is a duplicate, never a second payment).
    async fn settle_funding(&mut self, now: crate::model::TimestampMs) {
        let Some(tracker) = self.settlements.as_mut() else {
            return;
        };
        let observed = self
            .board
            .funding()
            .all()
            .into_iter()
            .map(|(i, e)| (i, e.rate));
        let due = tracker.due(observed, now);
        for s in due {
            let Some(updates) =
                crate::engine::settlement::settlement_updates(self.engine.map(), &s)
            else {
                // No price of the instrument in the engine yet: due again at the next check.
                let (instrument, funding_ms) = (s.instrument.clone(), s.funding_ms);
                let waits = (self.settlements.as_mut()).is_some_and(|t| t.wait_for_price(s, now));
                if waits {
                    tracing::debug!(%instrument, funding_ms, "Funding settlement waits for a price");
                } else {
                    metrics::counter!("liqwatch_engine_funding_failed_total").increment(1);
                    tracing::warn!(%instrument, funding_ms, "Funding not applied: no price of the instrument for 5 minutes after the settlement was due");
                }
                continue;
            };
            if updates.is_empty() {
                continue;
            }
            tracing::info!(instrument = %s.instrument, funding_ms = s.funding_ms, rate = %s.rate, accounts = updates.len(), "Applying a funding settlement");
            for (id, update) in updates {
                let key = UpdateKey::funding(id);
                match self
                    .apply_update(update, &UpdateOrigin::Funding, Some(key.clone()))
                    .await
                {
                    Ok(Applied::Duplicate) | Err(ApplyError::Conflict { .. }) => {
                        metrics::counter!("liqwatch_engine_funding_duplicates_total").increment(1);
                        tracing::info!(update_id = %key, "Funding already applied; not applied again");
                    }
                    Ok(_) => {
                        metrics::counter!("liqwatch_engine_funding_applied_total").increment(1);
                    }
                    Err(error) => {
                        metrics::counter!("liqwatch_engine_funding_failed_total").increment(1);
                        tracing::warn!(update_id = %key, %error, "Funding settlement not applied");
                    }
                }
            }
        }
    }

    async fn on_request(&mut self, req: EngineRequest) {
        match req {
            EngineRequest::Update {
                update,
                origin,
                key,
                reply,
            } => {
                let r = self.apply_update(update, &origin, key).await;
                let _ = reply.send(r);
            }
            EngineRequest::Reload {
                engine,
                update_ids,
                reply,
            } => {
                let r = self.reload(engine, update_ids).await;
                let _ = reply.send(r);
            }
            EngineRequest::Instruments {
                source,
                defs,
                reply,
            } => {
                let step = self
                    .engine
                    .replace_instruments(&defs, &source, &*self.board, now_ms());
                for e in &step.refused {
                    tracing::warn!(%source, error = %e, "Instrument definition refused; the terms in force stay");
                }
                let applied = super::instruments::InstrumentsApplied {
                    changed: step.events.len(),
                    account_events: step.emitted.len(),
                    refused: step.refused.iter().map(|e| e.to_string()).collect(),
                    not_configured: step.not_configured,
                };
                self.commit(step.emitted, step.events).await;
                let _ = reply.send(applied);
            }
        }
    }

    /// Applies reloaded engine settings. New levels (or stale policy, or index mode) rebuild
    /// the engine over the same account map with the monitor states the journal holds — the
    /// path a restart takes — and evaluate every account at the current prices at once, so
    /// an account the new levels put across a level fires now (a restart would do the same on
    /// its next tick). Unchanged settings leave the engine alone.
    async fn reload(
        &mut self,
        cfg: EngineConfig,
        update_ids: UpdateIdWindow,
    ) -> Result<Vec<String>, String> {
        let mut changed = Vec::new();
        if update_ids != self.update_ids {
            self.update_ids = update_ids;
            changed.push("accounts.update_id_window / update_id_limit".to_string());
        }
        let same_levels = *self.engine.monitor().config() == cfg.monitor
            && self.engine.index().is_some() == cfg.distance_index;
        if same_levels {
            return Ok(changed);
        }
        let j = Arc::clone(&self.journal);
        let states = tokio::task::spawn_blocking(move || j.load_monitor_states())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read monitor states: {e}"))?;
        let mut engine = Engine::new(Arc::clone(self.engine.map()), cfg)
            .map_err(|e| format!("engine levels: {e}"))?;
        // `after_trigger` needs a restart (its marks live in the monitor); keep the mode.
        engine.set_after_trigger(self.engine.after_trigger());
        engine.set_warn_before_funding(self.engine.warn_before_funding());
        engine.restore(states);
        engine.restore_feed_seqs(self.engine.feed_seqs().clone());
        let emitted = engine.evaluate_all(&*self.board, now_ms());
        self.engine = engine;
        let fired = emitted.len();
        self.commit(emitted, Vec::new()).await;
        changed.push(format!(
            "engine levels ({} accounts re-evaluated, {fired} events)",
            self.engine.map().len()
        ));
        Ok(changed)
    }

    async fn apply_update(
        &mut self,
        update: AccountUpdate,
        origin: &UpdateOrigin,
        key: Option<UpdateKey>,
    ) -> Result<Applied, ApplyError> {
        let mut update = update;
        if let AccountUpdate::Replace { account } = &mut update {
            account.apply_funding |= self.funding_sources.applies(origin);
        }
        // An id seen before: a repeat is acknowledged without applying, a reuse for another
        // update refused. Updates are applied one at a time here, so nothing can record the
        // same id between this look-up and the write below.
        let id = match key {
            None => None,
            Some(key) => {
                let digest = update_digest(&update);
                if let Some(answer) = self.seen(&key, &digest, origin).await? {
                    return answer;
                }
                Some((key, digest))
            }
        };
        let pending = self.engine.begin_update(update).map_err(|e| match e {
            crate::engine::AccountError::UnknownAccount(id) => ApplyError::NotFound(id),
            other => ApplyError::Invalid {
                field: "account".into(),
                message: other.to_string(),
            },
        })?;
        let applied = match pending.outcome() {
            UpdateOutcome::Created(_) => Applied::Created,
            UpdateOutcome::Updated(_) => Applied::Updated,
            UpdateOutcome::Removed(_) => Applied::Removed,
        };
        let record = id.map(|(key, digest)| UpdateIdRecord {
            key: key.as_stored().to_string(),
            digest,
            result: applied_str(applied).to_string(),
        });
        // Persist (with the update's id, in one transaction) before answering; revert on
        // failure so memory and store agree.
        if let Err(reason) = self.persist(&pending, record).await {
            let id = pending.account_id().clone();
            if let Err(e) = self.engine.revert(pending) {
                tracing::error!(account = %id, error = %e, "Could not undo an update that failed to persist");
            }
            tracing::error!(account = %id, %reason, "Account update not persisted; undone");
            return Err(ApplyError::Persist(reason));
        }
        let id = pending.account_id().clone();
        let emitted = self.engine.settle(pending, &*self.board, now_ms());
        if applied == Applied::Removed
            && let Some((_, old)) = self.states.remove(&id)
        {
            self.state_counts.adjust(&old, -1);
        }
        if !emitted.is_empty() {
            self.commit(emitted, Vec::new()).await;
        }
        Ok(applied)
    }

    /// `Some(answer)` when `key` was already applied (within the window): a duplicate when it
    /// came with the same update, a conflict otherwise.
    async fn seen(
        &self,
        key: &UpdateKey,
        digest: &str,
        origin: &UpdateOrigin,
    ) -> Result<Option<Result<Applied, ApplyError>>, ApplyError> {
        let j = Arc::clone(&self.journal);
        let stored = key.as_stored().to_string();
        let window = self.update_ids;
        let seen = tokio::task::spawn_blocking(move || j.seen_update(&stored, &window))
            .await
            .map_err(|e| ApplyError::Unavailable(e.to_string()))?
            .map_err(|e| ApplyError::Unavailable(format!("cannot read update ids: {e}")))?;
        let Some(seen) = seen else { return Ok(None) };
        if seen.digest == digest {
            tracing::info!(update_id = %key, source = origin.label(), account = %seen.account_id, "Update already applied; acknowledged without applying it again");
            return Ok(Some(Ok(Applied::Duplicate)));
        }
        Ok(Some(Err(ApplyError::Conflict {
            id: key.shown().to_string(),
            detail: format!(
                "it {} account {} at {} ms since the epoch",
                seen.result, seen.account_id, seen.recorded_ms
            ),
        })))
    }

    /// Writes the account as the map now has it (or deletes it) to the journal's store, with
    /// the update's id in the same transaction.
    async fn persist(
        &self,
        pending: &PendingUpdate,
        record: Option<UpdateIdRecord>,
    ) -> Result<(), String> {
        let j = Arc::clone(&self.journal);
        let account_id = pending.account_id().clone();
        let write = match pending.outcome() {
            UpdateOutcome::Removed(_) => AccountWrite::Delete { account_id },
            _ => match self
                .engine
                .map()
                .account(&account_id)
                .map(|a| serde_json::to_string(&a))
            {
                Some(Ok(json)) => AccountWrite::Upsert { account_id, json },
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("account vanished".into()),
            },
        };
        let window = self.update_ids;
        tokio::task::spawn_blocking(move || {
            j.store_account_update(&write, record.as_ref(), &window)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
    }

    /// Journals account events (with their monitor states) and feed events in one transaction.
    /// Sinks and the live stream read them from the journal.
    async fn commit(&mut self, emitted: Vec<Emitted>, feed_events: Vec<RiskEvent>) {
        if emitted.is_empty() && feed_events.is_empty() {
            return;
        }
        let (events, states) =
            journal_batch(&self.states, &mut self.state_counts, emitted, feed_events);
        let n = events.len() as u64;
        let j = Arc::clone(&self.journal);
        let result = tokio::task::spawn_blocking(move || j.append(&events, &states)).await;
        match result {
            Ok(Ok(_)) => {
                self.events.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                // Buffered in memory by the journal and retried; nothing is lost.
                self.events.fetch_add(n, Ordering::Relaxed);
                tracing::error!(%error, "Journal append failed; events held in memory and retried");
            }
            Err(error) => {
                tracing::error!(%error, "Journal append task failed");
            }
        }
        self.state_counts.publish(self.engine.map().len());
    }
}

/// Records a price step's phases (`liqwatch_engine_step_seconds{phase}`) when it valued at
/// least one account: a step that valued none is a quiet tick, recorded by nothing here.
fn record_step(step: crate::engine::StepTimes) {
    if step.valued == 0 {
        return;
    }
    let [value, evaluate, reband] = super::metrics::STEP_PHASES;
    metrics::histogram!("liqwatch_engine_step_seconds", "phase" => value)
        .record(step.value.as_secs_f64());
    metrics::histogram!("liqwatch_engine_step_seconds", "phase" => evaluate)
        .record(step.evaluate.as_secs_f64());
    metrics::histogram!("liqwatch_engine_step_seconds", "phase" => reband)
        .record(step.reband.as_secs_f64());
}

/// Accounts evaluated in the first chunk of a large price step (each next chunk twice as
/// many): each chunk's events are journaled while the engine evaluates the next
/// ([`Engine::on_prices_chunked`]).
const COMMIT_CHUNK: usize = 4_096;

/// When a step's commit finished: since the oldest price of the step was accepted by the
/// board, and since the engine woke for it.
#[derive(Clone, Copy)]
struct CommitTimes {
    rx: Option<Duration>,
    woke: Duration,
}

impl CommitTimes {
    fn since(rx: Option<tokio::time::Instant>, woke: std::time::Instant) -> Self {
        CommitTimes {
            rx: rx.map(|r| r.elapsed()),
            woke: woke.elapsed(),
        }
    }
}

/// Appends one batch, logging a failure (the journal holds the events in memory and retries
/// them: nothing is lost). Returns how many events the batch had.
fn append_logged(
    journal: &Journal,
    (events, states): &(Vec<RiskEvent>, Vec<(AccountId, String)>),
) -> u64 {
    if let Err(error) = journal.append(events, states) {
        tracing::error!(%error, "Journal append failed; events held in memory and retried");
    }
    events.len() as u64
}

/// One journal transaction: account events with their monitor states (the shared state view
/// and its counts follow the ratio's state), then feed events.
fn journal_batch(
    view: &DashMap<AccountId, AccountState>,
    counts: &mut StateCounts,
    emitted: Vec<Emitted>,
    feed_events: Vec<RiskEvent>,
) -> (Vec<RiskEvent>, Vec<(AccountId, String)>) {
    let mut events: Vec<RiskEvent> = Vec::with_capacity(emitted.len() + feed_events.len());
    let mut states: Vec<(AccountId, String)> = Vec::with_capacity(emitted.len());
    for e in emitted {
        // The shared view holds the ratio's state; a distance event's `state` is the
        // distance state (its own machine), which the view does not show.
        let ratio_event = e
            .event
            .level_type
            .is_none_or(|t| t == crate::model::LevelType::MarginRatio);
        if let Some(s) = e.event.state.as_ref().filter(|_| ratio_event) {
            if let Some(old) = view.insert(e.account_id.clone(), s.clone()) {
                counts.adjust(&old, -1);
            }
            counts.adjust(s, 1);
        }
        states.push((e.account_id, e.state_json));
        events.push(e.event);
    }
    events.extend(feed_events);
    (events, states)
}

/// What an update did, as recorded with its id.
fn applied_str(applied: Applied) -> &'static str {
    match applied {
        Applied::Created => "created",
        Applied::Updated => "updated",
        Applied::Removed => "removed",
        Applied::Duplicate => "duplicate",
    }
}

/// Resolves only if the engine task has ended (it never should before shutdown).
pub(super) async fn wait_engine_death(task: &tokio::task::JoinHandle<()>) -> String {
    loop {
        if task.is_finished() {
            return "engine task ended".to_string();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod funding_sources_tests {
    use super::*;

    /// Each source's `apply_funding` switch marks only its own updates; the daemon's own
    /// settlements never mark anything.
    #[test]
    fn each_source_marks_only_its_own_updates() {
        let nats = UpdateOrigin::Nats {
            stream: "s".into(),
            stream_sequence: 1,
            subject: "x".into(),
            published: "t".into(),
        };
        let http_only = FundingSources {
            http: true,
            nats: false,
        };
        assert!(http_only.applies(&UpdateOrigin::Http));
        assert!(!http_only.applies(&nats));
        assert!(!http_only.applies(&UpdateOrigin::Funding));
        let nats_only = FundingSources {
            http: false,
            nats: true,
        };
        assert!(!nats_only.applies(&UpdateOrigin::Http));
        assert!(nats_only.applies(&nats));
        assert!(!FundingSources::default().applies(&UpdateOrigin::Http));
    }
}
