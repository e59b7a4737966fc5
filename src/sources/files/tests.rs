//! Unit tests of the input files: every error names the file, line and field.

use super::*;
use rust_decimal_macros::dec;

fn presets() -> HashMap<InstrumentId, Instrument> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    let (m, w) = load_instruments_with_warnings(&p).unwrap();
    assert!(w.is_empty(), "shipped presets have no warnings: {w:?}");
    m
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The shipped presets load, include the per-venue files, and every tier table follows
/// the cum recursion (no warnings).
#[test]
fn shipped_presets_load() {
    let m = presets();
    for id in [
        "BTCUSDT-PERP",
        "ETHUSDT-PERP",
        "SOLUSDT-PERP",
        "BYBIT-BTCUSDT-PERP",
        "BTCUSD-INV-PERP",
        "HL-BTC-PERP",
        "HL-ETH-PERP",
        "USDT",
        "USDC",
        "BTC",
        "ETH",
        "SOL",
        "BYBIT-BTC",
    ] {
        let i = m.get(id).unwrap_or_else(|| panic!("{id} missing"));
        assert!(i.source_note.is_some(), "{id} cites its source");
    }
    assert_eq!(m["BTCUSDT-PERP"].tiers.len(), 12);
    assert_eq!(m["SOLUSDT-PERP"].tiers[9].cum, dec!(66728380));
    assert!(m["BTCUSD-INV-PERP"].kind.is_inverse());
}

/// A float where a decimal string is required is rejected with file, line, column and
/// the field path.
#[test]
fn toml_float_names_file_line_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "bad.toml",
        "[[instrument]]\nid = \"X\"\nkind = \"linear_perpetual\"\nunderlying = \"X\"\ntiers = [\n  { notional_floor = \"0\", notional_cap = \"10\", mmr = 0.01, cum = \"0\" },\n]\n",
    );
    let e = load_instruments(&p).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{}:6:", p.display())), "{msg}");
    assert!(msg.contains("instrument[0].tiers[0].mmr"), "{msg}");
}

/// Unsorted tiers, a first floor above 0 and duplicate ids are errors; an inconsistent
/// cum is a warning naming the tier.
#[test]
fn tier_validation() {
    let dir = tempfile::tempdir().unwrap();
    let tiers = |rows: &str| {
        format!(
            "[[instrument]]\nid = \"X\"\nkind = \"linear_perpetual\"\nunderlying = \"X\"\ntiers = [{rows}]\n"
        )
    };
    let t = |f: &str, c: &str, m: &str, cum: &str| {
        format!(
            "{{ notional_floor = \"{f}\", notional_cap = \"{c}\", mmr = \"{m}\", cum = \"{cum}\" }},"
        )
    };
    let unsorted = tiers(
        &(t("0", "10", "0.01", "0") + &t("5", "20", "0.02", "0.05") + &t("4", "30", "0.03", "0")),
    );
    let e = load_instruments(&write(&dir, "a.toml", &unsorted)).unwrap_err();
    assert!(
        e.to_string()
            .contains("instrument[0].tiers[2].notional_floor"),
        "{e}"
    );
    let floor = tiers(&t("1", "10", "0.01", "0"));
    let e = load_instruments(&write(&dir, "b.toml", &floor)).unwrap_err();
    assert!(e.to_string().contains("must start at 0"), "{e}");
    let bad_cum = tiers(&(t("0", "10", "0.01", "0") + &t("10", "20", "0.02", "0.2")));
    let (_, w) = load_instruments_with_warnings(&write(&dir, "c.toml", &bad_cum)).unwrap();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].field, "instrument[0].tiers[1].cum");
    assert!(w[0].message.contains("= 0.1"), "{}", w[0].message);
    let dup = format!(
        "{}\n{}",
        tiers(&t("0", "10", "0.01", "0")),
        tiers(&t("0", "10", "0.01", "0"))
    );
    let e = load_instruments(&write(&dir, "d.toml", &dup)).unwrap_err();
    assert!(
        e.to_string()
            .contains(":7: field `instrument[1].id`: duplicate"),
        "{e}"
    );
}

