//! Issue 11 item 5: an account with no exposure (maintenance margin 0) is healthy whatever its
//! equity. Driven through the one `Engine`, eager and with the distance index: an empty account
//! and a collateral-only account that owes money fire nothing, even as prices move; an account
//! with a position and negative equity fires `liquidation_trigger`; and an owing account that
//! opens a position fires, then recovers when the position is closed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use liqwatch::engine::{AccountMap, Emitted, Engine, EngineConfig, MonitorConfig};
use liqwatch::margin;
use liqwatch::model::{
    Account, AccountId, AccountState, AccountUpdate, EventKind, Instrument, InstrumentId,
    InstrumentKind, MarginRatio, Position, PositionSide, PriceUsed,
};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use crate::support::engine_fixtures::{instrument, tier};

fn instruments() -> Vec<Instrument> {
    let mut btc = instrument("BTCUSDT-PERP", InstrumentKind::LinearPerpetual, "BTC");
    btc.tiers = vec![
        tier(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
        tier(dec!(50000), dec!(600000), dec!(0.005), dec!(50)),
    ];
    let mut usdt = instrument("USDT", InstrumentKind::Collateral, "USDT");
    usdt.stable = true;
    let btc_c = instrument("BTC", InstrumentKind::Collateral, "BTC");
    vec![btc, usdt, btc_c]
}

fn account(id: &str, collateral: &[(&str, Decimal)], positions: &[(Decimal, Decimal)]) -> Account {
    Account {
        id: id.into(),
        collateral: collateral
            .iter()
            .map(|(k, v)| (InstrumentId::from(*k), *v))
            .collect::<BTreeMap<_, _>>(),
        positions: positions
            .iter()
            .map(|(q, ep)| Position {
                instrument: "BTCUSDT-PERP".into(),
                side: PositionSide::Both,
                quantity: *q,
                entry_price: *ep,
            })
            .collect(),
        thresholds: None,
        apply_funding: false,
    }
}

fn engines() -> Vec<(&'static str, Engine)> {
    [("eager", false), ("indexed", true)]
        .into_iter()
        .map(|(name, distance_index)| {
            let map = Arc::new(AccountMap::new(instruments()));
            let cfg = EngineConfig {
                monitor: MonitorConfig::default(),
                distance_index,
            };
            (name, Engine::new(map, cfg).unwrap())
        })
        .collect()
}

fn kinds_for(events: &[Emitted], id: &str) -> Vec<EventKind> {
    events
        .iter()
        .filter(|e| e.account_id.as_str() == id)
        .map(|e| e.event.kind)
        .collect()
}

fn put(engine: &mut Engine, a: Account) -> Vec<Emitted> {
    let info: HashMap<InstrumentId, PriceUsed> = HashMap::new();
    engine
        .on_update(AccountUpdate::Replace { account: a }, &info, 0)
        .unwrap()
        .1
}

fn tick(engine: &mut Engine, btc: Decimal) -> Vec<Emitted> {
    let info: HashMap<InstrumentId, PriceUsed> = HashMap::new();
    let ids = [
        InstrumentId::from("BTCUSDT-PERP"),
        InstrumentId::from("BTC"),
    ];
    engine.on_prices(ids.iter().map(|i| (i, btc)), &info, 0)
}

fn ratio(engine: &Engine, id: &str) -> Option<MarginRatio> {
    engine
        .map()
        .read(&AccountId::from(id), |v| v.ratio())
        .flatten()
}

/// No exposure, no event: the empty account and a collateral-only account with a negative
/// balance stay healthy (ratio 0) at every price; the account with a position and negative
/// equity triggers (ratio ∞). The from-scratch snapshot agrees with the cached ratio.
#[test]
fn no_exposure_never_triggers_issue_11_item_5() {
    for (name, mut e) in engines() {
        let mut events = tick(&mut e, dec!(50000));
        events.extend(put(&mut e, account("empty", &[], &[])));
        events.extend(put(&mut e, account("owes", &[("USDT", dec!(-1000))], &[])));
        events.extend(put(
            &mut e,
            account("owes-btc", &[("BTC", dec!(-0.5)), ("USDT", dec!(10))], &[]),
        ));
        events.extend(put(
            &mut e,
            account(
                "exposed",
                &[("USDT", dec!(-1000))],
                &[(dec!(1), dec!(50000))],
            ),
        ));
        for p in [dec!(40000), dec!(49000), dec!(1), dec!(50000)] {
            events.extend(tick(&mut e, p));
        }
        for quiet in ["empty", "owes", "owes-btc"] {
            assert_eq!(kinds_for(&events, quiet), vec![], "{name}: {quiet}");
            assert_eq!(
                ratio(&e, quiet),
                Some(MarginRatio::Finite(Decimal::ZERO)),
                "{name}: {quiet}"
            );
            let state = e.monitor().state(e.map(), &AccountId::from(quiet));
            assert!(
                state
                    .as_ref()
                    .is_none_or(|s| s.state == AccountState::Healthy),
                "{name}: {quiet} {state:?}"
            );
        }
        assert_eq!(
            kinds_for(&events, "exposed"),
            vec![EventKind::LiquidationTrigger],
            "{name}"
        );
        assert_eq!(ratio(&e, "exposed"), Some(MarginRatio::Infinite), "{name}");

        // The oracle: a from-scratch snapshot gives the same ratio as the caches.
        let mut prices = HashMap::new();
        prices.insert(InstrumentId::from("BTCUSDT-PERP"), dec!(50000));
        prices.insert(InstrumentId::from("BTC"), dec!(50000));
        let table: HashMap<InstrumentId, Instrument> = instruments()
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        for id in ["empty", "owes", "owes-btc", "exposed"] {
            let a = e.map().account(&AccountId::from(id)).unwrap();
            let s = margin::account_snapshot(&a, &table, &prices, Decimal::ONE).unwrap();
            assert_eq!(Some(s.margin_ratio), ratio(&e, id), "{name}: {id}");
        }
    }
}

/// An owing account opening a position is exposed and triggers; closing the position (quantity
/// 0 is no exposure) recovers it, even though its equity is still negative.
#[test]
fn exposure_comes_and_goes() {
    for (name, mut e) in engines() {
        tick(&mut e, dec!(50000));
        assert_eq!(
            kinds_for(&put(&mut e, account("a", &[("USDT", dec!(-10))], &[])), "a"),
            vec![],
            "{name}"
        );
        let opened = put(
            &mut e,
            account("a", &[("USDT", dec!(-10))], &[(dec!(0.1), dec!(50000))]),
        );
        assert_eq!(
            kinds_for(&opened, "a"),
            vec![EventKind::LiquidationTrigger],
            "{name}"
        );
        let closed = put(
            &mut e,
            account("a", &[("USDT", dec!(-10))], &[(dec!(0), dec!(50000))]),
        );
        assert_eq!(
            kinds_for(&closed, "a"),
            vec![EventKind::Recovered],
            "{name}"
        );
        assert!(
            kinds_for(&tick(&mut e, dec!(20000)), "a").is_empty(),
            "{name}"
        );
    }
}
