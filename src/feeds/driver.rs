//! The one generic feed driver: owns a venue's WebSocket, subscribes, checks acks and first
//! data, keeps the transport alive, reconnects with jittered backoff, publishes prices to the
//! board, and writes the per-venue status (kept in `status`). See the module docs of
//! [`crate::feeds`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use metrics::counter;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, trace, warn};

use super::status::{FeedRegistry, FeedStatusHandle, SymbolRoutes};
use super::subscriptions::{Retry, Subscriptions};
use super::{Feed, Frame, ParseError, VenueTick};
use crate::model::{Instrument, PriceField, PriceTick, TimestampMs, Venue, now_ms};
use crate::prices::PriceBoard;
use crate::runtime::Backoff;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Errors of the feed layer.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// No adapter is written for this venue yet.
    #[error("no feed adapter for venue {0}")]
    NoAdapter(Venue),
    /// Connecting failed (DNS, TCP, TLS, HTTP upgrade).
    #[error("connect to {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A network operation did not finish in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The socket failed or closed.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The configuration cannot work (no symbols, bad URL).
    #[error("feed config: {0}")]
    Config(String),
}

impl FeedError {
    /// Whether retrying (reconnecting) may help.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, FeedError::NoAdapter(_) | FeedError::Config(_))
    }
}

fn d_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_backoff_initial() -> Duration {
    Duration::from_millis(500)
}
fn d_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn d_healthy_after() -> Duration {
    Duration::from_secs(30)
}
fn d_first_data_timeout() -> Duration {
    Duration::from_secs(30)
}
fn d_write_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_resubscribe_initial() -> Duration {
    Duration::from_secs(1)
}
fn d_resubscribe_max() -> Duration {
    Duration::from_secs(60)
}
fn d_unknown_retry() -> Duration {
    Duration::from_secs(600)
}

/// Per-venue feed configuration (TOML table `[feeds.<venue>]`). Every knob has a default.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// URL override (tests point at loopback). Default: the venue's production URL.
    #[serde(default)]
    pub url: Option<String>,
    /// Connect (TCP + TLS + upgrade) timeout. Default 10 s.
    #[serde(default = "d_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout of every send. Default 10 s.
    #[serde(default = "d_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// First reconnect delay. Default 500 ms.
    #[serde(default = "d_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Reconnect delay cap. Default 30 s.
    #[serde(default = "d_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A connection that delivered data for this long resets the backoff. Default 30 s.
    #[serde(default = "d_healthy_after", with = "humantime_serde")]
    pub healthy_after: Duration,
    /// Each subscribed symbol must deliver a first price within this, else it is reported as
    /// unconfirmed (Binance acks unknown symbols). Default 30 s.
    #[serde(default = "d_first_data_timeout", with = "humantime_serde")]
    pub first_data_timeout: Duration,
    /// First delay before a refused subscription is retried (per symbol, doubling per refusal
    /// up to `resubscribe_max`, jittered into [½·d, d]). Default 1 s.
    #[serde(default = "d_resubscribe_initial", with = "humantime_serde")]
    pub resubscribe_initial: Duration,
    /// Cap of the refused-subscription retry delay. Default 60 s.
    #[serde(default = "d_resubscribe_max", with = "humantime_serde")]
    pub resubscribe_max: Duration,
    /// A symbol the venue calls unknown (or that stays silent after its ack) is retried this
    /// often, and reported meanwhile. Default 10 min.
    #[serde(default = "d_unknown_retry", with = "humantime_serde")]
    pub unknown_retry: Duration,
    /// Override of the venue's dead-peer limit (no frame at all for this long → reconnect).
    #[serde(default, with = "humantime_serde")]
    pub dead_after: Option<Duration>,
    /// Override of the venue's client ping interval.
    #[serde(default, with = "humantime_serde")]
    pub ping_interval: Option<Duration>,
    /// Override of the venue's maximum connection age (Binance 23 h 30 min).
    #[serde(default, with = "humantime_serde")]
    pub max_connection_age: Option<Duration>,
    /// Venue symbols → instruments; filled from the instruments' `sources`, not from TOML.
    #[serde(skip)]
    pub routes: SymbolRoutes,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            url: None,
            connect_timeout: d_connect_timeout(),
            write_timeout: d_write_timeout(),
            backoff_initial: d_backoff_initial(),
            backoff_max: d_backoff_max(),
            healthy_after: d_healthy_after(),
            first_data_timeout: d_first_data_timeout(),
            resubscribe_initial: d_resubscribe_initial(),
            resubscribe_max: d_resubscribe_max(),
            unknown_retry: d_unknown_retry(),
            dead_after: None,
            ping_interval: None,
            max_connection_age: None,
            routes: SymbolRoutes::default(),
        }
    }
}

