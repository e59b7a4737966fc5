//! The scheduled scenario-risk task (`[risk]` in the daemon): records the engine's prices into
//! the journal, recomputes every account's VaR/ES/P(liquidation) every `[risk] every` (and the
//! changed accounts, debounced, after account updates), keeps the results in the
//! [`RiskStore`], publishes the gauges and journals `risk_warning` / `recovered` events.
//!
//! It reads the account map through its public accessors (clones of accounts, the engine's
//! current prices) and computes on the blocking pool over both cores, so the engine's hot path
//! never waits for it. It is a source-side task: it stops when the sources' token is cancelled,
//! after journaling what its recompute in flight found (a full recompute is cut between chunks).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rust_decimal::Decimal;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::risk::RiskSettings;
use crate::engine::AccountMap;
use crate::journal::Journal;
use crate::model::{
    AccountId, EventKind, LevelType, PriceUsed, RiskEvent, RiskFigures, format_rfc3339_ms, now_ms,
};
use crate::prices::PriceBoard;
use crate::risk::schedule::DEBOUNCE;
use crate::risk::store::{RiskStore, StoredRisk};
use crate::risk::warnings::{WarnState, step};
use crate::risk::{AccountRisk, RiskBook};

/// Accounts changed since their last recompute (filled by the API and NATS writers). Each
/// change gets a generation, so a change that arrives while its account is being recomputed
/// stays pending for the next pass.
#[derive(Default)]
pub(crate) struct RiskChanges {
    ids: Mutex<(u64, HashMap<AccountId, u64>)>,
    notify: Notify,
}

impl RiskChanges {
    /// Notes that an account changed (created, updated or removed).
    pub fn changed(&self, id: &AccountId) {
        let mut g = self.ids.lock();
        g.0 += 1;
        let generation = g.0;
        g.1.insert(id.clone(), generation);
        drop(g);
        self.notify.notify_one();
    }

    /// True when the account changed after its last recompute (its stored result is old).
    pub fn pending(&self, id: &AccountId) -> bool {
        self.ids.lock().1.contains_key(id)
    }

