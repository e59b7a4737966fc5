//! Unit tests of the venue-specific maintenance shapes ([`MarginOptions`]): OKX step tiers by
//! contract count (W9), Deribit's size-linear rate (W7), the liquidation fee inside MM (§4.3 on
//! the W4 state), each to the cent against margin-math.md; the `i128` fast path routes them to
//! `Decimal`; liquidation prices and shock roots re-price to the trigger with them.

use super::*;
use crate::model::{InstrumentKind, MarginOptions, Position, PositionSide};
use rust_decimal_macros::dec;
use std::collections::BTreeMap;

fn tier(floor: Decimal, cap: Decimal, mmr: Decimal) -> MarginTier {
    MarginTier {
        notional_floor: floor,
        notional_cap: cap,
        mmr,
        cum: Decimal::ZERO,
    }
}

fn linear(id: &str, cs: Decimal, tiers: Vec<MarginTier>, margin: MarginOptions) -> Instrument {
    Instrument {
        id: id.into(),
        kind: InstrumentKind::LinearPerpetual,
        underlying: "X".into(),
        contract_size: cs,
        tiers,
        liquidation_fee_rate: Decimal::ZERO,
        margin,
        collateral_ratio: Decimal::ONE,
        haircut_tiers: vec![],
        stable: false,
        sources: vec![],
        source_note: None,
    }
}

fn usdt() -> Instrument {
    Instrument {
        id: "USDT".into(),
        kind: InstrumentKind::Collateral,
        underlying: "USDT".into(),
        stable: true,
        tiers: vec![],
        margin: MarginOptions::default(),
        ..linear("USDT", Decimal::ONE, vec![], MarginOptions::default())
    }
}

/// OKX CHZUSDT perpetual (§2.3): tiers in whole contracts, both ends inclusive, no deduction;
/// `ctVal` 10 CHZ.
fn okx_chz() -> Instrument {
    linear(
        "CHZUSDT-OKX",
        dec!(10),
        vec![
            tier(dec!(0), dec!(5001), dec!(0.01)),
            tier(dec!(5001), dec!(7501), dec!(0.015)),
            tier(dec!(7501), dec!(15001), dec!(0.02)),
            tier(dec!(15001), dec!(30001), dec!(0.025)),
        ],
        MarginOptions {
            tier_basis: TierBasis::Contracts,
            ..MarginOptions::default()
        },
    )
}

/// Deribit BTC_USDC linear perpetual (§2.4): MM rate 1 % + 0.005 % per BTC.
fn deribit_btc_usdc() -> Instrument {
    linear(
        "BTC_USDC-DERIBIT",
        Decimal::ONE,
        vec![tier(dec!(0), dec!(1000000000000), dec!(0.01))],
        MarginOptions {
            mmr_size_slope: dec!(0.00005),
            ..MarginOptions::default()
        },
    )
}

/// W9: 5,000 contracts at 0.10 are tier 1 (MM 50.00, OKX ratio 2,000.00 %); 5,001 contracts
/// are tier 2 on the whole position (MM 75.015 → 75.02, ratio 1,333.07 %) — a jump, no
/// deduction. Long and short contracts alike; the tier does not move with the price.
#[test]
fn w9_okx_step_tiers_by_contract_count() {
    let i = okx_chz();
    let equity = dec!(1000);
    for (q, mm, tier_no, okx_ratio_pct) in [
        (dec!(5000), dec!(50.00), 0, dec!(2000.00)),
        (dec!(5001), dec!(75.02), 1, dec!(1333.07)),
        (dec!(-5001), dec!(75.02), 1, dec!(1333.07)),
    ] {
        let f = position_figures(&i, q, dec!(0.10), dec!(0.10)).unwrap();
        assert_eq!(
            to_cents(f.notional),
            to_cents(q.abs() * dec!(10) * dec!(0.10))
        );
        assert_eq!(to_cents(f.maintenance_margin), mm, "{q}");
        assert_eq!(f.tier, tier_no);
        assert_eq!(
            to_cents(equity / f.maintenance_margin * dec!(100)),
            okx_ratio_pct
        );
    }
    assert_eq!(
        position_figures(&i, dec!(5001), dec!(0.1), dec!(0.1))
            .unwrap()
            .maintenance_margin,
        dec!(75.015)
    );
    // A Binance-style deduction would have given 50.015; and the tier stays at 5,001 contracts
    // whatever the price (by notional, 5,001 × 10 × 0.05 = 2,500.5 would be tier 1).
    let f = position_figures(&i, dec!(5001), dec!(0.10), dec!(0.05)).unwrap();
    assert_eq!(f.tier, 1);
    assert_eq!(f.maintenance_margin, dec!(37.5075));
}