impl FeedConfig {
    /// This config with routes for `venue` taken from the instruments' sources.
    pub fn with_instruments(mut self, venue: Venue, instruments: &[Instrument]) -> FeedConfig {
        self.routes = SymbolRoutes::from_instruments(venue, instruments);
        self
    }

    /// The reconnect backoff of this feed: the one [`Backoff`] policy, from `backoff_initial`
    /// doubling up to `backoff_max`, each delay drawn from [½·d, d].
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_initial, self.backoff_max)
    }
}

/// Spawns the driver of one feed; it runs until `cancel` fires. Registers the feed in
/// `registry` first, so its status is visible at once.
pub fn spawn_feed(
    feed: Box<dyn Feed>,
    cfg: FeedConfig,
    board: Arc<PriceBoard>,
    registry: &FeedRegistry,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let status = registry.register(feed.venue(), &cfg.routes);
    for (_, inst, _) in cfg.routes.iter() {
        board.track(inst, &[feed.venue()]);
    }
    tokio::spawn(run_feed(feed, cfg, board, status, cancel))
}

/// Why one connection ended.
enum End {
    Cancelled,
    /// Reconnect at once (rotation, venue notice).
    Rotate(&'static str),
    /// Reconnect after backoff.
    Failed(String),
}

/// Runs the driver of one feed in the current task until `cancel` fires.
pub async fn run_feed(
    mut feed: Box<dyn Feed>,
    cfg: FeedConfig,
    board: Arc<PriceBoard>,
    status: Arc<FeedStatusHandle>,
    cancel: CancellationToken,
) {
    let venue = feed.venue();
    // Installing the TLS provider is idempotent; an error means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = cfg
        .url
        .clone()
        .unwrap_or_else(|| feed.default_url().to_string());
    for (sym, inst, field) in cfg.routes.iter() {
        trace!(venue = %venue, symbol = sym, instrument = %inst, ?field, "Route");
        board.track(inst, &[venue]);
    }
    let mut subs = Subscriptions::new(
        cfg.resubscribe_initial,
        cfg.resubscribe_max,
        cfg.unknown_retry,
    );
    let mut backoff = cfg.backoff();
    let mut conn_no: u64 = 0;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let symbols = subs.for_new_connection(cfg.routes.symbols(), Instant::now());
        if symbols.is_empty()
            && !cfg.routes.symbols().is_empty()
            && let Some(due) = subs.next_unknown_due()
        {
            // Every symbol was called unknown: nothing to connect for until one is due again.
            let wait = due.saturating_duration_since(Instant::now());
            error!(venue = %venue, retry_in = ?wait, "Every symbol of this feed was rejected by the venue; retrying them later");
            status.set_error(format!(
                "every symbol rejected by the venue; retrying in {}s",
                wait.as_secs()
            ));
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
            continue;
        }
        let url = feed.connect_url(&base, &symbols);
        status.text.lock().url = url.clone();
        conn_no += 1;
        let span =
            tracing::info_span!("feed_connection", venue = %venue, url = %url, conn = conn_no);
        let result = connection(
            &mut feed, &cfg, &url, &symbols, &board, &status, &cancel, &mut subs,
        )
        .instrument(span)
        .await;
        status.connected.store(false, Ordering::Relaxed);
        metrics::gauge!("liqwatch_feed_connected", "venue" => venue.as_str()).set(0.0);
        let (end, healthy) = result;
        if healthy {
            backoff.reset();
        }
        match end {
            End::Cancelled => break,
            End::Rotate(why) => {
                info!(venue = %venue, reason = why, "Feed reconnecting at once");
                counter!("liqwatch_feed_rotations_total", "venue" => venue.as_str()).increment(1);
            }
            End::Failed(reason) => {
                let delay = backoff.next_delay(None);
                let attempt = backoff.attempts();
                warn!(venue = %venue, error = %reason, delay_ms = delay.as_millis() as u64, attempt, "Feed disconnected; reconnecting after backoff");
                status.set_error(reason);
                counter!("liqwatch_feed_disconnects_total", "venue" => venue.as_str()).increment(1);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    info!(venue = %venue, "Feed stopped");
}

/// Reuses a tick buffer's allocation for another frame's lifetime (the buffer is empty, so the
/// in-place collect moves nothing).
#[allow(clippy::unnecessary_filter_map)] // the map changes the element lifetime; no item exists
fn recycle<'b>(mut v: Vec<VenueTick<'_>>) -> Vec<VenueTick<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

fn short(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

async fn send(ws: &mut Ws, msg: Message, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("send: {e}")),
        Err(_) => Err("send timed out".to_string()),
    }
}

/// Shared context of one feed's connections.
struct Ctx<'c> {
    venue: Venue,
    cfg: &'c FeedConfig,
    board: &'c PriceBoard,
    status: &'c FeedStatusHandle,
    frames: metrics::Counter,
    ticks: metrics::Counter,
    unknown: metrics::Counter,
    parse_errors: metrics::Counter,
}

