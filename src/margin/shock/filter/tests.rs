//! The filtered walk equals the plain exact walk, bit for bit, on random books.

use super::super::{MovingCollateral, MovingLeg, PriceMove};
use super::{Filter, TierFloats};
use crate::model::{Instrument, InstrumentKind, MarginTier};
use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn tiers(rows: &[(Decimal, Decimal, Decimal)]) -> Vec<MarginTier> {
    rows.iter()
        .enumerate()
        .map(|(i, &(floor, mmr, cum))| MarginTier {
            notional_floor: floor,
            notional_cap: rows
                .get(i + 1)
                .map(|r| r.0)
                .unwrap_or(floor * dec!(10) + dec!(1)),
            mmr,
            cum,
        })
        .collect()
}

fn instrument(id: &str, kind: InstrumentKind, cs: Decimal, t: Vec<MarginTier>) -> Instrument {
    Instrument {
        id: id.into(),
        kind,
        underlying: "BTC".into(),
        contract_size: cs,
        tiers: t,
        liquidation_fee_rate: dec!(0.005),
        collateral_ratio: dec!(0.95),
        haircut_tiers: vec![],
        stable: false,
        sources: vec![],
        source_note: None,
        margin: Default::default(),
    }
}

/// A linear USDT perp (Binance's BTC brackets), a linear one of contract size 0.001, an inverse
/// one (coin tiers), and a collateral coin.
fn universe() -> Vec<Instrument> {
    let btc = tiers(&[
        (dec!(0), dec!(0.004), dec!(0)),
        (dec!(50000), dec!(0.005), dec!(50)),
        (dec!(600000), dec!(0.0065), dec!(950)),
        (dec!(3000000), dec!(0.01), dec!(11450)),
        (dec!(12000000), dec!(0.02), dec!(131450)),
        (dec!(70000000), dec!(0.025), dec!(481450)),
        (dec!(100000000), dec!(0.05), dec!(2981450)),
    ]);
    // A table whose `cum` breaks continuity at its second floor (a jump of g).
    let jumpy = tiers(&[
        (dec!(0), dec!(0.01), dec!(0)),
        (dec!(20000), dec!(0.02), dec!(150)),
        (dec!(250000), dec!(0.05), dec!(7650)),
    ]);
    let coin = tiers(&[
        (dec!(0), dec!(0.004), dec!(0)),
        (dec!(5), dec!(0.005), dec!(0.005)),
        (dec!(50), dec!(0.01), dec!(0.255)),
    ]);
    // Continuous, with a last tier's `mmr` (0.6) above some triggers: a long there raises `g`.
    let steep = tiers(&[
        (dec!(0), dec!(0.01), dec!(0)),
        (dec!(100000), dec!(0.1), dec!(9000)),
        (dec!(1000000), dec!(0.6), dec!(509000)),
    ]);
    let mut c = instrument("BTC", InstrumentKind::Collateral, Decimal::ONE, vec![]);
    c.tiers.clear();
    vec![
        instrument("A", InstrumentKind::LinearPerpetual, Decimal::ONE, btc),
        instrument("B", InstrumentKind::LinearPerpetual, dec!(0.001), jumpy),
        instrument("C", InstrumentKind::InversePerpetual, dec!(100), coin),
        c,
        instrument("D", InstrumentKind::LinearPerpetual, dec!(0.01), steep),
    ]
}

fn leg_strategy() -> impl Strategy<Value = (usize, i64, u32, i64, i64)> {
    (
        0usize..3,
        -5_000_000i64..5_000_000,
        0u32..4,
        1_000i64..10_000_000,
        50i64..200,
    )
}

