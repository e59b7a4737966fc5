//! Liquidation cost: hand-checked figures (margin-math §4.3, W3/W4, W8, W10) and the relations
//! that must hold for any input.

use std::collections::HashMap;

use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use super::*;
use crate::engine::map::tests::{w3_account, w3_instruments};
use crate::margin::{account_snapshot, to_cents};
use crate::model::{
    Account, InstrumentId, InstrumentKind, MarginTier, PositionSide, PriceField, PriceSource,
};

fn with_venue(mut instruments: Vec<Instrument>, venue: Venue) -> HashMap<InstrumentId, Instrument> {
    for i in &mut instruments {
        if i.kind.is_contract() {
            i.sources = vec![PriceSource {
                venue,
                symbol: i.id.to_string(),
                field: PriceField::Mark,
            }];
        }
    }
    instruments.into_iter().map(|i| (i.id.clone(), i)).collect()
}

fn w3_at(btc: Decimal, eth: Decimal, sol: Decimal) -> HashMap<InstrumentId, Decimal> {
    [
        ("BTCUSDT-PERP", btc),
        ("BTC", btc),
        ("ETHUSDT-PERP", eth),
        ("SOLUSDT-PERP", sol),
    ]
    .into_iter()
    .map(|(k, v)| (InstrumentId::from(k), v))
    .collect()
}

fn cost(
    account: &Account,
    u: &HashMap<InstrumentId, Instrument>,
    p: &HashMap<InstrumentId, Decimal>,
) -> LiquidationCost {
    let s = account_snapshot(account, u, p, dec!(1)).unwrap();
    liquidation_cost(&s, u).unwrap()
}

/// §4.3 at the W4 state (−10 % on everything, 0.5 % on every symbol): penalty
/// (567,000 + 405,000 + 270,000) × 0.005 = 6,210.00 against equity 3,450.00 — rate 180 %, no
/// surplus, a shortfall of 2,760.00. Binance's procedure is attached; the first position is
/// not documented.
#[test]
fn w4_penalty_exceeds_equity() {
    let u = with_venue(w3_instruments(), Venue::BinanceUsdm);
    let c = cost(
        &w3_account("w3"),
        &u,
        &w3_at(dec!(54000), dec!(2700), dec!(135)),
    );
    assert_eq!(to_cents(c.equity), dec!(3450.00));
    assert_eq!(to_cents(c.maintenance_margin), dec!(7080.00));
    assert_eq!(to_cents(c.penalty), dec!(6210.00));
    let per: Vec<Decimal> = c.positions.iter().map(|p| to_cents(p.penalty)).collect();
    assert_eq!(per, vec![dec!(2835.00), dec!(2025.00), dec!(1350.00)]);
    assert!(c.positions.iter().all(|p| p.basis == PenaltyBasis::FeeRate));
    assert_eq!(c.penalty_rate, MarginRatio::Finite(dec!(1.8)));
    assert_eq!(c.surplus, Decimal::ZERO);
    assert_eq!(to_cents(c.shortfall), dec!(2760.00));
    assert_eq!(c.venue, Some(Venue::BinanceUsdm));
    // The procedure's texts are borrowed, not allocated per event; the journal reads them
    // back as owned strings, equal to them.
    let json = serde_json::to_string(&c).expect("a cost serialises");
    let back: crate::model::LiquidationCost = serde_json::from_str(&json).expect("and reads back");
    assert_eq!(back, c);
    let order = c.order.expect("Binance documents its procedure");
    assert!(matches!(order.source, std::borrow::Cow::Borrowed(_)));
    assert_eq!(order.positions_first, None);
    assert!(order.positions_first_reason.is_some());
    assert_eq!(order.procedure.len(), 3);
    assert!(order.partial.is_empty(), "Binance publishes no step sizes");
    assert_eq!(c.order_reason, None);
}

/// W3 at −5 % (equity 46,725.00): penalty (598,500 + 427,500 + 285,000) × 0.005 = 6,555.00,
/// a surplus of 40,170.00, rate 6,555 / 46,725 = 14.03 %.
#[test]
fn w3_minus_5_leaves_a_surplus() {
    let u = with_venue(w3_instruments(), Venue::BinanceUsdm);
    let c = cost(
        &w3_account("w3"),
        &u,
        &w3_at(dec!(57000), dec!(2850), dec!(142.5)),
    );
    assert_eq!(to_cents(c.equity), dec!(46725.00));
    assert_eq!(to_cents(c.penalty), dec!(6555.00));
    assert_eq!(to_cents(c.surplus), dec!(40170.00));
    assert_eq!(c.shortfall, Decimal::ZERO);
    let MarginRatio::Finite(rate) = c.penalty_rate else {
        panic!("finite equity");
    };
    assert_eq!(to_cents(rate * dec!(100)), dec!(14.03));
}

