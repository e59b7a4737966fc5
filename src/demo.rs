//! `liqwatch demo`: replays the 2021-05-19 crash against sample accounts with no network and no
//! config, printing events as readable lines as they happen and a summary at the end.

use crate::app::AppError;

/// Arguments of `liqwatch demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Replay speed factor over the recording's real time (`max` = as fast as possible).
    #[arg(long, default_value = "2000")]
    pub speed: String,
    /// Never colour the output (colour is used only on a terminal anyway).
    #[arg(long)]
    pub no_color: bool,
}

/// Runs the demo.
pub fn main(_args: DemoArgs) -> Result<(), AppError> {
    Err(AppError::Runtime(
        "the demo needs the replay feed and the engine, which are not wired yet".into(),
    ))
}
