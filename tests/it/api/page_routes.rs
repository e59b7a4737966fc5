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

/// `GET /v1/accounts/{id}/events` through the router (the default scan of a backend's events):
/// only that account's events, newest first, paged backwards with `next_before_seq` across
/// more than one page of the underlying event reads; bad queries are 400s naming the field.
#[tokio::test]
async fn account_events_newest_first_and_paged() {
    let backend = MemBackend::new(4096);
    let mut mine = Vec::new();
    for i in 0..1_500u64 {
        let account = if i % 3 == 0 { "a-1" } else { "b-2" };
        let e = backend.publish(liqwatch::model::EventKind::LiquidationWarning, account);
        if account == "a-1" {
            mine.push(e.seq);
        }
    }
    mine.reverse();
    let app = app(&backend);
    let mut got = Vec::new();
    let mut uri = "/v1/accounts/a-1/events?limit=300".to_string();
    loop {
        let (status, body) = get(&app, &uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert_eq!(body["account_id"], "a-1");
        for e in body["events"].as_array().unwrap() {
            assert_eq!(e["event"]["account_id"], "a-1", "{e}");
            got.push(e["seq"].as_u64().unwrap());
        }
        match body["next_before_seq"].as_u64() {
            Some(s) => uri = format!("/v1/accounts/a-1/events?limit=300&before_seq={s}"),
            None => break,
        }
    }
    assert_eq!(got, mine);
    let (status, body) = get(&app, "/v1/accounts/nobody/events").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"], serde_json::json!([]));
    assert_eq!(body["next_before_seq"], Value::Null);
    for (uri, field) in [
        ("/v1/accounts/a-1/events?limit=0", Some("limit")),
        ("/v1/accounts/a-1/events?limit=5000", Some("limit")),
        ("/v1/accounts/a-1/events?before_seq=x", None),
        ("/v1/accounts/a-1/events?since=3", None),
    ] {
        let (status, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        if let Some(f) = field {
            assert_eq!(body["error"]["field"], f, "{uri}: {body}");
        }
    }
}
