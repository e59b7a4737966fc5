//! Keeps `src/api/openapi.json` in sync with the router: the same routes both ways, every route
//! answered by the router, and every example body in the document deserialising into the Rust
//! type it describes.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use liqwatch::api::{
    self, AccountEventsBody, AccountView, AccountsBody, ApiState, ErrorBody, EventsBody, FeedsBody,
    HistoryBody, MutationBody, ReadyBody, RedeliverBody, ResyncBody, SinksBody, StressBody,
};
use liqwatch::model::{Account, Fill, RiskEvent};
use liqwatch::sources::parse_update;
use serde_json::Value;
use tower::ServiceExt;

use crate::support::api_backend::MemBackend;

fn doc() -> Value {
    serde_json::from_str(api::OPENAPI_JSON).expect("openapi.json is not valid JSON")
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.insert((method.clone(), path.clone()));
        }
    }
    routes
}

/// Every route the router declares is documented, and every documented route is declared.
#[test]
fn documented_routes_equal_router_routes() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    let declared: BTreeSet<(String, String)> = api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented_routes(&doc), declared);
}

/// The router really serves every declared route (no fallback 404 or 405), and `/openapi.json`
/// serves this document.
#[tokio::test]
async fn router_serves_every_declared_route() {
    let backend = MemBackend::new(16);
    let app =
        api::router(ApiState::new(backend.clone(), backend.events_tx.clone()).with_token("t"));
    for (method, path) in api::ROUTES {
        if *path == "/v1/events/stream" {
            continue; // an endless stream; covered by api::tcp
        }
        let uri = path.replace("{id}", "some-id");
        let req = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(&uri)
            .header("authorization", "Bearer t")
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("no such route"), "{method} {uri}: {text}");
    }
    let resp = app
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let served: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(served, doc());
}

/// Checks an example against the Rust type behind the schema name; false for unknown names.
fn check_example(schema: &str, example: &Value) -> bool {
    let text = example.to_string();
    let ok = |r: Result<(), String>| {
        if let Err(e) = r {
            panic!("example of {schema} does not deserialise: {e}\n{text}");
        }
        true
    };
    fn de<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
        serde_json::from_value::<T>(v.clone())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    match schema {
        "Account" => ok(de::<Account>(example)),
        "Fill" => ok(de::<Fill>(example)),
        "CollateralChange" => ok(de::<api::CollateralChange>(example)),
        "AccountView" => ok(de::<AccountView>(example)),
        "AccountList" => ok(de::<AccountsBody>(example)),
        "FeedList" => ok(de::<FeedsBody>(example)),
        "SinkList" => ok(de::<SinksBody>(example)),
        "RedeliverResult" => ok(de::<RedeliverBody>(example)),
        "RiskEvent" => ok(de::<RiskEvent>(example)),
        "EventPage" => {
            ok(de::<EventsBody>(example));
            for e in example["events"].as_array().unwrap() {
                ok(de::<RiskEvent>(&e["event"]));
            }
            true
        }
        "Readiness" => ok(de::<ReadyBody>(example)),
        "MutationResult" => ok(de::<MutationBody>(example)),
        "Resync" => ok(de::<ResyncBody>(example)),
        "Stress" => ok(de::<StressBody>(example)),
        "RiskiestList" => ok(de::<api::riskiest::RiskiestBody>(example)),
        "History" => ok(de::<HistoryBody>(example)),
        "AccountEventPage" => {
            ok(de::<AccountEventsBody>(example));
            for e in example["events"].as_array().unwrap() {
                ok(de::<RiskEvent>(&e["event"]));
            }
            true
        }
        "Error" => ok(de::<ErrorBody>(example)),
        "Health" => example == &serde_json::json!({"status":"ok"}),
        "AccountUpdate" => ok(parse_update(text.as_bytes())
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))),
        _ => false,
    }
}

/// Every example in the document (request bodies, responses, schema examples) deserialises into
/// the model type it documents; an example whose schema has no Rust type fails the test.
#[test]
fn examples_deserialise_into_model_types() {
    let doc = doc();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let mut media = Vec::new();
            if let Some(c) = op["requestBody"]["content"].as_object() {
                media.extend(c.values());
            }
            for resp in op["responses"].as_object().unwrap().values() {
                if let Some(c) = resp["content"].as_object() {
                    media.extend(c.values());
                }
            }
            for m in media {
                let (Some(r), Some(example)) = (m["schema"]["$ref"].as_str(), m.get("example"))
                else {
                    continue;
                };
                let name = r.trim_start_matches("#/components/schemas/");
                assert!(
                    check_example(name, example),
                    "{method} {path}: no Rust type for {name}"
                );
                checked += 1;
            }
        }
    }
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        for example in schema["examples"].as_array().into_iter().flatten() {
            if name == "Decimal" || name == "MarginRatio" {
                continue; // plain strings
            }
            assert!(check_example(name, example), "schema {name}: no Rust type");
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} examples checked");
}
