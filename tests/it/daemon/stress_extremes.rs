//! Issue 12 item 3: `liqwatch stress`, run as the real binary on generated files whose
//! quantities, prices, balances and shocks span `Decimal`'s whole range (1e-28 … 7.9e28,
//! negative and zero), never panics: it exits 0 with every row, or 1 with the rows it could
//! compute and an `errors` entry for each one it could not. Both output formats.
//!
//! What it caught: `ratio × 100` unchecked in the row (the reported `stress.rs:153` panic) and
//! the table's percentages, where `format!("{:.4}", decimal)` itself panics past 29 significant
//! digits (rust_decimal formats into a 32-byte buffer) even after a checked `× 100`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stress(accounts: &Path, prices: &Path, shocks: &[String], json_out: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_liqwatch"));
    cmd.current_dir(repo())
        .arg("stress")
        .arg("--accounts")
        .arg(accounts)
        .arg("--prices")
        .arg(prices);
    for s in shocks {
        cmd.arg("--shock").arg(s);
    }
    if json_out {
        cmd.args(["--format", "json"]);
    }
    cmd.output().expect("run liqwatch")
}

/// A decimal of any magnitude `Decimal` holds: mantissa from 1 to 2⁹⁶ − 1, scale 0 … 28.
fn magnitude() -> impl Strategy<Value = Decimal> {
    let mantissa = prop_oneof![
        Just(1i128),
        Just(7),
        Just(60000),
        Just(123_456_789_012_345),
        Just(i128::from(u64::MAX)),
        Just((1i128 << 96) - 1),
        1i128..(1i128 << 96),
    ];
    (mantissa, 0u32..=28).prop_map(|(m, s)| Decimal::from_i128_with_scale(m, s))
}

fn signed() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        1 => Just(Decimal::ZERO),
        4 => magnitude(),
        4 => magnitude().prop_map(|d| -d),
    ]
}

fn positive() -> impl Strategy<Value = Decimal> {
    magnitude()
}

/// Shock percentages: ordinary, tiny, close to −100 %, and huge rises.
fn shock() -> impl Strategy<Value = String> {
    let pct = prop_oneof![
        Just("-99.9999999999999999999999999".to_string()),
        Just("-10".to_string()),
        Just("0".to_string()),
        Just("+1000000000000000000000000".to_string()),
        Just("+79228162514264337593543950335".to_string()),
        magnitude().prop_map(|d| format!("+{d}")),
        (0u32..=28).prop_map(|s| format!("-{}", Decimal::from_i128_with_scale(99, s))),
    ];
    (pct, prop::bool::ANY).prop_map(|(p, all)| {
        if all {
            format!("all={p}%")
        } else {
            format!("BTC={p}%,ETH=-50%")
        }
    })
}

#[derive(Debug, Clone)]
struct Case {
    usdt: Decimal,
    btc_collateral: Decimal,
    btc_qty: Decimal,
    btc_entry: Decimal,
    eth_qty: Decimal,
    eth_entry: Decimal,
    inv_qty: Decimal,
    inv_entry: Decimal,
    btc_price: Decimal,
    eth_price: Decimal,
    shocks: Vec<String>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (signed(), signed(), signed(), positive()),
        (signed(), positive(), signed(), positive()),
        (positive(), positive(), prop::collection::vec(shock(), 0..3)),
    )
        .prop_map(
            |(
                (usdt, btc_collateral, btc_qty, btc_entry),
                (eth_qty, eth_entry, inv_qty, inv_entry),
                (btc_price, eth_price, shocks),
            )| Case {
                usdt,
                btc_collateral,
                btc_qty,
                btc_entry,
                eth_qty,
                eth_entry,
                inv_qty,
                inv_entry,
                btc_price,
                eth_price,
                shocks,
            },
        )
}

fn accounts_json(c: &Case) -> Value {
    let s = |d: Decimal| d.to_string();
    json!({"accounts": [
        {"id": "everything", "collateral": {"USDT": s(c.usdt), "BTC": s(c.btc_collateral)},
         "positions": [
            {"instrument": "BTCUSDT-PERP", "quantity": s(c.btc_qty), "entry_price": s(c.btc_entry)},
            {"instrument": "ETHUSDT-PERP", "quantity": s(c.eth_qty), "entry_price": s(c.eth_entry)},
            {"instrument": "BTCUSD-INV-PERP", "quantity": s(c.inv_qty), "entry_price": s(c.inv_entry)}
         ]},
        {"id": "linear", "collateral": {"USDT": s(c.usdt)},
         "positions": [
            {"instrument": "BTCUSDT-PERP", "quantity": s(c.btc_qty), "entry_price": s(c.btc_entry)}
         ]},
        {"id": "hedged", "collateral": {"USDT": s(c.usdt)},
         "positions": [
            {"instrument": "BTCUSDT-PERP", "side": "long", "quantity": s(c.btc_qty.abs()), "entry_price": s(c.btc_entry)},
            {"instrument": "BTCUSDT-PERP", "side": "short", "quantity": s(-c.eth_qty.abs()), "entry_price": s(c.eth_entry)}
         ]},
        {"id": "collateral-only", "collateral": {"USDT": s(c.usdt), "BTC": s(c.btc_collateral)}}
    ]})
}

