//! `after_trigger`: with `mark_liquidated` a triggered account stays silent while prices
//! bounce, until its next account update; with `keep_watching` (default) it recovers and
//! triggers again. Every trigger carries its liquidation cost. Eager and indexed alike.

use std::collections::HashMap;
use std::sync::Arc;

use liqwatch::engine::map::AccountMap;
use liqwatch::engine::{AfterTrigger, Engine, EngineConfig, MonitorConfig};
use liqwatch::margin::to_cents;
use liqwatch::model::{
    Account, AccountUpdate, EventKind, Instrument, InstrumentId, InstrumentKind, PriceUsed,
};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use crate::support::engine_fixtures::{tier, tiered};

fn instruments() -> Vec<Instrument> {
    let t = vec![
        tier(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
        tier(dec!(50000), dec!(600000), dec!(0.005), dec!(50)),
        tier(dec!(600000), dec!(3000000), dec!(0.0065), dec!(950)),
    ];
    let sol = vec![
        tier(dec!(0), dec!(20000), dec!(0.005), dec!(0)),
        tier(dec!(20000), dec!(100000), dec!(0.0065), dec!(30)),
        tier(dec!(100000), dec!(800000), dec!(0.01), dec!(380)),
    ];
    let mut usdt = tiered("USDT", InstrumentKind::Collateral, "USDT", vec![]);
    usdt.stable = true;
    let mut btc = tiered("BTC", InstrumentKind::Collateral, "BTC", vec![]);
    btc.collateral_ratio = dec!(0.95);
    vec![
        tiered(
            "BTCUSDT-PERP",
            InstrumentKind::LinearPerpetual,
            "BTC",
            t.clone(),
        ),
        tiered("ETHUSDT-PERP", InstrumentKind::LinearPerpetual, "ETH", t),
        tiered("SOLUSDT-PERP", InstrumentKind::LinearPerpetual, "SOL", sol),
        usdt,
        btc,
    ]
}

fn w3() -> Account {
    serde_json::from_str(
        r#"{"id":"w3","collateral":{"USDT":"60500","BTC":"1.5"},"positions":[
        {"instrument":"BTCUSDT-PERP","quantity":"10.5","entry_price":"62000"},
        {"instrument":"ETHUSDT-PERP","quantity":"150","entry_price":"3100"},
        {"instrument":"SOLUSDT-PERP","quantity":"-2000","entry_price":"140"}]}"#,
    )
    .unwrap()
}

const W3: [Decimal; 3] = [dec!(60000), dec!(3000), dec!(150)];
const W4: [Decimal; 3] = [dec!(54000), dec!(2700), dec!(135)];

struct Run {
    engine: Engine,
    info: HashMap<InstrumentId, PriceUsed>,
}

impl Run {
    fn new(mode: Option<AfterTrigger>, index: bool) -> Run {
        let mut engine = Engine::new(
            Arc::new(AccountMap::new(instruments())),
            EngineConfig {
                monitor: MonitorConfig::default(),
                distance_index: index,
            },
        )
        .unwrap();
        if let Some(m) = mode {
            engine.set_after_trigger(m);
        }
        let mut r = Run {
            engine,
            info: HashMap::new(),
        };
        assert!(
            r.update(AccountUpdate::Replace { account: w3() })
                .is_empty()
        );
        r
    }

    fn prices(&mut self, p: [Decimal; 3]) -> Vec<EventKind> {
        let burst: Vec<(InstrumentId, Decimal)> = [
            ("BTCUSDT-PERP", p[0]),
            ("BTC", p[0]),
            ("ETHUSDT-PERP", p[1]),
            ("SOLUSDT-PERP", p[2]),
        ]
        .into_iter()
        .map(|(i, p)| (InstrumentId::from(i), p))
        .collect();
        let ev = self
            .engine
            .on_prices(burst.iter().map(|(i, p)| (i, *p)), &self.info, 0);
        for e in &ev {
            let cost = e.event.snapshot.as_ref().unwrap().liquidation_cost.as_ref();
            match e.event.kind {
                // §4.3: the W4 trigger costs 6,210.00 against 3,450.00 of equity (plus any
                // deposit made since).
                EventKind::LiquidationTrigger => {
                    let c = cost.expect("a trigger carries its liquidation cost");
                    assert_eq!(to_cents(c.penalty), dec!(6210.00));
                    assert_eq!(c.shortfall, c.penalty - c.equity);
                    assert!(to_cents(c.shortfall) <= dec!(2760.00));
                }
                _ => assert!(cost.is_none(), "only triggers carry a cost"),
            }
        }
        ev.into_iter().map(|e| e.event.kind).collect()
    }

    fn update(&mut self, u: AccountUpdate) -> Vec<EventKind> {
        let (_, ev) = self.engine.on_update(u, &self.info, 0).unwrap();
        ev.into_iter().map(|e| e.event.kind).collect()
    }
}

use EventKind::{LiquidationTrigger as Trigger, LiquidationWarning as Warning, Recovered};

/// Default and explicit `keep_watching`: a bounce recovers the account, the next fall
/// triggers it again.
#[test]
fn keep_watching_recovers_and_retriggers() {
    for index in [false, true] {
        for mode in [None, Some(AfterTrigger::KeepWatching)] {
            let mut r = Run::new(mode, index);
            assert_eq!(r.prices(W3), []);
            assert_eq!(r.prices(W4), [Trigger]);
            assert_eq!(r.prices(W3), [Recovered]);
            assert_eq!(r.prices(W4), [Trigger]);
        }
    }
}

/// `mark_liquidated`: after the trigger, bounces and falls emit nothing (with the index on,
/// they do not even value the account); an account update ends the mark (evaluated at once: still triggered at W4, so no event), and the next bounce
/// recovers it.
#[test]
fn mark_liquidated_is_silent_until_the_next_update() {
    for index in [false, true] {
        let mut r = Run::new(Some(AfterTrigger::MarkLiquidated), index);
        assert_eq!(r.prices(W3), []);
        assert_eq!(r.prices(W4), [Trigger]);
        assert_eq!(
            r.prices(W3),
            [],
            "index {index}: a bounce must not recover it"
        );
        if index {
            // A marked account has no level to wake it for: the bounce did not even value it.
            assert_eq!(r.engine.last_valued(), 0);
        }
        assert_eq!(r.prices(W4), [], "index {index}: nor re-trigger it");
        assert_eq!(r.prices(W3), []);
        // A fill/transfer arrives: the account is watched again from its current state.
        assert_eq!(
            r.update(AccountUpdate::Collateral {
                account_id: "w3".into(),
                asset: "USDT".into(),
                delta: dec!(1),
            }),
            [Recovered],
            "index {index}: at W3 prices the update finds it healthy"
        );
        assert_eq!(r.prices(W4), [Trigger]);
        // Marked again by this trigger.
        assert_eq!(r.prices(W3), []);
    }
}

/// A warning is not a trigger: `mark_liquidated` does not silence a warned account.
#[test]
fn mark_liquidated_leaves_warnings_alone() {
    let mut r = Run::new(Some(AfterTrigger::MarkLiquidated), true);
    assert_eq!(r.prices(W3), []);
    assert_eq!(r.prices([dec!(54360), dec!(2718), dec!(135.9)]), [Warning]);
    assert_eq!(r.prices(W3), [Recovered]);
}
