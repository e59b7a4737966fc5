//! OKX v5 public adapter (`wss://ws.okx.com:8443/ws/v5/public`).
//!
//! - A contract symbol (`BTC-USDT-SWAP`, `BTC-USD-261225`: three or more dash-separated parts)
//!   subscribes the `mark-price` channel and yields ticks with `markPx` as mark; a perpetual
//!   swap (`…-SWAP`) also subscribes `funding-rate` (id `lwf<n>`), whose frames the price parse
//!   ignores and `feeds::funding` reads.
//! - An index symbol (`BTC-USDT`, `ETH-USD`: exactly two parts) subscribes `index-tickers` and
//!   yields ticks with `idxPx` as index (no mark). OKX pushes an unchanged index only once a
//!   minute, so configure its `stale_after` above 60 s.
//!
//! Each symbol goes in its own `subscribe` request with an `id` (`lw1`, `lw2`, …) so that an
//! error frame, which echoes the `id`, names the symbol it rejects. OKX acks every argument
//! separately (`{"event":"subscribe","arg":{…}}` → [`Frame::SubscribeAck`] naming the `instId`).
//! Error frames carry a **string** `code`: "unknown here" errors (60008, 60018, 64000–64002)
//! become [`Frame::SubscribeRejected`] and refusals (60012, 60013, 60014 too frequent)
//! [`Frame::SubscribeRefused`] when the symbol is known from the `id` or the message, anything
//! else [`Frame::VenueError`]. Ids continue over a connection, so a retry sent on it
//! ([`Feed::resubscribe_messages`]) is still named by its error. `notice` 64008 (service upgrade within 60 s)
//! becomes [`Frame::ReconnectSoon`].
//!
//! Keepalive: OKX cuts a connection after 30 s without traffic; the client sends the plain text
//! `ping` (default every 20 s) and the server answers with the plain text `pong`
//! ([`Frame::Pong`]). Timestamps are milliseconds as strings.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::wire::{decimal_str, integer_str};
use super::{Feed, Frame, Heartbeat, ParseError, VenueTick};
use crate::model::{TimestampMs, Venue};

/// OKX's production public WebSocket endpoint.
pub const DEFAULT_URL: &str = "wss://ws.okx.com:8443/ws/v5/public";

/// Default interval of the text `ping` (OKX cuts after 30 s of silence).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);

/// Subscription error codes that say the instrument or channel is unknown here (60018 does not
/// exist; 60008, 64000–64002 wrong endpoint or parameter): retried only rarely.
const SUBSCRIBE_ERROR_CODES: [&str; 5] = ["60008", "60018", "64000", "64001", "64002"];

/// Subscription error codes that refuse the request without a verdict on the instrument
/// (60012 invalid request, 60013 invalid args, 60014 requests too frequent): retried with
/// backoff.
const SUBSCRIBE_REFUSED_CODES: [&str; 3] = ["60012", "60013", "60014"];

/// OKX adapter state: the ping interval and the symbols sent on this connection, in `id` order.
#[derive(Debug, Clone)]
pub struct OkxFeed {
    ping_interval: Duration,
    /// `requested[n]` was sent with id `lw{n+1}`.
    requested: Vec<String>,
}

impl Default for OkxFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl OkxFeed {
    /// An adapter pinging every 20 s.
    pub fn new() -> Self {
        Self {
            ping_interval: DEFAULT_PING_INTERVAL,
            requested: Vec::new(),
        }
    }

    /// Sets the text-`ping` interval (tests use a short one; production must stay below 30 s).
    pub fn with_ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// The OKX channel a configured symbol subscribes: `index-tickers` for a two-part index name
    /// (`BTC-USDT`), else `mark-price`.
    pub fn channel_for(symbol: &str) -> &'static str {
        if symbol.split('-').count() == 2 {
            "index-tickers"
        } else {
            "mark-price"
        }
    }

    /// The symbol a request id (`lw3`) was sent for on this connection.
    fn symbol_for_id(&self, id: &str) -> Option<&str> {
        let n: usize = id.strip_prefix("lw")?.parse().ok()?;
        self.requested.get(n.checked_sub(1)?).map(String::as_str)
    }
}

