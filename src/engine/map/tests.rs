//! Unit tests of the account map: worked examples, incremental equals from-scratch, updates and fills.

use super::*;
use crate::model::{InstrumentKind, MarginTier};
use rust_decimal_macros::dec;

pub(crate) fn tier(floor: Decimal, cap: Decimal, mmr: Decimal, cum: Decimal) -> MarginTier {
    MarginTier {
        notional_floor: floor,
        notional_cap: cap,
        mmr,
        cum,
    }
}

pub(crate) fn contract(id: &str, underlying: &str, tiers: Vec<MarginTier>) -> Instrument {
    Instrument {
        id: id.into(),
        kind: InstrumentKind::LinearPerpetual,
        underlying: underlying.into(),
        contract_size: Decimal::ONE,
        tiers,
        liquidation_fee_rate: dec!(0.005),
        margin: Default::default(),
        collateral_ratio: Decimal::ONE,
        haircut_tiers: vec![],
        stable: false,
        sources: vec![],
        source_note: None,
    }
}

pub(crate) fn collateral(id: &str, ratio: Decimal, stable: bool) -> Instrument {
    Instrument {
        id: id.into(),
        kind: InstrumentKind::Collateral,
        underlying: id.into(),
        contract_size: Decimal::ONE,
        tiers: vec![],
        liquidation_fee_rate: Decimal::ZERO,
        margin: Default::default(),
        collateral_ratio: ratio,
        haircut_tiers: vec![],
        stable,
        sources: vec![],
        source_note: None,
    }
}

/// The W3 instruments (margin-math §2.1 tables, truncated to the tiers W3/W4 use).
pub(crate) fn w3_instruments() -> Vec<Instrument> {
    vec![
        contract(
            "BTCUSDT-PERP",
            "BTC",
            vec![
                tier(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
                tier(dec!(50000), dec!(600000), dec!(0.005), dec!(50)),
                tier(dec!(600000), dec!(3000000), dec!(0.0065), dec!(950)),
                tier(dec!(3000000), dec!(12000000), dec!(0.01), dec!(11450)),
            ],
        ),
        contract(
            "ETHUSDT-PERP",
            "ETH",
            vec![
                tier(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
                tier(dec!(50000), dec!(600000), dec!(0.005), dec!(50)),
                tier(dec!(600000), dec!(3000000), dec!(0.0065), dec!(950)),
            ],
        ),
        contract(
            "SOLUSDT-PERP",
            "SOL",
            vec![
                tier(dec!(0), dec!(20000), dec!(0.005), dec!(0)),
                tier(dec!(20000), dec!(100000), dec!(0.0065), dec!(30)),
                tier(dec!(100000), dec!(800000), dec!(0.01), dec!(380)),
            ],
        ),
        collateral("USDT", Decimal::ONE, true),
        collateral("BTC", dec!(0.95), false),
    ]
}

pub(crate) fn w3_account(id: &str) -> Account {
    serde_json::from_str(&format!(
        r#"{{"id":"{id}","collateral":{{"USDT":"60500","BTC":"1.5"}},"positions":[
        {{"instrument":"BTCUSDT-PERP","quantity":"10.5","entry_price":"62000"}},
        {{"instrument":"ETHUSDT-PERP","quantity":"150","entry_price":"3100"}},
        {{"instrument":"SOLUSDT-PERP","quantity":"-2000","entry_price":"140"}}]}}"#
    ))
    .unwrap()
}

fn tick(m: &AccountMap, id: &str, p: Decimal) -> Vec<Touched> {
    let mut out = Vec::new();
    m.apply_price(&id.into(), p, &mut out).unwrap();
    out
}

fn w3_prices(m: &AccountMap, btc: Decimal, eth: Decimal, sol: Decimal) {
    tick(m, "BTCUSDT-PERP", btc);
    tick(m, "BTC", btc);
    tick(m, "ETHUSDT-PERP", eth);
    tick(m, "SOLUSDT-PERP", sol);
}

