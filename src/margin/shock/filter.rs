//! A floating-point filter in front of the exact interval walk (the crash path's event cost).
//!
//! The exact walk of [`PriceMove::crossings`] solves `g(z) = MM(z) − trigger·equity(z)` piece
//! by piece in `Decimal`: every interval between tier breakpoints costs a line of `Decimal`
//! products, and most intervals hold no crossing. This filter walks the same intervals with
//! `f64` lines that carry an error bound, and proves an interval *quiet* — `g` keeps one sign
//! across it and does not jump across 0 at its near end — only when that sign is certain: the
//! value's magnitude exceeds a bound (1e-9 of the sum of the magnitudes of every term) that is
//! about six orders of magnitude wider than `f64`'s accumulated rounding. Every interval it
//! cannot prove quiet goes through the exact step of the plain walk, with the same tiers and
//! `Decimal` arithmetic, so the result is the exact walk's, bit for bit (the property test
//! `filtered_walk_equals_exact_walk` in `margin/shock/filter/tests.rs` checks it on random
//! books). Where the signs at both ends of an interval are certain and opposite (and none can
//! jump at its near end), the root is strictly inside: the exact line's root is taken at once,
//! computed as the exact step computes it, without the interval's ends in `Decimal`.
//!
//! Where `g` is monotone in `z` — every leg linear on a table whose MM is continuous across its
//! floors, all on one side (longs on rates below the trigger, or shorts), the moving collateral
//! on the same side — it has at most one root, on the side towards which it moves to 0 from
//! `g(start)`; with that sign certain, the walk away from 0 (through every breakpoint down to
//! 0, or beyond the last one) is skipped: the exact walk finds nothing there either
//! (`monotone_books_skip_one_walk_and_equal_the_exact_walk`). An all-long book's account-wide
//! shock and each of its positions' liquidation prices are such problems.
//!
//! The filter declines (and the caller runs the plain walk) whenever its premises are not
//! certain: two breakpoints, or a breakpoint and the start, within 1e-9 of each other (their
//! order or a leg's tier could differ from `Decimal`'s), a leg with a non-positive price factor
//! or entry, a value that does not convert to a finite `f64`, more than 64 legs, or an instrument
//! with `margin` options (their line has other terms).

use std::borrow::Cow;

use rust_decimal::Decimal;
use smallvec::SmallVec;

use super::PriceMove;
use crate::margin::{MarginError, haircut_weighted_amount};
use crate::model::Instrument;

/// Relative width of "uncertain" around 0, and the minimum relative gap between breakpoints.
const REL: f64 = 1e-9;

/// `Decimal` to `f64` within a few ulps ([`crate::margin::fast_f64`]).
use crate::margin::fast_f64 as f;

/// An instrument's tiers in `f64`, as the filter reads them: each floor, and each tier's
/// `(mmr, cum)`. Converting them is most of what building a filter costs, so a lookup that
/// keeps its instruments for long (the engine's instrument table) converts them once per
/// instrument ([`crate::margin::InstrumentLookup::instrument_floats`]); the values are the
/// ones a filter would convert itself, so its results do not depend on where they came from.
#[derive(Clone, Debug, PartialEq)]
pub struct TierFloats {
    floors: Vec<f64>,
    rates: Vec<(f64, f64)>,
    /// The highest `mmr` of the table, exact, when its floors are in order and MM is
    /// continuous across every floor ([`crate::margin::tier_jumps`] 0); `None` otherwise. It decides whether `g` is monotone
    /// ([`Filter::slope`]).
    max_mmr: Option<Decimal>,
    /// `max_mmr` in `f64` (compared first, [`below`]).
    max_mmr_f: Option<f64>,
    /// The floors are in order both as `Decimal`s and as `f64`s ([`TierFloats::tier_range`]).
    sorted: bool,
}

