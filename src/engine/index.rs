//! The distance index: which accounts a price move can actually change.
//!
//! Revaluing every holder of an instrument on every tick costs O(holders) — at 100k accounts
//! that is ~16 ms per BTC tick, and an alert for one account waits behind it. Most accounts sit
//! far from their next level, and a small move cannot change their monitor state. This index
//! (the "index accounts by how far each price may move" step of `design.md`) keeps, per
//! account, the price band inside which its state provably cannot change, and a tick wakes only
//! the accounts whose band it leaves.
//!
//! # The bound
//! Between two valuations, the account's equity `E` and maintenance margin `MM` move by at most
//! a sum of per-slot terms, each linear in its price move `|Δpᵢ|`:
//! - linear contract (quantity `q`, contract size `cs`): `|ΔuPnL| ≤ |q|·cs·|Δp|` and
//!   `|ΔMM| ≤ |q|·cs·mmr*·|Δp| + J`, where `mmr*` is the largest rate of the tiers a move of
//!   less than [`MAX_MOVE`] reaches from the position's notional (not the table's last: 50 % on
//!   Binance's BTCUSDT, against 0.4–0.5 % for most positions) and `J` the sum of the tier
//!   table's jumps (zero for the venues' continuous tables, whose `cum` is built to make `MM`
//!   continuous);
//! - inverse contract (entry `EP`): `uPnL = q·cs·(p/EP − 1)` gives `|ΔuPnL| ≤ |q|·cs/EP·|Δp|`, and
//!   `MM = face·mmr − cum·p` has slope `−cum` on each tier, so `|ΔMM| ≤ max|cum|·|Δp|` when the
//!   coin-notional tiers are continuous (otherwise its holders are always revalued);
//! - collateral: `|ΔE| ≤ |haircut amount|·|Δp|`; stablecoins never move.
//!
//! The monitor's state holds while the ratio stays in its quiet range `[floor, ceiling)`
//! ([`crate::engine::monitor::Monitor::quiet_range`]). For the ceiling `U` the state is safe while
//! `U·E − MM > 0`; that slack shrinks by at most `Σᵢ (U·aᵢ + bᵢ)·|Δpᵢ| + Σ J`. For the floor `D`
//! the slack is `MM − D·E`. Sharing the slack as one fractional move `δ` for every price,
//! `δ = slack / Σᵢ (L·aᵢ + bᵢ)·pᵢ` (the smaller over both sides), no state change is possible
//! while every price stays strictly inside `pᵢ·(1 ± δ)`. `δ` is shrunk by a relative `10⁻⁶` and
//! the slack by a margin for the 12-place rounding of the cached figures, and the band ends are
//! built inwards (in `f64`, shrunk by a relative `10⁻¹²`, far past its rounding; a property
//! test checks each lies inside the exact `Decimal` band), so every approximation errs towards
//! waking an account.
//!
//! # Re-spreading the budget
//! The uniform `δ` is one way of spending the slack. In general, with `cᵢ = max over sides of
//! wᵢ / slack` (`wᵢ` the instrument's term above, rounded up), any prices with
//! `Σᵢ cᵢ·|Δpᵢ|/pᵢ < 1` keep the state. So when a price leaves its band, the account is not
//! valued at once: if the current deviations `dᵢ` from the prices it was valued at (its
//! *anchors*) use only part of that budget, it gets new bands `anchorᵢ·(1 ± hᵢ)` with
//! `hᵢ ≥ dᵢ` and `Σ cᵢ·hᵢ ≤ 1 − 10⁻⁹` — what is left goes three parts to the instruments that
//! left their band for one to the others ([`respread`]) — and only a spent budget (or a price
//! outside the widest band) wakes it. A market where one price walks while the others sit,
//! the common case, no longer wakes an account for a quarter of its slack: in the engine
//! bench's random walk, 3.4 accounts are valued per tick at 100k instead of 18.8, for 1.6
//! events. Each re-spread costs a few `f64` operations and its band moves in the store; none
//! reads the account. Counted by `liqwatch_engine_respread_accounts_total`.
//!
//! # What this changes and what it keeps
//! - A tick ([`Engine::on_prices`](crate::engine::Engine::on_prices)) only sets the engine price ([`AccountMap::set_price`]); the woken
//!   accounts — out of band, or *eager* (no band: incomplete, zero slack, no known bound) — are
//!   brought to the current prices with [`AccountMap::materialise`] and evaluated. Every other
//!   account's caches stay at the prices they were valued at, slot by slot, and still equal a
//!   from-scratch recomputation at *those* prices; reads that rank accounts materialise first.
//! - The monitor sees exactly the crossings it would see if every holder were revalued on every
//!   tick: the property test `tests/it/engine/index_props.rs` runs both engines side by side on random
//!   ticks and account updates and compares every event.
//! - The index is owned by the engine task (`&mut self`, no locks). Call [`DistanceIndex::track`]
//!   after every account update and [`DistanceIndex::forget`] after a removal.
//!
//! # Storage
//! Per account, one array and one bit (banded or eager); per instrument in it, 24 bytes: the
//! instrument, the anchor (`f64`), the budget coefficient (an `f32` rounded up: it only ever
//! narrows a re-spread band) and the codes of the band's two fixed-point ends. Per instrument,
//! the eager holders and the banded holders ordered by their band ends as fixed-point integers
//! (`index/store.rs`), each set kept as sorted blocks (`engine/blocks.rs`). A step's changes
//! are queued and applied at once: when they touch a large share of an instrument's holders (a
//! correlated move, the first build), its sets are rebuilt in one linear merge rather than
//! edited key by key.
//!
//! # Metrics
//! `liqwatch_engine_woken_accounts_total` (accounts revalued by ticks),
//! `liqwatch_engine_respread_accounts_total` (accounts given new bands without a valuation), gauge
//! `liqwatch_engine_banded_accounts` (accounts with a band; the rest are revalued on every tick
//! of their instruments).

mod store;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use store::{FixedBand, PriceKey, Store};

use crate::engine::map::{
    AccountKey, AccountMap, AccountView, InstrumentIdx, InstrumentTable, SlotValuation, Touched,
};
use crate::engine::monitor::distance::ShockQuiet;
use crate::engine::monitor::{Monitor, QuietRange};

pub mod distance; // bands for the distance levels (`warn_within_shock`)
use crate::margin::{self, TierFloats};
use crate::model::{Instrument, InstrumentId, MarginTier};

/// The largest fractional move a band allows, whatever the slack.
pub const MAX_MOVE: Decimal = Decimal::from_parts(5, 0, 0, false, 1);

/// Places the band ends are rounded to (inwards); the fixed-point storage keeps them exactly.
const BAND_SCALE: u32 = store::FIXED_SCALE;

/// How an instrument's price moves an account's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sensitivity {
    /// A stablecoin: its price never moves.
    Fixed,
    /// Linear contract.
    Linear {
        cs: Decimal,
        max_mmr: Decimal,
        jumps: Decimal,
    },
    /// Inverse contract with continuous coin-notional tiers.
    Inverse { cs: Decimal, max_cum: Decimal },
    /// Collateral asset (linear in its price).
    Collateral,
    /// No bound is known: holders are revalued on every tick.
    Unbounded,
}

fn sensitivity(inst: &Instrument) -> Sensitivity {
    if inst.stable {
        return Sensitivity::Fixed;
    }
    if !inst.kind.is_contract() {
        return Sensitivity::Collateral;
    }
    if inst.tiers.is_empty() || !inst.margin.is_plain() {
        // Venue-specific MM shapes (`MarginOptions`) have no bound here: revalue on every tick.
        return Sensitivity::Unbounded;
    }
    let max_mmr = inst.tiers.iter().map(|t| t.mmr).max().unwrap_or_default();
    let max_cum = inst
        .tiers
        .iter()
        .map(|t| t.cum.abs())
        .max()
        .unwrap_or_default();
    match margin::tier_jumps(&inst.tiers) {
        None => Sensitivity::Unbounded,
        Some(j) if inst.kind.is_inverse() => {
            if j.is_zero() {
                Sensitivity::Inverse {
                    cs: inst.contract_size,
                    max_cum,
                }
            } else {
                Sensitivity::Unbounded
            }
        }
        Some(jumps) => Sensitivity::Linear {
            cs: inst.contract_size,
            max_mmr,
            jumps,
        },
    }
}

