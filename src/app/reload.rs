//! SIGHUP: re-read and validate the config file, the files it names (instrument presets, the
//! account snapshot, the token file) and the API token; apply what can change while running;
//! keep everything as it was on any error, saying why.
//!
//! Applied live: the engine's default levels (`[engine] warning_levels`, `trigger`,
//! `hysteresis`, `trigger_on_stale`, `distance_index` — the engine is rebuilt over the same
//! accounts with the journal's monitor states and re-evaluates every account), the update-id
//! window (`[accounts] update_id_window`, `update_id_limit`), the API token (`[api]
//! token_env` / `token_file`: a token file is read again) and `[[sinks]]` (a new sink starts
//! from its cursor, a removed one drains and stops, a changed one does both; the others are
//! not touched) and venue `[[feeds]]` (likewise, through [`super::feedset::FeedSet`]). Every
//! other change is validated,
//! named in a WARN as needing a restart, and not applied: the running value stays, so the next
//! reload names it again. Outcomes are counted in `liqwatch_config_reloads_total{outcome}` and
//! `liqwatch_config_last_reload_successful`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rust_decimal::Decimal;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::runner::EngineRequest;
use super::sinkset::SinkSet;
use super::startup::{api_token, check_files, load_instruments};
use crate::api::ApiToken;
use crate::config::{self, Config};
use crate::engine::{EngineConfig, MonitorConfig};
use crate::model::{Instrument, InstrumentId};

/// What a reload applied and what it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReloadReport {
    /// Settings now in effect.
    pub applied: Vec<String>,
    /// Keys that changed in the file but take effect only after a restart.
    pub restart_needed: Vec<String>,
}

/// The reload task's state: the running config and the handles of what can change live.
pub(crate) struct Reloader {
    /// The config as it runs (keys that need a restart keep their running values).
    pub current: Config,
    /// The instruments the running engine was built with.
    pub instruments: HashMap<InstrumentId, Instrument>,
    /// The running API token (to tell whether a reload changes it).
    pub token: Option<String>,
    /// The engine task.
    pub engine: mpsc::Sender<EngineRequest>,
    /// The API's token, when the API runs.
    pub api_token: Option<ApiToken>,
    /// The trigger level the API's account views use.
    pub default_trigger: Arc<parking_lot::RwLock<Decimal>>,
    /// The levels the API's account views and what-ifs use.
    pub default_levels: Arc<parking_lot::RwLock<crate::model::Thresholds>>,
    /// The running venue feeds.
    pub feeds: super::feedset::FeedSet,
    /// The running sink drivers.
    pub sinks: SinkSet,
    /// The sinks' shared stop token (a new driver runs under a child of it).
    pub sinks_stop: CancellationToken,
    /// The journal the sinks deliver from.
    pub journal: Arc<crate::journal::Journal>,
    /// The instruments, for registering a new sink's metrics at zero.
    pub instrument_list: Vec<Instrument>,
}