impl TierFloats {
    /// The tiers of `instrument` in `f64`; `None` when the filter cannot use them (no tiers,
    /// `margin` options, a value that does not convert to a finite `f64`).
    pub fn new(instrument: &Instrument) -> Option<Self> {
        // The filter mirrors the plain bracket line only: margin options (contract tiers,
        // a size-linear rate, a fee in MM) take the plain exact walk.
        if instrument.tiers.is_empty() || !instrument.margin.is_plain() {
            return None;
        }
        let mut floors = Vec::with_capacity(instrument.tiers.len());
        let mut rates = Vec::with_capacity(instrument.tiers.len());
        for t in &instrument.tiers {
            floors.push(f(t.notional_floor)?);
            rates.push((f(t.mmr)?, f(t.cum)?));
        }
        let sorted = instrument
            .tiers
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.notional_floor <= b.notional_floor))
            && floors.windows(2).all(|w| matches!(w, [a, b] if a <= b));
        // With floors in order and MM continuous across them (`tier_jumps` 0), `g` cannot
        // jump at a breakpoint, so its slope alone says where it can reach 0.
        let continuous =
            sorted && crate::margin::tier_jumps(&instrument.tiers).is_some_and(|j| j.is_zero());
        let max_mmr = continuous
            .then(|| instrument.tiers.iter().map(|t| t.mmr).max())
            .flatten();
        Some(TierFloats {
            floors,
            rates,
            max_mmr,
            max_mmr_f: max_mmr.and_then(f),
            sorted,
        })
    }

    /// How many tiers the table has (a cache that does not match its instrument's count is
    /// not used).
    pub fn len(&self) -> usize {
        self.floors.len()
    }

    /// True when the table has no tiers (never for a table [`TierFloats::new`] built).
    pub fn is_empty(&self) -> bool {
        self.floors.is_empty()
    }

    /// The tiers `i..=j` that [`crate::margin::select_tier`] can pick for a notional anywhere
    /// in `[lo, hi]`, given as `f64`s within a few ulps of the exact bounds (`0 < lo ≤ hi`): a
    /// range that holds every tier the exact selection picks in that interval. Each bound is
    /// widened by `REL` (10⁻⁹, millions of times the conversions' error), so a floor that the
    /// exact bound reaches is reached here too; a floor just beyond it may be taken as well.
    /// `None` when the floors are out of order or a bound is not a positive finite number
    /// (the caller selects exactly).
    pub fn tier_range(&self, lo: f64, hi: f64) -> Option<(usize, usize)> {
        if !(self.sorted && lo > 0.0 && lo <= hi && hi.is_finite()) {
            return None;
        }
        let (lo, hi) = (lo * (1.0 - REL), hi * (1.0 + REL));
        let i = self
            .floors
            .partition_point(|&fl| fl <= lo)
            .saturating_sub(1);
        let j = self
            .floors
            .partition_point(|&fl| fl <= hi)
            .saturating_sub(1);
        Some((i, j))
    }
}

/// `a < b` exactly, for `a` and `b` with their `f64` values `af` and `bf` (each within a few
/// ulps): decided on the `f64`s when they are further apart than any such error, else on the
/// `Decimal`s.
fn below(a: Decimal, af: f64, b: Decimal, bf: f64) -> bool {
    let tol = REL * (af.abs() + bf.abs());
    if af < bf - tol {
        true
    } else if af > bf + tol {
        false
    } else {
        a < b
    }
}

/// One leg in `f64`: its size and factor, and its tiers.
struct FLeg<'p> {
    inverse: bool,
    signed: f64,
    size: f64,
    k: f64,
    entry: f64,
    /// Borrowed from the lookup's cache, or converted for this filter.
    tiers: Cow<'p, TierFloats>,
}

/// `g(z) = kk·z − ll` in `f64` with the magnitudes of everything summed into each coefficient.
#[derive(Clone, Copy)]
struct FLine {
    kk: f64,
    ll: f64,
    mk: f64,
    ml: f64,
}

impl FLine {
    /// The sign of `g(z)` when certain (`±1`), `0` when not.
    fn sign_at(&self, z: f64) -> i8 {
        let g = self.kk * z - self.ll;
        let tol = REL * (self.mk * z.abs() + self.ml);
        certain_sign(g, tol)
    }
}

