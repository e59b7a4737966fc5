//! Distances on one price variable: equity and MM are piecewise linear in a uniform move `z`
//! (every moving leg's price is `factor · z`), so the shock to the trigger and each position's
//! liquidation prices are roots of a line on a tier segment, found by walking the tier
//! intervals outwards in both directions.

use rust_decimal::Decimal;

use super::*;

mod filter;
pub use filter::TierFloats;
mod peak; // the highest g(z) over an interval (banding the distance levels)

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
    /// The instrument's tiers in `f64` when the lookup keeps them
    /// ([`InstrumentLookup::instrument_floats`]); `None`: the filter converts them.
    pub floats: Option<&'a TierFloats>,
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

/// The liquidation prices of one position found by [`PriceMove::liquidation_prices`], as
/// values of the price variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LiquidationPrices {
    /// The nearest price below the current one at which the trigger is reached (`> 0`).
    pub down: Option<Decimal>,
    /// The nearest price above the current one at which the trigger is reached.
    pub up: Option<Decimal>,
    /// The nearer of the two (the fall wins a tie).
    pub nearest: Option<Decimal>,
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
    // A product with a factor below 1 cannot overflow; checked all the same (no `*` on input).
    z.abs()
        .max(Decimal::ONE)
        .checked_mul(Decimal::new(1, 22))
        .unwrap_or(Decimal::ONE)
}

/// `z ≥ bound − eps`; a bound whose tolerance overflows `Decimal` is no bound at all.
fn at_least(z: Decimal, bound: Decimal, eps: Decimal) -> bool {
    bound.checked_sub(eps).is_none_or(|b| z >= b)
}

/// `z ≤ bound + eps`; a bound whose tolerance overflows `Decimal` is no bound at all.
fn at_most(z: Decimal, bound: Decimal, eps: Decimal) -> bool {
    bound.checked_add(eps).is_none_or(|b| z <= b)
}