fn assert_matches_oracle(m: &AccountMap, id: &str) {
    let a = m.account(&id.into()).unwrap();
    let t = margin::account_totals(&a, &*m.instruments(), &m.prices()).unwrap();
    m.read(&id.into(), |v| {
        assert!(v.complete());
        assert_eq!(v.equity(), t.equity);
        assert_eq!(v.maintenance_margin(), t.maintenance_margin);
    })
    .unwrap();
}

/// W3 → W4 through ticks: the cached figures are the worked example's, to the cent.
#[test]
fn w3_then_w4_incrementally() {
    let m = AccountMap::new(w3_instruments());
    m.apply_update(AccountUpdate::Replace {
        account: w3_account("w3"),
    })
    .unwrap();
    // Incomplete until every price is known.
    assert_eq!(m.read(&"w3".into(), |v| v.complete()), Some(false));
    w3_prices(&m, dec!(60000), dec!(3000), dec!(150));
    m.read(&"w3".into(), |v| {
        assert_eq!(v.equity(), dec!(90000));
        assert_eq!(v.maintenance_margin(), dec!(7965));
        assert_eq!(v.ratio(), Some(MarginRatio::Finite(dec!(0.0885))));
    })
    .unwrap();
    w3_prices(&m, dec!(54000), dec!(2700), dec!(135));
    m.read(&"w3".into(), |v| {
        assert_eq!(v.equity(), dec!(3450));
        assert_eq!(v.maintenance_margin(), dec!(7080));
    })
    .unwrap();
    assert_matches_oracle(&m, "w3");
}

/// A tick touches only holders, reports each once with its totals, and skips unchanged prices.
#[test]
fn tick_touches_only_holders() {
    let m = AccountMap::new(w3_instruments());
    m.apply_update(AccountUpdate::Replace {
        account: w3_account("a"),
    })
    .unwrap();
    let b: Account = serde_json::from_str(
        r#"{"id":"b","collateral":{"USDT":"1000"},"positions":[{"instrument":"ETHUSDT-PERP","quantity":"1","entry_price":"3000"}]}"#,
    )
    .unwrap();
    m.apply_update(AccountUpdate::Replace { account: b })
        .unwrap();
    let t = tick(&m, "BTCUSDT-PERP", dec!(60000));
    assert_eq!(t.len(), 1);
    assert_eq!(Some(t[0].key), m.key_of(&"a".into()));
    assert!(!t[0].complete);
    assert!(tick(&m, "BTCUSDT-PERP", dec!(60000)).is_empty());
    assert_eq!(tick(&m, "ETHUSDT-PERP", dec!(3100)).len(), 2);
    assert_eq!(
        m.holders(&"ETHUSDT-PERP".into()),
        vec![AccountId::from("a"), "b".into()]
    );
    assert_eq!(
        m.holders(&"USDT".into()),
        vec![AccountId::from("a"), "b".into()]
    );
    assert_eq!(m.holders(&"BTC".into()), vec![AccountId::from("a")]);
}

