//! The daemon's one TOML configuration file: raw serde structs (`deny_unknown_fields`) are read
//! section by section and then validated into a [`Config`].
//!
//! Every problem in a file is reported at once, each with the file, line, column and the key it
//! is about (`sinks[1].secret_env`), so a person can fix them all in one pass. Secrets never
//! appear in the file: it names environment variables (`token_env`, `secret_env`,
//! `routing_key_env`) whose values are read at load time into [`Secret`]s, which never print.
//!
//! Relative paths in the file (instrument presets, the account snapshot, the journal, JSONL
//! outputs, replay recordings) are resolved against the directory of the config file.
//!
//! Sections: `[engine]`, `[accounts]`, `[[feeds]]`, `[prices]`, `[journal]`, `[[sinks]]`,
//! `[api]`, `[log]`, `[shutdown]`. `deploy/liqwatch.example.toml` documents every key.
//!
//! The knobs of each component are the component's own config types, read straight from the
//! file: `[prices]` is [`crate::prices::PriceBoardConfig`]; a `[[feeds]]` entry is `venue` /
//! `enabled` / `instruments` / `stale_after` (and `file` / `speed` for a replay) plus
//! [`crate::feeds::FeedConfig`]; a `[[sinks]]` entry is `type` / `name` / `filter`
//! ([`crate::sinks::SinkFilter`]) / `delivery` plus the keys of the sink type's own config,
//! the [`crate::sinks::SinkConfig`] registered under that `type`
//! ([`crate::sinks::register_all`]); this module knows no sink type by name.
//!
//! Why the file is long (about 980 lines): it is the schema of every section and the
//! cross-section checks, in the order of the example file; the span diagnostics live in
//! `config/diagnostics.rs` and the tests in `config/tests.rs`.

mod diagnostics;
mod instruments; // [instruments]: venue responses as an instrument source, refreshed live

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

pub use self::diagnostics::Problem;
use self::diagnostics::{
    Cx, P, find_floats, line_col, problem_key, render_problems, split_table, struct_fields,
};

use crate::engine::monitor::{AfterTrigger, StalePolicy};
use crate::feeds::replay::ReplaySpeed;
use crate::journal::Synchronous;
use crate::model::{Thresholds, Venue};
use crate::prices::PriceBoardConfig;
pub use crate::runtime::secret::Secret;
pub use crate::runtime::telemetry::LogFormat;
use crate::sinks::{SinkConfig, SinkContext, SinkFilter, SinkSettings, SinkTypes};
use crate::sources::{NatsIngestConfig, Shard};

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a config file could not be used. Every variant means exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is invalid; every problem is listed.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, in file order.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validated config
// ---------------------------------------------------------------------------------------------