/// Per-connection state.
struct ConnState {
    /// The connection the status describes (a make-before-break replacement is not, until
    /// it takes over).
    primary: bool,
    opened: Instant,
    last_frame: Instant,
    last_client_ping: Instant,
    last_proto_ping: Instant,
    first_data: Option<Instant>,
    acked: bool,
    /// Symbols subscribed on this connection with no price yet, and when they were sent.
    unconfirmed: HashMap<String, Instant>,
    /// Symbols that delivered a price on this connection.
    confirmed: HashSet<String>,
    /// Unconfirmed symbols already reported (until resent).
    reported: HashSet<String>,
}

impl ConnState {
    fn new(symbols: &[String], primary: bool) -> ConnState {
        let now = Instant::now();
        ConnState {
            primary,
            opened: now,
            last_frame: now,
            last_client_ping: now,
            last_proto_ping: now,
            first_data: None,
            acked: false,
            unconfirmed: symbols.iter().map(|s| (s.clone(), now)).collect(),
            confirmed: HashSet::new(),
            reported: HashSet::new(),
        }
    }
}

/// What the connection loop must do after a text frame.
enum After {
    Nothing,
    Reply(String),
    End(End),
}

/// Connects, resets the adapter and sends its subscribe messages (paced).
async fn open(
    url: &str,
    connect_timeout: Duration,
    write_timeout: Duration,
    feed: &mut dyn Feed,
    symbols: &[String],
) -> Result<Ws, String> {
    let v = feed.venue().as_str();
    let connect = tokio_tungstenite::connect_async_with_config(url, None, true);
    let mut ws = match tokio::time::timeout(connect_timeout, connect).await {
        Ok(Ok((ws, _resp))) => ws,
        Ok(Err(e)) => {
            counter!("liqwatch_feed_connect_errors_total", "venue" => v).increment(1);
            return Err(format!("connect to {url}: {e}"));
        }
        Err(_) => {
            counter!("liqwatch_feed_connect_errors_total", "venue" => v).increment(1);
            return Err(format!(
                "connect to {url}: timed out after {connect_timeout:?}"
            ));
        }
    };
    feed.reset();
    let pace = feed.send_interval();
    for (n, m) in feed.subscribe_messages(symbols).into_iter().enumerate() {
        if n > 0 && !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
        debug!(message = %short(&m), "Subscribing");
        send(&mut ws, Message::text(m), write_timeout).await?;
    }
    Ok(ws)
}

fn mark_connected(status: &FeedStatusHandle, venue: Venue, symbols: usize) {
    status.connections.fetch_add(1, Ordering::Relaxed);
    status.connected.store(true, Ordering::Relaxed);
    status.connected_since.store(now_ms(), Ordering::Relaxed);
    // Unconfirmed symbols stay listed until they deliver (or are reported again).
    status.text.lock().confirmed.clear();
    metrics::gauge!("liqwatch_feed_connected", "venue" => venue.as_str()).set(1.0);
    counter!("liqwatch_feed_connections_total", "venue" => venue.as_str()).increment(1);
    info!(symbols, "Feed connected");
}