/// Unknown instruments, wrong kinds and bad prices are rejected and change nothing.
#[test]
fn bad_input_is_rejected_without_change() {
    let m = AccountMap::new(w3_instruments());
    let mut a = w3_account("a");
    a.positions[0].instrument = "DOGEUSDT-PERP".into();
    assert!(matches!(
        m.apply_update(AccountUpdate::Replace { account: a }),
        Err(AccountError::UnknownInstrument(_))
    ));
    assert!(m.is_empty());
    m.apply_update(AccountUpdate::Replace {
        account: w3_account("a"),
    })
    .unwrap();
    let before = m.account(&"a".into());
    let bad = [
        AccountUpdate::Collateral {
            account_id: "a".into(),
            asset: "BTCUSDT-PERP".into(),
            delta: dec!(1),
        },
        AccountUpdate::Collateral {
            account_id: "nobody".into(),
            asset: "USDT".into(),
            delta: dec!(1),
        },
        AccountUpdate::Fill {
            account_id: "a".into(),
            fill: Fill {
                instrument: "BTCUSDT-PERP".into(),
                side: PositionSide::Both,
                quantity: dec!(1),
                price: dec!(0),
                fee: dec!(0),
                settle_asset: None,
            },
        },
        AccountUpdate::Fill {
            account_id: "a".into(),
            fill: Fill {
                instrument: "BTCUSDT-PERP".into(),
                side: PositionSide::Long,
                quantity: dec!(-1),
                price: dec!(1),
                fee: dec!(0),
                settle_asset: None,
            },
        },
        AccountUpdate::Remove {
            account_id: "nobody".into(),
        },
    ];
    for u in bad {
        assert!(m.apply_update(u.clone()).is_err(), "{u:?}");
        assert_eq!(m.account(&"a".into()), before);
    }
    assert!(matches!(
        m.apply_price(&"BTC".into(), dec!(-1), &mut Vec::new()),
        Err(AccountError::InvalidPrice { .. })
    ));
    assert!(matches!(
        m.apply_price(&"XRP".into(), dec!(1), &mut Vec::new()),
        Err(AccountError::UnknownInstrument(_))
    ));
}

/// Fill rules: weighted entry on increase, realised PnL and fee into USDT on reduce, flip.
#[test]
fn fills_follow_the_documented_rules() {
    let m = AccountMap::new(w3_instruments());
    let acc: Account = serde_json::from_str(r#"{"id":"f","collateral":{"USDT":"10000"}}"#).unwrap();
    m.apply_update(AccountUpdate::Replace { account: acc })
        .unwrap();
    let fill = |q: Decimal, p: Decimal, fee: Decimal| AccountUpdate::Fill {
        account_id: "f".into(),
        fill: Fill {
            instrument: "BTCUSDT-PERP".into(),
            side: PositionSide::Both,
            quantity: q,
            price: p,
            fee,
            settle_asset: None,
        },
    };
    m.apply_update(fill(dec!(1), dec!(60000), dec!(6))).unwrap();
    m.apply_update(fill(dec!(3), dec!(64000), dec!(0))).unwrap();
    let a = m.account(&"f".into()).unwrap();
    assert_eq!(a.positions[0].quantity, dec!(4));
    assert_eq!(a.positions[0].entry_price, dec!(63000));
    assert_eq!(a.collateral[&InstrumentId::from("USDT")], dec!(9994));
    // Reduce 1 at 65,000: realise +2,000, fee 2.
    m.apply_update(fill(dec!(-1), dec!(65000), dec!(2)))
        .unwrap();
    let a = m.account(&"f".into()).unwrap();
    assert_eq!(a.positions[0].quantity, dec!(3));
    assert_eq!(a.positions[0].entry_price, dec!(63000));
    assert_eq!(a.collateral[&InstrumentId::from("USDT")], dec!(11992));
    // Flip: sell 5 at 62,000 → realise 3 × −1,000, short 2 at 62,000.
    m.apply_update(fill(dec!(-5), dec!(62000), dec!(0)))
        .unwrap();
    let a = m.account(&"f".into()).unwrap();
    assert_eq!(a.positions[0].quantity, dec!(-2));
    assert_eq!(a.positions[0].entry_price, dec!(62000));
    assert_eq!(a.collateral[&InstrumentId::from("USDT")], dec!(8992));
    // Close: the position disappears and the index follows.
    m.apply_update(fill(dec!(2), dec!(61000), dec!(0))).unwrap();
    let a = m.account(&"f".into()).unwrap();
    assert!(a.positions.is_empty());
    assert_eq!(a.collateral[&InstrumentId::from("USDT")], dec!(10992));
    assert!(m.holders(&"BTCUSDT-PERP".into()).is_empty());
}

/// Removal drops the account from the map and from every holder list.
#[test]
fn remove_clears_index() {
    let m = AccountMap::new(w3_instruments());
    m.apply_update(AccountUpdate::Replace {
        account: w3_account("a"),
    })
    .unwrap();
    let out = m
        .apply_update(AccountUpdate::Remove {
            account_id: "a".into(),
        })
        .unwrap();
    assert!(matches!(out, UpdateOutcome::Removed(_)));
    assert!(m.is_empty());
    for i in m.instruments().iter() {
        assert!(m.holders(&i.id).is_empty());
    }
    assert!(tick(&m, "BTCUSDT-PERP", dec!(1)).is_empty());
}

/// `riskiest` orders complete accounts by ratio, highest first, and skips incomplete ones.
#[test]
fn riskiest_orders_by_ratio() {
    let m = AccountMap::new(w3_instruments());
    for (id, usdt) in [("low", "100000"), ("mid", "60500"), ("high", "40000")] {
        let mut a = w3_account(id);
        a.collateral.insert("USDT".into(), usdt.parse().unwrap());
        m.apply_update(AccountUpdate::Replace { account: a })
            .unwrap();
    }
    assert!(m.riskiest(5).is_empty());
    w3_prices(&m, dec!(60000), dec!(3000), dec!(150));
    let r = m.riskiest(2);
    let ids: Vec<&str> = r.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["high", "mid"]);
    assert_eq!(r[1].ratio, MarginRatio::Finite(dec!(0.0885)));
    let snap = m.snapshot(&"mid".into(), Decimal::ONE).unwrap();
    assert_eq!(snap.equity, dec!(90000));
}

