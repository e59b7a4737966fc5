//! `liqwatch stress` run as a real binary on the shipped sample files and on broken files:
//! exit codes, error messages naming file/line/field, and W3/W4 figures to the cent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stress(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_liqwatch"))
        .current_dir(repo())
        .arg("stress")
        .args(args)
        .output()
        .expect("run liqwatch")
}

fn json(args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let out = stress(&all);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

fn row<'a>(doc: &'a Value, account: &str, scenario: &str) -> &'a Value {
    doc["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["account"] == account && r["scenario"] == scenario)
        .unwrap_or_else(|| panic!("no row {account} / {scenario}"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// The documented command (docs/stress.md) works on the shipped files: a table with W3 healthy at 0 and
/// triggered at −10 %.
#[test]
fn readme_command_prints_table() {
    let out = stress(&[
        "--instruments",
        "feeds/presets.toml",
        "--accounts",
        "feeds/sample/accounts.json",
        "--shock",
        "all=-10%",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).expect("utf8");
    let w3: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("w3-cross-desk"))
        .collect();
    assert_eq!(w3.len(), 2, "{text}");
    assert!(
        w3[0].contains("90,000.00") && w3[0].contains("7,965.00"),
        "{}",
        w3[0]
    );
    assert!(
        w3[0].contains("8.85 %") && w3[0].contains("healthy"),
        "{}",
        w3[0]
    );
    assert!(w3[0].contains("-9.5765 %"), "{}", w3[0]);
    assert!(
        w3[1].contains("3,450.00") && w3[1].contains("205.22 %"),
        "{}",
        w3[1]
    );
    // Triggered at −10 %: the margin call (7,080 / 0.75 − 3,450 = 5,990, and a cent to be
    // strictly under 0.75).
    assert!(w3[1].contains("TRIGGERED, call 5,990.01"), "{}", w3[1]);
    assert!(!w3[0].contains("call"), "{}", w3[0]);
}

/// JSON output carries W3 (none) and W4 (all −10 %, and −5 %) to the cent, the exact W5
/// shock root, and the §4.1 single-asset rows.
#[test]
fn json_w3_w4_figures_to_the_cent() {
    let doc = json(&[
        "--shock",
        "all=-10%;all=-5%",
        "--shock",
        "BTC=-10%",
        "--shock",
        "SOL=+20%",
    ]);
    assert_eq!(
        doc["scenarios"],
        serde_json::json!(["none", "all=-10%", "all=-5%", "BTC=-10%", "SOL=+20%"])
    );
    let w3 = row(&doc, "w3-cross-desk", "none");
    assert_eq!(w3["equity"], "90000.00");
    assert_eq!(w3["maintenance_margin"], "7965.00");
    assert_eq!(w3["margin_ratio"], "0.0885");
    assert_eq!(w3["state"]["state"], "healthy");
    assert_eq!(
        w3["shock_distance"]["down"],
        "-0.0957647882394119705985299265"
    );
    assert!(w3["shock_distance"]["up"].is_null());
    let w4 = row(&doc, "w3-cross-desk", "all=-10%");
    assert_eq!(w4["equity"], "3450.00");
    assert_eq!(w4["maintenance_margin"], "7080.00");
    assert_eq!(w4["margin_ratio_pct"], "205.22");
    assert_eq!(w4["state"]["state"], "triggered");
    assert_eq!(
        w4["snapshot"]["margin_call"],
        serde_json::json!({"below_ratio": "0.75", "deposit": "5990.01"})
    );
    assert!(w3["snapshot"].get("margin_call").is_none(), "healthy: none");
    let mms: Vec<&str> = w4["snapshot"]["positions"]
        .as_array()
        .expect("positions")
        .iter()
        .map(|p| p["maintenance_margin"].as_str().expect("string"))
        .collect();
    assert_eq!(
        mms,
        [
            "2785.000000000000",
            "1975.000000000000",
            "2320.000000000000"
        ]
    );
    let m5 = row(&doc, "w3-cross-desk", "all=-5%");
    assert_eq!(
        (m5["equity"].as_str(), m5["maintenance_margin"].as_str()),
        (Some("46725.00"), Some("7500.00"))
    );
    let btc = row(&doc, "w3-cross-desk", "BTC=-10%");
    assert_eq!(
        (btc["equity"].as_str(), btc["maintenance_margin"].as_str()),
        (Some("18450.00"), Some("7605.00"))
    );
    let sol = row(&doc, "w3-cross-desk", "SOL=+20%");
    assert_eq!(
        (sol["equity"].as_str(), sol["maintenance_margin"].as_str()),
        (Some("30000.00"), Some("8565.00"))
    );
    assert_eq!(doc["errors"], serde_json::json!([]));
}

/// Hedge-mode legs appear as two positions each with its own tier; the warning levels of
/// the account's own thresholds are used.
#[test]
fn hedge_account_rows() {
    let doc = json(&["--shock", "all=-10.5%"]);
    let r = row(&doc, "hedge-mode-btc", "none");
    let sides: Vec<&str> = r["snapshot"]["positions"]
        .as_array()
        .expect("positions")
        .iter()
        .map(|p| p["side"].as_str().expect("side"))
        .collect();
    assert_eq!(sides, ["long", "short", "short"]);
    let shocked = row(&doc, "hedge-mode-btc", "all=-10.5%");
    assert_eq!(shocked["state"]["state"], "warning");
    assert_eq!(shocked["state"]["level"], "0.5");
}

/// A TOML float in the presets: exit 2, the message names the file, line and field.
#[test]
fn bad_instruments_exit_2_with_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(
        dir.path(),
        "presets.toml",
        "[[instrument]]\nid = \"USDT\"\nkind = \"collateral\"\nunderlying = \"USDT\"\nstable = true\ncollateral_ratio = 0.9999\n",
    );
    let out = stress(&["--instruments", p.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:6:", p.display())), "{err}");
    assert!(err.contains("collateral_ratio"), "{err}");
    assert!(out.stdout.is_empty());
}

/// A broken account (unknown field, then unknown instrument) in the JSON: exit 2, file, line
/// and field named.
#[test]
fn bad_accounts_exit_2_with_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(
        dir.path(),
        "accounts.json",
        "{\"accounts\": [\n  {\"id\": \"ok\"},\n  {\"id\": \"x\", \"positions\": [\n    {\"instrument\": \"BTCUSDT-PERP\", \"quantity\": \"1\", \"entry_price\": \"1\", \"leverage\": \"5\"}]}\n]}\n",
    );
    let out = stress(&["--accounts", p.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:4:", p.display())), "{err}");
    assert!(err.contains("accounts[1].positions[0]"), "{err}");
    assert!(err.contains("unknown field `leverage`"), "{err}");

    let p = write(
        dir.path(),
        "accounts2.json",
        "{\"accounts\": [\n  {\"id\": \"ok\"},\n  {\"id\": \"x\", \"positions\": [{\"instrument\": \"DOGEUSDT-PERP\", \"quantity\": \"1\", \"entry_price\": \"1\"}]}\n]}\n",
    );
    let out = stress(&["--accounts", p.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:", p.display())), "{err}");
    assert!(
        err.contains("unknown instrument \"DOGEUSDT-PERP\""),
        "{err}"
    );
}

/// Bad prices, a missing price, a bad scenario and a missing file all exit 2 with a message
/// saying what to fix.
#[test]
fn bad_prices_scenarios_and_missing_files_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(
        dir.path(),
        "prices.toml",
        "[prices]\nBTC = \"60000\"\nETH = \"-3\"\n",
    );
    let out = stress(&["--prices", p.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3: field `prices.ETH`", p.display())),
        "{err}"
    );

    let p = write(dir.path(), "few.toml", "[prices]\nBTC = \"60000\"\n");
    let out = stress(&["--prices", p.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no price for ETHUSDT-PERP (underlying ETH)"),
        "{err}"
    );

    let out = stress(&["--shock", "BTC=-20"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a % sign"));
    let out = stress(&["--shock", "DOGE=-20%"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown underlying \"DOGE\""));

    let out = stress(&["--accounts", "no/such/file.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.json: cannot read"));

    let out = stress(&["--format", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

fn cents(v: &Value) -> String {
    let d: rust_decimal::Decimal = v
        .as_str()
        .expect("decimal string")
        .parse()
        .expect("decimal");
    liqwatch::margin::to_cents(d).to_string()
}

/// Issue 13 part 5: every row says what a liquidation would cost. W3 (preset fees 0.3 % BTC,
/// 0.5 % ETH and SOL) at −10 % is triggered: penalty 567,000·0.003 + 405,000·0.005 +
/// 270,000·0.005 = 5,076.00 against equity 3,450.00, a shortfall of 1,626.00. Healthy W3 is
/// costed at its shock to the trigger x* = 12,917/14,285: penalty 5,640·x* = 5,099.89 against
/// equity = MM = 7,115.58 (W5), a surplus of 2,015.69. Binance's procedure is attached.
#[test]
fn liquidation_cost_to_the_cent() {
    let doc = json(&["--shock", "all=-10%"]);
    let t = &row(&doc, "w3-cross-desk", "all=-10%")["liquidation_cost"];
    assert_eq!(t["at"], "scenario");
    assert_eq!(t["shock"], Value::Null);
    assert_eq!(cents(&t["penalty"]), "5076.00");
    assert_eq!(cents(&t["equity"]), "3450.00");
    assert_eq!(t["surplus"], "0");
    assert_eq!(cents(&t["shortfall"]), "1626.00");
    assert_eq!(t["venue"], "binance-usdm");
    assert_eq!(t["order"]["venue"], "binance-usdm");
    assert_eq!(t["order"]["positions_first"], Value::Null);

    let h = &row(&doc, "w3-cross-desk", "none")["liquidation_cost"];
    assert_eq!(h["at"], "shock_to_trigger");
    assert!(h["shock"].as_str().unwrap().starts_with("-0.0957647882"));
    assert_eq!(cents(&h["penalty"]), "5099.89");
    assert_eq!(cents(&h["equity"]), "7115.58");
    assert_eq!(cents(&h["surplus"]), "2015.69");
    assert_eq!(h["shortfall"], "0");

    let out = stress(&["--shock", "all=-10%"]);
    let text = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        text.contains("penalty 5,076.00 (147.13 %), shortfall 1,626.00"),
        "{text}"
    );
    assert!(
        text.contains("at -9.5765 %: penalty 5,099.89 (71.67 %), surplus 2,015.69"),
        "{text}"
    );
}

/// Issue 13 part 1: `--warn-within-shock` reports, per row, the distance level the uniform move
/// to the trigger is within (W3: −9.58 %, within 10 %; after −5 %: −4.82 %, within 5 %); a
/// row clear of every level leaves `shock_state` out; misordered levels exit 2.
#[test]
fn warn_within_shock_marks_the_rows() {
    let doc = json(&["--warn-within-shock", "10%,5%", "--shock", "all=-5%"]);
    let w3 = row(&doc, "w3-cross-desk", "none");
    assert_eq!(
        w3["shock_state"],
        serde_json::json!({"state":"warning","level":"0.1"}),
        "{w3:#}"
    );
    assert_eq!(w3["state"]["state"], "healthy");
    let w3_down = row(&doc, "w3-cross-desk", "all=-5%");
    assert_eq!(w3_down["shock_state"]["level"], "0.05", "{w3_down:#}");
    let hedge = row(&doc, "hedge-mode-btc", "none");
    assert!(hedge.get("shock_state").is_none(), "{hedge:#}");
    let table = stress(&["--warn-within-shock", "10%,5%"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("healthy, within 10% move"), "{text}");
    let bad = stress(&["--warn-within-shock", "5%,10%"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("strictly descending"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// Run outside the checkout with the defaults, `stress`, `risk` and `backtest` exit 2 with the
/// missing file and a hint naming the flags whose default is absent; a file the user named is
/// not blamed on a default.
#[test]
fn defaults_missing_outside_the_checkout_name_their_flags() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_liqwatch"))
            .current_dir(dir.path())
            .args(args)
            .output()
            .expect("run liqwatch")
    };
    // (The history is read after the presets, which fail first.)
    let history = dir.path().join("history.csv");
    for args in [
        vec!["stress"],
        vec!["risk", "--history", history.to_str().unwrap()],
    ] {
        let cmd = args[0];
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains("feeds/presets.toml: cannot read"),
            "{cmd}: {err}"
        );
        assert!(
            err.contains("--instruments (default feeds/presets.toml)")
                && err.contains("--accounts (default feeds/sample/accounts.json)")
                && err.contains("--prices (default feeds/sample/prices.toml)"),
            "{cmd}: {err}"
        );
    }
    // The presets named, the rest at their defaults: the hint names only those.
    let presets = repo().join("feeds/presets.toml");
    let out = run(&["stress", "--instruments", presets.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--accounts (default") && !err.contains("--instruments (default"),
        "{err}"
    );
    let replay = repo().join("feeds/replay/crash-2021-05-19.jsonl");
    let accounts = repo().join("feeds/demo/accounts.json");
    let out = run(&[
        "backtest",
        "--replay",
        replay.to_str().unwrap(),
        "--accounts",
        accounts.to_str().unwrap(),
        "--out",
        "out",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--instruments (default feeds/presets.toml)"),
        "{err}"
    );
    // A missing file the user named gets the error alone.
    let out = run(&["stress", "--instruments", "mine.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mine.toml: cannot read"), "{err}");
    assert!(!err.contains("--instruments (default"), "{err}");
}
