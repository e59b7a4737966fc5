//! The risk page's queries: the accounts listing with server-side sort, filter and paging
//! (`GET /v1/accounts`), the what-if stress of one account (`GET /v1/accounts/{id}/stress`) and
//! its bounded history (`GET /v1/accounts/{id}/history`).

use std::cmp::Ordering;

use rust_decimal::Decimal;

use super::*;
use crate::api::history::HistoryPoint;
use crate::model::{InstrumentId, MarginRatio, Thresholds};

/// What the accounts listing is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AccountSort {
    /// Margin ratio (the default; with `order=desc`, riskiest first).
    #[default]
    Ratio,
    /// Equity.
    Equity,
    /// Maintenance margin.
    MaintenanceMargin,
    /// Account id.
    Id,
    /// Closeness to the trigger under a uniform move (`shock_distance.nearest`, 0 when
    /// triggered); with `order=desc`, the closest first. See [`distance_rank`].
    Distance,
}

impl AccountSort {
    fn parse(s: &str) -> Option<AccountSort> {
        Some(match s {
            "ratio" => AccountSort::Ratio,
            "equity" => AccountSort::Equity,
            "mm" => AccountSort::MaintenanceMargin,
            "id" => AccountSort::Id,
            "distance" => AccountSort::Distance,
            _ => return None,
        })
    }
}

/// Which states the listing keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateFilter {
    /// Keep healthy accounts.
    pub healthy: bool,
    /// Keep accounts at a warning level.
    pub warning: bool,
    /// Keep triggered accounts.
    pub triggered: bool,
}

impl Default for StateFilter {
    fn default() -> Self {
        StateFilter {
            healthy: true,
            warning: true,
            triggered: true,
        }
    }
}

impl StateFilter {
    /// True when `state` is kept.
    pub fn keeps(&self, state: &AccountState) -> bool {
        match state {
            AccountState::Healthy => self.healthy,
            AccountState::Warning { .. } => self.warning,
            AccountState::Triggered => self.triggered,
        }
    }

    /// True when every state is kept.
    pub fn all(&self) -> bool {
        self.healthy && self.warning && self.triggered
    }
}

/// A page of the accounts listing, as the backend is asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountsPageQuery {
    /// Sort key.
    pub sort: AccountSort,
    /// True for descending (the default).
    pub descending: bool,
    /// Keep only ids containing this text (ASCII case-insensitive); empty keeps all.
    pub filter: String,
    /// Keep only these states.
    pub states: StateFilter,
    /// Rows to skip.
    pub offset: usize,
    /// Rows to return.
    pub limit: usize,
}

impl AccountsPageQuery {
    /// True when `id` passes the text filter.
    pub fn id_matches(&self, id: &str) -> bool {
        let needle = self.filter.as_bytes();
        needle.is_empty()
            || id
                .as_bytes()
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle))
    }

    /// Orders two rows by the query's key and direction; ties by id, ascending.
    pub fn compare(&self, a: &SortFields<'_>, b: &SortFields<'_>) -> Ordering {
        let by = match self.sort {
            AccountSort::Ratio => a.ratio.cmp(&b.ratio),
            AccountSort::Equity => a.equity.cmp(&b.equity),
            AccountSort::MaintenanceMargin => a.maintenance_margin.cmp(&b.maintenance_margin),
            // Ranked by the caller ([`distance_rank`]); here only the tie-break applies.
            AccountSort::Id | AccountSort::Distance => Ordering::Equal,
        };
        let by = if self.descending { by.reverse() } else { by };
        by.then_with(|| {
            let ids = a.id.cmp(b.id);
            if self.sort == AccountSort::Id && self.descending {
                ids.reverse()
            } else {
                ids
            }
        })
    }
}

/// The figures a listing sorts on.
#[derive(Clone, Copy, Debug)]
pub struct SortFields<'a> {
    /// Account id.
    pub id: &'a AccountId,
    /// Margin ratio.
    pub ratio: MarginRatio,
    /// Equity.
    pub equity: Decimal,
    /// Maintenance margin.
    pub maintenance_margin: Decimal,
}

