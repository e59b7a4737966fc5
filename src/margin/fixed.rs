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
#[inline]
fn fixed_normalise(v: (i128, u32)) -> Option<Decimal> {
    normalise_fast(v.0, v.1)
}

/// The linear, contract-size-1 figures in fixed point; `None` to fall back to `Decimal`.
#[inline]
pub(crate) fn linear_unit_fast(
    tiers: &[MarginTier],
    quantity: Decimal,
    entry: Decimal,
    price: Decimal,
) -> Option<(Decimal, Decimal)> {
    let (_, upnl, mm, _) = linear_unit_parts(tiers, quantity, entry, price)?;
    let upnl = match upnl {
        Upnl::Fixed(v) => fixed_normalise(v)?,
        Upnl::AtEntry(d) => super::normalise(d),
    };
    Some((upnl, fixed_normalise(mm)?))
}

/// The linear, contract-size-1 figures before normalising: `(notional, uPnL, MM, tier)`
/// exactly as `position_figures_exact` computes them, or `None`.
pub(crate) fn linear_unit_exact(
    tiers: &[MarginTier],
    quantity: Decimal,
    entry: Decimal,
    price: Decimal,
) -> Option<(Decimal, Decimal, Decimal, usize)> {
    let (notional, upnl, mm, tier) = linear_unit_parts(tiers, quantity, entry, price)?;
    let upnl = match upnl {
        Upnl::Fixed(v) => fx_decimal(v),
        Upnl::AtEntry(d) => d,
    };
    Some((fx_decimal(notional), upnl, fx_decimal(mm), tier))
}

/// A position's uPnL from [`linear_unit_parts`].
enum Upnl {
    /// On mantissas.
    Fixed(Fx),
    /// At its entry price: the zero `Decimal`'s own steps give it (its sign and scale), without
    /// giving up the rest of the position's figures.
    AtEntry(Decimal),
}

/// The steps both of the above share: `N = |q|·P`, the tier of `N`, `MM = N·mmr − cum`,
/// `uPnL = q·(P − EP)`, each as `Decimal` computes it when exact and non-zero.
#[inline]
fn linear_unit_parts(
    tiers: &[MarginTier],
    quantity: Decimal,
    entry: Decimal,
    price: Decimal,
) -> Option<(Fx, Upnl, Fx, usize)> {
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
    let tier = idx.saturating_sub(1);
    let t = tiers.get(tier)?;
    let gross = fixed_mul(notional, (t.mmr.mantissa(), t.mmr.scale()))?;
    let mm = fx_add(gross, (-t.cum.mantissa(), t.cum.scale()))?;
    let upnl = match fx_add(p, (-e.0, e.1)) {
        Some(diff) => Upnl::Fixed(fixed_mul(q, diff)?),
        // The definition's two steps, in `Decimal`.
        None if price == entry => Upnl::AtEntry(quantity.checked_mul(price.checked_sub(entry)?)?),
        None => return None,
    };
    Some((notional, upnl, mm, tier))
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
    if old.scale() != ACCOUNTING_SCALE || new.scale() != ACCOUNTING_SCALE {
        return None;
    }
    fast_delta_m(total, old.mantissa(), new.mantissa())
}

/// [`fast_delta`] with `old` and `new` given as their mantissas at [`ACCOUNTING_SCALE`] (each
/// below 2^96 in magnitude).
#[inline]
pub fn fast_delta_m(total: Decimal, old: i128, new: i128) -> Option<Decimal> {
    if total.scale() != ACCOUNTING_SCALE {
        return None;
    }
    // Mantissas are < 2^96, so neither step overflows an i128.
    let mid = total.mantissa() - old;
    if mid == 0 || mid.unsigned_abs() > MANTISSA_MAX {
        return None;
    }
    let r = mid + new;
    if r == 0 || r.unsigned_abs() > MANTISSA_MAX {
        return None;
    }
    Some(accounting(r))
}

// One price of one instrument, decoded once for all its positions.