/// A book for the property tests: each leg `(instrument, quantity, entry in cents, price as a %
/// of 60,000)` priced per unit of `z` from `start` (so factors differ between legs), the fixed
/// equity and MM, `coll` tenths of the collateral coin moving with `z` (none when 0), the
/// trigger in %.
fn book<'u>(
    u: &'u [Instrument],
    legs: &[(usize, Decimal, i64, i64)],
    fixed: (i64, i64),
    coll: i64,
    trigger_pct: i64,
    start: Decimal,
) -> PriceMove<'u> {
    let mut pm = PriceMove {
        fixed_equity: Decimal::from(fixed.0),
        fixed_mm: Decimal::from(fixed.1),
        trigger: Decimal::new(trigger_pct, 2),
        ..PriceMove::default()
    };
    for &(which, quantity, entry, pct) in legs {
        pm.legs.push(MovingLeg {
            instrument: &u[which],
            quantity,
            entry_price: Decimal::new(entry, 2),
            price_factor: Decimal::new(60000 * pct, 2) / start,
            floats: None,
        });
    }
    if coll != 0 {
        pm.collateral.push(MovingCollateral {
            instrument: &u[3],
            amount: Decimal::new(coll, 1),
            price_factor: dec!(60000) / start,
        });
    }
    pm
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// `crossings` (filtered) returns exactly `crossings_exact` whenever the latter succeeds,
    /// for the uniform shock (start 1) and for a price variable (start = the leg's price);
    /// and exactly the same with each leg's tiers converted beforehand (as the engine's
    /// instrument table keeps them) as with the filter converting them itself.
    #[test]
    fn filtered_walk_equals_exact_walk(
        legs in proptest::collection::vec(leg_strategy(), 1..5),
        fixed in -2_000_000i64..20_000_000,
        fixed_mm in 0i64..200_000,
        coll in 0i64..500,
        trigger_pct in 50i64..120,
        price_start in proptest::bool::ANY,
    ) {
        let u = universe();
        let start = if price_start { dec!(60000) } else { Decimal::ONE };
        let legs: Vec<_> = legs
            .iter()
            .map(|&(which, q, qs, entry, pct)| (which, Decimal::new(q, qs + 2), entry, pct))
            .collect();
        let pm = book(&u, &legs, (fixed, fixed_mm), coll, trigger_pct, start);
        if let Ok(exact) = pm.crossings_exact(start) {
            prop_assert_eq!(pm.crossings(start).ok(), Some(exact));
        }
        let cached: Vec<Option<TierFloats>> = u.iter().map(TierFloats::new).collect();
        let mut with = pm.clone();
        for leg in &mut with.legs {
            let at = u.iter().position(|i| std::ptr::eq(i, leg.instrument));
            leg.floats = at.and_then(|at| cached.get(at)).and_then(Option::as_ref);
        }
        prop_assert!(with.legs.iter().all(|l| l.floats.is_some()));
        prop_assert_eq!(with.crossings(start), pm.crossings(start));
    }
}

/// An instrument's tiers in `f64` are what the filter would convert: each floor, `mmr` and
/// `cum` within a few ulps of the `Decimal` (the filter's own conversion), and none for an
/// instrument the filter does not take (no tiers, `margin` options).
#[test]
fn tier_floats_convert_every_tier() {
    let u = universe();
    let i = &u[0];
    let t = TierFloats::new(i).expect("a plain contract");
    assert_eq!(t.floors.len(), i.tiers.len());
    for (tier, (&fl, &(mmr, cum))) in i.tiers.iter().zip(t.floors.iter().zip(&t.rates)) {
        for (got, want) in [(fl, tier.notional_floor), (mmr, tier.mmr), (cum, tier.cum)] {
            let want: f64 = want.to_string().parse().expect("a number");
            assert!((got - want).abs() <= want.abs() * 1e-15, "{got} vs {want}");
        }
    }
    let mut no_tiers = i.clone();
    no_tiers.tiers.clear();
    assert_eq!(TierFloats::new(&no_tiers), None);
    let mut options = i.clone();
    options.margin.liquidation_fee_in_mm = true;
    assert_eq!(TierFloats::new(&options), None);
}

