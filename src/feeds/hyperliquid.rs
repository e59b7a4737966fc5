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
//! - **an unknown coin closes the socket** without any reply: subscribe only coins from the
//!   venue's `meta` universe. The driver sees the close and reconnects.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::deribit::decimal_from_wire_str;
use super::{Feed, Frame, Heartbeat, ParseError, VenueTick};
use crate::model::Venue;

/// Hyperliquid's mainnet WebSocket endpoint.
pub const DEFAULT_URL: &str = "wss://api.hyperliquid.xyz/ws";

/// Default interval of `{"method":"ping"}` (the server closes after 60 s of silence).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(20);

/// The plain-text greeting some Hyperliquid servers send after the handshake.
pub const WELCOME_TEXT: &str = "Websocket connection established.";

/// Hyperliquid adapter configuration (it keeps no per-connection state).
#[derive(Debug, Clone)]
pub struct HyperliquidFeed {
    ping_interval: Duration,
    all_mids: bool,
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
            match decimal_from_wire_str("mids", Some(mid)) {
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
        let mut msgs: Vec<String> = symbols
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
                let mark = decimal_from_wire_str("markPx", a.ctx.mark_px)?;
                let index = decimal_from_wire_str("oraclePx", a.ctx.oracle_px)?;
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
                Ok(Frame::SubscribeAck {
                    symbols: r
                        .subscription
                        .and_then(|s| s.coin)
                        .map(Cow::into_owned)
                        .into_iter()
                        .collect(),
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
    use rust_decimal_macros::dec;

    fn fixture(name: &str) -> String {
        let path = format!("{}/feeds/hyperliquid/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
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
                value: "84148.0.1".into()
            })
        );
        assert!(out.is_empty());
        let (r, _) = parse_one("unknown_channel.json");
        assert!(matches!(r, Err(ParseError::Unknown(_))), "{r:?}");
    }
}
