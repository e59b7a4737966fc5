//! VaR, expected shortfall, probability of liquidation and component ES of account equity
//! under historical scenarios, with the convention of margin-math §4.2:
//!
//! - **Full revaluation**: in scenario `i` every non-stable instrument is priced at
//!   `P·(1 + r_i,u)` (`u` its underlying; collateral included), and equity and tiered MM come
//!   from the margin model ([`crate::margin`]). `PnL_i = equity_i − equity_0`.
//! - `k = ⌈N·(1 − α)⌉`, computed in exact decimal arithmetic; the scenarios are sorted by PnL
//!   ascending (ties by scenario order). `VaR = −PnL_(k)`; `ES = −(PnL_(1) + … + PnL_(k)) / k`.
//! - **P(liquidation)** = the fraction of scenarios whose ratio reaches the account's trigger:
//!   `MM ≠ 0` and (`equity ≤ 0` or `MM ≥ trigger·equity`), compared exactly.
//! - **Component ES** of a position or a collateral balance = minus the mean of its own PnL
//!   over the k tail scenarios. Equity is a sum of these parts, so the components add up to ES.
//!
//! Figures are exact: linear contracts and collateral are valued without any rounding; an
//! inverse contract's USD value needs a division, so it takes the margin model's normalised
//! figures (12 places, as the engine caches them). ES and component ES are rounded half-up to
//! 12 places; the rounding residue (under `components × 10⁻¹²`) is given to the component with
//! the largest tail loss, so the components sum to ES exactly.
//!
//! An account whose parts are all linear (linear contracts and collateral) is evaluated by the
//! compiled fast path in `linear.rs`: equity is one line per underlying (exact: a linear perp's
//! PnL is `q·P·r`), MM a walk over the tiers the scenarios can reach, all in `i128`. Anything
//! else takes the full revaluation below, which is also the fast path's oracle in the tests.

use std::collections::HashMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use super::linear;
use super::scenarios::{RETURN_SCALE, ScenarioSet};
use crate::margin::{
    self, MarginError, collateral_value_exact, fixed::exact_add, position_figures,
    position_figures_exact,
};
use crate::model::{
    Account, AccountId, Instrument, InstrumentId, MarginRatio, PositionSide, format_rfc3339_ms,
};

/// Why an account's risk could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RiskError {
    /// α is not in (0, 1), or there are no scenarios.
    #[error("{0}")]
    Params(String),
    /// The margin model refused (unknown instrument, no price, overflow, …).
    #[error(transparent)]
    Margin(#[from] MarginError),
    /// The scenarios have no column for an underlying the account holds.
    #[error("the scenarios have no returns for {0}")]
    NoReturns(String),
    /// A figure left the range where `Decimal` is exact.
    #[error("a figure of the account is beyond exact decimal range ({0})")]
    Inexact(&'static str),
}

/// `k = ⌈N·(1 − α)⌉` in exact arithmetic, for `0 < α < 1` and `N ≥ 1`.
pub fn tail_count(n: usize, alpha: Decimal) -> Result<usize, RiskError> {
    if alpha <= Decimal::ZERO || alpha >= Decimal::ONE {
        return Err(RiskError::Params(format!(
            "alpha must be between 0 and 1 (e.g. 0.99), got {alpha}"
        )));
    }
    if n == 0 {
        return Err(RiskError::Params("no scenarios".into()));
    }
    let k = Decimal::from(n)
        .checked_mul(Decimal::ONE - alpha)
        .map(|x| x.ceil())
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| RiskError::Params(format!("N·(1 − α) is out of range for N = {n}")))?;
    Ok(k.clamp(1, n))
}

/// What a component is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    /// A collateral balance.
    Collateral,
    /// A position.
    Position,
}