/// `count_incomplete` counts the accounts an unpriced instrument leaves without a value, and
/// follows them as prices arrive (one instrument at a time) and as accounts come and go.
#[test]
fn count_incomplete_follows_prices_and_accounts() {
    let m = AccountMap::new(w3_instruments());
    assert_eq!(m.count_incomplete(), 0);
    for id in ["a", "b"] {
        m.apply_update(AccountUpdate::Replace {
            account: w3_account(id),
        })
        .unwrap();
    }
    // Positions cleared and stablecoin collateral only: always valued (stables are priced at 1).
    let mut flat = w3_account("flat");
    flat.positions.clear();
    flat.collateral.clear();
    flat.collateral.insert("USDT".into(), dec!(1000));
    m.apply_update(AccountUpdate::Replace { account: flat })
        .unwrap();
    // The w3 account holds BTC, ETH and SOL perps: unvalued until all three have a price.
    assert_eq!(m.count_incomplete(), 2);
    tick(&m, "BTCUSDT-PERP", dec!(60000));
    tick(&m, "ETHUSDT-PERP", dec!(3000));
    assert_eq!(m.count_incomplete(), 2);
    w3_prices(&m, dec!(60000), dec!(3000), dec!(150));
    assert_eq!(m.count_incomplete(), 0);
    m.apply_update(AccountUpdate::Remove {
        account_id: "a".into(),
    })
    .unwrap();
    assert_eq!(m.count_incomplete(), 0);
}

/// The instrument table keeps each contract's tiers in `f64` for the shock filter, and they are
/// always those of the instrument it holds now: after a later duplicate id replaced an earlier
/// one, and after new terms. Collateral has none.
#[test]
fn table_floats_follow_the_instruments() {
    let btc_id: InstrumentId = "BTCUSDT-PERP".into();
    let mut defs = w3_instruments();
    let mut dup = defs[0].clone();
    dup.tiers.truncate(2);
    defs.push(dup.clone());
    let t = InstrumentTable::new(defs);
    let btc = t.index(&btc_id).unwrap();
    assert!(t.floats(btc).is_some());
    assert_eq!(t.floats(btc), TierFloats::new(&dup).as_ref());
    assert_ne!(TierFloats::new(&dup), TierFloats::new(&w3_instruments()[0]));
    assert_eq!(t.floats(t.index(&"USDT".into()).unwrap()), None);
    let (inst, floats) = t.instrument_floats(&btc_id).unwrap();
    assert!(std::ptr::eq(inst, t.get(btc).unwrap()));
    assert_eq!(floats, t.floats(btc));

    let m = AccountMap::new(w3_instruments());
    let mut next = w3_instruments()[0].clone();
    next.tiers[1].mmr = dec!(0.006);
    next.tiers[1].cum = dec!(100);
    m.replace_terms(&[next]).unwrap();
    let table = m.instruments();
    let i = table.index(&btc_id).unwrap();
    assert_eq!(table.get(i).unwrap().tiers[1].mmr, dec!(0.006));
    assert_eq!(
        table.floats(i),
        TierFloats::new(table.get(i).unwrap()).as_ref()
    );
    assert_ne!(
        table.floats(i),
        TierFloats::new(&w3_instruments()[0]).as_ref()
    );
}