/// One slot's sensitivity: `|ΔE| ≤ a·|Δp|`, `|ΔMM| ≤ b·|Δp| + c`, valued at `price`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// Equity per unit of price move.
    pub a: Decimal,
    /// Maintenance margin per unit of price move, for moves of at most [`MAX_MOVE`] (the
    /// steepest tier such a move can reach).
    pub b: Decimal,
    /// Maintenance margin per unit of price move, for a move of any size (the steepest tier):
    /// the distance bound's shocks reach beyond [`MAX_MOVE`].
    pub b_any: Decimal,
    /// Maintenance-margin jumps the move may cross, whatever its size.
    pub c: Decimal,
    /// The price the slot was valued at.
    pub price: Decimal,
    /// `|equity| + |MM|` of the slot (scales the rounding margin).
    pub magnitude: Decimal,
}

/// The fractional move `δ` every price may make (strictly inside `p·(1 ± δ)`) without the
/// ratio `MM / E` leaving `range`; `None` when no positive move is safe or a figure overflows.
/// Pure: this is the whole of the maths of the index.
pub fn allowed_move(
    equity: Decimal,
    mm: Decimal,
    terms: &[Term],
    range: QuietRange,
) -> Option<Decimal> {
    allowed_move_with(equity, mm, terms, range, &mut vec![0.0; terms.len()])
}

/// [`allowed_move`], also raising `coef[j]` (one per term) to at least `wⱼ / slack` on every
/// side, rounded up, so that **any** moves with `Σⱼ coefⱼ·|Δpⱼ|/pⱼ < 1` keep the ratio in
/// `range` — the budget [`respread`] shares out again when one price used part of it.
pub fn allowed_move_with(
    equity: Decimal,
    mm: Decimal,
    terms: &[Term],
    range: QuietRange,
    coef: &mut [f64],
) -> Option<Decimal> {
    let mut magnitude = equity.abs().checked_add(mm.abs())?;
    let mut jumps = Decimal::ZERO;
    for t in terms {
        magnitude = magnitude.checked_add(t.magnitude)?;
        jumps = jumps.checked_add(t.c)?;
    }
    let n = Decimal::from(terms.len() as u64 + 1);
    let mut side = |level: Decimal, slack: Decimal| -> Option<Decimal> {
        // The cached figures are rounded to 12 places (at most 10⁻¹² per slot and figure,
        // before and after); Decimal's own rounding is ~10⁻²⁸ relative. Both are far inside
        // this margin.
        let scale = level.checked_add(Decimal::ONE)?;
        let margin = magnitude
            .checked_mul(Decimal::new(1, 9))?
            .checked_add(n.checked_mul(Decimal::new(1, 10))?)?
            .checked_mul(scale)?;
        let slack = slack.checked_sub(jumps)?.checked_sub(margin)?;
        if slack <= Decimal::ZERO {
            return None;
        }
        let mut weight = Decimal::ZERO;
        let slack_f = margin::fast_f64(slack);
        for (j, t) in terms.iter().enumerate() {
            let w = level
                .checked_mul(t.a)?
                .checked_add(t.b)?
                .checked_mul(t.price)?;
            weight = weight.checked_add(w)?;
            raise(coef, j, w, slack_f);
        }
        if weight <= Decimal::ZERO {
            return Some(MAX_MOVE);
        }
        Some(slack.checked_div(weight)?.min(MAX_MOVE))
    };
    let mut delta = MAX_MOVE;
    if let Some(u) = range.ceiling {
        let slack = u.checked_mul(equity)?.checked_sub(mm)?;
        delta = delta.min(side(u, slack)?);
    }
    if let Some(d) = range.floor.filter(|d| *d > Decimal::ZERO) {
        // `MM − D·E > 0` implies `ratio ≥ D` only while there is exposure: with `MM = 0` the
        // ratio is 0 whatever the equity (`MarginRatio::compute`). A band keeps every price
        // positive, so a positive MM stays positive inside it; with no MM, no band.
        if mm <= Decimal::ZERO {
            return None;
        }
        let slack = mm.checked_sub(d.checked_mul(equity)?)?;
        delta = delta.min(side(d, slack)?);
    }
    let delta = delta.checked_mul(Decimal::new(999_999, 6))?;
    (delta > Decimal::ZERO).then_some(delta)
}

/// [`allowed_move_with`] in `f64`, never larger than it, for the index's own bands (the
/// `Decimal` definition stays the reference; the property test `f64_move_never_exceeds_decimal`
/// compares them). Every sum here but the slack has terms of one sign (sensitivities, prices
/// and levels are ≥ 0), so `f64` is within a few ulps of them; the slack may cancel, and its
/// error is at most a few ulps of `scale·magnitude + jumps`. The slack is lowered by 10⁻¹² of
/// that and the weight raised by 10⁻¹², thousands of times the rounding (inputs within 8 ulps,
/// [`margin::fast_f64`]) — so this `δ` is at most the `Decimal` one, below it by at most a
/// thousandth of the definition's own safety margin, and costs no `Decimal` arithmetic (about a fifth of a woken account's re-banding was). The
/// coefficients are raised as [`allowed_move_with`] raises them, from the same conservative
/// slack and weights.
pub fn allowed_move_f64(
    equity: Decimal,
    mm: Decimal,
    terms: &[Term],
    range: QuietRange,
    coef: &mut [f64],
) -> Option<f64> {
    /// Relative allowance for `f64` rounding (see above).
    const ROUNDING: f64 = 1e-12;
    let f = margin::fast_f64;
    let (e, m) = (f(equity)?, f(mm)?);
    let mut magnitude = e.abs() + m.abs();
    let mut jumps = 0.0;
    for t in terms {
        magnitude += f(t.magnitude)?;
        jumps += f(t.c)?;
    }
    // Where the `Decimal` sums would overflow, there is no band either.
    if !(magnitude < 1e27 && jumps < 1e27) {
        return None;
    }
    let n = (terms.len() + 1) as f64;
    let mut side = |level: Decimal, slack: f64| -> Option<f64> {
        let level = f(level)?;
        let scale = level + 1.0;
        let margin = (magnitude * 1e-9 + n * 1e-10) * scale;
        let slack = slack - jumps - margin - ROUNDING * (scale * magnitude + jumps);
        if !slack.is_finite() || slack <= 0.0 {
            return None;
        }
        let mut weight = 0.0;
        for (j, t) in terms.iter().enumerate() {
            let w = (level * f(t.a)? + f(t.b)?) * f(t.price)? * (1.0 + ROUNDING);
            weight += w;
            raise_f64(coef, j, w, slack);
        }
        let weight = weight * (1.0 + ROUNDING);
        if !weight.is_finite() {
            return None;
        }
        if weight <= 0.0 {
            return Some(MAX_MOVE_F64);
        }
        Some((slack / weight * (1.0 - ROUNDING)).min(MAX_MOVE_F64))
    };
    let mut delta = MAX_MOVE_F64;
    if let Some(u) = range.ceiling {
        let slack = f(u)? * e - m;
        delta = delta.min(side(u, slack)?);
    }
    if let Some(d) = range.floor.filter(|d| *d > Decimal::ZERO) {
        // As in `allowed_move_with`: with no MM, no band.
        if mm <= Decimal::ZERO {
            return None;
        }
        let slack = m - f(d)? * e;
        delta = delta.min(side(d, slack)?);
    }
    let delta = delta * 0.999_999 * (1.0 - ROUNDING);
    (delta > 0.0 && delta.is_finite()).then_some(delta)
}

/// [`MAX_MOVE`] in `f64` (exact: one half).
const MAX_MOVE_F64: f64 = 0.5;

/// [`raise`] of a weight already in `f64` (infinite when `w` is not finite or `slack` is not
/// positive).
fn raise_f64(coef: &mut [f64], j: usize, w: f64, slack: f64) {
    let Some(c) = coef.get_mut(j) else { return };
    let q = if slack > 0.0 && w.is_finite() {
        // Each conversion errs by at most 8 ulps and the division by one: 10⁻⁹ covers them.
        w / slack * (1.0 + 1e-9)
    } else {
        f64::INFINITY
    };
    let q = if q.is_nan() { f64::INFINITY } else { q };
    if q > *c {
        *c = q;
    }
}

/// The exact band `(lo, hi)` of a price for a move `δ`, rounded inwards; `None` when empty.
/// The index builds its bands in `f64` ([`band_around`]); tests check those lie inside this.
#[cfg(test)]
pub fn band(price: Decimal, delta: Decimal) -> Option<(Decimal, Decimal)> {
    let lo = price
        .checked_mul(Decimal::ONE.checked_sub(delta)?)?
        .round_dp_with_strategy(
            BAND_SCALE,
            rust_decimal::RoundingStrategy::ToPositiveInfinity,
        );
    let hi = price
        .checked_mul(Decimal::ONE.checked_add(delta)?)?
        .round_dp_with_strategy(
            BAND_SCALE,
            rust_decimal::RoundingStrategy::ToNegativeInfinity,
        );
    (lo < price && price < hi).then_some((lo, hi))
}

