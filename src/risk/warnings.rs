//! `risk_warning` levels on P(liquidation) and ES/equity: edge-triggered with hysteresis, one
//! state per account that is persisted with the events it causes (so a restart never repeats
//! one).
//!
//! Per level type the state is the level in force (the highest reached, or none):
//! - the figure reaches a level above the one in force → one `risk_warning` naming the highest
//!   level reached (and every level crossed on the way);
//! - the figure falls below the level in force minus `warn_hysteresis` but stays within a lower
//!   level → the lower level is in force, silently (no event: the warning still stands);
//! - the figure falls below the lowest level minus the hysteresis → one `recovered` with the
//!   same level type, naming the level it recovers from.
//!
//! ES/equity with equity ≤ 0 counts as above every level.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::model::{EventKind, LevelType};

/// An account's risk-warning state (persisted as JSON in the journal's `risk_states`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarnState {
    /// The `seq` of the account's last risk event (risk events count on their own, beside
    /// the margin-ratio monitor's sequence).
    pub seq: u64,
    /// The P(liquidation) level in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_liquidation: Option<Decimal>,
    /// The ES/equity level in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub es_to_equity: Option<Decimal>,
}

impl WarnState {
    /// True when no level is in force (nothing to persist beyond the sequence).
    pub fn is_clear(&self) -> bool {
        self.p_liquidation.is_none() && self.es_to_equity.is_none()
    }

    /// The level in force of a type.
    pub fn slot(&mut self, t: LevelType) -> Option<&mut Option<Decimal>> {
        match t {
            LevelType::PLiquidation => Some(&mut self.p_liquidation),
            LevelType::EsToEquity => Some(&mut self.es_to_equity),
            _ => None,
        }
    }
}

/// An edge: a warning or its recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// `risk_warning` or `recovered`.
    pub kind: EventKind,
    /// The level reached, or the level recovered from.
    pub level: Decimal,
    /// Every level crossed by this move, ascending.
    pub crossed: Vec<Decimal>,
}

/// One step of a level type: `levels` ascending, `value` `None` = infinite. Returns the new
/// level in force and the edge, if any.
pub fn step(
    levels: &[Decimal],
    hysteresis: Decimal,
    in_force: Option<Decimal>,
    value: Option<Decimal>,
) -> (Option<Decimal>, Option<Edge>) {
    let at_least = |l: Decimal| value.is_none_or(|v| v >= l);
    let reached = levels.iter().rev().copied().find(|l| at_least(*l));
    if let Some(r) = reached
        && in_force.is_none_or(|f| r > f)
    {
        let crossed = levels
            .iter()
            .copied()
            .filter(|l| *l <= r && in_force.is_none_or(|f| *l > f))
            .collect();
        return (
            Some(r),
            Some(Edge {
                kind: EventKind::RiskWarning,
                level: r,
                crossed,
            }),
        );
    }
    let Some(f) = in_force else {
        return (None, None);
    };
    // Stay at the highest level at or below the one in force that still holds with hysteresis.
    let holds = levels
        .iter()
        .rev()
        .copied()
        .filter(|l| *l <= f)
        .find(|l| at_least(*l - hysteresis));
    match holds {
        Some(h) => (Some(h), None),
        None => (
            None,
            Some(Edge {
                kind: EventKind::Recovered,
                level: f,
                crossed: vec![f],
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    /// Up through two levels fires once with both; a wobble inside the hysteresis is silent;
    /// down to the lower level is silent; below the lowest minus hysteresis recovers once;
    /// infinite (equity ≤ 0) reaches the top level.
    #[test]
    fn edges_with_hysteresis() {
        let levels = [d("0.05"), d("0.1")];
        let h = d("0.01");
        let (f, e) = step(&levels, h, None, Some(d("0.12")));
        assert_eq!(f, Some(d("0.1")));
        let e = e.unwrap();
        assert_eq!((e.kind, e.level), (EventKind::RiskWarning, d("0.1")));
        assert_eq!(e.crossed, vec![d("0.05"), d("0.1")]);
        assert_eq!(step(&levels, h, f, Some(d("0.12"))), (f, None));
        assert_eq!(step(&levels, h, f, Some(d("0.095"))), (f, None));
        let (f2, e) = step(&levels, h, f, Some(d("0.06")));
        assert_eq!((f2, e), (Some(d("0.05")), None));
        assert_eq!(step(&levels, h, f2, Some(d("0.045"))), (f2, None));
        let (f3, e) = step(&levels, h, f2, Some(d("0.03")));
        assert_eq!(f3, None);
        let e = e.unwrap();
        assert_eq!((e.kind, e.level), (EventKind::Recovered, d("0.05")));
        assert_eq!(step(&levels, h, None, Some(d("0.03"))), (None, None));
        let (f, e) = step(&levels, h, Some(d("0.05")), None);
        assert_eq!(f, Some(d("0.1")));
        assert_eq!(e.unwrap().crossed, vec![d("0.1")]);
        assert_eq!(step(&[], h, None, None), (None, None));
    }
}
