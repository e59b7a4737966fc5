//! The risk page's token handling in a real headless Chromium. The daemon's reads are open, so
//! here the API router (over the in-memory backend) sits behind a layer that wants
//! `Authorization: Bearer <token>` on every API request, as a deployment that protects reads
//! would: the page asks for the token once, keeps it in `sessionStorage` only, and sends it on
//! the listing and on the `fetch()`-based event stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use fantoccini::Locator;
use liqwatch::api::{self, ApiState};
use liqwatch::model::EventKind;
use rust_decimal_macros::dec;
use serde_json::json;

use crate::support::api_backend::MemBackend;
use crate::support::browser::Browser;

const TOKEN: &str = "s3cret-page-token";
const DEADLINE: Duration = Duration::from_secs(20);

/// The page asks once, then lists and streams with the token; the token lives in
/// sessionStorage, never localStorage; unauthenticated API calls were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_asks_for_the_token_once_and_sends_it() {
    let backend = MemBackend::new(64);
    backend.set_view("acct-b", dec!(0.9));
    backend.set_view("acct-a", dec!(0.2));
    let refused = Arc::new(AtomicU64::new(0));
    let authorised = Arc::new(AtomicU64::new(0));
    let (r, a) = (refused.clone(), authorised.clone());
    let guard = move |request: Request, next: Next| {
        let (r, a) = (r.clone(), a.clone());
        async move {
            let path = request.uri().path();
            if path == "/" || path.starts_with("/assets/") {
                return next.run(request).await;
            }
            let ok = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {TOKEN}"));
            if !ok {
                r.fetch_add(1, Ordering::SeqCst);
                let body = json!({"error":{"code":"unauthorized","message":"token needed"}});
                return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
            }
            a.fetch_add(1, Ordering::SeqCst);
            next.run(request).await
        }
    };
    let app = api::router(ApiState::new(backend.clone(), backend.events_tx.clone()))
        .layer(middleware::from_fn(guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let dir = tempfile::tempdir().unwrap();
    let browser = Browser::start(dir.path()).await;
    browser
        .client
        .goto(&format!("http://{addr}/"))
        .await
        .unwrap();
    browser
        .wait_js(
            "the token form",
            DEADLINE,
            "return getComputedStyle(document.querySelector('#auth')).display !== 'none';",
        )
        .await;
    assert!(refused.load(Ordering::SeqCst) > 0);
    let input = browser
        .client
        .find(Locator::Css("#auth-token"))
        .await
        .unwrap();
    input.send_keys(TOKEN).await.unwrap();
    browser
        .client
        .find(Locator::Css("#auth button[type='submit']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let order = browser
        .wait_js(
            "the accounts listed with the token",
            DEADLINE,
            "const r=[...document.querySelectorAll('#accounts-body tr[data-account]')];
             return r.length===2 ? r.map(x=>x.dataset.account) : null;",
        )
        .await;
    assert_eq!(order, json!(["acct-b", "acct-a"]));
    browser
        .wait_js(
            "the stream live with the token",
            DEADLINE,
            "return document.querySelector('#stream-status').dataset.state==='live';",
        )
        .await;
    backend.publish(EventKind::LiquidationWarning, "acct-b");
    browser
        .wait_js(
            "the streamed event",
            DEADLINE,
            "return !!document.querySelector('#events li.liquidation_warning');",
        )
        .await;
    let stored = browser
        .js(
            "return [sessionStorage.getItem('liqwatch.token'), localStorage.length,
                     getComputedStyle(document.querySelector('#auth')).display];",
        )
        .await;
    assert_eq!(stored, json!([TOKEN, 0, "none"]));
    assert!(authorised.load(Ordering::SeqCst) > 0);
    browser.close().await;
}
