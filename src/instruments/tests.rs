//! Unit tests of the importers against the real responses under `feeds/<venue>/rest/`
//! (origins in each directory's `SOURCE.md`), and of their refusals.

use std::path::{Path, PathBuf};

use rust_decimal_macros::dec;

use super::*;
use crate::model::MarginTier;

fn fixture(rel: &str) -> Input {
    Input::read(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("feeds")
            .join(rel),
    )
    .unwrap()
}

fn text(name: &str, text: &str) -> Input {
    Input {
        path: PathBuf::from(name),
        text: text.to_string(),
    }
}

fn t(floor: &str, cap: &str, mmr: &str, cum: &str) -> MarginTier {
    MarginTier {
        notional_floor: floor.parse().unwrap(),
        notional_cap: cap.parse().unwrap(),
        mmr: mmr.parse().unwrap(),
        cum: cum.parse().unwrap(),
    }
}

fn get<'a>(m: &'a Imported, id: &str) -> &'a Instrument {
    m.instruments
        .iter()
        .find(|i| i.id.as_str() == id)
        .unwrap_or_else(|| panic!("{id} missing"))
}

fn freqtrade() -> Input {
    fixture("binance-usdm/rest/leverage_tiers_freqtrade_2024-10-24.json")
}

/// BTCUSDT, ETHUSDT and SOLUSDT come out of the 2024-10-24 bracket snapshot exactly as the
/// tables of margin-math §2.1 print them (floors, caps, rates, maintenance amounts).
#[test]
fn binance_brackets_match_the_published_tables() {
    let m = import(ImportVenue::BinanceUsdm, &[freqtrade()]).unwrap();
    let btc = get(&m, "BTCUSDT-PERP");
    assert_eq!(btc.kind, InstrumentKind::LinearPerpetual);
    assert_eq!(btc.underlying, "BTC");
    assert_eq!(btc.sources[0].symbol, "BTCUSDT");
    let expect_btc = [
        t("0", "50000", "0.004", "0"),
        t("50000", "600000", "0.005", "50"),
        t("600000", "3000000", "0.0065", "950"),
        t("3000000", "12000000", "0.01", "11450"),
        t("12000000", "70000000", "0.02", "131450"),
        t("70000000", "100000000", "0.025", "481450"),
        t("100000000", "230000000", "0.05", "2981450"),
        t("230000000", "480000000", "0.10", "14481450"),
        t("480000000", "600000000", "0.125", "26481450"),
        t("600000000", "800000000", "0.15", "41481450"),
        t("800000000", "1200000000", "0.25", "121481450"),
        t("1200000000", "1800000000", "0.50", "421481450"),
    ];
    assert_eq!(btc.tiers, expect_btc);
    let eth = get(&m, "ETHUSDT-PERP");
    assert_eq!(eth.tiers.len(), 12);
    assert_eq!(eth.tiers[4], t("12000000", "50000000", "0.02", "131450"));
    assert_eq!(
        eth.tiers[11],
        t("800000000", "1200000000", "0.5", "280506450")
    );
    let sol = get(&m, "SOLUSDT-PERP");
    assert_eq!(sol.tiers[0], t("0", "20000", "0.005", "0"));
    assert_eq!(sol.tiers[2], t("100000", "800000", "0.01", "380"));
    assert_eq!(sol.tiers[9], t("200000000", "400000000", "0.5", "66728380"));
    // No exchangeInfo: no fee is invented, and the note says so.
    assert_eq!(btc.liquidation_fee_rate, Decimal::ZERO);
    assert!(
        btc.source_note
            .as_deref()
            .unwrap()
            .contains("liquidation fee not in the input")
    );
    // Dated futures are read as futures, keyed by their venue symbol.
    assert_eq!(get(&m, "BTCUSDT_250328").kind, InstrumentKind::LinearFuture);
}

/// The imported BTC/ETH/SOL tables equal the hand-typed presets shipped in
/// `feeds/binance-usdm/instruments.toml` (same snapshot), tier for tier.
#[test]
fn binance_import_equals_the_hand_typed_presets() {
    let m = import(ImportVenue::BinanceUsdm, &[freqtrade()]).unwrap();
    let hand = crate::sources::files::load_instruments(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml"),
    )
    .unwrap();
    for id in ["BTCUSDT-PERP", "ETHUSDT-PERP", "SOLUSDT-PERP"] {
        assert_eq!(get(&m, id).tiers, hand[id].tiers, "{id}");
    }
}