/// Valuing many accounts at once — every instrument locked once per thread, on one thread or
/// on every core — gives exactly what valuing each on its own gives, in order: complete accounts, accounts
/// still waiting for a price, a removed account, a key that never existed; and each account's
/// figures equal the from-scratch oracle.
#[test]
fn materialise_many_equals_one_by_one() {
    let n = crate::engine::par::PARALLEL_MIN + 300;
    let build = || {
        let m = AccountMap::new(w3_instruments());
        for i in 0..n {
            let mut a = w3_account(&format!("many-{i}"));
            a.positions[0].quantity = Decimal::new(10 + (i as i64 % 17), 1);
            if i % 5 == 0 {
                // Without the SOL leg, which nobody prices in this test: complete.
                a.positions
                    .retain(|p| p.instrument.as_str() != "SOLUSDT-PERP");
            }
            m.apply_update(AccountUpdate::Replace { account: a })
                .unwrap();
        }
        m.apply_update(AccountUpdate::Remove {
            account_id: "many-7".into(),
        })
        .unwrap();
        tick(&m, "BTCUSDT-PERP", dec!(54321.5));
        tick(&m, "BTC", dec!(54321.5));
        tick(&m, "ETHUSDT-PERP", dec!(2701.25));
        // Moved without revaluing anyone: materialising values the slots afresh.
        for (id, p) in [
            ("BTCUSDT-PERP", dec!(51234.75)),
            ("BTC", dec!(51234.75)),
            ("ETHUSDT-PERP", dec!(2650.5)),
        ] {
            assert!(m.set_price(&id.into(), p).unwrap());
        }
        m
    };
    // A few hundred (one thread, the locks shared) and all of them (every core).
    let (a, b) = (build(), build());
    let mut keys: Vec<AccountKey> = a.keys().into_iter().take(300).collect();
    keys.push(AccountKey::MAX - 1);
    let many = a.materialise_many(&keys);
    let one: Vec<Option<Touched>> = keys.iter().map(|&k| b.materialise(k)).collect();
    assert_eq!(many, one);
    // The shared path values on mantissas, one by one on `Decimal`: the same bits.
    for &k in &keys {
        assert_eq!(slot_bits(&a, k), slot_bits(&b, k));
    }
    assert!(many.iter().flatten().filter(|t| t.complete).count() >= 300 / 5);
    let (a, b) = (build(), build());
    let mut keys = a.keys();
    keys.push(AccountKey::MAX - 1);
    keys.sort_unstable();
    let many = a.materialise_many(&keys);
    let one: Vec<Option<Touched>> = keys.iter().map(|&k| b.materialise(k)).collect();
    assert_eq!(many, one);
    // The shared path values on mantissas, one by one on `Decimal`: the same bits.
    for &k in &keys {
        assert_eq!(slot_bits(&a, k), slot_bits(&b, k));
    }
    assert_eq!(many.len(), keys.len());
    assert!(
        many.iter().flatten().any(|t| !t.complete),
        "some wait for a price"
    );
    assert_eq!(
        many.iter().flatten().filter(|t| t.complete).count(),
        n / 5 + 1
    );
    assert_eq!(many.last(), Some(&None), "a key that never existed");
    for t in many.iter().flatten().filter(|t| t.complete).take(50) {
        let id = a.id_of(t.key).unwrap();
        assert_matches_oracle(&a, id.as_str());
    }
}