/// A position's or a collateral balance's share of ES.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Component {
    /// Collateral or position.
    pub kind: ComponentKind,
    /// The asset or the contract.
    pub instrument: InstrumentId,
    /// The position's side (positions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<PositionSide>,
    /// Component ES: minus its mean PnL over the tail scenarios (12 places).
    pub es: Decimal,
    /// Its PnL summed over the tail scenarios, exact.
    pub tail_pnl: Decimal,
}

/// One of the worst scenarios of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TailScenario {
    /// 1 = the worst.
    pub rank: usize,
    /// 0-based index of the scenario in the set.
    pub scenario: usize,
    /// Window start and end (RFC 3339; for hand-made sets the index).
    pub start: String,
    /// Window end.
    pub end: String,
    /// Returns per underlying.
    pub returns: Vec<(String, Decimal)>,
    /// PnL, exact.
    pub pnl: Decimal,
    /// Equity in the scenario, exact.
    pub equity: Decimal,
    /// MM in the scenario, exact.
    pub maintenance_margin: Decimal,
    /// MM / equity.
    pub margin_ratio: MarginRatio,
}

/// The risk of one account over a scenario set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountRisk {
    /// The account.
    pub account: AccountId,
    /// `linear` (compiled fast path) or `full_revaluation`.
    pub method: &'static str,
    /// Equity today, exact.
    pub equity: Decimal,
    /// MM today, exact.
    pub maintenance_margin: Decimal,
    /// The margin-ratio level counted as liquidation.
    pub trigger: Decimal,
    /// N.
    pub scenarios: usize,
    /// Confidence level α.
    pub alpha: Decimal,
    /// k = ⌈N·(1 − α)⌉.
    pub k: usize,
    /// VaR = −PnL of the k-th worst scenario, exact.
    pub var: Decimal,
    /// ES = mean loss of the k worst, 12 places.
    pub es: Decimal,
    /// Scenarios whose ratio reaches the trigger.
    pub liquidating_scenarios: usize,
    /// `liquidating_scenarios / N`.
    pub p_liquidation: Decimal,
    /// The worst scenarios, worst first (at most the number asked for).
    pub worst: Vec<TailScenario>,
    /// Component ES per collateral balance and position (file order), summing to `es`.
    pub components: Vec<Component>,
}

/// An account revalued in one scenario: equity, MM, and each component's equity part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revalued {
    /// Equity.
    pub equity: Decimal,
    /// Maintenance margin.
    pub maintenance_margin: Decimal,
    /// Equity part per component (collateral in asset order, then positions in order).
    pub parts: Vec<Decimal>,
}

/// Instruments, today's prices and a scenario set: everything needed to value accounts.
pub struct RiskBook<'a> {
    /// Instruments by id.
    pub instruments: &'a HashMap<InstrumentId, Instrument>,
    /// Today's price of every non-stable instrument.
    pub prices: &'a HashMap<InstrumentId, Decimal>,
    /// The scenarios.
    pub set: &'a ScenarioSet,
    /// α.
    pub alpha: Decimal,
    /// The trigger of accounts without their own levels.
    pub default_trigger: Decimal,
    /// How many tail scenarios to detail per account.
    pub worst: usize,
    /// k.
    pub k: usize,
    /// Per underlying column: the smallest and largest multiplier mantissa (with 1 included).
    pub(super) bounds: Vec<(i64, i64)>,
}

fn xadd(a: Decimal, b: Decimal) -> Result<Decimal, RiskError> {
    exact_add(a, b).ok_or(RiskError::Inexact("sum"))
}

/// The multiplier `m` as a `Decimal`.
pub(super) fn m_decimal(m: i64) -> Decimal {
    Decimal::new(m, RETURN_SCALE)
}

