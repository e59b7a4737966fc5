//! Warning levels on the shock distance (`warn_within_shock`): a second, separate state machine
//! per account beside the margin-ratio one.
//!
//! # The distance
//! The shock distance `d` is how far every non-stable price must move together (one fraction
//! `s`, all prices `p·(1 + s)`) for the margin ratio to reach the trigger: `|nearest|` of
//! [`crate::margin::shock_distance`], the figure every snapshot carries as
//! `shock_distance.nearest`. Two cases are fixed by definition:
//! - the ratio is at or past the trigger: `d = 0` ([`ShockSeen::AtTrigger`]);
//! - no exposure (`MM = 0`, such an account never fires), or no uniform move reaches the
//!   trigger: `d = ∞` ([`ShockSeen::Unreachable`]).
//!
//! # Levels and transitions ([`transition`], pure)
//! Levels `L₁ > L₂ > … > L_k` (outermost first, each `0 < L < 1`) with one hysteresis `h`
//! (`shock_hysteresis`, default 1 %). The distance rank is 0 (clear) or `i` (within `Lᵢ`).
//! - **Up**: when `d ≤ Lᵢ` for a level beyond the current rank, the account moves to the
//!   innermost such level in one step and one `liquidation_warning` fires with `level = Lᵢ` and
//!   `crossed_levels` = every level passed, outermost first. At the trigger (`d = 0`) the account
//!   moves to `L_k` **silently**: the trigger is the ratio's business and its own event says it.
//! - **Down**: only when `d > L_r + h` for the current rank `r`; the account drops to the
//!   innermost lower rank whose `L + h` still holds `d` (0 at the bottom) and one `recovered`
//!   fires with `level` = the outermost level recovered from (`L₁`: clear again) and
//!   `crossed_levels` = every level recovered from, outermost first.
//! - Events carry `level_type: "shock_distance"`; their `previous_state`/`state` are the
//!   distance state (`healthy` or `warning` at a distance level, never `triggered`).
//!
//! # Banding
//! [`ShockQuiet`] is what the distance index needs to band the account: the levels whose
//! crossing would change the state. `engine::index::distance` turns it into a price band.

use rust_decimal::Decimal;

use super::Crossing;
use crate::engine::map::{AccountKey, AccountMap, InstrumentTable, SlotValuation};
use crate::margin::{MarginError, MovingCollateral, MovingLeg, PriceMove};
use crate::model::{AccountState, EventKind, MarginRatio, Thresholds};

/// What the distance state machine sees of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShockSeen {
    /// The ratio is at or past the trigger: the distance is 0.
    AtTrigger,
    /// The distance `|nearest|` to the trigger (> 0).
    Distance(Decimal),
    /// No exposure, or no uniform move reaches the trigger.
    Unreachable,
}

impl ShockSeen {
    /// Within `level`: `d ≤ level`.
    fn within(self, level: Decimal) -> bool {
        match self {
            ShockSeen::AtTrigger => true,
            ShockSeen::Distance(d) => d <= level,
            ShockSeen::Unreachable => false,
        }
    }
}

/// The distance levels of `t`, outermost first.
fn levels(t: &Thresholds) -> &[Decimal] {
    &t.warn_within_shock
}

fn rank_of(state: &AccountState, t: &Thresholds) -> usize {
    match state {
        AccountState::Healthy => 0,
        // Levels may have changed since the state was stored: count the levels at or outside.
        AccountState::Warning { level } => levels(t).iter().filter(|l| *l >= level).count(),
        AccountState::Triggered => levels(t).len(),
    }
}

fn state_of(rank: usize, t: &Thresholds) -> AccountState {
    match rank.checked_sub(1).and_then(|i| levels(t).get(i)) {
        Some(level) => AccountState::Warning { level: *level },
        None => AccountState::Healthy,
    }
}

/// The pure distance state machine: the new distance state and the crossing, if any.
pub fn transition(
    state: &AccountState,
    seen: ShockSeen,
    t: &Thresholds,
) -> (AccountState, Option<Crossing>) {
    let ls = levels(t);
    let k = ls.len();
    let r = rank_of(state, t).min(k);
    let up = ls.iter().filter(|l| seen.within(**l)).count();
    if up > r {
        if seen == ShockSeen::AtTrigger {
            // The ratio's trigger (or its held warning) speaks for this step.
            return (state_of(k, t), None);
        }
        let crossed: Vec<Decimal> = ls.iter().skip(r).take(up - r).copied().collect();
        let level = crossed.last().copied().unwrap_or_default();
        return (
            state_of(up, t),
            Some(Crossing {
                kind: EventKind::LiquidationWarning,
                level,
                crossed_levels: crossed,
            }),
        );
    }
    if r > 0 {
        let beyond = |rank: usize| -> bool {
            let Some(l) = rank.checked_sub(1).and_then(|i| ls.get(i)) else {
                return false;
            };
            match seen {
                ShockSeen::AtTrigger => false,
                ShockSeen::Unreachable => true,
                ShockSeen::Distance(d) => l.checked_add(t.shock_hysteresis).is_some_and(|x| d > x),
            }
        };
        if let Some((d, crossing)) =
            super::machine::recovery(r, beyond, ls.iter().copied(), Decimal::ZERO)
        {
            return (state_of(d, t), Some(crossing));
        }
    }
    (state_of(r, t), None)
}

