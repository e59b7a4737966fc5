//! The stress command (to be written).

use std::process::ExitCode;

/// Arguments of `liqwatch stress`.
#[derive(clap::Args, Debug)]
pub struct StressArgs {}

/// Runs the command.
pub fn main(_args: StressArgs) -> ExitCode {
    ExitCode::from(1)
}