fn certain_sign(v: f64, tol: f64) -> i8 {
    if !v.is_finite() || !tol.is_finite() {
        0
    } else if v > tol {
        1
    } else if v < -tol {
        -1
    } else {
        0
    }
}

/// The parts of an `f64` line (see [`Filter::parts`]).
#[derive(Clone, Copy)]
struct Parts {
    a: f64,
    b: f64,
    c: f64,
    d: f64,
    ma: f64,
    mb: f64,
    mc: f64,
    md: f64,
}

/// A breakpoint: where `leg` enters `tier`.
#[derive(Clone, Copy)]
struct Bp {
    z: f64,
    leg: u32,
    tier: u32,
}

/// Legs kept inline: a liquidation-price problem has one, an account's shock one per position
/// (more spill to the heap). The filter is built where it is used, never moved, so its size
/// costs only stack.
const INLINE_LEGS: usize = 4;

/// Breakpoints kept inline: a tier table has a dozen or so, an account's shock one table's
/// worth per leg (0.9 % fewer instructions per snapshot than 16 on the crash book).
const INLINE_BPS: usize = 48;

/// Each leg's tier, inline for up to 16 legs.
type LegTiers = SmallVec<[usize; 16]>;

/// The filter's view of one [`PriceMove`].
pub(super) struct Filter<'p, 'a> {
    pm: &'p PriceMove<'a>,
    legs: SmallVec<[FLeg<'p>; INLINE_LEGS]>,
    fixed_a: f64,
    fixed_d: f64,
    coll_b: f64,
    coll_mb: f64,
    trigger: f64,
    bps: SmallVec<[Bp; INLINE_BPS]>,
    /// `-1` when `g` is strictly decreasing in `z` on all of `z > 0` and continuous, `+1`
    /// when strictly increasing, `0` when neither is certain ([`Filter::slope`]).
    slope: i8,
}

/// The breakpoints beyond a walk's start, in walking order: `bps[at..]` upwards (every `z`
/// above the start), `bps[..at]` reversed downwards (every `z` below it).
struct Ends<'b> {
    bps: &'b [Bp],
    upwards: bool,
    /// Upwards: the first breakpoint above the start; downwards: how many lie below it.
    at: usize,
}

impl<'b> Ends<'b> {
    fn new(bps: &'b [Bp], s: f64, upwards: bool) -> Self {
        let at = if upwards {
            bps.partition_point(|b| b.z <= s)
        } else {
            bps.partition_point(|b| b.z < s)
        };
        Ends { bps, upwards, at }
    }

    fn len(&self) -> usize {
        if self.upwards {
            self.bps.len().saturating_sub(self.at)
        } else {
            self.at
        }
    }

    /// The `j`-th end in walking order.
    fn get(&self, j: usize) -> Option<&'b Bp> {
        if self.upwards {
            self.bps.get(self.at.checked_add(j)?)
        } else {
            self.bps.get(self.at.checked_sub(j.checked_add(1)?)?)
        }
    }
}

impl<'p, 'a> Filter<'p, 'a> {
    /// The filter for `pm`, or `None` when it cannot certify anything (the caller walks
    /// exactly).
    #[cfg(test)]
    pub(super) fn new(pm: &'p PriceMove<'a>) -> Result<Option<Self>, MarginError> {
        let mut fl = Self::empty(pm);
        Ok(fl.fill()?.then_some(fl))
    }

    /// Both walks of [`PriceMove::crossings`] from `start` with the filter built in place (it
    /// keeps its legs and breakpoints inline: not moved, not allocated); `None` when the filter
    /// declines either.
    pub(super) fn crossings(
        pm: &'p PriceMove<'a>,
        start: Decimal,
    ) -> Result<Option<super::Crossings>, MarginError> {
        let mut fl = Self::empty(pm);
        if !fl.fill()? {
            return Ok(None);
        }
        // A monotone `g` has at most one root, on the side `g` moves towards 0: the other
        // side's walk (through every breakpoint to 0 or beyond the last) proves nothing new.
        let away = fl.no_crossing_upwards(start);
        let down = match away {
            Some(false) => Some(None),
            _ => fl.walk(start, false)?,
        };
        let up = match away {
            Some(true) => Some(None),
            _ => fl.walk(start, true)?,
        };
        Ok(match (down, up) {
            (Some(down), Some(up)) => Some(super::Crossings { down, up }),
            _ => None,
        })
    }

