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
pub use machine::{Crossing, transition};
use machine::{level_at, levels, rank_of, state_of};

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::engine::map::{AccountKey, AccountMap, PriceSnapshot, Touched};
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

#[derive(Clone, Debug)]
struct Slot {
    state: AccountState,
    seq: u64,
    /// The distance state ([`distance`]).
    shock: AccountState,
    /// The account had distance levels when last evaluated (the index asks for its bounds).
    has_shock: bool,
    /// Marked liquidated by its trigger ([`AfterTrigger::MarkLiquidated`]): silent until the
    /// account's next update.
    liquidated: bool,
    /// The funding time last warned about ([`MonitorState::funding_warned`]).
    funding_warned: Option<TimestampMs>,
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
    /// The engine prices of the current step, taken once at its first event: every account a
    /// step evaluates is valued at the current prices, so its events share one copy.
    step_prices: Option<Arc<PriceSnapshot>>,
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
            step_prices: None,
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
            return Some(MonitorState {
                state: s.state.clone(),
                seq: s.seq,
                shock_state: s.shock.clone(),
                funding_warned: s.funding_warned,
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
        self.step_prices = None;
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.seen.iter_mut().for_each(|e| *e = 0);
            self.epoch = 1;
        }
        let mut out = Vec::new();
        let mut jobs = Vec::new();
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
        for &at in latest.iter().rev() {
            if let Some(t) = touched.get(at) {
                self.evaluate_one(map, t, prices, now_ms, &mut out, &mut jobs);
            }
        }
        self.latest = latest;
        fill_snapshots(map, &mut out, jobs, prices);
        out
    }

    /// Evaluates one account (after an account update).
    pub fn evaluate_account(
        &mut self,
        map: &AccountMap,
        key: AccountKey,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> Vec<Emitted> {
        self.step_prices = None;
        let mut out = Vec::new();
        let mut jobs = Vec::new();
        // An account update ends a liquidated mark.
        if let Some(Some(slot)) = self.slots.get_mut(key as usize) {
            slot.liquidated = false;
        }
        if let Some(t) = map.materialise(key) {
            self.evaluate_one(map, &t, prices, now_ms, &mut out, &mut jobs);
        }
        fill_snapshots(map, &mut out, jobs, prices);
        out
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
        self.step_prices = None;
        let mut out = Vec::new();
        let mut jobs = Vec::new();
        for k in keys {
            if let Some(t) = map.materialise(k) {
                self.evaluate_one(map, &t, prices, now_ms, &mut out, &mut jobs);
            }
        }
        fill_snapshots(map, &mut out, jobs, prices);
        out
    }

    /// The range of margin ratios in which the account's state cannot change: `ratio ≥ floor`
    /// (recovery needs strictly below `level − hysteresis` of its rank; `None` when healthy) and
    /// `ratio < ceiling` (the next level up; `None` when triggered). `None` when the monitor has
    /// not evaluated the account yet (incomplete, or restored but not seen), so nothing is
    /// known. The distance index ([`crate::engine::index`]) turns it into price bands.
    pub fn quiet_range(&self, map: &AccountMap, key: AccountKey) -> Option<QuietRange> {
        let slot = self.slots.get(key as usize)?.as_ref()?;
        if slot.liquidated {
            // Silent until its next update, whatever the ratio: no bound to wake it for.
            return Some(QuietRange {
                floor: None,
                ceiling: None,
            });
        }
        let custom = map.thresholds_of(key)?;
        let th = custom.as_ref().unwrap_or(&self.cfg.thresholds);
        let r = rank_of(&slot.state, th);
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
            *slot = Some(Slot {
                state: s.state,
                seq: s.seq,
                shock: s.shock_state,
                has_shock: false,
                liquidated: false,
                funding_warned: s.funding_warned,
            });
        }
        slot.as_mut()
    }

