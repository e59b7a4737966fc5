//! Deribit adapter (JSON-RPC 2.0 over WebSocket, `wss://www.deribit.com/ws/api/v2`).
//!
//! On every connection it sends `public/set_heartbeat` (interval ≥ 10 s) and one
//! `public/subscribe` for all channels:
//!
//! - an instrument symbol (`BTC-PERPETUAL`, `BTC_USDC-PERPETUAL`, `ETH-27DEC26`) subscribes
//!   `ticker.<symbol>.100ms` and yields ticks with `mark_price` as mark and `index_price` as index;
//! - an index name (all lowercase, `btc_usd`, `eth_usdc`) subscribes
//!   `deribit_price_index.<name>` and yields ticks with `price` as index (no mark).
//!
//! Deribit silently drops channels it does not know: the ack's `result` lists only the accepted
//! channels, so the adapter compares it with what it requested and reports the missing ones as
//! one [`Frame::SubscribeRejected`] whose `symbol` lists them comma-separated (the driver splits
//! the list and leaves each out of later connections). The server's
//! `test_request` heartbeats are answered with `public/test` through [`Frame::Reply`]; the answer
//! to that comes back as [`Frame::Pong`].
//!
//! Deribit sends prices as JSON **numbers**, sometimes in exponent form (`1.423e-4`). They are
//! read as raw number text ([`serde_json::value::RawValue`]) and converted exactly by
//! [`wire::decimal_raw`](super::wire::decimal_raw) — the one wire-decimal policy — never
//! through `f64`.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::wire::{decimal_raw, integer_raw};
use super::{Feed, Frame, Heartbeat, ParseError, VenueTick};
use crate::model::Venue;

/// Deribit's production JSON-RPC WebSocket endpoint.
pub const DEFAULT_URL: &str = "wss://www.deribit.com/ws/api/v2";

/// Default `public/set_heartbeat` interval (Deribit advises 30–60 s; the minimum is 10 s).
pub const DEFAULT_HEARTBEAT_INTERVAL_SECS: u64 = 30;

/// The smallest interval Deribit accepts.
pub const MIN_HEARTBEAT_INTERVAL_SECS: u64 = 10;

/// JSON-RPC id of the `public/set_heartbeat` request.
const HEARTBEAT_ID: u64 = 1;
/// JSON-RPC id of the `public/subscribe` request.
const SUBSCRIBE_ID: u64 = 2;
/// `public/test` answers to `test_request` use ids from here upwards.
const TEST_ID_BASE: u64 = 1_000_000;

/// Deribit adapter state: the channels requested on the current connection and the id counter
/// for `public/test` answers.
#[derive(Debug, Clone)]
pub struct DeribitFeed {
    heartbeat_interval_secs: u64,
    /// Channels sent in the current connection's `public/subscribe`.
    requested: Vec<String>,
    next_test_id: u64,
}

impl Default for DeribitFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl DeribitFeed {
    /// An adapter with the default 30 s heartbeat interval.
    pub fn new() -> Self {
        Self {
            heartbeat_interval_secs: DEFAULT_HEARTBEAT_INTERVAL_SECS,
            requested: Vec::new(),
            next_test_id: TEST_ID_BASE,
        }
    }

    /// Sets the `public/set_heartbeat` interval, clamped up to Deribit's 10 s minimum.
    pub fn with_heartbeat_interval(mut self, secs: u64) -> Self {
        self.heartbeat_interval_secs = secs.max(MIN_HEARTBEAT_INTERVAL_SECS);
        self
    }

    /// The channel a configured symbol subscribes: `deribit_price_index.<name>` for an index
    /// name (lowercase, e.g. `btc_usd`), else `ticker.<symbol>.100ms`.
    pub fn channel_for(symbol: &str) -> String {
        if is_index_name(symbol) {
            format!("deribit_price_index.{symbol}")
        } else {
            format!("ticker.{symbol}.100ms")
        }
    }

    /// The venue symbol named by a channel (`ticker.BTC-PERPETUAL.100ms` → `BTC-PERPETUAL`,
    /// `deribit_price_index.btc_usd` → `btc_usd`), if it is one of the price channels.
    pub fn symbol_of_channel(channel: &str) -> Option<&str> {
        if let Some(rest) = channel.strip_prefix("ticker.") {
            let (sym, _interval) = rest.rsplit_once('.')?;
            (!sym.is_empty()).then_some(sym)
        } else {
            channel
                .strip_prefix("deribit_price_index.")
                .filter(|s| !s.is_empty())
        }
    }