/// Handles one text frame: parse, route, publish, acks, rejections, control frames.
#[allow(clippy::too_many_arguments)]
fn handle_text(
    ctx: &Ctx<'_>,
    feed: &mut dyn Feed,
    text: &str,
    st: &mut ConnState,
    now: Instant,
    recv_ms: TimestampMs,
    subs: &mut Subscriptions,
    buf: &mut Vec<VenueTick<'static>>,
) -> After {
    let v = ctx.venue.as_str();
    let mut ticks: Vec<VenueTick<'_>> = recycle(std::mem::take(buf));
    // Funding rides on the price frames (and OKX's funding-rate channel): latest wins on the
    // board, beside the prices; a frame whose funding fields are bad keeps its prices.
    if let Err(e) = super::funding::publish_funding(
        ctx.venue,
        text,
        &ctx.cfg.routes,
        ctx.board.funding(),
        recv_ms,
        |t| t,
    ) {
        counter!("liqwatch_feed_funding_errors_total", "venue" => v).increment(1);
        debug!(error = %e, frame = %short(text), "Funding fields not read");
    }
    let after = match feed.parse(text, &mut ticks) {
        Ok(Frame::Data) => {
            for t in ticks.drain(..) {
                let Some(routes) = ctx.cfg.routes.get(t.symbol) else {
                    ctx.unknown.increment(1);
                    ctx.status.unknown_symbols.fetch_add(1, Ordering::Relaxed);
                    trace!(symbol = t.symbol, "Tick for a symbol with no route");
                    continue;
                };
                if !st.unconfirmed.is_empty()
                    && st.unconfirmed.remove(t.symbol).is_some()
                    && st.confirmed.insert(t.symbol.to_string())
                {
                    first_price(ctx, st, subs, t.symbol);
                }
                if st.first_data.is_none() {
                    st.first_data = Some(now);
                }
                for (inst, field) in routes {
                    let price = match field {
                        PriceField::Mark => t.mark,
                        PriceField::Index => t.index,
                    };
                    if let Some(price) = price {
                        ctx.ticks.increment(1);
                        ctx.board.publish(PriceTick {
                            instrument: inst.clone(),
                            venue: ctx.venue,
                            price,
                            index: t.index,
                            exchange_ts: t.exchange_ts,
                            received_ts: recv_ms,
                        });
                    }
                }
            }
            After::Nothing
        }
        Ok(Frame::SubscribeAck { symbols }) => {
            st.acked = true;
            debug!(?symbols, "Subscription acknowledged");
            After::Nothing
        }
        Ok(Frame::SubscribeRefused { symbols, reason }) => {
            counter!("liqwatch_feed_subscriptions_refused_total", "venue" => v).increment(1);
            let batches = subs.refused(&symbols, now);
            for (delay, batch) in &batches {
                warn!(symbols = ?batch, reason = %reason, retry_in = ?delay, "Subscription refused by the venue; retrying");
            }
            let mut t = ctx.status.text.lock();
            t.last_error = Some(format!(
                "subscription refused: {}: {reason}",
                symbols.join(",")
            ));
            for one in symbols {
                if !t.rejected.contains(&one) {
                    t.rejected.push(one);
                }
            }
            After::Nothing
        }
        Ok(Frame::SubscribeRejected { symbol, reason }) => {
            counter!("liqwatch_feed_subscriptions_rejected_total", "venue" => v).increment(1);
            let name = symbol
                .clone()
                .unwrap_or_else(|| "(not named by the venue)".to_string());
            error!(symbol = %name, reason = %reason, retry_in = ?ctx.cfg.unknown_retry, "Subscription rejected by the venue; check the symbol in the instrument sources");
            let mut t = ctx.status.text.lock();
            t.last_error = Some(format!("subscription rejected: {name}: {reason}"));
            let mut newly = false;
            if let Some(s) = symbol {
                for one in s.split(',') {
                    newly |= subs.unknown(one, now);
                    if !t.rejected.iter().any(|x| x == one) {
                        t.rejected.push(one.to_string());
                    }
                }
            }
            if newly && feed.rebuild_on_rejection() {
                // A rejected topic can silence the others on the same connection (reported
                // for Bybit): rebuild the connection without it, once per rejected symbol.
                After::End(End::Rotate(
                    "rebuilding the connection without the rejected symbol",
                ))
            } else {
                After::Nothing
            }
        }
        Ok(Frame::Pong) | Ok(Frame::Ignore) => After::Nothing,
        Ok(Frame::Reply(text)) => After::Reply(text),
        Ok(Frame::ReconnectSoon) => After::End(End::Rotate("venue announced a disconnect")),
        Ok(Frame::VenueError { code, message }) => {
            counter!("liqwatch_feed_venue_errors_total", "venue" => v).increment(1);
            warn!(code = %code, message = %message, "Venue error frame");
            ctx.status
                .set_error(format!("venue error {code}: {message}"));
            After::Nothing
        }
        Err(e) => {
            ctx.parse_errors.increment(1);
            ctx.status.parse_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, frame = %short(text), "Unparseable frame ignored");
            if let ParseError::BadNumber { .. } = e {
                counter!("liqwatch_feed_bad_numbers_total", "venue" => v).increment(1);
            }
            After::Nothing
        }
    };
    *buf = recycle(ticks);
    after
}

