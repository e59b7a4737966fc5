//! The one loopback mock-venue framework: a real WebSocket server on `127.0.0.1:0` that plays a
//! scripted conversation per connection, takes further steps from the test at any time, answers
//! client messages (canned [`Reply`]s or a per-venue [`Protocol`] hook), enforces the venue's
//! keepalive demands ([`Idle`], server pings, the hook's timer) and injects faults (drops, close
//! codes, stalls, garbage). Every connection keeps a [`ConnLog`]: what the client sent, pings and
//! pongs, when it opened and closed, and why the server ended it.
//!
//! Binance and Bybit tests script each connection with replies; OKX, Deribit and Hyperliquid
//! speak their protocol through a hook ([`MockConfig::okx`], [`MockConfig::deribit`],
//! [`MockConfig::hyperliquid`]):
//!
//! - **OKX**: acks each subscribe argument, rejects [unknown](MockConfig::unknown) instIds with
//!   60018, refuses [refused](MockConfig::refuse) ones with 60014, pushes the
//!   [set prices](MockVenue::set_price) of subscribed instIds every 50 ms, answers the text `ping` with `pong`, closes with 4004 a client silent for the idle cut.
//! - **Deribit**: answers `public/set_heartbeat`, acks `public/subscribe` listing only known
//!   channels (unknown ones silently dropped, as Deribit does), sends a `test_request` every
//!   300 ms once the heartbeat is set and closes with 4000 `heartbeat close` when the previous
//!   one was not answered with `public/test`.
//! - **Hyperliquid**: greets with the plain text `Websocket connection established.`, acks known
//!   coins, **drops the socket without a close frame on an unknown coin**, answers
//!   `{"method":"ping"}` with `{"channel":"pong"}` and drops a client silent for the idle cut.
//!
//! ```ignore
//! let venue = MockVenue::start(MockConfig {
//!     replies: vec![Reply::new("\"op\":\"ping\"", [BYBIT_PONG])],
//!     idle: Some(Idle::text("\"op\":\"ping\"", Duration::from_millis(300))),
//!     ..MockConfig::default()
//! }, vec![
//!     vec![Step::AwaitText("subscribe".into()), Step::Send(ACK.into()), Step::Send(SNAPSHOT.into())],
//!     vec![Step::AwaitText("subscribe".into()), Step::Send(ACK.into())], // 2nd connection
//! ]).await;
//! venue.push(FRAME);                          // to every open connection, at any time
//! venue.send(Step::Drop).await;               // to the newest connection
//! until(deadline, || venue.connections() == 2).await;
//!
//! let okx = MockVenue::start(MockConfig::okx().unknown("NOPE-USDT-SWAP"), vec![]).await;
//! okx.send(Step::Send(okx_price("BTC-USDT-SWAP", "84612.3"))).await;
//! ```
//!
//! Connection `n` (0-based) plays `scripts[n]`, then whatever [`MockVenue::send`] gives it while
//! it is the newest connection; connections past the end of `scripts` play only those. A
//! connection stays open until the client closes it or a fault ends it.
//!
//! Why it is long (about 970 lines): it is the one mock venue for every venue the tests speak —
//! the server, its fault injection, and the OKX, Deribit and Hyperliquid protocol hooks — kept
//! together so that a new venue's tests add a hook here rather than a second server.

use std::collections::HashSet;
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

use super::mock_venue_subs::{PRICE_EVERY, VenueSubs};

/// One action of the server on one connection, from its script or from [`MockVenue::send`].
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
    /// Drop the TCP connection without a close frame (an abrupt disconnect), after everything
    /// queued before it was sent.
    Drop,
    /// Send a close frame with this code and reason, then end the connection.
    Close(u16, String),
    /// Stop reading and writing entirely but keep the socket open: no pongs, nothing (a dead
    /// peer, a stall). The socket stays open until the venue is dropped.
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

/// What a [`Protocol`] hook does in answer to an event on its connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Act {
    /// Send a text frame.
    Send(String),
    /// Send a close frame with this code and reason, then end the connection.
    Close(u16, String),
    /// Drop the socket without a close frame, after everything queued before it; the text is
    /// the reason kept in [`ConnLog::ended_by_server`]. Nothing the client sends after it is
    /// read.
    Drop(String),
}

