//! The HTTP API over a real TCP listener on 127.0.0.1:0 with reqwest: mutations and reads
//! end to end, and the Server-Sent Events stream (live events, replay from `since` /
//! `Last-Event-ID` without duplicates, the resync event for a lagging client, shutdown).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use liqwatch::api::{self, ApiState, ResyncBody};
use liqwatch::model::EventKind;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::api_backend::MemBackend;

const TOKEN: &str = "tcp-token";
/// Upper bound for anything to happen; a hang fails the test instead of blocking CI.
const DEADLINE: Duration = Duration::from_secs(20);

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

fn client() -> reqwest::Client {
    // reqwest is built without a default crypto provider; install ring's once (plain HTTP here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn start(backend: &Arc<MemBackend>) -> Server {
    let shutdown = CancellationToken::new();
    let state = ApiState::new(backend.clone(), backend.events_tx.clone())
        .with_token(TOKEN)
        .with_shutdown(shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(api::serve_on(
        listener,
        api::router(state),
        shutdown.clone(),
    ));
    Server {
        addr,
        shutdown,
        task,
    }
}

#[derive(Debug)]
struct SseFrame {
    event: String,
    id: Option<String>,
    data: String,
}

/// Reads an SSE response frame by frame.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    /// The next frame, or `None` when the server ended the stream.
    async fn next(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut frame = SseFrame {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        frame.event = v.trim().to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        frame.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        frame.data.push_str(v.trim_start());
                        any = true;
                    }
                }
                if any {
                    return Some(frame);
                }
                continue; // keep-alive comment
            }
            let chunk = tokio::time::timeout(DEADLINE, self.resp.chunk())
                .await
                .expect("no SSE data before the deadline")
                .unwrap()?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

async fn open_stream(addr: SocketAddr, query: &str, last_event_id: Option<&str>) -> SseReader {
    let mut req = client().get(format!("http://{addr}/v1/events/stream{query}"));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    SseReader {
        resp,
        buf: String::new(),
    }
}

/// Over real TCP: PUT with the token creates an account that GET then serves, and the API
/// answers health checks.
#[tokio::test]
async fn mutations_and_reads_over_tcp() {
    let backend = MemBackend::new(16);
    let server = start(&backend).await;
    let client = client();
    let base = format!("http://{}", server.addr);

    let health: Value = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let resp = client
        .put(format!("{base}/v1/accounts/acct-9"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"id":"acct-9","collateral":{"USDT":"5000"},"positions":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["result"], "created");

    let got: Value = client
        .get(format!("{base}/v1/accounts/acct-9"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["account_id"], "acct-9");

    server.shutdown.cancel();
    tokio::time::timeout(DEADLINE, server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Live events reach an SSE client in journal order with the sequence as id and the kind as
/// event name.
#[tokio::test]
async fn sse_delivers_live_events() {
    let backend = MemBackend::new(16);
    let server = start(&backend).await;
    let mut stream = open_stream(server.addr, "", None).await;
    backend.publish(EventKind::LiquidationWarning, "acct-1");
    backend.publish(EventKind::LiquidationTrigger, "acct-1");

    let first = stream.next().await.unwrap();
    assert_eq!(first.event, "liquidation_warning");
    assert_eq!(first.id.as_deref(), Some("1"));
    let data: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(data["account_id"], "acct-1");
    assert_eq!(data["kind"], "liquidation_warning");
    let second = stream.next().await.unwrap();
    assert_eq!(second.event, "liquidation_trigger");
    assert_eq!(second.id.as_deref(), Some("2"));
    server.shutdown.cancel();
}

/// `since=` (or `Last-Event-ID`) replays journal history first and then continues live,
/// without repeating an event.
#[tokio::test]
async fn sse_replays_history_then_live_without_duplicates() {
    let backend = MemBackend::new(64);
    for i in 0..3 {
        backend.publish(EventKind::LiquidationWarning, &format!("acct-{i}"));
    }
    let server = start(&backend).await;

    for (query, last_event_id) in [("?since=1", None), ("", Some("1"))] {
        let mut stream = open_stream(server.addr, query, last_event_id).await;
        let journaled = backend.journal.lock().unwrap().len() as u64;
        let mut ids = Vec::new();
        for _ in 2..=journaled {
            ids.push(stream.next().await.unwrap().id.unwrap());
        }
        let want: Vec<String> = (2..=journaled).map(|s| s.to_string()).collect();
        assert_eq!(ids, want);
        let live = backend.publish(EventKind::Recovered, "acct-0");
        let frame = stream.next().await.unwrap();
        assert_eq!(frame.id, Some(live.seq.to_string()));
        assert_eq!(frame.event, "recovered");
    }
    server.shutdown.cancel();
}

/// A client that falls behind the live channel gets a `resync` event naming where to resume
/// from `/v1/events?since=`, and the stream ends.
#[tokio::test]
async fn sse_lagging_client_is_told_to_resync() {
    // Current-thread runtime: the server cannot read the channel while this loop publishes, so
    // the client's receiver deterministically falls behind a channel of 4.
    let backend = MemBackend::new(4);
    let server = start(&backend).await;
    let mut stream = open_stream(server.addr, "", None).await;
    for i in 0..20 {
        backend.publish(EventKind::LiquidationWarning, &format!("acct-{i}"));
    }
    let frame = stream.next().await.unwrap();
    assert_eq!(frame.event, "resync");
    let body: ResyncBody = serde_json::from_str(&frame.data).unwrap();
    assert_eq!(body.reason, "lagged");
    assert_eq!(body.missed, 16);
    assert_eq!(body.last_seq, 0);
    assert_eq!(body.resync, "/v1/events?since=0");
    assert!(
        stream.next().await.is_none(),
        "the stream must end after resync"
    );
    server.shutdown.cancel();
}

/// Shutdown ends open SSE streams, so graceful shutdown of the server completes.
#[tokio::test]
async fn shutdown_ends_sse_streams() {
    let backend = MemBackend::new(16);
    let server = start(&backend).await;
    let mut stream = open_stream(server.addr, "", None).await;
    server.shutdown.cancel();
    assert!(stream.next().await.is_none());
    tokio::time::timeout(DEADLINE, server.task)
        .await
        .expect("server did not shut down with an SSE client open")
        .unwrap()
        .unwrap();
}