fn hl_instruments() -> HashMap<InstrumentId, Instrument> {
    let btc = Instrument {
        id: "HL-BTC-PERP".into(),
        kind: InstrumentKind::LinearPerpetual,
        underlying: "BTC".into(),
        contract_size: Decimal::ONE,
        tiers: vec![
            MarginTier {
                notional_floor: dec!(0),
                notional_cap: dec!(150000000),
                mmr: dec!(0.0125),
                cum: dec!(0),
            },
            MarginTier {
                notional_floor: dec!(150000000),
                notional_cap: dec!(1000000000),
                mmr: dec!(0.025),
                cum: dec!(1875000),
            },
        ],
        liquidation_fee_rate: dec!(0.0125),
        collateral_ratio: Decimal::ONE,
        haircut_tiers: vec![],
        stable: false,
        sources: vec![],
        margin: Default::default(),
        source_note: None,
    };
    let usdc = Instrument {
        id: "USDC".into(),
        kind: InstrumentKind::Collateral,
        underlying: "USDC".into(),
        tiers: vec![],
        liquidation_fee_rate: Decimal::ZERO,
        stable: true,
        ..btc.clone()
    };
    with_venue(vec![btc, usdc], Venue::Hyperliquid)
}

fn hl_account(qty: &str) -> Account {
    serde_json::from_str(&format!(
        r#"{{"id":"hl","collateral":{{"USDC":"5000"}},"positions":[
        {{"instrument":"HL-BTC-PERP","quantity":"{qty}","entry_price":"95000"}}]}}"#
    ))
    .unwrap()
}

fn hl_at(p: Decimal) -> HashMap<InstrumentId, Decimal> {
    [(InstrumentId::from("HL-BTC-PERP"), p)]
        .into_iter()
        .collect()
}

/// W10 (Hyperliquid, 1 BTC long from 95,000, 5,000 USDC): at 100,000 a book liquidation would
/// cost 1,250.00 (the fee rate is the first tier's MMR) and leave 8,750.00. At 90,000 the
/// account value is 0 < 2/3 · MM: a backstop, which keeps the MM 1,125.00 — all of it a
/// shortfall, rate infinite.
#[test]
fn hyperliquid_book_and_backstop() {
    let u = hl_instruments();
    let book = cost(&hl_account("1"), &u, &hl_at(dec!(100000)));
    assert_eq!(book.equity, dec!(10000));
    assert_eq!(to_cents(book.penalty), dec!(1250.00));
    assert_eq!(book.positions[0].basis, PenaltyBasis::FeeRate);
    assert_eq!(to_cents(book.surplus), dec!(8750.00));
    // 100,000 of notional is not above 100,000: no partial step.
    assert!(book.order.as_ref().unwrap().partial.is_empty());

    let backstop = cost(&hl_account("1"), &u, &hl_at(dec!(90000)));
    assert_eq!(backstop.equity, Decimal::ZERO);
    assert_eq!(
        backstop.positions[0].basis,
        PenaltyBasis::BackstopKeepsMaintenanceMargin
    );
    assert_eq!(to_cents(backstop.penalty), dec!(1125.00));
    assert_eq!(backstop.penalty_rate, MarginRatio::Infinite);
    assert_eq!(backstop.surplus, Decimal::ZERO);
    assert_eq!(to_cents(backstop.shortfall), dec!(1125.00));

    // A 2 BTC long at 94,000: equity 3,000, MM 2,350, 2/3·MM = 1,566.67 → book; 188,000 > 100,000 → one
    // 20 % step of 37,600.00 (penalty 470.00).
    let big = cost(&hl_account("2"), &u, &hl_at(dec!(94000)));
    assert_eq!(big.positions[0].basis, PenaltyBasis::FeeRate);
    let order = big.order.unwrap();
    assert_eq!(order.partial.len(), 1);
    let step = &order.partial[0].steps[0];
    assert_eq!(to_cents(step.close_notional), dec!(37600.00));
    assert_eq!(to_cents(step.remaining_notional), dec!(150400.00));
    assert_eq!(to_cents(step.penalty), dec!(470.00));
}