/// The distance levels that bound an account's distance state where it stands (see
/// [`super::Monitor::shock_quiet`]): the state holds while `d > up` and `d ≤ down`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShockQuiet {
    /// The ratio trigger the distance is measured to.
    pub trigger: Decimal,
    /// The next level inwards (`None`: already at the innermost).
    pub up: Option<Decimal>,
    /// The current level plus the hysteresis (`None`: clear of every level).
    pub down: Option<Decimal>,
}

/// The quiet bounds of a distance state under `t`; `None` when `t` has no distance levels.
pub fn quiet(state: &AccountState, t: &Thresholds) -> Option<ShockQuiet> {
    let ls = levels(t);
    if ls.is_empty() {
        return None;
    }
    let r = rank_of(state, t).min(ls.len());
    let down = r
        .checked_sub(1)
        .and_then(|i| ls.get(i))
        .map(|l| l.checked_add(t.shock_hysteresis).unwrap_or(*l));
    Some(ShockQuiet {
        trigger: t.trigger,
        up: ls.get(r).copied(),
        down,
    })
}

/// The uniform-shock problem of an account from its slots as the map valued them: exactly the
/// problem [`crate::margin::shock_problem`] builds from the account and its prices (collateral
/// in asset order, then positions in order), so the distance is the one its snapshot reports.
/// `None` when a slot is not valued or an instrument is unknown.
pub fn shock_move<'a>(
    table: &'a InstrumentTable,
    slots: &[SlotValuation],
    trigger: Decimal,
) -> Result<Option<PriceMove<'a>>, MarginError> {
    let mut pm = PriceMove {
        trigger,
        ..PriceMove::default()
    };
    let mut collateral: Vec<(&'a crate::model::Instrument, &SlotValuation)> = Vec::new();
    for s in slots {
        let Some(inst) = table.get(s.instrument) else {
            return Ok(None);
        };
        if s.at.is_none() {
            return Ok(None);
        }
        if s.collateral {
            collateral.push((inst, s));
        }
    }
    // `Account::collateral` is a map by asset id: the same order of sums as the snapshot's.
    collateral.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    for (inst, s) in collateral {
        if inst.stable {
            let v = crate::margin::collateral_value_exact(inst, s.quantity, Decimal::ONE)?;
            pm.fixed_equity = pm
                .fixed_equity
                .checked_add(v)
                .ok_or(MarginError::Overflow {
                    context: "fixed equity",
                })?;
        } else {
            pm.collateral.push(MovingCollateral {
                instrument: inst,
                amount: s.quantity,
                price_factor: s.at.unwrap_or_default(),
            });
        }
    }
    for s in slots.iter().filter(|s| !s.collateral) {
        let Some(inst) = table.get(s.instrument) else {
            return Ok(None);
        };
        pm.legs.push(MovingLeg {
            instrument: inst,
            quantity: s.quantity,
            entry_price: s.entry,
            price_factor: s.at.unwrap_or_default(),
            floats: table.floats(s.instrument),
        });
    }
    Ok(Some(pm))
}

