//! Test environment for the daemon's end-to-end test and load generator: a loopback mock of
//! Binance USD-M's mark-price WebSocket, a signed-webhook receiver that verifies the HMAC the
//! way docs/configuration.md documents, and a helper that runs the real `liqwatch` binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use futures::{SinkExt, StreamExt};
use hmac::{KeyInit, Mac};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

/// Polls `f` every 20 ms until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn poll_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(t) = f() {
            return t;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Mock Binance USD-M
// ---------------------------------------------------------------------------------------------

/// A loopback WebSocket server speaking Binance USD-M's market stream protocol: `SUBSCRIBE`
/// requests are acked with `{"result":null,"id":N}`, then every frame pushed is sent to every
/// connected client in the combined-stream wrapper.
pub struct MockBinance {
    /// `ws://127.0.0.1:<port>/market/stream`.
    pub url: String,
    frames: broadcast::Sender<Arc<str>>,
    /// Number of SUBSCRIBE requests received (each connection sends at least one).
    pub subscribes: Arc<AtomicU64>,
    /// Stream names subscribed, across connections.
    pub streams: Arc<Mutex<Vec<String>>>,
    /// Currently connected clients.
    pub connected: Arc<AtomicU64>,
}

impl MockBinance {
    /// Starts the server on 127.0.0.1:0.
    pub async fn start() -> MockBinance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _) = broadcast::channel::<Arc<str>>(1 << 16);
        let subscribes = Arc::new(AtomicU64::new(0));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(AtomicU64::new(0));
        let (tx2, subs2, streams2, conn2) = (
            tx.clone(),
            subscribes.clone(),
            streams.clone(),
            connected.clone(),
        );
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                let rx = tx2.subscribe();
                let (subs, streams, conn) = (subs2.clone(), streams2.clone(), conn2.clone());
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_async(sock).await else {
                        return;
                    };
                    conn.fetch_add(1, Ordering::SeqCst);
                    serve_binance(ws, rx, subs, streams).await;
                    conn.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        MockBinance {
            url: format!("ws://{addr}/market/stream"),
            frames: tx,
            subscribes,
            streams,
            connected,
        }
    }

    /// Sends a raw text frame to every connected client.
    pub fn push_raw(&self, frame: impl Into<Arc<str>>) {
        let _ = self.frames.send(frame.into());
    }

    /// Sends a `markPriceUpdate` for `symbol` (uppercase) at `price` (a decimal string).
    pub fn push_mark(&self, symbol: &str, price: &str) {
        self.push_raw(mark_frame(symbol, price, now_ms()));
    }
}

/// Frames the mock dropped because a client fell behind the broadcast buffer.
pub static LAGGED: AtomicU64 = AtomicU64::new(0);