/// A symbol's first price on a connection: its subscription is confirmed, its refusals and
/// rejections are forgotten, and (on the primary connection) the status says so.
fn first_price(ctx: &Ctx<'_>, st: &ConnState, subs: &mut Subscriptions, symbol: &str) {
    debug!(symbol, "First price: subscription confirmed");
    let recovered = subs.confirmed(symbol);
    if recovered {
        info!(
            symbol,
            "Subscription recovered: the symbol delivers prices again"
        );
    }
    if st.primary || recovered {
        let mut t = ctx.status.text.lock();
        t.unconfirmed.retain(|s| s != symbol);
        t.rejected.retain(|s| s != symbol);
        if st.primary {
            t.confirmed.insert(symbol.to_string());
        }
    }
}

/// Reports symbols with no price within `timeout` of their subscription (ERROR log, counter,
/// status). When others on the connection deliver, the venue works and these are treated as
/// unknown (Binance acks unknown symbols): retried rarely. When none does, the connection is
/// rebuilt instead (the caller's "nothing subscribed" rule).
fn report_unconfirmed(
    status: &FeedStatusHandle,
    st: &mut ConnState,
    subs: &mut Subscriptions,
    mut late: Vec<String>,
    timeout: Duration,
    v: &'static str,
) {
    late.sort();
    st.reported.extend(late.iter().cloned());
    counter!("liqwatch_feed_unconfirmed_subscriptions_total", "venue" => v)
        .increment(late.len() as u64);
    error!(symbols = ?late, acked = st.acked, timeout = ?timeout,
        "No price received for subscribed symbols (unknown symbol, wrong endpoint, or venue silent)");
    if st.first_data.is_some() {
        let now = Instant::now();
        for s in &late {
            subs.unknown(s, now);
        }
    }
    if !st.primary {
        return;
    }
    let mut t = status.text.lock();
    t.last_error = Some(format!(
        "no data for {} within {timeout:?} of subscribing",
        late.join(",")
    ));
    for s in late {
        if !t.unconfirmed.contains(&s) {
            t.unconfirmed.push(s);
        }
    }
    t.unconfirmed.sort();
}

/// Sends the due retries on the live connection (paced like the first subscriptions). Returns
/// `true` when the adapter cannot add subscriptions to a live connection and a refused one is
/// due: the caller rebuilds the connection (which subscribes it again). Unknown symbols on
/// such venues wait for the next connection instead.
async fn resend(
    ws: &mut Ws,
    feed: &mut dyn Feed,
    st: &mut ConnState,
    due: Vec<Retry>,
    write_timeout: Duration,
) -> Result<bool, String> {
    let pace = feed.send_interval();
    let mut rebuild = false;
    let mut sent = 0usize;
    for r in due {
        let Some(msgs) = feed.resubscribe_messages(&r.symbols) else {
            rebuild |= !r.unknown;
            continue;
        };
        for m in msgs {
            if sent > 0 && !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            debug!(message = %short(&m), "Subscribing again");
            send(ws, Message::text(m), write_timeout).await?;
            sent += 1;
        }
        let now = Instant::now();
        for s in r.symbols {
            st.reported.remove(&s);
            st.unconfirmed.insert(s, now);
        }
    }
    Ok(rebuild)
}

/// What to do with one WebSocket message before parsing.
enum Raw {
    Text(tokio_tungstenite::tungstenite::Utf8Bytes),
    Binary(bytes::Bytes),
    Flush,
    Skip,
    Closed(String),
}

