//! The HTTP API (axum): health, readiness, Prometheus metrics, account risk queries, the riskiest
//! accounts, feed status, event history and a live Server-Sent Events stream, and the account
//! mutations (`PUT`/`POST fills`/`DELETE`) behind a bearer token.
//!
//! The router knows nothing of the engine: it talks to an [`ApiBackend`] (the daemon implements
//! it over the real account map, price board and journal; tests use an in-memory one). Every
//! error is a JSON body `{"error":{"code":…,"message":…,"field":…}}` built by [`ApiError`].
//! The OpenAPI 3.1 description lives in `src/api/openapi.json` and is served at
//! `GET /openapi.json`; a test keeps it in sync with [`router`].
//!
//! Wiring, in the daemon:
//!
//! ```text
//! let (events_tx, _) = tokio::sync::broadcast::channel(4096);
//! tracker.spawn(api::forward_journal(journal_handle.clone(), events_tx.clone(), cancel.clone()));
//! let state = api::ApiState::new(backend.clone(), events_tx.clone())
//!     .with_metrics(prometheus_handle)
//!     .with_token(token.expose())            // omit: mutations answer 403
//!     .with_body_limit(config.api.max_body_bytes)
//!     .with_shutdown(cancel.clone());        // ends SSE streams on shutdown
//! let listener = tokio::net::TcpListener::bind(config.api.bind).await?;
//! let (limits, _note) = config.api.limits.within_fd_budget(api::open_files_soft_limit());
//! tracker.spawn(api::serve_on_with(listener, api::router(state), limits, cancel.clone()));
//! ```
//!
//! Limits: [`serve`](mod@serve) holds the header-read and idle timeouts and the connection cap;
//! [`rejected`] counts every 4xx answer and logs them aggregated; account ids in paths and
//! bodies pass [`crate::sources::check_account_id`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use futures::stream::Stream;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The status of one venue feed and of its instruments, as `GET /v1/feeds` serves it: the
/// feeds' own status type ([`crate::feeds::FeedStatus`]), serialised as is.
pub use crate::feeds::{FeedStatus, InstrumentFeedStatus};
use crate::journal::JournalEntry;
use crate::model::{
    Account, AccountId, AccountState, AccountUpdate, Fill, InstrumentId, PriceUsed, RiskSnapshot,
    TimestampMs,
};
use crate::sources::{
    AccountWriter, Applied, ApplyError, FieldError, UpdateKey, UpdateOrigin, check_account_id,
    count_update, explain_json_error, merge_ids, parse_json, take_update_id, validate_account,
    validate_fill, validate_update,
};

mod account_events; // one account's journaled events, newest first
mod error; // ApiError → clear JSON responses
pub mod history; // bounded per-account history for the risk page
mod page; // the risk page: static assets embedded in the binary
pub mod rejected; // 4xx answers counted per reason and logged aggregated
pub mod risk; // accounts listing (sort, filter, paging), what-if stress, history
pub mod riskiest; // GET /v1/risk/riskiest: ranked by the scheduled scenario risk
pub mod serve; // the accept loop: header-read and idle timeouts, connection cap
mod sse; // the live event stream (Server-Sent Events) fed from the journal

pub use account_events::AccountEventsBody;
pub use error::{ApiError, ErrorBody, ErrorDetail, FieldErrorBody};
pub use history::{HistoryPoint, HistoryStore, LastEvent};
use rejected::RejectedLog;
pub use risk::{
    AccountSort, AccountsBody, AccountsPage, AccountsPageQuery, HistoryBody, INCOMPLETE_LISTED,
    Incomplete, IncompleteAccount, SortFields, StateFilter, StressBody, StressPrice, StressQuery,
    compare_distance, distance_rank, page_views,
};
pub use serve::{ServeLimits, open_files_soft_limit, serve, serve_on, serve_on_with};
use sse::events_stream;
pub use sse::{ResyncBody, forward_journal};

