//! The compiled fast path: an account whose parts are all linear (linear contracts of any
//! contract size, collateral) evaluated in exact `i128` fixed point.
//!
//! In a scenario with multiplier `m_u = 1 + r_u` per underlying:
//! - equity is **one line per underlying**: `C + Σ_u D_u·m_u`, with
//!   `D_u = Σ q·cs·P` (positions) `+ Σ w·P` (collateral after haircut, which is linear in the
//!   price) and `C = Σ −q·cs·EP + stablecoins` — exactly the margin model's
//!   `q·cs·(P·m − EP)` and `w·(P·m)` summed, with no rounding anywhere;
//! - MM is not linear: each position walks the tiers that the scenarios' notionals
//!   `N₀·m` can reach (a tier `k` applies from `floor_k ≤ N₀·m`, as `select_tier`), and adds
//!   `(N₀·mmr_k)·m − cum_k`.
//!
//! Every scale is fixed when the account is compiled and every magnitude is bounded from the
//! scenarios' smallest and largest multipliers, so the loop cannot overflow; an account that
//! does not fit (or holds an inverse contract) is left to the full revaluation.

use rust_decimal::Decimal;

use super::scenarios::{ONE_M, RETURN_SCALE};
use super::var::{AccountRisk, RiskBook, RiskError, worst_k};
use crate::margin::haircut_weighted_amount;
use crate::model::Account;

/// Largest scale the compiled figures use (`Decimal`'s maximum).
const MAX_SCALE: u32 = 28;
/// Every compiled magnitude stays below this, so the outputs fit a `Decimal` mantissa and the
/// sums of the loop cannot overflow `i128`.
const BOUND: u128 = 1u128 << 94;

fn pow10(k: u32) -> Option<i128> {
    10i128.checked_pow(k)
}

/// `d` as a mantissa at scale `s ≥ d.scale()`.
fn at_scale(d: Decimal, s: u32) -> Option<i128> {
    d.mantissa().checked_mul(pow10(s.checked_sub(d.scale())?)?)
}

/// `a·b` only when `Decimal` keeps every digit.
fn exact_mul(a: Decimal, b: Decimal) -> Option<Decimal> {
    a.checked_mul(b)
        .filter(|r| r.is_zero() || r.scale() == a.scale() + b.scale())
}

struct TierLine {
    /// `floor·10^(s_N + RETURN_SCALE)`: the tier applies when `n0·m ≥ threshold`.
    threshold: i128,
    /// `N₀·mmr` at scale `mm_scale − RETURN_SCALE`.
    slope: i128,
    /// `cum` at `mm_scale`.
    cum: i128,
}

struct MmTerm {
    col: usize,
    n0: i128,
    tiers: Vec<TierLine>,
}

/// One equity component's line: `a·(m − 1)` is its PnL.
struct Part {
    col: Option<usize>,
    a: Decimal,
}

/// A compiled account.
pub(super) struct Compiled {
    e_scale: u32,
    c: i128,
    d: Vec<(usize, i128)>,
    mm_scale: u32,
    mm: Vec<MmTerm>,
    parts: Vec<Part>,
    /// Liquidated when `mm·lhs ≥ eq·rhs` (both at a common scale, trigger folded in).
    lhs: i128,
    rhs: i128,
}

/// A reachable tier of a position: `(floor, N₀·mmr, cum)`.
type DraftTier = (Decimal, Decimal, Decimal);

struct Draft {
    consts: Vec<Decimal>,
    slopes: Vec<(usize, Decimal)>,
    mm: Vec<(usize, Decimal, Vec<DraftTier>)>,
    parts: Vec<Part>,
}

