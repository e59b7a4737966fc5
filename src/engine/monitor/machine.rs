//! The margin-ratio state machine, pure: levels in rank order (warnings, then the trigger), an
//! account state's rank under (possibly changed) levels, and [`transition`] — the new state and
//! the crossing, if any, for a ratio. The monitor keeps one state per account and calls it.

use rust_decimal::Decimal;

use crate::model::{AccountState, EventKind, MarginRatio, Thresholds};

/// The result of a state change found by [`transition`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crossing {
    /// `liquidation_warning`, `liquidation_trigger` or `recovered`.
    pub kind: EventKind,
    /// The level of the event (see the module docs).
    pub level: Decimal,
    /// Every level crossed by the move, ascending.
    pub crossed_levels: Vec<Decimal>,
}

/// Every level in rank order: warnings then the trigger.
pub(super) fn levels(t: &Thresholds) -> impl Iterator<Item = Decimal> + '_ {
    t.warning_levels
        .iter()
        .copied()
        .chain(std::iter::once(t.trigger))
}

pub(super) fn level_at(t: &Thresholds, rank: usize) -> Option<Decimal> {
    rank.checked_sub(1).and_then(|i| levels(t).nth(i))
}

pub(super) fn rank_of(state: &AccountState, t: &Thresholds) -> usize {
    match state {
        AccountState::Healthy => 0,
        // Levels may have changed since the state was stored: count the warnings at or below.
        AccountState::Warning { level } => t.warning_levels.iter().filter(|w| *w <= level).count(),
        AccountState::Triggered => t.warning_levels.len() + 1,
    }
}

pub(super) fn state_of(rank: usize, t: &Thresholds) -> AccountState {
    if rank == 0 {
        AccountState::Healthy
    } else if rank > t.warning_levels.len() {
        AccountState::Triggered
    } else {
        match t.warning_levels.get(rank - 1) {
            Some(level) => AccountState::Warning { level: *level },
            None => AccountState::Triggered,
        }
    }
}

/// The pure state machine: the new state and the crossing, if any, for `ratio` under `t`.
pub fn transition(
    state: &AccountState,
    ratio: MarginRatio,
    t: &Thresholds,
) -> (AccountState, Option<Crossing>) {
    let r = rank_of(state, t);
    let top = t.warning_levels.len() + 1;
    let up = levels(t).filter(|l| ratio.at_or_above(*l)).count();
    if up > r {
        let crossed: Vec<Decimal> = levels(t).skip(r).take(up - r).collect();
        let (kind, level) = if up == top {
            (EventKind::LiquidationTrigger, t.trigger)
        } else {
            (
                EventKind::LiquidationWarning,
                level_at(t, up).unwrap_or(t.trigger),
            )
        };
        let crossing = Crossing {
            kind,
            level,
            crossed_levels: crossed,
        };
        return (state_of(up, t), Some(crossing));
    }
    if r > 0 {
        let below = |rank: usize| {
            level_at(t, rank).is_some_and(|l| ratio.below(l.checked_sub(t.hysteresis).unwrap_or(l)))
        };
        if let Some((d, crossing)) = recovery(r, below, levels(t), t.trigger) {
            return (state_of(d, t), Some(crossing));
        }
    }
    (state_of(r, t), None)
}

/// The recovery both state machines make (this one and the distance machine's): from rank `r`,
/// fall while `past(rank)` holds (past the rank's level by its hysteresis). The rank fallen to
/// and the `Recovered` crossing over `levels[d..r]` (its level the lowest of them, `fallback`
/// when there is none); `None` when `past(r)` does not hold.
pub(super) fn recovery(
    r: usize,
    past: impl Fn(usize) -> bool,
    levels: impl Iterator<Item = Decimal>,
    fallback: Decimal,
) -> Option<(usize, Crossing)> {
    if r == 0 || !past(r) {
        return None;
    }
    let mut d = r - 1;
    while d > 0 && past(d) {
        d -= 1;
    }
    let crossed: Vec<Decimal> = levels.skip(d).take(r - d).collect();
    let level = crossed.first().copied().unwrap_or(fallback);
    Some((
        d,
        Crossing {
            kind: EventKind::Recovered,
            level,
            crossed_levels: crossed,
        },
    ))
}