/// The validated configuration of `liqwatch run`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[engine]`.
    pub engine: EngineConfig,
    /// `[accounts]`.
    pub accounts: AccountsConfig,
    /// `[[feeds]]`, enabled ones only.
    pub feeds: Vec<FeedEntry>,
    /// `[prices]`, with each venue feed's `stale_after` folded into `venue_stale_after`.
    pub prices: PriceBoardConfig,
    /// `[journal]`.
    pub journal: JournalConfig,
    /// `[[sinks]]`.
    pub sinks: Vec<SinkEntry>,
    /// `[api]`.
    pub api: ApiConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[shutdown]`.
    pub shutdown: ShutdownConfig,
    /// `[risk]`: historical VaR/ES for `GET /v1/accounts/{id}/risk`; `None` when absent.
    pub risk: Option<RiskConfig>,
    /// `[[instruments.sources]]`: venue responses read at start-up and refreshed live.
    pub instruments: Vec<crate::instruments::source::InstrumentSourceConfig>,
}

/// `[risk]`: the price history the daemon's risk endpoint uses (`docs/risk.md`).
#[derive(Clone, Debug)]
pub struct RiskConfig {
    /// History files (`*.csv`, `*.json` candles, `*.jsonl` replay), `episode:NAME`, or
    /// `recorded` (the prices the daemon records into its journal).
    pub history: Vec<String>,
    /// Horizon text (`4h`) and its milliseconds.
    pub horizon: (String, i64),
    /// Confidence level α.
    pub alpha: Decimal,
    /// Explicit history symbol → underlying maps.
    pub map: BTreeMap<String, String>,
    /// The daemon's scheduled recompute, recorded prices and warnings (`docs/risk.md`).
    pub schedule: crate::risk::schedule::RiskSchedule,
}

/// `[engine]`: instruments and levels.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Instrument preset files (TOML, `[[instrument]]` and `include`), resolved.
    pub instruments: Vec<PathBuf>,
    /// Default levels (accounts may override their own).
    pub thresholds: Thresholds,
    /// Trigger policy on stale prices (default `fire`).
    pub trigger_on_stale: StalePolicy,
    /// After a trigger: keep watching the account (default) or mark it liquidated until its
    /// next account update (`after_trigger`).
    pub after_trigger: AfterTrigger,
    /// Wake only the accounts a tick can move across a level (`distance_index`, default
    /// true); false revalues every holder on every tick.
    pub distance_index: bool,
    /// Warn this long before a funding time about accounts whose margin ratio after the
    /// payment would cross a level (`warn_before_funding`, e.g. `"10m"`; unset: off).
    pub warn_before_funding: Option<Duration>,
}

/// `[accounts]`: where accounts come from.
#[derive(Clone, Debug, Default)]
pub struct AccountsConfig {
    /// A JSON snapshot that seeds the account store when it is empty (first start).
    pub snapshot: Option<PathBuf>,
    /// `[accounts.nats]`: a JetStream durable consumer of account updates.
    pub nats: Option<NatsIngestConfig>,
    /// `update_id_window` / `update_id_limit`: how long applied update ids are remembered.
    pub update_ids: crate::journal::UpdateIdWindow,
    /// `apply_funding`: the daemon applies each funding settlement to the collateral of the
    /// accounts from the snapshot file and the HTTP API (for sources that do not report
    /// balances; see `engine::settlement`). Default false.
    pub apply_funding: bool,
    /// `[accounts.nats] apply_funding`: the same for accounts from NATS. Default false.
    pub apply_funding_nats: bool,
}

/// Where a `[[feeds]]` entry gets its prices.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedSource {
    /// A live venue WebSocket.
    Venue(Venue),
    /// A recorded JSONL file replayed through the venue parsers.
    Replay {
        /// The recording.
        file: PathBuf,
        /// Playback speed.
        speed: ReplaySpeed,
    },
}

/// One enabled `[[feeds]]` entry.
#[derive(Clone, Debug)]
pub struct FeedEntry {
    /// Where prices come from.
    pub source: FeedSource,
    /// Only these canonical instruments (empty = every instrument the venue prices).
    pub instruments: Vec<String>,
    /// The driver's knobs (url override, timeouts, backoff, …); unused by replay feeds.
    pub driver: crate::feeds::FeedConfig,
}

impl FeedEntry {
    /// A short name for logs (`binance-usdm`, `replay`).
    pub fn name(&self) -> String {
        match &self.source {
            FeedSource::Venue(venue) => venue.to_string(),
            FeedSource::Replay { .. } => "replay".to_string(),
        }
    }
}

/// `[journal]`.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// SQLite file.
    pub path: PathBuf,
    /// Delivered events older than this are pruned (never undelivered ones).
    pub retention: Duration,
    /// SQLite `synchronous`: `full` (default) or `normal`.
    pub synchronous: Synchronous,
    /// While writes fail, at most about this many events wait in memory: past it the engine
    /// stops taking prices until the journal writes again (`max_buffered_events`).
    pub max_buffered_events: usize,
}

/// One `[[sinks]]` entry.
#[derive(Clone, Debug)]
pub struct SinkEntry {
    /// Unique name (cursor, metrics label, logs).
    pub name: String,
    /// Which events it receives.
    pub filter: SinkFilter,
    /// Delivery tuning (`delivery = { batch_size = …, backoff_max = "30s", … }`); `None` =
    /// defaults, with the drain grace taken from `[shutdown] grace`.
    pub delivery: Option<crate::sinks::DriverOptions>,
    /// The `type` as written in the file (a name in [`crate::sinks::type_names`]).
    pub type_name: &'static str,
    /// The sink type's validated settings (secrets resolved); they build the sink.
    pub settings: Arc<dyn SinkSettings>,
}

impl SinkEntry {
    /// The settings as the sink type's own settings type, if that is `T`.
    pub fn settings_as<T: SinkSettings>(&self) -> Option<&T> {
        (self.settings.as_ref() as &dyn Any).downcast_ref::<T>()
    }

    /// Builds the sink.
    pub fn build(&self) -> Result<Box<dyn crate::sinks::Sink>, crate::sinks::SinkBuildError> {
        self.settings.build(&self.name)
    }
}

/// `[api]`.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Serve the HTTP API.
    pub enabled: bool,
    /// Listen address (default `127.0.0.1:9477`: localhost only).
    pub bind: SocketAddr,
    /// Bearer token for mutating endpoints (from `token_env`); `None` = mutations refused.
    pub token: Option<Secret>,
    /// A file holding the bearer token instead (`token_file`), read at start and again on
    /// SIGHUP, so a rotated token (a Kubernetes Secret volume, systemd credentials) takes
    /// effect without a restart.
    pub token_file: Option<PathBuf>,
    /// Maximum request body size.
    pub max_body_bytes: usize,
    /// Header-read and idle timeouts, connection cap (`header_read_timeout`, `idle_timeout`,
    /// `max_connections`); the cap is lowered to the descriptor budget at start.
    pub limits: crate::api::ServeLimits,
}

/// `[log]`.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// `tracing` filter directive (`info`, `liqwatch=debug,info`).
    pub level: String,
}

/// `[shutdown]`.
#[derive(Clone, Debug)]
pub struct ShutdownConfig {
    /// How long sinks may drain after a signal before the daemon exits anyway.
    pub grace: Duration,
}

/// Default API listen address.
pub const DEFAULT_API_BIND: &str = "127.0.0.1:9477";

// ---------------------------------------------------------------------------------------------
// Raw file structs
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    instruments: Option<Vec<String>>,
    warning_levels: Option<Vec<String>>,
    trigger: Option<String>,
    hysteresis: Option<String>,
    warn_within_shock: Option<Vec<String>>,
    shock_hysteresis: Option<String>,
    trigger_on_stale: Option<String>,
    distance_index: Option<bool>,
    after_trigger: Option<String>,
    #[serde(default, with = "humantime_serde")]
    warn_before_funding: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccounts {
    snapshot: Option<String>,
    nats: Option<RawAccountsNats>,
    #[serde(default, with = "humantime_serde")]
    update_id_window: Option<Duration>,
    update_id_limit: Option<u64>,
    apply_funding: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccountsNats {
    url: String,
    subject: Option<String>,
    stream: Option<String>,
    durable: Option<String>,
    token_env: Option<String>,
    create_stream: Option<bool>,
    stream_subjects: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    ack_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    nak_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    shard_index: Option<u32>,
    shard_count: Option<u32>,
    apply_funding: Option<bool>,
}

/// The keys of a `[[feeds]]` entry the daemon reads itself; the rest go to the driver.
const FEED_KEYS: &[&str] = &[
    "venue",
    "enabled",
    "instruments",
    "stale_after",
    "file",
    "speed",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    venue: String,
    enabled: Option<bool>,
    instruments: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    stale_after: Option<Duration>,
    file: Option<String>,
    speed: Option<RawSpeed>,
}

/// A replay's `speed`: a factor of real time is not money, so a TOML integer is taken as well as
/// a string (`speed = 600`, `speed = "600"`, `speed = "2.5"`, `speed = "max"`; floats are refused
/// for every key); parsed by [`ReplaySpeed`].
struct RawSpeed(String);

impl<'de> Deserialize<'de> for RawSpeed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawSpeed;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a factor of real time (600, \"2.5\" or \"max\")")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSpeed, E> {
                Ok(RawSpeed(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSpeed, E> {
                Ok(RawSpeed(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSpeed, E> {
                Ok(RawSpeed(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    path: Option<String>,
    #[serde(default, with = "humantime_serde")]
    retention: Option<Duration>,
    synchronous: Option<Synchronous>,
    max_buffered_events: Option<usize>,
}

/// The keys of a `[[sinks]]` entry the daemon reads itself (the fields of [`RawSink`]); the
/// rest go to the sink type's own config. `kinds` / `min_severity` / `accounts` are also
/// accepted at the top of the entry, as a shorthand for the same keys in `filter`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    filter: Option<SinkFilter>,
    delivery: Option<crate::sinks::DriverOptions>,
    kinds: Option<std::collections::BTreeSet<crate::model::EventKind>>,
    min_severity: Option<crate::sinks::Severity>,
    accounts: Option<std::collections::BTreeSet<crate::model::AccountId>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    enabled: Option<bool>,
    bind: Option<String>,
    token_env: Option<String>,
    token_file: Option<String>,
    max_body_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    max_connections: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRisk {
    history: Option<Vec<String>>,
    horizon: Option<String>,
    alpha: Option<String>,
    map: Option<BTreeMap<String, String>>,
    every: Option<String>,
    record_every: Option<String>,
    record_keep: Option<String>,
    warn_p_liquidation: Option<Vec<String>>,
    warn_es_to_equity: Option<Vec<String>>,
    warn_hysteresis: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    #[serde(default, with = "humantime_serde")]
    grace: Option<Duration>,
}

const SECTIONS: &[&str] = &[
    "engine",
    "accounts",
    "feeds",
    "prices",
    "journal",
    "sinks",
    "api",
    "log",
    "shutdown",
    "risk",
    "instruments",
];

/// Every top-level section the file accepts (the example config documents each).
pub fn known_sections() -> BTreeSet<&'static str> {
    SECTIONS.iter().copied().collect()
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Reads and validates a config file, taking secrets from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, &|name| std::env::var(name).ok())
}

/// What [`load_without_env`] reads every environment variable as: shaped to pass the checks
/// of any value taken from the environment (a secret is any non-empty string; `url_env` must be
/// an http(s) URL), so only the file itself is judged.
pub const NO_ENV_PLACEHOLDER: &str = "https://no-env.liqwatch.invalid/";

/// Reads and validates a config file without reading the environment (`check-config
/// --no-env`, for CI): a variable a key names must be a valid name, but need not be set; every
/// one reads as [`NO_ENV_PLACEHOLDER`]. For validation only, never to run with.
pub fn load_without_env(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, &|_| Some(NO_ENV_PLACEHOLDER.to_string()))
}