    fn test_reply(&mut self) -> String {
        let id = self.next_test_id;
        self.next_test_id = self.next_test_id.wrapping_add(1).max(TEST_ID_BASE);
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"public/test","params":{{}}}}"#)
    }

    fn parse_response(&self, env: &Envelope<'_>) -> Result<Frame, ParseError> {
        let id = env.id.unwrap_or(0);
        if let Some(err) = &env.error {
            let code = err.code.map(|c| c.get().to_string()).unwrap_or_default();
            let message = err.message.as_deref().unwrap_or_default().to_string();
            // 10028 too_many_requests is transient: not a verdict on the channels, a refusal
            // of the request (the driver retries after backoff).
            if id == SUBSCRIBE_ID && code == "10028" {
                return Ok(Frame::SubscribeRefused {
                    symbols: self
                        .requested
                        .iter()
                        .filter_map(|c| Self::symbol_of_channel(c))
                        .map(str::to_string)
                        .collect(),
                    reason: format!("deribit error {code} {message}"),
                });
            }
            if id == SUBSCRIBE_ID && !self.requested.is_empty() {
                let symbol = match self.requested.as_slice() {
                    [one] => Self::symbol_of_channel(one).map(str::to_string),
                    _ => None,
                };
                return Ok(Frame::SubscribeRejected {
                    symbol,
                    reason: format!(
                        "deribit error {code} {message} for channels {}",
                        self.requested.join(", ")
                    ),
                });
            }
            return Ok(Frame::VenueError { code, message });
        }
        let Some(result) = env.result else {
            return Err(ParseError::Malformed(
                "deribit response without result or error".into(),
            ));
        };
        match id {
            SUBSCRIBE_ID => {
                let accepted: Vec<&str> = serde_json::from_str(result.get())
                    .map_err(|e| ParseError::Malformed(format!("deribit subscribe result: {e}")))?;
                let missing: Vec<&str> = self
                    .requested
                    .iter()
                    .map(String::as_str)
                    .filter(|r| !accepted.contains(r))
                    .collect();
                if !missing.is_empty() {
                    // Comma-joined: the driver splits the list and leaves each one out.
                    let symbols: Vec<&str> = missing
                        .iter()
                        .filter_map(|c| Self::symbol_of_channel(c))
                        .collect();
                    return Ok(Frame::SubscribeRejected {
                        symbol: (!symbols.is_empty()).then(|| symbols.join(",")),
                        reason: format!(
                            "deribit did not confirm channel(s) {} (unknown instrument or index?)",
                            missing.join(", ")
                        ),
                    });
                }
                Ok(Frame::SubscribeAck {
                    symbols: accepted
                        .iter()
                        .filter_map(|c| Self::symbol_of_channel(c))
                        .map(str::to_string)
                        .collect(),
                })
            }
            HEARTBEAT_ID => Ok(Frame::Ignore),
            id if id >= TEST_ID_BASE => Ok(Frame::Pong),
            _ => Ok(Frame::Ignore),
        }
    }
}

/// True for Deribit index names such as `btc_usd`: lowercase ASCII letters, digits and `_`.
fn is_index_name(symbol: &str) -> bool {
    !symbol.is_empty()
        && symbol.contains('_')
        && symbol
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

// ---------------------------------------------------------------------------------------------
// Wire types (borrowed from the frame)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    method: Option<&'a str>,
    #[serde(default, borrow)]
    params: Option<Params<'a>>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<RpcError<'a>>,
}

#[derive(Deserialize)]
struct RpcError<'a> {
    #[serde(default, borrow)]
    code: Option<&'a RawValue>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

/// `params` of a notification (`channel`, `data`) or of a heartbeat (`type`), read in the same
/// pass as the envelope; `data` stays raw until the channel says what it is.
#[derive(Deserialize)]
struct Params<'a> {
    #[serde(default, borrow)]
    channel: Option<&'a str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, rename = "type", borrow)]
    kind: Option<&'a str>,
}

#[derive(Deserialize)]
struct TickerData<'a> {
    #[serde(default, borrow)]
    mark_price: Option<&'a RawValue>,
    #[serde(default, borrow)]
    index_price: Option<&'a RawValue>,
    #[serde(default, borrow)]
    timestamp: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct IndexData<'a> {
    #[serde(default, borrow)]
    price: Option<&'a RawValue>,
    #[serde(default, borrow)]
    timestamp: Option<&'a RawValue>,
}

fn malformed(e: serde_json::Error) -> ParseError {
    ParseError::Malformed(format!("deribit: {e}"))
}

