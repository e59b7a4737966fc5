//! The one `i128` fixed-point fast path of the margin model, and the proof obligation that goes
//! with it: every function here returns exactly what the `Decimal` definition returns, bit for
//! bit, or `None` so the caller takes the `Decimal` path. The property tests in
//! `margin/tests.rs` (`pnl_mm_fast_path_matches_decimal`) and `tests/it/margin` check it.

use rust_decimal::Decimal;

use super::ACCOUNTING_SCALE;
use crate::model::MarginTier;

/// `10^k` for `k ≤ 38`.
const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut k = 1;
    while k < 39 {
        t[k] = t[k - 1] * 10;
        k += 1;
    }
    t
};

/// Largest `Decimal` mantissa magnitude (96 bits).
const MANTISSA_MAX: u128 = (1u128 << 96) - 1;

/// `Decimal`'s maximum scale.
const SCALE_MAX: u32 = 28;

fn pow10(k: u32) -> Option<i128> {
    POW10.get(k as usize).copied()
}

/// `m` when it is non-zero and fits a `Decimal` mantissa.
fn fits(m: i128) -> Option<i128> {
    (m != 0 && m.unsigned_abs() <= MANTISSA_MAX).then_some(m)
}

/// Exact `a + b` of two fixed-point values (mantissa, scale) at the larger scale, as `Decimal`
/// computes it when exact; `None` outside that regime.
fn fixed_add(a: (i128, u32), b: (i128, u32)) -> Option<(i128, u32)> {
    let s = a.1.max(b.1);
    // Both aligned operands must fit (then `Decimal` aligns them exactly); zero is fine here.
    let am = mul_i(a.0, pow10(s - a.1)?)?;
    let bm = mul_i(b.0, pow10(s - b.1)?)?;
    if am.unsigned_abs() > MANTISSA_MAX || bm.unsigned_abs() > MANTISSA_MAX {
        return None;
    }
    Some((fits(am.checked_add(bm)?)?, s))
}

/// `a × b` of magnitudes; one machine multiplication when both fit 64 bits (the usual case),
/// where `i128::checked_mul` would call a slow runtime helper.
#[inline]
fn mul_mag(a: u128, b: u128) -> Option<u128> {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(x), Ok(y)) => Some(u128::from(x) * u128::from(y)),
        _ => a.checked_mul(b),
    }
}

/// `a × b` of signed values (`None` on overflow).
#[inline]
fn mul_i(a: i128, b: i128) -> Option<i128> {
    let m = i128::try_from(mul_mag(a.unsigned_abs(), b.unsigned_abs())?).ok()?;
    Some(if (a < 0) != (b < 0) { -m } else { m })
}

/// Exact `a × b` as `Decimal` computes it when exact (mantissa product, scale sum).
fn fixed_mul(a: (i128, u32), b: (i128, u32)) -> Option<(i128, u32)> {
    let s = a.1 + b.1;
    if s > SCALE_MAX {
        return None;
    }
    Some((fits(mul_i(a.0, b.0)?)?, s))
}

/// [`normalise`] of a non-zero exact fixed-point value: half away from zero to
/// [`ACCOUNTING_SCALE`] places, or widened to it.
fn fixed_normalise(v: (i128, u32)) -> Option<Decimal> {
    let (m, s) = v;
    let r = if s <= ACCOUNTING_SCALE {
        mul_i(m, pow10(ACCOUNTING_SCALE - s)?)?
    } else {
        let d = pow10(s - ACCOUNTING_SCALE)?;
        let (q, rem) = (m / d, m % d);
        if rem.unsigned_abs() * 2 >= d.unsigned_abs() {
            q + m.signum()
        } else {
            q
        }
    };
    fits(r)?;
    Decimal::try_from_i128_with_scale(r, ACCOUNTING_SCALE).ok()
}

/// The linear, contract-size-1 figures in fixed point; `None` to fall back to `Decimal`.
pub(super) fn linear_unit_fast(
    tiers: &[MarginTier],
    quantity: Decimal,
    entry: Decimal,
    price: Decimal,
) -> Option<(Decimal, Decimal)> {
    let q = (fits(quantity.mantissa())?, quantity.scale());
    let p = (fits(price.mantissa())?, price.scale());
    let e = (entry.mantissa(), entry.scale());
    let notional = fixed_mul((q.0.abs(), q.1), p)?;
    // The tier: the last whose (whole) floor is ≤ the notional, as `select_tier`.
    let scale_n = pow10(notional.1)?;
    let idx = tiers.partition_point(|t| {
        let f = t.notional_floor;
        if f.scale() == 0 {
            // `f·10^s ≤ n`; an overflowing product is beyond any notional, on its sign's side.
            let fm = f.mantissa();
            mul_i(fm, scale_n).map_or(fm < 0, |scaled| scaled <= notional.0)
        } else {
            Decimal::try_from_i128_with_scale(notional.0, notional.1).is_ok_and(|n| f <= n)
        }
    });
    let t = tiers.get(idx.saturating_sub(1))?;
    let gross = fixed_mul(notional, (t.mmr.mantissa(), t.mmr.scale()))?;
    let mm = fixed_add(gross, (-t.cum.mantissa(), t.cum.scale()))?;
    let diff = fixed_add(p, (-e.0, e.1))?;
    let upnl = fixed_mul(q, diff)?;
    Some((fixed_normalise(upnl)?, fixed_normalise(mm)?))
}

// Cached account totals: `total − old + new`, exactly.

/// `a + b` only when exact (rust_decimal silently drops scale when the mantissa overflows).
pub fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    a.checked_add(b)
        .filter(|r| r.scale() >= a.scale().max(b.scale()))
}

/// `a − b` only when exact.
pub fn exact_sub(a: Decimal, b: Decimal) -> Option<Decimal> {
    a.checked_sub(b)
        .filter(|r| r.scale() >= a.scale().max(b.scale()))
}

/// `total − old + new` on the mantissas when all three are at [`ACCOUNTING_SCALE`] (always, for
/// cached values): exactly what [`exact_sub`] then [`exact_add`] give, without `Decimal`'s
/// general alignment. `None` (use the `Decimal` path) when a step leaves the 96-bit mantissa
/// or is zero (whose `Decimal` sign could differ).
#[inline]
pub fn fast_delta(total: Decimal, old: Decimal, new: Decimal) -> Option<Decimal> {
    const MAX: u128 = (1u128 << 96) - 1;
    if total.scale() != ACCOUNTING_SCALE
        || old.scale() != ACCOUNTING_SCALE
        || new.scale() != ACCOUNTING_SCALE
    {
        return None;
    }
    // Mantissas are < 2^96, so neither step overflows an i128.
    let mid = total.mantissa() - old.mantissa();
    if mid == 0 || mid.unsigned_abs() > MAX {
        return None;
    }
    let r = mid + new.mantissa();
    if r == 0 || r.unsigned_abs() > MAX {
        return None;
    }
    Decimal::try_from_i128_with_scale(r, ACCOUNTING_SCALE).ok()
}