/// The OpenAPI 3.1 description served at `GET /openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Default request body limit (1 MiB); larger bodies get 413.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Default and maximum `limit` of list endpoints.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest accepted `limit`.
pub const MAX_LIMIT: usize = 1000;

/// Default cap on concurrent `/v1/events/stream` clients; more get 503.
pub const DEFAULT_MAX_SSE_CLIENTS: usize = 256;

// ---------------------------------------------------------------------------------------------
// What the daemon provides
// ---------------------------------------------------------------------------------------------

/// One readiness check (`feeds`, `accounts`, `sinks`, …).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessCheck {
    /// Short name of what is checked.
    pub name: String,
    /// True when this part is ready.
    pub ok: bool,
    /// For a person: what is ready, or why not (`binance-usdm BTCUSDT stale for 12s`).
    pub detail: String,
}

/// An account as the API shows it: the risk snapshot with positions and both distances (the
/// uniform-shock distance and each position's liquidation price), plus its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The account.
    pub account_id: AccountId,
    /// Where the account stands against its levels (`{"state":"warning","level":"0.8"}`).
    pub state: AccountState,
    /// Risk at the engine's current prices.
    pub snapshot: RiskSnapshot,
    /// Every price used, with source and age.
    #[serde(default)]
    pub prices: Vec<PriceUsed>,
    /// True when any price used is stale.
    #[serde(default)]
    pub stale_prices: bool,
    /// When the snapshot was computed, ms since the epoch.
    pub as_of_ms: TimestampMs,
    /// The levels the account is measured against (its own, else the daemon's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<crate::model::Thresholds>,
    /// The account's last journaled event, if any (kept by the history store; restored from the
    /// journal at start for the accounts with a stored history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<LastEvent>,
}

/// Where `/v1/events` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventsSince {
    /// Events with journal sequence strictly greater than this (0 = from the start).
    Seq(u64),
    /// Events detected at or after this time (ms since the epoch).
    Time(TimestampMs),
}

impl EventsSince {
    /// Parses `since`: a journal sequence number, or an RFC 3339 UTC time.
    pub fn parse(s: &str) -> Option<EventsSince> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().ok().map(EventsSince::Seq);
        }
        let t = humantime::parse_rfc3339_weak(s).ok()?;
        let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
        i64::try_from(ms).ok().map(EventsSince::Time)
    }
}

/// A backend failure the API cannot fix (journal unreadable, shutting down).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// What the API needs from the running daemon. Object-safe: the router holds an
/// `Arc<dyn ApiBackend>`. Quick in-memory reads are synchronous; anything that may touch disk or
/// scan every account returns a boxed future (run it on `spawn_blocking` if it is heavy).
pub trait ApiBackend: AccountWriter {
    /// Every readiness check; the daemon is ready when all are ok.
    fn readiness(&self) -> Vec<ReadinessCheck>;

    /// The current view of one account, `None` when unknown or when it cannot be valued now.
    fn account(&self, id: &AccountId) -> Option<AccountView>;

    /// Brings the gauges that are computed rather than kept up to date (a scan of the book)
    /// to now, before `GET /metrics` renders them. Called on the blocking pool.
    fn refresh_gauges(&self) {}

    /// Why a known account has no view now ([`ApiBackend::account`] is `None`: an instrument it
    /// holds has no price, or a figure overflowed); `None` when it is unknown or has a view.
    fn account_incomplete(&self, _id: &AccountId) -> Option<String> {
        None
    }

    /// `GET /v1/accounts/{id}/risk`: historical VaR, ES, P(liquidation) and component ES at
    /// the current prices (`docs/risk.md`). The default answers 404: `[risk]` not configured.
    fn risk(&self, _id: &AccountId) -> Result<crate::risk::store::StoredRisk, ApiError> {
        Err(risk_not_configured())
    }

    /// `GET /v1/risk/riskiest`: a page of the stored scenario risk, riskiest first. The
    /// default answers 404: `[risk]` not configured.
    fn risk_riskiest(
        &self,
        _by: crate::risk::store::RiskRank,
        _offset: usize,
        _limit: usize,
    ) -> Result<riskiest::RiskiestBody, ApiError> {
        Err(risk_not_configured())
    }

