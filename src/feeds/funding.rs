//! Funding rates and next funding times, read from the frames the price feeds already receive.
//!
//! One pure function per venue, beside the adapters rather than inside them, so a feed's price
//! parse is unchanged; each reads only the funding fields of a frame (exact decimals by the
//! one wire policy of [`super::wire`]) and ignores every other frame:
//!
//! | venue | frame | rate | next settlement |
//! |---|---|---|---|
//! | Binance USD-M | `markPriceUpdate` (raw, combined, `!markPrice@arr`) | `r` (`""` on delivery contracts: skipped) | `T` (`0`: unknown) |
//! | Bybit linear | `tickers.<SYM>` snapshot or delta | `fundingRate` (absent in a delta: unchanged, skipped; `""` on dated futures) | `nextFundingTime` |
//! | OKX | `funding-rate` channel | `fundingRate` | `fundingTime` |
//! | Deribit | `ticker.<inst>.<interval>` | `funding_8h` (Deribit funds continuously; this is the 8-hour equivalent) | not sent |
//! | Hyperliquid | `activeAssetCtx` | `funding` (hourly) | not sent: settles on the hour ([`next_hour`]) |

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ParseError;
use super::wire::{decimal_raw, decimal_str, integer_str};
use crate::model::{TimestampMs, Venue};

/// One funding observation for one venue symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FundingObs {
    /// The venue's symbol (`BTCUSDT`, `BTC-USDT-SWAP`, `BTC`).
    pub symbol: String,
    /// The rate of the next settlement.
    pub rate: Decimal,
    /// When it settles (ms), when the frame says.
    pub next_funding_ts: Option<TimestampMs>,
}

/// The next whole hour after `received_ts` (Hyperliquid settles funding hourly and does not
/// send the time).
pub fn next_hour(received_ts: TimestampMs) -> TimestampMs {
    const HOUR: i64 = 3_600_000;
    received_ts
        .div_euclid(HOUR)
        .saturating_add(1)
        .saturating_mul(HOUR)
}

fn malformed(e: serde_json::Error) -> ParseError {
    ParseError::Malformed(e.to_string())
}

/// The funding observations a frame of `venue` carries (empty for frames without funding).
pub fn parse_funding(venue: Venue, frame: &str) -> Result<Vec<FundingObs>, ParseError> {
    match venue {
        Venue::BinanceUsdm => binance(frame),
        Venue::BybitLinear | Venue::BybitInverse => bybit(frame),
        Venue::Okx => okx(frame),
        Venue::Deribit => deribit(frame),
        Venue::Hyperliquid => hyperliquid(frame),
    }
}

#[derive(Deserialize)]
struct BinanceMark<'a> {
    #[serde(borrow, default)]
    e: Option<&'a str>,
    #[serde(borrow, default)]
    s: Option<&'a str>,
    #[serde(borrow, default)]
    r: Option<&'a str>,
    #[serde(rename = "T", default)]
    t: Option<i64>,
}

fn binance(frame: &str) -> Result<Vec<FundingObs>, ParseError> {
    let trimmed = frame.trim_start();
    if !trimmed.starts_with('[') && !trimmed.starts_with('{') {
        return Ok(Vec::new());
    }
    #[derive(Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    let body: &str = if trimmed.starts_with('{') {
        let w: Wrapped = serde_json::from_str(frame).map_err(malformed)?;
        w.data.map_or(frame, RawValue::get)
    } else {
        frame
    };
    let items: Vec<BinanceMark> = if body.trim_start().starts_with('[') {
        serde_json::from_str(body).map_err(malformed)?
    } else {
        vec![serde_json::from_str(body).map_err(malformed)?]
    };
    let mut out = Vec::new();
    for m in items {
        if m.e != Some("markPriceUpdate") {
            continue;
        }
        let (Some(s), Some(rate)) = (m.s, decimal_str("r", m.r)?) else {
            continue;
        };
        out.push(FundingObs {
            symbol: s.to_string(),
            rate,
            next_funding_ts: m.t.filter(|t| *t > 0),
        });
    }
    Ok(out)
}

