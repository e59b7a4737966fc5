//! Unit tests of the monitor: the level state machine, hysteresis, restore, stale policies and events.

use super::*;
use rust_decimal_macros::dec;

fn th(w: &[Decimal], trigger: Decimal, h: Decimal) -> Thresholds {
    Thresholds {
        warning_levels: w.to_vec(),
        trigger,
        hysteresis: h,
        ..Thresholds::default()
    }
}

fn warn(l: Decimal) -> AccountState {
    AccountState::Warning { level: l }
}

/// Table of transitions under the defaults and two warning levels.
#[test]
fn transition_table() {
    use AccountState::{Healthy, Triggered};
    use EventKind::{LiquidationTrigger as T, LiquidationWarning as W, Recovered as R};
    let d = Thresholds::default();
    let two = th(&[dec!(0.6), dec!(0.8)], dec!(1), dec!(0.05));
    let f = MarginRatio::Finite;
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &Thresholds,
        AccountState,
        MarginRatio,
        AccountState,
        Option<(EventKind, Decimal, Vec<Decimal>)>,
    )> = vec![
        (&d, Healthy, f(dec!(0.5)), Healthy, None),
        (
            &d,
            Healthy,
            f(dec!(0.8)),
            warn(dec!(0.8)),
            Some((W, dec!(0.8), vec![dec!(0.8)])),
        ),
        (
            &d,
            Healthy,
            f(dec!(0.9)),
            warn(dec!(0.8)),
            Some((W, dec!(0.8), vec![dec!(0.8)])),
        ),
        (
            &d,
            Healthy,
            f(dec!(1)),
            Triggered,
            Some((T, dec!(1), vec![dec!(0.8), dec!(1)])),
        ),
        (
            &d,
            Healthy,
            MarginRatio::Infinite,
            Triggered,
            Some((T, dec!(1), vec![dec!(0.8), dec!(1)])),
        ),
        (&d, warn(dec!(0.8)), f(dec!(0.79)), warn(dec!(0.8)), None),
        (&d, warn(dec!(0.8)), f(dec!(0.75)), warn(dec!(0.8)), None),
        (
            &d,
            warn(dec!(0.8)),
            f(dec!(0.7499)),
            Healthy,
            Some((R, dec!(0.8), vec![dec!(0.8)])),
        ),
        (&d, warn(dec!(0.8)), f(dec!(0.99)), warn(dec!(0.8)), None),
        (
            &d,
            warn(dec!(0.8)),
            f(dec!(1)),
            Triggered,
            Some((T, dec!(1), vec![dec!(1)])),
        ),
        (&d, Triggered, f(dec!(0.96)), Triggered, None),
        (&d, Triggered, f(dec!(0.95)), Triggered, None),
        (
            &d,
            Triggered,
            f(dec!(0.9)),
            warn(dec!(0.8)),
            Some((R, dec!(1), vec![dec!(1)])),
        ),
        (
            &d,
            Triggered,
            f(dec!(0.76)),
            warn(dec!(0.8)),
            Some((R, dec!(1), vec![dec!(1)])),
        ),
        (
            &d,
            Triggered,
            f(dec!(0.1)),
            Healthy,
            Some((R, dec!(0.8), vec![dec!(0.8), dec!(1)])),
        ),
        (&d, Triggered, MarginRatio::Infinite, Triggered, None),
        (
            &two,
            Healthy,
            f(dec!(0.7)),
            warn(dec!(0.6)),
            Some((W, dec!(0.6), vec![dec!(0.6)])),
        ),
        (
            &two,
            Healthy,
            f(dec!(0.85)),
            warn(dec!(0.8)),
            Some((W, dec!(0.8), vec![dec!(0.6), dec!(0.8)])),
        ),
        (
            &two,
            warn(dec!(0.6)),
            f(dec!(0.8)),
            warn(dec!(0.8)),
            Some((W, dec!(0.8), vec![dec!(0.8)])),
        ),
        (
            &two,
            warn(dec!(0.6)),
            f(dec!(2)),
            Triggered,
            Some((T, dec!(1), vec![dec!(0.8), dec!(1)])),
        ),
        (
            &two,
            warn(dec!(0.8)),
            f(dec!(0.6)),
            warn(dec!(0.6)),
            Some((R, dec!(0.8), vec![dec!(0.8)])),
        ),
        (
            &two,
            warn(dec!(0.8)),
            f(dec!(0.5)),
            Healthy,
            Some((R, dec!(0.6), vec![dec!(0.6), dec!(0.8)])),
        ),
        (
            &two,
            Triggered,
            f(dec!(0.56)),
            warn(dec!(0.6)),
            Some((R, dec!(0.8), vec![dec!(0.8), dec!(1)])),
        ),
        // A stored warning level that no longer exists maps to the highest level below it.
        (&two, warn(dec!(0.7)), f(dec!(0.7)), warn(dec!(0.6)), None),
        (&d, warn(dec!(0.5)), f(dec!(0.5)), Healthy, None),
    ];
    for (t, from, ratio, to, ev) in cases {
        let (s, c) = transition(&from, ratio, t);
        assert_eq!(s, to, "{from:?} at {ratio}");
        let got = c.map(|c| (c.kind, c.level, c.crossed_levels));
        assert_eq!(got, ev, "{from:?} at {ratio}");
    }
}