    /// The `limit` riskiest accounts, highest margin ratio first.
    fn riskiest(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AccountView>, BackendError>>;

    /// Every venue and instrument the daemon prices.
    fn feeds(&self) -> Vec<FeedStatus>;

    /// Every sink's delivery status, by name. A backend without sinks has none.
    fn sinks(&self) -> Vec<crate::sinks::SinkHealth> {
        Vec::new()
    }

    /// Asks sink `name` to redeliver its dead letters; answers how many it holds now. A backend
    /// without sinks knows none.
    fn redeliver_dead_letters(&self, name: &str) -> BoxFuture<'_, Result<u64, ApiError>> {
        let e = ApiError::NotFound(format!("no sink named {name:?}"));
        Box::pin(async move { Err(e) })
    }

    /// Up to `limit` journaled events from `since`, in journal order.
    fn events(
        &self,
        since: EventsSince,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalEntry>, BackendError>>;

    /// One page of the accounts listing. The default ranks the [`MAX_DEFAULT_PAGE_SCAN`]
    /// riskiest in memory ([`page_views`]); the daemon ranks its whole book.
    fn accounts_page(
        &self,
        query: AccountsPageQuery,
    ) -> BoxFuture<'_, Result<AccountsPage, BackendError>> {
        Box::pin(async move {
            let views = self.riskiest(MAX_DEFAULT_PAGE_SCAN).await?;
            Ok(page_views(views, &query))
        })
    }

    /// The account under a what-if move (`404` unknown account, `400` unknown underlying).
    fn stress(&self, id: &AccountId, query: &StressQuery) -> Result<StressBody, ApiError> {
        let _ = (id, query);
        Err(ApiError::Unavailable(
            "what-if stress is not available here".to_string(),
        ))
    }

    /// The account's bounded history, oldest first; `None` when the account is unknown.
    fn history(&self, id: &AccountId) -> Option<Vec<HistoryPoint>> {
        self.account(id).map(|_| Vec::new())
    }

    /// Up to `limit` journaled events of account `id` with seq < `before_seq` (all when
    /// `None`), newest first. The default scans [`ApiBackend::events`]; the daemon reads its
    /// journal's per-account index.
    fn account_events(
        &self,
        id: &AccountId,
        before_seq: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalEntry>, BackendError>> {
        let id = id.clone();
        Box::pin(
            async move { account_events::scan_account_events(self, &id, before_seq, limit).await },
        )
    }
}

/// The bearer token mutations need, kept only as its SHA-256 digest, shared by every clone of
/// an [`ApiState`] so it can be replaced while the API serves.
#[derive(Clone, Default)]
pub struct ApiToken(Arc<parking_lot::RwLock<Option<[u8; 32]>>>);

impl ApiToken {
    /// Sets the token; `None` or an empty token refuses every mutation (403).
    pub fn set(&self, token: Option<&str>) {
        *self.0.write() = token
            .filter(|t| !t.is_empty())
            .map(|t| Sha256::digest(t.as_bytes()).into());
    }

    fn digest(&self) -> Option<[u8; 32]> {
        *self.0.read()
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.digest().is_some() {
            "ApiToken(set)"
        } else {
            "ApiToken(none)"
        })
    }
}

/// How many accounts the default [`ApiBackend::accounts_page`] ranks.
pub const MAX_DEFAULT_PAGE_SCAN: usize = 10_000;

/// Everything the router needs.
#[derive(Clone)]
pub struct ApiState {
    backend: Arc<dyn ApiBackend>,
    events: broadcast::Sender<Arc<JournalEntry>>,
    metrics: Option<PrometheusHandle>,
    token: ApiToken,
    body_limit: usize,
    shutdown: CancellationToken,
    sse_clients: Arc<std::sync::atomic::AtomicUsize>,
    max_sse_clients: usize,
    rejected: Arc<RejectedLog>,
}

