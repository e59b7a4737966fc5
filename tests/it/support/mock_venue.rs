//! A reusable loopback mock venue: a real WebSocket server on `127.0.0.1:0` that plays a
//! scripted conversation per connection, answers client messages with canned replies, enforces
//! the venue's heartbeat demands, and injects faults.
//!
//! Use from any test with `use crate::support::mock_venue::{MockConfig, MockVenue, …};`.
//!
//! ```ignore
//! let venue = MockVenue::start(MockConfig {
//!     replies: vec![Reply::new("\"op\":\"ping\"", [BYBIT_PONG])],
//!     require_client_text: Some(("\"op\":\"ping\"".into(), Duration::from_millis(300))),
//!     ..MockConfig::default()
//! }, vec![
//!     vec![Step::AwaitText("subscribe".into()), Step::Send(ACK.into()), Step::Send(SNAPSHOT.into())],
//!     vec![Step::AwaitText("subscribe".into()), Step::Send(ACK.into())], // 2nd connection
//! ]).await;
//! venue.push(FRAME);                          // to every open connection, at any time
//! until(deadline, || venue.connections() == 2).await;
//! ```
//!
//! Connection `n` (0-based) plays `scripts[n]`; connections past the end play nothing (they
//! stay open, answer replies and pushes). After its script a connection stays open until the
//! client closes it or a fault step ends it.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

/// One scripted action of the server on one connection.
#[derive(Clone, Debug)]
pub enum Step {
    /// Wait until the client has sent a text frame containing this (on this connection).
    AwaitText(String),
    /// Send a text frame (any bytes: JSON, garbage, truncated JSON).
    Send(String),
    /// Send a binary frame.
    SendBinary(Vec<u8>),
    /// Send each text `times` times, as fast as the socket takes them (benchmarks).
    Burst(Vec<String>, usize),
    /// Send a protocol ping with this payload.
    Ping(Vec<u8>),
    /// Wait this long (server-side pacing only; tests never sleep to wait for conditions).
    Pause(Duration),
    /// Drop the TCP connection without a close frame (an abrupt disconnect).
    Drop,
    /// Send a close frame with this code and reason, then end the connection.
    Close(u16, String),
    /// Stop reading and writing entirely but keep the socket open: no pongs, nothing (a dead
    /// peer). The connection ends when the client gives up.
    Freeze,
}

/// An automatic answer: whenever the client sends a text containing `when`, send `send`.
/// `{id}` in a reply is replaced by the request's numeric `"id"` (Binance style), when present.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Substring to match in a client text frame.
    pub when: String,
    /// Texts to send back.
    pub send: Vec<String>,
}

impl Reply {
    /// A reply rule.
    pub fn new<const N: usize>(when: &str, send: [&str; N]) -> Reply {
        Reply {
            when: when.to_string(),
            send: send.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Server behaviour common to all connections.
#[derive(Clone, Debug, Default)]
pub struct MockConfig {
    /// Automatic answers to client texts (pings, subscribe acks), first match wins.
    pub replies: Vec<Reply>,
    /// The client must send a text containing `.0` at least every `.1`, else the server drops
    /// the connection (Bybit's application ping, OKX's `ping`).
    pub require_client_text: Option<(String, Duration)>,
    /// The server sends a protocol ping every `.0` and drops the connection when no pong came
    /// for `.1` (Binance's ping/pong rule, scaled down).
    pub server_ping: Option<(Duration, Duration)>,
}

/// What one connection saw.
#[derive(Clone, Debug, Default)]
pub struct ConnLog {
    /// Text frames received from the client, in order.
    pub texts: Vec<String>,
    /// Protocol pongs received.
    pub pongs: usize,
    /// Protocol pings received.
    pub pings: usize,
    /// When it was accepted.
    pub opened: Option<Instant>,
    /// When it ended (server side).
    pub closed: Option<Instant>,
    /// Why the server ended it, if it did.
    pub ended_by_server: Option<String>,
}

struct Shared {
    cfg: MockConfig,
    scripts: Vec<Vec<Step>>,
    conns: Mutex<Vec<ConnLog>>,
    changed: Notify,
    push: broadcast::Sender<String>,
}

/// A running mock venue. Dropping it stops the server and every connection.
pub struct MockVenue {
    /// The bound address.
    pub addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl Drop for MockVenue {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

enum Out {
    Msg(Message),
    Burst(Vec<String>, usize),
}

impl MockVenue {
    /// Starts the server with per-connection scripts.
    pub async fn start(cfg: MockConfig, scripts: Vec<Vec<Step>>) -> MockVenue {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (push, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            cfg,
            scripts,
            conns: Mutex::new(Vec::new()),
            changed: Notify::new(),
            push,
        });
        let cancel = CancellationToken::new();
        let (s, c) = (shared.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = c.cancelled() => break,
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                };
                let _ = stream.set_nodelay(true);
                let (s, c) = (s.clone(), c.child_token());
                tokio::spawn(async move {
                    if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                        serve(ws, s, c).await;
                    }
                });
            }
        });
        MockVenue {
            addr,
            shared,
            cancel,
        }
    }

