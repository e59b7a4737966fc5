//! Fuzz-style property tests of every venue parser: arbitrary bytes, arbitrary JSON, venue-shaped
//! JSON, and mutated real frames and fixtures thrown at the Binance USD-M, Bybit linear, OKX,
//! Deribit and Hyperliquid parsers and the replay line parser never panic, a frame that fails
//! to parse never leaves ticks behind, and a tick's price is the exact decimal of its wire text.

use liqwatch::feeds::binance::BinanceUsdm;
use liqwatch::feeds::bybit::BybitLinear;
use liqwatch::feeds::deribit::DeribitFeed;
use liqwatch::feeds::hyperliquid::HyperliquidFeed;
use liqwatch::feeds::okx::OkxFeed;
use liqwatch::feeds::replay::parse_line;
use liqwatch::feeds::{Feed, VenueTick};
use liqwatch::model::Venue;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

// ---- Binance USD-M and Bybit linear ----

fn parsers() -> Vec<Box<dyn Feed>> {
    vec![Box::new(BinanceUsdm::new()), Box::new(BybitLinear::new())]
}

fn run_all(frame: &str) {
    for mut p in parsers() {
        // Seed Bybit state so deltas take the merge path.
        let mut seed = Vec::new();
        let _ = p.parse(
            r#"{"topic":"tickers.BTCUSDT","type":"snapshot","data":{"symbol":"BTCUSDT","markPrice":"1","indexPrice":"2"},"ts":1}"#,
            &mut seed,
        );
        let mut out: Vec<VenueTick<'_>> = Vec::new();
        if p.parse(frame, &mut out).is_err() {
            assert!(out.is_empty(), "ticks left behind on error: {frame}");
        }
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|n| serde_json::json!(n)),
        "[0-9.eE+-]{0,40}".prop_map(serde_json::Value::String),
        ".{0,12}".prop_map(serde_json::Value::String),
    ];
    let key = prop_oneof![
        Just("e".to_string()),
        Just("E".to_string()),
        Just("s".to_string()),
        Just("p".to_string()),
        Just("i".to_string()),
        Just("data".to_string()),
        Just("stream".to_string()),
        Just("result".to_string()),
        Just("id".to_string()),
        Just("error".to_string()),
        Just("topic".to_string()),
        Just("type".to_string()),
        Just("op".to_string()),
        Just("success".to_string()),
        Just("ret_msg".to_string()),
        Just("symbol".to_string()),
        Just("markPrice".to_string()),
        Just("indexPrice".to_string()),
        Just("ts".to_string()),
        "[a-zA-Z]{1,6}",
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const REAL: &[&str] = &[
    r#"{"stream":"!markPrice@arr@1s","data":[{"e":"markPriceUpdate","E":1788936948001,"s":"BTCUSDT","p":"79107.36658171","i":"79139.09565217","st":1}]}"#,
    r#"{"e":"markPriceUpdate","E":1562305380000,"s":"BTCUSDT","p":"11794.15000000","i":"11784.62659091"}"#,
    r#"{"result":null,"id":1}"#,
    r#"{"error":{"code":2,"msg":"Invalid request: …"},"id":4}"#,
    r#"{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","markPrice":"79120.55","indexPrice":""},"cs":1,"ts":2}"#,
    r#"{"success":false,"ret_msg":"error:handler not found,topic:tickers.X","op":"subscribe"}"#,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// Arbitrary strings never panic a parser.
    #[test]
    fn arbitrary_text(s in ".{0,300}") {
        run_all(&s);
    }

    /// Arbitrary bytes (lossily decoded, as the driver would see text) never panic a parser.
    #[test]
    fn arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..300)) {
        run_all(&String::from_utf8_lossy(&b));
    }

    /// Arbitrary JSON built from the venues' own keys never panics a parser.
    #[test]
    fn arbitrary_json(v in json_value()) {
        run_all(&v.to_string());
    }

    /// Real frames truncated or with one byte replaced never panic a parser.
    #[test]
    fn mutated_real_frames(which in 0..REAL.len(), cut in 0usize..400, pos in 0usize..400, byte in any::<u8>()) {
        let f = REAL[which];
        let cut = cut.min(f.len());
        let truncated: String = f.chars().take(cut).collect();
        run_all(&truncated);
        let mut bytes = f.as_bytes().to_vec();
        let pos = pos % bytes.len();
        bytes[pos] = byte;
        run_all(&String::from_utf8_lossy(&bytes));
    }
}

/// Every tick price parsed from a real frame is the exact decimal of its wire text.
#[test]
fn real_frames_parse_exactly() {
    let mut b = BinanceUsdm::new();
    let mut out = Vec::new();
    b.parse(REAL[0], &mut out).unwrap();
    assert_eq!(out[0].mark.unwrap().to_string(), "79107.36658171");
    assert_eq!(out[0].index.unwrap().to_string(), "79139.09565217");
}