impl<'a> PriceMove<'a> {
    /// The tier index of one leg when `z` is the price variable.
    fn tier_of(leg: &MovingLeg<'_>, z: Decimal) -> Result<usize, MarginError> {
        let tiers = &leg.instrument.tiers;
        if tiers.is_empty() {
            return Err(MarginError::NoTiers(leg.instrument.id.clone()));
        }
        if leg.instrument.margin.tier_basis == TierBasis::Contracts {
            // By contract count: the tier does not move with the price.
            return Ok(select_tier(tiers, leg.quantity.abs())
                .map(|(i, _)| i)
                .unwrap_or(0));
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
        match self.line_fixed(tiers) {
            Some(line) => Ok(line),
            None => self.line_decimal(tiers),
        }
    }

    /// [`PriceMove::line`] on mantissas when every leg is linear and every step is exact and
    /// non-zero (an ordinary book): the same `Decimal`s bit for bit, from the same steps in
    /// the same order (`fixed.rs`'s obligation; the property test `fixed_line_is_the_decimal_line`
    /// checks it), at a fraction of the cost. `None`: [`PriceMove::line_decimal`] decides,
    /// errors included.
    fn line_fixed(&self, tiers: &[usize]) -> Option<Line> {
        use super::fixed::{fx, fx_add, fx_decimal, fx_mul, fx_sub};
        let mut a = fx(self.fixed_equity);
        let mut b = (0, 0);
        let mut c = (0, 0);
        let mut d = fx(-self.fixed_mm);
        for (leg, &ti) in self.legs.iter().zip(tiers) {
            if leg.instrument.kind.is_inverse() {
                return None;
            }
            let t = leg.instrument.tiers.get(ti)?;
            let signed = fx_mul(fx(leg.quantity), fx(leg.instrument.contract_size))?;
            let size = (signed.0.abs(), signed.1);
            let k = fx(leg.price_factor);
            let rate = fx(mm_rate(leg.instrument, t, leg.quantity.abs()).ok()?);
            a = fx_sub(a, fx_mul(signed, fx(leg.entry_price))?)?;
            b = fx_add(b, fx_mul(signed, k)?)?;
            c = fx_add(c, fx_mul(fx_mul(size, k)?, rate)?)?;
            d = fx_add(d, fx(t.cum))?;
        }
        for col in &self.collateral {
            let w = haircut_weighted_amount(col.instrument, col.amount).ok()?;
            b = fx_add(b, fx_mul(fx(w), fx(col.price_factor))?)?;
        }
        let t = fx(self.trigger);
        Some(Line {
            k: fx_decimal(fx_sub(c, fx_mul(t, b)?)?),
            l: fx_decimal(fx_add(d, fx_mul(t, a)?)?),
        })
    }

    /// [`PriceMove::line`] in `Decimal`: the definition.
    fn line_decimal(&self, tiers: &[usize]) -> Result<Line, MarginError> {
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
            // The whole-notional rate (options included) is fixed for a fixed quantity.
            let rate = mm_rate(leg.instrument, t, leg.quantity.abs())?;
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
                d = sub(d, mul(size, rate, "shock D")?, "shock D")?;
            } else {
                // uPnL = q·cs·(k·z − EP); MM = |q|·cs·k·z·mmr − cum.
                a = sub(a, mul(signed, leg.entry_price, "shock A")?, "shock A")?;
                b = add(b, mul(signed, k, "shock B")?, "shock B")?;
                c = add(
                    c,
                    mul(mul(size, k, "shock C")?, rate, "shock C")?,
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
            if size.is_zero()
                || k <= Decimal::ZERO
                || leg.instrument.margin.tier_basis == TierBasis::Contracts
            {
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
        // The filter proves most intervals quiet in `f64` and runs the exact step on the
        // rest; where it declines, the plain walk below runs (the same result either way).
        if let Some(c) = filter::Filter::crossings(self, start)? {
            return Ok(c);
        }
        self.crossings_exact(start)
    }

    /// [`PriceMove::crossings`] without the filter: every interval solved in `Decimal`.
    pub fn crossings_exact(&self, start: Decimal) -> Result<Crossings, MarginError> {
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
            if let Some(root) = self.exact_step(start, near, far, line, prev, upwards)? {
                return Ok(Some(root));
            }
            prev = Some(line);
            match far {
                Some(f) => near = f,
                None => break,
            }
        }
        Ok(None)
    }

    /// One interval `[near, far]` of the walk (`far = None`: unbounded up, or down to 0) with
    /// its line and the previous interval's: a jump of `g` across 0 at `near` is a crossing at
    /// `near`; otherwise the line's root, when it lies inside the interval. Offsets from
    /// `start`.
    fn exact_step(
        &self,
        start: Decimal,
        near: Decimal,
        far: Option<Decimal>,
        line: Line,
        prev: Option<Line>,
        upwards: bool,
    ) -> Result<Option<Decimal>, MarginError> {
        if let Some(p) = prev {
            let before = p.at(near)?;
            let after = line.at(near)?;
            if (before < Decimal::ZERO) != (after < Decimal::ZERO) {
                return Ok(Some(sub(near, start, "crossing")?));
            }
        }
        // k = 0: g is constant on the interval (0 for an empty account), so no move
        // inside it changes the state; only a jump at a breakpoint (above) can.
        if line.k.is_zero() {
            return Ok(None);
        }
        let delta = Self::root_offset(start, line)?;
        let z = add(start, delta, "root")?;
        let eps = boundary_eps(z);
        let inside = if upwards {
            delta >= Decimal::ZERO
                && at_least(z, near, eps)
                && far.is_none_or(|f| at_most(z, f, eps))
        } else {
            delta <= Decimal::ZERO
                && z > Decimal::ZERO
                && at_most(z, near, eps)
                && far.is_none_or(|f| at_least(z, f, eps))
        };
        Ok(inside.then_some(delta))
    }

    /// The root of `line` as an offset from `start`: δ = (l − k·start)/k, so that start + δ is
    /// the root; for start = 1 this is the shock s* in a single division (W5: 82,080 /
    /// −857,100 = −1,368/14,285). `k ≠ 0`.
    fn root_offset(start: Decimal, line: Line) -> Result<Decimal, MarginError> {
        div(
            sub(line.l, mul(line.k, start, "root")?, "root")?,
            line.k,
            "root",
        )
    }

    /// The root of `line` where the filter has proved it lies strictly inside the interval
    /// (certain, opposite signs of `g` at both ends): what [`PriceMove::exact_step`] returns
    /// there, without the interval's ends.
    fn exact_root(&self, start: Decimal, line: Line) -> Result<Option<Decimal>, MarginError> {
        if line.k.is_zero() {
            // Cannot happen with opposite signs at two points; the step's answer all the same.
            return Ok(None);
        }
        Self::root_offset(start, line).map(Some)
    }

    /// The liquidation prices of margin-math §1.7 as values of `z`: the nearest crossing of
    /// the trigger below and above `start`, from the exact interval walk of
    /// [`PriceMove::crossings`], and the nearer of the two.
    ///
    /// Both directions are solved because both can reach the trigger (near-hedged books,
    /// hedge-mode legs near a bracket floor, linear against inverse on one underlying); the
    /// §1.7 tier re-check loop, started from today's tiers, can settle on the far root
    /// (regression for issue 12 item 2). The walk settles every tier change on the way, so
    /// no re-check is needed.
    pub fn liquidation_prices(&self, start: Decimal) -> Result<LiquidationPrices, MarginError> {
        if start <= Decimal::ZERO {
            return Ok(LiquidationPrices::default());
        }
        let c = self.crossings(start)?;
        let at = |d: Option<Decimal>| -> Result<Option<Decimal>, MarginError> {
            d.map(|d| add(start, d, "liquidation price")).transpose()
        };
        let (down, up) = (at(c.down)?, at(c.up)?);
        // `Crossings::nearest`, reusing the sum already taken.
        let nearest = match (c.down, c.up) {
            (Some(d), Some(u)) if u.abs() < d.abs() => up,
            (Some(_), _) => down,
            (None, _) => up,
        };
        Ok(LiquidationPrices { down, up, nearest })
    }

    /// The nearest liquidation price (a value of `z`, either direction, the fall winning a
    /// tie): [`PriceMove::liquidation_prices`]`.nearest`. `None` when no positive price
    /// reaches the trigger.
    pub fn liquidation_price(&self, start: Decimal) -> Result<Option<Decimal>, MarginError> {
        Ok(self.liquidation_prices(start)?.nearest)
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

/// An account with every instrument looked up, every price read and every position and
/// collateral balance valued once (exact): the shock problem and each position's
/// liquidation-price problem are built from it without valuing anything again (an event's
/// snapshot needs all of them).
pub struct ResolvedAccount<'a> {
    /// Per position: instrument, price, exact figures.
    pub positions: Vec<(&'a Instrument, Decimal, PositionFigures)>,
    /// Per collateral balance: instrument, amount, price, exact value.
    pub collateral: Vec<(&'a Instrument, Decimal, Decimal, Decimal)>,
    /// Per position: its instrument's tiers in `f64`, when the lookup keeps them.
    floats: Vec<Option<&'a TierFloats>>,
}

impl<'a> ResolvedAccount<'a> {
    /// Looks up, prices and values `account` (collateral first, then positions, in order).
    pub fn new(
        account: &Account,
        instruments: &'a dyn InstrumentLookup,
        prices: &dyn PriceLookup,
    ) -> Result<Self, MarginError> {
        let mut collateral = Vec::with_capacity(account.collateral.len());
        for (asset, amount) in &account.collateral {
            let i = lookup(instruments, asset)?;
            let price = price_of(i, prices)?;
            let v = collateral_value_exact(i, *amount, price)?;
            collateral.push((i, *amount, price, v));
        }
        let mut positions = Vec::with_capacity(account.positions.len());
        let mut floats = Vec::with_capacity(account.positions.len());
        for p in &account.positions {
            let (i, fl) = instruments
                .instrument_floats(&p.instrument)
                .ok_or_else(|| MarginError::UnknownInstrument(p.instrument.clone()))?;
            let price = price_of(i, prices)?;
            let f = position_figures_exact(i, p.quantity, p.entry_price, price)?;
            positions.push((i, price, f));
            floats.push(fl);
        }
        Ok(Self {
            positions,
            collateral,
            floats,
        })
    }

    /// Equity and MM as [`account_totals`] computes them (normalised parts, same order).
    pub fn totals(&self) -> Result<AccountTotals, MarginError> {
        let mut t = AccountTotals::default();
        for &(_, _, _, v) in &self.collateral {
            t.equity = add(t.equity, normalise(v), "equity")?;
        }
        for (_, _, f) in &self.positions {
            t.equity = add(t.equity, normalise(f.unrealized_pnl), "equity")?;
            t.maintenance_margin =
                add(t.maintenance_margin, normalise(f.maintenance_margin), "MM")?;
        }
        Ok(t)
    }

    /// The uniform-shock problem ([`shock_problem`]).
    pub fn shock_problem(
        &self,
        account: &Account,
        trigger: Decimal,
    ) -> Result<PriceMove<'a>, MarginError> {
        let mut pm = PriceMove {
            trigger,
            ..PriceMove::default()
        };
        for &(i, amount, price, v) in &self.collateral {
            if i.stable {
                pm.fixed_equity = add(pm.fixed_equity, v, "fixed equity")?;
            } else {
                pm.collateral.push(MovingCollateral {
                    instrument: i,
                    amount,
                    price_factor: price,
                });
            }
        }
        for ((p, &(i, price, _)), &floats) in account
            .positions
            .iter()
            .zip(&self.positions)
            .zip(&self.floats)
        {
            pm.legs.push(MovingLeg {
                instrument: i,
                quantity: p.quantity,
                entry_price: p.entry_price,
                price_factor: price,
                floats,
            });
        }
        Ok(pm)
    }

    /// The liquidation-price problem of position `index` ([`liquidation_problem`]).
    pub fn liquidation_problem(
        &self,
        account: &Account,
        index: usize,
        trigger: Decimal,
    ) -> Result<Option<(PriceMove<'a>, Decimal)>, MarginError> {
        let mut pm = PriceMove::default();
        Ok(self
            .liquidation_problem_in(account, index, trigger, &mut pm)?
            .map(|p0| (pm, p0)))
    }

    /// [`ResolvedAccount::liquidation_problem`] written into `pm` (its vectors reused: a
    /// snapshot solves one problem per position), returning the position's price; `None` (and
    /// `pm` left empty) as there.
    pub fn liquidation_problem_in(
        &self,
        account: &Account,
        index: usize,
        trigger: Decimal,
        pm: &mut PriceMove<'a>,
    ) -> Result<Option<Decimal>, MarginError> {
        pm.fixed_equity = Decimal::ZERO;
        pm.fixed_mm = Decimal::ZERO;
        pm.legs.clear();
        pm.collateral.clear();
        pm.trigger = trigger;
        let Some(&(own, p0, _)) = self.positions.get(index) else {
            return Ok(None);
        };
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
        for &(i, amount, price, v) in &self.collateral {
            if !i.stable && i.underlying == own.underlying {
                pm.collateral.push(MovingCollateral {
                    instrument: i,
                    amount,
                    price_factor: factor(price)?,
                });
            } else {
                pm.fixed_equity = add(pm.fixed_equity, v, "fixed equity")?;
            }
        }
        for ((p, (i, price, f)), &floats) in account
            .positions
            .iter()
            .zip(&self.positions)
            .zip(&self.floats)
        {
            if i.underlying == own.underlying {
                pm.legs.push(MovingLeg {
                    instrument: i,
                    quantity: p.quantity,
                    entry_price: p.entry_price,
                    price_factor: factor(*price)?,
                    floats,
                });
            } else {
                pm.fixed_equity = add(pm.fixed_equity, f.unrealized_pnl, "fixed equity")?;
                pm.fixed_mm = add(pm.fixed_mm, f.maintenance_margin, "fixed MM")?;
            }
        }
        Ok(Some(p0))
    }
}

/// The uniform-shock problem of an account: `z = 1 + s` multiplies every non-stable price.
pub fn shock_problem<'a>(
    account: &Account,
    instruments: &'a dyn InstrumentLookup,
    prices: &dyn PriceLookup,
    trigger: Decimal,
) -> Result<PriceMove<'a>, MarginError> {
    ResolvedAccount::new(account, instruments, prices)?.shock_problem(account, trigger)
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
    shock_distance_of(&pm)
}

/// The uniform-shock distance of a built shock problem (start `z = 1`).
pub fn shock_distance_of(pm: &PriceMove<'_>) -> Result<ShockDistance, MarginError> {
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
    let resolved = ResolvedAccount::new(account, instruments, prices)?;
    let index = account
        .positions
        .iter()
        .position(|p| std::ptr::eq(p, position))
        .or_else(|| account.positions.iter().position(|p| p == position));
    match index {
        Some(i) => resolved.liquidation_problem(account, i, trigger),
        None => {
            // A position not in the account: value it beside the account's own.
            let mut with = account.clone();
            with.positions.push(position.clone());
            let resolved = ResolvedAccount::new(&with, instruments, prices)?;
            resolved.liquidation_problem(&with, with.positions.len() - 1, trigger)
        }
    }
}

/// The liquidation prices of one position of the account (margin-math §1.7, cross): the
/// prices of its instrument, nearest below and above its mark, at which the ratio reaches
/// `trigger`, its underlying's other instruments moving with it and every other price fixed.
/// Each is `None` when not reachable in that direction.
pub fn liquidation_prices_of(
    account: &Account,
    instruments: &dyn InstrumentLookup,
    prices: &dyn PriceLookup,
    position: &crate::model::Position,
    trigger: Decimal,
) -> Result<LiquidationPrices, MarginError> {
    match liquidation_problem(account, instruments, prices, position, trigger)? {
        Some((pm, p0)) => pm.liquidation_prices(p0),
        None => Ok(LiquidationPrices::default()),
    }
}

/// The nearest liquidation price of one position ([`liquidation_prices_of`]`.nearest`).
pub fn liquidation_price_of(
    account: &Account,
    instruments: &dyn InstrumentLookup,
    prices: &dyn PriceLookup,
    position: &crate::model::Position,
    trigger: Decimal,
) -> Result<Option<Decimal>, MarginError> {
    Ok(liquidation_prices_of(account, instruments, prices, position, trigger)?.nearest)
}

#[cfg(test)]
mod tests;
