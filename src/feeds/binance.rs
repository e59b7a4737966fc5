//! Binance USD-M futures mark-price adapter: wire types, `SUBSCRIBE` messages and a pure,
//! borrowing parse of one frame.
//!
//! Endpoint: `wss://fstream.binance.com/market/stream` — the routed `/market` path that carries
//! mark-price streams since the 2026-04-23 URL split (the unrouted root acks and stays silent).
//! Streams `<sym>@markPrice@1s` are subscribed by request, `{"method":"SUBSCRIBE",…,"id":N}`,
//! acked with `{"result":null,"id":N}` — an ack is never data, and Binance acks unknown symbols
//! too, so only the first data frame per symbol proves a subscription (the driver checks that).
//! Frames come raw (`{"e":"markPriceUpdate",…}`), wrapped (`{"stream":…,"data":{…}}`) or as
//! `!markPrice@arr` arrays, wrapped or not. The server sends a protocol ping every 3 minutes
//! (answered by the driver); connections are cut at 24 h, so the driver rotates them first.

use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::wire::decimal_str;
use super::{Feed, Frame, Heartbeat, ParseError, VenueTick};
use crate::model::Venue;

/// Production URL (routed `/market` path, combined-stream mode).
pub const DEFAULT_URL: &str = "wss://fstream.binance.com/market/stream";

/// Streams per `SUBSCRIBE` request (Binance allows 1024 per connection; 200 is the safe
/// practice, requests are paced by the driver under the 10 messages/s limit).
const STREAMS_PER_REQUEST: usize = 50;

/// Binance USD-M adapter. Keeps only the ids of its own subscribe requests, to name the
/// symbols of a rejected request.
#[derive(Debug, Default)]
pub struct BinanceUsdm {
    next_id: u64,
    requests: Vec<(u64, Vec<String>)>,
}

impl BinanceUsdm {
    /// A fresh adapter.
    pub fn new() -> BinanceUsdm {
        BinanceUsdm::default()
    }
}

/// The stream name for a venue symbol (`BTCUSDT` → `btcusdt@markPrice@1s`). A symbol that is
/// already a stream name (contains `@`, e.g. `!markPrice@arr@1s`) is used as is.
pub fn stream_name(symbol: &str) -> String {
    if symbol.contains('@') {
        symbol.to_string()
    } else {
        format!("{}@markPrice@1s", symbol.to_ascii_lowercase())
    }
}

impl Feed for BinanceUsdm {
    fn venue(&self) -> Venue {
        Venue::BinanceUsdm
    }

    fn default_url(&self) -> &'static str {
        DEFAULT_URL
    }

    fn subscribe_messages(&mut self, symbols: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for chunk in symbols.chunks(STREAMS_PER_REQUEST) {
            self.next_id += 1;
            let streams: Vec<String> = chunk.iter().map(|s| stream_name(s)).collect();
            let msg =
                serde_json::json!({"method": "SUBSCRIBE", "params": streams, "id": self.next_id});
            out.push(msg.to_string());
            self.requests.push((self.next_id, chunk.to_vec()));
        }
        out
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            client_ping: None,
            dead_after: Duration::from_secs(90),
        }
    }

    fn protocol_ping_interval(&self) -> Option<Duration> {
        // Binance pings every 3 min; our own protocol ping (answered with a pong) detects a
        // dead peer within `dead_after` even when no subscribed symbol is trading.
        Some(Duration::from_secs(30))
    }

    fn send_interval(&self) -> Duration {
        Duration::from_millis(150)
    }

    fn max_connection_age(&self) -> Option<Duration> {
        Some(Duration::from_secs(23 * 3600 + 30 * 60))
    }

    fn resubscribe_messages(&mut self, symbols: &[String]) -> Option<Vec<String>> {
        Some(self.subscribe_messages(symbols))
    }

    fn fresh_instance(&self) -> Option<Box<dyn Feed>> {
        Some(Box::new(BinanceUsdm::new()))
    }

    fn reset(&mut self) {
        self.next_id = 0;
        self.requests.clear();
    }

    fn parse<'a>(
        &mut self,
        frame: &'a str,
        out: &mut Vec<VenueTick<'a>>,
    ) -> Result<Frame, ParseError> {
        let start = out.len();
        let mut bad = None;
        let mut de = serde_json::Deserializer::from_str(frame);
        let top = TopSeed {
            out: &mut *out,
            bad: &mut bad,
        }
        .deserialize(&mut de)
        .and_then(|t| de.end().map(|()| t));
        let top = match top {
            Ok(t) => t,
            Err(e) => {
                out.truncate(start);
                return Err(bad.unwrap_or_else(|| ParseError::Malformed(e.to_string())));
            }
        };
        match top {
            Top::Data => Ok(Frame::Data),
            Top::Ack => Ok(Frame::SubscribeAck {
                symbols: Vec::new(),
            }),
            Top::Error { code, msg, id } => {
                let req = id.and_then(|id| self.requests.iter().find(|(rid, _)| *rid == id));
                match req {
                    // Binance never calls a symbol unknown (it acks those and stays silent), so
                    // an error for one of our requests is a refusal of the request (code 4 "Too
                    // many subscriptions", usually transient): every symbol it carried is
                    // retried, the batch split to find the one at fault.
                    Some((_, syms)) => Ok(Frame::SubscribeRefused {
                        symbols: syms.clone(),
                        reason: format!("code {code}: {msg}"),
                    }),
                    None => Ok(Frame::VenueError {
                        code: code.to_string(),
                        message: msg,
                    }),
                }
            }
            Top::Other => Err(ParseError::Unknown(truncate(frame, 120))),
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// One mark-price object, borrowed from the frame.
#[derive(Deserialize)]
struct MarkPrice<'a> {
    #[serde(borrow, default)]
    e: Option<&'a str>,
    #[serde(rename = "E", default)]
    event_time: Option<i64>,
    #[serde(borrow)]
    s: &'a str,
    #[serde(borrow, default)]
    p: Option<&'a str>,
    #[serde(borrow, default)]
    i: Option<&'a str>,
}

fn to_tick<'a>(m: MarkPrice<'a>) -> Result<Option<VenueTick<'a>>, ParseError> {
    if m.e.is_some_and(|e| e != "markPriceUpdate") {
        return Ok(None);
    }
    Ok(Some(VenueTick {
        symbol: m.s,
        mark: decimal_str("p", m.p)?,
        index: decimal_str("i", m.i)?,
        exchange_ts: m.event_time,
    }))
}

