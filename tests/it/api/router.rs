//! The HTTP API router driven in-process with `tower::ServiceExt::oneshot` over an in-memory
//! backend: every endpoint, auth, body limits and the JSON error shape.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use liqwatch::api::{self, ApiState, ReadinessCheck};
use liqwatch::model::{AccountUpdate, EventKind};
use liqwatch::sources::{ApplyError, UpdateOrigin};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rust_decimal_macros::dec;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::api_backend::MemBackend;

const TOKEN: &str = "s3cret-token";

fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).unwrap();
            handle
        })
        .clone()
}

fn app(backend: &Arc<MemBackend>) -> axum::Router {
    let state = ApiState::new(backend.clone(), backend.events_tx.clone())
        .with_token(TOKEN)
        .with_metrics(prometheus());
    api::router(state)
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, header::HeaderMap, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 16 * 1024 * 1024)
        .await
        .unwrap();
    (status, headers, body.to_vec())
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, Value) {
    let (status, _, body) = send(app, Request::get(uri).body(Body::empty()).unwrap()).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn mutate(method: &str, uri: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::from(body.to_string())).unwrap()
}

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let (status, _, body) = send(app, req).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

const ACCOUNT_A: &str = r#"{"id":"acct-1","collateral":{"USDT":"10000"},"positions":[{"instrument":"BTCUSDT-PERP","quantity":"0.5","entry_price":"42000.10"}]}"#;

/// `/healthz` answers 200 `{"status":"ok"}`.
#[tokio::test]
async fn healthz_is_ok() {
    let backend = MemBackend::new(16);
    let (status, body) = get(&app(&backend), "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status":"ok"}));
}

/// `/readyz` is 200 when every check passes and 503 naming the failing check otherwise.
#[tokio::test]
async fn readyz_reports_reasons() {
    let backend = MemBackend::new(16);
    let app = app(&backend);
    let (status, body) = get(&app, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ready"], true);
    assert_eq!(body["checks"].as_array().unwrap().len(), 2);

    backend.readiness.lock().unwrap().push(ReadinessCheck {
        name: "sinks".into(),
        ok: false,
        detail: "webhook pagerduty 120 events behind, failing for 95s".into(),
    });
    let (status, body) = get(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["ready"], false);
    assert_eq!(
        body["reasons"],
        json!(["sinks: webhook pagerduty 120 events behind, failing for 95s"])
    );
}

/// `/metrics` renders Prometheus text including the API's own request counter.
#[tokio::test]
async fn metrics_render_prometheus_text() {
    let backend = MemBackend::new(16);
    let app = app(&backend);
    get(&app, "/healthz").await;
    let (status, headers, body) =
        send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains(
            "liqwatch_api_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}"
        ),
        "{text}"
    );

    let bare = api::router(ApiState::new(backend.clone(), backend.events_tx.clone()));
    let (status, body) = get(&bare, "/metrics").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "unavailable");
}

/// An account's view is served; an unknown id is a JSON 404.
#[tokio::test]
async fn get_account_and_not_found() {
    let backend = MemBackend::new(16);
    backend.set_view("acct-7", dec!(0.85));
    let app = app(&backend);
    let (status, body) = get(&app, "/v1/accounts/acct-7").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["account_id"], "acct-7");
    assert_eq!(body["state"], json!({"state":"warning","level":"0.8"}));
    assert_eq!(body["snapshot"]["margin_ratio"], "0.85");
    assert_eq!(body["snapshot"]["equity"], "1000");

    let (status, body) = get(&app, "/v1/accounts/nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nobody")
    );
}

