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
//! tracker.spawn(api::serve(config.api.bind, api::router(state), cancel.clone()));
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
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
    Account, AccountId, AccountState, AccountUpdate, Fill, PriceUsed, RiskSnapshot, TimestampMs,
};
use crate::sources::{
    AccountWriter, Applied, ApplyError, FieldError, UpdateOrigin, count_update, parse_json,
    validate_account, validate_fill,
};

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

    /// The current view of one account, `None` when unknown.
    fn account(&self, id: &AccountId) -> Option<AccountView>;

    /// The `limit` riskiest accounts, highest margin ratio first.
    fn riskiest(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AccountView>, BackendError>>;

    /// Every venue and instrument the daemon prices.
    fn feeds(&self) -> Vec<FeedStatus>;

    /// Up to `limit` journaled events from `since`, in journal order.
    fn events(
        &self,
        since: EventsSince,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalEntry>, BackendError>>;
}

/// Everything the router needs.
#[derive(Clone)]
pub struct ApiState {
    backend: Arc<dyn ApiBackend>,
    events: broadcast::Sender<Arc<JournalEntry>>,
    metrics: Option<PrometheusHandle>,
    token_digest: Option<[u8; 32]>,
    body_limit: usize,
    shutdown: CancellationToken,
    sse_clients: Arc<std::sync::atomic::AtomicUsize>,
    max_sse_clients: usize,
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
            token_digest: None,
            body_limit: DEFAULT_BODY_LIMIT,
            shutdown: CancellationToken::new(),
            sse_clients: Arc::default(),
            max_sse_clients: DEFAULT_MAX_SSE_CLIENTS,
        }
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
    pub fn with_token(mut self, token: &str) -> ApiState {
        self.token_digest = (!token.is_empty()).then(|| Sha256::digest(token.as_bytes()).into());
        self
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
// Errors
// ---------------------------------------------------------------------------------------------

/// Every way a request can fail, each mapped to a status and a JSON body
/// `{"error":{"code":"…","message":"…","field":"…","details":[…]}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request itself is malformed (bad JSON, JSON number for money, bad query).
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// Serde path of the offending field, when known.
        field: Option<String>,
        /// For a person.
        message: String,
    },
    /// 401: missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 403: mutations are disabled because no token is configured.
    #[error("account mutations are disabled: no API token is configured")]
    MutationsDisabled,
    /// 404: no such account or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: body over the limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 415: body is not JSON.
    #[error("send the body as JSON with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// 422: well-formed but invalid (unknown instrument, id mismatch, rule broken).
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable code of the first problem.
        code: &'static str,
        /// Serde path of the first offending field.
        field: Option<String>,
        /// For a person (the first problem; `details` lists all).
        message: String,
        /// Every problem found.
        details: Vec<FieldError>,
    },
    /// 503: the daemon cannot serve this now (not stored, shutting down, no metrics recorder).
    #[error("{0}")]
    Unavailable(String),
    /// 500: an unexpected backend failure.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MutationsDisabled => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::Unprocessable { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::MutationsDisabled => "mutations_disabled",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// True when the client may retry the same request later.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ApiError::Unavailable(_) | ApiError::Internal(_))
    }

    fn invalid(details: Vec<FieldError>) -> ApiError {
        let first = details.first();
        ApiError::Unprocessable {
            code: if details.iter().any(|d| d.code == "unknown_instrument") {
                "unknown_instrument"
            } else {
                "invalid_value"
            },
            field: first.map(|d| d.field.clone()),
            message: details
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            details,
        }
    }
}

/// The JSON error body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: String,
    /// For a person.
    pub message: String,
    /// Serde path of the offending field, when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every validation problem (422 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldErrorBody>,
}

