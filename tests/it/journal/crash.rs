//! Crash test: a child process journals events and delivers them with the real webhook sink
//! (generic format, HMAC-signed) to a receiver that is failing; it is SIGKILLed mid-run, restarted with the receiver healthy, and every journaled
//! event must arrive exactly as journaled (same id and body, journal order, duplicates only as
//! re-deliveries).
//!
//! The child is this test binary re-executed with `LIQWATCH_CRASH_CHILD` set, which makes the
//! same test function run the child role instead of the parent.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use liqwatch::journal::Journal;
use liqwatch::sinks::webhook::{
    IDEMPOTENCY_HEADER, SIGNATURE_HEADER, WebhookConfig, WebhookSink, verify,
};
use liqwatch::sinks::{SinkFilter, spawn_sink_with};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::support::sink_contract;

/// The parent test's name as the test harness knows it (module path without the crate name),
/// so the re-executed binary runs exactly this test wherever the module lives.
fn test_name() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::sigkill_while_receiver_fails_then_restart_delivers_everything")
}
const ENV_ROLE: &str = "LIQWATCH_CRASH_CHILD";
const ENV_JOURNAL: &str = "LIQWATCH_CRASH_JOURNAL";
const ENV_URL: &str = "LIQWATCH_CRASH_URL";
const SINK: &str = "webhook";

const SECRET: &str = "crash-test-secret";
const ENV_SECRET: &str = "LIQWATCH_CRASH_SECRET";

/// The real webhook sink (generic body = the event JSON as journaled, signed).
fn webhook_sink(url: String) -> WebhookSink {
    let mut config = WebhookConfig::generic(url);
    config.secret_env = Some(ENV_SECRET.to_owned());
    config.timeout = Duration::from_secs(5);
    let settings = config
        .resolve(&|k| std::env::var(k).ok())
        .expect("valid webhook config");
    WebhookSink::new(SINK, settings).expect("webhook sink")
}

/// Child role: `produce` journals bursts forever (until killed) while delivering;
/// `deliver` only delivers, and exits once the sink has caught up.
fn child(role: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let journal = Arc::new(Journal::open(std::env::var(ENV_JOURNAL).unwrap()).unwrap());
        let url = std::env::var(ENV_URL).unwrap();
        let cancel = CancellationToken::new();
        let task = spawn_sink_with(
            Box::new(webhook_sink(url)),
            SinkFilter::all(),
            Arc::clone(&journal),
            sink_contract::test_options(),
            cancel.clone(),
        );
        match role {
            "produce" => {
                let mut account_seq = 1;
                loop {
                    let events = sink_contract::burst(25, 10, account_seq);
                    account_seq += 3;
                    let j = Arc::clone(&journal);
                    tokio::task::spawn_blocking(move || j.append(&events, &[]).unwrap())
                        .await
                        .unwrap();
                    // Keep the journal growing slowly until the parent kills us.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            _ => {
                sink_contract::wait_for("the sink to catch up", || async {
                    (journal.lag(SINK).ok()? == 0).then_some(())
                })
                .await;
                cancel.cancel();
                task.join.await.unwrap();
            }
        }
    });
}

#[derive(Default)]
struct Receiver {
    /// Bodies accepted (2xx), in arrival order, with their Idempotency-Key.
    accepted: Mutex<Vec<(String, String)>>,
    /// Accept this many requests, then fail with 503 (usize::MAX = always accept).
    accept_budget: AtomicUsize,
    failed: AtomicUsize,
    bad_signatures: AtomicUsize,
}

