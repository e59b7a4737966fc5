//! What an account event carries besides its state change: the account's full snapshot
//! (figures, shock distance, liquidation prices — what an event costs, built after the step's
//! state pass, on every core for large steps) and every price it used.

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::Decimal;

use super::{Emitted, PriceInfo, funding};
use crate::engine::map::{AccountKey, AccountMap, InstrumentTable, PriceSnapshot};
use crate::margin;
use crate::model::{EventKind, InstrumentId, PriceUsed, TimestampMs};

/// An account as the state pass read it, for its snapshot.
#[derive(Clone)]
pub(super) struct Read {
    /// The funding rates of the account's perpetuals, when known.
    pub(super) funding: Vec<(InstrumentId, margin::funding::FundingRate)>,
    pub(super) account: crate::model::Account,
}

/// An event whose snapshot is still to be computed: the account and the prices it was valued at.
pub(super) struct SnapshotJob {
    /// Index of the event in the step's output.
    pub(super) at: usize,
    /// The account (its figures do not change until the step's snapshots are built).
    pub(super) key: AccountKey,
    pub(super) kind: EventKind,
    pub(super) trigger: Decimal,
    /// For a margin-ratio warning or trigger, the ratio the account must fall below to
    /// recover (its first level less the hysteresis): the event's margin call is computed
    /// against it. `None` for every other event, which carries no margin call.
    pub(super) recovery: Option<Decimal>,
    pub(super) prices: Arc<PriceSnapshot>,
    pub(super) now_ms: TimestampMs,
    /// The account and its funding rates when the state pass read them (its event then
    /// carries the prices it used already); else they are read with the snapshot, and the
    /// prices used with them.
    pub(super) read: Option<Read>,
}

/// One account's crossing as its event says it: what the state machines decided.
pub(super) struct Change {
    pub(super) crossing: super::Crossing,
    pub(super) level_type: crate::model::LevelType,
    pub(super) previous: crate::model::AccountState,
    pub(super) state: crate::model::AccountState,
    pub(super) seq: u64,
    /// The account's monitor state after the event, as JSON (stored with it).
    pub(super) state_json: String,
}

/// Appends `change`'s event (without its snapshot, with the prices it used when they were
/// already read) to `out`, and its snapshot job to `jobs`: the job points at the event.
pub(super) fn push_event(
    out: &mut Vec<Emitted>,
    jobs: &mut Vec<SnapshotJob>,
    account_id: &crate::model::AccountId,
    change: Change,
    time: String,
    job: SnapshotJob,
    used: Vec<PriceUsed>,
) {
    let time_ms = job.now_ms;
    jobs.push(SnapshotJob {
        at: out.len(),
        ..job
    });
    out.push(Emitted {
        account_id: account_id.clone(),
        state_json: change.state_json,
        event: crate::model::RiskEvent {
            event_id: crate::model::RiskEvent::new_id(),
            kind: change.crossing.kind,
            time,
            time_ms,
            account_id: Some(account_id.clone()),
            seq: change.seq,
            level: Some(change.crossing.level),
            crossed_levels: change.crossing.crossed_levels,
            level_type: Some(change.level_type),
            previous_state: Some(change.previous),
            state: Some(change.state),
            snapshot: None,
            stale_prices: used.iter().any(|p| p.stale),
            prices: used,
            instrument_change: None,
            feed: None,
            risk: None,
        },
    });
}

/// What the snapshot stage adds to one event (boxed where it is built, so that moving it to
/// its event is a pointer's move).
struct Built {
    snapshot: Option<Box<crate::model::RiskSnapshot>>,
    /// The prices the account used, when read here.
    used: Option<Vec<PriceUsed>>,
}

/// Events in one step from which snapshots are built on more than one core.
pub(super) const PARALLEL_SNAPSHOTS: usize = 64;

/// Computes each job's snapshot (pure: the account at the prices it was valued at) into its
/// event, with what only the snapshot needs (the account, the prices it used, its funding
/// rates, a trigger's liquidation cost). Large batches — a correlated move — are split over
/// the available cores; each result lands in its own event, so the order of events does not
/// depend on the split.
pub(super) fn fill_snapshots(
    map: &AccountMap,
    out: &mut [Emitted],
    jobs: Vec<SnapshotJob>,
    info: &dyn PriceInfo,
) {
    // Loaded once for the whole batch: per job, both threads would write the table's lock and
    // reference count (terms change only between steps).
    let table = map.instruments();
    let table = &*table;
    // A large batch reads what the board says of each priced instrument once, not once per
    // event and price (see `StepInfo`).
    let step_info;
    let info: &dyn PriceInfo = match jobs.first() {
        Some(first) if jobs.len() >= PARALLEL_SNAPSHOTS => {
            step_info = StepInfo::read(info, &first.prices);
            &step_info
        }
        _ => info,
    };
    // Split over the cores from `PARALLEL_SNAPSHOTS` events on; `build` never panics, so a
    // worker's chunk is never lost.
    let built = crate::engine::par::map_in_order_from(PARALLEL_SNAPSHOTS, &jobs, |j| {
        build(map, table, j, info)
    });
    place(out, &jobs, built);
}

