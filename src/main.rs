//! The `liqwatch` binary: parse the command line, set up logging, run a command, exit with a
//! documented code (0 clean, 1 runtime failure, 2 bad config or usage).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Cross-margin liquidation watcher.
#[derive(Parser, Debug)]
#[command(name = "liqwatch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply price shocks to accounts from files and print their risk.
    Stress(liqwatch::stress::StressArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Stress(args) => liqwatch::stress::main(args),
    }
}
