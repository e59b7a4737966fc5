//! Hyperliquid adapter (`wss://api.hyperliquid.xyz/ws`).
//!
//! Subscribes `activeAssetCtx` per coin (`BTC`, `ETH`, HIP-3 `xyz:SP500`): ticks carry `markPx`
//! as mark and `oraclePx` as index (spot contexts have no oracle price). `allMids` can be added
//! with [`HyperliquidFeed::with_all_mids`]: its mids are **not** marks, yet they are published
//! as mark-price ticks for every coin in the frame, so opt in only when a mid is an acceptable
//! price (the venue throttled `allMids` to about one push per 5 s in 2026).
//!
//! Hyperliquid quirks handled here:
//! - no venue timestamps: ticks carry `exchange_ts: None`, the driver stamps receive time;
//! - the plain text `Websocket connection established.` is [`Frame::Ignore`];
//! - keepalive is `{"method":"ping"}` (every 20 s by default; the server cuts after 60 s of
//!   silence) answered by `{"channel":"pong"}`;
//! - the ack `subscriptionResponse` names the coin; `{"channel":"error","data":"…"}` is a
//!   [`Frame::VenueError`];
//! - **an unknown coin closes the socket** without any reply: the driver sees the close and
//!   reconnects, and the adapter works out which coin did it (see [`HyperliquidFeed`]), stops
//!   subscribing it and reports it as rejected. Configure only coins from the venue's `meta`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::wire::decimal_str;
use super::{Feed, Frame, Heartbeat, ParseError, VenueTick};
use crate::model::Venue;

/// Hyperliquid's mainnet WebSocket endpoint.
pub const DEFAULT_URL: &str = "wss://api.hyperliquid.xyz/ws";

/// Default interval of `{"method":"ping"}` (the server closes after 60 s of silence).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);

/// The plain-text greeting some Hyperliquid servers send after the handshake.
pub const WELCOME_TEXT: &str = "Websocket connection established.";

/// Consecutive connections that must die right at a coin's subscription, after other coins on
/// the same connection were acknowledged, before the coin is declared unknown.
pub const UNKNOWN_COIN_STRIKES: u32 = 2;

/// Hyperliquid adapter: configuration plus the bookkeeping that recognises an unknown coin.
///
/// Hyperliquid answers a subscription to an unknown coin by dropping the socket, with no error
/// frame. Subscriptions are processed in order, so when a connection ends with some coins
/// acknowledged and the next one not, that next coin is the suspect: it is moved to the end of
/// the subscription order, and after [`UNKNOWN_COIN_STRIKES`] such connections in a row it is
/// no longer subscribed and reported once as [`Frame::SubscribeRejected`] (in place of the next
/// connection's first control frame, e.g. the welcome text), so the driver shows it as rejected
/// and leaves it out. A network drop at the same moment twice in a row is needed to reject a good
/// coin, and an acknowledgement or price clears its strikes.
#[derive(Debug, Clone)]
pub struct HyperliquidFeed {
    ping_interval: Duration,
    all_mids: bool,
    /// Coins subscribed on the current connection, in order.
    requested: Vec<String>,
    /// Coins acknowledged (or priced) on the current connection.
    acked: HashSet<String>,
    /// Suspects moved to the end of the order, with their strike count.
    strikes: HashMap<String, u32>,
    /// Coins declared unknown: never subscribed again.
    unknown: HashSet<String>,
    /// A rejection to report on the next control frame.
    pending_report: Option<(String, String)>,
}

impl Default for HyperliquidFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl HyperliquidFeed {
    /// An adapter subscribing `activeAssetCtx` per coin and pinging every 20 s.
    pub fn new() -> Self {
        Self {
            ping_interval: DEFAULT_PING_INTERVAL,
            all_mids: false,
            requested: Vec::new(),
            acked: HashSet::new(),
            strikes: HashMap::new(),
            unknown: HashSet::new(),
            pending_report: None,
        }
    }

    /// Sets the ping interval (tests use a short one; production must stay well below 60 s).
    pub fn with_ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Also subscribes `allMids` and publishes each coin's mid as a mark-price tick.
    pub fn with_all_mids(mut self) -> Self {
        self.all_mids = true;
        self
    }

    fn confirm(&mut self, coin: &str) {
        if !self.acked.contains(coin) {
            self.acked.insert(coin.to_string());
        }
        self.strikes.remove(coin);
    }