/// Validates config text. `path` is used for messages and to resolve relative paths; `env`
/// looks up environment variables (injected so tests need not touch the process environment).
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let root = match DeTable::parse(text) {
        Ok(t) => t.into_inner(),
        Err(e) => {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: vec![Problem {
                    line,
                    column,
                    key: String::new(),
                    message: format!("TOML syntax: {}", e.message().trim()),
                }],
            });
        }
    };
    let mut cx = Cx {
        text,
        root: Some(&root),
        problems: Vec::new(),
        base,
        env,
    };
    // No value in this file is a binary float: money, levels and fractions are decimal strings.
    let mut floats = Vec::new();
    find_floats(&root, "", &mut floats);
    for (key, span) in floats {
        let (line, column) = line_col(text, span.start);
        cx.problems.push(Problem {
            line,
            column,
            key,
            message: "a TOML float is not accepted: write money, levels and fractions as decimal strings (\"0.2\") and durations as \"10s\"".into(),
        });
    }
    for (k, _) in root.iter() {
        if !SECTIONS.contains(&k.get_ref().as_ref()) {
            let (line, column) = line_col(text, k.span().start);
            cx.problems.push(Problem {
                line,
                column,
                key: k.get_ref().to_string(),
                message: format!("unknown section, expected one of: {}", SECTIONS.join(", ")),
            });
        }
    }

    let engine = cx.section::<RawEngine>("engine").and_then(|r| cx.engine(r));
    let accounts = cx
        .section::<RawAccounts>("accounts")
        .map(|r| cx.accounts(r))
        .unwrap_or_default();
    let mut prices = cx.section::<PriceBoardConfig>("prices");
    if prices
        .as_ref()
        .is_some_and(|p| p.spike_fraction <= Decimal::ZERO)
    {
        cx.problem(
            &[P::K("prices"), P::K("spike_fraction")],
            "must be above 0 (\"0.2\" = a 20 % jump is held until confirmed)",
        );
    }
    for (key, message) in prices
        .as_ref()
        .map(|p| p.spike_problems())
        .unwrap_or_default()
    {
        cx.problem(&[P::K("prices"), P::K(key)], message);
    }
    let feeds = cx.feeds(prices.as_mut());
    let journal = cx
        .section::<RawJournal>("journal")
        .and_then(|r| cx.journal(r));
    let sinks = cx.sinks();
    let api = cx.section::<RawApi>("api").and_then(|r| cx.api(r));
    let log = cx.section::<RawLog>("log").and_then(|r| cx.log(r));
    let shutdown = cx
        .section::<RawShutdown>("shutdown")
        .map(|r| ShutdownConfig {
            grace: r.grace.unwrap_or(Duration::from_secs(10)),
        });

    let risk = cx.section::<RawRisk>("risk").and_then(|r| cx.risk(r));
    let instrument_sources = cx
        .section::<instruments::RawInstruments>("instruments")
        .map(|r| cx.instruments(r))
        .unwrap_or_default();

    let mut problems = cx.problems;
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        // One problem per key and line (a float is reported once, not also by serde).
        problems.dedup_by(|a, b| a.line == b.line && a.key == b.key);
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        });
    }
    match (engine, journal, prices, api, log, shutdown) {
        (Some(engine), Some(journal), Some(prices), Some(api), Some(log), Some(shutdown)) => {
            Ok(Config {
                path: path.to_path_buf(),
                engine,
                accounts,
                feeds,
                prices,
                journal,
                sinks,
                api,
                log,
                shutdown,
                risk,
                instruments: instrument_sources,
            })
        }
        // Every `None` above recorded a problem; report rather than panic if one did not.
        _ => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line: 1,
                column: 1,
                key: String::new(),
                message: "invalid configuration".into(),
            }],
        }),
    }
}