impl Reloader {
    /// Reloads on every notification of `signal` (SIGHUP) until `cancel`.
    pub async fn run(mut self, signal: Arc<Notify>, cancel: CancellationToken) {
        metrics::gauge!("liqwatch_config_last_reload_successful").set(1.0);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = signal.notified() => {
                    // Logged and counted inside; a failure keeps the running config.
                    let _ = self.reload_once().await;
                }
            }
        }
    }

    /// One reload, logged and counted.
    pub async fn reload_once(&mut self) -> Result<ReloadReport, String> {
        let path = self.current.path.display().to_string();
        tracing::info!(config = %path, "SIGHUP: reloading the configuration");
        let r = self.try_reload().await;
        match &r {
            Ok(report) => {
                metrics::counter!("liqwatch_config_reloads_total", "outcome" => "success")
                    .increment(1);
                metrics::gauge!("liqwatch_config_last_reload_successful").set(1.0);
                tracing::info!(config = %path, applied = ?report.applied, "Configuration reloaded");
                if !report.restart_needed.is_empty() {
                    tracing::warn!(config = %path, keys = ?report.restart_needed,
                        "These changed keys take effect only after a restart; they keep their running values");
                }
            }
            Err(reason) => {
                metrics::counter!("liqwatch_config_reloads_total", "outcome" => "failure")
                    .increment(1);
                metrics::gauge!("liqwatch_config_last_reload_successful").set(0.0);
                tracing::error!(config = %path, %reason,
                    "Reload failed: the running configuration is unchanged; fix the file and send SIGHUP again");
            }
        }
        r
    }

    async fn try_reload(&mut self) -> Result<ReloadReport, String> {
        let path = self.current.path.clone();
        // Everything is read and validated before anything is applied.
        let (new, instruments, token) = tokio::task::spawn_blocking(move || {
            let cfg = config::load(&path).map_err(|e| e.to_string())?;
            check_files(&cfg).map_err(|e| e.to_string())?;
            let instruments = load_instruments(&cfg).map_err(|e| e.to_string())?;
            if let Some(p) = &cfg.accounts.snapshot {
                // Only validated: the snapshot seeds an empty store at the first start.
                crate::sources::files::load_accounts_checked(p, &instruments)
                    .map_err(|e| format!("accounts.snapshot: {e}"))?;
            }
            let token = api_token(&cfg).map_err(|e| e.to_string())?;
            Ok::<_, String>((cfg, instruments, token))
        })
        .await
        .map_err(|e| format!("reload task failed: {e}"))??;

        let restart_needed = restart_needed(&self.current, &new, &self.instruments, &instruments);
        let mut report = ReloadReport {
            applied: Vec::new(),
            restart_needed,
        };
        // Build the sinks that are new or changed now: a sink that cannot be built (bad URL,
        // …) fails the reload before anything is applied.
        let (to_stop, to_start) = self.sinks.plan(&new);
        let mut built = Vec::new();
        for name in &to_start {
            if let Some(entry) = new.sinks.iter().find(|e| &e.name == name) {
                let sink = entry.build().map_err(|e| format!("sinks {name}: {e}"))?;
                built.push((entry.clone(), sink));
            }
        }

        // The engine first: the one step that can still fail.
        let (reply, rx) = oneshot::channel();
        self.engine
            .send(EngineRequest::Reload {
                engine: EngineConfig {
                    monitor: MonitorConfig {
                        thresholds: new.engine.thresholds.clone(),
                        trigger_on_stale: new.engine.trigger_on_stale,
                    },
                    distance_index: new.engine.distance_index,
                },
                update_ids: new.accounts.update_ids,
                reply,
            })
            .await
            .map_err(|_| "the engine has stopped".to_string())?;
        let applied = rx
            .await
            .map_err(|_| "the engine has stopped".to_string())??;
        report.applied.extend(applied);
        self.current.engine.thresholds = new.engine.thresholds.clone();
        self.current.engine.trigger_on_stale = new.engine.trigger_on_stale;
        self.current.engine.distance_index = new.engine.distance_index;
        self.current.accounts.update_ids = new.accounts.update_ids;
        *self.default_trigger.write() = new.engine.thresholds.trigger;
        *self.default_levels.write() = new.engine.thresholds.clone();

        if token != self.token {
            match &self.api_token {
                Some(handle) => {
                    handle.set(token.as_deref());
                    report.applied.push(if token.is_some() {
                        "api token".to_string()
                    } else {
                        "api token removed: mutations are refused".to_string()
                    });
                }
                None => report
                    .restart_needed
                    .push("api.token (the API is off)".into()),
            }
            self.token = token;
            self.current.api.token = new.api.token.clone();
            self.current.api.token_file = new.api.token_file.clone();
        }

        // Venue feeds: stop the removed and changed ones, start the new and changed ones.
        if let Some(change) = self.feeds.reload(&new, &self.instrument_list) {
            report.applied.push(change);
        }
        self.current.feeds = new.feeds.clone();

        // Sinks: stop the removed and changed ones (each drains for its grace period), then
        // start the new and changed ones on their cursors.
        if !to_stop.is_empty() || !built.is_empty() {
            self.sinks.stop(&to_stop, new.shutdown.grace).await;
            let started: Vec<String> = built.iter().map(|(e, _)| e.name.clone()).collect();
            for (entry, sink) in built {
                self.sinks.start(
                    sink,
                    Some(&entry),
                    &new,
                    &self.journal,
                    &self.sinks_stop,
                    entry.filter.clone(),
                );
            }
            super::metrics::register_zeros(&new, &self.instrument_list, &started);
            let removed: Vec<&String> = to_stop.iter().filter(|n| !started.contains(n)).collect();
            report.applied.push(format!(
                "sinks: started {started:?}, stopped {removed:?} (a changed sink restarts on its cursor)"
            ));
            self.current.sinks = new.sinks.clone();
        }
        Ok(report)
    }
}

/// The keys whose change needs a restart, comparing the running config with the new one.
fn restart_needed(
    old: &Config,
    new: &Config,
    old_instruments: &HashMap<InstrumentId, Instrument>,
    new_instruments: &HashMap<InstrumentId, Instrument>,
) -> Vec<String> {
    fn differ<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let sorted = |m: &HashMap<InstrumentId, Instrument>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(k, v)| (k.to_string(), format!("{v:?}")))
            .collect()
    };
    let mut out = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            out.push(key.to_string());
        }
    };
    check(
        "engine.instruments",
        old.engine.instruments != new.engine.instruments
            || sorted(old_instruments) != sorted(new_instruments),
    );
    check(
        "engine.after_trigger",
        old.engine.after_trigger != new.engine.after_trigger,
    );
    check(
        "engine.warn_before_funding",
        old.engine.warn_before_funding != new.engine.warn_before_funding,
    );
    check(
        "accounts.nats",
        differ(&old.accounts.nats, &new.accounts.nats),
    );
    // Venue feeds reload live; a replay plays its file once.
    let replays = |c: &Config| -> String {
        let r: Vec<_> = c
            .feeds
            .iter()
            .filter(|e| !matches!(e.source, crate::config::FeedSource::Venue(_)))
            .collect();
        format!("{r:?}")
    };
    check("feeds (replay)", replays(old) != replays(new));
    check("prices", differ(&old.prices, &new.prices));
    check("journal", differ(&old.journal, &new.journal));
    check(
        "api.enabled / bind / max_body_bytes / limits",
        old.api.enabled != new.api.enabled
            || old.api.bind != new.api.bind
            || old.api.max_body_bytes != new.api.max_body_bytes
            || differ(&old.api.limits, &new.api.limits),
    );
    check("risk", differ(&old.risk, &new.risk));
    check("instruments", differ(&old.instruments, &new.instruments));
    check("log", differ(&old.log, &new.log));
    check("shutdown", differ(&old.shutdown, &new.shutdown));
    out
}
