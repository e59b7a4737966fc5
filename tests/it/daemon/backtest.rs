//! `liqwatch backtest` as a real binary on the shipped 2021-05-19 recording and demo accounts:
//! the report's figures, byte-identical reruns, eager = indexed, well-formed SVG charts and an
//! index page that links them, and exit code 2 on bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn backtest(args: &[&str], out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_liqwatch"))
        .current_dir(repo())
        .arg("backtest")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run liqwatch")
}

const DEMO: [&str; 6] = [
    "--replay",
    "feeds/replay/crash-2021-05-19.jsonl",
    "--accounts",
    "feeds/demo/accounts.json",
    "--config",
    "feeds/demo/liqwatch.toml",
];

fn ok(args: &[&str], out: &Path) -> Output {
    let o = backtest(args, out);
    assert!(
        o.status.success(),
        "exit {:?}, stderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Every file under `dir`, by relative path.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

fn report(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json"))
        .expect("report.json parses")
}

fn account<'a>(r: &'a Value, id: &str) -> &'a Value {
    r["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .find(|a| a["account"] == id)
        .unwrap_or_else(|| panic!("no account {id}"))
}

/// The 2021-05-19 crash against the demo accounts (levels 0.3 / 0.6 / 1.0, hysteresis 0.2):
/// every one of the 2,304 frames is a step (no coalescing); desk-alpha warns at 10:47:30.1,
/// triggers at 11:17:30.1 (lead time 30 minutes) with negative equity, so the liquidation's
/// penalty is all shortfall plus the deficit; fund-beta warns and recovers near the lows
/// without a trigger; mm-gamma stays quiet. The table is printed and written.
#[test]
fn crash_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&DEMO, dir.path());
    let r = report(dir.path());
    assert_eq!(r["counts"]["frames"], 2304);
    assert_eq!(r["counts"]["steps"], 2304);
    assert_eq!(r["counts"]["bad_lines"], 0);

    let a = account(&r, "desk-alpha");
    assert_eq!(a["first_warning"]["time"], "2021-05-19T10:47:30.100Z");
    assert_eq!(a["first_trigger"]["time"], "2021-05-19T11:17:30.100Z");
    assert_eq!(a["lead_time_ms"], 1_800_000);
    assert_eq!(a["lead_time"], "30m 00s");
    assert_eq!(a["worst_ratio"]["margin_ratio"], "inf");
    let cost = &a["liquidation_cost"];
    let d = |v: &Value| -> rust_decimal::Decimal { v.as_str().unwrap().parse().unwrap() };
    assert!(d(&cost["equity"]) < rust_decimal::Decimal::ZERO);
    assert_eq!(d(&cost["surplus"]), rust_decimal::Decimal::ZERO);
    assert_eq!(
        d(&cost["shortfall"]),
        d(&cost["penalty"]) - d(&cost["equity"])
    );
    assert_eq!(cost["venue"], "binance-usdm");
    let kinds: Vec<&str> = a["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.last(), Some(&"liquidation_trigger"), "{kinds:?}");

    let b = account(&r, "fund-beta");
    assert_eq!(b["first_trigger"], Value::Null);
    assert_eq!(b["lead_time_ms"], Value::Null);
    assert!(b["first_warning"]["time"].is_string());
    let g = account(&r, "mm-gamma");
    assert_eq!(g["events"].as_array().unwrap().len(), 0);
    // Quiet because it was valued and stayed far from its levels, not because it was never
    // valued.
    assert_eq!(r["never_valued"], serde_json::json!([]));

    // events.jsonl holds every account event, numbered in order.
    let lines = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let total: usize = r["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["events"].as_array().unwrap().len())
        .sum();
    assert_eq!(lines.lines().count(), total);
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["event_id"], "00000000-0000-0000-0000-000000000001");

    let stdout = String::from_utf8(out.stdout).unwrap();
    let table = std::fs::read_to_string(dir.path().join("report.txt")).unwrap();
    assert!(stdout.starts_with(&table), "{stdout}");
    assert!(
        table.contains("desk-alpha  2021-05-19 10:47:30  2021-05-19 11:17:30  30m 00s"),
        "{table}"
    );
    assert!(
        table.contains(
            "desk-alpha  2021-05-19 11:17:30.100  liquidation_trigger    1.0      inf  -23,794.95"
        ),
        "{table}"
    );
    // Each warning and trigger carries its margin call: the deposit in whole cents that brings
    // the ratio under the recovery ratio (0.3 − 0.2), where one cent less would not.
    for e in a["events"].as_array().unwrap() {
        let call = &e["margin_call"];
        assert_eq!(call["below_ratio"], "0.1", "{e}");
        let (mm, equity, deposit) = (
            d(&e["maintenance_margin"]),
            d(&e["equity"]),
            d(&call["deposit"]),
        );
        let ratio = |gain: rust_decimal::Decimal| mm / (equity + gain);
        assert!(ratio(deposit) < rust_decimal_macros::dec!(0.1), "{e}");
        assert!(
            ratio(deposit - rust_decimal_macros::dec!(0.01)) >= rust_decimal_macros::dec!(0.1),
            "{e}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.contains(&e["time"].as_str().unwrap()[11..19])
                    && l.ends_with(&cli_money(deposit))),
            "{table}"
        );
    }
    // A recovery carries none.
    let recovered = &b["events"].as_array().unwrap()[1];
    assert_eq!(recovered["kind"], "recovered");
    assert!(recovered.get("margin_call").is_none(), "{recovered}");
}

