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

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::model::{AccountId, EventKind, Thresholds, Venue};

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the key or value concerned (0 when unknown).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path (`sinks[1].secret_env`); empty for the whole file.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

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

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut s = format!(
        "invalid config file {} ({} problem{}):",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str(&format!(
            "\n  {}:{}:{}: {}{}{}",
            path.display(),
            p.line,
            p.column,
            p.key,
            if p.key.is_empty() { "" } else { ": " },
            p.message
        ));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

/// A secret read from the environment. Its `Debug`/`Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    env: String,
    value: String,
}

impl Secret {
    /// Wraps a value read from environment variable `env`.
    pub fn new(env: impl Into<String>, value: impl Into<String>) -> Self {
        Secret {
            env: env.into(),
            value: value.into(),
        }
    }
    /// The secret value. Never log it.
    pub fn expose(&self) -> &str {
        &self.value
    }
    /// The environment variable it came from.
    pub fn env_name(&self) -> &str {
        &self.env
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(${}, redacted)", self.env)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${} (redacted)", self.env)
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
    pub feeds: Vec<FeedConfig>,
    /// `[prices]`.
    pub prices: PricesConfig,
    /// `[journal]`.
    pub journal: JournalConfig,
    /// `[[sinks]]`.
    pub sinks: Vec<SinkConfig>,
    /// `[api]`.
    pub api: ApiConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[shutdown]`.
    pub shutdown: ShutdownConfig,
}

/// What to do when an account reaches the trigger level on a stale price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StalePolicy {
    /// Emit the trigger anyway (flagged `stale_prices: true`).
    Fire,
    /// Hold the trigger until a fresh price confirms it (warnings still fire, flagged).
    Hold,
}

/// `[engine]`: instruments and levels.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Instrument preset files (TOML, `[[instrument]]`), resolved.
    pub instruments: Vec<PathBuf>,
    /// Default levels (accounts may override their own).
    pub thresholds: Thresholds,
    /// Trigger policy on stale prices.
    pub trigger_on_stale: StalePolicy,
}

/// `[accounts]`: where accounts come from.
#[derive(Clone, Debug, Default)]
pub struct AccountsConfig {
    /// A JSON snapshot loaded at start (optional: the journal's accounts store survives
    /// restarts on its own).
    pub snapshot: Option<PathBuf>,
    /// `[accounts.nats]`: a JetStream durable consumer of account updates.
    pub nats: Option<NatsAccountsConfig>,
}

/// `[accounts.nats]`.
#[derive(Clone, Debug)]
pub struct NatsAccountsConfig {
    /// Server URL (`nats://127.0.0.1:4222`).
    pub url: String,
    /// Subject filter (default `liqwatch.accounts.>`).
    pub subject: String,
    /// Stream name (default `LIQWATCH_ACCOUNTS`).
    pub stream: String,
    /// Durable consumer name (default `liqwatch`).
    pub durable: String,
}

/// A `[[feeds]]` source kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedSource {
    /// A live venue WebSocket.
    Venue {
        /// The venue.
        venue: Venue,
        /// URL override (tests point at loopback); `None` = the venue's production URL.
        url: Option<String>,
    },
    /// A recorded JSONL file replayed through the venue parsers.
    Replay {
        /// The recording.
        file: PathBuf,
        /// Speed factor; `None` = as fast as possible.
        speed: Option<Decimal>,
    },
}

/// One enabled `[[feeds]]` entry.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// Where prices come from.
    pub source: FeedSource,
    /// Only these canonical instruments (empty = every instrument the venue prices).
    pub instruments: Vec<String>,
    /// An instrument with no fresh price for this long is stale.
    pub stale_after: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Reconnect delay cap.
    pub backoff_max: Duration,
}

impl FeedConfig {
    /// A short name for logs (`binance-usdm`, `replay`).
    pub fn name(&self) -> String {
        match &self.source {
            FeedSource::Venue { venue, .. } => venue.to_string(),
            FeedSource::Replay { .. } => "replay".to_string(),
        }
    }
}

/// How the engine price of an instrument is chosen among venues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompositeMode {
    /// Median of the fresh venues.
    Median,
    /// One venue only.
    Venue(Venue),
}

/// `[prices]`.
#[derive(Clone, Debug)]
pub struct PricesConfig {
    /// Composite mode.
    pub composite: CompositeMode,
    /// A jump larger than this fraction of the last accepted price is held until confirmed.
    pub spike_fraction: Decimal,
}

/// `[journal]`.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// SQLite file.
    pub path: PathBuf,
    /// Delivered events older than this are pruned (never undelivered ones).
    pub retention: Duration,
}

