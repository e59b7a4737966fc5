//! Loopback mock venues for OKX, Deribit and Hyperliquid that speak the real protocol, including
//! each venue's keepalive demand, and take scripted faults from the test.
//!
//! - **OKX**: acks each subscribe argument, rejects configured instIds with 60018, answers the
//!   text `ping` with `pong`, and closes with 4004 a client that sent nothing for `idle_cut`.
//! - **Deribit**: answers `public/set_heartbeat`, acks `public/subscribe` listing only known
//!   channels (unknown ones silently dropped, as Deribit does), sends a `test_request` every
//!   `test_every` and closes with 4000 `heartbeat close` when the previous one was not answered
//!   with `public/test`.
//! - **Hyperliquid**: greets with the plain text `Websocket connection established.`, acks known
//!   coins, **drops the socket without a close frame on an unknown coin**, answers
//!   `{"method":"ping"}` with `{"channel":"pong"}` and drops a client silent for `idle_cut`.
//!
//! Commands ([`Cmd`]) go to the newest connection. Everything the server saw is kept in an event
//! log that tests poll with a deadline ([`ProtocolVenue::wait_for`]).
//!
//! Binance and Bybit, whose tests script each connection's conversation instead, use
//! [`super::mock_venue`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

/// Which protocol the mock speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// OKX v5 public.
    Okx,
    /// Deribit JSON-RPC.
    Deribit,
    /// Hyperliquid.
    Hyperliquid,
}

/// Keepalive demands and rejections of a mock venue.
#[derive(Clone, Debug)]
pub struct ProtocolConfig {
    /// The protocol.
    pub proto: Proto,
    /// OKX/Hyperliquid: close a client that sent nothing for this long.
    pub idle_cut: Duration,
    /// Deribit: send a `test_request` this often.
    pub test_every: Duration,
    /// Symbols the venue does not know (OKX instId, Deribit instrument, Hyperliquid coin).
    pub unknown: HashSet<String>,
}

impl ProtocolConfig {
    /// Defaults for a protocol: 1 s idle cut, 300 ms test requests, nothing unknown.
    pub fn new(proto: Proto) -> Self {
        Self {
            proto,
            idle_cut: Duration::from_secs(1),
            test_every: Duration::from_millis(300),
            unknown: HashSet::new(),
        }
    }

    /// Marks a symbol unknown to the venue.
    pub fn unknown(mut self, symbol: &str) -> Self {
        self.unknown.insert(symbol.to_string());
        self
    }

    /// Sets the idle cut.
    pub fn idle_cut(mut self, d: Duration) -> Self {
        self.idle_cut = d;
        self
    }
}

/// A scripted action on the newest connection.
#[derive(Clone, Debug)]
pub enum Cmd {
    /// Send a price frame in the venue's format (`price` is written as given: string for OKX and
    /// Hyperliquid, raw JSON number text for Deribit).
    Price {
        /// Venue symbol.
        symbol: String,
        /// Price text.
        price: String,
    },
    /// Send this text frame verbatim (garbage, truncated JSON, notices).
    Raw(String),
    /// Drop the TCP connection without a close frame.
    Drop,
    /// Send a close frame with this code and reason, then end.
    Close(u16, String),
    /// Stop reading and writing but keep the socket open.
    Stall,
}

/// Something the server saw or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Connection `n` (1-based) opened.
    Connected(usize),
    /// Connection `n` received this text.
    Received(usize, String),
    /// Connection `n` ended, and why.
    Closed(usize, String),
}

/// A running mock venue on 127.0.0.1.
pub struct ProtocolVenue {
    /// `ws://127.0.0.1:port`.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    events: Arc<Mutex<Vec<Event>>>,
    current: Arc<Mutex<Option<mpsc::Sender<Cmd>>>>,
    cancel: CancellationToken,
}