/// Best effort: the `instId` named in an OKX error message
/// (`…channel:mark-price,instId:BTC-XYZ-SWAP doesn't exist…`).
fn inst_id_in_message(msg: &str) -> Option<&str> {
    let rest = &msg[msg.find("instId:")? + "instId:".len()..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == ',' || c == '"' || c == '}')
        .unwrap_or(rest.len());
    let id = &rest[..end];
    // The captured 60018 message prefixes the channel: `trades.BTC-USDT-SWAP`.
    let id = id.rsplit_once('.').map_or(id, |(_, s)| s);
    (!id.is_empty()).then_some(id)
}

// ---------------------------------------------------------------------------------------------
// Wire types (borrowed from the frame)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow)]
    event: Option<&'a str>,
    #[serde(default, borrow)]
    arg: Option<Arg<'a>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    code: Option<&'a str>,
    #[serde(default, borrow)]
    msg: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<&'a str>,
}

#[derive(Deserialize)]
struct Arg<'a> {
    #[serde(default, borrow)]
    channel: Option<&'a str>,
    #[serde(default, rename = "instId", borrow)]
    inst_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(rename = "instId", borrow)]
    inst_id: &'a str,
    #[serde(default, rename = "markPx", borrow)]
    mark_px: Option<&'a str>,
    #[serde(default, rename = "idxPx", borrow)]
    idx_px: Option<&'a str>,
    #[serde(default, borrow)]
    ts: Option<&'a str>,
}

/// Which price field of the data items to read.
#[derive(Clone, Copy)]
enum Channel {
    Mark,
    Index,
}

/// Reads the `data` array item by item straight into the output buffer (no intermediate Vec).
struct PushItems<'o, 'a> {
    channel: Channel,
    out: &'o mut Vec<VenueTick<'a>>,
}

impl<'de, 'o> DeserializeSeed<'de> for PushItems<'o, 'de> {
    type Value = Result<(), ParseError>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, 'o> Visitor<'de> for PushItems<'o, 'de> {
    type Value = Result<(), ParseError>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of OKX price items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while let Some(item) = seq.next_element::<Item<'de>>()? {
            let tick = match to_tick(self.channel, item) {
                Ok(t) => t,
                Err(e) => return Ok(Err(e)),
            };
            if let Some(t) = tick {
                self.out.push(t);
            }
        }
        Ok(Ok(()))
    }
}

