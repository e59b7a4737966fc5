//! The distance index against the eager engine: two instances of the one [`Engine`] — the
//! daemon's, `stress`'s and the benches' — fed the same random steps: price bursts (several
//! instruments at once, as the runner takes them from the board), account updates, updates
//! whose persistence fails and are reverted, and feeds going stale and coming back under both
//! stale-price policies. One revalues every holder on every tick (`distance_index = false`),
//! the other wakes only the accounts the index says a move can change. They must emit exactly
//! the same events (kind, account, seq, levels, states and the full snapshot, feed events
//! included), hold the same monitor states after every step, and — once the lazy map is
//! brought to the current prices — the same figures, equal to the from-scratch recomputation.
//!
//! Distance levels (`warn_within_shock`, issue 13) are drawn both as defaults and as an
//! account's own: their bands must be as sound as the ratio's, and after every step each
//! account's distance state must agree with its shock distance recomputed from scratch.
//!
//! Mutations this catches (each tried by hand): a band δ three times too wide; δ × 1.2;
//! dropping the MM sensitivity from the band; not re-banding after a revert; not
//! re-evaluating holders when a held feed is restored; ignoring the distance levels' band;
//! dropping the `1 + L` scale of the distance band (shocked prices move further); the
//! monitor's shock problem leaving out moving collateral (the from-scratch distance oracle);
//! a re-spread giving away 1.1× or 1.3× the budget left (the trend walks, at the default 128
//! cases; the mixed test needs ~2,000 for 1.3×).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::sync::Arc;

use liqwatch::engine::{AccountMap, Emitted, Engine, EngineConfig, MonitorConfig, StalePolicy};
use liqwatch::margin;
use liqwatch::model::{
    Account, AccountId, AccountUpdate, EventKind, FeedEventInfo, Fill, Instrument, InstrumentId,
    InstrumentKind, Position, PositionSide, PriceUsed, RiskEvent, Thresholds,
};
use liqwatch::prices::StaleTransition;
use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use crate::support::engine_fixtures::{instrument, tier};