fn classify(m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Raw {
    match m {
        None => Raw::Closed("stream ended".to_string()),
        Some(Err(e)) => Raw::Closed(format!("read: {e}")),
        Some(Ok(Message::Text(t))) => Raw::Text(t),
        Some(Ok(Message::Binary(b))) => Raw::Binary(b),
        // tungstenite queued the pong; flush it now so a busy reader never delays it.
        Some(Ok(Message::Ping(_))) => Raw::Flush,
        Some(Ok(Message::Pong(_))) | Some(Ok(Message::Frame(_))) => Raw::Skip,
        Some(Ok(Message::Close(frame))) => Raw::Closed(match frame {
            Some(f) => format!("closed by venue: {} {}", u16::from(f.code), f.reason),
            None => "closed by venue".to_string(),
        }),
    }
}

async fn next_of(ws: &mut Option<(Ws, Box<dyn Feed>, ConnState)>) -> Raw {
    match ws {
        Some((w, _, _)) => classify(w.next().await),
        None => std::future::pending().await,
    }
}

type Standby = JoinHandle<Result<(Ws, Box<dyn Feed>), String>>;

async fn join_standby(h: &mut Option<Standby>) -> Result<(Ws, Box<dyn Feed>), String> {
    match h {
        Some(h) => match h.await {
            Ok(r) => r,
            Err(e) => Err(format!("standby task: {e}")),
        },
        None => std::future::pending().await,
    }
}

/// One connection (and, at rotation, its make-before-break successors): returns how it
/// ended and whether it was healthy long enough to reset the backoff.
#[allow(clippy::too_many_arguments)]
async fn connection(
    feed: &mut Box<dyn Feed>,
    cfg: &FeedConfig,
    url: &str,
    symbols: &[String],
    board: &PriceBoard,
    status: &FeedStatusHandle,
    cancel: &CancellationToken,
    subs: &mut Subscriptions,
) -> (End, bool) {
    let venue = feed.venue();
    let v = venue.as_str();
    let opened = tokio::select! {
        _ = cancel.cancelled() => return (End::Cancelled, false),
        r = open(url, cfg.connect_timeout, cfg.write_timeout, &mut **feed, symbols) => r,
    };
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(e) => return (End::Failed(e), false),
    };
    mark_connected(status, venue, symbols.len());
    let ctx = Ctx {
        venue,
        cfg,
        board,
        status,
        frames: counter!("liqwatch_feed_frames_total", "venue" => v),
        ticks: counter!("liqwatch_feed_ticks_total", "venue" => v),
        unknown: counter!("liqwatch_feed_unknown_symbols_total", "venue" => v),
        parse_errors: counter!("liqwatch_feed_parse_errors_total", "venue" => v),
    };

    let hb = feed.heartbeat();
    let dead_after = cfg.dead_after.unwrap_or(hb.dead_after);
    let client_ping = hb
        .client_ping
        .map(|(d, text)| (cfg.ping_interval.unwrap_or(d), text));
    let proto_ping = feed.protocol_ping_interval();
    let max_age = cfg.max_connection_age.or(feed.max_connection_age());
    // Start the replacement this long before the maximum age.
    let rotate_lead = max_age.map(|a| (a / 5).min(Duration::from_secs(300)));
    // Housekeeping resolution: fine enough for every timer of this connection.
    let mut tick_every = (dead_after / 10).min(cfg.first_data_timeout / 2);
    if let Some((every, _)) = &client_ping {
        tick_every = tick_every.min(*every / 4);
    }
    if let Some(every) = proto_ping {
        tick_every = tick_every.min(every / 4);
    }
    if let Some(lead) = rotate_lead {
        tick_every = tick_every.min(lead / 4);
    }
    let tick_every = tick_every.clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut housekeeping = tokio::time::interval(tick_every);
    housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let mut st = ConnState::new(symbols, true);
    let mut standby_task: Option<Standby> = None;
    let mut standby: Option<(Ws, Box<dyn Feed>, ConnState)> = None;
    let mut standby_tried = false;
    let mut buf: Vec<VenueTick<'static>> = Vec::with_capacity(16);
    let healthy = |first: Option<Instant>| {
        first.is_some_and(|t| Instant::now().saturating_duration_since(t) >= cfg.healthy_after)
    };

    // Pinned once: a fresh `cancelled()` per frame would register and drop a waiter each time.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let end = loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                if let Some((mut w, _, _)) = standby.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), w.close(None)).await;
                }
                break End::Cancelled;
            }
            m = ws.next() => {
                let now = Instant::now();
                st.last_frame = now;
                let recv_ms = now_ms();
                status.last_frame.store(recv_ms, Ordering::Relaxed);
                status.frames.fetch_add(1, Ordering::Relaxed);
                ctx.frames.increment(1);
                let raw = classify(m);
                let after = match &raw {
                    Raw::Text(t) => handle_text(&ctx, &mut **feed, t.as_str(), &mut st, now, recv_ms, subs, &mut buf),
                    Raw::Binary(b) => match std::str::from_utf8(b) {
                        Ok(text) => handle_text(&ctx, &mut **feed, text, &mut st, now, recv_ms, subs, &mut buf),
                        Err(_) => {
                            ctx.parse_errors.increment(1);
                            status.parse_errors.fetch_add(1, Ordering::Relaxed);
                            warn!(len = b.len(), "Binary frame is not UTF-8; ignored");
                            After::Nothing
                        }
                    },
                    Raw::Flush => match tokio::time::timeout(cfg.write_timeout, ws.flush()).await {
                        Ok(Ok(())) => After::Nothing,
                        Ok(Err(e)) => After::End(End::Failed(format!("pong: {e}"))),
                        Err(_) => After::End(End::Failed("pong: flush timed out".to_string())),
                    },
                    Raw::Skip => After::Nothing,
                    Raw::Closed(reason) => After::End(End::Failed(reason.clone())),
                };
                match after {
                    After::Nothing => {}
                    After::Reply(text) => {
                        if let Err(e) = send(&mut ws, Message::text(text), cfg.write_timeout).await {
                            break End::Failed(e);
                        }
                    }
                    After::End(end) => break end,
                }
            }
            r = join_standby(&mut standby_task) => {
                standby_task = None;
                match r {
                    Ok((w, f)) => {
                        debug!("Replacement connection subscribed; waiting for its first price");
                        standby = Some((w, f, ConnState::new(symbols, false)));
                    }
                    Err(e) => warn!(error = %e, "Replacement connection failed; will reconnect at the maximum age"),
                }
            }
            raw = next_of(&mut standby) => {
                let now = Instant::now();
                let recv_ms = now_ms();
                let Some((w, f, s2)) = standby.as_mut() else { continue };
                s2.last_frame = now;
                let after = match &raw {
                    Raw::Text(t) => handle_text(&ctx, &mut **f, t.as_str(), s2, now, recv_ms, subs, &mut buf),
                    Raw::Flush => {
                        let _ = tokio::time::timeout(cfg.write_timeout, w.flush()).await;
                        After::Nothing
                    }
                    Raw::Binary(_) | Raw::Skip => After::Nothing,
                    Raw::Closed(reason) => After::End(End::Failed(reason.clone())),
                };
                match after {
                    After::End(_) => {
                        warn!("Replacement connection lost before its first price");
                        standby = None;
                    }
                    After::Reply(text) => {
                        let _ = send(w, Message::text(text), cfg.write_timeout).await;
                    }
                    After::Nothing => {}
                }
                if standby.as_ref().is_some_and(|(_, _, s2)| s2.first_data.is_some())
                    && let Some((w2, f2, s2)) = standby.take()
                {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    ws = w2;
                    *feed = f2;
                    st = s2;
                    st.primary = true;
                    standby_tried = false;
                    mark_connected(status, venue, symbols.len());
                    status.text.lock().confirmed = st.confirmed.clone();
                    counter!("liqwatch_feed_rotations_total", "venue" => v).increment(1);
                    info!("Connection rotated make-before-break: replacement delivered prices, old one closed");
                }
            }
            _ = housekeeping.tick() => {
                let now = Instant::now();
                if now.saturating_duration_since(st.last_frame) > dead_after {
                    counter!("liqwatch_feed_dead_peer_total", "venue" => v).increment(1);
                    break End::Failed(format!("no frame for {dead_after:?} (dead peer)"));
                }
                if let (Some(age), Some(lead)) = (max_age, rotate_lead) {
                    let alive = now.saturating_duration_since(st.opened);
                    if alive >= age {
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                        break End::Rotate("maximum connection age reached");
                    }
                    if alive + lead >= age
                        && !standby_tried
                        && let Some(mut fresh) = feed.fresh_instance()
                    {
                        standby_tried = true;
                        info!(age = ?age, "Opening the replacement connection before the maximum age");
                        let (url, syms) = (url.to_string(), symbols.to_vec());
                        let (ct, wt) = (cfg.connect_timeout, cfg.write_timeout);
                        standby_task = Some(tokio::spawn(async move {
                            let w = open(&url, ct, wt, &mut *fresh, &syms).await?;
                            Ok((w, fresh))
                        }));
                    }
                }
                if let Some((every, text)) = &client_ping {
                    if now.saturating_duration_since(st.last_client_ping) >= *every {
                        st.last_client_ping = now;
                        trace!("Client ping");
                        if let Err(e) = send(&mut ws, Message::text(text.clone()), cfg.write_timeout).await {
                            break End::Failed(e);
                        }
                    }
                    if let Some((w, _, s2)) = standby.as_mut()
                        && now.saturating_duration_since(s2.last_client_ping) >= *every
                    {
                        s2.last_client_ping = now;
                        let _ = send(w, Message::text(text.clone()), cfg.write_timeout).await;
                    }
                }
                if let Some(every) = proto_ping
                    && now.saturating_duration_since(st.last_proto_ping) >= every
                {
                    st.last_proto_ping = now;
                    if let Err(e) = send(&mut ws, Message::Ping(Vec::new().into()), cfg.write_timeout).await {
                        break End::Failed(e);
                    }
                }
                let late: Vec<String> = st
                    .unconfirmed
                    .iter()
                    .filter(|(s, sent)| {
                        now.saturating_duration_since(**sent) >= cfg.first_data_timeout
                            && !st.reported.contains(*s)
                            && !subs.troubled(s)
                    })
                    .map(|(s, _)| s.clone())
                    .collect();
                if !late.is_empty() {
                    report_unconfirmed(status, &mut st, subs, late, cfg.first_data_timeout, v);
                }
                if st.first_data.is_none()
                    && !symbols.is_empty()
                    && now.saturating_duration_since(st.opened) >= cfg.first_data_timeout
                {
                    // Nothing subscribed (every request refused, acked and silent, or the
                    // venue mute): a connection without a single price is rebuilt.
                    counter!("liqwatch_feed_empty_connections_total", "venue" => v).increment(1);
                    break End::Failed(format!(
                        "nothing subscribed: no symbol delivered a price within {:?}; rebuilding the connection",
                        cfg.first_data_timeout
                    ));
                }
                let due = subs.take_due(now);
                if !due.is_empty() {
                    match resend(&mut ws, &mut **feed, &mut st, due, cfg.write_timeout).await {
                        Ok(false) => {}
                        Ok(true) => break End::Rotate("retrying refused subscriptions on a new connection"),
                        Err(e) => break End::Failed(e),
                    }
                }
            }
        }
    };
    if let Some(h) = standby_task.take() {
        h.abort();
    }
    (end, healthy(st.first_data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The feed's backoff (the one `Backoff`, from `backoff_initial` and `backoff_max`) doubles
    /// from the initial delay up to the cap, jittered into [½·d, d], and starts over on reset.
    #[test]
    fn backoff_bounds() {
        let cfg = FeedConfig {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..FeedConfig::default()
        };
        let mut want: Vec<u64> = vec![100, 200, 400, 800, 1000];
        want.resize(41, 1000);
        for _ in 0..50 {
            let mut b = cfg.backoff();
            for round in 0..2 {
                for (attempt, full) in want.iter().copied().enumerate() {
                    let d = b.next_delay(None);
                    assert!(d <= Duration::from_millis(full), "{round}/{attempt}: {d:?}");
                    assert!(
                        d >= Duration::from_millis(full / 2),
                        "{round}/{attempt}: {d:?}"
                    );
                }
                b.reset();
            }
        }
    }

    /// Config knobs parse from TOML with humantime durations; unknown keys are errors.
    #[test]
    fn config_from_toml() {
        let c: FeedConfig = toml::from_str(
            "url = \"ws://127.0.0.1:9/x\"\nbackoff_max = \"5s\"\ndead_after = \"40s\"",
        )
        .unwrap();
        assert_eq!(c.url.as_deref(), Some("ws://127.0.0.1:9/x"));
        assert_eq!(c.backoff_max, Duration::from_secs(5));
        assert_eq!(c.dead_after, Some(Duration::from_secs(40)));
        assert_eq!(c.backoff_initial, Duration::from_millis(500));
        assert!(toml::from_str::<FeedConfig>("urll = \"x\"").is_err());
    }
}