fn check(c: &Case, dir: &Path) -> Result<(), TestCaseError> {
    let accounts = dir.join("accounts.json");
    let prices = dir.join("prices.toml");
    std::fs::write(&accounts, accounts_json(c).to_string()).unwrap();
    std::fs::write(
        &prices,
        format!(
            "[prices]\nBTC = \"{}\"\nETH = \"{}\"\nSOL = \"150\"\n",
            c.btc_price, c.eth_price
        ),
    )
    .unwrap();
    let json_run = stress(&accounts, &prices, &c.shocks, true);
    let stderr = String::from_utf8_lossy(&json_run.stderr);
    let code = json_run.status.code();
    prop_assert!(
        matches!(code, Some(0) | Some(1)),
        "exit {code:?} (json)\n{stderr}"
    );
    let doc: Value = serde_json::from_slice(&json_run.stdout)
        .map_err(|e| TestCaseError::fail(format!("not JSON ({e}); stderr {stderr}")))?;
    let results = doc["results"].as_array().map_or(0, Vec::len);
    let errors = doc["errors"].as_array().map_or(0, Vec::len);
    let scenarios = doc["scenarios"].as_array().map_or(0, Vec::len);
    prop_assert_eq!(
        results + errors,
        4 * scenarios,
        "rows + errors cover the book"
    );
    if code == Some(1) {
        prop_assert!(errors > 0, "exit 1 lists its errors");
        prop_assert!(stderr.contains("liqwatch stress: account"), "{}", stderr);
    } else {
        prop_assert_eq!(errors, 0);
    }
    let table_run = stress(&accounts, &prices, &c.shocks, false);
    prop_assert_eq!(
        table_run.status.code(),
        code,
        "table: {}",
        String::from_utf8_lossy(&table_run.stderr)
    );
    Ok(())
}

/// Generated books over `Decimal`'s whole range: exit 0 or 1 (never the panic's 101), every
/// account × scenario either a row or a listed error, in JSON and in the table.
#[test]
fn stress_never_panics_on_extreme_magnitudes_issue_12_item_3() {
    let dir = tempfile::tempdir().unwrap();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&case(), |c| check(&c, dir.path()))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The issue's reproductions: USDT 1e-12 against 1e11 BTCUSDT-PERP at 60,000 (ratio × 100
/// overflowed) and a shock near 6.7e26 in the table: exit 0 or 1, never 101.
#[test]
fn reported_overflows_issue_12_item_3() {
    let dir = tempfile::tempdir().unwrap();
    let accounts = dir.path().join("a.json");
    let prices = dir.path().join("p.toml");
    std::fs::write(
        &accounts,
        json!({"accounts":[{"id":"tiny","collateral":{"USDT":"0.000000000001"},
            "positions":[{"instrument":"BTCUSDT-PERP","quantity":"100000000000","entry_price":"60000"}]}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(&prices, "[prices]\nBTC = \"60000\"\n").unwrap();
    for json_out in [true, false] {
        let out = stress(&accounts, &prices, &["all=-99%".into()], json_out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0) | Some(1)),
            "exit {:?}: {stderr}",
            out.status.code()
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = stress(&accounts, &prices, &[], true);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pct = doc["results"][0]["margin_ratio_pct"].as_str().unwrap();
    assert!(pct.len() > 26, "the ratio is written out in full: {pct}");

    // A shock of about 6.7e26 (a tiny margin short against a huge rise) in the table.
    std::fs::write(
        &accounts,
        json!({"accounts":[{"id":"short","collateral":{"USDT":"79228162514264337593543950335"},
            "positions":[{"instrument":"BTCUSDT-PERP","quantity":"-0.0000000000000000000001","entry_price":"60000"}]}]})
        .to_string(),
    )
    .unwrap();
    let out = stress(&accounts, &prices, &[], false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "exit {:?}: {stderr}",
        out.status.code()
    );
}

/// Quantities with more decimals than a decimal holds are refused (exit 2, naming the field),
/// not rounded to 0; a price for a stablecoin is refused, not ignored.
#[test]
fn too_precise_and_stablecoin_prices_are_refused_issue_12_item_3() {
    let dir = tempfile::tempdir().unwrap();
    let accounts = dir.path().join("a.json");
    let prices = dir.path().join("p.toml");
    std::fs::write(
        &accounts,
        json!({"accounts":[{"id":"a","collateral":{"USDT":"1000"},
            "positions":[{"instrument":"BTCUSDT-PERP","quantity":"0.00000000000000000000000000001","entry_price":"60000"}]}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(&prices, "[prices]\nBTC = \"60000\"\n").unwrap();
    let out = stress(&accounts, &prices, &[], true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("quantity") && stderr.contains("rounded"),
        "{stderr}"
    );

    std::fs::write(
        &accounts,
        json!({"accounts":[{"id":"a","collateral":{"USDT":"1000"}}]}).to_string(),
    )
    .unwrap();
    std::fs::write(&prices, "[prices]\nBTC = \"60000\"\nUSDT = \"0.98\"\n").unwrap();
    let out = stress(&accounts, &prices, &[], true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("prices.USDT") && stderr.contains("stablecoin"),
        "{stderr}"
    );
}