    /// Looks at how the previous connection ended (called when a new one starts).
    fn judge_previous_connection(&mut self) {
        let Some(suspect) = self
            .requested
            .iter()
            .find(|c| !self.acked.contains(*c))
            .cloned()
        else {
            return;
        };
        let others_acked = !self.acked.is_empty();
        let strikes = self.strikes.entry(suspect.clone()).or_insert(0);
        if others_acked {
            *strikes += 1;
        }
        if *strikes >= UNKNOWN_COIN_STRIKES {
            let n = *strikes;
            self.strikes.remove(&suspect);
            self.unknown.insert(suspect.clone());
            self.pending_report = Some((
                suspect,
                format!(
                    "hyperliquid dropped the connection right after this coin's subscription {n} times in a row, without an ack: unknown coin (use names from the venue's meta)"
                ),
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types (borrowed from the frame)
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    channel: &'a str,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AssetCtx<'a> {
    #[serde(borrow)]
    coin: &'a str,
    #[serde(borrow)]
    ctx: Ctx<'a>,
}

#[derive(Deserialize)]
struct Ctx<'a> {
    #[serde(default, rename = "markPx", borrow)]
    mark_px: Option<&'a str>,
    #[serde(default, rename = "oraclePx", borrow)]
    oracle_px: Option<&'a str>,
}

#[derive(Deserialize)]
struct SubResponse<'a> {
    #[serde(default, borrow)]
    method: Option<&'a str>,
    #[serde(default, borrow)]
    subscription: Option<SubArgs<'a>>,
}

#[derive(Deserialize)]
struct SubArgs<'a> {
    #[serde(default, borrow)]
    coin: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AllMids<'a> {
    #[serde(borrow)]
    mids: &'a RawValue,
}

/// Reads the `mids` object entry by entry straight into the output buffer.
struct PushMids<'o, 'a> {
    out: &'o mut Vec<VenueTick<'a>>,
}

impl<'de, 'o> DeserializeSeed<'de> for PushMids<'o, 'de> {
    type Value = Result<(), ParseError>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, 'o> Visitor<'de> for PushMids<'o, 'de> {
    type Value = Result<(), ParseError>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map of coin to mid price")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while let Some((coin, mid)) = map.next_entry::<&'de str, &'de str>()? {
            match decimal_str("mids", Some(mid)) {
                Ok(Some(mark)) => self.out.push(VenueTick {
                    symbol: coin,
                    mark: Some(mark),
                    index: None,
                    exchange_ts: None,
                }),
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(()))
    }
}

fn malformed(e: serde_json::Error) -> ParseError {
    ParseError::Malformed(format!("hyperliquid: {e}"))
}

fn need_data<'a>(data: Option<&'a RawValue>, channel: &str) -> Result<&'a RawValue, ParseError> {
    data.ok_or_else(|| ParseError::Malformed(format!("hyperliquid {channel} without data")))
}

impl Feed for HyperliquidFeed {
    fn venue(&self) -> Venue {
        Venue::Hyperliquid
    }

    fn default_url(&self) -> &'static str {
        DEFAULT_URL
    }

    fn subscribe_messages(&mut self, symbols: &[String]) -> Vec<String> {
        // Known-good coins first, suspects last, unknown coins never.
        let mut order: Vec<&String> = symbols
            .iter()
            .filter(|c| !self.unknown.contains(*c))
            .collect();
        order.sort_by_key(|c| self.strikes.contains_key(*c));
        self.requested = order.iter().map(|c| (*c).clone()).collect();
        let mut msgs: Vec<String> = order
            .iter()
            .map(|coin| {
                let coin = serde_json::to_string(coin).unwrap_or_else(|_| "\"\"".into());
                format!(
                    r#"{{"method":"subscribe","subscription":{{"type":"activeAssetCtx","coin":{coin}}}}}"#
                )
            })
            .collect();
        if self.all_mids {
            msgs.push(r#"{"method":"subscribe","subscription":{"type":"allMids"}}"#.to_string());
        }
        msgs
    }

    fn reset(&mut self) {
        self.judge_previous_connection();
        self.requested.clear();
        self.acked.clear();
    }

    fn fresh_instance(&self) -> Option<Box<dyn Feed>> {
        // Same settings; coins found unknown stay unknown.
        let mut f = HyperliquidFeed::new().with_ping_interval(self.ping_interval);
        f.all_mids = self.all_mids;
        f.unknown = self.unknown.clone();
        Some(Box::new(f))
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            client_ping: Some((self.ping_interval, r#"{"method":"ping"}"#.to_string())),
            dead_after: self.ping_interval.saturating_mul(2),
        }
    }

    fn parse<'a>(
        &mut self,
        frame: &'a str,
        out: &mut Vec<VenueTick<'a>>,
    ) -> Result<Frame, ParseError> {
        let parsed = self.parse_frame(frame, out);
        if let Ok(f) = &parsed
            && *f != Frame::Data
            && let Some((symbol, reason)) = self.pending_report.take()
        {
            return Ok(Frame::SubscribeRejected {
                symbol: Some(symbol),
                reason,
            });
        }
        parsed
    }
}

