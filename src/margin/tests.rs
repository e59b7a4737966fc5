//! Unit tests of the margin model: worked examples of margin-math.md, tier edges, the fixed-point
//! fast path against `Decimal`, distances and liquidation prices.

use super::*;
use crate::model::{InstrumentKind, Position, PositionSide};
use rust_decimal_macros::dec;
use std::collections::BTreeMap;

fn tier(floor: Decimal, cap: Decimal, mmr: Decimal, cum: Decimal) -> MarginTier {
    MarginTier {
        notional_floor: floor,
        notional_cap: cap,
        mmr,
        cum,
    }
}

/// Tiers from `(floor, mmr, cum)` rows; each cap is the next floor (the last: 10 × floor).
pub(super) fn table(rows: &[(Decimal, Decimal, Decimal)]) -> Vec<MarginTier> {
    rows.iter()
        .enumerate()
        .map(|(i, &(f, m, c))| {
            let cap = rows
                .get(i + 1)
                .map(|r| r.0)
                .unwrap_or(f * dec!(10) + dec!(1));
            tier(f, cap, m, c)
        })
        .collect()
}

pub(super) fn contract(id: &str, underlying: &str, tiers: Vec<MarginTier>) -> Instrument {
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

pub(super) fn coin(id: &str, ratio: Decimal, stable: bool) -> Instrument {
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

fn btc_table() -> Vec<MarginTier> {
    table(&[
        (dec!(0), dec!(0.004), dec!(0)),
        (dec!(50000), dec!(0.005), dec!(50)),
        (dec!(600000), dec!(0.0065), dec!(950)),
        (dec!(3000000), dec!(0.01), dec!(11450)),
        (dec!(12000000), dec!(0.02), dec!(131450)),
        (dec!(70000000), dec!(0.025), dec!(481450)),
        (dec!(100000000), dec!(0.05), dec!(2981450)),
        (dec!(230000000), dec!(0.10), dec!(14481450)),
        (dec!(480000000), dec!(0.125), dec!(26481450)),
        (dec!(600000000), dec!(0.15), dec!(41481450)),
        (dec!(800000000), dec!(0.25), dec!(121481450)),
        (dec!(1200000000), dec!(0.50), dec!(421481450)),
    ])
}

fn eth_table() -> Vec<MarginTier> {
    table(&[
        (dec!(0), dec!(0.004), dec!(0)),
        (dec!(50000), dec!(0.005), dec!(50)),
        (dec!(600000), dec!(0.0065), dec!(950)),
        (dec!(3000000), dec!(0.01), dec!(11450)),
        (dec!(12000000), dec!(0.02), dec!(131450)),
        (dec!(50000000), dec!(0.025), dec!(381450)),
        (dec!(65000000), dec!(0.05), dec!(2006450)),
        (dec!(150000000), dec!(0.10), dec!(9506450)),
        (dec!(320000000), dec!(0.125), dec!(17506450)),
        (dec!(400000000), dec!(0.15), dec!(27506450)),
        (dec!(530000000), dec!(0.25), dec!(80506450)),
        (dec!(800000000), dec!(0.50), dec!(280506450)),
    ])
}

fn sol_table() -> Vec<MarginTier> {
    table(&[
        (dec!(0), dec!(0.005), dec!(0)),
        (dec!(20000), dec!(0.0065), dec!(30)),
        (dec!(100000), dec!(0.01), dec!(380)),
        (dec!(800000), dec!(0.02), dec!(8380)),
        (dec!(4000000), dec!(0.025), dec!(28380)),
        (dec!(8000000), dec!(0.05), dec!(228380)),
        (dec!(40000000), dec!(0.10), dec!(2228380)),
        (dec!(80000000), dec!(0.125), dec!(4228380)),
        (dec!(100000000), dec!(0.25), dec!(16728380)),
        (dec!(200000000), dec!(0.50), dec!(66728380)),
    ])
}

fn btcusdt() -> Instrument {
    contract("BTCUSDT-PERP", "BTC", btc_table())
}

fn universe() -> HashMap<InstrumentId, Instrument> {
    let list = vec![
        btcusdt(),
        contract("ETHUSDT-PERP", "ETH", eth_table()),
        contract("SOLUSDT-PERP", "SOL", sol_table()),
        coin("USDT", dec!(1), true),
        coin("USDC", dec!(1), true),
        coin("BTC", dec!(0.95), false),
    ];
    list.into_iter().map(|i| (i.id.clone(), i)).collect()
}

fn pos(id: &str, q: Decimal, ep: Decimal) -> Position {
    Position {
        instrument: id.into(),
        side: PositionSide::Both,
        quantity: q,
        entry_price: ep,
    }
}

fn w3_account() -> Account {
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

/// W3 prices (BTC, ETH, SOL) each multiplied by its own factor.
fn w3_prices(btc: Decimal, eth: Decimal, sol: Decimal) -> HashMap<InstrumentId, Decimal> {
    let mut p = HashMap::new();
    p.insert("BTCUSDT-PERP".into(), dec!(60000) * btc);
    p.insert("BTC".into(), dec!(60000) * btc);
    p.insert("ETHUSDT-PERP".into(), dec!(3000) * eth);
    p.insert("SOLUSDT-PERP".into(), dec!(150) * sol);
    p
}

fn ratio_pct(r: MarginRatio) -> Option<Decimal> {
    match r {
        MarginRatio::Finite(d) => Some(to_cents(d * dec!(100))),
        MarginRatio::Infinite => None,
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    /// The fixed-point tick path gives exactly `position_figures`' uPnL and MM, bit for bit,
    /// over wide mantissas and scales (overflow and rounding edges included).
    #[test]
    fn pnl_mm_fast_path_matches_decimal(
        qm in -10_000_000_000i64..10_000_000_000, qs in 0u32..12,
        pm in 1i64..1_000_000_000_000, ps in 0u32..16,
        em in 0i64..1_000_000_000_000, es in 0u32..16,
        big in proptest::bool::ANY, size_one in proptest::bool::ANY, at_entry in proptest::bool::ANY,
    ) {
        let mut i = btcusdt();
        if !size_one {
            i.contract_size = dec!(0.001);
        }
        let q = quantity(qm, qs, big);
        let p = Decimal::new(pm, ps);
        let e = if at_entry { at_places(p, es % 4) } else { Decimal::new(em, es) };
        let slow = definition(&i, q, e, p);
        let fast = position_pnl_mm(&i, q, e, p);
        proptest::prop_assert_eq!(format!("{slow:?}"), format!("{fast:?}"));
        if let (Ok(a), Ok(b)) = (slow, fast) {
            proptest::prop_assert_eq!((a.0.serialize(), a.1.serialize()), (b.0.serialize(), b.1.serialize()));
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
    /// Normalising on the magnitude is the `Decimal` definition bit for bit: every scale,
    /// mantissas up to 96 bits, zeros, negatives and exact midpoints at the 13th place (which
    /// round away from zero).
    #[test]
    fn normalise_fast_is_normalise(
        hi in 0u32..=u32::MAX, mid in 0u32..=u32::MAX, lo in 0u32..=u32::MAX,
        width in 0u32..4, scale in 0u32..=28, negative in proptest::bool::ANY, midpoint in proptest::bool::ANY,
    ) {
        let (hi, mid) = match width {
            0 => (0, 0),
            1 => (0, mid),
            2 => (hi >> 16, mid),
            _ => (hi, mid),
        };
        let mut d = Decimal::from_parts(lo, mid, hi, negative, scale);
        if midpoint && scale > ACCOUNTING_SCALE {
            // …5 followed by zeros at the 13th place: a tie.
            let m = (d.mantissa() / 10i128.pow(scale - ACCOUNTING_SCALE)) * 10i128.pow(scale - ACCOUNTING_SCALE)
                + 5 * 10i128.pow(scale - ACCOUNTING_SCALE - 1);
            if let Ok(t) = Decimal::try_from_i128_with_scale(m, scale) {
                d = t;
            }
        }
        proptest::prop_assert_eq!(normalise(d).serialize(), normalise_decimal(d).serialize(), "{}", d);
    }
}

/// Ascending tiers from random `(floor step, scale, mmr, scale, cum, scale)` rows, each
/// amount with its own places; a third of the amounts are a zero written with places
/// (`0.000`: `Decimal` adds a zero by returning the other operand as it is, not at the wider
/// scale).
fn random_tiers(rows: &[(i64, u32, i64, u32, i64, u32)]) -> Vec<MarginTier> {
    let mut floor = Decimal::ZERO;
    let mut tiers = Vec::new();
    for (k, &(f, fs, m, ms, c, cs)) in rows.iter().enumerate() {
        if k > 0 {
            floor += Decimal::new(f.max(1), fs);
        }
        let c = if c % 3 == 0 { 0 } else { c };
        tiers.push(tier(
            floor,
            floor + dec!(1e12),
            Decimal::new(m, ms),
            Decimal::new(c, cs),
        ));
    }
    tiers
}

/// A random quantity, or the same times 10¹² (mantissas past 64 bits).
fn quantity(m: i64, scale: u32, big: bool) -> Decimal {
    let q = Decimal::new(m, scale);
    if big {
        q * Decimal::from(1_000_000_000_000i64)
    } else {
        q
    }
}

/// `d` written with `more` extra places (the same number).
fn at_places(d: Decimal, more: u32) -> Decimal {
    let mut e = d;
    e.rescale((d.scale() + more).min(28));
    e
}

/// `(uPnL, MM)` normalised from the `Decimal` definition alone (no fast path on the way).
fn definition(
    i: &Instrument,
    q: Decimal,
    e: Decimal,
    p: Decimal,
) -> Result<(Decimal, Decimal), MarginError> {
    position_figures_decimal(i, q, e, p)
        .map(|f| (normalise(f.unrealized_pnl), normalise(f.maintenance_margin)))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1500))]
    /// The exact figures (what the snapshot and the distances are solved on) are the
    /// definition's bit for bit — notional, uPnL, MM and tier — on every path, fixed point
    /// or not: contract sizes 1 and 0.001, tiers with their own scales, mantissas that
    /// overflow.
    #[test]
    fn exact_figures_fast_path_matches_decimal(
        rows in proptest::collection::vec((0i64..5_000_000, 0u32..4, 1i64..500, 2u32..6, 0i64..5_000_000, 0u32..5), 1..6),
        qm in -10_000_000_000i64..10_000_000_000, qs in 0u32..12,
        pm in 1i64..1_000_000_000_000, ps in 0u32..16,
        em in 0i64..1_000_000_000_000, es in 0u32..16,
        big in proptest::bool::ANY, size_one in proptest::bool::ANY, at_entry in proptest::bool::ANY,
        zero_entry in proptest::bool::ANY,
    ) {
        let mut i = contract("XUSDT-PERP", "X", random_tiers(&rows));
        if !size_one {
            i.contract_size = dec!(0.001);
        }
        let q = quantity(qm, qs, big);
        let p = Decimal::new(pm, ps);
        // At its entry (written with its own places): uPnL is a zero, signed and scaled as
        // the definition's steps leave it.
        let e = match (at_entry, zero_entry) {
            (true, _) => at_places(p, es % 4),
            (false, true) => Decimal::new(0, es),
            (false, false) => Decimal::new(em, es),
        };
        let bits = |f: PositionFigures| {
            (f.notional.serialize(), f.unrealized_pnl.serialize(), f.maintenance_margin.serialize(), f.tier)
        };
        let exact = position_figures_exact(&i, q, e, p).map(bits);
        let defined = position_figures_decimal(&i, q, e, p).map(bits);
        proptest::prop_assert_eq!(format!("{exact:?}"), format!("{defined:?}"));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1500))]
    /// A tick's pricer gives every position exactly `position_figures`' uPnL and MM, bit for
    /// bit: one price, many positions of mixed scales (so the tiers are decoded at several
    /// notional scales, each once), over tiers whose floors, rates and amounts have their own
    /// scales (a floor with more places than the notional is rounded up when decoded).
    #[test]
    fn linear_tick_matches_decimal(
        rows in proptest::collection::vec((0i64..5_000_000, 0u32..4, 1i64..500, 2u32..6, 0i64..5_000_000, 0u32..5), 1..6),
        pm in 1i64..10_000_000_000, ps in 0u32..8,
        positions in proptest::collection::vec((-100_000_000i64..100_000_000, 0u32..10, 0i64..10_000_000_000, 0u32..12, 0u8..4), 1..24),
        big in proptest::bool::ANY,
    ) {
        // Floors ascending (the order `select_tier` expects), each with its own scale.
        let i = contract("XUSDT-PERP", "X", random_tiers(&rows));
        let p = Decimal::new(pm, ps);
        let mut pricer = PositionPricer::new(&i, p);
        let mut fast = fixed::LinearTick::new(&i.tiers, p);
        proptest::prop_assert!(fast.is_some());
        for &(qm, qs, em, es, at) in &positions {
            let mut q = Decimal::new(qm, qs);
            if big {
                q *= Decimal::from(10_000_000_000i64);
            }
            // One in four at the entry price, written with 0–3 more places.
            let e = if at == 0 { at_places(p, es % 4) } else { Decimal::new(em, es) };
            let slow = definition(&i, q, e, p);
            let priced = pricer.pnl_mm(q, e);
            proptest::prop_assert_eq!(format!("{slow:?}"), format!("{priced:?}"));
            if let (Ok(a), Ok(b)) = (slow, priced) {
                proptest::prop_assert_eq!((a.0.serialize(), a.1.serialize()), (b.0.serialize(), b.1.serialize()));
            }
            // The decoded tick declines exactly where the per-position fast path does, and at
            // the entry price also where the zero uPnL has more places than the accounting
            // scale (its sign is then `Decimal`'s).
            let tick = fast.as_mut().and_then(|t| t.value(q, e));
            let one = fixed::linear_unit_fast(&i.tiers, q, e, p);
            let zero_places = q.scale() + p.scale().max(e.scale());
            if p == e && zero_places >= ACCOUNTING_SCALE {
                proptest::prop_assert!(tick.is_none());
            } else {
                proptest::prop_assert_eq!(
                    tick.map(|(a, b)| (a.serialize(), b.serialize())),
                    one.map(|(a, b)| (a.serialize(), b.serialize()))
                );
            }
        }
    }
}

/// The decoded tick takes the book's ordinary positions (so the property test above compares
/// values, not two fallbacks): a BTC position at a tick price, both tiers' sides.
#[test]
fn linear_tick_takes_ordinary_positions() {
    let i = btcusdt();
    let mut t = fixed::LinearTick::new(&i.tiers, dec!(60012.5)).unwrap();
    for (q, e) in [
        (dec!(0.5), dec!(60000)),
        (dec!(-0.25), dec!(59871.3)),
        (dec!(12), dec!(61000.25)),
        (dec!(-400), dec!(58000)),
        // At the entry price (the zero uPnL at the accounting scale).
        (dec!(-0.25), dec!(60012.50)),
    ] {
        let (upnl, mm) = t.value(q, e).expect("fast path");
        let f = position_figures(&i, q, e, dec!(60012.5)).unwrap();
        assert_eq!((upnl, mm), (f.unrealized_pnl, f.maintenance_margin));
        assert_eq!(upnl.scale(), ACCOUNTING_SCALE);
    }
    // p = e with a zero of the accounting scale's 12 places or more (11 + 1 here): its sign is
    // `Decimal`'s, declined; with 11 (10 + 1), `+0` at the accounting scale.
    assert!(t.value(dec!(-0.00000000001), dec!(60012.5)).is_none());
    let (zero, _) = t.value(dec!(-0.0000000001), dec!(60012.5)).unwrap();
    assert_eq!(
        zero.serialize(),
        Decimal::new(0, ACCOUNTING_SCALE).serialize()
    );
}

/// A floor with more places than the notional (1,000.5 against whole notionals): 1,000 is still
/// below it, 1,001 above; and a floor the notional equals exactly is in its tier.
#[test]
fn linear_tick_floor_with_more_places_than_the_notional() {
    let i = contract(
        "XUSDT-PERP",
        "X",
        vec![
            tier(dec!(0), dec!(1000.5), dec!(0.01), dec!(0)),
            tier(dec!(1000.5), dec!(2000), dec!(0.02), dec!(10.005)),
            tier(dec!(2000), dec!(1e9), dec!(0.05), dec!(70.005)),
        ],
    );
    let mut t = fixed::LinearTick::new(&i.tiers, dec!(1)).unwrap();
    for (q, tier) in [
        (dec!(1000), 0),
        (dec!(1001), 1),
        (dec!(1999), 1),
        (dec!(2000), 2),
    ] {
        let f = position_figures(&i, q, dec!(2), dec!(1)).unwrap();
        assert_eq!(f.tier, tier, "{q}");
        let (upnl, mm) = t.value(q, dec!(2)).expect("fast path");
        assert_eq!((upnl, mm), (f.unrealized_pnl, f.maintenance_margin), "{q}");
    }
}

/// W1 (Binance's own cross example): LP 1,153.26 from the published inputs, exact to the
/// Decimal precision of the published formula.
#[test]
fn w1_binance_cross_liquidation_price() {
    let eth = contract(
        "ETHUSDT-PERP",
        "ETH",
        vec![tier(dec!(0), dec!(1e10), dec!(0.10), dec!(135365))],
    );
    let pm = PriceMove {
        fixed_equity: dec!(1535443.01) + dec!(-56354.57),
        fixed_mm: dec!(71200.81144),
        legs: vec![MovingLeg {
            instrument: &eth,
            quantity: dec!(3683.979),
            entry_price: dec!(1456.84),
            price_factor: Decimal::ONE,
            floats: None,
        }],
        collateral: vec![],
        trigger: Decimal::ONE,
    };
    let lp = pm.liquidation_price(dec!(1456.84)).unwrap().unwrap();
    assert_eq!(to_cents(lp), dec!(1153.26));
    assert_eq!(lp, dec!(-3823715.33780) / dec!(-3315.5811));
    assert!(lp.to_string().starts_with("1153.256464696"));
}

/// W2: MM exactly at and just past a tier floor, to the cent, and the wrong-tier figure.
#[test]
fn w2_tier_boundaries() {
    let i = btcusdt();
    let cases = [
        (dec!(10), dec!(60000), dec!(2950.00), 2),
        (dec!(10), dec!(60100), dec!(2956.50), 2),
        (dec!(50), dec!(60000), dec!(18550.00), 3),
        (dec!(50), dec!(60010), dec!(18555.00), 3),
    ];
    for (q, p, mm, t) in cases {
        let f = position_figures(&i, q, p, p).unwrap();
        assert_eq!(f.maintenance_margin, mm, "q={q} p={p}");
        assert_eq!(f.tier, t);
    }
    // Tier 2's line at 601,000 is 1.50 short: the model must not use it.
    let t2 = &i.tiers[1];
    assert_eq!(dec!(601000) * t2.mmr - t2.cum, dec!(2955.00));
    // One tick below the floor is tier 2 and continuous with tier 3.
    let f = position_figures(&i, dec!(10), dec!(60000), dec!(59999.99)).unwrap();
    assert_eq!(f.tier, 1);
    assert_eq!(f.maintenance_margin, dec!(2949.9995));
}

/// W2 isolated LP: the tier re-check moves 57,277.30 to 57,281.41.
#[test]
fn w2_isolated_lp_recheck() {
    let i = btcusdt();
    let pm = PriceMove {
        fixed_equity: dec!(30000),
        legs: vec![MovingLeg {
            instrument: &i,
            quantity: dec!(10),
            entry_price: dec!(60000),
            price_factor: Decimal::ONE,
            floats: None,
        }],
        trigger: Decimal::ONE,
        ..PriceMove::default()
    };
    let lp = pm.liquidation_price(dec!(60000)).unwrap().unwrap();
    assert_eq!(to_cents(lp), dec!(57281.41));
    let t = pm.reprice(lp).unwrap();
    assert_eq!(to_cents(t.equity), dec!(2814.07));
    assert_eq!(to_cents(t.maintenance_margin), dec!(2814.07));
}

/// §1.7: a 2,500 BTC isolated long needs three re-checks (38,008.24 → 40,828.12 →
/// 40,849.92); stopping after two would be 21.79 too low.
#[test]
fn lp_three_step_recheck() {
    let i = btcusdt();
    let pm = PriceMove {
        fixed_equity: dec!(50000000),
        legs: vec![MovingLeg {
            instrument: &i,
            quantity: dec!(2500),
            entry_price: dec!(60000),
            price_factor: Decimal::ONE,
            floats: None,
        }],
        trigger: Decimal::ONE,
        ..PriceMove::default()
    };
    let lp = pm.liquidation_price(dec!(95000)).unwrap().unwrap();
    assert_eq!(to_cents(lp), dec!(40849.92));
    // The crossing below is the same point (the walk settles every tier on the way).
    let c = pm.crossings(dec!(95000)).unwrap();
    assert_eq!(to_cents(dec!(95000) + c.down.unwrap()), dec!(40849.92));
}

/// W3: equity, MM and ratio of the cross account with haircut BTC collateral.
#[test]
fn w3_cross_account() {
    let u = universe();
    let s = account_snapshot(
        &w3_account(),
        &u,
        &w3_prices(dec!(1), dec!(1), dec!(1)),
        dec!(1),
    )
    .unwrap();
    assert_eq!(s.equity, dec!(90000));
    assert_eq!(s.maintenance_margin, dec!(7965));
    assert_eq!(s.margin_ratio, MarginRatio::Finite(dec!(0.0885)));
    assert_eq!(s.free_margin, dec!(82035));
    let mms: Vec<_> = s.positions.iter().map(|p| p.maintenance_margin).collect();
    assert_eq!(mms, vec![dec!(3145), dec!(2200), dec!(2620)]);
    let tiers: Vec<_> = s.positions.iter().map(|p| p.tier).collect();
    assert_eq!(tiers, vec![3, 2, 3]);
    assert_eq!(s.collateral[0].value, dec!(85500)); // BTC sorts before USDT
}

/// W4 and §4.1: full revaluation under the scenario table, to the cent.
#[test]
fn w4_and_stress_table() {
    let u = universe();
    let a = w3_account();
    let rows = [
        // (btc, eth, sol factors, equity, MM, ratio %)
        (
            (dec!(1.1), dec!(1.1), dec!(1.1)),
            dec!(176550.00),
            dec!(8899.50),
            Some(dec!(5.04)),
        ),
        (
            (dec!(1), dec!(1), dec!(1)),
            dec!(90000.00),
            dec!(7965.00),
            Some(dec!(8.85)),
        ),
        (
            (dec!(0.95), dec!(0.95), dec!(0.95)),
            dec!(46725.00),
            dec!(7500.00),
            Some(dec!(16.05)),
        ),
        (
            (dec!(0.9), dec!(0.9), dec!(0.9)),
            dec!(3450.00),
            dec!(7080.00),
            Some(dec!(205.22)),
        ),
        (
            (dec!(0.8), dec!(0.8), dec!(0.8)),
            dec!(-83100.00),
            dec!(6240.00),
            None,
        ),
        (
            (dec!(0.9), dec!(1), dec!(1)),
            dec!(18450.00),
            dec!(7605.00),
            Some(dec!(41.22)),
        ),
        (
            (dec!(1), dec!(1), dec!(1.2)),
            dec!(30000.00),
            dec!(8565.00),
            Some(dec!(28.55)),
        ),
    ];
    for ((b, e, so), eq, mm, r) in rows {
        let s = account_snapshot(&a, &u, &w3_prices(b, e, so), dec!(1)).unwrap();
        assert_eq!(to_cents(s.equity), eq, "{b} {e} {so}");
        assert_eq!(to_cents(s.maintenance_margin), mm, "{b} {e} {so}");
        assert_eq!(ratio_pct(s.margin_ratio), r, "{b} {e} {so}");
    }
    // W4 per-position MM after −10 %: BTC drops to tier 2.
    let s = account_snapshot(&a, &u, &w3_prices(dec!(0.9), dec!(0.9), dec!(0.9)), dec!(1)).unwrap();
    let mms: Vec<_> = s.positions.iter().map(|p| p.maintenance_margin).collect();
    assert_eq!(mms, vec![dec!(2785), dec!(1975), dec!(2320)]);
    assert_eq!(s.positions[0].tier, 2);
}

/// W5: the uniform-shock root through a tier change is exactly −1,368/14,285, and the
/// account re-priced there sits on the trigger (equity = MM = 7,115.58).
#[test]
fn w5_exact_shock_root() {
    let u = universe();
    let a = w3_account();
    let prices = w3_prices(dec!(1), dec!(1), dec!(1));
    let d = shock_distance(&a, &u, &prices, dec!(1)).unwrap();
    assert_eq!(d.down, Some(dec!(-1368) / dec!(14285)));
    assert_eq!(d.up, None, "net delta is long: a rise never liquidates");
    assert_eq!(d.nearest, d.down);
    let pm = shock_problem(&a, &u, &prices, dec!(1)).unwrap();
    let x = Decimal::ONE + d.down.unwrap();
    let t = pm.reprice(x).unwrap();
    assert_eq!(to_cents(t.equity), dec!(7115.58));
    assert!((t.maintenance_margin - t.equity).abs() < dec!(1e-20));
    // The naive frozen-tier root −9.581793 % is not what we report.
    assert_eq!((d.down.unwrap() * dec!(100)).round_dp(6), dec!(-9.576479));
    // The snapshot carries it too.
    let s = account_snapshot(&a, &u, &prices, dec!(1)).unwrap();
    assert_eq!(s.shock_distance, d);
}

/// W3 per-position liquidation prices re-price to the trigger, each moving only its own
/// underlying (BTC perp and BTC collateral together).
#[test]
fn w3_liquidation_prices_reach_trigger() {
    let u = universe();
    let a = w3_account();
    let prices = w3_prices(dec!(1), dec!(1), dec!(1));
    let s = account_snapshot(&a, &u, &prices, dec!(1)).unwrap();
    for (p, risk) in a.positions.iter().zip(&s.positions) {
        let (pm, p0) = liquidation_problem(&a, &u, &prices, p, dec!(1))
            .unwrap()
            .unwrap();
        let lp = risk.liquidation_price.expect("reachable");
        assert!(lp > Decimal::ZERO);
        let t = pm.reprice(lp).unwrap();
        assert!(
            (t.maintenance_margin - t.equity).abs() < dec!(1e-18),
            "{}: {t:?}",
            p.instrument
        );
        // Long legs liquidate on a fall, the SOL short on a rise.
        assert_eq!(lp < p0, p.quantity > Decimal::ZERO);
    }
}

/// When the perp's mark and the collateral's index differ, the liquidation price moves
/// them in proportion and still re-prices to the trigger; other underlyings stay frozen.
#[test]
fn liquidation_price_with_basis_between_mark_and_index() {
    let u = universe();
    let a = w3_account();
    let mut prices = w3_prices(dec!(1), dec!(1), dec!(1));
    prices.insert("BTC".into(), dec!(59950)); // index 50 below the mark
    let p = &a.positions[0];
    let (pm, p0) = liquidation_problem(&a, &u, &prices, p, dec!(1))
        .unwrap()
        .unwrap();
    assert_eq!(p0, dec!(60000));
    assert_eq!(pm.legs.len(), 1, "only BTC legs move");
    assert_eq!(pm.collateral.len(), 1, "BTC collateral moves with it");
    assert_eq!(pm.collateral[0].price_factor, dec!(59950) / dec!(60000));
    let lp = pm.liquidation_price(p0).unwrap().unwrap();
    let t = pm.reprice(lp).unwrap();
    assert!(
        (t.maintenance_margin - t.equity).abs() < dec!(1e-18),
        "{t:?}"
    );
    // Frozen ETH and SOL figures are in the fixed part: equity(60,000) is today's.
    let today = pm.reprice(p0).unwrap();
    let s = account_snapshot(&a, &u, &prices, dec!(1)).unwrap();
    assert_eq!(normalise(today.equity), s.equity);
    assert_eq!(normalise(today.maintenance_margin), s.maintenance_margin);
}

/// W6: inverse BTCUSD, 100 contracts of 100 USD at 25,000 → MM 0.0016 BTC = 40 USD.
#[test]
fn w6_inverse_mm_and_pnl() {
    let mut i = btcusdt();
    i.kind = InstrumentKind::InversePerpetual;
    i.contract_size = dec!(100);
    i.tiers = vec![tier(dec!(0), dec!(5), dec!(0.004), dec!(0))];
    let f = position_figures(&i, dec!(100), dec!(30000), dec!(25000)).unwrap();
    assert_eq!(f.maintenance_margin, dec!(40)); // 0.0016 BTC × 25,000
    // uPnL = −1/15 BTC × 25,000 = −1,666.666… USD
    assert_eq!(to_cents(f.unrealized_pnl), dec!(-1666.67));
}

fn w6_setup(
    q: Decimal,
) -> (
    HashMap<InstrumentId, Instrument>,
    Account,
    HashMap<InstrumentId, Decimal>,
) {
    let mut inv = contract(
        "BTCUSD-INV-PERP",
        "BTC",
        vec![tier(dec!(0), dec!(50), dec!(0.004), dec!(0))],
    );
    inv.kind = InstrumentKind::InversePerpetual;
    inv.contract_size = dec!(100);
    let btc = coin("BTC", dec!(1), false);
    let u: HashMap<_, _> = [inv, btc].into_iter().map(|i| (i.id.clone(), i)).collect();
    let mut collateral = BTreeMap::new();
    collateral.insert(InstrumentId::from("BTC"), dec!(0.1));
    let a = Account {
        id: "w6".into(),
        collateral,
        positions: vec![pos("BTCUSD-INV-PERP", q, dec!(30000))],
        thresholds: None,
        apply_funding: false,
    };
    let mut p = HashMap::new();
    p.insert("BTCUSD-INV-PERP".into(), dec!(25000));
    p.insert("BTC".into(), dec!(25000));
    (u, a, p)
}

/// W6 cross: margin balance 1/30 BTC (833.33 USD), ratio 4.80 %, LP 23,169.23; the same
/// size short has LP 42,685.71.
#[test]
fn w6_inverse_cross_account_and_lp() {
    let (u, a, p) = w6_setup(dec!(100));
    let s = account_snapshot(&a, &u, &p, dec!(1)).unwrap();
    assert_eq!(to_cents(s.equity), dec!(833.33));
    assert_eq!(s.maintenance_margin, dec!(40));
    assert_eq!(ratio_pct(s.margin_ratio), Some(dec!(4.80)));
    let lp = s.positions[0].liquidation_price.unwrap();
    assert_eq!(to_cents(lp), dec!(23169.23));
    let (u, a, p) = w6_setup(dec!(-100));
    let s = account_snapshot(&a, &u, &p, dec!(1)).unwrap();
    assert_eq!(
        to_cents(s.positions[0].liquidation_price.unwrap()),
        dec!(42685.71)
    );
}

/// W8 (Bybit UTA): MM 11,680, margin balance 155,000, account MM rate 7.54 %; at exactly
/// 2,000,000 both tiers give 10,000.
#[test]
fn w8_bybit_cross() {
    let by = contract(
        "BYBIT-BTCUSDT-PERP",
        "BTC",
        vec![
            tier(dec!(0), dec!(2000000), dec!(0.005), dec!(0)),
            tier(dec!(2000000), dec!(2600000), dec!(0.0056), dec!(1200)),
        ],
    );
    let u: HashMap<_, _> = [
        by.clone(),
        coin("USDT", dec!(1), true),
        coin("BTC", dec!(0.98), false),
    ]
    .into_iter()
    .map(|i| (i.id.clone(), i))
    .collect();
    let mut collateral = BTreeMap::new();
    collateral.insert(InstrumentId::from("USDT"), dec!(60000));
    collateral.insert(InstrumentId::from("BTC"), dec!(0.5));
    let a = Account {
        id: "w8".into(),
        collateral,
        positions: vec![pos("BYBIT-BTCUSDT-PERP", dec!(23), dec!(98000))],
        thresholds: None,
        apply_funding: false,
    };
    let mut p = HashMap::new();
    p.insert("BYBIT-BTCUSDT-PERP".into(), dec!(100000));
    p.insert("BTC".into(), dec!(100000));
    let s = account_snapshot(&a, &u, &p, dec!(1)).unwrap();
    assert_eq!(s.maintenance_margin, dec!(11680));
    assert_eq!(s.equity, dec!(155000));
    assert_eq!(ratio_pct(s.margin_ratio), Some(dec!(7.54)));
    // Cap 2,000,000 exactly, and one cent (one tick) past it.
    let at = position_figures(&by, dec!(20), dec!(1), dec!(100000)).unwrap();
    assert_eq!(at.maintenance_margin, dec!(10000));
    assert_eq!(dec!(2000000) * dec!(0.005), dec!(10000));
    let past = position_figures(&by, dec!(1), dec!(1), dec!(2000000.01)).unwrap();
    assert_eq!(past.tier, 1);
    assert_eq!(to_cents(past.maintenance_margin), dec!(10000.00));
}

fn hl_btc() -> Instrument {
    // Hyperliquid: mmr = 1/(2·max leverage): 40× → 1.25 %, 20× above 150 M → 2.5 %.
    contract(
        "HL-BTC-PERP",
        "BTC",
        vec![
            tier(dec!(0), dec!(150000000), dec!(0.0125), dec!(0)),
            tier(dec!(150000000), dec!(1e12), dec!(0.025), dec!(1875000)),
        ],
    )
}

/// W10 (Hyperliquid): account value 10,000, MM 1,250, LP 7,200,000/79 = 91,139.24, and the
/// tiered MM at 200 M notional is 3,125,000.
#[test]
fn w10_hyperliquid() {
    let u: HashMap<_, _> = [hl_btc(), coin("USDC", dec!(1), true)]
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
    let mut collateral = BTreeMap::new();
    collateral.insert(InstrumentId::from("USDC"), dec!(5000));
    let a = Account {
        id: "w10".into(),
        collateral,
        positions: vec![pos("HL-BTC-PERP", dec!(1), dec!(95000))],
        thresholds: None,
        apply_funding: false,
    };
    let mut p = HashMap::new();
    p.insert("HL-BTC-PERP".into(), dec!(100000));
    let s = account_snapshot(&a, &u, &p, dec!(1)).unwrap();
    assert_eq!(s.equity, dec!(10000));
    assert_eq!(s.maintenance_margin, dec!(1250));
    assert_eq!(s.free_margin, dec!(8750));
    let lp = s.positions[0].liquidation_price.unwrap();
    assert_eq!(lp, dec!(7200000) / dec!(79));
    assert_eq!(to_cents(lp), dec!(91139.24));
    let f = position_figures(&hl_btc(), dec!(2000), dec!(100000), dec!(100000)).unwrap();
    assert_eq!(f.maintenance_margin, dec!(3125000));
}

/// W11 (dYdX flat maintenance fractions) fits as single-tier instruments: the uniform
/// shock is x* = 500/613, s* = −18.433931 %.
#[test]
fn w11_flat_fraction_shock() {
    let one =
        |id: &str, mmr: Decimal| contract(id, id, vec![tier(dec!(0), dec!(1e15), mmr, dec!(0))]);
    let u: HashMap<_, _> = [
        one("BTC-USD", dec!(0.012)),
        one("ETH-USD", dec!(0.012)),
        one("LINK-USD", dec!(0.05)),
        coin("USDC", dec!(1), true),
    ]
    .into_iter()
    .map(|i| (i.id.clone(), i))
    .collect();
    let mut collateral = BTreeMap::new();
    collateral.insert(InstrumentId::from("USDC"), dec!(13000));
    let a = Account {
        id: "w11".into(),
        collateral,
        positions: vec![
            pos("BTC-USD", dec!(1), dec!(60000)),
            pos("ETH-USD", dec!(-10), dec!(3000)),
            pos("LINK-USD", dec!(1000), dec!(15)),
        ],
        thresholds: None,
        apply_funding: false,
    };
    let p: HashMap<InstrumentId, Decimal> = [
        ("BTC-USD".into(), dec!(58000)),
        ("ETH-USD".into(), dec!(3100)),
        ("LINK-USD".into(), dec!(14)),
    ]
    .into_iter()
    .collect();
    let s = account_snapshot(&a, &u, &p, dec!(1)).unwrap();
    assert_eq!(s.equity, dec!(9000));
    assert_eq!(s.maintenance_margin, dec!(1768));
    let down = s.shock_distance.down.unwrap();
    assert_eq!(down, dec!(-113) / dec!(613));
    assert_eq!((down * dec!(100)).round_dp(6), dec!(-18.433931));
}

/// §4.3: at the W4 state with 0.5 % on every symbol the penalty is 6,210.00.
#[test]
fn liquidation_penalty_at_w4() {
    let u = universe();
    let s = account_snapshot(
        &w3_account(),
        &u,
        &w3_prices(dec!(0.9), dec!(0.9), dec!(0.9)),
        dec!(1),
    )
    .unwrap();
    assert_eq!(s.liquidation_penalty, dec!(6210));
}

/// Hedge mode: a long and a short leg on one instrument are each margined in their own
/// bracket (MM does not net), and the distances account for both legs.
#[test]
fn hedge_mode_legs() {
    let u = universe();
    let mut collateral = BTreeMap::new();
    collateral.insert(InstrumentId::from("USDT"), dec!(10000));
    let a = Account {
        id: "hedge".into(),
        collateral,
        positions: vec![
            Position {
                instrument: "BTCUSDT-PERP".into(),
                side: PositionSide::Long,
                quantity: dec!(10),
                entry_price: dec!(60000),
            },
            Position {
                instrument: "BTCUSDT-PERP".into(),
                side: PositionSide::Short,
                quantity: dec!(-10),
                entry_price: dec!(60000),
            },
        ],
        thresholds: None,
        apply_funding: false,
    };
    let prices = w3_prices(dec!(1), dec!(1), dec!(1));
    let s = account_snapshot(&a, &u, &prices, dec!(1)).unwrap();
    assert_eq!(s.equity, dec!(10000));
    assert_eq!(s.maintenance_margin, dec!(5900)); // 2 × 2,950, not 0
    // Net delta 0: equity is flat, MM grows with the price, so only a rise can trigger:
    // 20·P·0.0065 − 1,900 = 10,000 → P = 91,538.46…, s = +52.56 %.
    let d = s.shock_distance;
    assert_eq!(d.down, None);
    let up = d.up.unwrap();
    let pm = shock_problem(&a, &u, &prices, dec!(1)).unwrap();
    let t = pm.reprice(Decimal::ONE + up).unwrap();
    assert!((t.maintenance_margin - t.equity).abs() < dec!(1e-20));
    assert_eq!(to_cents(dec!(60000) * (Decimal::ONE + up)), dec!(91538.46));
    for p in &s.positions {
        assert_eq!(to_cents(p.liquidation_price.unwrap()), dec!(91538.46));
    }
}

/// Edge cases: an empty account has no exposure, so ratio 0 and no distance (issue 11 item 5:
/// it used to be infinite); collateral alone is ratio 0 with no distance, even when the balance
/// is negative; negative equity with positions is infinite and reports where it would stop
/// being triggered.
#[test]
fn empty_no_positions_negative_equity() {
    let u = universe();
    let prices = w3_prices(dec!(1), dec!(1), dec!(1));
    let empty = Account {
        id: "e".into(),
        collateral: BTreeMap::new(),
        positions: vec![],
        thresholds: None,
        apply_funding: false,
    };
    let s = account_snapshot(&empty, &u, &prices, dec!(1)).unwrap();
    assert_eq!(s.equity, Decimal::ZERO);
    assert_eq!(s.margin_ratio, MarginRatio::Finite(Decimal::ZERO));
    assert_eq!(s.shock_distance, ShockDistance::default());
    assert!(s.positions.is_empty());

    let mut only = empty.clone();
    only.collateral.insert("BTC".into(), dec!(1));
    let s = account_snapshot(&only, &u, &prices, dec!(1)).unwrap();
    assert_eq!(s.equity, dec!(57000));
    assert_eq!(s.margin_ratio, MarginRatio::Finite(Decimal::ZERO));
    assert_eq!(s.shock_distance.nearest, None);

    let mut owing = empty.clone();
    owing.collateral.insert("USDT".into(), dec!(-250));
    let s = account_snapshot(&owing, &u, &prices, dec!(1)).unwrap();
    assert_eq!(s.equity, dec!(-250));
    assert_eq!(s.maintenance_margin, Decimal::ZERO);
    assert_eq!(s.margin_ratio, MarginRatio::Finite(Decimal::ZERO));
    assert_eq!(s.shock_distance, ShockDistance::default());

    // W3 at −20 %: bankrupt; a rise back of the root's size un-triggers it.
    let p = w3_prices(dec!(0.8), dec!(0.8), dec!(0.8));
    let s = account_snapshot(&w3_account(), &u, &p, dec!(1)).unwrap();
    assert!(s.equity < Decimal::ZERO);
    assert_eq!(s.margin_ratio, MarginRatio::Infinite);
    let up = s.shock_distance.up.unwrap();
    let back = dec!(0.8) * (Decimal::ONE + up);
    assert!((back - dec!(12917) / dec!(14285)).abs() < dec!(1e-20));
}

/// Zero prices: a linear contract at 0 is valued (notional 0, MM 0); an inverse contract at
/// 0 is a clear error; a collateral at 0 is worth 0.
#[test]
fn zero_prices() {
    let i = btcusdt();
    let f = position_figures(&i, dec!(2), dec!(100), Decimal::ZERO).unwrap();
    assert_eq!(f.notional, Decimal::ZERO);
    assert_eq!(f.maintenance_margin, Decimal::ZERO);
    assert_eq!(f.unrealized_pnl, dec!(-200));
    let mut inv = btcusdt();
    inv.kind = InstrumentKind::InversePerpetual;
    assert!(matches!(
        position_figures(&inv, dec!(1), dec!(100), Decimal::ZERO),
        Err(MarginError::NonPositivePrice { .. })
    ));
    let c = coin("BTC", dec!(0.95), false);
    assert_eq!(
        collateral_value(&c, dec!(3), Decimal::ZERO).unwrap(),
        Decimal::ZERO
    );
    // A snapshot with a zero-priced position has no liquidation price for it.
    let u = universe();
    let mut p = w3_prices(dec!(1), dec!(1), dec!(1));
    p.insert("SOLUSDT-PERP".into(), Decimal::ZERO);
    let s = account_snapshot(&w3_account(), &u, &p, dec!(1)).unwrap();
    assert_eq!(s.positions[2].liquidation_price, None);
}

/// Tiered haircut is applied slice by slice; borrowed balances count at 100 %.
#[test]
fn tiered_and_negative_collateral() {
    let mut i = btcusdt();
    i.kind = InstrumentKind::Collateral;
    i.haircut_tiers = vec![
        HaircutTier {
            amount_floor: dec!(0),
            ratio: dec!(0.98),
        },
        HaircutTier {
            amount_floor: dec!(10),
            ratio: dec!(0.95),
        },
        HaircutTier {
            amount_floor: dec!(20),
            ratio: dec!(0.90),
        },
    ];
    assert_eq!(
        collateral_value(&i, dec!(15), dec!(1)).unwrap(),
        dec!(14.55)
    );
    assert_eq!(
        collateral_value(&i, dec!(-2), dec!(100)).unwrap(),
        dec!(-200)
    );
}

/// Overflow is an error, not a panic, in figures, snapshots and distances.
#[test]
fn huge_quantities_overflow_cleanly() {
    let i = btcusdt();
    let r = position_figures(&i, Decimal::MAX, dec!(1), Decimal::MAX);
    assert!(matches!(r, Err(MarginError::Overflow { .. })));
    let u = universe();
    let mut a = w3_account();
    a.positions[0].quantity = dec!(1e24);
    let r = account_snapshot(&a, &u, &w3_prices(dec!(1), dec!(1), dec!(1)), dec!(1));
    assert!(matches!(r, Err(MarginError::Overflow { .. })), "{r:?}");
    a.positions[0].quantity = dec!(1e20);
    // Fits in the totals but not in the distance maths: still an error, never a panic.
    let _ = account_snapshot(&a, &u, &w3_prices(dec!(1), dec!(1), dec!(1)), dec!(1));
}
