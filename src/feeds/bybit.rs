//! Bybit v5 public linear adapter: `tickers.<SYMBOL>` snapshot + delta merge, `{"op":"ping"}`
//! keepalive, and a pure, borrowing parse of one frame.
//!
//! Endpoint `wss://stream.bybit.com/v5/public/linear`. The first ticker message per symbol after
//! subscribing is a `snapshot`; then `delta`s carry only the fields that changed: a missing
//! field means unchanged, `""` means absent (never zero). Deltas that arrive before a snapshot
//! are dropped, and all merged state is cleared on every new connection ([`Feed::reset`]). Every
//! ticker frame yields the symbol's merged mark/index as of the frame's `ts`. The client must
//! send `{"op":"ping"}` every 20 s (Bybit cuts idle connections); a rejected topic comes back as
//! `success:false` with `ret_msg` naming it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

use super::wire::decimal_str;
use super::{Feed, Frame, Heartbeat, ParseError, VenueTick};
use crate::model::Venue;

/// Production URL.
pub const DEFAULT_URL: &str = "wss://stream.bybit.com/v5/public/linear";

/// The client heartbeat text.
pub const PING: &str = r#"{"op":"ping"}"#;

/// Topics per subscribe request (spot allows 10; linear has no limit, 10 keeps requests small).
const TOPICS_PER_REQUEST: usize = 10;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TickerState {
    mark: Option<Decimal>,
    index: Option<Decimal>,
}

/// Bybit linear adapter with per-symbol merged ticker state.
#[derive(Debug, Default)]
pub struct BybitLinear {
    state: HashMap<String, TickerState>,
    next_req: u64,
    dropped_deltas: u64,
}

impl BybitLinear {
    /// A fresh adapter.
    pub fn new() -> BybitLinear {
        BybitLinear::default()
    }

    /// Deltas dropped because no snapshot had arrived for their symbol (since creation).
    pub fn dropped_deltas(&self) -> u64 {
        self.dropped_deltas
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    topic: Option<&'a str>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    data: Option<TickerData<'a>>,
    #[serde(default)]
    ts: Option<i64>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(borrow, default)]
    ret_msg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    op: Option<&'a str>,
}

#[derive(Deserialize)]
struct TickerData<'a> {
    #[serde(borrow, default)]
    symbol: Option<&'a str>,
    #[serde(rename = "markPrice", borrow, default)]
    mark_price: Option<&'a str>,
    #[serde(rename = "indexPrice", borrow, default)]
    index_price: Option<&'a str>,
}

/// Extracts the symbol of a rejected topic from Bybit's `ret_msg`
/// (`error:handler not found,topic:tickers.XUSDT`, `Invalid symbol :[tickers.XUSDT]`).
fn rejected_symbol(msg: &str) -> Option<String> {
    let topic = if let Some(i) = msg.find("topic:") {
        msg[i + 6..].split([',', ' ', ']']).next()
    } else if let Some(i) = msg.find('[') {
        msg[i + 1..].split([',', ']']).next()
    } else {
        None
    }?;
    let topic = topic.trim();
    if topic.is_empty() {
        return None;
    }
    Some(topic.strip_prefix("tickers.").unwrap_or(topic).to_string())
}

impl Feed for BybitLinear {
    fn venue(&self) -> Venue {
        Venue::BybitLinear
    }

