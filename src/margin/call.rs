//! The margin call: what an account in warning (or triggered) must gain in equity to be healthy
//! again — the figure a risk desk asks its client to deposit.
//!
//! An account recovers when its margin ratio falls strictly below its first level less the
//! hysteresis (`engine::monitor::machine`). A deposit of collateral counted at 100 % (a stable
//! coin), or the same amount of realised profit, raises equity by itself and leaves maintenance
//! margin where it is, so the smallest such amount `D` with `MM / (equity + D) < level − h` is
//! `MM / (level − h) − equity`, taken up to the next whole cent. The answer is checked with the
//! same ratio and comparison the monitor uses ([`MarginRatio::compute`], [`MarginRatio::below`]):
//! depositing `D` recovers the account, and `D − 0.01` would not.

use rust_decimal::{Decimal, RoundingStrategy};

use crate::model::{MarginCall, MarginRatio, Thresholds};

/// The level an account must fall strictly below to recover: its first level (the first warning
/// level, else the trigger) less the hysteresis.
pub fn recovery_ratio(t: &Thresholds) -> Option<Decimal> {
    let first = t.warning_levels.first().copied().unwrap_or(t.trigger);
    first.checked_sub(t.hysteresis)
}

/// The margin call of an account with maintenance margin `mm` and `equity` under `t`: `None`
/// when its ratio is already below the recovery level (or it has no maintenance margin), when
/// no equity can bring it there (a recovery level ≤ 0), or when the amount does not fit a
/// `Decimal`.
pub fn margin_call(mm: Decimal, equity: Decimal, t: &Thresholds) -> Option<MarginCall> {
    margin_call_below(mm, equity, recovery_ratio(t)?)
}

/// [`margin_call`] for the recovery level `below` ([`recovery_ratio`]).
pub fn margin_call_below(mm: Decimal, equity: Decimal, below: Decimal) -> Option<MarginCall> {
    if mm <= Decimal::ZERO || below <= Decimal::ZERO {
        return None;
    }
    let near = near_of(mm);
    let recovers = |deposit: Decimal| {
        equity
            .checked_add(deposit)
            .is_some_and(|e| below_at(mm, near, e, below))
    };
    let cent = Decimal::new(1, 2);
    let needed = mm.checked_div(below)?.checked_sub(equity)?;
    let mut deposit = needed
        .max(Decimal::ZERO)
        .round_dp_with_strategy(2, RoundingStrategy::ToNegativeInfinity);
    if deposit.is_zero() && recovers(Decimal::ZERO) {
        return None;
    }
    // `needed` is exact or within 10⁻²⁰ of it: at most a step or two either way.
    for _ in 0..3 {
        if recovers(deposit) {
            break;
        }
        deposit = deposit.checked_add(cent)?;
    }
    if !recovers(deposit) {
        return None;
    }
    while deposit > cent && recovers(deposit - cent) {
        deposit -= cent;
    }
    deposit.rescale(2);
    Some(MarginCall {
        below_ratio: below,
        deposit,
    })
}

/// How close `below · equity` may come to `mm` before the comparison is left to the monitor's
/// own division: 10⁻¹⁶ of `mm` (rounded; at least 10⁻²⁸), eight orders of magnitude wider than
/// a `Decimal` quotient's rounding (~10⁻²⁷ of it, 28 significant digits).
fn near_of(mm: Decimal) -> Decimal {
    (mm * Decimal::new(1, 16)).max(Decimal::new(1, 28))
}