/// Raises `coef[j]` to `w / slack` rounded up (infinite when a figure has no `f64`); `slack`
/// is converted once by the caller ([`margin::fast_f64`]).
pub(crate) fn raise(coef: &mut [f64], j: usize, w: Decimal, slack: Option<f64>) {
    // A figure without an `f64` (NaN, or no slack) raises the coefficient to infinity.
    raise_f64(
        coef,
        j,
        margin::fast_f64(w).unwrap_or(f64::NAN),
        slack.unwrap_or(0.0),
    );
}

/// The widest half-width (a fraction of the anchor) a band may have.
const MAX_HALF: f64 = 0.499_999;

/// One instrument of a banded account, as [`respread`] sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budgeted {
    /// The price the account was valued at (`f64`: within 2⁻⁵³ of it).
    pub anchor: f64,
    /// The instrument's share of the budget per unit of relative move ([`allowed_move_with`]).
    pub coef: f64,
    /// The current price (`f64`).
    pub price: f64,
    /// Whether the current price left the instrument's band (it gets more of what is left).
    pub left: bool,
}

/// New half-widths `hⱼ` (fractions of each anchor) for an account whose band a price left,
/// when its prices used only part of the budget: every `hⱼ` covers the current deviation
/// `dⱼ = |pⱼ − anchorⱼ| / anchorⱼ` and `Σ coefⱼ·hⱼ ≤ 1 − 10⁻⁹`, so a band of `anchorⱼ·(1 ± hⱼ)`
/// keeps the account's state exactly as its first band did (module docs) — without valuing
/// it. What is left of the budget goes three parts to the instruments that left their band
/// for one to the others, as the same relative move. `None` when the budget is spent (the
/// account must be valued). Pure.
pub fn respread(slots: &[Budgeted]) -> Option<Vec<f64>> {
    let mut used = 0.0f64;
    let mut dev = Vec::with_capacity(slots.len());
    for s in slots {
        if !(s.anchor > 0.0 && s.coef >= 0.0 && s.coef.is_finite() && s.price.is_finite()) {
            return None;
        }
        // Rounded up well past the few ulps of error of the `f64` figures.
        let d = (s.price - s.anchor).abs() / s.anchor * (1.0 + 1e-12) + 1e-14;
        if d >= MAX_HALF {
            return None;
        }
        used += s.coef * d;
        dev.push(d);
    }
    let room = 1.0 - 1e-9 - used * (1.0 + 1e-12);
    if room.is_nan() || room <= 0.0 {
        return None;
    }
    let weight = |s: &Budgeted| if s.left { 3.0 } else { 1.0 };
    let denom: f64 = slots.iter().map(|s| weight(s) * s.coef).sum();
    let h: Vec<f64> = slots
        .iter()
        .zip(dev)
        .map(|(s, d)| {
            let r = if denom > 0.0 {
                room * weight(s) / denom * (1.0 - 1e-12)
            } else {
                MAX_HALF
            };
            (d + r).min(MAX_HALF)
        })
        .collect();
    Some(h)
}

/// The fixed-point band `anchor·(1 ± h)`, shrunk inwards past the `f64` rounding; `None` when
/// it does not fit or is empty.
fn band_around(anchor: f64, h: f64) -> Option<FixedBand> {
    let scale = 10f64.powi(BAND_SCALE as i32);
    let lo = anchor * (1.0 - h) * (1.0 + 1e-12) * scale;
    let hi = anchor * (1.0 + h) * (1.0 - 1e-12) * scale;
    if !(lo > 0.0 && hi.is_finite()) {
        return None;
    }
    FixedBand::from_units(lo.ceil(), hi.floor())
}

/// One instrument's band, `anchor·(1 ± half)` (through [`band_around`], once), kept as the
/// codes of its ends ([`FixedBand::codes`]: the store's entries are found again from them, and
/// the band is not converted from `f64` again each time it is looked at — a woken account's
/// bands are read four or five times a step), and its share of the account's budget.
#[derive(Clone, Copy, Debug)]
struct Banded {
    /// The price the account was valued at (`f64`: within 2⁻⁵³ of it).
    anchor: f64,
    /// See [`Budgeted::coef`], rounded up to an `f32` ([`f32_up`]).
    coef: f32,
    /// The band's ends, coded.
    codes: (u32, u32),
}

impl Banded {
    /// The band `anchor·(1 ± half)` for `price` strictly inside it; `None` when there is none.
    fn new(anchor: f64, half: f64, coef: f64, price: PriceKey) -> Option<Self> {
        let band = band_around(anchor, half).filter(|band| band.holds(price))?;
        Some(Banded {
            anchor,
            coef: f32_up(coef),
            codes: band.codes(),
        })
    }
}

/// `x` as the nearest `f32` not below it. A budget coefficient rounded up only narrows the
/// bands [`respread`] gives (each instrument's share of the move is counted as a little
/// larger), so an account wakes earlier, never later; it costs half the bytes of an `f64`.
/// Infinite past `f32::MAX` and NaN for NaN: [`respread`] then declines and the account is
/// valued.
fn f32_up(x: f64) -> f32 {
    let c = x as f32;
    if f64::from(c) < x { c.next_up() } else { c }
}

/// One moving instrument of a tracked account and, while the account is banded, its band
/// ([`Banded`] flattened: 24 bytes, one array per account; an eager account's band fields are
/// zero, or the old band's, which the store still holds until the account is re-banded or the
/// next flush — see `DistanceIndex::unbanded`).
#[derive(Clone, Copy, Debug)]
struct Held {
    anchor: f64,
    codes: (u32, u32),
    coef: f32,
    instr: InstrumentIdx,
}

const _: () = assert!(std::mem::size_of::<Held>() == 24);

impl Held {
    fn eager(instr: InstrumentIdx) -> Self {
        Held {
            anchor: 0.0,
            codes: (0, 0),
            coef: 0.0,
            instr,
        }
    }

    fn with(instr: InstrumentIdx, b: &Banded) -> Self {
        Held {
            anchor: b.anchor,
            codes: b.codes,
            coef: b.coef,
            instr,
        }
    }

    fn band(&self) -> FixedBand {
        FixedBand::from_codes(self.codes)
    }
}

/// An account as [`DistanceIndex::replace`] takes it: its moving instruments (ascending) and
/// whether they carry bands.
struct Tracked {
    held: Box<[Held]>,
    banded: bool,
}

impl Tracked {
    fn eager(instrs: &[InstrumentIdx]) -> Self {
        Tracked {
            held: instrs.iter().map(|i| Held::eager(*i)).collect(),
            banded: false,
        }
    }
}

/// Per instrument, the accounts a tick must wake. Owned by the engine task.
pub struct DistanceIndex {
    sens: Vec<Sensitivity>,
    store: Store,
    /// Per account key, its moving instruments and their bands (one allocation per account).
    accounts: Vec<Option<Box<[Held]>>>,
    /// Per account key, one bit: banded (its bands are in the store) or eager.
    banded_bits: Vec<u64>,
    banded: usize,
    /// The accounts whose band a price of this step left, until [`DistanceIndex::settle`].
    leaving: Vec<AccountKey>,
    /// Accounts re-spread (given new bands without a valuation) by the last settle.
    last_respread: usize,
    /// Accounts [`DistanceIndex::settle`] made eager whose bands the store still holds (their
    /// [`Held`] keep the codes): their entries are changed once, when the step re-bands them
    /// (out of the old bands, into the new), not twice (out of the bands into the eager set,
    /// then out of it again) — one rebuild of the sets per correlated step instead of two.
    /// Queued before any flush. In key order; an entry is taken (`false`) when its account is
    /// re-banded.
    unbanded: Vec<(AccountKey, bool)>,
}

impl DistanceIndex {
    /// An empty index over the map's instruments.
    pub fn new(table: &InstrumentTable) -> Self {
        DistanceIndex {
            sens: table.iter().map(sensitivity).collect(),
            store: Store::new(table.len()),
            accounts: Vec::new(),
            banded_bits: Vec::new(),
            banded: 0,
            leaving: Vec::new(),
            last_respread: 0,
            unbanded: Vec::new(),
        }
    }

    /// An index tracking every account of the map (all eager until evaluated and re-banded).
    pub fn for_map(map: &AccountMap) -> Self {
        let mut index = DistanceIndex::new(&map.instruments());
        for key in map.keys() {
            let instrs = map.read_key(key, |v| index.moving_instruments(v));
            index.replace(key, instrs.map(|i| Tracked::eager(&i)));
        }
        index.flush();
        index
    }