impl ApiState {
    /// State over `backend`, streaming live events from `events` (the daemon sends every entry
    /// after it is committed to the journal). Mutations are refused (403) until a token is set.
    pub fn new(
        backend: Arc<dyn ApiBackend>,
        events: broadcast::Sender<Arc<JournalEntry>>,
    ) -> ApiState {
        ApiState {
            backend,
            events,
            metrics: None,
            token: ApiToken::default(),
            body_limit: DEFAULT_BODY_LIMIT,
            shutdown: CancellationToken::new(),
            sse_clients: Arc::default(),
            max_sse_clients: DEFAULT_MAX_SSE_CLIENTS,
            rejected: Arc::new(RejectedLog::new(rejected::DEFAULT_REJECTED_LOG_INTERVAL)),
        }
    }

    /// Interval of the aggregated rejected-request log lines (default 10 s; tests shorten it).
    pub fn with_rejected_log_interval(mut self, interval: Duration) -> ApiState {
        self.rejected = Arc::new(RejectedLog::new(interval));
        self
    }

    /// Cap on concurrent SSE clients (each holds a broadcast receiver and a connection).
    pub fn with_max_sse_clients(mut self, max: usize) -> ApiState {
        self.max_sse_clients = max;
        self
    }

    /// Serve `GET /metrics` from this Prometheus handle.
    pub fn with_metrics(mut self, handle: PrometheusHandle) -> ApiState {
        self.metrics = Some(handle);
        self
    }

    /// Require `Authorization: Bearer <token>` on mutations. The token (read by the daemon from
    /// the environment) is kept only as its SHA-256 digest. An empty token disables mutations.
    pub fn with_token(self, token: &str) -> ApiState {
        self.token.set(Some(token));
        self
    }

    /// The handle that changes the token of this state (and of every clone of it) while the
    /// router serves: a SIGHUP reload sets the re-read token here.
    pub fn token_handle(&self) -> ApiToken {
        self.token.clone()
    }

    /// Request body limit in bytes.
    pub fn with_body_limit(mut self, bytes: usize) -> ApiState {
        self.body_limit = bytes;
        self
    }

