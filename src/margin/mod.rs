//! The pure cross-margin model: exact `Decimal` maths, no I/O, no async.
//!
//! This file holds the building blocks every other part uses (tier selection, per-position and
//! per-collateral contributions, from-scratch account totals). Per-account snapshots, the
//! uniform-shock distance and liquidation prices build on them.
//!
//! # Exactness
//! Every contribution (a position's uPnL and MM, a balance's haircut value) is normalised to
//! [`ACCOUNTING_SCALE`] decimal places with half-up rounding before it is summed. Sums of
//! fixed-scale decimals are exact (until overflow, which is an error), so an incremental update
//! `total − old + new` equals a from-scratch sum bit for bit.

use rust_decimal::{Decimal, RoundingStrategy};

use std::collections::HashMap;

use crate::model::{
    Account, CollateralRisk, HaircutTier, Instrument, InstrumentId, MarginRatio, MarginTier,
    PositionRisk, RiskSnapshot, ShockDistance,
};

/// Decimal places every contribution is normalised to before summing.
pub const ACCOUNTING_SCALE: u32 = 12;

/// Errors of the margin model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarginError {
    /// A computation overflowed `Decimal`'s range.
    #[error("arithmetic overflow computing {context}")]
    Overflow {
        /// What was being computed.
        context: &'static str,
    },
    /// No price is known for an instrument the account needs.
    #[error("no price for {0}")]
    MissingPrice(InstrumentId),
    /// The account refers to an instrument that is not configured.
    #[error("unknown instrument {0}")]
    UnknownInstrument(InstrumentId),
    /// A contract has no maintenance-margin tiers.
    #[error("instrument {0} has no maintenance-margin tiers")]
    NoTiers(InstrumentId),
    /// A price is zero or negative where the formula divides by it.
    #[error("price of {instrument} must be positive, got {price}")]
    NonPositivePrice {
        /// The instrument.
        instrument: InstrumentId,
        /// The offending price.
        price: Decimal,
    },
}

impl MarginError {
    /// Margin errors come from data, never from transient conditions.
    pub fn is_retriable(&self) -> bool {
        matches!(self, MarginError::MissingPrice(_))
    }
}

/// Checked multiply.
pub fn mul(a: Decimal, b: Decimal, context: &'static str) -> Result<Decimal, MarginError> {
    a.checked_mul(b).ok_or(MarginError::Overflow { context })
}
/// Checked add.
pub fn add(a: Decimal, b: Decimal, context: &'static str) -> Result<Decimal, MarginError> {
    a.checked_add(b).ok_or(MarginError::Overflow { context })
}
/// Checked subtract.
pub fn sub(a: Decimal, b: Decimal, context: &'static str) -> Result<Decimal, MarginError> {
    a.checked_sub(b).ok_or(MarginError::Overflow { context })
}
/// Checked divide (division by zero is reported as overflow of `context`).
pub fn div(a: Decimal, b: Decimal, context: &'static str) -> Result<Decimal, MarginError> {
    a.checked_div(b).ok_or(MarginError::Overflow { context })
}

/// Normalises a contribution to [`ACCOUNTING_SCALE`] places, half-up.
pub fn normalise(d: Decimal) -> Decimal {
    // Rounding is a no-op at or below the scale; skip it on the hot path.
    let scale = d.scale();
    if scale < ACCOUNTING_SCALE {
        // Widen the mantissa in one i128 multiplication (`rescale` steps digit by digit).
        let widened = 10i128
            .checked_pow(ACCOUNTING_SCALE - scale)
            .and_then(|p| d.mantissa().checked_mul(p))
            .and_then(|m| Decimal::try_from_i128_with_scale(m, ACCOUNTING_SCALE).ok());
        if let Some(w) = widened {
            return w;
        }
    } else if scale == ACCOUNTING_SCALE {
        return d;
    }
    let mut r = if scale > ACCOUNTING_SCALE {
        d.round_dp_with_strategy(ACCOUNTING_SCALE, RoundingStrategy::MidpointAwayFromZero)
    } else {
        d
    };
    r.rescale(ACCOUNTING_SCALE);
    r
}

/// Rounds half-up to 2 places, for display and comparisons "to the cent".
pub fn to_cents(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// The bracket containing `notional`: the last tier whose floor is ≤ notional (the higher tier
/// at an exact floor, as Binance clients do; MM is continuous there, so either gives the same
/// MM). Notionals beyond the last cap use the last tier. Returns the 0-based index.
pub fn select_tier(tiers: &[MarginTier], notional: Decimal) -> Option<(usize, &MarginTier)> {
    // Venue floors are whole numbers. For an integer floor f, `f ≤ N ⇔ f ≤ ⌊N⌋`, so comparing
    // integer mantissas is exact and avoids a Decimal rescale per comparison (the hot path).
    let whole = whole_part(notional);
    let idx = tiers.partition_point(|t| {
        let f = t.notional_floor;
        match whole {
            Some(n) if f.scale() == 0 => f.mantissa() <= n,
            _ => f <= notional,
        }
    });
    let i = idx.saturating_sub(1);
    tiers.get(i).map(|t| (i, t))
}

/// `⌊d⌋` as an integer for non-negative `d`; `None` for negatives (callers fall back to
/// `Decimal` comparisons).
fn whole_part(d: Decimal) -> Option<i128> {
    if d.is_sign_negative() {
        return None;
    }
    let m = d.mantissa();
    let scale = d.scale();
    if scale == 0 {
        return Some(m);
    }
    10i128.checked_pow(scale).map(|p| m / p)
}

/// The figures of one position at one price, in the account currency (USD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PositionFigures {
    /// Notional at the price (USD).
    pub notional: Decimal,
    /// Unrealised PnL (USD), normalised.
    pub unrealized_pnl: Decimal,
    /// Maintenance margin (USD), normalised.
    pub maintenance_margin: Decimal,
    /// 0-based tier index.
    pub tier: usize,
}

/// uPnL and MM of `quantity` of `instrument` entered at `entry` and priced at `price`, each
/// normalised to [`ACCOUNTING_SCALE`] places (the hot path of the account map).
///
/// Linear: `N = |q|·cs·P`, `uPnL = q·cs·(P − EP)`, `MM = N·mmr − cum`.
/// Inverse (`q` contracts of `cs` USD): the tier is chosen on the coin notional `|q|·cs/P`;
/// in USD `uPnL = q·cs·(P/EP − 1)` and `MM = |q|·cs·mmr − cum·P`.
pub fn position_figures(
    instrument: &Instrument,
    quantity: Decimal,
    entry: Decimal,
    price: Decimal,
) -> Result<PositionFigures, MarginError> {
    let f = position_figures_exact(instrument, quantity, entry, price)?;
    Ok(PositionFigures {
        notional: normalise(f.notional),
        unrealized_pnl: normalise(f.unrealized_pnl),
        maintenance_margin: normalise(f.maintenance_margin),
        tier: f.tier,
    })
}

