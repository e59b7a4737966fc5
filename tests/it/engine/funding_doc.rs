//! Keeps the funding example of `docs/events.md` true: a `liquidation_warning` with
//! `level_type: "funding"` from `Engine::on_funding_clock`, five minutes before the funding
//! time, for an account that 0.01 % funding carries across the 0.8 warning.
//!
//! To regenerate: `LIQWATCH_PRINT_EVENTS=1 cargo test --test it engine::funding_doc --
//! --nocapture` and paste the printed block into docs/events.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use liqwatch::engine::map::AccountMap;
use liqwatch::engine::{Engine, EngineConfig, MonitorConfig, PriceInfo};
use liqwatch::margin::funding::FundingRate;
use liqwatch::model::{
    Account, AccountUpdate, InstrumentId, InstrumentKind, PriceField, PriceSource, PriceUsed, Venue,
};
use rust_decimal_macros::dec;
use uuid::Uuid;

use crate::support::engine_fixtures::{tier, tiered};

const T: i64 = 1_621_440_000_000; // 2021-05-19T16:00:00Z, a Binance funding time

/// Binance-priced prices and one funding rate.
struct Board(HashMap<InstrumentId, PriceUsed>, FundingRate);

impl PriceInfo for Board {
    fn price_info(&self, i: &InstrumentId) -> Option<PriceUsed> {
        self.0.get(i).cloned()
    }
    fn funding(&self, i: &InstrumentId) -> Option<FundingRate> {
        (*i == InstrumentId::from("BTCUSDT-PERP")).then_some(self.1)
    }
}

fn example() -> liqwatch::model::RiskEvent {
    let mut btc = tiered(
        "BTCUSDT-PERP",
        InstrumentKind::LinearPerpetual,
        "BTC",
        vec![
            tier(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
            tier(dec!(50000), dec!(600000), dec!(0.005), dec!(50)),
            tier(dec!(600000), dec!(3000000), dec!(0.0065), dec!(950)),
        ],
    );
    btc.sources = vec![PriceSource {
        venue: Venue::BinanceUsdm,
        symbol: "BTCUSDT".into(),
        field: PriceField::Mark,
    }];
    let mut usdt = tiered("USDT", InstrumentKind::Collateral, "USDT", vec![]);
    usdt.stable = true;
    let mut e = Engine::new(
        Arc::new(AccountMap::new([btc, usdt])),
        EngineConfig {
            monitor: MonitorConfig::default(),
            distance_index: true,
        },
    )
    .unwrap();
    e.set_warn_before_funding(Some(Duration::from_secs(600)));
    let now = T - 300_000;
    let board = Board(
        HashMap::from([(
            InstrumentId::from("BTCUSDT-PERP"),
            PriceUsed {
                instrument: "BTCUSDT-PERP".into(),
                price: dec!(60000),
                source: Venue::BinanceUsdm.to_string().into(),
                received_ts: now - 250,
                age_ms: 250,
                stale: false,
            },
        )]),
        FundingRate {
            rate: dec!(0.0001),
            next_funding_ts: Some(T),
        },
    );
    let account: Account = serde_json::from_str(
        r#"{"id":"desk-7/f","collateral":{"USDT":"3700"},"positions":[
        {"instrument":"BTCUSDT-PERP","quantity":"10","entry_price":"60000"}]}"#,
    )
    .unwrap();
    e.on_update(AccountUpdate::Replace { account }, &board, now - 1000)
        .unwrap();
    let btc_id = InstrumentId::from("BTCUSDT-PERP");
    assert!(
        e.on_prices([(&btc_id, dec!(60000))], &board, now - 1000)
            .is_empty()
    );
    let mut ev = e.on_funding_clock(&board, now);
    assert_eq!(ev.len(), 1);
    let mut ev = ev.remove(0).event;
    ev.event_id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0f01);
    ev
}

/// The funding block of docs/events.md is what the engine emits (distances blanked: the
/// margin model documents them).
#[test]
fn funding_example_is_true() {
    let ev = example();
    if std::env::var_os("LIQWATCH_PRINT_EVENTS").is_some() {
        println!(
            "```json\n{}\n```",
            serde_json::to_string_pretty(&ev).unwrap()
        );
    }
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).unwrap();
    let start = doc
        .find("<!-- section: funding -->")
        .expect("docs/events.md funding section marker");
    let block = doc[start..]
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a JSON block in the funding section");
    let blank = |mut v: serde_json::Value| {
        v["snapshot"]["shock_distance"] = serde_json::Value::Null;
        for p in v["snapshot"]["positions"].as_array_mut().unwrap() {
            for k in [
                "liquidation_price",
                "liquidation_price_down",
                "liquidation_price_up",
            ] {
                p[k] = serde_json::Value::Null;
            }
        }
        v
    };
    let documented: serde_json::Value = serde_json::from_str(block).unwrap();
    assert_eq!(
        blank(documented),
        blank(serde_json::to_value(&ev).unwrap()),
        "docs/events.md funding example out of date; regenerate with LIQWATCH_PRINT_EVENTS=1"
    );
}
