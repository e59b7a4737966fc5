//! Concurrency of the account map: real threads apply price ticks and account updates to the
//! same accounts at once; no update is lost, the caches end equal to a recomputation, the index
//! is exact, and nothing deadlocks.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use liqwatch::engine::map::AccountMap;
use liqwatch::margin;
use liqwatch::model::{
    Account, AccountId, AccountUpdate, Fill, Instrument, InstrumentId, InstrumentKind, MarginTier,
    Position, PositionSide,
};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn instrument(id: &str, kind: InstrumentKind) -> Instrument {
    Instrument {
        id: id.into(),
        kind,
        underlying: id.split("USDT").next().unwrap_or(id).into(),
        contract_size: Decimal::ONE,
        tiers: if kind.is_contract() {
            vec![
                MarginTier {
                    notional_floor: dec!(0),
                    notional_cap: dec!(50000),
                    mmr: dec!(0.004),
                    cum: dec!(0),
                },
                MarginTier {
                    notional_floor: dec!(50000),
                    notional_cap: dec!(600000),
                    mmr: dec!(0.005),
                    cum: dec!(50),
                },
            ]
        } else {
            vec![]
        },
        liquidation_fee_rate: dec!(0.005),
        margin: Default::default(),
        collateral_ratio: if kind.is_contract() {
            Decimal::ONE
        } else {
            dec!(0.95)
        },
        haircut_tiers: vec![],
        stable: id == "USDT",
        sources: vec![],
        source_note: None,
    }
}

fn map() -> AccountMap {
    AccountMap::new([
        instrument("BTCUSDT-PERP", InstrumentKind::LinearPerpetual),
        instrument("ETHUSDT-PERP", InstrumentKind::LinearPerpetual),
        instrument("USDT", InstrumentKind::Collateral),
        instrument("BTC", InstrumentKind::Collateral),
    ])
}

fn account(i: usize) -> Account {
    Account {
        id: format!("c{i}").into(),
        collateral: [
            (InstrumentId::from("USDT"), dec!(1000)),
            (InstrumentId::from("BTC"), dec!(0.1)),
        ]
        .into_iter()
        .collect(),
        positions: vec![
            Position {
                instrument: "BTCUSDT-PERP".into(),
                side: PositionSide::Both,
                quantity: dec!(0.5),
                entry_price: dec!(60000),
            },
            Position {
                instrument: "ETHUSDT-PERP".into(),
                side: PositionSide::Both,
                quantity: dec!(-3),
                entry_price: dec!(3000),
            },
        ],
        thresholds: None,
        apply_funding: false,
    }
}

/// Runs `f` on a thread and fails (instead of hanging) if it does not finish in time.
fn with_deadline(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p)
            }
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The worker panicked: surface its panic.
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p)
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("deadlock: not finished in {secs} s"),
    }
}

const ACCOUNTS: usize = 64;
const DEPOSIT_THREADS: usize = 3;
const DEPOSITS: usize = 200;