impl<'a> SortFields<'a> {
    /// The fields of a view.
    pub fn of(v: &'a AccountView) -> SortFields<'a> {
        SortFields {
            id: &v.account_id,
            ratio: v.snapshot.margin_ratio,
            equity: v.snapshot.equity,
            maintenance_margin: v.snapshot.maintenance_margin,
        }
    }
}

/// One page of accounts and how many matched in all.
#[derive(Clone, Debug)]
pub struct AccountsPage {
    /// The page's rows, in order.
    pub accounts: Vec<AccountView>,
    /// Accounts matching the filters (all pages).
    pub total: usize,
    /// Accounts matching the id filter that cannot be valued now, so are on no page.
    pub incomplete: Incomplete,
}

/// The accounts the listing cannot rank: an instrument they hold has no price (or a figure
/// overflowed), so they have no margin ratio. Counted, and the first [`INCOMPLETE_LISTED`] named
/// with the reason, so that an account the daemon cannot value is never silently missing from
/// the page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incomplete {
    /// How many.
    pub count: u64,
    /// The first of them (in the map's order), each with why it cannot be valued.
    pub accounts: Vec<IncompleteAccount>,
}

/// One account that cannot be valued now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncompleteAccount {
    /// The account.
    pub account_id: AccountId,
    /// Why (`no price for instrument BYBIT-BTCUSDT-PERP`).
    pub reason: String,
}

/// How many incomplete accounts a listing names ([`Incomplete::accounts`]).
pub const INCOMPLETE_LISTED: usize = 20;

/// How close an account is to its trigger under a uniform move of every non-stable price: 0
/// when it is triggered, else the size of `shock_distance.nearest`; `None` when no move reaches
/// the trigger. The smaller, the riskier.
pub fn distance_rank(state: &AccountState, nearest: Option<Decimal>) -> Option<Decimal> {
    match state {
        AccountState::Triggered => Some(Decimal::ZERO),
        _ => nearest.map(|d| d.abs()),
    }
}

/// Orders two distance ranks riskiest first (`descending`, the default) or the reverse;
/// unreachable (`None`) counts as the farthest.
pub fn compare_distance(a: Option<Decimal>, b: Option<Decimal>, descending: bool) -> Ordering {
    let risk_first = match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => x.cmp(&y),
    };
    if descending {
        risk_first
    } else {
        risk_first.reverse()
    }
}

/// Filters, sorts and pages a list of views in memory (backends whose book is small; the
/// daemon ranks its whole map without building a view per account).
pub fn page_views(mut views: Vec<AccountView>, q: &AccountsPageQuery) -> AccountsPage {
    views.retain(|v| q.states.keeps(&v.state) && q.id_matches(v.account_id.as_str()));
    views.sort_by(|a, b| {
        let by = if q.sort == AccountSort::Distance {
            let rank = |v: &AccountView| distance_rank(&v.state, v.snapshot.shock_distance.nearest);
            compare_distance(rank(a), rank(b), q.descending)
        } else {
            Ordering::Equal
        };
        by.then_with(|| q.compare(&SortFields::of(a), &SortFields::of(b)))
    });
    let total = views.len();
    let accounts = views.into_iter().skip(q.offset).take(q.limit).collect();
    AccountsPage {
        accounts,
        total,
        incomplete: Incomplete::default(),
    }
}

/// Query of `GET /v1/accounts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AccountsQuery {
    sort: Option<String>,
    order: Option<String>,
    filter: Option<String>,
    state: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

fn bad(field: &str, message: String) -> ApiError {
    ApiError::BadRequest {
        code: "invalid_query",
        field: Some(field.to_string()),
        message,
    }
}

/// Longest accepted `filter`.
pub const MAX_FILTER_LEN: usize = 128;