/// [`fill_snapshots`] on the calling thread, with the batch's instrument table and price
/// information already read (each thread of a parallel state pass builds its own accounts'
/// snapshots: see [`super::Monitor::evaluate`]).
pub(super) fn fill_here(
    map: &AccountMap,
    table: &InstrumentTable,
    out: &mut [Emitted],
    jobs: Vec<SnapshotJob>,
    info: &dyn PriceInfo,
) {
    let built = jobs.iter().map(|j| build(map, table, j, info)).collect();
    place(out, &jobs, built);
}

/// One job's snapshot and what only it needs: the account (read here unless the state pass
/// read it), the prices it used, its funding rates, a trigger's liquidation cost. A panic
/// anywhere in it (a bug) costs the event its snapshot, never the event or another one's.
fn build(
    map: &AccountMap,
    table: &InstrumentTable,
    job: &SnapshotJob,
    info: &dyn PriceInfo,
) -> Built {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        build_guarded(map, table, job, info)
    }))
    .unwrap_or_else(|_| {
        metrics::counter!("liqwatch_monitor_snapshot_errors_total").increment(1);
        tracing::error!(
            key = job.key,
            "Snapshot stage panicked reading the account back (a bug); the event goes out without it"
        );
        Built {
            snapshot: None,
            used: None,
        }
    })
}

/// [`build`] inside its guard; the margin model has a guard of its own, so its panics are
/// reported as such.
fn build_guarded(
    map: &AccountMap,
    table: &InstrumentTable,
    job: &SnapshotJob,
    info: &dyn PriceInfo,
) -> Built {
    let fresh;
    let (account, funding, used) = match &job.read {
        Some(r) => (&r.account, &r.funding, None),
        None => {
            let Some(account) = map.read_key_in(table, job.key, |v| v.to_account()) else {
                metrics::counter!("liqwatch_monitor_snapshot_errors_total").increment(1);
                tracing::error!(
                    key = job.key,
                    "Snapshot failed: the account is gone; the event goes out without it"
                );
                return Built {
                    snapshot: None,
                    used: None,
                };
            };
            let used = prices_used(table, &account, &job.prices, info, job.now_ms);
            let funding = funding::rates_for(&account, info, job.now_ms);
            fresh = (account, funding);
            (&fresh.0, &fresh.1, Some(used))
        }
    };
    #[cfg(test)]
    inject::maybe_panic_outside(&account.id);
    // A panic in the margin model is a bug; it costs this event its snapshot, never the
    // event, its prices or another account's snapshot.
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(test)]
        inject::maybe_panic(&account.id);
        margin::account_snapshot(account, table, &*job.prices, job.trigger).map(|mut s| {
            funding::attach(&mut s, table, funding);
            if job.kind == EventKind::LiquidationTrigger {
                margin::attach_liquidation_cost_to(&mut s, table, &account.id);
            }
            s.margin_call = job.recovery.and_then(|below| {
                margin::call::margin_call_below(s.maintenance_margin, s.equity, below)
            });
            Box::new(s)
        })
    }));
    let snapshot = match built {
        Ok(Ok(s)) => Some(s),
        Ok(Err(error)) => {
            metrics::counter!("liqwatch_monitor_snapshot_errors_total").increment(1);
            tracing::error!(account = %account.id, %error, "Snapshot failed; the event goes out without it");
            None
        }
        Err(_) => {
            metrics::counter!("liqwatch_monitor_snapshot_errors_total").increment(1);
            tracing::error!(account = %account.id, "Snapshot panicked (a bug in the margin model); the event goes out without it");
            None
        }
    };
    Built { snapshot, used }
}

/// Puts each built snapshot (and the prices used, when read with it) into its job's event, and
/// counts the events per kind (once per batch, not once per event).
fn place(out: &mut [Emitted], jobs: &[SnapshotJob], built: Vec<Built>) {
    let mut counts: Vec<(EventKind, u64)> = Vec::new();
    for (job, b) in jobs.iter().zip(built) {
        if let Some(e) = out.get_mut(job.at) {
            e.event.snapshot = b.snapshot;
            if let Some(used) = b.used {
                e.event.stale_prices = used.iter().any(|p| p.stale);
                e.event.prices = used;
            }
            match counts.iter_mut().find(|(k, _)| *k == e.event.kind) {
                Some((_, n)) => *n += 1,
                None => counts.push((e.event.kind, 1)),
            }
        }
    }
    for (kind, n) in counts {
        metrics::counter!("liqwatch_monitor_events_total", "kind" => kind.as_str()).increment(n);
    }
}

