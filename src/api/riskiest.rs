//! `GET /v1/risk/riskiest`: the accounts ranked by the scheduled scenario risk (ES, ES/equity
//! or P(liquidation)), paged like the accounts listing.

use rust_decimal::Decimal;

use super::*;
use crate::risk::store::{RiskRank, StoredRisk};

/// One row of the riskiest list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskiestRow {
    /// The account.
    pub account_id: AccountId,
    /// Equity at the prices of the recompute.
    pub equity: Decimal,
    /// VaR.
    pub var: Decimal,
    /// Expected shortfall.
    pub es: Decimal,
    /// `es / equity`; `null` when equity ≤ 0 (ranked above every ratio).
    pub es_to_equity: Option<Decimal>,
    /// P(liquidation).
    pub p_liquidation: Decimal,
    /// Scenarios that reach the trigger.
    pub liquidating_scenarios: usize,
    /// Scenarios in the set.
    pub scenarios: usize,
    /// When the figures were computed, RFC 3339 UTC.
    pub computed_at: String,
}

impl RiskiestRow {
    /// The row of a stored result.
    pub fn of(s: &StoredRisk) -> Self {
        RiskiestRow {
            account_id: s.risk.account.clone(),
            equity: s.risk.equity,
            var: s.risk.var,
            es: s.risk.es,
            es_to_equity: s.es_to_equity(),
            p_liquidation: s.risk.p_liquidation,
            liquidating_scenarios: s.risk.liquidating_scenarios,
            scenarios: s.risk.scenarios,
            computed_at: s.computed_at.clone(),
        }
    }
}

/// Body of `GET /v1/risk/riskiest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskiestBody {
    /// The ranking: `es`, `es_to_equity` or `p_liquidation`.
    pub by: String,
    /// The page, riskiest first (ties by account id).
    pub accounts: Vec<RiskiestRow>,
    /// Accounts with a stored result, over all pages.
    pub total: u64,
    /// The `offset` of the first row.
    pub offset: u64,
}

/// Query of `GET /v1/risk/riskiest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RiskiestQuery {
    by: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

pub(super) async fn riskiest(
    State(state): State<ApiState>,
    query: Result<Query<RiskiestQuery>, QueryRejection>,
) -> Result<axum::Json<RiskiestBody>, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    let by = match q.by.as_deref() {
        None => RiskRank::Es,
        Some(s) => RiskRank::parse(s).ok_or_else(|| ApiError::BadRequest {
            code: "invalid_query",
            field: Some("by".into()),
            message: format!("by={s:?} is not supported; use es, es_to_equity or p_liquidation"),
        })?,
    };
    let offset = q.offset.unwrap_or(0);
    if offset > risk::MAX_OFFSET {
        return Err(ApiError::BadRequest {
            code: "invalid_query",
            field: Some("offset".into()),
            message: format!("offset must be at most {}", risk::MAX_OFFSET),
        });
    }
    let limit = check_limit(q.limit)?;
    let backend = Arc::clone(&state.backend);
    // Ranking the whole store: off the async workers.
    tokio::task::spawn_blocking(move || backend.risk_riskiest(by, offset, limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map(axum::Json)
}