/// `(uPnL, MM)` of one position, normalised: exactly `position_figures(..)`'s
/// `(unrealized_pnl, maintenance_margin)`, bit for bit, computed faster. This is the account
/// map's tick path: linear contracts of size 1 are valued in `i128` fixed point whenever every
/// intermediate fits `Decimal`'s 96-bit mantissa at its natural scale (the only regime in which
/// `Decimal` itself is exact); anything else (inverse, other sizes, overflow, a zero
/// intermediate whose `Decimal` sign could differ) takes the `Decimal` path.
pub fn position_pnl_mm(
    instrument: &Instrument,
    quantity: Decimal,
    entry: Decimal,
    price: Decimal,
) -> Result<(Decimal, Decimal), MarginError> {
    if !instrument.kind.is_inverse()
        && instrument.contract_size == Decimal::ONE
        && let Some(v) = linear_unit_fast(&instrument.tiers, quantity, entry, price)
    {
        return Ok(v);
    }
    let f = position_figures_exact(instrument, quantity, entry, price)?;
    Ok((normalise(f.unrealized_pnl), normalise(f.maintenance_margin)))
}

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
fn linear_unit_fast(
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

/// The same figures as [`position_figures`] without normalisation: exact up to `Decimal`'s 28
/// significant digits. Used where a root is re-priced (distances, tests), never for the cached
/// totals.
pub fn position_figures_exact(
    instrument: &Instrument,
    quantity: Decimal,
    entry: Decimal,
    price: Decimal,
) -> Result<PositionFigures, MarginError> {
    if instrument.tiers.is_empty() {
        return Err(MarginError::NoTiers(instrument.id.clone()));
    }
    let cs = instrument.contract_size;
    let abs_q = quantity.abs();
    if instrument.kind.is_inverse() {
        if price <= Decimal::ZERO || entry <= Decimal::ZERO {
            return Err(MarginError::NonPositivePrice {
                instrument: instrument.id.clone(),
                price: if price <= Decimal::ZERO { price } else { entry },
            });
        }
        let face = mul(abs_q, cs, "inverse face value")?;
        let notional_coin = div(face, price, "inverse coin notional")?;
        let (tier, t) = select_tier(&instrument.tiers, notional_coin)
            .ok_or_else(|| MarginError::NoTiers(instrument.id.clone()))?;
        let mm = sub(
            mul(face, t.mmr, "inverse MM")?,
            mul(t.cum, price, "inverse MM")?,
            "inverse MM",
        )?;
        let signed_face = mul(quantity, cs, "inverse face value")?;
        let ratio = sub(
            div(price, entry, "inverse PnL")?,
            Decimal::ONE,
            "inverse PnL",
        )?;
        let upnl = mul(signed_face, ratio, "inverse PnL")?;
        Ok(PositionFigures {
            notional: face,
            unrealized_pnl: upnl,
            maintenance_margin: mm,
            tier,
        })
    } else {
        // Most contracts have size 1: skip two multiplications on the hot path.
        let unit = cs == Decimal::ONE;
        let base = if unit {
            abs_q
        } else {
            mul(abs_q, cs, "linear size")?
        };
        let notional = mul(base, price, "linear notional")?;
        let (tier, t) = select_tier(&instrument.tiers, notional)
            .ok_or_else(|| MarginError::NoTiers(instrument.id.clone()))?;
        let mm = sub(mul(notional, t.mmr, "linear MM")?, t.cum, "linear MM")?;
        let signed = if unit {
            quantity
        } else {
            mul(quantity, cs, "linear PnL")?
        };
        let upnl = mul(signed, sub(price, entry, "linear PnL")?, "linear PnL")?;
        Ok(PositionFigures {
            notional,
            unrealized_pnl: upnl,
            maintenance_margin: mm,
            tier,
        })
    }
}

/// Haircut value of a collateral balance at `price` (1 for stables), normalised.
///
/// Positive balances count at the flat `collateral_ratio`, or slice by slice through
/// `haircut_tiers` when the instrument has them; negative (borrowed) balances count at 100 %.
pub fn collateral_value(
    instrument: &Instrument,
    amount: Decimal,
    price: Decimal,
) -> Result<Decimal, MarginError> {
    collateral_value_exact(instrument, amount, price).map(normalise)
}

/// [`collateral_value`] without normalisation.
pub fn collateral_value_exact(
    instrument: &Instrument,
    amount: Decimal,
    price: Decimal,
) -> Result<Decimal, MarginError> {
    let price = if instrument.stable {
        Decimal::ONE
    } else {
        price
    };
    mul(
        haircut_weighted_amount(instrument, amount)?,
        price,
        "collateral value",
    )
}

/// The amount of an asset that counts after its haircut: `amount × ratio` (flat), the sum of
/// slices × their ratios (tiered), or the amount itself when it is negative (borrowed).
/// Haircut slices are in units of the asset, so the value is linear in the price.
pub fn haircut_weighted_amount(
    instrument: &Instrument,
    amount: Decimal,
) -> Result<Decimal, MarginError> {
    if amount <= Decimal::ZERO {
        return Ok(amount);
    }
    if instrument.haircut_tiers.is_empty() {
        mul(amount, instrument.collateral_ratio, "collateral haircut")
    } else {
        tiered_haircut(&instrument.haircut_tiers, amount)
    }
}

/// Σ over slices of `min(amount, next floor) − floor` × ratio.
fn tiered_haircut(tiers: &[HaircutTier], amount: Decimal) -> Result<Decimal, MarginError> {
    let mut total = Decimal::ZERO;
    for (i, t) in tiers.iter().enumerate() {
        if amount <= t.amount_floor {
            break;
        }
        let top = tiers
            .get(i + 1)
            .map(|n| n.amount_floor.min(amount))
            .unwrap_or(amount);
        let slice = sub(top, t.amount_floor, "haircut slice")?;
        total = add(
            total,
            mul(slice, t.ratio, "haircut slice")?,
            "haircut total",
        )?;
    }
    Ok(total)
}

/// Looks up instruments by id.
pub trait InstrumentLookup {
    /// The instrument, if configured.
    fn instrument(&self, id: &InstrumentId) -> Option<&Instrument>;
}

impl InstrumentLookup for HashMap<InstrumentId, Instrument> {
    fn instrument(&self, id: &InstrumentId) -> Option<&Instrument> {
        self.get(id)
    }
}

/// Looks up the engine's current price of an instrument.
pub trait PriceLookup {
    /// The price, if known.
    fn price(&self, id: &InstrumentId) -> Option<Decimal>;
}

impl PriceLookup for HashMap<InstrumentId, Decimal> {
    fn price(&self, id: &InstrumentId) -> Option<Decimal> {
        self.get(id).copied()
    }
}

/// An account's aggregate figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AccountTotals {
    /// Haircut collateral + Σ uPnL.
    pub equity: Decimal,
    /// Σ position MM.
    pub maintenance_margin: Decimal,
}

fn price_of(instrument: &Instrument, prices: &dyn PriceLookup) -> Result<Decimal, MarginError> {
    if instrument.stable {
        return Ok(Decimal::ONE);
    }
    prices
        .price(&instrument.id)
        .ok_or_else(|| MarginError::MissingPrice(instrument.id.clone()))
}

fn lookup<'a>(
    instruments: &'a dyn InstrumentLookup,
    id: &InstrumentId,
) -> Result<&'a Instrument, MarginError> {
    instruments
        .instrument(id)
        .ok_or_else(|| MarginError::UnknownInstrument(id.clone()))
}

/// Equity and MM of an account recomputed from scratch: the oracle incremental caches are
/// checked against.
pub fn account_totals(
    account: &Account,
    instruments: &dyn InstrumentLookup,
    prices: &dyn PriceLookup,
) -> Result<AccountTotals, MarginError> {
    let mut t = AccountTotals::default();
    for (asset, amount) in &account.collateral {
        let i = lookup(instruments, asset)?;
        let v = collateral_value(i, *amount, price_of(i, prices)?)?;
        t.equity = add(t.equity, v, "equity")?;
    }
    for p in &account.positions {
        let i = lookup(instruments, &p.instrument)?;
        let f = position_figures(i, p.quantity, p.entry_price, price_of(i, prices)?)?;
        t.equity = add(t.equity, f.unrealized_pnl, "equity")?;
        t.maintenance_margin = add(t.maintenance_margin, f.maintenance_margin, "MM")?;
    }
    Ok(t)
}

/// The account's full risk snapshot at the given prices. `trigger` is the margin-ratio level
/// the distances are measured to (1.0 by default).
///
/// Equity, MM, the ratio and the per-position/collateral figures are the normalised sums the
/// account map caches. The distances (uniform shock, per-position liquidation price) are solved
/// on exact, un-normalised figures and are never rounded (round only for display).
pub fn account_snapshot(
    account: &Account,
    instruments: &dyn InstrumentLookup,
    prices: &dyn PriceLookup,
    trigger: Decimal,
) -> Result<RiskSnapshot, MarginError> {
    let totals = account_totals(account, instruments, prices)?;
    let mut positions = Vec::with_capacity(account.positions.len());
    let mut penalty = Decimal::ZERO;
    for p in &account.positions {
        let i = lookup(instruments, &p.instrument)?;
        let price = price_of(i, prices)?;
        let f = position_figures(i, p.quantity, p.entry_price, price)?;
        penalty = add(
            penalty,
            mul(f.notional, i.liquidation_fee_rate, "penalty")?,
            "penalty",
        )?;
        positions.push(PositionRisk {
            instrument: p.instrument.clone(),
            side: p.side,
            quantity: p.quantity,
            entry_price: p.entry_price,
            mark_price: price,
            notional: f.notional,
            unrealized_pnl: f.unrealized_pnl,
            maintenance_margin: f.maintenance_margin,
            tier: u32::try_from(f.tier + 1).unwrap_or(u32::MAX),
            liquidation_price: liquidation_price_of(account, instruments, prices, p, trigger)?,
        });
    }
    let mut collateral = Vec::with_capacity(account.collateral.len());
    for (asset, amount) in &account.collateral {
        let i = lookup(instruments, asset)?;
        let price = price_of(i, prices)?;
        collateral.push(CollateralRisk {
            asset: asset.clone(),
            amount: *amount,
            price,
            value: collateral_value(i, *amount, price)?,
        });
    }
    Ok(RiskSnapshot {
        equity: totals.equity,
        maintenance_margin: totals.maintenance_margin,
        margin_ratio: MarginRatio::compute(totals.maintenance_margin, totals.equity),
        free_margin: sub(totals.equity, totals.maintenance_margin, "free margin")?,
        shock_distance: shock_distance(account, instruments, prices, trigger)?,
        liquidation_penalty: normalise(penalty),
        positions,
        collateral,
    })
}

// ---------------------------------------------------------------------------------------------
// Distances: one price variable, piecewise-linear equity and MM
// ---------------------------------------------------------------------------------------------