/// A venue's protocol on one connection: its own state, and what it does when the connection
/// opens, when the client sends a text, and on its timer. Built per connection by
/// [`MockConfig::protocol`].
pub trait Protocol: Send {
    /// On accept, before any scripted step.
    fn on_open(&mut self) -> Vec<Act> {
        Vec::new()
    }
    /// On each client text frame (after [`MockConfig::replies`] were answered).
    fn on_text(&mut self, text: &str) -> Vec<Act>;
    /// How often [`Protocol::on_timer`] runs, if at all.
    fn timer(&self) -> Option<Duration> {
        None
    }
    /// On each timer tick (not while frozen).
    fn on_timer(&mut self) -> Vec<Act> {
        Vec::new()
    }
}

/// Builds a connection's [`Protocol`] from the venue's config.
pub type ProtocolFactory = fn(&MockConfig) -> Box<dyn Protocol>;

/// An idle rule: the client must send something at least every `within`, else the server ends
/// the connection (Bybit's application ping, OKX's and Hyperliquid's idle cut).
#[derive(Clone, Debug)]
pub struct Idle {
    /// The longest allowed silence.
    pub within: Duration,
    /// Only client texts containing this count; `None`: any frame from the client counts.
    pub counts: Option<String>,
    /// End with this close code and reason; `None`: drop without a close frame.
    pub close: Option<(u16, String)>,
}

impl Idle {
    /// Texts containing `pattern` must come every `within`; the connection is dropped otherwise.
    pub fn text(pattern: &str, within: Duration) -> Idle {
        Idle {
            within,
            counts: Some(pattern.to_string()),
            close: None,
        }
    }

    /// Any frame must come every `within`; the connection is dropped otherwise.
    pub fn any(within: Duration) -> Idle {
        Idle {
            within,
            counts: None,
            close: None,
        }
    }

    /// Close with this code and reason instead of dropping.
    pub fn close(mut self, code: u16, reason: &str) -> Idle {
        self.close = Some((code, reason.to_string()));
        self
    }
}

/// Server behaviour common to all connections.
#[derive(Clone, Debug, Default)]
pub struct MockConfig {
    /// Automatic answers to client texts (pings, subscribe acks), first match wins.
    pub replies: Vec<Reply>,
    /// The venue's protocol hook, built per connection.
    pub protocol: Option<ProtocolFactory>,
    /// The client must keep talking (see [`Idle`]).
    pub idle: Option<Idle>,
    /// The server sends a protocol ping every `.0` and drops the connection when no pong came
    /// for `.1` (Binance's ping/pong rule, scaled down).
    pub server_ping: Option<(Duration, Duration)>,
    /// Symbols the venue does not know (OKX instId, Deribit instrument, Hyperliquid coin); the
    /// protocol hook rejects them the venue's way.
    pub unknown: HashSet<String>,
    /// Refusals and subscribed prices, shared by every connection (`mock_venue_subs`).
    pub subs: VenueSubs,
}

impl MockConfig {
    /// OKX v5 public: per-argument acks, 60018 rejections, text ping/pong, 4004 after a 1 s
    /// idle cut.
    pub fn okx() -> MockConfig {
        MockConfig {
            protocol: Some(|cfg| {
                Box::new(Okx {
                    unknown: cfg.unknown.clone(),
                    subs: cfg.subs.clone(),
                    subscribed: Vec::new(),
                })
            }),
            idle: Some(Idle::any(Duration::from_secs(1)).close(4004, "No data received in 30s.")),
            ..MockConfig::default()
        }
    }

    /// Deribit JSON-RPC: heartbeat with a `test_request` every 300 ms, subset acks.
    pub fn deribit() -> MockConfig {
        MockConfig {
            protocol: Some(|cfg| {
                Box::new(Deribit {
                    unknown: cfg.unknown.clone(),
                    heartbeat_on: false,
                    pending_test: false,
                })
            }),
            ..MockConfig::default()
        }
    }

    /// Hyperliquid: welcome text, acks, a drop on an unknown coin, ping/pong, a drop after a 1 s
    /// idle cut.
    pub fn hyperliquid() -> MockConfig {
        MockConfig {
            protocol: Some(|cfg| {
                Box::new(Hyperliquid {
                    unknown: cfg.unknown.clone(),
                })
            }),
            idle: Some(Idle::any(Duration::from_secs(1))),
            ..MockConfig::default()
        }
    }