/// Compiles `a`, or `None` when it is not all linear or does not fit the fixed scales.
pub(super) fn compile(book: &RiskBook<'_>, a: &Account, trigger: Decimal) -> Option<Compiled> {
    let mut dr = Draft {
        consts: Vec::new(),
        slopes: Vec::new(),
        mm: Vec::new(),
        parts: Vec::new(),
    };
    for (asset, amount) in &a.collateral {
        let i = book.instrument(asset).ok()?;
        let w = haircut_weighted_amount(i, *amount).ok()?;
        if i.stable {
            dr.consts.push(w);
            dr.parts.push(Part {
                col: None,
                a: Decimal::ZERO,
            });
        } else {
            let (p, j) = book.base(i).ok()?;
            let a = exact_mul(w, p)?;
            dr.slopes.push((j, a));
            dr.parts.push(Part { col: Some(j), a });
        }
    }
    for pos in &a.positions {
        let i = book.instrument(&pos.instrument).ok()?;
        if i.kind.is_inverse() || !i.kind.is_contract() || i.tiers.is_empty() || i.stable {
            return None;
        }
        let (p, j) = book.base(i).ok()?;
        let qcs = exact_mul(pos.quantity, i.contract_size)?;
        let a = exact_mul(qcs, p)?;
        dr.consts.push(-exact_mul(qcs, pos.entry_price)?);
        dr.slopes.push((j, a));
        dr.parts.push(Part { col: Some(j), a });
        let n0 = a.abs();
        let (lo, hi) = *book.bounds.get(j)?;
        let tier_at = |m: i64| {
            let n = exact_mul(n0, super::var::m_decimal(m))?;
            crate::margin::select_tier(&i.tiers, n).map(|(k, _)| k)
        };
        let (k_lo, k_hi) = (tier_at(lo)?, tier_at(hi)?);
        let lines = i
            .tiers
            .get(k_lo..=k_hi)?
            .iter()
            .map(|t| Some((t.notional_floor, exact_mul(n0, t.mmr)?, t.cum)))
            .collect::<Option<Vec<_>>>()?;
        dr.mm.push((j, n0, lines));
    }
    finish(book, dr, trigger)
}

fn finish(book: &RiskBook<'_>, dr: Draft, trigger: Decimal) -> Option<Compiled> {
    let rs = RETURN_SCALE;
    // Scales: equity at the largest of (slope scale + rs, constant scales).
    let e_scale = dr
        .slopes
        .iter()
        .map(|(_, a)| a.scale() + rs)
        .chain(dr.consts.iter().map(|c| c.scale()))
        .max()
        .unwrap_or(0);
    let mm_scale = dr
        .mm
        .iter()
        .flat_map(|(_, _, l)| l.iter().map(|(_, s, c)| (s.scale() + rs).max(c.scale())))
        .max()
        .unwrap_or(0);
    if e_scale > MAX_SCALE || mm_scale > MAX_SCALE {
        return None;
    }
    let max_m = |j: usize| book.bounds.get(j).map(|b| i128::from(b.1));
    // Equity line and its bound.
    let mut c: i128 = 0;
    for k in &dr.consts {
        c = c.checked_add(at_scale(*k, e_scale)?)?;
    }
    let mut d: Vec<(usize, i128)> = Vec::new();
    for (j, a) in &dr.slopes {
        let v = at_scale(*a, e_scale - rs)?;
        match d.iter_mut().find(|(col, _)| col == j) {
            Some((_, acc)) => *acc = acc.checked_add(v)?,
            None => d.push((*j, v)),
        }
    }
    let mut eq_bound = c.unsigned_abs();
    for (j, v) in &d {
        // Each partial sum is bounded by the sum of magnitudes.
        eq_bound =
            eq_bound.checked_add(v.unsigned_abs().checked_mul(max_m(*j)?.unsigned_abs())?)?;
    }
    // MM terms and their bound.
    let mut mm = Vec::with_capacity(dr.mm.len());
    let mut mm_bound: u128 = 0;
    for (j, n0, lines) in dr.mm {
        let n_scale = n0.scale() + rs;
        let n0m = n0.mantissa();
        if n0m.unsigned_abs().checked_mul(max_m(j)?.unsigned_abs())? >= BOUND {
            return None;
        }
        let mut tiers = Vec::with_capacity(lines.len());
        let mut worst: u128 = 0;
        for (k, (floor, slope, cum)) in lines.into_iter().enumerate() {
            let threshold = if k == 0 {
                i128::MIN
            } else {
                at_scale(floor, n_scale)?
            };
            let line = TierLine {
                threshold,
                slope: at_scale(slope, mm_scale - rs)?,
                cum: at_scale(cum, mm_scale)?,
            };
            let b = line
                .slope
                .unsigned_abs()
                .checked_mul(max_m(j)?.unsigned_abs())?
                .checked_add(line.cum.unsigned_abs())?;
            worst = worst.max(b);
            tiers.push(line);
        }
        mm_bound = mm_bound.checked_add(worst)?;
        mm.push(MmTerm {
            col: j,
            n0: n0m,
            tiers,
        });
    }
    if eq_bound >= BOUND || mm_bound >= BOUND {
        return None;
    }
    // Liquidation: mm ≥ trigger·eq at the common scale L, trigger = t/10^ts:
    //   mm·10^(L − mm_scale)·10^ts ≥ t·eq·10^(L − e_scale).
    let l = e_scale.max(mm_scale);
    let lhs = pow10(l - mm_scale)?.checked_mul(pow10(trigger.scale())?)?;
    let rhs = pow10(l - e_scale)?.checked_mul(trigger.mantissa())?;
    mm_bound.checked_mul(lhs.unsigned_abs())?.checked_mul(4)?;
    eq_bound.checked_mul(rhs.unsigned_abs())?.checked_mul(4)?;
    Some(Compiled {
        e_scale,
        c,
        d,
        mm_scale,
        mm,
        parts: dr.parts,
        lhs,
        rhs,
    })
}