impl Cx<'_, '_> {
    fn decimal(&mut self, path: &[P<'_>], s: &str) -> Option<Decimal> {
        match s.trim().parse::<Decimal>() {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(path, format!("{s:?} is not a decimal number ({e})"));
                None
            }
        }
    }

    fn path(&self, s: &str) -> PathBuf {
        let p = PathBuf::from(s);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn secret(&mut self, path: &[P<'_>], env_name: Option<&str>) -> Option<Secret> {
        let name = env_name?;
        match crate::runtime::secret::read_named_env(self.env, name) {
            Ok(v) => Some(Secret::from_env(name, v)),
            Err(e) => {
                self.problem(path, e);
                None
            }
        }
    }

    fn engine(&mut self, raw: RawEngine) -> Option<EngineConfig> {
        let e = P::K("engine");
        let instruments = match raw.instruments {
            Some(v) if !v.is_empty() => v.iter().map(|s| self.path(s)).collect(),
            _ => {
                self.problem(
                    &[e, P::K("instruments")],
                    "required: list the instrument preset files, e.g. instruments = [\"feeds/presets.toml\"]",
                );
                Vec::new()
            }
        };
        let d = Thresholds::default();
        let mut warning_levels = Vec::new();
        match &raw.warning_levels {
            Some(levels) => {
                for (i, s) in levels.iter().enumerate() {
                    if let Some(v) = self.decimal(&[e, P::K("warning_levels"), P::I(i)], s) {
                        warning_levels.push(v);
                    }
                }
            }
            None => warning_levels = d.warning_levels.clone(),
        }
        let trigger = match &raw.trigger {
            Some(s) => self.decimal(&[e, P::K("trigger")], s).unwrap_or(d.trigger),
            None => d.trigger,
        };
        let hysteresis = match &raw.hysteresis {
            Some(s) => self
                .decimal(&[e, P::K("hysteresis")], s)
                .unwrap_or(d.hysteresis),
            None => d.hysteresis,
        };
        let mut warn_within_shock = Vec::new();
        for (i, s) in raw.warn_within_shock.iter().flatten().enumerate() {
            match crate::model::parse_fraction(s) {
                Ok(v) => warn_within_shock.push(v),
                Err(msg) => self.problem(
                    &[e, P::K("warn_within_shock"), P::I(i)],
                    format!("{msg} (write a fraction: \"10%\" or \"0.1\")"),
                ),
            }
        }
        let shock_hysteresis = match &raw.shock_hysteresis {
            Some(s) => crate::model::parse_fraction(s).unwrap_or_else(|msg| {
                self.problem(
                    &[e, P::K("shock_hysteresis")],
                    format!("{msg} (write a fraction: \"1%\" or \"0.01\")"),
                );
                d.shock_hysteresis
            }),
            None => d.shock_hysteresis,
        };
        let thresholds = Thresholds {
            warning_levels,
            trigger,
            hysteresis,
            warn_within_shock,
            shock_hysteresis,
        };
        if let Err(msg) = thresholds.validate() {
            let key = if msg.contains("shock_hysteresis") {
                "shock_hysteresis"
            } else if msg.contains("distance level") {
                "warn_within_shock"
            } else if msg.contains("hysteresis") {
                "hysteresis"
            } else if msg.contains("trigger") && !msg.contains("warning") {
                "trigger"
            } else {
                "warning_levels"
            };
            self.problem(&[e, P::K(key)], msg);
        }
        let trigger_on_stale = match raw.trigger_on_stale.as_deref() {
            None | Some("fire") => StalePolicy::Fire,
            Some("hold") => StalePolicy::Hold,
            Some(o) => {
                self.problem(
                    &[e, P::K("trigger_on_stale")],
                    format!("{o:?}: expected \"fire\" or \"hold\""),
                );
                StalePolicy::Fire
            }
        };
        let after_trigger = match raw.after_trigger.as_deref() {
            None | Some("keep_watching") => AfterTrigger::KeepWatching,
            Some("mark_liquidated") => AfterTrigger::MarkLiquidated,
            Some(o) => {
                self.problem(
                    &[e, P::K("after_trigger")],
                    format!("{o:?}: expected \"keep_watching\" or \"mark_liquidated\""),
                );
                AfterTrigger::KeepWatching
            }
        };
        Some(EngineConfig {
            instruments,
            thresholds,
            trigger_on_stale,
            after_trigger,
            distance_index: raw.distance_index.unwrap_or(true),
            warn_before_funding: raw.warn_before_funding.filter(|d| !d.is_zero()),
        })
    }

    fn accounts(&mut self, raw: RawAccounts) -> AccountsConfig {
        let snapshot = raw.snapshot.as_deref().map(|s| self.path(s));
        let apply_funding_nats = raw
            .nats
            .as_ref()
            .and_then(|n| n.apply_funding)
            .unwrap_or(false);
        let nats = raw.nats.map(|n| {
            let at = |k: &'static str| [P::K("accounts"), P::K("nats"), P::K(k)];
            let d = NatsIngestConfig::default();
            if !n.url.starts_with("nats://") && !n.url.starts_with("tls://") {
                self.problem(
                    &at("url"),
                    format!("{:?}: expected a nats:// or tls:// URL", n.url),
                );
            }
            let token = self
                .secret(&at("token_env"), n.token_env.as_deref())
                .map(|s| s.expose().to_string());
            let shard = match (n.shard_index, n.shard_count) {
                (None, None) => None,
                (Some(index), Some(count)) if count > 0 && index < count => {
                    Some(Shard { index, count })
                }
                _ => {
                    self.problem(
                        &at("shard_index"),
                        "set both shard_index and shard_count, with shard_index < shard_count",
                    );
                    None
                }
            };
            NatsIngestConfig {
                url: n.url,
                token,
                stream: n.stream.unwrap_or(d.stream),
                subject: n.subject.unwrap_or(d.subject),
                durable: n.durable.unwrap_or(d.durable),
                create_stream: n.create_stream.unwrap_or(d.create_stream),
                stream_subjects: n.stream_subjects,
                ack_wait: n.ack_wait.unwrap_or(d.ack_wait),
                nak_delay: n.nak_delay.unwrap_or(d.nak_delay),
                timeout: n.timeout.unwrap_or(d.timeout),
                shard,
            }
        });
        let d = crate::journal::UpdateIdWindow::default();
        let update_ids = crate::journal::UpdateIdWindow {
            max_ids: raw.update_id_limit.unwrap_or(d.max_ids),
            max_age: raw.update_id_window.unwrap_or(d.max_age),
        };
        if update_ids.max_ids == 0 {
            self.problem(
                &[P::K("accounts"), P::K("update_id_limit")],
                "must be at least 1 (a window that keeps no id would apply every retry again)",
            );
        }
        if update_ids.max_age.is_zero() {
            self.problem(
                &[P::K("accounts"), P::K("update_id_window")],
                "must be longer than 0s (a window that keeps no id would apply every retry again)",
            );
        }
        AccountsConfig {
            snapshot,
            nats,
            update_ids,
            apply_funding: raw.apply_funding.unwrap_or(false),
            apply_funding_nats,
        }
    }

    /// Reads every `[[feeds]]` entry; each venue feed's `stale_after` goes into the price
    /// board's per-venue limits. A replay's `stale_after` is the limit of the venues its
    /// recording plays, which only the file knows: it goes to every venue whose limit neither a
    /// live feed nor `[prices] venue_stale_after` sets (the shortest, with several replays),
    /// so the key is never silently ignored.
    fn feeds(&mut self, mut prices: Option<&mut PriceBoardConfig>) -> Vec<FeedEntry> {
        let items = self.entries("feeds");
        if items.is_empty() && !self.problems.iter().any(|p| p.key.starts_with("feeds")) {
            self.problem(
                &[],
                "no [[feeds]]: add at least one price feed (a venue, or venue = \"replay\" with a file)",
            );
        }
        let mut out = Vec::new();
        let mut venues = HashSet::new();
        let mut replay_limit: Option<Duration> = None;
        for (i, item) in items.into_iter().enumerate() {
            let at = |k: &'static str| [P::K("feeds"), P::I(i), P::K(k)];
            let Some((mine, rest)) = split_table(&item, FEED_KEYS) else {
                continue;
            };
            let Some(raw) = self.de::<RawFeed>(mine, &[P::K("feeds"), P::I(i)]) else {
                continue;
            };
            let driver = self
                .de::<crate::feeds::FeedConfig>(rest, &[P::K("feeds"), P::I(i)])
                .unwrap_or_default();
            let source = if raw.venue == "replay" {
                let file = match raw.file.as_deref() {
                    Some(f) => self.path(f),
                    None => {
                        self.problem(
                            &at("venue"),
                            "a replay feed needs file = \"<recording.jsonl>\"",
                        );
                        PathBuf::new()
                    }
                };
                let speed = match raw.speed.as_ref().map(|s| s.0.as_str()) {
                    None => ReplaySpeed::Factor(1.0),
                    Some(s) => match s.parse::<ReplaySpeed>() {
                        Ok(sp) => sp,
                        Err(e) => {
                            self.problem(&at("speed"), e);
                            ReplaySpeed::Max
                        }
                    },
                };
                if raw.enabled != Some(false)
                    && let Some(sa) = raw.stale_after
                {
                    replay_limit = Some(replay_limit.map_or(sa, |r| r.min(sa)));
                }
                FeedSource::Replay { file, speed }
            } else {
                if raw.file.is_some() || raw.speed.is_some() {
                    let k = if raw.file.is_some() { "file" } else { "speed" };
                    self.problem(&at(k), "file and speed are for venue = \"replay\" only");
                }
                let Some(venue) = Venue::parse(&raw.venue) else {
                    let names: Vec<&str> = Venue::ALL.iter().map(|v| v.as_str()).collect();
                    self.problem(
                        &at("venue"),
                        format!(
                            "unknown venue {:?}, expected one of: {}, replay",
                            raw.venue,
                            names.join(", ")
                        ),
                    );
                    continue;
                };
                if let Some(u) = &driver.url
                    && !(u.starts_with("ws://") || u.starts_with("wss://"))
                {
                    self.problem(&at("url"), format!("{u:?}: expected a ws:// or wss:// URL"));
                }
                if raw.enabled != Some(false) && !venues.insert(venue) {
                    self.problem(
                        &at("venue"),
                        format!("{venue} is configured twice; use one [[feeds]] entry per venue"),
                    );
                }
                if let (Some(sa), Some(p)) = (raw.stale_after, prices.as_deref_mut()) {
                    p.venue_stale_after
                        .insert(venue, humantime_serde::Serde::from(sa));
                }
                FeedSource::Venue(venue)
            };
            if raw.stale_after.is_some_and(|d| d.is_zero()) {
                self.problem(&at("stale_after"), "must be longer than zero");
            }
            if driver.backoff_max < driver.backoff_initial {
                self.problem(&at("backoff_max"), "must be at least backoff_initial");
            }
            if raw.enabled == Some(false) {
                continue;
            }
            out.push(FeedEntry {
                source,
                instruments: raw.instruments.unwrap_or_default(),
                driver,
            });
        }
        if let (Some(sa), Some(p)) = (replay_limit, prices) {
            for v in Venue::ALL {
                p.venue_stale_after
                    .entry(v)
                    .or_insert(humantime_serde::Serde::from(sa));
            }
        }
        out
    }

    fn journal(&mut self, raw: RawJournal) -> Option<JournalConfig> {
        let path = match raw.path.as_deref() {
            Some(p) if !p.is_empty() => self.path(p),
            _ => {
                self.problem(
                    &[P::K("journal"), P::K("path")],
                    "required: where the SQLite event journal lives, e.g. path = \"/var/lib/liqwatch/journal.db\"",
                );
                PathBuf::new()
            }
        };
        if raw.max_buffered_events == Some(0) {
            self.problem(
                &[P::K("journal"), P::K("max_buffered_events")],
                "must be at least 1",
            );
        }
        Some(JournalConfig {
            path,
            retention: raw.retention.unwrap_or(Duration::from_secs(7 * 86_400)),
            synchronous: raw.synchronous.unwrap_or_default(),
            max_buffered_events: raw
                .max_buffered_events
                .unwrap_or(crate::journal::DEFAULT_BUFFER_LIMIT),
        })
    }

    /// Reports a component's validation messages (`"secret_env: …"`) under the key they name.
    fn component_problems(&mut self, i: usize, errors: Vec<String>, keys: &[&str]) {
        for e in errors {
            let k = problem_key(&e, keys).unwrap_or("type");
            self.problem(&[P::K("sinks"), P::I(i), P::K(k)], e);
        }
    }

    fn sinks(&mut self) -> Vec<SinkEntry> {
        let items = self.entries("sinks");
        let mut out: Vec<SinkEntry> = Vec::new();
        let mut names = HashSet::new();
        for (i, item) in items.into_iter().enumerate() {
            let here = [P::K("sinks"), P::I(i)];
            let at = |k: &'static str| [P::K("sinks"), P::I(i), P::K(k)];
            let Some((mine, rest)) = split_table(&item, struct_fields::<RawSink>()) else {
                continue;
            };
            // Every mistake in the table is reported in one pass: the common keys, the type's
            // keys and the type's own checks, each as far as the others allow.
            let Some((raw, bad_common)) = self.de_partial::<RawSink>(mine, &here) else {
                continue;
            };
            let shorthand =
                raw.kinds.is_some() || raw.min_severity.is_some() || raw.accounts.is_some();
            if shorthand && raw.filter.is_some() {
                self.problem(
                    &at("filter"),
                    "set kinds / min_severity / accounts either in filter = { … } or at the top of the sink, not both",
                );
            }
            let filter = raw.filter.clone().unwrap_or_else(|| SinkFilter {
                kinds: raw.kinds.clone().unwrap_or_default(),
                min_severity: raw.min_severity.unwrap_or_default(),
                accounts: raw.accounts.clone().unwrap_or_default(),
            });
            let name = raw.name.clone().unwrap_or_else(|| raw.kind.clone());
            if name.is_empty() {
                self.problem(&at("name"), "must not be empty");
            } else if !names.insert(name.clone()) {
                self.problem(
                    &at("name"),
                    format!(
                        "duplicate sink name {name:?}: each sink needs its own name (it keys its delivery cursor)"
                    ),
                );
            }
            let mut reader = SinkReader {
                cx: self,
                index: i,
                type_name: &raw.kind,
                value: Some(rest),
                found: None,
            };
            crate::sinks::register_all(&mut reader);
            match reader.found {
                Some(Some(_)) if !bad_common.is_empty() => {}
                Some(Some((type_name, settings))) => out.push(SinkEntry {
                    name,
                    filter,
                    delivery: raw.delivery,
                    type_name,
                    settings,
                }),
                Some(None) => {}
                None => self.problem(
                    &at("type"),
                    format!(
                        "unknown sink type {:?}, expected one of: {}",
                        raw.kind,
                        crate::sinks::type_names().join(", ")
                    ),
                ),
            }
        }
        out
    }

    /// `[risk]`: `None` when the section is absent or has no key.
    fn risk(&mut self, raw: RawRisk) -> Option<RiskConfig> {
        if raw.history.is_none()
            && raw.horizon.is_none()
            && raw.alpha.is_none()
            && raw.map.is_none()
            && raw.every.is_none()
            && raw.record_every.is_none()
            && raw.record_keep.is_none()
            && raw.warn_p_liquidation.is_none()
            && raw.warn_es_to_equity.is_none()
            && raw.warn_hysteresis.is_none()
        {
            return None;
        }
        let history: Vec<String> = raw
            .history
            .unwrap_or_default()
            .into_iter()
            .map(|h| {
                if h.starts_with("episode:") || h == crate::risk::schedule::RECORDED {
                    h
                } else {
                    self.path(&h).display().to_string()
                }
            })
            .collect();
        if history.is_empty() {
            self.problem(
                &[P::K("risk"), P::K("history")],
                "list at least one history file (e.g. [\"history/BTC_USDT-5m.json\"]) or \"episode:crash-2021-05-19\"",
            );
        }
        let horizon_text = raw.horizon.unwrap_or_else(|| "1d".into());
        let horizon = match crate::risk::scenarios::parse_horizon(&horizon_text) {
            Ok(ms) => ms,
            Err(e) => {
                self.problem(&[P::K("risk"), P::K("horizon")], e);
                0
            }
        };
        let alpha_text = raw.alpha.unwrap_or_else(|| "0.99".into());
        let alpha = match crate::model::parse_exact(alpha_text.trim()) {
            Ok(a) if a > Decimal::ZERO && a < Decimal::ONE => a,
            _ => {
                self.problem(
                    &[P::K("risk"), P::K("alpha")],
                    format!("{alpha_text:?} must be a decimal between 0 and 1 (e.g. \"0.99\")"),
                );
                Decimal::ZERO
            }
        };
        let schedule = crate::risk::schedule::RawRiskSchedule {
            every: raw.every,
            record_every: raw.record_every,
            record_keep: raw.record_keep,
            warn_p_liquidation: raw.warn_p_liquidation,
            warn_es_to_equity: raw.warn_es_to_equity,
            warn_hysteresis: raw.warn_hysteresis,
        };
        let schedule = match schedule.check() {
            Ok(s) => s,
            Err(problems) => {
                for (key, message) in problems {
                    self.problem(&[P::K("risk"), P::K(key)], message);
                }
                crate::risk::schedule::RiskSchedule::default()
            }
        };
        Some(RiskConfig {
            history,
            horizon: (horizon_text, horizon),
            alpha,
            map: raw.map.unwrap_or_default(),
            schedule,
        })
    }

    fn api(&mut self, raw: RawApi) -> Option<ApiConfig> {
        let bind_s = raw.bind.as_deref().unwrap_or(DEFAULT_API_BIND);
        let bind = match bind_s.parse::<SocketAddr>() {
            Ok(b) => b,
            Err(e) => {
                self.problem(
                    &[P::K("api"), P::K("bind")],
                    format!("{bind_s:?} is not an address:port ({e}); e.g. \"127.0.0.1:9477\""),
                );
                SocketAddr::from(([127, 0, 0, 1], 9477))
            }
        };
        let token = self.secret(&[P::K("api"), P::K("token_env")], raw.token_env.as_deref());
        let token_file = raw.token_file.as_deref().map(|s| self.path(s));
        if raw.token_env.is_some() && token_file.is_some() {
            self.problem(
                &[P::K("api"), P::K("token_file")],
                "set token_env or token_file, not both",
            );
        }
        let defaults = crate::api::ServeLimits::default();
        let mut limits = defaults;
        for (key, value, slot) in [
            (
                "header_read_timeout",
                raw.header_read_timeout,
                &mut limits.header_read_timeout,
            ),
            ("idle_timeout", raw.idle_timeout, &mut limits.idle_timeout),
        ] {
            match value {
                Some(d) if d.is_zero() => self.problem(
                    &[P::K("api"), P::K(key)],
                    format!("{key} must be longer than 0 (e.g. \"10s\")"),
                ),
                Some(d) => *slot = d,
                None => {}
            }
        }
        match raw.max_connections {
            Some(0) => self.problem(
                &[P::K("api"), P::K("max_connections")],
                "max_connections must be at least 1",
            ),
            Some(n) => limits.max_connections = n,
            None => {}
        }
        Some(ApiConfig {
            enabled: raw.enabled.unwrap_or(true),
            bind,
            token,
            token_file,
            max_body_bytes: raw.max_body_bytes.unwrap_or(crate::api::DEFAULT_BODY_LIMIT),
            limits,
        })
    }

    fn log(&mut self, raw: RawLog) -> Option<LogConfig> {
        let format = match raw.format.as_deref() {
            None => LogFormat::Text,
            Some(s) => LogFormat::parse(s).unwrap_or_else(|| {
                self.problem(
                    &[P::K("log"), P::K("format")],
                    format!("{s:?}: expected \"text\" or \"json\""),
                );
                LogFormat::Text
            }),
        };
        let level = raw.level.unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
            self.problem(
                &[P::K("log"), P::K("level")],
                format!(
                    "{level:?} is not a log filter ({e}); e.g. \"info\" or \"liqwatch=debug,info\""
                ),
            );
        }
        Some(LogConfig { format, level })
    }
}

/// Reads a `[[sinks]]` entry's own keys with the config type its `type` names, visiting the
/// registered sink types ([`crate::sinks::register_all`]).
struct SinkReader<'c, 'a, 'r, 't> {
    cx: &'c mut Cx<'a, 'r>,
    /// The entry's index in `[[sinks]]`.
    index: usize,
    /// The entry's `type`.
    type_name: &'t str,
    /// The entry's keys other than the common ones; taken by the matching type.
    value: Option<Spanned<DeValue<'a>>>,
    /// `None`: no registered type has this name. `Some(None)`: it has, and the entry's problems
    /// are recorded. `Some(Some(_))`: the validated settings.
    found: Option<Option<(&'static str, Arc<dyn SinkSettings>)>>,
}

impl SinkTypes for SinkReader<'_, '_, '_, '_> {
    fn register<C: SinkConfig>(&mut self) {
        if C::TYPE != self.type_name {
            return;
        }
        let Some(value) = self.value.take() else {
            return;
        };
        let i = self.index;
        let settings = match self.cx.de_partial::<C>(value, &[P::K("sinks"), P::I(i)]) {
            None => None,
            Some((config, bad)) => {
                let resolved = config.into_settings(&SinkContext {
                    env: self.cx.env,
                    base_dir: &self.cx.base,
                });
                match resolved {
                    Ok(settings) if bad.is_empty() => {
                        Some((C::TYPE, Arc::new(settings) as Arc<dyn SinkSettings>))
                    }
                    Ok(_) => None,
                    Err(errors) => {
                        // Not again about a key already reported (and left out) above.
                        let errors = errors
                            .into_iter()
                            .filter(|e| {
                                !bad.iter().any(|b| {
                                    e.starts_with(b.as_str()) || e.contains(&format!(" {b}"))
                                })
                            })
                            .collect();
                        self.cx.component_problems(i, errors, struct_fields::<C>());
                        None
                    }
                }
            }
        };
        self.found = Some(settings);
    }
}

#[cfg(test)]
mod tests;