/// One validation problem in [`ErrorDetail::details`].
#[derive(Debug, Serialize, Deserialize)]
pub struct FieldErrorBody {
    /// Code.
    pub code: String,
    /// Serde path.
    pub field: String,
    /// For a person.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (field, details) = match &self {
            ApiError::BadRequest { field, .. } => (field.clone(), Vec::new()),
            ApiError::Unprocessable { field, details, .. } => (
                field.clone(),
                details
                    .iter()
                    .map(|d| FieldErrorBody {
                        code: d.code.to_string(),
                        field: d.field.clone(),
                        message: d.message.clone(),
                    })
                    .collect(),
            ),
            _ => (None, Vec::new()),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
                field,
                details,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        match self {
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::NotFound(id) => ApiError::NotFound(format!("account {id} not found")),
            ApplyError::Invalid { field, message } => ApiError::invalid(vec![FieldError {
                code: "invalid_value",
                field,
                message,
            }]),
            ApplyError::Unavailable(reason) => ApiError::Unavailable(reason),
            ApplyError::Persist(reason) => {
                ApiError::Unavailable(format!("the update was not stored: {reason}; retry"))
            }
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        ApiError::Internal(e.0)
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
    ("put", "/v1/accounts/{id}"),
    ("delete", "/v1/accounts/{id}"),
    ("post", "/v1/accounts/{id}/fills"),
    ("get", "/v1/feeds"),
    ("get", "/v1/events"),
    ("get", "/v1/events/stream"),
];

/// The API router over `state`.
pub fn router(state: ApiState) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .route("/v1/accounts", get(list_accounts))
        .route(
            "/v1/accounts/{id}",
            get(get_account).put(put_account).delete(delete_account),
        )
        .route("/v1/accounts/{id}/fills", axum::routing::post(post_fill))
        .route("/v1/feeds", get(feeds))
        .route("/v1/events", get(events))
        .route("/v1/events/stream", get(events_stream))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Binds `addr` and serves `router` until `shutdown` is cancelled, then finishes in-flight
/// requests (SSE streams end when the [`ApiState`] shutdown token fires: pass the same token).
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, router, shutdown).await
}

/// Like [`serve`] on an already bound listener (tests bind `127.0.0.1:0`).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().as_str().to_string();
    let start = tokio::time::Instant::now();
    let response = next.run(request).await;
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
    let Some(expected) = state.token_digest else {
        count_update("http", "unauthorized");
        return ApiError::MutationsDisabled.into_response();
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Sha256::digest(t.trim().as_bytes()));
    // Compare digests in constant time: neither the token nor its length leaks through timing.
    let ok = presented.is_some_and(|p| bool::from(p.as_slice().ct_eq(&expected)));
    if !ok {
        count_update("http", "unauthorized");
        warn!(method = %request.method(), path = %request.uri().path(), "API mutation refused: missing or invalid bearer token");
        return ApiError::Unauthorized.into_response();
    }
    next.run(request).await
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

/// Query of `GET /v1/accounts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsQuery {
    order: Option<String>,
    limit: Option<usize>,
}

/// Body of `GET /v1/accounts`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccountsBody {
    /// Riskiest first.
    pub accounts: Vec<AccountView>,
}

async fn list_accounts(
    State(state): State<ApiState>,
    query: Result<Query<AccountsQuery>, QueryRejection>,
) -> Result<axum::Json<AccountsBody>, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    if let Some(order) = q.order.as_deref().filter(|o| *o != "risk") {
        return Err(ApiError::BadRequest {
            code: "invalid_query",
            field: Some("order".to_string()),
            message: format!("order={order:?} is not supported; use order=risk"),
        });
    }
    let limit = check_limit(q.limit)?;
    let accounts = state.backend.riskiest(limit).await?;
    Ok(axum::Json(AccountsBody { accounts }))
}