    /// `ws://127.0.0.1:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Sends a text frame to every open connection.
    pub fn push(&self, text: impl Into<String>) {
        let _ = self.shared.push.send(text.into());
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().len()
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared
            .conns
            .lock()
            .iter()
            .filter(|c| c.closed.is_none())
            .count()
    }

    /// A copy of connection `i`'s log.
    pub fn log(&self, i: usize) -> ConnLog {
        self.shared.conns.lock().get(i).cloned().unwrap_or_default()
    }

    /// Texts received on connection `i`.
    pub fn texts(&self, i: usize) -> Vec<String> {
        self.log(i).texts
    }
}

/// Polls `cond` until it holds or `within` passes; returns whether it held. Never sleeps longer
/// than 5 ms at a time.
pub async fn until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn with_id(template: &str, request: &str) -> String {
    if !template.contains("{id}") {
        return template.to_string();
    }
    let id = serde_json::from_str::<serde_json::Value>(request)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .map(|v| v.to_string())
        .unwrap_or_else(|| "null".to_string());
    template.replace("{id}", &id)
}

async fn serve(ws: WebSocketStream<TcpStream>, shared: Arc<Shared>, cancel: CancellationToken) {
    let idx = {
        let mut conns = shared.conns.lock();
        conns.push(ConnLog {
            opened: Some(Instant::now()),
            ..ConnLog::default()
        });
        conns.len() - 1
    };
    shared.changed.notify_waiters();
    let conn = cancel.child_token();
    let frozen = CancellationToken::new();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(1024);
    let (mut sink, mut stream) = ws.split();
    let last_client_text = Arc::new(Mutex::new(Instant::now()));
    let last_pong = Arc::new(Mutex::new(Instant::now()));
    let end_reason: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));

    // Writer: owns the sink; stops on conn cancel (no close frame = abrupt drop) or freeze.
    let writer = {
        let (conn, frozen) = (conn.clone(), frozen.clone());
        let mut pushes = shared.push.subscribe();
        tokio::spawn(async move {
            loop {
                let out = tokio::select! {
                    _ = conn.cancelled() => break,
                    _ = frozen.cancelled() => { conn.cancelled().await; break; }
                    o = out_rx.recv() => match o { Some(o) => o, None => break },
                    p = pushes.recv() => match p {
                        Ok(t) => Out::Msg(Message::text(t)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    },
                };
                match out {
                    Out::Msg(m) => {
                        let is_close = matches!(m, Message::Close(_));
                        if sink.send(m).await.is_err() {
                            break;
                        }
                        if is_close {
                            // Give the client a moment to read the close frame, then end.
                            let _ =
                                tokio::time::timeout(Duration::from_millis(500), conn.cancelled())
                                    .await;
                            conn.cancel();
                            break;
                        }
                    }
                    Out::Burst(texts, times) => {
                        let msgs: Vec<Message> = texts.into_iter().map(Message::text).collect();
                        'b: for _ in 0..times {
                            for m in &msgs {
                                if sink.feed(m.clone()).await.is_err() {
                                    break 'b;
                                }
                            }
                        }
                        if sink.flush().await.is_err() {
                            break;
                        }
                    }
                }
            }
            drop(sink);
        })
    };

    // Reader: records client frames, answers replies; tungstenite answers pings itself.
    let reader = {
        let (conn, frozen, shared) = (conn.clone(), frozen.clone(), shared.clone());
        let out_tx = out_tx.clone();
        let (lct, lp) = (last_client_text.clone(), last_pong.clone());
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    _ = conn.cancelled() => break,
                    _ = frozen.cancelled() => { conn.cancelled().await; break; }
                    m = stream.next() => m,
                };
                let m = match m {
                    Some(Ok(m)) => m,
                    _ => {
                        conn.cancel();
                        break;
                    }
                };
                match m {
                    Message::Text(t) => {
                        let t = t.as_str().to_string();
                        if let Some((pat, _)) = &shared.cfg.require_client_text
                            && t.contains(pat.as_str())
                        {
                            *lct.lock() = Instant::now();
                        }
                        let replies: Vec<String> = shared
                            .cfg
                            .replies
                            .iter()
                            .find(|r| t.contains(r.when.as_str()))
                            .map(|r| r.send.iter().map(|s| with_id(s, &t)).collect())
                            .unwrap_or_default();
                        shared.conns.lock()[idx].texts.push(t);
                        shared.changed.notify_waiters();
                        for r in replies {
                            let _ = out_tx.send(Out::Msg(Message::text(r))).await;
                        }
                    }
                    Message::Pong(_) => {
                        *lp.lock() = Instant::now();
                        shared.conns.lock()[idx].pongs += 1;
                    }
                    Message::Ping(_) => {
                        shared.conns.lock()[idx].pings += 1;
                    }
                    Message::Close(_) => {
                        conn.cancel();
                        break;
                    }
                    _ => {}
                }
            }
        })
    };

    // Heartbeat demands.
    let enforcer = {
        let (conn, frozen, shared) = (conn.clone(), frozen.clone(), shared.clone());
        let out_tx = out_tx.clone();
        let (lct, lp, why) = (
            last_client_text.clone(),
            last_pong.clone(),
            end_reason.clone(),
        );
        tokio::spawn(async move {
            let mut last_ping_sent = Instant::now();
            loop {
                tokio::select! {
                    _ = conn.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
                if frozen.is_cancelled() {
                    continue;
                }
                let now = Instant::now();
                if let Some((_, within)) = &shared.cfg.require_client_text
                    && now.duration_since(*lct.lock()) > *within
                {
                    *why.lock() = Some("client did not ping".into());
                    conn.cancel();
                    break;
                }
                if let Some((every, within)) = shared.cfg.server_ping {
                    if now.duration_since(last_ping_sent) >= every {
                        last_ping_sent = now;
                        let _ = out_tx
                            .send(Out::Msg(Message::Ping(b"hb".to_vec().into())))
                            .await;
                    }
                    if now.duration_since(*lp.lock()) > within {
                        *why.lock() = Some("no pong".into());
                        conn.cancel();
                        break;
                    }
                }
            }
        })
    };

    // Script.
    let script = shared.scripts.get(idx).cloned().unwrap_or_default();
    'script: for step in script {
        if conn.is_cancelled() {
            break;
        }
        match step {
            Step::AwaitText(pat) => loop {
                let notified = shared.changed.notified();
                if shared.conns.lock()[idx]
                    .texts
                    .iter()
                    .any(|t| t.contains(pat.as_str()))
                {
                    break;
                }
                tokio::select! {
                    _ = conn.cancelled() => break 'script,
                    _ = notified => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            },
            Step::Send(t) => {
                let _ = out_tx.send(Out::Msg(Message::text(t))).await;
            }
            Step::SendBinary(b) => {
                let _ = out_tx.send(Out::Msg(Message::Binary(b.into()))).await;
            }
            Step::Burst(t, n) => {
                let _ = out_tx.send(Out::Burst(t, n)).await;
            }
            Step::Ping(p) => {
                let _ = out_tx.send(Out::Msg(Message::Ping(p.into()))).await;
            }
            Step::Pause(d) => {
                tokio::select! {
                    _ = conn.cancelled() => break 'script,
                    _ = tokio::time::sleep(d) => {}
                }
            }
            Step::Drop => {
                *end_reason.lock() = Some("scripted drop".into());
                conn.cancel();
                break;
            }
            Step::Close(code, reason) => {
                *end_reason.lock() = Some(format!("scripted close {code}"));
                let _ = out_tx
                    .send(Out::Msg(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    }))))
                    .await;
                break;
            }
            Step::Freeze => {
                *end_reason.lock() = Some("frozen".into());
                frozen.cancel();
                break;
            }
        }
    }
    drop(out_tx);
    conn.cancelled().await;
    let _ = writer.await;
    let _ = reader.await;
    enforcer.abort();
    {
        let mut conns = shared.conns.lock();
        conns[idx].closed = Some(Instant::now());
        conns[idx].ended_by_server = end_reason.lock().clone();
    }
    shared.changed.notify_waiters();
}
