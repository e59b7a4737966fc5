//! The one engine: the account map ([`map`]), the threshold monitor ([`monitor`]) and the
//! distance index ([`index`]) behind a single synchronous [`Engine`]. No I/O, no async.
//!
//! Everything that evaluates accounts drives this type: the daemon's runner (`app::runner`, a
//! thin async loop that feeds it board changes and account requests and journals what it
//! returns), `stress`, the property tests and the benchmarks. The eager engine is the same
//! `Engine` with the index off ([`EngineConfig::distance_index`] `= false`): every holder of a
//! changed instrument is revalued. With the index on, a step values only the accounts the move
//! can carry across a level; the property tests prove both emit the same events and leave the
//! same figures after every step.
//!
//! ```text
//!  on_prices(burst) ─▶ set prices ─▶ index: wake the accounts whose band a price leaves
//!                                     (or, eager: every holder)
//!                                   ─▶ map: bring them to current prices (exact, Decimal)
//!                                   ─▶ monitor: levels, hysteresis → Emitted events
//!                                   ─▶ index: re-band what was evaluated
//!  begin_update ─▶ map changed ─▶ (caller persists) ─▶ settle: evaluate + re-band
//!                                                   └▶ revert: the map as it was
//!  on_feed(stale/restored) ─▶ feed events; a restored feed re-evaluates its holders
//! ```
//!
//! Events of one account come out in the order they happened; across accounts within one step
//! the order is by account key (deterministic for a given book).

mod blocks; // ordered sets as sorted blocks (the index's band ends, the map's holders)
pub mod index;
pub mod instruments; // replacing instrument terms live (Engine::replace_instruments)
pub mod map;
pub mod monitor;
mod par; // a large step's woken accounts on every core, output in key order
pub mod settlement;

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::Decimal;

use crate::model::TimestampMs;
use crate::model::{Account, AccountId, AccountUpdate, EventKind, InstrumentId, RiskEvent};
use crate::prices::StaleTransition;

pub use index::DistanceIndex;
pub use instruments::InstrumentStep;
pub use map::{AccountError, AccountKey, AccountMap, Touched, UpdateOutcome};
pub use monitor::{
    AfterTrigger, Emitted, Monitor, MonitorConfig, MonitorState, PriceInfo, RestoreReport,
    StalePolicy,
};

/// How the engine is built.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Default levels and the stale-price policy.
    pub monitor: MonitorConfig,
    /// Wake only the accounts a move can carry across a level (default). `false`: revalue every
    /// holder of a changed instrument (the eager engine).
    pub distance_index: bool,
}

/// An account update applied to the map and not yet settled: the caller persists the new
/// account, then calls [`Engine::settle`] (evaluate it) or, when persisting failed,
/// [`Engine::revert`] (the map as it was before).
#[derive(Debug)]
#[must_use = "settle or revert the update"]
pub struct PendingUpdate {
    id: AccountId,
    outcome: UpdateOutcome,
    before: Option<Account>,
}

impl PendingUpdate {
    /// The account the update was for.
    pub fn account_id(&self) -> &AccountId {
        &self.id
    }

    /// What the update did to the map.
    pub fn outcome(&self) -> &UpdateOutcome {
        &self.outcome
    }
}

/// What a feed staleness step produced.
#[derive(Debug, Default)]
pub struct FeedStep {
    /// `feed_stale` / `feed_restored` events, with the engine's per-instrument sequence.
    pub feed_events: Vec<RiskEvent>,
    /// Account events from re-evaluating the holders of restored instruments.
    pub emitted: Vec<Emitted>,
}

/// The engine. Owned by one task (`&mut self`); the map is shared (`Arc`) so that readers (the
/// API) can read accounts concurrently through [`AccountMap::read`] and friends.
pub struct Engine {
    map: Arc<AccountMap>,
    monitor: Monitor,
    index: Option<DistanceIndex>,
    /// Scratch space for the index's wake-up list.
    wake: Vec<AccountKey>,
    /// Scratch space for the accounts a step valued.
    touched: Vec<Touched>,
    /// Per-instrument sequence of feed and instrument events.
    feed_seq: HashMap<InstrumentId, u64>,
    /// What the last [`Engine::on_prices`] valued, and how long its phases took.
    last_step: StepTimes,
    /// `warn_before_funding` in ms ([`Engine::on_funding_clock`]); `None`: off.
    funding_window_ms: Option<i64>,
    /// When the last funding check ran (at most one per [`FUNDING_CHECK_EVERY_MS`]).
    funding_checked_ms: Option<TimestampMs>,
    /// The settlements in the window at the last funding check.
    funding_due: Vec<(InstrumentId, TimestampMs)>,
}

