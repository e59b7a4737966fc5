//! The daemon's latest scenario risk per account, written by the scheduled recompute and read by
//! the API (`GET /v1/accounts/{id}/risk`, `GET /v1/risk/riskiest`) and the gauges.
//!
//! Each entry is the full [`AccountRisk`] (worst scenarios and components included, so the
//! endpoint serves exactly what was computed), about 1 KB per account.

use std::cmp::Ordering;
use std::sync::Arc;

use dashmap::DashMap;
use rust_decimal::Decimal;
use serde::Serialize;

use super::AccountRisk;
use crate::margin::ACCOUNTING_SCALE;
use crate::model::{AccountId, TimestampMs, format_rfc3339_ms};

/// One account's stored result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredRisk {
    /// The figures.
    #[serde(flatten)]
    pub risk: AccountRisk,
    /// When they were computed, RFC 3339 UTC.
    pub computed_at: String,
    /// The same instant in ms since the epoch.
    pub computed_at_ms: TimestampMs,
    /// `scheduled` (the daemon's recompute) or `on_demand` (computed for this request).
    pub source: &'static str,
}

impl StoredRisk {
    /// Wraps a result computed at `ms`.
    pub fn new(risk: AccountRisk, ms: TimestampMs, source: &'static str) -> Self {
        StoredRisk {
            risk,
            computed_at: format_rfc3339_ms(ms),
            computed_at_ms: ms,
            source,
        }
    }

    /// `ES / equity`, 12 places; `None` when equity ≤ 0 (above every level).
    pub fn es_to_equity(&self) -> Option<Decimal> {
        es_to_equity(self.risk.es, self.risk.equity)
    }
}

/// `ES / equity`, 12 places; `None` when equity ≤ 0.
pub fn es_to_equity(es: Decimal, equity: Decimal) -> Option<Decimal> {
    if equity <= Decimal::ZERO {
        return None;
    }
    es.checked_div(equity)
        .map(|r| r.round_dp(ACCOUNTING_SCALE).normalize())
}

/// What the riskiest list is ranked by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RiskRank {
    /// Expected shortfall, largest first.
    Es,
    /// ES / equity, largest first (equity ≤ 0 first of all).
    EsToEquity,
    /// P(liquidation), largest first (ties: larger ES first).
    PLiquidation,
}

impl RiskRank {
    /// Parses `es`, `es_to_equity`, `p_liquidation`.
    pub fn parse(s: &str) -> Option<RiskRank> {
        Some(match s {
            "es" => RiskRank::Es,
            "es_to_equity" => RiskRank::EsToEquity,
            "p_liquidation" => RiskRank::PLiquidation,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RiskRank::Es => "es",
            RiskRank::EsToEquity => "es_to_equity",
            RiskRank::PLiquidation => "p_liquidation",
        }
    }

    /// Riskiest first; ties by account id ascending.
    pub fn compare(self, a: &StoredRisk, b: &StoredRisk) -> Ordering {
        // `None` (equity ≤ 0) is above every ratio.
        let ratio = |s: &StoredRisk| s.es_to_equity().map_or((1, Decimal::ZERO), |r| (0, r));
        let by = match self {
            RiskRank::Es => b.risk.es.cmp(&a.risk.es),
            RiskRank::EsToEquity => ratio(b).cmp(&ratio(a)),
            RiskRank::PLiquidation => b
                .risk
                .p_liquidation
                .cmp(&a.risk.p_liquidation)
                .then_with(|| b.risk.es.cmp(&a.risk.es)),
        };
        by.then_with(|| a.risk.account.cmp(&b.risk.account))
    }
}

/// The latest result per account.
#[derive(Default)]
pub struct RiskStore {
    entries: DashMap<AccountId, Arc<StoredRisk>>,
}

impl RiskStore {
    /// Stores (replaces) a result.
    pub fn put(&self, r: StoredRisk) {
        self.entries.insert(r.risk.account.clone(), Arc::new(r));
    }

