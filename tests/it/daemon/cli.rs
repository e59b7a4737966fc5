//! CLI tests of the real binary: `check-config` exit codes and messages, the example config,
//! usage errors.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_liqwatch"))
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/liqwatch.example.toml")
}

fn example_env(name: &str) -> Option<String> {
    match name {
        "LIQWATCH_WEBHOOK_SECRET" | "LIQWATCH_PAGERDUTY_KEY" | "LIQWATCH_API_TOKEN" => {
            Some(format!("test-{name}"))
        }
        _ => None,
    }
}

/// The shipped example config is valid: every section parses and validates. With an empty
/// environment (as in CI) `check-config --no-env` accepts it, and plain `check-config` exits 2
/// naming every secret variable that is not set (issue 11 item 9).
#[test]
fn example_config_parses() {
    let text = std::fs::read_to_string(example()).unwrap();
    let cfg =
        liqwatch::config::parse(&text, &example(), &example_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.feeds.len(), 2, "bybit is disabled in the example");
    assert_eq!(cfg.sinks.len(), 5);
    assert_eq!(cfg.api.bind.to_string(), "127.0.0.1:9477");
    assert!(cfg.api.token.is_some());
    assert_eq!(cfg.engine.thresholds.warning_levels.len(), 2);

    let empty_env = |args: &[&str]| {
        let mut cmd = bin();
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("check-config")
            .args(args)
            .arg(example());
        cmd.output().unwrap()
    };
    let out = empty_env(&["--no-env"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = empty_env(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for var in [
        "LIQWATCH_WEBHOOK_SECRET",
        "LIQWATCH_PAGERDUTY_KEY",
        "LIQWATCH_API_TOKEN",
    ] {
        assert!(stderr.contains(var), "{var} not named in:\n{stderr}");
    }
}

/// The example names every section the config accepts, so it documents all of them.
#[test]
fn example_config_covers_every_section() {
    let text = std::fs::read_to_string(example()).unwrap();
    for s in liqwatch::config::known_sections() {
        assert!(
            text.contains(&format!("[{s}]")) || text.contains(&format!("[[{s}]]")),
            "section {s} missing from the example"
        );
    }
}

/// `liqwatch check-config <args>`, which must exit 0: its stdout.
fn check_ok(args: &[&std::ffi::OsStr]) -> String {
    let out = bin().arg("check-config").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A valid file exits 0 and summarises what would run.
#[test]
fn check_config_ok_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "presets.toml", "");
    let cfg = write(
        dir.path(),
        "l.toml",
        "[engine]\ninstruments = [\"presets.toml\"]\n\n[[feeds]]\nvenue = \"okx\"\n\n[journal]\npath = \"j.db\"\n\n[[sinks]]\ntype = \"stdout\"\n",
    );
    // The journal must exist (check-config never creates it): create it as an operator would.
    let init = bin()
        .args(["journal", "init", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(init.status.code(), Some(0), "{init:?}");
    let stdout = check_ok(&[cfg.as_os_str()]);
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(stdout.contains("feeds: okx"), "{stdout}");
    assert!(stdout.contains("stdout (stdout)"), "{stdout}");
}

/// An invalid file exits 2 and every problem names the file, the line and the key.
#[test]
fn check_config_bad_exits_2_naming_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "bad.toml",
        "[engine]\ninstruments = [\"presets.toml\"]\ntrigger = 1.0\n\n[[feeds]]\nvenue = \"kraken\"\n\n[journal]\npath = \"j.db\"\n\n[[sinks]]\ntype = \"webhook\"\nurl = \"https://x.example/h\"\nsecret_env = \"LIQWATCH_TEST_UNSET_SECRET_VAR\"\n",
    );
    let out = bin()
        .arg("check-config")
        .arg(&cfg)
        .env_remove("LIQWATCH_TEST_UNSET_SECRET_VAR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let file = cfg.display().to_string();
    assert!(stderr.contains("3 problems"), "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:3:")) && stderr.contains("engine.trigger"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:6:")) && stderr.contains("feeds[0].venue"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:14:"))
            && stderr.contains("sinks[0].secret_env")
            && stderr.contains("LIQWATCH_TEST_UNSET_SECRET_VAR is not set"),
        "{stderr}"
    );
}

/// A missing file named by the config is a startup error (exit 2) naming the key and path.
#[test]
fn check_config_missing_presets_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "l.toml",
        "[engine]\ninstruments = [\"nope.toml\"]\n\n[[feeds]]\nvenue = \"okx\"\n\n[journal]\npath = \"j.db\"\n",
    );
    let out = bin().arg("check-config").arg(&cfg).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("engine.instruments") && stderr.contains("nope.toml"),
        "{stderr}"
    );
}