/// Accounts: JSON and JSONL parse; errors give the line of the offending account and the
/// field path; unknown instruments and duplicate ids are rejected.
#[test]
fn accounts_errors_name_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let m = presets();
    let good = "{\"accounts\": [\n  {\"id\": \"a\", \"collateral\": {\"USDT\": \"100\"}},\n  {\"id\": \"b\", \"positions\": [{\"instrument\": \"BTCUSDT-PERP\", \"quantity\": \"1\", \"entry_price\": \"60000\"}]}\n]}\n";
    let v = load_accounts_checked(&write(&dir, "ok.json", good), &m).unwrap();
    assert_eq!(v.len(), 2);
    let float = good.replace("\"quantity\": \"1\"", "\"quantity\": 1.5");
    let p = write(&dir, "f.json", &float);
    let e = load_accounts(&p).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:3:", p.display())), "{e}");
    assert!(e.contains("accounts[1].positions[0].quantity"), "{e}");
    let unknown = good.replace("BTCUSDT-PERP", "BTCUSDT-PREP");
    let p = write(&dir, "u.json", &unknown);
    let e = load_accounts_checked(&p, &m).unwrap_err().to_string();
    assert!(
        e.contains(":3: field `accounts[1].positions[0].instrument`: unknown instrument"),
        "{e}"
    );
    let dup = good.replace("\"id\": \"b\"", "\"id\": \"a\"");
    let e = load_accounts(&write(&dir, "d.json", &dup))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":3: field `accounts[1].id`: duplicate account id"),
        "{e}"
    );
    let jsonl = "# one per line\n{\"id\": \"a\"}\n\n{\"id\": \"b\", \"colateral\": {}}\n";
    let p = write(&dir, "x.jsonl", jsonl);
    let e = load_accounts(&p).unwrap_err().to_string();
    assert!(e.starts_with(&format!("{}:4:", p.display())), "{e}");
    assert!(e.contains("unknown field `colateral`"), "{e}");
    let short_long = "{\"accounts\":[{\"id\":\"h\",\"positions\":[{\"instrument\":\"BTCUSDT-PERP\",\"side\":\"long\",\"quantity\":\"-1\",\"entry_price\":\"1\"}]}]}";
    let e = load_accounts(&write(&dir, "h.json", short_long))
        .unwrap_err()
        .to_string();
    assert!(e.contains("positions[0].quantity"), "{e}");
}

/// Prices by underlying apply to perp and collateral; an instrument id overrides; unknown
/// keys and negative prices are errors with their line.
#[test]
fn prices_file() {
    let m = presets();
    let p = Path::new("p.toml");
    let ok = parse_prices(
        p,
        "[prices]\nBTC = \"60000\"\n\"HL-BTC-PERP\" = \"60010\"\n",
        &m,
    )
    .unwrap();
    assert_eq!(ok[&InstrumentId::from("BTCUSDT-PERP")], dec!(60000));
    assert_eq!(ok[&InstrumentId::from("BTC")], dec!(60000));
    assert_eq!(ok[&InstrumentId::from("HL-BTC-PERP")], dec!(60010));
    assert!(!ok.contains_key("USDT"));
    let e = parse_prices(p, "[prices]\nBTC = \"1\"\nDOGE = \"0.1\"\n", &m).unwrap_err();
    assert!(
        e.to_string().starts_with("p.toml:3: field `prices.DOGE`"),
        "{e}"
    );
    let e = parse_prices(p, "[prices]\nBTC = \"-1\"\n", &m).unwrap_err();
    assert!(e.to_string().contains("must not be negative"), "{e}");
    let e = parse_prices(p, "[prices]\nBTC = 60000.5\n", &m).unwrap_err();
    assert!(e.to_string().starts_with("p.toml:2:"), "{e}");
}

/// Issue 12 item 3: a price with more digits than a decimal holds is refused, not rounded
/// (to 0 here); a price for a stablecoin is refused, not silently ignored.
#[test]
fn prices_file_refuses_rounding_and_stablecoins() {
    let m = presets();
    let p = Path::new("p.toml");
    let e = parse_prices(
        p,
        "[prices]\nBTC = \"0.00000000000000000000000000001\"\n",
        &m,
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with("p.toml:2: field `prices.BTC`")
            && e.to_string().contains("rounded"),
        "{e}"
    );
    let e = parse_prices(p, "[prices]\nBTC = \"60000\"\nUSDT = \"2\"\n", &m).unwrap_err();
    assert!(
        e.to_string().starts_with("p.toml:3: field `prices.USDT`")
            && e.to_string().contains("stablecoin"),
        "{e}"
    );
}

/// Scenario syntax: per underlying, `all`, overrides, and clear errors.
#[test]
fn scenarios() {
    let s = parse_scenario("BTC=-20%,ETH=-25%", None).unwrap();
    assert_eq!(s.move_of("BTC"), dec!(-0.2));
    assert_eq!(s.move_of("ETH"), dec!(-0.25));
    assert_eq!(s.move_of("SOL"), Decimal::ZERO);
    let s = parse_scenario(" all=-10% , SOL=+5% ", None).unwrap();
    assert_eq!(s.move_of("BTC"), dec!(-0.1));
    assert_eq!(s.move_of("SOL"), dec!(0.05));
    assert_eq!(parse_scenario("none", None).unwrap(), Scenario::none());
    for bad in [
        "",
        "BTC",
        "BTC=-20",
        "BTC=x%",
        "all=-100%",
        "BTC=1%,BTC=2%",
        "=5%",
    ] {
        assert!(parse_scenario(bad, None).is_err(), "{bad:?}");
    }
    let known: HashSet<String> = ["BTC".to_string()].into_iter().collect();
    let e = parse_scenario("BTX=-1%", Some(&known)).unwrap_err();
    assert!(e.to_string().contains("unknown underlying \"BTX\""), "{e}");
}