    fn evaluate_one(
        &mut self,
        map: &AccountMap,
        t: &Touched,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
        out: &mut Vec<Emitted>,
        jobs: &mut Vec<SnapshotJob>,
    ) {
        if !t.complete {
            return;
        }
        let custom: Option<Thresholds> = if t.custom_thresholds {
            map.read_key(t.key, |v| v.thresholds().cloned()).flatten()
        } else {
            None
        };
        let fast_floor = self.fast_floor;
        let slot_is_healthy = self
            .slots
            .get(t.key as usize)
            .and_then(|s| s.as_ref())
            .is_some_and(|s| s.state == AccountState::Healthy);
        // Fast path: a healthy account far enough below the first level cannot change.
        if custom.is_none()
            && self.fast_path
            && slot_is_healthy
            && t.equity > Decimal::ZERO
            && fast_floor
                .checked_mul(t.equity)
                .is_some_and(|limit| t.maintenance_margin < limit)
        {
            return;
        }
        let ratio = MarginRatio::compute(t.maintenance_margin, t.equity);
        let policy = self.cfg.trigger_on_stale;
        let mark = self.after_trigger == AfterTrigger::MarkLiquidated;
        if self.slot_mut(map, t.key).is_none() {
            return;
        }
        // Disjoint fields: the levels are borrowed, not cloned, while the slot changes.
        let th = custom.as_ref().unwrap_or(&self.cfg.thresholds);
        let Some(Some(slot)) = self.slots.get_mut(t.key as usize) else {
            return;
        };
        if slot.liquidated {
            return;
        }
        let previous = slot.state.clone();
        let (mut new_state, mut crossing) = transition(&previous, ratio, th);
        // The distance machine, only for accounts with distance levels (none by default: then
        // nothing is computed or copied).
        let mut shock_next: Option<AccountState> = None;
        let mut shock_crossing = None;
        slot.has_shock = !th.warn_within_shock.is_empty();
        if slot.has_shock {
            match distance::seen(map, t.key, t.maintenance_margin, ratio, th.trigger) {
                Ok(Some(seen)) => {
                    let (next, c) = distance::transition(&slot.shock, seen, th);
                    shock_next = Some(next);
                    shock_crossing = c;
                }
                // Not valued (cannot happen for a complete account): the state stays.
                Ok(None) => {}
                Err(error) => {
                    metrics::counter!("liqwatch_monitor_shock_errors_total").increment(1);
                    tracing::warn!(key = t.key, %error, "Shock distance failed; the distance state stays");
                }
            }
        } else if slot.shock != AccountState::Healthy {
            // Its distance levels were removed: clear, silently.
            shock_next = Some(AccountState::Healthy);
        }
        if crossing.is_none() && shock_crossing.is_none() {
            slot.state = new_state;
            if let Some(s) = shock_next {
                slot.shock = s;
            }
            return;
        }
        let shock_previous = slot.shock.clone();
        let shock_state = shock_next.unwrap_or_else(|| shock_previous.clone());
        let Some(account_id) = map.read_key(t.key, |v| v.id().clone()) else {
            return;
        };
        let engine_prices = Arc::clone(
            self.step_prices
                .get_or_insert_with(|| Arc::new(map.prices())),
        );
        // The account and the prices it used are read with its snapshot, after this pass (on
        // every core in a large step) — except for a trigger that stale prices may hold,
        // which needs them now.
        let hold_check = policy == StalePolicy::Hold
            && crossing
                .as_ref()
                .is_some_and(|c| c.kind == EventKind::LiquidationTrigger);
        let mut read: Option<(crate::model::Account, Vec<PriceUsed>)> = None;
        if hold_check {
            let Some(account) = map.read_key(t.key, |v| v.to_account()) else {
                return;
            };
            let used = prices_used(&map.instruments(), &account, &engine_prices, prices, now_ms);
            read = Some((account, used));
        }
        let stale = read
            .as_ref()
            .is_some_and(|(_, used)| used.iter().any(|p| p.stale));
        if hold_check && stale {
            metrics::counter!("liqwatch_monitor_held_triggers_total").increment(1);
            tracing::info!(account = %account_id, "Trigger held: a price it depends on is stale");
            let k = th.warning_levels.len();
            let r = rank_of(&previous, th);
            if k == 0 || r >= k {
                new_state = state_of(r, th);
                crossing = None;
            } else {
                crossing = Some(Crossing {
                    kind: EventKind::LiquidationWarning,
                    level: level_at(th, k).unwrap_or(th.trigger),
                    crossed_levels: levels(th).skip(r).take(k - r).collect(),
                });
                new_state = state_of(k, th);
            }
        }
        slot.state = new_state.clone();
        slot.shock = shock_state.clone();
        if crossing
            .as_ref()
            .is_some_and(|c| c.kind == EventKind::LiquidationTrigger)
        {
            slot.liquidated = mark;
        }
        // The ratio's event first (its stored state still has the old distance state), then the
        // distance's: a crash between the two journal writes loses neither.
        let mut steps = Vec::with_capacity(2);
        if let Some(c) = crossing {
            slot.seq += 1;
            let stored = MonitorState {
                state: new_state.clone(),
                seq: slot.seq,
                shock_state: shock_previous.clone(),
                funding_warned: slot.funding_warned,
            };
            steps.push((
                c,
                crate::model::LevelType::MarginRatio,
                previous,
                new_state.clone(),
                stored,
            ));
        }
        if let Some(c) = shock_crossing {
            slot.seq += 1;
            let stored = MonitorState {
                state: new_state.clone(),
                seq: slot.seq,
                shock_state: shock_state.clone(),
                funding_warned: slot.funding_warned,
            };
            steps.push((
                c,
                crate::model::LevelType::ShockDistance,
                shock_previous,
                shock_state,
                stored,
            ));
        }
        if self.time.0 != now_ms {
            self.time = (now_ms, format_rfc3339_ms(now_ms));
        }
        let n = steps.len();
        for (i, (crossing, level_type, previous, state, stored)) in steps.into_iter().enumerate() {
            // One event (the usual case) takes what was read; a second gets a copy.
            let taken = if i + 1 == n {
                read.take()
            } else {
                read.clone()
            };
            let (account, used) = match taken {
                Some((account, used)) => (Some(account), used),
                None => (None, Vec::new()),
            };
            // The snapshot (figures, shock distance, liquidation prices) is what an event costs:
            // it is computed after the state pass, for every event of the step at once, on all
            // cores; the prices the account used are read with it when not read here.
            let state_json = stored.to_json();
            jobs.push(SnapshotJob {
                at: out.len(),
                key: t.key,
                kind: crossing.kind,
                trigger: th.trigger,
                prices: Arc::clone(&engine_prices),
                now_ms,
                read: account.map(|account| Read {
                    funding: funding::rates_for(&account, prices, now_ms),
                    account,
                }),
            });
            out.push(Emitted {
                account_id: account_id.clone(),
                state_json,
                event: RiskEvent {
                    event_id: RiskEvent::new_id(),
                    kind: crossing.kind,
                    time: self.time.1.clone(),
                    time_ms: now_ms,
                    account_id: Some(account_id.clone()),
                    seq: stored.seq,
                    level: Some(crossing.level),
                    crossed_levels: crossing.crossed_levels,
                    level_type: Some(level_type),
                    previous_state: Some(previous),
                    state: Some(state),
                    snapshot: None,
                    stale_prices: used.iter().any(|p| p.stale),
                    prices: used,
                    instrument_change: None,
                    feed: None,
                    risk: None,
                },
            });
        }
    }

    /// The distance levels that bound the account's distance state where it stands, for the
    /// distance index ([`distance::ShockQuiet`]); `None` when the account has no distance
    /// levels (or is marked liquidated, or was not evaluated yet: [`Monitor::quiet_range`] is
    /// `None` then, and the account gets no band anyway).
    pub fn shock_quiet(&self, map: &AccountMap, key: AccountKey) -> Option<distance::ShockQuiet> {
        let slot = self.slots.get(key as usize)?.as_ref()?;
        if !slot.has_shock || slot.liquidated {
            return None;
        }
        let custom = map.thresholds_of(key)?;
        let th = custom.as_ref().unwrap_or(&self.cfg.thresholds);
        distance::quiet(&slot.shock, th)
    }
}

pub mod funding;
mod snapshots; // what an event carries: its snapshot (on every core) and the prices it used
use snapshots::{Read, SnapshotJob, fill_snapshots, prices_used};
#[cfg(test)]
mod tests;
