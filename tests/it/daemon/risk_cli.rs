//! `liqwatch risk` and `liqwatch stress --scenario` run as the real binary: margin-math §4.2
//! reproduced from a history file, bad history named by file and line, unmapped assets
//! refused, and the shipped 2021-05-19 episode agreeing between `risk` and `stress`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_liqwatch"))
        .current_dir(repo())
        .arg(cmd)
        .args(args)
        .output()
        .expect("run liqwatch")
}

fn ok_json(cmd: &str, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let out = run(cmd, &all);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

const W3: &str = r#"{"accounts": [{
  "id": "w3",
  "collateral": {"USDT": "60500", "BTC": "1.5"},
  "positions": [
    {"instrument": "BTCUSDT-PERP", "quantity": "10.5", "entry_price": "62000"},
    {"instrument": "ETHUSDT-PERP", "quantity": "150", "entry_price": "3100"},
    {"instrument": "SOLUSDT-PERP", "quantity": "-2000", "entry_price": "140"}
  ]
}]}"#;

/// §4.2's daily returns (percent) of BTC, ETH, SOL.
const RETURNS: [[Decimal; 3]; 10] = [
    [dec!(-2.1), dec!(-3.0), dec!(-4.2)],
    [dec!(1.5), dec!(2.2), dec!(3.1)],
    [dec!(-4.8), dec!(-6.5), dec!(-8.9)],
    [dec!(0.4), dec!(-0.3), dec!(1.2)],
    [dec!(-1.2), dec!(-1.9), dec!(-2.5)],
    [dec!(3.3), dec!(4.1), dec!(5.6)],
    [dec!(-0.6), dec!(-0.2), dec!(-1.4)],
    [dec!(-7.4), dec!(-9.8), dec!(-12.5)],
    [dec!(2.0), dec!(1.1), dec!(-0.8)],
    [dec!(-3.1), dec!(-4.4), dec!(-6.0)],
];

/// A daily price history whose consecutive days move by §4.2's returns, as `ts,symbol,price`.
fn table_history(symbols: [&str; 3]) -> String {
    let mut p = [dec!(60000), dec!(3000), dec!(150)];
    let mut s = String::from("ts,symbol,price\n");
    for day in 0..=RETURNS.len() {
        for (k, sym) in symbols.iter().enumerate() {
            s.push_str(&format!("{},{sym},{}\n", day as i64 * 86_400_000, p[k]));
        }
        if let Some(r) = RETURNS.get(day) {
            for k in 0..3 {
                p[k] *= Decimal::ONE + r[k] / dec!(100);
            }
        }
    }
    s
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

/// Margin-math §4.2 from a history file: ten 1-day windows, α = 0.8, k = 2,
/// VaR = 36,894.00, ES = 48,220.50, no liquidating scenario, components summing to ES.
#[test]
fn risk_reproduces_4_2_from_history() {
    let dir = tempfile::tempdir().unwrap();
    let acc = write(dir.path(), "w3.json", W3);
    let hist = write(
        dir.path(),
        "days.csv",
        &table_history(["BTC", "ETH", "SOL"]),
    );
    let doc = ok_json(
        "risk",
        &[
            "--accounts",
            &acc,
            "--history",
            &hist,
            "--horizon",
            "1d",
            "--alpha",
            "0.8",
        ],
    );
    assert_eq!(doc["scenarios"], 10);
    assert_eq!(doc["k"], 2);
    let r = &doc["results"][0];
    assert_eq!(r["account"], "w3");
    assert_eq!(r["equity"], "90000");
    assert_eq!(r["var"], "36894");
    assert_eq!(r["es"], "48220.5");
    assert_eq!(r["liquidating_scenarios"], 0);
    assert_eq!(r["worst"][0]["pnl"], "-59547");
    assert_eq!(r["worst"][0]["start"], "1970-01-08T00:00:00.000Z");
    let sum: Decimal = r["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["es"].as_str().unwrap().parse::<Decimal>().unwrap())
        .sum();
    assert_eq!(sum, dec!(48220.5));

    // The table says the same to the cent.
    let out = run(
        "risk",
        &[
            "--accounts",
            &acc,
            "--history",
            &hist,
            "--horizon",
            "1d",
            "--alpha",
            "0.8",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("w3 ")).expect("w3 row");
    assert!(
        line.contains("36,894.00") && line.contains("48,220.50"),
        "{line}"
    );
}

/// A bad history line is refused with exit 2 and its file and line.
#[test]
fn bad_history_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let acc = write(dir.path(), "w3.json", W3);
    let cases = [
        (
            "ts,symbol,price\n0,BTC,1\n1,BTC,abc\n",
            ":3: price \"abc\" is not a decimal",
        ),
        ("0,BTC,1\n1,BTC\n", ":2: expected 3 fields"),
        ("0,BTC,-5\n", ":1: price must be positive"),
    ];
    for (text, want) in cases {
        let hist = write(dir.path(), "bad.csv", text);
        let out = run("risk", &["--accounts", &acc, "--history", &hist]);
        assert_eq!(out.status.code(), Some(2), "{text:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(&format!("bad.csv{want}")), "{err}");
    }
    let out = run(
        "risk",
        &["--accounts", &acc, "--history", "no/such/file.csv"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.csv: cannot read"));
}

/// An asset the book holds without a history series is refused; an explicit map fixes it.
#[test]
fn unmapped_asset_is_refused_unless_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let acc = write(dir.path(), "w3.json", W3);
    let hist = write(
        dir.path(),
        "h.csv",
        &table_history(["BTC", "ETH", "SOLANA"]),
    );
    let args = [
        "--accounts",
        acc.as_str(),
        "--history",
        hist.as_str(),
        "--alpha",
        "0.8",
    ];
    let out = run("risk", &args);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no price history for SOL"), "{err}");
    let mut mapped = args.to_vec();
    mapped.extend(["--map", "SOLANA=SOL"]);
    let doc = ok_json("risk", &mapped);
    assert_eq!(doc["results"][0]["var"], "36894");
    assert_eq!(doc["history"]["series"]["SOL"], "SOLANA");
}

/// The shipped episode: `stress --scenario crash-2021-05-19:4h` applies the worst 4-hour
/// window, and `risk --history episode:…` finds the same window as W3's worst.
#[test]
fn episode_stress_and_risk_agree() {
    let doc = ok_json("stress", &["--scenario", "crash-2021-05-19:4h"]);
    let row = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["account"] == "w3-cross-desk" && r["scenario"] == "crash-2021-05-19:4h")
        .expect("w3 row");
    assert_eq!(row["equity"], "-149450.82");
    assert_eq!(row["state"]["state"], "triggered");
    let risk = ok_json(
        "risk",
        &[
            "--history",
            "episode:crash-2021-05-19",
            "--horizon",
            "4h",
            "--alpha",
            "0.99",
        ],
    );
    let w3 = risk["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["account"] == "w3-cross-desk")
        .expect("w3");
    assert_eq!(w3["worst"][0]["start"], "2021-05-19T09:10:00.000Z");
    let pnl: Decimal = w3["worst"][0]["pnl"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        pnl.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero),
        dec!(-239450.82)
    );
    let out = run("stress", &["--scenario", "crash-2021-05-19:2w"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run("stress", &["--scenario", "no-such-crash:4h"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown episode"));
}