/// A tier of a [`LinearTick`], decoded for positions whose notional has one scale.
#[derive(Clone, Copy, Debug)]
struct TierAt {
    /// The tier applies from this notional mantissa on (`floor ≤ notional` exactly, as
    /// [`linear_unit_fast`] compares: a floor with more places is rounded up, one out of range
    /// becomes `i128::MAX` or `i128::MIN`).
    from: i128,
    /// The rate's mantissa (`gross = notional × mmr` at the notional's scale plus the rate's).
    mmr: i128,
    /// `gross` aligned to `mm_scale` is `gross × gross_mul`.
    gross_mul: i128,
    /// `−cum` at `mm_scale`.
    neg_cum: i128,
    mm_scale: u32,
    /// False when `linear_unit_fast` could not use the tier at this scale (its aligned `cum` or
    /// its scale out of range, a zero rate): positions in it take the `Decimal` path.
    usable: bool,
}

/// Positions of one notional scale of a [`LinearTick`].
type TiersAt = Box<[TierAt]>;

/// One price of one linear, contract-size-1, plain-bracket instrument, with the price and the
/// tiers decoded once for every position it values (a tick revalues all of an instrument's
/// holders at one price). [`LinearTick::value`] returns exactly what [`linear_unit_fast`]
/// returns for the same position and price, or `None` where that is `None` or where a position
/// at its entry price has a zero uPnL of more places than the accounting scale — and so exactly
/// what the `Decimal` definition gives (the property tests `linear_tick_matches_decimal` and
/// `pnl_mm_fast_path_matches_decimal` check both).
#[derive(Debug)]
pub struct LinearTick<'a> {
    tiers: &'a [MarginTier],
    /// The price (mantissa, scale), non-zero.
    price: (i128, u32),
    /// By an entry's scale: the price aligned to `max(price scale, entry scale)` (`None`: it
    /// does not fit, as `fixed_add` refuses).
    price_at: [Option<i128>; SCALE_MAX as usize + 1],
    /// By a notional's scale (`0..=28`): the tiers decoded for it, on first use.
    tiers_at: Vec<Option<TiersAt>>,
}

impl<'a> LinearTick<'a> {
    /// The decoded price, or `None` when `price` cannot take the fast path at all.
    pub fn new(tiers: &'a [MarginTier], price: Decimal) -> Option<Self> {
        let p = (fits(price.mantissa())?, price.scale());
        let mut price_at = [None; SCALE_MAX as usize + 1];
        for (es, slot) in (0u32..).zip(price_at.iter_mut()) {
            let s = p.1.max(es);
            *slot = mul_i(p.0, pow10(s - p.1)?).filter(|m| m.unsigned_abs() <= MANTISSA_MAX);
        }
        Some(LinearTick {
            tiers,
            price: p,
            price_at,
            tiers_at: vec![None; SCALE_MAX as usize + 1],
        })
    }

    /// The tiers for notionals at scale `ns` (`ns ≤ 28`).
    fn tiers_at(&mut self, ns: u32) -> Option<&[TierAt]> {
        let slot = self.tiers_at.get_mut(ns as usize)?;
        let tiers = self.tiers;
        Some(slot.get_or_insert_with(|| tiers.iter().map(|t| decode_tier(t, ns)).collect()))
    }

    /// `(uPnL, MM)` of `quantity` entered at `entry`, normalised: exactly
    /// `linear_unit_fast(tiers, quantity, entry, price)`.
    #[inline]
    pub fn value(&mut self, quantity: Decimal, entry: Decimal) -> Option<(Decimal, Decimal)> {
        let (upnl, mm) = self.value_fx(fx(quantity), fx(entry))?;
        Some((accounting(upnl), accounting(mm)))
    }

