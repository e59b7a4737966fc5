//! `liqwatch journal status | dead-letters | events`: the journal read from the file alone,
//! read-only ([`crate::journal::inspect`]), whether or not the daemon is running.
//!
//! Exit codes: 0 done; 2 a bad config, or a journal that is missing, empty, not a liqwatch
//! journal or corrupt (the same checks as `run`); 1 the output could not be written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::journal::inspect::{self, JournalStatus};

/// Where the journal is: a config's `[journal] path`, or the file itself.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct JournalAt {
    /// The TOML config naming the journal (only `[journal]` is read; no secrets needed).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The journal file itself.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
}

impl JournalAt {
    fn path(&self) -> Result<PathBuf, String> {
        match (&self.config, &self.file) {
            (_, Some(f)) => Ok(f.clone()),
            (Some(c), None) => crate::config::load_without_env(c)
                .map(|cfg| cfg.journal.path)
                .map_err(|e| e.to_string()),
            (None, None) => Err("name the journal with --config FILE or --file FILE".into()),
        }
    }
}

/// Output format of `journal status` and `journal dead-letters`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Readable text.
    Text,
    /// One JSON document.
    Json,
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("liqwatch journal: {e}");
    ExitCode::from(2)
}

fn write_out(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // `| head` closed the pipe: what was wanted was written.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liqwatch journal: cannot write the output: {e}");
            ExitCode::from(1)
        }
    }
}

/// `journal status`: counts, range, states and each sink's cursor, lag and dead letters.
pub fn status(at: &JournalAt, format: Format) -> ExitCode {
    let path = match at.path() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    match inspect::status(&path) {
        Ok(s) => write_out(&match format {
            Format::Json => serde_json::to_string_pretty(&s).unwrap_or_default() + "\n",
            Format::Text => render_status(&s),
        }),
        Err(e) => fail(e),
    }
}

/// The readable status.
pub fn render_status(s: &JournalStatus) -> String {
    let mut out = format!(
        "journal {} ({:.1} MiB, schema {})\n",
        s.path,
        s.bytes as f64 / (1024.0 * 1024.0),
        s.schema_version
    );
    out.push_str(&match &s.daemon {
        Some(holder) => format!("daemon    running: {holder}\n"),
        None => "daemon    not running\n".to_string(),
    });
    match (s.first_seq, s.last_seq) {
        (Some(first), Some(last)) => out.push_str(&format!(
            "events    {} retained, seq {first}–{last}, last detected {}\n",
            s.events,
            s.last_event_time.as_deref().unwrap_or("-")
        )),
        _ => out.push_str("events    none\n"),
    }
    let states: Vec<String> = s.states.iter().map(|(k, n)| format!("{n} {k}")).collect();
    out.push_str(&format!(
        "accounts  {} stored{}\n",
        s.accounts,
        if states.is_empty() {
            String::new()
        } else {
            format!("; last event left {}", states.join(", "))
        }
    ));
    if s.sinks.is_empty() {
        out.push_str("sinks     none has a cursor yet\n");
    } else {
        out.push_str(&format!(
            "\n{:<24} {:>10} {:>10} {:>12}  {}\n",
            "sink", "cursor", "lag", "dead letters", "cursor moved"
        ));
        for k in &s.sinks {
            out.push_str(&format!(
                "{:<24} {:>10} {:>10} {:>12}  {}\n",
                k.sink, k.cursor, k.lag, k.dead_letters, k.updated
            ));
        }
    }
    out
}

/// `journal dead-letters`: the events sinks gave up on, with the reason.
pub fn dead_letters(at: &JournalAt, sink: Option<&str>, format: Format) -> ExitCode {
    let path = match at.path() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    match inspect::dead_letters(&path, sink) {
        Ok(rows) => write_out(&match format {
            Format::Json => {
                serde_json::to_string_pretty(&serde_json::json!({ "dead_letters": rows }))
                    .unwrap_or_default()
                    + "\n"
            }
            Format::Text if rows.is_empty() => "no dead letters\n".to_string(),
            Format::Text => rows
                .iter()
                .map(|r| {
                    let kind = r.event.get("kind").and_then(|k| k.as_str()).unwrap_or("-");
                    let account = r
                        .event
                        .get("account_id")
                        .and_then(|k| k.as_str())
                        .unwrap_or("-");
                    format!(
                        "{}  sink={} seq={} {} account={} event_id={}\n    {}\n",
                        r.time, r.sink, r.seq, kind, account, r.event_id, r.reason
                    )
                })
                .collect(),
        }),
        Err(e) => fail(e),
    }
}

/// `journal events`: the journaled JSON of every retained event after `since`, one per line.
pub fn events(at: &JournalAt, since: u64, account: Option<&str>, limit: Option<u64>) -> ExitCode {
    let path = match at.path() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    export(&path, since, account, limit, &mut std::io::stdout().lock())
}

fn export(
    path: &Path,
    since: u64,
    account: Option<&str>,
    limit: Option<u64>,
    out: &mut impl Write,
) -> ExitCode {
    let mut failed: Option<std::io::Error> = None;
    let r = inspect::events(path, since, account, limit, |json| {
        match out
            .write_all(json.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
        {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    });
    if let Err(e) = r {
        return fail(e);
    }
    match failed.map_or_else(|| out.flush(), Err) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liqwatch journal: cannot write the output: {e}");
            ExitCode::from(1)
        }
    }
}