/// The phases of one price step ([`Engine::last_step`]), wall clock. A step that valued no
/// account (a quiet tick) reports zero throughout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepTimes {
    /// Accounts valued: woken by the index, or every holder of a changed instrument when eager.
    pub valued: usize,
    /// Setting the prices, waking the accounts they may move and valuing them.
    pub value: std::time::Duration,
    /// Deciding each valued account's level and building its events with their snapshots. In
    /// [`Engine::on_prices_chunked`] this includes the time its `emit` took.
    pub evaluate: std::time::Duration,
    /// Re-banding the evaluated accounts in the distance index (zero when eager).
    pub reband: std::time::Duration,
}

/// How often the funding step re-checks the holders of a perpetual in its window (engine
/// clock): each check values every holder, so it is paced rather than run on every tick.
pub const FUNDING_CHECK_EVERY_MS: i64 = 1_000;

impl Engine {
    /// An engine over `map` (which may already hold accounts: they are tracked, and valued on
    /// their first step). Errors when the default levels are malformed.
    pub fn new(map: Arc<AccountMap>, cfg: EngineConfig) -> Result<Self, String> {
        let monitor = Monitor::new(cfg.monitor)?;
        let index = cfg.distance_index.then(|| DistanceIndex::for_map(&map));
        Ok(Engine {
            map,
            monitor,
            index,
            wake: Vec::new(),
            touched: Vec::with_capacity(1024),
            feed_seq: HashMap::new(),
            last_step: StepTimes::default(),
            funding_window_ms: None,
            funding_checked_ms: None,
            funding_due: Vec::new(),
        })
    }

    /// The account map (shared with readers).
    pub fn map(&self) -> &Arc<AccountMap> {
        &self.map
    }

    /// The monitor (account states).
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// What happens to an account after its trigger ([`Monitor::set_after_trigger`]).
    pub fn set_after_trigger(&mut self, mode: AfterTrigger) {
        self.monitor.set_after_trigger(mode);
    }

    /// What happens to an account after its trigger.
    pub fn after_trigger(&self) -> AfterTrigger {
        self.monitor.after_trigger()
    }

    /// Sets `warn_before_funding` (`None`: no funding warnings). See [`Engine::on_funding_clock`].
    pub fn set_warn_before_funding(&mut self, window: Option<std::time::Duration>) {
        self.funding_window_ms = window.map(|w| i64::try_from(w.as_millis()).unwrap_or(i64::MAX));
    }

    /// `warn_before_funding`, when set.
    pub fn warn_before_funding(&self) -> Option<std::time::Duration> {
        self.funding_window_ms
            .and_then(|ms| u64::try_from(ms).ok())
            .map(std::time::Duration::from_millis)
    }

