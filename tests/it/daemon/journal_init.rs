//! Issue 11 item 4: the real binary never creates or re-initialises a journal on its own. A
//! missing directory or file, an empty file and a file that is not a liqwatch journal stop
//! `run` with exit 2 and leave the file as it was; `liqwatch journal init` creates one and
//! never overwrites; `run --init-journal` creates one only when there is no file at all.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::daemon_env::Daemon;

const BIN: &str = env!("CARGO_BIN_EXE_liqwatch");
const DEADLINE: Duration = Duration::from_secs(20);

/// A config whose journal is `journal` (relative to `dir`); the feed points at a closed port
/// (the daemon keeps reconnecting, which does not stop it starting) and the API binds port 0.
fn write_config(dir: &Path, journal: &str) -> PathBuf {
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    let cfg = format!(
        r#"
[engine]
instruments = ["{presets}"]

[[feeds]]
venue = "binance-usdm"
url = "ws://127.0.0.1:9/market/stream"

[journal]
path = "{journal}"

[api]
bind = "127.0.0.1:0"

[shutdown]
grace = "2s"
"#,
        presets = presets.display()
    );
    let p = dir.join("liqwatch.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn liqwatch(args: &[&str], cfg: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A missing journal directory: `run` (with or without `--init-journal`), `journal init` and
/// `check-config` exit 2 naming it, and nothing creates it.
#[test]
fn missing_directory_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "state/journal.sqlite");
    let state = dir.path().join("state");
    for args in [
        &["run"][..],
        &["run", "--init-journal"],
        &["journal", "init"],
    ] {
        let out = liqwatch(args, &cfg);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&state.display().to_string()) && err.contains("does not exist"),
            "{args:?}: {err}"
        );
        assert!(!state.exists(), "{args:?} created the directory");
    }
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&state.display().to_string()), "{err}");
}

/// A missing journal file: `run` exits 2 saying how to create one, and creates nothing;
/// `check-config` reports it.
#[test]
fn missing_file_exits_2_and_says_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "journal.sqlite");
    let out = liqwatch(&["run"], &cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("liqwatch journal init"), "{err}");
    assert!(!dir.path().join("journal.sqlite").exists());
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("journal.sqlite") && err.contains("journal init"),
        "{err}"
    );
}

/// A zero-length journal (truncated, or a failed restore) is refused by `run`, `run
/// --init-journal` and `journal init`, and stays zero bytes: nothing is re-seeded.
#[test]
fn empty_file_exits_2_and_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "journal.sqlite");
    let journal = dir.path().join("journal.sqlite");
    std::fs::write(&journal, b"").unwrap();
    for args in [
        &["run"][..],
        &["run", "--init-journal"],
        &["journal", "init"],
    ] {
        let out = liqwatch(args, &cfg);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("journal.sqlite"), "{args:?}: {err}");
        assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0, "{args:?}");
    }
    assert!(stderr(&liqwatch(&["run"], &cfg)).contains("empty"));
}

/// Another program's SQLite database, and a file that is not SQLite at all, are refused with
/// exit 2 and left byte for byte as they were.
#[test]
fn foreign_file_exits_2_and_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "journal.sqlite");
    let journal = dir.path().join("journal.sqlite");
    let c = rusqlite::Connection::open(&journal).unwrap();
    c.execute_batch("CREATE TABLE events(x); INSERT INTO events VALUES (1);")
        .unwrap();
    drop(c);
    let before = std::fs::read(&journal).unwrap();
    let out = liqwatch(&["run"], &cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a liqwatch journal"), "{err}");
    assert_eq!(std::fs::read(&journal).unwrap(), before);

    std::fs::write(&journal, vec![0x42u8; 8192]).unwrap();
    let out = liqwatch(&["run", "--init-journal"], &cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(std::fs::read(&journal).unwrap(), vec![0x42u8; 8192]);
}

/// `journal init` creates a journal `run` then starts on (and stops cleanly); a second `journal
/// init` exits 2 and leaves the journal byte for byte as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_init_then_run_and_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "journal.sqlite");
    let journal = dir.path().join("journal.sqlite");
    let out = liqwatch(&["journal", "init"], &cfg);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::metadata(&journal).unwrap().len() > 0);

    let mut daemon = Daemon::start(BIN, &cfg, &[], dir.path().join("daemon-1.log"));
    daemon.api_addr(DEADLINE).await;
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());

    let before = std::fs::read(&journal).unwrap();
    let out = liqwatch(&["journal", "init"], &cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&journal).unwrap(), before, "journal changed");
}

/// `run --init-journal` on a directory without a journal creates one and starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_init_journal_creates_an_absent_journal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "journal.sqlite");
    let mut daemon = Daemon::start_args(
        BIN,
        &["--init-journal"],
        &cfg,
        &[],
        dir.path().join("daemon.log"),
    );
    daemon.api_addr(DEADLINE).await;
    assert!(dir.path().join("journal.sqlite").exists());
    // Said once each: created, then opened by the daemon (not also "opened" by the creation).
    let log = daemon.log_text();
    assert_eq!(log.matches("New journal created").count(), 1, "{log}");
    assert_eq!(log.matches("Journal opened").count(), 1, "{log}");
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
}

/// `journal init` reads only `[journal]`: the secrets the config names need not be set.
#[test]
fn journal_init_needs_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "journal.sqlite");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\ntoken_env = \"LIQWATCH_TEST_UNSET_INIT_TOKEN\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(BIN)
        .args(["journal", "init", "--config"])
        .arg(&cfg)
        .env_remove("LIQWATCH_TEST_UNSET_INIT_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(dir.path().join("journal.sqlite").exists());
    // `run` still needs it.
    let out = liqwatch(&["run"], &cfg);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("LIQWATCH_TEST_UNSET_INIT_TOKEN"));
}

/// One daemon per journal: while one runs, a second `run` on the same journal (here through a
/// second config naming it) exits 2 naming the first one's pid, without opening the journal;
/// the first keeps running, and once it has stopped the second starts. A kill -9'd daemon's
/// lock goes with its process: the next start is not blocked by the lock file left behind.
#[tokio::test]
async fn a_second_daemon_on_one_journal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "journal.sqlite");
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let journal = dir.path().join("journal.sqlite");
    let cfg2 = write_config(&other, journal.to_str().unwrap());
    assert_eq!(liqwatch(&["journal", "init"], &cfg).status.code(), Some(0));

    let mut first = Daemon::start(BIN, &cfg, &[], dir.path().join("first.log"));
    first.api_addr(DEADLINE).await;
    let out = liqwatch(&["run"], &cfg2);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is in use by liqwatch pid")
            && err.contains(&format!("pid {}", first.child.id())),
        "{err}"
    );
    assert!(first.alive(), "the first daemon stopped");
    // The refused one stopped before opening the journal.
    assert!(!err.contains("Journal opened"), "{err}");

    // After a kill -9 the lock is free; the second one starts.
    first.kill9();
    let mut second = Daemon::start(BIN, &cfg2, &[], dir.path().join("second.log"));
    second.api_addr(DEADLINE).await;
    assert!(second.alive());
    assert!(dir.path().join("journal.sqlite.lock").exists());
    assert_eq!(second.terminate(DEADLINE), Some(0));
}
