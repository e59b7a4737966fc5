//! A real HTTP webhook receiver for tests: axum on 127.0.0.1:0, scriptable responses (status
//! sequences, `Retry-After`, delays), records every request, and verifies the
//! `X-Liqwatch-Signature` header exactly as docs/webhooks.md tells receivers to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Scripted {
    /// HTTP status to answer.
    pub status: u16,
    /// `Retry-After` header value, if any.
    pub retry_after: Option<String>,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Response body.
    pub body: String,
}

impl Scripted {
    /// Answer `status` with a short body.
    pub fn status(status: u16) -> Self {
        Scripted {
            status,
            retry_after: None,
            delay: None,
            body: format!("scripted {status}"),
        }
    }
    /// Add a `Retry-After` header.
    pub fn retry_after(mut self, v: &str) -> Self {
        self.retry_after = Some(v.to_string());
        self
    }
    /// Answer after `d`.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = Some(d);
        self
    }
    /// Set the response body.
    pub fn body(mut self, b: &str) -> Self {
        self.body = b.to_string();
        self
    }
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Raw body.
    pub body: Vec<u8>,
    /// `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// `X-Liqwatch-Signature`.
    pub signature: Option<String>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// The status we answered.
    pub status: u16,
}

impl Recorded {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }

    /// The events this request carried: the `events` array of a batched body
    /// (`{"events":[…]}`), else the body itself as one event.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let v = self.json();
        match v.get("events").and_then(|e| e.as_array()) {
            Some(list) => list.clone(),
            None => vec![v],
        }
    }

    /// The `event_id`s this request carried, in body order.
    pub fn event_ids(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|e| e["event_id"].as_str().map(str::to_string))
            .collect()
    }
}

/// The `event_id`s of a raw body (single event or `{"events":[…]}`); empty if not JSON.
fn body_event_ids(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let list = match v.get("events").and_then(|e| e.as_array()) {
        Some(list) => list.clone(),
        None => vec![v],
    };
    list.iter()
        .filter_map(|e| e["event_id"].as_str().map(str::to_string))
        .collect()
}

struct Inner {
    secret: Option<Vec<u8>>,
    script: Mutex<VecDeque<Scripted>>,
    received: Mutex<Vec<Recorded>>,
    failing: std::sync::atomic::AtomicBool,
    poisoned: Mutex<std::collections::HashSet<String>>,
}

/// The running receiver; stops when dropped.
pub struct Receiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The documented verification procedure, written out independently of the crate:
/// 1. split the header on `,`, take `t` and every `v1`;
/// 2. reject when `|now - t| > 300` seconds (replay);
/// 3. compute hex(HMAC-SHA256(secret, "<t>.<raw body>")) and compare with a `v1` in constant
///    time.
pub fn verify_documented(secret: &[u8], header: &str, body: &[u8], now: i64) -> bool {
    let mut t = None;
    let mut v1s = Vec::new();
    for kv in header.split(',') {
        if let Some((k, v)) = kv.split_once('=') {
            match k {
                "t" => t = v.parse::<i64>().ok(),
                "v1" => v1s.push(v.to_string()),
                _ => {}
            }
        }
    }
    let Some(t) = t else { return false };
    if (now - t).abs() > 300 {
        return false;
    }
    let mut signed = t.to_string().into_bytes();
    signed.push(b'.');
    signed.extend_from_slice(body);
    v1s.iter().any(|v| {
        let Ok(sig) = hex::decode(v) else {
            return false;
        };
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
        m.update(&signed);
        m.verify_slice(&sig).is_ok()
    })
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let signature = h("x-liqwatch-signature");
    let next = inner.script.lock().unwrap().pop_front();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // A receiver with a secret rejects unsigned or badly signed requests with 401.
    let scripted = match &inner.secret {
        Some(secret)
            if !signature
                .as_deref()
                .is_some_and(|s| verify_documented(secret, s, &body, now)) =>
        {
            Scripted::status(401).body("bad signature")
        }
        _ if inner.failing.load(std::sync::atomic::Ordering::SeqCst) => {
            Scripted::status(503).body("failing on purpose")
        }
        _ if h("idempotency-key").is_some_and(|k| inner.poisoned.lock().unwrap().contains(&k))
            || {
                let poisoned = inner.poisoned.lock().unwrap();
                body_event_ids(&body).iter().any(|id| poisoned.contains(id))
            } =>
        {
            Scripted::status(400).body("poisoned event")
        }
        _ => next.unwrap_or_else(|| Scripted::status(200).body("ok")),
    };
    if let Some(d) = scripted.delay {
        tokio::time::sleep(d).await;
    }
    inner.received.lock().unwrap().push(Recorded {
        body: body.to_vec(),
        idempotency_key: h("idempotency-key"),
        signature,
        content_type: h("content-type"),
        status: scripted.status,
    });
    let mut resp = (
        StatusCode::from_u16(scripted.status).unwrap(),
        scripted.body.clone(),
    )
        .into_response();
    if let Some(ra) = &scripted.retry_after {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_str(ra).unwrap());
    }
    resp
}

impl Receiver {
    /// Starts a receiver; with `secret`, requests that fail verification get 401.
    pub async fn start(secret: Option<&[u8]>) -> Receiver {
        let inner = Arc::new(Inner {
            secret: secret.map(<[u8]>::to_vec),
            script: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            failing: std::sync::atomic::AtomicBool::new(false),
            poisoned: Mutex::new(std::collections::HashSet::new()),
        });
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            inner,
            stop,
        }
    }

    /// Queues answers for the next requests (then 200 again).
    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.inner.script.lock().unwrap().extend(answers);
    }

    /// While set, every request is answered 503.
    pub fn set_failing(&self, failing: bool) {
        self.inner
            .failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests with this `Idempotency-Key`, or whose body carries an event with this
    /// `event_id` (batched bodies included), are answered 400.
    pub fn poison(&self, idempotency_key: &str) {
        self.inner
            .poisoned
            .lock()
            .unwrap()
            .insert(idempotency_key.to_string());
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Recorded> {
        self.inner.received.lock().unwrap().clone()
    }

    /// Requests answered with 2xx.
    pub fn accepted(&self) -> Vec<Recorded> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Polls until at least `n` requests were accepted, or panics after `within`.
    pub async fn wait_accepted(&self, n: usize, within: Duration) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let a = self.accepted();
            if a.len() >= n {
                return a;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} requests accepted within {within:?}",
                a.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
