//! The distance levels (`warn_within_shock`) on the W3 account, through the monitor and the map.

use super::with_map::{NOW, W3, W4, WARN, move_to};
use super::*;
use crate::engine::map::tests::{w3_account, w3_instruments};
use crate::model::{AccountUpdate, LevelType};

fn shock_cfg(levels: &[Decimal]) -> MonitorConfig {
    MonitorConfig {
        thresholds: Thresholds {
            warn_within_shock: levels.to_vec(),
            shock_hysteresis: dec!(0.01),
            ..Thresholds::default()
        },
        ..MonitorConfig::default()
    }
}

fn setup(cfg: MonitorConfig) -> (AccountMap, Monitor) {
    let m = AccountMap::new(w3_instruments());
    m.apply_update(AccountUpdate::Replace {
        account: w3_account("w3"),
    })
    .unwrap();
    (m, Monitor::new(cfg).unwrap())
}

fn distance(e: &Emitted) -> Decimal {
    e.event
        .snapshot
        .as_ref()
        .unwrap()
        .shock_distance
        .nearest
        .unwrap()
        .abs()
}

/// W3 under levels [10 %, 5 %]: within 10 % at W3 (a `shock_distance` warning whose snapshot
/// shows the distance), then −9.4 % brings the ratio warning and the 5 % distance warning in
/// one step (ratio first, seq continuing), W4's trigger leaves the distance state silent, and
/// back at W3 the ratio recovers and the distance recovers from 5 % only (still within 10 %).
#[test]
fn w3_through_the_distance_levels() {
    let (m, mut mon) = setup(shock_cfg(&[dec!(0.10), dec!(0.05)]));
    let info = HashMap::new();
    let e = move_to(&m, &mut mon, &info, W3);
    assert_eq!(e.len(), 1, "{e:?}");
    let w = &e[0].event;
    assert_eq!(w.kind, EventKind::LiquidationWarning);
    assert_eq!(w.level_type, Some(LevelType::ShockDistance));
    assert_eq!(w.level, Some(dec!(0.10)));
    assert_eq!(w.crossed_levels, vec![dec!(0.10)]);
    assert_eq!(w.previous_state, Some(AccountState::Healthy));
    assert_eq!(w.state, Some(warn(dec!(0.10))));
    assert_eq!(w.seq, 1);
    let d = distance(&e[0]);
    assert!(d <= dec!(0.10) && d > dec!(0.06), "W3 distance {d}");
    assert_eq!(
        e[0].state_json,
        r#"{"state":"healthy","seq":1,"shock_state":{"state":"warning","level":"0.10"}}"#
    );
    // Same prices: nothing.
    assert!(move_to(&m, &mut mon, &info, W3).is_empty());

    let e = move_to(&m, &mut mon, &info, WARN);
    let kinds: Vec<_> = e
        .iter()
        .map(|e| (e.event.kind, e.event.level_type, e.event.level, e.event.seq))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (
                EventKind::LiquidationWarning,
                Some(LevelType::MarginRatio),
                Some(dec!(0.8)),
                2
            ),
            (
                EventKind::LiquidationWarning,
                Some(LevelType::ShockDistance),
                Some(dec!(0.05)),
                3
            ),
        ]
    );
    // The ratio's stored state still has the old distance state: a crash between the two
    // journal writes re-fires the distance warning rather than lose it.
    assert_eq!(
        e[0].state_json,
        r#"{"state":"warning","level":"0.8","seq":2,"shock_state":{"state":"warning","level":"0.10"}}"#
    );
    assert!(distance(&e[1]) <= dec!(0.05));

    let e = move_to(&m, &mut mon, &info, W4);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].event.kind, EventKind::LiquidationTrigger);
    assert_eq!(e[0].event.level_type, Some(LevelType::MarginRatio));

    let e = move_to(&m, &mut mon, &info, W3);
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].event.kind, EventKind::Recovered);
    assert_eq!(e[0].event.level_type, Some(LevelType::MarginRatio));
    let r = &e[1].event;
    assert_eq!(r.kind, EventKind::Recovered);
    assert_eq!(r.level_type, Some(LevelType::ShockDistance));
    assert_eq!(r.level, Some(dec!(0.05)));
    assert_eq!(r.state, Some(warn(dec!(0.10))));
    assert_eq!(r.seq, 6);
    let id = AccountId::from("w3");
    assert_eq!(mon.state(&m, &id).unwrap().shock_state, warn(dec!(0.10)));
}

/// A jump from outside every distance level straight to the trigger is the ratio's one
/// trigger event: the distance state moves to the innermost level without an event of its own.
#[test]
fn jump_straight_to_trigger_is_the_ratios() {
    let (m, mut mon) = setup(shock_cfg(&[dec!(0.05)]));
    let info = HashMap::new();
    assert!(move_to(&m, &mut mon, &info, W3).is_empty());
    let e = move_to(&m, &mut mon, &info, W4);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].event.kind, EventKind::LiquidationTrigger);
    assert_eq!(e[0].event.level_type, Some(LevelType::MarginRatio));
    let id = AccountId::from("w3");
    assert_eq!(mon.state(&m, &id).unwrap().shock_state, warn(dec!(0.05)));
}

