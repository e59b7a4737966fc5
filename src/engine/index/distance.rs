//! Bands for the distance levels (`warn_within_shock`): how far every price may move before an
//! account's distance state ([`crate::engine::monitor::distance`]) could change.
//!
//! Write `g(p) = MM(p) − T·E(p)` (`T` the trigger; `g ≥ 0` ⇔ ratio ≥ `T` while `MM > 0`) and
//! `W = Σᵢ (T·aᵢ + bᵢ)·pᵢ`, `J = Σ jumps` from the slot terms of the ratio bound (module docs of
//! [`super`]). For prices `p'` strictly inside `p·(1 ± δ)` and a uniform move `s` with
//! `|s| ≤ M`, every price of `p'·(1 + s)` is within `(1 + M)·δ·pᵢ` of `p·(1 + s)`, so
//! `|g(p'·(1 + s)) − g(p·(1 + s))| < (1 + M)·δ·W + J`.
//! - **Up** (the state moves in when the distance reaches the next level `L`): the distance is
//!   `≤ L` exactly when `g` reaches 0 somewhere on `z ∈ [1 − L, 1 + L]`. With
//!   `G = max g` there ([`crate::margin::PriceMove::peak`], exact) and `G < 0`, the state holds
//!   while `δ < (−G − J) / ((1 + L)·W)`.
//! - **Down** (the state recovers when the distance exceeds `R = L_r + h`): `G = max g` on
//!   `[1 − R, 1 + R]` is approached at some `s*`; while `δ < (G − J) / ((1 + R)·W)`,
//!   `g(p'·(1 + s*)) > 0`, so either the ratio is at the trigger or the walk meets the trigger
//!   within `|s*| ≤ R`: no recovery.
//!
//! The smaller of both sides, shrunk like the ratio's (a rounding margin out of the slack, a
//! relative 10⁻⁶ off `δ`), is the account's distance move; its band is the intersection with
//! the ratio's. Every approximation errs towards waking the account.

use rust_decimal::Decimal;

use super::{MAX_MOVE, Term};
use crate::engine::map::{AccountView, SlotValuation};
use crate::engine::monitor::distance::{ShockQuiet, shock_move};

/// The fractional move `δ` every price may make without the distance state leaving `quiet`;
/// `None` when no positive move is safe or a figure overflows.
/// Raises `coef` (one per term) like [`super::allowed_move_with`].
pub fn allowed_move(
    v: &AccountView<'_>,
    slots: &[SlotValuation],
    terms: &[Term],
    quiet: ShockQuiet,
    coef: &mut [f64],
) -> Option<Decimal> {
    let equity = v.equity();
    let mm = v.maintenance_margin();
    let pm = shock_move(v.instruments_table(), slots, quiet.trigger).ok()??;
    let t = quiet.trigger;
    let mut magnitude = equity.abs().checked_add(mm.abs())?;
    let mut jumps = Decimal::ZERO;
    let mut weight = Decimal::ZERO;
    let mut weights = Vec::with_capacity(terms.len());
    for term in terms {
        magnitude = magnitude.checked_add(term.magnitude)?;
        jumps = jumps.checked_add(term.c)?;
        // `b_any`: the shocks move prices by more than a band's largest move.
        let w = t
            .checked_mul(term.a)?
            .checked_add(term.b_any)?
            .checked_mul(term.price)?;
        weight = weight.checked_add(w)?;
        weights.push(w);
    }
    let n = Decimal::from(terms.len() as u64 + 1);
    let margin = magnitude
        .checked_mul(Decimal::new(1, 9))?
        .checked_add(n.checked_mul(Decimal::new(1, 10))?)?
        .checked_mul(t.checked_add(Decimal::ONE)?)?;
    // The move allowed for `slack` with every price scaled by up to `1 + reach`.
    let mut side = |slack: Decimal, reach: Decimal| -> Option<Decimal> {
        let slack = slack.checked_sub(jumps)?.checked_sub(margin)?;
        if slack <= Decimal::ZERO {
            return None;
        }
        let grow = Decimal::ONE.checked_add(reach)?;
        let slack_f = crate::margin::fast_f64(slack);
        for (j, w) in weights.iter().enumerate() {
            super::raise(coef, j, w.checked_mul(grow)?, slack_f);
        }
        let w = weight.checked_mul(grow)?;
        if w <= Decimal::ZERO {
            return Some(MAX_MOVE);
        }
        Some(slack.checked_div(w)?.min(MAX_MOVE))
    };
    let mut delta = MAX_MOVE;
    if let Some(l) = quiet.up {
        // Levels are below 1, so `1 − L > 0`: the whole interval is priced.
        let lo = Decimal::ONE.checked_sub(l)?;
        if lo <= Decimal::ZERO {
            return None;
        }
        let peak = pm.peak(lo, Decimal::ONE.checked_add(l)?).ok()?;
        delta = delta.min(side(-peak, l)?);
    }
    if let Some(r) = quiet.down {
        // A witness needs exposure (`MM = 0` reads as unreachable); a band keeps a positive MM
        // positive. Part of the interval is enough for a witness: clip it above 0.
        if mm <= Decimal::ZERO {
            return None;
        }
        let lo = Decimal::ONE.checked_sub(r)?.max(Decimal::new(1, 3));
        let peak = pm.peak(lo, Decimal::ONE.checked_add(r)?).ok()?;
        delta = delta.min(side(peak, r)?);
    }
    let delta = delta.checked_mul(Decimal::new(999_999, 6))?;
    (delta > Decimal::ZERO).then_some(delta)
}