fn instruments() -> Vec<Instrument> {
    let mut btc = instrument("BTCUSDT-PERP", InstrumentKind::LinearPerpetual, "BTC");
    btc.tiers = vec![
        tier(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
        tier(dec!(50000), dec!(600000), dec!(0.005), dec!(50)),
        tier(dec!(600000), dec!(3000000), dec!(0.0065), dec!(950)),
    ];
    let mut eth = instrument("ETHUSDT-PERP", InstrumentKind::LinearPerpetual, "ETH");
    eth.contract_size = dec!(0.1);
    eth.tiers = vec![
        tier(dec!(0), dec!(2000), dec!(0.05), dec!(0)),
        tier(dec!(2000), dec!(10000), dec!(0.1), dec!(100)),
    ];
    // A table with a gap at 1,000 (MM jumps by 10): banded with the jump paid from the slack.
    // Then steep tiers where SOL positions' notionals lie (1.5k–150k): 3 → 10 → 25 %, so a
    // band that paid for a flatter slope than the tiers a move reaches would be too wide and
    // miss a crossing (a `.min()` for `.max()` of the reachable rate fails these tests).
    let mut sol = instrument("SOLUSDT-PERP", InstrumentKind::LinearPerpetual, "SOL");
    sol.tiers = vec![
        tier(dec!(0), dec!(1000), dec!(0.01), dec!(0)),
        tier(dec!(1000), dec!(5000), dec!(0.03), dec!(10)),
        tier(dec!(5000), dec!(20000), dec!(0.10), dec!(360)),
        tier(dec!(20000), dec!(1000000), dec!(0.25), dec!(3360)),
    ];
    let mut inv = instrument("BTCUSD-PERP", InstrumentKind::InversePerpetual, "BTC");
    inv.contract_size = dec!(100);
    inv.tiers = vec![
        tier(dec!(0), dec!(0.5), dec!(0.004), dec!(0)),
        tier(dec!(0.5), dec!(10), dec!(0.02), dec!(0.008)),
    ];
    // Discontinuous inverse tiers: no bound, its holders are always revalued.
    let mut inv_gap = instrument("ETHUSD-PERP", InstrumentKind::InversePerpetual, "ETH");
    inv_gap.contract_size = dec!(10);
    inv_gap.tiers = vec![
        tier(dec!(0), dec!(5), dec!(0.01), dec!(0)),
        tier(dec!(5), dec!(100), dec!(0.05), dec!(0)),
    ];
    let mut usdt = instrument("USDT", InstrumentKind::Collateral, "USDT");
    usdt.stable = true;
    let mut btc_c = instrument("BTC", InstrumentKind::Collateral, "BTC");
    btc_c.collateral_ratio = dec!(0.95);
    let mut eth_c = instrument("ETH", InstrumentKind::Collateral, "ETH");
    eth_c.haircut_tiers = vec![
        liqwatch::model::HaircutTier {
            amount_floor: dec!(0),
            ratio: dec!(0.95),
        },
        liqwatch::model::HaircutTier {
            amount_floor: dec!(2),
            ratio: dec!(0.5),
        },
    ];
    vec![btc, eth, sol, inv, inv_gap, usdt, btc_c, eth_c]
}

const CONTRACTS: [&str; 5] = [
    "BTCUSDT-PERP",
    "ETHUSDT-PERP",
    "SOLUSDT-PERP",
    "BTCUSD-PERP",
    "ETHUSD-PERP",
];
/// Base price of each contract (entries are drawn around it).
const BASE: [i64; 5] = [50_000, 3_000, 100, 50_000, 3_000];
const ASSETS: [&str; 3] = ["USDT", "BTC", "ETH"];
const PRICED: [(&str, i64); 7] = [
    ("BTCUSDT-PERP", 50_000),
    ("ETHUSDT-PERP", 3_000),
    ("SOLUSDT-PERP", 100),
    ("BTCUSD-PERP", 50_000),
    ("ETHUSD-PERP", 3_000),
    ("BTC", 50_000),
    ("ETH", 3_000),
];
const ACCOUNTS: usize = 10;

#[derive(Debug, Clone)]
enum Op {
    /// Instrument, move in basis points of the current price.
    Move(usize, i64),
    /// Two moves applied as one burst.
    Burst(usize, i64, usize, i64),
    /// An absolute price (zero is rejected by both engines).
    Set(usize, Decimal),
    Replace(#[allow(dead_code)] usize, Account),
    Fill(usize, Fill),
    Collateral(usize, usize, Decimal),
    Remove(usize),
    /// An update applied, then reverted because persisting it failed.
    Reverted(AccountUpdate),
    /// Every source of an instrument goes stale.
    Stale(usize),
}

fn qty() -> impl Strategy<Value = Decimal> {
    (-3_000i64..3_000, 0u32..4).prop_map(|(m, s)| Decimal::new(m, s))
}

fn side() -> impl Strategy<Value = PositionSide> {
    prop_oneof![
        3 => Just(PositionSide::Both),
        1 => Just(PositionSide::Long),
        1 => Just(PositionSide::Short)
    ]
}

fn thresholds() -> impl Strategy<Value = Option<Thresholds>> {
    prop_oneof![
        4 => Just(None),
        1 => Just(Some(Thresholds {
            warning_levels: vec![dec!(0.3)],
            trigger: dec!(0.9),
            hysteresis: dec!(0.1),
            ..Thresholds::default()
        })),
        1 => Just(Some(Thresholds {
            warning_levels: vec![],
            trigger: dec!(0.6),
            hysteresis: dec!(0),
            ..Thresholds::default()
        })),
        // The account's own distance levels (issue 13), with and without hysteresis.
        1 => Just(Some(Thresholds {
            warning_levels: vec![dec!(0.3)],
            trigger: dec!(0.9),
            hysteresis: dec!(0.1),
            warn_within_shock: vec![dec!(0.2), dec!(0.05)],
            shock_hysteresis: dec!(0.01),
        })),
        1 => Just(Some(Thresholds {
            warn_within_shock: vec![dec!(0.5), dec!(0.1), dec!(0.01)],
            shock_hysteresis: dec!(0),
            ..Thresholds::default()
        })),
    ]
}

fn account(i: usize) -> impl Strategy<Value = Account> {
    let collateral = proptest::collection::btree_map(
        0usize..3,
        (0i64..4_000, 0u32..3).prop_map(|(m, s)| Decimal::new(m, s)),
        0..3,
    );
    let positions = proptest::collection::vec((0usize..5, side(), qty(), -1500i64..1500), 0..4);
    (collateral, positions, thresholds()).prop_map(move |(c, ps, thresholds)| {
        let mut seen = BTreeSet::new();
        let positions = ps
            .into_iter()
            .filter(|(inst, side, _, _)| seen.insert((*inst, *side)))
            .map(|(inst, side, q, bp)| Position {
                instrument: CONTRACTS[inst].into(),
                side,
                quantity: match side {
                    PositionSide::Long => q.abs(),
                    PositionSide::Short => -q.abs(),
                    PositionSide::Both => q,
                },
                entry_price: (Decimal::from(BASE[inst]) * (Decimal::ONE + Decimal::new(bp, 4)))
                    .round_dp(2),
            })
            .collect();
        Account {
            id: id(i),
            collateral: c
                .into_iter()
                .map(|(k, v)| (InstrumentId::from(ASSETS[k]), v))
                .collect::<BTreeMap<_, _>>(),
            positions,
            thresholds,
            apply_funding: false,
        }
    })
}

fn small_or_big_move() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -150i64..150,
        2 => -1500i64..1500,
        1 => -4000i64..4000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0usize..PRICED.len(), small_or_big_move()).prop_map(|(i, bp)| Op::Move(i, bp)),
        3 => (0usize..PRICED.len(), small_or_big_move(), 0usize..PRICED.len(), small_or_big_move())
            .prop_map(|(a, x, b, y)| Op::Burst(a, x, b, y)),
        1 => (0usize..PRICED.len(), prop_oneof![9 => (1i64..120_000).prop_map(Decimal::from), 1 => Just(Decimal::ZERO)])
            .prop_map(|(i, p)| Op::Set(i, p)),
        2 => (0usize..ACCOUNTS).prop_flat_map(|a| account(a).prop_map(move |acc| Op::Replace(a, acc))),
        2 => (0usize..ACCOUNTS, 0usize..5, side(), qty(), -500i64..500)
            .prop_map(|(a, i, side, q, bp)| Op::Fill(a, Fill {
                instrument: CONTRACTS[i].into(),
                side,
                quantity: q,
                price: (Decimal::from(BASE[i]) * (Decimal::ONE + Decimal::new(bp, 4))).round_dp(2),
                fee: dec!(0.5),
                settle_asset: None,
            })),
        2 => (0usize..ACCOUNTS, 0usize..3, (-2_000i64..2_000).prop_map(|m| Decimal::new(m, 1)))
            .prop_map(|(a, s, d)| Op::Collateral(a, s, d)),
        1 => (0usize..ACCOUNTS).prop_map(Op::Remove),
        1 => (0usize..ACCOUNTS).prop_flat_map(|a| account(a).prop_map(|account| Op::Reverted(AccountUpdate::Replace { account }))),
        1 => (0usize..ACCOUNTS, 0usize..3, (-2_000i64..2_000).prop_map(|m| Decimal::new(m, 1)))
            .prop_map(|(a, s, delta)| Op::Reverted(AccountUpdate::Collateral { account_id: id(a), asset: ASSETS[s].into(), delta })),
        1 => (0usize..ACCOUNTS).prop_map(|a| Op::Reverted(AccountUpdate::Remove { account_id: id(a) })),
        2 => (0usize..PRICED.len()).prop_map(Op::Stale),
    ]
}

