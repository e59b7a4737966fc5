//! `liqwatch journal status | dead-letters | events` as a real binary over a real journal file:
//! the counts, every sink's cursor, lag and dead letters, the events as journaled, filters, exit
//! codes; read-only (the file's bytes do not change) and refused on a file that is not a journal.

use std::path::Path;
use std::process::{Command, Output};

use liqwatch::journal::Journal;
use liqwatch::model::{AccountId, EventKind};
use serde_json::Value;

use crate::support::sink_contract::sample_event;

const BIN: &str = env!("CARGO_BIN_EXE_liqwatch");

fn journal(args: &[&str], file: &Path) -> Output {
    Command::new(BIN)
        .arg("journal")
        .args(args)
        .arg("--file")
        .arg(file)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Five events over two accounts; `archive` has delivered all of them, `hook` three, with one
/// dead letter; `acct-1` is left triggered and `acct-2` in warning.
fn filled(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("journal.sqlite");
    let j = Journal::create(&path).unwrap();
    let events = [
        sample_event("acct-1", 1, EventKind::LiquidationWarning),
        sample_event("acct-2", 1, EventKind::LiquidationWarning),
        sample_event("acct-1", 2, EventKind::LiquidationTrigger),
        sample_event("acct-2", 2, EventKind::Recovered),
        sample_event("acct-2", 3, EventKind::LiquidationWarning),
    ];
    let states = [
        (
            AccountId::from("acct-1"),
            r#"{"state":"triggered","seq":2}"#.to_string(),
        ),
        (
            AccountId::from("acct-2"),
            r#"{"state":"warning","level":"0.8","seq":3}"#.to_string(),
        ),
    ];
    let seqs = j.append(&events, &states).unwrap();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    for sink in ["archive", "hook"] {
        j.register_sink(sink).unwrap();
    }
    j.advance("archive", 5).unwrap();
    j.dead_letter("hook", 2, "HTTP 410 Gone: the receiver refused it")
        .unwrap();
    j.advance("hook", 3).unwrap();
    drop(j);
    path
}

#[test]
fn status_dead_letters_and_events_read_the_journal_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled(dir.path());

    let s: Value =
        serde_json::from_str(&stdout(&journal(&["status", "--format", "json"], &path))).unwrap();
    assert_eq!(s["events"], 5, "{s}");
    assert_eq!(
        (s["first_seq"].clone(), s["last_seq"].clone()),
        (1.into(), 5.into())
    );
    assert_eq!(s["schema_version"], 3);
    assert_eq!(s["states"]["triggered"], 1, "{s}");
    assert_eq!(s["states"]["warning"], 1, "{s}");
    let sinks = s["sinks"].as_array().unwrap();
    let sink = |name: &str| sinks.iter().find(|k| k["sink"] == name).unwrap().clone();
    assert_eq!(
        (
            sink("archive")["cursor"].clone(),
            sink("archive")["lag"].clone()
        ),
        (5.into(), 0.into())
    );
    assert_eq!(
        (sink("hook")["cursor"].clone(), sink("hook")["lag"].clone()),
        (3.into(), 2.into())
    );
    assert_eq!(sink("hook")["dead_letters"], 1);
    assert_eq!(sink("archive")["dead_letters"], 0);
    let text = stdout(&journal(&["status"], &path));
    assert!(text.contains("5 retained, seq 1–5"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("hook")
            && l.split_whitespace().collect::<Vec<_>>()[1..4] == ["3", "2", "1"]),
        "{text}"
    );

    let dl: Value = serde_json::from_str(&stdout(&journal(
        &["dead-letters", "--format", "json"],
        &path,
    )))
    .unwrap();
    let rows = dl["dead_letters"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{dl}");
    assert_eq!(rows[0]["sink"], "hook");
    assert_eq!(rows[0]["seq"], 2);
    assert_eq!(rows[0]["event"]["account_id"], "acct-2");
    assert!(rows[0]["reason"].as_str().unwrap().contains("410"));
    let none = stdout(&journal(&["dead-letters", "--sink", "archive"], &path));
    assert_eq!(none, "no dead letters\n");

    // The events as journaled, in order; after a seq; of one account; bounded.
    let all = stdout(&journal(&["events"], &path));
    let kinds: Vec<(String, String)> = all
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["account_id"].as_str().unwrap().to_string(),
                v["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("acct-1", "liquidation_warning"),
            ("acct-2", "liquidation_warning"),
            ("acct-1", "liquidation_trigger"),
            ("acct-2", "recovered"),
            ("acct-2", "liquidation_warning"),
        ]
        .map(|(a, k)| (a.to_string(), k.to_string()))
    );
    let j = Journal::open(&path).unwrap();
    let stored: Vec<String> = j
        .read_after(0, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.json)
        .collect();
    drop(j);
    assert_eq!(
        all.lines().collect::<Vec<_>>(),
        stored,
        "byte for byte as journaled"
    );
    let tail = stdout(&journal(
        &[
            "events",
            "--since",
            "3",
            "--account",
            "acct-2",
            "--limit",
            "1",
        ],
        &path,
    ));
    assert_eq!(tail.lines().collect::<Vec<_>>(), [stored[3].as_str()]);

    // While a writer holds the journal open (the daemon running, its WAL beside the file),
    // the commands read through the WAL and see what it commits.
    let j = Journal::open(&path).unwrap();
    j.append(
        &[sample_event("acct-3", 1, EventKind::LiquidationWarning)],
        &[],
    )
    .unwrap();
    let live: Value =
        serde_json::from_str(&stdout(&journal(&["status", "--format", "json"], &path))).unwrap();
    assert_eq!(live["events"], 6, "{live}");
    // With a daemon's lock held (here by the test process), status names the holder.
    assert_eq!(s["daemon"], Value::Null, "{s}");
    let lock = liqwatch::journal::lock::JournalLock::acquire(&path).unwrap();
    let held = stdout(&journal(&["status"], &path));
    assert!(
        held.contains(&format!(
            "daemon    running: liqwatch pid {} since ",
            std::process::id()
        )),
        "{held}"
    );
    drop(lock);
    assert!(stdout(&journal(&["status"], &path)).contains("daemon    not running"));
    let last = stdout(&journal(&["events", "--since", "5"], &path));
    assert!(last.contains("\"account_id\":\"acct-3\""), "{last}");
    drop(j);
}