    fn default_url(&self) -> &'static str {
        DEFAULT_URL
    }

    fn subscribe_messages(&mut self, symbols: &[String]) -> Vec<String> {
        symbols
            .chunks(TOPICS_PER_REQUEST)
            .map(|chunk| {
                self.next_req += 1;
                let args: Vec<String> = chunk.iter().map(|s| format!("tickers.{s}")).collect();
                serde_json::json!({"req_id": format!("sub-{}", self.next_req), "op": "subscribe", "args": args})
                    .to_string()
            })
            .collect()
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            client_ping: Some((Duration::from_secs(20), PING.to_string())),
            dead_after: Duration::from_secs(50),
        }
    }

    fn rebuild_on_rejection(&self) -> bool {
        true
    }

    fn reset(&mut self) {
        self.state.clear();
        self.next_req = 0;
    }

    fn parse<'a>(
        &mut self,
        frame: &'a str,
        out: &mut Vec<VenueTick<'a>>,
    ) -> Result<Frame, ParseError> {
        let env: Envelope<'a> =
            serde_json::from_str(frame).map_err(|e| ParseError::Malformed(e.to_string()))?;
        if let Some(op) = env.op {
            let ok = env.success.unwrap_or(true);
            let msg = env.ret_msg.unwrap_or_default();
            return Ok(match (op, ok) {
                ("pong", _) | ("ping", true) => Frame::Pong,
                ("subscribe", true) => Frame::SubscribeAck {
                    symbols: Vec::new(),
                },
                ("subscribe", false) => Frame::SubscribeRejected {
                    symbol: rejected_symbol(&msg),
                    reason: msg.into_owned(),
                },
                ("unsubscribe", true) => Frame::Ignore,
                (_, false) => Frame::VenueError {
                    code: op.to_string(),
                    message: msg.into_owned(),
                },
                (other, true) => {
                    return Err(ParseError::Unknown(format!("op {other:?}")));
                }
            });
        }
        let Some(topic) = env.topic else {
            return Err(ParseError::Unknown(
                frame.chars().take(120).collect::<String>(),
            ));
        };
        let Some(topic_sym) = topic.strip_prefix("tickers.") else {
            return Ok(Frame::Ignore);
        };
        let data = env
            .data
            .ok_or_else(|| ParseError::Malformed(format!("{topic}: no data")))?;
        let symbol = data.symbol.unwrap_or(topic_sym);
        let mark = decimal_str("markPrice", data.mark_price)?;
        let index = decimal_str("indexPrice", data.index_price)?;
        let merged = match env.kind {
            Some("snapshot") => {
                let st = TickerState { mark, index };
                match self.state.get_mut(symbol) {
                    Some(s) => *s = st,
                    None => {
                        self.state.insert(symbol.to_string(), st);
                    }
                }
                st
            }
            Some("delta") => match self.state.get_mut(symbol) {
                Some(s) => {
                    if mark.is_some() {
                        s.mark = mark;
                    }
                    if index.is_some() {
                        s.index = index;
                    }
                    *s
                }
                None => {
                    self.dropped_deltas += 1;
                    return Ok(Frame::Ignore);
                }
            },
            other => {
                return Err(ParseError::Malformed(format!(
                    "{topic}: unknown type {other:?}"
                )));
            }
        };
        if merged.mark.is_some() || merged.index.is_some() {
            out.push(VenueTick {
                symbol,
                mark: merged.mark,
                index: merged.index,
                exchange_ts: env.ts,
            });
        }
        Ok(Frame::Data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn fixture(name: &str) -> String {
        crate::feeds::read_fixture("bybit-linear", name)
    }

    fn parse_one(
        f: &mut BybitLinear,
        s: &str,
    ) -> (Result<Frame, ParseError>, Vec<VenueTick<'static>>) {
        let s: &'static str = Box::leak(s.trim_end().to_string().into_boxed_str());
        let mut out = Vec::new();
        let r = f.parse(s, &mut out);
        (r, out)
    }

    /// Subscribe requests carry `tickers.<SYMBOL>` topics, ten per request.
    #[test]
    fn subscribe_messages_shape() {
        let mut f = BybitLinear::new();
        let msgs = f.subscribe_messages(&["BTCUSDT".into(), "ETHUSDT".into()]);
        assert_eq!(
            msgs,
            vec![
                r#"{"args":["tickers.BTCUSDT","tickers.ETHUSDT"],"op":"subscribe","req_id":"sub-1"}"#
            ]
        );
        assert_eq!(f.heartbeat().client_ping.unwrap().1, PING);
    }

    /// `ticker_snapshot.json`: exact mark, index and ts from a snapshot.
    #[test]
    fn fixture_snapshot() {
        let mut f = BybitLinear::new();
        let (r, out) = parse_one(&mut f, &fixture("ticker_snapshot.json"));
        assert_eq!(r, Ok(Frame::Data));
        assert_eq!(
            out,
            vec![VenueTick {
                symbol: "BTCUSDT",
                mark: Some(dec!(17217.33)),
                index: Some(dec!(17227.36)),
                exchange_ts: Some(1673272861686),
            }]
        );
    }

    /// `session.txt`: delta before snapshot dropped, missing field unchanged, `""` absent,
    /// changed mark merged, reset clears state.
    #[test]
    fn fixture_session_merge() {
        let mut f = BybitLinear::new();
        let text = fixture("session.txt");
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 5);
        // 1: delta before any snapshot: dropped.
        let (r, out) = parse_one(&mut f, lines[0]);
        assert_eq!((r, out.len()), (Ok(Frame::Ignore), 0));
        // 2: snapshot.
        let (_, out) = parse_one(&mut f, lines[1]);
        assert_eq!(out[0].mark, Some(dec!(79114.20)));
        assert_eq!(out[0].index, Some(dec!(79139.09)));
        // 3: delta without markPrice/indexPrice: unchanged, newer ts.
        let (_, out) = parse_one(&mut f, lines[2]);
        assert_eq!(out[0].mark, Some(dec!(79114.20)));
        assert_eq!(out[0].index, Some(dec!(79139.09)));
        assert_eq!(out[0].exchange_ts, Some(1787590405983));
        // 4: delta with a new mark and `""` index: mark changes, index unchanged.
        let (_, out) = parse_one(&mut f, lines[3]);
        assert_eq!(out[0].mark, Some(dec!(79120.55)));
        assert_eq!(out[0].index, Some(dec!(79139.09)));
        // 5: delta for ETHUSDT without a snapshot: dropped.
        let (r, out) = parse_one(&mut f, lines[4]);
        assert_eq!((r, out.len()), (Ok(Frame::Ignore), 0));
        assert_eq!(f.dropped_deltas(), 2);
        f.reset();
        let (r, _) = parse_one(&mut f, lines[2]);
        assert_eq!(r, Ok(Frame::Ignore));
    }

    /// `subscribe_request.json` and `ping.json`: what we send equals the documented shapes.
    #[test]
    fn fixture_requests() {
        let mut f = BybitLinear::new();
        let ours = f.subscribe_messages(&["BTCUSDT".into(), "ETHUSDT".into()]);
        let ours: serde_json::Value = serde_json::from_str(&ours[0]).unwrap();
        let want: serde_json::Value =
            serde_json::from_str(&fixture("subscribe_request.json")).unwrap();
        assert_eq!(ours, want);
        let ping: serde_json::Value = serde_json::from_str(PING).unwrap();
        let want: serde_json::Value = serde_json::from_str(&fixture("ping.json")).unwrap();
        assert_eq!(ping, want);
    }

    /// `subscribe_ack.json`, `pong.json`, `pong_option.json`: control frames, no data.
    #[test]
    fn fixture_control() {
        let mut f = BybitLinear::new();
        let (r, out) = parse_one(&mut f, &fixture("subscribe_ack.json"));
        assert_eq!(r, Ok(Frame::SubscribeAck { symbols: vec![] }));
        assert!(out.is_empty());
        assert_eq!(parse_one(&mut f, &fixture("pong.json")).0, Ok(Frame::Pong));
        assert_eq!(
            parse_one(&mut f, &fixture("pong_option.json")).0,
            Ok(Frame::Pong)
        );
    }

    /// `subscribe_rejected.json` / `subscribe_invalid_symbol.json`: rejection names the symbol.
    #[test]
    fn fixture_rejections() {
        let mut f = BybitLinear::new();
        assert_eq!(
            parse_one(&mut f, &fixture("subscribe_rejected.json")).0,
            Ok(Frame::SubscribeRejected {
                symbol: Some("NOPEUSDT".into()),
                reason: "error:handler not found,topic:tickers.NOPEUSDT".into()
            })
        );
        assert_eq!(
            parse_one(&mut f, &fixture("subscribe_invalid_symbol.json")).0,
            Ok(Frame::SubscribeRejected {
                symbol: Some("XUSDT".into()),
                reason: "Invalid symbol :[tickers.XUSDT]".into()
            })
        );
    }

    /// `malformed.txt`: every line is an error and yields no tick.
    #[test]
    fn fixture_malformed() {
        let mut f = BybitLinear::new();
        assert_eq!(
            parse_one(&mut f, &fixture("ticker_snapshot.json")).0,
            Ok(Frame::Data)
        );
        let text = fixture("malformed.txt");
        let mut n = 0;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (r, out) = parse_one(&mut f, line);
            assert!(r.is_err(), "{line}: {r:?}");
            assert!(out.is_empty(), "{line}");
            n += 1;
        }
        assert_eq!(n, 6);
        // State survives bad frames.
        let (_, out) = parse_one(
            &mut f,
            r#"{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT"},"cs":1,"ts":2}"#,
        );
        assert_eq!(out[0].mark, Some(dec!(17217.33)));
    }
}