/// The raw `GET /fapi/v1/leverageBracket` shape (JSON numbers, the docs' example) is read
/// exactly, and `notionalCoef` is reported rather than silently applied.
#[test]
fn binance_raw_bracket_response_with_json_numbers() {
    let m = import(
        ImportVenue::BinanceUsdm,
        &[fixture(
            "binance-usdm/rest/leverage_bracket_docs_example.json",
        )],
    )
    .unwrap();
    let eth = get(&m, "ETHUSDT-PERP");
    assert_eq!(eth.tiers, vec![t("0", "10000", "0.0065", "0")]);
    assert!(
        eth.source_note
            .as_deref()
            .unwrap()
            .contains("notionalCoef 1.5")
    );
}

/// With `exchangeInfo` the contract type and the published liquidation fee are used, and
/// symbols the exchange info does not list are skipped with the reason.
#[test]
fn binance_exchange_info_supplies_fee_and_contract_type() {
    let info = fixture("binance-usdm/rest/exchange_info_nautilus.json");
    let m = import(ImportVenue::BinanceUsdm, &[freqtrade(), info]).unwrap();
    let ids: Vec<&str> = m.instruments.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["BTCUSDT-PERP", "ETHUSDT-PERP"]);
    assert_eq!(get(&m, "BTCUSDT-PERP").liquidation_fee_rate, dec!(0.012));
    assert_eq!(get(&m, "ETHUSDT-PERP").liquidation_fee_rate, dec!(0.03));
    assert!(
        m.skipped
            .iter()
            .any(|s| s.starts_with("SOLUSDT: not listed"))
    );
}

/// `--top 50` keeps the 50 perpetuals with the largest top-tier caps, BTC and ETH first.
#[test]
fn binance_top_n_ranks_by_top_cap() {
    let mut m = import(ImportVenue::BinanceUsdm, &[freqtrade()]).unwrap();
    assert!(m.instruments.len() > 300, "{}", m.instruments.len());
    m.keep_top_perpetuals(50);
    assert_eq!(m.instruments.len(), 50);
    assert!(
        m.instruments
            .iter()
            .all(|i| i.kind == InstrumentKind::LinearPerpetual)
    );
    for id in ["BTCUSDT-PERP", "ETHUSDT-PERP"] {
        get(&m, id);
    }
}

/// Hyperliquid `meta`: BTC and ETH come out as the docs' margin tiers say (BTC 0–150 M 40×,
/// above 150 M 20×; ETH 0–100 M 25×, above 100 M 15×) with the deductions of margin-math §2.5, and
/// a table id the response does not list is the asset's single tier.
#[test]
fn hyperliquid_meta_matches_the_docs_tiers() {
    let m = import(
        ImportVenue::Hyperliquid,
        &[fixture("hyperliquid/rest/meta_nautilus_sample.json")],
    )
    .unwrap();
    let btc = get(&m, "HL-BTC-PERP");
    assert_eq!(
        btc.tiers,
        vec![
            t("0", "150000000", "0.0125", "0"),
            t("150000000", "1000000000000", "0.025", "1875000"),
        ]
    );
    let hand = crate::sources::files::load_instruments(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml"),
    )
    .unwrap();
    for id in ["HL-BTC-PERP", "HL-ETH-PERP"] {
        assert_eq!(get(&m, id).tiers, hand[id].tiers, "{id}");
        assert_eq!(
            get(&m, id).liquidation_fee_rate,
            hand[id].liquidation_fee_rate
        );
    }
    assert_eq!(
        get(&m, "HL-ATOM-PERP").tiers,
        vec![t("0", "1000000000000", "0.1", "0")]
    );
}

/// Delisted assets are skipped with the reason; `metaAndAssetCtxs` (`[meta, ctxs]`) is read.
#[test]
fn hyperliquid_skips_delisted_and_reads_meta_and_ctxs() {
    let json = r#"[{"universe":[{"szDecimals":1,"name":"MATIC","maxLeverage":20,"marginTableId":20,"isDelisted":true},{"szDecimals":1,"name":"DYDX","maxLeverage":5,"marginTableId":5}],"marginTables":[]},[]]"#;
    let m = import(ImportVenue::Hyperliquid, &[text("m.json", json)]).unwrap();
    assert_eq!(m.skipped, vec!["MATIC: delisted".to_string()]);
    assert_eq!(get(&m, "HL-DYDX-PERP").tiers[0].mmr, dec!(0.1));
}