/// N deposits of 1 from K threads, racing ticks, fills and churn on the same accounts, sum
/// exactly; caches equal recomputation and the index holds exactly the holders.
#[test]
fn no_lost_updates_under_contention() {
    with_deadline(120, || {
        let m = Arc::new(map());
        let mut touched = Vec::new();
        for (id, p) in [
            ("BTCUSDT-PERP", dec!(60000)),
            ("ETHUSDT-PERP", dec!(3000)),
            ("BTC", dec!(60000)),
        ] {
            m.apply_price(&id.into(), p, &mut touched).unwrap();
        }
        for i in 0..ACCOUNTS {
            m.apply_update(AccountUpdate::Replace {
                account: account(i),
            })
            .unwrap();
        }
        std::thread::scope(|s| {
            // Tick threads: BTC perp + collateral, ETH perp.
            for (inst, base) in [
                (["BTCUSDT-PERP", "BTC"], 60000i64),
                (["ETHUSDT-PERP", "ETHUSDT-PERP"], 3000),
            ] {
                let m = &m;
                s.spawn(move || {
                    let mut out = Vec::new();
                    for k in 0..400i64 {
                        let p = Decimal::new(base * 100 + (k * 7919) % 5000 - 2500, 2);
                        for id in inst {
                            out.clear();
                            m.apply_price(&id.into(), p, &mut out).unwrap();
                        }
                    }
                });
            }
            // Deposit threads: every account gets DEPOSITS × 1 USDT from each thread.
            for _ in 0..DEPOSIT_THREADS {
                let m = &m;
                s.spawn(move || {
                    for _ in 0..DEPOSITS {
                        for i in 0..ACCOUNTS {
                            m.apply_update(AccountUpdate::Collateral {
                                account_id: format!("c{i}").into(),
                                asset: "USDT".into(),
                                delta: Decimal::ONE,
                            })
                            .unwrap();
                        }
                    }
                });
            }
            // Fill thread: open and close a hedge-mode long BTC leg (same price, zero fee: no
            // realised PnL), so the account gains and loses a slot again and again.
            {
                let m = &m;
                s.spawn(move || {
                    for k in 0..300 {
                        let i = k % ACCOUNTS;
                        for q in [dec!(1), dec!(-1)] {
                            m.apply_update(AccountUpdate::Fill {
                                account_id: format!("c{i}").into(),
                                fill: Fill {
                                    instrument: "BTCUSDT-PERP".into(),
                                    side: PositionSide::Long,
                                    quantity: q,
                                    price: dec!(61000),
                                    fee: Decimal::ZERO,
                                    settle_asset: None,
                                },
                            })
                            .unwrap();
                        }
                    }
                });
            }
            // Churn thread: create, replace and remove other accounts.
            {
                let m = &m;
                s.spawn(move || {
                    for k in 0..300 {
                        let mut a = account(1000 + k % 10);
                        a.positions[0].quantity = Decimal::from(k + 1);
                        m.apply_update(AccountUpdate::Replace { account: a })
                            .unwrap();
                        if k % 3 == 0 {
                            m.apply_update(AccountUpdate::Remove {
                                account_id: format!("c{}", 1000 + k % 10).into(),
                            })
                            .unwrap();
                        }
                    }
                });
            }
            // Readers at the same time.
            {
                let m = &m;
                s.spawn(move || {
                    for _ in 0..200 {
                        let _ = m.riskiest(5);
                        let _ = m.snapshot(&"c0".into(), Decimal::ONE);
                    }
                });
            }
        });

        let expected = dec!(1000) + Decimal::from(DEPOSIT_THREADS * DEPOSITS);
        let prices = m.prices();
        let ids: Vec<AccountId> = m.account_ids();
        for id in &ids {
            let a = m.account(id).unwrap();
            if id.as_str()[1..]
                .parse::<usize>()
                .is_ok_and(|n| n < ACCOUNTS)
            {
                assert_eq!(a.collateral[&InstrumentId::from("USDT")], expected, "{id}");
                assert_eq!(
                    a.positions.len(),
                    2,
                    "{id}: the hedge leg was closed each time"
                );
            }
            let t = margin::account_totals(&a, &*m.instruments(), &prices).unwrap();
            m.read(id, |v| {
                assert!(v.complete());
                assert_eq!(v.equity(), t.equity, "{id}");
                assert_eq!(v.maintenance_margin(), t.maintenance_margin, "{id}");
            })
            .unwrap();
        }
        for inst in m.instruments().iter() {
            let mut want: Vec<AccountId> = ids
                .iter()
                .filter(|id| {
                    let a = m.account(id).unwrap();
                    a.collateral.contains_key(&inst.id)
                        || a.positions.iter().any(|p| p.instrument == inst.id)
                })
                .cloned()
                .collect();
            want.sort();
            assert_eq!(m.holders(&inst.id), want, "{}", inst.id);
        }
    });
}