    /// [`LinearTick::value`] of a quantity and an entry taken apart, as the mantissas of the
    /// results at [`ACCOUNTING_SCALE`] (a zero uPnL is `+0` at that scale, as the definition
    /// gives it at the entry price; the MM is never zero).
    #[inline]
    pub fn value_fx(&mut self, quantity: Fx, entry: Fx) -> Option<(i128, i128)> {
        let q = (fits(quantity.0)?, quantity.1);
        let (pm, ps) = self.price;
        // notional = |q| × p
        let ns = q.1 + ps;
        if ns > SCALE_MAX {
            return None;
        }
        let nm = fits(mul_i(q.0.abs(), pm)?)?;
        let upnl = {
            // diff = p − e at max(ps, es), then upnl = q × diff
            let (em, es) = entry;
            let s = ps.max(es);
            let a = (*self.price_at.get(es as usize)?)?;
            let b = mul_i(-em, pow10(s - es)?)?;
            if b.unsigned_abs() > MANTISSA_MAX {
                return None;
            }
            let us = q.1 + s;
            if us > SCALE_MAX {
                return None;
            }
            match a.checked_add(b)? {
                // At the entry price the definition's zero (`q × (P − EP)`, `Decimal`) has
                // `us` places, and normalising a zero with fewer than the accounting scale's
                // widens it to `+0` at that scale, whatever its sign. With more, its sign is
                // `Decimal`'s: declined.
                0 if us < ACCOUNTING_SCALE => 0,
                diff => normalise_m(fits(mul_i(q.0, fits(diff)?)?)?, us)?,
            }
        };
        let tiers = self.tiers_at(ns)?;
        let idx = tiers.partition_point(|t| t.from <= nm);
        let t = tiers.get(idx.saturating_sub(1))?;
        if !t.usable {
            return None;
        }
        let gross = fits(mul_i(nm, t.mmr)?)?;
        let am = mul_i(gross, t.gross_mul)?;
        if am.unsigned_abs() > MANTISSA_MAX {
            return None;
        }
        let mm = fits(am.checked_add(t.neg_cum)?)?;
        Some((upnl, normalise_m(mm, t.mm_scale)?))
    }
}

/// `t` for notionals at scale `ns`, as `linear_unit_fast` uses it.
fn decode_tier(t: &MarginTier, ns: u32) -> TierAt {
    let (fm, fs) = (t.notional_floor.mantissa(), t.notional_floor.scale());
    // floor ≤ n·10^-ns  ⇔  fm·10^(ns−fs) ≤ n  (fs ≤ ns)  ⇔  ⌈fm / 10^(fs−ns)⌉ ≤ n  (fs > ns)
    let from = if fs <= ns {
        pow10(ns - fs)
            .and_then(|p| mul_i(fm, p))
            .unwrap_or(if fm < 0 { i128::MIN } else { i128::MAX })
    } else {
        match pow10(fs - ns) {
            Some(d) => fm / d + i128::from(fm % d > 0),
            None => i128::from(fm > 0),
        }
    };
    let (mmr, mmr_s) = (t.mmr.mantissa(), t.mmr.scale());
    let (cum, cum_s) = (t.cum.mantissa(), t.cum.scale());
    let gross_scale = ns + mmr_s;
    let mm_scale = gross_scale.max(cum_s);
    let gross_mul = pow10(mm_scale - gross_scale);
    let neg_cum = pow10(mm_scale - cum_s)
        .and_then(|p| mul_i(-cum, p))
        .filter(|m| m.unsigned_abs() <= MANTISSA_MAX);
    let usable = gross_scale <= SCALE_MAX && mmr != 0 && gross_mul.is_some() && neg_cum.is_some();
    TierAt {
        from,
        mmr,
        gross_mul: gross_mul.unwrap_or(1),
        neg_cum: neg_cum.unwrap_or(0),
        mm_scale,
        usable,
    }
}

/// [`super::normalise`] of the `Decimal` with this mantissa and scale, on its magnitude,
/// building the result from its parts: `None` when it is zero or does not fit.
#[inline]
pub(crate) fn normalise_fast(m: i128, s: u32) -> Option<Decimal> {
    normalise_m(m, s).map(accounting)
}

