//! The distance index against the eager engine: two maps and two monitors fed the same random
//! ticks and account updates, one revaluing every holder on every tick, the other waking only
//! the accounts the index says a move can change. They must emit exactly the same events
//! (kind, account, seq, levels, states and the full snapshot), hold the same monitor states
//! after every step, and — once the lazy map is brought to the current prices — the same
//! figures, equal to the from-scratch recomputation.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use liqwatch::accounts::{AccountMap, Touched};
use liqwatch::distance::{self, DistanceIndex};
use liqwatch::margin;
use liqwatch::model::{
    Account, AccountId, AccountUpdate, Fill, Instrument, InstrumentId, InstrumentKind, Position,
    PositionSide, PriceUsed, RiskEvent, Thresholds,
};
use liqwatch::monitor::{Emitted, Monitor, MonitorConfig};
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
    let mut sol = instrument("SOLUSDT-PERP", InstrumentKind::LinearPerpetual, "SOL");
    sol.tiers = vec![
        tier(dec!(0), dec!(1000), dec!(0.01), dec!(0)),
        tier(dec!(1000), dec!(100000), dec!(0.03), dec!(10)),
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
        })),
        1 => Just(Some(Thresholds {
            warning_levels: vec![],
            trigger: dec!(0.6),
            hysteresis: dec!(0),
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
    ]
}

fn id(i: usize) -> AccountId {
    format!("acct-{i}").into()
}

fn monitor() -> Monitor {
    Monitor::new(MonitorConfig {
        thresholds: Thresholds {
            warning_levels: vec![dec!(0.5), dec!(0.8)],
            trigger: dec!(1.0),
            hysteresis: dec!(0.05),
        },
        ..MonitorConfig::default()
    })
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
    eager_map: AccountMap,
    eager: Monitor,
    lazy_map: AccountMap,
    lazy: Monitor,
    index: DistanceIndex,
    info: HashMap<InstrumentId, PriceUsed>,
    wake: Vec<u32>,
    buf: Vec<Touched>,
    now: i64,
    events: usize,
}

impl Pair {
    fn new() -> Pair {
        let lazy_map = AccountMap::new(instruments());
        let index = DistanceIndex::new(lazy_map.instruments());
        Pair {
            eager_map: AccountMap::new(instruments()),
            eager: monitor(),
            lazy_map,
            lazy: monitor(),
            index,
            info: HashMap::new(),
            wake: Vec::new(),
            buf: Vec::new(),
            now: 1_700_000_000_000,
            events: 0,
        }
    }

    fn prices(&mut self, changed: Vec<(InstrumentId, Decimal)>) -> Result<(), TestCaseError> {
        self.now += 1;
        let mut buf = Vec::new();
        let a = self.eager.on_prices(
            &self.eager_map,
            changed.clone(),
            &self.info,
            self.now,
            &mut buf,
        );
        let b = distance::on_prices(
            &self.lazy_map,
            &mut self.lazy,
            &mut self.index,
            changed.iter().map(|(i, p)| (i, *p)),
            &self.info,
            self.now,
            &mut self.wake,
            &mut self.buf,
        );
        self.events += a.len();
        let (a, b) = (per_account(&a), per_account(&b));
        prop_assert_eq!(a, b, "events after {:?}", changed);
        Ok(())
    }

    fn update(&mut self, u: AccountUpdate) -> Result<(), TestCaseError> {
        self.now += 1;
        let id = u.account_id().clone();
        let ra = self.eager_map.apply_update(u.clone());
        let rb = self.lazy_map.apply_update(u);
        prop_assert_eq!(&ra, &rb);
        if let (Ok(oa), Ok(ob)) = (ra, rb) {
            let a = self
                .eager
                .on_update(&self.eager_map, &oa, &id, &self.info, self.now);
            let b = self
                .lazy
                .on_update(&self.lazy_map, &ob, &id, &self.info, self.now);
            distance::on_update(&self.lazy_map, &self.lazy, &mut self.index, ob.key());
            self.events += a.len();
            let (a, b) = (per_account(&a), per_account(&b));
            prop_assert_eq!(a, b, "events after an update of {}", id);
        }
        Ok(())
    }

    fn current(&self, i: usize) -> Decimal {
        self.eager_map
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
                self.eager.state(&self.eager_map, &id(i)),
                self.lazy.state(&self.lazy_map, &id(i)),
                "monitor state of {}",
                id(i)
            );
        }
        Ok(())
    }

    /// Brings the lazy map forward and compares every figure with the eager map and the
    /// from-scratch oracle.
    fn same_figures(&self) -> Result<(), TestCaseError> {
        let prices = self.eager_map.prices();
        prop_assert_eq!(&prices, &self.lazy_map.prices());
        for i in 0..ACCOUNTS {
            let Some(key) = self.lazy_map.key_of(&id(i)) else {
                prop_assert!(self.eager_map.key_of(&id(i)).is_none());
                continue;
            };
            let lazy = self.lazy_map.materialise(key);
            let eager = self.eager_map.read_key(key, |v| v.as_touched());
            prop_assert_eq!(lazy, eager, "figures of {}", id(i));
            let account = self
                .lazy_map
                .account(&id(i))
                .unwrap_or_else(|| unreachable!());
            if let (Ok(t), Some(l)) = (
                margin::account_totals(&account, self.lazy_map.instruments(), &prices),
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
    ) {
        let mut pair = Pair::new();
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
            }
            pair.same_states()?;
        }
        pair.same_figures()?;
    }
}

fn calm_book(n: usize) -> Pair {
    let mut pair = Pair::new();
    let start: Vec<(InstrumentId, Decimal)> = PRICED
        .iter()
        .map(|(i, p)| (InstrumentId::from(*i), Decimal::from(*p)))
        .collect();
    pair.prices(start).unwrap_or_else(|e| panic!("{e}"));
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
        };
        pair.update(AccountUpdate::Replace { account })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    pair
}

/// The index does skip work: a 0.1 % move wakes none of 500 calm accounts, while a crash that
/// takes them into warning wakes them and the events still match the eager engine's.
#[test]
fn small_moves_wake_nobody_and_a_crash_wakes_the_crossers() {
    let mut pair = calm_book(500);
    let (tracked, banded) = pair.index.counts();
    assert_eq!(
        (tracked, banded),
        (500, 500),
        "every calm account is banded"
    );
    let m = pair.moved(0, -10);
    pair.prices(vec![m]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        pair.buf.is_empty(),
        "{} woken by a 0.1 % move",
        pair.buf.len()
    );
    assert_eq!(pair.events, 0);
    // −3 % on BTC: equity ≈ 1,000 + i − 1,550 < 0 for every account → every one triggers.
    let m = pair.moved(0, -300);
    pair.prices(vec![m]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pair.buf.len(), 500, "every account is woken by the crash");
    assert_eq!(
        pair.events, 500,
        "and each emits its event, as the eager engine does"
    );
    pair.same_states().unwrap_or_else(|e| panic!("{e}"));
    pair.same_figures().unwrap_or_else(|e| panic!("{e}"));
}
