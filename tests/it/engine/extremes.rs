//! Issue 12 item 3: the engine step never panics on magnitudes across `Decimal`'s whole range
//! (1e-28 … 7.9e28, negative, zero). Random account replacements, fills, collateral changes and
//! price bursts go through the one `Engine` (eager and with the distance index), and after
//! every step every read the API makes (snapshot, riskiest, materialise) is taken. Inputs are
//! accepted or refused with an error; nothing panics.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use liqwatch::engine::{AccountMap, Engine, EngineConfig, MonitorConfig};
use liqwatch::model::{
    Account, AccountId, AccountUpdate, Fill, InstrumentId, Position, PositionSide, PriceUsed,
};
use liqwatch::sources::files::load_instruments;
use proptest::prelude::*;
use rust_decimal::Decimal;

fn magnitude() -> impl Strategy<Value = Decimal> {
    let mantissa = prop_oneof![
        Just(1i128),
        Just((1i128 << 96) - 1),
        1i128..1_000_000,
        1i128..(1i128 << 96),
    ];
    (mantissa, 0u32..=28).prop_map(|(m, s)| Decimal::from_i128_with_scale(m, s))
}

fn signed() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        1 => Just(Decimal::ZERO),
        4 => magnitude(),
        3 => magnitude().prop_map(|d| -d),
    ]
}

const CONTRACTS: [&str; 3] = ["BTCUSDT-PERP", "ETHUSDT-PERP", "BTCUSD-INV-PERP"];
const PRICED: [&str; 5] = [
    "BTCUSDT-PERP",
    "ETHUSDT-PERP",
    "BTCUSD-INV-PERP",
    "BTC",
    "ETH",
];
const IDS: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum Step {
    Replace {
        id: usize,
        usdt: Decimal,
        btc: Decimal,
        legs: Vec<(usize, Decimal, Decimal)>,
    },
    Fill {
        id: usize,
        contract: usize,
        quantity: Decimal,
        price: Decimal,
        fee: Decimal,
    },
    Collateral {
        id: usize,
        delta: Decimal,
    },
    Prices(Vec<(usize, Decimal)>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (
            0..IDS.len(),
            signed(),
            signed(),
            prop::collection::vec((0..CONTRACTS.len(), signed(), magnitude()), 0..3)
        )
            .prop_map(|(id, usdt, btc, legs)| Step::Replace {
                id,
                usdt,
                btc,
                legs
            }),
        (
            0..IDS.len(),
            0..CONTRACTS.len(),
            signed(),
            signed(),
            signed()
        )
            .prop_map(|(id, contract, quantity, price, fee)| Step::Fill {
                id,
                contract,
                quantity,
                price,
                fee
            }),
        (0..IDS.len(), signed()).prop_map(|(id, delta)| Step::Collateral { id, delta }),
        prop::collection::vec((0..PRICED.len(), signed()), 1..4).prop_map(Step::Prices),
    ]
}

fn update(s: &Step) -> Option<AccountUpdate> {
    Some(match s {
        Step::Replace {
            id,
            usdt,
            btc,
            legs,
        } => {
            let mut positions: Vec<Position> = Vec::new();
            for (c, q, e) in legs {
                if positions
                    .iter()
                    .any(|p| p.instrument.as_str() == CONTRACTS[*c])
                {
                    continue;
                }
                positions.push(Position {
                    instrument: CONTRACTS[*c].into(),
                    side: PositionSide::Both,
                    quantity: *q,
                    entry_price: *e,
                });
            }
            AccountUpdate::Replace {
                account: Account {
                    id: IDS[*id].into(),
                    collateral: BTreeMap::from([
                        (InstrumentId::from("USDT"), *usdt),
                        (InstrumentId::from("BTC"), *btc),
                    ]),
                    positions,
                    thresholds: None,
                    apply_funding: false,
                },
            }
        }
        Step::Fill {
            id,
            contract,
            quantity,
            price,
            fee,
        } => AccountUpdate::Fill {
            account_id: IDS[*id].into(),
            fill: Fill {
                instrument: CONTRACTS[*contract].into(),
                side: PositionSide::Both,
                quantity: *quantity,
                price: *price,
                fee: *fee,
                settle_asset: None,
            },
        },
        Step::Collateral { id, delta } => AccountUpdate::Collateral {
            account_id: IDS[*id].into(),
            asset: "USDT".into(),
            delta: *delta,
        },
        Step::Prices(_) => return None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// No step and no read panics, eager or indexed.
    #[test]
    fn engine_step_never_panics_issue_12_item_3(steps in prop::collection::vec(step(), 1..24)) {
        let instruments =
            load_instruments(&Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml"))
                .expect("presets load");
        let info: HashMap<InstrumentId, PriceUsed> = HashMap::new();
        for distance_index in [false, true] {
            let map = Arc::new(AccountMap::new(instruments.values().cloned()));
            let mut engine = Engine::new(
                Arc::clone(&map),
                EngineConfig { monitor: MonitorConfig::default(), distance_index },
            )
            .unwrap();
            for s in &steps {
                match (s, update(s)) {
                    (Step::Prices(ps), _) => {
                        let ids: Vec<(InstrumentId, Decimal)> = ps
                            .iter()
                            .map(|(i, p)| (InstrumentId::from(PRICED[*i]), *p))
                            .collect();
                        let _ = engine.on_prices(ids.iter().map(|(i, p)| (i, *p)), &info, 0);
                    }
                    (_, Some(u)) => {
                        let _ = engine.on_update(u, &info, 0);
                    }
                    (_, None) => {}
                }
                for id in IDS {
                    let id = AccountId::from(id);
                    let _ = map.snapshot(&id, Decimal::ONE);
                    let _ = map.read(&id, |v| v.ratio());
                }
                let _ = map.riskiest(3);
                map.materialise_all();
            }
        }
    }
}