fn bybit(frame: &str) -> Result<Vec<FundingObs>, ParseError> {
    #[derive(Deserialize)]
    struct Ticker<'a> {
        #[serde(borrow, default)]
        topic: Option<&'a str>,
        #[serde(borrow, default)]
        data: Option<Data<'a>>,
    }
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        symbol: &'a str,
        #[serde(borrow, default, rename = "fundingRate")]
        rate: Option<&'a str>,
        #[serde(borrow, default, rename = "nextFundingTime")]
        next: Option<&'a str>,
    }
    if !frame.trim_start().starts_with('{') {
        return Ok(Vec::new());
    }
    let t: Ticker = match serde_json::from_str(frame) {
        Ok(t) => t,
        // Acks and pongs carry no `data` object of this shape.
        Err(_) if !frame.contains("\"tickers.") => return Ok(Vec::new()),
        Err(e) => return Err(malformed(e)),
    };
    let (Some(topic), Some(d)) = (t.topic, t.data) else {
        return Ok(Vec::new());
    };
    if !topic.starts_with("tickers.") {
        return Ok(Vec::new());
    }
    let Some(rate) = decimal_str("fundingRate", d.rate)? else {
        return Ok(Vec::new());
    };
    Ok(vec![FundingObs {
        symbol: d.symbol.to_string(),
        rate,
        next_funding_ts: integer_str("nextFundingTime", d.next)?,
    }])
}

fn okx(frame: &str) -> Result<Vec<FundingObs>, ParseError> {
    #[derive(Deserialize)]
    struct Push<'a> {
        #[serde(borrow, default)]
        arg: Option<Arg<'a>>,
        #[serde(borrow, default)]
        data: Vec<Item<'a>>,
    }
    #[derive(Deserialize)]
    struct Arg<'a> {
        #[serde(borrow)]
        channel: &'a str,
    }
    #[derive(Deserialize)]
    struct Item<'a> {
        #[serde(borrow, rename = "instId")]
        inst_id: &'a str,
        #[serde(borrow, default, rename = "fundingRate")]
        rate: Option<&'a str>,
        #[serde(borrow, default, rename = "fundingTime")]
        time: Option<&'a str>,
    }
    if !frame.trim_start().starts_with('{') || !frame.contains("\"funding-rate\"") {
        return Ok(Vec::new());
    }
    let p: Push = serde_json::from_str(frame).map_err(malformed)?;
    if p.arg.map(|a| a.channel) != Some("funding-rate") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for i in p.data {
        if let Some(rate) = decimal_str("fundingRate", i.rate)? {
            out.push(FundingObs {
                symbol: i.inst_id.to_string(),
                rate,
                next_funding_ts: integer_str("fundingTime", i.time)?,
            });
        }
    }
    Ok(out)
}

fn deribit(frame: &str) -> Result<Vec<FundingObs>, ParseError> {
    #[derive(Deserialize)]
    struct Note<'a> {
        #[serde(borrow, default)]
        params: Option<Params<'a>>,
    }
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        channel: &'a str,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Ticker<'a> {
        #[serde(borrow)]
        instrument_name: &'a str,
        #[serde(borrow, default)]
        funding_8h: Option<&'a RawValue>,
    }
    if !frame.contains("\"ticker.") {
        return Ok(Vec::new());
    }
    let n: Note = serde_json::from_str(frame).map_err(malformed)?;
    let Some(p) = n.params.filter(|p| p.channel.starts_with("ticker.")) else {
        return Ok(Vec::new());
    };
    let t: Ticker = serde_json::from_str(p.data.get()).map_err(malformed)?;
    let Some(rate) = decimal_raw("funding_8h", t.funding_8h)? else {
        return Ok(Vec::new());
    };
    Ok(vec![FundingObs {
        symbol: t.instrument_name.to_string(),
        rate,
        next_funding_ts: None,
    }])
}

