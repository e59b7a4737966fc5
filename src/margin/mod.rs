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

pub mod call; // the margin call: the deposit that makes an account healthy again
pub mod fixed; // the one i128 fast path, bit-for-bit equal to Decimal
pub mod funding; // next funding payments and the margin ratio after them
mod liquidation; // what a liquidation costs: penalty, surplus or shortfall, venue procedure
mod shock; // uniform-shock distance and liquidation prices

pub use liquidation::*;
pub use shock::*;

use crate::model::{
    Account, CollateralRisk, HaircutTier, Instrument, InstrumentId, MarginRatio, MarginTier,
    PositionRisk, RiskSnapshot, ShockDistance, TierBasis,
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
    // On the magnitude (one 64×64 multiplication, or one division), for every non-zero value
    // whose result fits; bit for bit the definition below (`normalise_fast_is_normalise`).
    if let Some(n) = fixed::normalise_fast(d.mantissa(), d.scale()) {
        return n;
    }
    normalise_decimal(d)
}

/// [`normalise`] in `Decimal`: the definition.
pub(crate) fn normalise_decimal(d: Decimal) -> Decimal {
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

/// `d` as `f64`, to within a few ulps (at most 8: the property test
/// `fast_conversion_is_within_ulps`), for the `f64` filters in front of exact work — the shock
/// solver's (tolerance ~10⁷ ulps) and the distance index's bands (10⁻⁹) — where `rust_decimal`'s
/// correctly rounded `to_f64` costs several hundred instructions: the mantissa over a power of
/// ten. The mantissa's 96 bits
/// are converted as two 64-bit halves: an `i128` to `f64` cast is a slow runtime call
/// (`__floattidf`, ~5 % of an event's snapshot), and the compiler turns a "fits `i64`?" branch
/// back into that call.
#[inline]
pub fn fast_f64(d: Decimal) -> Option<f64> {
    const POW10: [f64; 29] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28,
    ];
    const TWO64: f64 = 18_446_744_073_709_551_616.0;
    let u = d.unpack();
    let low = (u64::from(u.mid) << 32) | u64::from(u.lo);
    // Each half is exact or rounded once; their sum rounds once more: a few ulps at most.
    let mag = f64::from(u.hi) * TWO64 + low as f64;
    let v = if u.negative { -mag } else { mag } / POW10.get(u.scale as usize)?;
    v.is_finite().then_some(v)
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

/// `Σ |MM just below floor − MM at floor|` of a linear position over the tier boundaries
/// (`MM = N·mmr − cum`; `None` on overflow): 0 when `cum` makes MM continuous, as venues define
/// it. The distance index pays these jumps in its bands; the shock filter needs 0 to call a
/// book monotone.
pub fn tier_jumps(tiers: &[MarginTier]) -> Option<Decimal> {
    let mut total = Decimal::ZERO;
    for w in tiers.windows(2) {
        let [lo, hi] = w else { continue };
        let f = hi.notional_floor;
        let left = f.checked_mul(lo.mmr)?.checked_sub(lo.cum)?;
        let right = f.checked_mul(hi.mmr)?.checked_sub(hi.cum)?;
        total = total.checked_add(left.checked_sub(right)?.abs())?;
    }
    Some(total)
}

/// The bracket of a position of `abs_q` contracts with this notional: by notional, or by
/// contract count for `tier_basis = "contracts"` (OKX).
pub fn select_tier_of(
    instrument: &Instrument,
    abs_q: Decimal,
    notional: Decimal,
) -> Result<(usize, &MarginTier), MarginError> {
    let basis = match instrument.margin.tier_basis {
        TierBasis::Notional => notional,
        TierBasis::Contracts => abs_q,
    };
    select_tier(&instrument.tiers, basis).ok_or_else(|| MarginError::NoTiers(instrument.id.clone()))
}

/// The maintenance rate applied to a position's whole notional in bracket `t`:
/// `mmr + mmr_size_slope·|q|·cs (+ liquidation_fee_rate when it is inside MM)`.
pub fn mm_rate(
    instrument: &Instrument,
    t: &MarginTier,
    abs_q: Decimal,
) -> Result<Decimal, MarginError> {
    let o = &instrument.margin;
    let mut rate = t.mmr;
    if !o.mmr_size_slope.is_zero() {
        let size = mul(abs_q, instrument.contract_size, "size-linear MM rate")?;
        rate = add(
            rate,
            mul(size, o.mmr_size_slope, "size-linear MM rate")?,
            "size-linear MM rate",
        )?;
    }
    if o.liquidation_fee_in_mm {
        rate = add(
            rate,
            instrument.liquidation_fee_rate,
            "MM with liquidation fee",
        )?;
    }
    Ok(rate)
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
    // The `MarginOptions` (OKX contract tiers, Deribit's size-linear rate, fee in MM) take the
    // `Decimal` path explicitly: the fast path knows only the plain bracket model.
    if !instrument.kind.is_inverse()
        && instrument.contract_size == Decimal::ONE
        && instrument.margin.is_plain()
        && let Some(v) = fixed::linear_unit_fast(&instrument.tiers, quantity, entry, price)
    {
        return Ok(v);
    }
    let f = position_figures_exact(instrument, quantity, entry, price)?;
    Ok((normalise(f.unrealized_pnl), normalise(f.maintenance_margin)))
}

/// One price of one instrument, for valuing many of its positions: [`position_pnl_mm`] of
/// each, exactly, with the price and the tiers decoded once (a tick revalues every holder of
/// an instrument at one price). Linear contracts of size 1 on plain brackets go through
/// [`fixed::LinearTick`]; anything it declines takes [`position_pnl_mm`].
#[derive(Debug)]
pub struct PositionPricer<'a> {
    instrument: &'a Instrument,
    price: Decimal,
    fast: Option<fixed::LinearTick<'a>>,
}