/// W7: Deribit BTC_USDC at 100,000: 25 BTC → MM rate 1.125 %, MM 28,125.00 USDC; 350 BTC →
/// 2.75 %, 962,500.00 USDC (quadratic in size).
#[test]
fn w7_deribit_size_linear_mm() {
    let i = deribit_btc_usdc();
    for (q, mm) in [(dec!(25), dec!(28125.00)), (dec!(350), dec!(962500.00))] {
        for sign in [Decimal::ONE, Decimal::NEGATIVE_ONE] {
            let f = position_figures(&i, q * sign, dec!(100000), dec!(100000)).unwrap();
            assert_eq!(to_cents(f.maintenance_margin), mm, "{q}");
        }
    }
    let rate = mm_rate(&i, &i.tiers[0], dec!(25)).unwrap();
    assert_eq!(rate, dec!(0.01125));
}

/// §4.3 with the fee inside the requirement (OKX's ratio denominator): at the W4 state (BTC
/// 54,000, ETH 2,700, SOL 135; MM 7,080.00) a 0.5 % liquidation fee on every symbol adds
/// 6,210.00, so the requirement is 13,290.00 against equity 3,450.00.
#[test]
fn w4_liquidation_fee_inside_mm() {
    let with_fee = MarginOptions {
        liquidation_fee_in_mm: true,
        ..MarginOptions::default()
    };
    // The first tiers of the Binance tables of W3/W4 (§2.1), covering the W4 state.
    let binance = |id: &str, rows: &[(Decimal, Decimal, Decimal)]| {
        let tiers: Vec<MarginTier> = rows
            .iter()
            .enumerate()
            .map(|(k, &(f, m, c))| MarginTier {
                notional_floor: f,
                notional_cap: rows.get(k + 1).map(|r| r.0).unwrap_or(dec!(1e12)),
                mmr: m,
                cum: c,
            })
            .collect();
        let mut i = linear(id, Decimal::ONE, tiers, with_fee.clone());
        i.liquidation_fee_rate = dec!(0.005);
        i
    };
    let btc = binance(
        "BTCUSDT-PERP",
        &[
            (dec!(0), dec!(0.004), dec!(0)),
            (dec!(50000), dec!(0.005), dec!(50)),
            (dec!(600000), dec!(0.0065), dec!(950)),
        ],
    );
    let eth = binance(
        "ETHUSDT-PERP",
        &[
            (dec!(0), dec!(0.004), dec!(0)),
            (dec!(50000), dec!(0.005), dec!(50)),
            (dec!(600000), dec!(0.0065), dec!(950)),
        ],
    );
    let sol = binance(
        "SOLUSDT-PERP",
        &[
            (dec!(0), dec!(0.005), dec!(0)),
            (dec!(20000), dec!(0.0065), dec!(30)),
            (dec!(100000), dec!(0.01), dec!(380)),
            (dec!(800000), dec!(0.02), dec!(8380)),
        ],
    );
    let mut u: HashMap<InstrumentId, Instrument> = HashMap::new();
    for i in [btc, eth, sol, usdt()] {
        u.insert(i.id.clone(), i);
    }
    let figures = [
        (
            "BTCUSDT-PERP",
            dec!(10.5),
            dec!(54000),
            dec!(2785.00) + dec!(2835.00),
        ),
        (
            "ETHUSDT-PERP",
            dec!(150),
            dec!(2700),
            dec!(1975.00) + dec!(2025.00),
        ),
        (
            "SOLUSDT-PERP",
            dec!(-2000),
            dec!(135),
            dec!(2320.00) + dec!(1350.00),
        ),
    ];
    let mut total = Decimal::ZERO;
    for (id, q, p, want) in figures {
        let f = position_figures(&u[&InstrumentId::from(id)], q, p, p).unwrap();
        assert_eq!(to_cents(f.maintenance_margin), want, "{id}");
        total += f.maintenance_margin;
    }
    assert_eq!(to_cents(total), dec!(13290.00));
    assert_eq!(to_cents(total - dec!(7080)), dec!(6210.00));
}

