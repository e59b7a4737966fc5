//! `Engine::replace_instruments`: a bracket change revalues the holders exactly, fires the
//! crossings it causes, journals one event per instrument, and refuses identity changes.

use std::collections::HashMap;

use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use crate::engine::Engine;
use crate::engine::map::tests::w3_instruments;
use crate::model::{AccountId, EventKind, Instrument, InstrumentId, MarginTier, PriceUsed};

use crate::engine::tests::NOW;

/// The shared W3 engine ([`crate::engine::tests::engine`]) with its prices set.
fn engine(distance_index: bool) -> Engine {
    let mut e = crate::engine::tests::engine(distance_index);
    let info = HashMap::<InstrumentId, PriceUsed>::new();
    let w3: Vec<(InstrumentId, Decimal)> = vec![
        ("BTCUSDT-PERP".into(), dec!(60000)),
        ("BTC".into(), dec!(60000)),
        ("ETHUSDT-PERP".into(), dec!(3000)),
        ("SOLUSDT-PERP".into(), dec!(150)),
    ];
    assert!(
        e.on_prices(w3.iter().map(|(i, p)| (i, *p)), &info, NOW)
            .is_empty()
    );
    e
}

fn btc_with(tiers: Vec<MarginTier>) -> Instrument {
    let mut btc = w3_instruments()
        .into_iter()
        .find(|i| i.id.as_str() == "BTCUSDT-PERP")
        .unwrap();
    btc.tiers = tiers;
    btc
}

/// The cached figures equal a from-scratch recomputation on the table now in force.
fn assert_exact(e: &Engine) {
    let id = AccountId::from("w3");
    let account = e.map().account(&id).unwrap();
    let fresh = crate::margin::account_totals(&account, &*e.map().instruments(), &e.map().prices())
        .unwrap();
    let key = e.map().key_of(&id).unwrap();
    let cached = e.map().materialise(key).unwrap();
    assert_eq!(
        (cached.equity, cached.maintenance_margin),
        (fresh.equity, fresh.maintenance_margin)
    );
}

/// W3 is healthy at 0.0885 (MM 7,965 against equity 90,000). A venue raising BTC's rate to a
/// flat 15 % makes its BTC leg alone 94,500 of MM: the holder is revalued on the new terms,
/// fires its trigger (both levels), and one `instrument_changed` event says what changed. Put
/// back, it recovers. Eager and indexed alike; the figures stay exact throughout.
#[test]
fn a_bracket_change_revalues_holders_and_fires_crossings() {
    let info = HashMap::<InstrumentId, PriceUsed>::new();
    let original = btc_with(w3_instruments()[0].tiers.clone());
    for indexed in [false, true] {
        let mut e = engine(indexed);
        let harsh = btc_with(vec![MarginTier {
            notional_floor: dec!(0),
            notional_cap: dec!(12000000),
            mmr: dec!(0.15),
            cum: dec!(0),
        }]);
        let step = e.replace_instruments(
            std::slice::from_ref(&harsh),
            "binance-usdm refresh",
            &info,
            NOW,
        );
        assert_eq!(step.events.len(), 1, "indexed {indexed}");
        let ev = &step.events[0];
        assert_eq!(ev.kind, EventKind::InstrumentChanged);
        assert_eq!(ev.seq, 1);
        let c = ev.instrument_change.as_ref().unwrap();
        assert_eq!(c.instrument.as_str(), "BTCUSDT-PERP");
        assert_eq!(c.changed, vec!["tiers".to_string()]);
        assert_eq!(c.holders_revalued, 1);
        assert_eq!(c.before.tiers.len(), 4);
        assert_eq!(c.after.tiers, harsh.tiers);
        assert_eq!(step.emitted.len(), 1, "indexed {indexed}");
        let trig = &step.emitted[0].event;
        assert_eq!(trig.kind, EventKind::LiquidationTrigger);
        assert_eq!(trig.crossed_levels, vec![dec!(0.8), dec!(1)]);
        let snap = trig.snapshot.as_ref().unwrap();
        assert_eq!(
            snap.maintenance_margin,
            dec!(94500) + dec!(2200) + dec!(2620)
        );
        assert_exact(&e);

        // The same terms again: nothing to do.
        let again = e.replace_instruments(std::slice::from_ref(&harsh), "again", &info, NOW);
        assert!(again.events.is_empty() && again.emitted.is_empty());
        assert_eq!(again.unchanged, 1);

        // A tick after the change values on the new terms (exact against a recomputation).
        let moved = [(InstrumentId::from("BTCUSDT-PERP"), dec!(60100))];
        e.on_prices(moved.iter().map(|(i, p)| (i, *p)), &info, NOW);
        assert_exact(&e);

        // Back to the published table: the account recovers.
        let back = e.replace_instruments(std::slice::from_ref(&original), "back", &info, NOW);
        assert_eq!(back.events.len(), 1);
        assert_eq!(back.events[0].seq, 2);
        assert_eq!(back.emitted.len(), 1);
        assert_eq!(back.emitted[0].event.kind, EventKind::Recovered);
        assert_exact(&e);
    }
}

/// A definition that changes what a quantity means (contract size) is refused and changes
/// nothing; an id the engine does not know is counted, not added.
#[test]
fn identity_changes_are_refused_and_unknown_ids_counted() {
    let info = HashMap::<InstrumentId, PriceUsed>::new();
    let mut e = engine(true);
    let mut resized = btc_with(vec![MarginTier {
        notional_floor: dec!(0),
        notional_cap: dec!(12000000),
        mmr: dec!(0.15),
        cum: dec!(0),
    }]);
    resized.contract_size = dec!(0.001);
    let mut doge = resized.clone();
    doge.id = "DOGEUSDT-PERP".into();
    let before = e.map().instruments();
    let step = e.replace_instruments(&[resized, doge], "test", &info, NOW);
    assert!(step.events.is_empty() && step.emitted.is_empty());
    assert_eq!(step.not_configured, 1);
    assert_eq!(step.refused.len(), 1);
    assert!(
        step.refused[0].to_string().contains("contract_size"),
        "{}",
        step.refused[0]
    );
    assert_eq!(
        before.iter().collect::<Vec<_>>(),
        e.map().instruments().iter().collect::<Vec<_>>()
    );
    assert_exact(&e);
}
