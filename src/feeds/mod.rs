//! Exchange price feeds: the [`Feed`] trait (wire types, subscribe messages, heartbeat rules and
//! a pure parse of one frame) and the one generic driver that owns the socket.
//!
//! Adding a venue = one file here implementing [`Feed`], fixtures in `feeds/<venue>/`, one match
//! arm in [`feed_for`], one row in the README table.
//!
//! ## The driver
//!
//! [`spawn_feed`] runs one task per (venue, connection) that owns the socket:
//!
//! - connects with `connect_timeout`, calls [`Feed::reset`], sends
//!   [`Feed::subscribe_messages`] (paced by [`Feed::send_interval`]);
//! - reads frames and hands each text frame to [`Feed::parse`]; ticks are mapped from venue
//!   symbols to canonical instruments through [`SymbolRoutes`] (built from the instruments'
//!   `sources`) and published to the [`PriceBoard`] — never blocking on the engine. A symbol
//!   with no route is counted (`liqwatch_feed_unknown_symbols_total`) and ignored;
//! - a rejected subscription is logged at ERROR naming the symbol, counted, shown in the status
//!   and left out of later connections; venues whose rejected topic may silence the others
//!   ([`Feed::rebuild_on_rejection`], Bybit) get the connection rebuilt at once without it; an
//!   ack proves nothing on Binance, so every subscribed
//!   symbol must deliver a first data frame within `first_data_timeout`, else it is reported as
//!   unconfirmed (ERROR log, counter, status) — without reconnecting;
//! - keeps the transport alive: client text pings ([`Heartbeat::client_ping`]), protocol pings
//!   ([`Feed::protocol_ping_interval`]), answers server pings, sends [`Frame::Reply`] texts;
//! - transport liveness: any frame at all (data, pong, ping) proves the socket; none for
//!   `dead_after` → reconnect. Data freshness is the price board's business, so a quiet
//!   instrument never causes a reconnect;
//! - rotates the connection at [`Feed::max_connection_age`] (Binance 24 h) and on
//!   [`Frame::ReconnectSoon`], reconnecting at once (the gap is one reconnect);
//! - reconnects after errors with jittered exponential backoff (`backoff_initial` doubling up
//!   to `backoff_max`, each delay drawn from [½·d, d]); the backoff resets only after a
//!   connection has delivered data for `healthy_after`;
//! - runs each connection in a `feed_connection` tracing span and stops on the
//!   [`CancellationToken`].
//!
//! Status per venue ([`FeedStatus`]: connected since, last frame, reconnects, errors, and per
//! instrument the last price, its age and staleness) comes from [`FeedRegistry::snapshot`].

pub mod binance;
pub mod bybit;
pub mod deribit;
pub mod hyperliquid;
pub mod okx;
pub mod replay;

mod driver;

use std::time::Duration;

use rust_decimal::Decimal;

use crate::model::{TimestampMs, Venue};

pub use driver::{
    FeedConfig, FeedError, FeedInstrumentStatus, FeedRegistry, FeedStatus, FeedStatusHandle,
    SymbolRoutes, run_feed, spawn_feed, spawn_feeds,
};

/// The adapter for a venue, or an error for a venue without one yet.
pub fn feed_for(venue: Venue) -> Result<Box<dyn Feed>, FeedError> {
    match venue {
        Venue::BinanceUsdm => Ok(Box::new(binance::BinanceUsdm::new())),
        Venue::BybitLinear => Ok(Box::new(bybit::BybitLinear::new())),
        Venue::Okx => Ok(Box::new(okx::OkxFeed::new())),
        Venue::Deribit => Ok(Box::new(deribit::DeribitFeed::new())),
        Venue::Hyperliquid => Ok(Box::new(hyperliquid::HyperliquidFeed::new())),
        other => Err(FeedError::NoAdapter(other)),
    }
}

/// One price observation for one venue symbol, borrowed from the frame it was parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VenueTick<'a> {
    /// The venue's symbol as it appears in the frame (`BTCUSDT`, `BTC-USDT-SWAP`, `BTC`).
    pub symbol: &'a str,
    /// Mark price, if the frame carried one.
    pub mark: Option<Decimal>,
    /// Index / oracle price, if the frame carried one.
    pub index: Option<Decimal>,
    /// The venue's timestamp, ms since epoch, if it sends one.
    pub exchange_ts: Option<TimestampMs>,
}