/// W8 (Bybit, long 23 BTCUSDT at 100,000: 2,300,000 in tier 2): the ladder closes 300,000.00
/// to reach tier 1's inclusive cap of 2,000,000 (penalty at 0.5 %: 1,500.00).
#[test]
fn bybit_ladder_down_one_tier() {
    let mut btc = w3_instruments()
        .into_iter()
        .find(|i| i.id.as_str() == "BTCUSDT-PERP")
        .unwrap();
    btc.tiers = vec![
        MarginTier {
            notional_floor: dec!(0),
            notional_cap: dec!(2000000),
            mmr: dec!(0.005),
            cum: dec!(0),
        },
        MarginTier {
            notional_floor: dec!(2000000),
            notional_cap: dec!(2600000),
            mmr: dec!(0.0056),
            cum: dec!(1200),
        },
    ];
    let usdt = w3_instruments()
        .into_iter()
        .find(|i| i.id.as_str() == "USDT")
        .unwrap();
    let u = with_venue(vec![btc, usdt], Venue::BybitLinear);
    let a: Account = serde_json::from_str(
        r#"{"id":"w8","collateral":{"USDT":"60000"},"positions":[
        {"instrument":"BTCUSDT-PERP","quantity":"23","entry_price":"98000"}]}"#,
    )
    .unwrap();
    let p = [(InstrumentId::from("BTCUSDT-PERP"), dec!(100000))]
        .into_iter()
        .collect();
    let c = cost(&a, &u, &p);
    assert_eq!(to_cents(c.maintenance_margin), dec!(11680.00));
    let order = c.order.unwrap();
    assert_eq!(order.venue, Venue::BybitLinear);
    let ladder = &order.partial[0];
    assert_eq!(ladder.side, PositionSide::Both);
    assert_eq!(ladder.steps.len(), 1);
    assert_eq!(ladder.steps[0].to_tier, Some(1));
    assert_eq!(to_cents(ladder.steps[0].close_notional), dec!(300000.00));
    assert_eq!(
        to_cents(ladder.steps[0].remaining_notional),
        dec!(2000000.00)
    );
    assert_eq!(to_cents(ladder.steps[0].penalty), dec!(1500.00));
}

/// A Bybit position two tiers up (28 BTC at 100,000 = 2,800,000, tier 3 of a table with caps
/// 2,000,000 / 2,600,000 / 3,200,000): the ladder's steps are the nearest lower tier first,
/// each counted from the full position — 200,000.00 to tier 2, 800,000.00 to tier 1.
#[test]
fn bybit_ladder_two_tiers_cumulative() {
    let mut btc = w3_instruments()
        .into_iter()
        .find(|i| i.id.as_str() == "BTCUSDT-PERP")
        .unwrap();
    let t = |floor, cap, mmr, cum| MarginTier {
        notional_floor: floor,
        notional_cap: cap,
        mmr,
        cum,
    };
    btc.tiers = vec![
        t(dec!(0), dec!(2000000), dec!(0.005), dec!(0)),
        t(dec!(2000000), dec!(2600000), dec!(0.0056), dec!(1200)),
        t(dec!(2600000), dec!(3200000), dec!(0.0062), dec!(2760)),
    ];
    let usdt = w3_instruments()
        .into_iter()
        .find(|i| i.id.as_str() == "USDT")
        .unwrap();
    let u = with_venue(vec![btc, usdt], Venue::BybitLinear);
    let a: Account = serde_json::from_str(
        r#"{"id":"b","collateral":{"USDT":"20000"},"positions":[
        {"instrument":"BTCUSDT-PERP","quantity":"28","entry_price":"100000"}]}"#,
    )
    .unwrap();
    let p = [(InstrumentId::from("BTCUSDT-PERP"), dec!(100000))]
        .into_iter()
        .collect();
    let c = cost(&a, &u, &p);
    // MM = 2,800,000 × 0.0062 − 2,760 = 14,600.00; penalty 0.5 % = 14,000.00 < equity 20,000.
    assert_eq!(to_cents(c.maintenance_margin), dec!(14600.00));
    assert_eq!(to_cents(c.penalty), dec!(14000.00));
    assert_eq!(to_cents(c.surplus), dec!(6000.00));
    let steps: Vec<(Option<u32>, Decimal, Decimal, Decimal)> = c.order.unwrap().partial[0]
        .steps
        .iter()
        .map(|s| {
            (
                s.to_tier,
                to_cents(s.close_notional),
                to_cents(s.remaining_notional),
                to_cents(s.penalty),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            (Some(2), dec!(200000.00), dec!(2600000.00), dec!(1000.00)),
            (Some(1), dec!(800000.00), dec!(2000000.00), dec!(4000.00)),
        ]
    );
}

