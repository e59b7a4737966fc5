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
    let recovers = |deposit: Decimal| {
        equity
            .checked_add(deposit)
            .is_some_and(|e| MarginRatio::compute(mm, e).below(below))
    };
    if recovers(Decimal::ZERO) {
        return None;
    }
    let cent = Decimal::new(1, 2);
    let needed = mm.checked_div(below)?.checked_sub(equity)?;
    let mut deposit = needed
        .max(Decimal::ZERO)
        .round_dp_with_strategy(2, RoundingStrategy::ToNegativeInfinity);
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