    fn empty(pm: &'p PriceMove<'a>) -> Self {
        Filter {
            pm,
            legs: SmallVec::new(),
            fixed_a: 0.0,
            fixed_d: 0.0,
            coll_b: 0.0,
            coll_mb: 0.0,
            trigger: 0.0,
            bps: SmallVec::new(),
            slope: 0,
        }
    }

    /// The sign of `g`'s slope when it is the same on every tier of every leg and `g` has no
    /// jump: every leg linear on a table with continuous MM ([`crate::margin::tier_jumps`] 0), every
    /// term of the slope of one sign. With every leg in some tier, `g`'s slope is
    /// `Σ size·k·(mmr − t)` over longs, `Σ size·k·(mmr + t)` over shorts and `−t·Σ w·k` over
    /// the moving collateral (`k > 0`, `t > 0`): longs with every `mmr < t` and collateral
    /// held (`w > 0`) only lower it; shorts and borrowed collateral only raise it. Mixed
    /// books, inverse legs and tables with jumps are `0` (both walks run). Exact: signs and
    /// `mmr < t` are read off the `Decimal`s.
    fn slope(&self, coll: (bool, bool, bool)) -> i8 {
        let t = self.pm.trigger;
        // `f` keeps the sign and maps only 0 to 0.0, so the `f64` signs below are the exact
        // ones: `trigger > 0`, each leg's `k > 0` (checked by `fill`) and `q·cs`'s sign.
        if self.trigger <= 0.0 {
            return 0;
        }
        let (mut down, mut up) = (false, false);
        for fl in &self.legs {
            if fl.signed == 0.0 {
                continue; // no slope, no breakpoint
            }
            let Some((max_mmr, max_f)) = fl.tiers.max_mmr.zip(fl.tiers.max_mmr_f) else {
                return 0;
            };
            if fl.inverse {
                return 0;
            }
            if fl.signed < 0.0 {
                up = true;
            } else if below(max_mmr, max_f, t, self.trigger) {
                down = true;
            } else {
                return 0;
            }
        }
        // Held collateral (`w > 0`) lowers `g`'s slope, borrowed raises it.
        let (held, borrowed, unknown) = coll;
        if unknown {
            return 0;
        }
        down |= held;
        up |= borrowed;
        match (down, up) {
            (true, false) => -1,
            (false, true) => 1,
            _ => 0,
        }
    }

    /// With `g` monotone ([`Filter::slope`]): `Some(true)` when no crossing lies above `start`
    /// (`g` moves away from 0 upwards), `Some(false)` when none lies below; `None` when `g` is
    /// not monotone, `start` is too near a breakpoint, or the sign of `g(start)` is not
    /// certain (both walks run).
    fn no_crossing_upwards(&self, start: Decimal) -> Option<bool> {
        if self.slope == 0 {
            return None;
        }
        let s = self.clear_start(start)?;
        let mut tiers = LegTiers::with_capacity(self.legs.len());
        self.tiers_at(s, &mut tiers);
        let sign = self.line(&self.parts(&tiers)?).sign_at(s);
        (sign != 0).then_some(sign == self.slope)
    }

    /// `start` in `f64` when the filter can start there: positive, and not within `REL` of a
    /// breakpoint (where a leg's tier could differ from `Decimal`'s).
    fn clear_start(&self, start: Decimal) -> Option<f64> {
        let s = f(start)?;
        (s > 0.0 && !self.bps.iter().any(|b| (b.z - s).abs() <= REL * b.z.max(s))).then_some(s)
    }

