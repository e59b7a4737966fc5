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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::engine::{Emitted, Engine, PendingUpdate, UpdateOutcome};
use crate::journal::Journal;
use crate::model::{AccountId, AccountState, AccountUpdate, InstrumentId, RiskEvent, now_ms};
use crate::prices::{Composite, PriceBoard};
use crate::sources::{Applied, ApplyError, UpdateOrigin};

/// A request to the engine task.
pub(crate) enum EngineRequest {
    /// An account update from the API or NATS; answered once applied and persisted.
    Update {
        update: AccountUpdate,
        origin: UpdateOrigin,
        reply: oneshot::Sender<Result<Applied, ApplyError>>,
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
    /// Highest NATS stream sequence applied, per stream (redeliveries in this process).
    pub nats_seen: HashMap<String, u64>,
    /// Accounts per monitor state, for `liqwatch_accounts_by_state`.
    pub state_counts: StateCounts,
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
            tokio::select! {
                biased;
                changed = board.changed() => {
                    let woke = std::time::Instant::now();
                    self.on_prices(changed, woke).await;
                }
                Some(req) = requests.recv() => self.on_request(req).await,
                _ = stale_tick.tick() => {
                    self.on_staleness().await;
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

    async fn on_prices(
        &mut self,
        changed: Vec<(InstrumentId, Composite)>,
        woke: std::time::Instant,
    ) {
        let oldest_rx = changed.iter().map(|(_, c)| c.received_at).min();
        let emitted = self.engine.on_prices(
            changed.iter().map(|(i, c)| (i, c.price)),
            &*self.board,
            now_ms(),
        );
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
        // Staleness is watched only for held (or explicitly watched) instruments.
        self.board.set_held(self.engine.map().held_instruments());
        let transitions = self.board.check_staleness(tokio::time::Instant::now());
        if transitions.is_empty() {
            return;
        }
        for t in &transitions {
            tracing::warn!(instrument = %t.info.instrument, kind = %t.kind, "Feed staleness changed");
        }
        let step = self.engine.on_feed(&transitions, &*self.board, now_ms());
        self.commit(step.emitted, step.feed_events).await;
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
            && self
                .nats_seen
                .get(stream)
                .is_some_and(|s| *stream_sequence <= *s)
        {
            return Ok(Applied::Duplicate);
        }
        let pending = self.engine.begin_update(update).map_err(|e| match e {
            crate::engine::AccountError::UnknownAccount(id) => ApplyError::NotFound(id),
            other => ApplyError::Invalid {
                field: "account".into(),
                message: other.to_string(),
            },
        })?;
        // Persist before answering; revert on failure so memory and store agree.
        if let Err(reason) = self.persist(&pending).await {
            let id = pending.account_id().clone();
            if let Err(e) = self.engine.revert(pending) {
                tracing::error!(account = %id, error = %e, "Could not undo an update that failed to persist");
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
        let applied = match pending.outcome() {
            UpdateOutcome::Created(_) => Applied::Created,
            UpdateOutcome::Updated(_) => Applied::Updated,
            UpdateOutcome::Removed(_) => Applied::Removed,
        };
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

    /// Writes the account as the map now has it (or deletes it) to the journal's store.
    async fn persist(&self, pending: &PendingUpdate) -> Result<(), String> {
        let j = Arc::clone(&self.journal);
        let id = pending.account_id().clone();
        let write = match pending.outcome() {
            UpdateOutcome::Removed(_) => tokio::task::spawn_blocking(move || {
                j.delete_account(&id).map(|_| ()).map_err(|e| e.to_string())
            }),
            _ => {
                let json = match self
                    .engine
                    .map()
                    .account(&id)
                    .map(|a| serde_json::to_string(&a))
                {
                    Some(Ok(json)) => json,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("account vanished".into()),
                };
                tokio::task::spawn_blocking(move || {
                    j.upsert_accounts(&[(id, json)]).map_err(|e| e.to_string())
                })
            }
        };
        write.await.map_err(|e| e.to_string()).and_then(|r| r)
    }

    /// Journals account events (with their monitor states) and feed events in one transaction.
    /// Sinks and the live stream read them from the journal.
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

/// Resolves only if the engine task has ended (it never should before shutdown).
pub(super) async fn wait_engine_death(task: &tokio::task::JoinHandle<()>) -> String {
    loop {
        if task.is_finished() {
            return "engine task ended".to_string();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