// ---- OKX, Deribit, Hyperliquid and the replay line parser ----

/// Fresh adapters, subscribed as the driver would do, so stateful ack checks run too.
fn adapters() -> Vec<Box<dyn Feed>> {
    let mut okx = OkxFeed::new();
    okx.subscribe_messages(&["BTC-USDT-SWAP".into(), "BTC-USDT".into()]);
    let mut deribit = DeribitFeed::new();
    deribit.subscribe_messages(&["BTC-PERPETUAL".into(), "btc_usd".into()]);
    let mut hl = HyperliquidFeed::new().with_all_mids();
    hl.subscribe_messages(&["BTC".into()]);
    vec![Box::new(okx), Box::new(deribit), Box::new(hl)]
}

/// Parses `text` with every adapter; a failed parse must not have appended ticks.
fn parse_all(text: &str) {
    for mut feed in adapters() {
        let mut out: Vec<VenueTick<'_>> = Vec::new();
        if feed.parse(text, &mut out).is_err() {
            assert!(out.is_empty(), "{} left ticks after an error", feed.venue());
        }
    }
}

fn fixtures() -> Vec<String> {
    let mut all = Vec::new();
    for venue in ["okx", "deribit", "hyperliquid"] {
        let dir = format!("{}/feeds/{venue}", env!("CARGO_MANIFEST_DIR"));
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "txt"))
            .collect();
        names.sort();
        for p in names {
            all.push(std::fs::read_to_string(p).unwrap());
        }
    }
    all
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-zA-Z0-9._:\\-@/ ]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("1.423e-4"),
            Just("-0"),
            Just("1e400"),
            Just("NaN"),
            Just(""),
            Just("79228162514264337593543950336"),
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Keys the parsers look for, plus noise, so that generated objects reach deep code paths.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "event",
            "arg",
            "data",
            "code",
            "msg",
            "id",
            "channel",
            "instId",
            "markPx",
            "idxPx",
            "ts",
            "jsonrpc",
            "method",
            "params",
            "result",
            "error",
            "message",
            "type",
            "mark_price",
            "index_price",
            "timestamp",
            "price",
            "coin",
            "ctx",
            "oraclePx",
            "mids",
            "subscription",
        ])
        .prop_map(str::to_string),
        "[a-z]{1,6}",
    ]
}

/// Venue-shaped frames with arbitrary values in the price slots.
fn shaped() -> impl Strategy<Value = Value> {
    (arb_json(), arb_json(), 0..6usize).prop_map(|(a, b, which)| match which {
        0 => json!({"arg":{"channel":"mark-price","instId":"BTC-USDT-SWAP"},"data":[{"instId":"BTC-USDT-SWAP","markPx":a,"ts":b}]}),
        1 => json!({"event":a,"code":b,"msg":"x","id":"lw1"}),
        2 => json!({"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.BTC-PERPETUAL.100ms","data":{"mark_price":a,"index_price":b}}}),
        3 => json!({"jsonrpc":"2.0","id":2,"result":a,"error":b}),
        4 => json!({"channel":"activeAssetCtx","data":{"coin":"BTC","ctx":{"markPx":a,"oraclePx":b}}}),
        _ => json!({"channel":"allMids","data":{"mids":a}}),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    /// Arbitrary bytes (made text as a WebSocket text frame would be) never panic a parser.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_all(&String::from_utf8_lossy(&bytes));
    }

    /// Arbitrary JSON values never panic a parser.
    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        parse_all(&v.to_string());
    }

    /// Venue-shaped frames with arbitrary field values never panic a parser.
    #[test]
    fn shaped_json_never_panics(v in shaped()) {
        parse_all(&v.to_string());
    }

    /// Arbitrary replay lines, and replay-shaped lines with arbitrary values, never panic the
    /// replay line parser; an accepted line always names a known venue.
    #[test]
    fn replay_lines_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        venue in arb_json(),
        ms in arb_json(),
        frame in arb_json(),
    ) {
        let _ = parse_line(&String::from_utf8_lossy(&bytes), 1);
        let shaped = json!({"venue": venue, "received_ms": ms, "frame": frame}).to_string();
        if let Ok(Some(line)) = parse_line(&shaped, 2) {
            prop_assert!(Venue::ALL.contains(&line.venue));
        }
    }

    /// Every fixture cut at any point or with one byte replaced never panics a parser.
    #[test]
    fn mangled_fixtures_never_panic(pick in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let all = fixtures();
        let text = pick.get(&all);
        let at = cut.index(text.len().max(1));
        let mut bytes = text.as_bytes().to_vec();
        parse_all(&String::from_utf8_lossy(&bytes[..at.min(bytes.len())]));
        if !bytes.is_empty() {
            let i = at.min(bytes.len() - 1);
            bytes[i] = byte;
            parse_all(&String::from_utf8_lossy(&bytes));
        }
    }
}
