use super::*;
use proptest::prelude::*;
use rust_decimal_macros::dec;

fn decimal(mantissa: i64, scale: u32) -> Decimal {
    Decimal::new(mantissa, scale)
}

/// A positive price with 0–20 places, from 10⁻²⁰ to ~10¹².
fn price() -> impl Strategy<Value = Decimal> {
    (1i64..=999_999_999_999_999, 0u32..=20).prop_map(|(m, s)| decimal(m, s))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    /// Fixed-point bands wake exactly the accounts the `Decimal` band test wakes: for the
    /// bands `band()` makes, a price is strictly inside the fixed band iff it is strictly
    /// inside the exact one, and the ends convert back unchanged.
    #[test]
    fn fixed_band_tests_equal_decimal_tests(
        p in price(),
        delta_ppm in 1u32..=500_000,
        q in price(),
        near in -3i64..=3,
    ) {
        let Some((lo, hi)) = crate::engine::index::band(p, Decimal::new(i64::from(delta_ppm), 6))
        else {
            return Ok(());
        };
        let Some(fixed) = FixedBand::new(lo, hi) else {
            // Only ends beyond 2⁹⁶ units are refused (prices above ~7.9·10¹²).
            prop_assert!(hi > dec!(7_000_000_000_000));
            return Ok(());
        };
        prop_assert_eq!(fixed.to_decimal(), (lo, hi));
        // A random price, and prices a few units of 10⁻²⁰ around each end.
        let mut probes = vec![q, lo, hi];
        for end in [lo, hi] {
            probes.push(end + Decimal::new(near, 20));
            probes.push(end + Decimal::new(near, 16));
        }
        for x in probes {
            prop_assert_eq!(
                fixed.holds(PriceKey::new(x)),
                lo < x && x < hi,
                "price {} band ({}, {})", x, lo, hi
            );
        }
    }

    /// Soundness for ends finer than the fixed scale: the fixed band is never wider than the
    /// exact one, so a price outside the exact band is always outside the fixed band.
    #[test]
    fn fixed_band_is_never_wider(
        lo_m in 1i64..=999_999_999_999_999_999,
        width in 1i64..=999_999_999_999,
        scale in 0u32..=24,
        q_m in 1i64..=999_999_999_999_999_999,
        q_scale in 0u32..=24,
    ) {
        let lo = decimal(lo_m, scale);
        let hi = decimal(lo_m.saturating_add(width), scale);
        let q = decimal(q_m, q_scale);
        if let Some(fixed) = FixedBand::new(lo, hi) {
            let (flo, fhi) = fixed.to_decimal();
            prop_assert!(flo >= lo && fhi <= hi);
            if fixed.holds(PriceKey::new(q)) {
                prop_assert!(lo < q && q < hi, "{} woke nothing from ({}, {})", q, lo, hi);
            }
        }
    }

    /// A bulk rebuild leaves exactly the set that edits one by one leave.
    #[test]
    fn bulk_apply_equals_edits(
        start in proptest::collection::btree_set(0u32..2_000, 0..1_500),
        rm_picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..800),
        add in proptest::collection::btree_set(2_000u32..4_000, 0..800),
    ) {
        let all: Vec<u32> = start.iter().copied().collect();
        let rm: BTreeSet<u32> = rm_picks
            .iter()
            .filter(|_| !all.is_empty())
            .map(|i| *i.get(&all))
            .collect();
        let mut expected = start.clone();
        for r in &rm {
            expected.remove(r);
        }
        expected.extend(add.iter().copied());
        let mut set = start.clone();
        let mut ops = Ops {
            rm: rm.iter().rev().copied().collect(),
            add: add.iter().rev().copied().collect(),
        };
        ops.apply(&mut set);
        prop_assert_eq!(&set, &expected);
        prop_assert!(ops.is_empty());
    }
}

/// Ends built in `f64` are taken only when they are whole counts inside `(0, 2⁹⁶)` and make a
/// non-empty band; everything else is refused (the account stays eager or is valued).
#[test]
fn f64_ends_outside_the_range_are_refused() {
    let limit = (1u128 << 96) as f64;
    assert_eq!(
        FixedBand::from_units(1.0, 3.0),
        Some(FixedBand { lo: 1, hi: 3 })
    );
    assert_eq!(FixedBand::from_units(0.0, 3.0), None);
    assert_eq!(FixedBand::from_units(3.0, 3.0), None);
    assert_eq!(FixedBand::from_units(4.0, 3.0), None);
    assert_eq!(FixedBand::from_units(1.5, 3.0), None);
    assert_eq!(FixedBand::from_units(1.0, limit), None);
    assert_eq!(FixedBand::from_units(1.0, f64::INFINITY), None);
    assert_eq!(FixedBand::from_units(f64::NAN, 3.0), None);
}

/// Prices out of range saturate to what the `Decimal` tests give: a huge price leaves every
/// band upwards, a zero or negative one every band downwards.
#[test]
fn price_keys_saturate() {
    let band = FixedBand::new(dec!(99), dec!(101)).unwrap();
    for p in [Decimal::MAX, dec!(1e20), dec!(0), dec!(-5), Decimal::MIN] {
        assert!(!band.holds(PriceKey::new(p)), "{p}");
    }
    assert!(band.holds(PriceKey::new(dec!(100))));
    assert!(band.holds(PriceKey::new(dec!(99.00000000000000000001))));
    assert!(!band.holds(PriceKey::new(dec!(99))));
    assert!(band.holds(PriceKey::new(dec!(100.99999999999999999999))));
    assert!(!band.holds(PriceKey::new(dec!(101))));
    // Ends out of range, negative or an empty rounded band: no fixed band.
    assert_eq!(FixedBand::new(dec!(1), dec!(1e13)), None);
    assert_eq!(FixedBand::new(dec!(-1), dec!(1)), None);
    assert_eq!(
        FixedBand::new(dec!(1.00000000000000001), dec!(1.00000000000000009)),
        None
    );
}

/// The store wakes the eager holders and the banded holders a price leaves, after a flush,
/// whether the flush edits the sets or rebuilds them.
#[test]
fn store_wakes_what_leaves() {
    // 20,000 queues 40,000 changes: the flush splits its sets over the cores.
    for n in [10u32, 5_000, 20_000] {
        let mut store = Store::new(2);
        for key in 0..n {
            let lo = Decimal::from(1_000 - key % 100);
            let band = FixedBand::new(lo, lo + dec!(200)).unwrap();
            store.band(1, key, band, true);
        }
        store.eager(1, n, true);
        store.flush();
        assert_eq!(store.sizes(1), Some((1, n as usize, n as usize)));
        let (mut eager, mut leaving) = (Vec::new(), Vec::new());
        // Low ends 901..=1000; 950 is at or below the low end of keys with key % 100 ≤ 50.
        store.wake(1, PriceKey::new(dec!(950)), &mut eager, &mut leaving);
        assert_eq!(eager, vec![n]);
        leaving.sort_unstable();
        let expected: Vec<u32> = (0..n).filter(|k| k % 100 <= 50).collect();
        assert_eq!(leaving, expected);
        // Remove them all: nothing left to wake.
        for key in 0..n {
            let lo = Decimal::from(1_000 - key % 100);
            let band = FixedBand::new(lo, lo + dec!(200)).unwrap();
            store.band(1, key, band, false);
        }
        store.eager(1, n, false);
        store.flush();
        assert_eq!(store.sizes(1), Some((0, 0, 0)));
    }
}
