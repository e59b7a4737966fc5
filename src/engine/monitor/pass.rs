//! The state pass: one account's transitions on the figures of its report, and the events
//! they emit — over that account's own slot, so that a large step (a correlated move) runs
//! it on every core, each thread on its own accounts, with the events in key order whatever
//! the split (see [`Monitor::evaluate`]).

use std::sync::{Arc, OnceLock};

use rust_decimal::Decimal;

use super::machine::{level_at, levels, rank_of, state_of};
use super::slot::Fields;
use super::snapshots::{Change, Read, SnapshotJob, prices_used, push_event};
use super::{
    AccountState, Crossing, Emitted, EventKind, MarginRatio, MonitorConfig, MonitorState,
    PriceInfo, Slot, StalePolicy, Thresholds, distance, funding, transition,
};
use crate::engine::map::{AccountMap, PriceSnapshot, Touched};
use crate::model::{PriceUsed, TimestampMs, format_rfc3339_ms};

/// What every account of one evaluation shares: the levels and policies, the clock, and — made
/// once, at the first event, by whichever thread gets there — the event time's text and the
/// engine's prices.
pub(super) struct Pass<'a> {
    pub(super) map: &'a AccountMap,
    pub(super) prices: &'a dyn PriceInfo,
    pub(super) now_ms: TimestampMs,
    pub(super) cfg: &'a MonitorConfig,
    /// A ratio below this cannot move a healthy account ([`Monitor`](super::Monitor)).
    pub(super) fast_floor: Decimal,
    pub(super) fast_path: bool,
    /// Triggered accounts are marked liquidated ([`super::AfterTrigger::MarkLiquidated`]).
    pub(super) mark: bool,
    /// The last step's event time and its text (reused when the clock has not moved).
    pub(super) cached_time: &'a (TimestampMs, String),
    pub(super) time: OnceLock<String>,
    pub(super) step_prices: OnceLock<Arc<PriceSnapshot>>,
}

impl Pass<'_> {
    /// Evaluates one account on the figures of its report, in its own slot: its transitions,
    /// its events (into `out`) and what their snapshots need (into `jobs`). `slot` must exist
    /// for a complete account ([`Monitor::run`](super::Monitor) makes them first).
    pub(super) fn evaluate(
        &self,
        slot: &mut Option<Slot>,
        t: &Touched,
        out: &mut Vec<Emitted>,
        jobs: &mut Vec<SnapshotJob>,
    ) {
        let map = self.map;
        if !t.complete {
            return;
        }
        let custom: Option<Thresholds> = if t.custom_thresholds {
            map.thresholds_of(t.key).flatten()
        } else {
            None
        };
        let fast_floor = self.fast_floor;
        let slot_is_healthy = slot.as_ref().is_some_and(|s| s.is_healthy());
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
        let th = custom.as_ref().unwrap_or(&self.cfg.thresholds);
        let Some(slot) = slot.as_mut() else {
            return;
        };
        if slot.liquidated() {
            return;
        }
        // The slot's fields, changed in place and packed again once (`monitor/slot.rs`).
        slot.update(|slot| self.transitions(slot, t, ratio, th, out, jobs));
    }

    /// [`Pass::evaluate`]'s transitions and events, on the slot's fields.
    fn transitions(
        &self,
        slot: &mut Fields,
        t: &Touched,
        ratio: MarginRatio,
        th: &Thresholds,
        out: &mut Vec<Emitted>,
        jobs: &mut Vec<SnapshotJob>,
    ) {
        let (map, prices, now_ms) = (self.map, self.prices, self.now_ms);
        let policy = self.cfg.trigger_on_stale;
        let mark = self.mark;
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
        let Some(account_id) = map.id_of(t.key) else {
            return;
        };
        let engine_prices = Arc::clone(self.step_prices.get_or_init(|| Arc::new(map.prices())));
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
        let mut changes = Vec::with_capacity(2);
        let mut change = |crossing, level_type, previous, state, shock_state| {
            slot.seq += 1;
            let stored = MonitorState {
                state: new_state.clone(),
                seq: slot.seq,
                shock_state,
                funding_warned: slot.funding_warned,
            };
            changes.push(Change {
                crossing,
                level_type,
                previous,
                state,
                seq: slot.seq,
                state_json: stored.to_json(),
            });
        };
        if let Some(c) = crossing {
            let ratio = crate::model::LevelType::MarginRatio;
            change(
                c,
                ratio,
                previous,
                new_state.clone(),
                shock_previous.clone(),
            );
        }
        if let Some(c) = shock_crossing {
            let distance = crate::model::LevelType::ShockDistance;
            change(
                c,
                distance,
                shock_previous,
                shock_state.clone(),
                shock_state,
            );
        }
        let time = self.time.get_or_init(|| match self.cached_time {
            (at, text) if *at == now_ms => text.clone(),
            _ => format_rfc3339_ms(now_ms),
        });
        let n = changes.len();
        for (i, change) in changes.into_iter().enumerate() {
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
            let job = SnapshotJob {
                at: 0, // `push_event` points it at the event
                key: t.key,
                kind: change.crossing.kind,
                trigger: th.trigger,
                // A margin call answers a margin-ratio warning or trigger (a distance warning
                // leaves the ratio's state alone; a recovery needs none).
                recovery: (change.level_type == crate::model::LevelType::MarginRatio
                    && change.crossing.kind != EventKind::Recovered)
                    .then(|| crate::margin::call::recovery_ratio(th))
                    .flatten(),
                prices: Arc::clone(&engine_prices),
                now_ms,
                read: account.map(|account| Read {
                    funding: funding::rates_for(&account, prices, now_ms),
                    account,
                }),
            };
            push_event(out, jobs, &account_id, change, time.clone(), job, used);
        }
    }
}
