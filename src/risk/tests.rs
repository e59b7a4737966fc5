//! Unit tests of the risk figures: margin-math §4.2's table to the cent, §4.1's stress rows as
//! one-scenario sets, and property tests (fast path = full revaluation, ES ≥ VaR, components
//! sum to ES, offsetting never raises P(liquidation)).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use super::scenarios::ScenarioSet;
use super::var::{AccountRisk, RiskBook, tail_count};
use crate::margin::to_cents;
use crate::model::{Account, Instrument, InstrumentId, MarginRatio, Position, PositionSide};

fn presets() -> HashMap<InstrumentId, Instrument> {
    crate::sources::files::load_instruments(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml"),
    )
    .unwrap()
}

fn prices() -> HashMap<InstrumentId, Decimal> {
    let mut p = HashMap::new();
    for (id, v) in [
        ("BTCUSDT-PERP", dec!(60000)),
        ("BTC", dec!(60000)),
        ("ETHUSDT-PERP", dec!(3000)),
        ("ETH", dec!(3000)),
        ("SOLUSDT-PERP", dec!(150)),
        ("SOL", dec!(150)),
    ] {
        p.insert(InstrumentId::from(id), v);
    }
    p
}

fn pos(id: &str, q: Decimal, ep: Decimal) -> Position {
    Position {
        instrument: id.into(),
        side: PositionSide::Both,
        quantity: q,
        entry_price: ep,
    }
}

fn w3() -> Account {
    let mut collateral = BTreeMap::new();
    collateral.insert(InstrumentId::from("USDT"), dec!(60500));
    collateral.insert(InstrumentId::from("BTC"), dec!(1.5));
    Account {
        id: "w3".into(),
        collateral,
        positions: vec![
            pos("BTCUSDT-PERP", dec!(10.5), dec!(62000)),
            pos("ETHUSDT-PERP", dec!(150), dec!(3100)),
            pos("SOLUSDT-PERP", dec!(-2000), dec!(140)),
        ],
        thresholds: None,
        apply_funding: false,
    }
}

fn pct(r: MarginRatio) -> Option<Decimal> {
    match r {
        MarginRatio::Finite(d) => Some(to_cents(d * dec!(100))),
        MarginRatio::Infinite => None,
    }
}

/// §4.2's ten daily return vectors (BTC, ETH, SOL) in percent.
const TABLE: [[&str; 3]; 10] = [
    ["-2.1", "-3.0", "-4.2"],
    ["1.5", "2.2", "3.1"],
    ["-4.8", "-6.5", "-8.9"],
    ["0.4", "-0.3", "1.2"],
    ["-1.2", "-1.9", "-2.5"],
    ["3.3", "4.1", "5.6"],
    ["-0.6", "-0.2", "-1.4"],
    ["-7.4", "-9.8", "-12.5"],
    ["2.0", "1.1", "-0.8"],
    ["-3.1", "-4.4", "-6.0"],
];

fn set_from_pct(rows: &[[&str; 3]]) -> ScenarioSet {
    let rows: Vec<Vec<Decimal>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|p| p.parse::<Decimal>().unwrap() / dec!(100))
                .collect()
        })
        .collect();
    ScenarioSet::from_returns("t", &["BTC", "ETH", "SOL"], &rows).unwrap()
}