/// The filter takes the usual case (one leg, no ties): it does not decline, and it finds the
/// crossing the exact walk finds.
#[test]
fn filter_takes_the_usual_case() {
    let u = universe();
    let pm = PriceMove {
        fixed_equity: dec!(5000),
        legs: vec![MovingLeg {
            instrument: &u[0],
            quantity: dec!(1),
            entry_price: dec!(60000),
            price_factor: Decimal::ONE,
            floats: None,
        }],
        trigger: Decimal::ONE,
        ..PriceMove::default()
    };
    let f = Filter::new(&pm)
        .unwrap()
        .expect("the filter takes a one-leg book");
    let down = f.walk(dec!(60000), false).unwrap().expect("not declined");
    let up = f.walk(dec!(60000), true).unwrap().expect("not declined");
    let exact = pm.crossings_exact(dec!(60000)).unwrap();
    assert_eq!((down, up), (exact.down, exact.up));
    assert!(
        down.is_some(),
        "a long with 5,000 of equity reaches the trigger below"
    );
    assert_eq!(up, None);
}

/// A start within 1e-9 of a breakpoint, or two legs with equal breakpoints, make it decline.
#[test]
fn filter_declines_ties() {
    let u = universe();
    let leg = MovingLeg {
        instrument: &u[0],
        quantity: dec!(1),
        entry_price: dec!(60000),
        price_factor: Decimal::ONE,
        floats: None,
    };
    let pm = PriceMove {
        fixed_equity: dec!(5000),
        legs: vec![leg, leg],
        trigger: Decimal::ONE,
        ..PriceMove::default()
    };
    assert!(Filter::new(&pm).unwrap().is_none());
    let one = PriceMove {
        legs: vec![leg],
        ..pm.clone()
    };
    let f = Filter::new(&one).unwrap().expect("one leg");
    // 50,000 is the tier-2 floor of a 1-BTC position: a start on it is declined.
    assert_eq!(f.walk(dec!(50000), true).unwrap(), None);
}

/// MM is continuous on Binance's brackets and on the steep table, not on the one whose `cum`
/// jumps nor on floors out of order; the highest `mmr` is read exactly.
#[test]
fn continuity_and_highest_rate_of_a_table() {
    let u = universe();
    let max = |i: usize| TierFloats::new(&u[i]).and_then(|t| t.max_mmr);
    assert_eq!(max(0), Some(dec!(0.05)));
    assert_eq!(max(1), None, "cum jumps at the second floor");
    assert_eq!(max(4), Some(dec!(0.6)));
    let mut unsorted = u[0].clone();
    unsorted.tiers.swap(2, 3);
    assert_eq!(TierFloats::new(&unsorted).and_then(|t| t.max_mmr), None);
}