/// What the distance machine sees of a complete account at its current figures (`mm` and
/// `ratio` from the map's caches, which the ratio machine uses too).
pub fn seen(
    map: &AccountMap,
    key: AccountKey,
    mm: Decimal,
    ratio: MarginRatio,
    trigger: Decimal,
) -> Result<Option<ShockSeen>, MarginError> {
    if mm <= Decimal::ZERO {
        return Ok(Some(ShockSeen::Unreachable));
    }
    if ratio.at_or_above(trigger) {
        return Ok(Some(ShockSeen::AtTrigger));
    }
    let Some(slots) = map.read_key(key, |v| v.valuation().collect::<Vec<_>>()) else {
        return Ok(None);
    };
    let table = map.instruments();
    let Some(pm) = shock_move(&table, &slots, trigger)? else {
        return Ok(None);
    };
    let nearest = crate::margin::shock_distance_of(&pm)?.nearest;
    Ok(Some(match nearest {
        Some(d) => ShockSeen::Distance(d.abs()),
        None => ShockSeen::Unreachable,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn th(levels: &[Decimal], h: Decimal) -> Thresholds {
        Thresholds {
            warn_within_shock: levels.to_vec(),
            shock_hysteresis: h,
            ..Thresholds::default()
        }
    }

    fn warn(l: Decimal) -> AccountState {
        AccountState::Warning { level: l }
    }

    fn d(x: Decimal) -> ShockSeen {
        ShockSeen::Distance(x)
    }

    /// Levels 10 % and 5 % with 1 % hysteresis: every move in and out, one step at a time and
    /// in jumps, the hysteresis band (no flapping), the silent move at the trigger and the
    /// unreachable trigger.
    #[test]
    fn transition_table() {
        let t = th(&[dec!(0.10), dec!(0.05)], dec!(0.01));
        let h = AccountState::Healthy;
        type Row = (
            AccountState,
            ShockSeen,
            AccountState,
            Option<(EventKind, Decimal, Vec<Decimal>)>,
        );
        use EventKind::{LiquidationWarning as W, Recovered as R};
        let rows: Vec<Row> = vec![
            // Far away, or no trigger in reach: nothing.
            (h.clone(), d(dec!(0.2)), h.clone(), None),
            (h.clone(), ShockSeen::Unreachable, h.clone(), None),
            // Just outside, exactly at, inside the outer level.
            (h.clone(), d(dec!(0.1000001)), h.clone(), None),
            (
                h.clone(),
                d(dec!(0.10)),
                warn(dec!(0.10)),
                Some((W, dec!(0.10), vec![dec!(0.10)])),
            ),
            // Straight past both levels: one warning at the inner level listing both.
            (
                h.clone(),
                d(dec!(0.061)),
                warn(dec!(0.10)),
                Some((W, dec!(0.10), vec![dec!(0.10)])),
            ),
            (
                h.clone(),
                d(dec!(0.03)),
                warn(dec!(0.05)),
                Some((W, dec!(0.05), vec![dec!(0.10), dec!(0.05)])),
            ),
            (
                warn(dec!(0.10)),
                d(dec!(0.05)),
                warn(dec!(0.05)),
                Some((W, dec!(0.05), vec![dec!(0.05)])),
            ),
            // Jump straight to the trigger: silent (the ratio's trigger speaks), innermost.
            (h.clone(), ShockSeen::AtTrigger, warn(dec!(0.05)), None),
            (
                warn(dec!(0.10)),
                ShockSeen::AtTrigger,
                warn(dec!(0.05)),
                None,
            ),
            (
                warn(dec!(0.05)),
                ShockSeen::AtTrigger,
                warn(dec!(0.05)),
                None,
            ),
            // Hysteresis: within level + h nothing moves; strictly beyond, one recovery.
            (warn(dec!(0.05)), d(dec!(0.06)), warn(dec!(0.05)), None),
            (
                warn(dec!(0.05)),
                d(dec!(0.0600001)),
                warn(dec!(0.10)),
                Some((R, dec!(0.05), vec![dec!(0.05)])),
            ),
            (warn(dec!(0.10)), d(dec!(0.11)), warn(dec!(0.10)), None),
            (
                warn(dec!(0.10)),
                d(dec!(0.12)),
                h.clone(),
                Some((R, dec!(0.10), vec![dec!(0.10)])),
            ),
            // Out past both in one step: one recovery, level = the outermost (clear again).
            (
                warn(dec!(0.05)),
                d(dec!(0.5)),
                h.clone(),
                Some((R, dec!(0.10), vec![dec!(0.10), dec!(0.05)])),
            ),
            (
                warn(dec!(0.05)),
                ShockSeen::Unreachable,
                h.clone(),
                Some((R, dec!(0.10), vec![dec!(0.10), dec!(0.05)])),
            ),
        ];
        for (i, (from, seen, to, ev)) in rows.into_iter().enumerate() {
            let (state, crossing) = transition(&from, seen, &t);
            assert_eq!(state, to, "row {i}: {from:?} seeing {seen:?}");
            let got = crossing.map(|c| (c.kind, c.level, c.crossed_levels));
            assert_eq!(got, ev, "row {i}: {from:?} seeing {seen:?}");
        }
    }

    /// No distance levels: always clear, no event; a state stored under other levels is read
    /// against the levels in force (a stored 7 % under [10 %, 5 %] counts as within 10 %).
    #[test]
    fn no_levels_and_changed_levels() {
        let none = th(&[], dec!(0.01));
        let (s, c) = transition(&warn(dec!(0.05)), ShockSeen::AtTrigger, &none);
        assert_eq!((s, c), (AccountState::Healthy, None));
        assert_eq!(quiet(&AccountState::Healthy, &none), None);
        let t = th(&[dec!(0.10), dec!(0.05)], dec!(0.01));
        let (s, c) = transition(&warn(dec!(0.07)), d(dec!(0.08)), &t);
        assert_eq!((s, c), (warn(dec!(0.10)), None));
    }

    /// The quiet bounds the index bands: the next level in, and the current level plus the
    /// hysteresis.
    #[test]
    fn quiet_bounds() {
        let t = Thresholds {
            trigger: dec!(0.9),
            ..th(&[dec!(0.10), dec!(0.05)], dec!(0.02))
        };
        let q = |s: AccountState| quiet(&s, &t).unwrap();
        assert_eq!(
            q(AccountState::Healthy),
            ShockQuiet {
                trigger: dec!(0.9),
                up: Some(dec!(0.10)),
                down: None
            }
        );
        assert_eq!(q(warn(dec!(0.10))).up, Some(dec!(0.05)));
        assert_eq!(q(warn(dec!(0.10))).down, Some(dec!(0.12)));
        assert_eq!(q(warn(dec!(0.05))).up, None);
        assert_eq!(q(warn(dec!(0.05))).down, Some(dec!(0.07)));
    }
}
