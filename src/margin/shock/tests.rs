//! The distance solver's fixed-point linear pieces against their `Decimal` definition.

use rust_decimal_macros::dec;

use super::*;
use crate::margin::tests::{coin, contract, table as tiers};
use crate::model::MarginTier;

/// A linear perpetual with this contract size (the margin tests' fixture).
fn linear(id: &str, contract_size: Decimal, tiers: Vec<MarginTier>) -> Instrument {
    Instrument {
        contract_size,
        ..contract(id, id, tiers)
    }
}

/// A line's two `Decimal`s as their 16 bytes each: equal only when bit for bit the same.
fn bits(line: &Line) -> ([u8; 16], [u8; 16]) {
    (line.k.serialize(), line.l.serialize())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1500))]
    /// Wherever the fixed-point line answers, it is the `Decimal` line bit for bit (mantissa,
    /// scale and sign of both terms), over legs, tiers, prices, fixed parts, collateral and
    /// triggers with their own scales — including sizes where the mantissas overflow and the
    /// fixed path must decline.
    #[test]
    fn fixed_line_is_the_decimal_line(
        legs in proptest::collection::vec(
            (-5_000_000i64..5_000_000, 0u32..8, 1i64..10_000_000_000, 0u32..8, 1i64..3_000_000, 0u32..7, 0u8..3, 0usize..3),
            0..5),
        fixed in (-1_000_000_000_000i64..1_000_000_000_000, 0u32..20, 0i64..1_000_000_000_000, 0u32..20),
        collateral in proptest::collection::vec((-1_000_000i64..10_000_000, 0u32..9, 1i64..1_000_000, 0u32..9), 0..2),
        trigger in (1i64..2_000, 0u32..4),
        big in proptest::bool::ANY,
        zeros in (proptest::bool::ANY, proptest::bool::ANY, 0u32..20, 0u32..6),
    ) {
        // Zeros written with places (`0.000`) where the line adds them: `Decimal` adds a zero
        // by returning the other operand as it is, not at the wider scale.
        let (zero_equity, zero_mm, zero_scale, cum_scale) = zeros;
        let table = tiers(&[
            (dec!(0), dec!(0.004), Decimal::new(0, cum_scale)),
            (dec!(50000), dec!(0.005), dec!(50)),
            (dec!(250000.5), dec!(0.0125), dec!(1925.00625)),
        ]);
        let sizes = [Decimal::ONE, dec!(0.001), dec!(100)];
        let instruments: Vec<Instrument> = sizes
            .iter()
            .map(|&cs| linear("XUSDT-PERP", cs, table.clone()))
            .collect();
        let collateral_coin = coin("BTC", dec!(0.95), false);
        let mut pm = PriceMove {
            fixed_equity: Decimal::new(if zero_equity { 0 } else { fixed.0 }, if zero_equity { zero_scale } else { fixed.1 }),
            fixed_mm: Decimal::new(if zero_mm { 0 } else { fixed.2 }, if zero_mm { zero_scale } else { fixed.3 }),
            trigger: Decimal::new(trigger.0, trigger.1),
            ..PriceMove::default()
        };
        let mut at = Vec::new();
        for &(q, qs, ep, es, f, fs, size, tier) in &legs {
            let mut quantity = Decimal::new(q, qs);
            if big {
                quantity *= Decimal::from(1_000_000_000_000i64);
            }
            pm.legs.push(MovingLeg {
                instrument: &instruments[usize::from(size)],
                quantity,
                entry_price: Decimal::new(ep, es),
                price_factor: Decimal::new(f, fs),
                floats: None,
            });
            at.push(tier);
        }
        for &(amount, s, factor, fs) in &collateral {
            pm.collateral.push(MovingCollateral {
                instrument: &collateral_coin,
                amount: Decimal::new(amount, s),
                price_factor: Decimal::new(factor, fs),
            });
        }
        let exact = pm.line_decimal(&at);
        match pm.line_fixed(&at) {
            Some(fast) => {
                let exact = exact.map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}")))?;
                proptest::prop_assert_eq!(bits(&fast), bits(&exact), "{:?} vs {:?}", fast, exact);
            }
            // Declining is always allowed; the dispatcher then answers as the definition.
            None => proptest::prop_assert_eq!(
                format!("{:?}", pm.line(&at).map(|l| bits(&l))),
                format!("{:?}", exact.map(|l| bits(&l)))
            ),
        }
    }
}

/// The fixed path takes an ordinary account's pieces (so the property test compares values,
/// not two fallbacks): a long BTC leg against USDT, at both tiers, with a trigger of 1.
#[test]
fn fixed_line_takes_ordinary_problems() {
    let btc = linear(
        "BTCUSDT-PERP",
        Decimal::ONE,
        tiers(&[
            (dec!(0), dec!(0.004), dec!(0)),
            (dec!(50000), dec!(0.005), dec!(50)),
        ]),
    );
    let pm = PriceMove {
        fixed_equity: dec!(1234.567890123456),
        fixed_mm: dec!(12.5),
        trigger: Decimal::ONE,
        legs: vec![MovingLeg {
            instrument: &btc,
            quantity: dec!(0.5),
            entry_price: dec!(60000),
            price_factor: dec!(0.9),
            floats: None,
        }],
        collateral: vec![],
    };
    for tier in [0, 1] {
        let fast = pm.line_fixed(&[tier]).expect("the fixed path takes it");
        let exact = pm.line_decimal(&[tier]).unwrap();
        assert_eq!(bits(&fast), bits(&exact));
    }
    // k = c − b: 0.5·0.9·rate − 0.5·0.9; l = d + a: −12.5 + cum + 1234.56… − 30000.
    assert_eq!(pm.line(&[1]).unwrap().k, dec!(-0.44775));
    assert_eq!(pm.line(&[1]).unwrap().l, dec!(-28727.932109876544));
}