/// Margin-math §4.2, to the cent: every scenario's equity, PnL and MM/equity, then
/// VaR₈₀ = 36,894.00 and ES₈₀ = 48,220.50 with k = 2, and no scenario reaching MM — by the
/// full revaluation and by the fast path.
#[test]
fn margin_math_4_2_table() {
    let (inst, px) = (presets(), prices());
    let set = set_from_pct(&TABLE);
    let want = [
        ("74074.50", "-15925.50", "10.38"),
        ("101332.50", "11332.50", "8.06"),
        ("53106.00", "-36894.00", "13.85"),
        ("87912.00", "-2088.00", "9.11"),
        ("80364.00", "-9636.00", "9.70"),
        ("115261.50", "25261.50", "7.25"),
        ("89007.00", "-993.00", "8.87"),
        ("30453.00", "-59547.00", "23.29"),
        ("111660.00", "21660.00", "7.21"),
        ("66019.50", "-23980.50", "11.45"),
    ];
    let book = RiskBook::new(&inst, &px, &set, dec!(0.8)).unwrap();
    let a = w3();
    assert_eq!(book.revalue(&a, None).unwrap().equity, dec!(90000));
    for (s, (eq, pnl, ratio)) in want.iter().enumerate() {
        let r = book.revalue(&a, Some(s)).unwrap();
        assert_eq!(
            to_cents(r.equity),
            eq.parse::<Decimal>().unwrap(),
            "#{}",
            s + 1
        );
        assert_eq!(
            to_cents(r.equity - dec!(90000)),
            pnl.parse::<Decimal>().unwrap()
        );
        assert_eq!(
            pct(MarginRatio::compute(r.maintenance_margin, r.equity)),
            Some(ratio.parse().unwrap()),
            "#{}",
            s + 1
        );
    }
    let fast = book.account(&a).unwrap();
    let full = book.account_full(&a).unwrap();
    assert_eq!(fast.method, "linear");
    assert_eq!(full.method, "full_revaluation");
    for r in [&fast, &full] {
        assert_eq!(r.k, 2);
        assert_eq!(r.var, dec!(36894));
        assert_eq!(r.es, dec!(48220.5));
        assert_eq!(r.liquidating_scenarios, 0);
        assert_eq!(r.worst[0].scenario, 7);
        assert_eq!(r.worst[1].scenario, 2);
        let sum: Decimal = r.components.iter().map(|c| c.es).sum();
        assert_eq!(sum, r.es);
    }
    assert_eq!(
        fast,
        AccountRisk {
            method: fast.method,
            ..full
        }
    );
    // Component ES by hand: over #8 and #3 the BTC long loses 10.5·60,000·(7.4 % + 4.8 %)/2.
    let btc = fast
        .components
        .iter()
        .find(|c| c.instrument.as_str() == "BTCUSDT-PERP")
        .unwrap();
    assert_eq!(btc.es, dec!(38430));
    let sol = fast
        .components
        .iter()
        .find(|c| c.instrument.as_str() == "SOLUSDT-PERP")
        .unwrap();
    // The SOL short diversifies: −2,000·150·(−12.5 % − 8.9 %)/2 = +32,100 of gains.
    assert_eq!(sol.es, dec!(-32100));
}

/// §4.1's stress rows as one-scenario sets: equity and MM to the cent, and P(liquidation) = 1
/// exactly for the −10 % and −20 % rows (ratio ≥ 100 %, or equity ≤ 0).
#[test]
fn margin_math_4_1_rows() {
    let (inst, px) = (presets(), prices());
    let rows = [
        (["10", "10", "10"], "176550.00", "8899.50", 0),
        (["0", "0", "0"], "90000.00", "7965.00", 0),
        (["-5", "-5", "-5"], "46725.00", "7500.00", 0),
        (["-10", "-10", "-10"], "3450.00", "7080.00", 1),
        (["-20", "-20", "-20"], "-83100.00", "6240.00", 1),
        (["-10", "0", "0"], "18450.00", "7605.00", 0),
        (["0", "0", "20"], "30000.00", "8565.00", 0),
    ];
    for (ret, eq, mm, liq) in rows {
        let set = set_from_pct(&[ret]);
        let book = RiskBook::new(&inst, &px, &set, dec!(0.5)).unwrap();
        let r = book.account(&w3()).unwrap();
        let f = book.account_full(&w3()).unwrap();
        assert_eq!(
            r,
            AccountRisk {
                method: r.method,
                ..f
            }
        );
        assert_eq!(to_cents(r.worst[0].equity), eq.parse::<Decimal>().unwrap());
        assert_eq!(
            to_cents(r.worst[0].maintenance_margin),
            mm.parse::<Decimal>().unwrap()
        );
        assert_eq!(r.liquidating_scenarios, liq, "{ret:?}");
    }
}

/// k = ⌈N·(1 − α)⌉ exactly: 100·(1 − 0.95) is 5, not 6; α outside (0, 1) is refused.
#[test]
fn tail_count_is_exact() {
    assert_eq!(tail_count(100, dec!(0.95)).unwrap(), 5);
    assert_eq!(tail_count(10, dec!(0.8)).unwrap(), 2);
    assert_eq!(tail_count(1000, dec!(0.99)).unwrap(), 10);
    assert_eq!(tail_count(1001, dec!(0.99)).unwrap(), 11);
    assert_eq!(tail_count(3, dec!(0.999)).unwrap(), 1);
    assert!(tail_count(10, dec!(1)).is_err());
    assert!(tail_count(10, dec!(0)).is_err());
    assert!(tail_count(0, dec!(0.9)).is_err());
}

/// An inverse contract takes the full revaluation; an account without returns for an asset it
/// holds is refused by name.
#[test]
fn inverse_and_missing_returns() {
    let inst = presets();
    let mut px = prices();
    px.insert("BTCUSD-INV-PERP".into(), dec!(60000));
    px.insert("BTC-COINM".into(), dec!(60000));
    let set = set_from_pct(&TABLE);
    let book = RiskBook::new(&inst, &px, &set, dec!(0.8)).unwrap();
    let mut collateral = BTreeMap::new();
    collateral.insert(InstrumentId::from("BTC-COINM"), dec!(0.6));
    let a = Account {
        id: "inv".into(),
        collateral,
        positions: vec![pos("BTCUSD-INV-PERP", dec!(2500), dec!(62000))],
        thresholds: None,
        apply_funding: false,
    };
    let r = book.account(&a).unwrap();
    assert_eq!(r.method, "full_revaluation");
    assert!(r.es >= r.var);
    let only_btc = ScenarioSet::from_returns("b", &["BTC"], &[vec![dec!(-0.1)]]).unwrap();
    let book = RiskBook::new(&inst, &px, &only_btc, dec!(0.5)).unwrap();
    let e = book.account(&w3()).unwrap_err().to_string();
    assert_eq!(e, "the scenarios have no returns for ETH");
}