impl Compiled {
    /// Equity and MM mantissas in the scenario whose multipliers are `row`.
    #[inline]
    fn eval(&self, row: &[i64]) -> (i128, i128) {
        let m = |j: usize| i128::from(row.get(j).copied().unwrap_or(ONE_M));
        let mut eq = self.c;
        for (j, d) in &self.d {
            eq += d * m(*j);
        }
        let mut mm: i128 = 0;
        for t in &self.mm {
            let mj = m(t.col);
            let n = t.n0 * mj;
            let mut line = &t.tiers[0];
            for next in &t.tiers[1..] {
                if n >= next.threshold {
                    line = next;
                } else {
                    break;
                }
            }
            mm += line.slope * mj - line.cum;
        }
        (eq, mm)
    }

    #[inline]
    fn reaches(&self, eq: i128, mm: i128) -> bool {
        mm != 0 && (eq <= 0 || mm * self.lhs >= eq * self.rhs)
    }

    fn dec(v: i128, scale: u32) -> Result<Decimal, RiskError> {
        Decimal::try_from_i128_with_scale(v, scale).map_err(|_| RiskError::Inexact("figure"))
    }

    /// The account's risk from the compiled lines.
    pub(super) fn risk(
        &self,
        book: &RiskBook<'_>,
        a: &Account,
        buf: &mut Vec<(i128, u32)>,
    ) -> Result<AccountRisk, RiskError> {
        let set = book.set;
        let cols = set.underlyings.len();
        let ones = vec![ONE_M; cols];
        let (eq0, mm0) = self.eval(&ones);
        buf.clear();
        let mut liq = 0usize;
        for (s, row) in set.multipliers.chunks_exact(cols.max(1)).enumerate() {
            let (eq, mm) = self.eval(row);
            liq += usize::from(self.reaches(eq, mm));
            buf.push((eq - eq0, s as u32));
        }
        if cols == 0 {
            // No column: every scenario moves nothing.
            buf.clear();
            for s in 0..set.len() {
                liq += usize::from(self.reaches(eq0, mm0));
                buf.push((0, s as u32));
            }
        }
        worst_k(buf, book.k);
        let mut tail_sum: i128 = 0;
        let mut moved = vec![0i128; cols];
        let mut details = Vec::new();
        for (rank, (pnl, s)) in buf.iter().enumerate() {
            tail_sum = tail_sum
                .checked_add(*pnl)
                .ok_or(RiskError::Inexact("tail sum"))?;
            let row = set.row(*s as usize);
            for (acc, m) in moved.iter_mut().zip(row) {
                *acc += i128::from(*m) - i128::from(ONE_M);
            }
            if rank < book.worst {
                let (eq, mm) = self.eval(row);
                details.push((
                    *s as usize,
                    Self::dec(*pnl, self.e_scale)?,
                    Self::dec(eq, self.e_scale)?,
                    Self::dec(mm, self.mm_scale)?,
                ));
            }
        }
        let comp = self
            .parts
            .iter()
            .map(|p| match p.col {
                None => Ok(Decimal::ZERO),
                Some(j) => {
                    p.a.mantissa()
                        .checked_mul(moved.get(j).copied().unwrap_or(0))
                        .ok_or(RiskError::Inexact("component"))
                        .and_then(|v| Self::dec(v, p.a.scale() + RETURN_SCALE))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kth = buf.last().map(|p| p.0).unwrap_or(0);
        book.finish(
            a,
            "linear",
            (
                Self::dec(eq0, self.e_scale)?,
                Self::dec(mm0, self.mm_scale)?,
            ),
            book.trigger_of(a),
            Self::dec(kth, self.e_scale)?,
            Self::dec(tail_sum, self.e_scale)?,
            comp,
            liq,
            details,
        )
    }
}