    /// Converts `pm` into the filter's terms; `false` when it cannot certify anything.
    fn fill(&mut self) -> Result<bool, MarginError> {
        let pm = self.pm;
        if pm.legs.len() > 64 {
            return Ok(false);
        }
        let legs = &mut self.legs;
        legs.reserve(pm.legs.len());
        // Sized once: a breakpoint per tier but each leg's first.
        let bps = &mut self.bps;
        bps.reserve(pm.legs.iter().map(|l| l.instrument.tiers.len()).sum());
        for (li, leg) in pm.legs.iter().enumerate() {
            let inst = leg.instrument;
            // Cached tiers must be this instrument's (every test run checks it); a cache that
            // does not even have its tier count is not used.
            debug_assert!(
                leg.floats
                    .is_none_or(|t| Some(t) == TierFloats::new(inst).as_ref()),
                "cached tiers of another instrument for {}",
                inst.id
            );
            let tiers = match leg.floats.filter(|t| t.floors.len() == inst.tiers.len()) {
                Some(t) => Cow::Borrowed(t),
                None => match TierFloats::new(inst) {
                    Some(t) => Cow::Owned(t),
                    None => return Ok(false),
                },
            };
            let (Some(q), Some(cs), Some(k), Some(entry)) = (
                f(leg.quantity),
                f(inst.contract_size),
                f(leg.price_factor),
                f(leg.entry_price),
            ) else {
                return Ok(false);
            };
            if k <= 0.0 || (inst.kind.is_inverse() && entry <= 0.0) {
                return Ok(false);
            }
            let signed = q * cs;
            let size = signed.abs();
            if size != 0.0 {
                // `f` keeps the sign and maps only 0 to 0.0, so `fl > 0` is the exact
                // `notional_floor > 0` of `PriceMove::breakpoints`.
                for (ti, &fl) in tiers.floors.iter().enumerate().skip(1) {
                    if fl <= 0.0 {
                        continue;
                    }
                    let z = if inst.kind.is_inverse() {
                        size / (k * fl)
                    } else {
                        fl / (size * k)
                    };
                    if !z.is_finite() || z <= 0.0 {
                        return Ok(false);
                    }
                    let (Ok(leg), Ok(tier)) = (u32::try_from(li), u32::try_from(ti)) else {
                        return Ok(false);
                    };
                    bps.push(Bp { z, leg, tier });
                }
            }
            legs.push(FLeg {
                inverse: inst.kind.is_inverse(),
                signed,
                size,
                k,
                entry,
                tiers,
            });
        }
        let (Some(fixed_a), Some(fixed_d), Some(trigger)) =
            (f(pm.fixed_equity), f(pm.fixed_mm), f(pm.trigger))
        else {
            return Ok(false);
        };
        let (mut coll_b, mut coll_mb) = (0.0, 0.0);
        // The signs of the moving collateral's slope terms `w·k` (`f` keeps signs exactly):
        // whether any falls, any rises, any is of unknown sign (`k ≤ 0`), for `slope`.
        let mut coll_slopes = (false, false, false);
        for col in &pm.collateral {
            let w = haircut_weighted_amount(col.instrument, col.amount)?;
            let (Some(w), Some(k)) = (f(w), f(col.price_factor)) else {
                return Ok(false);
            };
            coll_b += w * k;
            coll_mb += (w * k).abs();
            if w != 0.0 {
                if k <= 0.0 {
                    coll_slopes.2 = true;
                } else if w > 0.0 {
                    coll_slopes.0 = true;
                } else {
                    coll_slopes.1 = true;
                }
            }
        }
        bps.sort_unstable_by(|x, y| x.z.total_cmp(&y.z));
        for pair in bps.windows(2) {
            if let [x, y] = pair
                && y.z - x.z <= REL * y.z
            {
                return Ok(false);
            }
        }
        self.fixed_a = fixed_a;
        self.fixed_d = -fixed_d;
        self.coll_b = coll_b;
        self.coll_mb = coll_mb;
        self.trigger = trigger;
        self.slope = self.slope(coll_slopes);
        Ok(true)
    }

    /// Leg `li`'s tier at `z` (strictly inside an interval, so certain).
    fn leg_tier(&self, li: usize, z: f64) -> usize {
        let Some(leg) = self.legs.get(li) else {
            return 0;
        };
        let notional = if leg.inverse {
            leg.size / (leg.k * z)
        } else {
            leg.size * leg.k * z
        };
        leg.tiers
            .floors
            .partition_point(|&fl| fl <= notional)
            .saturating_sub(1)
    }