/// Restored states (ratio and distance) are not re-emitted; a state stored before distance
/// levels existed reads back healthy on the distance side, so the warning fires once.
#[test]
fn restore_keeps_the_distance_state() {
    let (m, mut mon) = setup(shock_cfg(&[dec!(0.10), dec!(0.05)]));
    let info = HashMap::new();
    let e = move_to(&m, &mut mon, &info, WARN);
    assert_eq!(e.len(), 2);
    let stored = vec![(e[1].account_id.clone(), e[1].state_json.clone())];
    let mut fresh = Monitor::new(shock_cfg(&[dec!(0.10), dec!(0.05)])).unwrap();
    assert_eq!(fresh.restore(stored).restored, 1);
    let again = fresh.evaluate_all(&m, &info, NOW);
    assert!(
        again.is_empty(),
        "{:?}",
        again
            .iter()
            .map(|e| (
                &e.event.kind,
                &e.event.level_type,
                &e.event.previous_state,
                &e.event.state
            ))
            .collect::<Vec<_>>()
    );

    let old = vec![(
        AccountId::from("w3"),
        r#"{"state":"warning","level":"0.8","seq":7}"#.to_string(),
    )];
    let mut upgraded = Monitor::new(shock_cfg(&[dec!(0.10), dec!(0.05)])).unwrap();
    assert_eq!(upgraded.restore(old).restored, 1);
    let e = upgraded.evaluate_all(&m, &info, NOW);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].event.level_type, Some(LevelType::ShockDistance));
    assert_eq!(e[0].event.crossed_levels, vec![dec!(0.10), dec!(0.05)]);
    assert_eq!(e[0].event.seq, 8);
}

/// Per-account levels: an account's own `warn_within_shock` applies with none configured, and
/// an account without them stays silent beside it.
#[test]
fn per_account_override() {
    let (m, mut mon) = setup(MonitorConfig::default());
    let mut own = w3_account("own");
    own.thresholds = Some(Thresholds {
        warn_within_shock: vec![dec!(0.12)],
        shock_hysteresis: dec!(0.005),
        ..Thresholds::default()
    });
    m.apply_update(AccountUpdate::Replace { account: own })
        .unwrap();
    let info = HashMap::new();
    let e = move_to(&m, &mut mon, &info, W3);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].account_id, AccountId::from("own"));
    assert_eq!(e[0].event.level_type, Some(LevelType::ShockDistance));
    assert_eq!(e[0].event.level, Some(dec!(0.12)));
    let key = m.key_of(&"own".into()).unwrap();
    assert_eq!(
        mon.shock_quiet(&m, key),
        Some(distance::ShockQuiet {
            trigger: dec!(1),
            up: None,
            down: Some(dec!(0.125)),
        })
    );
    let plain = m.key_of(&"w3".into()).unwrap();
    assert_eq!(mon.shock_quiet(&m, plain), None);
}

/// The worked example of docs/engine.md ("Distance levels"), row by row: long 10 BTC from
/// 50,000 with 60,000 USDT at 0.4 %, levels [10 %, 5 %], hysteresis 1 %.
#[test]
fn docs_worked_example() {
    use crate::engine::map::tests::{collateral, contract, tier};
    let m = AccountMap::new(vec![
        contract(
            "BTCUSDT-PERP",
            "BTC",
            vec![tier(dec!(0), dec!(1000000000), dec!(0.004), dec!(0))],
        ),
        collateral("USDT", Decimal::ONE, true),
    ]);
    m.apply_update(AccountUpdate::Replace {
        account: serde_json::from_str(
            r#"{"id":"desk-1","collateral":{"USDT":"60000"},
            "positions":[{"instrument":"BTCUSDT-PERP","quantity":"10","entry_price":"50000"}]}"#,
        )
        .unwrap(),
    })
    .unwrap();
    let mut mon = Monitor::new(shock_cfg(&[dec!(0.10), dec!(0.05)])).unwrap();
    let info = HashMap::new();
    let rows = [
        (dec!(50000), None),
        (
            dec!(48000),
            Some((EventKind::LiquidationWarning, dec!(0.10))),
        ),
        (
            dec!(46500),
            Some((EventKind::LiquidationWarning, dec!(0.05))),
        ),
        (dec!(47000), Some((EventKind::Recovered, dec!(0.05)))),
        (dec!(49700), Some((EventKind::Recovered, dec!(0.10)))),
    ];
    for (price, expected) in rows {
        let mut touched = Vec::new();
        m.apply_price(&"BTCUSDT-PERP".into(), price, &mut touched)
            .unwrap();
        let e = mon.evaluate(&m, &touched, &info, NOW);
        let got: Vec<_> = e
            .iter()
            .map(|e| {
                assert_eq!(e.event.level_type, Some(LevelType::ShockDistance));
                (e.event.kind, e.event.level.unwrap())
            })
            .collect();
        assert_eq!(got, expected.into_iter().collect::<Vec<_>>(), "at {price}");
    }
}