impl HyperliquidFeed {
    fn parse_frame<'a>(
        &mut self,
        frame: &'a str,
        out: &mut Vec<VenueTick<'a>>,
    ) -> Result<Frame, ParseError> {
        let trimmed = frame.trim();
        if trimmed == WELCOME_TEXT {
            return Ok(Frame::Ignore);
        }
        if !trimmed.starts_with('{') {
            return Err(ParseError::Malformed(format!(
                "hyperliquid: not a JSON object: {:?}",
                trimmed.chars().take(40).collect::<String>()
            )));
        }
        let env: Envelope<'a> = serde_json::from_str(frame).map_err(malformed)?;
        match env.channel {
            "activeAssetCtx" => {
                let data = need_data(env.data, env.channel)?;
                let a: AssetCtx<'a> = serde_json::from_str(data.get()).map_err(malformed)?;
                let mark = decimal_str("markPx", a.ctx.mark_px)?;
                let index = decimal_str("oraclePx", a.ctx.oracle_px)?;
                self.confirm(a.coin);
                if mark.is_some() || index.is_some() {
                    out.push(VenueTick {
                        symbol: a.coin,
                        mark,
                        index,
                        exchange_ts: None,
                    });
                }
                Ok(Frame::Data)
            }
            "allMids" => {
                let data = need_data(env.data, env.channel)?;
                let m: AllMids<'a> = serde_json::from_str(data.get()).map_err(malformed)?;
                let before = out.len();
                let mut de = serde_json::Deserializer::from_str(m.mids.get());
                // All or nothing: a frame with one bad entry contributes no ticks.
                match (PushMids { out }).deserialize(&mut de) {
                    Ok(Ok(())) => Ok(Frame::Data),
                    Ok(Err(e)) => {
                        out.truncate(before);
                        Err(e)
                    }
                    Err(e) => {
                        out.truncate(before);
                        Err(malformed(e))
                    }
                }
            }
            "subscriptionResponse" => {
                let data = need_data(env.data, env.channel)?;
                let r: SubResponse<'a> = serde_json::from_str(data.get()).map_err(malformed)?;
                if r.method == Some("unsubscribe") {
                    return Ok(Frame::Ignore);
                }
                let coin = r.subscription.and_then(|s| s.coin).map(Cow::into_owned);
                if let Some(c) = &coin {
                    self.confirm(c);
                }
                Ok(Frame::SubscribeAck {
                    symbols: coin.into_iter().collect(),
                })
            }
            "pong" => Ok(Frame::Pong),
            "error" => {
                let message = match env.data {
                    Some(d) => serde_json::from_str::<Cow<'a, str>>(d.get())
                        .map(Cow::into_owned)
                        .unwrap_or_else(|_| d.get().to_string()),
                    None => String::new(),
                };
                Ok(Frame::VenueError {
                    code: "error".into(),
                    message,
                })
            }
            other => Err(ParseError::Unknown(format!("hyperliquid channel {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feeds::wire::NumberError;
    use rust_decimal_macros::dec;

    fn fixture(name: &str) -> String {
        crate::feeds::read_fixture("hyperliquid", name)
            .trim_end()
            .to_string()
    }

    fn parse_one(name: &str) -> (Result<Frame, ParseError>, Vec<VenueTick<'static>>) {
        let text: &'static str = Box::leak(fixture(name).into_boxed_str());
        let mut f = HyperliquidFeed::new();
        let mut out = Vec::new();
        let r = f.parse(text, &mut out);
        (r, out)
    }

    /// One `activeAssetCtx` subscription per coin, `allMids` only on request, JSON ping.
    #[test]
    fn subscribe_messages_shape() {
        let mut f = HyperliquidFeed::new();
        assert_eq!(
            f.subscribe_messages(&["BTC".into(), "xyz:SP500".into()]),
            vec![
                r#"{"method":"subscribe","subscription":{"type":"activeAssetCtx","coin":"BTC"}}"#
                    .to_string(),
                r#"{"method":"subscribe","subscription":{"type":"activeAssetCtx","coin":"xyz:SP500"}}"#
                    .to_string(),
            ]
        );
        let mut f = HyperliquidFeed::new().with_all_mids();
        let msgs = f.subscribe_messages(&["ETH".into()]);
        assert_eq!(
            msgs[1],
            r#"{"method":"subscribe","subscription":{"type":"allMids"}}"#
        );
        let hb = f.heartbeat();
        assert_eq!(
            hb.client_ping,
            Some((Duration::from_secs(20), r#"{"method":"ping"}"#.to_string()))
        );
        assert_eq!(hb.dead_after, Duration::from_secs(40));
    }

    /// `active_asset_ctx.json`: mark from `markPx`, index from `oraclePx`, no venue time.
    #[test]
    fn fixture_active_asset_ctx() {
        let (r, out) = parse_one("active_asset_ctx.json");
        assert_eq!(r.unwrap(), Frame::Data);
        assert_eq!(
            out,
            vec![VenueTick {
                symbol: "BTC",
                mark: Some(dec!(84148.0)),
                index: Some(dec!(84198.0)),
                exchange_ts: None,
            }]
        );
    }

    /// `active_spot_ctx.json`: a context without an oracle price gives a mark-only tick.
    #[test]
    fn fixture_active_spot_ctx() {
        let (r, out) = parse_one("active_spot_ctx.json");
        assert_eq!(r.unwrap(), Frame::Data);
        assert_eq!(
            out,
            vec![VenueTick {
                symbol: "PURR/USDC",
                mark: Some(dec!(0.067131)),
                index: None,
                exchange_ts: None,
            }]
        );
    }

    /// `all_mids.json`: one mark tick per coin, exact, in frame order.
    #[test]
    fn fixture_all_mids() {
        let (r, out) = parse_one("all_mids.json");
        assert_eq!(r.unwrap(), Frame::Data);
        let got: Vec<(&str, _)> = out.iter().map(|t| (t.symbol, t.mark)).collect();
        assert_eq!(
            got,
            vec![
                ("@142", Some(dec!(80907.5))),
                ("BTC", Some(dec!(80868.5))),
                ("ETH", Some(dec!(2296.45))),
                ("PURR/USDC", Some(dec!(0.067131))),
            ]
        );
    }

    /// `subscription_response.json`: the ack names the coin.
    #[test]
    fn fixture_subscription_response() {
        let (r, _) = parse_one("subscription_response.json");
        assert_eq!(
            r.unwrap(),
            Frame::SubscribeAck {
                symbols: vec!["BTC".into()]
            }
        );
    }

    /// `subscription_response_allmids.json`: an ack without a coin names nothing.
    #[test]
    fn fixture_subscription_response_allmids() {
        let (r, _) = parse_one("subscription_response_allmids.json");
        assert_eq!(r.unwrap(), Frame::SubscribeAck { symbols: vec![] });
    }

    /// `error.json`: the error text is kept verbatim.
    #[test]
    fn fixture_error() {
        let (r, _) = parse_one("error.json");
        assert_eq!(
            r.unwrap(),
            Frame::VenueError {
                code: "error".into(),
                message: r#"Already subscribed: {"type":"l2Book","coin":"SOL","nSigFigs":null,"mantissa":null,"fast":false}"#.into()
            }
        );
    }

    /// `pong.json` is a pong; `welcome.txt` is ignored.
    #[test]
    fn fixture_pong_and_welcome() {
        assert_eq!(parse_one("pong.json").0.unwrap(), Frame::Pong);
        assert_eq!(parse_one("welcome.txt").0.unwrap(), Frame::Ignore);
    }

    fn ack(coin: &str) -> String {
        format!(
            r#"{{"channel":"subscriptionResponse","data":{{"method":"subscribe","subscription":{{"type":"activeAssetCtx","coin":"{coin}"}}}}}}"#
        )
    }

    fn coins_of(msgs: &[String]) -> Vec<String> {
        msgs.iter()
            .map(|m| {
                let v: serde_json::Value = serde_json::from_str(m).unwrap();
                v["subscription"]["coin"].as_str().unwrap().to_string()
            })
            .collect()
    }

    /// A coin whose subscription kills the connection (after the others were acked) is moved
    /// last, then, on the second such connection, dropped and reported once as rejected.
    #[test]
    fn unknown_coin_is_found_and_rejected() {
        let mut f = HyperliquidFeed::new();
        let syms: Vec<String> = vec!["NOPE".into(), "BTC".into()];
        let mut out = Vec::new();
        // Connection 1: NOPE first, nothing acked, dropped. No strike (could be an outage).
        f.reset();
        assert_eq!(coins_of(&f.subscribe_messages(&syms)), ["NOPE", "BTC"]);
        assert_eq!(f.parse(WELCOME_TEXT, &mut out).unwrap(), Frame::Ignore);
        // Connections 2 and 3: NOPE now last; BTC acked, then dropped.
        for _ in 0..2 {
            f.reset();
            assert_eq!(coins_of(&f.subscribe_messages(&syms)), ["BTC", "NOPE"]);
            let a = ack("BTC");
            assert!(matches!(
                f.parse(&a, &mut Vec::new()).unwrap(),
                Frame::SubscribeAck { .. }
            ));
        }
        // Connection 4: NOPE is no longer subscribed and is reported on the first control frame.
        f.reset();
        assert_eq!(coins_of(&f.subscribe_messages(&syms)), ["BTC"]);
        match f.parse(WELCOME_TEXT, &mut out).unwrap() {
            Frame::SubscribeRejected { symbol, reason } => {
                assert_eq!(symbol.as_deref(), Some("NOPE"));
                assert!(reason.contains("unknown coin"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let a = ack("BTC");
        assert_eq!(
            f.parse(&a, &mut Vec::new()).unwrap(),
            Frame::SubscribeAck {
                symbols: vec!["BTC".into()]
            }
        );
        assert!(out.is_empty());
        // A make-before-break replacement keeps the verdict.
        let mut fresh = f.fresh_instance().unwrap();
        fresh.reset();
        assert_eq!(coins_of(&fresh.subscribe_messages(&syms)), ["BTC"]);
        assert_eq!(fresh.heartbeat(), f.heartbeat());
    }

    /// A good coin that happens to be unacked when a connection drops is never rejected once
    /// its ack arrives on the next connection.
    #[test]
    fn a_drop_before_a_good_ack_clears_on_the_next_ack() {
        let mut f = HyperliquidFeed::new();
        let syms: Vec<String> = vec!["BTC".into(), "ETH".into()];
        let mut out = Vec::new();
        for _ in 0..5 {
            f.reset();
            assert_eq!(f.subscribe_messages(&syms).len(), 2);
            let a = ack("BTC");
            f.parse(&a, &mut Vec::new()).unwrap();
            // dropped before ETH's ack
            f.reset();
            assert_eq!(coins_of(&f.subscribe_messages(&syms)), ["BTC", "ETH"]);
            let a = ack("BTC");
            f.parse(&a, &mut Vec::new()).unwrap();
            let a = ack("ETH");
            f.parse(&a, &mut Vec::new()).unwrap();
        }
        f.reset();
        assert_eq!(coins_of(&f.subscribe_messages(&syms)), ["BTC", "ETH"]);
        assert_eq!(f.parse(WELCOME_TEXT, &mut out).unwrap(), Frame::Ignore);
    }

    /// `malformed_truncated.txt`, `malformed_price.json`, `unknown_channel.json`: errors, no ticks.
    #[test]
    fn fixture_malformed() {
        let (r, out) = parse_one("malformed_truncated.txt");
        assert!(matches!(r, Err(ParseError::Malformed(_))), "{r:?}");
        assert!(out.is_empty());
        let (r, out) = parse_one("malformed_price.json");
        assert_eq!(
            r,
            Err(ParseError::BadNumber {
                field: "markPx",
                value: "84148.0.1".into(),
                reason: NumberError::Malformed,
            })
        );
        assert!(out.is_empty());
        let (r, _) = parse_one("unknown_channel.json");
        assert!(matches!(r, Err(ParseError::Unknown(_))), "{r:?}");
    }
}
