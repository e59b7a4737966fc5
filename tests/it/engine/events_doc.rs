//! Keeps the event examples of `docs/events.md` true: builds the margin-math W3 account, drives
//! it through warning (−9.4 %), trigger (W4, −10 %) and recovery with the one `Engine`, and
//! checks that every JSON example on that page is what the code emits.
//!
//! To regenerate the examples: `LIQWATCH_PRINT_EVENTS=1 cargo test --test it engine::events_doc
//! -- --nocapture` and paste the printed blocks into docs/events.md.

use std::collections::HashMap;

use liqwatch::engine::map::AccountMap;
use liqwatch::engine::{Engine, EngineConfig, MonitorConfig};
use liqwatch::model::{
    Account, AccountUpdate, EventKind, FeedEventInfo, Instrument, InstrumentId, InstrumentKind,
    PriceField, PriceSource, PriceUsed, RiskEvent, Venue,
};
use liqwatch::prices::StaleTransition;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use std::sync::Arc;
use uuid::Uuid;

use crate::support::engine_fixtures::{tier, tiered as instrument};

/// Binance BTC/ETH/SOL USDT-perpetual tiers of margin-math §2.1 (the rows W3–W4 use), USDT and
/// BTC collateral at 0.95.
fn instruments() -> Vec<Instrument> {
    let btc_eth = vec![
        tier(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
        tier(dec!(50000), dec!(600000), dec!(0.005), dec!(50)),
        tier(dec!(600000), dec!(3000000), dec!(0.0065), dec!(950)),
        tier(dec!(3000000), dec!(12000000), dec!(0.01), dec!(11450)),
    ];
    let sol = vec![
        tier(dec!(0), dec!(20000), dec!(0.005), dec!(0)),
        tier(dec!(20000), dec!(100000), dec!(0.0065), dec!(30)),
        tier(dec!(100000), dec!(800000), dec!(0.01), dec!(380)),
        tier(dec!(800000), dec!(4000000), dec!(0.02), dec!(8380)),
    ];
    let mut usdt = instrument("USDT", InstrumentKind::Collateral, "USDT", vec![]);
    usdt.stable = true;
    usdt.liquidation_fee_rate = Decimal::ZERO;
    let mut btc = instrument("BTC", InstrumentKind::Collateral, "BTC", vec![]);
    btc.collateral_ratio = dec!(0.95);
    btc.liquidation_fee_rate = Decimal::ZERO;
    // Priced (and margined) on Binance USD-M: the trigger's liquidation cost names the venue.
    let binance = |mut i: Instrument, symbol: &str| {
        i.sources = vec![PriceSource {
            venue: Venue::BinanceUsdm,
            symbol: symbol.into(),
            field: PriceField::Mark,
        }];
        i
    };
    vec![
        binance(
            instrument(
                "BTCUSDT-PERP",
                InstrumentKind::LinearPerpetual,
                "BTC",
                btc_eth.clone(),
            ),
            "BTCUSDT",
        ),
        binance(
            instrument(
                "ETHUSDT-PERP",
                InstrumentKind::LinearPerpetual,
                "ETH",
                btc_eth,
            ),
            "ETHUSDT",
        ),
        binance(
            instrument("SOLUSDT-PERP", InstrumentKind::LinearPerpetual, "SOL", sol),
            "SOLUSDT",
        ),
        usdt,
        btc,
    ]
}

fn w3_account() -> Account {
    serde_json::from_str(
        r#"{"id":"desk-7/w3","collateral":{"USDT":"60500","BTC":"1.5"},"positions":[
        {"instrument":"BTCUSDT-PERP","quantity":"10.5","entry_price":"62000"},
        {"instrument":"ETHUSDT-PERP","quantity":"150","entry_price":"3100"},
        {"instrument":"SOLUSDT-PERP","quantity":"-2000","entry_price":"140"}]}"#,
    )
    .unwrap()
}

const T0: i64 = 1_621_428_600_000; // 2021-05-19T12:50:00Z

