//! Fuzz-style property tests: arbitrary bytes, arbitrary JSON, and mutated real frames thrown
//! at the Binance USD-M and Bybit linear parsers never panic, and never yield a tick whose
//! price is not an exact decimal of the input. (feeds-more adds its venues here or alongside.)

use liqwatch::feeds::binance::BinanceUsdm;
use liqwatch::feeds::bybit::BybitLinear;
use liqwatch::feeds::{Feed, VenueTick};
use proptest::prelude::*;

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