/// Malformed input is refused with file, line, column and field: not JSON, a bad number
/// (string or JSON number), a missing field, unsorted tiers, an unknown table.
#[test]
fn malformed_input_names_file_line_and_field() {
    let cases: [(ImportVenue, &str, &str); 6] = [
        (ImportVenue::BinanceUsdm, "[{\"symbol\":\"X\",", "b.json:1:"),
        (
            ImportVenue::BinanceUsdm,
            "[{\"symbol\":\"XUSDT\",\"brackets\":[\n {\"notionalFloor\":0,\"notionalCap\":10,\n  \"maintMarginRatio\":\"1..5\",\"cum\":0}]}]",
            "b.json:3:22: [0].brackets[0].maintMarginRatio: \"1..5\"",
        ),
        (
            ImportVenue::BinanceUsdm,
            "[{\"symbol\":\"XUSDT\",\"brackets\":[{\"notionalFloor\":0,\"notionalCap\":1e999,\"maintMarginRatio\":0.1,\"cum\":0}]}]",
            "b.json:1:65: [0].brackets[0].notionalCap: 1e999",
        ),
        (
            ImportVenue::BinanceUsdm,
            "[{\"symbol\":\"XUSDT\",\"brackets\":[\n{\"notionalFloor\":0,\"notionalCap\":10,\"maintMarginRatio\":0.1}]}]",
            "b.json:2:1: [0].brackets[0].cum: missing",
        ),
        (
            ImportVenue::BinanceUsdm,
            "[{\"symbol\":\"XUSDT\",\"brackets\":[{\"notionalFloor\":5,\"notionalCap\":10,\"maintMarginRatio\":0.1,\"cum\":0}]}]",
            "b.json:1:2: [0].tiers[0].notional_floor: the first tier must start at 0",
        ),
        (
            ImportVenue::Hyperliquid,
            "{\"universe\":[{\"name\":\"X\",\"szDecimals\":1,\"maxLeverage\":10,\"marginTableId\":77}],\"marginTables\":[]}",
            "b.json:1:14: universe[0].marginTableId: margin table 77 is not in marginTables",
        ),
    ];
    for (venue, json, want) in cases {
        let e = import(venue, &[text("b.json", json)])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(want), "{json}\n got  {e}\n want {want}…");
    }
}

/// Venues without a reader are refused with the reason, never with an empty file.
#[test]
fn unsupported_venues_say_why() {
    for v in [
        ImportVenue::Bybit,
        ImportVenue::Okx,
        ImportVenue::Deribit,
        ImportVenue::BinanceCoinm,
    ] {
        let e = import(v, &[text("x.json", "{}")]).unwrap_err();
        assert!(matches!(e, ImportError::Unsupported { .. }), "{e}");
    }
}

/// What the writer writes loads back through the preset loader unchanged and without warnings.
#[test]
fn written_presets_round_trip_through_the_loader() {
    let m = import(ImportVenue::BinanceUsdm, &[freqtrade()]).unwrap();
    let h = import(
        ImportVenue::Hyperliquid,
        &[fixture("hyperliquid/rest/meta_nautilus_sample.json")],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, set) in [("b.toml", &m), ("h.toml", &h)] {
        let p = dir.path().join(name);
        std::fs::write(&p, write::presets_toml(&["test".into()], &set.instruments)).unwrap();
        let (back, warnings) = crate::sources::files::load_instruments_with_warnings(&p).unwrap();
        assert_eq!(back.len(), set.instruments.len());
        for i in &set.instruments {
            assert_eq!(&back[i.id.as_str()], i);
        }
        // Every published deduction follows the continuity recursion: no warnings.
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
    }
}

/// The shipped `feeds/presets-<venue>.toml` files are exactly what the importer makes of the
/// fixtures today (regenerate them when the importer or the fixtures change), and they load.
#[test]
fn shipped_generated_presets_are_current_and_load() {
    use crate::cli::instruments::{ImportArgs, run_import};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            ImportVenue::BinanceUsdm,
            Some(50),
            "presets-binance-usdm.toml",
            vec!["binance-usdm/rest/leverage_tiers_freqtrade_2024-10-24.json"],
        ),
        (
            ImportVenue::Hyperliquid,
            None,
            "presets-hyperliquid.toml",
            vec!["hyperliquid/rest/meta_nautilus_sample.json"],
        ),
    ];
    for (venue, top, name, files) in cases {
        let out = dir.path().join(name);
        let args = ImportArgs {
            venue,
            top,
            output: Some(out.clone()),
            files: files.iter().map(|f| root.join("feeds").join(f)).collect(),
        };
        run_import(&args).unwrap();
        let shipped = root.join("feeds").join(name);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            std::fs::read_to_string(&shipped).unwrap(),
            "{name} is stale: regenerate it (docs/instruments.md)"
        );
        let (m, _warnings) =
            crate::sources::files::load_instruments_with_warnings(&shipped).unwrap();
        assert_eq!(m.len(), if top.is_some() { 50 } else { 3 });
    }
}