/// `1234567.8` as the report prints money: `1,234,567.80`.
fn cli_money(v: rust_decimal::Decimal) -> String {
    let s = format!("{:.2}", v.abs());
    let (int, frac) = s.split_once('.').unwrap();
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!(
        "{}{grouped}.{frac}",
        if v.is_sign_negative() { "-" } else { "" }
    )
}

/// The sample accounts over the Binance-only crash recording: the three that hold other venues'
/// instruments are never valued. Their rows would read like quiet accounts ("-", 0 events), so
/// the report names them with the instrument that had no price — in `report.json`, the printed
/// table and `index.html`.
#[test]
fn accounts_the_recording_never_prices_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(
        &[
            "--replay",
            "feeds/replay/crash-2021-05-19.jsonl",
            "--accounts",
            "feeds/sample/accounts.json",
        ],
        dir.path(),
    );
    let r = report(dir.path());
    assert_eq!(
        r["never_valued"],
        serde_json::json!([
            {"account": "coinm-inverse-long", "reason": "no price for BTCUSD-INV-PERP"},
            {"account": "hyperliquid-vault", "reason": "no price for HL-BTC-PERP"},
            {"account": "bybit-uta", "reason": "no price for BYBIT-BTC"},
        ])
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains(
            "never valued (no event could fire): hyperliquid-vault: no price for HL-BTC-PERP"
        ),
        "{stdout}"
    );
    let html = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
    assert!(
        html.contains(
            "<code>bybit-uta</code> never valued (no event could fire): no price for BYBIT-BTC"
        ),
        "{html}"
    );
    // w3-cross-desk jumps from healthy straight to its trigger at 11:17:30 and first warns
    // later, at 11:38:45: the table shows no warning beside that trigger (lead time 0), not
    // the later one; the JSON keeps both.
    let w3 = account(&r, "w3-cross-desk");
    assert_eq!(w3["first_trigger"]["time"], "2021-05-19T11:17:30.100Z");
    assert_eq!(w3["first_warning"]["time"], "2021-05-19T11:38:45.200Z");
    assert_eq!(w3["episode_warning"], Value::Null);
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("w3-cross-desk "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        row[..4],
        ["w3-cross-desk", "-", "2021-05-19 11:17:30", "0s"],
        "{stdout}"
    );
}

/// Two runs of the same inputs write the same files, byte for byte; the eager engine (no
/// distance index) reports exactly what the indexed one does.
#[test]
fn reruns_are_byte_identical_and_eager_equals_indexed() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    ok(&DEMO, one.path());
    ok(&DEMO, two.path());
    let (a, b) = (files(one.path()), files(two.path()));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(a.len() >= 7, "{:?}", a.keys());
    for (name, bytes) in &a {
        assert!(b[name] == *bytes, "{name} differs between two runs");
    }

    // The demo config with the index off (its preset path made absolute).
    let cfg_dir = tempfile::tempdir().unwrap();
    let eager_cfg = cfg_dir.path().join("eager.toml");
    let presets = repo().join("feeds/presets.toml");
    let text = std::fs::read_to_string(repo().join("feeds/demo/liqwatch.toml")).unwrap();
    let text = text
        .replace("[engine]\n", "[engine]\ndistance_index = false\n")
        .replace(
            "\"../presets.toml\"",
            &format!("{:?}", presets.display().to_string()),
        );
    assert!(text.contains("distance_index = false") && text.contains(&*presets.to_string_lossy()));
    std::fs::write(&eager_cfg, text).unwrap();
    let eager = tempfile::tempdir().unwrap();
    let mut args = DEMO;
    let eager_arg = eager_cfg.display().to_string();
    args[5] = &eager_arg;
    ok(&args, eager.path());
    let (x, y) = (report(one.path()), report(eager.path()));
    assert_eq!(x["accounts"], y["accounts"]);
    assert_eq!(x["counts"], y["counts"]);
    assert_eq!(
        std::fs::read(one.path().join("events.jsonl")).unwrap(),
        std::fs::read(eager.path().join("events.jsonl")).unwrap()
    );
}

