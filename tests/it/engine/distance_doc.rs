//! Keeps the `shock_distance` example of `docs/events.md` true (issue 13 part 1): the worked
//! example of docs/engine.md ("Distance levels") at BTC 48,000 through the one `Engine`.
//!
//! To regenerate: `LIQWATCH_PRINT_EVENTS=1 cargo test --test it engine::distance_doc --
//! --nocapture` and paste the printed block into docs/events.md.

use std::collections::HashMap;
use std::sync::Arc;

use liqwatch::engine::map::AccountMap;
use liqwatch::engine::{Engine, EngineConfig, MonitorConfig};
use liqwatch::model::{
    AccountUpdate, InstrumentId, InstrumentKind, LevelType, PriceUsed, Thresholds,
};
use rust_decimal_macros::dec;
use uuid::Uuid;

use crate::support::engine_fixtures::{instrument, tier, tiered};

const T0: i64 = 1_722_816_000_000;

/// The distance warning at 48,000 (ratio 4.8 %, 7.97 % from the trigger), as the docs show it.
#[test]
fn shock_distance_example_is_true() {
    let mut usdt = instrument("USDT", InstrumentKind::Collateral, "USDT");
    usdt.stable = true;
    let btc = tiered(
        "BTCUSDT-PERP",
        InstrumentKind::LinearPerpetual,
        "BTC",
        vec![tier(dec!(0), dec!(1000000000), dec!(0.004), dec!(0))],
    );
    let mut engine = Engine::new(
        Arc::new(AccountMap::new(vec![usdt, btc])),
        EngineConfig {
            monitor: MonitorConfig {
                thresholds: Thresholds {
                    warn_within_shock: vec![dec!(0.1), dec!(0.05)],
                    ..Thresholds::default()
                },
                ..MonitorConfig::default()
            },
            distance_index: true,
        },
    )
    .unwrap();
    let info = |p| {
        let id = InstrumentId::from("BTCUSDT-PERP");
        HashMap::from([(
            id.clone(),
            PriceUsed {
                instrument: id,
                price: p,
                source: "binance-usdm".into(),
                received_ts: T0,
                age_ms: 120,
                stale: false,
            },
        )])
    };
    let account = serde_json::from_str(
        r#"{"id":"desk-1","collateral":{"USDT":"60000"},
        "positions":[{"instrument":"BTCUSDT-PERP","quantity":"10","entry_price":"50000"}]}"#,
    )
    .unwrap();
    engine
        .on_update(AccountUpdate::Replace { account }, &info(dec!(50000)), T0)
        .unwrap();
    let id = InstrumentId::from("BTCUSDT-PERP");
    assert!(
        engine
            .on_prices([(&id, dec!(50000))], &info(dec!(50000)), T0)
            .is_empty()
    );
    let e = engine.on_prices([(&id, dec!(48000))], &info(dec!(48000)), T0 + 900_000);
    assert_eq!(e.len(), 1);
    let mut ev = e[0].event.clone();
    assert_eq!(ev.level_type, Some(LevelType::ShockDistance));
    ev.event_id = Uuid::from_u128(0x0191_0000_0000_7000_8000_0000_0000_0001);
    if std::env::var_os("LIQWATCH_PRINT_EVENTS").is_some() {
        println!(
            "```json\n{}\n```",
            serde_json::to_string_pretty(&ev).unwrap()
        );
    }
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).unwrap();
    let start = docs
        .find("<!-- section: shock-distance-example -->")
        .expect("docs/events.md shock distance section marker");
    let block = docs[start..]
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a JSON block in the section");
    let documented: serde_json::Value = serde_json::from_str(block).unwrap();
    assert_eq!(
        documented,
        serde_json::to_value(&ev).unwrap(),
        "docs/events.md shock_distance example out of date; regenerate with LIQWATCH_PRINT_EVENTS=1"
    );
}