/// `check-config` takes the file as `run` and `journal init` do (`--config FILE`, `-c FILE`)
/// as well as positionally; naming none, or two, is a usage error (exit 2).
#[test]
fn check_config_takes_the_file_as_run_does() {
    for form in [
        &["--no-env"][..],
        &["--no-env", "--config"],
        &["--no-env", "-c"],
    ] {
        let example = example();
        let mut args: Vec<&std::ffi::OsStr> = form.iter().map(std::ffi::OsStr::new).collect();
        args.push(example.as_os_str());
        let stdout = check_ok(&args);
        assert!(
            stdout.contains("liqwatch.example.toml: OK"),
            "{form:?}: {stdout}"
        );
    }
    let out = bin().args(["check-config", "--no-env"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out = bin()
        .args(["check-config", "--no-env", "a.toml", "--config", "b.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

/// A config file that does not exist, and `run` with one, exit 2.
#[test]
fn missing_config_file_exits_2() {
    let out = bin()
        .args(["check-config", "/nonexistent/liqwatch.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
    let out = bin()
        .args(["run", "--config", "/nonexistent/liqwatch.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Usage errors exit 2; --help exits 0 and lists the commands.
#[test]
fn usage_errors_exit_2() {
    let out = bin().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "demo", "check-config", "stress"] {
        assert!(help.contains(cmd), "{help}");
    }
}

/// `liqwatch demo` runs to completion with no network and no config, and the story account
/// warns before it is liquidated, while the pair trade never alerts.
#[test]
fn demo_warns_then_triggers_the_story_account() {
    // 16 market hours in about 3 s; at `max` the board coalesces prices (latest value wins),
    // so the engine would see too few of them to show every step of the story.
    let out = bin()
        .args(["demo", "--speed", "20000", "--no-color"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains("desk-alpha") && l.contains(needle))
            .unwrap_or_else(|| panic!("no desk-alpha {needle} line in:\n{stdout}"))
    };
    let warning = pos("WARNING");
    let trigger = pos("TRIGGER ");
    assert!(warning < trigger, "warning must come first:\n{stdout}");
    assert!(lines[warning].contains("ratio") && lines[warning].contains("equity"));
    // The warning says what deposit would make the account healthy again.
    assert!(
        lines[warning + 1]
            .trim_start()
            .starts_with("margin call: deposit ")
            && lines[warning + 1].ends_with("to bring the ratio below 10%"),
        "{stdout}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("mm-gamma") && l.contains("WARNING"))
    );
    assert!(stdout.contains("Summary"), "{stdout}");
    // Quiet accounts are in the summary too.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("mm-gamma") && l.contains("none (never near a level)")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("desk-alpha") && l.contains("TRIGGERED")),
        "{stdout}"
    );
    assert!(
        !stdout.contains("\x1b["),
        "--no-color output has escape codes"
    );
}

/// `liqwatch demo --speed max` says in its header that it skips steps (its events differ from a
/// timed replay's), and names the speed that shows every step; a timed run says only its speed.
#[test]
fn demo_at_max_says_it_skips_steps() {
    let header = |speed: &str| {
        let out = bin()
            .args(["demo", "--speed", speed, "--no-color"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let at = stdout
            .lines()
            .position(|l| l.starts_with("Binance BTC/ETH/SOL prices"))
            .unwrap_or_else(|| panic!("{stdout}"));
        stdout
            .lines()
            .skip(at)
            .take(2)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let max = header("max");
    assert!(
        max.contains("speed max.\nAt max the engine sees only the latest prices")
            && max.contains("--speed 20000 shows every step"),
        "{max}"
    );
    let timed = header("100000");
    assert!(timed.contains("speed ×100000.\nMargin ratio"), "{timed}");
}

/// `check-config` on the shipped example with its secrets in the environment finds one
/// problem: its journal (/var/lib/liqwatch/journal.db) does not exist on this machine. With
/// `--no-env` it exits 0, and the presets and the sample snapshot it names load too.
#[test]
fn check_config_example_exits_0() {
    let out = bin()
        .arg("check-config")
        .arg(example())
        .env("LIQWATCH_WEBHOOK_SECRET", "s")
        .env("LIQWATCH_PAGERDUTY_KEY", "k")
        .env("LIQWATCH_API_TOKEN", "t")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !std::path::Path::new("/var/lib/liqwatch/journal.db").exists() {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("journal.path") && stderr.contains("/var/lib/liqwatch"),
            "{stderr}"
        );
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "only the journal: {stderr}"
        );
    }
    let example = example();
    let stdout = check_ok(&["--no-env".as_ref(), example.as_os_str()]);
    assert!(stdout.contains("feeds: binance-usdm, okx"), "{stdout}");
    assert!(stdout.contains("snapshot accounts: 5"), "{stdout}");
}