    /// Cancelled on shutdown: open SSE streams end so graceful shutdown can finish.
    pub fn with_shutdown(mut self, token: CancellationToken) -> ApiState {
        self.shutdown = token;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------------------------

/// Every route the router serves, as `(method, OpenAPI path)`; the OpenAPI test compares this with
/// the document and the router.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v1/accounts"),
    ("get", "/v1/accounts/{id}"),
    ("get", "/v1/accounts/{id}/stress"),
    ("get", "/v1/accounts/{id}/history"),
    ("get", "/v1/accounts/{id}/events"),
    ("put", "/v1/accounts/{id}"),
    ("delete", "/v1/accounts/{id}"),
    ("post", "/v1/accounts/{id}/fills"),
    ("post", "/v1/accounts/{id}/collateral"),
    ("get", "/v1/accounts/{id}/risk"),
    ("get", "/v1/risk/riskiest"),
    ("get", "/v1/feeds"),
    ("get", "/v1/sinks"),
    ("post", "/v1/sinks/{name}/redeliver"),
    ("get", "/v1/events"),
    ("get", "/v1/events/stream"),
    ("get", "/"),
    ("get", "/assets/{file}"),
];

/// The API router over `state`.
pub fn router(state: ApiState) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route("/", get(page::index))
        .route("/assets/{file}", get(page::asset))
        .route("/v1/accounts", get(risk::list_accounts))
        .route("/v1/accounts/{id}/stress", get(risk::account_stress))
        .route("/v1/accounts/{id}/history", get(risk::account_history))
        .route(
            "/v1/accounts/{id}/events",
            get(account_events::account_events),
        )
        .route(
            "/v1/accounts/{id}",
            get(get_account).put(put_account).delete(delete_account),
        )
        .route("/v1/accounts/{id}/fills", axum::routing::post(post_fill))
        .route(
            "/v1/accounts/{id}/collateral",
            axum::routing::post(post_collateral),
        )
        .route("/v1/accounts/{id}/risk", get(get_risk))
        .route("/v1/risk/riskiest", get(riskiest::riskiest))
        .route("/v1/feeds", get(feeds))
        .route("/v1/sinks", get(sinks))
        .route(
            "/v1/sinks/{name}/redeliver",
            axum::routing::post(redeliver_dead_letters),
        )
        .route("/v1/events", get(events))
        .route("/v1/events/stream", get(events_stream))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Counts every request by route, method and status; answers with a 4xx status are also
/// counted and logged per reason by the [`RejectedLog`] (aggregated, path truncated and escaped).
async fn count_requests(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let uri = request.uri().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().clone();
    let start = tokio::time::Instant::now();
    let response = next.run(request).await;
    if let Some(reason) = rejected::rejection_reason(response.status()) {
        state.rejected.record(reason, &method, uri.path());
    }
    let method = method.as_str().to_string();
    let status = response.status().as_u16().to_string();
    metrics::counter!("liqwatch_api_requests_total", "route" => route.clone(), "method" => method, "status" => status).increment(1);
    metrics::histogram!("liqwatch_api_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    response
}

/// Mutating methods need the bearer token; reads are open (bind to localhost or put the API
/// behind your network policy). Runs before the body is read.
async fn authorize(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return next.run(request).await;
    }
    let Some(expected) = state.token.digest() else {
        count_update("http", "unauthorized");
        return ApiError::MutationsDisabled.into_response();
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(|t| Sha256::digest(t.as_bytes()));
    // Compare digests in constant time: neither the token nor its length leaks through timing.
    let ok = presented.is_some_and(|p| bool::from(p.as_slice().ct_eq(&expected)));
    if !ok {
        // Logged (aggregated) by `count_requests` as a rejection, not once per request.
        count_update("http", "unauthorized");
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is matched
/// case-insensitively (RFC 7235: `bearer`, `BEARER` …), one or more spaces may follow it.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim_start_matches(' ').trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The account id of a `/v1/accounts/{id}` path, checked like every id from every source
/// ([`check_account_id`]): 400 when too long or carrying control characters.
fn path_account_id(id: &str) -> Result<AccountId, ApiError> {
    check_account_id(id).map_err(|message| ApiError::BadRequest {
        code: "invalid_account_id",
        field: Some("id".to_string()),
        message: format!("account id in the path: {message}"),
    })?;
    Ok(AccountId::from(id))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see GET /openapi.json".to_string())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Body of `GET /readyz`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadyBody {
    /// True when every check is ok.
    pub ready: bool,
    /// The failing checks' details (empty when ready).
    pub reasons: Vec<String>,
    /// Every check.
    pub checks: Vec<ReadinessCheck>,
}

async fn readyz(State(state): State<ApiState>) -> Response {
    let checks = state.backend.readiness();
    let reasons: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    let ready = reasons.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(ReadyBody {
            ready,
            reasons,
            checks,
        }),
    )
        .into_response()
}

async fn metrics_text(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let handle = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("no metrics recorder is installed".to_string()))?;
    let backend = Arc::clone(&state.backend);
    tokio::task::spawn_blocking(move || backend.refresh_gauges())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response())
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI_JSON,
    )
        .into_response()
}

fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest {
        code: "invalid_query",
        field: None,
        message: rejection.body_text(),
    }
}

fn check_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(ApiError::BadRequest {
            code: "invalid_query",
            field: Some("limit".to_string()),
            message: "limit must be at least 1".to_string(),
        }),
        n if n > MAX_LIMIT => Err(ApiError::BadRequest {
            code: "invalid_query",
            field: Some("limit".to_string()),
            message: format!("limit must be at most {MAX_LIMIT}"),
        }),
        n => Ok(n),
    }
}

