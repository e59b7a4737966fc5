//! Property tests of the margin model on the shipped presets: MM equals the
//! `max_k(N·mmr_k − cum_k)` oracle, the uniform-shock roots and the per-position liquidation
//! prices re-price exactly to the trigger, and no input makes the model panic.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use liqwatch::margin::{
    self, PriceMove, account_snapshot, liquidation_problem, normalise, position_figures,
    shock_problem,
};
use liqwatch::model::{Account, Instrument, InstrumentId, MarginRatio, Position, PositionSide};
use liqwatch::sources::files::load_instruments;
use proptest::prelude::*;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

pub(super) fn presets() -> HashMap<InstrumentId, Instrument> {
    load_instruments(&Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml"))
        .expect("presets load")
}

pub(super) const LINEAR: [&str; 6] = [
    "BTCUSDT-PERP",
    "ETHUSDT-PERP",
    "SOLUSDT-PERP",
    "BYBIT-BTCUSDT-PERP",
    "HL-BTC-PERP",
    "HL-ETH-PERP",
];

pub(super) fn base_price(underlying: &str) -> Decimal {
    match underlying {
        "BTC" => dec!(60000),
        "ETH" => dec!(3000),
        _ => dec!(150),
    }
}

/// Decimal in [0, max) with `scale` places.
pub(super) fn dec_in(max: i64, scale: u32) -> impl Strategy<Value = Decimal> {
    (0..max * 10i64.pow(scale)).prop_map(move |m| Decimal::new(m, scale))
}

fn position_strategy() -> impl Strategy<Value = (usize, Decimal, bool, Decimal)> {
    // (contract index incl. inverse, size, long?, entry offset factor)
    (
        0..LINEAR.len() + 1,
        dec_in(60, 3),
        any::<bool>(),
        dec_in(40, 2),
    )
}

pub(super) fn account_strategy() -> impl Strategy<Value = Account> {
    (
        dec_in(300_000, 2),
        dec_in(20, 4),
        dec_in(300, 3),
        prop::collection::vec(position_strategy(), 0..5),
        any::<bool>(),
    )
        .prop_map(|(usdt, btc, eth, legs, hedge)| {
            let mut collateral = BTreeMap::new();
            collateral.insert(InstrumentId::from("USDT"), usdt);
            collateral.insert(InstrumentId::from("BTC"), btc);
            collateral.insert(InstrumentId::from("ETH"), eth);
            let mut positions: Vec<Position> = Vec::new();
            for (k, size, long, off) in legs {
                let (id, underlying) = if k == LINEAR.len() {
                    ("BTCUSD-INV-PERP", "BTC")
                } else {
                    (
                        LINEAR[k],
                        if LINEAR[k].contains("ETH") {
                            "ETH"
                        } else if LINEAR[k].contains("SOL") {
                            "SOL"
                        } else {
                            "BTC"
                        },
                    )
                };
                let side = if hedge {
                    if long {
                        PositionSide::Long
                    } else {
                        PositionSide::Short
                    }
                } else {
                    PositionSide::Both
                };
                if positions
                    .iter()
                    .any(|p| p.instrument.as_str() == id && p.side == side)
                {
                    continue;
                }
                // Inverse sizes are contracts of 100 USD: scale up.
                let qty = if id == "BTCUSD-INV-PERP" {
                    size * dec!(1000)
                } else {
                    size
                };
                let qty = if long { qty } else { -qty };
                // Entry within ±20 % of the base price.
                let entry = base_price(underlying) * (dec!(0.8) + off / dec!(100));
                positions.push(Position {
                    instrument: id.into(),
                    side,
                    quantity: qty.round_dp(3),
                    entry_price: entry.round_dp(2),
                });
            }
            Account {
                id: "p".into(),
                collateral,
                positions,
                thresholds: None,
                apply_funding: false,
            }
        })
}

pub(super) fn prices(
    instruments: &HashMap<InstrumentId, Instrument>,
) -> HashMap<InstrumentId, Decimal> {
    instruments
        .values()
        .filter(|i| !i.stable)
        .map(|i| (i.id.clone(), base_price(&i.underlying)))
        .collect()
}

/// |MM/equity − trigger| at a root; equity must be positive there.
fn ratio_gap(pm: &PriceMove<'_>, z: Decimal) -> Decimal {
    let t = pm.reprice(z).expect("reprice");
    assert!(t.equity > Decimal::ZERO, "equity at the root {t:?}");
    (t.maintenance_margin / t.equity - pm.trigger).abs()
}

/// A root is right when it re-prices to the trigger within 1e-20 — or, where the ratio is too
/// steep for that (equity all but gone, as in a −99.99999 % shock on a hedged book), when the
/// trigger lies between the ratios two units of the root's last place either side of it: a
/// root in `Decimal` cannot be nearer than its own rounding.
fn root_is_right(pm: &PriceMove<'_>, z: Decimal, root: Decimal) -> bool {
    if ratio_gap(pm, z) < dec!(1e-20) {
        return true;
    }
    let ulp = Decimal::new(2, root.scale());
    // g = MM − trigger·equity changes sign across a crossing (equity > 0 near it).
    let g = |z: Decimal| {
        let t = pm.reprice(z).expect("reprice");
        t.maintenance_margin - pm.trigger * t.equity
    };
    let (below, above) = (g(z - ulp), g(z + ulp));
    below.is_sign_negative() != above.is_sign_negative() || below.is_zero() || above.is_zero()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// MM of every preset linear contract equals max_k(N·mmr_k − cum_k) for random sizes and
    /// prices (the tables are continuous and convex).
    #[test]
    fn mm_matches_max_oracle(k in 0..LINEAR.len(), q in dec_in(30_000, 4), p in dec_in(150_000, 2)) {
        let m = presets();
        let i = &m[LINEAR[k]];
        let f = position_figures(i, q, p, p).unwrap();
        let n = q * p;
        let oracle = i
            .tiers
            .iter()
            .map(|t| n * t.mmr - t.cum)
            .max()
            .unwrap();
        prop_assert_eq!(f.maintenance_margin, normalise(oracle), "{} N={}", LINEAR[k], n);
    }

    /// The uniform-shock roots (both directions) and every per-position liquidation price
    /// re-price to ratio == trigger within 1e-20, or within their own rounding where the ratio
    /// is too steep for that ([`root_is_right`]).
    #[test]
    fn roots_reprice_to_trigger(a in account_strategy(), trig in prop::sample::select(vec![dec!(1), dec!(0.8)])) {
        let m = presets();
        let px = prices(&m);
        let s = account_snapshot(&a, &m, &px, trig).unwrap();
        let pm = shock_problem(&a, &m, &px, trig).unwrap();
        for root in [s.shock_distance.down, s.shock_distance.up].into_iter().flatten() {
            let z = Decimal::ONE + root;
            prop_assert!(root_is_right(&pm, z, root), "shock {} gap {}", root, ratio_gap(&pm, z));
        }
        if let Some(d) = s.shock_distance.down {
            prop_assert!(d <= Decimal::ZERO && d > dec!(-1));
        }
        for (p, r) in a.positions.iter().zip(&s.positions) {
            if let Some(lp) = r.liquidation_price {
                let (lpm, _) = liquidation_problem(&a, &m, &px, p, trig).unwrap().unwrap();
                prop_assert!(root_is_right(&lpm, lp, lp), "{} LP {} gap {}", p.instrument, lp, ratio_gap(&lpm, lp));
            }
        }
        // The state between today and the nearest root does not cross the trigger: half way
        // there the account is still on today's side.
        if let Some(n) = s.shock_distance.nearest {
            let half = Decimal::ONE + n / dec!(2);
            let t = pm.reprice(half).unwrap();
            let r = MarginRatio::compute(t.maintenance_margin, t.equity);
            prop_assert_eq!(r.at_or_above(trig), s.margin_ratio.at_or_above(trig));
        }
    }

    /// The hot-path `normalise` (one i128 widening) and `select_tier` (integer floor
    /// comparisons) agree with the plain `Decimal` definitions.
    #[test]
    fn fast_paths_match_definitions(m in any::<i64>(), hi in any::<u32>(), sc in 0u32..29, k in 0..LINEAR.len()) {
        let d = Decimal::from_i128_with_scale((i128::from(hi) << 64) | i128::from(m as u64), sc);
        let d = if m < 0 { -d } else { d };
        let mut want = d.round_dp_with_strategy(12, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        want.rescale(12);
        let got = normalise(d);
        prop_assert_eq!(got, want);
        prop_assert_eq!(got.scale(), want.scale());
        let m_ = presets();
        let tiers = &m_[LINEAR[k]].tiers;
        let n = d.abs() / Decimal::new(1, 0).max(Decimal::from(1u64 << (hi % 40)));
        for n in [n, d] {
            let want = tiers.partition_point(|t| t.notional_floor <= n).saturating_sub(1);
            prop_assert_eq!(margin::select_tier(tiers, n).map(|x| x.0), Some(want), "{}", n);
        }
    }

    /// Arbitrary (also absurd) quantities, prices and entries never panic: the model answers
    /// or returns an error.
    #[test]
    fn no_panics(q in any::<i64>(), qs in 0u32..28, p in any::<i64>(), ps in 0u32..28, e in any::<i64>(), k in 0..LINEAR.len() + 1) {
        let m = presets();
        let id = if k == LINEAR.len() { "BTCUSD-INV-PERP" } else { LINEAR[k] };
        let a = Account {
            id: "x".into(),
            collateral: BTreeMap::from([(InstrumentId::from("BTC"), Decimal::new(q, qs))]),
            positions: vec![Position {
                instrument: id.into(),
                side: PositionSide::Both,
                quantity: Decimal::new(q, qs),
                entry_price: Decimal::new(e, 2),
            }],
            thresholds: None,
            apply_funding: false,
        };
        let mut px = prices(&m);
        for v in px.values_mut() {
            *v = Decimal::new(p, ps);
        }
        let _ = margin::account_snapshot(&a, &m, &px, dec!(1));
    }
}