    /// The funding step, driven by the caller's clock (`now_ms`; the daemon calls it every
    /// staleness tick, a backtest at each recorded time): for every held perpetual whose next
    /// funding time is within `warn_before_funding` after `now_ms`, its holders are checked
    /// and those whose margin ratio after the payment would cross a level get one
    /// `liquidation_warning` with `level_type: "funding"` per funding time
    /// (`monitor::funding`): at once when a settlement enters the window, then at most once per
    /// [`FUNDING_CHECK_EVERY_MS`]. Nothing to do when `warn_before_funding` is off or nothing is due:
    /// it never runs inside a price step, so it cannot slow the crash path.
    pub fn on_funding_clock(
        &mut self,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> Vec<Emitted> {
        let Some(window) = self.funding_window_ms else {
            return Vec::new();
        };
        let due_by = now_ms.saturating_add(window);
        let due: Vec<(InstrumentId, TimestampMs)> = self
            .map
            .held_instruments()
            .into_iter()
            .filter_map(|inst| {
                let t = prices.funding(&inst)?.next_funding_ts?;
                (t > now_ms && t <= due_by).then_some((inst, t))
            })
            .collect();
        // A settlement entering the window is checked at once; the same ones again at most
        // once per FUNDING_CHECK_EVERY_MS.
        let throttled = self
            .funding_checked_ms
            .is_some_and(|t| now_ms >= t && now_ms - t < FUNDING_CHECK_EVERY_MS);
        if due.is_empty() || (throttled && due == self.funding_due) {
            self.funding_due = due;
            return Vec::new();
        }
        self.funding_checked_ms = Some(now_ms);
        let mut keys = Vec::new();
        for (inst, _) in &due {
            keys.extend(self.map.holder_keys(inst));
        }
        self.funding_due = due;
        if keys.is_empty() {
            return Vec::new();
        }
        self.monitor
            .evaluate_funding(&self.map, keys, prices, now_ms, window)
    }

    /// The distance index, when on.
    pub fn index(&self) -> Option<&DistanceIndex> {
        self.index.as_ref()
    }

    /// How many accounts the last [`Engine::on_prices`] valued (woken by the index, or every
    /// holder of a changed instrument when eager).
    pub fn last_valued(&self) -> usize {
        self.last_step.valued
    }

    /// What the last [`Engine::on_prices`] (or [`Engine::on_prices_chunked`]) valued and how
    /// long each of its phases took (wall clock).
    pub fn last_step(&self) -> StepTimes {
        self.last_step
    }

    /// How many accounts the last [`Engine::on_prices`] re-spread: a price left their band
    /// but used only part of their budget, so the index gave them new bands without valuing
    /// them (0 when eager). See [`index::respread`].
    pub fn last_respread(&self) -> usize {
        self.index.as_ref().map_or(0, DistanceIndex::last_respread)
    }

    /// Loads persisted monitor states (account id, [`MonitorState`] JSON) at start, before the
    /// first step. See [`Monitor::restore`].
    pub fn restore(
        &mut self,
        states: impl IntoIterator<Item = (AccountId, String)>,
    ) -> RestoreReport {
        self.monitor.restore(states)
    }

    /// The last `seq` of each instrument's feed and instrument events.
    pub fn feed_seqs(&self) -> &HashMap<InstrumentId, u64> {
        &self.feed_seq
    }

    /// Continues each instrument's feed and instrument event numbering after `seq` (from the
    /// journal at start, or from the engine a config reload replaces); never moves one back.
    pub fn restore_feed_seqs(&mut self, seqs: impl IntoIterator<Item = (InstrumentId, u64)>) {
        for (instrument, seq) in seqs {
            let e = self.feed_seq.entry(instrument).or_insert(0);
            *e = (*e).max(seq);
        }
    }

    /// Values and evaluates every account at the current prices and bands each (the daemon's
    /// first step, and the benches' set-up). Accounts the monitor already knows are evaluated
    /// from their state, as on any other step.
    pub fn evaluate_all(&mut self, prices: &dyn PriceInfo, now_ms: TimestampMs) -> Vec<Emitted> {
        let out = self.monitor.evaluate_all(&self.map, prices, now_ms);
        if let Some(index) = self.index.as_mut() {
            index.rebuild_many(&self.map, &self.monitor, self.map.keys());
        }
        out
    }

    /// One step for a burst of changed prices (each instrument once, latest price): sets them,
    /// values the accounts they may change on their final figures (each once), evaluates them
    /// and re-bands them. A price the map refuses is logged, counted and skipped.
    pub fn on_prices<'a>(
        &mut self,
        changed: impl IntoIterator<Item = (&'a InstrumentId, Decimal)>,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> Vec<Emitted> {
        let mut out = Vec::new();
        // One chunk (`usize::MAX` accounts): its events are the result, moved rather than
        // copied (a correlated move's hundreds of thousands of events, ~0.1 GB at 1M accounts).
        self.on_prices_chunked(changed, prices, now_ms, usize::MAX, &mut |mut events| {
            if out.is_empty() {
                out = events;
            } else {
                out.append(&mut events);
            }
        });
        out
    }

    /// [`Engine::on_prices`] for a step that may wake much of the book (a correlated move):
    /// every woken account is valued first, then the accounts are evaluated in chunks (in key
    /// order: `chunk` accounts, then twice as many each time, so the first events come early
    /// and a large step still makes few chunks) and each chunk's events — snapshots included —
    /// go to `emit` at once, so a caller can journal the first events while the rest are
    /// computed. The events, their
    /// order and the states are exactly those of `on_prices` (one account is in one chunk);
    /// the index re-bands every evaluated account after the last chunk.
    pub fn on_prices_chunked<'a>(
        &mut self,
        changed: impl IntoIterator<Item = (&'a InstrumentId, Decimal)>,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
        chunk: usize,
        emit: &mut dyn FnMut(Vec<Emitted>),
    ) {
        let started = std::time::Instant::now();
        let mut touched = std::mem::take(&mut self.touched);
        touched.clear();
        match self.index.as_mut() {
            Some(index) => {
                index::wake_and_value(&self.map, index, changed, &mut self.wake, &mut touched)
            }
            None => {
                for (inst, price) in changed {
                    if let Err(error) = self.map.apply_price(inst, price, &mut touched) {
                        tracing::warn!(instrument = %inst, %error, "Price not applied");
                    }
                }
            }
        }
        // An account holding two changed instruments is evaluated once, on its final figures,
        // in key order (the last report of each key: reverse, then a stable sort keeps it
        // first) — so no account spans two chunks.
        touched.reverse();
        touched.sort_by_key(|t| t.key);
        touched.dedup_by_key(|t| t.key);
        // A quiet tick (nobody valued) reads the clock once, and reports nothing.
        let mut step = StepTimes::default();
        if !touched.is_empty() {
            let valued = std::time::Instant::now();
            step.valued = touched.len();
            step.value = valued - started;
            let mut rest: &[crate::engine::map::Touched] = &touched;
            let mut size = chunk.max(1);
            while !rest.is_empty() {
                let (part, tail) = rest.split_at(size.min(rest.len()));
                rest = tail;
                size = size.saturating_mul(2);
                let out = self.monitor.evaluate(&self.map, part, prices, now_ms);
                if !out.is_empty() {
                    emit(out);
                }
            }
            let evaluated = std::time::Instant::now();
            step.evaluate = evaluated - valued;
            if let Some(index) = self.index.as_mut() {
                index::rebuild_touched(&self.map, &self.monitor, index, &touched);
                step.reband = evaluated.elapsed();
            }
        }
        self.last_step = step;
        touched.clear();
        self.touched = touched;
    }

    /// Applies an account update to the map. Nothing is evaluated until [`Engine::settle`].
    pub fn begin_update(&mut self, update: AccountUpdate) -> Result<PendingUpdate, AccountError> {
        let id = update.account_id().clone();
        let before = self.map.account(&id);
        let outcome = self.map.apply_update(update)?;
        Ok(PendingUpdate {
            id,
            outcome,
            before,
        })
    }

    /// Puts the map back as it was before `pending` (its new state could not be persisted).
    pub fn revert(&mut self, pending: PendingUpdate) -> Result<(), AccountError> {
        let undo = match pending.before {
            Some(account) => AccountUpdate::Replace { account },
            None => AccountUpdate::Remove {
                account_id: pending.id,
            },
        };
        let outcome = self.map.apply_update(undo)?;
        // A removal undone re-creates the account under a new key (keys are never reused): it
        // keeps its monitor state, so it does not fire its events again.
        if let UpdateOutcome::Removed(old) = pending.outcome {
            self.monitor.rekey(old, outcome.key());
            if let Some(index) = self.index.as_mut() {
                index.forget(old);
            }
        }
        if let Some(index) = self.index.as_mut() {
            index.track(&self.map, outcome.key());
            index.rebuild(&self.map, &self.monitor, outcome.key());
        }
        Ok(())
    }

    /// Evaluates an applied update (or forgets a removed account) and re-bands it.
    pub fn settle(
        &mut self,
        pending: PendingUpdate,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> Vec<Emitted> {
        match pending.outcome {
            UpdateOutcome::Created(key) | UpdateOutcome::Updated(key) => {
                if let Some(index) = self.index.as_mut() {
                    index.track(&self.map, key);
                }
                let emitted = self
                    .monitor
                    .evaluate_account(&self.map, key, prices, now_ms);
                if let Some(index) = self.index.as_mut() {
                    index.rebuild(&self.map, &self.monitor, key);
                }
                emitted
            }
            UpdateOutcome::Removed(key) => {
                self.monitor.forget(key, &pending.id);
                if let Some(index) = self.index.as_mut() {
                    index.forget(key);
                }
                Vec::new()
            }
        }
    }

    /// [`Engine::begin_update`] then [`Engine::settle`], for callers with nothing to persist.
    pub fn on_update(
        &mut self,
        update: AccountUpdate,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> Result<(UpdateOutcome, Vec<Emitted>), AccountError> {
        let pending = self.begin_update(update)?;
        let outcome = pending.outcome.clone();
        Ok((outcome, self.settle(pending, prices, now_ms)))
    }

    /// Feed staleness transitions from the price board: one `feed_stale` / `feed_restored`
    /// event each, numbered per instrument; a restored instrument re-evaluates its holders, so
    /// a trigger held back by a stale price fires even if the price did not move.
    pub fn on_feed(
        &mut self,
        transitions: &[StaleTransition],
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> FeedStep {
        let mut step = FeedStep::default();
        for t in transitions {
            let seq = self.feed_seq.entry(t.info.instrument.clone()).or_insert(0);
            *seq += 1;
            let mut ev = t.to_event(now_ms);
            ev.seq = *seq;
            if t.kind == EventKind::FeedRestored {
                step.emitted.extend(self.monitor.reevaluate_holders(
                    &self.map,
                    &t.info.instrument,
                    prices,
                    now_ms,
                ));
                if let Some(index) = self.index.as_mut() {
                    let holders = self.map.holder_keys(&t.info.instrument);
                    index.rebuild_many(&self.map, &self.monitor, holders);
                }
            }
            step.feed_events.push(ev);
        }
        step
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::map::tests::{w3_account, w3_instruments};
    use crate::model::PriceUsed;
    use rust_decimal_macros::dec;

    pub(crate) const NOW: TimestampMs = 1_621_428_600_000;

    /// An engine over the W3 instruments holding no account, with its map.
    fn empty_engine(distance_index: bool) -> (Arc<AccountMap>, Engine) {
        let map = Arc::new(AccountMap::new(w3_instruments()));
        let e = Engine::new(
            Arc::clone(&map),
            EngineConfig {
                monitor: MonitorConfig::default(),
                distance_index,
            },
        )
        .unwrap();
        (map, e)
    }

    /// An engine over the W3 instruments holding the W3 account (no prices yet).
    pub(crate) fn engine(distance_index: bool) -> Engine {
        let (_, mut e) = empty_engine(distance_index);
        let info = HashMap::<InstrumentId, PriceUsed>::new();
        e.on_update(
            AccountUpdate::Replace {
                account: w3_account("w3"),
            },
            &info,
            NOW,
        )
        .unwrap();
        e
    }

    fn burst(p: [Decimal; 3]) -> Vec<(InstrumentId, Decimal)> {
        vec![
            (InstrumentId::from("BTCUSDT-PERP"), p[0]),
            ("BTC".into(), p[0]),
            ("ETHUSDT-PERP".into(), p[1]),
            ("SOLUSDT-PERP".into(), p[2]),
            // Not held by anyone, and not even an instrument: refused, nothing else changes.
            ("DOGE".into(), dec!(1)),
        ]
    }

    /// Eager and indexed alike: a burst is applied and evaluated once (one trigger listing both
    /// levels); an update evaluates the account (a deposit recovers it); a removal forgets it;
    /// a failed update reverted leaves the account and its state as they were.
    #[test]
    fn steps() {
        let info = HashMap::<InstrumentId, PriceUsed>::new();
        for indexed in [false, true] {
            let mut e = engine(indexed);
            let w3 = burst([dec!(60000), dec!(3000), dec!(150)]);
            assert!(
                e.on_prices(w3.iter().map(|(i, p)| (i, *p)), &info, NOW)
                    .is_empty()
            );
            let w4 = burst([dec!(54000), dec!(2700), dec!(135)]);
            let ev = e.on_prices(w4.iter().map(|(i, p)| (i, *p)), &info, NOW);
            assert_eq!(ev.len(), 1, "indexed {indexed}");
            assert_eq!(ev[0].event.kind, EventKind::LiquidationTrigger);
            assert_eq!(ev[0].event.crossed_levels, vec![dec!(0.8), dec!(1)]);
            let id = AccountId::from("w3");
            let triggered = e.monitor().state(e.map(), &id);

            // Persisting a removal failed: the account comes back with its state (no re-fire).
            let pending = e
                .begin_update(AccountUpdate::Remove {
                    account_id: id.clone(),
                })
                .unwrap();
            assert!(e.map().account(&id).is_none());
            e.revert(pending).unwrap();
            assert!(e.map().account(&id).is_some());
            assert_eq!(e.monitor().state(e.map(), &id), triggered);
            let again = e.on_prices(w4.iter().map(|(i, p)| (i, p - dec!(1))), &info, NOW);
            assert!(again.is_empty(), "indexed {indexed}: {again:?}");

            let deposit = AccountUpdate::Collateral {
                account_id: id.clone(),
                asset: "USDT".into(),
                delta: dec!(100000),
            };
            let (_, ev) = e.on_update(deposit, &info, NOW).unwrap();
            assert_eq!(ev[0].event.kind, EventKind::Recovered);
            let (outcome, ev) = e
                .on_update(
                    AccountUpdate::Remove {
                        account_id: id.clone(),
                    },
                    &info,
                    NOW,
                )
                .unwrap();
            assert!(matches!(outcome, UpdateOutcome::Removed(_)));
            assert!(ev.is_empty());
            assert_eq!(e.monitor().state(e.map(), &id), None);
        }
    }

    /// `last_step` reports what the step valued and times its phases within the step's own
    /// wall time: an eager engine never re-bands, an indexed one re-bands what it valued, and a
    /// step that values nobody has nothing to evaluate or re-band.
    #[test]
    fn last_step_times_the_phases_of_a_step() {
        let info = HashMap::<InstrumentId, PriceUsed>::new();
        for indexed in [false, true] {
            let mut e = engine(indexed);
            assert_eq!(e.last_step(), StepTimes::default(), "no step yet");
            for p in [
                [dec!(60000), dec!(3000), dec!(150)],
                [dec!(38000), dec!(2000), dec!(100)],
            ] {
                let b = burst(p);
                let started = std::time::Instant::now();
                e.on_prices(b.iter().map(|(i, p)| (i, *p)), &info, NOW);
                let wall = started.elapsed();
                let step = e.last_step();
                assert_eq!(step.valued, 1, "indexed {indexed}: the one account");
                assert_eq!(step.valued, e.last_valued());
                assert!(
                    step.value + step.evaluate + step.reband <= wall,
                    "{step:?} > {wall:?}"
                );
                assert!(step.evaluate > std::time::Duration::ZERO, "{step:?}");
                assert_eq!(
                    step.reband > std::time::Duration::ZERO,
                    indexed,
                    "indexed {indexed}: {step:?}"
                );
            }
            // The same prices again: nothing moves, nobody is valued.
            let b = burst([dec!(38000), dec!(2000), dec!(100)]);
            let events = e.on_prices(b.iter().map(|(i, p)| (i, *p)), &info, NOW);
            assert!(events.is_empty());
            assert_eq!(
                e.last_step(),
                StepTimes::default(),
                "indexed {indexed}: a quiet tick"
            );
        }
    }

    /// Through crashes, bounces and small moves, the index's store always holds exactly what
    /// its records say — each account's bands, or the account in the eager sets — although a
    /// step makes eager the accounts a price leaves and re-bands them with one flush.
    #[test]
    fn the_index_store_follows_its_records_through_a_crash() {
        let info = HashMap::<InstrumentId, PriceUsed>::new();
        let (map, mut e) = empty_engine(true);
        // 400 accounts (a bulk re-band: more than 256 changes per set) of varied leverage.
        for i in 0..400u32 {
            let mut account = w3_account(&format!("w3-{i:03}"));
            account
                .collateral
                .insert("USDT".into(), Decimal::from(30_000 + 250 * i));
            e.on_update(AccountUpdate::Replace { account }, &info, NOW)
                .unwrap();
        }
        let moves = [
            [dec!(60000), dec!(3000), dec!(150)],
            [dec!(54000), dec!(2700), dec!(135)], // −10 %: the crash
            [dec!(60000), dec!(3000), dec!(150)], // the bounce
            [dec!(60010), dec!(3000.5), dec!(150.02)],
            [dec!(57000), dec!(2850), dec!(142.5)],
            [dec!(48000), dec!(2400), dec!(120)],
            [dec!(48001), dec!(2400), dec!(120)],
            [dec!(66000), dec!(3300), dec!(165)],
        ];
        let mut woken = 0;
        for p in moves {
            let b = burst(p);
            e.on_prices(b.iter().map(|(i, p)| (i, *p)), &info, NOW);
            woken += e.last_valued();
            let index = e.index.as_mut().unwrap();
            index.check_store().unwrap();
            assert_eq!(index.counts().0, 400);
        }
        assert!(
            woken > 800,
            "the crash steps wake most of the book ({woken})"
        );
        // Woken and valued but not re-banded (the step stopped after valuing): the accounts
        // settled eager are moved out of their bands into the eager sets by the next flush.
        let b = burst([dec!(52000), dec!(2600), dec!(130)]);
        let (mut wake, mut touched) = (Vec::new(), Vec::new());
        let index = e.index.as_mut().unwrap();
        index::wake_and_value(
            &map,
            index,
            b.iter().map(|(i, p)| (i, *p)),
            &mut wake,
            &mut touched,
        );
        assert!(touched.len() > 100, "{}", touched.len());
        let (tracked, banded) = index.counts();
        assert!(
            banded < tracked,
            "{banded} of {tracked} banded: some were made eager"
        );
        index.check_store().unwrap();
    }

    /// A step with many events (a correlated move) builds their snapshots on several cores:
    /// every event carries exactly the snapshot a from-scratch `margin::account_snapshot` gives,
    /// and the events come out in account-key order.
    #[test]
    fn many_events_in_one_step() {
        let info = HashMap::<InstrumentId, PriceUsed>::new();
        let (map, mut e) = empty_engine(true);
        let n = 300;
        for i in 0..n {
            e.on_update(
                AccountUpdate::Replace {
                    account: w3_account(&format!("w3-{i:03}")),
                },
                &info,
                NOW,
            )
            .unwrap();
        }
        let w3 = burst([dec!(60000), dec!(3000), dec!(150)]);
        assert!(
            e.on_prices(w3.iter().map(|(i, p)| (i, *p)), &info, NOW)
                .is_empty()
        );
        let w4 = burst([dec!(54000), dec!(2700), dec!(135)]);
        let ev = e.on_prices(w4.iter().map(|(i, p)| (i, *p)), &info, NOW);
        assert_eq!(ev.len(), n);
        let prices = map.prices();
        for (i, em) in ev.iter().enumerate() {
            assert_eq!(em.account_id, AccountId::from(format!("w3-{i:03}")));
            let account = map.account(&em.account_id).unwrap();
            let mut expected =
                crate::margin::account_snapshot(&account, &*map.instruments(), &prices, dec!(1))
                    .unwrap();
            // A trigger carries what the liquidation would cost.
            expected.liquidation_cost = Some(Box::new(
                crate::margin::liquidation_cost(&expected, &*map.instruments()).unwrap(),
            ));
            // And the deposit that would bring it back under 0.8 − 0.05 (the default levels).
            expected.margin_call = crate::margin::call::margin_call(
                expected.maintenance_margin,
                expected.equity,
                &crate::model::Thresholds::default(),
            );
            assert!(expected.margin_call.is_some());
            assert_eq!(
                em.event.snapshot.as_deref(),
                Some(&expected),
                "{}",
                em.account_id
            );
        }
    }
}