impl AccountsQuery {
    fn check(self) -> Result<AccountsPageQuery, ApiError> {
        let sort = match self.sort.as_deref() {
            None => AccountSort::Ratio,
            Some(s) => AccountSort::parse(s).ok_or_else(|| {
                bad(
                    "sort",
                    format!("sort={s:?} is not supported; use ratio, equity, mm, id or distance"),
                )
            })?,
        };
        let descending = match self.order.as_deref() {
            None | Some("desc") | Some("risk") => true,
            Some("asc") => false,
            Some(o) => {
                return Err(bad(
                    "order",
                    format!("order={o:?} is not supported; use desc, asc (or risk, = desc)"),
                ));
            }
        };
        let filter = self.filter.unwrap_or_default();
        if filter.len() > MAX_FILTER_LEN || filter.chars().any(char::is_control) {
            return Err(bad(
                "filter",
                format!("filter: at most {MAX_FILTER_LEN} bytes, no control characters"),
            ));
        }
        let states = match self.state.as_deref() {
            None | Some("") | Some("any") => StateFilter::default(),
            Some(list) => {
                let mut f = StateFilter {
                    healthy: false,
                    warning: false,
                    triggered: false,
                };
                for part in list.split(',') {
                    match part.trim() {
                        "healthy" => f.healthy = true,
                        "warning" => f.warning = true,
                        "triggered" => f.triggered = true,
                        other => {
                            return Err(bad(
                                "state",
                                format!(
                                    "state={other:?}: give a comma list of healthy, warning, triggered (or any)"
                                ),
                            ));
                        }
                    }
                }
                f
            }
        };
        let offset = self.offset.unwrap_or(0);
        if offset > MAX_OFFSET {
            return Err(bad(
                "offset",
                format!("offset must be at most {MAX_OFFSET}"),
            ));
        }
        Ok(AccountsPageQuery {
            sort,
            descending,
            filter,
            states,
            offset,
            limit: check_limit(self.limit)?,
        })
    }
}

/// Largest accepted `offset`.
pub const MAX_OFFSET: usize = 10_000_000;

/// Body of `GET /v1/accounts`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccountsBody {
    /// The page, in the order asked for (riskiest first by default).
    pub accounts: Vec<AccountView>,
    /// Accounts matching the filters, over all pages.
    #[serde(default)]
    pub total: Option<u64>,
    /// The `offset` of the first row.
    #[serde(default)]
    pub offset: u64,
    /// Accounts matching the id filter that cannot be valued now (on no page).
    #[serde(default)]
    pub incomplete: Incomplete,
}

pub(super) async fn list_accounts(
    State(state): State<ApiState>,
    query: Result<Query<AccountsQuery>, QueryRejection>,
) -> Result<axum::Json<AccountsBody>, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    let q = q.check()?;
    let offset = q.offset as u64;
    let page = state.backend.accounts_page(q).await?;
    Ok(axum::Json(AccountsBody {
        accounts: page.accounts,
        total: Some(page.total as u64),
        offset,
        incomplete: page.incomplete,
    }))
}

// ---------------------------------------------------------------------------------------------
// What-if
// ---------------------------------------------------------------------------------------------

/// A what-if move: every non-stable price × (1 + shock), or only one underlying's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StressQuery {
    /// The fractional move (−0.1 = a 10 % fall), greater than −1.
    pub shock: Decimal,
    /// Move only this underlying (`BTC`); `None` moves all.
    pub underlying: Option<String>,
}

impl StressQuery {
    /// The scenario in `liqwatch stress --shock` syntax (`all=-10%`, `BTC=-10%`).
    pub fn scenario_name(&self) -> String {
        let pct = self
            .shock
            .checked_mul(Decimal::ONE_HUNDRED)
            .map(|p| p.normalize().to_string())
            .unwrap_or_else(|| "?".into());
        let sign = if self.shock > Decimal::ZERO { "+" } else { "" };
        format!(
            "{}={sign}{pct}%",
            self.underlying.as_deref().unwrap_or("all")
        )
    }
}

