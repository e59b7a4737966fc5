//! Exchange price feeds: the [`Feed`] trait (wire types, subscribe messages, heartbeat rules and
//! a pure parse of one frame), the venue table, and the one generic driver that owns the socket.
//!
//! ## The venue table
//!
//! `venues!` (in `src/venues.rs`) is the one list of venues. Each row is a variant of
//! [`Venue`], its config/wire name, and (when one is written) its adapter. Two expansions read
//! it:
//!
//! - `crate::model` generates the [`Venue`] enum from it (variants with their docs and serde
//!   names, [`Venue::ALL`], [`Venue::NAMES`], [`Venue::as_str`]; `parse`, `Display` and `FromStr`
//!   are written once on top);
//! - this module generates the adapter lookup [`feed_for`] from it ([`all_adapters`] iterates it
//!   for tests and tools).
//!
//! Why the table has a module of its own: `model` is the leaf every stage imports (prices,
//! engine, config, journal and the API all name venues), and the adapters import `model` for
//! [`TimestampMs`] and [`Venue`]. With the table here, `model` would import `feeds` — a circle.
//! In `crate::venues` it imports nothing and both read it; `model` expands it with its own
//! generator and drops the adapter paths, which are resolved only in this module's expansion.
//!
//! ## Adding a venue
//!
//! 1. Write `src/feeds/<venue>.rs`: wire types, a borrowing [`Feed::parse`] that reads every
//!    number through [`wire`] (the one decimal policy), the subscribe messages, the
//!    heartbeat rules, and a unit test per fixture file. Declare it with `pub mod <venue>;`
//!    below (written out, not generated, so that `cargo fmt` and IDEs see the file).
//! 2. Add one row to the `venues!` table in `src/venues.rs`:
//!    `/// docs` `MyVenue "my-venue" => my_venue::MyVenueFeed;` (the adapter needs a `new()`).
//!    This gives the [`Venue`] variant, its name in config files, replay recordings and the
//!    API, [`Venue::ALL`], and the [`feed_for`] arm.
//! 3. Record fixtures in `feeds/<venue name>/` (the directory is named like the venue): the unit
//!    tests here feed every fixture of every adapter, cut and mangled, to its parser.
//! 4. Add the name to the `Venue` enum of `src/api/openapi.json` and a row to the venue tables
//!    of README.md and docs/feeds.md (a unit test here checks the OpenAPI list against
//!    [`Venue::NAMES`]).
//!
//! ## The driver
//!
//! [`spawn_feed`] runs one task per (venue, connection) that owns the socket:
//!
//! - connects with `connect_timeout`, calls [`Feed::reset`], sends
//!   [`Feed::subscribe_messages`] (paced by [`Feed::send_interval`]);
//! - reads frames and hands each text frame to [`Feed::parse`]; ticks are mapped from venue
//!   symbols to canonical instruments through [`SymbolRoutes`] (built from the instruments'
//!   `sources`) and published to the [`PriceBoard`](crate::prices::PriceBoard) — never blocking
//!   on the engine. A symbol with no route is counted (`liqwatch_feed_unknown_symbols_total`)
//!   and ignored;
//! - a refused subscription request ([`Frame::SubscribeRefused`]) is retried per symbol with
//!   backoff, a refused batch split in halves to find the symbol at fault — on the live
//!   connection when the adapter can ([`Feed::resubscribe_messages`]), else by rebuilding it;
//!   a symbol the venue calls unknown ([`Frame::SubscribeRejected`]) is logged at ERROR,
//!   counted, shown in the status, left out of new connections and retried every
//!   `unknown_retry`; venues whose rejected topic may silence the others
//!   ([`Feed::rebuild_on_rejection`], Bybit) get the connection rebuilt at once without it; an
//!   ack proves nothing on Binance, so every subscribed symbol must deliver a first data frame
//!   within `first_data_timeout`, else it is reported as unconfirmed (ERROR log, counter,
//!   status) and retried like an unknown one — and a connection on which no symbol delivered
//!   is rebuilt (the state across connections lives in `subscriptions`);
//! - keeps the transport alive: client text pings ([`Heartbeat::client_ping`]), protocol pings
//!   ([`Feed::protocol_ping_interval`]), answers server pings, sends [`Frame::Reply`] texts;
//! - transport liveness: any frame at all (data, pong, ping) proves the socket; none for
//!   `dead_after` → reconnect. Data freshness is the price board's business, so a quiet
//!   instrument never causes a reconnect;
//! - rotates the connection at [`Feed::max_connection_age`] (Binance 24 h) and on
//!   [`Frame::ReconnectSoon`], reconnecting at once (the gap is one reconnect);
//! - reconnects after errors with the one jittered exponential
//!   [`Backoff`](crate::runtime::Backoff) ([`FeedConfig::backoff`]: `backoff_initial` doubling
//!   up to `backoff_max`, each delay drawn from [½·d, d]); the backoff resets only after a
//!   connection has delivered data for `healthy_after`;
//! - runs each connection in a `feed_connection` tracing span and stops on the
//!   [`CancellationToken`](tokio_util::sync::CancellationToken).
//!
//! Status per venue ([`FeedStatus`]: connected, reconnects, and per instrument whether it is
//! subscribed, the last price, its age and staleness) comes from [`FeedRegistry::snapshot`]; it
//! is the one status type, served as is by `GET /v1/feeds`. The driver's own counters and texts
//! (frames, parse errors, unknown symbols, rejected and unconfirmed symbols, last error, URL)
//! are read from the [`FeedStatusHandle`].