    fn is_banded(&self, key: AccountKey) -> bool {
        let k = key as usize;
        self.banded_bits
            .get(k / 64)
            .is_some_and(|w| (w >> (k % 64)) & 1 == 1)
    }

    fn set_banded(&mut self, key: AccountKey, banded: bool) {
        let k = key as usize;
        if self.banded_bits.len() <= k / 64 {
            if !banded {
                return;
            }
            self.banded_bits.resize(k / 64 + 1, 0);
        }
        if let Some(w) = self.banded_bits.get_mut(k / 64) {
            if banded {
                *w |= 1 << (k % 64);
            } else {
                *w &= !(1 << (k % 64));
            }
        }
    }

    /// Applies every queued change to the store: first queues the changes of the accounts
    /// settled eager and not re-banded since (out of their bands, into the eager set).
    fn flush(&mut self) {
        for (key, stored) in std::mem::take(&mut self.unbanded) {
            if let (true, Some(Some(held))) = (stored, self.accounts.get(key as usize)) {
                for h in held.iter() {
                    self.store.band_coded(h.instr, key, h.codes, false);
                    self.store.eager(h.instr, key, true);
                }
            }
        }
        self.store.flush();
    }

    /// Takes the new terms of the instrument at `idx` (its tiers set the bound; see
    /// [`crate::engine::Engine::replace_instruments`]). Re-band its holders afterwards.
    pub fn set_terms(&mut self, idx: InstrumentIdx, inst: &Instrument) {
        if let Some(s) = self.sens.get_mut(idx as usize) {
            *s = sensitivity(inst);
        }
    }

    /// Accounts tracked, and of those, banded.
    pub fn counts(&self) -> (usize, usize) {
        let tracked = self.accounts.iter().filter(|a| a.is_some()).count();
        (tracked, self.banded)
    }

    /// The band of an account on an instrument, if it has one.
    pub fn band_of(
        &self,
        key: AccountKey,
        instrument: InstrumentIdx,
    ) -> Option<(Decimal, Decimal)> {
        if !self.is_banded(key) {
            return None;
        }
        let held = self.accounts.get(key as usize)?.as_ref()?;
        let i = held.binary_search_by_key(&instrument, |h| h.instr).ok()?;
        Some(held.get(i)?.band().to_decimal())
    }

    /// (Re)registers an account after it was created or changed: it becomes eager on the
    /// moving instruments it now holds until it is re-banded. Forgets it when it is gone.
    pub fn track(&mut self, map: &AccountMap, key: AccountKey) {
        self.flush();
        let instrs = map.read_key(key, |v| self.moving_instruments(v));
        self.replace(key, instrs.map(|i| Tracked::eager(&i)));
        self.flush();
    }

    /// Drops an account (after it was removed from the map).
    pub fn forget(&mut self, key: AccountKey) {
        self.flush();
        self.replace(key, None);
        self.flush();
    }

    fn moving_instruments(&self, v: &AccountView<'_>) -> Vec<InstrumentIdx> {
        let mut instrs: Vec<InstrumentIdx> = v
            .slot_instruments()
            .filter(|i| self.sens.get(*i as usize) != Some(&Sensitivity::Fixed))
            .collect();
        instrs.sort_unstable();
        instrs.dedup();
        instrs
    }

    /// Queues the account's entries out and its new ones (`None`: forgotten) in. Between two
    /// flushes of the store, call it at most once per account (the store queues net changes).
    fn replace(&mut self, key: AccountKey, new: Option<Tracked>) {
        let i = key as usize;
        if new.is_some() && self.accounts.len() <= i {
            self.accounts.resize_with(i + 1, || None);
        }
        let Some(slot) = self.accounts.get_mut(i) else {
            return;
        };
        if let Some(old) = slot.take() {
            let was_banded = self.is_banded(key);
            // Settled eager this step: the store still holds its bands (in key order: settle
            // unbands in key order, and re-banding visits accounts in key order).
            let stored = !was_banded
                && self
                    .unbanded
                    .binary_search_by_key(&key, |(k, _)| *k)
                    .ok()
                    .and_then(|at| self.unbanded.get_mut(at))
                    .is_some_and(|(_, stored)| std::mem::take(stored));
            if was_banded {
                self.banded = self.banded.saturating_sub(1);
                self.set_banded(key, false);
            }
            for h in old.iter() {
                if was_banded || stored {
                    self.store.band_coded(h.instr, key, h.codes, false);
                } else {
                    self.store.eager(h.instr, key, false);
                }
            }
        }
        let Some(new) = new else {
            return;
        };
        for h in new.held.iter() {
            if new.banded {
                self.store.band_coded(h.instr, key, h.codes, true);
            } else {
                self.store.eager(h.instr, key, true);
            }
        }
        if new.banded {
            self.banded += 1;
            self.set_banded(key, true);
        }
        if let Some(slot) = self.accounts.get_mut(i) {
            *slot = Some(new.held);
        }
    }

    /// The accounts a new `price` of `instrument` may change: every eager holder is appended
    /// to `out` (unsorted; an account may appear more than once); the banded holders whose
    /// band the price leaves are kept for [`DistanceIndex::settle`], which must follow the
    /// step's last `wake`, before anything else.
    pub fn wake(&mut self, instrument: InstrumentIdx, price: Decimal, out: &mut Vec<AccountKey>) {
        self.flush();
        self.store
            .wake(instrument, PriceKey::new(price), out, &mut self.leaving);
    }

    /// After the step's last [`DistanceIndex::wake`], with every price of the step set in the
    /// map: decides each account whose band a price left. When its prices used only part of
    /// its budget ([`respread`]), it gets new bands around the same anchors and is not
    /// valued; otherwise it becomes eager and is appended to `out`. Then applies the queued
    /// changes. Returns the number re-spread.
    pub fn settle(&mut self, map: &AccountMap, out: &mut Vec<AccountKey>) -> usize {
        let mut leaving = std::mem::take(&mut self.leaving);
        leaving.sort_unstable();
        leaving.dedup();
        // The new bands are computed first (reads only; on every core when many accounts
        // leave, as in a correlated move), then stored in key order.
        let found: Vec<Option<Vec<Banded>>> = if leaving.len() >= crate::engine::par::PARALLEL_MIN {
            let prices = Prices::all(map);
            let this = &*self;
            crate::engine::par::map_in_order(&leaving, |key| {
                this.respread_bands(|idx| prices.peek(idx), *key)
            })
        } else {
            let mut prices = Prices::default();
            (leaving.iter())
                .map(|key| self.respread_bands(|idx| prices.get(map, idx), *key))
                .collect()
        };
        let mut respread = 0;
        for (key, new) in leaving.iter().zip(found) {
            match new {
                Some(new) => {
                    self.rebanded(*key, new);
                    respread += 1;
                }
                None => {
                    self.unband(*key);
                    out.push(*key);
                }
            }
        }
        leaving.clear();
        self.leaving = leaving;
        // Not flushed here: the step re-bands the accounts it made eager and flushes once
        // (`unbanded`); the next `wake` flushes what is left.
        self.last_respread = respread;
        respread
    }

    /// Applies what is queued, then checks that the store holds exactly what the accounts'
    /// records say: each banded account's bands, each eager account in the eager sets (tests).
    #[cfg(test)]
    pub(crate) fn check_store(&mut self) -> Result<(), String> {
        self.flush();
        for idx in 0..self.sens.len() as InstrumentIdx {
            let (mut eager, mut banded) = (Vec::new(), Vec::new());
            for (key, held) in self.accounts.iter().enumerate() {
                let Some(held) = held else { continue };
                let Ok(at) = held.binary_search_by_key(&idx, |h| h.instr) else {
                    continue;
                };
                let key = key as AccountKey;
                match held.get(at) {
                    Some(h) if self.is_banded(key) => banded.push((key, h.codes)),
                    _ => eager.push(key),
                }
            }
            if !self.store.holds_exactly(idx, eager, &banded) {
                return Err(format!(
                    "instrument {idx}: the store is not the accounts' records"
                ));
            }
        }
        Ok(())
    }

    /// Accounts re-spread by the last [`DistanceIndex::settle`].
    pub fn last_respread(&self) -> usize {
        self.last_respread
    }