    /// Each leg's tier at `z`.
    fn tiers_at(&self, z: f64, out: &mut LegTiers) {
        out.clear();
        out.extend((0..self.legs.len()).map(|li| self.leg_tier(li, z)));
    }

    /// Leg `li`'s tier-dependent terms `(c, d)` of the line, or `None` when a value does not
    /// convert. Linear: `c = size·k·mmr`, `d = cum`; inverse: `c = −cum·k`, `d = −size·mmr`.
    fn tier_terms(&self, li: usize, ti: usize) -> Option<(f64, f64)> {
        let leg = self.legs.get(li)?;
        let &(mmr, cum) = leg.tiers.rates.get(ti)?;
        Some(if leg.inverse {
            (-cum * leg.k, -leg.size * mmr)
        } else {
            (leg.size * leg.k * mmr, cum)
        })
    }

    /// The `f64` line's parts with every leg in `tiers`: the tier-independent `(a, b)` and the
    /// tier-dependent `(c, d)`, each with the sum of its terms' magnitudes.
    fn parts(&self, tiers: &[usize]) -> Option<Parts> {
        let mut p = Parts {
            a: self.fixed_a,
            b: self.coll_b,
            c: 0.0,
            d: self.fixed_d,
            ma: self.fixed_a.abs(),
            mb: self.coll_mb,
            mc: 0.0,
            md: self.fixed_d.abs(),
        };
        for (li, (leg, &ti)) in self.legs.iter().zip(tiers).enumerate() {
            if leg.inverse {
                let bb = leg.signed * leg.k / leg.entry;
                p.a -= leg.signed;
                p.b += bb;
                p.ma += leg.signed.abs();
                p.mb += bb.abs();
            } else {
                let aa = leg.signed * leg.entry;
                let bb = leg.signed * leg.k;
                p.a -= aa;
                p.b += bb;
                p.ma += aa.abs();
                p.mb += bb.abs();
            }
            let (cc, dd) = self.tier_terms(li, ti)?;
            p.c += cc;
            p.d += dd;
            p.mc += cc.abs();
            p.md += dd.abs();
        }
        Some(p)
    }

    /// The line of `parts` (`g = kk·z − ll`, `kk = c − t·b`, `ll = d + t·a`).
    fn line(&self, p: &Parts) -> FLine {
        let t = self.trigger;
        FLine {
            kk: p.c - t * p.b,
            ll: p.d + t * p.a,
            mk: p.mc + t.abs() * p.mb,
            ml: p.md + t.abs() * p.ma,
        }
    }

    /// The exact breakpoint `bp` (the formula of [`PriceMove::breakpoints`]).
    fn exact_bp(&self, bp: &Bp) -> Result<Decimal, MarginError> {
        use crate::margin::{div, mul};
        let missing = || MarginError::Overflow {
            context: "breakpoint",
        };
        let leg = self.pm.legs.get(bp.leg as usize).ok_or_else(missing)?;
        let t = leg
            .instrument
            .tiers
            .get(bp.tier as usize)
            .ok_or_else(missing)?;
        let size = mul(leg.quantity.abs(), leg.instrument.contract_size, "leg size")?;
        if leg.instrument.kind.is_inverse() {
            div(
                size,
                mul(leg.price_factor, t.notional_floor, "breakpoint")?,
                "breakpoint",
            )
        } else {
            div(
                t.notional_floor,
                mul(size, leg.price_factor, "breakpoint")?,
                "breakpoint",
            )
        }
    }