    /// The pending changes, left pending until [`RiskChanges::done`].
    fn snapshot(&self) -> Vec<(AccountId, u64)> {
        self.ids
            .lock()
            .1
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Clears the changes a recompute has absorbed (unless they changed again since).
    fn done(&self, taken: &[(AccountId, u64)]) {
        let mut g = self.ids.lock();
        for (id, generation) in taken {
            if g.1.get(id) == Some(generation) {
                g.1.remove(id);
            }
        }
    }
}

/// Accounts valued per chunk of a recompute (the task checks for shutdown between chunks).
const CHUNK: usize = 4096;

/// The task's inputs.
pub(crate) struct RiskTask {
    pub settings: Arc<RiskSettings>,
    pub map: Arc<AccountMap>,
    pub board: Arc<PriceBoard>,
    pub journal: Arc<Journal>,
    pub store: Arc<RiskStore>,
    pub changes: Arc<RiskChanges>,
    /// The configured trigger (changes on a SIGHUP reload).
    pub default_trigger: Arc<RwLock<Decimal>>,
}

/// What one recompute found.
struct Computed {
    results: Vec<(AccountId, Result<AccountRisk, String>)>,
    /// Ids asked for that are no longer in the map.
    gone: Vec<AccountId>,
    at_ms: i64,
    /// False when shutdown cut the pass short (then nothing is inferred from what is missing).
    complete: bool,
}

fn ms_of(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl RiskTask {
    /// Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        Arc::new(self).run_shared(cancel).await;
    }

    async fn run_shared(self: Arc<Self>, cancel: CancellationToken) {
        let mut states = self.load_states().await;
        let sched = self.settings.cfg.schedule.clone();
        let record_ms = ms_of(sched.record_every);
        let recording = self.settings.uses_recorded();
        let mut next_full = tokio::time::Instant::now();
        let mut next_record = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(next_record), if recording => {
                    self.record(record_ms, ms_of(sched.record_keep)).await;
                    // The next sample at the next multiple of record_every (wall clock), so
                    // every instrument's samples share timestamps.
                    let now = now_ms();
                    let wait = record_ms - now.rem_euclid(record_ms);
                    next_record = tokio::time::Instant::now()
                        + Duration::from_millis(u64::try_from(wait).unwrap_or(1));
                }
                _ = tokio::time::sleep_until(next_full) => {
                    self.refresh_set().await;
                    let ids = self.map.account_ids();
                    self.recompute(ids, true, &mut states, &cancel).await;
                    next_full = tokio::time::Instant::now() + sched.every;
                }
                _ = self.changes.notify.notified() => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(DEBOUNCE) => {}
                    }
                    let taken = self.changes.snapshot();
                    if !taken.is_empty() {
                        let ids = taken.iter().map(|(id, _)| id.clone()).collect();
                        self.recompute(ids, false, &mut states, &cancel).await;
                        self.changes.done(&taken);
                    }
                }
            }
        }
        tracing::debug!("Risk task stopped");
    }

    async fn load_states(&self) -> HashMap<AccountId, WarnState> {
        let j = Arc::clone(&self.journal);
        let rows = match tokio::task::spawn_blocking(move || j.load_risk_states()).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(error)) => {
                tracing::error!(%error, "Cannot read risk-warning states: warnings start from clear");
                Vec::new()
            }
            Err(error) => {
                tracing::error!(%error, "Risk-warning state load failed");
                Vec::new()
            }
        };
        let mut out = HashMap::with_capacity(rows.len());
        for (id, json) in rows {
            match serde_json::from_str::<WarnState>(&json) {
                Ok(s) => {
                    out.insert(id, s);
                }
                Err(error) => {
                    metrics::counter!("liqwatch_risk_state_errors_total").increment(1);
                    tracing::warn!(account_id = %id, %error, "Unreadable risk-warning state: this account's warnings start from clear");
                }
            }
        }
        out
    }

    /// One sample per priced instrument at the current multiple of `record_ms`.
    async fn record(&self, record_ms: i64, keep_ms: i64) {
        let now = now_ms();
        let at = now - now.rem_euclid(record_ms);
        let mut prices: Vec<(String, Decimal)> = self
            .map
            .prices()
            .0
            .into_iter()
            .map(|(i, p)| (i.as_str().to_string(), p))
            .collect();
        if prices.is_empty() {
            return;
        }
        prices.sort();
        let j = Arc::clone(&self.journal);
        let n = prices.len();
        match tokio::task::spawn_blocking(move || j.record_prices(at, &prices, now - keep_ms)).await
        {
            Ok(Ok(_)) => {
                metrics::counter!("liqwatch_risk_recorded_prices_total").increment(n as u64);
            }
            Ok(Err(error)) => tracing::warn!(%error, "Cannot record prices into the journal"),
            Err(error) => tracing::warn!(%error, "Price recording failed"),
        }
    }

    /// Rebuilds the scenario set with the recorded samples (when `history` lists them).
    async fn refresh_set(&self) {
        if self.settings.uses_recorded() {
            let j = Arc::clone(&self.journal);
            let keep = ms_of(self.settings.cfg.schedule.record_keep);
            let s = Arc::clone(&self.settings);
            let r = tokio::task::spawn_blocking(move || {
                let rows = j
                    .recorded_prices(now_ms() - keep)
                    .map_err(|e| e.to_string())?;
                s.rebuild(&rows)
            })
            .await;
            match r {
                Ok(Ok(n)) => tracing::debug!(scenarios = n, "Scenario set rebuilt"),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "Scenario set not rebuilt; keeping the previous one")
                }
                Err(error) => tracing::warn!(%error, "Scenario set rebuild failed"),
            }
        }
        let n = self.settings.set().map_or(0, |s| s.len());
        metrics::gauge!("liqwatch_risk_scenarios").set(n as f64);
    }

    async fn recompute(
        self: &Arc<Self>,
        ids: Vec<AccountId>,
        full: bool,
        states: &mut HashMap<AccountId, WarnState>,
        cancel: &CancellationToken,
    ) {
        let Some(set) = self.settings.set() else {
            return;
        };
        let started = std::time::Instant::now();
        let settings = Arc::clone(&self.settings);
        let map = Arc::clone(&self.map);
        let trigger = *self.default_trigger.read();
        let stop = cancel.clone();
        let computed = tokio::task::spawn_blocking(move || {
            let prices = map.prices().to_std();
            let at_ms = now_ms();
            let mut out = Computed {
                results: Vec::with_capacity(ids.len()),
                gone: Vec::new(),
                at_ms,
                complete: false,
            };
            let mut book = match RiskBook::new(&settings.instruments, &prices, &set, settings.alpha)
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "Risk recompute skipped");
                    return out;
                }
            };
            book.default_trigger = trigger;
            for chunk in ids.chunks(CHUNK) {
                if stop.is_cancelled() {
                    return out;
                }
                let mut accounts = Vec::with_capacity(chunk.len());
                for id in chunk {
                    match map.account(id) {
                        Some(a) => accounts.push(a),
                        None => out.gone.push(id.clone()),
                    }
                }
                for (a, r) in accounts.iter().zip(book.accounts(&accounts, 0)) {
                    out.results
                        .push((a.id.clone(), r.map_err(|e| e.to_string())));
                }
            }
            out
        })
        .await;
        let computed = match computed {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "Risk recompute failed");
                return;
            }
        };
        let label = if full { "schedule" } else { "change" };
        metrics::histogram!("liqwatch_risk_recompute_seconds", "source" => label)
            .record(started.elapsed().as_secs_f64());
        // Storing, warnings and gauges walk every result: on the blocking pool too.
        let this = Arc::clone(self);
        let mut moved = std::mem::take(states);
        match tokio::task::spawn_blocking(move || {
            this.absorb(computed, full, &mut moved);
            moved
        })
        .await
        {
            Ok(back) => *states = back,
            Err(error) => {
                tracing::error!(%error, "Risk results not absorbed; warning states reloaded");
                *states = self.load_states().await;
            }
        }
    }

    /// Stores the results, journals the warnings they cause and updates the gauges.
    fn absorb(&self, c: Computed, full: bool, states: &mut HashMap<AccountId, WarnState>) {
        let sched = &self.settings.cfg.schedule;
        let mut events = Vec::new();
        let mut persist: Vec<(AccountId, Option<String>)> = Vec::new();
        let mut failed = 0usize;
        let mut seen: HashSet<AccountId> = HashSet::with_capacity(c.results.len());
        for (id, r) in c.results {
            seen.insert(id.clone());
            match r {
                Ok(risk) => {
                    let stored = StoredRisk::new(risk, c.at_ms, "scheduled");
                    let before = states.get(&id).cloned().unwrap_or_default();
                    let mut st = before.clone();
                    self.warn(&mut st, &stored, &mut events);
                    if st != before {
                        persist.push((id.clone(), serde_json::to_string(&st).ok()));
                        states.insert(id.clone(), st);
                    }
                    self.store.put(stored);
                }
                Err(error) => {
                    failed += 1;
                    tracing::debug!(account_id = %id, %error, "Account risk not computed");
                    self.store.remove(&id);
                }
            }
        }
        let mut gone = c.gone;
        if full && c.complete {
            // Entries of accounts removed between recomputes.
            gone.extend(self.store.ids().into_iter().filter(|id| !seen.contains(id)));
            metrics::gauge!("liqwatch_risk_accounts_failed").set(failed as f64);
            metrics::gauge!("liqwatch_risk_last_recompute_timestamp_seconds")
                .set(c.at_ms as f64 / 1000.0);
        }
        for id in gone {
            self.store.remove(&id);
            if states.remove(&id).is_some() {
                persist.push((id, None));
            }
        }
        metrics::gauge!("liqwatch_risk_accounts").set(self.store.len() as f64);
        let p = &sched.warn_p_liquidation;
        for (l, n) in p.iter().zip(
            self.store
                .count_at_or_above(p, |s| Some(s.risk.p_liquidation)),
        ) {
            metrics::gauge!("liqwatch_risk_accounts_p_liquidation_above", "level" => l.to_string())
                .set(n as f64);
        }
        let es = &sched.warn_es_to_equity;
        for (l, n) in es
            .iter()
            .zip(self.store.count_at_or_above(es, StoredRisk::es_to_equity))
        {
            metrics::gauge!("liqwatch_risk_accounts_es_to_equity_above", "level" => l.to_string())
                .set(n as f64);
        }
        if events.is_empty() && persist.is_empty() {
            return;
        }
        for e in &events {
            metrics::counter!("liqwatch_monitor_events_total", "kind" => e.kind.as_str())
                .increment(1);
            tracing::info!(
                account_id = %e.account_id.as_ref().map(|a| a.as_str()).unwrap_or(""),
                kind = e.kind.as_str(),
                level_type = e.level_type.map(|t| t.as_str()).unwrap_or(""),
                level = %e.level.unwrap_or_default(),
                "Risk level crossed"
            );
        }
        match self.journal.append_risk(&events, &persist) {
            Ok(_) => {}
            Err(error @ crate::journal::JournalError::Buffered { .. }) => {
                tracing::warn!(%error, "Risk events held in memory until the journal writes again")
            }
            Err(error) => tracing::error!(%error, "Risk events could not be journaled"),
        }
    }

    /// Steps both level types; pushes an event per edge.
    fn warn(&self, st: &mut WarnState, s: &StoredRisk, events: &mut Vec<RiskEvent>) {
        let sched = &self.settings.cfg.schedule;
        for (lt, levels, value) in [
            (
                LevelType::PLiquidation,
                &sched.warn_p_liquidation,
                Some(s.risk.p_liquidation),
            ),
            (
                LevelType::EsToEquity,
                &sched.warn_es_to_equity,
                s.es_to_equity(),
            ),
        ] {
            let Some(slot) = st.slot(lt) else { continue };
            let (now, edge) = step(levels, sched.warn_hysteresis, *slot, value);
            *slot = now;
            if let Some(edge) = edge {
                st.seq += 1;
                events.push(self.event(s, lt, edge.kind, edge.level, edge.crossed, st.seq));
            }
        }
    }

    fn event(
        &self,
        s: &StoredRisk,
        lt: LevelType,
        kind: EventKind,
        level: Decimal,
        crossed: Vec<Decimal>,
        seq: u64,
    ) -> RiskEvent {
        let r = &s.risk;
        let id = r.account.clone();
        let mut prices: Vec<PriceUsed> = Vec::new();
        for c in &r.components {
            if prices.iter().any(|p| p.instrument == c.instrument) {
                continue;
            }
            if let Some(p) = self.board.composite(&c.instrument) {
                prices.push(p.price_used(&c.instrument));
            }
        }
        let now = now_ms();
        RiskEvent {
            event_id: RiskEvent::new_id(),
            kind,
            time: format_rfc3339_ms(now),
            time_ms: now,
            account_id: Some(id.clone()),
            seq,
            level: Some(level),
            crossed_levels: crossed,
            level_type: Some(lt),
            previous_state: None,
            state: None,
            snapshot: self.map.snapshot(&id, r.trigger).ok().map(Box::new),
            stale_prices: prices.iter().any(|p| p.stale),
            prices,
            feed: None,
            instrument_change: None,
            risk: Some(Box::new(RiskFigures {
                equity: r.equity,
                var: r.var,
                es: r.es,
                es_to_equity: s.es_to_equity(),
                p_liquidation: r.p_liquidation,
                liquidating_scenarios: r.liquidating_scenarios,
                scenarios: r.scenarios,
                alpha: r.alpha,
                horizon: self.settings.cfg.horizon.0.clone(),
                computed_at: s.computed_at.clone(),
            })),
        }
    }
}
