//! The refresher against a real loopback HTTP server serving the recorded venue responses, a
//! slow one, a failing one and a malformed one: the last good set is kept and the status says
//! why.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};

use super::*;

const OK_SMALL: usize = 0;
const FAIL: usize = 1;
const SLOW: usize = 2;
const MALFORMED: usize = 3;
const OK_FULL: usize = 4;

fn fixture(rel: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("feeds")
            .join(rel),
    )
    .unwrap()
}

/// Serves `/brackets` in the mode set in `mode`, and `/info` (POST) with the Hyperliquid meta.
async fn server(mode: Arc<AtomicUsize>) -> String {
    server_counting(mode, Arc::new(AtomicUsize::new(0))).await
}

/// [`server`], counting the failures it served in `fails`.
async fn server_counting(mode: Arc<AtomicUsize>, fails: Arc<AtomicUsize>) -> String {
    let small = fixture("binance-usdm/rest/leverage_bracket_docs_example.json");
    let full = fixture("binance-usdm/rest/leverage_tiers_freqtrade_2024-10-24.json");
    let meta = fixture("hyperliquid/rest/meta_nautilus_sample.json");
    let app = Router::new()
        .route(
            "/brackets",
            get(move || {
                let (small, full, mode) = (small.clone(), full.clone(), mode.clone());
                let fails = fails.clone();
                async move {
                    match mode.load(Ordering::SeqCst) {
                        OK_SMALL => (StatusCode::OK, small),
                        FAIL => {
                            fails.fetch_add(1, Ordering::SeqCst);
                            (StatusCode::SERVICE_UNAVAILABLE, "busy".to_string())
                        }
                        SLOW => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            (StatusCode::OK, small)
                        }
                        MALFORMED => (StatusCode::OK, "[{\"symbol\":\"ETHUSDT\",\n\"brackets\":[{\"notionalFloor\":\"zero\"}]}]".to_string()),
                        _ => (StatusCode::OK, full),
                    }
                }
            }),
        )
        .route(
            "/info",
            post(move |body: String| {
                let meta = meta.clone();
                async move {
                    if body.contains("\"meta\"") {
                        (StatusCode::OK, meta)
                    } else {
                        (StatusCode::UNPROCESSABLE_ENTITY, "Failed to deserialize".into())
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Good → failing (503) → slow (timeout) → malformed → good again: every failure keeps the
/// last good set and is counted in the status; the next success replaces the set, and
/// `changed_ids` names what changed.
#[tokio::test]
async fn keeps_the_last_good_set_through_failures() {
    let mode = Arc::new(AtomicUsize::new(OK_SMALL));
    let base = server(mode.clone()).await;
    let mut r = Refresher::new(
        ImportVenue::BinanceUsdm,
        vec![RefreshUrl {
            url: format!("{base}/brackets"),
            post_json: None,
        }],
        Duration::from_millis(500),
    )
    .unwrap();
    assert!(!r.ready());
    let first = r.refresh_once().await.unwrap();
    assert!(r.ready());
    assert_eq!(first.instruments.len(), 1);
    assert!(first.instruments.contains_key("ETHUSDT-PERP"));

    for (m, check) in [
        (FAIL, "HTTP 503"),
        (SLOW, "timed out"),
        (MALFORMED, ":2:30: [0].brackets[0].notionalFloor"),
    ] {
        mode.store(m, Ordering::SeqCst);
        let e = r.refresh_once().await.unwrap_err();
        assert!(e.to_string().contains(check), "{e}");
        assert_eq!(e.is_retriable(), m != MALFORMED);
        assert_eq!(r.current().as_deref(), Some(&*first), "last good set kept");
        assert!(r.ready());
    }
    assert_eq!(r.status().consecutive_failures, 3);
    assert!(
        r.status()
            .last_error
            .as_deref()
            .unwrap()
            .contains("notionalFloor")
    );

    mode.store(OK_FULL, Ordering::SeqCst);
    let second = r.refresh_once().await.unwrap();
    assert_eq!(r.status().consecutive_failures, 0);
    assert_eq!(r.status().last_error, None);
    assert_eq!(second.instruments.len(), 349);
    let changed = changed_ids(&first, &second);
    assert_eq!(changed.len(), 349, "ETHUSDT-PERP changed, 348 added");
    assert!(changed.contains(&InstrumentId::new("ETHUSDT-PERP")));
    assert!(changed_ids(&second, &second).is_empty());
}

/// Hyperliquid is fetched with `POST /info {"type":"meta"}`.
#[tokio::test]
async fn posts_the_hyperliquid_meta_request() {
    let base = server(Arc::new(AtomicUsize::new(OK_SMALL))).await;
    let mut r = Refresher::new(
        ImportVenue::Hyperliquid,
        vec![RefreshUrl {
            url: format!("{base}/info"),
            post_json: Some(r#"{"type":"meta"}"#.into()),
        }],
        Duration::from_secs(5),
    )
    .unwrap();
    let set = r.refresh_once().await.unwrap();
    assert_eq!(set.instruments["HL-BTC-PERP"].tiers.len(), 2);
}

/// A refused connection is a fetch error, and a seeded set counts as ready.
#[tokio::test]
async fn unreachable_url_keeps_the_seeded_set() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut r = Refresher::new(
        ImportVenue::BinanceUsdm,
        vec![RefreshUrl {
            url: format!("http://{addr}/brackets"),
            post_json: None,
        }],
        Duration::from_secs(2),
    )
    .unwrap();
    r.seed(InstrumentSet {
        instruments: HashMap::new(),
        fetched_ts: 7,
    });
    let e = r.refresh_once().await.unwrap_err();
    assert!(matches!(e, RefreshError::Fetch { .. }), "{e}");
    assert!(r.ready());
    assert_eq!(r.current().unwrap().fetched_ts, 7);
}

/// The loop publishes the first good set, publishes a changed set after a failure in between,
/// and stops on cancel.
#[tokio::test]
async fn run_publishes_good_sets_only() {
    let mode = Arc::new(AtomicUsize::new(OK_SMALL));
    let fails = Arc::new(AtomicUsize::new(0));
    let base = server_counting(mode.clone(), fails.clone()).await;
    let r = Refresher::new(
        ImportVenue::BinanceUsdm,
        vec![RefreshUrl {
            url: format!("{base}/brackets"),
            post_json: None,
        }],
        Duration::from_secs(5),
    )
    .unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(run(r, Duration::from_millis(20), cancel.clone(), tx));
    rx.changed().await.unwrap();
    assert_eq!(
        rx.borrow_and_update().as_ref().unwrap().instruments.len(),
        1
    );
    mode.store(FAIL, Ordering::SeqCst);
    // Wait for two failing refreshes: nothing is published for them.
    while fails.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!rx.has_changed().unwrap());
    mode.store(OK_FULL, Ordering::SeqCst);
    rx.changed().await.unwrap();
    assert_eq!(
        rx.borrow_and_update().as_ref().unwrap().instruments.len(),
        349
    );
    cancel.cancel();
    let r = task.await.unwrap();
    assert_eq!(r.status().consecutive_failures, 0);
}