async fn receive(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    let budget = rx.accept_budget.load(Ordering::SeqCst);
    if budget == 0 {
        rx.failed.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if budget != usize::MAX {
        rx.accept_budget.fetch_sub(1, Ordering::SeqCst);
    }
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let now = liqwatch::model::now_ms() / 1000;
    if verify(
        SECRET.as_bytes(),
        signature,
        body.as_bytes(),
        now,
        Duration::from_secs(300),
    )
    .is_err()
    {
        rx.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let key = headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    rx.accepted.lock().push((key, body));
    StatusCode::OK
}

fn spawn_child(role: &str, journal: &std::path::Path, url: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            test_name().as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_ROLE, role)
        .env(ENV_JOURNAL, journal)
        .env(ENV_URL, url)
        .env(ENV_SECRET, SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn journaled(path: &std::path::Path) -> Vec<(u64, String, Option<String>, String)> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut st = c
        .prepare("SELECT seq, event_id, account_id, json FROM events ORDER BY seq")
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// SIGKILL while the receiver fails, restart with it healthy: every journaled event arrives
/// with its journaled body, in journal order, duplicates only as re-deliveries.
#[test]
fn sigkill_while_receiver_fails_then_restart_delivers_everything() {
    if let Ok(role) = std::env::var(ENV_ROLE) {
        child(&role);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        // Created once, as an operator would; the children only ever open it.
        drop(Journal::create(&path).unwrap());
        let rx = Arc::new(Receiver::default());
        rx.accept_budget.store(40, Ordering::SeqCst);
        let app = axum::Router::new()
            .route("/events", post(receive))
            .with_state(Arc::clone(&rx));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        // Phase 1: produce and deliver until the receiver starts failing, then SIGKILL.
        let mut producer = spawn_child("produce", &path, &url);
        sink_contract::wait_for("the receiver to fail several attempts", || async {
            (rx.failed.load(Ordering::SeqCst) >= 3).then_some(())
        })
        .await;
        producer.kill().unwrap(); // SIGKILL
        let status = producer.wait().unwrap();
        assert!(!status.success(), "the child was killed, not finished");
        let before = journaled(&path);
        let accepted_before = rx.accepted.lock().len();
        assert_eq!(accepted_before, 40);
        assert!(
            before.len() > accepted_before,
            "the kill must leave undelivered events ({} journaled)",
            before.len()
        );

        // Phase 2: receiver healthy, restart in deliver-only mode until caught up.
        rx.accept_budget.store(usize::MAX, Ordering::SeqCst);
        let mut deliverer = spawn_child("deliver", &path, &url);
        let status = sink_contract::wait_for("the restarted child to catch up and exit", || {
            let s = deliverer.try_wait().unwrap();
            async move { s }
        })
        .await;
        assert!(status.success(), "restarted child failed: {status}");

        let after = journaled(&path);
        assert_eq!(after, before, "the journal is unchanged by delivery");
        assert_eq!(
            rx.bad_signatures.load(Ordering::SeqCst),
            0,
            "every request verifies"
        );
        let accepted = rx.accepted.lock().clone();
        let by_id: HashMap<&str, &str> = before
            .iter()
            .map(|(_, id, _, json)| (id.as_str(), json.as_str()))
            .collect();
        let mut firsts = Vec::new();
        let mut seen = HashSet::new();
        for (key, body) in &accepted {
            let journaled_body = by_id
                .get(key.as_str())
                .unwrap_or_else(|| panic!("receiver got an event that was never journaled: {key}"));
            assert_eq!(
                body, journaled_body,
                "event {key} delivered exactly as journaled"
            );
            if seen.insert(key.clone()) {
                firsts.push(key.clone());
            }
        }
        let want: Vec<String> = before.iter().map(|(_, id, _, _)| id.clone()).collect();
        assert_eq!(
            firsts, want,
            "every journaled event arrives, first arrivals in journal order"
        );
        // Per account, first arrivals follow the account's own event sequence.
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        for key in &firsts {
            let ev: liqwatch::model::RiskEvent = serde_json::from_str(by_id[key.as_str()]).unwrap();
            let acct = ev.account_id.unwrap().to_string();
            let prev = last_seq.insert(acct.clone(), ev.seq);
            assert!(
                prev.is_none_or(|p| p < ev.seq),
                "account {acct} out of order"
            );
        }
        assert!(
            accepted.len() - want.len() <= sink_contract::test_options().batch_size,
            "re-deliveries are bounded by one in-flight batch"
        );
        server.abort();
    });
}
