//! `liqwatch instruments import` through the real binary: exit codes, the written presets load,
//! malformed files are named with line and field (issue 15).

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_liqwatch"))
}

fn feeds(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("feeds")
        .join(rel)
}

/// Importing the Hyperliquid fixture exits 0, writes a presets file that `liqwatch stress`
/// accepts as `--instruments`, and reports what it wrote on stderr.
#[test]
fn import_writes_presets_that_load() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("hl.toml");
    let out = bin()
        .args(["instruments", "import", "--venue", "hyperliquid", "-o"])
        .arg(&out_file)
        .arg(feeds("hyperliquid/rest/meta_nautilus_sample.json"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("hyperliquid: 3 instruments written"));
    let (m, w) = liqwatch::sources::files::load_instruments_with_warnings(&out_file).unwrap();
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(m["HL-BTC-PERP"].tiers.len(), 2);
}

/// A malformed file exits 2 naming file, line and field, and writes nothing; an unsupported
/// venue exits 2 with its reason.
#[test]
fn malformed_or_unsupported_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "[{\"symbol\":\"XUSDT\",\"brackets\":[\n{\"notionalFloor\":0,\"notionalCap\":\"ten\",\"maintMarginRatio\":0.1,\"cum\":0}]}]",
    )
    .unwrap();
    let out_file = dir.path().join("out.toml");
    let out = bin()
        .args(["instruments", "import", "--venue", "binance-usdm", "-o"])
        .arg(&out_file)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:34: [0].brackets[0].notionalCap",
            bad.display()
        )),
        "{err}"
    );
    assert!(!out_file.exists());
    let out = bin()
        .args(["instruments", "import", "--venue", "okx"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--venue okx:"));
}