impl Drop for ProtocolVenue {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl ProtocolVenue {
    /// Starts a mock venue.
    pub async fn start(cfg: ProtocolConfig) -> ProtocolVenue {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let current = Arc::new(Mutex::new(None));
        let cancel = CancellationToken::new();
        let cfg = Arc::new(cfg);
        {
            let (events, current, cancel) = (events.clone(), current.clone(), cancel.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                loop {
                    let accepted = tokio::select! {
                        () = cancel.cancelled() => break,
                        a = listener.accept() => a,
                    };
                    let Ok((tcp, _)) = accepted else { continue };
                    n += 1;
                    let (tx, rx) = mpsc::channel(64);
                    *current.lock().unwrap() = Some(tx);
                    let conn = Conn {
                        n,
                        cfg: cfg.clone(),
                        events: events.clone(),
                        cancel: cancel.child_token(),
                        subscribed: HashSet::new(),
                        heartbeat_on: false,
                        pending_test: false,
                    };
                    tokio::spawn(conn.run(tcp, rx));
                }
            });
        }
        ProtocolVenue {
            url: format!("ws://{addr}"),
            addr,
            events,
            current,
            cancel,
        }
    }

    /// Sends a command to the newest connection (waits up to 5 s for one to exist).
    pub async fn send(&self, cmd: Cmd) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let tx = self.current.lock().unwrap().clone();
            if let Some(tx) = tx
                && tx.send(cmd.clone()).await.is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no live connection for {cmd:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A copy of the event log.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Number of connections accepted so far.
    pub fn connections(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| matches!(e, Event::Connected(_)))
            .count()
    }