    /// Forgets an account (removed, or no longer valued).
    pub fn remove(&self, id: &AccountId) {
        self.entries.remove(id);
    }

    /// The stored result of an account.
    pub fn get(&self, id: &AccountId) -> Option<Arc<StoredRisk>> {
        self.entries.get(id).map(|e| Arc::clone(e.value()))
    }

    /// Accounts stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Ids of every stored account.
    pub fn ids(&self) -> Vec<AccountId> {
        self.entries.iter().map(|e| e.key().clone()).collect()
    }

    /// One page of the ranking and how many are stored.
    pub fn rank(&self, by: RiskRank, offset: usize, limit: usize) -> (usize, Vec<Arc<StoredRisk>>) {
        let mut all: Vec<Arc<StoredRisk>> =
            self.entries.iter().map(|e| Arc::clone(e.value())).collect();
        let total = all.len();
        let end = offset.saturating_add(limit).min(total);
        if offset >= total {
            return (total, Vec::new());
        }
        // Only the first `end` need ordering.
        if end < total {
            all.select_nth_unstable_by(end, |a, b| by.compare(a, b));
            all.truncate(end);
        }
        all.sort_unstable_by(|a, b| by.compare(a, b));
        (total, all.split_off(offset))
    }

    /// How many stored accounts have a figure at or above each level (`None` counts as above).
    pub fn count_at_or_above(
        &self,
        levels: &[Decimal],
        figure: impl Fn(&StoredRisk) -> Option<Decimal>,
    ) -> Vec<usize> {
        let mut counts = vec![0usize; levels.len()];
        for e in self.entries.iter() {
            let v = figure(e.value());
            for (c, l) in counts.iter_mut().zip(levels) {
                if v.is_none_or(|v| v >= *l) {
                    *c += 1;
                }
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, es: i64, equity: i64, p: &str) -> StoredRisk {
        StoredRisk::new(
            AccountRisk {
                account: AccountId::from(id),
                method: "linear",
                equity: Decimal::from(equity),
                maintenance_margin: Decimal::ZERO,
                trigger: Decimal::ONE,
                scenarios: 100,
                alpha: Decimal::new(99, 2),
                k: 1,
                var: Decimal::from(es),
                es: Decimal::from(es),
                liquidating_scenarios: 0,
                p_liquidation: p.parse().unwrap(),
                worst: vec![],
                components: vec![],
            },
            0,
            "scheduled",
        )
    }

    /// Each ranking orders riskiest first with ties by id, pages, and counts levels.
    #[test]
    fn rankings_and_counts() {
        let s = RiskStore::default();
        s.put(stored("a", 100, 1000, "0.01"));
        s.put(stored("b", 300, 1000, "0.01"));
        s.put(stored("c", 200, 400, "0.2"));
        s.put(stored("d", 50, -10, "0"));
        let ids = |by, off, lim| {
            s.rank(by, off, lim)
                .1
                .iter()
                .map(|r| r.risk.account.as_str().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(RiskRank::Es, 0, 10), ["b", "c", "a", "d"]);
        assert_eq!(ids(RiskRank::EsToEquity, 0, 10), ["d", "c", "b", "a"]);
        assert_eq!(ids(RiskRank::PLiquidation, 0, 10), ["c", "b", "a", "d"]);
        assert_eq!(ids(RiskRank::Es, 1, 2), ["c", "a"]);
        assert!(ids(RiskRank::Es, 9, 2).is_empty());
        assert_eq!(s.rank(RiskRank::Es, 1, 2).0, 4);
        let counts = s.count_at_or_above(&[Decimal::new(1, 2), Decimal::new(1, 1)], |r| {
            Some(r.risk.p_liquidation)
        });
        assert_eq!(counts, vec![3, 1]);
        assert_eq!(
            stored("c", 200, 400, "0").es_to_equity(),
            Some(Decimal::new(5, 1))
        );
    }
}
