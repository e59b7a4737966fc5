//! `liqwatch stress --funding`: the next funding payment per account and the margin ratio
//! after it, through the real binary (issue 15 part 3).

use std::path::Path;
use std::process::Command;

use rust_decimal::Decimal;
use rust_decimal_macros::dec;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_liqwatch"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// The W3 desk at the recorded rates: BTC pays 10.5·60,000·0.00008359 = 52.6617, ETH pays
/// 150·3,000·0.0001 = 45, SOL has no rate (listed, not counted): total −97.6617 → −97.66,
/// equity 89,902.3383 → 89,902.34, ratio 7,965 / 89,902.3383 exactly.
#[test]
fn w3_desk_next_funding_and_ratio_after() {
    let out = bin()
        .args([
            "stress",
            "--funding",
            "feeds/sample/funding.toml",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["account"] == "w3-cross-desk" && r["scenario"] == "none")
        .unwrap();
    let f = &row["funding"];
    assert_eq!(f["total"], "-97.66");
    assert_eq!(f["equity_after"], "89902.34");
    let ratio: Decimal = f["margin_ratio_after"].as_str().unwrap().parse().unwrap();
    assert_eq!(ratio, dec!(7965) / dec!(89902.3383));
    assert_eq!(f["missing_rate"], serde_json::json!(["SOLUSDT-PERP"]));
}

/// A rate for an unknown instrument, or one that is not a number, exits 2 naming the key.
#[test]
fn bad_funding_file_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        (
            "[funding]\n\"NOPE-PERP\" = \"0.0001\"\n",
            "funding.NOPE-PERP",
        ),
        (
            "[funding]\n\"BTCUSDT-PERP\" = \"1%\"\n",
            "funding.BTCUSDT-PERP",
        ),
        ("[funding]\n\"BTC\" = \"0.0001\"\n", "funding.BTC"),
    ] {
        let p = dir.path().join("f.toml");
        std::fs::write(&p, text).unwrap();
        let out = bin()
            .args(["stress", "--funding"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(want) && err.contains(&*p.to_string_lossy()),
            "{err}"
        );
    }
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("feeds/sample/funding.toml")
            .exists()
    );
}