pub mod binance;
pub mod bybit;
pub mod deribit;
pub mod funding; // funding rate and next funding time from the frames the feeds receive
pub mod hyperliquid;
pub mod okx;
pub mod replay;

mod driver;
mod status;
mod subscriptions;
pub mod wire;

use std::time::Duration;

use rust_decimal::Decimal;

use crate::model::{TimestampMs, Venue};

pub use driver::{FeedConfig, FeedError, run_feed, spawn_feed};
pub use status::{FeedRegistry, FeedStatus, FeedStatusHandle, InstrumentFeedStatus, SymbolRoutes};

/// Generates [`feed_for`] from the venue table.
macro_rules! adapter_lookup {
    ($( $(#[$doc:meta])* $variant:ident $name:literal $(=> $module:ident :: $adapter:ident)? ; )*) => {
        /// The adapter for a venue (a fresh one on every call), or
        /// [`FeedError::NoAdapter`] for a venue without one yet.
        pub fn feed_for(venue: Venue) -> Result<Box<dyn Feed>, FeedError> {
            match venue {
                $( Venue::$variant => adapter_lookup!(@new venue $($module::$adapter)?), )*
            }
        }
    };
    (@new $venue:ident $module:ident :: $adapter:ident) => {
        Ok(Box::new($module::$adapter::new()))
    };
    (@new $venue:ident) => {
        Err(FeedError::NoAdapter($venue))
    };
}

crate::venues::venues!(adapter_lookup);

/// A fresh adapter for every venue that has one, in [`Venue::ALL`] order (what tests and tools
/// iterate to cover every venue).
pub fn all_adapters() -> Vec<Box<dyn Feed>> {
    Venue::ALL
        .into_iter()
        .filter_map(|v| feed_for(v).ok())
        .collect()
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
    /// The venue refused a subscription request without a verdict on its symbols (Binance
    /// code 4 "Too many subscriptions", OKX 60012–60014, Deribit 10028): the driver retries
    /// them per symbol with backoff, splitting a refused batch to find the symbol at fault.
    SubscribeRefused {
        /// Every venue symbol of the refused request.
        symbols: Vec<String>,
        /// The venue's reason, verbatim.
        reason: String,
    },
    /// The venue rejected a subscription as unknown or invalid (OKX 60018, Bybit "handler not
    /// found", a Deribit channel dropped from the ack): the driver reports it and retries it
    /// only rarely (`unknown_retry`).
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
    /// A number field that is not what the one wire policy accepts ([`wire`]).
    #[error("bad number in field {field}: {value:?} ({reason})")]
    BadNumber {
        /// The field name.
        field: &'static str,
        /// The raw text (at most 64 characters of it).
        value: String,
        /// Why it was refused.
        reason: wire::NumberError,
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

    /// Subscribe messages adding `symbols` to the live connection (a retry of refused or
    /// unconfirmed subscriptions), continuing this connection's request ids so that a refusal
    /// still names its symbols. `None` (the default): this adapter cannot, and the driver
    /// rebuilds the connection to retry instead.
    fn resubscribe_messages(&mut self, _symbols: &[String]) -> Option<Vec<String>> {
        None
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture files (`.json`, `.txt`) recorded for a venue, by name.
    fn fixtures(venue: Venue) -> Vec<(String, String)> {
        let dir = format!("{}/feeds/{venue}", env!("CARGO_MANIFEST_DIR"));
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{venue}: fixtures in {dir}: {e}"));
        let mut files: Vec<_> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "txt"))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p.display().to_string(), text)
            })
            .collect()
    }

    /// Parses `text` with a fresh adapter of `venue`; an error must leave no ticks behind.
    fn parse_fresh(venue: Venue, text: &str) {
        let mut feed = feed_for(venue).unwrap();
        let mut out = Vec::new();
        if feed.parse(text, &mut out).is_err() {
            assert!(
                out.is_empty(),
                "{venue}: ticks left after an error: {text:?}"
            );
        }
    }

    /// Every row of the venue table with an adapter yields an adapter of that very venue, and
    /// only Bybit inverse has none (it answers `NoAdapter`, as before the table).
    #[test]
    fn table_maps_each_venue_to_its_adapter() {
        let mut without = Vec::new();
        for v in Venue::ALL {
            match feed_for(v) {
                Ok(feed) => assert_eq!(feed.venue(), v, "table row {v} names another adapter"),
                Err(FeedError::NoAdapter(x)) => {
                    assert_eq!(x, v);
                    without.push(v);
                }
                Err(e) => panic!("{v}: {e}"),
            }
        }
        assert_eq!(without, vec![Venue::BybitInverse]);
        let listed: Vec<Venue> = all_adapters().iter().map(|f| f.venue()).collect();
        let want: Vec<Venue> = Venue::ALL
            .into_iter()
            .filter(|v| *v != Venue::BybitInverse)
            .collect();
        assert_eq!(listed, want);
    }

    /// Every adapter in the table has recorded fixtures in `feeds/<venue>/`, and each fixture —
    /// whole, line by line, cut short or with a byte replaced — never panics the parser nor
    /// leaves ticks behind on an error. A new venue is covered by adding its table row.
    #[test]
    fn every_adapter_survives_its_mangled_fixtures() {
        for feed in all_adapters() {
            let venue = feed.venue();
            let files = fixtures(venue);
            assert!(!files.is_empty(), "{venue}: no fixtures in feeds/{venue}/");
            for (_name, text) in &files {
                let mut pieces: Vec<&str> = vec![text.as_str()];
                pieces.extend(text.lines().filter(|l| !l.trim().is_empty()));
                for piece in pieces {
                    parse_fresh(venue, piece);
                    let bytes = piece.as_bytes();
                    let step = (bytes.len() / 48).max(1);
                    for at in (0..bytes.len()).step_by(step) {
                        parse_fresh(venue, &String::from_utf8_lossy(&bytes[..at]));
                        for replacement in [b'"', b'}', b'e', b'-', b'9', 0xff] {
                            let mut mangled = bytes.to_vec();
                            mangled[at] = replacement;
                            parse_fresh(venue, &String::from_utf8_lossy(&mangled));
                        }
                    }
                }
            }
        }
    }

    /// The one status type serialises to exactly the documented `/v1/feeds` shape: the
    /// OpenAPI example read into `FeedStatus` and written back is the example, key for key.
    #[test]
    fn feed_status_is_the_documented_shape() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../api/openapi.json")).unwrap();
        let example = &doc["paths"]["/v1/feeds"]["get"]["responses"]["200"]["content"]["application/json"]
            ["example"]["feeds"];
        let feeds: Vec<FeedStatus> = serde_json::from_value(example.clone()).unwrap();
        assert_eq!(feeds.len(), 1);
        assert_eq!(&serde_json::to_value(&feeds).unwrap(), example);
    }

    /// The OpenAPI document lists exactly the venues of the table (step 4 of "Adding a venue").
    #[test]
    fn openapi_lists_every_venue() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../api/openapi.json")).unwrap();
        let listed: Vec<&str> =
            doc["components"]["schemas"]["FeedList"]["properties"]["feeds"]["items"]["properties"]
                ["venue"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
        assert_eq!(listed, Venue::NAMES);
    }
}