/// A contract position that moves with the price variable `z`: its price is
/// `price_factor · z`.
#[derive(Clone, Copy, Debug)]
pub struct MovingLeg<'a> {
    /// The contract (its kind, contract size and tiers are used).
    pub instrument: &'a Instrument,
    /// Signed quantity (one leg: hedge-mode legs are separate entries, each in its own bracket).
    pub quantity: Decimal,
    /// Entry price.
    pub entry_price: Decimal,
    /// The leg's price per unit of `z` (1 when `z` is this leg's own price).
    pub price_factor: Decimal,
}

/// A collateral balance that moves with the price variable `z` (price `price_factor · z`).
#[derive(Clone, Copy, Debug)]
pub struct MovingCollateral<'a> {
    /// The asset (its haircut is used).
    pub instrument: &'a Instrument,
    /// Balance in units of the asset.
    pub amount: Decimal,
    /// The asset's price per unit of `z`.
    pub price_factor: Decimal,
}

/// An account seen as a function of one price variable `z`: fixed parts plus legs and
/// collateral whose prices are proportional to `z`.
///
/// With every leg's tier fixed, `equity(z) = a + b·z` and `MM(z) = c·z − d` (inverse
/// contracts included, see margin-math §1.9), so `g(z) = MM(z) − trigger·equity(z)` is linear
/// between tier breakpoints and the trigger is reached exactly where `g` crosses 0.
/// `g ≥ 0` ⇔ ratio ≥ trigger (equity ≤ 0 counts as an infinite ratio).
#[derive(Clone, Debug, Default)]
pub struct PriceMove<'a> {
    /// Equity of everything that does not move (stable collateral, other assets).
    pub fixed_equity: Decimal,
    /// MM of every position that does not move.
    pub fixed_mm: Decimal,
    /// Positions that move with `z`.
    pub legs: Vec<MovingLeg<'a>>,
    /// Collateral that moves with `z`.
    pub collateral: Vec<MovingCollateral<'a>>,
    /// The margin-ratio level to reach.
    pub trigger: Decimal,
}

/// The two crossings of the trigger found by [`PriceMove::crossings`], as offsets `z − start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Crossings {
    /// The nearest crossing below `start` (offset ≤ 0), keeping `z > 0`.
    pub down: Option<Decimal>,
    /// The nearest crossing above `start` (offset ≥ 0).
    pub up: Option<Decimal>,
}

impl Crossings {
    /// The crossing nearer to `start` (the fall wins a tie).
    pub fn nearest(&self) -> Option<Decimal> {
        match (self.down, self.up) {
            (Some(d), Some(u)) => Some(if u.abs() < d.abs() { u } else { d }),
            (d, u) => d.or(u),
        }
    }
}

/// `g(z) = k·z − l` on one linear piece.
#[derive(Clone, Copy, Debug)]
struct Line {
    k: Decimal,
    l: Decimal,
}

impl Line {
    fn at(&self, z: Decimal) -> Result<Decimal, MarginError> {
        sub(mul(self.k, z, "g(z)")?, self.l, "g(z)")
    }
}

/// Relative tolerance for accepting a root that lies on an interval's (rounded) boundary.
fn boundary_eps(z: Decimal) -> Decimal {
    z.abs().max(Decimal::ONE) * Decimal::new(1, 22)
}

impl<'a> PriceMove<'a> {
    /// The tier index of one leg when `z` is the price variable.
    fn tier_of(leg: &MovingLeg<'_>, z: Decimal) -> Result<usize, MarginError> {
        let tiers = &leg.instrument.tiers;
        if tiers.is_empty() {
            return Err(MarginError::NoTiers(leg.instrument.id.clone()));
        }
        let size = mul(leg.quantity.abs(), leg.instrument.contract_size, "leg size")?;
        let price = mul(leg.price_factor, z, "leg price")?;
        let notional = if leg.instrument.kind.is_inverse() {
            if price <= Decimal::ZERO {
                // Coin notional grows without bound as the price falls to 0.
                return Ok(tiers.len() - 1);
            }
            div(size, price, "inverse coin notional")?
        } else {
            mul(size, price, "linear notional")?
        };
        Ok(select_tier(tiers, notional).map(|(i, _)| i).unwrap_or(0))
    }

    /// The tier index of every leg when `z` is the price variable.
    fn tiers_at(&self, z: Decimal) -> Result<Vec<usize>, MarginError> {
        self.legs.iter().map(|l| Self::tier_of(l, z)).collect()
    }

    /// The linear piece of `g` that holds at `z` (no allocation: the interval walk's path).
    fn line_at(&self, z: Decimal) -> Result<Line, MarginError> {
        let mut tiers = [0usize; 16];
        if self.legs.len() > tiers.len() {
            return self.line(&self.tiers_at(z)?);
        }
        for (slot, leg) in tiers.iter_mut().zip(&self.legs) {
            *slot = Self::tier_of(leg, z)?;
        }
        self.line(&tiers[..self.legs.len()])
    }

    /// `g(z) = MM(z) − trigger·equity(z)` with every leg in the given tier.
    fn line(&self, tiers: &[usize]) -> Result<Line, MarginError> {
        let mut a = self.fixed_equity;
        let mut b = Decimal::ZERO;
        let mut c = Decimal::ZERO;
        let mut d = -self.fixed_mm;
        for (leg, &ti) in self.legs.iter().zip(tiers) {
            let t = leg
                .instrument
                .tiers
                .get(ti)
                .ok_or_else(|| MarginError::NoTiers(leg.instrument.id.clone()))?;
            let signed = mul(leg.quantity, leg.instrument.contract_size, "leg size")?;
            let size = signed.abs();
            let k = leg.price_factor;
            if leg.instrument.kind.is_inverse() {
                if leg.entry_price <= Decimal::ZERO {
                    return Err(MarginError::NonPositivePrice {
                        instrument: leg.instrument.id.clone(),
                        price: leg.entry_price,
                    });
                }
                // uPnL(USD) = n·cs·(k·z/EP − 1); MM(USD) = |n|·cs·mmr − cum·k·z.
                a = sub(a, signed, "shock A")?;
                b = add(
                    b,
                    div(mul(signed, k, "shock B")?, leg.entry_price, "shock B")?,
                    "shock B",
                )?;
                c = sub(c, mul(t.cum, k, "shock C")?, "shock C")?;
                d = sub(d, mul(size, t.mmr, "shock D")?, "shock D")?;
            } else {
                // uPnL = q·cs·(k·z − EP); MM = |q|·cs·k·z·mmr − cum.
                a = sub(a, mul(signed, leg.entry_price, "shock A")?, "shock A")?;
                b = add(b, mul(signed, k, "shock B")?, "shock B")?;
                c = add(
                    c,
                    mul(mul(size, k, "shock C")?, t.mmr, "shock C")?,
                    "shock C",
                )?;
                d = add(d, t.cum, "shock D")?;
            }
        }
        for col in &self.collateral {
            let w = haircut_weighted_amount(col.instrument, col.amount)?;
            b = add(b, mul(w, col.price_factor, "shock B")?, "shock B")?;
        }
        let t = self.trigger;
        Ok(Line {
            k: sub(c, mul(t, b, "shock K")?, "shock K")?,
            l: add(d, mul(t, a, "shock L")?, "shock L")?,
        })
    }

