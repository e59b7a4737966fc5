//! `liqwatch backtest`: replays a recording against accounts through the one engine in recorded
//! time ([`crate::backtest`]) and writes, into `--out DIR`, a report per account (first
//! warning, trigger, lead time, worst ratio, liquidation cost, events) as `report.json` and
//! `report.txt`, every event as `events.jsonl`, an SVG chart per account under `charts/` and an
//! `index.html` page linking them. The table is also printed. Two runs of the same inputs write
//! the same bytes.
//!
//! Exit codes: 0 done; 2 a bad flag, config or input file; 1 the output could not be written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::backtest::report::{self, Rejected, Report};
use crate::backtest::{self, Setup, svg};
use crate::engine::{AfterTrigger, MonitorConfig};
use crate::model::{Instrument, InstrumentId};
use crate::sources::files as inputs;

/// Arguments of `liqwatch backtest`.
#[derive(clap::Args, Debug)]
pub struct BacktestArgs {
    /// The recording (liqwatch replay JSONL, e.g. `feeds/replay/crash-2021-05-19.jsonl`).
    #[arg(long, value_name = "FILE")]
    pub replay: PathBuf,
    /// Accounts: `{"accounts": […]}` JSON, or JSONL when the name ends in `.jsonl`.
    #[arg(long, value_name = "FILE")]
    pub accounts: PathBuf,
    /// A daemon config: its `[engine]` section (instrument presets, levels, `trigger_on_stale`,
    /// `after_trigger`, `distance_index`) is used; the rest is ignored. Without it: default
    /// levels and `--instruments`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Instrument presets when no `--config` is given.
    #[arg(long, value_name = "FILE", default_value = "feeds/presets.toml")]
    pub instruments: PathBuf,
    /// The output directory (created; files in it are overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Builds the setup from the flags, or a message for exit code 2.
fn setup(args: &BacktestArgs) -> Result<Setup, String> {
    let (instruments, monitor, after_trigger, distance_index, warn_before_funding) =
        match &args.config {
            Some(path) => {
                let cfg = crate::config::load_without_env(path).map_err(|e| e.to_string())?;
                let instruments = crate::app::load_instruments(&cfg).map_err(|e| e.to_string())?;
                (
                    instruments,
                    MonitorConfig {
                        thresholds: cfg.engine.thresholds.clone(),
                        trigger_on_stale: cfg.engine.trigger_on_stale,
                    },
                    cfg.engine.after_trigger,
                    cfg.engine.distance_index,
                    cfg.engine.warn_before_funding,
                )
            }
            None => (
                inputs::load_instruments(&args.instruments).map_err(|e| e.to_string())?,
                MonitorConfig::default(),
                AfterTrigger::default(),
                true,
                None,
            ),
        };
    let accounts =
        inputs::load_accounts_checked(&args.accounts, &instruments).map_err(|e| e.to_string())?;
    // A stable order for the engine's instrument table.
    let mut list: Vec<(InstrumentId, Instrument)> = instruments.into_iter().collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Setup {
        instruments: list.into_iter().map(|(_, i)| i).collect(),
        accounts,
        monitor,
        after_trigger,
        distance_index,
        warn_before_funding,
    })
}

/// Runs the backtest and builds the report and the files to write (relative path, contents).
pub fn build(
    args: &BacktestArgs,
    setup: &Setup,
) -> Result<(Report, Vec<(String, String)>), String> {
    let file = std::fs::File::open(&args.replay)
        .map_err(|e| format!("replay file {}: {e}", args.replay.display()))?;
    let run = backtest::run(setup, std::io::BufReader::new(file))
        .map_err(|e| format!("replay file {}: {e}", args.replay.display()))?;
    let mut files = Vec::new();
    let mut accounts = Vec::new();
    for (n, (id, points)) in run.series.iter().enumerate() {
        let levels = setup
            .accounts
            .iter()
            .find(|a| a.id == *id)
            .and_then(|a| a.thresholds.clone())
            .unwrap_or_else(|| setup.monitor.thresholds.clone());
        let chart = svg::chart_file(n, id.as_str());
        let a = report::account_report(
            id,
            &levels,
            points,
            &report::events_of(&run, id),
            chart.clone(),
        );
        files.push((chart, svg::chart(&a, points)));
        accounts.push(a);
    }
    let report = Report {
        replay: args.replay.display().to_string(),
        config: args.config.as_ref().map(|p| p.display().to_string()),
        after_trigger: setup.after_trigger,
        counts: run.counts.clone(),
        rejected: run
            .rejected
            .iter()
            .map(|(account, reason)| Rejected {
                account: account.clone(),
                reason: reason.clone(),
            })
            .collect(),
        never_valued: run
            .never_valued
            .iter()
            .map(|(account, reason)| Rejected {
                account: account.clone(),
                reason: reason.clone(),
            })
            .collect(),
        accounts,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
    let mut events = String::new();
    for e in &run.events {
        events.push_str(&serde_json::to_string(e).map_err(|e| e.to_string())?);
        events.push('\n');
    }
    files.push(("report.json".into(), json));
    files.push(("report.txt".into(), report::render_table(&report)));
    files.push(("events.jsonl".into(), events));
    files.push(("index.html".into(), svg::index_html(&report)));
    Ok((report, files))
}

fn write_all(out: &Path, files: &[(String, String)]) -> std::io::Result<()> {
    for (rel, text) in files {
        let p = out.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text)?;
    }
    Ok(())
}

/// Runs the command.
pub fn main(args: BacktestArgs) -> ExitCode {
    let setup = match setup(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("liqwatch backtest: {e}");
            if args.config.is_none()
                && let Some(h) =
                    super::missing_default_hint(&[("--instruments", &args.instruments)])
            {
                eprintln!("{h}");
            }
            return ExitCode::from(2);
        }
    };
    let (report, files) = match build(&args, &setup) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("liqwatch backtest: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = write_all(&args.out, &files) {
        eprintln!("liqwatch backtest: writing {}: {e}", args.out.display());
        return ExitCode::from(1);
    }
    print!("{}", report::render_table(&report));
    println!(
        "wrote {} ({} files: index.html, report.json, report.txt, events.jsonl, charts/)",
        args.out.display(),
        files.len()
    );
    ExitCode::SUCCESS
}