/// Which books are monotone: longs below the trigger's rate fall, shorts rise; a mixed book, a
/// long on a rate at the trigger, an inverse leg, a table with a jump and a book where nothing
/// moves are neither.
#[test]
fn slope_of_a_book() {
    let u = universe();
    let leg = |i: usize, q: Decimal| MovingLeg {
        instrument: &u[i],
        quantity: q,
        entry_price: dec!(60000),
        price_factor: Decimal::ONE,
        floats: None,
    };
    let slope = |legs: Vec<MovingLeg<'_>>, trigger: Decimal, coll: Option<Decimal>| {
        let pm = PriceMove {
            fixed_equity: dec!(5000),
            legs,
            collateral: coll
                .map(|amount| MovingCollateral {
                    instrument: &u[3],
                    amount,
                    price_factor: Decimal::ONE,
                })
                .into_iter()
                .collect(),
            trigger,
            ..PriceMove::default()
        };
        Filter::new(&pm).unwrap().expect("taken").slope
    };
    let one = Decimal::ONE;
    assert_eq!(slope(vec![leg(0, dec!(1)), leg(4, dec!(2))], one, None), -1);
    assert_eq!(slope(vec![leg(0, dec!(1))], one, Some(dec!(0.5))), -1);
    assert_eq!(
        slope(vec![leg(0, dec!(-1)), leg(4, dec!(-2))], one, None),
        1
    );
    assert_eq!(slope(vec![leg(0, dec!(-1))], one, Some(dec!(-0.5))), 1);
    assert_eq!(slope(vec![leg(0, dec!(1))], one, Some(dec!(-0.5))), 0);
    assert_eq!(slope(vec![leg(0, dec!(1)), leg(4, dec!(-3))], one, None), 0);
    assert_eq!(slope(vec![leg(4, dec!(1))], dec!(0.6), None), 0, "mmr = t");
    assert_eq!(slope(vec![leg(4, dec!(1))], dec!(0.61), None), -1);
    // Closer than `f64` can tell apart: decided on the `Decimal`s.
    let just_above = dec!(0.6000000000000000000001);
    assert_eq!(slope(vec![leg(4, dec!(1))], just_above, None), -1);
    assert_eq!(
        slope(vec![leg(4, dec!(1))], dec!(0.5999999999999999999999), None),
        0
    );
    assert_eq!(slope(vec![leg(1, dec!(1))], one, None), 0, "cum jumps");
    assert_eq!(slope(vec![leg(2, dec!(1))], one, None), 0, "inverse");
    assert_eq!(slope(vec![leg(0, dec!(0))], one, None), 0, "nothing moves");
    // Collateral whose price falls as `z` rises: its term's sign is not the balance's.
    let pm = PriceMove {
        fixed_equity: dec!(5000),
        legs: vec![leg(0, dec!(1))],
        collateral: vec![MovingCollateral {
            instrument: &u[3],
            amount: dec!(0.5),
            price_factor: dec!(-1),
        }],
        trigger: one,
        ..PriceMove::default()
    };
    assert_eq!(Filter::new(&pm).unwrap().expect("taken").slope, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// On books whose `g` may be monotone (every leg on a continuous table, one side, the
    /// moving collateral held or borrowed, triggers on both sides of the steep table's top
    /// rate) the filter, which skips the walk away from 0 there, returns exactly what the
    /// exact walk returns; and it finds them monotone exactly when they are.
    #[test]
    fn monotone_books_skip_one_walk_and_equal_the_exact_walk(
        legs in proptest::collection::vec(
            (proptest::bool::ANY, 1i64..5_000_000, 0u32..4, 1_000i64..10_000_000, 50i64..200),
            1..5,
        ),
        short in proptest::bool::ANY,
        fixed in -2_000_000i64..20_000_000,
        fixed_mm in 0i64..200_000,
        coll in -500i64..500,
        trigger_pct in 50i64..120,
        price_start in proptest::bool::ANY,
    ) {
        let u = universe();
        let start = if price_start { dec!(60000) } else { Decimal::ONE };
        let signed: Vec<_> = legs
            .iter()
            .map(|&(steep, q, qs, entry, pct)| {
                let q = Decimal::new(if short { -q } else { q }, qs + 2);
                (if steep { 4 } else { 0 }, q, entry, pct)
            })
            .collect();
        let pm = book(&u, &signed, (fixed, fixed_mm), coll, trigger_pct, start);
        if let Ok(exact) = pm.crossings_exact(start) {
            prop_assert_eq!(pm.crossings(start).ok(), Some(exact));
        }
        let collateral_agrees = coll == 0 || (coll < 0) == short;
        let steep_at_trigger = !short && legs.iter().any(|l| l.0) && trigger_pct <= 60;
        if let Some(f) = Filter::new(&pm).unwrap() {
            prop_assert_eq!(f.slope != 0, collateral_agrees && !steep_at_trigger);
        }
    }
}

proptest! {
    /// The filter's fast conversion is within a few ulps of the correctly rounded one, over
    /// the whole 96-bit mantissa, both signs and every scale (the filter's tolerance is 1e-9).
    #[test]
    fn fast_conversion_is_within_ulps(
        lo in any::<u32>(),
        mid in any::<u32>(),
        hi in any::<u32>(),
        negative in any::<bool>(),
        scale in 0u32..=28,
    ) {
        let d = Decimal::from_parts(lo, mid, hi, negative, scale);
        let exact = rust_decimal::prelude::ToPrimitive::to_f64(&d).expect("a finite f64");
        let fast = super::f(d).expect("a finite f64");
        let tol = exact.abs() * 8.0 * f64::EPSILON;
        prop_assert!((fast - exact).abs() <= tol, "{d}: {fast} vs {exact}");
    }
}