/// With every option on, the liquidation price of a position and the uniform-shock root
/// re-price to the trigger (g(z) = 0 within 1e-12), and no crossing lies nearer on a fine grid:
/// the solvers stay exact on the new shapes.
#[test]
fn options_keep_liquidation_prices_exact() {
    let mut okx = okx_chz();
    okx.liquidation_fee_rate = dec!(0.0005);
    okx.margin.liquidation_fee_in_mm = true;
    let deribit = deribit_btc_usdc();
    let mut u: HashMap<InstrumentId, Instrument> = HashMap::new();
    for i in [okx, deribit, usdt()] {
        u.insert(i.id.clone(), i);
    }
    let cases = [
        ("CHZUSDT-OKX", dec!(6000), dec!(0.10), dec!(800)),
        ("CHZUSDT-OKX", dec!(-6000), dec!(0.10), dec!(800)),
        ("BTC_USDC-DERIBIT", dec!(25), dec!(100000), dec!(300000)),
        ("BTC_USDC-DERIBIT", dec!(-25), dec!(100000), dec!(300000)),
    ];
    for (id, q, p, cash) in cases {
        let mut collateral = BTreeMap::new();
        collateral.insert(InstrumentId::from("USDT"), cash);
        let account = Account {
            id: "o".into(),
            collateral,
            positions: vec![Position {
                instrument: id.into(),
                side: PositionSide::Both,
                quantity: q,
                entry_price: p,
            }],
            thresholds: None,
            apply_funding: false,
        };
        let mut prices = HashMap::new();
        prices.insert(InstrumentId::from(id), p);
        let s = account_snapshot(&account, &u, &prices, Decimal::ONE).unwrap();
        let lp = s.positions[0]
            .liquidation_price
            .expect("a liquidation price");
        let at = |z: Decimal| {
            let mut m = prices.clone();
            m.insert(InstrumentId::from(id), z);
            let t = account_totals(&account, &u, &m).unwrap();
            t.maintenance_margin - t.equity
        };
        assert!(
            at(lp).abs() < dec!(0.000001),
            "{id} {q}: g({lp}) = {}",
            at(lp)
        );
        // No crossing nearer than the reported one: g keeps its sign between p and lp.
        let sign_now = at(p).is_sign_negative();
        for k in 1..200 {
            let z = p + (lp - p) * Decimal::from(k) / dec!(200);
            if (lp - z).abs() > (lp - p).abs() / dec!(1000) {
                assert_eq!(
                    at(z).is_sign_negative(),
                    sign_now,
                    "{id} {q}: crossing at {z}"
                );
            }
        }
        // The uniform shock of the one moving price lands on the same root.
        let x = s.shock_distance.nearest.expect("a shock distance");
        let z = p * (Decimal::ONE + x);
        assert!(
            (z - lp).abs() <= lp.abs() * dec!(0.0000001),
            "{id}: {z} vs {lp}"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
    /// The tick path (`position_pnl_mm`) equals `position_figures` bit for bit with the options
    /// on: they are routed to the `Decimal` path explicitly.
    #[test]
    fn options_fast_path_matches_decimal(
        qm in -10_000_000i64..10_000_000, qs in 0u32..4,
        pm in 1i64..1_000_000_000, ps in 0u32..8,
        em in 1i64..1_000_000_000, es in 0u32..8,
        contracts in proptest::bool::ANY, slope in 0i64..100, fee in proptest::bool::ANY,
    ) {
        let mut i = okx_chz();
        i.contract_size = Decimal::ONE;
        i.liquidation_fee_rate = dec!(0.0005);
        i.margin = MarginOptions {
            tier_basis: if contracts { TierBasis::Contracts } else { TierBasis::Notional },
            mmr_size_slope: Decimal::new(slope, 7),
            liquidation_fee_in_mm: fee,
        };
        let (q, p, e) = (Decimal::new(qm, qs), Decimal::new(pm, ps), Decimal::new(em, es));
        let slow = position_figures(&i, q, e, p).map(|f| (f.unrealized_pnl, f.maintenance_margin));
        let fast = position_pnl_mm(&i, q, e, p);
        proptest::prop_assert_eq!(format!("{slow:?}"), format!("{fast:?}"));
        // And MM is the whole-notional rate of the bracket chosen by its basis.
        if let Ok(f) = position_figures_exact(&i, q, e, p) {
            let basis = if contracts { q.abs() } else { f.notional };
            let (_, t) = select_tier(&i.tiers, basis).unwrap();
            let want = f.notional * (t.mmr + q.abs() * i.margin.mmr_size_slope
                + if fee { i.liquidation_fee_rate } else { Decimal::ZERO });
            proptest::prop_assert_eq!(f.maintenance_margin, want);
        }
    }
}

/// The shipped presets carry the options and reproduce W9 and W7 to the cent, and load without
/// warnings (OKX's step tiers are not flagged as a broken deduction).
#[test]
fn presets_reproduce_w9_and_w7() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    let (u, warnings) = crate::sources::files::load_instruments_with_warnings(&path).unwrap();
    let ours: Vec<String> = warnings
        .iter()
        .map(|w| w.to_string())
        .filter(|w| w.contains("OKX-") || w.contains("DERIBIT-"))
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
    let chz = &u[&InstrumentId::from("OKX-CHZUSDT-PERP")];
    assert_eq!(chz.margin.tier_basis, TierBasis::Contracts);
    for (q, mm) in [(dec!(5000), dec!(50.00)), (dec!(5001), dec!(75.02))] {
        let f = position_figures(chz, q, dec!(0.10), dec!(0.10)).unwrap();
        assert_eq!(to_cents(f.maintenance_margin), mm);
    }
    let btc = &u[&InstrumentId::from("DERIBIT-BTC_USDC-PERP")];
    for (q, mm) in [(dec!(25), dec!(28125.00)), (dec!(350), dec!(962500.00))] {
        let f = position_figures(btc, q, dec!(100000), dec!(100000)).unwrap();
        assert_eq!(to_cents(f.maintenance_margin), mm);
    }
}