/// A tick with more holders than `TICK_PARALLEL_MIN` is valued on every core: each holder is
/// reported once, in key order, with the figures a from-scratch recomputation gives, and the
/// summary counts every account, slot and failed slot (the small tick's contract) — a whale
/// whose figures overflow is counted from the second thread's share.
#[test]
fn a_large_tick_on_every_core_equals_from_scratch() {
    let n = super::TICK_PARALLEL_MIN * 7 / 6 + 200;
    let m = AccountMap::new(w3_instruments());
    for i in 0..n {
        let mut a = w3_account(&format!("big-{i}"));
        a.positions[0].quantity = Decimal::new(-40 + (i as i64 % 83), 1);
        if i % 7 == 0 {
            // Without the BTC perp: not a holder.
            a.positions
                .retain(|p| p.instrument.as_str() != "BTCUSDT-PERP");
        }
        m.apply_update(AccountUpdate::Replace { account: a })
            .unwrap();
    }
    // One holder (in the second thread's half) whose BTC figures overflow at any of these
    // prices: counted as an error and reported incomplete, like any other tick's.
    let mut whale = w3_account("big-whale");
    whale.positions[0].quantity = Decimal::from_str_exact("10000000000000000000000000").unwrap();
    m.apply_update(AccountUpdate::Replace { account: whale })
        .unwrap();
    let whale = m.key_of(&"big-whale".into()).unwrap();
    w3_prices(&m, dec!(60000), dec!(3000), dec!(150));
    let holders = m.holder_keys(&"BTCUSDT-PERP".into());
    assert!(holders.len() > super::TICK_PARALLEL_MIN);
    for p in [dec!(54321.5), dec!(61234.25), dec!(48000)] {
        let mut out = Vec::new();
        let s = m.apply_price(&"BTCUSDT-PERP".into(), p, &mut out).unwrap();
        assert_eq!(s.accounts, holders.len());
        assert_eq!(s.slots, holders.len());
        assert_eq!(s.errors, 1, "the whale's BTC position");
        assert_eq!(out.iter().map(|t| t.key).collect::<Vec<_>>(), holders);
        let prices = m.prices();
        let table = m.instruments();
        for t in out.iter().filter(|t| t.key != whale) {
            let a = m.account(&m.id_of(t.key).unwrap()).unwrap();
            let want = margin::account_totals(&a, &*table, &prices).unwrap();
            assert!(t.complete);
            assert_eq!(
                (t.equity, t.maintenance_margin),
                (want.equity, want.maintenance_margin)
            );
            assert_eq!(
                (t.equity.scale(), t.maintenance_margin.scale()),
                (want.equity.scale(), want.maintenance_margin.scale())
            );
        }
        assert!(out.iter().any(|t| t.key == whale && !t.complete));
    }
}