async fn get_account(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<AccountView>, ApiError> {
    let id = path_account_id(&id)?;
    if let Some(view) = state.backend.account(&id) {
        return Ok(axum::Json(view));
    }
    Err(match state.backend.account_incomplete(&id) {
        Some(reason) => {
            ApiError::AccountIncomplete(format!("account {id} cannot be valued now: {reason}"))
        }
        None => ApiError::NotFound(format!("account {id} not found")),
    })
}

/// The 404 of `GET /v1/accounts/{id}/risk` when the daemon has no `[risk]` section.
pub fn risk_not_configured() -> ApiError {
    ApiError::NotFound(
        "risk is not configured: add a [risk] section (history, horizon, alpha) to the config"
            .into(),
    )
}

async fn get_risk(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<crate::risk::store::StoredRisk>, ApiError> {
    let id = path_account_id(&id)?;
    let backend = Arc::clone(&state.backend);
    // Thousands of scenarios: off the async workers.
    tokio::task::spawn_blocking(move || backend.risk(&id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map(axum::Json)
}

/// Body of a successful mutation.
#[derive(Debug, Serialize, Deserialize)]
pub struct MutationBody {
    /// The account changed.
    pub account_id: AccountId,
    /// `created`, `updated`, `removed` or `duplicate` (the update id was already applied:
    /// nothing changed now).
    pub result: Applied,
    /// The update id the request carried (`Idempotency-Key`, `update_id` or `fill_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_id: Option<String>,
}

/// The `Idempotency-Key` header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// A bad update id as a 422 naming where it was.
fn id_error(e: FieldError) -> ApiError {
    count_update("http", "invalid");
    ApiError::Unprocessable {
        code: e.code,
        field: Some(e.field.clone()),
        message: e.to_string(),
        details: vec![e],
    }
}

/// The request's update id: the `Idempotency-Key` header and/or the id `body_id` taken from the
/// body; both given must agree.
fn request_key(
    headers: &HeaderMap,
    body_id: Option<UpdateKey>,
) -> Result<Option<UpdateKey>, ApiError> {
    let header = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            id_error(FieldError {
                code: "invalid_update_id",
                field: "Idempotency-Key".to_string(),
                message: "the Idempotency-Key header must be visible ASCII".to_string(),
            })
        })?),
    };
    merge_ids("Idempotency-Key", header, body_id).map_err(id_error)
}

/// Reads `T` from a JSON value, reporting the serde path of the first bad field.
fn parse_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        count_update("http", "malformed");
        let path = e.path().to_string();
        let (code, message) = explain_json_error(&path, e.inner());
        ApiError::BadRequest {
            code,
            field: (!path.is_empty() && path != ".").then_some(path),
            message,
        }
    })
}

fn body_bytes(
    state: &ApiState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !(ct.starts_with("application/json") || ct.contains("+json")) {
            count_update("http", "malformed");
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    body.map_err(|rejection| {
        count_update("http", "malformed");
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.body_limit,
            }
        } else {
            ApiError::BadRequest {
                code: "bad_body",
                field: None,
                message: rejection.body_text(),
            }
        }
    })
}

fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_json(bytes).map_err(|(path, code, message)| {
        count_update("http", "malformed");
        ApiError::BadRequest {
            code,
            field: (!path.is_empty() && path != ".").then_some(path),
            message,
        }
    })
}

async fn apply(
    state: &ApiState,
    update: AccountUpdate,
    key: Option<UpdateKey>,
) -> Result<axum::Json<MutationBody>, ApiError> {
    let account_id = update.account_id().clone();
    let update_id = key.as_ref().map(|k| k.shown().to_string());
    match state.backend.apply(update, UpdateOrigin::Http, key).await {
        Ok(result) => {
            count_update(
                "http",
                if result == Applied::Duplicate {
                    "duplicate"
                } else {
                    "applied"
                },
            );
            debug!(account = %account_id, ?result, "account update applied over HTTP");
            Ok(axum::Json(MutationBody {
                account_id,
                result,
                update_id,
            }))
        }
        Err(e) => {
            count_update(
                "http",
                if e.is_retriable() {
                    "retry"
                } else {
                    "rejected"
                },
            );
            // A refused update is a 4xx answer, logged aggregated by `count_requests`; only
            // the daemon's own trouble is worth a line each.
            if e.is_retriable() {
                warn!(account = %account_id, error = %e, "account update over HTTP not applied");
            } else {
                debug!(account = %account_id, error = %e, "account update over HTTP refused");
            }
            Err(e.into())
        }
    }
}