    /// New bands for a banded account whose prices used only part of its budget (the same
    /// anchors, the budget left shared out again, [`respread`]); `None` when it must be
    /// valued.
    fn respread_bands(
        &self,
        mut price: impl FnMut(InstrumentIdx) -> Option<(PriceKey, f64)>,
        key: AccountKey,
    ) -> Option<Vec<Banded>> {
        // Only banded accounts leave; an eager one cannot get here.
        if !self.is_banded(key) {
            return None;
        }
        let held = self.accounts.get(key as usize)?.as_ref()?;
        let mut slots = Vec::with_capacity(held.len());
        for b in held.iter() {
            let (key, price) = price(b.instr)?;
            slots.push(Budgeted {
                anchor: b.anchor,
                coef: f64::from(b.coef),
                price,
                left: !b.band().holds(key),
            });
        }
        let h = respread(&slots)?;
        let mut new = Vec::with_capacity(held.len());
        for (b, h) in held.iter().zip(h) {
            // The current price must be strictly inside its new band, exactly.
            let (price, _) = price(b.instr)?;
            new.push(Banded::new(b.anchor, h, f64::from(b.coef), price)?);
        }
        Some(new)
    }

    /// Queues the re-spread bands of [`DistanceIndex::respread_bands`] in place of the old.
    fn rebanded(&mut self, key: AccountKey, new: Vec<Banded>) {
        if !self.is_banded(key) {
            return;
        }
        let Some(Some(held)) = self.accounts.get_mut(key as usize) else {
            return;
        };
        for (old, new) in held.iter_mut().zip(new.iter()) {
            self.store.band_coded(old.instr, key, old.codes, false);
            self.store.band_coded(old.instr, key, new.codes, true);
            *old = Held::with(old.instr, new);
        }
    }

    /// Makes a banded account eager; nothing when it is not banded. Its store entries change
    /// when it is re-banded or at the next flush, whichever comes first (`unbanded`).
    fn unband(&mut self, key: AccountKey) {
        if !self.is_banded(key) || !matches!(self.accounts.get(key as usize), Some(Some(_))) {
            return;
        }
        self.set_banded(key, false);
        self.banded = self.banded.saturating_sub(1);
        // Settle unbands in key order; kept in key order whatever the caller.
        match self.unbanded.last() {
            Some((last, _)) if *last > key => {
                let at = self.unbanded.partition_point(|(k, _)| *k < key);
                self.unbanded.insert(at, (key, true));
            }
            _ => self.unbanded.push((key, true)),
        }
    }

    /// Gives the account a band from its current figures and monitor state, or leaves it
    /// eager when none is safe. Call it after the monitor evaluated the account.
    pub fn rebuild(&mut self, map: &AccountMap, monitor: &Monitor, key: AccountKey) {
        self.rebuild_many(map, monitor, vec![key]);
    }

    /// [`DistanceIndex::rebuild`] for many accounts at once: their sets are edited once, in
    /// bulk when the accounts are a large share of an instrument's holders.
    pub fn rebuild_many(&mut self, map: &AccountMap, monitor: &Monitor, mut keys: Vec<AccountKey>) {
        // What settle queued (re-spread bands) is applied first, so that each account's
        // entries change once per flush; the accounts it made eager keep their stored bands
        // until `replace` moves them out (`unbanded`).
        self.store.flush();
        keys.sort_unstable();
        keys.dedup();
        // The new bands are computed on every core when there are many (reads only), then
        // stored in key order. The instrument table is loaded once, not per account (see
        // `AccountMap::read_key_in`).
        let table = map.instruments();
        // Many accounts valued at the step's prices: each price's keys read once, not per
        // account and instrument (two `Decimal` roundings each).
        let prices = if keys.len() >= PRICES_READ_MIN {
            Prices::all(map)
        } else {
            Prices::default()
        };
        let found = crate::engine::par::map_in_order(&keys, |key| {
            let range = monitor.quiet_range(map, *key);
            let shock = monitor.shock_quiet(map, *key);
            map.read_key_in(&table, *key, |v| {
                let instrs = self.moving_instruments(v);
                match range.and_then(|r| self.bands_for(v, &instrs, r, shock, &prices)) {
                    Some(held) => Tracked { held, banded: true },
                    None => Tracked::eager(&instrs),
                }
            })
        });
        for (key, found) in keys.into_iter().zip(found) {
            self.replace(key, found);
        }
        self.flush();
    }

    /// The bands of a complete account, one record per moving instrument (`instrs` order).
    fn bands_for(
        &self,
        v: &AccountView<'_>,
        instrs: &[InstrumentIdx],
        range: QuietRange,
        shock: Option<ShockQuiet>,
        prices: &Prices,
    ) -> Option<Box<[Held]>> {
        if !v.complete() {
            return None;
        }
        let table = v.instruments_table();
        let mut terms: Vec<Term> = Vec::with_capacity(instrs.len() + 2);
        // Per term, its instrument's position in `instrs`.
        let mut of: Vec<usize> = Vec::with_capacity(instrs.len() + 2);
        let mut at: Vec<Option<Decimal>> = vec![None; instrs.len()];
        // Taken out of the slots once for the terms and the shock's move.
        let slots: Vec<SlotValuation> = v.valuation().collect();
        for s in &slots {
            let sens = self.sens.get(s.instrument as usize)?;
            if *sens == Sensitivity::Fixed {
                continue;
            }
            let price = s.at?;
            let i = instrs.binary_search(&s.instrument).ok()?;
            match at.get_mut(i)? {
                Some(p) if *p != price => return None,
                slot => *slot = Some(price),
            }
            let floats = table.floats(s.instrument);
            terms.push(term(sens, table.get(s.instrument)?, floats, s, price)?);
            of.push(i);
        }
        let mut coef = vec![0.0; terms.len()];
        let mut half =
            allowed_move_f64(v.equity(), v.maintenance_margin(), &terms, range, &mut coef)?;
        if let Some(q) = shock {
            half = half.min(margin::fast_f64(distance::allowed_move(
                v, &slots, &terms, q, &mut coef,
            )?)?);
        }
        let mut per = vec![0.0f64; instrs.len()];
        for (i, c) in of.into_iter().zip(coef) {
            if let Some(p) = per.get_mut(i) {
                *p += c;
            }
        }
        // A few ulps off at most: the band is shrunk by 10⁻¹² of the anchor (`band_around`).
        let half = half.min(MAX_HALF);
        let mut held = Vec::with_capacity(instrs.len());
        for ((p, coef), idx) in at.into_iter().zip(per).zip(instrs) {
            let (key, anchor) = prices.keys_of(*idx, p?)?;
            // The sum of rounded-up terms, rounded up once more.
            let band = Banded::new(anchor, half, coef * (1.0 + 1e-12), key)?;
            held.push(Held::with(*idx, &band));
        }
        Some(held.into_boxed_slice())
    }
}

/// Accounts re-banded together from which [`DistanceIndex::rebuild_many`] reads every price's
/// keys first.
const PRICES_READ_MIN: usize = 64;

/// The step's current prices, read from the map once per instrument.
#[derive(Default)]
struct Prices(Vec<Option<Option<(Decimal, PriceKey, f64)>>>);

impl Prices {
    /// Every instrument's price, read at once (for reads shared between threads).
    fn all(map: &AccountMap) -> Self {
        let mut p = Prices::default();
        for idx in 0..map.instruments().len() {
            if let Ok(idx) = InstrumentIdx::try_from(idx) {
                p.get(map, idx);
            }
        }
        p
    }

    /// A price read by [`Prices::all`] (or an earlier [`Prices::get`]).
    fn peek(&self, idx: InstrumentIdx) -> Option<(PriceKey, f64)> {
        (*self.0.get(idx as usize)?)?.map(|(_, k, f)| (k, f))
    }

    /// The keys of `price` for instrument `idx`: read from what [`Prices::all`] read when that
    /// is the same `Decimal` (same value and scale, so the same keys and `f64`), else computed.
    fn keys_of(&self, idx: InstrumentIdx, price: Decimal) -> Option<(PriceKey, f64)> {
        match self.0.get(idx as usize).copied().flatten().flatten() {
            Some((p, k, f)) if p == price && p.scale() == price.scale() => Some((k, f)),
            _ => Some((PriceKey::new(price), price.to_f64()?)),
        }
    }

    fn get(&mut self, map: &AccountMap, idx: InstrumentIdx) -> Option<(PriceKey, f64)> {
        let i = idx as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, None);
        }
        let slot = self.0.get_mut(i)?;
        if slot.is_none() {
            *slot = Some(map.price_at(idx).and_then(|p| {
                let f = p.to_f64()?;
                Some((p, PriceKey::new(p), f))
            }));
        }
        (*slot)?.map(|(_, k, f)| (k, f))
    }
}

