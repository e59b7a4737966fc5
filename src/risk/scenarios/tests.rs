//! Unit tests of the history readers, the symbol mapping and the windows.
use super::*;
use rust_decimal_macros::dec;

fn p() -> PathBuf {
    PathBuf::from("h.csv")
}

/// CSV lines, a header and comments are read; prices stay exact.
#[test]
fn csv_reads_exact_prices() {
    let mut h = History::new();
    h.add_csv(
        &p(),
        "# c\nts,symbol,price\n0,BTC,100.10\n2021-05-19T00:00:00Z,BTC,99\n",
    )
    .unwrap();
    let s = &h.series["BTC"];
    assert_eq!(s.points[&0], dec!(100.10));
    assert_eq!(s.points[&1621382400000], dec!(99));
}

/// Bad CSV lines name the file and line and say what is wrong.
#[test]
fn csv_errors_name_file_and_line() {
    let cases = [
        ("0,BTC,1\n1,BTC\n", "h.csv:2: expected 3 fields"),
        ("0,BTC,abc\n", "h.csv:1: price \"abc\" is not a decimal"),
        ("0,BTC,0\n", "h.csv:1: price must be positive"),
        ("0,BTC,-1\n", "h.csv:1: price must be positive"),
        ("yesterday,BTC,1\n", "h.csv:1: timestamp \"yesterday\""),
        (
            "0,BTC,1\n0,BTC,2\n",
            "h.csv:2: BTC at 0 is 2 here but 1 earlier",
        ),
        ("0,,1\n", "h.csv:1: symbol \"\""),
    ];
    for (text, want) in cases {
        let e = History::new().add_csv(&p(), text).unwrap_err().to_string();
        assert!(e.starts_with(want), "{text:?}: {e}");
    }
}

/// Candle files: the open at the open time; bad candles are named by index.
#[test]
fn candles_and_their_errors() {
    let mut h = History::new();
    h.add_candles(
        Path::new("BTC_USDT-5m.json"),
        "[[1000,42849.78,1,1,1,5.5],[301000,30000.0,1,1,1,1]]",
        "BTC_USDT",
    )
    .unwrap();
    assert_eq!(h.series["BTC_USDT"].points[&301000], dec!(30000.0));
    let e = History::new()
        .add_candles(Path::new("x.json"), "[[1,2],[0,3]]", "X")
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.json: candle 2: open time 0"), "{e}");
    let e = History::new()
        .add_candles(Path::new("x.json"), "[[1,2],\n[2,", "X")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("x.json:2: not a freqtrade candle file"),
        "{e}"
    );
}

/// Symbols map by themselves after separators and a quote are removed; a missing or
/// ambiguous underlying is refused, an explicit map wins.
#[test]
fn mapping_rules() {
    assert_eq!(auto_underlying("BTC_USDT"), "BTC");
    assert_eq!(auto_underlying("ethusdt"), "ETH");
    assert_eq!(auto_underlying("SOL"), "SOL");
    let mut h = History::new();
    h.add_csv(&p(), "0,BTC_USDT,1\n0,BTCUSDT,1\n0,ETH,1\n")
        .unwrap();
    let need: BTreeSet<String> = ["BTC".to_string(), "ETH".to_string()].into();
    let e = resolve(&h, &need, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("several history series"), "{e}");
    let explicit = [("BTCUSDT".to_string(), "BTC".to_string())].into();
    let m = resolve(&h, &need, &explicit).unwrap();
    assert_eq!(m["BTC"], "BTCUSDT");
    assert_eq!(m["ETH"], "ETH");
    let need: BTreeSet<String> = ["SOL".to_string()].into();
    let e = resolve(&h, &need, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("no price history for SOL"), "{e}");
}

proptest::proptest! {
    /// Any text fed to the three readers is read or refused with the file's name; none
    /// panics.
    #[test]
    fn readers_never_panic(text in "[0-9a-zA-Z,.:\\-\"\\[\\]{}#\n ]{0,200}") {
        for r in [
            History::new().add_csv(Path::new("f.csv"), &text),
            History::new().add_candles(Path::new("f.json"), &text, "X"),
            History::new().add_replay(Path::new("f.jsonl"), &text),
        ] {
            if let Err(e) = r {
                proptest::prop_assert!(e.to_string().starts_with("f."), "{}", e);
            }
        }
    }
}

/// A replay recording is history too: the shipped demo crash gives BTCUSDT, ETHUSDT and
/// SOLUSDT per second, which map to BTC, ETH and SOL and make 1-hour windows; a broken line
/// is named.
#[test]
fn replay_recording_as_history() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/replay/crash-2021-05-19.jsonl");
    let mut h = History::new();
    h.load(&path).unwrap();
    assert_eq!(h.symbols(), ["BTCUSDT", "ETHUSDT", "SOLUSDT"]);
    assert_eq!(h.series["BTCUSDT"].points[&1621382400000], dec!(42849.78));
    let need: BTreeSet<String> = ["BTC", "ETH", "SOL"].map(String::from).into();
    let chosen = resolve(&h, &need, &BTreeMap::new()).unwrap();
    let set = build("r", &h, &chosen, 3_600_000).unwrap();
    assert!(set.len() > 100, "{}", set.len());
    assert_eq!(set.underlyings, ["BTC", "ETH", "SOL"]);
    let e = History::new()
        .add_replay(
            Path::new("r.jsonl"),
            "# c\n{\"venue\":\"nowhere\",\"received_ms\":1,\"frame\":\"{}\"}\n",
        )
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("r.jsonl:2: "), "{e}");
}

/// Overlapping windows need both ends in every series; multipliers are rounded half-up.
#[test]
fn windows_skip_gaps_and_round_half_up() {
    let mut h = History::new();
    h.add_csv(&p(), "0,A,3\n1,A,2\n2,A,1\n3,A,3\n0,B,1\n1,B,1\n3,B,2\n")
        .unwrap();
    let chosen = [
        ("A".to_string(), "A".to_string()),
        ("B".to_string(), "B".to_string()),
    ]
    .into();
    let set = build("t", &h, &chosen, 1).unwrap();
    // t=0 (0→1) only: t=1 needs B at 2, t=2 needs B at 2.
    assert_eq!(set.len(), 1);
    // 2/3 = 0.666666666… → 0.66666667
    assert_eq!(set.row(0), &[66_666_667, 100_000_000]);
    assert_eq!(set.return_of(0, 0), dec!(-0.33333333));
    assert_eq!(multiplier(dec!(8), dec!(1)), Some(12_500_000));
    assert_eq!(parse_horizon("4h").unwrap(), 14_400_000);
    assert!(parse_horizon("0s").is_err());
}