/// A minimal XML well-formedness check: balanced, properly nested tags; quoted attributes;
/// entities only `&name;` / `&#n;`; one root. Returns the element names in document order.
fn well_formed(xml: &str) -> Result<Vec<String>, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut roots = 0;
    let mut rest = xml;
    let check_text = |t: &str| -> Result<(), String> {
        let mut it = t.split('&').skip(1);
        for part in it.by_ref() {
            let end = part.find(';').ok_or_else(|| format!("bare & in {t:?}"))?;
            let ent = &part[..end];
            let ok = matches!(ent, "amp" | "lt" | "gt" | "quot" | "apos")
                || (ent.starts_with('#') && ent[1..].chars().all(|c| c.is_ascii_digit()));
            if !ok {
                return Err(format!("bad entity &{ent};"));
            }
        }
        if t.contains('>') && !t.trim().is_empty() {
            // '>' in text is legal XML, but we never write it: flag it as unescaped.
            return Err(format!("unescaped > in {t:?}"));
        }
        Ok(())
    };
    while let Some(i) = rest.find('<') {
        check_text(&rest[..i])?;
        rest = &rest[i..];
        if rest.starts_with("<?") {
            let e = rest.find("?>").ok_or("unterminated <?")?;
            rest = &rest[e + 2..];
            continue;
        }
        if rest.starts_with("<!--") {
            let e = rest.find("-->").ok_or("unterminated comment")?;
            rest = &rest[e + 3..];
            continue;
        }
        let e = rest.find('>').ok_or("unterminated tag")?;
        let tag = &rest[1..e];
        rest = &rest[e + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack
                .pop()
                .ok_or(format!("</{name}> without an open tag"))?;
            if open != name.trim() {
                return Err(format!("</{name}> closes <{open}>"));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':')
        {
            return Err(format!("bad element name in <{tag}>"));
        }
        // Attributes: name="value" pairs.
        let mut attrs = body[name.len()..].trim();
        while !attrs.is_empty() {
            let eq = attrs
                .find('=')
                .ok_or(format!("attribute without value in <{tag}>"))?;
            let after = &attrs[eq + 1..];
            if !after.starts_with('"') {
                return Err(format!("unquoted attribute in <{tag}>"));
            }
            let close = after[1..]
                .find('"')
                .ok_or(format!("unterminated attribute in <{tag}>"))?;
            check_text(&after[1..1 + close])?;
            if after[1..1 + close].contains('<') {
                return Err(format!("< in an attribute of <{tag}>"));
            }
            attrs = after[close + 2..].trim_start();
        }
        if stack.is_empty() {
            roots += 1;
        }
        names.push(name.clone());
        if !self_closing {
            stack.push(name);
        }
    }
    check_text(rest)?;
    if !stack.is_empty() {
        return Err(format!("unclosed {stack:?}"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(names)
}

/// The checker itself rejects what it must.
#[test]
fn xml_checker_catches_bad_documents() {
    assert!(well_formed("<svg><g></g><path d=\"M1,2\"/></svg>").is_ok());
    for bad in [
        "<svg><g></svg>",
        "<svg>a & b</svg>",
        "<svg x=1/>",
        "<svg></svg><svg></svg>",
        "<svg><text>a<b</text></svg>",
        "<svg><text>&nbsp;</text></svg>",
    ] {
        assert!(well_formed(bad).is_err(), "{bad}");
    }
}

/// Each account's chart is well-formed SVG with the equity and MM paths, one dashed path per
/// level, and one marker per event; index.html links every chart, and each link exists.
#[test]
fn charts_are_well_formed_and_linked() {
    let dir = tempfile::tempdir().unwrap();
    ok(&DEMO, dir.path());
    let r = report(dir.path());
    let index = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
    for a in r["accounts"].as_array().unwrap() {
        let chart = a["chart"].as_str().unwrap();
        assert!(index.contains(&format!("href=\"{chart}\"")), "{chart}");
        let svg = std::fs::read_to_string(dir.path().join(chart)).unwrap();
        let names = well_formed(&svg).unwrap_or_else(|e| panic!("{chart}: {e}"));
        assert_eq!(names.first().map(String::as_str), Some("svg"), "{chart}");
        let levels = a["levels"]["warning_levels"].as_array().unwrap().len() + 1;
        let paths = names.iter().filter(|n| *n == "path").count();
        assert_eq!(
            paths,
            levels + 2,
            "{chart}: equity, MM and one path per level"
        );
        let events = a["events"].as_array().unwrap().len();
        let circles = names.iter().filter(|n| *n == "circle").count();
        assert_eq!(circles, events, "{chart}: one marker per event");
        assert!(svg.contains(a["account"].as_str().unwrap()));
        // Every point of the series is drawn: the equity path has one vertex per point.
        let eq = svg
            .lines()
            .find(|l| l.contains("<title>equity</title>"))
            .unwrap();
        let vertices = eq.matches(" L").count() + 1;
        assert_eq!(vertices as u64, a["points"].as_u64().unwrap(), "{chart}");
        // The legend's entries do not run into each other or off the chart: each text (12 px
        // sans-serif, about 7 px a character) ends before the next entry's swatch starts.
        let attr = |l: &str, name: &str| -> f64 {
            let at = l.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            l[at..l[at..].find('"').unwrap() + at].parse().unwrap()
        };
        let width = attr(
            svg.lines().find(|l| l.starts_with("<svg")).unwrap(),
            "width",
        );
        let entries: Vec<(f64, f64, usize)> = svg
            .lines()
            .filter(|l| l.starts_with("<line") && l.contains("<text"))
            .map(|l| {
                let text = &l[l.find("<text").unwrap()..];
                let chars = text[text.find('>').unwrap() + 1..text.find("</text>").unwrap()]
                    .chars()
                    .count();
                (attr(l, "x1"), attr(text, "x"), chars)
            })
            .collect();
        assert_eq!(entries.len(), 5, "{chart}: five legend entries");
        for (i, (_, text_x, chars)) in entries.iter().enumerate() {
            let end = text_x + 7.0 * *chars as f64;
            let next = entries.get(i + 1).map_or(width, |e| e.0);
            assert!(
                end < next,
                "{chart}: legend entry {i} ends at {end}, next at {next}"
            );
        }
    }
}

/// A missing replay file or accounts file is exit 2 with the file named; nothing is written.
#[test]
fn bad_input_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = backtest(
        &[
            "--replay",
            "feeds/replay/nope.jsonl",
            "--accounts",
            "feeds/demo/accounts.json",
        ],
        &out,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.jsonl"));
    assert!(!out.exists());
    let o = backtest(
        &[
            "--replay",
            "feeds/replay/crash-2021-05-19.jsonl",
            "--accounts",
            "feeds/demo/missing.json",
        ],
        &out,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.json"));
}

/// Without `--config` (default levels: warning 0.8, trigger 1.0, presets from
/// `feeds/presets.toml`) desk-alpha goes from 65.90 % straight past the trigger in one
/// 5-minute candle: no warning at all, lead time 0 — what a ratio-only warning misses.
#[test]
fn default_levels_no_warning_lead_time_zero() {
    let dir = tempfile::tempdir().unwrap();
    ok(&DEMO[..4], dir.path());
    let r = report(dir.path());
    assert_eq!(r["config"], Value::Null);
    assert_eq!(r["after_trigger"], "keep_watching");
    let a = account(&r, "desk-alpha");
    assert_eq!(a["levels"]["warning_levels"], serde_json::json!(["0.8"]));
    assert_eq!(a["first_warning"], Value::Null);
    assert_eq!(a["episode_warning"], Value::Null);
    assert_eq!(a["first_trigger"]["time"], "2021-05-19T11:17:30.100Z");
    assert_eq!(a["lead_time_ms"], 0);
    assert_eq!(a["lead_time"], "0s");
    let crossed = &a["events"][0]["crossed_levels"];
    assert_eq!(crossed, &serde_json::json!(["0.8", "1"]), "{a}");
}