/// The largest maintenance rate of the tiers a linear position of `notional` reaches while its
/// price moves by less than [`MAX_MOVE`] either way (`MM` is continuous across the venues' tier
/// boundaries, so its slope there is at most that rate times the size; jumps are paid apart).
fn reachable_mmr(tiers: &[MarginTier], notional: Decimal) -> Option<Decimal> {
    let lo = notional.checked_mul(Decimal::ONE.checked_sub(MAX_MOVE)?)?;
    let hi = notional.checked_mul(Decimal::ONE.checked_add(MAX_MOVE)?)?;
    let (i, _) = margin::select_tier(tiers, lo)?;
    let (j, _) = margin::select_tier(tiers, hi)?;
    tiers.get(i..=j)?.iter().map(|t| t.mmr).max()
}

/// [`reachable_mmr`] of a position of `size` at `price`, read off the tiers in `f64` where
/// they are kept: the highest `mmr` over [`TierFloats::tier_range`], which holds every tier
/// the exact selection reaches, so the rate is never lower than [`reachable_mmr`]'s (a band
/// never wider) and the same unless a floor lies within 10⁻⁹ of a move's end. The rate is a
/// `Decimal` of the table either way; only the two `Decimal` products and tier selections are
/// saved (~a sixth of a woken account's re-banding). `None` as [`reachable_mmr`] (the exact
/// one runs wherever the `f64`s cannot decide, overflow included).
fn reachable_mmr_at(
    tiers: &[MarginTier],
    floats: Option<&TierFloats>,
    size: Decimal,
    price: Decimal,
) -> Option<Decimal> {
    // Cached tiers are the table's own (the instrument table sets both together, and the
    // shock filter checks the same cache against its table in every test run); a cache
    // without the table's tier count is not used.
    let floats = floats.filter(|fl| fl.len() == tiers.len());
    let range = floats.and_then(|fl| {
        let n = margin::fast_f64(size)? * margin::fast_f64(price)?;
        // Far from `Decimal`'s range: the exact product decides (and may overflow).
        if n.is_nan() || n >= 1e27 {
            return None;
        }
        fl.tier_range(n * (1.0 - MAX_MOVE_F64), n * (1.0 + MAX_MOVE_F64))
    });
    match range {
        Some((i, j)) => tiers.get(i..=j)?.iter().map(|t| t.mmr).max(),
        None => reachable_mmr(tiers, size.checked_mul(price)?),
    }
}

fn term(
    sens: &Sensitivity,
    inst: &Instrument,
    floats: Option<&TierFloats>,
    s: &SlotValuation,
    price: Decimal,
) -> Option<Term> {
    let q = s.quantity.abs();
    let (a, b, b_any, c) = match sens {
        Sensitivity::Fixed => (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO, Decimal::ZERO),
        Sensitivity::Unbounded => return None,
        Sensitivity::Collateral => {
            let hw = margin::haircut_weighted_amount(inst, s.quantity).ok()?;
            (hw.abs(), Decimal::ZERO, Decimal::ZERO, Decimal::ZERO)
        }
        Sensitivity::Linear { cs, max_mmr, jumps } => {
            let size = q.checked_mul(*cs)?;
            let c = if q.is_zero() { Decimal::ZERO } else { *jumps };
            let near = reachable_mmr_at(&inst.tiers, floats, size, price).unwrap_or(*max_mmr);
            (
                size,
                size.checked_mul(near)?,
                size.checked_mul(*max_mmr)?,
                c,
            )
        }
        Sensitivity::Inverse { cs, max_cum } => {
            let a = if q.is_zero() {
                Decimal::ZERO
            } else {
                if s.entry <= Decimal::ZERO {
                    return None;
                }
                q.checked_mul(*cs)?.checked_div(s.entry)?
            };
            (a, *max_cum, *max_cum, Decimal::ZERO)
        }
    };
    Some(Term {
        a,
        b,
        b_any,
        c,
        price,
        magnitude: s.equity.abs().checked_add(s.maintenance_margin.abs())?,
    })
}