async fn get_account(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<AccountView>, ApiError> {
    state
        .backend
        .account(&AccountId::from(id.as_str()))
        .map(axum::Json)
        .ok_or_else(|| ApiError::NotFound(format!("account {id} not found")))
}

/// Body of a successful mutation.
#[derive(Debug, Serialize, Deserialize)]
pub struct MutationBody {
    /// The account changed.
    pub account_id: AccountId,
    /// `created`, `updated`, `removed` or `duplicate`.
    pub result: Applied,
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
) -> Result<axum::Json<MutationBody>, ApiError> {
    let account_id = update.account_id().clone();
    match state.backend.apply(update, UpdateOrigin::Http).await {
        Ok(result) => {
            count_update("http", "applied");
            debug!(account = %account_id, ?result, "account update applied over HTTP");
            Ok(axum::Json(MutationBody { account_id, result }))
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
            warn!(account = %account_id, error = %e, "account update over HTTP not applied");
            Err(e.into())
        }
    }
}

async fn put_account(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<MutationBody>, ApiError> {
    let bytes = body_bytes(&state, &headers, body)?;
    let account: Account = parse_body(&bytes)?;
    if account.id.as_str() != id {
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
    let errors = validate_account(&account, "", &|i| state.backend.instrument_kind(i));
    if !errors.is_empty() {
        count_update("http", "invalid");
        return Err(ApiError::invalid(errors));
    }
    apply(&state, AccountUpdate::Replace { account }).await
}

async fn post_fill(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<MutationBody>, ApiError> {
    let bytes = body_bytes(&state, &headers, body)?;
    let fill: Fill = parse_body(&bytes)?;
    let errors = validate_fill(&fill, "", &|i| state.backend.instrument_kind(i));
    if !errors.is_empty() {
        count_update("http", "invalid");
        return Err(ApiError::invalid(errors));
    }
    apply(
        &state,
        AccountUpdate::Fill {
            account_id: AccountId::from(id),
            fill,
        },
    )
    .await
}

async fn delete_account(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<axum::Json<MutationBody>, ApiError> {
    apply(
        &state,
        AccountUpdate::Remove {
            account_id: AccountId::from(id),
        },
    )
    .await
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
    let events = entries
        .iter()
        .map(|e| {
            Ok(EventEntry {
                seq: e.seq,
                event: raw_event(e)?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(axum::Json(EventsBody { events, next_since }))
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------------------------

/// Body of the `resync` SSE event sent to a client that fell behind the live stream; the stream
/// ends after it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResyncBody {
    /// Why (`lagged`).
    pub reason: String,
    /// How many live events this client missed.
    pub missed: u64,
    /// The last journal sequence this client received (0 = none).
    pub last_seq: u64,
    /// Where to fetch what was missed: `/v1/events?since=<last_seq>`.
    pub resync: String,
}

/// One open SSE client: counted in the gauge and against the cap until dropped.
struct SseClientGauge(Arc<std::sync::atomic::AtomicUsize>);

impl SseClientGauge {
    /// Takes a slot, or `None` when `max` clients are already connected.
    fn acquire(count: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!("liqwatch_api_sse_clients").increment(1.0);
        Some(SseClientGauge(count.clone()))
    }
}

impl Drop for SseClientGauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        metrics::gauge!("liqwatch_api_sse_clients").decrement(1.0);
    }
}

struct SseState {
    rx: broadcast::Receiver<Arc<JournalEntry>>,
    backend: Arc<dyn ApiBackend>,
    shutdown: CancellationToken,
    backlog: VecDeque<JournalEntry>,
    /// Next history page to fetch, while catching up from `since`.
    catch_up: Option<EventsSince>,
    last_seq: Option<u64>,
    done: bool,
    _gauge: SseClientGauge,
}

fn sse_event(entry: &JournalEntry) -> Event {
    Event::default()
        .id(entry.seq.to_string())
        .event(entry.event.kind.as_str())
        .data(entry.json.as_str())
}

const SSE_PAGE: usize = 500;

async fn next_sse(mut st: SseState) -> Option<(Result<Event, std::convert::Infallible>, SseState)> {
    if st.done {
        return None;
    }
    loop {
        if let Some(entry) = st.backlog.pop_front() {
            st.last_seq = Some(entry.seq);
            let ev = sse_event(&entry);
            return Some((Ok(ev), st));
        }
        if let Some(since) = st.catch_up {
            match st.backend.events(since, SSE_PAGE).await {
                Ok(page) => {
                    st.catch_up = match page.last() {
                        Some(last) if page.len() == SSE_PAGE => Some(EventsSince::Seq(last.seq)),
                        _ => None,
                    };
                    st.backlog.extend(page);
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "SSE history read failed; ending the stream");
                    st.done = true;
                    let ev = Event::default()
                        .event("error")
                        .data(format!("{{\"error\":{}}}", serde_json::Value::String(e.0)));
                    return Some((Ok(ev), st));
                }
            }
        }
        let received = tokio::select! {
            biased;
            _ = st.shutdown.cancelled() => return None,
            r = st.rx.recv() => r,
        };
        match received {
            Ok(entry) => {
                if st.last_seq.is_some_and(|last| entry.seq <= last) {
                    continue; // already sent from history
                }
                st.last_seq = Some(entry.seq);
                let ev = sse_event(&entry);
                return Some((Ok(ev), st));
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics::counter!("liqwatch_api_sse_lagged_total").increment(1);
                let last = st.last_seq.unwrap_or(0);
                warn!(missed, last_seq = last, "SSE client lagged; told to resync");
                st.done = true;
                let body = ResyncBody {
                    reason: "lagged".to_string(),
                    missed,
                    last_seq: last,
                    resync: format!("/v1/events?since={last}"),
                };
                let ev = Event::default()
                    .event("resync")
                    .data(serde_json::to_string(&body).unwrap_or_default());
                return Some((Ok(ev), st));
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

async fn events_stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    if q.limit.is_some() {
        return Err(ApiError::BadRequest {
            code: "invalid_query",
            field: Some("limit".to_string()),
            message: "the stream takes no limit; use since= to replay history first".to_string(),
        });
    }
    // `Last-Event-ID` (sent by EventSource on reconnect) wins over `since`.
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let catch_up = match last_event_id.or(q.since) {
        Some(s) => Some(parse_since(&s)?),
        None => None,
    };
    let gauge =
        SseClientGauge::acquire(&state.sse_clients, state.max_sse_clients).ok_or_else(|| {
            ApiError::Unavailable(format!(
                "too many event-stream clients (at most {}); poll /v1/events?since= instead",
                state.max_sse_clients
            ))
        })?;
    // Subscribe before reading history so nothing committed in between is missed.
    let rx = state.events.subscribe();
    let st = SseState {
        rx,
        backend: state.backend.clone(),
        shutdown: state.shutdown.clone(),
        backlog: VecDeque::new(),
        catch_up,
        last_seq: match catch_up {
            Some(EventsSince::Seq(s)) => Some(s),
            _ => None,
        },
        done: false,
        _gauge: gauge,
    };
    let stream = futures::stream::unfold(st, next_sse);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

// ---------------------------------------------------------------------------------------------
// Journal → live stream
// ---------------------------------------------------------------------------------------------

/// Feeds the SSE broadcast from the journal: after each commit it reads the newly committed
/// entries (off the async threads) and sends them in journal order. While no client is
/// connected it reads nothing (clients catch up with `since=`). Returns when `cancel` fires or
/// the journal is dropped.
pub async fn forward_journal(
    journal: crate::journal::JournalHandle,
    events: broadcast::Sender<Arc<JournalEntry>>,
    cancel: CancellationToken,
) {
    const BATCH: usize = 1000;
    let mut committed = journal.journal().subscribe();
    let mut last = *committed.borrow_and_update();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            changed = committed.changed() => if changed.is_err() { break },
        }
        let target = *committed.borrow_and_update();
        while last < target {
            if events.receiver_count() == 0 {
                last = target;
                break;
            }
            match journal.read_after(last, BATCH).await {
                Ok(batch) if batch.is_empty() => {
                    last = target; // pruned under us: nothing left to send
                }
                Ok(batch) => {
                    for entry in batch {
                        last = entry.seq;
                        // An error only means every client has gone; keep the cursor moving.
                        let _ = events.send(Arc::new(entry));
                    }
                }
                Err(crate::journal::JournalError::CorruptRow { seq, reason }) => {
                    metrics::counter!("liqwatch_api_stream_skipped_total").increment(1);
                    warn!(seq, %reason, "unreadable journal row not streamed");
                    last = seq;
                }
                Err(error) => {
                    warn!(%error, after = last, "journal read for the live stream failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `since` is a sequence number when all digits, else an RFC 3339 UTC time; anything else
    /// (negative, overflow, offsets, words) is refused.
    #[test]
    fn events_since_parsing() {
        let cases: &[(&str, Option<EventsSince>)] = &[
            ("0", Some(EventsSince::Seq(0))),
            ("4711", Some(EventsSince::Seq(4711))),
            (
                "2021-05-19T12:40:04Z",
                Some(EventsSince::Time(1_621_428_004_000)),
            ),
            (
                "2021-05-19T12:40:04.250Z",
                Some(EventsSince::Time(1_621_428_004_250)),
            ),
            ("99999999999999999999999", None),
            ("-1", None),
            ("", None),
            ("yesterday", None),
        ];
        for (input, want) in cases {
            assert_eq!(EventsSince::parse(input), *want, "{input:?}");
        }
    }

    /// Each error maps to its documented status and code, and only server-side trouble is
    /// retriable.
    #[test]
    fn error_status_and_code() {
        let cases = [
            (ApiError::Unauthorized, 401, "unauthorized", false),
            (
                ApiError::MutationsDisabled,
                403,
                "mutations_disabled",
                false,
            ),
            (ApiError::NotFound("x".into()), 404, "not_found", false),
            (
                ApiError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
                false,
            ),
            (
                ApiError::UnsupportedMediaType,
                415,
                "unsupported_media_type",
                false,
            ),
            (ApiError::Unavailable("x".into()), 503, "unavailable", true),
            (ApiError::Internal("x".into()), 500, "internal", true),
            (
                ApiError::from(ApplyError::Persist("locked".into())),
                503,
                "unavailable",
                true,
            ),
            (
                ApiError::from(ApplyError::NotFound(AccountId::from("a"))),
                404,
                "not_found",
                false,
            ),
            (
                ApiError::from(ApplyError::Invalid {
                    field: "positions[0]".into(),
                    message: "no".into(),
                }),
                422,
                "invalid_value",
                false,
            ),
        ];
        for (error, status, code, retriable) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.code(), code, "{error:?}");
            assert_eq!(error.is_retriable(), retriable, "{error:?}");
        }
    }
}