/// What a mutation with a body reads first: the path's account id, the JSON body, and the
/// update's id (`Idempotency-Key`, or the body's `update_id` — and `fill_id` at `fill_id`'s
/// path for a fill — taken out of the body, [`take_update_id`]).
fn mutation_body(
    state: &ApiState,
    id: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    fill_id: Option<&str>,
) -> Result<(AccountId, serde_json::Value, Option<UpdateKey>), ApiError> {
    let account_id = path_account_id(id).inspect_err(|_| count_update("http", "invalid"))?;
    let bytes = body_bytes(state, headers, body)?;
    let mut value: serde_json::Value = parse_body(&bytes)?;
    let key = request_key(
        headers,
        take_update_id(&mut value, fill_id).map_err(id_error)?,
    )?;
    Ok((account_id, value, key))
}

/// `Ok` when validation found nothing; otherwise the 422 listing every problem (counted as
/// `invalid`).
fn valid(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        return Ok(());
    }
    count_update("http", "invalid");
    Err(ApiError::invalid(errors))
}

async fn put_account(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<MutationBody>, ApiError> {
    let (id, value, key) = mutation_body(&state, &id, &headers, body, None)?;
    // A PUT replaces the whole account: a body without `positions` would silently close every
    // position, so the field is required (`[]` clears them).
    let has_positions = value.get("positions").is_some();
    let account: Account = parse_value(value)?;
    if account.id != id {
        count_update("http", "invalid");
        return Err(ApiError::Unprocessable {
            code: "id_mismatch",
            field: Some("id".to_string()),
            message: format!(
                "id: the body's id {:?} differs from the path's {id:?}",
                account.id.as_str()
            ),
            details: Vec::new(),
        });
    }
    if !has_positions {
        count_update("http", "invalid");
        return Err(ApiError::Unprocessable {
            code: "missing_field",
            field: Some("positions".to_string()),
            message: "positions: required in a PUT, which replaces the whole account; send \"positions\": [] to clear every position".to_string(),
            details: Vec::new(),
        });
    }
    valid(validate_account(&account, "", &|i| {
        state.backend.instrument_kind(i)
    }))?;
    apply(&state, AccountUpdate::Replace { account }, key).await
}

async fn post_fill(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<MutationBody>, ApiError> {
    let (account_id, value, key) = mutation_body(&state, &id, &headers, body, Some(""))?;
    let fill: Fill = parse_value(value)?;
    valid(validate_fill(&fill, "", &|i| {
        state.backend.instrument_kind(i)
    }))?;
    apply(&state, AccountUpdate::Fill { account_id, fill }, key).await
}

/// Body of `POST /v1/accounts/{id}/collateral`: a deposit (positive `delta`) or a withdrawal
/// (negative) of one collateral asset, as NATS's `{"type":"collateral"}` update carries it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollateralChange {
    /// A collateral asset of the presets (`USDT`, `BTC`, …).
    pub asset: InstrumentId,
    /// The signed change of the balance, a decimal string.
    #[serde(with = "crate::model::exact_str")]
    pub delta: rust_decimal::Decimal,
}

async fn post_collateral(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<MutationBody>, ApiError> {
    let (account_id, value, key) = mutation_body(&state, &id, &headers, body, None)?;
    let change: CollateralChange = parse_value(value)?;
    let update = AccountUpdate::Collateral {
        account_id,
        asset: change.asset,
        delta: change.delta,
    };
    // The rules NATS applies to the same update (the asset known and a collateral asset).
    valid(validate_update(&update, &|i| {
        state.backend.instrument_kind(i)
    }))?;
    apply(&state, update, key).await
}

async fn delete_account(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::Json<MutationBody>, ApiError> {
    let account_id = path_account_id(&id).inspect_err(|_| count_update("http", "invalid"))?;
    let key = request_key(&headers, None)?;
    apply(&state, AccountUpdate::Remove { account_id }, key).await
}

/// Body of `GET /v1/feeds`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FeedsBody {
    /// One entry per venue connection.
    pub feeds: Vec<FeedStatus>,
}

async fn feeds(State(state): State<ApiState>) -> axum::Json<FeedsBody> {
    axum::Json(FeedsBody {
        feeds: state.backend.feeds(),
    })
}

/// Body of `GET /v1/sinks`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SinksBody {
    /// One entry per configured sink, by name.
    pub sinks: Vec<crate::sinks::SinkHealth>,
}

async fn sinks(State(state): State<ApiState>) -> axum::Json<SinksBody> {
    axum::Json(SinksBody {
        sinks: state.backend.sinks(),
    })
}

/// Body of `POST /v1/sinks/{name}/redeliver`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RedeliverBody {
    /// The sink.
    pub sink: String,
    /// Its dead letters when asked: what the driver will try to deliver again.
    pub dead_letters: u64,
}

