//! Start-up inputs: the files a config names, the instrument presets, the journal (opened, or
//! created only when asked), the accounts
//! (from the journal's store, or the snapshot on a first start) and the engine with its
//! restored monitor states. Every failure here is a startup error (exit 2).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;

use super::AppError;
use crate::config::{Config, FeedSource};
use crate::engine::{AccountMap, Engine, EngineConfig, MonitorConfig, MonitorState, RestoreReport};
use crate::journal::{Journal, JournalOptions};
use crate::model::{Account, AccountId, AccountState, AccountUpdate, Instrument, InstrumentId};

/// Checks that every file the config names exists.
pub(crate) fn check_files(cfg: &Config) -> Result<(), AppError> {
    let mut missing = Vec::new();
    let mut need = |what: &str, p: &Path| {
        if let Err(e) = std::fs::metadata(p) {
            missing.push(format!("{what} {}: {e}", p.display()));
        }
    };
    for p in &cfg.engine.instruments {
        need("engine.instruments", p);
    }
    for p in cfg.instruments.iter().flat_map(|s| &s.files) {
        need("instruments.sources.files", p);
    }
    if let Some(p) = &cfg.accounts.snapshot {
        need("accounts.snapshot", p);
    }
    for f in &cfg.feeds {
        if let FeedSource::Replay { file, .. } = &f.source {
            need("feeds.file", file);
        }
    }
    for h in cfg.risk.iter().flat_map(|r| &r.history) {
        if !h.starts_with("episode:") && h != crate::risk::schedule::RECORDED {
            need("risk.history", Path::new(h));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(AppError::Startup(format!(
            "files named in {} are missing:\n  {}",
            cfg.path.display(),
            missing.join("\n  ")
        )))
    }
}

/// The API's bearer token: `token_env`'s value (read with the config), or the contents of
/// `token_file` (trimmed; read now, so a rotated file is picked up by a reload). `None`:
/// mutations are refused.
pub(crate) fn api_token(cfg: &Config) -> Result<Option<String>, AppError> {
    if let Some(t) = &cfg.api.token {
        return Ok(Some(t.expose().to_string()));
    }
    let Some(path) = &cfg.api.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| AppError::Startup(format!("api.token_file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AppError::Startup(format!(
            "api.token_file {} is empty: put the bearer token in it",
            path.display()
        )));
    }
    Ok(Some(token.to_string()))
}

/// Refuses more instruments than the engine holds ([`crate::engine::map::MAX_INSTRUMENTS`]).
fn check_instrument_count(n: usize) -> Result<(), AppError> {
    let max = crate::engine::map::MAX_INSTRUMENTS;
    if n > max {
        return Err(AppError::Startup(format!(
            "{n} instruments are configured; the engine holds at most {max}: list fewer in \
             engine.instruments and [[instruments.sources]] (a source's `instruments` filter)"
        )));
    }
    Ok(())
}

/// Loads and merges every instrument preset file; an id defined in two files is an error.
pub(crate) fn load_instruments(
    cfg: &Config,
) -> Result<HashMap<InstrumentId, Instrument>, AppError> {
    let mut all: HashMap<InstrumentId, Instrument> = HashMap::new();
    let mut from: HashMap<InstrumentId, String> = HashMap::new();
    for path in &cfg.engine.instruments {
        let map = crate::sources::files::load_instruments(path)
            .map_err(|e| AppError::Startup(e.to_string()))?;
        for (id, inst) in map {
            if let Some(first) = from.get(&id) {
                return Err(AppError::Startup(format!(
                    "instrument {id} is defined in both {first} and {}",
                    path.display()
                )));
            }
            from.insert(id.clone(), path.display().to_string());
            all.insert(id, inst);
        }
    }
    crate::instruments::source::load_sources(&cfg.instruments, &mut all)
        .map_err(AppError::Startup)?;
    check_instrument_count(all.len())?;
    Ok(all)
}

fn journal_options(cfg: &Config) -> JournalOptions {
    JournalOptions {
        synchronous: cfg.journal.synchronous,
        ..JournalOptions::default()
    }
}

/// Opens the existing journal the config names. It is never created here (design invariant 9):
/// a missing directory or file, an empty or foreign file is a startup error saying what to do.
pub(crate) fn open_journal(cfg: &Config) -> Result<Journal, AppError> {
    Journal::open_with(&cfg.journal.path, journal_options(cfg))
        .map_err(|e| AppError::Startup(e.to_string()))
}

