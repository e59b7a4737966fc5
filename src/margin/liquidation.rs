//! What a liquidation costs (margin-math §4.3), computed from a snapshot at the trigger prices:
//! the penalty per position, the penalty rate `penalty / equity`, the equity left after the
//! penalty (**surplus**, returned to the account) or missing (**shortfall**, absorbed by an
//! insurance fund or ADL), and the venue's documented liquidation procedure.
//!
//! Pure: no I/O, exact `Decimal`, checked arithmetic.
//!
//! # Penalty
//! `notional × liquidation_fee_rate` per position (the clearance fee on the liquidated notional,
//! margin-math §1.8), as if every position were liquidated in full — an upper bound where the
//! venue first reduces step by step and charges the fee on the reduced amount only. On
//! Hyperliquid, when equity is below 2/3 of MM (a backstop liquidation), the venue keeps the
//! maintenance margin instead: the position's penalty is its MM (margin-math §2.5, §4.3).
//!
//! # Venue and order
//! The venue is the first price source of each position's instrument (presets list the venue
//! whose tables they carry first), when all positions agree. What is documented:
//! - Binance USD-M ("Liquidation Protocols"): cancel orders, one Immediate-or-Cancel reduction,
//!   else close at the bankruptcy price to the insurance fund; sizes not published.
//! - Bybit (help centre "Liquidation Process"): above the lowest risk-limit tier, a FillOrKill
//!   order brings the position down to a lower tier; else the liquidation engine takes it over
//!   at the bankruptcy price. The steps down the ladder are computed per position.
//! - Hyperliquid (margin-math §2.5): positions above 100,000 USDC are liquidated 20 % at a time
//!   (30 s cooldown); backstop below 2/3 of MM.
//!
//! No venue documents which position of a cross account goes first: `positions_first` is
//! always `null`, with the reason. OKX and Deribit document none of it in our references:
//! `order` is `null`, with the reason.

use std::borrow::Cow;

use rust_decimal::Decimal;

use super::{InstrumentLookup, MarginError, add, lookup, mul, normalise, sub};
use crate::model::{
    EventKind, Instrument, LiquidationCost, LiquidationOrder, MarginRatio, PartialLiquidation,
    PartialStep, PenaltyBasis, PositionPenalty, PositionRisk, RiskEvent, RiskSnapshot, Venue,
};

/// Why `positions_first` is `null` for every venue.
const FIRST_UNDOCUMENTED: &str =
    "the venue's documentation does not say which position of a cross account is liquidated first";

/// Hyperliquid: positions above this notional (USDC) are liquidated step by step.
const HL_PARTIAL_ABOVE: Decimal = Decimal::from_parts(100_000, 0, 0, false, 0);
/// Hyperliquid: the fraction of a large position liquidated per step.
const HL_STEP: Decimal = Decimal::from_parts(2, 0, 0, false, 1);

/// The cost of liquidating the account of `snapshot` at the snapshot's prices.
pub fn liquidation_cost(
    snapshot: &RiskSnapshot,
    instruments: &dyn InstrumentLookup,
) -> Result<LiquidationCost, MarginError> {
    let equity = snapshot.equity;
    let mm = snapshot.maintenance_margin;
    let (venue, venue_reason) = account_venue(snapshot, instruments)?;
    // Hyperliquid's backstop: equity < 2/3 · MM ⇔ 3 · equity < 2 · MM.
    let backstop = venue == Some(Venue::Hyperliquid)
        && mul(equity, Decimal::from(3), "backstop test")?
            < mul(mm, Decimal::TWO, "backstop test")?;
    let mut positions = Vec::with_capacity(snapshot.positions.len());
    let mut penalty = Decimal::ZERO;
    for p in &snapshot.positions {
        let inst = lookup(instruments, &p.instrument)?;
        let (pen, basis) = if backstop {
            (
                p.maintenance_margin,
                PenaltyBasis::BackstopKeepsMaintenanceMargin,
            )
        } else {
            (
                normalise(mul(p.notional, inst.liquidation_fee_rate, "penalty")?),
                PenaltyBasis::FeeRate,
            )
        };
        penalty = add(penalty, pen, "penalty")?;
        positions.push(PositionPenalty {
            instrument: p.instrument.clone(),
            side: p.side,
            notional: p.notional,
            fee_rate: inst.liquidation_fee_rate,
            penalty: pen,
            basis,
        });
    }
    let left = sub(equity, penalty, "equity after penalty")?;
    let (order, order_reason) = match venue {
        Some(v) => match venue_order(v, snapshot, instruments)? {
            Some(o) => (Some(o), None),
            None => (
                None,
                Some(format!(
                    "{v}: the liquidation order is not documented in liqwatch's references"
                )),
            ),
        },
        None => (None, venue_reason),
    };
    Ok(LiquidationCost {
        equity,
        maintenance_margin: mm,
        penalty,
        penalty_rate: MarginRatio::compute(penalty, equity),
        surplus: left.max(Decimal::ZERO),
        shortfall: (-left).max(Decimal::ZERO),
        venue,
        positions,
        order,
        order_reason,
    })
}