/// Every slot's five values and the totals of `key` in `m`, bit for bit (`serialize`), with
/// the totals' scales.
fn slot_bits(m: &AccountMap, key: AccountKey) -> Vec<[u8; 16]> {
    m.read_key(key, |v| {
        let mut bits = Vec::new();
        for s in v.valuation() {
            let at = s.at.unwrap_or(Decimal::NEGATIVE_ONE);
            for d in [s.quantity, s.entry, at, s.equity, s.maintenance_margin] {
                bits.push(d.serialize());
            }
        }
        bits
    })
    .unwrap_or_default()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// Ticks revalue slots on the integer path (and fall back to `Decimal` where it declines:
    /// quantities beyond 64 bits, zero figures, overflow): every slot then holds, bit for bit,
    /// what valuing the account afresh at the same prices stores, and the totals equal the
    /// fresh sums with their scale.
    #[test]
    fn ticks_leave_every_slot_as_a_fresh_valuation_would(
        accounts in proptest::collection::vec(
            (-2_000_000i64..2_000_000, 0u32..9, 1i64..9_000_000, 0u32..5, 0u8..10),
            1..12,
        ),
        prices in proptest::collection::vec((1i64..12_000_000, 0u32..4), 1..8),
    ) {
        let m = AccountMap::new(w3_instruments());
        w3_prices(&m, dec!(60000), dec!(3000), dec!(150));
        let mut all = Vec::new();
        for (i, &(qm, qs, em, es, kind)) in accounts.iter().enumerate() {
            let mut a = w3_account(&format!("p-{i}"));
            a.positions[0].quantity = match kind {
                // Beyond 64 bits: the slot is kept wide, valued on `Decimal`.
                0 => Decimal::from_i128_with_scale(i128::from(qm) << 70, qs),
                // Beyond any figure: not valued at all (overflow).
                1 => Decimal::from_str_exact("10000000000000000000000000").unwrap(),
                _ => Decimal::new(qm, qs),
            };
            a.positions[0].entry_price = Decimal::new(em, es);
            // Refused when it overflows at today's prices (nothing stored): left out.
            if m.apply_update(AccountUpdate::Replace { account: a.clone() }).is_ok() {
                all.push(a);
            }
        }
        // Laying the slots out again changes no bit of any account, wide slots included.
        let keys: Vec<AccountKey> = all.iter().map(|a| m.key_of(&a.id).unwrap()).collect();
        let before: Vec<_> = keys.iter().map(|&k| slot_bits(&m, k)).collect();
        proptest::prop_assert_eq!(m.relayout(), all.len());
        let after: Vec<_> = keys.iter().map(|&k| slot_bits(&m, k)).collect();
        proptest::prop_assert_eq!(before, after);
        for &(pm, ps) in &prices {
            let p = Decimal::new(pm, ps);
            let mut out = Vec::new();
            m.apply_price(&"BTCUSDT-PERP".into(), p, &mut out).unwrap();
            let fresh = AccountMap::new(w3_instruments());
            w3_prices(&fresh, dec!(60000), dec!(3000), dec!(150));
            tick(&fresh, "BTCUSDT-PERP", p);
            for a in &all {
                // A position the fresh map refuses (overflow) is refused on replace there too.
                let fresh_ok = fresh.apply_update(AccountUpdate::Replace { account: a.clone() }).is_ok();
                let key = m.key_of(&a.id).unwrap();
                let t = out.iter().find(|t| t.key == key).unwrap();
                if !fresh_ok {
                    proptest::prop_assert!(!t.complete);
                    continue;
                }
                let fk = fresh.key_of(&a.id).unwrap();
                proptest::prop_assert_eq!(slot_bits(&m, key), slot_bits(&fresh, fk));
                let want = fresh.read_key(fk, |v| v.as_touched()).unwrap();
                proptest::prop_assert_eq!(t.complete, want.complete);
                proptest::prop_assert_eq!(
                    (t.equity, t.equity.scale(), t.maintenance_margin, t.maintenance_margin.scale()),
                    (want.equity, want.equity.scale(), want.maintenance_margin, want.maintenance_margin.scale())
                );
            }
        }
    }
}