/// `round_half_away(x / k, dp)`, exactly when it fits `i128`; else `Decimal` division.
fn div_round(x: Decimal, k: usize, dp: u32) -> Option<Decimal> {
    let t = x.scale();
    let k = i128::try_from(k).ok()?;
    let exact = (|| {
        let (num, den) = if dp >= t {
            (x.mantissa().checked_mul(10i128.checked_pow(dp - t)?)?, k)
        } else {
            (x.mantissa(), k.checked_mul(10i128.checked_pow(t - dp)?)?)
        };
        let (q, r) = (num / den, num % den);
        let q = if r.unsigned_abs().checked_mul(2)? >= den.unsigned_abs() {
            q + num.signum()
        } else {
            q
        };
        Decimal::try_from_i128_with_scale(q, dp).ok()
    })();
    exact.or_else(|| {
        x.checked_div(Decimal::from(k))
            .map(|d| d.round_dp_with_strategy(dp, RoundingStrategy::MidpointAwayFromZero))
    })
}

/// True when MM / equity reaches `trigger` (exact comparison; MM = 0 never does).
pub fn reaches(mm: Decimal, equity: Decimal, trigger: Decimal) -> bool {
    if mm.is_zero() {
        return false;
    }
    if equity <= Decimal::ZERO {
        return true;
    }
    trigger.checked_mul(equity).is_some_and(|x| mm >= x)
}

/// The k worst of `(pnl, scenario)` pairs, worst first (ties: earlier scenario first).
pub(super) fn worst_k<T: Ord + Copy>(pairs: &mut Vec<(T, u32)>, k: usize) {
    if k == 0 {
        pairs.clear();
        return;
    }
    if k < pairs.len() {
        pairs.select_nth_unstable(k - 1);
        pairs.truncate(k);
    }
    pairs.sort_unstable();
}

impl<'a> RiskBook<'a> {
    /// A book over `set` at confidence `alpha` (k is computed here).
    pub fn new(
        instruments: &'a HashMap<InstrumentId, Instrument>,
        prices: &'a HashMap<InstrumentId, Decimal>,
        set: &'a ScenarioSet,
        alpha: Decimal,
    ) -> Result<Self, RiskError> {
        let k = tail_count(set.len(), alpha)?;
        let cols = set.underlyings.len();
        let mut bounds = vec![(super::scenarios::ONE_M, super::scenarios::ONE_M); cols];
        for s in 0..set.len() {
            for (b, m) in bounds.iter_mut().zip(set.row(s)) {
                b.0 = b.0.min(*m);
                b.1 = b.1.max(*m);
            }
        }
        Ok(RiskBook {
            instruments,
            prices,
            set,
            alpha,
            default_trigger: Decimal::ONE,
            worst: 3,
            k,
            bounds,
        })
    }