/// Read-only: the file's bytes are the same after every command, and a file that is not a
/// journal, or none, is refused with exit 2 and the reason.
#[test]
fn journal_reads_write_nothing_and_refuse_what_is_not_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    // A directory name with the characters an SQLite URI gives a meaning.
    let odd = dir.path().join("odd #?% name");
    std::fs::create_dir(&odd).unwrap();
    let path = filled(&odd);
    // The file, and no WAL or index created beside it (after a clean close there is none: one
    // made by whoever runs the command could keep the service's user out of its journal).
    let bytes = || {
        ["", "-wal", "-shm"].map(|suffix| {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            std::fs::read(p).ok()
        })
    };
    let before = bytes();
    assert!(before[0].is_some() && before[1].is_none() && before[2].is_none());
    for args in [&["status"][..], &["dead-letters"], &["events"]] {
        stdout(&journal(args, &path));
    }
    let after = bytes();
    if after != before {
        let (a, b) = (
            after[0].as_deref().unwrap_or(&[]),
            before[0].as_deref().unwrap_or(&[]),
        );
        let at = a.iter().zip(b).position(|(x, y)| x != y);
        panic!(
            "the journal was written: {} → {} bytes, first change at {at:?}; WAL {:?}, index {:?} bytes after",
            b.len(),
            a.len(),
            after[1].as_ref().map(Vec::len),
            after[2].as_ref().map(Vec::len)
        );
    }

    let foreign = dir.path().join("other.db");
    {
        let c = rusqlite::Connection::open(&foreign).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let o = journal(&["status"], &foreign);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a liqwatch journal"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = journal(&["events"], &dir.path().join("missing.sqlite"));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}