/// Sets each changed price and brings the accounts it may change to the current prices,
/// reporting them into `touched` (cleared first), in key order, each once. `wake` is scratch
/// space. A price the map refuses is logged, counted by the map and skipped.
pub fn wake_and_value<'a>(
    map: &AccountMap,
    index: &mut DistanceIndex,
    changed: impl IntoIterator<Item = (&'a InstrumentId, Decimal)>,
    wake: &mut Vec<AccountKey>,
    touched: &mut Vec<Touched>,
) {
    touched.clear();
    wake.clear();
    for (id, price) in changed {
        match map.set_price(id, price) {
            Ok(true) => {
                if let Some(idx) = map.instruments().index(id) {
                    index.wake(idx, price, wake);
                }
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(instrument = %id, %error, "Price not applied"),
        }
    }
    let respread = index.settle(map, wake);
    metrics::counter!("liqwatch_engine_respread_accounts_total").increment(respread as u64);
    wake.sort_unstable();
    wake.dedup();
    // Valued on every core when many are woken (a correlated move), in key order.
    let valued = map.materialise_many(wake);
    touched.extend(valued.into_iter().flatten());
    metrics::counter!("liqwatch_engine_woken_accounts_total").increment(touched.len() as u64);
}

/// After the monitor evaluated `touched`: re-bands each of them.
pub fn rebuild_touched(
    map: &AccountMap,
    monitor: &Monitor,
    index: &mut DistanceIndex,
    touched: &[Touched],
) {
    index.rebuild_many(map, monitor, touched.iter().map(|t| t.key).collect());
    metrics::gauge!("liqwatch_engine_banded_accounts").set(index.banded as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn lin(q: Decimal, p: Decimal, mmr: Decimal) -> Term {
        Term {
            a: q,
            b: q * mmr,
            b_any: q * mmr,
            c: Decimal::ZERO,
            price: p,
            magnitude: Decimal::ZERO,
        }
    }

    /// A healthy account: the move allowed is the slack to the first level over the
    /// sensitivity-weighted exposure (shrunk by the safety factors), and nothing more.
    #[test]
    fn healthy_account_move_is_slack_over_weight() {
        // E = 10,000, MM = 2,000 (ratio 0.2), ceiling 0.8: slack 6,000 (less the margin).
        // One long of 2 BTC at 50,000 with max mmr 0.05: weight (0.8·2 + 0.1)·50,000 = 85,000.
        let terms = [lin(dec!(2), dec!(50000), dec!(0.05))];
        let range = QuietRange {
            floor: None,
            ceiling: Some(dec!(0.8)),
        };
        let d = allowed_move(dec!(10000), dec!(2000), &terms, range).unwrap();
        let exact = dec!(6000) / dec!(85000);
        assert!(d < exact, "{d} must be below {exact}");
        assert!(
            d > exact * dec!(0.9999),
            "{d} too conservative against {exact}"
        );
    }

    /// At the level exactly (no slack), or above it, no band: the account stays eager.
    #[test]
    fn no_slack_no_band() {
        let terms = [lin(dec!(1), dec!(100), dec!(0.01))];
        let at_level = QuietRange {
            floor: None,
            ceiling: Some(dec!(0.5)),
        };
        assert_eq!(allowed_move(dec!(100), dec!(50), &terms, at_level), None);
        assert_eq!(allowed_move(dec!(100), dec!(60), &terms, at_level), None);
        // Negative equity below a ceiling: no band either.
        assert_eq!(allowed_move(dec!(-1), dec!(1), &terms, at_level), None);
    }

    /// In warning, the floor (level − hysteresis) bounds the move too: the nearer side wins.
    #[test]
    fn floor_and_ceiling_take_the_nearer_side() {
        let terms = [lin(dec!(1), dec!(100), dec!(0))];
        // E = 100, MM = 80: ratio 0.8. Ceiling 1.0 → slack 20 over weight 100 → 0.2.
        // Floor 0.75 → slack 80 − 75 = 5 over weight 75 → 0.0667: the floor is nearer.
        let range = QuietRange {
            floor: Some(dec!(0.75)),
            ceiling: Some(dec!(1.0)),
        };
        let d = allowed_move(dec!(100), dec!(80), &terms, range).unwrap();
        assert!(d < dec!(5) / dec!(75) && d > dec!(0.066));
        // A floor at or below zero can never be crossed by a finite ratio ≥ 0.
        let only_ceiling = QuietRange {
            floor: Some(dec!(0)),
            ceiling: Some(dec!(1.0)),
        };
        let d = allowed_move(dec!(100), dec!(80), &terms, only_ceiling).unwrap();
        assert!(d > dec!(0.19) && d < dec!(0.2));
    }

    /// Tier jumps are paid out of the slack; an account with less slack than the jumps stays
    /// eager. Exposure-free accounts get the largest band.
    #[test]
    fn jumps_and_empty_exposure() {
        let mut t = lin(dec!(1), dec!(100), dec!(0));
        t.c = dec!(30);
        let range = QuietRange {
            floor: None,
            ceiling: Some(dec!(1)),
        };
        assert_eq!(allowed_move(dec!(100), dec!(80), &[t], range), None);
        t.c = dec!(10);
        let d = allowed_move(dec!(100), dec!(80), &[t], range).unwrap();
        assert!(d < dec!(0.1) && d > dec!(0.0999));
        let free = allowed_move(dec!(100), dec!(0), &[], range).unwrap();
        assert_eq!(free, MAX_MOVE * dec!(0.999999));
    }

    /// Band ends are rounded inwards and an empty band is refused.
    #[test]
    fn bands_round_inwards() {
        let (lo, hi) = band(dec!(3), dec!(0.1234567890123456789)).unwrap();
        assert!(lo >= dec!(3) * (dec!(1) - dec!(0.1234567890123456789)));
        assert!(hi <= dec!(3) * (dec!(1) + dec!(0.1234567890123456789)));
        assert!(lo.scale() <= BAND_SCALE && hi.scale() <= BAND_SCALE);
        assert_eq!(band(dec!(1), dec!(0.00000000000000000001)), None);
    }

    fn t(floor: Decimal, cap: Decimal, mmr: Decimal, cum: Decimal) -> MarginTier {
        MarginTier {
            notional_floor: floor,
            notional_cap: cap,
            mmr,
            cum,
        }
    }

    fn slot(anchor: f64, coef: f64, price: f64, left: bool) -> Budgeted {
        Budgeted {
            anchor,
            coef,
            price,
            left,
        }
    }

    proptest::proptest! {
        /// A budget coefficient kept as an `f32` is the nearest one not below the `f64` (so a
        /// re-spread counts each instrument's move as at least what it is); past `f32::MAX`
        /// it is infinite and [`respread`] declines.
        #[test]
        fn coefficients_round_up_to_the_nearest_f32(
            m in 1u64..(1 << 53),
            e in -140i32..128,
        ) {
            let x = m as f64 * 2f64.powi(e - 52);
            let c = f32_up(x);
            proptest::prop_assert!(f64::from(c) >= x, "{c} below {x}");
            proptest::prop_assert!(
                f64::from(c.next_down()) < x,
                "{c} is not the nearest f32 at or above {x}"
            );
        }
    }

    #[test]
    fn coefficients_past_f32_decline_a_respread() {
        assert_eq!(f32_up(1.0), 1.0);
        assert_eq!(f32_up(0.0), 0.0);
        assert!(f32_up(f64::from(f32::MAX) * 2.0).is_infinite());
        assert!(f32_up(f64::NAN).is_nan());
        let huge = Budgeted {
            coef: f64::from(f32_up(1e300)),
            ..slot(100.0, 1.0, 100.0, true)
        };
        assert_eq!(respread(&[huge]), None);
    }

    /// A re-spread covers every current deviation, stays within the budget, gives the
    /// instrument that left its band three times the others' share of what is left, and
    /// refuses a spent budget.
    #[test]
    fn respread_shares_what_is_left_of_the_budget() {
        // Two instruments, 10 budget units per 1 % each: 1 % on the first used 0.1 of 1.
        let slots = [
            slot(100.0, 10.0, 101.0, true),
            slot(50.0, 10.0, 50.0, false),
        ];
        let h = respread(&slots).unwrap();
        let budget: f64 = slots.iter().zip(&h).map(|(s, h)| s.coef * h).sum();
        assert!(budget <= 1.0 - 1e-9 && budget > 0.999_999, "{budget}");
        assert!(h[0] > 0.01 && h[1] > 0.0, "{h:?}");
        // Room 0.9: the first gets 3/4 of it on top of its 1 %, the second 1/4.
        assert!((h[0] - (0.01 + 0.0675)).abs() < 1e-9, "{h:?}");
        assert!((h[1] - 0.0225).abs() < 1e-9, "{h:?}");
        // Spent: 10 % on a coefficient of 10.
        assert_eq!(respread(&[slot(100.0, 10.0, 110.0, true)]), None);
        // A move the widest band cannot hold, whatever the budget.
        assert_eq!(respread(&[slot(100.0, 0.0, 151.0, true)]), None);
        // No sensitivity: the widest band.
        assert_eq!(
            respread(&[slot(100.0, 0.0, 101.0, true)]),
            Some(vec![MAX_HALF])
        );
        // Figures a band cannot be built on.
        assert_eq!(respread(&[slot(0.0, 1.0, 1.0, true)]), None);
        assert_eq!(respread(&[slot(1.0, f64::INFINITY, 1.0, true)]), None);
        assert_eq!(respread(&[slot(1.0, f64::NAN, 1.0, true)]), None);
    }

    proptest::proptest! {
        /// Every `f64` band lies inside the exact band of the same half-width around the
        /// exact anchor (so the bound holds for every price that keeps the account asleep), and
        /// holds the anchor.
        #[test]
        fn f64_bands_lie_inside_the_exact_band(
            m in 1i64..=999_999_999_999_999,
            scale in 0u32..=12,
            half_ppm in 1u32..=499_999,
        ) {
            let anchor = Decimal::new(m, scale);
            let half = Decimal::new(i64::from(half_ppm), 6);
            let Some(fixed) = band_around(anchor.to_f64().unwrap(), half.to_f64().unwrap()) else {
                return Ok(());
            };
            let (lo, hi) = fixed.to_decimal();
            let exact_lo = anchor * (Decimal::ONE - half);
            let exact_hi = anchor * (Decimal::ONE + half);
            proptest::prop_assert!(lo >= exact_lo, "{lo} < {exact_lo}");
            proptest::prop_assert!(hi <= exact_hi, "{hi} > {exact_hi}");
            proptest::prop_assert!(fixed.holds(PriceKey::new(anchor)));
            // And it gives away next to nothing: the `f64` margin (10⁻¹¹) and one step of the
            // stored code at each end (2⁻²⁵ of the end, the store's compact keys).
            let lost = (lo - exact_lo) + (exact_hi - hi);
            let step = Decimal::new(3, 8); // ≥ 2⁻²⁵
            proptest::prop_assert!(
                lost <= anchor * Decimal::new(1, 11) + (exact_lo + exact_hi) * step + Decimal::new(2, 16),
                "lost {lost} of ({exact_lo}, {exact_hi})"
            );
        }
    }

    /// A random term of an account's sensitivity (the sizes the engine sees: quantities from
    /// 10⁻⁶ to 10⁶ units, prices from 10⁻⁴ to 10⁶, rates to 0.2, jumps and magnitudes with
    /// places).
    fn any_term() -> impl proptest::strategy::Strategy<Value = Term> {
        use proptest::prelude::*;
        (
            1i64..=1_000_000_000_000,
            0u32..=6,
            1i64..=10_000_000_000,
            0u32..=4,
            0i64..=2_000,
            0i64..=5_000_000,
            0u32..=8,
        )
            .prop_map(|(q, qs, p, ps, mmr, c, cs)| {
                let q = Decimal::new(q, qs);
                let price = Decimal::new(p, ps);
                let b = q * Decimal::new(mmr, 4);
                Term {
                    a: q,
                    b,
                    b_any: b,
                    c: Decimal::new(c, cs),
                    price,
                    magnitude: (q * price * Decimal::new(11, 1)).round_dp(12),
                }
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4_000))]
        /// The index's `f64` move is never larger than the `Decimal` definition's (so never
        /// less safe), refuses no band the definition gives but at its edge, and gives away at
        /// most a thousandth of the definition's own margin; its budget coefficients are never
        /// smaller (so a re-spread never spends more than the definition allows). Accounts near
        /// their level are drawn often (`slack_ppm` small), where the slack cancels.
        #[test]
        fn f64_move_never_exceeds_decimal(
            terms in proptest::collection::vec(any_term(), 0..6),
            equity_m in -1_000_000_000_000i64..=1_000_000_000_000_000,
            equity_s in 0u32..=8,
            ratio_ppm in 0i64..=1_500_000,
            slack_ppm in proptest::prop_oneof![0i64..=20, 0i64..=2_000_000],
            floor_ppm in proptest::option::of(1i64..=900_000),
            mm_places in 0u32..=12,
        ) {
            let equity = Decimal::new(equity_m, equity_s);
            let ceiling = Decimal::new(ratio_ppm.max(1), 6);
            // MM just under the ceiling's (slack_ppm of it away) or anywhere below it.
            let mm = (ceiling * equity.abs() * (Decimal::ONE - Decimal::new(slack_ppm, 6)))
                .round_dp(mm_places);
            let range = QuietRange {
                floor: floor_ppm.map(|f| Decimal::new(f, 6)).filter(|f| *f < ceiling),
                ceiling: Some(ceiling),
            };
            let mut c_dec = vec![0.0; terms.len()];
            let mut c_f = vec![0.0; terms.len()];
            let exact = allowed_move_with(equity, mm, &terms, range, &mut c_dec);
            let fast = allowed_move_f64(equity, mm, &terms, range, &mut c_f);
            match (exact, fast) {
                (Some(d), Some(x)) => {
                    let d = d.to_f64().unwrap();
                    proptest::prop_assert!(x <= d, "f64 {x} > Decimal {d}");
                    // What it gives away: the `f64` allowance is a thousandth of the margin the
                    // definition already takes off the slack, over the binding side's weight.
                    let f = |v: Decimal| v.to_f64().unwrap();
                    let magnitude = f(equity.abs()) + f(mm.abs())
                        + terms.iter().map(|t| f(t.magnitude)).sum::<f64>();
                    let jumps: f64 = terms.iter().map(|t| f(t.c)).sum();
                    let n = (terms.len() + 1) as f64;
                    let mut given = 0.0f64;
                    for level in [range.ceiling, range.floor].into_iter().flatten() {
                        let l = f(level);
                        let margin = (magnitude * 1e-9 + n * 1e-10) * (l + 1.0);
                        let w: f64 = terms.iter().map(|t| (l * f(t.a) + f(t.b)) * f(t.price)).sum();
                        if w > 0.0 {
                            given = given.max((1.1e-3 * margin + 2e-12 * jumps) / w);
                        }
                    }
                    proptest::prop_assert!(d - x <= given + d * 1e-9, "f64 {x} ≪ Decimal {d} (allowance {given})");
                    for (a, b) in c_dec.iter().zip(&c_f) {
                        proptest::prop_assert!(b >= a, "coefficient {b} < {a}");
                        proptest::prop_assert!(a.is_infinite() || b.is_finite(), "coefficient {b} for {a}");
                    }
                }
                (None, Some(x)) => proptest::prop_assert!(false, "a band ({x}) where the definition has none"),
                // At the very edge the f64 slack may give out first: that account stays eager.
                (Some(d), None) => proptest::prop_assert!(d < Decimal::new(1, 9), "no band where the definition gives {d}"),
                (None, None) => {}
            }
        }
    }

    /// The MM slope a band pays for is the steepest tier a move of less than [`MAX_MOVE`]
    /// reaches from the position's notional, not the table's last (50 % on Binance's BTCUSDT).
    #[test]
    fn mm_slope_is_the_steepest_reachable_tier() {
        let tiers = [
            t(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
            t(dec!(50000), dec!(500000), dec!(0.005), dec!(50)),
            t(dec!(500000), dec!(1000000), dec!(0.5), dec!(247550)),
        ];
        // 30k: 15k–45k, the first tier only.
        assert_eq!(reachable_mmr(&tiers, dec!(30000)), Some(dec!(0.004)));
        // 40k: 20k–60k crosses into the second.
        assert_eq!(reachable_mmr(&tiers, dec!(40000)), Some(dec!(0.005)));
        // 400k: up to 600k, the last.
        assert_eq!(reachable_mmr(&tiers, dec!(400000)), Some(dec!(0.5)));
        assert_eq!(reachable_mmr(&[], dec!(1)), None);
    }

    /// The shipped presets' linear contracts with plain margin (the tables bands are built
    /// on), in id order; read once.
    fn preset_linears() -> &'static [Instrument] {
        static PRESETS: std::sync::OnceLock<Vec<Instrument>> = std::sync::OnceLock::new();
        PRESETS.get_or_init(|| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
            let mut v: Vec<Instrument> = crate::sources::files::load_instruments(&path)
                .expect("the shipped presets load")
                .into_values()
                .filter(|i| {
                    i.kind.is_contract()
                        && !i.kind.is_inverse()
                        && i.tiers.len() > 1
                        && i.margin.is_plain()
                })
                .collect();
            v.sort_by(|a, b| a.id.cmp(&b.id));
            v
        })
    }

    fn btcusdt() -> Instrument {
        preset_linears()
            .iter()
            .find(|i| i.id.as_str() == "BTCUSDT-PERP")
            .expect("Binance's BTCUSDT in the presets")
            .clone()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4_000))]
        /// The rate read off the `f64` tiers is never below the exact one (a band is never
        /// wider), and equal unless a floor lies within 10⁻⁸ of a move's end, on every linear
        /// table of the shipped presets; sizes and prices are drawn anywhere and onto (or an
        /// ulp-sized step off) every floor (`near_floor`).
        #[test]
        fn reachable_rate_in_f64_is_never_below_the_exact_one(
            which in proptest::prelude::any::<proptest::sample::Index>(),
            qty in 1i64..=10_000_000_000,
            qty_places in 0u32..=8,
            price in 1i64..=20_000_000,
            price_places in 0u32..=4,
            near_floor in proptest::option::of((proptest::prelude::any::<proptest::sample::Index>(), -3i64..=3, proptest::bool::ANY)),
        ) {
            let inst = which.get(preset_linears());
            let floats = TierFloats::new(inst).expect("a plain table");
            let price = Decimal::new(price, price_places);
            // Either any size, or one whose move ends on (or an ulp-sized step off) a floor.
            let size = match near_floor {
                None => Decimal::new(qty, qty_places),
                Some((k, step, up)) => {
                    // A floor above the first (which is 0).
                    let floor = inst.tiers[1 + k.index(inst.tiers.len() - 1)].notional_floor;
                    let end = if up { dec!(1.5) } else { dec!(0.5) };
                    (floor / (price * end) + Decimal::new(step, 20)).max(Decimal::new(1, 20))
                }
            };
            let exact = reachable_mmr(&inst.tiers, size * price);
            let fast = reachable_mmr_at(&inst.tiers, Some(&floats), size, price);
            proptest::prop_assert!(fast >= exact, "{fast:?} < {exact:?} for {size} at {price}");
            let n = size * price;
            let near = |edge: Decimal| {
                inst.tiers.iter().any(|t| {
                    t.notional_floor > Decimal::ZERO
                        && ((t.notional_floor - edge) / t.notional_floor).abs() < Decimal::new(1, 8)
                })
            };
            if !near(n * dec!(0.5)) && !near(n * dec!(1.5)) {
                proptest::prop_assert_eq!(fast, exact, "{} at {}", size, price);
            }
        }
    }

    /// Floors out of order (or nothing kept in `f64`) leave the rate to the exact selection.
    #[test]
    fn reachable_rate_without_ordered_floats_is_the_exact_one() {
        let mut inst = btcusdt();
        inst.tiers.swap(3, 4);
        let floats = TierFloats::new(&inst).expect("a plain table");
        assert_eq!(floats.tier_range(1.0, 2.0), None);
        for (size, price) in [(dec!(1), dec!(60000)), (dec!(200), dec!(60000))] {
            let exact = reachable_mmr(&inst.tiers, size * price);
            assert_eq!(
                reachable_mmr_at(&inst.tiers, Some(&floats), size, price),
                exact
            );
            assert_eq!(reachable_mmr_at(&inst.tiers, None, size, price), exact);
        }
        // A cache of another table's length is not used.
        let mut short = btcusdt();
        short.tiers.truncate(3);
        let other = TierFloats::new(&short).expect("a plain table");
        let (tiers, size, price) = (&btcusdt().tiers, dec!(20000), dec!(60000));
        assert_eq!(
            reachable_mmr_at(tiers, Some(&other), size, price),
            reachable_mmr(tiers, size * price)
        );
        // In order, a 1-BTC position at 60,000 (30k–90k) reaches the second bracket.
        let inst = btcusdt();
        let floats = TierFloats::new(&inst).expect("a plain table");
        let fast = reachable_mmr_at(&inst.tiers, Some(&floats), dec!(1), dec!(60000));
        assert_eq!(fast, Some(dec!(0.005)));
    }

    /// Venue tier tables are continuous (no jumps); a table with a gap is measured.
    #[test]
    fn tier_jumps_measure_discontinuities() {
        // Binance BTCUSDT's first brackets: cum makes MM continuous.
        let cont = [
            t(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
            t(dec!(50000), dec!(500000), dec!(0.005), dec!(50)),
        ];
        assert_eq!(margin::tier_jumps(&cont), Some(dec!(0)));
        let gap = [
            t(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
            t(dec!(50000), dec!(500000), dec!(0.005), dec!(0)),
        ];
        assert_eq!(margin::tier_jumps(&gap), Some(dec!(50)));
    }
}