/// `/v1/accounts?order=risk&limit=N` lists the riskiest first; bad queries are 400s naming the field.
#[tokio::test]
async fn riskiest_accounts() {
    let backend = MemBackend::new(16);
    backend.set_view("calm", dec!(0.1));
    backend.set_view("hot", dec!(1.2));
    backend.set_view("warm", dec!(0.9));
    let app = app(&backend);
    let (status, body) = get(&app, "/v1/accounts?order=risk&limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["hot", "warm"]);

    for (uri, field) in [
        ("/v1/accounts?order=name", Some("order")),
        ("/v1/accounts?limit=0", Some("limit")),
        ("/v1/accounts?limit=100000", Some("limit")),
        ("/v1/accounts?limit=ten", None),
        ("/v1/accounts?sort=risk", None),
    ] {
        let (status, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["error"]["code"], "invalid_query", "{uri}");
        if let Some(f) = field {
            assert_eq!(body["error"]["field"], f, "{uri}");
        }
    }
}

/// Mutations need the configured bearer token: 401 without or with a wrong one, 403 when none
/// is configured; nothing reaches the backend.
#[tokio::test]
async fn mutations_require_token() {
    let backend = MemBackend::new(16);
    let app = app(&backend);
    let (status, headers, body) =
        send(&app, mutate("PUT", "/v1/accounts/acct-1", None, ACCOUNT_A)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = call(
        &app,
        mutate(
            "PUT",
            "/v1/accounts/acct-1",
            Some("s3cret-tokem"),
            ACCOUNT_A,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&app, mutate("DELETE", "/v1/accounts/acct-1", Some("x"), "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let no_token = api::router(ApiState::new(backend.clone(), backend.events_tx.clone()));
    let (status, body) = call(
        &no_token,
        mutate("PUT", "/v1/accounts/acct-1", Some(TOKEN), ACCOUNT_A),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "mutations_disabled");
    assert!(backend.applied.lock().unwrap().is_empty());
}

/// PUT creates then replaces an account through the backend, tagged as an HTTP update.
#[tokio::test]
async fn put_creates_then_replaces() {
    let (backend, app) = with_acct_1().await;
    let (status, body) = call(
        &app,
        mutate("PUT", "/v1/accounts/acct-1", Some(TOKEN), ACCOUNT_A),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"], "updated");
    let applied = backend.applied.lock().unwrap();
    assert_eq!(applied.len(), 2);
    let (AccountUpdate::Replace { account }, UpdateOrigin::Http) = &applied[0] else {
        panic!("expected an HTTP replace, got {:?}", applied[0]);
    };
    assert_eq!(account.positions[0].entry_price, dec!(42000.10));
    assert_eq!(
        account.collateral[&liqwatch::model::InstrumentId::from("USDT")],
        dec!(10000)
    );
}

/// Bad bodies get 4xx JSON errors naming the serde path: floats for money, unknown instruments,
/// broken rules, id mismatch, unknown fields, non-JSON content type, garbage.
#[tokio::test]
async fn put_validation_errors() {
    let backend = MemBackend::new(16);
    let app = app(&backend);
    let cases: &[(&str, StatusCode, &str, Option<&str>)] = &[
        (
            r#"{"id":"acct-1","positions":[{"instrument":"BTCUSDT-PERP","quantity":0.5,"entry_price":"42000"}]}"#,
            StatusCode::BAD_REQUEST,
            "number_not_string",
            Some("positions[0].quantity"),
        ),
        (
            r#"{"id":"acct-1","collateral":{"USDT":10000.5}}"#,
            StatusCode::BAD_REQUEST,
            "number_not_string",
            None,
        ),
        (
            r#"{"id":"acct-1","positions":[{"instrument":"DOGEUSDT-PERP","quantity":"1","entry_price":"0.3"}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_instrument",
            Some("positions[0].instrument"),
        ),
        (
            r#"{"id":"acct-1","positions":[{"instrument":"BTCUSDT-PERP","quantity":"1","entry_price":"-5"}]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            Some("positions[0].entry_price"),
        ),
        (
            r#"{"id":"acct-2","collateral":{"USDT":"1"}}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "id_mismatch",
            Some("id"),
        ),
        (
            r#"{"id":"acct-1","colateral":{"USDT":"1"}}"#,
            StatusCode::BAD_REQUEST,
            "invalid_body",
            None,
        ),
        (
            r#"{"id":"acct-1","#,
            StatusCode::BAD_REQUEST,
            "malformed_json",
            None,
        ),
    ];
    for (body, want_status, want_code, want_field) in cases {
        let (status, got) = call(
            &app,
            mutate("PUT", "/v1/accounts/acct-1", Some(TOKEN), body),
        )
        .await;
        assert_eq!(status, *want_status, "{body}: {got}");
        assert_eq!(got["error"]["code"], *want_code, "{body}: {got}");
        assert!(!got["error"]["message"].as_str().unwrap().is_empty());
        if let Some(f) = want_field {
            assert_eq!(got["error"]["field"], *f, "{body}: {got}");
        }
    }
    // The float message tells the sender what to do.
    let (_, got) = call(
        &app,
        mutate("PUT", "/v1/accounts/acct-1", Some(TOKEN), cases[0].0),
    )
    .await;
    assert!(
        got["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON strings")
    );

    let req = Request::put("/v1/accounts/acct-1")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(ACCOUNT_A))
        .unwrap();
    let (status, got) = call(&app, req).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(got["error"]["code"], "unsupported_media_type");
    assert!(backend.applied.lock().unwrap().is_empty());
}

/// A body over the limit is refused with 413 before it reaches the backend.
#[tokio::test]
async fn oversized_body_is_413() {
    let backend = MemBackend::new(16);
    let app = api::router(
        ApiState::new(backend.clone(), backend.events_tx.clone())
            .with_token(TOKEN)
            .with_body_limit(1024),
    );
    let mut positions = Vec::new();
    for i in 0..100 {
        positions.push(format!(
            r#"{{"instrument":"BTCUSDT-PERP","side":"long","quantity":"{i}","entry_price":"1"}}"#
        ));
    }
    let body = format!(r#"{{"id":"big","positions":[{}]}}"#, positions.join(","));
    assert!(body.len() > 1024);
    let (status, got) = call(&app, mutate("PUT", "/v1/accounts/big", Some(TOKEN), &body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(got["error"]["code"], "payload_too_large");
    assert!(backend.applied.lock().unwrap().is_empty());

    // The default limit is 1 MiB.
    let app = app_default(&backend);
    let huge = format!(
        r#"{{"id":"big","pad":"{}"}}"#,
        "x".repeat(api::DEFAULT_BODY_LIMIT)
    );
    let (status, _) = call(&app, mutate("PUT", "/v1/accounts/big", Some(TOKEN), &huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A backend and its router holding `acct-1` (`ACCOUNT_A`), created through the API.
async fn with_acct_1() -> (Arc<MemBackend>, axum::Router) {
    let backend = MemBackend::new(16);
    let app = app(&backend);
    let (status, body) = call(
        &app,
        mutate("PUT", "/v1/accounts/acct-1", Some(TOKEN), ACCOUNT_A),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"account_id":"acct-1","result":"created"}));
    (backend, app)
}

fn app_default(backend: &Arc<MemBackend>) -> axum::Router {
    api::router(ApiState::new(backend.clone(), backend.events_tx.clone()).with_token(TOKEN))
}

/// Fills go to the backend as `AccountUpdate::Fill`; a fill for an unknown account is 404, a
/// float price is 400 and an unknown instrument is 422.
#[tokio::test]
async fn fills() {
    let (backend, app) = with_acct_1().await;
    let fill = r#"{"instrument":"BTCUSDT-PERP","quantity":"-0.2","price":"43000.5","fee":"1.72"}"#;
    let (status, body) = call(
        &app,
        mutate("POST", "/v1/accounts/acct-1/fills", Some(TOKEN), fill),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"account_id":"acct-1","result":"updated"}));
    {
        let applied = backend.applied.lock().unwrap();
        let (AccountUpdate::Fill { account_id, fill }, _) = &applied[1] else {
            panic!("expected a fill, got {:?}", applied[1]);
        };
        assert_eq!(account_id.as_str(), "acct-1");
        assert_eq!(fill.quantity, dec!(-0.2));
        assert_eq!(fill.price, dec!(43000.5));
        assert_eq!(fill.fee, dec!(1.72));
    }

    let (status, body) = call(
        &app,
        mutate("POST", "/v1/accounts/ghost/fills", Some(TOKEN), fill),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");

    let (status, body) = call(
        &app,
        mutate(
            "POST",
            "/v1/accounts/acct-1/fills",
            Some(TOKEN),
            r#"{"instrument":"BTCUSDT-PERP","quantity":"1","price":43000.5}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "price");

    let (status, body) = call(
        &app,
        mutate(
            "POST",
            "/v1/accounts/acct-1/fills",
            Some(TOKEN),
            r#"{"instrument":"XRPUSDT-PERP","quantity":"1","price":"1"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "unknown_instrument");
    assert_eq!(body["error"]["field"], "instrument");
    assert_eq!(backend.applied.lock().unwrap().len(), 2);
}

/// Deposits and withdrawals go to the backend as `AccountUpdate::Collateral`, by the rules NATS
/// applies to the same update: an unknown account is 404, a float or missing delta 400, an
/// unknown asset or a contract 422, an unknown field 400; an id in the body or the header is
/// the update's id.
#[tokio::test]
async fn collateral_changes() {
    let (backend, app) = with_acct_1().await;
    let path = "/v1/accounts/acct-1/collateral";
    let (status, body) = call(
        &app,
        mutate(
            "POST",
            path,
            Some(TOKEN),
            r#"{"asset":"USDT","delta":"-250.50","update_id":"wd-7"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"account_id":"acct-1","result":"updated","update_id":"wd-7"})
    );
    {
        let applied = backend.applied.lock().unwrap();
        let (
            AccountUpdate::Collateral {
                account_id,
                asset,
                delta,
            },
            _,
        ) = &applied[1]
        else {
            panic!("expected a collateral change, got {:?}", applied[1]);
        };
        assert_eq!(account_id.as_str(), "acct-1");
        assert_eq!(asset.as_str(), "USDT");
        // Exactly as sent, scale included.
        assert_eq!(delta.to_string(), "-250.50");
    }

    let refused = [
        // (path, body, status, code, field)
        (
            "/v1/accounts/ghost/collateral",
            r#"{"asset":"USDT","delta":"1"}"#,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            path,
            r#"{"asset":"USDT","delta":1.5}"#,
            StatusCode::BAD_REQUEST,
            "number_not_string",
            Some("delta"),
        ),
        (
            path,
            r#"{"asset":"USDT"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_body",
            None,
        ),
        (
            path,
            r#"{"asset":"DOGE","delta":"1"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_instrument",
            Some("asset"),
        ),
        (
            path,
            r#"{"asset":"BTCUSDT-PERP","delta":"1"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            Some("asset"),
        ),
        (
            path,
            r#"{"asset":"USDT","delta":"1","amount":"5"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_body",
            Some("amount"),
        ),
    ];
    for (path, body, status, code, field) in refused {
        let (got, answer) = call(&app, mutate("POST", path, Some(TOKEN), body)).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        if let Some(f) = field {
            assert_eq!(answer["error"]["field"], f, "{body}: {answer}");
        }
    }
    // A mutation: no token, no change.
    let (status, _) = call(
        &app,
        mutate("POST", path, None, r#"{"asset":"USDT","delta":"1"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(backend.applied.lock().unwrap().len(), 2);
}

/// DELETE removes an account; deleting it again is 404.
#[tokio::test]
async fn delete_account() {
    let (backend, app) = with_acct_1().await;
    let (status, body) = call(
        &app,
        mutate("DELETE", "/v1/accounts/acct-1", Some(TOKEN), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"], "removed");
    assert!(backend.accounts.lock().unwrap().is_empty());
    let (status, _) = call(
        &app,
        mutate("DELETE", "/v1/accounts/acct-1", Some(TOKEN), ""),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A store failure answers 503 with Retry-After (the client must retry; nothing was kept).
#[tokio::test]
async fn persist_failure_is_503() {
    let backend = MemBackend::new(16);
    backend
        .fail_next
        .lock()
        .unwrap()
        .push(ApplyError::Persist("database is locked".into()));
    let app = app(&backend);
    let (status, headers, body) = send(
        &app,
        mutate("PUT", "/v1/accounts/acct-1", Some(TOKEN), ACCOUNT_A),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("database is locked")
    );
    assert!(backend.accounts.lock().unwrap().is_empty());
}

/// `/v1/feeds` lists venues with per-instrument price, age and staleness.
#[tokio::test]
async fn feeds_status() {
    let backend = MemBackend::new(16);
    let (status, body) = get(&app(&backend), "/v1/feeds").await;
    assert_eq!(status, StatusCode::OK);
    let feed = &body["feeds"][0];
    assert_eq!(feed["venue"], "binance-usdm");
    assert_eq!(feed["connected"], true);
    assert_eq!(feed["instruments"][0]["last_price"], "37612.05");
    assert_eq!(feed["instruments"][0]["stale"], false);
}

/// `/v1/events` pages through the journal by sequence or time; a bad `since` is a 400.
#[tokio::test]
async fn events_history() {
    let backend = MemBackend::new(16);
    for i in 0..5 {
        backend.publish(EventKind::LiquidationWarning, &format!("acct-{i}"));
    }
    let app = app(&backend);
    let (status, body) = get(&app, "/v1/events?since=0&limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let seqs: Vec<u64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(body["next_since"], 2);
    assert_eq!(body["events"][0]["event"]["kind"], "liquidation_warning");
    assert_eq!(body["events"][0]["event"]["account_id"], "acct-0");

    let (_, body) = get(&app, "/v1/events?since=2").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 3);
    assert_eq!(body["next_since"], 5);
    let (_, body) = get(&app, "/v1/events?since=5").await;
    assert_eq!(body["events"].as_array().unwrap().len(), 0);
    assert_eq!(body["next_since"], 5);

    // Event 4 is at 1_621_428_004_000 ms = 2021-05-19T12:40:04Z.
    let (status, body) = get(&app, "/v1/events?since=2021-05-19T12:40:04Z").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seqs: Vec<u64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [4, 5]);

    let (status, body) = get(&app, "/v1/events?since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "since");
}

/// Unknown routes are JSON 404s and wrong methods JSON 405s.
#[tokio::test]
async fn unknown_route_and_method() {
    let backend = MemBackend::new(16);
    let app = app(&backend);
    let (status, body) = get(&app, "/v2/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = call(&app, mutate("POST", "/v1/feeds", Some(TOKEN), "{}")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

/// Event-stream clients are capped: past the cap a client gets 503, and a closed stream frees
/// its slot.
#[tokio::test]
async fn sse_clients_are_capped() {
    let backend = MemBackend::new(16);
    let app = api::router(
        ApiState::new(backend.clone(), backend.events_tx.clone()).with_max_sse_clients(1),
    );
    let stream = || {
        Request::get("/v1/events/stream")
            .body(Body::empty())
            .unwrap()
    };
    let first = app.clone().oneshot(stream()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let (status, body) = call(&app, stream()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too many")
    );
    drop(first);
    let again = app.clone().oneshot(stream()).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}