/// `MarginRatio::compute(mm, equity).below(below)` (`mm > 0`, `below > 0`), decided on the
/// exact product `below · equity` against `mm` — a multiplication, where the monitor's ratio is
/// a division — unless the two are within `near` ([`near_of`]) of each other: then by the
/// monitor's division itself. A warning's margin call makes two to four such checks, on the
/// crash path's events.
fn below_at(mm: Decimal, near: Decimal, equity: Decimal, below: Decimal) -> bool {
    if equity <= Decimal::ZERO {
        return false; // the ratio is ∞
    }
    match below.checked_mul(equity) {
        // Beyond `Decimal`: far above `mm`, so the ratio is far below.
        None => true,
        Some(product) => match product.checked_sub(mm) {
            Some(gap) if gap.abs() > near => gap > Decimal::ZERO,
            _ => MarginRatio::compute(mm, equity).below(below),
        },
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    use super::*;

    fn levels(warnings: &[Decimal], trigger: Decimal, hysteresis: Decimal) -> Thresholds {
        Thresholds {
            warning_levels: warnings.to_vec(),
            trigger,
            hysteresis,
            ..Thresholds::default()
        }
    }

    #[test]
    fn worked_example() {
        // MM 199.36 on equity 240: ratio 0.8307, past the 0.8 warning. Recovery below 0.75:
        // 199.36 / 0.75 = 265.8133…, so 25.8133… more equity; 25.82 recovers, 25.81 does not
        // (199.36 / 265.81 = 0.750009…).
        let t = levels(&[dec!(0.8)], dec!(1), dec!(0.05));
        let call = margin_call(dec!(199.36), dec!(240), &t).unwrap();
        assert_eq!(call.below_ratio, dec!(0.75));
        assert_eq!(call.deposit.to_string(), "25.82");
    }

    #[test]
    fn exact_boundary_needs_one_more_cent() {
        // 150 / 0.75 = 200 exactly: at 200 the ratio is 0.75, not below it.
        let t = levels(&[dec!(0.8)], dec!(1), dec!(0.05));
        let call = margin_call(dec!(150), dec!(100), &t).unwrap();
        assert_eq!(call.deposit, dec!(100.01));
    }

    #[test]
    fn none_when_healthy_unreachable_or_without_margin() {
        let t = levels(&[dec!(0.8)], dec!(1), dec!(0.05));
        assert_eq!(margin_call(dec!(70), dec!(100), &t), None, "0.7 < 0.75");
        assert_eq!(margin_call(Decimal::ZERO, dec!(-5), &t), None, "no MM");
        let unreachable = levels(&[dec!(0.05)], dec!(1), dec!(0.05));
        assert_eq!(margin_call(dec!(10), dec!(1), &unreachable), None);
        // No warning level: the trigger is the first level.
        let trigger_only = levels(&[], dec!(1), dec!(0.1));
        assert_eq!(recovery_ratio(&trigger_only), Some(dec!(0.9)));
    }

    #[test]
    fn negative_equity_needs_more_than_its_deficit() {
        let t = levels(&[dec!(0.8)], dec!(1), dec!(0.05));
        let call = margin_call(dec!(30), dec!(-100), &t).unwrap();
        // 30 / 0.75 = 40, plus the 100 missing, plus a cent.
        assert_eq!(call.deposit, dec!(140.01));
    }

    proptest! {
        /// The product test decides as the monitor's division does, at the boundary too:
        /// equity drawn at `mm / below` to 2–20 places, nudged by a few units of the last.
        #[test]
        fn product_check_is_the_monitors_division(
            mm in 1i64..10_000_000_000_000_000,
            mm_scale in 0u32..13,
            below in 1i64..100_000,
            places in 2u32..21,
            nudge in -3i64..4,
            far in proptest::bool::ANY,
        ) {
            let (mm, below) = (Decimal::new(mm, mm_scale), Decimal::new(below, 4));
            let at = (mm / below).round_dp(places) + Decimal::new(nudge, places);
            let equity = if far { at * dec!(2) - dec!(1) } else { at };
            prop_assert_eq!(
                below_at(mm, near_of(mm), equity, below),
                MarginRatio::compute(mm, equity).below(below),
                "mm {} equity {} below {}", mm, equity, below
            );
        }

        /// The deposit recovers the account by the monitor's own comparison, one cent less
        /// does not, and it is whole cents.
        #[test]
        fn deposit_is_sufficient_and_minimal(
            mm in 1i64..10_000_000_000_000,
            mm_scale in 0u32..13,
            equity in -10_000_000_000_000i64..10_000_000_000_000,
            eq_scale in 0u32..13,
            first in 2i64..1000,
            h in 0i64..1000,
        ) {
            let t = levels(&[Decimal::new(first, 3)], dec!(1.5), Decimal::new(h, 4));
            let (mm, equity) = (Decimal::new(mm, mm_scale), Decimal::new(equity, eq_scale));
            let below = recovery_ratio(&t).unwrap();
            let healthy = |e: Decimal| MarginRatio::compute(mm, e).below(below);
            match margin_call(mm, equity, &t) {
                None => prop_assert!(below <= Decimal::ZERO || healthy(equity)),
                Some(call) => {
                    prop_assert!(!healthy(equity));
                    prop_assert_eq!(call.below_ratio, below);
                    prop_assert_eq!(call.deposit.scale(), 2);
                    prop_assert!(call.deposit > Decimal::ZERO);
                    prop_assert!(healthy(equity + call.deposit));
                    prop_assert!(!healthy(equity + call.deposit - dec!(0.01)));
                }
            }
        }
    }
}
