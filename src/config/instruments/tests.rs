//! `[[instruments.sources]]`: defaults, paths resolved, every problem named at its key.

use std::path::Path;
use std::time::Duration;

use crate::config::{Problem, parse};
use crate::instruments::ImportVenue;

const BASE: &str = r#"
[engine]
instruments = ["presets.toml"]

[[feeds]]
venue = "binance-usdm"

[journal]
path = "j.db"
"#;

fn run(extra: &str) -> Result<crate::config::Config, Vec<Problem>> {
    parse(
        &format!("{BASE}{extra}"),
        Path::new("/etc/liqwatch/l.toml"),
        &|_| None,
    )
    .map_err(|e| e.problems().to_vec())
}

/// Defaults: no refresh without urls, 1 h / 10 s / 3 h; files resolved against the config's
/// directory; a POST body goes with every URL.
#[test]
fn sources_parse_with_defaults() {
    let cfg = run(r#"
[[instruments.sources]]
venue = "binance-usdm"
files = ["rest/brackets.json"]

[[instruments.sources]]
venue = "hyperliquid"
files = ["/data/meta.json"]
urls = ["https://api.hyperliquid.xyz/info"]
post_body = '{"type":"meta"}'
instruments = ["HL-BTC-PERP"]
every = "15m"
timeout = "5s"
"#)
    .unwrap();
    let [b, h] = cfg.instruments.as_slice() else {
        panic!("{:?}", cfg.instruments)
    };
    assert_eq!(b.venue, ImportVenue::BinanceUsdm);
    assert_eq!(
        b.files,
        vec![Path::new("/etc/liqwatch/rest/brackets.json").to_path_buf()]
    );
    assert!(b.urls.is_empty());
    assert_eq!(
        (b.every, b.timeout, b.max_age),
        (
            Duration::from_secs(3600),
            Duration::from_secs(10),
            Duration::from_secs(3 * 3600)
        )
    );
    assert_eq!(h.venue, ImportVenue::Hyperliquid);
    assert_eq!(h.urls.len(), 1);
    assert_eq!(h.urls[0].post_json.as_deref(), Some(r#"{"type":"meta"}"#));
    assert_eq!(h.only, vec!["HL-BTC-PERP".into()]);
    assert_eq!(h.max_age, Duration::from_secs(45 * 60));
}

/// Every problem at once, each at its own key: an unknown venue, no files, a URL that is not
/// http(s), a body that is not JSON, an interval below 100 ms, a max_age below it; an unknown
/// key is refused.
#[test]
fn source_problems_are_named() {
    let p = run(r#"
[[instruments.sources]]
venue = "kraken"
urls = ["ftp://x"]
post_body = "{nope"
every = "10ms"
max_age = "5ms"
"#)
    .unwrap_err();
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    for k in [
        "instruments.sources[0].venue",
        "instruments.sources[0].files",
        "instruments.sources[0].urls[0]",
        "instruments.sources[0].post_body",
        "instruments.sources[0].every",
        "instruments.sources[0].max_age",
    ] {
        assert!(keys.contains(&k), "{k} not in {p:#?}");
    }
    let venue = p
        .iter()
        .find(|p| p.key == "instruments.sources[0].venue")
        .unwrap();
    assert!(venue.message.contains("binance-usdm"), "{}", venue.message);
    let okx = run("[[instruments.sources]]\nvenue = \"okx\"\nfiles = [\"a\"]\n").unwrap_err();
    assert!(
        okx.iter().any(|p| p.message.contains("no importer")),
        "{okx:#?}"
    );
    let unknown =
        run("[[instruments.sources]]\nvenue = \"binance-usdm\"\nfiles = [\"a\"]\nurl = \"x\"\n")
            .unwrap_err();
    assert!(
        unknown.iter().any(|p| p.message.contains("unknown field")),
        "{unknown:#?}"
    );
}