fn to_tick(channel: Channel, item: Item<'_>) -> Result<Option<VenueTick<'_>>, ParseError> {
    let exchange_ts: Option<TimestampMs> = integer_str("ts", item.ts)?;
    let (mark, index) = match channel {
        Channel::Mark => (decimal_str("markPx", item.mark_px)?, None),
        Channel::Index => (None, decimal_str("idxPx", item.idx_px)?),
    };
    if mark.is_none() && index.is_none() {
        return Ok(None);
    }
    Ok(Some(VenueTick {
        symbol: item.inst_id,
        mark,
        index,
        exchange_ts,
    }))
}

impl OkxFeed {
    fn parse_event(&self, env: &Envelope<'_>, event: &str) -> Result<Frame, ParseError> {
        match event {
            "subscribe" => {
                let inst = env.arg.as_ref().and_then(|a| a.inst_id);
                Ok(Frame::SubscribeAck {
                    symbols: inst.map(str::to_string).into_iter().collect(),
                })
            }
            "unsubscribe" => Ok(Frame::Ignore),
            "notice" if env.code == Some("64008") => Ok(Frame::ReconnectSoon),
            "error" | "notice" => {
                let code = env.code.unwrap_or_default().to_string();
                let message = env.msg.as_deref().unwrap_or_default().to_string();
                let refused = SUBSCRIBE_REFUSED_CODES.contains(&code.as_str());
                if refused || SUBSCRIBE_ERROR_CODES.contains(&code.as_str()) {
                    let symbol = env
                        .id
                        .and_then(|id| self.symbol_for_id(id))
                        .or_else(|| env.arg.as_ref().and_then(|a| a.inst_id))
                        .or_else(|| inst_id_in_message(&message));
                    if let Some(symbol) = symbol {
                        if refused {
                            return Ok(Frame::SubscribeRefused {
                                symbols: vec![symbol.to_string()],
                                reason: format!("okx {code}: {message}"),
                            });
                        }
                        return Ok(Frame::SubscribeRejected {
                            symbol: Some(symbol.to_string()),
                            reason: format!("okx {code}: {message}"),
                        });
                    }
                }
                Ok(Frame::VenueError { code, message })
            }
            other => Err(ParseError::Unknown(format!("okx event {other}"))),
        }
    }
}

impl Feed for OkxFeed {
    fn venue(&self) -> Venue {
        Venue::Okx
    }

    fn default_url(&self) -> &'static str {
        DEFAULT_URL
    }

    fn subscribe_messages(&mut self, symbols: &[String]) -> Vec<String> {
        // Ids continue over the connection (`reset` starts them over), so a retry sent later
        // on the same connection still names its symbol.
        let first = self.requested.len();
        self.requested.extend(symbols.iter().cloned());
        let mut out = Vec::with_capacity(symbols.len());
        for (n, s) in symbols.iter().enumerate() {
            let inst = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
            out.push(format!(
                r#"{{"id":"lw{}","op":"subscribe","args":[{{"channel":"{}","instId":{inst}}}]}}"#,
                first + n + 1,
                Self::channel_for(s)
            ));
            // Perpetual swaps also announce their funding (read by `feeds::funding`; the
            // frames carry no price). Its own id prefix, so an error names the symbol by `arg`.
            if s.ends_with("-SWAP") {
                out.push(format!(
                    r#"{{"id":"lwf{}","op":"subscribe","args":[{{"channel":"funding-rate","instId":{inst}}}]}}"#,
                    first + n + 1
                ));
            }
        }
        out
    }

    fn resubscribe_messages(&mut self, symbols: &[String]) -> Option<Vec<String>> {
        Some(self.subscribe_messages(symbols))
    }

    fn fresh_instance(&self) -> Option<Box<dyn Feed>> {
        Some(Box::new(
            OkxFeed::new().with_ping_interval(self.ping_interval),
        ))
    }

    fn heartbeat(&self) -> Heartbeat {
        // A ping every interval is answered within milliseconds; two intervals without any
        // frame means the peer is gone (OKX itself cuts after 30 s).
        Heartbeat {
            client_ping: Some((self.ping_interval, "ping".to_string())),
            dead_after: self.ping_interval.saturating_mul(2),
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
        let trimmed = frame.trim();
        if trimmed == "pong" {
            return Ok(Frame::Pong);
        }
        if !trimmed.starts_with('{') {
            return Err(ParseError::Malformed(format!(
                "okx: not a JSON object: {:?}",
                trimmed.chars().take(40).collect::<String>()
            )));
        }
        let env: Envelope<'a> =
            serde_json::from_str(frame).map_err(|e| ParseError::Malformed(format!("okx: {e}")))?;
        if let Some(event) = env.event {
            return self.parse_event(&env, event);
        }
        let (Some(arg), Some(data)) = (env.arg.as_ref(), env.data) else {
            return Err(ParseError::Unknown(
                "okx frame without event, arg or data".into(),
            ));
        };
        let channel = match arg.channel {
            Some("mark-price") => Channel::Mark,
            Some("index-tickers") => Channel::Index,
            // Funding is read from the raw frame by the driver (`feeds::funding`).
            Some("funding-rate") => return Ok(Frame::Ignore),
            other => {
                return Err(ParseError::Unknown(format!(
                    "okx data on channel {}",
                    other.unwrap_or("<none>")
                )));
            }
        };
        let before = out.len();
        let mut de = serde_json::Deserializer::from_str(data.get());
        // All or nothing: a frame with one bad item contributes no ticks.
        match (PushItems { channel, out }).deserialize(&mut de) {
            Ok(Ok(())) => Ok(Frame::Data),
            Ok(Err(e)) => {
                out.truncate(before);
                Err(e)
            }
            Err(e) => {
                out.truncate(before);
                Err(ParseError::Malformed(format!("okx data: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feeds::wire::NumberError;
    use rust_decimal_macros::dec;

    fn fixture(name: &str) -> String {
        crate::feeds::read_fixture("okx", name)
            .trim_end()
            .to_string()
    }

    fn subscribed(symbols: &[&str]) -> OkxFeed {
        let mut f = OkxFeed::new();
        let syms: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
        f.subscribe_messages(&syms);
        f
    }

    /// One request per symbol, with an id, on the right channel (swaps also on `funding-rate`,
    /// whose frames are ignored by the price parse); text ping every 20 s.
    #[test]
    fn subscribe_messages_shape() {
        let mut f = OkxFeed::new();
        let msgs = f.subscribe_messages(&["BTC-USDT-SWAP".into(), "BTC-USDT".into()]);
        assert_eq!(
            msgs,
            vec![
                r#"{"id":"lw1","op":"subscribe","args":[{"channel":"mark-price","instId":"BTC-USDT-SWAP"}]}"#.to_string(),
                r#"{"id":"lwf1","op":"subscribe","args":[{"channel":"funding-rate","instId":"BTC-USDT-SWAP"}]}"#.to_string(),
                r#"{"id":"lw2","op":"subscribe","args":[{"channel":"index-tickers","instId":"BTC-USDT"}]}"#.to_string(),
            ]
        );
        let hb = f.heartbeat();
        assert_eq!(
            hb.client_ping,
            Some((Duration::from_secs(20), "ping".to_string()))
        );
        assert_eq!(hb.dead_after, Duration::from_secs(40));
        let f = OkxFeed::new().with_ping_interval(Duration::from_secs(5));
        assert_eq!(f.fresh_instance().unwrap().heartbeat(), f.heartbeat());
    }

    /// `funding_rate.json`: a funding-rate push yields no price (the driver reads its funding).
    #[test]
    fn fixture_funding_rate_is_not_a_price() {
        let mut f = subscribed(&["BTC-USDT-SWAP"]);
        let frame = fixture("funding_rate.json");
        let mut out = Vec::new();
        assert_eq!(f.parse(&frame, &mut out), Ok(Frame::Ignore));
        assert!(out.is_empty());
    }

    /// `subscribe_ack.json`: the per-argument ack names the instId.
    #[test]
    fn fixture_subscribe_ack() {
        let mut f = subscribed(&["LTC-USD-190628"]);
        let text = fixture("subscribe_ack.json");
        let mut out = Vec::new();
        assert_eq!(
            f.parse(&text, &mut out).unwrap(),
            Frame::SubscribeAck {
                symbols: vec!["LTC-USD-190628".into()]
            }
        );
    }

    /// `error_60012.json`: the error echoes our id, so it names the symbol we sent with it; an
    /// invalid request is a refusal (retried with backoff), not a verdict on the instrument.
    #[test]
    fn fixture_error_60012() {
        let mut f = subscribed(&["BTC-USDT-SWAP", "LTC-USD-190628"]);
        let text = fixture("error_60012.json");
        let mut out = Vec::new();
        match f.parse(&text, &mut out).unwrap() {
            Frame::SubscribeRefused { symbols, reason } => {
                assert_eq!(symbols, vec!["LTC-USD-190628".to_string()]);
                assert!(reason.starts_with("okx 60012: Invalid request"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// `error_60018.json`: no id, the instrument is read from the message.
    #[test]
    fn fixture_error_60018() {
        let mut f = subscribed(&["BTC-USDT-SWAP"]);
        let text = fixture("error_60018.json");
        let mut out = Vec::new();
        match f.parse(&text, &mut out).unwrap() {
            Frame::SubscribeRejected { symbol, reason } => {
                assert_eq!(symbol.as_deref(), Some("BTC-USDT-SWAP"));
                assert!(
                    reason.starts_with("okx 60018: Subscribe failed"),
                    "{reason}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// `error_64007.json`: an internal error not tied to a subscription is a venue error.
    #[test]
    fn fixture_error_64007() {
        let mut f = subscribed(&["BTC-USDT-SWAP"]);
        let text = fixture("error_64007.json");
        let mut out = Vec::new();
        assert_eq!(
            f.parse(&text, &mut out).unwrap(),
            Frame::VenueError {
                code: "64007".into(),
                message: "Internal server error, please try again later.".into()
            }
        );
    }

    /// `mark_price.json`: the documented push, exact mark and ms timestamp from strings.
    #[test]
    fn fixture_mark_price() {
        let mut f = subscribed(&["LTC-USD-190628"]);
        let text = fixture("mark_price.json");
        let mut out = Vec::new();
        assert_eq!(f.parse(&text, &mut out).unwrap(), Frame::Data);
        assert_eq!(
            out,
            vec![VenueTick {
                symbol: "LTC-USD-190628",
                mark: Some(dec!(0.1)),
                index: None,
                exchange_ts: Some(1_597_026_383_085),
            }]
        );
    }

    /// `mark_price_multi.json`: two items in one push give two ticks in order.
    #[test]
    fn fixture_mark_price_multi() {
        let mut f = subscribed(&["BTC-USDT-SWAP"]);
        let text = fixture("mark_price_multi.json");
        let mut out = Vec::new();
        assert_eq!(f.parse(&text, &mut out).unwrap(), Frame::Data);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].symbol, "BTC-USDT-SWAP");
        assert_eq!(out[0].mark, Some(dec!(84612.3)));
        assert_eq!(out[1].symbol, "BTC-USDT-SWAP");
        assert_eq!(out[1].mark, Some(dec!(84613.1)));
        assert_eq!(out[1].exchange_ts, Some(1_740_830_317_079));
    }

    /// `index_tickers.json`: the index push gives an index-only tick.
    #[test]
    fn fixture_index_tickers() {
        let mut f = subscribed(&["BTC-USDT"]);
        let text = fixture("index_tickers.json");
        let mut out = Vec::new();
        assert_eq!(f.parse(&text, &mut out).unwrap(), Frame::Data);
        assert_eq!(
            out,
            vec![VenueTick {
                symbol: "BTC-USDT",
                mark: None,
                index: Some(dec!(84631.5)),
                exchange_ts: Some(1_740_830_316_879),
            }]
        );
    }

    /// `pong.txt`: the bare text pong.
    #[test]
    fn fixture_pong() {
        let mut f = subscribed(&["BTC-USDT-SWAP"]);
        let text = fixture("pong.txt");
        let mut out = Vec::new();
        assert_eq!(f.parse(&text, &mut out).unwrap(), Frame::Pong);
    }

    /// `notice_64008.json`: the upgrade notice asks for an early reconnect.
    #[test]
    fn fixture_notice_64008() {
        let mut f = subscribed(&["BTC-USDT-SWAP"]);
        let text = fixture("notice_64008.json");
        let mut out = Vec::new();
        assert_eq!(f.parse(&text, &mut out).unwrap(), Frame::ReconnectSoon);
    }

    /// `malformed_truncated.txt`, `malformed_price.json`, `malformed_text.txt`: errors, no ticks.
    #[test]
    fn fixture_malformed() {
        let mut f = subscribed(&["BTC-USDT-SWAP"]);
        let text = fixture("malformed_truncated.txt");
        let mut out = Vec::new();
        assert!(matches!(
            f.parse(&text, &mut out),
            Err(ParseError::Malformed(_))
        ));
        let text = fixture("malformed_price.json");
        assert_eq!(
            f.parse(&text, &mut out),
            Err(ParseError::BadNumber {
                field: "markPx",
                value: "84,612.3".into(),
                reason: NumberError::Malformed,
            })
        );
        let text = fixture("malformed_text.txt");
        assert!(matches!(
            f.parse(&text, &mut out),
            Err(ParseError::Malformed(_))
        ));
        assert!(out.is_empty(), "a frame with one bad item adds nothing");
    }

    /// Index symbols have two parts; contracts more.
    #[test]
    fn channel_for_symbol() {
        assert_eq!(OkxFeed::channel_for("BTC-USDT"), "index-tickers");
        assert_eq!(OkxFeed::channel_for("BTC-USDT-SWAP"), "mark-price");
        assert_eq!(OkxFeed::channel_for("BTC-USD-261225"), "mark-price");
        assert_eq!(
            inst_id_in_message("x instId:ETH-USDT-SWAP doesn't"),
            Some("ETH-USDT-SWAP")
        );
        assert_eq!(inst_id_in_message("nothing here"), None);
    }
}