impl Feed for DeribitFeed {
    fn venue(&self) -> Venue {
        Venue::Deribit
    }

    fn default_url(&self) -> &'static str {
        DEFAULT_URL
    }

    fn subscribe_messages(&mut self, symbols: &[String]) -> Vec<String> {
        self.requested = symbols.iter().map(|s| Self::channel_for(s)).collect();
        let mut msgs = vec![format!(
            r#"{{"jsonrpc":"2.0","id":{HEARTBEAT_ID},"method":"public/set_heartbeat","params":{{"interval":{}}}}}"#,
            self.heartbeat_interval_secs
        )];
        if !self.requested.is_empty() {
            let channels = serde_json::to_string(&self.requested).unwrap_or_else(|_| "[]".into());
            msgs.push(format!(
                r#"{{"jsonrpc":"2.0","id":{SUBSCRIBE_ID},"method":"public/subscribe","params":{{"channels":{channels}}}}}"#
            ));
        }
        msgs
    }

    fn fresh_instance(&self) -> Option<Box<dyn Feed>> {
        Some(Box::new(
            DeribitFeed::new().with_heartbeat_interval(self.heartbeat_interval_secs),
        ))
    }

    fn heartbeat(&self) -> Heartbeat {
        // The server sends `heartbeat`/`test_request` every interval on an idle socket and
        // ticker data every 100 ms on a busy one: two and a half intervals without any frame
        // means the peer is gone.
        Heartbeat {
            client_ping: None,
            dead_after: Duration::from_millis(self.heartbeat_interval_secs * 2500),
        }
    }

    fn reset(&mut self) {
        self.requested.clear();
    }

    fn parse<'a>(
        &mut self,
        frame: &'a str,
        out: &mut Vec<VenueTick<'a>>,
    ) -> Result<Frame, ParseError> {
        let env: Envelope<'a> = serde_json::from_str(frame).map_err(malformed)?;
        match env.method {
            Some("subscription") => {
                let (Some(channel), Some(data)) = (
                    env.params.as_ref().and_then(|p| p.channel),
                    env.params.as_ref().and_then(|p| p.data),
                ) else {
                    return Err(ParseError::Malformed(
                        "deribit notification without params.channel and params.data".into(),
                    ));
                };
                if let Some(symbol) = channel.strip_prefix("ticker.") {
                    let symbol = symbol.rsplit_once('.').map_or(symbol, |(s, _)| s);
                    let d: TickerData<'a> = serde_json::from_str(data.get()).map_err(malformed)?;
                    let mark = decimal_raw("mark_price", d.mark_price)?;
                    let index = decimal_raw("index_price", d.index_price)?;
                    let exchange_ts = integer_raw("timestamp", d.timestamp)?;
                    if mark.is_some() || index.is_some() {
                        out.push(VenueTick {
                            symbol,
                            mark,
                            index,
                            exchange_ts,
                        });
                    }
                    Ok(Frame::Data)
                } else if let Some(symbol) = channel.strip_prefix("deribit_price_index.") {
                    let d: IndexData<'a> = serde_json::from_str(data.get()).map_err(malformed)?;
                    let index = decimal_raw("price", d.price)?;
                    let exchange_ts = integer_raw("timestamp", d.timestamp)?;
                    if index.is_some() {
                        out.push(VenueTick {
                            symbol,
                            mark: None,
                            index,
                            exchange_ts,
                        });
                    }
                    Ok(Frame::Data)
                } else {
                    Err(ParseError::Unknown(format!(
                        "deribit notification on channel {channel}"
                    )))
                }
            }
            Some("heartbeat") => {
                match env.params.as_ref().and_then(|p| p.kind).unwrap_or_default() {
                    "test_request" => Ok(Frame::Reply(self.test_reply())),
                    "heartbeat" => Ok(Frame::Ignore),
                    other => Err(ParseError::Unknown(format!(
                        "deribit heartbeat type {other}"
                    ))),
                }
            }
            Some(other) => Err(ParseError::Unknown(format!("deribit method {other}"))),
            None => self.parse_response(&env),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feeds::wire::NumberError;
    use rust_decimal_macros::dec;

    fn fixture(name: &str) -> String {
        crate::feeds::read_fixture("deribit", name)
            .trim_end()
            .to_string()
    }

    fn subscribed(symbols: &[&str]) -> DeribitFeed {
        let mut f = DeribitFeed::new();
        let syms: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
        f.subscribe_messages(&syms);
        f
    }

    /// The subscribe messages set the heartbeat first, then one batch subscribe with both kinds
    /// of channel.
    #[test]
    fn subscribe_messages_shape() {
        let mut f = DeribitFeed::new().with_heartbeat_interval(3);
        let msgs = f.subscribe_messages(&["BTC-PERPETUAL".into(), "btc_usd".into()]);
        assert_eq!(
            msgs,
            vec![
                r#"{"jsonrpc":"2.0","id":1,"method":"public/set_heartbeat","params":{"interval":10}}"#
                    .to_string(),
                r#"{"jsonrpc":"2.0","id":2,"method":"public/subscribe","params":{"channels":["ticker.BTC-PERPETUAL.100ms","deribit_price_index.btc_usd"]}}"#
                    .to_string(),
            ]
        );
        assert_eq!(f.heartbeat().client_ping, None);
        assert_eq!(f.heartbeat().dead_after, Duration::from_secs(25));
        let mut fresh = f.fresh_instance().unwrap();
        assert_eq!(fresh.heartbeat(), f.heartbeat());
        assert!(fresh.subscribe_messages(&[])[0].contains(r#""interval":10"#));
    }

    /// `subscribe_ack.json`: every requested channel confirmed (in another order) → ack naming
    /// the symbols.
    #[test]
    fn fixture_subscribe_ack() {
        let mut f = subscribed(&["BTC-PERPETUAL", "btc_usd"]);
        let text = fixture("subscribe_ack.json");
        let mut out = Vec::new();
        assert_eq!(
            f.parse(&text, &mut out).unwrap(),
            Frame::SubscribeAck {
                symbols: vec!["btc_usd".into(), "BTC-PERPETUAL".into()]
            }
        );
        assert!(out.is_empty());
    }

    /// `subscribe_ack_empty.json`: the only channel requested was silently dropped → rejected,
    /// naming it.
    #[test]
    fn fixture_subscribe_ack_empty() {
        let mut f = subscribed(&["NOPE-PERPETUAL"]);
        let text = fixture("subscribe_ack_empty.json");
        let mut out = Vec::new();
        match f.parse(&text, &mut out).unwrap() {
            Frame::SubscribeRejected { symbol, reason } => {
                assert_eq!(symbol.as_deref(), Some("NOPE-PERPETUAL"));
                assert!(reason.contains("ticker.NOPE-PERPETUAL.100ms"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// `subscribe_ack_partial.json`: two of four channels missing → one rejection naming both.
    #[test]
    fn fixture_subscribe_ack_partial() {
        let mut f = subscribed(&["BTC-PERPETUAL", "NOPE-PERPETUAL", "btc_usd", "nope_usd"]);
        let text = fixture("subscribe_ack_partial.json");
        let mut out = Vec::new();
        match f.parse(&text, &mut out).unwrap() {
            Frame::SubscribeRejected { symbol, reason } => {
                assert_eq!(symbol.as_deref(), Some("NOPE-PERPETUAL,nope_usd"));
                assert!(
                    reason.contains("ticker.NOPE-PERPETUAL.100ms, deribit_price_index.nope_usd"),
                    "{reason}"
                );
                assert!(!reason.contains("btc_usd"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// `subscribe_error.json`: an explicit error for the subscribe request → rejected; the
    /// transient 10028 `too_many_requests` is a refusal of every requested symbol (retried).
    #[test]
    fn fixture_subscribe_error() {
        let mut f = subscribed(&["BTC-PERPETUAL"]);
        let text = fixture("subscribe_error.json");
        let mut out = Vec::new();
        match f.parse(&text, &mut out).unwrap() {
            Frame::SubscribeRejected { symbol, reason } => {
                assert_eq!(symbol.as_deref(), Some("BTC-PERPETUAL"));
                assert!(
                    reason.contains("13778 raw_subscriptions_not_available_for_unauthorized"),
                    "{reason}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let busy =
            r#"{"jsonrpc":"2.0","id":2,"error":{"code":10028,"message":"too_many_requests"}}"#;
        assert_eq!(
            f.parse(busy, &mut out).unwrap(),
            Frame::SubscribeRefused {
                symbols: vec!["BTC-PERPETUAL".into()],
                reason: "deribit error 10028 too_many_requests".into()
            }
        );
    }

    /// `error_bad_request.json`: an error with no id → venue error with code and message.
    #[test]
    fn fixture_error_bad_request() {
        let mut f = subscribed(&["BTC-PERPETUAL"]);
        let text = fixture("error_bad_request.json");
        let mut out = Vec::new();
        assert_eq!(
            f.parse(&text, &mut out).unwrap(),
            Frame::VenueError {
                code: "11050".into(),
                message: "bad_request".into()
            }
        );
    }

    /// `ticker.json`: mark and index from JSON numbers, exponent-form neighbours ignored exactly.
    #[test]
    fn fixture_ticker() {
        let mut f = subscribed(&["BTC_USDC-PERPETUAL"]);
        let text = fixture("ticker.json");
        let mut out = Vec::new();
        assert_eq!(f.parse(&text, &mut out).unwrap(), Frame::Data);
        assert_eq!(
            out,
            vec![VenueTick {
                symbol: "BTC_USDC-PERPETUAL",
                mark: Some(dec!(86778.14)),
                index: Some(dec!(86744.11)),
                exchange_ts: Some(1_790_133_840_887),
            }]
        );
    }

    /// `ticker_exponent.json`: a mark price written in exponent form is exact.
    #[test]
    fn fixture_ticker_exponent() {
        let mut f = subscribed(&["SHIB_USDC-PERPETUAL"]);
        let text = fixture("ticker_exponent.json");
        let mut out = Vec::new();
        assert_eq!(f.parse(&text, &mut out).unwrap(), Frame::Data);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].symbol, "SHIB_USDC-PERPETUAL");
        assert_eq!(out[0].mark, Some(dec!(0.00001423)));
        assert_eq!(out[0].index, Some(dec!(0.000014229)));
    }

    /// `price_index.json`: the index channel gives an index-only tick.
    #[test]
    fn fixture_price_index() {
        let mut f = subscribed(&["btc_usd"]);
        let text = fixture("price_index.json");
        let mut out = Vec::new();
        assert_eq!(f.parse(&text, &mut out).unwrap(), Frame::Data);
        assert_eq!(
            out,
            vec![VenueTick {
                symbol: "btc_usd",
                mark: None,
                index: Some(dec!(6521.17)),
                exchange_ts: Some(1_535_098_298_227),
            }]
        );
    }

    /// `test_request.json`: answered with `public/test`, and its result counts as a pong.
    #[test]
    fn fixture_test_request_and_reply() {
        let mut f = subscribed(&["BTC-PERPETUAL"]);
        let text = fixture("test_request.json");
        let mut out = Vec::new();
        let reply = f.parse(&text, &mut out).unwrap();
        assert_eq!(
            reply,
            Frame::Reply(
                r#"{"jsonrpc":"2.0","id":1000000,"method":"public/test","params":{}}"#.into()
            )
        );
        let answer = fixture("test_result.json");
        assert_eq!(f.parse(&answer, &mut out).unwrap(), Frame::Pong);
        assert!(out.is_empty());
    }

    /// `heartbeat.json` (informational) and `set_heartbeat_ok.json` are ignored.
    #[test]
    fn fixture_heartbeat_and_setup_ok() {
        let mut f = subscribed(&["BTC-PERPETUAL"]);
        for name in ["heartbeat.json", "set_heartbeat_ok.json"] {
            let text = fixture(name);
            let mut out = Vec::new();
            assert_eq!(f.parse(&text, &mut out).unwrap(), Frame::Ignore, "{name}");
            assert!(out.is_empty());
        }
    }

    /// `malformed_truncated.txt`, `malformed_price.json`: clear errors, nothing emitted.
    #[test]
    fn fixture_malformed() {
        let mut f = subscribed(&["BTC-PERPETUAL"]);
        let mut out = Vec::new();
        let text = fixture("malformed_truncated.txt");
        assert!(matches!(
            f.parse(&text, &mut out),
            Err(ParseError::Malformed(_))
        ));
        let text = fixture("malformed_price.json");
        assert_eq!(
            f.parse(&text, &mut out),
            Err(ParseError::BadNumber {
                field: "mark_price",
                value: "\"86778.14\"".into(),
                reason: NumberError::Malformed,
            })
        );
        assert!(out.is_empty());
    }

    /// Channel ↔ symbol mapping in both directions.
    #[test]
    fn channel_symbol_mapping() {
        for (sym, ch) in [
            ("BTC-PERPETUAL", "ticker.BTC-PERPETUAL.100ms"),
            ("BTC_USDC-PERPETUAL", "ticker.BTC_USDC-PERPETUAL.100ms"),
            ("eth_usdc", "deribit_price_index.eth_usdc"),
        ] {
            assert_eq!(DeribitFeed::channel_for(sym), ch);
            assert_eq!(DeribitFeed::symbol_of_channel(ch), Some(sym));
        }
        assert_eq!(DeribitFeed::symbol_of_channel("platform_state"), None);
    }
}
