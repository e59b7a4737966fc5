//! The `liqwatch` binary: parse the command line, set up logging, run a command, exit with a
//! documented code (0 clean, 1 runtime failure, 2 bad config or usage).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use liqwatch::app;
use liqwatch::config::{self, LogFormat};

/// mimalloc: in a correlated move the engine allocates and frees an event, its snapshot and
/// its JSON per crossing account on two cores at once; glibc's allocator spent ~15 % of that
/// step in its own locks and free-list upkeep, mimalloc's thread-local heaps a fraction of it
/// (docs/benchmarks-history.md, "the crash path with mimalloc").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `liqwatch journal …`.
#[derive(Subcommand, Debug)]
enum JournalCommand {
    /// Create a new, empty journal at the config's `[journal] path` (no secrets needed): exit 0
    /// created, 2 if the file already exists (it is left unchanged) or its directory is missing.
    Init {
        /// The TOML config file naming the journal.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Events retained, accounts, and each sink's cursor, lag and dead letters; read-only, with
    /// or without the daemon running.
    Status {
        #[command(flatten)]
        at: liqwatch::cli::journal::JournalAt,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: liqwatch::cli::journal::Format,
    },
    /// The events sinks gave up on (permanent failures), with the reason and the event; read-only.
    DeadLetters {
        #[command(flatten)]
        at: liqwatch::cli::journal::JournalAt,
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: liqwatch::cli::journal::Format,
    },
    /// The retained events as journaled, one JSON object per line, in journal order; read-only.
    Events {
        #[command(flatten)]
        at: liqwatch::cli::journal::JournalAt,
        /// Only events after this seq.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Only this account's.
        #[arg(long)]
        account: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u64>,
    },
}

/// Cross-margin liquidation watcher.
#[derive(Parser, Debug)]
#[command(name = "liqwatch", version, about)]
struct Cli {
    /// Log line format: `text` (readable, default) or `json`. Overrides `[log] format`.
    #[arg(long, global = true, value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    LogFormat::parse(s).ok_or_else(|| format!("{s:?}: expected text or json"))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: feeds → accounts → events → journal → sinks, plus the HTTP API.
    Run {
        /// The TOML config file (see deploy/liqwatch.example.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Create the journal first if its file does not exist (for container entrypoints and
        /// first starts). An existing file is never touched; the directory must exist.
        #[arg(long)]
        init_journal: bool,
    },
    /// Manage the event journal.
    #[command(subcommand)]
    Journal(JournalCommand),
    /// Replay the 2021-05-19 crash against sample accounts, with no network and no config.
    Demo(liqwatch::cli::demo::DemoArgs),
    /// Validate a config file and exit: 0 valid, 2 invalid (every problem is listed).
    #[command(group(clap::ArgGroup::new("input").required(true).args(["file", "config"])))]
    CheckConfig {
        /// Read no environment variable and do not look for the journal: secrets must be
        /// named, not set (for CI, cf. Vector's `validate --no-environment`).
        #[arg(long)]
        no_env: bool,
        /// The TOML config file.
        file: Option<PathBuf>,
        /// The TOML config file, named as `run` and `journal init` name it.
        #[arg(short, long, value_name = "CONFIG")]
        config: Option<PathBuf>,
    },
    /// Apply price shocks to accounts from files and print their risk.
    Stress(liqwatch::cli::stress::StressArgs),
    /// Instrument presets from the venues' own REST responses.
    #[command(subcommand)]
    Instruments(liqwatch::cli::instruments::InstrumentsCommand),
    /// Replay a recording against accounts in recorded time and write a report and charts.
    #[command(
        after_help = "Example (the demo's recording, accounts and levels):\n  liqwatch backtest --replay feeds/replay/crash-2021-05-19.jsonl --accounts feeds/demo/accounts.json \\\n      --config feeds/demo/liqwatch.toml --out backtest-out"
    )]
    Backtest(liqwatch::cli::backtest::BacktestArgs),
    /// Historical VaR, expected shortfall, P(liquidation) and component ES from price history.
    #[command(
        after_help = "Example (the sample accounts, the shipped 2021-05-19 episode, every 4-hour window):\n  liqwatch risk --history episode:crash-2021-05-19 --horizon 4h"
    )]
    Risk(liqwatch::cli::risk::RiskArgs),
}

fn main() -> ExitCode {
    // Before anything large is allocated (see the function's docs).
    if let Err(e) = liqwatch::runtime::memory::disable_transparent_huge_pages() {
        eprintln!(
            "liqwatch: transparent huge pages stay on ({e}); crash steps fault in more memory"
        );
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Stress(args) => liqwatch::cli::stress::main(args),
        Command::Instruments(cmd) => liqwatch::cli::instruments::main(cmd),
        Command::Backtest(args) => liqwatch::cli::backtest::main(args),
        Command::Risk(args) => liqwatch::cli::risk::main(args),
        Command::CheckConfig {
            file,
            config,
            no_env,
        } => {
            // Clap requires exactly one of the two.
            let Some(file) = file.or(config) else {
                return ExitCode::from(2);
            };
            match liqwatch::cli::check::check_config(&file, no_env) {
                Ok(summary) => {
                    println!("{}: OK\n{summary}", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Journal(JournalCommand::Init { config }) => {
            // Only `[journal]` matters here: creating a journal needs no secrets.
            let created = config::load_without_env(&config)
                .map_err(app::AppError::from)
                .and_then(|cfg| app::init_journal(&cfg, false).map(|_| cfg));
            match created {
                Ok(cfg) => {
                    println!("created journal {}", cfg.journal.path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("liqwatch: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Journal(JournalCommand::Status { at, format }) => {
            liqwatch::cli::journal::status(&at, format)
        }
        Command::Journal(JournalCommand::DeadLetters { at, sink, format }) => {
            liqwatch::cli::journal::dead_letters(&at, sink.as_deref(), format)
        }
        Command::Journal(JournalCommand::Events {
            at,
            since,
            account,
            limit,
        }) => liqwatch::cli::journal::events(&at, since, account.as_deref(), limit),
        Command::Run {
            config,
            init_journal,
        } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let format = cli.log_format.unwrap_or(cfg.log.format);
            if let Err(e) = app::init_logging(format, &cfg.log.level) {
                eprintln!("cannot set up logging: {e}");
                return ExitCode::from(2);
            }
            if init_journal && let Err(e) = app::init_journal(&cfg, true) {
                return exit(Err(e));
            }
            exit(app::run_daemon(cfg))
        }
        Command::Demo(args) => {
            let format = cli.log_format.unwrap_or(LogFormat::Text);
            // The demo prints its own readable lines on stdout; logs stay quiet on stderr.
            if let Err(e) = app::init_logging(format, "warn") {
                eprintln!("cannot set up logging: {e}");
                return ExitCode::from(2);
            }
            exit(liqwatch::cli::demo::main(args))
        }
    }
}

fn exit(r: Result<(), app::AppError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "liqwatch stopped");
            eprintln!("liqwatch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
