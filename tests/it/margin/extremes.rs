//! Issue 12 item 3: `margin::account_snapshot` never panics on magnitudes across `Decimal`'s
//! whole range (1e-28 … 7.9e28, negative, zero) — balances, quantities, entries, prices and the
//! trigger — on every kind of shipped instrument at once (linear, inverse, tiered-haircut and
//! flat collateral, stablecoins). It answers, or it returns a `MarginError`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use liqwatch::margin::{self, MarginError};
use liqwatch::model::{Account, Instrument, InstrumentId, MarginRatio, Position, PositionSide};
use liqwatch::sources::files::load_instruments;
use proptest::prelude::*;
use rust_decimal::Decimal;

fn presets() -> HashMap<InstrumentId, Instrument> {
    load_instruments(&Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml"))
        .expect("presets load")
}

/// Any magnitude `Decimal` holds: mantissa 1 … 2⁹⁶ − 1 (edges favoured), scale 0 … 28.
pub fn magnitude() -> impl Strategy<Value = Decimal> {
    let mantissa = prop_oneof![
        Just(1i128),
        Just((1i128 << 96) - 1),
        Just(i128::from(u64::MAX)),
        1i128..1_000_000,
        1i128..(1i128 << 96),
    ];
    (mantissa, 0u32..=28).prop_map(|(m, s)| Decimal::from_i128_with_scale(m, s))
}

/// A magnitude, its negative, or zero.
pub fn signed() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        1 => Just(Decimal::ZERO),
        4 => magnitude(),
        3 => magnitude().prop_map(|d| -d),
    ]
}

const CONTRACTS: [&str; 4] = [
    "BTCUSDT-PERP",
    "ETHUSDT-PERP",
    "BTCUSD-INV-PERP",
    "BYBIT-BTCUSDT-PERP",
];
const COLLATERAL: [&str; 4] = ["USDT", "BTC", "BYBIT-BTC", "ETH"];

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// No panic on any magnitude: the snapshot is computed or a `MarginError` says why; a
    /// computed ratio follows the one rule (0 with no MM, ∞ at equity ≤ 0).
    #[test]
    fn snapshot_never_panics_issue_12_item_3(
        balances in prop::collection::vec(signed(), COLLATERAL.len()),
        legs in prop::collection::vec((signed(), magnitude()), CONTRACTS.len()),
        prices in prop::collection::vec(signed(), 2),
        trigger in magnitude(),
    ) {
        let m = presets();
        let a = Account {
            id: "x".into(),
            collateral: COLLATERAL
                .iter()
                .zip(&balances)
                .map(|(id, b)| (InstrumentId::from(*id), *b))
                .collect::<BTreeMap<_, _>>(),
            positions: CONTRACTS
                .iter()
                .zip(&legs)
                .map(|(id, (q, e))| Position {
                    instrument: (*id).into(),
                    side: PositionSide::Both,
                    quantity: *q,
                    entry_price: *e,
                })
                .collect(),
            thresholds: None,
            apply_funding: false,
        };
        let mut px: HashMap<InstrumentId, Decimal> = HashMap::new();
        for i in m.values() {
            let p = if i.underlying == "BTC" { prices[0] } else { prices[1] };
            px.insert(i.id.clone(), p);
        }
        match margin::account_snapshot(&a, &m, &px, trigger) {
            Ok(s) => {
                if s.maintenance_margin.is_zero() {
                    prop_assert_eq!(s.margin_ratio, MarginRatio::Finite(Decimal::ZERO));
                } else if s.equity <= Decimal::ZERO {
                    prop_assert_eq!(s.margin_ratio, MarginRatio::Infinite);
                }
            }
            Err(
                MarginError::Overflow { .. }
                | MarginError::NonPositivePrice { .. }
                | MarginError::MissingPrice(_),
            ) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}
