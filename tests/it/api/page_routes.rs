//! The risk page's routes through the in-process router: the embedded page and assets (with
//! their content types and security headers), the accounts listing's sort, filter, state and
//! paging parameters, and the what-if and history endpoints' refusals.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use liqwatch::api::{self, ApiState};
use rust_decimal_macros::dec;
use serde_json::Value;
use tower::ServiceExt;

use crate::support::api_backend::MemBackend;

fn app(backend: &Arc<MemBackend>) -> axum::Router {
    api::router(ApiState::new(backend.clone(), backend.events_tx.clone()).with_token("t"))
}

async fn get_raw(app: &axum::Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, Value) {
    let (status, _, body) = get_raw(app, uri).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// `/` is the page (HTML that loads the two assets), the assets have their types, everything is
/// sent with a same-origin-only CSP and `nosniff`; an unknown asset is a JSON 404.
#[tokio::test]
async fn page_and_assets_are_served() {
    let backend = MemBackend::new(4);
    let app = app(&backend);
    for (uri, ty, needle) in [
        ("/", "text/html", "/assets/app.js"),
        ("/assets/app.js", "text/javascript", "/v1/events/stream"),
        ("/assets/detail.js", "text/javascript", "/stress?"),
        ("/assets/app.css", "text/css", "@media (max-width"),
    ] {
        let (status, headers, body) = get_raw(&app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        let ct = headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ct.starts_with(ty), "{uri}: {ct}");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{uri}: {csp}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(body.contains(needle), "{uri} lacks {needle}");
    }
    let (status, body) = get(&app, "/assets/secret.txt").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
}

fn ids(body: &Value) -> Vec<String> {
    body["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account_id"].as_str().unwrap().to_string())
        .collect()
}

/// Sort, order, text and state filters and paging on `GET /v1/accounts`, with `total` counting
/// every match; bad values are 400s naming their parameter.
#[tokio::test]
async fn accounts_listing_pages_sorts_and_filters() {
    let backend = MemBackend::new(4);
    for (id, r) in [
        ("desk-a", dec!(0.1)),
        ("desk-b", dec!(0.9)),
        ("hot-1", dec!(1.2)),
        ("desk-c", dec!(0.5)),
    ] {
        backend.set_view(id, r);
    }
    let app = app(&backend);
    let cases: &[(&str, &[&str], u64)] = &[
        ("/v1/accounts", &["hot-1", "desk-b", "desk-c", "desk-a"], 4),
        ("/v1/accounts?order=asc&limit=2", &["desk-a", "desk-c"], 4),
        (
            "/v1/accounts?sort=id&order=asc",
            &["desk-a", "desk-b", "desk-c", "hot-1"],
            4,
        ),
        ("/v1/accounts?filter=DESK&offset=1&limit=1", &["desk-c"], 3),
        (
            "/v1/accounts?state=warning,triggered",
            &["hot-1", "desk-b"],
            2,
        ),
        ("/v1/accounts?state=triggered", &["hot-1"], 1),
        ("/v1/accounts?offset=10", &[], 4),
    ];
    for (uri, want, total) in cases {
        let (status, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert_eq!(ids(&body), *want, "{uri}");
        assert_eq!(body["total"], *total, "{uri}");
    }
    for (uri, field) in [
        ("/v1/accounts?sort=risk", "sort"),
        ("/v1/accounts?order=sideways", "order"),
        ("/v1/accounts?state=calm", "state"),
        ("/v1/accounts?offset=20000000", "offset"),
        ("/v1/accounts?filter=%07", "filter"),
    ] {
        let (status, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["error"]["field"], field, "{uri}: {body}");
    }
}

/// The what-if endpoint refuses a missing, malformed or out-of-range shock before asking the
/// backend; history of an unknown account is a 404.
#[tokio::test]
async fn stress_and_history_refusals() {
    let backend = MemBackend::new(4);
    backend.set_view("a", dec!(0.5));
    let app = app(&backend);
    for uri in [
        "/v1/accounts/a/stress",
        "/v1/accounts/a/stress?shock=ten",
        "/v1/accounts/a/stress?shock=-1",
        "/v1/accounts/a/stress?shock=1000",
    ] {
        let (status, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(body["error"]["field"], "shock", "{uri}: {body}");
    }
    let (status, body) = get(&app, "/v1/accounts/nobody/history").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
