//! The threshold monitor: a per-account state machine over the margin ratio that turns
//! crossings into [`RiskEvent`]s.
//!
//! # Levels
//! Ordered warning levels `w₁ < … < w_k` (default `[0.8]`) and a trigger `T > w_k` (default
//! 1.0) on `MM / equity`, with one hysteresis `h` (default 0.05); an account may override all
//! three with `Account.thresholds`. The account's *rank* is 0 (healthy), `i` (warning at `wᵢ`) or
//! `k+1` (triggered).
//!
//! # Transitions ([`transition`], pure)
//! - **Up**: when the ratio is at or above a level above the current rank, the account moves to
//!   the highest such level in one step and one event fires: `liquidation_trigger` (level `T`)
//!   when that is the trigger, else `liquidation_warning` (level `wᵢ`). `crossed_levels` lists
//!   every level passed by the move, ascending (healthy → trigger lists `[w₁, …, w_k, T]`).
//! - **Down**: only when the ratio falls strictly below `level − h` of the current rank. The
//!   account drops to the highest lower rank whose `level − h` the ratio still reaches (0 at the
//!   bottom) and one `recovered` event fires with `level` = the lowest level recovered from (so
//!   `recovered` at `w₁` means healthy again) and `crossed_levels` = every level recovered from.
//! - Otherwise nothing: a ratio hovering on or just under a level does not flap.
//! - An infinite ratio (equity ≤ 0 with MM ≠ 0) is at or above every level; an account with no
//!   exposure (MM = 0) has ratio 0 ([`MarginRatio::compute`]).
//! - Incomplete accounts (a price missing) are not evaluated.
//!
//! # Distance levels (`warn_within_shock`)
//! A second state machine per account, on the shock distance to the trigger, with its own
//! state and hysteresis ([`distance`]); its events carry `level_type: shock_distance`. It runs
//! only for accounts with distance levels, after the ratio's, and one evaluation may emit one
//! event of each (the ratio's first). With none configured, the fast path below is unchanged.
//!
//! # Stale prices (`trigger_on_stale`)
//! `fire` (default): a trigger computed from a stale price fires, flagged `stale_prices: true`.
//! `hold`: a trigger whose account uses any stale price is held back — the account moves at most
//! to its highest warning level (emitting that warning if it is a crossing) and the trigger fires
//! on the first evaluation with fresh prices (call [`Monitor::reevaluate_holders`] when an
//! instrument's feed is restored). Warnings and recoveries always fire, flagged when stale.
//!
//! # Persistence
//! The state per account ([`MonitorState`]: the state, the distance state and the last `seq`)
//! is serialisable; every [`Emitted`] event carries the account's new state as JSON so the
//! journal can store both in one transaction. At start, [`Monitor::restore`] takes the stored states, then
//! [`Monitor::evaluate_all`] emits only what changed while the process was down.
//!
//! # Metrics
//! `liqwatch_monitor_events_total{kind}`, `liqwatch_monitor_held_triggers_total`,
//! `liqwatch_monitor_restore_errors_total`, `liqwatch_monitor_snapshot_errors_total`,
//! `liqwatch_monitor_shock_errors_total`.

pub mod distance;
mod machine; // the pure ratio state machine: levels, ranks, `transition`
mod slot; // one account's state machine in 24 bytes
pub use machine::{Crossing, transition};
use machine::{level_at, levels, rank_of};
use slot::{Fields, Slot};

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::engine::map::{AccountKey, AccountMap, Touched};
use crate::engine::par;
use crate::margin;
use crate::model::{
    AccountId, AccountState, EventKind, InstrumentId, MarginRatio, PriceUsed, RiskEvent,
    Thresholds, TimestampMs, format_rfc3339_ms,
};

/// What to do with a trigger computed from a stale price.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StalePolicy {
    /// Fire it, flagged `stale_prices: true`.
    #[default]
    Fire,
    /// Hold it until the prices are fresh again.
    Hold,
}