fn hyperliquid(frame: &str) -> Result<Vec<FundingObs>, ParseError> {
    #[derive(Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        channel: &'a str,
        #[serde(borrow, default)]
        data: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Ctx<'a> {
        #[serde(borrow)]
        coin: &'a str,
        #[serde(borrow)]
        ctx: Inner<'a>,
    }
    #[derive(Deserialize)]
    struct Inner<'a> {
        #[serde(borrow, default)]
        funding: Option<&'a str>,
    }
    if !frame.trim_start().starts_with('{') || !frame.contains("\"activeAssetCtx\"") {
        return Ok(Vec::new());
    }
    let m: Msg = serde_json::from_str(frame).map_err(malformed)?;
    let (true, Some(d)) = (m.channel == "activeAssetCtx", m.data) else {
        return Ok(Vec::new());
    };
    let c: Ctx = serde_json::from_str(d.get()).map_err(malformed)?;
    let Some(rate) = decimal_str("funding", c.ctx.funding)? else {
        return Ok(Vec::new());
    };
    Ok(vec![FundingObs {
        symbol: c.coin.to_string(),
        rate,
        next_funding_ts: None,
    }])
}

/// Parses the funding `frame` carries and publishes it to `board` for every instrument its
/// symbol prices the mark of (funding belongs to the perpetual, not to an index). Hyperliquid
/// does not send the settlement time: it is the next whole hour after `received_ts`. `map_ts`
/// moves venue times the way the caller moves its price times (a replay shifts them; live
/// feeds pass the identity). Returns how many instruments were updated; a frame without
/// funding updates none. Never blocks: one short lock per instrument.
pub fn publish_funding(
    venue: Venue,
    frame: &str,
    routes: &super::SymbolRoutes,
    board: &crate::prices::funding::FundingBoard,
    received_ts: TimestampMs,
    mut map_ts: impl FnMut(TimestampMs) -> TimestampMs,
) -> Result<usize, ParseError> {
    let mut n = 0;
    for obs in parse_funding(venue, frame)? {
        let Some(targets) = routes.get(&obs.symbol) else {
            continue;
        };
        let next = match (venue, obs.next_funding_ts) {
            (_, Some(t)) => Some(map_ts(t)),
            (Venue::Hyperliquid, None) => Some(next_hour(received_ts)),
            (_, None) => None,
        };
        for (inst, field) in targets {
            if *field != crate::model::PriceField::Mark {
                continue;
            }
            board.publish(
                inst,
                crate::prices::funding::FundingEntry {
                    rate: crate::margin::funding::FundingRate {
                        rate: obs.rate,
                        next_funding_ts: next,
                    },
                    venue,
                    received_ts,
                },
            );
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rust_decimal_macros::dec;

    use super::*;

    fn fixture(rel: &str) -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("feeds")
                .join(rel),
        )
        .unwrap()
    }

    fn obs(symbol: &str, rate: Decimal, next: Option<i64>) -> FundingObs {
        FundingObs {
            symbol: symbol.into(),
            rate,
            next_funding_ts: next,
        }
    }

    /// Each venue's recorded frame yields the funding it carries, exactly.
    #[test]
    fn recorded_frames_yield_their_funding() {
        let cases: [(Venue, &str, Vec<FundingObs>); 7] = [
            (
                Venue::BinanceUsdm,
                "binance-usdm/mark_price.json",
                vec![obs("BTCUSDT", dec!(0.00038167), Some(1562306400000))],
            ),
            (
                Venue::BinanceUsdm,
                "binance-usdm/combined_mark_price.json",
                vec![obs("ETHUSDT", dec!(0.0001), Some(1788940800000))],
            ),
            (
                // The COIN-M delivery entry (`"r":""`, `"T":0`) is skipped.
                Venue::BinanceUsdm,
                "binance-usdm/mark_price_arr.json",
                vec![
                    obs("BTCUSDT", dec!(0.00008359), Some(1788940800000)),
                    obs("ETHUSDT", dec!(0.0001), Some(1788940800000)),
                ],
            ),
            (
                Venue::BybitLinear,
                "bybit-linear/ticker_snapshot.json",
                vec![obs("BTCUSDT", dec!(-0.000212), Some(1673280000000))],
            ),
            (
                Venue::Okx,
                "okx/funding_rate.json",
                vec![obs("BTC-USDT-SWAP", dec!(0.0001), Some(1744590349506))],
            ),
            (
                Venue::Deribit,
                "deribit/ticker_exponent.json",
                vec![obs("SHIB_USDC-PERPETUAL", dec!(-0.0000021), None)],
            ),
            (
                Venue::Hyperliquid,
                "hyperliquid/active_asset_ctx.json",
                vec![obs("BTC", dec!(0.0000018952), None)],
            ),
        ];
        for (venue, file, want) in cases {
            assert_eq!(
                parse_funding(venue, &fixture(file)).unwrap(),
                want,
                "{file}"
            );
        }
    }

    /// Frames without funding (acks, pongs, other channels, a Bybit delta without the field)
    /// yield nothing; a malformed rate is an error naming the field.
    #[test]
    fn other_frames_and_bad_rates() {
        for (venue, file) in [
            (Venue::BinanceUsdm, "binance-usdm/subscribe_ack.json"),
            (Venue::BybitLinear, "bybit-linear/pong.json"),
            (Venue::Okx, "okx/mark_price.json"),
            (Venue::Deribit, "deribit/price_index.json"),
            (Venue::Hyperliquid, "hyperliquid/all_mids.json"),
        ] {
            assert_eq!(
                parse_funding(venue, &fixture(file)).unwrap(),
                vec![],
                "{file}"
            );
        }
        let delta = r#"{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","markPrice":"1"},"cs":1,"ts":1}"#;
        assert_eq!(parse_funding(Venue::BybitLinear, delta).unwrap(), vec![]);
        let bad = r#"{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"1","r":"0,0001","T":2}"#;
        let e = parse_funding(Venue::BinanceUsdm, bad).unwrap_err();
        assert!(matches!(e, ParseError::BadNumber { field: "r", .. }), "{e}");
    }

    /// Hyperliquid settles on the hour: the next one after 12:34:56.789 is 13:00.
    #[test]
    fn next_hour_rounds_up() {
        assert_eq!(next_hour(45_296_789), 46_800_000);
        assert_eq!(next_hour(46_800_000), 50_400_000);
    }
}