/// A combined-stream `markPriceUpdate` frame.
pub fn mark_frame(symbol: &str, price: &str, event_ms: i64) -> String {
    format!(
        "{{\"stream\":\"{}@markPrice@1s\",\"data\":{{\"e\":\"markPriceUpdate\",\"E\":{event_ms},\"s\":\"{symbol}\",\"p\":\"{price}\",\"i\":\"{price}\",\"P\":\"{price}\",\"r\":\"0.00010000\",\"T\":{}}}}}",
        symbol.to_lowercase(),
        event_ms + 3_600_000
    )
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn serve_binance<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    mut rx: broadcast::Receiver<Arc<str>>,
    subs: Arc<AtomicU64>,
    streams: Arc<Mutex<Vec<String>>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut inbound) = ws.split();
    let mut subscribed = false;
    loop {
        tokio::select! {
            msg = inbound.next() => {
                let Some(Ok(msg)) = msg else { return };
                match msg {
                    Message::Text(t) => {
                        let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                            continue;
                        };
                        if v["method"] == "SUBSCRIBE" {
                            subs.fetch_add(1, Ordering::SeqCst);
                            if let Some(params) = v["params"].as_array() {
                                streams.lock().extend(
                                    params.iter().filter_map(|p| p.as_str().map(str::to_string)),
                                );
                            }
                            let ack = format!("{{\"result\":null,\"id\":{}}}", v["id"]);
                            if tx.send(Message::text(ack)).await.is_err() {
                                return;
                            }
                            subscribed = true;
                        }
                    }
                    Message::Ping(p) if tx.send(Message::Pong(p.clone())).await.is_err() => return,
                    Message::Close(_) => return,
                    _ => {}
                }
            }
            frame = rx.recv() => {
                match frame {
                    Ok(f) => {
                        if !subscribed {
                            continue;
                        }
                        // Batch whatever is queued into one flush (the load generator pushes
                        // 100k frames/s).
                        if tx.feed(Message::text(f.to_string())).await.is_err() {
                            return;
                        }
                        let mut n = 0;
                        while n < 1024 {
                            match rx.try_recv() {
                                Ok(f) => {
                                    if tx.feed(Message::text(f.to_string())).await.is_err() {
                                        return;
                                    }
                                    n += 1;
                                }
                                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                                Err(_) => break,
                            }
                        }
                        if tx.flush().await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(k)) => {
                        LAGGED.fetch_add(k, Ordering::Relaxed);
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook receiver
// ---------------------------------------------------------------------------------------------

/// One accepted, signature-verified webhook request.
#[derive(Clone, Debug)]
pub struct Received {
    /// The parsed body.
    pub body: serde_json::Value,
    /// `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
}

impl Received {
    /// The events this request carried: the `events` array of a batched body
    /// (`{"events":[…]}`, webhook `batch_max > 1`), else the body itself as one event.
    pub fn events(&self) -> Vec<&serde_json::Value> {
        match self.body.get("events").and_then(|e| e.as_array()) {
            Some(list) => list.iter().collect(),
            None => vec![&self.body],
        }
    }
}

/// A loopback HTTP receiver that checks `X-Liqwatch-Signature` (`t=<unix>,v1=<hex>` with
/// `v1 = HMAC-SHA256(secret, "<t>.<body>")`), answers 503 while `down`, and records what it
/// accepted.
pub struct WebhookReceiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    /// Accepted requests, in arrival order.
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Answer 503 to everything while true.
    pub down: Arc<AtomicBool>,
    /// Requests refused because the signature was missing or wrong.
    pub bad_signatures: Arc<AtomicU64>,
    /// Requests refused with 503 while down.
    pub refused: Arc<AtomicU64>,
}

#[derive(Clone)]
struct HookState {
    secret: Arc<Vec<u8>>,
    received: Arc<Mutex<Vec<Received>>>,
    down: Arc<AtomicBool>,
    bad: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

/// Verifies a `X-Liqwatch-Signature` header value over `body` with `secret`.
pub fn verify_signature(header: &str, body: &[u8], secret: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.to_string()),
            Some(("v1", v)) => v1.push(v.to_string()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = hex::encode(mac.finalize().into_bytes());
    v1.iter().any(|v| v.eq_ignore_ascii_case(&expected))
}

async fn hook(State(s): State<HookState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if s.down.load(Ordering::SeqCst) {
        s.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let sig = headers
        .get("x-liqwatch-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !verify_signature(sig, &body, &s.secret) {
        s.bad.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    s.received.lock().push(Received {
        body: v,
        idempotency_key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    StatusCode::OK
}

impl WebhookReceiver {
    /// Starts the receiver on 127.0.0.1:0 with the HMAC `secret`.
    pub async fn start(secret: &str) -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = HookState {
            secret: Arc::new(secret.as_bytes().to_vec()),
            received: Arc::new(Mutex::new(Vec::new())),
            down: Arc::new(AtomicBool::new(false)),
            bad: Arc::new(AtomicU64::new(0)),
            refused: Arc::new(AtomicU64::new(0)),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            url: format!("http://{addr}/hook"),
            received: state.received,
            down: state.down,
            bad_signatures: state.bad,
            refused: state.refused,
        }
    }

    /// Accepted bodies so far.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .iter()
            .map(|r| r.body.clone())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon process
// ---------------------------------------------------------------------------------------------

/// A running `liqwatch run` child process. Killed (SIGKILL) on drop.
pub struct Daemon {
    /// The child.
    pub child: Child,
    /// Its stderr log file.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `liqwatch run --config <config>` with extra environment variables, logging to
    /// `<dir>/<name>.log`.
    pub fn start(bin: &str, config: &Path, env: &[(&str, &str)], log: PathBuf) -> Daemon {
        Self::start_args(bin, &[], config, env, log)
    }

    /// [`Daemon::start`], then waits (up to `deadline` each) for its API and for its feed to
    /// subscribe at `venue`; returns the daemon and its API base URL (`http://…`).
    pub async fn start_subscribed(
        bin: &str,
        config: &Path,
        env: &[(&str, &str)],
        log: PathBuf,
        venue: &MockBinance,
        deadline: Duration,
    ) -> (Daemon, String) {
        let before = venue.subscribes.load(Ordering::SeqCst);
        let mut daemon = Self::start(bin, config, env, log);
        let api = format!("http://{}", daemon.api_addr(deadline).await);
        poll_until("the daemon to subscribe", deadline, || {
            (venue.subscribes.load(Ordering::SeqCst) > before).then_some(())
        })
        .await;
        (daemon, api)
    }

    /// A first start: `liqwatch journal init`, then [`Daemon::start_subscribed`].
    pub async fn init_and_start_subscribed(
        bin: &str,
        config: &Path,
        env: &[(&str, &str)],
        log: PathBuf,
        venue: &MockBinance,
        deadline: Duration,
    ) -> (Daemon, String) {
        Self::init_journal(bin, config, env);
        Self::start_subscribed(bin, config, env, log, venue, deadline).await
    }

    /// [`Daemon::start`] with extra `run` arguments (`--init-journal`).
    pub fn start_args(
        bin: &str,
        args: &[&str],
        config: &Path,
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Daemon {
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .args(args)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Daemon { child, log }
    }

    /// Creates the journal `config` names the way an operator does before the first start:
    /// `liqwatch journal init --config <config>` (with `env`, as the service would have it).
    /// Panics with its output unless it exits 0.
    pub fn init_journal(bin: &str, config: &Path, env: &[(&str, &str)]) {
        let mut cmd = Command::new(bin);
        cmd.args(["journal", "init", "--config"]).arg(config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "liqwatch journal init failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address the HTTP API bound, read from the daemon's `HTTP API listening addr=…` log
    /// line (configure `[api] bind = "127.0.0.1:0"`: the kernel picks a free port, so no other
    /// test can take it in between; the line is INFO from `liqwatch::api`, so a quieter `[log]
    /// level` must let that target through). Polls the log until `deadline`, panicking with the
    /// log then or as soon as the daemon exits. Each start binds anew: ask a restarted daemon
    /// again.
    pub async fn api_addr(&mut self, deadline: Duration) -> SocketAddr {
        let end = Instant::now() + deadline;
        loop {
            let exited = !self.alive();
            let log = self.log_text();
            // Written to a file, not a terminal: plain text, as journald and log shippers
            // need it (the daemon colours its text log only on a terminal).
            assert!(
                !log.contains('\u{1b}'),
                "escape codes in a log written to a file:\n{log}"
            );
            let addr = log
                .lines()
                .filter(|l| l.contains("HTTP API listening"))
                .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
                .and_then(|a| a.parse().ok());
            if let Some(addr) = addr {
                return addr;
            }
            assert!(
                !exited,
                "the daemon exited before its API listened; log:\n{log}"
            );
            assert!(
                Instant::now() < end,
                "no `HTTP API listening addr=` line within {deadline:?}; log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (via `kill`) and waits for the exit code, up to `deadline`.
    pub fn terminate(&mut self, deadline: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let end = Instant::now() + deadline;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            self.kill9();
        }
    }
}

/// An HTTP client for loopback calls (rustls needs its crypto provider installed once).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The daemon's `/metrics` page (with `token` as bearer when given); panics unless it is served.
pub async fn scrape_metrics(client: &reqwest::Client, api: &str, token: Option<&str>) -> String {
    let mut req = client.get(format!("{api}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(r.status(), 200, "GET /metrics");
    r.text()
        .await
        .unwrap_or_else(|e| panic!("GET /metrics body: {e}"))
}

/// `GET url` as JSON; `None` on a transport error or a body that is not JSON (for polling).
pub async fn get_json(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    client.get(url).send().await.ok()?.json().await.ok()
}

/// GETs `url` until `ok` holds for the body, or panics after `deadline` with the last body.
pub async fn poll_until_json(
    client: &reqwest::Client,
    url: String,
    deadline: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = std::time::Instant::now() + deadline;
    loop {
        let r = client.get(&url).send().await;
        if let Ok(r) = r
            && r.status() == 200
        {
            let b: serde_json::Value = r.json().await.unwrap();
            if ok(&b) {
                return b;
            }
            assert!(std::time::Instant::now() < end, "{url}: {b}");
        }
        assert!(std::time::Instant::now() < end, "{url}: no answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `PUT {api}/v1/accounts/{id}` of the account many daemon tests drive: 1 BTC long
/// BTCUSDT-PERP from 50,000 on 400 USDT (MM 0.4 % of the notional: ratio 0.5 at 50,000; at
/// 49,840 equity 240 and MM 199.36, ratio 0.83 — past a 0.8 warning; at 49,790, 1.048 — past a
/// trigger at 1). Returns the answer's status.
pub async fn put_one_btc_long(client: &reqwest::Client, api: &str, token: &str, id: &str) -> u16 {
    client
        .put(format!("{api}/v1/accounts/{id}"))
        .bearer_auth(token)
        .json(&serde_json::json!({"id": id, "collateral": {"USDT": "400"},
            "positions": [{"instrument": "BTCUSDT-PERP", "quantity": "1", "entry_price": "50000"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `liqwatch journal <args…> <flag> <path>` on the real binary — `flag` is `--config` or
/// `--file` — which must exit 0; its standard output.
pub fn journal_cli(bin: &str, args: &[&str], flag: &str, path: &Path) -> String {
    let out = std::process::Command::new(bin)
        .arg("journal")
        .args(args)
        .arg(flag)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "journal {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `GET url`, which must answer 200 with JSON.
pub async fn get_ok(client: &reqwest::Client, url: String) -> serde_json::Value {
    let r = client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status(), 200, "GET {url}");
    r.json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// One line of a replay recording: a Binance USD-M mark price frame for `symbol` (`BTCUSDT`)
/// received at `ms`, the venue's own JSON in the replay format (`docs/feeds.md#replay`).
pub fn binance_mark_line(symbol: &str, ms: i64, price: &str) -> String {
    let frame = serde_json::json!({
        "stream": format!("{}@markPrice@1s", symbol.to_lowercase()),
        "data": {"e":"markPriceUpdate","E":ms,"s":symbol,"p":price,"i":price,"P":price,"r":"0","T":ms},
    });
    serde_json::json!({"venue":"binance-usdm","received_ms":ms,"frame":frame.to_string()})
        .to_string()
}

/// A daemon config on the shipped presets: one Binance feed at `venue_url` (a [`MockBinance`]),
/// a JSONL sink, the API on `127.0.0.1:0` with its token read from `token_env`. Written to
/// `<dir>/liqwatch.toml`; the journal is `<dir>/journal.sqlite` (create it with
/// [`Daemon::init_journal`]).
pub fn binance_config(dir: &Path, venue_url: &str, token_env: &str) -> PathBuf {
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    let cfg = format!(
        r#"
[engine]
instruments = ["{presets}"]

[[feeds]]
venue = "binance-usdm"
url = "{venue_url}"
backoff_initial = "50ms"
backoff_max = "200ms"

[prices]
composite = "binance-usdm"
stale_after = "1h"

[journal]
path = "journal.sqlite"

[[sinks]]
type = "jsonl"
name = "archive"
path = "events.jsonl"

[api]
bind = "127.0.0.1:0"
token_env = "{token_env}"

[shutdown]
grace = "3s"
"#,
        presets = presets.display()
    );
    let p = dir.join("liqwatch.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}
