use super::*;
use proptest::prelude::*;
use rust_decimal_macros::dec;
use std::collections::BTreeSet;

fn decimal(mantissa: i64, scale: u32) -> Decimal {
    Decimal::new(mantissa, scale)
}

/// A positive price with 0–20 places, from 10⁻²⁰ to ~10¹².
fn price() -> impl Strategy<Value = Decimal> {
    (1i64..=999_999_999_999_999, 0u32..=20).prop_map(|(m, s)| decimal(m, s))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_000))]

    /// Fixed-point bands are the `Decimal` bands of `band()` narrowed by at most one code step
    /// (2⁻²⁵ of the end) at each end, and `holds` is exactly the `Decimal` test against the
    /// stored ends: a price strictly inside the stored band is strictly inside the exact one.
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
            // Ends beyond 2⁹⁶ units (prices above ~7.9·10¹²), or a band so narrow in units
            // that nothing is left of it once its ends are rounded inwards.
            prop_assert!(
                hi > dec!(7_000_000_000_000) || hi - lo <= hi * Decimal::new(1, 7) + Decimal::new(2, 16),
                "({}, {}) refused", lo, hi
            );
            return Ok(());
        };
        let (flo, fhi) = fixed.to_decimal();
        let step = Decimal::new(1, 7); // > 2⁻²⁵ ≈ 2.98·10⁻⁸
        prop_assert!(lo <= flo && flo - lo <= lo * step, "({}, {}) → ({}, {})", lo, hi, flo, fhi);
        prop_assert!(fhi <= hi && hi - fhi <= hi * step, "({}, {}) → ({}, {})", lo, hi, flo, fhi);
        // A random price, and prices a few units of 10⁻²⁰ and 10⁻¹⁶ around each end.
        let mut probes = vec![q, lo, hi, flo, fhi];
        for end in [lo, hi, flo, fhi] {
            probes.push(end + Decimal::new(near, 20));
            probes.push(end + Decimal::new(near, 16));
        }
        for x in probes {
            let inside = fixed.holds(PriceKey::new(x));
            prop_assert_eq!(inside, flo < x && x < fhi, "price {} band ({}, {})", x, flo, fhi);
            prop_assert!(!inside || (lo < x && x < hi));
        }
    }

    /// Codes keep order and round the way they say: `down(v) ≤ v ≤ up(v)` with both within one
    /// step of `v`, equal exactly when `v` has at most 26 significant bits, and a code's value
    /// codes back to itself.
    #[test]
    fn codes_keep_order_and_round_as_named(
        a in 1u128..(1u128 << 96),
        b in 1u128..(1u128 << 96),
        small in 1u128..(1u128 << 26),
    ) {
        for v in [a, b, small, a >> 40, (a >> 70).max(1)] {
            let (d, u) = (Code::down(v), Code::up(v));
            prop_assert!(d.value() <= v && v <= u.value(), "{}", v);
            prop_assert!(u.0 - d.0 <= 1);
            prop_assert_eq!(d == u, d.value() == v);
            prop_assert_eq!(Code::down(d.value()), d);
            prop_assert_eq!(Code::up(u.value()), u);
            // One step: below 2⁻²⁵ of the value.
            prop_assert!((u.value() - d.value()) as f64 <= v as f64 / (1u64 << 25) as f64 + 1.0);
        }
        prop_assert_eq!(Code::down(small).value(), small);
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert!(Code::down(lo) <= Code::down(hi) && Code::up(lo) <= Code::up(hi));
        // A band kept as its ends' codes (as the index keeps it) is the same band.
        if let Some(band) = coded(lo, hi) {
            prop_assert_eq!(FixedBand::from_codes(band.codes()), band);
        }
    }

    /// The store's range queries wake exactly the holders whose stored band the price is not
    /// strictly inside (`FixedBand::holds`), for bands and prices across the whole range.
    #[test]
    fn store_wakes_exactly_what_holds_refuses(
        bands in proptest::collection::vec((1.0f64..1e12, 1e-9f64..0.5), 1..200),
        p in 1e-3f64..2e12,
        at_end in proptest::option::of((any::<prop::sample::Index>(), any::<bool>(), -2i64..=2)),
    ) {
        let scale = 1e16;
        let mut store = Store::new(1);
        let mut stored = Vec::new();
        for (key, (anchor, h)) in bands.iter().enumerate() {
            let lo = (anchor * (1.0 - h) * scale).ceil();
            let hi = (anchor * (1.0 + h) * scale).floor();
            if let Some(b) = FixedBand::from_units(lo, hi) {
                store.band(0, key as u32, b, true);
                stored.push((key as u32, b));
            }
        }
        store.flush();
        // A price, or one a few units from a stored end.
        let mut price = PriceKey::new(Decimal::from_f64_retain(p).unwrap_or(Decimal::ONE));
        if let (Some((i, low, d)), false) = (at_end, stored.is_empty()) {
            let b = i.get(&stored).1;
            let end = if low { b.lo } else { b.hi };
            let v = end.saturating_add_signed(i128::from(d));
            price = PriceKey { ceil: v, floor: v };
        }
        let (mut eager, mut leaving) = (Vec::new(), Vec::new());
        store.wake(0, price, &mut eager, &mut leaving);
        // Each holder at most once: no price is at or below a band's low end and at or above
        // its high end.
        leaving.sort_unstable();
        let expected: Vec<u32> = stored.iter().filter(|(_, b)| !b.holds(price)).map(|(k, _)| *k).collect();
        prop_assert_eq!(leaving, expected);
        prop_assert!(eager.is_empty());
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
        let mut set = Blocks::default();
        set.apply(&mut Vec::new(), &mut start.iter().copied().collect());
        let mut ops = Ops {
            rm: rm.iter().rev().copied().collect(),
            add: add.iter().rev().copied().collect(),
        };
        ops.apply(&mut set, |k| *k);
        prop_assert_eq!(set.to_vec(), expected.into_iter().collect::<Vec<_>>());
        prop_assert!(ops.is_empty());
    }

    /// Band ends as the index keeps them (`code << 32 | key`, one per account): re-banding a
    /// share of the accounts (each one's old end out, a new end in) and adding new ones leaves
    /// exactly the set a `BTreeSet` leaves, whether the batch rebuilds (removed keys dropped
    /// through the bitmap) or edits.
    #[test]
    fn keyed_apply_rebands_like_a_btreeset(
        start in proptest::collection::btree_map(0u32..3_000, 0u32..1_000, 0..1_500),
        moves in proptest::collection::vec((any::<prop::sample::Index>(), 0u32..1_000), 0..900),
        new in proptest::collection::btree_map(3_000u32..6_000, 0u32..1_000, 0..600),
    ) {
        let pack = |key: u32, code: u32| u64::from(code) << 32 | u64::from(key);
        let accounts: Vec<(u32, u32)> = start.iter().map(|(k, c)| (*k, *c)).collect();
        let mut expected: BTreeSet<u64> = accounts.iter().map(|(k, c)| pack(*k, *c)).collect();
        let mut set = Blocks::default();
        set.apply(&mut Vec::new(), &mut expected.iter().copied().collect());
        let mut ops = Ops::default();
        let mut moved = BTreeSet::new();
        for (pick, code) in moves.iter().filter(|_| !accounts.is_empty()) {
            let (key, old) = *pick.get(&accounts);
            // Each account changes at most once between flushes (the store's contract).
            if !moved.insert(key) {
                continue;
            }
            expected.remove(&pack(key, old));
            expected.insert(pack(key, *code));
            ops.rm.push(pack(key, old));
            ops.add.push(pack(key, *code));
        }
        for (key, code) in &new {
            expected.insert(pack(*key, *code));
            ops.add.push(pack(*key, *code));
        }
        ops.apply(&mut set, |p| key_of(*p));
        prop_assert_eq!(set.to_vec(), expected.into_iter().collect::<Vec<_>>());
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
    // The stored ends: (99, 101) rounded inwards to codes, by less than 2⁻²⁵ of each.
    let (lo, hi) = band.to_decimal();
    assert!(lo > dec!(99) && lo < dec!(99.000003), "{lo}");
    assert!(hi < dec!(101) && hi > dec!(100.999997), "{hi}");
    assert!(band.holds(PriceKey::new(lo + dec!(0.00000000000000000001))));
    assert!(!band.holds(PriceKey::new(lo)));
    assert!(!band.holds(PriceKey::new(dec!(99.000000000000000001))));
    assert!(band.holds(PriceKey::new(hi - dec!(0.00000000000000000001))));
    assert!(!band.holds(PriceKey::new(hi)));
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