#[cfg(test)]
mod publish_tests {
    use rust_decimal_macros::dec;

    use super::*;
    use crate::feeds::SymbolRoutes;
    use crate::model::{InstrumentId, PriceField};
    use crate::prices::funding::FundingBoard;

    /// A frame's funding reaches every instrument its symbol prices the mark of (not an index
    /// route), with the time moved by `map_ts`; Hyperliquid's settles on the next whole hour.
    #[test]
    fn routes_marks_and_times() {
        let mut routes = SymbolRoutes::default();
        routes.add(
            "BTCUSDT",
            InstrumentId::from("BTCUSDT-PERP"),
            PriceField::Mark,
        );
        routes.add("BTCUSDT", InstrumentId::from("BTC"), PriceField::Index);
        let board = FundingBoard::default();
        let frame = r#"{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"60000","i":"60000","P":"60000","r":"0.00010000","T":28800000}}"#;
        let n = publish_funding(Venue::BinanceUsdm, frame, &routes, &board, 5, |t| t + 7).unwrap();
        assert_eq!(n, 1);
        let e = board.get(&InstrumentId::from("BTCUSDT-PERP")).unwrap();
        assert_eq!(e.rate.rate, dec!(0.0001));
        assert_eq!(e.rate.next_funding_ts, Some(28_800_007));
        assert_eq!(e.venue, Venue::BinanceUsdm);
        assert!(board.get(&InstrumentId::from("BTC")).is_none());
        // No funding in the frame: nothing published.
        assert_eq!(
            publish_funding(
                Venue::BinanceUsdm,
                "{\"result\":null,\"id\":1}",
                &routes,
                &board,
                5,
                |t| t
            )
            .unwrap(),
            0
        );

        let mut hl = SymbolRoutes::default();
        hl.add("BTC", InstrumentId::from("HL-BTC-PERP"), PriceField::Mark);
        let frame = r#"{"channel":"activeAssetCtx","data":{"coin":"BTC","ctx":{"funding":"0.0000125","markPx":"60000"}}}"#;
        publish_funding(Venue::Hyperliquid, frame, &hl, &board, 3_600_001, |t| t).unwrap();
        let e = board.get(&InstrumentId::from("HL-BTC-PERP")).unwrap();
        assert_eq!(e.rate.next_funding_ts, Some(7_200_000));
    }
}