async fn redeliver_dead_letters(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, axum::Json<RedeliverBody>), ApiError> {
    let n = state.backend.redeliver_dead_letters(&name).await?;
    tracing::info!(sink = %name, dead_letters = n, "Dead letters redelivery requested over HTTP");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RedeliverBody {
            sink: name,
            dead_letters: n,
        }),
    ))
}

/// Query of `/v1/events` and `/v1/events/stream`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<String>,
    limit: Option<usize>,
}

fn parse_since(s: &str) -> Result<EventsSince, ApiError> {
    EventsSince::parse(s).ok_or_else(|| ApiError::BadRequest {
        code: "invalid_query",
        field: Some("since".to_string()),
        message: format!(
            "since={s:?}: give a journal sequence number (e.g. 42) or an RFC 3339 UTC time (e.g. 2021-05-19T12:00:00Z)"
        ),
    })
}

/// One journaled event in `/v1/events`.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventEntry {
    /// Journal sequence (use it as the next `since`).
    pub seq: u64,
    /// The event exactly as journaled.
    pub event: Box<serde_json::value::RawValue>,
}

/// Body of `GET /v1/events`.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventsBody {
    /// Events in journal order.
    pub events: Vec<EventEntry>,
    /// Pass as `since` to get the next page (the last `seq` returned, or the `since` given).
    pub next_since: Option<u64>,
}

/// Journal rows as the API's event entries (each event's JSON passed through as stored).
fn event_entries(entries: &[JournalEntry]) -> Result<Vec<EventEntry>, ApiError> {
    entries
        .iter()
        .map(|e| {
            Ok(EventEntry {
                seq: e.seq,
                event: raw_event(e)?,
            })
        })
        .collect()
}

fn raw_event(entry: &JournalEntry) -> Result<Box<serde_json::value::RawValue>, ApiError> {
    serde_json::value::RawValue::from_string(entry.json.clone())
        .map_err(|e| ApiError::Internal(format!("journal entry {} is not JSON: {e}", entry.seq)))
}

async fn events(
    State(state): State<ApiState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<axum::Json<EventsBody>, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    let since = match q.since.as_deref() {
        Some(s) => parse_since(s)?,
        None => EventsSince::Seq(0),
    };
    let limit = check_limit(q.limit)?;
    let entries = state.backend.events(since, limit).await?;
    let next_since = entries.last().map(|e| e.seq).or(match since {
        EventsSince::Seq(s) => Some(s),
        EventsSince::Time(_) => None,
    });
    let events = event_entries(&entries)?;
    Ok(axum::Json(EventsBody { events, next_since }))
}

#[cfg(test)]
mod tests;