fn info(prices: [Decimal; 3], now: i64) -> HashMap<InstrumentId, PriceUsed> {
    let mut m = HashMap::new();
    for (id, sym, p) in [
        ("BTCUSDT-PERP", "BTCUSDT", prices[0]),
        ("BTC", "BTCUSDT", prices[0]),
        ("ETHUSDT-PERP", "ETHUSDT", prices[1]),
        ("SOLUSDT-PERP", "SOLUSDT", prices[2]),
    ] {
        let _ = sym;
        m.insert(
            InstrumentId::from(id),
            PriceUsed {
                instrument: id.into(),
                price: p,
                source: Venue::BinanceUsdm.to_string().into(),
                received_ts: now - 250,
                age_ms: 250,
                stale: false,
            },
        );
    }
    m
}

/// The one engine (eager; the index emits the same, see `index_props`) over the W3 account.
fn engine() -> Engine {
    Engine::new(
        Arc::new(AccountMap::new(instruments())),
        EngineConfig {
            monitor: MonitorConfig::default(),
            distance_index: false,
        },
    )
    .unwrap()
}

/// Drives W3 → warning → W4 trigger → recovered through `Engine::on_prices` (each step one
/// burst of four prices, as the runner takes them from the board); fixes ids so the output is
/// reproducible.
fn story() -> Vec<RiskEvent> {
    let mut engine = engine();
    engine
        .on_update(
            AccountUpdate::Replace {
                account: w3_account(),
            },
            &HashMap::<InstrumentId, PriceUsed>::new(),
            T0,
        )
        .unwrap();
    let mut events = Vec::new();
    let steps = [
        [dec!(60000), dec!(3000), dec!(150)],
        [dec!(54360), dec!(2718), dec!(135.9)],
        [dec!(54000), dec!(2700), dec!(135)],
        [dec!(60000), dec!(3000), dec!(150)],
    ];
    for (n, p) in steps.into_iter().enumerate() {
        let now = T0 + 60_000 * n as i64;
        let burst: Vec<(InstrumentId, Decimal)> = [
            ("BTCUSDT-PERP", p[0]),
            ("BTC", p[0]),
            ("ETHUSDT-PERP", p[1]),
            ("SOLUSDT-PERP", p[2]),
        ]
        .into_iter()
        .map(|(i, p)| (InstrumentId::from(i), p))
        .collect();
        for e in engine.on_prices(burst.iter().map(|(i, p)| (i, *p)), &info(p, now), now) {
            let mut ev = e.event;
            ev.event_id =
                Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + ev.seq as u128);
            events.push(ev);
        }
    }
    events
}

/// A `feed_stale` event as the engine makes it from the price board's transition.
fn feed_stale_example() -> RiskEvent {
    let transition = StaleTransition {
        kind: EventKind::FeedStale,
        seq: 1,
        info: FeedEventInfo {
            instrument: "BTCUSDT-PERP".into(),
            venues: vec![Venue::BinanceUsdm, Venue::Okx],
            last_price: Some(dec!(54000)),
            age_ms: Some(30_250),
            stale_after_ms: 30_000,
        },
    };
    let step = engine().on_feed(
        &[transition],
        &HashMap::<InstrumentId, PriceUsed>::new(),
        T0 + 300_000,
    );
    assert!(step.emitted.is_empty(), "a stale feed changes no account");
    let mut e = step.feed_events.into_iter().next().unwrap();
    e.event_id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00ff);
    e
}

/// Blanks the fields the margin model computes (distances), which its own section documents.
fn without_distances(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(s) = v.get_mut("snapshot").and_then(|s| s.as_object_mut()) {
        s.insert("shock_distance".into(), serde_json::Value::Null);
        if let Some(ps) = s.get_mut("positions").and_then(|p| p.as_array_mut()) {
            for p in ps {
                if let Some(o) = p.as_object_mut() {
                    for k in [
                        "liquidation_price",
                        "liquidation_price_down",
                        "liquidation_price_up",
                    ] {
                        o.insert(k.into(), serde_json::Value::Null);
                    }
                }
            }
        }
    }
    v
}

/// The JSON blocks of the docs/events.md examples section, in order.
fn readme_blocks() -> Vec<serde_json::Value> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).unwrap();
    let start = readme
        .find("## Examples: the W3 account from healthy to liquidation and back")
        .expect("docs/events.md section marker");
    let rest = &readme[start..];
    let end = rest[10..]
        .find("<!-- section:")
        .map(|i| i + 10)
        .unwrap_or(rest.len());
    let section = &rest[..end];
    let mut blocks = Vec::new();
    let mut it = section.split("```json\n").skip(1);
    for b in it.by_ref() {
        let body = b.split("\n```").next().unwrap();
        blocks.push(serde_json::from_str(body).expect("docs/events.md JSON block parses"));
    }
    blocks
}