enum Top {
    Data,
    Ack,
    Error {
        code: i64,
        msg: String,
        id: Option<u64>,
    },
    Other,
}

#[derive(Deserialize)]
struct ErrBody<'a> {
    #[serde(default)]
    code: i64,
    #[serde(borrow, default)]
    msg: std::borrow::Cow<'a, str>,
}

struct TopSeed<'o, 'a> {
    out: &'o mut Vec<VenueTick<'a>>,
    bad: &'o mut Option<ParseError>,
}

fn push_tick<'a, E: de::Error>(
    out: &mut Vec<VenueTick<'a>>,
    bad: &mut Option<ParseError>,
    m: MarkPrice<'a>,
) -> Result<(), E> {
    match to_tick(m) {
        Ok(Some(t)) => {
            out.push(t);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            let msg = e.to_string();
            *bad = Some(e);
            Err(E::custom(msg))
        }
    }
}

impl<'de, 'o> DeserializeSeed<'de> for TopSeed<'o, 'de> {
    type Value = Top;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Top, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'o> Visitor<'de> for TopSeed<'o, 'de> {
    type Value = Top;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Binance frame (object or array)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        while let Some(m) = seq.next_element::<MarkPrice<'de>>()? {
            push_tick(self.out, self.bad, m)?;
        }
        Ok(Top::Data)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut has_data = false;
        let mut has_result = false;
        let mut id: Option<u64> = None;
        let mut error: Option<ErrBody<'de>> = None;
        let mut e: Option<&'de str> = None;
        let mut s: Option<&'de str> = None;
        let mut p: Option<&'de str> = None;
        let mut i: Option<&'de str> = None;
        let mut big_e: Option<i64> = None;
        while let Some(key) = map.next_key::<&'de str>()? {
            match key {
                "data" => {
                    map.next_value_seed(DataSeed {
                        out: &mut *self.out,
                        bad: &mut *self.bad,
                    })?;
                    has_data = true;
                }
                "result" => {
                    map.next_value::<IgnoredAny>()?;
                    has_result = true;
                }
                "id" => id = map.next_value::<Option<u64>>()?,
                "error" => error = Some(map.next_value()?),
                "e" => e = Some(map.next_value()?),
                "s" => s = Some(map.next_value()?),
                "p" => p = Some(map.next_value()?),
                "i" => i = Some(map.next_value()?),
                "E" => big_e = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if let Some(err) = error {
            return Ok(Top::Error {
                code: err.code,
                msg: err.msg.into_owned(),
                id,
            });
        }
        if has_data {
            return Ok(Top::Data);
        }
        if let Some(sym) = s {
            push_tick(
                self.out,
                self.bad,
                MarkPrice {
                    e,
                    event_time: big_e,
                    s: sym,
                    p,
                    i,
                },
            )?;
            return Ok(Top::Data);
        }
        if has_result {
            return Ok(Top::Ack);
        }
        Ok(Top::Other)
    }
}