/// Creates the journal the config names: `liqwatch journal init`, `liqwatch run
/// --init-journal` (with `if_absent`) and the demo's temporary journal. Never touches an
/// existing file: without `if_absent` one is an error, with it the file is left for
/// `open_journal` to judge. The directory must exist. Returns whether a journal was created.
pub fn init_journal(cfg: &Config, if_absent: bool) -> Result<bool, AppError> {
    let path = &cfg.journal.path;
    if if_absent && std::fs::symlink_metadata(path).is_ok() {
        return Ok(false);
    }
    Journal::create_with(path, journal_options(cfg))
        .map(|_| true)
        .map_err(|e| AppError::Startup(e.to_string()))
}

/// What `check-config` says about the journal's directory and file, without opening it (no
/// write happens): `None` if both are there and the file is not empty.
pub(crate) fn journal_problem(cfg: &Config) -> Option<String> {
    let path = &cfg.journal.path;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Some(format!(
            "journal.path: the directory {} does not exist (create it on persistent storage, then run `liqwatch journal init --config FILE`)",
            dir.display()
        ));
    }
    match std::fs::metadata(path) {
        Err(_) => Some(format!(
            "journal.path: {} does not exist: create it with `liqwatch journal init --config FILE` (first start only; otherwise restore it from a backup)",
            path.display()
        )),
        Ok(m) if m.len() == 0 => Some(format!(
            "journal.path: {} is empty (0 bytes): the daemon refuses it; restore it from a backup",
            path.display()
        )),
        Ok(_) => None,
    }
}

/// The engine over `map` with the monitor states the journal kept, and the shared view of
/// those states for the API.
#[allow(clippy::type_complexity)]
pub(crate) fn engine(
    cfg: &Config,
    map: &Arc<AccountMap>,
    journal: &Journal,
) -> Result<(Engine, Arc<DashMap<AccountId, AccountState>>, RestoreReport), AppError> {
    let mut engine = Engine::new(
        Arc::clone(map),
        EngineConfig {
            monitor: MonitorConfig {
                thresholds: cfg.engine.thresholds.clone(),
                trigger_on_stale: cfg.engine.trigger_on_stale,
            },
            distance_index: cfg.engine.distance_index,
        },
    )
    .map_err(|e| AppError::Startup(format!("engine levels: {e}")))?;
    engine.set_after_trigger(cfg.engine.after_trigger);
    engine.set_warn_before_funding(cfg.engine.warn_before_funding);
    let stored_states = journal
        .load_monitor_states()
        .map_err(|e| AppError::Startup(e.to_string()))?;
    let states: Arc<DashMap<AccountId, AccountState>> = Arc::new(DashMap::new());
    for (id, json) in &stored_states {
        if let Ok(s) = serde_json::from_str::<MonitorState>(json) {
            states.insert(id.clone(), s.state);
        }
    }
    let report = engine.restore(stored_states);
    engine.restore_feed_seqs(
        journal
            .load_feed_seqs()
            .map_err(|e| AppError::Startup(e.to_string()))?,
    );
    Ok((engine, states, report))
}