    /// Texts received on connection `n`.
    pub fn received(&self, n: usize) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Received(c, t) if c == n => Some(t),
                _ => None,
            })
            .collect()
    }

    /// Polls the event log until `pred` holds, panicking with the log after `within`.
    pub async fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&[Event]) -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if pred(&self.events()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; events: {:#?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

struct Conn {
    n: usize,
    cfg: Arc<ProtocolConfig>,
    events: Arc<Mutex<Vec<Event>>>,
    cancel: CancellationToken,
    subscribed: HashSet<String>,
    /// Deribit: `public/set_heartbeat` received.
    heartbeat_on: bool,
    /// Deribit: a `test_request` is waiting for its `public/test`.
    pending_test: bool,
}

enum Outcome {
    Continue,
    End(String),
}

impl Conn {
    fn log(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }

    async fn run(mut self, tcp: TcpStream, mut rx: mpsc::Receiver<Cmd>) {
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        self.log(Event::Connected(self.n));
        if self.cfg.proto == Proto::Hyperliquid {
            let _ = ws
                .send(Message::text("Websocket connection established."))
                .await;
        }
        let mut last_client = tokio::time::Instant::now();
        let mut commands_open = true;
        let mut test_timer = tokio::time::interval(self.cfg.test_every);
        test_timer.tick().await;
        let why = loop {
            let idle_deadline = last_client + self.cfg.idle_cut;
            tokio::select! {
                () = self.cancel.cancelled() => break "server stopped".to_string(),
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        last_client = tokio::time::Instant::now();
                        let text = t.to_string();
                        self.log(Event::Received(self.n, text.clone()));
                        match self.on_client(&mut ws, &text).await {
                            Outcome::Continue => {}
                            Outcome::End(why) => break why,
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break "client closed".to_string(),
                    Some(Ok(_)) => last_client = tokio::time::Instant::now(),
                    Some(Err(e)) => break format!("read error: {e}"),
                },
                cmd = rx.recv(), if commands_open => match cmd {
                    Some(cmd) => match self.on_cmd(&mut ws, cmd).await {
                        Outcome::Continue => {}
                        Outcome::End(why) => break why,
                    },
                    // A newer connection took over the commands; this one lives on.
                    None => commands_open = false,
                },
                () = tokio::time::sleep_until(idle_deadline), if self.cfg.proto != Proto::Deribit => {
                    match self.cfg.proto {
                        Proto::Okx => {
                            let _ = ws.send(close(4004, "No data received in 30s.")).await;
                            break "idle cut 4004".to_string();
                        }
                        _ => break "idle cut (dropped)".to_string(),
                    }
                }
                _ = test_timer.tick(), if self.cfg.proto == Proto::Deribit && self.heartbeat_on => {
                    if self.pending_test {
                        let _ = ws.send(close(4000, "heartbeat close")).await;
                        break "heartbeat close 4000".to_string();
                    }
                    self.pending_test = true;
                    let _ = ws.send(Message::text(r#"{"params":{"type":"test_request"},"method":"heartbeat","jsonrpc":"2.0"}"#)).await;
                }
            }
        };
        self.log(Event::Closed(self.n, why));
    }

    async fn on_cmd(&mut self, ws: &mut WebSocketStream<TcpStream>, cmd: Cmd) -> Outcome {
        match cmd {
            Cmd::Price { symbol, price } => {
                let text = price_frame(self.cfg.proto, &symbol, &price);
                send(ws, text).await
            }
            Cmd::Raw(text) => send(ws, text).await,
            Cmd::Drop => Outcome::End("dropped".into()),
            Cmd::Close(code, reason) => {
                let _ = ws.send(close(code, &reason)).await;
                Outcome::End(format!("closed {code}"))
            }
            Cmd::Stall => {
                self.cancel.cancelled().await;
                Outcome::End("stalled".into())
            }
        }
    }

    async fn on_client(&mut self, ws: &mut WebSocketStream<TcpStream>, text: &str) -> Outcome {
        match self.cfg.proto {
            Proto::Okx => {
                if text == "ping" {
                    return send(ws, "pong".into()).await;
                }
                let v: serde_json::Value = match serde_json::from_str(text) {
                    Ok(v) => v,
                    Err(_) => {
                        return send(ws, r#"{"event":"error","code":"60012","msg":"Invalid request","connId":"mock"}"#.into()).await;
                    }
                };
                let id = v["id"].clone();
                for arg in v["args"].as_array().cloned().unwrap_or_default() {
                    let inst = arg["instId"].as_str().unwrap_or_default().to_string();
                    let reply = if self.cfg.unknown.contains(&inst) {
                        serde_json::json!({"id": id, "event":"error","code":"60018","msg": format!("Subscribe failed, wrong URL or channel:{},instId:{inst} doesn't exist. Please use the correct URL, channel and parameters referring to API document.", arg["channel"].as_str().unwrap_or_default()),"connId":"mock"})
                    } else {
                        self.subscribed.insert(inst);
                        serde_json::json!({"id": id, "event":"subscribe","arg": arg,"connId":"mock"})
                    };
                    if let Outcome::End(w) = send(ws, reply.to_string()).await {
                        return Outcome::End(w);
                    }
                }
                Outcome::Continue
            }
            Proto::Deribit => {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                    return send(ws, r#"{"jsonrpc":"2.0","error":{"code":11050,"message":"bad_request","data":"invalid json"},"testnet":false}"#.into()).await;
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
                                !self.cfg.unknown.iter().any(|u| {
                                    c == &format!("ticker.{u}.100ms")
                                        || c == &format!("deribit_price_index.{u}")
                                })
                            })
                            .collect();
                        self.subscribed.extend(accepted.iter().cloned());
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
                send(ws, reply.to_string()).await
            }
            Proto::Hyperliquid => {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                    return send(ws, serde_json::json!({"channel":"error","data":format!("Error parsing JSON into valid websocket request: {text}")}).to_string()).await;
                };
                match v["method"].as_str().unwrap_or_default() {
                    "ping" => send(ws, r#"{"channel":"pong"}"#.into()).await,
                    "subscribe" => {
                        let sub = v["subscription"].clone();
                        if let Some(coin) = sub["coin"].as_str() {
                            if self.cfg.unknown.contains(coin) {
                                // The real venue closes with 1006 (no close frame).
                                return Outcome::End(format!("unknown coin {coin}: dropped"));
                            }
                            self.subscribed.insert(coin.to_string());
                        }
                        send(ws, serde_json::json!({"channel":"subscriptionResponse","data":{"method":"subscribe","subscription":sub}}).to_string()).await
                    }
                    _ => send(ws, serde_json::json!({"channel":"error","data":format!("Error parsing JSON into valid websocket request: {text}")}).to_string()).await,
                }
            }
        }
    }
}

async fn send(ws: &mut WebSocketStream<TcpStream>, text: String) -> Outcome {
    match ws.send(Message::text(text)).await {
        Ok(()) => Outcome::Continue,
        Err(e) => Outcome::End(format!("write error: {e}")),
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    }))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A price frame in the venue's real format.
pub fn price_frame(proto: Proto, symbol: &str, price: &str) -> String {
    let ts = now_ms();
    match proto {
        Proto::Okx => {
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
        Proto::Deribit => {
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
        Proto::Hyperliquid => format!(
            r#"{{"channel":"activeAssetCtx","data":{{"coin":"{symbol}","ctx":{{"funding":"0.0000125","openInterest":"1","oraclePx":"{price}","markPx":"{price}","midPx":"{price}"}}}}}}"#
        ),
    }
}