/// What the monitor does with an account after its `liquidation_trigger`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AfterTrigger {
    /// Keep evaluating it: a bounce recovers it and a new fall triggers again.
    #[default]
    KeepWatching,
    /// Treat it as liquidated: no event for it until its next account update, so a bouncing
    /// price does not recover and re-trigger a book the venue has already closed.
    MarkLiquidated,
}

/// Monitor configuration.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MonitorConfig {
    /// Default levels (overridden per account by `Account.thresholds`).
    pub thresholds: Thresholds,
    /// Policy for triggers computed from stale prices.
    pub trigger_on_stale: StalePolicy,
}

/// The persisted state of one account's state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorState {
    /// Where the account stands.
    #[serde(flatten)]
    pub state: AccountState,
    /// The `seq` of the last event emitted for the account (0: none yet).
    pub seq: u64,
    /// Where the account stands against its distance levels ([`distance`]); left out of the
    /// JSON while healthy, so states stored before distance levels existed read back as they are.
    #[serde(default = "healthy", skip_serializing_if = "is_healthy")]
    pub shock_state: AccountState,
    /// The funding time (ms) the account was last warned about (`warn_before_funding`), so a
    /// restart does not warn about the same settlement again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funding_warned: Option<TimestampMs>,
}

fn healthy() -> AccountState {
    AccountState::Healthy
}

fn is_healthy(s: &AccountState) -> bool {
    *s == AccountState::Healthy
}

impl MonitorState {
    /// The state as JSON, exactly as `serde_json::to_string` writes it (the journal's format),
    /// without going through serde: every event carries one.
    pub fn to_json(&self) -> String {
        // The distance state and the funding warning are rare: serde writes those.
        if self.shock_state != AccountState::Healthy || self.funding_warned.is_some() {
            return serde_json::to_string(self).unwrap_or_default();
        }
        match &self.state {
            AccountState::Healthy => format!(r#"{{"state":"healthy","seq":{}}}"#, self.seq),
            // A Decimal's text is digits, a sign and a point: nothing to escape.
            AccountState::Warning { level } => {
                format!(
                    r#"{{"state":"warning","level":"{level}","seq":{}}}"#,
                    self.seq
                )
            }
            AccountState::Triggered => format!(r#"{{"state":"triggered","seq":{}}}"#, self.seq),
        }
    }
}

impl Default for MonitorState {
    fn default() -> Self {
        MonitorState {
            state: AccountState::Healthy,
            seq: 0,
            shock_state: AccountState::Healthy,
            funding_warned: None,
        }
    }
}

/// Source, age and staleness of the prices the engine uses (the price board implements it).
/// `Sync`: a large step reads it from every core while building its events' snapshots.
pub trait PriceInfo: Sync {
    /// What is known about the instrument's current price, if anything.
    fn price_info(&self, instrument: &InstrumentId) -> Option<PriceUsed>;

    /// The latest funding rate and next funding time of a perpetual, if known (none by
    /// default: sources without funding show no payment and never warn before funding).
    fn funding(&self, _instrument: &InstrumentId) -> Option<margin::funding::FundingRate> {
        None
    }
}

impl PriceInfo for crate::prices::PriceBoard {
    fn price_info(&self, instrument: &InstrumentId) -> Option<PriceUsed> {
        self.composite(instrument).map(|c| c.price_used(instrument))
    }

    fn funding(&self, instrument: &InstrumentId) -> Option<margin::funding::FundingRate> {
        self.funding().get(instrument).map(|e| e.rate)
    }
}

impl PriceInfo for HashMap<InstrumentId, PriceUsed> {
    fn price_info(&self, instrument: &InstrumentId) -> Option<PriceUsed> {
        self.get(instrument).cloned()
    }
}

/// Margin ratios between which an account's monitor state stays put (see
/// [`Monitor::quiet_range`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietRange {
    /// The state holds while `ratio ≥ floor` (`None`: no lower bound).
    pub floor: Option<Decimal>,
    /// The state holds while `ratio < ceiling` (`None`: no upper bound).
    pub ceiling: Option<Decimal>,
}

/// An event with the account's new monitor state, ready for the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    /// The event.
    pub event: RiskEvent,
    /// The account.
    pub account_id: AccountId,
    /// The account's [`MonitorState`] after the event, as JSON (store it with the event).
    pub state_json: String,
}