/// docs/events.md's warning, trigger, recovered and feed_stale examples are exactly what the code
/// emits for the W3 story (apart from the margin model's distance fields).
#[test]
fn readme_event_examples_are_true() {
    let mut events = story();
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [
            EventKind::LiquidationWarning,
            EventKind::LiquidationTrigger,
            EventKind::Recovered
        ]
    );
    events.push(feed_stale_example());
    // The page shows the trigger first, then warning, recovered and feed_stale.
    events.swap(0, 1);
    let generated: Vec<serde_json::Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    if std::env::var_os("LIQWATCH_PRINT_EVENTS").is_some() {
        // Printed in wire order (struct field order), as the sinks send them.
        for e in &events {
            println!(
                "```json\n{}\n```\n",
                serde_json::to_string_pretty(e).unwrap()
            );
        }
    }
    let documented = readme_blocks();
    assert_eq!(
        documented.len(),
        generated.len(),
        "docs/events.md must hold {} JSON examples; regenerate with LIQWATCH_PRINT_EVENTS=1",
        generated.len()
    );
    for (d, g) in documented.into_iter().zip(generated) {
        assert_eq!(
            without_distances(d),
            without_distances(g),
            "docs/events.md example out of date; regenerate with LIQWATCH_PRINT_EVENTS=1 cargo test --test it engine::events_doc -- --nocapture"
        );
    }
}

/// The `instrument_changed` example of docs/events.md (the section after the marker
/// `<!-- section: instrument_changed -->`) is what `Engine::replace_instruments` emits when
/// Binance raises BTCUSDT's 600k–3M bracket from 0.65 % to 0.75 % under the W3 account.
#[test]
fn instrument_changed_example_is_true() {
    let mut engine = engine();
    let none = HashMap::<InstrumentId, PriceUsed>::new();
    engine
        .on_update(
            AccountUpdate::Replace {
                account: w3_account(),
            },
            &none,
            T0,
        )
        .unwrap();
    let p = [dec!(60000), dec!(3000), dec!(150)];
    let burst: Vec<(InstrumentId, Decimal)> = [
        ("BTCUSDT-PERP", p[0]),
        ("BTC", p[0]),
        ("ETHUSDT-PERP", p[1]),
        ("SOLUSDT-PERP", p[2]),
    ]
    .into_iter()
    .map(|(i, p)| (InstrumentId::from(i), p))
    .collect();
    assert!(
        engine
            .on_prices(burst.iter().map(|(i, p)| (i, *p)), &info(p, T0), T0)
            .is_empty()
    );
    let mut btc = instruments().into_iter().next().unwrap();
    btc.tiers[2].mmr = dec!(0.0075);
    btc.tiers[2].cum = dec!(1550);
    btc.tiers[3].cum = dec!(9050);
    btc.source_note = Some("binance-usdm refresh".into());
    let now = T0 + 3_600_000;
    let step = engine.replace_instruments(
        &[btc],
        "binance-usdm refresh from https://fapi.binance.com/fapi/v1/leverageBracket",
        &info(p, now),
        now,
    );
    assert!(
        step.emitted.is_empty(),
        "W3 stays healthy: {:?}",
        step.emitted
    );
    let mut ev = step.events.into_iter().next().unwrap();
    ev.event_id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0100);
    let generated = serde_json::to_value(&ev).unwrap();
    if std::env::var_os("LIQWATCH_PRINT_EVENTS").is_some() {
        println!(
            "```json\n{}\n```\n",
            serde_json::to_string_pretty(&ev).unwrap()
        );
    }
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).unwrap();
    let section = doc
        .split("<!-- section: instrument_changed -->")
        .nth(1)
        .expect("docs/events.md: the instrument_changed section marker");
    let block = section
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("docs/events.md: the instrument_changed example");
    let documented: serde_json::Value = serde_json::from_str(block).unwrap();
    assert_eq!(
        documented, generated,
        "docs/events.md instrument_changed example out of date; regenerate with LIQWATCH_PRINT_EVENTS=1 cargo test --test it engine::events_doc -- --nocapture"
    );
}
