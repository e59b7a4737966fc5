//! The from-scratch oracle for distance levels (issue 13), used by the eager-versus-index
//! property test after every step.

use liqwatch::engine::Engine;
use liqwatch::margin;
use liqwatch::model::{AccountId, AccountState, MarginRatio};
use proptest::prelude::*;
use rust_decimal::Decimal;

/// The from-scratch oracle for the distance levels: each account's distance state agrees
/// with its shock distance recomputed by `margin::shock_distance` from the account and the
/// prices — no level further in is within reach (it would have moved in) and the current
/// level plus the hysteresis still holds it (it would have recovered).
pub fn distance_states_agree_with_scratch(
    engine: &Engine,
    ids: impl Iterator<Item = AccountId>,
) -> Result<(), TestCaseError> {
    let map = engine.map();
    let prices = map.prices();
    for id in ids {
        let Some(account) = map.account(&id) else {
            continue;
        };
        let Some(state) = engine.monitor().state(map, &id) else {
            continue;
        };
        let th = account
            .thresholds
            .clone()
            .unwrap_or_else(|| engine.monitor().config().thresholds.clone());
        if th.warn_within_shock.is_empty() {
            continue;
        }
        let Ok(t) = margin::account_totals(&account, &*map.instruments(), &prices) else {
            continue;
        };
        let ratio = MarginRatio::compute(t.maintenance_margin, t.equity);
        // d: 0 at the trigger, None (∞) without exposure or when no move reaches it.
        let d = if t.maintenance_margin <= Decimal::ZERO {
            None
        } else if ratio.at_or_above(th.trigger) {
            Some(Decimal::ZERO)
        } else {
            match margin::shock_distance(&account, &*map.instruments(), &prices, th.trigger) {
                Ok(s) => s.nearest.map(|n| n.abs()),
                Err(_) => continue,
            }
        };
        let rank = match &state.shock_state {
            AccountState::Warning { level } => {
                th.warn_within_shock.iter().filter(|l| *l >= level).count()
            }
            _ => 0,
        };
        if let (Some(next), Some(d)) = (th.warn_within_shock.get(rank), d) {
            prop_assert!(
                d > *next,
                "{}: distance {} within {} at rank {}",
                id,
                d,
                next,
                rank
            );
        }
        if let Some(current) = rank
            .checked_sub(1)
            .and_then(|r| th.warn_within_shock.get(r))
        {
            let limit = *current + th.shock_hysteresis;
            prop_assert!(
                d.is_some_and(|d| d <= limit),
                "{}: distance {:?} past {} + h at rank {}",
                id,
                d,
                current,
                rank
            );
        }
    }
    Ok(())
}