/// A slot keeps its instrument in 16 bits: an account naming one past the 65,536th of the
/// table is refused with an error that says so, and nothing is stored; the 65,536th is fine.
#[test]
fn an_instrument_past_the_65536th_is_refused_clearly() {
    let mut list = w3_instruments();
    while list.len() < 65_537 {
        list.push(collateral(
            &format!("COIN{}", list.len()),
            Decimal::ONE,
            true,
        ));
    }
    let last = list.last().map(|i| i.id.clone()).unwrap();
    let inside = list.get(65_535).map(|i| i.id.clone()).unwrap();
    let m = AccountMap::new(list);
    let with = |id: &str, asset: &InstrumentId| {
        let mut a = w3_account(id);
        a.collateral.insert(asset.clone(), dec!(5));
        a
    };
    m.apply_update(AccountUpdate::Replace {
        account: with("inside", &inside),
    })
    .unwrap();
    let err = m
        .apply_update(AccountUpdate::Replace {
            account: with("past", &last),
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("instrument 65537 of the table")
            && err.to_string().contains("only the first 65536"),
        "{err}"
    );
    assert!(m.key_of(&"past".into()).is_none());
    assert_eq!(m.len(), 1);
}

/// `relayout` beside updates and ticks on other threads loses nothing: every account ends as
/// its last update left it (a swap from a copy taken before an update would bring the old
/// position back, one taken before a tick its old figures), and its slots and totals equal a
/// fresh valuation at the final prices. Updates and ticks stop when the passes do, so nothing
/// after them mends what a pass broke.
#[test]
fn relayout_beside_updates_and_ticks_loses_nothing() {
    const N: usize = 2_000;
    let m = AccountMap::new(w3_instruments());
    w3_prices(&m, dec!(60000), dec!(3000), dec!(150));
    for i in 0..N {
        m.apply_update(AccountUpdate::Replace {
            account: w3_account(&format!("r-{i}")),
        })
        .unwrap();
    }
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let (stop, done) = (AtomicBool::new(false), AtomicUsize::new(0));
    let (last, rounds) = std::thread::scope(|s| {
        let updates = s.spawn(|| {
            let mut last: Vec<Account> = (0..N).map(|i| w3_account(&format!("r-{i}"))).collect();
            let mut round = 0i64;
            // Only while the passes run: an update after them would mend what they broke.
            while !stop.load(Relaxed) {
                round += 1;
                let i = (round as usize * 7919) % N;
                let mut a = w3_account(&format!("r-{i}"));
                // The same slot count (a new quantity), or one slot fewer.
                if round % 5 == 0 {
                    a.positions.pop();
                }
                if let Some(p) = a.positions.first_mut() {
                    p.quantity = Decimal::new(round, 2);
                }
                m.apply_update(AccountUpdate::Replace { account: a.clone() })
                    .unwrap();
                if let Some(l) = last.get_mut(i) {
                    *l = a;
                }
                done.fetch_add(1, Relaxed);
            }
            (last, round)
        });
        let ticks = s.spawn(|| {
            let mut k = 0i64;
            while !stop.load(Relaxed) {
                k += 1;
                tick(&m, "BTCUSDT-PERP", Decimal::new(60_000 + k % 50, 0));
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        });
        // Passes until a few hundred updates have landed among them (and a few more passes).
        let (mut moved, mut passes, mut after) = (0, 0, 0);
        while after < 5 {
            moved += m.relayout();
            passes += 1;
            if done.load(Relaxed) >= 600 {
                after += 1;
            }
            assert!(passes < 100_000, "the updates did not progress");
        }
        stop.store(true, Relaxed);
        ticks.join().unwrap();
        assert!(moved > 0);
        updates.join().unwrap()
    });
    assert!(rounds >= 600, "only {rounds} updates beside the passes");
    let prices = m.prices();
    let fresh = AccountMap::new(w3_instruments());
    for (id, p) in &prices.0 {
        tick(&fresh, id.as_str(), *p);
    }
    for a in &last {
        let got = m.account(&a.id).unwrap();
        assert_eq!(
            (&got.positions, &got.collateral),
            (&a.positions, &a.collateral),
            "{}",
            a.id
        );
        fresh
            .apply_update(AccountUpdate::Replace { account: a.clone() })
            .unwrap();
        let (k, fk) = (m.key_of(&a.id).unwrap(), fresh.key_of(&a.id).unwrap());
        assert_eq!(slot_bits(&m, k), slot_bits(&fresh, fk), "{}", a.id);
        let totals = |m: &AccountMap, k| {
            m.read_key(k, |v| {
                let t = v.as_touched();
                (
                    t.equity.serialize(),
                    t.maintenance_margin.serialize(),
                    t.complete,
                )
            })
        };
        assert_eq!(totals(&m, k), totals(&fresh, fk), "{}", a.id);
    }
}