    pub(super) fn instrument(&self, id: &InstrumentId) -> Result<&'a Instrument, RiskError> {
        self.instruments
            .get(id)
            .ok_or_else(|| MarginError::UnknownInstrument(id.clone()).into())
    }

    /// Today's price of a non-stable instrument and its scenario column.
    pub(super) fn base(&self, i: &Instrument) -> Result<(Decimal, usize), RiskError> {
        let p = self
            .prices
            .get(&i.id)
            .copied()
            .ok_or_else(|| MarginError::MissingPrice(i.id.clone()))?;
        let j = self
            .set
            .column(&i.underlying)
            .ok_or_else(|| RiskError::NoReturns(i.underlying.clone()))?;
        Ok((p, j))
    }

    /// The price of `i` in scenario `s` (`None`: today), exactly `P·m`.
    fn price_in(&self, i: &Instrument, s: Option<usize>) -> Result<Decimal, RiskError> {
        if i.stable {
            return Ok(Decimal::ONE);
        }
        let (p, j) = self.base(i)?;
        let Some(s) = s else { return Ok(p) };
        let m = self
            .set
            .row(s)
            .get(j)
            .copied()
            .unwrap_or(super::scenarios::ONE_M);
        margin::mul(p, m_decimal(m), "scenario price").map_err(Into::into)
    }

    /// The account's trigger level.
    pub fn trigger_of(&self, a: &Account) -> Decimal {
        a.thresholds
            .as_ref()
            .map(|t| t.trigger)
            .unwrap_or(self.default_trigger)
    }

    /// Full revaluation of an account in scenario `s` (`None`: today) through the margin
    /// model: linear contracts and collateral exact, inverse contracts normalised.
    pub fn revalue(&self, a: &Account, s: Option<usize>) -> Result<Revalued, RiskError> {
        let mut out = Revalued {
            equity: Decimal::ZERO,
            maintenance_margin: Decimal::ZERO,
            parts: Vec::with_capacity(a.collateral.len() + a.positions.len()),
        };
        for (asset, amount) in &a.collateral {
            let i = self.instrument(asset)?;
            let v = collateral_value_exact(i, *amount, self.price_in(i, s)?)?;
            out.equity = xadd(out.equity, v)?;
            out.parts.push(v);
        }
        for p in &a.positions {
            let i = self.instrument(&p.instrument)?;
            let price = self.price_in(i, s)?;
            let f = if i.kind.is_inverse() {
                position_figures(i, p.quantity, p.entry_price, price)?
            } else {
                position_figures_exact(i, p.quantity, p.entry_price, price)?
            };
            out.equity = xadd(out.equity, f.unrealized_pnl)?;
            out.maintenance_margin = xadd(out.maintenance_margin, f.maintenance_margin)?;
            out.parts.push(f.unrealized_pnl);
        }
        Ok(out)
    }

    fn components_of(a: &Account) -> Vec<(ComponentKind, InstrumentId, Option<PositionSide>)> {
        a.collateral
            .keys()
            .map(|k| (ComponentKind::Collateral, k.clone(), None))
            .chain(
                a.positions
                    .iter()
                    .map(|p| (ComponentKind::Position, p.instrument.clone(), Some(p.side))),
            )
            .collect()
    }

    /// The account's risk: the compiled fast path when every part is linear, else the full
    /// revaluation. Both give the same figures.
    pub fn account(&self, a: &Account) -> Result<AccountRisk, RiskError> {
        let mut buf = Vec::new();
        self.account_with(a, &mut buf)
    }

    /// [`RiskBook::account`] reusing a scratch buffer (for many accounts on one thread).
    pub fn account_with(
        &self,
        a: &Account,
        buf: &mut Vec<(i128, u32)>,
    ) -> Result<AccountRisk, RiskError> {
        match linear::compile(self, a, self.trigger_of(a)) {
            Some(c) => c.risk(self, a, buf),
            None => self.account_full(a),
        }
    }

    /// The account's risk by plain full revaluation of every scenario (the baseline).
    pub fn account_full(&self, a: &Account) -> Result<AccountRisk, RiskError> {
        let trigger = self.trigger_of(a);
        let base = self.revalue(a, None)?;
        let n = self.set.len();
        let mut pairs: Vec<(Decimal, u32)> = Vec::with_capacity(n);
        let mut liq = 0usize;
        for s in 0..n {
            let r = self.revalue(a, Some(s))?;
            if reaches(r.maintenance_margin, r.equity, trigger) {
                liq += 1;
            }
            let pnl = margin::sub(r.equity, base.equity, "PnL")?;
            pairs.push((pnl, u32::try_from(s).unwrap_or(u32::MAX)));
        }
        worst_k(&mut pairs, self.k);
        let mut tail_sum = Decimal::ZERO;
        let mut comp = vec![Decimal::ZERO; base.parts.len()];
        let mut details = Vec::new();
        for (rank, (pnl, s)) in pairs.iter().enumerate() {
            tail_sum = xadd(tail_sum, *pnl)?;
            let r = self.revalue(a, Some(*s as usize))?;
            for ((c, now), was) in comp.iter_mut().zip(&r.parts).zip(&base.parts) {
                *c = xadd(*c, margin::sub(*now, *was, "component PnL")?)?;
            }
            if rank < self.worst {
                details.push((*s as usize, *pnl, r.equity, r.maintenance_margin));
            }
        }
        let kth = pairs.last().map(|p| p.0).unwrap_or_default();
        self.finish(
            a,
            "full_revaluation",
            (base.equity, base.maintenance_margin),
            trigger,
            kth,
            tail_sum,
            comp,
            liq,
            details,
        )
    }

    /// Assembles the figures both paths agree on.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish(
        &self,
        a: &Account,
        method: &'static str,
        base: (Decimal, Decimal),
        trigger: Decimal,
        kth_pnl: Decimal,
        tail_sum: Decimal,
        comp_tail: Vec<Decimal>,
        liq: usize,
        details: Vec<(usize, Decimal, Decimal, Decimal)>,
    ) -> Result<AccountRisk, RiskError> {
        let k = self.k;
        let es =
            div_round(-tail_sum, k, margin::ACCOUNTING_SCALE).ok_or(RiskError::Inexact("ES"))?;
        let mut comps = Vec::with_capacity(comp_tail.len());
        let mut total = Decimal::ZERO;
        for ((kind, instrument, side), t) in Self::components_of(a).into_iter().zip(&comp_tail) {
            let es_p =
                div_round(-*t, k, margin::ACCOUNTING_SCALE).ok_or(RiskError::Inexact("ES"))?;
            total = xadd(total, es_p)?;
            comps.push(Component {
                kind,
                instrument,
                side,
                es: es_p,
                tail_pnl: t.normalize(),
            });
        }
        // Give the rounding residue to the largest tail loss so the parts sum to ES exactly.
        let residue = margin::sub(es, total, "ES residue")?;
        if !residue.is_zero()
            && let Some(big) = comps.iter_mut().max_by(|x, y| {
                x.tail_pnl
                    .abs()
                    .cmp(&y.tail_pnl.abs())
                    .then(std::cmp::Ordering::Greater)
            })
        {
            big.es = xadd(big.es, residue)?;
        }
        for c in &mut comps {
            c.es = c.es.normalize();
        }
        let n = self.set.len();
        let p_liq = Decimal::from(liq)
            .checked_div(Decimal::from(n))
            .ok_or(RiskError::Inexact("P(liquidation)"))?;
        let worst = details
            .into_iter()
            .enumerate()
            .map(|(i, (s, pnl, equity, mm))| {
                let w = &self.set.windows[s];
                let t = |ms: i64| {
                    if self.set.horizon_ms > 0 {
                        format_rfc3339_ms(ms)
                    } else {
                        format!("#{}", s + 1)
                    }
                };
                TailScenario {
                    rank: i + 1,
                    scenario: s,
                    start: t(w.start_ms),
                    end: t(w.end_ms),
                    returns: self
                        .set
                        .underlyings
                        .iter()
                        .enumerate()
                        .map(|(j, u)| (u.clone(), self.set.return_of(s, j).normalize()))
                        .collect(),
                    pnl: pnl.normalize(),
                    equity: equity.normalize(),
                    maintenance_margin: mm.normalize(),
                    margin_ratio: MarginRatio::compute(mm, equity),
                }
            })
            .collect();
        Ok(AccountRisk {
            account: a.id.clone(),
            method,
            equity: base.0.normalize(),
            maintenance_margin: base.1.normalize(),
            trigger,
            scenarios: n,
            alpha: self.alpha,
            k,
            var: (-kth_pnl).normalize(),
            es: es.normalize(),
            liquidating_scenarios: liq,
            p_liquidation: p_liq.normalize(),
            worst,
            components: comps,
        })
    }

    /// Every account's risk, on `threads` threads (0: all cores), in input order.
    pub fn accounts(
        &self,
        accounts: &[Account],
        threads: usize,
    ) -> Vec<Result<AccountRisk, RiskError>> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let chunk = accounts.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = accounts
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut buf = Vec::new();
                        part.iter()
                            .map(|a| self.account_with(a, &mut buf))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        vec![Err(RiskError::Params("a worker thread panicked".into()))]
                    })
                })
                .collect()
        })
    }
}