/// Replace and remove racing on the same ids never leave an orphan: every listed id has an
/// account, the count matches, fills never hit a half-created account, and the index is exact.
#[test]
fn replace_remove_races_stay_consistent() {
    with_deadline(120, || {
        let m = Arc::new(map());
        let mut touched = Vec::new();
        for (id, p) in [
            ("BTCUSDT-PERP", dec!(60000)),
            ("ETHUSDT-PERP", dec!(3000)),
            ("BTC", dec!(60000)),
        ] {
            m.apply_price(&id.into(), p, &mut touched).unwrap();
        }
        std::thread::scope(|s| {
            for t in 0..4usize {
                let m = &m;
                s.spawn(move || {
                    for k in 0..400usize {
                        let i = (k * 7 + t) % 8;
                        let id: AccountId = format!("r{i}").into();
                        let r = match (k + t) % 4 {
                            0 | 1 => m
                                .apply_update(AccountUpdate::Replace {
                                    account: {
                                        let mut a = account(i);
                                        a.id = id.clone();
                                        a
                                    },
                                })
                                .map(|_| ()),
                            2 => m
                                .apply_update(AccountUpdate::Remove { account_id: id })
                                .map(|_| ()),
                            _ => m
                                .apply_update(AccountUpdate::Collateral {
                                    account_id: id,
                                    asset: "USDT".into(),
                                    delta: dec!(1),
                                })
                                .map(|_| ()),
                        };
                        // Only "unknown account" may fail here (removed by another thread).
                        if let Err(e) = r {
                            assert!(
                                matches!(e, liqwatch::engine::map::AccountError::UnknownAccount(_)),
                                "{e}"
                            );
                        }
                    }
                });
            }
            let m = &m;
            s.spawn(move || {
                let mut out = Vec::new();
                for k in 0..300i64 {
                    out.clear();
                    m.apply_price(
                        &"BTCUSDT-PERP".into(),
                        Decimal::new(6_000_000 + k, 2),
                        &mut out,
                    )
                    .unwrap();
                }
            });
        });
        let ids = m.account_ids();
        assert_eq!(ids.len(), m.len());
        // One account per id, and the directory finds exactly the listed ones, each at its key.
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "an id created twice: {ids:?}");
        for i in 0..8 {
            let id: AccountId = format!("r{i}").into();
            assert_eq!(m.key_of(&id).is_some(), ids.contains(&id), "{id}");
            if let Some(k) = m.key_of(&id) {
                assert_eq!(
                    m.id_of(k),
                    Some(id.clone()),
                    "{id} filed under another's key"
                );
            }
        }
        let prices = m.prices();
        for id in &ids {
            let a = m.account(id).expect("listed id has an account");
            let t = margin::account_totals(&a, &*m.instruments(), &prices).unwrap();
            assert_eq!(m.read(id, |v| v.equity()), Some(t.equity));
        }
        for inst in m.instruments().iter() {
            let mut want: Vec<AccountId> = ids
                .iter()
                .filter(|id| {
                    let a = m.account(id).unwrap();
                    a.collateral.contains_key(&inst.id)
                        || a.positions.iter().any(|p| p.instrument == inst.id)
                })
                .cloned()
                .collect();
            want.sort();
            assert_eq!(m.holders(&inst.id), want, "{}", inst.id);
        }
    });
}

/// Threads creating the same new accounts at the same moment create each one once: one key
/// per id, found again by the directory, and every other create an update of it.
#[test]
fn concurrent_creates_of_one_id_make_one_account() {
    with_deadline(120, || {
        let m = map();
        let n = 3_000;
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for t in 0..4usize {
                let (m, start) = (&m, &start);
                s.spawn(move || {
                    start.wait();
                    for i in 0..n {
                        let mut a = account(i % 8);
                        a.id = format!("c{i}").into();
                        // Half the threads walk the ids backwards, so pairs meet at every id.
                        if t % 2 == 1 {
                            a.id = format!("c{}", n - 1 - i).into();
                        }
                        m.apply_update(AccountUpdate::Replace { account: a })
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(m.len(), n, "an id was created more than once");
        let mut ids = m.account_ids();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n);
        for i in 0..n {
            let id: AccountId = format!("c{i}").into();
            let k = m.key_of(&id).expect("created");
            assert_eq!(m.id_of(k), Some(id));
        }
    });
}