/// Seeds the map from the journal's accounts store, or from the snapshot file when the store
/// is empty (first start), persisting the snapshot into the store.
pub(crate) fn load_accounts(
    cfg: &Config,
    journal: &Journal,
    map: &AccountMap,
    instruments: &HashMap<InstrumentId, Instrument>,
) -> Result<(), AppError> {
    let stored = journal
        .load_accounts()
        .map_err(|e| AppError::Startup(e.to_string()))?;
    if !stored.is_empty() {
        let mut bad = 0usize;
        for (id, json) in stored {
            let applied = serde_json::from_str::<Account>(&json)
                .map_err(|e| e.to_string())
                .and_then(|account| {
                    map.apply_update(AccountUpdate::Replace { account })
                        .map_err(|e| e.to_string())
                });
            if let Err(error) = applied {
                bad += 1;
                metrics::counter!("liqwatch_daemon_store_accounts_rejected_total").increment(1);
                tracing::error!(account = %id, %error, "Stored account cannot be loaded (kept in the store, not watched): fix the instrument presets or replace it");
            }
        }
        if let Some(p) = &cfg.accounts.snapshot {
            tracing::info!(snapshot = %p.display(), accounts = map.len(), rejected = bad, "Accounts restored from the journal's store; the snapshot file only seeds an empty store");
        }
        return Ok(());
    }
    let Some(path) = &cfg.accounts.snapshot else {
        return Ok(());
    };
    let accounts = crate::sources::files::load_accounts_checked(path, instruments)
        .map_err(|e| AppError::Startup(e.to_string()))?;
    let mut rows = Vec::with_capacity(accounts.len());
    for mut account in accounts {
        // The snapshot file is an `[accounts]` source like the HTTP API.
        account.apply_funding |= cfg.accounts.apply_funding;
        let id = account.id.clone();
        let json = serde_json::to_string(&account)
            .map_err(|e| AppError::Startup(format!("account {id}: {e}")))?;
        map.apply_update(AccountUpdate::Replace { account })
            .map_err(|e| AppError::Startup(format!("{}: {e}", path.display())))?;
        rows.push((id, json));
    }
    for chunk in rows.chunks(10_000) {
        journal
            .upsert_accounts(chunk)
            .map_err(|e| AppError::Startup(e.to_string()))?;
    }
    tracing::info!(snapshot = %path.display(), accounts = rows.len(), "Accounts seeded from the snapshot");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{EventKind, FeedEventInfo, InstrumentId, PriceUsed};
    use crate::prices::StaleTransition;

    fn transition(kind: EventKind, instrument: &str) -> StaleTransition {
        StaleTransition {
            kind,
            seq: 1,
            info: FeedEventInfo {
                instrument: instrument.into(),
                venues: Vec::new(),
                last_price: None,
                age_ms: None,
                stale_after_ms: 30_000,
            },
        }
    }

    #[test]
    fn more_instruments_than_the_engine_holds_are_refused_at_start() {
        let max = crate::engine::map::MAX_INSTRUMENTS;
        assert!(check_instrument_count(max).is_ok());
        let err = check_instrument_count(max + 1).unwrap_err().to_string();
        assert!(
            err.contains("65537 instruments") && err.contains("at most 65536"),
            "{err}"
        );
    }

    /// Feed events are numbered per instrument; a restart (the engine built again from the
    /// journal) continues the numbering instead of starting again at 1, as a config reload
    /// does (the runner hands the numbers over).
    #[test]
    fn feed_event_numbering_continues_across_a_restart() {
        let cfg = crate::config::parse(
            include_str!("../../feeds/demo/liqwatch.toml"),
            std::path::Path::new("/nonexistent/liqwatch.toml"),
            &|_| None,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        // One run of the daemon: the engine as startup builds it from the journal, fed these
        // transitions, its events journaled; the (instrument, seq) of each.
        let run = |journal: &Journal, feeds: &[(EventKind, &str)], now: i64| {
            let map = Arc::new(AccountMap::new(Vec::new()));
            let (mut engine, _, _) = engine(&cfg, &map, journal).unwrap();
            let transitions: Vec<StaleTransition> =
                feeds.iter().map(|&(k, i)| transition(k, i)).collect();
            let no_prices = std::collections::HashMap::<InstrumentId, PriceUsed>::new();
            let step = engine.on_feed(&transitions, &no_prices, now);
            journal.append(&step.feed_events, &[]).unwrap();
            step.feed_events
                .iter()
                .map(|e| (e.feed.as_ref().unwrap().instrument.to_string(), e.seq))
                .collect::<Vec<_>>()
        };
        let first = run(
            &Journal::create(&path).unwrap(),
            &[
                (EventKind::FeedStale, "BTCUSDT-PERP"),
                (EventKind::FeedRestored, "BTCUSDT-PERP"),
                (EventKind::FeedStale, "ETHUSDT-PERP"),
            ],
            1_000,
        );
        assert_eq!(first.iter().map(|(_, s)| *s).collect::<Vec<_>>(), [1, 2, 1]);
        let step = run(
            &Journal::open(&path).unwrap(),
            &[
                (EventKind::FeedStale, "BTCUSDT-PERP"),
                (EventKind::FeedRestored, "ETHUSDT-PERP"),
                (EventKind::FeedStale, "SOLUSDT-PERP"),
            ],
            2_000,
        );
        assert_eq!(
            step,
            [
                ("BTCUSDT-PERP".to_string(), 3),
                ("ETHUSDT-PERP".to_string(), 2),
                ("SOLUSDT-PERP".to_string(), 1)
            ]
        );
    }
}