/// One price of a what-if: now and under the move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StressPrice {
    /// Instrument.
    pub instrument: InstrumentId,
    /// The engine's price now.
    pub now: Decimal,
    /// The price under the move.
    pub shocked: Decimal,
}

/// Body of `GET /v1/accounts/{id}/stress`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StressBody {
    /// The account.
    pub account_id: AccountId,
    /// The move in `liqwatch stress` syntax (`all=-10%`).
    pub scenario: String,
    /// The fractional move.
    pub shock: Decimal,
    /// The underlying moved, or `null` for all.
    pub underlying: Option<String>,
    /// The non-stable underlyings the account holds (what `underlying` may name).
    #[serde(default)]
    pub underlyings: Vec<String>,
    /// The account's levels.
    pub levels: Thresholds,
    /// The state the account would be in (classified from healthy, as `liqwatch stress` does).
    pub state: AccountState,
    /// The snapshot under the move, exact (the same margin code as `liqwatch stress`).
    pub snapshot: RiskSnapshot,
    /// Every price moved or used.
    pub prices: Vec<StressPrice>,
}

/// Query of `GET /v1/accounts/{id}/stress`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StressParams {
    shock: Option<String>,
    underlying: Option<String>,
}

pub(super) async fn account_stress(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<StressParams>, QueryRejection>,
) -> Result<axum::Json<StressBody>, ApiError> {
    let id = path_account_id(&id)?;
    let Query(p) = query.map_err(query_error)?;
    let text = p
        .shock
        .ok_or_else(|| bad("shock", "give shock=<fraction>, e.g. shock=-0.1".into()))?;
    let shock: Decimal = text.trim().parse().map_err(|_| {
        bad(
            "shock",
            format!("shock={text:?} is not a decimal fraction (-0.1 = a 10 % fall)"),
        )
    })?;
    if shock <= Decimal::NEGATIVE_ONE || shock > Decimal::from(100) {
        return Err(bad(
            "shock",
            "shock must be greater than -1 and at most 100".into(),
        ));
    }
    let underlying = p.underlying.filter(|u| !u.is_empty() && u != "all");
    if underlying
        .as_deref()
        .is_some_and(|u| u.len() > 64 || u.chars().any(char::is_control))
    {
        return Err(bad("underlying", "underlying: at most 64 bytes".into()));
    }
    let q = StressQuery { shock, underlying };
    state.backend.stress(&id, &q).map(axum::Json)
}

/// Body of `GET /v1/accounts/{id}/history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryBody {
    /// The account.
    pub account_id: AccountId,
    /// Downsampled snapshots, oldest first (bounded; kept in memory and in the journal).
    pub points: Vec<HistoryPoint>,
}