struct DataSeed<'o, 'a> {
    out: &'o mut Vec<VenueTick<'a>>,
    bad: &'o mut Option<ParseError>,
}

impl<'de, 'o> DeserializeSeed<'de> for DataSeed<'o, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'o> Visitor<'de> for DataSeed<'o, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a mark-price object or array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(m) = seq.next_element::<MarkPrice<'de>>()? {
            push_tick(self.out, self.bad, m)?;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let m = MarkPrice::deserialize(de::value::MapAccessDeserializer::new(map))?;
        push_tick(self.out, self.bad, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feeds::wire::NumberError;
    use rust_decimal::Decimal;
    use rust_decimal_macros::dec;

    fn fixture(name: &str) -> String {
        crate::feeds::read_fixture("binance-usdm", name)
    }

    fn parse_one(
        f: &mut BinanceUsdm,
        s: &str,
    ) -> (Result<Frame, ParseError>, Vec<VenueTick<'static>>) {
        let s: &'static str = Box::leak(s.trim_end().to_string().into_boxed_str());
        let mut out = Vec::new();
        let r = f.parse(s, &mut out);
        (r, out)
    }

    /// Subscribe requests name lowercase `@markPrice@1s` streams with increasing ids.
    #[test]
    fn subscribe_messages_shape() {
        let mut f = BinanceUsdm::new();
        let msgs = f.subscribe_messages(&["BTCUSDT".into(), "ETHUSDT".into()]);
        assert_eq!(
            msgs,
            vec![
                r#"{"id":1,"method":"SUBSCRIBE","params":["btcusdt@markPrice@1s","ethusdt@markPrice@1s"]}"#
            ]
        );
        let many: Vec<String> = (0..120).map(|i| format!("S{i}USDT")).collect();
        f.reset();
        let msgs = f.subscribe_messages(&many);
        assert_eq!(msgs.len(), 3);
        assert!(msgs[2].contains(r#""id":3"#));
    }

    /// `mark_price.json`: a raw single-symbol frame with exact mark, index and event time.
    #[test]
    fn fixture_mark_price() {
        let mut f = BinanceUsdm::new();
        let (r, out) = parse_one(&mut f, &fixture("mark_price.json"));
        assert_eq!(r, Ok(Frame::Data));
        assert_eq!(
            out,
            vec![VenueTick {
                symbol: "BTCUSDT",
                mark: Some(dec!(11794.15000000)),
                index: Some(dec!(11784.62659091)),
                exchange_ts: Some(1562305380000),
            }]
        );
    }

    /// `combined_mark_price.json`: the combined-stream wrapper around one object.
    #[test]
    fn fixture_combined() {
        let mut f = BinanceUsdm::new();
        let (r, out) = parse_one(&mut f, &fixture("combined_mark_price.json"));
        assert_eq!(r, Ok(Frame::Data));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].symbol, "ETHUSDT");
        assert_eq!(out[0].mark, Some(dec!(2296.41000000)));
        assert_eq!(out[0].index, Some(dec!(2297.10186047)));
        assert_eq!(out[0].exchange_ts, Some(1788936948001));
    }

    /// `mark_price_arr.json`: a wrapped `!markPrice@arr@1s` array incl. a COIN-M entry.
    #[test]
    fn fixture_array() {
        let mut f = BinanceUsdm::new();
        let (r, out) = parse_one(&mut f, &fixture("mark_price_arr.json"));
        assert_eq!(r, Ok(Frame::Data));
        let got: Vec<(&str, Option<Decimal>)> = out.iter().map(|t| (t.symbol, t.mark)).collect();
        assert_eq!(
            got,
            vec![
                ("BTCUSDT", Some(dec!(79107.36658171))),
                ("ETHUSDT", Some(dec!(2296.41000000))),
                ("BTCUSD_PERP", Some(dec!(79120.5))),
            ]
        );
        assert_eq!(out[0].index, Some(dec!(79139.09565217)));
    }

    /// `raw_array.json`: an unwrapped array (raw `/market/ws` mode).
    #[test]
    fn fixture_raw_array() {
        let mut f = BinanceUsdm::new();
        let (r, out) = parse_one(&mut f, &fixture("raw_array.json"));
        assert_eq!(r, Ok(Frame::Data));
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].symbol, "SOLUSDT");
        assert_eq!(out[1].mark, Some(dec!(146.01000000)));
    }

    /// `subscribe_request.json`: what we send equals the documented request (as JSON).
    #[test]
    fn fixture_subscribe_request() {
        let mut f = BinanceUsdm::new();
        let ours = f.subscribe_messages(&["BTCUSDT".into(), "ETHUSDT".into()]);
        let ours: serde_json::Value = serde_json::from_str(&ours[0]).unwrap();
        let want: serde_json::Value =
            serde_json::from_str(&fixture("subscribe_request.json")).unwrap();
        assert_eq!(ours, want);
    }

    /// An error for a multi-symbol request is a refusal of every symbol it carried (the
    /// driver splits the batch to find the one at fault).
    #[test]
    fn multi_symbol_error_names_request() {
        let mut f = BinanceUsdm::new();
        f.subscribe_messages(&["AUSDT".into(), "BUSDT".into()]);
        let (r, _) = parse_one(
            &mut f,
            r#"{"error":{"code":4,"msg":"Too many subscriptions"},"id":1}"#,
        );
        assert_eq!(
            r,
            Ok(Frame::SubscribeRefused {
                symbols: vec!["AUSDT".into(), "BUSDT".into()],
                reason: "code 4: Too many subscriptions".into()
            })
        );
    }

    /// `subscribe_ack.json` and `list_subscriptions.json`: acks, never data.
    #[test]
    fn fixture_acks() {
        let mut f = BinanceUsdm::new();
        let (r, out) = parse_one(&mut f, &fixture("subscribe_ack.json"));
        assert_eq!(r, Ok(Frame::SubscribeAck { symbols: vec![] }));
        assert!(out.is_empty());
        let (r, out) = parse_one(&mut f, &fixture("list_subscriptions.json"));
        assert_eq!(r, Ok(Frame::SubscribeAck { symbols: vec![] }));
        assert!(out.is_empty());
    }

    /// `subscribe_error.json`: an error for our request id names the symbols it carried;
    /// `error_null_id.json`: an error with `id: null` is a venue error.
    #[test]
    fn fixture_errors() {
        let mut f = BinanceUsdm::new();
        f.subscribe_messages(&["BTCUSDT".into()]);
        f.subscribe_messages(&["NOPEUSDT".into()]);
        let (r, _) = parse_one(&mut f, &fixture("subscribe_error.json"));
        assert_eq!(
            r,
            Ok(Frame::SubscribeRefused {
                symbols: vec!["NOPEUSDT".into()],
                reason: "code 2: Invalid request: request ID must be an unsigned integer".into()
            })
        );
        let (r, _) = parse_one(&mut f, &fixture("error_null_id.json"));
        assert_eq!(
            r,
            Ok(Frame::VenueError {
                code: "3".into(),
                message: "Invalid JSON: expected value at line 1 column 1".into()
            })
        );
    }

    /// `malformed.txt`: every line is rejected with an error and yields no tick.
    #[test]
    fn fixture_malformed() {
        let mut f = BinanceUsdm::new();
        let text = fixture("malformed.txt");
        let mut n = 0;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (r, out) = parse_one(&mut f, line);
            assert!(r.is_err(), "{line}: {r:?}");
            assert!(out.is_empty(), "{line}");
            n += 1;
        }
        assert_eq!(n, 7);
        let (r, _) = parse_one(
            &mut f,
            r#"{"e":"markPriceUpdate","s":"BTCUSDT","p":"1.2.3"}"#,
        );
        assert_eq!(
            r,
            Err(ParseError::BadNumber {
                field: "p",
                value: "1.2.3".into(),
                reason: NumberError::Malformed,
            })
        );
    }

    /// Prices follow the one wire policy: scientific notation is read exactly (it used to be
    /// refused here while OKX, Hyperliquid and Deribit accepted it).
    #[test]
    fn exponent_price_exact() {
        let mut f = BinanceUsdm::new();
        let (r, out) = parse_one(
            &mut f,
            r#"{"e":"markPriceUpdate","s":"PEPEUSDT","p":"1.0235e-5","i":"1e-5"}"#,
        );
        assert_eq!(r, Ok(Frame::Data));
        assert_eq!(out[0].mark, Some(dec!(0.000010235)));
        assert_eq!(out[0].index, Some(dec!(0.00001)));
    }

    /// Other event types on the same socket produce no ticks.
    #[test]
    fn other_event_ignored() {
        let mut f = BinanceUsdm::new();
        let (r, out) = parse_one(
            &mut f,
            r#"{"e":"aggTrade","E":1,"s":"BTCUSDT","p":"1","q":"2"}"#,
        );
        assert_eq!(r, Ok(Frame::Data));
        assert!(out.is_empty());
    }
}