/// [`normalise_fast`] as the result's mantissa at [`ACCOUNTING_SCALE`] (non-zero, below 2^96 in
/// magnitude, with the sign of `m`).
#[inline(always)]
fn normalise_m(m: i128, s: u32) -> Option<i128> {
    let mag = m.unsigned_abs();
    let r = if s <= ACCOUNTING_SCALE {
        let k = POW10_U64[(ACCOUNTING_SCALE - s) as usize];
        mul_mag(mag, u128::from(k))?
    } else {
        let d = pow10(s - ACCOUNTING_SCALE)?.unsigned_abs();
        // A 64-bit division when both fit (the usual case): a 128-bit one is a runtime call.
        let (q, rem) = match (u64::try_from(mag), u64::try_from(d)) {
            (Ok(m), Ok(d)) => (u128::from(m / d), u128::from(m % d)),
            _ => (mag / d, mag % d),
        };
        if rem * 2 >= d { q + 1 } else { q }
    };
    // `r ≤ MANTISSA_MAX < 2^127`: the cast keeps it.
    (r != 0 && r <= MANTISSA_MAX).then(|| if m < 0 { -(r as i128) } else { r as i128 })
}

/// The `Decimal` at [`ACCOUNTING_SCALE`] of a mantissa below 2^96 in magnitude.
#[inline]
fn accounting(m: i128) -> Decimal {
    from_magnitude(m.unsigned_abs(), m < 0, ACCOUNTING_SCALE)
}

/// `10^k` for `k ≤ ACCOUNTING_SCALE`.
const POW10_U64: [u64; ACCOUNTING_SCALE as usize + 1] = {
    let mut t = [1u64; ACCOUNTING_SCALE as usize + 1];
    let mut k = 1;
    while k < t.len() {
        t[k] = t[k - 1] * 10;
        k += 1;
    }
    t
};

/// The `Decimal` of a magnitude `≤ MANTISSA_MAX` (what `try_from_i128_with_scale` builds,
/// without its checks).
#[inline]
fn from_magnitude(mag: u128, negative: bool, scale: u32) -> Decimal {
    Decimal::from_parts(
        mag as u32,
        (mag >> 32) as u32,
        (mag >> 64) as u32,
        negative,
        scale,
    )
}

// Exact arithmetic on `Decimal`s taken apart, for the distance solver's linear pieces.

/// A `Decimal` as its signed mantissa and scale.
pub(crate) type Fx = (i128, u32);

/// `d` taken apart.
#[inline]
pub(crate) fn fx(d: Decimal) -> Fx {
    (d.mantissa(), d.scale())
}

/// `a + b` as `Decimal` computes it when exact and non-zero; `None` otherwise. A zero operand
/// gives the other operand as it is — its scale, not the wider one — as `Decimal` does (a
/// `0.000` tier amount added to `1.5` leaves `1.5`).
#[inline]
pub(crate) fn fx_add(a: Fx, b: Fx) -> Option<Fx> {
    if a.0 == 0 {
        return fits(b.0).map(|m| (m, b.1));
    }
    if b.0 == 0 {
        return Some(a);
    }
    fixed_add(a, b)
}

/// `a − b` as `Decimal` computes it when exact and non-zero; `None` otherwise.
#[inline]
pub(crate) fn fx_sub(a: Fx, b: Fx) -> Option<Fx> {
    fx_add(a, (-b.0, b.1))
}

/// `a × b` as `Decimal` computes it when exact and non-zero; `None` otherwise.
#[inline]
pub(crate) fn fx_mul(a: Fx, b: Fx) -> Option<Fx> {
    fixed_mul(a, b)
}

/// The `Decimal` of a result of [`fx_add`], [`fx_sub`] or [`fx_mul`] (its mantissa fits).
#[inline]
pub(crate) fn fx_decimal(v: Fx) -> Decimal {
    from_magnitude(v.0.unsigned_abs(), v.0 < 0, v.1)
}
