//! Property test of the account map: random ticks and account updates across many accounts and
//! instruments (linear, inverse, flat and tiered collateral haircuts, hedge legs); after every
//! step every cached figure equals `margin::account_totals` exactly and the holders index holds
//! exactly the holders.

use std::collections::{BTreeMap, BTreeSet};

use liqwatch::engine::map::AccountMap;
use liqwatch::margin;
use liqwatch::model::{
    Account, AccountId, AccountUpdate, Fill, HaircutTier, Instrument, InstrumentId, InstrumentKind,
    Position, PositionSide,
};
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
        tier(dec!(3000000), dec!(12000000), dec!(0.01), dec!(11450)),
    ];
    let mut eth = instrument("ETHUSDT-PERP", InstrumentKind::LinearPerpetual, "ETH");
    eth.tiers = vec![
        tier(dec!(0), dec!(20000), dec!(0.005), dec!(0)),
        tier(dec!(20000), dec!(100000), dec!(0.0065), dec!(30)),
        tier(dec!(100000), dec!(800000), dec!(0.01), dec!(380)),
    ];
    let mut inv = instrument("BTCUSD-PERP", InstrumentKind::InversePerpetual, "BTC");
    inv.contract_size = dec!(100);
    inv.tiers = vec![
        tier(dec!(0), dec!(5), dec!(0.004), dec!(0)),
        tier(dec!(5), dec!(10), dec!(0.005), dec!(0.005)),
        tier(dec!(10), dec!(20), dec!(0.01), dec!(0.055)),
    ];
    let mut usdt = instrument("USDT", InstrumentKind::Collateral, "USDT");
    usdt.stable = true;
    let mut btc_c = instrument("BTC", InstrumentKind::Collateral, "BTC");
    btc_c.collateral_ratio = dec!(0.95);
    let mut eth_c = instrument("ETH", InstrumentKind::Collateral, "ETH");
    eth_c.haircut_tiers = vec![
        HaircutTier {
            amount_floor: dec!(0),
            ratio: dec!(0.95),
        },
        HaircutTier {
            amount_floor: dec!(10),
            ratio: dec!(0.9),
        },
        HaircutTier {
            amount_floor: dec!(50),
            ratio: dec!(0.8),
        },
    ];
    vec![btc, eth, inv, usdt, btc_c, eth_c]
}

const CONTRACTS: [&str; 3] = ["BTCUSDT-PERP", "ETHUSDT-PERP", "BTCUSD-PERP"];
const ASSETS: [&str; 3] = ["USDT", "BTC", "ETH"];
const PRICED: [&str; 5] = ["BTCUSDT-PERP", "ETHUSDT-PERP", "BTCUSD-PERP", "BTC", "ETH"];
const ACCOUNTS: usize = 8;

#[derive(Debug, Clone)]
enum Op {
    Tick(usize, Decimal),
    Replace(usize, Account),
    Fill(usize, Fill),
    Collateral(usize, usize, Decimal),
    Remove(usize),
}

fn price() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        20 => (1i64..120_000, 0u32..3).prop_map(|(m, s)| Decimal::new(m, s)),
        1 => Just(Decimal::ZERO),
    ]
}

fn qty() -> impl Strategy<Value = Decimal> {
    (-40_000i64..40_000, 0u32..4).prop_map(|(m, s)| Decimal::new(m, s))
}

fn side() -> impl Strategy<Value = PositionSide> {
    prop_oneof![
        Just(PositionSide::Both),
        Just(PositionSide::Long),
        Just(PositionSide::Short)
    ]
}

fn account(i: usize) -> impl Strategy<Value = Account> {
    let collateral = proptest::collection::btree_map(0usize..3, qty(), 0..3);
    let positions = proptest::collection::vec((0usize..3, side(), qty(), price()), 0..5);
    (collateral, positions).prop_map(move |(c, ps)| {
        let mut seen = BTreeSet::new();
        let positions = ps
            .into_iter()
            .filter(|(inst, side, _, _)| seen.insert((*inst, *side)))
            .map(|(inst, side, q, ep)| Position {
                instrument: CONTRACTS[inst].into(),
                side,
                // Mostly consistent hedge legs; sometimes not (rejected as a whole).
                quantity: match side {
                    PositionSide::Long if q.is_sign_negative() => -q,
                    PositionSide::Short if q.is_sign_positive() => -q,
                    _ => q,
                },
                entry_price: ep,
            })
            .collect();
        Account {
            id: format!("acct-{i}").into(),
            collateral: c
                .into_iter()
                .map(|(k, v)| (InstrumentId::from(ASSETS[k]), v))
                .collect::<BTreeMap<_, _>>(),
            positions,
            thresholds: None,
        }
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..PRICED.len(), price()).prop_map(|(i, p)| Op::Tick(i, p)),
        3 => (0usize..ACCOUNTS).prop_flat_map(|a| account(a).prop_map(move |acc| Op::Replace(a, acc))),
        4 => (0usize..ACCOUNTS, 0usize..3, side(), qty(), price(), (-50i64..500), proptest::option::of(0usize..3))
            .prop_map(|(a, i, side, q, p, fee, settle)| Op::Fill(a, Fill {
                instrument: CONTRACTS[i].into(),
                side,
                quantity: q,
                price: p,
                fee: Decimal::new(fee, 2),
                settle_asset: settle.map(|s| ASSETS[s].into()),
            })),
        2 => (0usize..ACCOUNTS, 0usize..3, qty()).prop_map(|(a, s, d)| Op::Collateral(a, s, d)),
        1 => (0usize..ACCOUNTS).prop_map(Op::Remove),
    ]
}