/// Puts the [`liquidation_cost`] of a `liquidation_trigger` event's snapshot into it; other
/// events and events without a snapshot are left alone. A cost that cannot be computed (an
/// overflow, an instrument no longer configured) is logged and left out.
pub fn attach_liquidation_cost(event: &mut RiskEvent, instruments: &dyn InstrumentLookup) {
    if event.kind != EventKind::LiquidationTrigger {
        return;
    }
    let Some(snapshot) = event.snapshot.as_mut() else {
        return;
    };
    match liquidation_cost(snapshot, instruments) {
        Ok(cost) => snapshot.liquidation_cost = Some(Box::new(cost)),
        Err(error) => {
            tracing::warn!(account = ?event.account_id, %error, "Liquidation cost not computed")
        }
    }
}

/// [`attach_liquidation_cost`] for the snapshot of a trigger of `account` (the caller knows
/// the event is a trigger).
pub fn attach_liquidation_cost_to(
    snapshot: &mut RiskSnapshot,
    instruments: &dyn InstrumentLookup,
    account: &crate::model::AccountId,
) {
    match liquidation_cost(snapshot, instruments) {
        Ok(cost) => snapshot.liquidation_cost = Some(Box::new(cost)),
        Err(error) => {
            tracing::warn!(%account, %error, "Liquidation cost not computed")
        }
    }
}