    /// The walk of [`PriceMove::walk`] from `start` in one direction, with quiet intervals
    /// skipped; `None` when the filter declines (start too near a breakpoint).
    pub(super) fn walk(
        &self,
        start: Decimal,
        upwards: bool,
    ) -> Result<Option<Option<Decimal>>, MarginError> {
        let Some(s) = self.clear_start(start) else {
            return Ok(None);
        };
        // Interval ends beyond `start` in walking order; `None` = unbounded (up) or 0 (down).
        // The breakpoints are sorted, so those beyond `start` are one run of them: indexed in
        // place rather than collected.
        let ends = Ends::new(&self.bps, s, upwards);
        let mut tiers = LegTiers::with_capacity(self.legs.len());
        let mut parts: Option<Parts> = None;
        let mut prev_far_sign = 0i8; // sign of the previous line at this interval's near end
        let mut prev_tiers = LegTiers::new();
        let mut near_f = s;
        let mut near_exact: Option<Decimal> = Some(start);
        for j in 0..=ends.len() {
            let far = ends.get(j);
            let mid = match far {
                Some(b) => 0.5 * (near_f + b.z),
                None if upwards => 2.0 * near_f.max(1.0),
                None => 0.5 * near_f,
            };
            // Across a breakpoint only its leg changes tier: update that leg's terms (the
            // magnitudes keep both the removed and the added term, so the bound stays sound).
            let crossed = j.checked_sub(1).and_then(|i| ends.get(i));
            match (parts.as_mut(), crossed) {
                (Some(p), Some(b)) => {
                    let li = b.leg as usize;
                    let (Some(&old), new) = (tiers.get(li), self.leg_tier(li, mid)) else {
                        return Ok(None);
                    };
                    if new != old {
                        let (Some((c0, d0)), Some((c1, d1))) =
                            (self.tier_terms(li, old), self.tier_terms(li, new))
                        else {
                            return Ok(None);
                        };
                        p.c += c1 - c0;
                        p.d += d1 - d0;
                        p.mc += c0.abs() + c1.abs();
                        p.md += d0.abs() + d1.abs();
                        if let Some(slot) = tiers.get_mut(li) {
                            *slot = new;
                        }
                    }
                }
                _ => {
                    self.tiers_at(mid, &mut tiers);
                    parts = self.parts(&tiers);
                }
            }
            let Some(p) = parts.as_ref() else {
                return Ok(None);
            };
            let line = self.line(p);
            let s_near = line.sign_at(near_f);
            let s_far = match far {
                Some(b) => line.sign_at(b.z),
                None if upwards => certain_sign(line.kk, REL * line.mk),
                None => certain_sign(-line.ll, REL * line.ml),
            };
            let quiet = s_near != 0 && s_near == s_far && (j == 0 || prev_far_sign == s_near);
            // Certain, opposite signs at both ends (and no jump at the near end to look for):
            // the exact line has its root strictly inside the interval, so the exact step's
            // boundary checks pass and its ends are not needed in `Decimal` (two divisions
            // saved). The root is computed exactly as the step computes it.
            let no_jump = j == 0 || (s_near != 0 && s_near == prev_far_sign);
            if s_near != 0 && s_far != 0 && s_near != s_far && no_jump {
                let line_exact = self.pm.line(&tiers)?;
                return Ok(Some(self.pm.exact_root(start, line_exact)?));
            }
            if !quiet {
                let near = match near_exact {
                    Some(n) => n,
                    None => match ends.get(j.wrapping_sub(1)) {
                        Some(b) => self.exact_bp(b)?,
                        None => return Ok(None),
                    },
                };
                let far_exact = far.map(|b| self.exact_bp(b)).transpose()?;
                let line_exact = self.pm.line(&tiers)?;
                // The previous line is needed only to find a jump of `g` across 0 at `near`;
                // when both sides' signs there are certain and equal, there is none.
                let prev = if j == 0 || (s_near != 0 && s_near == prev_far_sign) {
                    None
                } else {
                    Some(self.pm.line(&prev_tiers)?)
                };
                if let Some(root) = self
                    .pm
                    .exact_step(start, near, far_exact, line_exact, prev, upwards)?
                {
                    return Ok(Some(Some(root)));
                }
                near_exact = far_exact;
            } else {
                near_exact = None;
            }
            prev_far_sign = s_far;
            if far.is_none() {
                break;
            }
            prev_tiers.clear();
            prev_tiers.extend_from_slice(&tiers);
            if let Some(b) = far {
                near_f = b.z;
            }
        }
        Ok(Some(None))
    }
}

#[cfg(test)]
mod tests;