/// Which events a sink receives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// Only these kinds (empty = all).
    pub kinds: Vec<EventKind>,
    /// Only events of at least this severity (0 recovered/restored, 1 warning/stale, 2 trigger).
    pub min_severity: u8,
    /// Only these accounts (empty = all; feed events always pass).
    pub accounts: Vec<AccountId>,
}

/// Line format of the stdout sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdoutFormat {
    /// One JSON object per line.
    Json,
    /// One readable line per event.
    Text,
}

/// Body format of a webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The event JSON as journaled.
    Generic,
    /// Slack incoming webhook.
    Slack,
    /// Discord webhook.
    Discord,
    /// PagerDuty Events API v2.
    Pagerduty,
}

/// What a sink is.
#[derive(Clone, Debug)]
pub enum SinkKind {
    /// Standard output.
    Stdout {
        /// Line format.
        format: StdoutFormat,
    },
    /// Append-only JSON lines file.
    Jsonl {
        /// The file.
        path: PathBuf,
        /// Rotate when the file exceeds this size.
        rotate_bytes: u64,
        /// Rotated files kept.
        keep: u32,
    },
    /// Signed HTTP POST.
    Webhook {
        /// Receiver URL.
        url: String,
        /// Body format.
        format: WebhookFormat,
        /// HMAC secret (from `secret_env`); `None` = unsigned.
        secret: Option<Secret>,
        /// PagerDuty routing key (from `routing_key_env`).
        routing_key: Option<Secret>,
        /// Per-request timeout.
        timeout: Duration,
    },
    /// NATS JetStream publish.
    Nats {
        /// Server URL.
        url: String,
        /// Subject template (`liqwatch.events.{kind}`).
        subject: String,
        /// Stream to create/ensure, if any.
        stream: Option<String>,
    },
}

impl SinkKind {
    /// The type name as written in the file.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Stdout { .. } => "stdout",
            SinkKind::Jsonl { .. } => "jsonl",
            SinkKind::Webhook { .. } => "webhook",
            SinkKind::Nats { .. } => "nats",
        }
    }
}

/// One `[[sinks]]` entry.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Unique name (cursor, metrics label, logs).
    pub name: String,
    /// Which events it receives.
    pub filter: FilterConfig,
    /// What it is.
    pub kind: SinkKind,
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
    /// Maximum request body size.
    pub max_body_bytes: usize,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Parses `text` / `json`.
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
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
    trigger_on_stale: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccounts {
    snapshot: Option<String>,
    nats: Option<RawAccountsNats>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccountsNats {
    url: String,
    subject: Option<String>,
    stream: Option<String>,
    durable: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    venue: String,
    url: Option<String>,
    enabled: Option<bool>,
    instruments: Option<Vec<String>>,
    stale_after: Option<String>,
    backoff_initial: Option<String>,
    backoff_max: Option<String>,
    file: Option<String>,
    speed: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPrices {
    composite: Option<String>,
    spike_fraction: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    path: Option<String>,
    retention: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
    // filter
    kinds: Option<Vec<String>>,
    min_severity: Option<String>,
    accounts: Option<Vec<String>>,
    // stdout / webhook
    format: Option<String>,
    // jsonl
    path: Option<String>,
    rotate_bytes: Option<u64>,
    keep: Option<u32>,
    // webhook / nats
    url: Option<String>,
    secret_env: Option<String>,
    routing_key_env: Option<String>,
    timeout: Option<String>,
    subject: Option<String>,
    stream: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    enabled: Option<bool>,
    bind: Option<String>,
    token_env: Option<String>,
    max_body_bytes: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    grace: Option<String>,
}

const SECTIONS: &[&str] = &[
    "engine", "accounts", "feeds", "prices", "journal", "sinks", "api", "log", "shutdown",
];

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
    let mut cx = Cx {
        text,
        root: None,
        problems: Vec::new(),
        base,
        env,
    };
    let root = match DeTable::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
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
    let root = root.into_inner();
    cx.root = Some(&root);
    for (k, v) in root.iter() {
        if !SECTIONS.contains(&k.get_ref().as_ref()) {
            let (line, column) = line_col(text, k.span().start);
            cx.problems.push(Problem {
                line,
                column,
                key: k.get_ref().to_string(),
                message: format!("unknown section, expected one of: {}", SECTIONS.join(", ")),
            });
            let _ = v;
        }
    }

    let engine: Option<RawEngine> = cx.section("engine");
    let accounts: Option<RawAccounts> = cx.section("accounts");
    let feeds: Vec<Option<RawFeed>> = cx.array_section("feeds");
    let prices: Option<RawPrices> = cx.section("prices");
    let journal: Option<RawJournal> = cx.section("journal");
    let sinks: Vec<Option<RawSink>> = cx.array_section("sinks");
    let api: Option<RawApi> = cx.section("api");
    let log: Option<RawLog> = cx.section("log");
    let shutdown: Option<RawShutdown> = cx.section("shutdown");

    let engine = engine.and_then(|r| cx.engine(r));
    let accounts = accounts.map(|r| cx.accounts(r)).unwrap_or_default();
    let mut feed_cfgs = Vec::new();
    let mut any_feed = false;
    for (i, f) in feeds.into_iter().enumerate() {
        if let Some(f) = f {
            any_feed = true;
            if let Some(fc) = cx.feed(i, f) {
                feed_cfgs.push(fc);
            }
        }
    }
    if !any_feed && cx.problems.iter().all(|p| !p.key.starts_with("feeds")) {
        cx.problem(
            &[],
            "no [[feeds]]: add at least one price feed (a venue or a replay file)",
        );
    }
    let prices = prices.and_then(|r| cx.prices(r));
    let journal = journal.and_then(|r| cx.journal(r));
    let mut sink_cfgs: Vec<SinkConfig> = Vec::new();
    let mut names = HashSet::new();
    for (i, s) in sinks.into_iter().enumerate() {
        if let Some(s) = s
            && let Some(sc) = cx.sink(i, s)
        {
            if !names.insert(sc.name.clone()) {
                cx.problem(
                    &[P::K("sinks"), P::I(i), P::K("name")],
                    format!(
                        "duplicate sink name {:?}: each sink needs its own name (it keys its delivery cursor)",
                        sc.name
                    ),
                );
            }
            sink_cfgs.push(sc);
        }
    }
    let api = api.and_then(|r| cx.api(r));
    let log = log.and_then(|r| cx.log(r));
    let shutdown = shutdown.and_then(|r| cx.shutdown(r));

    let mut problems = cx.problems;
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        problems.dedup();
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
                feeds: feed_cfgs,
                prices,
                journal,
                sinks: sink_cfgs,
                api,
                log,
                shutdown,
            })
        }
        // Every `None` above recorded a problem, so this is unreachable in practice; report it
        // rather than panic.
        _ => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line: 0,
                column: 0,
                key: String::new(),
                message: "invalid configuration".into(),
            }],
        }),
    }
}