/// What the board says of every instrument a step priced — source, age and staleness, funding
/// rate — read once when the step's snapshots start. A correlated move's events would otherwise
/// each read it for every price they used: hundreds of thousands of events, each locking the
/// board (which the feed tasks lock for every frame) from every core, and each seeing the board
/// at a slightly different moment. Read here, every event of the step describes the board at
/// one moment. Instruments outside the step's prices are asked of the board directly.
pub(super) struct StepInfo<'a> {
    board: &'a dyn PriceInfo,
    prices: HashMap<InstrumentId, Option<PriceUsed>, foldhash::fast::RandomState>,
    funding:
        HashMap<InstrumentId, Option<margin::funding::FundingRate>, foldhash::fast::RandomState>,
}

impl<'a> StepInfo<'a> {
    pub(super) fn read(board: &'a dyn PriceInfo, step: &PriceSnapshot) -> Self {
        let mut prices = HashMap::with_capacity_and_hasher(step.0.len(), Default::default());
        let mut funding = HashMap::with_capacity_and_hasher(step.0.len(), Default::default());
        for id in step.0.keys() {
            // Interned, as the instrument table's ids are: each event copies these, and a
            // shared text's reference count would be written from every core for each copy.
            let used = board.price_info(id).map(|mut p| {
                p.instrument = p.instrument.interned();
                p.source = std::borrow::Cow::Borrowed(crate::model::intern(&p.source));
                p
            });
            prices.insert(id.clone(), used);
            funding.insert(id.clone(), board.funding(id));
        }
        StepInfo {
            board,
            prices,
            funding,
        }
    }
}

impl PriceInfo for StepInfo<'_> {
    fn price_info(&self, instrument: &InstrumentId) -> Option<PriceUsed> {
        match self.prices.get(instrument) {
            Some(p) => p.clone(),
            None => self.board.price_info(instrument),
        }
    }

    fn funding(&self, instrument: &InstrumentId) -> Option<margin::funding::FundingRate> {
        match self.funding.get(instrument) {
            Some(f) => *f,
            None => self.board.funding(instrument),
        }
    }
}

/// Every price an account's figures use: the engine's price, with source/age/staleness from
/// `info` (stables: source `stable`, never stale; no info: source `engine`, age 0).
pub(super) fn prices_used(
    table: &InstrumentTable,
    account: &crate::model::Account,
    engine: &PriceSnapshot,
    info: &dyn PriceInfo,
    now_ms: TimestampMs,
) -> Vec<PriceUsed> {
    // Sorted and unique, as a set would give them, without a tree per event.
    let mut ids: Vec<&InstrumentId> = account
        .collateral
        .keys()
        .chain(account.positions.iter().map(|p| &p.instrument))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let stable = table.index(id).and_then(|i| table.get(i).map(|i| i.stable)) == Some(true);
        if stable {
            out.push(PriceUsed {
                instrument: id.clone(),
                price: Decimal::ONE,
                source: "stable".into(),
                received_ts: now_ms,
                age_ms: 0,
                stale: false,
            });
            continue;
        }
        let Some(price) = engine.0.get(id).copied() else {
            continue;
        };
        let p = match info.price_info(id) {
            Some(mut p) => {
                p.price = price;
                p
            }
            None => PriceUsed {
                instrument: id.clone(),
                price,
                source: "engine".into(),
                received_ts: now_ms,
                age_ms: 0,
                stale: false,
            },
        };
        out.push(p);
    }
    out
}

/// Fault injection for the tests: a panic inside the margin model for one account id.
#[cfg(test)]
pub(super) mod inject {
    use std::sync::Mutex;

    use crate::model::AccountId;

    /// Ids whose snapshot panics (tests use ids of their own, so parallel tests are unaffected).
    static PANICS_FOR: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// Makes the snapshot of `id` panic from now on.
    pub(in crate::engine) fn panic_for(id: &str) {
        PANICS_FOR
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.to_owned());
    }

    /// Ids whose snapshot stage panics outside the margin model (as reading it back could).
    static PANICS_OUTSIDE: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// Makes the snapshot stage of `id` panic outside the margin model from now on.
    pub(in crate::engine) fn panic_outside_for(id: &str) {
        PANICS_OUTSIDE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id.to_owned());
    }

    fn listed(list: &Mutex<Vec<String>>, id: &AccountId) -> bool {
        list.lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|p| p == id.as_str())
    }

    pub(super) fn maybe_panic(id: &AccountId) {
        assert!(
            !listed(&PANICS_FOR, id),
            "injected panic in the snapshot of {id}"
        );
    }

    pub(super) fn maybe_panic_outside(id: &AccountId) {
        assert!(
            !listed(&PANICS_OUTSIDE, id),
            "injected panic in the snapshot stage of {id}"
        );
    }
}