/// What one inbound frame was, after parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Price data: zero or more ticks were appended to the output buffer.
    Data,
    /// A subscription request was acknowledged. `symbols` lists the symbols the venue confirmed
    /// when it says (Deribit, OKX, Hyperliquid); empty when the ack does not name them (Binance,
    /// Bybit linear).
    SubscribeAck {
        /// Confirmed venue symbols, when the ack names them.
        symbols: Vec<String>,
    },
    /// The venue rejected a subscription.
    SubscribeRejected {
        /// The symbol or topic rejected, when the venue names it.
        symbol: Option<String>,
        /// The venue's reason, verbatim.
        reason: String,
    },
    /// Answer to our heartbeat (text `pong`, `{"op":"ping","ret_msg":"pong"}`, …).
    Pong,
    /// The venue demands an answer (Deribit `test_request`): send this text frame now.
    Reply(String),
    /// The venue announced it will close the connection soon (OKX 64008): reconnect early.
    ReconnectSoon,
    /// An error frame not tied to one subscription.
    VenueError {
        /// Venue error code, as text.
        code: String,
        /// Venue message, verbatim.
        message: String,
    },
    /// A known frame carrying nothing we need (welcome text, informational heartbeat).
    Ignore,
}

/// A frame that could not be understood. Counted and logged with the venue; never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not valid JSON, or not the shape the venue documents.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A price field that is not a decimal number.
    #[error("bad number in field {field}: {value:?}")]
    BadNumber {
        /// The field name.
        field: &'static str,
        /// The raw text.
        value: String,
    },
    /// Valid JSON of a kind the adapter does not know.
    #[error("unknown frame type: {0}")]
    Unknown(String),
}

/// How a venue wants the connection kept alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Send this text frame every `interval` when set (Bybit `{"op":"ping"}`, OKX `ping`,
    /// Hyperliquid `{"method":"ping"}`). `None`: the venue pings us (Binance) or uses
    /// JSON-RPC heartbeats set up by the subscribe messages (Deribit).
    pub client_ping: Option<(Duration, String)>,
    /// Declare the socket dead when no frame at all (data, pong, ping) arrives for this long.
    pub dead_after: Duration,
}

/// A venue adapter: wire types and pure functions only. The generic driver owns the socket.
pub trait Feed: Send + 'static {
    /// Which venue this is.
    fn venue(&self) -> Venue;

    /// The venue's current production URL.
    fn default_url(&self) -> &'static str;

    /// The URL to connect to, given the configured base URL and the symbols to subscribe
    /// (Binance may embed stream names; most venues return `base` unchanged).
    fn connect_url(&self, base: &str, _symbols: &[String]) -> String {
        base.to_string()
    }

    /// The text frames to send right after connecting (heartbeat setup, subscriptions).
    fn subscribe_messages(&mut self, symbols: &[String]) -> Vec<String>;

    /// Keepalive rules.
    fn heartbeat(&self) -> Heartbeat;

    /// Reconnect proactively after this long (Binance: 24 h hard limit).
    fn max_connection_age(&self) -> Option<Duration> {
        None
    }

    /// Called on every new connection: clear per-connection state (Bybit delta merge).
    fn reset(&mut self) {}

    /// Send a WebSocket protocol ping this often (Binance: the pong proves liveness between
    /// the server's own 3-minute pings). `None`: no protocol pings from us.
    fn protocol_ping_interval(&self) -> Option<Duration> {
        None
    }

    /// Rebuild the connection at once without a symbol the venue rejected (Bybit: a rejected
    /// topic is reported to silence the other topics on its connection). Default `false`: the
    /// connection is kept and the symbol is left out of later connections.
    fn rebuild_on_rejection(&self) -> bool {
        false
    }

    /// A fresh adapter of the same venue and settings, for a second, overlapping connection
    /// (make-before-break rotation at [`Feed::max_connection_age`]). `None`: rotation closes
    /// the old connection first and reconnects (a gap of one reconnect).
    fn fresh_instance(&self) -> Option<Box<dyn Feed>> {
        None
    }

    /// Minimum gap between the subscribe messages sent on connect (venue inbound rate limits,
    /// e.g. Binance 10 messages/s).
    fn send_interval(&self) -> Duration {
        Duration::ZERO
    }

    /// Parses one text frame. Price observations are appended to `out`.
    fn parse<'a>(
        &mut self,
        frame: &'a str,
        out: &mut Vec<VenueTick<'a>>,
    ) -> Result<Frame, ParseError>;
}

/// Reads a fixture file `feeds/<dir>/<name>` for the adapters' unit tests, naming the path
/// on failure.
#[cfg(test)]
pub(crate) fn read_fixture(dir: &str, name: &str) -> String {
    let path = format!("{}/feeds/{dir}/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
