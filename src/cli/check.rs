//! `liqwatch check-config FILE`: validates a config file, every file it names and that its
//! journal exists (it never creates or opens it), without starting anything.

use std::path::Path;

use crate::app::{AppError, check_files, journal_problem, load_instruments};
use crate::config::{self, Config};

/// `liqwatch check-config [--no-env] FILE`: validates the file, the instrument presets and
/// the account snapshot it names, and that the journal exists. With `no_env` (CI, no secrets
/// and no journal on this machine) it reads no environment variable — the variables a key
/// names must be valid names but need not be set — and does not look for the journal.
/// Returns a short summary of what would run.
pub fn check_config(path: &Path, no_env: bool) -> Result<String, AppError> {
    let cfg = if no_env {
        config::load_without_env(path)?
    } else {
        config::load(path)?
    };
    let mut problems: Vec<String> = match check_files(&cfg) {
        Err(AppError::Startup(m)) => vec![m],
        Err(e) => return Err(e),
        Ok(()) => Vec::new(),
    };
    if !no_env {
        problems.extend(journal_problem(&cfg));
        if let Err(AppError::Startup(m)) = crate::app::api_token(&cfg) {
            problems.push(m);
        }
    }
    if !problems.is_empty() {
        return Err(AppError::Startup(problems.join("\n")));
    }
    let instruments = load_instruments(&cfg)?;
    let accounts = match &cfg.accounts.snapshot {
        Some(p) => crate::sources::files::load_accounts_checked(p, &instruments)
            .map_err(|e| AppError::Startup(e.to_string()))?
            .len(),
        None => 0,
    };
    Ok(format!(
        "{}\n  instruments: {} · snapshot accounts: {}",
        summary(&cfg),
        instruments.len(),
        accounts
    ))
}

/// A short description of what the config would run.
fn summary(cfg: &Config) -> String {
    let feeds: Vec<String> = cfg.feeds.iter().map(|f| f.name()).collect();
    let sinks: Vec<String> = cfg
        .sinks
        .iter()
        .map(|s| format!("{} ({})", s.name, s.type_name))
        .collect();
    let levels: Vec<String> = cfg
        .engine
        .thresholds
        .warning_levels
        .iter()
        .map(|d| d.to_string())
        .collect();
    format!(
        "  feeds: {}\n  sinks: {}\n  levels: warning {} · trigger {} · hysteresis {}\n  journal: {}\n  api: {}",
        feeds.join(", "),
        if sinks.is_empty() {
            "none (events are journaled only)".to_string()
        } else {
            sinks.join(", ")
        },
        levels.join(", "),
        cfg.engine.thresholds.trigger,
        cfg.engine.thresholds.hysteresis,
        cfg.journal.path.display(),
        if cfg.api.enabled {
            format!(
                "http://{} (mutations {})",
                cfg.api.bind,
                if cfg.api.token.is_some() || cfg.api.token_file.is_some() {
                    "need the bearer token"
                } else {
                    "disabled: no token_env or token_file"
                }
            )
        } else {
            "disabled".to_string()
        }
    )
}