/// A key path segment.
#[derive(Clone, Copy, Debug)]
enum P<'a> {
    K(&'a str),
    I(usize),
}

fn render_path(path: &[P<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            P::K(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            P::I(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before
        .get(line_start..)
        .map_or(1, |l| l.chars().count() + 1);
    (line, column)
}

/// The dotted path of the deepest key whose key or value contains `offset`. Standard tables'
/// spans cover only their `[header]`, so tables and arrays are always searched.
fn path_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    for (k, v) in table.iter() {
        if k.span().contains(&offset) {
            return Some(k.get_ref().to_string());
        }
        let inner = match v.get_ref() {
            DeValue::Table(t) => path_at(t, offset).map(|p| format!(".{p}")),
            DeValue::Array(a) => a.iter().enumerate().find_map(|(i, e)| match e.get_ref() {
                DeValue::Table(t) => path_at(t, offset)
                    .map(|p| format!("[{i}].{p}"))
                    .or_else(|| e.span().contains(&offset).then(|| format!("[{i}]"))),
                _ => e.span().contains(&offset).then(|| format!("[{i}]")),
            }),
            _ => None,
        };
        if let Some(inner) = inner {
            return Some(format!("{}{inner}", k.get_ref()));
        }
        if v.span().contains(&offset) {
            return Some(k.get_ref().to_string());
        }
    }
    None
}

/// The span of the key (or, failing that, the value) at `path`.
fn span_of(root: &DeTable<'_>, path: &[P<'_>]) -> Option<Range<usize>> {
    let mut table = root;
    let mut best: Option<Range<usize>> = None;
    let mut cur: Option<&Spanned<DeValue<'_>>> = None;
    for seg in path {
        match seg {
            P::K(k) => {
                if let Some(v) = cur {
                    match v.get_ref() {
                        DeValue::Table(t) => table = t,
                        _ => return best,
                    }
                }
                let Some((key, val)) = table.iter().find(|(key, _)| key.get_ref() == k) else {
                    return best;
                };
                best = Some(key.span());
                cur = Some(val);
            }
            P::I(i) => {
                let Some(v) = cur else { return best };
                let DeValue::Array(a) = v.get_ref() else {
                    return best;
                };
                let Some(e) = a.get(*i) else { return best };
                best = Some(e.span());
                cur = Some(e);
            }
        }
    }
    best
}

struct Cx<'a, 'r> {
    text: &'a str,
    root: Option<&'r DeTable<'a>>,
    problems: Vec<Problem>,
    base: PathBuf,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Cx<'a, '_> {
    fn problem(&mut self, path: &[P<'_>], message: impl Into<String>) {
        let (line, column) = self
            .root
            .and_then(|r| span_of(r, path))
            .map(|s| line_col(self.text, s.start))
            .unwrap_or((1, 1));
        self.problems.push(Problem {
            line,
            column,
            key: render_path(path),
            message: message.into(),
        });
    }

    fn de_error(&mut self, e: toml::de::Error, fallback: &[P<'_>]) {
        let (line, column, key) = match e.span() {
            Some(s) => {
                let (l, c) = line_col(self.text, s.start);
                let key = self
                    .root
                    .and_then(|r| path_at(r, s.start))
                    .unwrap_or_else(|| render_path(fallback));
                (l, c, key)
            }
            None => {
                let (l, c) = self
                    .root
                    .and_then(|r| span_of(r, fallback))
                    .map(|s| line_col(self.text, s.start))
                    .unwrap_or((1, 1));
                (l, c, render_path(fallback))
            }
        };
        self.problems.push(Problem {
            line,
            column,
            key,
            message: friendly(e.message()),
        });
    }

    /// Reads one `[section]`: `Some(default)` when absent, `None` when it failed to
    /// deserialise (the problem is recorded and its semantic checks are skipped).
    fn section<T: DeserializeOwned + Default>(&mut self, name: &str) -> Option<T> {
        let Some(v) = self.root.and_then(|r| {
            r.iter()
                .find(|(k, _)| k.get_ref() == name)
                .map(|(_, v)| v.clone())
        }) else {
            return Some(T::default());
        };
        if !v.get_ref().is_table() {
            self.problem(
                &[P::K(name)],
                format!("must be a table: write it as [{name}]"),
            );
            return None;
        }
        match T::deserialize(ValueDeserializer::from(v)) {
            Ok(t) => Some(t),
            Err(e) => {
                self.de_error(e, &[P::K(name)]);
                None
            }
        }
    }

    fn array_section<T: DeserializeOwned>(&mut self, name: &str) -> Vec<Option<T>> {
        let Some(v) = self.root.and_then(|r| {
            r.iter()
                .find(|(k, _)| k.get_ref() == name)
                .map(|(_, v)| v.clone())
        }) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.problem(
                &[P::K(name)],
                format!("must be an array of tables: write each entry as [[{name}]]"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match T::deserialize(ValueDeserializer::from(item.clone())) {
                Ok(t) => out.push(Some(t)),
                Err(e) => {
                    self.de_error(e, &[P::K(name), P::I(i)]);
                    out.push(None);
                }
            }
        }
        out
    }

    fn decimal(&mut self, path: &[P<'_>], s: &str) -> Option<Decimal> {
        match s.trim().parse::<Decimal>() {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(path, format!("{s:?} is not a decimal number ({e})"));
                None
            }
        }
    }

    fn duration(&mut self, path: &[P<'_>], s: Option<&str>, default: Duration) -> Duration {
        let Some(s) = s else { return default };
        match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(path, "must be longer than zero");
                default
            }
            Err(e) => {
                self.problem(
                    path,
                    format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"10s\", \"7d\""),
                );
                default
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
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.problem(
                path,
                format!("{name:?} is not an environment variable name (letters, digits, _)"),
            );
            return None;
        }
        match (self.env)(name) {
            Some(v) if !v.is_empty() => Some(Secret::new(name, v)),
            _ => {
                self.problem(
                    path,
                    format!("environment variable {name} is not set (or empty): set it before starting liqwatch"),
                );
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
        if let Some(levels) = &raw.warning_levels {
            for (i, s) in levels.iter().enumerate() {
                if let Some(v) = self.decimal(&[e, P::K("warning_levels"), P::I(i)], s) {
                    warning_levels.push(v);
                }
            }
        } else {
            warning_levels = d.warning_levels.clone();
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
        if trigger <= Decimal::ZERO {
            self.problem(
                &[e, P::K("trigger")],
                "must be above 0 (1.0 = MM equals equity)",
            );
        }
        if warning_levels.windows(2).any(|w| w[0] >= w[1]) {
            self.problem(&[e, P::K("warning_levels")], "must be strictly ascending");
        }
        if warning_levels
            .iter()
            .any(|l| *l <= Decimal::ZERO || *l >= trigger)
        {
            self.problem(
                &[e, P::K("warning_levels")],
                format!("every warning level must be above 0 and below the trigger ({trigger})"),
            );
        }
        let lowest = warning_levels.first().copied().unwrap_or(trigger);
        if hysteresis < Decimal::ZERO || hysteresis >= lowest {
            self.problem(
                &[e, P::K("hysteresis")],
                format!("must be at least 0 and below the lowest level ({lowest})"),
            );
        }
        let trigger_on_stale = match raw.trigger_on_stale.as_deref() {
            None | Some("hold") => StalePolicy::Hold,
            Some("fire") => StalePolicy::Fire,
            Some(o) => {
                self.problem(
                    &[e, P::K("trigger_on_stale")],
                    format!("{o:?}: expected \"hold\" or \"fire\""),
                );
                StalePolicy::Hold
            }
        };
        Some(EngineConfig {
            instruments,
            thresholds: Thresholds {
                warning_levels,
                trigger,
                hysteresis,
            },
            trigger_on_stale,
        })
    }

    fn accounts(&mut self, raw: RawAccounts) -> AccountsConfig {
        AccountsConfig {
            snapshot: raw.snapshot.as_deref().map(|s| self.path(s)),
            nats: raw.nats.map(|n| {
                if !n.url.starts_with("nats://") && !n.url.starts_with("tls://") {
                    self.problem(
                        &[P::K("accounts"), P::K("nats"), P::K("url")],
                        format!("{:?}: expected a nats:// or tls:// URL", n.url),
                    );
                }
                NatsAccountsConfig {
                    url: n.url,
                    subject: n.subject.unwrap_or_else(|| "liqwatch.accounts.>".into()),
                    stream: n.stream.unwrap_or_else(|| "LIQWATCH_ACCOUNTS".into()),
                    durable: n.durable.unwrap_or_else(|| "liqwatch".into()),
                }
            }),
        }
    }

    fn feed(&mut self, i: usize, raw: RawFeed) -> Option<FeedConfig> {
        let at = |k: &'static str| [P::K("feeds"), P::I(i), P::K(k)];
        let source = if raw.venue == "replay" {
            if raw.url.is_some() {
                self.problem(&at("url"), "a replay feed has no url; use file = \"…\"");
            }
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
            let speed = match raw.speed.as_deref() {
                None | Some("max") | Some("0") => None,
                Some(s) => match self.decimal(&at("speed"), s) {
                    Some(d) if d > Decimal::ZERO => Some(d),
                    Some(_) => {
                        self.problem(&at("speed"), "must be above 0, or \"max\"");
                        None
                    }
                    None => None,
                },
            };
            FeedSource::Replay { file, speed }
        } else {
            if raw.file.is_some() || raw.speed.is_some() {
                self.problem(&at("file"), "file/speed are for venue = \"replay\" only");
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
                return None;
            };
            if let Some(u) = &raw.url
                && !(u.starts_with("ws://") || u.starts_with("wss://"))
            {
                self.problem(&at("url"), format!("{u:?}: expected a ws:// or wss:// URL"));
            }
            FeedSource::Venue {
                venue,
                url: raw.url,
            }
        };
        let stale_after = self.duration(
            &at("stale_after"),
            raw.stale_after.as_deref(),
            Duration::from_secs(10),
        );
        let backoff_initial = self.duration(
            &at("backoff_initial"),
            raw.backoff_initial.as_deref(),
            Duration::from_millis(500),
        );
        let backoff_max = self.duration(
            &at("backoff_max"),
            raw.backoff_max.as_deref(),
            Duration::from_secs(30),
        );
        if backoff_max < backoff_initial {
            self.problem(&at("backoff_max"), "must be at least backoff_initial");
        }
        if raw.enabled == Some(false) {
            return None;
        }
        Some(FeedConfig {
            source,
            instruments: raw.instruments.unwrap_or_default(),
            stale_after,
            backoff_initial,
            backoff_max,
        })
    }

    fn prices(&mut self, raw: RawPrices) -> Option<PricesConfig> {
        let composite = match raw.composite.as_deref() {
            None | Some("median") => CompositeMode::Median,
            Some(v) => match Venue::parse(v) {
                Some(v) => CompositeMode::Venue(v),
                None => {
                    self.problem(
                        &[P::K("prices"), P::K("composite")],
                        format!("{v:?}: expected \"median\" or a venue name"),
                    );
                    CompositeMode::Median
                }
            },
        };
        let spike_fraction = match raw.spike_fraction.as_deref() {
            None => Decimal::new(2, 1),
            Some(s) => {
                let p = [P::K("prices"), P::K("spike_fraction")];
                match self.decimal(&p, s) {
                    Some(d) if d > Decimal::ZERO => d,
                    Some(_) => {
                        self.problem(&p, "must be above 0 (0.2 = a 20 % jump is held)");
                        Decimal::new(2, 1)
                    }
                    None => Decimal::new(2, 1),
                }
            }
        };
        Some(PricesConfig {
            composite,
            spike_fraction,
        })
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
        let retention = self.duration(
            &[P::K("journal"), P::K("retention")],
            raw.retention.as_deref(),
            Duration::from_secs(7 * 86_400),
        );
        Some(JournalConfig { path, retention })
    }

    fn sink(&mut self, i: usize, raw: RawSink) -> Option<SinkConfig> {
        let at = |k: &'static str| [P::K("sinks"), P::I(i), P::K(k)];
        let name = raw.name.clone().unwrap_or_else(|| raw.kind.clone());
        if name.is_empty() {
            self.problem(&at("name"), "must not be empty");
        }
        let mut kinds = Vec::new();
        for (j, k) in raw.kinds.iter().flatten().enumerate() {
            match parse_kind(k) {
                Some(k) => kinds.push(k),
                None => self.problem(
                    &[P::K("sinks"), P::I(i), P::K("kinds"), P::I(j)],
                    format!("unknown event kind {k:?}, expected one of: liquidation_warning, liquidation_trigger, recovered, feed_stale, feed_restored"),
                ),
            }
        }
        let min_severity = match raw.min_severity.as_deref() {
            None | Some("info") => 0,
            Some("warning") => 1,
            Some("critical") => 2,
            Some(o) => {
                self.problem(
                    &at("min_severity"),
                    format!("{o:?}: expected \"info\" (all), \"warning\" (warnings, stale feeds, triggers) or \"critical\" (triggers)"),
                );
                0
            }
        };
        let filter = FilterConfig {
            kinds,
            min_severity,
            accounts: raw.accounts.iter().flatten().map(AccountId::new).collect(),
        };
        let mut unused: Vec<&'static str> = Vec::new();
        let kind = match raw.kind.as_str() {
            "stdout" => {
                for (k, set) in [
                    ("path", raw.path.is_some()),
                    ("url", raw.url.is_some()),
                    ("secret_env", raw.secret_env.is_some()),
                    ("subject", raw.subject.is_some()),
                ] {
                    if set {
                        unused.push(k);
                    }
                }
                let format = match raw.format.as_deref() {
                    None | Some("json") => StdoutFormat::Json,
                    Some("text") => StdoutFormat::Text,
                    Some(o) => {
                        self.problem(
                            &at("format"),
                            format!("{o:?}: expected \"json\" or \"text\""),
                        );
                        StdoutFormat::Json
                    }
                };
                SinkKind::Stdout { format }
            }
            "jsonl" => {
                for (k, set) in [
                    ("url", raw.url.is_some()),
                    ("secret_env", raw.secret_env.is_some()),
                    ("format", raw.format.is_some()),
                ] {
                    if set {
                        unused.push(k);
                    }
                }
                let path = match raw.path.as_deref() {
                    Some(p) => self.path(p),
                    None => {
                        self.problem(&at("type"), "a jsonl sink needs path = \"events.jsonl\"");
                        PathBuf::new()
                    }
                };
                SinkKind::Jsonl {
                    path,
                    rotate_bytes: raw.rotate_bytes.unwrap_or(100 * 1024 * 1024),
                    keep: raw.keep.unwrap_or(5),
                }
            }
            "webhook" => {
                for (k, set) in [
                    ("path", raw.path.is_some()),
                    ("subject", raw.subject.is_some()),
                ] {
                    if set {
                        unused.push(k);
                    }
                }
                let url = raw.url.clone().unwrap_or_default();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    self.problem(
                        &if raw.url.is_some() {
                            at("url")
                        } else {
                            at("type")
                        },
                        format!("a webhook needs url = \"https://…\" (got {url:?})"),
                    );
                }
                let format = match raw.format.as_deref() {
                    None | Some("generic") => WebhookFormat::Generic,
                    Some("slack") => WebhookFormat::Slack,
                    Some("discord") => WebhookFormat::Discord,
                    Some("pagerduty") => WebhookFormat::Pagerduty,
                    Some(o) => {
                        self.problem(
                            &at("format"),
                            format!("{o:?}: expected generic, slack, discord or pagerduty"),
                        );
                        WebhookFormat::Generic
                    }
                };
                let secret = self.secret(&at("secret_env"), raw.secret_env.as_deref());
                let routing_key =
                    self.secret(&at("routing_key_env"), raw.routing_key_env.as_deref());
                if format == WebhookFormat::Pagerduty && raw.routing_key_env.is_none() {
                    self.problem(
                        &at("format"),
                        "a pagerduty webhook needs routing_key_env = \"<ENV VAR with the integration key>\"",
                    );
                }
                let timeout = self.duration(
                    &at("timeout"),
                    raw.timeout.as_deref(),
                    Duration::from_secs(10),
                );
                SinkKind::Webhook {
                    url,
                    format,
                    secret,
                    routing_key,
                    timeout,
                }
            }
            "nats" => {
                for (k, set) in [
                    ("path", raw.path.is_some()),
                    ("secret_env", raw.secret_env.is_some()),
                    ("format", raw.format.is_some()),
                ] {
                    if set {
                        unused.push(k);
                    }
                }
                let url = raw.url.clone().unwrap_or_default();
                if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                    self.problem(
                        &if raw.url.is_some() {
                            at("url")
                        } else {
                            at("type")
                        },
                        format!("a nats sink needs url = \"nats://host:4222\" (got {url:?})"),
                    );
                }
                SinkKind::Nats {
                    url,
                    subject: raw
                        .subject
                        .clone()
                        .unwrap_or_else(|| "liqwatch.events.{kind}".into()),
                    stream: raw.stream.clone(),
                }
            }
            other => {
                self.problem(
                    &at("type"),
                    format!("unknown sink type {other:?}, expected stdout, jsonl, webhook or nats"),
                );
                return None;
            }
        };
        for k in unused {
            self.problem(
                &at(k),
                format!("not used by a {} sink; remove it", kind.type_name()),
            );
        }
        Some(SinkConfig { name, filter, kind })
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
        Some(ApiConfig {
            enabled: raw.enabled.unwrap_or(true),
            bind,
            token,
            max_body_bytes: raw.max_body_bytes.unwrap_or(1024 * 1024),
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

    fn shutdown(&mut self, raw: RawShutdown) -> Option<ShutdownConfig> {
        Some(ShutdownConfig {
            grace: self.duration(
                &[P::K("shutdown"), P::K("grace")],
                raw.grace.as_deref(),
                Duration::from_secs(10),
            ),
        })
    }
}

fn parse_kind(s: &str) -> Option<EventKind> {
    [
        EventKind::LiquidationWarning,
        EventKind::LiquidationTrigger,
        EventKind::Recovered,
        EventKind::FeedStale,
        EventKind::FeedRestored,
    ]
    .into_iter()
    .find(|k| k.as_str() == s)
}

/// Makes serde's messages say what to write: decimals and durations are strings.
fn friendly(msg: &str) -> String {
    let msg = msg.trim();
    if (msg.starts_with("invalid type: floating point") || msg.starts_with("invalid type: integer"))
        && msg.contains("expected a string")
    {
        {
            return format!(
                "{msg}; write numbers that are money, levels or durations as strings, e.g. \"0.8\" or \"10s\""
            );
        }
    }
    msg.to_string()
}

/// Every key the raw structs accept, for documentation tests.
pub fn known_sections() -> BTreeSet<&'static str> {
    SECTIONS.iter().copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOOK_SECRET" => Some("s3cret-value".into()),
            "API_TOKEN" => Some("tok-value".into()),
            _ => None,
        }
    }

    fn ok(text: &str) -> Config {
        match parse(text, Path::new("/etc/liqwatch/l.toml"), &env) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text, Path::new("/etc/liqwatch/l.toml"), &env) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.problems().to_vec(),
        }
    }

    const MIN: &str = r#"
[engine]
instruments = ["presets.toml"]

[[feeds]]
venue = "binance-usdm"

[journal]
path = "journal.db"
"#;

    /// A minimal file gets the documented defaults and paths resolve against the file's dir.
    #[test]
    fn minimal_defaults() {
        let c = ok(MIN);
        assert_eq!(
            c.engine.instruments,
            vec![PathBuf::from("/etc/liqwatch/presets.toml")]
        );
        assert_eq!(c.engine.thresholds, Thresholds::default());
        assert_eq!(c.engine.trigger_on_stale, StalePolicy::Hold);
        assert_eq!(c.journal.path, PathBuf::from("/etc/liqwatch/journal.db"));
        assert_eq!(c.api.bind.to_string(), DEFAULT_API_BIND);
        assert!(c.api.token.is_none());
        assert_eq!(c.feeds.len(), 1);
        assert_eq!(c.feeds[0].stale_after, Duration::from_secs(10));
        assert_eq!(c.shutdown.grace, Duration::from_secs(10));
        assert_eq!(c.prices.composite, CompositeMode::Median);
    }

    /// Several problems in different sections are all reported, each with line and key.
    #[test]
    fn every_problem_at_once() {
        let text = r#"
[engine]
instruments = ["presets.toml"]
trigger = "abc"
colour = "red"

[[feeds]]
venue = "binance-usdm"

[[feeds]]
venue = "kraken"

[journal]
path = "j.db"

[[sinks]]
type = "webhook"
url = "https://example.com/hook"
secret_env = "MISSING_SECRET"

[api]
bind = "localhost"
"#;
        let p = problems(text);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        // The unknown key in [engine] stops serde for that section; the others are independent.
        assert!(keys.contains(&"engine.colour"), "{p:?}");
        assert!(keys.contains(&"feeds[1].venue"), "{p:?}");
        assert!(keys.contains(&"sinks[0].secret_env"), "{p:?}");
        assert!(keys.contains(&"api.bind"), "{p:?}");
        let colour = p.iter().find(|p| p.key == "engine.colour").unwrap();
        assert_eq!(colour.line, 5);
        assert!(
            colour.message.contains("unknown field"),
            "{}",
            colour.message
        );
        let venue = p.iter().find(|p| p.key == "feeds[1].venue").unwrap();
        assert_eq!(venue.line, 11);
        assert!(venue.message.contains("kraken"));
        let secret = p.iter().find(|p| p.key == "sinks[0].secret_env").unwrap();
        assert_eq!(secret.line, 19);
        assert!(secret.message.contains("MISSING_SECRET is not set"));
        let bind = p.iter().find(|p| p.key == "api.bind").unwrap();
        assert_eq!(bind.line, 22);
    }

    /// Semantic problems inside one section are all reported too.
    #[test]
    fn semantic_problems_in_one_section() {
        let text = r#"
[engine]
instruments = ["presets.toml"]
trigger = "abc"
warning_levels = ["0.9", "0.7"]
trigger_on_stale = "maybe"

[[feeds]]
venue = "okx"
stale_after = "soon"

[journal]
path = "j.db"
"#;
        let p = problems(text);
        let lines: Vec<(usize, &str)> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert!(lines.contains(&(4, "engine.trigger")), "{lines:?}");
        assert!(lines.contains(&(5, "engine.warning_levels")), "{lines:?}");
        assert!(lines.contains(&(6, "engine.trigger_on_stale")), "{lines:?}");
        assert!(lines.contains(&(10, "feeds[0].stale_after")), "{lines:?}");
    }

    /// A float where a decimal string is expected is rejected with a hint to quote it.
    #[test]
    fn floats_rejected_with_hint() {
        let text = MIN.replace("[journal]", "[prices]\nspike_fraction = 0.2\n\n[journal]");
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "prices.spike_fraction");
        assert!(p[0].message.contains("as strings"), "{}", p[0].message);
    }

    /// Syntax errors name the line.
    #[test]
    fn syntax_error_line() {
        let p = problems("[engine]\ninstruments = [\"a\"\n\n[journal]\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].line >= 2, "{p:?}");
        assert!(p[0].message.starts_with("TOML syntax"));
    }

    /// Unknown top-level sections and missing required keys are reported.
    #[test]
    fn unknown_section_and_required() {
        let p = problems("[engines]\nx = 1\n");
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"engines"));
        assert!(keys.contains(&"engine.instruments"));
        assert!(keys.contains(&"journal.path"));
        assert!(p.iter().any(|p| p.message.contains("no [[feeds]]")));
    }

    /// Secrets are read from the environment and never printed.
    #[test]
    fn secrets_from_env_redacted() {
        let text = format!(
            "{MIN}\n[api]\ntoken_env = \"API_TOKEN\"\n\n[[sinks]]\ntype = \"webhook\"\nname = \"desk\"\nurl = \"http://127.0.0.1:1/h\"\nsecret_env = \"HOOK_SECRET\"\n"
        );
        let c = ok(&text);
        let tok = c.api.token.as_ref().unwrap();
        assert_eq!(tok.expose(), "tok-value");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("tok-value") && !dbg.contains("s3cret-value"),
            "{dbg}"
        );
        match &c.sinks[0].kind {
            SinkKind::Webhook { secret, .. } => {
                assert_eq!(secret.as_ref().unwrap().expose(), "s3cret-value")
            }
            k => panic!("{k:?}"),
        }
    }

    /// Duplicate sink names and misplaced keys are rejected.
    #[test]
    fn sink_validation() {
        let text = format!(
            "{MIN}\n[[sinks]]\ntype = \"stdout\"\nurl = \"x\"\n\n[[sinks]]\ntype = \"stdout\"\n\n[[sinks]]\ntype = \"carrier-pigeon\"\n"
        );
        let p = problems(&text);
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"sinks[0].url"), "{keys:?}");
        assert!(keys.contains(&"sinks[1].name"), "{keys:?}");
        assert!(keys.contains(&"sinks[2].type"), "{keys:?}");
    }

    /// A disabled feed is dropped; replay feeds take a file and a speed.
    #[test]
    fn replay_and_disabled_feeds() {
        let text = MIN.replace(
            "venue = \"binance-usdm\"",
            "venue = \"binance-usdm\"\nenabled = false\n\n[[feeds]]\nvenue = \"replay\"\nfile = \"r.jsonl\"\nspeed = \"60\"",
        );
        let c = ok(&text);
        assert_eq!(c.feeds.len(), 1);
        assert_eq!(
            c.feeds[0].source,
            FeedSource::Replay {
                file: PathBuf::from("/etc/liqwatch/r.jsonl"),
                speed: Some(Decimal::new(60, 0))
            }
        );
    }
}