impl<'a> PositionPricer<'a> {
    /// `instrument` at `price`.
    pub fn new(instrument: &'a Instrument, price: Decimal) -> Self {
        let linear_unit = !instrument.kind.is_inverse()
            && instrument.contract_size == Decimal::ONE
            && instrument.margin.is_plain();
        PositionPricer {
            instrument,
            price,
            fast: linear_unit
                .then(|| fixed::LinearTick::new(&instrument.tiers, price))
                .flatten(),
        }
    }

    /// The price.
    pub fn price(&self) -> Decimal {
        self.price
    }

    /// `position_pnl_mm(instrument, quantity, entry, price)`.
    #[inline]
    pub fn pnl_mm(
        &mut self,
        quantity: Decimal,
        entry: Decimal,
    ) -> Result<(Decimal, Decimal), MarginError> {
        if let Some(v) = self.fast.as_mut().and_then(|f| f.value(quantity, entry)) {
            return Ok(v);
        }
        position_pnl_mm(self.instrument, quantity, entry, self.price)
    }

    /// The integer fast path of [`PositionPricer::pnl_mm`] on a quantity and an entry taken
    /// apart (signed mantissa, scale): the mantissas of `(uPnL, MM)` at [`ACCOUNTING_SCALE`],
    /// exactly what `pnl_mm` returns, or `None` where the fast path declines (`pnl_mm` then
    /// takes the `Decimal` definition).
    #[inline]
    pub(crate) fn value_fx(
        &mut self,
        quantity: fixed::Fx,
        entry: fixed::Fx,
    ) -> Option<(i128, i128)> {
        self.fast.as_mut()?.value_fx(quantity, entry)
    }
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
    // Linear contracts of size 1 on plain brackets on mantissas when every step is exact: bit
    // for bit the steps of the definition (`exact_figures_fast_path_matches_decimal`).
    if !instrument.kind.is_inverse()
        && instrument.contract_size == Decimal::ONE
        && instrument.margin.is_plain()
        && let Some((notional, upnl, mm, tier)) =
            fixed::linear_unit_exact(&instrument.tiers, quantity, entry, price)
    {
        return Ok(PositionFigures {
            notional,
            unrealized_pnl: upnl,
            maintenance_margin: mm,
            tier,
        });
    }
    position_figures_decimal(instrument, quantity, entry, price)
}

/// [`position_figures_exact`] in `Decimal`: the definition the fast paths are checked against.
pub(crate) fn position_figures_decimal(
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
        let (tier, t) = select_tier_of(instrument, abs_q, notional_coin)?;
        let rate = mm_rate(instrument, t, abs_q)?;
        let mm = sub(
            mul(face, rate, "inverse MM")?,
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
        let (tier, t) = select_tier_of(instrument, abs_q, notional)?;
        let rate = if instrument.margin.is_plain() {
            t.mmr
        } else {
            mm_rate(instrument, t, abs_q)?
        };
        let mm = sub(mul(notional, rate, "linear MM")?, t.cum, "linear MM")?;
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

    /// The instrument with its tiers in `f64` for the shock filter ([`TierFloats`]), when
    /// the lookup keeps them converted (the engine's instrument table does; the default
    /// converts nothing and the filter converts them itself — the same values either way).
    fn instrument_floats(&self, id: &InstrumentId) -> Option<(&Instrument, Option<&TierFloats>)> {
        self.instrument(id).map(|i| (i, None))
    }
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
    // Look up, price and value everything once; the distances reuse it.
    let r = ResolvedAccount::new(account, instruments, prices)?;
    let totals = r.totals()?;
    let mut positions = Vec::with_capacity(account.positions.len());
    let mut penalty = Decimal::ZERO;
    // One liquidation problem at a time, in the same vectors.
    let mut pm = PriceMove::default();
    for (index, (p, &(i, price, exact))) in account.positions.iter().zip(&r.positions).enumerate() {
        let f = PositionFigures {
            notional: normalise(exact.notional),
            unrealized_pnl: normalise(exact.unrealized_pnl),
            maintenance_margin: normalise(exact.maintenance_margin),
            tier: exact.tier,
        };
        let lp = match r.liquidation_problem_in(account, index, trigger, &mut pm)? {
            Some(p0) => pm.liquidation_prices(p0)?,
            None => LiquidationPrices::default(),
        };
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
            liquidation_price: lp.nearest,
            liquidation_price_down: lp.down,
            liquidation_price_up: lp.up,
        });
    }
    let mut collateral = Vec::with_capacity(account.collateral.len());
    for ((asset, amount), &(_, _, price, v)) in account.collateral.iter().zip(&r.collateral) {
        collateral.push(CollateralRisk {
            asset: asset.clone(),
            amount: *amount,
            price,
            value: normalise(v),
        });
    }
    let shock = shock_distance_of(&r.shock_problem(account, trigger)?)?;
    Ok(RiskSnapshot {
        equity: totals.equity,
        maintenance_margin: totals.maintenance_margin,
        margin_ratio: MarginRatio::compute(totals.maintenance_margin, totals.equity),
        free_margin: sub(totals.equity, totals.maintenance_margin, "free margin")?,
        shock_distance: shock,
        liquidation_penalty: normalise(penalty),
        positions,
        collateral,
        liquidation_cost: None,
        funding: None,
        margin_call: None,
    })
}

#[cfg(test)]
mod options_tests;
#[cfg(test)]
mod tests;