fn arb_account() -> impl Strategy<Value = Account> {
    let leg = |id: &'static str, price: i64| {
        (-4000i64..4000, 1i64..=200, 0u32..3).prop_map(move |(q, ep, qs)| {
            pos(
                id,
                Decimal::new(q, qs),
                Decimal::new(price, 0) * Decimal::new(ep, 2),
            )
        })
    };
    (
        0i64..2_000_000,
        0i64..300,
        proptest::option::of(leg("BTCUSDT-PERP", 60000)),
        proptest::option::of(leg("ETHUSDT-PERP", 3000)),
        proptest::option::of(leg("SOLUSDT-PERP", 150)),
    )
        .prop_map(|(usdt, btc, a, b, c)| {
            let mut collateral = BTreeMap::new();
            collateral.insert(InstrumentId::from("USDT"), Decimal::new(usdt, 1));
            collateral.insert(InstrumentId::from("BTC"), Decimal::new(btc, 2));
            Account {
                id: "p".into(),
                collateral,
                positions: [a, b, c].into_iter().flatten().collect(),
                thresholds: None,
                apply_funding: false,
            }
        })
}

fn arb_set() -> impl Strategy<Value = ScenarioSet> {
    proptest::collection::vec(
        proptest::collection::vec(-3000i64..3000, 3).prop_map(|r| {
            r.into_iter()
                .map(|x| Decimal::new(x, 4))
                .collect::<Vec<_>>()
        }),
        1..40,
    )
    .prop_map(|rows| ScenarioSet::from_returns("p", &["BTC", "ETH", "SOL"], &rows).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The compiled fast path gives exactly the full revaluation's figures; ES ≥ VaR; the
    /// components sum to ES exactly.
    #[test]
    fn fast_equals_full_and_relations_hold(
        a in arb_account(),
        set in arb_set(),
        alpha in 1u32..99,
    ) {
        let (inst, px) = (presets(), prices());
        let book = RiskBook::new(&inst, &px, &set, Decimal::new(i64::from(alpha), 2)).unwrap();
        let fast = book.account(&a).unwrap();
        let full = book.account_full(&a).unwrap();
        prop_assert_eq!(fast.method, "linear");
        prop_assert_eq!(&fast, &AccountRisk { method: fast.method, ..full });
        prop_assert!(fast.es >= fast.var, "ES {} < VaR {}", fast.es, fast.var);
        let sum: Decimal = fast.components.iter().map(|c| c.es).sum();
        prop_assert_eq!(sum, fast.es);
        let tail: Decimal = fast.components.iter().map(|c| c.tail_pnl).sum();
        prop_assert_eq!(to_cents(-tail / Decimal::from(fast.k)), to_cents(fast.es));
    }

    /// Offsetting a single-position account's position (fully or in part, in one-way mode,
    /// the PnL realised into USDT at today's price) never raises P(liquidation).
    #[test]
    fn offsetting_never_raises_p_liquidation(
        a in arb_account(),
        set in arb_set(),
        pick in 0usize..3,
        offset_pct in 0i64..=100,
    ) {
        let (inst, px) = (presets(), prices());
        let book = RiskBook::new(&inst, &px, &set, dec!(0.9)).unwrap();
        let mut single = a.clone();
        single.collateral.remove("BTC");
        if single.positions.is_empty() {
            return Ok(());
        }
        let p = single.positions[pick % single.positions.len()].clone();
        single.positions = vec![p.clone()];
        let before = book.account(&single).unwrap();
        if before.equity <= Decimal::ZERO {
            return Ok(()); // already bankrupt today: nothing to protect
        }
        let lambda = Decimal::new(offset_pct, 2);
        let mark = px[&p.instrument];
        let mut hedged = single.clone();
        // Add −λ·q at today's price: the netted position keeps (1 − λ)·q and the closed part's
        // PnL is realised into the USDT wallet.
        *hedged.collateral.get_mut("USDT").unwrap() += lambda * p.quantity * (mark - p.entry_price);
        hedged.positions[0].quantity = p.quantity - lambda * p.quantity;
        let after = book.account(&hedged).unwrap();
        prop_assert_eq!(after.equity, before.equity);
        prop_assert!(
            after.liquidating_scenarios <= before.liquidating_scenarios,
            "{} > {}", after.liquidating_scenarios, before.liquidating_scenarios
        );
    }
}
