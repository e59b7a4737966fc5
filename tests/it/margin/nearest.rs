//! Liquidation prices are the nearest crossings (issue 12 item 2): each position reports the
//! nearest price below and above its mark at which the account reaches the trigger, and
//! `liquidation_price` is the nearer of the two.

use std::collections::BTreeMap;

use liqwatch::margin::{account_snapshot, to_cents};
use liqwatch::model::{Account, InstrumentId, Position, PositionSide};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use super::props::{presets, prices};

/// The F1 account of issue 12: near-hedged BTCUSDT legs in hedge mode, ratio 99.54 %.
fn f1() -> Account {
    Account {
        id: "F1".into(),
        collateral: BTreeMap::from([(InstrumentId::from("USDT"), dec!(215100))]),
        positions: vec![
            Position {
                instrument: "BTCUSDT-PERP".into(),
                side: PositionSide::Long,
                quantity: dec!(199.5),
                entry_price: dec!(60000),
            },
            Position {
                instrument: "BTCUSDT-PERP".into(),
                side: PositionSide::Short,
                quantity: dec!(-195.5),
                entry_price: dec!(60000),
            },
        ],
        thresholds: None,
    }
}

/// Issue 12 item 2: on the F1 book both legs report the nearest crossing, the rise to
/// 60,668.38 (+1.11 %, where the shock column's +1.1140 % lands), not the fall to 40,000.00.
#[test]
fn issue_12_f1_liquidation_price_is_the_nearest() {
    let m = presets();
    let px = prices(&m);
    let a = f1();
    let s = account_snapshot(&a, &m, &px, Decimal::ONE).unwrap();
    let up = s.shock_distance.up.expect("a rise reaches the trigger");
    assert_eq!(s.shock_distance.nearest, Some(up));
    for r in &s.positions {
        let lp = r.liquidation_price.expect("reachable");
        let down = r
            .liquidation_price_down
            .expect("a fall reaches the trigger");
        let rise = r.liquidation_price_up.expect("a rise reaches the trigger");
        assert_eq!(lp, rise, "{:?}", r.side);
        assert_eq!(to_cents(lp), dec!(60668.38));
        // Exact: on the rise the long is in tier 5 and the short in tier 4, so
        // 3.99·z − 131,450 + 1.955·z − 11,450 = 215,100 + 4·(z − 60,000) ⇒ z = 23,600,000/389.
        assert_eq!(lp, dec!(23600000) / dec!(389));
        assert_eq!(to_cents(down), dec!(40000.00));
        assert!((down - dec!(40000)).abs() < dec!(1e-20), "down {down}");
        // One underlying, one price: the liquidation price is the shock root.
        assert!((lp - dec!(60000) * (Decimal::ONE + up)).abs() < dec!(1e-20));
        println!("F1 {:?}: lp {lp} down {down} shock {up}", r.side);
    }
}