/// Malformed thresholds are refused with a message.
#[test]
fn thresholds_validation() {
    assert!(Thresholds::default().validate().is_ok());
    for bad in [
        th(&[dec!(0.8), dec!(0.7)], dec!(1), dec!(0.05)),
        th(&[dec!(0.8)], dec!(0.8), dec!(0.05)),
        th(&[dec!(0.8)], dec!(1), dec!(-0.01)),
        th(&[dec!(0)], dec!(1), dec!(0)),
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    assert!(th(&[], dec!(1), dec!(0)).validate().is_ok());
}

/// The persisted state is flat JSON and round-trips.
#[test]
fn monitor_state_json() {
    let s = MonitorState {
        state: warn(dec!(0.8)),
        seq: 3,
        shock_state: AccountState::Healthy,
        funding_warned: None,
    };
    let j = serde_json::to_string(&s).unwrap();
    assert_eq!(j, r#"{"state":"warning","level":"0.8","seq":3}"#);
    assert_eq!(serde_json::from_str::<MonitorState>(&j).unwrap(), s);
    let t = serde_json::to_string(&MonitorState {
        state: AccountState::Triggered,
        seq: 9,
        shock_state: AccountState::Healthy,
        funding_warned: None,
    })
    .unwrap();
    assert_eq!(t, r#"{"state":"triggered","seq":9}"#);
}

mod distance_map; // the distance levels on the W3 account
/// The hand-written state JSON every event carries is exactly what serde writes (the journal's
/// format), and reads back — also with a distance state and a funding warning (serde writes those).
#[test]
fn monitor_state_to_json_equals_serde() {
    let levels = [
        dec!(0.8),
        dec!(1),
        dec!(0.0000000000000000000000000001),
        dec!(123456789.123456789),
        dec!(-0.5),
        dec!(0.80),
    ];
    let mut states = vec![AccountState::Healthy, AccountState::Triggered];
    states.extend(levels.iter().map(|l| warn(*l)));
    let shocks = [AccountState::Healthy, warn(dec!(0.05))];
    for (state, shock_state, funding_warned) in states.iter().flat_map(|s| {
        shocks.iter().flat_map(move |k| {
            [
                (s.clone(), k.clone(), None),
                (s.clone(), k.clone(), Some(7)),
            ]
        })
    }) {
        for seq in [0, 1, 42, u64::MAX] {
            let s = MonitorState {
                state: state.clone(),
                seq,
                shock_state: shock_state.clone(),
                funding_warned,
            };
            let j = s.to_json();
            assert_eq!(j, serde_json::to_string(&s).unwrap());
            assert_eq!(serde_json::from_str::<MonitorState>(&j).unwrap(), s);
        }
    }
}

mod with_map {
    use super::*;
    use crate::engine::map::tests::{w3_account, w3_instruments};
    use crate::model::{AccountUpdate, Venue};

    pub(super) const NOW: TimestampMs = 1_621_428_600_000;

    pub(super) fn setup() -> (AccountMap, Monitor) {
        let m = AccountMap::new(w3_instruments());
        m.apply_update(AccountUpdate::Replace {
            account: w3_account("w3"),
        })
        .unwrap();
        (m, Monitor::new(MonitorConfig::default()).unwrap())
    }

    /// Applies BTC/ETH/SOL prices (BTC collateral moves with BTC) and evaluates the touched.
    pub(super) fn move_to(
        m: &AccountMap,
        mon: &mut Monitor,
        info: &dyn PriceInfo,
        p: [Decimal; 3],
    ) -> Vec<Emitted> {
        let mut touched = Vec::new();
        for (id, price) in [
            ("BTCUSDT-PERP", p[0]),
            ("BTC", p[0]),
            ("ETHUSDT-PERP", p[1]),
            ("SOLUSDT-PERP", p[2]),
        ] {
            m.apply_price(&id.into(), price, &mut touched).unwrap();
        }
        mon.evaluate(m, &touched, info, NOW)
    }

    pub(crate) const W3: [Decimal; 3] = [dec!(60000), dec!(3000), dec!(150)];
    pub(crate) const WARN: [Decimal; 3] = [dec!(54360), dec!(2718), dec!(135.9)];
    pub(crate) const W4: [Decimal; 3] = [dec!(54000), dec!(2700), dec!(135)];

    /// W3 healthy → −9.4 % warning → W4 trigger → W3 recovered, one event each, seq 1, 2, 3.
    #[test]
    fn w3_warning_trigger_recovered() {
        let (m, mut mon) = setup();
        let info = HashMap::new();
        assert!(move_to(&m, &mut mon, &info, W3).is_empty());
        let e = move_to(&m, &mut mon, &info, WARN);
        assert_eq!(e.len(), 1);
        let w = &e[0].event;
        assert_eq!(w.kind, EventKind::LiquidationWarning);
        assert_eq!(w.level, Some(dec!(0.8)));
        assert_eq!(w.seq, 1);
        let snap = w.snapshot.as_ref().unwrap();
        assert_eq!(snap.equity, dec!(8643));
        assert_eq!(snap.maintenance_margin, dec!(7130.4));
        assert_eq!(w.prices.len(), 5);
        assert!(
            w.prices
                .iter()
                .any(|p| p.source == "stable" && p.price == dec!(1))
        );
        assert_eq!(
            e[0].state_json,
            r#"{"state":"warning","level":"0.8","seq":1}"#
        );
        // Same prices again: nothing.
        assert!(move_to(&m, &mut mon, &info, WARN).is_empty());
        let e = move_to(&m, &mut mon, &info, W4);
        assert_eq!(e.len(), 1);
        let t = &e[0].event;
        assert_eq!(t.kind, EventKind::LiquidationTrigger);
        assert_eq!(t.crossed_levels, vec![dec!(1)]);
        assert_eq!(t.seq, 2);
        assert_eq!(t.snapshot.as_ref().unwrap().equity, dec!(3450));
        assert_eq!(t.snapshot.as_ref().unwrap().maintenance_margin, dec!(7080));
        let e = move_to(&m, &mut mon, &info, W3);
        assert_eq!(e.len(), 1);
        let r = &e[0].event;
        assert_eq!(r.kind, EventKind::Recovered);
        assert_eq!(r.level, Some(dec!(0.8)));
        assert_eq!(r.crossed_levels, vec![dec!(0.8), dec!(1)]);
        assert_eq!(r.state, Some(AccountState::Healthy));
        assert_eq!(r.seq, 3);
    }

    /// A jump from healthy straight to W4 is one trigger listing both levels.
    #[test]
    fn jump_lists_every_level() {
        let (m, mut mon) = setup();
        let info = HashMap::new();
        move_to(&m, &mut mon, &info, W3);
        // The collateral and the perps move in one evaluation batch.
        let e = move_to(&m, &mut mon, &info, W4);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].event.kind, EventKind::LiquidationTrigger);
        assert_eq!(e[0].event.crossed_levels, vec![dec!(0.8), dec!(1)]);
        assert_eq!(e[0].event.previous_state, Some(AccountState::Healthy));
        let key = m.key_of(&"w3".into()).unwrap();
        assert!(mon.evaluate_account(&m, key, &info, NOW).is_empty());
    }

    /// Restored states are not re-emitted; a change while down is; seq continues.
    #[test]
    fn restore_then_reevaluate() {
        let (m, mut mon) = setup();
        let info = HashMap::new();
        move_to(&m, &mut mon, &info, W3);
        let e = move_to(&m, &mut mon, &info, W4);
        let stored = vec![(e[0].account_id.clone(), e[0].state_json.clone())];
        let mut fresh = Monitor::new(MonitorConfig::default()).unwrap();
        let rep = fresh.restore(stored.clone());
        assert_eq!(rep.restored, 1);
        assert!(fresh.evaluate_all(&m, &info, NOW).is_empty());
        let mut again = Monitor::new(MonitorConfig::default()).unwrap();
        again.restore(stored);
        move_to(&m, &mut mon, &info, W3); // the prices recover "while down"
        let e = again.evaluate_all(&m, &info, NOW);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].event.kind, EventKind::Recovered);
        assert_eq!(e[0].event.seq, 2);
        let bad = Monitor::new(MonitorConfig::default())
            .unwrap()
            .restore(vec![("w3".into(), "{not json".into())]);
        assert_eq!(bad.rejected.len(), 1);
    }

    /// `fire` (the default) fires a trigger computed from a stale price, flagged: its prices —
    /// read with its snapshot, after the state pass — carry the stale one with its age, and
    /// the snapshot (with the liquidation cost a trigger carries) is there.
    #[test]
    fn stale_trigger_fires_flagged_by_default() {
        let m = AccountMap::new(w3_instruments());
        m.apply_update(AccountUpdate::Replace {
            account: w3_account("w3"),
        })
        .unwrap();
        let mut mon = Monitor::new(MonitorConfig::default()).unwrap();
        assert!(move_to(&m, &mut mon, &stale_btc(true), W3).is_empty());
        let e = move_to(&m, &mut mon, &stale_btc(true), W4);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].event.kind, EventKind::LiquidationTrigger);
        assert_stale_btc_used(&e[0]);
        assert_eq!(e[0].event.prices.len(), 5, "{:?}", e[0].event.prices);
        let snapshot = e[0].event.snapshot.as_deref().expect("a snapshot");
        assert!(snapshot.liquidation_cost.is_some());
        // Fresh again: the next event's prices are not flagged.
        let e = move_to(&m, &mut mon, &HashMap::new(), W3);
        assert_eq!(e.len(), 1);
        assert!(!e[0].event.stale_prices);
        assert!(e[0].event.prices.iter().all(|p| !p.stale));
    }

    /// A panic inside one account's snapshot (a bug in the margin model, injected here) costs
    /// that event its snapshot and nothing else: every event is emitted, every event carries
    /// the prices it used, and every other account's snapshot is there — also when the batch
    /// is large enough to be built on several threads. A panic elsewhere in the snapshot stage
    /// (reading the account back) costs that event its snapshot too, not the chunk's events.
    #[test]
    fn a_snapshot_panic_loses_only_that_snapshot() {
        for n in [3, 70] {
            let m = AccountMap::new(w3_instruments());
            let ids: Vec<String> = (0..n).map(|i| format!("snapshot-panic-{n}-{i}")).collect();
            for id in &ids {
                m.apply_update(AccountUpdate::Replace {
                    account: w3_account(id),
                })
                .unwrap();
            }
            let victim = &ids[1];
            super::super::snapshots::inject::panic_for(victim);
            let outside = &ids[2];
            super::super::snapshots::inject::panic_outside_for(outside);
            let mut mon = Monitor::new(MonitorConfig::default()).unwrap();
            assert!(move_to(&m, &mut mon, &HashMap::new(), W3).is_empty());
            let e = move_to(&m, &mut mon, &HashMap::new(), W4);
            assert_eq!(e.len(), n, "every account emits its trigger");
            for em in &e {
                let ev = &em.event;
                assert_eq!(ev.kind, EventKind::LiquidationTrigger);
                let id = ev.account_id.as_ref().map(|a| a.as_str());
                let is_outside = id == Some(outside.as_str());
                if !is_outside {
                    assert_eq!(ev.prices.len(), 5, "{:?}: {:?}", ev.account_id, ev.prices);
                }
                let is_victim = id == Some(victim.as_str()) || is_outside;
                assert_eq!(ev.snapshot.is_none(), is_victim, "{:?}", ev.account_id);
            }
        }
    }

    /// Price info that counts how often it is asked.
    struct Counting {
        inner: HashMap<InstrumentId, PriceUsed>,
        prices: std::sync::atomic::AtomicUsize,
        funding: std::sync::atomic::AtomicUsize,
    }

    impl PriceInfo for Counting {
        fn price_info(&self, instrument: &InstrumentId) -> Option<PriceUsed> {
            self.prices
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.price_info(instrument)
        }
        fn funding(&self, _: &InstrumentId) -> Option<crate::margin::funding::FundingRate> {
            self.funding
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }
    }

    /// A step with many events reads what the board says of each priced instrument once (not
    /// once per event and price), and every event still carries it: the BTC price 90 s old,
    /// flagged stale, at the engine's price. A small step asks per event, as before.
    #[test]
    fn a_large_step_reads_the_board_once_per_instrument() {
        for n in [3usize, 70] {
            let m = AccountMap::new(w3_instruments());
            for i in 0..n {
                m.apply_update(AccountUpdate::Replace {
                    account: w3_account(&format!("board-{n}-{i}")),
                })
                .unwrap();
            }
            let mut mon = Monitor::new(MonitorConfig::default()).unwrap();
            assert!(move_to(&m, &mut mon, &HashMap::new(), W3).is_empty());
            let info = Counting {
                inner: stale_btc(true),
                prices: Default::default(),
                funding: Default::default(),
            };
            let e = move_to(&m, &mut mon, &info, W4);
            assert_eq!(e.len(), n, "every account emits its trigger");
            for em in &e {
                assert_stale_btc_used(em);
                assert_eq!(em.event.prices.len(), 5, "{:?}", em.event.prices);
                // The ids an event copies are the table's interned ones (no reference count
                // written per copy); so are a large step's prices, their sources borrowed.
                let snapshot = em.event.snapshot.as_ref().expect("a snapshot");
                assert!(
                    snapshot
                        .positions
                        .iter()
                        .all(|p| p.instrument.is_interned())
                );
                assert!(snapshot.collateral.iter().all(|c| c.asset.is_interned()));
                if n >= 64 {
                    for p in &em.event.prices {
                        assert!(p.instrument.is_interned(), "{p:?}");
                        assert!(matches!(p.source, std::borrow::Cow::Borrowed(_)), "{p:?}");
                    }
                }
            }
            let (asked, funding) = (
                info.prices.load(std::sync::atomic::Ordering::Relaxed),
                info.funding.load(std::sync::atomic::Ordering::Relaxed),
            );
            if n < 64 {
                // Per event: its four priced, non-stable instruments; funding per perpetual.
                assert_eq!((asked, funding), (4 * n, 3 * n));
            } else {
                // Once per instrument the step priced (USDT included: stables are priced too).
                assert!(asked <= 5 && funding <= 5, "{asked} / {funding}");
            }
        }
    }

    /// A large step runs the state pass on every core, each thread on its own runs of accounts
    /// and their snapshots; its events — kinds, levels, seq, states, snapshots, prices, order —
    /// and the states after it are exactly those of the same accounts evaluated a few at a
    /// time on one thread (the single-threaded pass), through a warning, a trigger and a
    /// recovery, with some accounts restored from stored states first.
    #[test]
    fn a_large_step_evaluates_on_every_core_as_on_one() {
        assert!(
            crate::engine::par::threads() >= 2,
            "this test needs two cores to run the parallel pass"
        );
        let n = 3 * PARALLEL_STATES / 2;
        let book = || {
            let m = AccountMap::new(w3_instruments());
            for i in 0..n {
                let mut a = w3_account(&format!("par-{i:05}"));
                // Thin, middling and thick accounts, interleaved unevenly across the keys.
                let usdt = match (i * 7) % 11 {
                    0..=4 => dec!(60500),
                    5..=7 => dec!(64000),
                    _ => dec!(250000),
                };
                a.collateral.insert("USDT".into(), usdt);
                m.apply_update(AccountUpdate::Replace { account: a })
                    .unwrap();
            }
            let mut mon = Monitor::new(MonitorConfig::default()).unwrap();
            // Every 13th account comes back from a stored warning (it may recover at once).
            mon.restore((0..n).step_by(13).map(|i| {
                (
                    AccountId::from(format!("par-{i:05}")),
                    r#"{"state":"warning","level":"0.8","seq":4}"#.to_string(),
                )
            }));
            (m, mon)
        };
        let (m1, mut whole) = book();
        let (m2, mut few) = book();
        let info = stale_btc(false);
        let without_id = |e: &Emitted| {
            let mut v = serde_json::to_value(&e.event).unwrap();
            v.as_object_mut().unwrap().remove("event_id");
            (v, e.state_json.clone())
        };
        for p in [W3, WARN, W4, WARN, W3] {
            let reports = |m: &AccountMap| -> Vec<Touched> {
                for (id, price) in [
                    ("BTCUSDT-PERP", p[0]),
                    ("BTC", p[0]),
                    ("ETHUSDT-PERP", p[1]),
                    ("SOLUSDT-PERP", p[2]),
                ] {
                    m.apply_price(&id.into(), price, &mut Vec::new()).unwrap();
                }
                let mut keys = m.keys();
                keys.sort_unstable();
                keys.into_iter().filter_map(|k| m.materialise(k)).collect()
            };
            let before = PARALLEL_PASSES.load(std::sync::atomic::Ordering::Relaxed);
            let one_step = whole.evaluate(&m1, &reports(&m1), &info, NOW);
            assert!(
                PARALLEL_PASSES.load(std::sync::atomic::Ordering::Relaxed) > before,
                "the large step took the parallel pass"
            );
            let r2 = reports(&m2);
            let mut a_few: Vec<Emitted> = Vec::new();
            for part in r2.chunks(PARALLEL_STATES / 8) {
                a_few.extend(few.evaluate(&m2, part, &info, NOW));
            }
            assert!(
                !one_step.is_empty() || p == W3,
                "prices {p:?} move some accounts"
            );
            assert_eq!(one_step.len(), a_few.len(), "prices {p:?}");
            for (a, b) in one_step.iter().zip(&a_few) {
                assert!(a.event.snapshot.is_some(), "{}", a.account_id);
                assert_eq!(without_id(a), without_id(b), "prices {p:?}");
            }
        }
        assert!(
            whole
                .slots
                .iter()
                .flatten()
                .any(|s| s.state() == AccountState::Triggered)
                || whole.slots.iter().flatten().any(|s| s.seq() > 4),
            "the book went through its levels"
        );
        for i in 0..n {
            let id = AccountId::from(format!("par-{i:05}"));
            assert_eq!(whole.state(&m1, &id), few.state(&m2, &id), "{id}");
        }
    }

    /// The prices an event carries: each instrument the account uses once (hedge-mode legs
    /// share one), sorted by id, stables at 1 from `stable`, the rest at the engine's price.
    #[test]
    fn prices_used_lists_each_instrument_once_in_order() {
        let account: crate::model::Account = serde_json::from_str(
            r#"{"id":"hedged","collateral":{"USDT":"60500","BTC":"1.5"},"positions":[
            {"instrument":"SOLUSDT-PERP","quantity":"-2000","entry_price":"140"},
            {"instrument":"BTCUSDT-PERP","side":"long","quantity":"10.5","entry_price":"62000"},
            {"instrument":"BTCUSDT-PERP","side":"short","quantity":"-4","entry_price":"61000"}]}"#,
        )
        .unwrap();
        let table = crate::engine::map::InstrumentTable::new(w3_instruments());
        let engine = crate::engine::map::PriceSnapshot(
            [
                ("BTCUSDT-PERP", dec!(60000)),
                ("BTC", dec!(60010)),
                ("SOLUSDT-PERP", dec!(150)),
            ]
            .into_iter()
            .map(|(i, p)| (InstrumentId::from(i), p))
            .collect(),
        );
        let used = super::super::snapshots::prices_used(
            &table,
            &account,
            &engine,
            &HashMap::<InstrumentId, PriceUsed>::new(),
            NOW,
        );
        let got: Vec<(&str, Decimal, &str)> = used
            .iter()
            .map(|p| (p.instrument.as_str(), p.price, p.source.as_ref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("BTC", dec!(60010), "engine"),
                ("BTCUSDT-PERP", dec!(60000), "engine"),
                ("SOLUSDT-PERP", dec!(150), "engine"),
                ("USDT", Decimal::ONE, "stable"),
            ]
        );
    }

    /// Price info with BTCUSDT-PERP 90 s old, `stale` or not.
    fn stale_btc(stale: bool) -> HashMap<InstrumentId, PriceUsed> {
        let mut info = HashMap::new();
        info.insert(
            InstrumentId::from("BTCUSDT-PERP"),
            PriceUsed {
                instrument: "BTCUSDT-PERP".into(),
                price: dec!(0),
                source: Venue::BinanceUsdm.to_string().into(),
                received_ts: NOW - 90_000,
                age_ms: 90_000,
                stale,
            },
        );
        info
    }

    /// The event is flagged and carries the stale BTC price at the engine's W4 price, with its age.
    fn assert_stale_btc_used(e: &Emitted) {
        assert!(e.event.stale_prices);
        let btc = e
            .event
            .prices
            .iter()
            .find(|p| p.instrument.as_str() == "BTCUSDT-PERP")
            .unwrap();
        assert_eq!(
            (btc.price, btc.age_ms, btc.stale),
            (dec!(54000), 90_000, true)
        );
    }

    /// `hold` keeps a stale trigger back as a warning and fires it once prices are fresh.
    #[test]
    fn stale_trigger_held_then_fired() {
        let m = AccountMap::new(w3_instruments());
        m.apply_update(AccountUpdate::Replace {
            account: w3_account("w3"),
        })
        .unwrap();
        let mut mon = Monitor::new(MonitorConfig {
            trigger_on_stale: StalePolicy::Hold,
            ..Default::default()
        })
        .unwrap();
        move_to(&m, &mut mon, &stale_btc(true), W3);
        let e = move_to(&m, &mut mon, &stale_btc(true), W4);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].event.kind, EventKind::LiquidationWarning);
        assert_stale_btc_used(&e[0]);
        let e = mon.reevaluate_holders(&m, &"BTCUSDT-PERP".into(), &stale_btc(false), NOW);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].event.kind, EventKind::LiquidationTrigger);
        assert!(!e[0].event.stale_prices);
    }

    /// Per-account thresholds override the defaults; incomplete accounts are not evaluated.
    #[test]
    fn overrides_and_incomplete() {
        let m = AccountMap::new(w3_instruments());
        let mut a = w3_account("tight");
        a.thresholds = Some(th(&[dec!(0.05)], dec!(0.5), dec!(0.01)));
        m.apply_update(AccountUpdate::Replace { account: a })
            .unwrap();
        let mut mon = Monitor::new(MonitorConfig::default()).unwrap();
        let info = HashMap::new();
        let mut touched = Vec::new();
        m.apply_price(&"BTCUSDT-PERP".into(), W3[0], &mut touched)
            .unwrap();
        assert!(mon.evaluate(&m, &touched, &info, NOW).is_empty());
        let e = move_to(&m, &mut mon, &info, W3);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].event.level, Some(dec!(0.05)));
        let e = move_to(&m, &mut mon, &info, WARN);
        assert_eq!(e[0].event.kind, EventKind::LiquidationTrigger);
        assert_eq!(e[0].event.level, Some(dec!(0.5)));
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn ratio() -> impl Strategy<Value = MarginRatio> {
        prop_oneof![
            9 => (0u32..1500).prop_map(|n| MarginRatio::Finite(Decimal::new(n.into(), 3))),
            1 => Just(MarginRatio::Infinite),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Events fire exactly when a level is crossed (up at the level, down below level − h),
        /// never twice in a row for the same crossing, and the state always agrees with the ratio.
        #[test]
        fn events_fire_exactly_on_crossings(ratios in proptest::collection::vec(ratio(), 1..60)) {
            let t = th(&[dec!(0.6), dec!(0.8)], dec!(1), dec!(0.05));
            let mut s = AccountState::Healthy;
            for r in ratios {
                let before = rank_of(&s, &t);
                let (next, c) = transition(&s, r, &t);
                let after = rank_of(&next, &t);
                // The reference: up to the highest level reached; down only past level − h.
                let up = levels(&t).filter(|l| r.at_or_above(*l)).count();
                let expected = if up > before {
                    up
                } else {
                    let mut d = before;
                    while d > 0 && level_at(&t, d).is_some_and(|l| r.below(l - t.hysteresis)) {
                        d -= 1;
                    }
                    d
                };
                prop_assert_eq!(after, expected);
                prop_assert_eq!(c.is_some(), after != before);
                if let Some(c) = &c {
                    prop_assert_eq!(c.crossed_levels.len(), after.abs_diff(before));
                    let kind = if after < before { EventKind::Recovered }
                        else if after == 3 { EventKind::LiquidationTrigger }
                        else { EventKind::LiquidationWarning };
                    prop_assert_eq!(c.kind, kind);
                }
                // Re-applying the same ratio never fires again.
                let (again, c2) = transition(&next, r, &t);
                prop_assert!(c2.is_none());
                prop_assert_eq!(&again, &next);
                s = next;
            }
        }
    }
}