/// Undocumented or ambiguous venues: `order` is null and says why.
#[test]
fn order_null_with_reason() {
    let p = w3_at(dec!(54000), dec!(2700), dec!(135));
    let okx = cost(
        &w3_account("w3"),
        &with_venue(w3_instruments(), Venue::Okx),
        &p,
    );
    assert_eq!(okx.order, None);
    assert!(
        okx.order_reason
            .as_deref()
            .unwrap()
            .contains("not documented")
    );
    // Same penalty whatever the venue (the fee rate is the instrument's).
    assert_eq!(to_cents(okx.penalty), dec!(6210.00));

    let mut mixed = with_venue(w3_instruments(), Venue::BinanceUsdm);
    if let Some(sol) = mixed.get_mut(&InstrumentId::from("SOLUSDT-PERP")) {
        sol.sources[0].venue = Venue::BybitLinear;
    }
    let m = cost(&w3_account("w3"), &mixed, &p);
    assert_eq!((m.venue, m.order.is_none()), (None, true));
    let why = m.order_reason.unwrap();
    assert!(why.contains("several venues"), "{why}");

    let none = cost(&w3_account("w3"), &w3_instruments_map(), &p);
    assert!(none.order_reason.unwrap().contains("no price source"));
}

fn w3_instruments_map() -> HashMap<InstrumentId, Instrument> {
    w3_instruments()
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect()
}

/// Only `liquidation_trigger` events get a cost.
#[test]
fn attached_to_triggers_only() {
    let u = with_venue(w3_instruments(), Venue::BinanceUsdm);
    let s = account_snapshot(
        &w3_account("w3"),
        &u,
        &w3_at(dec!(54000), dec!(2700), dec!(135)),
        dec!(1),
    )
    .unwrap();
    let mut ev = RiskEvent {
        event_id: RiskEvent::new_id(),
        kind: EventKind::LiquidationWarning,
        time: String::new(),
        time_ms: 0,
        account_id: Some("w3".into()),
        seq: 1,
        level: None,
        crossed_levels: vec![],
        level_type: None,
        previous_state: None,
        state: None,
        snapshot: Some(Box::new(s)),
        prices: vec![],
        stale_prices: false,
        instrument_change: None,
        feed: None,
        risk: None,
    };
    attach_liquidation_cost(&mut ev, &u);
    assert_eq!(ev.snapshot.as_ref().unwrap().liquidation_cost, None);
    ev.kind = EventKind::LiquidationTrigger;
    attach_liquidation_cost(&mut ev, &u);
    let c = ev.snapshot.unwrap().liquidation_cost.unwrap();
    assert_eq!(to_cents(c.penalty), dec!(6210.00));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// For any book and prices: surplus − shortfall = equity − penalty exactly, both are
    /// non-negative and at most one is non-zero; the penalty is the sum of the positions'; the
    /// rate is `MarginRatio::compute(penalty, equity)`; a higher fee never lowers the penalty.
    #[test]
    fn surplus_shortfall_relations(
        usdt in 0i64..2_000_000,
        q in proptest::collection::vec(-5_000i64..5_000, 3),
        move_bp in -3_000i64..3_000,
        fee_bp in 0i64..200,
    ) {
        let fee = Decimal::new(fee_bp, 4);
        let mut inst = w3_instruments();
        for i in &mut inst {
            if i.kind.is_contract() {
                i.liquidation_fee_rate = fee;
            }
        }
        let u = with_venue(inst, Venue::BinanceUsdm);
        let a: Account = serde_json::from_str(&format!(
            r#"{{"id":"p","collateral":{{"USDT":"{usdt}","BTC":"1.5"}},"positions":[
            {{"instrument":"BTCUSDT-PERP","quantity":"{}","entry_price":"62000"}},
            {{"instrument":"ETHUSDT-PERP","quantity":"{}","entry_price":"3100"}},
            {{"instrument":"SOLUSDT-PERP","quantity":"{}","entry_price":"140"}}]}}"#,
            Decimal::new(q[0], 2), Decimal::new(q[1], 1), q[2]
        )).unwrap();
        let x = Decimal::ONE + Decimal::new(move_bp, 4);
        let p = w3_at(dec!(60000) * x, dec!(3000) * x, dec!(150) * x);
        let c = cost(&a, &u, &p);
        prop_assert_eq!(c.surplus - c.shortfall, c.equity - c.penalty);
        prop_assert!(c.surplus >= Decimal::ZERO && c.shortfall >= Decimal::ZERO);
        prop_assert!(c.surplus.is_zero() || c.shortfall.is_zero());
        let sum: Decimal = c.positions.iter().map(|p| p.penalty).sum();
        prop_assert_eq!(sum, c.penalty);
        prop_assert_eq!(c.penalty_rate, MarginRatio::compute(c.penalty, c.equity));
        let mut dearer = u.clone();
        for i in dearer.values_mut() {
            if i.kind.is_contract() {
                i.liquidation_fee_rate = fee + dec!(0.001);
            }
        }
        let d = cost(&a, &dearer, &p);
        prop_assert!(d.penalty >= c.penalty);
        prop_assert!(d.shortfall >= c.shortfall && d.surplus <= c.surplus);
    }
}