fn id(i: usize) -> AccountId {
    format!("acct-{i}").into()
}

/// Checks every cached figure against the from-scratch oracle and the index against contents.
fn check(m: &AccountMap, ids: &BTreeSet<usize>) -> Result<(), TestCaseError> {
    let prices = m.prices();
    prop_assert_eq!(m.len(), ids.len());
    let mut holders: BTreeMap<InstrumentId, Vec<AccountId>> = BTreeMap::new();
    for &i in ids {
        let a = m.account(&id(i));
        prop_assert!(a.is_some(), "account {} missing", i);
        let a = a.unwrap_or_else(|| unreachable!());
        for inst in a
            .collateral
            .keys()
            .chain(a.positions.iter().map(|p| &p.instrument))
        {
            let h = holders.entry(inst.clone()).or_default();
            if h.last() != Some(&a.id) {
                h.push(a.id.clone());
            }
        }
        let oracle = margin::account_totals(&a, &*m.instruments(), &prices);
        let cached = m
            .read(&id(i), |v| {
                (v.complete(), v.equity(), v.maintenance_margin())
            })
            .unwrap_or_else(|| unreachable!());
        match oracle {
            Ok(t) => {
                prop_assert!(cached.0, "account {} should be complete: {:?}", i, a);
                prop_assert_eq!(cached.1, t.equity, "equity of {:?}", a);
                prop_assert_eq!(cached.2, t.maintenance_margin, "MM of {:?}", a);
            }
            Err(_) => prop_assert!(!cached.0, "account {} should be incomplete", i),
        }
    }
    for inst in m.instruments().iter() {
        let mut want = holders.remove(&inst.id).unwrap_or_default();
        want.sort();
        want.dedup();
        prop_assert_eq!(m.holders(&inst.id), want, "holders of {}", inst.id);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Incremental caches equal the from-scratch recomputation exactly after every step, the
    /// index holds exactly the holders, and rejected updates change nothing.
    #[test]
    fn incremental_equals_recomputed(
        seed in proptest::collection::vec((0usize..ACCOUNTS).prop_flat_map(|a| account(a).prop_map(move |acc| Op::Replace(a, acc))), 2..8),
        more in proptest::collection::vec(op(), 1..60),
    ) {
        let ops = seed.into_iter().chain(more);
        let m = AccountMap::new(instruments());
        let mut ids = BTreeSet::new();
        let mut touched = Vec::new();
        for op in ops {
            match op {
                Op::Tick(i, p) => {
                    touched.clear();
                    let r = m.apply_price(&PRICED[i].into(), p, &mut touched);
                    prop_assert_eq!(r.is_err(), p <= Decimal::ZERO);
                    if r.is_ok() {
                        prop_assert_eq!(m.price(&PRICED[i].into()), Some(p));
                        let mut keys: Vec<_> = touched.iter().map(|t| t.key).collect();
                        keys.sort_unstable();
                        let mut holders = m.holder_keys(&PRICED[i].into());
                        holders.sort_unstable();
                        prop_assert!(keys.is_empty() || keys == holders);
                        // Each report carries the account's current figures.
                        for t in &touched {
                            let now = m.read_key(t.key, |v| v.as_touched());
                            prop_assert_eq!(Some(*t), now);
                        }
                    }
                }
                Op::Replace(i, acc) => {
                    let r = m.apply_update(AccountUpdate::Replace { account: acc.clone() });
                    if r.is_ok() {
                        ids.insert(i);
                        prop_assert_eq!(m.account(&id(i)), Some(acc));
                    }
                }
                Op::Fill(i, fill) => {
                    let before = m.account(&id(i));
                    let r = m.apply_update(AccountUpdate::Fill { account_id: id(i), fill });
                    if r.is_err() {
                        prop_assert_eq!(m.account(&id(i)), before);
                    } else {
                        prop_assert!(ids.contains(&i));
                    }
                }
                Op::Collateral(i, s, delta) => {
                    let before = m.account(&id(i));
                    let r = m.apply_update(AccountUpdate::Collateral {
                        account_id: id(i),
                        asset: ASSETS[s].into(),
                        delta,
                    });
                    match (r, before) {
                        (Ok(_), Some(b)) => {
                            let old = b.collateral.get(&InstrumentId::from(ASSETS[s])).copied().unwrap_or_default();
                            let new = m.account(&id(i)).and_then(|a| a.collateral.get(&InstrumentId::from(ASSETS[s])).copied());
                            prop_assert_eq!(new, Some(old + delta));
                        }
                        (Ok(_), None) => prop_assert!(false, "deposit into a missing account"),
                        (Err(_), b) => prop_assert_eq!(m.account(&id(i)), b),
                    }
                }
                Op::Remove(i) => {
                    let r = m.apply_update(AccountUpdate::Remove { account_id: id(i) });
                    prop_assert_eq!(r.is_ok(), ids.remove(&i));
                }
            }
            check(&m, &ids)?;
        }
    }
}