    /// Marks a symbol unknown to the venue.
    pub fn unknown(mut self, symbol: &str) -> MockConfig {
        self.unknown.insert(symbol.to_string());
        self
    }

    /// Sets the idle rule's allowed silence.
    pub fn idle_cut(mut self, within: Duration) -> MockConfig {
        if let Some(idle) = &mut self.idle {
            idle.within = within;
        }
        self
    }
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
    /// Each connection's step inbox, by index; the last one is the newest connection's.
    inboxes: Mutex<Vec<mpsc::UnboundedSender<Step>>>,
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
    /// Send a close frame, then end; the text is the reason to log.
    Close(u16, String, String),
    /// End without a close frame; the text is the reason to log.
    End(String),
    Freeze,
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
            inboxes: Mutex::new(Vec::new()),
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

    /// Gives a step to the newest connection, after its script. Waits up to 5 s for a live one:
    /// a connection that ended (or froze) takes no more steps, so this goes to its successor.
    pub async fn send(&self, step: Step) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let newest = self.shared.inboxes.lock().last().cloned();
            if let Some(inbox) = newest
                && inbox.send(step.clone()).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no live connection for {step:?}; connections: {:#?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The venue's config (its [`VenueSubs`] are shared with the running connections).
    pub fn config(&self) -> &MockConfig {
        &self.shared.cfg
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

    /// A copy of every connection's log, in accept order.
    pub fn logs(&self) -> Vec<ConnLog> {
        self.shared.conns.lock().clone()
    }

    /// A copy of connection `i`'s log.
    pub fn log(&self, i: usize) -> ConnLog {
        self.shared.conns.lock().get(i).cloned().unwrap_or_default()
    }

    /// Texts received on connection `i`.
    pub fn texts(&self, i: usize) -> Vec<String> {
        self.log(i).texts
    }

    /// Polls the connection logs until `pred` holds, panicking with the logs after `within`.
    pub async fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&[ConnLog]) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if pred(&self.shared.conns.lock()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; connections: {:#?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

fn close_frame(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

impl From<Act> for Out {
    fn from(act: Act) -> Out {
        match act {
            Act::Send(t) => Out::Msg(Message::text(t)),
            Act::Close(code, reason) => {
                let why = format!("close {code} {reason}");
                Out::Close(code, reason, why)
            }
            Act::Drop(why) => Out::End(why),
        }
    }
}

/// Queues a hook's acts in order; returns whether one of them drops the connection.
async fn queue(out: &mpsc::Sender<Out>, acts: Vec<Act>) -> bool {
    let mut drops = false;
    for act in acts {
        drops |= matches!(act, Act::Drop(_));
        let _ = out.send(act.into()).await;
    }
    drops
}

async fn serve(ws: WebSocketStream<TcpStream>, shared: Arc<Shared>, cancel: CancellationToken) {
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<Step>();
    let idx = {
        let mut conns = shared.conns.lock();
        conns.push(ConnLog {
            opened: Some(Instant::now()),
            ..ConnLog::default()
        });
        shared.inboxes.lock().push(inbox_tx);
        conns.len() - 1
    };
    shared.changed.notify_waiters();
    let conn = cancel.child_token();
    let frozen = CancellationToken::new();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(1024);
    let (mut sink, mut stream) = ws.split();
    let last_client = Arc::new(Mutex::new(Instant::now()));
    let last_pong = Arc::new(Mutex::new(Instant::now()));
    let end_reason: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let set_reason = {
        let end_reason = end_reason.clone();
        move |why: String| {
            end_reason.lock().get_or_insert(why);
        }
    };
    let protocol = shared
        .cfg
        .protocol
        .map(|make| Arc::new(Mutex::new(make(&shared.cfg))));
    if let Some(p) = &protocol {
        let acts = p.lock().on_open();
        queue(&out_tx, acts).await;
    }

    // Writer: owns the sink and sends everything queued in order; ends the connection on a
    // close, a drop or a freeze, which are queued like any frame so that what came before them
    // goes out first.
    let writer = {
        let (conn, frozen, set_reason) = (conn.clone(), frozen.clone(), set_reason.clone());
        let mut pushes = shared.push.subscribe();
        tokio::spawn(async move {
            loop {
                let out = tokio::select! {
                    _ = conn.cancelled() => break,
                    o = out_rx.recv() => match o { Some(o) => o, None => break },
                    p = pushes.recv() => match p {
                        Ok(t) => Out::Msg(Message::text(t)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    },
                };
                match out {
                    Out::Msg(m) => {
                        if sink.send(m).await.is_err() {
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
                    Out::Close(code, reason, why) => {
                        set_reason(why);
                        if sink.send(close_frame(code, reason)).await.is_ok() {
                            // Give the client a moment to read the close frame, then end.
                            let _ =
                                tokio::time::timeout(Duration::from_millis(500), conn.cancelled())
                                    .await;
                        }
                        conn.cancel();
                        break;
                    }
                    Out::End(why) => {
                        set_reason(why);
                        conn.cancel();
                        break;
                    }
                    Out::Freeze => {
                        set_reason("frozen".into());
                        frozen.cancel();
                        conn.cancelled().await;
                        break;
                    }
                }
            }
            drop(sink);
        })
    };

    // Reader: records client frames, answers replies and the protocol hook; tungstenite
    // answers pings itself.
    let reader = {
        let (conn, frozen, shared) = (conn.clone(), frozen.clone(), shared.clone());
        let (out_tx, protocol) = (out_tx.clone(), protocol.clone());
        let (lc, lp) = (last_client.clone(), last_pong.clone());
        tokio::spawn(async move {
            let counts = shared.cfg.idle.as_ref().map(|i| i.counts.clone());
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
                // Any frame but a close resets an idle rule that counts every frame.
                if matches!(counts, Some(None)) && !matches!(m, Message::Close(_)) {
                    *lc.lock() = Instant::now();
                }
                match m {
                    Message::Text(t) => {
                        let t = t.as_str().to_string();
                        if let Some(Some(pat)) = &counts
                            && t.contains(pat.as_str())
                        {
                            *lc.lock() = Instant::now();
                        }
                        let replies: Vec<String> = shared
                            .cfg
                            .replies
                            .iter()
                            .find(|r| t.contains(r.when.as_str()))
                            .map(|r| r.send.iter().map(|s| with_id(s, &t)).collect())
                            .unwrap_or_default();
                        let acts = protocol
                            .as_ref()
                            .map(|p| p.lock().on_text(&t))
                            .unwrap_or_default();
                        shared.conns.lock()[idx].texts.push(t);
                        shared.changed.notify_waiters();
                        for r in replies {
                            let _ = out_tx.send(Out::Msg(Message::text(r))).await;
                        }
                        if queue(&out_tx, acts).await {
                            conn.cancelled().await;
                            break;
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

    // Keepalive demands and the protocol's timer.
    let enforcer = {
        let (conn, frozen, shared) = (conn.clone(), frozen.clone(), shared.clone());
        let (out_tx, protocol) = (out_tx.clone(), protocol.clone());
        let (lc, lp, set_reason) = (last_client.clone(), last_pong.clone(), set_reason.clone());
        tokio::spawn(async move {
            let timer = protocol.as_ref().and_then(|p| p.lock().timer());
            let mut last_ping_sent = Instant::now();
            let mut last_tick = Instant::now();
            loop {
                tokio::select! {
                    _ = conn.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
                if frozen.is_cancelled() {
                    continue;
                }
                let now = Instant::now();
                if let Some(idle) = &shared.cfg.idle
                    && now.duration_since(*lc.lock()) > idle.within
                {
                    match &idle.close {
                        Some((code, reason)) => {
                            let why = format!("client did not ping: close {code}");
                            let _ = out_tx.send(Out::Close(*code, reason.clone(), why)).await;
                        }
                        None => {
                            set_reason("client did not ping".into());
                            conn.cancel();
                        }
                    }
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
                        set_reason("no pong".into());
                        conn.cancel();
                        break;
                    }
                }
                if let (Some(every), Some(p)) = (timer, &protocol)
                    && now.duration_since(last_tick) >= every
                {
                    last_tick = now;
                    let acts = p.lock().on_timer();
                    let ends = acts.iter().any(|a| !matches!(a, Act::Send(_)));
                    queue(&out_tx, acts).await;
                    if ends {
                        break;
                    }
                }
            }
        })
    };

    // Script, then steps sent by the test, until the connection ends or stops taking steps.
    let mut script = shared
        .scripts
        .get(idx)
        .cloned()
        .unwrap_or_default()
        .into_iter();
    'steps: loop {
        let step = match script.next() {
            Some(step) => step,
            None => tokio::select! {
                _ = conn.cancelled() => break,
                s = inbox.recv() => match s { Some(s) => s, None => break },
            },
        };
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
                    _ = conn.cancelled() => break 'steps,
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
                    _ = conn.cancelled() => break 'steps,
                    _ = tokio::time::sleep(d) => {}
                }
            }
            Step::Drop => {
                let _ = out_tx.send(Out::End("scripted drop".into())).await;
                break;
            }
            Step::Close(code, reason) => {
                let why = format!("scripted close {code} {reason}");
                let _ = out_tx.send(Out::Close(code, reason, why)).await;
                break;
            }
            Step::Freeze => {
                let _ = out_tx.send(Out::Freeze).await;
                break;
            }
        }
    }
    // Steps sent from now on go to a newer connection.
    drop(inbox);
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

// ---------------------------------------------------------------------------------------------
// Venue protocols
// ---------------------------------------------------------------------------------------------

struct Okx {
    unknown: HashSet<String>,
    subs: VenueSubs,
    subscribed: Vec<String>,
}

impl Protocol for Okx {
    fn on_text(&mut self, text: &str) -> Vec<Act> {
        if text == "ping" {
            return vec![Act::Send("pong".into())];
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return vec![Act::Send(
                r#"{"event":"error","code":"60012","msg":"Invalid request","connId":"mock"}"#
                    .into(),
            )];
        };
        let id = v["id"].clone();
        let args = v["args"].as_array().cloned().unwrap_or_default();
        args.into_iter()
            .map(|arg| {
                let inst = arg["instId"].as_str().unwrap_or_default();
                let reply = if self.subs.take_refusal(&[inst.to_string()]) {
                    serde_json::json!({"id": id, "event":"error","code":"60014","msg":"Requests too frequent.","connId":"mock"})
                } else if self.unknown.contains(inst) {
                    serde_json::json!({"id": id, "event":"error","code":"60018","msg": format!("Subscribe failed, wrong URL or channel:{},instId:{inst} doesn't exist. Please use the correct URL, channel and parameters referring to API document.", arg["channel"].as_str().unwrap_or_default()),"connId":"mock"})
                } else {
                    self.subscribed.push(inst.to_string());
                    serde_json::json!({"id": id, "event":"subscribe","arg": arg,"connId":"mock"})
                };
                Act::Send(reply.to_string())
            })
            .collect()
    }

    fn timer(&self) -> Option<Duration> {
        Some(PRICE_EVERY)
    }

    fn on_timer(&mut self) -> Vec<Act> {
        self.subscribed
            .iter()
            .filter_map(|s| self.subs.price(s).map(|p| Act::Send(okx_price(s, &p))))
            .collect()
    }
}

struct Deribit {
    unknown: HashSet<String>,
    /// `public/set_heartbeat` received.
    heartbeat_on: bool,
    /// A `test_request` is waiting for its `public/test`.
    pending_test: bool,
}

impl Protocol for Deribit {
    fn on_text(&mut self, text: &str) -> Vec<Act> {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return vec![Act::Send(r#"{"jsonrpc":"2.0","error":{"code":11050,"message":"bad_request","data":"invalid json"},"testnet":false}"#.into())];
        };
        let id = v["id"].clone();
        let reply = match v["method"].as_str().unwrap_or_default() {
            "public/set_heartbeat" => {
                self.heartbeat_on = true;
                serde_json::json!({"jsonrpc":"2.0","id":id,"result":"ok"})
            }
            "public/subscribe" => {
                let accepted: Vec<String> = v["params"]["channels"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .filter(|c| {
                        !self.unknown.iter().any(|u| {
                            c == &format!("ticker.{u}.100ms")
                                || c == &format!("deribit_price_index.{u}")
                        })
                    })
                    .collect();
                serde_json::json!({"jsonrpc":"2.0","id":id,"result":accepted,"usIn":1,"usOut":2,"usDiff":1,"testnet":false})
            }
            "public/test" => {
                self.pending_test = false;
                serde_json::json!({"jsonrpc":"2.0","id":id,"result":{"version":"1.2.26"}})
            }
            other => {
                serde_json::json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":format!("Method not found {other}")}})
            }
        };
        vec![Act::Send(reply.to_string())]
    }

    fn timer(&self) -> Option<Duration> {
        Some(Duration::from_millis(300))
    }

    fn on_timer(&mut self) -> Vec<Act> {
        if !self.heartbeat_on {
            return Vec::new();
        }
        if self.pending_test {
            return vec![Act::Close(4000, "heartbeat close".into())];
        }
        self.pending_test = true;
        vec![Act::Send(
            r#"{"params":{"type":"test_request"},"method":"heartbeat","jsonrpc":"2.0"}"#.into(),
        )]
    }
}

struct Hyperliquid {
    unknown: HashSet<String>,
}

impl Protocol for Hyperliquid {
    fn on_open(&mut self) -> Vec<Act> {
        vec![Act::Send("Websocket connection established.".into())]
    }

    fn on_text(&mut self, text: &str) -> Vec<Act> {
        let error = || {
            Act::Send(
                serde_json::json!({"channel":"error","data":format!("Error parsing JSON into valid websocket request: {text}")})
                    .to_string(),
            )
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return vec![error()];
        };
        match v["method"].as_str().unwrap_or_default() {
            "ping" => vec![Act::Send(r#"{"channel":"pong"}"#.into())],
            "subscribe" => {
                let sub = v["subscription"].clone();
                if let Some(coin) = sub["coin"].as_str()
                    && self.unknown.contains(coin)
                {
                    // The real venue closes with 1006 (no close frame).
                    return vec![Act::Drop(format!("unknown coin {coin}: dropped"))];
                }
                vec![Act::Send(
                    serde_json::json!({"channel":"subscriptionResponse","data":{"method":"subscribe","subscription":sub}})
                        .to_string(),
                )]
            }
            _ => vec![error()],
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// An OKX frame: `index-tickers` for a spot pair (`BTC-USDT`), `mark-price` otherwise.
pub fn okx_price(symbol: &str, price: &str) -> String {
    let ts = now_ms();
    if symbol.split('-').count() == 2 {
        format!(
            r#"{{"arg":{{"channel":"index-tickers","instId":"{symbol}"}},"data":[{{"instId":"{symbol}","idxPx":"{price}","open24h":"1","high24h":"1","low24h":"1","sodUtc0":"1","sodUtc8":"1","ts":"{ts}"}}]}}"#
        )
    } else {
        format!(
            r#"{{"arg":{{"channel":"mark-price","instId":"{symbol}"}},"data":[{{"instType":"SWAP","instId":"{symbol}","markPx":"{price}","ts":"{ts}"}}]}}"#
        )
    }
}

/// A Deribit frame: `deribit_price_index` for an index name (`btc_usd`), `ticker` otherwise;
/// `price` is raw JSON number text.
pub fn deribit_price(symbol: &str, price: &str) -> String {
    let ts = now_ms();
    if symbol.contains('_') && symbol.chars().all(|c| !c.is_ascii_uppercase()) {
        format!(
            r#"{{"jsonrpc":"2.0","method":"subscription","params":{{"channel":"deribit_price_index.{symbol}","data":{{"timestamp":{ts},"price":{price},"index_name":"{symbol}"}}}}}}"#
        )
    } else {
        format!(
            r#"{{"jsonrpc":"2.0","method":"subscription","params":{{"channel":"ticker.{symbol}.100ms","data":{{"timestamp":{ts},"state":"open","index_price":{price},"instrument_name":"{symbol}","mark_price":{price},"current_funding":1.423e-4}}}}}}"#
        )
    }
}

/// A Hyperliquid `activeAssetCtx` frame (mark, oracle and mid all at `price`).
pub fn hyperliquid_price(symbol: &str, price: &str) -> String {
    format!(
        r#"{{"channel":"activeAssetCtx","data":{{"coin":"{symbol}","ctx":{{"funding":"0.0000125","openInterest":"1","oraclePx":"{price}","markPx":"{price}","midPx":"{price}"}}}}}}"#
    )
}