    /// Every `z > 0` at which some leg changes tier, ascending, without duplicates.
    fn breakpoints(&self) -> Result<Vec<Decimal>, MarginError> {
        let mut out = Vec::new();
        for leg in &self.legs {
            let size = mul(leg.quantity.abs(), leg.instrument.contract_size, "leg size")?;
            let k = leg.price_factor;
            if size.is_zero() || k <= Decimal::ZERO {
                continue;
            }
            for t in leg.instrument.tiers.iter().skip(1) {
                if t.notional_floor <= Decimal::ZERO {
                    continue;
                }
                let z = if leg.instrument.kind.is_inverse() {
                    div(size, mul(k, t.notional_floor, "breakpoint")?, "breakpoint")?
                } else {
                    div(t.notional_floor, mul(size, k, "breakpoint")?, "breakpoint")?
                };
                out.push(z);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The exact crossings of the trigger nearest to `start` in both directions (margin-math
    /// §1.9): walk the intervals between tier breakpoints outwards from `start`, take each
    /// interval's tiers at its midpoint, solve the linear piece, accept the first root inside
    /// its interval. A jump of `g` across 0 at a breakpoint (a table whose `cum` breaks
    /// continuity) counts as a crossing at that breakpoint. For an account already at or past
    /// the trigger the crossings are where it would stop being triggered.
    pub fn crossings(&self, start: Decimal) -> Result<Crossings, MarginError> {
        let bps = self.breakpoints()?;
        Ok(Crossings {
            down: self.walk(start, &bps, false)?,
            up: self.walk(start, &bps, true)?,
        })
    }

    fn walk(
        &self,
        start: Decimal,
        bps: &[Decimal],
        upwards: bool,
    ) -> Result<Option<Decimal>, MarginError> {
        let two = Decimal::TWO;
        // Interval ends beyond `start` in walking order; `None` = unbounded (up) or 0 (down).
        let mut ends: Vec<Option<Decimal>> = if upwards {
            bps.iter()
                .filter(|&&b| b > start)
                .map(|&b| Some(b))
                .collect()
        } else {
            bps.iter()
                .rev()
                .filter(|&&b| b < start && b > Decimal::ZERO)
                .map(|&b| Some(b))
                .collect()
        };
        ends.push(None);
        let mut near = start;
        let mut prev: Option<Line> = None;
        for far in ends {
            let mid = match far {
                Some(f) => div(add(near, f, "midpoint")?, two, "midpoint")?,
                None if upwards => mul(near.max(Decimal::ONE), two, "midpoint")?,
                None => div(near, two, "midpoint")?,
            };
            if !upwards && mid <= Decimal::ZERO {
                return Ok(None);
            }
            let line = self.line_at(mid)?;
            if let Some(p) = prev {
                let before = p.at(near)?;
                let after = line.at(near)?;
                if (before < Decimal::ZERO) != (after < Decimal::ZERO) {
                    return Ok(Some(sub(near, start, "crossing")?));
                }
            }
            // k = 0: g is constant on the interval (0 for an empty account), so no move
            // inside it changes the state; only a jump at a breakpoint (above) can.
            if !line.k.is_zero() {
                // δ = (l − k·start)/k, so that start + δ is the root; for start = 1 this is
                // the shock s* in a single division (W5: 82,080 / −857,100 = −1,368/14,285).
                let delta = div(
                    sub(line.l, mul(line.k, start, "root")?, "root")?,
                    line.k,
                    "root",
                )?;
                let z = add(start, delta, "root")?;
                let eps = boundary_eps(z);
                let inside = if upwards {
                    delta >= Decimal::ZERO && z >= near - eps && far.is_none_or(|f| z <= f + eps)
                } else {
                    delta <= Decimal::ZERO
                        && z > Decimal::ZERO
                        && z <= near + eps
                        && far.is_none_or(|f| z >= f - eps)
                };
                if inside {
                    return Ok(Some(delta));
                }
            }
            prev = Some(line);
            match far {
                Some(f) => near = f,
                None => break,
            }
        }
        Ok(None)
    }

    /// The liquidation price of margin-math §1.7: solve with the tiers at `start`, re-check the
    /// tier of every leg at the result and re-solve until no tier changes (a loop, not
    /// unrolled: a large position can need three or more steps). Returns the value of `z`;
    /// `None` when no positive price reaches the trigger.
    ///
    /// If the loop does not settle on a positive fixed point (a negative first answer, or
    /// tiers that alternate), the exact interval walk of [`PriceMove::crossings`] decides.
    pub fn liquidation_price(&self, start: Decimal) -> Result<Option<Decimal>, MarginError> {
        if start <= Decimal::ZERO {
            return Ok(None);
        }
        let mut tiers = self.tiers_at(start)?;
        let bound = self
            .legs
            .iter()
            .map(|l| l.instrument.tiers.len())
            .sum::<usize>()
            + 2;
        for _ in 0..bound {
            let line = self.line(&tiers)?;
            if line.k.is_zero() {
                break;
            }
            let z = div(line.l, line.k, "liquidation price")?;
            if z <= Decimal::ZERO {
                break;
            }
            let next = self.tiers_at(z)?;
            if next == tiers {
                return Ok(Some(z));
            }
            tiers = next;
        }
        let c = self.crossings(start)?;
        match c.nearest() {
            Some(d) => Ok(Some(add(start, d, "liquidation price")?)),
            None => Ok(None),
        }
    }

    /// `MM(z)` and `equity(z)` re-priced from the exact per-position formulas (not the linear
    /// form), for checking a root.
    pub fn reprice(&self, z: Decimal) -> Result<AccountTotals, MarginError> {
        let mut t = AccountTotals {
            equity: self.fixed_equity,
            maintenance_margin: self.fixed_mm,
        };
        for leg in &self.legs {
            let price = mul(leg.price_factor, z, "reprice")?;
            let f = position_figures_exact(leg.instrument, leg.quantity, leg.entry_price, price)?;
            t.equity = add(t.equity, f.unrealized_pnl, "reprice")?;
            t.maintenance_margin = add(t.maintenance_margin, f.maintenance_margin, "reprice")?;
        }
        for col in &self.collateral {
            let price = mul(col.price_factor, z, "reprice")?;
            let v = collateral_value_exact(col.instrument, col.amount, price)?;
            t.equity = add(t.equity, v, "reprice")?;
        }
        Ok(t)
    }
}

/// The uniform-shock problem of an account: `z = 1 + s` multiplies every non-stable price.
pub fn shock_problem<'a>(
    account: &Account,
    instruments: &'a dyn InstrumentLookup,
    prices: &dyn PriceLookup,
    trigger: Decimal,
) -> Result<PriceMove<'a>, MarginError> {
    let mut pm = PriceMove {
        trigger,
        ..PriceMove::default()
    };
    for (asset, amount) in &account.collateral {
        let i = lookup(instruments, asset)?;
        if i.stable {
            let v = collateral_value_exact(i, *amount, Decimal::ONE)?;
            pm.fixed_equity = add(pm.fixed_equity, v, "fixed equity")?;
        } else {
            pm.collateral.push(MovingCollateral {
                instrument: i,
                amount: *amount,
                price_factor: price_of(i, prices)?,
            });
        }
    }
    for p in &account.positions {
        let i = lookup(instruments, &p.instrument)?;
        pm.legs.push(MovingLeg {
            instrument: i,
            quantity: p.quantity,
            entry_price: p.entry_price,
            price_factor: price_of(i, prices)?,
        });
    }
    Ok(pm)
}

/// The uniform-shock distance (margin-math §1.9): the fractional move `s` of all non-stable
/// prices together at which the margin ratio reaches `trigger`, down and up, exact.
pub fn shock_distance(
    account: &Account,
    instruments: &dyn InstrumentLookup,
    prices: &dyn PriceLookup,
    trigger: Decimal,
) -> Result<ShockDistance, MarginError> {
    let pm = shock_problem(account, instruments, prices, trigger)?;
    let c = pm.crossings(Decimal::ONE)?;
    Ok(ShockDistance {
        down: c.down,
        up: c.up,
        nearest: c.nearest(),
    })
}

/// The liquidation-price problem of one position: `z` is the price of that position's
/// instrument; every contract and non-stable collateral with the same `underlying` moves in
/// proportion (factor `P_j / P_i`, exactly 1 when they share one price); everything else is
/// fixed at its current figures. `None` when the position's own price is not positive.
pub fn liquidation_problem<'a>(
    account: &Account,
    instruments: &'a dyn InstrumentLookup,
    prices: &dyn PriceLookup,
    position: &crate::model::Position,
    trigger: Decimal,
) -> Result<Option<(PriceMove<'a>, Decimal)>, MarginError> {
    let own = lookup(instruments, &position.instrument)?;
    let p0 = price_of(own, prices)?;
    if p0 <= Decimal::ZERO {
        return Ok(None);
    }
    let factor = |pj: Decimal| -> Result<Decimal, MarginError> {
        if pj == p0 {
            Ok(Decimal::ONE)
        } else {
            div(pj, p0, "price factor")
        }
    };
    let mut pm = PriceMove {
        trigger,
        ..PriceMove::default()
    };
    for (asset, amount) in &account.collateral {
        let i = lookup(instruments, asset)?;
        let price = price_of(i, prices)?;
        if !i.stable && i.underlying == own.underlying {
            pm.collateral.push(MovingCollateral {
                instrument: i,
                amount: *amount,
                price_factor: factor(price)?,
            });
        } else {
            let v = collateral_value_exact(i, *amount, price)?;
            pm.fixed_equity = add(pm.fixed_equity, v, "fixed equity")?;
        }
    }
    for p in &account.positions {
        let i = lookup(instruments, &p.instrument)?;
        let price = price_of(i, prices)?;
        if i.underlying == own.underlying {
            pm.legs.push(MovingLeg {
                instrument: i,
                quantity: p.quantity,
                entry_price: p.entry_price,
                price_factor: factor(price)?,
            });
        } else {
            let f = position_figures_exact(i, p.quantity, p.entry_price, price)?;
            pm.fixed_equity = add(pm.fixed_equity, f.unrealized_pnl, "fixed equity")?;
            pm.fixed_mm = add(pm.fixed_mm, f.maintenance_margin, "fixed MM")?;
        }
    }
    Ok(Some((pm, p0)))
}

/// The liquidation price of one position of the account (margin-math §1.7, cross): the price
/// of its instrument at which the ratio reaches `trigger`, its underlying's other instruments
/// moving with it and every other price fixed. `None` when not reachable.
pub fn liquidation_price_of(
    account: &Account,
    instruments: &dyn InstrumentLookup,
    prices: &dyn PriceLookup,
    position: &crate::model::Position,
    trigger: Decimal,
) -> Result<Option<Decimal>, MarginError> {
    match liquidation_problem(account, instruments, prices, position, trigger)? {
        Some((pm, p0)) => pm.liquidation_price(p0),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstrumentKind, Position, PositionSide};
    use rust_decimal_macros::dec;
    use std::collections::BTreeMap;

    fn tier(floor: Decimal, cap: Decimal, mmr: Decimal, cum: Decimal) -> MarginTier {
        MarginTier {
            notional_floor: floor,
            notional_cap: cap,
            mmr,
            cum,
        }
    }

    /// Tiers from `(floor, mmr, cum)` rows; each cap is the next floor (the last: 10 × floor).
    fn table(rows: &[(Decimal, Decimal, Decimal)]) -> Vec<MarginTier> {
        rows.iter()
            .enumerate()
            .map(|(i, &(f, m, c))| {
                let cap = rows
                    .get(i + 1)
                    .map(|r| r.0)
                    .unwrap_or(f * dec!(10) + dec!(1));
                tier(f, cap, m, c)
            })
            .collect()
    }

    fn contract(id: &str, underlying: &str, tiers: Vec<MarginTier>) -> Instrument {
        Instrument {
            id: id.into(),
            kind: InstrumentKind::LinearPerpetual,
            underlying: underlying.into(),
            contract_size: Decimal::ONE,
            tiers,
            liquidation_fee_rate: dec!(0.005),
            collateral_ratio: Decimal::ONE,
            haircut_tiers: vec![],
            stable: false,
            sources: vec![],
            source_note: None,
        }
    }

    fn coin(id: &str, ratio: Decimal, stable: bool) -> Instrument {
        Instrument {
            id: id.into(),
            kind: InstrumentKind::Collateral,
            underlying: id.into(),
            contract_size: Decimal::ONE,
            tiers: vec![],
            liquidation_fee_rate: Decimal::ZERO,
            collateral_ratio: ratio,
            haircut_tiers: vec![],
            stable,
            sources: vec![],
            source_note: None,
        }
    }

    fn btc_table() -> Vec<MarginTier> {
        table(&[
            (dec!(0), dec!(0.004), dec!(0)),
            (dec!(50000), dec!(0.005), dec!(50)),
            (dec!(600000), dec!(0.0065), dec!(950)),
            (dec!(3000000), dec!(0.01), dec!(11450)),
            (dec!(12000000), dec!(0.02), dec!(131450)),
            (dec!(70000000), dec!(0.025), dec!(481450)),
            (dec!(100000000), dec!(0.05), dec!(2981450)),
            (dec!(230000000), dec!(0.10), dec!(14481450)),
            (dec!(480000000), dec!(0.125), dec!(26481450)),
            (dec!(600000000), dec!(0.15), dec!(41481450)),
            (dec!(800000000), dec!(0.25), dec!(121481450)),
            (dec!(1200000000), dec!(0.50), dec!(421481450)),
        ])
    }

    fn eth_table() -> Vec<MarginTier> {
        table(&[
            (dec!(0), dec!(0.004), dec!(0)),
            (dec!(50000), dec!(0.005), dec!(50)),
            (dec!(600000), dec!(0.0065), dec!(950)),
            (dec!(3000000), dec!(0.01), dec!(11450)),
            (dec!(12000000), dec!(0.02), dec!(131450)),
            (dec!(50000000), dec!(0.025), dec!(381450)),
            (dec!(65000000), dec!(0.05), dec!(2006450)),
            (dec!(150000000), dec!(0.10), dec!(9506450)),
            (dec!(320000000), dec!(0.125), dec!(17506450)),
            (dec!(400000000), dec!(0.15), dec!(27506450)),
            (dec!(530000000), dec!(0.25), dec!(80506450)),
            (dec!(800000000), dec!(0.50), dec!(280506450)),
        ])
    }

    fn sol_table() -> Vec<MarginTier> {
        table(&[
            (dec!(0), dec!(0.005), dec!(0)),
            (dec!(20000), dec!(0.0065), dec!(30)),
            (dec!(100000), dec!(0.01), dec!(380)),
            (dec!(800000), dec!(0.02), dec!(8380)),
            (dec!(4000000), dec!(0.025), dec!(28380)),
            (dec!(8000000), dec!(0.05), dec!(228380)),
            (dec!(40000000), dec!(0.10), dec!(2228380)),
            (dec!(80000000), dec!(0.125), dec!(4228380)),
            (dec!(100000000), dec!(0.25), dec!(16728380)),
            (dec!(200000000), dec!(0.50), dec!(66728380)),
        ])
    }

    fn btcusdt() -> Instrument {
        contract("BTCUSDT-PERP", "BTC", btc_table())
    }

    fn universe() -> HashMap<InstrumentId, Instrument> {
        let list = vec![
            btcusdt(),
            contract("ETHUSDT-PERP", "ETH", eth_table()),
            contract("SOLUSDT-PERP", "SOL", sol_table()),
            coin("USDT", dec!(1), true),
            coin("USDC", dec!(1), true),
            coin("BTC", dec!(0.95), false),
        ];
        list.into_iter().map(|i| (i.id.clone(), i)).collect()
    }

    fn pos(id: &str, q: Decimal, ep: Decimal) -> Position {
        Position {
            instrument: id.into(),
            side: PositionSide::Both,
            quantity: q,
            entry_price: ep,
        }
    }

    fn w3_account() -> Account {
        let mut collateral = BTreeMap::new();
        collateral.insert(InstrumentId::from("USDT"), dec!(60500));
        collateral.insert(InstrumentId::from("BTC"), dec!(1.5));
        Account {
            id: "w3".into(),
            collateral,
            positions: vec![
                pos("BTCUSDT-PERP", dec!(10.5), dec!(62000)),
                pos("ETHUSDT-PERP", dec!(150), dec!(3100)),
                pos("SOLUSDT-PERP", dec!(-2000), dec!(140)),
            ],
            thresholds: None,
        }
    }

    /// W3 prices (BTC, ETH, SOL) each multiplied by its own factor.
    fn w3_prices(btc: Decimal, eth: Decimal, sol: Decimal) -> HashMap<InstrumentId, Decimal> {
        let mut p = HashMap::new();
        p.insert("BTCUSDT-PERP".into(), dec!(60000) * btc);
        p.insert("BTC".into(), dec!(60000) * btc);
        p.insert("ETHUSDT-PERP".into(), dec!(3000) * eth);
        p.insert("SOLUSDT-PERP".into(), dec!(150) * sol);
        p
    }

    fn ratio_pct(r: MarginRatio) -> Option<Decimal> {
        match r {
            MarginRatio::Finite(d) => Some(to_cents(d * dec!(100))),
            MarginRatio::Infinite => None,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The fixed-point tick path gives exactly `position_figures`' uPnL and MM, bit for bit,
        /// over wide mantissas and scales (overflow and rounding edges included).
        #[test]
        fn pnl_mm_fast_path_matches_decimal(
            qm in -10_000_000_000i64..10_000_000_000, qs in 0u32..12,
            pm in 1i64..1_000_000_000_000, ps in 0u32..16,
            em in 0i64..1_000_000_000_000, es in 0u32..16,
            big in proptest::bool::ANY, size_one in proptest::bool::ANY,
        ) {
            let mut i = btcusdt();
            if !size_one {
                i.contract_size = dec!(0.001);
            }
            let mut q = Decimal::new(qm, qs);
            if big {
                q *= Decimal::from(1_000_000_000_000i64);
            }
            let (p, e) = (Decimal::new(pm, ps), Decimal::new(em, es));
            let slow = position_figures(&i, q, e, p).map(|f| (f.unrealized_pnl, f.maintenance_margin));
            let fast = position_pnl_mm(&i, q, e, p);
            proptest::prop_assert_eq!(format!("{slow:?}"), format!("{fast:?}"));
            if let (Ok(a), Ok(b)) = (slow, fast) {
                proptest::prop_assert_eq!((a.0.serialize(), a.1.serialize()), (b.0.serialize(), b.1.serialize()));
            }
        }
    }

    /// W1 (Binance's own cross example): LP 1,153.26 from the published inputs, exact to the
    /// Decimal precision of the published formula.
    #[test]
    fn w1_binance_cross_liquidation_price() {
        let eth = contract(
            "ETHUSDT-PERP",
            "ETH",
            vec![tier(dec!(0), dec!(1e10), dec!(0.10), dec!(135365))],
        );
        let pm = PriceMove {
            fixed_equity: dec!(1535443.01) + dec!(-56354.57),
            fixed_mm: dec!(71200.81144),
            legs: vec![MovingLeg {
                instrument: &eth,
                quantity: dec!(3683.979),
                entry_price: dec!(1456.84),
                price_factor: Decimal::ONE,
            }],
            collateral: vec![],
            trigger: Decimal::ONE,
        };
        let lp = pm.liquidation_price(dec!(1456.84)).unwrap().unwrap();
        assert_eq!(to_cents(lp), dec!(1153.26));
        assert_eq!(lp, dec!(-3823715.33780) / dec!(-3315.5811));
        assert!(lp.to_string().starts_with("1153.256464696"));
    }

    /// W2: MM exactly at and just past a tier floor, to the cent, and the wrong-tier figure.
    #[test]
    fn w2_tier_boundaries() {
        let i = btcusdt();
        let cases = [
            (dec!(10), dec!(60000), dec!(2950.00), 2),
            (dec!(10), dec!(60100), dec!(2956.50), 2),
            (dec!(50), dec!(60000), dec!(18550.00), 3),
            (dec!(50), dec!(60010), dec!(18555.00), 3),
        ];
        for (q, p, mm, t) in cases {
            let f = position_figures(&i, q, p, p).unwrap();
            assert_eq!(f.maintenance_margin, mm, "q={q} p={p}");
            assert_eq!(f.tier, t);
        }
        // Tier 2's line at 601,000 is 1.50 short: the model must not use it.
        let t2 = &i.tiers[1];
        assert_eq!(dec!(601000) * t2.mmr - t2.cum, dec!(2955.00));
        // One tick below the floor is tier 2 and continuous with tier 3.
        let f = position_figures(&i, dec!(10), dec!(60000), dec!(59999.99)).unwrap();
        assert_eq!(f.tier, 1);
        assert_eq!(f.maintenance_margin, dec!(2949.9995));
    }

    /// W2 isolated LP: the tier re-check moves 57,277.30 to 57,281.41.
    #[test]
    fn w2_isolated_lp_recheck() {
        let i = btcusdt();
        let pm = PriceMove {
            fixed_equity: dec!(30000),
            legs: vec![MovingLeg {
                instrument: &i,
                quantity: dec!(10),
                entry_price: dec!(60000),
                price_factor: Decimal::ONE,
            }],
            trigger: Decimal::ONE,
            ..PriceMove::default()
        };
        let lp = pm.liquidation_price(dec!(60000)).unwrap().unwrap();
        assert_eq!(to_cents(lp), dec!(57281.41));
        let t = pm.reprice(lp).unwrap();
        assert_eq!(to_cents(t.equity), dec!(2814.07));
        assert_eq!(to_cents(t.maintenance_margin), dec!(2814.07));
    }

    /// §1.7: a 2,500 BTC isolated long needs three re-checks (38,008.24 → 40,828.12 →
    /// 40,849.92); stopping after two would be 21.79 too low.
    #[test]
    fn lp_three_step_recheck() {
        let i = btcusdt();
        let pm = PriceMove {
            fixed_equity: dec!(50000000),
            legs: vec![MovingLeg {
                instrument: &i,
                quantity: dec!(2500),
                entry_price: dec!(60000),
                price_factor: Decimal::ONE,
            }],
            trigger: Decimal::ONE,
            ..PriceMove::default()
        };
        let lp = pm.liquidation_price(dec!(95000)).unwrap().unwrap();
        assert_eq!(to_cents(lp), dec!(40849.92));
        // The exact walk agrees with the loop.
        let c = pm.crossings(dec!(95000)).unwrap();
        assert_eq!(to_cents(dec!(95000) + c.down.unwrap()), dec!(40849.92));
    }

    /// W3: equity, MM and ratio of the cross account with haircut BTC collateral.
    #[test]
    fn w3_cross_account() {
        let u = universe();
        let s = account_snapshot(
            &w3_account(),
            &u,
            &w3_prices(dec!(1), dec!(1), dec!(1)),
            dec!(1),
        )
        .unwrap();
        assert_eq!(s.equity, dec!(90000));
        assert_eq!(s.maintenance_margin, dec!(7965));
        assert_eq!(s.margin_ratio, MarginRatio::Finite(dec!(0.0885)));
        assert_eq!(s.free_margin, dec!(82035));
        let mms: Vec<_> = s.positions.iter().map(|p| p.maintenance_margin).collect();
        assert_eq!(mms, vec![dec!(3145), dec!(2200), dec!(2620)]);
        let tiers: Vec<_> = s.positions.iter().map(|p| p.tier).collect();
        assert_eq!(tiers, vec![3, 2, 3]);
        assert_eq!(s.collateral[0].value, dec!(85500)); // BTC sorts before USDT
    }

    /// W4 and §4.1: full revaluation under the scenario table, to the cent.
    #[test]
    fn w4_and_stress_table() {
        let u = universe();
        let a = w3_account();
        let rows = [
            // (btc, eth, sol factors, equity, MM, ratio %)
            (
                (dec!(1.1), dec!(1.1), dec!(1.1)),
                dec!(176550.00),
                dec!(8899.50),
                Some(dec!(5.04)),
            ),
            (
                (dec!(1), dec!(1), dec!(1)),
                dec!(90000.00),
                dec!(7965.00),
                Some(dec!(8.85)),
            ),
            (
                (dec!(0.95), dec!(0.95), dec!(0.95)),
                dec!(46725.00),
                dec!(7500.00),
                Some(dec!(16.05)),
            ),
            (
                (dec!(0.9), dec!(0.9), dec!(0.9)),
                dec!(3450.00),
                dec!(7080.00),
                Some(dec!(205.22)),
            ),
            (
                (dec!(0.8), dec!(0.8), dec!(0.8)),
                dec!(-83100.00),
                dec!(6240.00),
                None,
            ),
            (
                (dec!(0.9), dec!(1), dec!(1)),
                dec!(18450.00),
                dec!(7605.00),
                Some(dec!(41.22)),
            ),
            (
                (dec!(1), dec!(1), dec!(1.2)),
                dec!(30000.00),
                dec!(8565.00),
                Some(dec!(28.55)),
            ),
        ];
        for ((b, e, so), eq, mm, r) in rows {
            let s = account_snapshot(&a, &u, &w3_prices(b, e, so), dec!(1)).unwrap();
            assert_eq!(to_cents(s.equity), eq, "{b} {e} {so}");
            assert_eq!(to_cents(s.maintenance_margin), mm, "{b} {e} {so}");
            assert_eq!(ratio_pct(s.margin_ratio), r, "{b} {e} {so}");
        }
        // W4 per-position MM after −10 %: BTC drops to tier 2.
        let s =
            account_snapshot(&a, &u, &w3_prices(dec!(0.9), dec!(0.9), dec!(0.9)), dec!(1)).unwrap();
        let mms: Vec<_> = s.positions.iter().map(|p| p.maintenance_margin).collect();
        assert_eq!(mms, vec![dec!(2785), dec!(1975), dec!(2320)]);
        assert_eq!(s.positions[0].tier, 2);
    }

    /// W5: the uniform-shock root through a tier change is exactly −1,368/14,285, and the
    /// account re-priced there sits on the trigger (equity = MM = 7,115.58).
    #[test]
    fn w5_exact_shock_root() {
        let u = universe();
        let a = w3_account();
        let prices = w3_prices(dec!(1), dec!(1), dec!(1));
        let d = shock_distance(&a, &u, &prices, dec!(1)).unwrap();
        assert_eq!(d.down, Some(dec!(-1368) / dec!(14285)));
        assert_eq!(d.up, None, "net delta is long: a rise never liquidates");
        assert_eq!(d.nearest, d.down);
        let pm = shock_problem(&a, &u, &prices, dec!(1)).unwrap();
        let x = Decimal::ONE + d.down.unwrap();
        let t = pm.reprice(x).unwrap();
        assert_eq!(to_cents(t.equity), dec!(7115.58));
        assert!((t.maintenance_margin - t.equity).abs() < dec!(1e-20));
        // The naive frozen-tier root −9.581793 % is not what we report.
        assert_eq!((d.down.unwrap() * dec!(100)).round_dp(6), dec!(-9.576479));
        // The snapshot carries it too.
        let s = account_snapshot(&a, &u, &prices, dec!(1)).unwrap();
        assert_eq!(s.shock_distance, d);
    }

    /// W3 per-position liquidation prices re-price to the trigger, each moving only its own
    /// underlying (BTC perp and BTC collateral together).
    #[test]
    fn w3_liquidation_prices_reach_trigger() {
        let u = universe();
        let a = w3_account();
        let prices = w3_prices(dec!(1), dec!(1), dec!(1));
        let s = account_snapshot(&a, &u, &prices, dec!(1)).unwrap();
        for (p, risk) in a.positions.iter().zip(&s.positions) {
            let (pm, p0) = liquidation_problem(&a, &u, &prices, p, dec!(1))
                .unwrap()
                .unwrap();
            let lp = risk.liquidation_price.expect("reachable");
            assert!(lp > Decimal::ZERO);
            let t = pm.reprice(lp).unwrap();
            assert!(
                (t.maintenance_margin - t.equity).abs() < dec!(1e-18),
                "{}: {t:?}",
                p.instrument
            );
            // Long legs liquidate on a fall, the SOL short on a rise.
            assert_eq!(lp < p0, p.quantity > Decimal::ZERO);
        }
    }

    /// When the perp's mark and the collateral's index differ, the liquidation price moves
    /// them in proportion and still re-prices to the trigger; other underlyings stay frozen.
    #[test]
    fn liquidation_price_with_basis_between_mark_and_index() {
        let u = universe();
        let a = w3_account();
        let mut prices = w3_prices(dec!(1), dec!(1), dec!(1));
        prices.insert("BTC".into(), dec!(59950)); // index 50 below the mark
        let p = &a.positions[0];
        let (pm, p0) = liquidation_problem(&a, &u, &prices, p, dec!(1))
            .unwrap()
            .unwrap();
        assert_eq!(p0, dec!(60000));
        assert_eq!(pm.legs.len(), 1, "only BTC legs move");
        assert_eq!(pm.collateral.len(), 1, "BTC collateral moves with it");
        assert_eq!(pm.collateral[0].price_factor, dec!(59950) / dec!(60000));
        let lp = pm.liquidation_price(p0).unwrap().unwrap();
        let t = pm.reprice(lp).unwrap();
        assert!(
            (t.maintenance_margin - t.equity).abs() < dec!(1e-18),
            "{t:?}"
        );
        // Frozen ETH and SOL figures are in the fixed part: equity(60,000) is today's.
        let today = pm.reprice(p0).unwrap();
        let s = account_snapshot(&a, &u, &prices, dec!(1)).unwrap();
        assert_eq!(normalise(today.equity), s.equity);
        assert_eq!(normalise(today.maintenance_margin), s.maintenance_margin);
    }

    /// W6: inverse BTCUSD, 100 contracts of 100 USD at 25,000 → MM 0.0016 BTC = 40 USD.
    #[test]
    fn w6_inverse_mm_and_pnl() {
        let mut i = btcusdt();
        i.kind = InstrumentKind::InversePerpetual;
        i.contract_size = dec!(100);
        i.tiers = vec![tier(dec!(0), dec!(5), dec!(0.004), dec!(0))];
        let f = position_figures(&i, dec!(100), dec!(30000), dec!(25000)).unwrap();
        assert_eq!(f.maintenance_margin, dec!(40)); // 0.0016 BTC × 25,000
        // uPnL = −1/15 BTC × 25,000 = −1,666.666… USD
        assert_eq!(to_cents(f.unrealized_pnl), dec!(-1666.67));
    }

    fn w6_setup(
        q: Decimal,
    ) -> (
        HashMap<InstrumentId, Instrument>,
        Account,
        HashMap<InstrumentId, Decimal>,
    ) {
        let mut inv = contract(
            "BTCUSD-INV-PERP",
            "BTC",
            vec![tier(dec!(0), dec!(50), dec!(0.004), dec!(0))],
        );
        inv.kind = InstrumentKind::InversePerpetual;
        inv.contract_size = dec!(100);
        let btc = coin("BTC", dec!(1), false);
        let u: HashMap<_, _> = [inv, btc].into_iter().map(|i| (i.id.clone(), i)).collect();
        let mut collateral = BTreeMap::new();
        collateral.insert(InstrumentId::from("BTC"), dec!(0.1));
        let a = Account {
            id: "w6".into(),
            collateral,
            positions: vec![pos("BTCUSD-INV-PERP", q, dec!(30000))],
            thresholds: None,
        };
        let mut p = HashMap::new();
        p.insert("BTCUSD-INV-PERP".into(), dec!(25000));
        p.insert("BTC".into(), dec!(25000));
        (u, a, p)
    }

    /// W6 cross: margin balance 1/30 BTC (833.33 USD), ratio 4.80 %, LP 23,169.23; the same
    /// size short has LP 42,685.71.
    #[test]
    fn w6_inverse_cross_account_and_lp() {
        let (u, a, p) = w6_setup(dec!(100));
        let s = account_snapshot(&a, &u, &p, dec!(1)).unwrap();
        assert_eq!(to_cents(s.equity), dec!(833.33));
        assert_eq!(s.maintenance_margin, dec!(40));
        assert_eq!(ratio_pct(s.margin_ratio), Some(dec!(4.80)));
        let lp = s.positions[0].liquidation_price.unwrap();
        assert_eq!(to_cents(lp), dec!(23169.23));
        let (u, a, p) = w6_setup(dec!(-100));
        let s = account_snapshot(&a, &u, &p, dec!(1)).unwrap();
        assert_eq!(
            to_cents(s.positions[0].liquidation_price.unwrap()),
            dec!(42685.71)
        );
    }

    /// W8 (Bybit UTA): MM 11,680, margin balance 155,000, account MM rate 7.54 %; at exactly
    /// 2,000,000 both tiers give 10,000.
    #[test]
    fn w8_bybit_cross() {
        let by = contract(
            "BYBIT-BTCUSDT-PERP",
            "BTC",
            vec![
                tier(dec!(0), dec!(2000000), dec!(0.005), dec!(0)),
                tier(dec!(2000000), dec!(2600000), dec!(0.0056), dec!(1200)),
            ],
        );
        let u: HashMap<_, _> = [
            by.clone(),
            coin("USDT", dec!(1), true),
            coin("BTC", dec!(0.98), false),
        ]
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
        let mut collateral = BTreeMap::new();
        collateral.insert(InstrumentId::from("USDT"), dec!(60000));
        collateral.insert(InstrumentId::from("BTC"), dec!(0.5));
        let a = Account {
            id: "w8".into(),
            collateral,
            positions: vec![pos("BYBIT-BTCUSDT-PERP", dec!(23), dec!(98000))],
            thresholds: None,
        };
        let mut p = HashMap::new();
        p.insert("BYBIT-BTCUSDT-PERP".into(), dec!(100000));
        p.insert("BTC".into(), dec!(100000));
        let s = account_snapshot(&a, &u, &p, dec!(1)).unwrap();
        assert_eq!(s.maintenance_margin, dec!(11680));
        assert_eq!(s.equity, dec!(155000));
        assert_eq!(ratio_pct(s.margin_ratio), Some(dec!(7.54)));
        // Cap 2,000,000 exactly, and one cent (one tick) past it.
        let at = position_figures(&by, dec!(20), dec!(1), dec!(100000)).unwrap();
        assert_eq!(at.maintenance_margin, dec!(10000));
        assert_eq!(dec!(2000000) * dec!(0.005), dec!(10000));
        let past = position_figures(&by, dec!(1), dec!(1), dec!(2000000.01)).unwrap();
        assert_eq!(past.tier, 1);
        assert_eq!(to_cents(past.maintenance_margin), dec!(10000.00));
    }

    fn hl_btc() -> Instrument {
        // Hyperliquid: mmr = 1/(2·max leverage): 40× → 1.25 %, 20× above 150 M → 2.5 %.
        contract(
            "HL-BTC-PERP",
            "BTC",
            vec![
                tier(dec!(0), dec!(150000000), dec!(0.0125), dec!(0)),
                tier(dec!(150000000), dec!(1e12), dec!(0.025), dec!(1875000)),
            ],
        )
    }

    /// W10 (Hyperliquid): account value 10,000, MM 1,250, LP 7,200,000/79 = 91,139.24, and the
    /// tiered MM at 200 M notional is 3,125,000.
    #[test]
    fn w10_hyperliquid() {
        let u: HashMap<_, _> = [hl_btc(), coin("USDC", dec!(1), true)]
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let mut collateral = BTreeMap::new();
        collateral.insert(InstrumentId::from("USDC"), dec!(5000));
        let a = Account {
            id: "w10".into(),
            collateral,
            positions: vec![pos("HL-BTC-PERP", dec!(1), dec!(95000))],
            thresholds: None,
        };
        let mut p = HashMap::new();
        p.insert("HL-BTC-PERP".into(), dec!(100000));
        let s = account_snapshot(&a, &u, &p, dec!(1)).unwrap();
        assert_eq!(s.equity, dec!(10000));
        assert_eq!(s.maintenance_margin, dec!(1250));
        assert_eq!(s.free_margin, dec!(8750));
        let lp = s.positions[0].liquidation_price.unwrap();
        assert_eq!(lp, dec!(7200000) / dec!(79));
        assert_eq!(to_cents(lp), dec!(91139.24));
        let f = position_figures(&hl_btc(), dec!(2000), dec!(100000), dec!(100000)).unwrap();
        assert_eq!(f.maintenance_margin, dec!(3125000));
    }

    /// W11 (dYdX flat maintenance fractions) fits as single-tier instruments: the uniform
    /// shock is x* = 500/613, s* = −18.433931 %.
    #[test]
    fn w11_flat_fraction_shock() {
        let one = |id: &str, mmr: Decimal| {
            contract(id, id, vec![tier(dec!(0), dec!(1e15), mmr, dec!(0))])
        };
        let u: HashMap<_, _> = [
            one("BTC-USD", dec!(0.012)),
            one("ETH-USD", dec!(0.012)),
            one("LINK-USD", dec!(0.05)),
            coin("USDC", dec!(1), true),
        ]
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
        let mut collateral = BTreeMap::new();
        collateral.insert(InstrumentId::from("USDC"), dec!(13000));
        let a = Account {
            id: "w11".into(),
            collateral,
            positions: vec![
                pos("BTC-USD", dec!(1), dec!(60000)),
                pos("ETH-USD", dec!(-10), dec!(3000)),
                pos("LINK-USD", dec!(1000), dec!(15)),
            ],
            thresholds: None,
        };
        let p: HashMap<InstrumentId, Decimal> = [
            ("BTC-USD".into(), dec!(58000)),
            ("ETH-USD".into(), dec!(3100)),
            ("LINK-USD".into(), dec!(14)),
        ]
        .into_iter()
        .collect();
        let s = account_snapshot(&a, &u, &p, dec!(1)).unwrap();
        assert_eq!(s.equity, dec!(9000));
        assert_eq!(s.maintenance_margin, dec!(1768));
        let down = s.shock_distance.down.unwrap();
        assert_eq!(down, dec!(-113) / dec!(613));
        assert_eq!((down * dec!(100)).round_dp(6), dec!(-18.433931));
    }

    /// §4.3: at the W4 state with 0.5 % on every symbol the penalty is 6,210.00.
    #[test]
    fn liquidation_penalty_at_w4() {
        let u = universe();
        let s = account_snapshot(
            &w3_account(),
            &u,
            &w3_prices(dec!(0.9), dec!(0.9), dec!(0.9)),
            dec!(1),
        )
        .unwrap();
        assert_eq!(s.liquidation_penalty, dec!(6210));
    }

    /// Hedge mode: a long and a short leg on one instrument are each margined in their own
    /// bracket (MM does not net), and the distances account for both legs.
    #[test]
    fn hedge_mode_legs() {
        let u = universe();
        let mut collateral = BTreeMap::new();
        collateral.insert(InstrumentId::from("USDT"), dec!(10000));
        let a = Account {
            id: "hedge".into(),
            collateral,
            positions: vec![
                Position {
                    instrument: "BTCUSDT-PERP".into(),
                    side: PositionSide::Long,
                    quantity: dec!(10),
                    entry_price: dec!(60000),
                },
                Position {
                    instrument: "BTCUSDT-PERP".into(),
                    side: PositionSide::Short,
                    quantity: dec!(-10),
                    entry_price: dec!(60000),
                },
            ],
            thresholds: None,
        };
        let prices = w3_prices(dec!(1), dec!(1), dec!(1));
        let s = account_snapshot(&a, &u, &prices, dec!(1)).unwrap();
        assert_eq!(s.equity, dec!(10000));
        assert_eq!(s.maintenance_margin, dec!(5900)); // 2 × 2,950, not 0
        // Net delta 0: equity is flat, MM grows with the price, so only a rise can trigger:
        // 20·P·0.0065 − 1,900 = 10,000 → P = 91,538.46…, s = +52.56 %.
        let d = s.shock_distance;
        assert_eq!(d.down, None);
        let up = d.up.unwrap();
        let pm = shock_problem(&a, &u, &prices, dec!(1)).unwrap();
        let t = pm.reprice(Decimal::ONE + up).unwrap();
        assert!((t.maintenance_margin - t.equity).abs() < dec!(1e-20));
        assert_eq!(to_cents(dec!(60000) * (Decimal::ONE + up)), dec!(91538.46));
        for p in &s.positions {
            assert_eq!(to_cents(p.liquidation_price.unwrap()), dec!(91538.46));
        }
    }

    /// Edge cases: an empty account is infinitely risky with no distance; collateral alone is
    /// ratio 0 with no distance; negative equity is infinite and reports where it would stop
    /// being triggered.
    #[test]
    fn empty_no_positions_negative_equity() {
        let u = universe();
        let prices = w3_prices(dec!(1), dec!(1), dec!(1));
        let empty = Account {
            id: "e".into(),
            collateral: BTreeMap::new(),
            positions: vec![],
            thresholds: None,
        };
        let s = account_snapshot(&empty, &u, &prices, dec!(1)).unwrap();
        assert_eq!(s.equity, Decimal::ZERO);
        assert_eq!(s.margin_ratio, MarginRatio::Infinite);
        assert_eq!(s.shock_distance, ShockDistance::default());
        assert!(s.positions.is_empty());

        let mut only = empty.clone();
        only.collateral.insert("BTC".into(), dec!(1));
        let s = account_snapshot(&only, &u, &prices, dec!(1)).unwrap();
        assert_eq!(s.equity, dec!(57000));
        assert_eq!(s.margin_ratio, MarginRatio::Finite(Decimal::ZERO));
        assert_eq!(s.shock_distance.nearest, None);

        // W3 at −20 %: bankrupt; a rise back of the root's size un-triggers it.
        let p = w3_prices(dec!(0.8), dec!(0.8), dec!(0.8));
        let s = account_snapshot(&w3_account(), &u, &p, dec!(1)).unwrap();
        assert!(s.equity < Decimal::ZERO);
        assert_eq!(s.margin_ratio, MarginRatio::Infinite);
        let up = s.shock_distance.up.unwrap();
        let back = dec!(0.8) * (Decimal::ONE + up);
        assert!((back - dec!(12917) / dec!(14285)).abs() < dec!(1e-20));
    }

    /// Zero prices: a linear contract at 0 is valued (notional 0, MM 0); an inverse contract at
    /// 0 is a clear error; a collateral at 0 is worth 0.
    #[test]
    fn zero_prices() {
        let i = btcusdt();
        let f = position_figures(&i, dec!(2), dec!(100), Decimal::ZERO).unwrap();
        assert_eq!(f.notional, Decimal::ZERO);
        assert_eq!(f.maintenance_margin, Decimal::ZERO);
        assert_eq!(f.unrealized_pnl, dec!(-200));
        let mut inv = btcusdt();
        inv.kind = InstrumentKind::InversePerpetual;
        assert!(matches!(
            position_figures(&inv, dec!(1), dec!(100), Decimal::ZERO),
            Err(MarginError::NonPositivePrice { .. })
        ));
        let c = coin("BTC", dec!(0.95), false);
        assert_eq!(
            collateral_value(&c, dec!(3), Decimal::ZERO).unwrap(),
            Decimal::ZERO
        );
        // A snapshot with a zero-priced position has no liquidation price for it.
        let u = universe();
        let mut p = w3_prices(dec!(1), dec!(1), dec!(1));
        p.insert("SOLUSDT-PERP".into(), Decimal::ZERO);
        let s = account_snapshot(&w3_account(), &u, &p, dec!(1)).unwrap();
        assert_eq!(s.positions[2].liquidation_price, None);
    }

    /// Tiered haircut is applied slice by slice; borrowed balances count at 100 %.
    #[test]
    fn tiered_and_negative_collateral() {
        let mut i = btcusdt();
        i.kind = InstrumentKind::Collateral;
        i.haircut_tiers = vec![
            HaircutTier {
                amount_floor: dec!(0),
                ratio: dec!(0.98),
            },
            HaircutTier {
                amount_floor: dec!(10),
                ratio: dec!(0.95),
            },
            HaircutTier {
                amount_floor: dec!(20),
                ratio: dec!(0.90),
            },
        ];
        assert_eq!(
            collateral_value(&i, dec!(15), dec!(1)).unwrap(),
            dec!(14.55)
        );
        assert_eq!(
            collateral_value(&i, dec!(-2), dec!(100)).unwrap(),
            dec!(-200)
        );
    }

    /// Overflow is an error, not a panic, in figures, snapshots and distances.
    #[test]
    fn huge_quantities_overflow_cleanly() {
        let i = btcusdt();
        let r = position_figures(&i, Decimal::MAX, dec!(1), Decimal::MAX);
        assert!(matches!(r, Err(MarginError::Overflow { .. })));
        let u = universe();
        let mut a = w3_account();
        a.positions[0].quantity = dec!(1e24);
        let r = account_snapshot(&a, &u, &w3_prices(dec!(1), dec!(1), dec!(1)), dec!(1));
        assert!(matches!(r, Err(MarginError::Overflow { .. })), "{r:?}");
        a.positions[0].quantity = dec!(1e20);
        // Fits in the totals but not in the distance maths: still an error, never a panic.
        let _ = account_snapshot(&a, &u, &w3_prices(dec!(1), dec!(1), dec!(1)), dec!(1));
    }
}