pub(super) async fn account_history(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<HistoryBody>, ApiError> {
    let id = path_account_id(&id)?;
    let points = state
        .backend
        .history(&id)
        .ok_or_else(|| ApiError::NotFound(format!("account {id} not found")))?;
    Ok(axum::Json(HistoryBody {
        account_id: id,
        points,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RiskSnapshot, ShockDistance};

    fn view(id: &str, ratio: i64, state: AccountState) -> AccountView {
        let equity = Decimal::from(1000);
        let mm = Decimal::from(ratio);
        AccountView {
            account_id: AccountId::from(id),
            state,
            snapshot: RiskSnapshot {
                equity,
                maintenance_margin: mm,
                margin_ratio: MarginRatio::compute(mm, equity),
                free_margin: equity - mm,
                shock_distance: ShockDistance::default(),
                liquidation_penalty: Decimal::ZERO,
                liquidation_cost: None,
                funding: None,
                margin_call: None,
                positions: vec![],
                collateral: vec![],
            },
            prices: vec![],
            stale_prices: false,
            as_of_ms: 0,
            levels: None,
            last_event: None,
        }
    }

    fn query(s: &str) -> Result<AccountsPageQuery, ApiError> {
        let q: AccountsQuery = serde_urlencoded_like(s);
        q.check()
    }

    fn serde_urlencoded_like(s: &str) -> AccountsQuery {
        let uri: axum::http::Uri = format!("/v1/accounts?{s}").parse().unwrap_or_default();
        match Query::<AccountsQuery>::try_from_uri(&uri) {
            Ok(Query(q)) => q,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    /// Sort, order, state and text filters and paging, table-driven.
    #[test]
    fn paging_sorting_filtering() {
        let views = || {
            vec![
                view("a-1", 100, AccountState::Healthy),
                view(
                    "b-2",
                    900,
                    AccountState::Warning {
                        level: Decimal::new(8, 1),
                    },
                ),
                view("c-3", 1200, AccountState::Triggered),
                view("d-4", 500, AccountState::Healthy),
                view("A-5", 500, AccountState::Healthy),
            ]
        };
        let cases: &[(&str, &[&str], usize)] = &[
            ("", &["c-3", "b-2", "A-5", "d-4", "a-1"], 5),
            ("order=risk", &["c-3", "b-2", "A-5", "d-4", "a-1"], 5),
            ("order=asc", &["a-1", "A-5", "d-4", "b-2", "c-3"], 5),
            ("sort=id&order=asc", &["A-5", "a-1", "b-2", "c-3", "d-4"], 5),
            ("sort=id", &["d-4", "c-3", "b-2", "a-1", "A-5"], 5),
            ("state=warning,triggered", &["c-3", "b-2"], 2),
            ("filter=a-", &["A-5", "a-1"], 2),
            ("offset=1&limit=2", &["b-2", "A-5"], 5),
            ("offset=9", &[], 5),
        ];
        for (q, want, total) in cases {
            let page = page_views(views(), &query(q).unwrap_or_else(|e| panic!("{q}: {e:?}")));
            let got: Vec<&str> = page
                .accounts
                .iter()
                .map(|v| v.account_id.as_str())
                .collect();
            assert_eq!(&got, want, "{q}");
            assert_eq!(page.total, *total, "{q}");
        }
        for bad in [
            "sort=x",
            "order=up",
            "state=gone",
            "limit=0",
            "offset=99999999999",
        ] {
            assert!(query(bad).is_err(), "{bad}");
        }
    }

    /// `sort=distance` in memory: triggered first (rank 0), then the smallest |nearest|,
    /// unreachable last; `asc` reverses it.
    #[test]
    fn distance_order() {
        let with = |id: &str, nearest: Option<Decimal>, state: AccountState| {
            let mut v = view(id, 100, state);
            v.snapshot.shock_distance.nearest = nearest;
            v
        };
        let views = || {
            vec![
                with("far", Some(Decimal::new(-30, 2)), AccountState::Healthy),
                with("none", None, AccountState::Healthy),
                with("near", Some(Decimal::new(2, 2)), AccountState::Healthy),
                with("trig", Some(Decimal::new(5, 2)), AccountState::Triggered),
            ]
        };
        for (q, want) in [
            ("sort=distance", ["trig", "near", "far", "none"]),
            ("sort=distance&order=asc", ["none", "far", "near", "trig"]),
        ] {
            let page = page_views(views(), &query(q).unwrap_or_else(|e| panic!("{e:?}")));
            let got: Vec<&str> = page
                .accounts
                .iter()
                .map(|v| v.account_id.as_str())
                .collect();
            assert_eq!(got, want, "{q}");
        }
    }

    /// The scenario is named in `liqwatch stress` syntax.
    #[test]
    fn scenario_names() {
        let q = |s: &str, u: Option<&str>| {
            StressQuery {
                shock: s.parse().unwrap_or_default(),
                underlying: u.map(str::to_string),
            }
            .scenario_name()
        };
        assert_eq!(q("-0.1", None), "all=-10%");
        assert_eq!(q("0.05", Some("BTC")), "BTC=+5%");
        assert_eq!(q("0", None), "all=0%");
    }
}
