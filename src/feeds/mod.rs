//! Exchange price feeds: the [`Feed`] trait (wire types, subscribe messages, heartbeat rules and
//! a pure parse of one frame) and the one generic driver that owns the socket.
//!
//! Adding a venue = one file here implementing [`Feed`], fixtures in `feeds/<venue>/`, one match
//! arm in [`feed_for`], one row in the README table.

pub mod binance;
pub mod bybit;
pub mod deribit;
pub mod hyperliquid;
pub mod okx;
pub mod replay;

use std::time::Duration;

use rust_decimal::Decimal;

use crate::model::{TimestampMs, Venue};

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

    /// Parses one text frame. Price observations are appended to `out`.
    fn parse<'a>(
        &mut self,
        frame: &'a str,
        out: &mut Vec<VenueTick<'a>>,
    ) -> Result<Frame, ParseError>;
}