/// Outcome of [`Monitor::restore`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// States accepted.
    pub restored: usize,
    /// States that could not be read (account id, reason); those accounts start healthy.
    pub rejected: Vec<(AccountId, String)>,
}

/// The monitor. Owned by the engine task (`&mut self`); states are indexed by account key.
pub struct Monitor {
    cfg: MonitorConfig,
    /// A ratio below this (0.1 % under the first level) cannot move a healthy account.
    fast_floor: Decimal,
    /// The default levels have no distance levels, so the fast path above may skip an account.
    fast_path: bool,
    slots: Vec<Option<Slot>>,
    pending: HashMap<AccountId, MonitorState>,
    /// Per key, the last `evaluate` call that saw it (dedup without hashing).
    seen: Vec<u32>,
    epoch: u32,
    /// Scratch space for [`Monitor::evaluate`]: the latest report of each key.
    latest: Vec<usize>,
    after_trigger: AfterTrigger,
    /// The event time of the last step, formatted once (every event of a step shares it).
    time: (TimestampMs, String),
}

impl Monitor {
    /// A monitor with no account state. Errors when the default levels are malformed.
    pub fn new(cfg: MonitorConfig) -> Result<Self, String> {
        cfg.thresholds.validate()?;
        let first = cfg
            .thresholds
            .warning_levels
            .first()
            .copied()
            .unwrap_or(cfg.thresholds.trigger);
        // 0.1 % below the first level: short enough a number that `floor × equity` stays in
        // rust_decimal's fast 96-bit path, far enough that rounding can never matter.
        let fast_floor = first
            .checked_mul(Decimal::new(999, 3))
            .unwrap_or(Decimal::ZERO);
        let fast_path = cfg.thresholds.warn_within_shock.is_empty();
        Ok(Monitor {
            cfg,
            fast_floor,
            fast_path,
            slots: Vec::new(),
            pending: HashMap::new(),
            seen: Vec::new(),
            epoch: 0,
            latest: Vec::new(),
            after_trigger: AfterTrigger::default(),
            time: (0, format_rfc3339_ms(0)),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MonitorConfig {
        &self.cfg
    }

    /// Sets what happens to an account after its trigger (default: keep watching). Marks
    /// are held in memory: after a restart a marked account is watched again.
    pub fn set_after_trigger(&mut self, mode: AfterTrigger) {
        self.after_trigger = mode;
    }

    /// What happens to an account after its trigger.
    pub fn after_trigger(&self) -> AfterTrigger {
        self.after_trigger
    }

    /// Loads persisted states (account id, [`MonitorState`] JSON). They apply to the accounts
    /// as soon as the monitor first sees them; unreadable ones are reported and counted.
    /// Call it once at start, before the first evaluation: it resets any state already held.
    pub fn restore(
        &mut self,
        states: impl IntoIterator<Item = (AccountId, String)>,
    ) -> RestoreReport {
        let mut report = RestoreReport::default();
        for (id, json) in states {
            match serde_json::from_str::<MonitorState>(&json) {
                Ok(s) => {
                    self.pending.insert(id, s);
                    report.restored += 1;
                }
                Err(e) => {
                    metrics::counter!("liqwatch_monitor_restore_errors_total").increment(1);
                    tracing::warn!(account = %id, error = %e, "Unreadable monitor state; the account starts healthy");
                    report.rejected.push((id, e.to_string()));
                }
            }
        }
        // States already attached to keys are replaced by the restored ones.
        self.slots.clear();
        report
    }

    /// The current state of an account, if the monitor has seen it (or has it restored).
    pub fn state(&self, map: &AccountMap, id: &AccountId) -> Option<MonitorState> {
        if let Some(s) = map
            .key_of(id)
            .and_then(|k| self.slots.get(k as usize))
            .and_then(|s| s.as_ref())
        {
            let f = s.fields();
            return Some(MonitorState {
                state: f.state,
                seq: f.seq,
                shock_state: f.shock,
                funding_warned: f.funding_warned,
            });
        }
        self.pending.get(id).cloned()
    }

    /// Moves an account's state to a new key (a removal that was undone re-creates the account
    /// under a new key).
    pub fn rekey(&mut self, from: AccountKey, to: AccountKey) {
        let Some(slot) = self.slots.get_mut(from as usize).and_then(Option::take) else {
            return;
        };
        let i = to as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some(slot);
        }
    }

    /// Drops an account's state (call after it was removed from the map).
    pub fn forget(&mut self, key: AccountKey, id: &AccountId) {
        if let Some(s) = self.slots.get_mut(key as usize) {
            *s = None;
        }
        self.pending.remove(id);
    }

    /// Evaluates the accounts reported by one or more ticks (in the order the ticks were
    /// applied). An account reported several times is evaluated once, on its latest report, so
    /// a burst of prices applied together moves each account in one step. Returns the events.
    ///
    /// A report carries the figures as of its tick: evaluate it before the account changes
    /// again through another path (an account update), or use [`Monitor::evaluate_account`],
    /// which reads the current figures.
    pub fn evaluate(
        &mut self,
        map: &AccountMap,
        touched: &[Touched],
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> Vec<Emitted> {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.seen.iter_mut().for_each(|e| *e = 0);
            self.epoch = 1;
        }
        // The latest report of each key (walking backwards), then evaluated in report order, so
        // the events of one account (ratio, then distance) keep their order.
        let mut latest = std::mem::take(&mut self.latest);
        latest.clear();
        for (at, t) in touched.iter().enumerate().rev() {
            let i = t.key as usize;
            if self.seen.len() <= i {
                self.seen.resize(i + 1, 0);
            }
            match self.seen.get_mut(i) {
                Some(e) if *e == self.epoch => continue,
                Some(e) => *e = self.epoch,
                None => continue,
            }
            latest.push(at);
        }
        let reports: Vec<&Touched> = latest
            .iter()
            .rev()
            .filter_map(|&at| touched.get(at))
            .collect();
        self.latest = latest;
        self.run(map, &reports, prices, now_ms)
    }

    /// Evaluates one account (after an account update).
    pub fn evaluate_account(
        &mut self,
        map: &AccountMap,
        key: AccountKey,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> Vec<Emitted> {
        // An account update ends a liquidated mark.
        if let Some(Some(slot)) = self.slots.get_mut(key as usize)
            && slot.liquidated()
        {
            slot.update(|f| f.liquidated = false);
        }
        match map.materialise(key) {
            Some(t) => self.run(map, &[&t], prices, now_ms),
            None => Vec::new(),
        }
    }

    /// Evaluates every account (at start, after [`Monitor::restore`]).
    pub fn evaluate_all(
        &mut self,
        map: &AccountMap,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> Vec<Emitted> {
        self.evaluate_keys(map, map.keys(), prices, now_ms)
    }

    /// Re-evaluates every holder of an instrument (e.g. when its feed is restored, so a held
    /// trigger fires even if the price did not change).
    pub fn reevaluate_holders(
        &mut self,
        map: &AccountMap,
        instrument: &InstrumentId,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> Vec<Emitted> {
        self.evaluate_keys(map, map.holder_keys(instrument), prices, now_ms)
    }

    /// Brings `keys` to the current prices and evaluates them, in key order.
    fn evaluate_keys(
        &mut self,
        map: &AccountMap,
        mut keys: Vec<AccountKey>,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> Vec<Emitted> {
        keys.sort_unstable();
        // Valued on every core when there are many (the first step after a start values the
        // whole book), in key order.
        let reports: Vec<Touched> = map.materialise_many(&keys).into_iter().flatten().collect();
        let reports: Vec<&Touched> = reports.iter().collect();
        self.run(map, &reports, prices, now_ms)
    }

    /// Evaluates `reports` (each key once, in this order) and builds their events' snapshots.
    /// When there are many and their keys ascend (a step's woken accounts), the accounts are
    /// split into runs of consecutive keys that every core takes in turn, each evaluating its
    /// run in its own slots and building its events' snapshots; the runs' events are then put
    /// together in key order, so the events, their order and the states are exactly those of
    /// one thread's pass.
    fn run(
        &mut self,
        map: &AccountMap,
        reports: &[&Touched],
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> Vec<Emitted> {
        // Every complete account gets its slot first (a restored state leaves `pending` here),
        // so that evaluating one needs its own slot only.
        for t in reports.iter().filter(|t| t.complete) {
            self.slot_mut(map, t.key);
        }
        let pass = Pass {
            map,
            prices,
            now_ms,
            cfg: &self.cfg,
            fast_floor: self.fast_floor,
            fast_path: self.fast_path,
            mark: self.after_trigger == AfterTrigger::MarkLiquidated,
            cached_time: &self.time,
            time: OnceLock::new(),
            step_prices: OnceLock::new(),
        };
        let ascending = reports
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.key < b.key));
        let out = if reports.len() >= PARALLEL_STATES && ascending && par::threads() >= 2 {
            run_parallel(&pass, &mut self.slots, reports)
        } else {
            // Sized for an event per report (a crash: growing a vector of events copies them),
            // up to a bound (a big eager tick reports every holder and emits few events).
            let mut out = Vec::with_capacity(reports.len().min(EVENTS_RESERVED));
            let mut jobs = Vec::with_capacity(reports.len().min(EVENTS_RESERVED));
            for t in reports {
                if let Some(slot) = self.slots.get_mut(t.key as usize) {
                    pass.evaluate(slot, t, &mut out, &mut jobs);
                }
            }
            fill_snapshots(map, &mut out, jobs, prices);
            out
        };
        if let Some(text) = pass.time.into_inner() {
            self.time = (now_ms, text);
        }
        out
    }

    /// The range of margin ratios in which the account's state cannot change: `ratio ≥ floor`
    /// (recovery needs strictly below `level − hysteresis` of its rank; `None` when healthy) and
    /// `ratio < ceiling` (the next level up; `None` when triggered). `None` when the monitor has
    /// not evaluated the account yet (incomplete, or restored but not seen), so nothing is
    /// known. The distance index ([`crate::engine::index`]) turns it into price bands.
    pub fn quiet_range(&self, map: &AccountMap, key: AccountKey) -> Option<QuietRange> {
        let slot = self.slots.get(key as usize)?.as_ref()?;
        if slot.liquidated() {
            // Silent until its next update, whatever the ratio: no bound to wake it for.
            return Some(QuietRange {
                floor: None,
                ceiling: None,
            });
        }
        let custom = map.thresholds_of(key)?;
        let th = custom.as_ref().unwrap_or(&self.cfg.thresholds);
        let r = rank_of(&slot.state(), th);
        let floor = if r == 0 {
            None
        } else {
            level_at(th, r).map(|l| l.checked_sub(th.hysteresis).unwrap_or(l))
        };
        Some(QuietRange {
            floor,
            ceiling: level_at(th, r + 1),
        })
    }

    fn slot_mut(&mut self, map: &AccountMap, key: AccountKey) -> Option<&mut Slot> {
        let i = key as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        let restored = match self.slots.get(i) {
            Some(Some(_)) => None,
            _ if self.pending.is_empty() => Some(MonitorState::default()),
            _ => {
                let id = map.read_key(key, |v| v.id().clone());
                Some(
                    id.and_then(|id| self.pending.remove(&id))
                        .unwrap_or_default(),
                )
            }
        };
        let slot = self.slots.get_mut(i)?;
        if let Some(s) = restored {
            *slot = Some(Slot::new(Fields {
                state: s.state,
                seq: s.seq,
                shock: s.shock_state,
                has_shock: false,
                liquidated: false,
                funding_warned: s.funding_warned,
            }));
        }
        slot.as_mut()
    }

    /// The distance levels that bound the account's distance state where it stands, for the
    /// distance index ([`distance::ShockQuiet`]); `None` when the account has no distance
    /// levels (or is marked liquidated, or was not evaluated yet: [`Monitor::quiet_range`] is
    /// `None` then, and the account gets no band anyway).
    pub fn shock_quiet(&self, map: &AccountMap, key: AccountKey) -> Option<distance::ShockQuiet> {
        let slot = self.slots.get(key as usize)?.as_ref()?;
        if !slot.has_shock() || slot.liquidated() {
            return None;
        }
        let custom = map.thresholds_of(key)?;
        let th = custom.as_ref().unwrap_or(&self.cfg.thresholds);
        distance::quiet(&slot.shock(), th)
    }
}

/// Accounts in one evaluation from which the state pass runs on every core.
const PARALLEL_STATES: usize = crate::engine::par::PARALLEL_MIN;

/// Runs of consecutive accounts per thread in a parallel pass: enough for the threads to even
/// out (the events cluster where the thin accounts are), few enough to cost nothing.
const RUNS_PER_THREAD: usize = 8;

/// Parallel passes run so far (the tests check that a large step takes that path).
#[cfg(test)]
static PARALLEL_PASSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One run of a parallel pass: its reports, its slots (from its first key to its last) and its
/// first key.
type Run<'r, 's> = (&'r [&'r Touched], &'s mut [Option<Slot>], usize);

/// Events a state pass makes room for at once (see [`Monitor::run`]).
const EVENTS_RESERVED: usize = 4_096;

/// The parallel state pass of [`Monitor::run`]: `reports` (keys ascending) split into runs,
/// each run evaluated in its own slots and its events' snapshots built by the thread that took
/// it; the events come back in key order.
fn run_parallel(pass: &Pass<'_>, slots: &mut [Option<Slot>], reports: &[&Touched]) -> Vec<Emitted> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[cfg(test)]
    PARALLEL_PASSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let threads = par::threads();
    let run_len = reports.len().div_ceil(threads * RUNS_PER_THREAD).max(1);
    // Each run's slots: the slice from its first key to its last (keys ascend, so the slices
    // are disjoint).
    let mut runs: Vec<Mutex<Option<Run<'_, '_>>>> = Vec::new();
    let mut rest = slots;
    let mut base = 0usize;
    for run in reports.chunks(run_len) {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            continue;
        };
        let (lo, hi) = (first.key as usize, last.key as usize);
        let taken = std::mem::take(&mut rest);
        let Some((_, from_lo)) = taken.split_at_mut_checked(lo.saturating_sub(base)) else {
            break;
        };
        let (mine, after) = from_lo.split_at_mut(from_lo.len().min(hi + 1 - lo));
        rest = after;
        base = hi + 1;
        runs.push(Mutex::new(Some((run, mine, lo))));
    }
    // Read once for every run: the engine's prices and what the board says of them.
    let step_prices = Arc::clone(pass.step_prices.get_or_init(|| Arc::new(pass.map.prices())));
    let info = snapshots::StepInfo::read(pass.prices, &step_prices);
    let table = pass.map.instruments();
    let done: Vec<Mutex<Vec<Emitted>>> = runs.iter().map(|_| Mutex::new(Vec::new())).collect();
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(run) = runs.get(i) else { break };
            let Some((run, mine, lo)) = run.lock().ok().and_then(|mut r| r.take()) else {
                continue;
            };
            let (mut out, mut jobs) =
                (Vec::with_capacity(run.len()), Vec::with_capacity(run.len()));
            for t in run {
                if let Some(slot) = mine.get_mut(t.key as usize - lo) {
                    pass.evaluate(slot, t, &mut out, &mut jobs);
                }
            }
            snapshots::fill_here(pass.map, &table, &mut out, jobs, &info);
            if let Some(d) = done.get(i)
                && let Ok(mut d) = d.lock()
            {
                *d = out;
            }
        }
    };
    par::on_threads(threads, work);
    let mut out = Vec::with_capacity(
        done.iter()
            .filter_map(|d| d.lock().ok())
            .map(|d| d.len())
            .sum(),
    );
    for d in done {
        out.append(&mut d.into_inner().unwrap_or_else(|p| p.into_inner()));
    }
    out
}

pub mod funding;
mod pass; // the state pass over one account's slot
use pass::Pass;
mod snapshots; // what an event carries: its snapshot (on every core) and the prices it used
use snapshots::{Read, SnapshotJob, fill_snapshots, prices_used};
#[cfg(test)]
mod tests;