/// The venue of every position (first price source of its instrument), or why there is none.
fn account_venue(
    snapshot: &RiskSnapshot,
    instruments: &dyn InstrumentLookup,
) -> Result<(Option<Venue>, Option<String>), MarginError> {
    let mut venues: Vec<Venue> = Vec::new();
    for p in &snapshot.positions {
        let inst = lookup(instruments, &p.instrument)?;
        let Some(src) = inst.sources.first() else {
            return Ok((
                None,
                Some(format!(
                    "instrument {} names no venue (no price source)",
                    p.instrument
                )),
            ));
        };
        if !venues.contains(&src.venue) {
            venues.push(src.venue);
        }
    }
    Ok(match venues.as_slice() {
        [] => (None, Some("no positions: nothing to liquidate".into())),
        [v] => (Some(*v), None),
        many => (
            None,
            Some(format!(
                "positions on several venues ({}): each venue liquidates its own",
                many.iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        ),
    })
}

fn texts(lines: &[&'static str]) -> Vec<Cow<'static, str>> {
    lines.iter().map(|s| Cow::Borrowed(*s)).collect()
}

/// The venue's documented procedure applied to the snapshot's positions; `None` when the venue
/// documents none.
fn venue_order(
    venue: Venue,
    snapshot: &RiskSnapshot,
    instruments: &dyn InstrumentLookup,
) -> Result<Option<LiquidationOrder>, MarginError> {
    let (source, procedure, partial) = match venue {
        Venue::BinanceUsdm => {
            (
                "Binance Futures FAQ \"Liquidation Protocols\" (binance.com/en/support/faq/360033525271; procedure as mirrored at docs.traderwagon.com/faq/futures-trading-introduction/liquidation-protocol)",
                texts(&[
                    "cancel all open orders",
                    "reduce the margin requirement with one large Immediate-or-Cancel order without fully liquidating; stop when the account is margin-compliant after realised losses and the liquidation fee (charged on the amount liquidated only)",
                    "otherwise close the positions at the bankruptcy price; the insurance fund takes them over and resets a negative balance to 0",
                ]),
                // The reduction's size is not published: no steps to show.
                Vec::new(),
            )
        }
        Venue::BybitLinear | Venue::BybitInverse => {
            let mut partial = Vec::new();
            for p in snapshot.positions.iter().filter(|p| p.tier > 1) {
                let inst = lookup(instruments, &p.instrument)?;
                partial.push(bybit_ladder(p, inst)?);
            }
            (
                "Bybit help centre \"Liquidation Process (USDT Contract)\" (help.bybit.com/hc/en-us/articles/900000167723) and \"Trading Rules: Liquidation Process (Unified Trading Account)\"",
                texts(&[
                    "cancel the active orders",
                    "a position above the lowest risk-limit tier: a FillOrKill order closes the difference between the position value and the lower tier that meets the margin requirement",
                    "if still liquidatable, the liquidation engine takes the position over at the bankruptcy price; margin left goes to the insurance fund, which pays losses beyond it, then auto-deleveraging",
                ]),
                partial,
            )
        }
        Venue::Hyperliquid => {
            let mut partial = Vec::new();
            for p in snapshot
                .positions
                .iter()
                .filter(|p| p.notional > HL_PARTIAL_ABOVE)
            {
                let inst = lookup(instruments, &p.instrument)?;
                let close = normalise(mul(p.notional, HL_STEP, "partial step")?);
                partial.push(PartialLiquidation {
                    instrument: p.instrument.clone(),
                    side: p.side,
                    rule: "above 100,000 USDC of notional: liquidated 20 % at a time, 30 s cooldown between steps".into(),
                    steps: vec![PartialStep {
                        close_notional: close,
                        remaining_notional: sub(p.notional, close, "partial step")?,
                        to_tier: None,
                        penalty: normalise(mul(close, inst.liquidation_fee_rate, "partial step")?),
                    }],
                });
            }
            (
                "Hyperliquid docs \"Liquidations\" (margin-math.md §2.5)",
                texts(&[
                    "book liquidation first: the positions are closed against the order book",
                    "backstop when equity < 2/3 of maintenance margin: the liquidator vault takes the positions over and the maintenance margin is kept",
                    "positions above 100,000 USDC are first liquidated 20 % at a time, with a 30 s cooldown",
                ]),
                partial,
            )
        }
        Venue::Okx | Venue::Deribit => return Ok(None),
    };
    Ok(Some(LiquidationOrder {
        venue,
        source: Cow::Borrowed(source),
        procedure,
        positions_first: None,
        positions_first_reason: Some(FIRST_UNDOCUMENTED.into()),
        partial,
    }))
}

/// Bybit's ladder for one position above tier 1: one step down to each lower tier's cap
/// (caps are inclusive on Bybit), the nearest first. Inverse tiers are in the coin: the rule
/// is reported without steps.
fn bybit_ladder(p: &PositionRisk, inst: &Instrument) -> Result<PartialLiquidation, MarginError> {
    let rule = "FillOrKill down to a lower risk-limit tier, one tier at a time until the margin requirement is met";
    let mut steps = Vec::new();
    if !inst.kind.is_inverse() {
        let from = usize::try_from(p.tier).unwrap_or(usize::MAX);
        for j in (1..from).rev() {
            let Some(t) = inst.tiers.get(j - 1) else {
                continue;
            };
            let close = sub(p.notional, t.notional_cap, "partial step")?;
            if close <= Decimal::ZERO {
                continue;
            }
            steps.push(PartialStep {
                close_notional: close,
                remaining_notional: t.notional_cap,
                to_tier: u32::try_from(j).ok(),
                penalty: normalise(mul(close, inst.liquidation_fee_rate, "partial step")?),
            });
        }
    }
    Ok(PartialLiquidation {
        instrument: p.instrument.clone(),
        side: p.side,
        rule: if inst.kind.is_inverse() {
            Cow::Owned(format!(
                "{rule} (inverse: tiers are in the coin, steps not computed)"
            ))
        } else {
            Cow::Borrowed(rule)
        },
        steps,
    })
}

#[cfg(test)]
mod tests;