fn id(i: usize) -> AccountId {
    format!("acct-{i}").into()
}

/// Distance levels in the defaults (`shock`), or none (the default of the product).
fn engine(distance_index: bool, policy: StalePolicy, shock: bool) -> Engine {
    let map = Arc::new(AccountMap::new(instruments()));
    Engine::new(
        map,
        EngineConfig {
            monitor: MonitorConfig {
                thresholds: Thresholds {
                    warning_levels: vec![dec!(0.5), dec!(0.8)],
                    trigger: dec!(1.0),
                    hysteresis: dec!(0.05),
                    warn_within_shock: if shock {
                        vec![dec!(0.15), dec!(0.08), dec!(0.02)]
                    } else {
                        Vec::new()
                    },
                    shock_hysteresis: dec!(0.01),
                },
                trigger_on_stale: policy,
            },
            distance_index,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The parts of an event both engines must agree on (ids are random).
fn comparable(e: &Emitted) -> (AccountId, String, RiskEvent) {
    let mut ev = e.event.clone();
    ev.event_id = Default::default();
    (e.account_id.clone(), e.state_json.clone(), ev)
}

/// One step's events in the order the contract fixes: per account, in emission order. Across
/// accounts a step's order is not part of the contract (the eager engine emits in touch order,
/// the index in key order), so a stable sort by account id keeps exactly what must agree.
fn per_account(events: &[Emitted]) -> Vec<(AccountId, String, RiskEvent)> {
    let mut v: Vec<_> = events.iter().map(comparable).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

struct Pair {
    eager: Engine,
    lazy: Engine,
    /// What the board would say of each price: source, age and the stale flag.
    info: HashMap<InstrumentId, PriceUsed>,
    now: i64,
    events: usize,
}

impl Pair {
    fn new(policy: StalePolicy, shock: bool) -> Pair {
        Pair {
            eager: engine(false, policy, shock),
            lazy: engine(true, policy, shock),
            info: HashMap::new(),
            now: 1_700_000_000_000,
            events: 0,
        }
    }

    fn stale(&self, i: &InstrumentId) -> bool {
        self.info.get(i).is_some_and(|p| p.stale)
    }

    fn set_info(&mut self, i: &InstrumentId, price: Decimal, stale: bool) {
        self.info.insert(
            i.clone(),
            PriceUsed {
                instrument: i.clone(),
                price,
                source: "test".into(),
                received_ts: self.now,
                age_ms: 0,
                stale,
            },
        );
    }

    /// One burst as the runner takes it from the board: each instrument once, the latest price.
    /// A fresh price for a stale instrument is applied first (the board already calls it fresh),
    /// then the staleness tick reports it restored.
    fn prices(&mut self, changed: Vec<(InstrumentId, Decimal)>) -> Result<(), TestCaseError> {
        self.now += 1;
        let mut burst: Vec<(InstrumentId, Decimal)> = Vec::new();
        for (i, p) in changed {
            match burst.iter_mut().find(|(j, _)| *j == i) {
                Some(slot) => slot.1 = p,
                None => burst.push((i, p)),
            }
        }
        let restored: Vec<InstrumentId> = burst
            .iter()
            .filter(|(i, p)| *p > Decimal::ZERO && self.stale(i))
            .map(|(i, _)| i.clone())
            .collect();
        for (i, p) in &burst {
            if *p > Decimal::ZERO {
                self.set_info(i, *p, false);
            }
        }
        let a = self
            .eager
            .on_prices(burst.iter().map(|(i, p)| (i, *p)), &self.info, self.now);
        // The indexed engine takes its events in chunks of 3 accounts (the daemon's pipelined
        // step, `on_prices_chunked`): the same events, in the same order, as one whole step.
        let mut b: Vec<Emitted> = Vec::new();
        let mut empty_chunks = 0;
        self.lazy.on_prices_chunked(
            burst.iter().map(|(i, p)| (i, *p)),
            &self.info,
            self.now,
            3,
            &mut |mut chunk| {
                empty_chunks += usize::from(chunk.is_empty());
                b.append(&mut chunk);
            },
        );
        prop_assert_eq!(empty_chunks, 0, "an empty chunk was emitted");
        self.events += a.len();
        prop_assert_eq!(per_account(&a), per_account(&b), "events after {:?}", burst);
        let order = |v: &[Emitted]| -> Vec<(AccountId, EventKind, u64)> {
            v.iter()
                .map(|e| (e.account_id.clone(), e.event.kind, e.event.seq))
                .collect()
        };
        prop_assert_eq!(order(&a), order(&b), "event order after {:?}", burst);
        for i in restored {
            self.feed(i, EventKind::FeedRestored)?;
        }
        Ok(())
    }

    /// A staleness transition, as the board reports it.
    fn feed(&mut self, instrument: InstrumentId, kind: EventKind) -> Result<(), TestCaseError> {
        self.now += 1;
        let t = StaleTransition {
            kind,
            seq: 0,
            info: FeedEventInfo {
                instrument,
                venues: Vec::new(),
                last_price: None,
                age_ms: None,
                stale_after_ms: 5_000,
            },
        };
        let a = self
            .eager
            .on_feed(std::slice::from_ref(&t), &self.info, self.now);
        let b = self
            .lazy
            .on_feed(std::slice::from_ref(&t), &self.info, self.now);
        self.events += a.emitted.len();
        let strip = |evs: &[RiskEvent]| -> Vec<RiskEvent> {
            evs.iter()
                .map(|e| RiskEvent {
                    event_id: Default::default(),
                    ..e.clone()
                })
                .collect()
        };
        prop_assert_eq!(strip(&a.feed_events), strip(&b.feed_events));
        prop_assert_eq!(
            per_account(&a.emitted),
            per_account(&b.emitted),
            "events after {:?}",
            kind
        );
        Ok(())
    }

    fn go_stale(&mut self, i: usize) -> Result<(), TestCaseError> {
        let inst: InstrumentId = PRICED[i].0.into();
        if self.stale(&inst) {
            return Ok(());
        }
        let Some(price) = self.eager.map().price(&inst) else {
            return Ok(());
        };
        self.set_info(&inst, price, true);
        self.feed(inst, EventKind::FeedStale)
    }

    fn update(&mut self, u: AccountUpdate) -> Result<(), TestCaseError> {
        self.now += 1;
        let id = u.account_id().clone();
        let ra = self.eager.on_update(u.clone(), &self.info, self.now);
        let rb = self.lazy.on_update(u, &self.info, self.now);
        match (ra, rb) {
            (Ok((oa, a)), Ok((ob, b))) => {
                prop_assert_eq!(oa, ob);
                self.events += a.len();
                prop_assert_eq!(
                    per_account(&a),
                    per_account(&b),
                    "events after an update of {}",
                    id
                );
            }
            (Err(ea), Err(eb)) => prop_assert_eq!(ea, eb),
            (ra, rb) => prop_assert!(false, "eager {:?} vs indexed {:?}", ra, rb),
        }
        Ok(())
    }

    /// The daemon's path when the store refuses the write: apply, then put the map back.
    /// Nothing is emitted, and both engines must be exactly as before.
    fn reverted(&mut self, u: AccountUpdate) -> Result<(), TestCaseError> {
        let id = u.account_id().clone();
        let before = (self.eager.map().account(&id), self.lazy.map().account(&id));
        let states = (
            self.eager.monitor().state(self.eager.map(), &id),
            self.lazy.monitor().state(self.lazy.map(), &id),
        );
        for e in [&mut self.eager, &mut self.lazy] {
            if let Ok(pending) = e.begin_update(u.clone()) {
                e.revert(pending)
                    .map_err(|err| TestCaseError::fail(err.to_string()))?;
            }
        }
        prop_assert_eq!(&before.0, &self.eager.map().account(&id));
        prop_assert_eq!(&before.1, &self.lazy.map().account(&id));
        // The account keeps its monitor state: a reverted removal must not re-arm its events.
        prop_assert_eq!(
            &states.0,
            &self.eager.monitor().state(self.eager.map(), &id)
        );
        prop_assert_eq!(&states.1, &self.lazy.monitor().state(self.lazy.map(), &id));
        Ok(())
    }

    fn current(&self, i: usize) -> Decimal {
        self.eager
            .map()
            .price(&PRICED[i].0.into())
            .unwrap_or_else(|| Decimal::from(PRICED[i].1))
    }

    fn moved(&self, i: usize, bp: i64) -> (InstrumentId, Decimal) {
        let p = (self.current(i) * (Decimal::ONE + Decimal::new(bp, 4)))
            .round_dp(2)
            .max(dec!(0.01));
        (PRICED[i].0.into(), p)
    }

    fn same_states(&self) -> Result<(), TestCaseError> {
        for i in 0..ACCOUNTS {
            prop_assert_eq!(
                self.eager.monitor().state(self.eager.map(), &id(i)),
                self.lazy.monitor().state(self.lazy.map(), &id(i)),
                "monitor state of {}",
                id(i)
            );
        }
        crate::engine::distance_oracle::distance_states_agree_with_scratch(
            &self.eager,
            (0..ACCOUNTS).map(id),
        )
    }

    /// Brings the lazy map forward and compares every figure with the eager map and the
    /// from-scratch oracle.
    fn same_figures(&self) -> Result<(), TestCaseError> {
        let (eager_map, lazy_map) = (self.eager.map(), self.lazy.map());
        let prices = eager_map.prices();
        prop_assert_eq!(&prices, &lazy_map.prices());
        for i in 0..ACCOUNTS {
            let Some(key) = lazy_map.key_of(&id(i)) else {
                prop_assert!(eager_map.key_of(&id(i)).is_none());
                continue;
            };
            let lazy = lazy_map.materialise(key);
            let eager = eager_map.read_key(key, |v| v.as_touched());
            prop_assert_eq!(lazy, eager, "figures of {}", id(i));
            let account = lazy_map.account(&id(i)).unwrap_or_else(|| unreachable!());
            if let (Ok(t), Some(l)) = (
                margin::account_totals(&account, &*lazy_map.instruments(), &prices),
                lazy,
            ) {
                prop_assert_eq!(l.equity, t.equity);
                prop_assert_eq!(l.maintenance_margin, t.maintenance_margin);
            }
        }
        Ok(())
    }
}

/// 128 cases by default; `PROPTEST_CASES=5000` soaks it.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Waking only the accounts the index names emits exactly the events of revaluing every
    /// holder on every tick, leaves the same monitor states after every step, and the lazy
    /// caches catch up to the exact figures.
    #[test]
    fn index_emits_exactly_what_the_eager_engine_emits(
        seed in proptest::collection::vec((0usize..ACCOUNTS).prop_flat_map(|a| account(a).prop_map(move |acc| Op::Replace(a, acc))), 3..10),
        more in proptest::collection::vec(op(), 1..80),
        hold in any::<bool>(),
        shock in any::<bool>(),
    ) {
        let mut pair = Pair::new(if hold { StalePolicy::Hold } else { StalePolicy::Fire }, shock);
        // Every instrument starts priced, so accounts are complete and get bands.
        let start: Vec<(InstrumentId, Decimal)> = PRICED.iter().map(|(i, p)| (InstrumentId::from(*i), Decimal::from(*p))).collect();
        pair.prices(start)?;
        for op in seed.into_iter().chain(more) {
            match op {
                Op::Move(i, bp) => {
                    let m = pair.moved(i, bp);
                    pair.prices(vec![m])?;
                }
                Op::Burst(a, x, b, y) => {
                    let (ma, mb) = (pair.moved(a, x), pair.moved(b, y));
                    pair.prices(vec![ma, mb])?;
                }
                Op::Set(i, p) => pair.prices(vec![(PRICED[i].0.into(), p)])?,
                Op::Replace(_, account) => pair.update(AccountUpdate::Replace { account })?,
                Op::Fill(i, fill) => pair.update(AccountUpdate::Fill { account_id: id(i), fill })?,
                Op::Collateral(i, s, delta) => pair.update(AccountUpdate::Collateral {
                    account_id: id(i),
                    asset: ASSETS[s].into(),
                    delta,
                })?,
                Op::Remove(i) => pair.update(AccountUpdate::Remove { account_id: id(i) })?,
                Op::Reverted(u) => pair.reverted(u)?,
                Op::Stale(i) => pair.go_stale(i)?,
            }
            pair.same_states()?;
        }
        pair.same_figures()?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Long random walks of small moves, one or two instruments at a time: bands are left over
    /// and over, and most leavers are re-spread rather than valued — each re-spread must keep
    /// exactly the states, events and figures of revaluing every holder on every tick. (The
    /// mixed test above reaches re-spreads too, but rarely with much budget already used.)
    #[test]
    fn respread_walks_match_the_eager_engine(
        seed in proptest::collection::vec((0usize..ACCOUNTS).prop_flat_map(|a| account(a).prop_map(move |acc| (a, acc))), 4..10),
        walk in proptest::collection::vec((0usize..PRICED.len(), -10i64..40, proptest::option::of((0usize..PRICED.len(), -10i64..40))), 100..300),
        down in any::<bool>(),
        shock in any::<bool>(),
    ) {
        // A trend (mostly one way on every instrument) lines the deviations up, so the budget's
        // triangle bound is nearly tight when an account crosses: a re-spread that gives away
        // more than is left shows up as a missed crossing.
        let sign = if down { -1 } else { 1 };
        let mut pair = Pair::new(StalePolicy::Fire, shock);
        let start: Vec<(InstrumentId, Decimal)> = PRICED.iter().map(|(i, p)| (InstrumentId::from(*i), Decimal::from(*p))).collect();
        pair.prices(start)?;
        for (_, account) in seed {
            pair.update(AccountUpdate::Replace { account })?;
        }
        for (i, bp, other) in walk {
            let mut step = vec![pair.moved(i, sign * bp)];
            if let Some((j, bq)) = other.filter(|(j, _)| *j != i) {
                step.push(pair.moved(j, sign * bq));
            }
            pair.prices(step)?;
            pair.same_states()?;
        }
        pair.same_figures()?;
    }
}

/// Both engines, every instrument at its base price (`PRICED`), no accounts yet.
fn priced_pair(shock: bool) -> Pair {
    let mut pair = Pair::new(StalePolicy::Fire, shock);
    let start: Vec<(InstrumentId, Decimal)> = PRICED
        .iter()
        .map(|(i, p)| (InstrumentId::from(*i), Decimal::from(*p)))
        .collect();
    pair.prices(start).unwrap_or_else(|e| panic!("{e}"));
    pair
}

fn calm_book(n: usize, shock: bool) -> Pair {
    let mut pair = priced_pair(shock);
    for i in 0..n {
        // Long 1 BTC from 50,000 and long 10 ETH (0.1 size) from 3,000 with 1,000 + i USDT:
        // ratio ≈ 0.4 at the start (healthy), warning at 0.5 after a few percent down.
        let account = Account {
            id: format!("calm-{i}").into(),
            collateral: [(InstrumentId::from("USDT"), Decimal::from(1_000 + i as i64))]
                .into_iter()
                .collect(),
            positions: vec![
                Position {
                    instrument: "BTCUSDT-PERP".into(),
                    side: PositionSide::Both,
                    quantity: dec!(1),
                    entry_price: dec!(50000),
                },
                Position {
                    instrument: "ETHUSDT-PERP".into(),
                    side: PositionSide::Both,
                    quantity: dec!(10),
                    entry_price: dec!(3000),
                },
            ],
            thresholds: None,
            apply_funding: false,
        };
        pair.update(AccountUpdate::Replace { account })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    pair
}

/// A band pays for the steepest tier a move can reach, not the one the position is in: short
/// 45 SOL from 100 (notional 4,500, the 3 % tier; 10 % from 5,000, i.e. SOL ≥ 111.11) with
/// 990 USDT reaches the first level (0.5) at SOL 115 only because of the 10 % tier. Paying for
/// 3 % would give a band up to ~115.09; the jump to 115.05 must wake the account and warn, as
/// the eager engine does (a `.min()` for `.max()` of the reachable rate fails here).
#[test]
fn a_move_into_a_steeper_tier_wakes_the_account() {
    let mut pair = priced_pair(false);
    let account = Account {
        id: "steep-short".into(),
        collateral: [(InstrumentId::from("USDT"), dec!(990))]
            .into_iter()
            .collect(),
        positions: vec![Position {
            instrument: "SOLUSDT-PERP".into(),
            side: PositionSide::Both,
            quantity: dec!(-45),
            entry_price: dec!(100),
        }],
        thresholds: None,
        apply_funding: false,
    };
    pair.update(AccountUpdate::Replace { account })
        .unwrap_or_else(|e| panic!("{e}"));
    let (tracked, banded) = pair.lazy.index().map(|i| i.counts()).unwrap_or_default();
    assert_eq!((tracked, banded), (1, 1), "the account is banded");
    // Its band paid for the 10 % tier: it ends below 115, where the warning is.
    let m = pair.lazy.map();
    let key = m.key_of(&"steep-short".into()).unwrap_or(u32::MAX);
    let sol = m
        .instruments()
        .index(&"SOLUSDT-PERP".into())
        .unwrap_or(u32::MAX);
    let band = pair.lazy.index().and_then(|i| i.band_of(key, sol));
    assert!(
        band.is_some_and(|(lo, hi)| lo < dec!(100) && hi > dec!(110) && hi < dec!(115)),
        "{band:?}"
    );
    // SOL 110: still the 3 % tier, ratio (148.5 − 10) / 540 ≈ 0.26: nothing.
    pair.prices(vec![("SOLUSDT-PERP".into(), dec!(110))])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pair.events, 0);
    // SOL 115.05: MM 0.10 · 5,177.25 − 360 = 157.725, equity 990 − 677.25 = 312.75, ratio
    // 0.5043.
    pair.prices(vec![("SOLUSDT-PERP".into(), dec!(115.05))])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pair.events, 1,
        "the warning at 0.5 (both engines agree: checked per step)"
    );
    pair.same_states().unwrap_or_else(|e| panic!("{e}"));
    pair.same_figures().unwrap_or_else(|e| panic!("{e}"));
}

/// The index does skip work: a 0.1 % move wakes none of 500 calm accounts, while a crash that
/// takes them into warning wakes them and the events still match the eager engine's.
#[test]
fn small_moves_wake_nobody_and_a_crash_wakes_the_crossers() {
    let mut pair = calm_book(500, false);
    let (tracked, banded) = pair.lazy.index().map(|i| i.counts()).unwrap_or_default();
    assert_eq!(
        (tracked, banded),
        (500, 500),
        "every calm account is banded"
    );
    let m = pair.moved(0, -10);
    pair.prices(vec![m]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pair.lazy.last_valued(), 0, "accounts woken by a 0.1 % move");
    assert_eq!(
        pair.eager.last_valued(),
        500,
        "the eager engine values every holder"
    );
    assert_eq!(pair.events, 0);
    // −3 % on BTC: equity ≈ 1,000 + i − 1,550 < 0 for every account → every one triggers.
    let m = pair.moved(0, -300);
    pair.prices(vec![m]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pair.lazy.last_valued(),
        500,
        "every account is woken by the crash"
    );
    assert_eq!(
        pair.events, 500,
        "and each emits its event, as the eager engine does"
    );
    pair.same_states().unwrap_or_else(|e| panic!("{e}"));
    pair.same_figures().unwrap_or_else(|e| panic!("{e}"));
}

/// Re-banding many accounts at once (the first step, a crash) reads each price's keys once for
/// all of them; the bands are the ones each account gets on its own. 500 calm accounts banded
/// one by one (by their updates), then all together by `evaluate_all`: every band is the same,
/// and a 0.1 % move still wakes nobody.
#[test]
fn bulk_rebanding_gives_each_account_its_own_bands() {
    let mut pair = calm_book(500, false);
    let bands = |pair: &Pair| -> Vec<Option<(Decimal, Decimal)>> {
        let m = pair.lazy.map();
        let table = m.instruments();
        let instrs: Vec<u32> = ["BTCUSDT-PERP", "ETHUSDT-PERP"]
            .iter()
            .map(|i| table.index(&(*i).into()).unwrap_or(u32::MAX))
            .collect();
        m.keys()
            .into_iter()
            .flat_map(|k| instrs.iter().map(move |i| (k, *i)))
            .map(|(k, i)| pair.lazy.index().and_then(|x| x.band_of(k, i)))
            .collect()
    };
    let one_by_one = bands(&pair);
    assert_eq!(one_by_one.len(), 1_000);
    assert!(
        one_by_one.iter().all(Option::is_some),
        "every calm account is banded on both"
    );
    let info = pair.info.clone();
    let _ = pair.lazy.evaluate_all(&info, pair.now);
    assert_eq!(bands(&pair), one_by_one);
    let m = pair.moved(0, -10);
    pair.prices(vec![m]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pair.lazy.last_valued(), 0, "accounts woken by a 0.1 % move");
}

/// A price that leaves an account's band having used only part of the account's budget
/// re-spreads the budget (new bands around the same anchors, no valuation); once the budget is
/// spent the account is valued. Through a slow BTC climb both engines keep the same states and
/// events, and the lazy map's figures equal a from-scratch recomputation at the end.
#[test]
fn a_partly_used_budget_is_respread_without_valuing() {
    let mut pair = calm_book(500, false);
    let (mut respread, mut valued) = (0, 0);
    for _ in 0..60 {
        let m = pair.moved(0, 10);
        pair.prices(vec![m]).unwrap_or_else(|e| panic!("{e}"));
        respread += pair.lazy.last_respread();
        valued += pair.lazy.last_valued();
        assert_eq!(
            pair.eager.last_respread(),
            0,
            "the eager engine has no bands"
        );
        pair.same_states().unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(respread > 0, "no account was re-spread");
    assert!(valued > 0, "no account spent its budget and was valued");
    assert!(
        valued < 60 * 500,
        "the index valued {valued}: every account on every tick"
    );
    pair.same_figures().unwrap_or_else(|e| panic!("{e}"));
}

/// With distance levels in the defaults the calm book is still banded (each account within 2 %
/// of its trigger sits at the innermost distance level, banded against recovery), a 0.1 % move
/// still wakes nobody, and the crash's events match the eager engine's.
#[test]
fn distance_levels_keep_calm_accounts_banded() {
    let mut pair = calm_book(200, true);
    let (tracked, banded) = pair.lazy.index().map(|i| i.counts()).unwrap_or_default();
    assert_eq!(
        (tracked, banded),
        (200, 200),
        "every calm account is banded"
    );
    let m = pair.moved(0, -10);
    pair.prices(vec![m]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pair.lazy.last_valued(), 0, "accounts woken by a 0.1 % move");
    let m = pair.moved(0, -300);
    pair.prices(vec![m]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pair.lazy.last_valued(), 200);
    pair.same_states().unwrap_or_else(|e| panic!("{e}"));
    pair.same_figures().unwrap_or_else(|e| panic!("{e}"));
}

/// Issue 10: a book large enough that a correlated move re-bands most holders in bulk (sorted
/// rebuilds of the fixed-point band sets) and values and re-bands the woken accounts on every
/// core — the events, states and figures still equal the eager engine's, step after step.
#[test]
fn bulk_rebanding_and_parallel_valuation_match_the_eager_engine() {
    let n = 5_000;
    let mut pair = calm_book(n, false);
    let (tracked, banded) = pair.lazy.index().map(|i| i.counts()).unwrap_or_default();
    assert_eq!((tracked, banded), (n, n), "every calm account is banded");
    let (mut woken, mut respread) = (Vec::new(), Vec::new());
    // Both instruments down together, then back, then further down, then a small move; then
    // BTC alone, in steps that take accounts out of their BTC band with budget left.
    let steps = [(-300, -300), (250, 150), (-600, -400), (-5, 3), (900, 800)];
    let btc_alone = [(-80, 0), (-80, 0), (-80, 0), (-80, 0), (-80, 0), (-80, 0)];
    for (btc, eth) in steps.into_iter().chain(btc_alone) {
        let (a, b) = (pair.moved(0, btc), pair.moved(1, eth));
        pair.prices(vec![a, b]).unwrap_or_else(|e| panic!("{e}"));
        woken.push(pair.lazy.last_valued());
        respread.push(pair.lazy.last_respread());
        for i in 0..n {
            let id = AccountId::from(format!("calm-{i}"));
            assert_eq!(
                pair.eager.monitor().state(pair.eager.map(), &id),
                pair.lazy.monitor().state(pair.lazy.map(), &id),
                "monitor state of {id}"
            );
        }
    }
    assert!(
        pair.events > 1_000,
        "the moves cross levels: {} events",
        pair.events
    );
    assert!(
        woken.iter().any(|w| *w > 2_048),
        "a move woke enough accounts to split the work: {woken:?}"
    );
    // The accounts a price leaves are woken or re-spread; enough of them split the index's
    // settling over the cores, and some of those keep budget to re-spread.
    assert!(
        woken
            .iter()
            .zip(&respread)
            .any(|(w, r)| w + r > 2_048 && *r > 0),
        "a move re-spread accounts in a split settle: woken {woken:?}, re-spread {respread:?}"
    );
    // The lazy figures catch up to the eager ones and to a from-scratch recomputation.
    let (eager_map, lazy_map) = (pair.eager.map(), pair.lazy.map());
    let prices = eager_map.prices();
    for i in 0..n {
        let id = AccountId::from(format!("calm-{i}"));
        let key = lazy_map.key_of(&id).unwrap_or_else(|| panic!("{id}"));
        let lazy = lazy_map.materialise(key).unwrap_or_else(|| panic!("{id}"));
        let eager = eager_map.read_key(key, |v| v.as_touched());
        assert_eq!(Some(&lazy), eager.as_ref(), "figures of {id}");
        let account = lazy_map.account(&id).unwrap_or_else(|| panic!("{id}"));
        let t = margin::account_totals(&account, &*lazy_map.instruments(), &prices)
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(
            (lazy.equity, lazy.maintenance_margin),
            (t.equity, t.maintenance_margin)
        );
    }
}
