//! Fuzz-style property tests for the OKX, Deribit and Hyperliquid parsers and the replay line
//! parser: arbitrary bytes, arbitrary JSON, venue-shaped JSON and mangled fixtures never panic,
//! and a frame that fails to parse never leaves ticks behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use liqwatch::feeds::deribit::DeribitFeed;
use liqwatch::feeds::hyperliquid::HyperliquidFeed;
use liqwatch::feeds::okx::OkxFeed;
use liqwatch::feeds::replay::parse_line;
use liqwatch::feeds::{Feed, VenueTick};
use liqwatch::model::Venue;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

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
