//! Webhook sink: HTTP POST of events to a receiver, signed with HMAC-SHA256, in one of four body
//! formats (`generic`, `slack`, `discord`, `pagerduty`), with chat noise control.
//!
//! Every request carries `Idempotency-Key: <event_id>` and, when a secret is configured,
//! `X-Liqwatch-Signature: t=<unix seconds>,v1=<hex hmac_sha256(secret, "<t>.<body>")>`.
//! Network errors, timeouts, 408, 429 and 5xx are [`SinkError::Retriable`] (with the receiver's
//! `Retry-After`, seconds or HTTP date); redirects and every other 4xx are
//! [`SinkError::Permanent`] with the status and an excerpt of the response body, so the driver
//! dead-letters the event. Chat formats can group warnings and rate-limit messages
//! ([`crate::sinks::noise`]); triggers are never grouped and never wait for the limiter.
//!
//! Config is validated with the environment resolved up front ([`WebhookConfig::resolve`]);
//! secrets never appear in logs or `Debug` output.

use std::fmt;
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;

use std::collections::HashSet;

use crate::model::{AccountId, EventKind, MarginRatio, RiskEvent};
use crate::sinks::noise::{
    self, GroupConfig, PlannedMessage, PrefixTracker, RateLimit, RateLimiter,
};
use crate::sinks::{JournalEntry, Sink, SinkError};

/// The signature header name.
pub const SIGNATURE_HEADER: &str = "X-Liqwatch-Signature";
/// The idempotency header name.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The longest `Retry-After` honoured; longer requests are capped to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
const BODY_EXCERPT_CHARS: usize = 300;

/// Installs rustls' ring crypto provider as the process default, once. Safe to call any number
/// of times and from any thread; a provider installed earlier by someone else is kept.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed, which is what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// The body format of a webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The event JSON exactly as journaled.
    #[default]
    Generic,
    /// Slack incoming webhook: `text` + `blocks`.
    Slack,
    /// Discord webhook: `content` + `embeds`.
    Discord,
    /// PagerDuty Events API v2 (`routing_key`, `event_action`, `dedup_key`, `payload`).
    Pagerduty,
}

impl WebhookFormat {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Generic => "generic",
            WebhookFormat::Slack => "slack",
            WebhookFormat::Discord => "discord",
            WebhookFormat::Pagerduty => "pagerduty",
        }
    }
}

/// Warning grouping as written in the config file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfigRaw {
    /// Window from the first warning of a group (default `10s`).
    #[serde(default = "default_group_window", with = "humantime_serde")]
    pub window: Duration,
    /// Minimum warnings for a grouped message (default 3, at least 2).
    #[serde(default = "default_group_min")]
    pub min_events: usize,
    /// Worst accounts listed in a grouped message (default 5).
    #[serde(default = "default_group_top")]
    pub top: usize,
}

/// Rate limit as written in the config file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRaw {
    /// Messages per period (also the burst).
    pub messages: u32,
    /// The period (default `1m`).
    #[serde(default = "default_rate_per", with = "humantime_serde")]
    pub per: Duration,
}

fn default_group_window() -> Duration {
    Duration::from_secs(10)
}
fn default_group_min() -> usize {
    3
}
fn default_group_top() -> usize {
    5
}
fn default_rate_per() -> Duration {
    Duration::from_secs(60)
}
fn default_batch_time() -> Duration {
    Duration::from_secs(15)
}
fn default_concurrency() -> usize {
    1
}
fn default_batch_max() -> usize {
    1
}
/// The largest `batch_max` accepted.
pub const MAX_BATCH_MAX: usize = 1000;
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A webhook sink's settings as written in the config file (secrets are named, not given).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Receiver URL (`http://` or `https://`). Exactly one of `url` and `url_env`.
    #[serde(default)]
    pub url: Option<String>,
    /// Environment variable holding the URL (for Slack/Discord URLs, which are secrets).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Body format (default `generic`).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Environment variable holding the HMAC secret; without it requests are not signed.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Environment variable holding the PagerDuty routing key (required for `pagerduty`).
    #[serde(default)]
    pub routing_key_env: Option<String>,
    /// Per-request timeout (default `10s`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Group warnings during a cascade (chat formats only).
    #[serde(default)]
    pub group: Option<GroupConfigRaw>,
    /// Per-sink rate limit (chat formats only); delays, never drops.
    #[serde(default)]
    pub rate_limit: Option<RateLimitRaw>,
    /// PagerDuty `payload.source` (default `liqwatch`).
    #[serde(default)]
    pub source: Option<String>,
    /// Generic format only: requests in flight at once (default 1). Events are spread over
    /// this many lanes by account, so per-account order is kept.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Time budget of one delivery call (default `15s`): no new request starts after it, and
    /// the sink reports its progress so far. Keep `max_batch_time + timeout` below the
    /// driver's delivery timeout (30 s) so progress is never thrown away.
    #[serde(default = "default_batch_time", with = "humantime_serde")]
    pub max_batch_time: Duration,
    /// Generic format only: events per request (default 1: one event per POST). Above 1, a
    /// lane posts up to this many of its events at once as `{"events":[…]}` (see
    /// [`render_batch`]). The driver's batch size (256) also bounds it.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
}

impl WebhookConfig {
    /// A generic webhook to `url` with defaults everywhere else.
    pub fn generic(url: impl Into<String>) -> Self {
        WebhookConfig {
            url: Some(url.into()),
            url_env: None,
            format: WebhookFormat::Generic,
            secret_env: None,
            routing_key_env: None,
            timeout: default_timeout(),
            group: None,
            rate_limit: None,
            source: None,
            concurrency: 1,
            max_batch_time: default_batch_time(),
            batch_max: default_batch_max(),
        }
    }

    /// Validates the config and reads the named environment variables through `env`
    /// (`|k| std::env::var(k).ok()` in the daemon). Returns every problem at once.
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<WebhookSettings, Vec<String>> {
        let mut errors = Vec::new();
        let read_env = |key: &str, what: &str, errors: &mut Vec<String>| -> Option<String> {
            match env(key) {
                Some(v) if !v.trim().is_empty() => Some(v),
                _ => {
                    errors.push(format!(
                        "{what}: environment variable {key} is not set or empty"
                    ));
                    None
                }
            }
        };
        let url = match (&self.url, &self.url_env) {
            (Some(u), None) => Some(u.clone()),
            (None, Some(k)) => read_env(k, "url_env", &mut errors),
            (Some(_), Some(_)) => {
                errors.push("set only one of url and url_env".to_string());
                None
            }
            (None, None) => {
                errors.push("url or url_env is required".to_string());
                None
            }
        };
        let secret = self
            .secret_env
            .as_deref()
            .and_then(|k| read_env(k, "secret_env", &mut errors))
            .map(|s| Secret(s.into_bytes()));
        let routing_key = self
            .routing_key_env
            .as_deref()
            .and_then(|k| read_env(k, "routing_key_env", &mut errors));
        if let Some(u) = &url {
            match reqwest::Url::parse(u) {
                Ok(p) if p.scheme() == "http" || p.scheme() == "https" => {}
                Ok(p) => errors.push(format!("url: scheme {:?} is not http or https", p.scheme())),
                // The URL may hold a token (Slack, Discord): name the error, not the URL.
                Err(e) => errors.push(format!("url: not a valid URL ({e})")),
            }
        }
        if self.format == WebhookFormat::Pagerduty && self.routing_key_env.is_none() {
            errors.push("format pagerduty needs routing_key_env".to_string());
        }
        if self.format != WebhookFormat::Pagerduty && self.routing_key_env.is_some() {
            errors.push("routing_key_env is only used by format pagerduty".to_string());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            errors.push(format!(
                "timeout {} must be between 1ms and 5m",
                humantime::format_duration(self.timeout)
            ));
        }
        let chat = self.format != WebhookFormat::Generic;
        if self.concurrency == 0 || self.concurrency > 256 {
            errors.push(format!(
                "concurrency {} must be between 1 and 256",
                self.concurrency
            ));
        }
        if self.max_batch_time.is_zero() || self.max_batch_time > Duration::from_secs(600) {
            errors.push("max_batch_time must be between 1ms and 10m".to_string());
        }
        if self.batch_max == 0 || self.batch_max > MAX_BATCH_MAX {
            errors.push(format!(
                "batch_max {} must be between 1 and {MAX_BATCH_MAX}",
                self.batch_max
            ));
        }
        if chat && self.batch_max > 1 {
            errors.push("batch_max applies to format generic only".to_string());
        }
        if chat && self.concurrency > 1 {
            errors.push("concurrency applies to format generic only".to_string());
        }
        if !chat && (self.group.is_some() || self.rate_limit.is_some()) {
            errors.push(
                "group and rate_limit apply to slack, discord and pagerduty only".to_string(),
            );
        }
        if let Some(g) = &self.group {
            if g.min_events < 2 {
                errors.push("group.min_events must be at least 2".to_string());
            }
            if g.top == 0 {
                errors.push("group.top must be at least 1".to_string());
            }
            if g.window.is_zero() {
                errors.push("group.window must be positive".to_string());
            }
        }
        if let Some(r) = &self.rate_limit {
            if r.messages == 0 {
                errors.push("rate_limit.messages must be at least 1".to_string());
            }
            if r.per.is_zero() {
                errors.push("rate_limit.per must be positive".to_string());
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(WebhookSettings {
            url: url.unwrap_or_default(),
            format: self.format,
            secret,
            routing_key,
            timeout: self.timeout,
            group: self.group.as_ref().map(|g| GroupConfig {
                window: g.window,
                min_events: g.min_events,
                top: g.top,
            }),
            rate_limit: self.rate_limit.as_ref().map(|r| RateLimit {
                messages: r.messages,
                per: r.per,
            }),
            concurrency: self.concurrency,
            max_batch_time: self.max_batch_time,
            batch_max: self.batch_max,
            source: self
                .source
                .clone()
                .unwrap_or_else(|| "liqwatch".to_string()),
        })
    }
}

impl crate::sinks::SinkConfig for WebhookConfig {
    const TYPE: &'static str = "webhook";
    type Settings = WebhookSettings;

    fn resolve(self, cx: &crate::sinks::SinkContext<'_>) -> Result<WebhookSettings, Vec<String>> {
        WebhookConfig::resolve(&self, cx.env)
    }
}

impl crate::sinks::SinkSettings for WebhookSettings {
    fn build(&self, name: &str) -> Result<Box<dyn Sink>, crate::sinks::SinkBuildError> {
        if self.secret.is_none() {
            tracing::warn!(sink = %name, "Webhook sink has no secret_env: its requests are not signed");
        }
        WebhookSink::new(name, self.clone())
            .map(|s| Box::new(s) as Box<dyn Sink>)
            .map_err(|e| crate::sinks::SinkBuildError(e.to_string()))
    }
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Validated webhook settings with secrets resolved.
#[derive(Clone)]
pub struct WebhookSettings {
    /// Receiver URL.
    pub url: String,
    /// Body format.
    pub format: WebhookFormat,
    /// HMAC secret; requests are unsigned without it.
    pub secret: Option<Secret>,
    /// PagerDuty routing key.
    pub routing_key: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Warning grouping (chat formats).
    pub group: Option<GroupConfig>,
    /// Rate limit (chat formats).
    pub rate_limit: Option<RateLimit>,
    /// PagerDuty `payload.source`.
    pub source: String,
    /// Requests in flight at once (generic only).
    pub concurrency: usize,
    /// Time budget of one delivery call.
    pub max_batch_time: Duration,
    /// Events per request (generic only; 1 = one event per request).
    pub batch_max: usize,
}

impl WebhookSettings {
    /// Settings for `url` in `format` with every default: unsigned, 10 s timeout, no grouping,
    /// no rate limit, concurrency 1, 15 s batch budget, source `liqwatch`.
    pub fn new(url: impl Into<String>, format: WebhookFormat) -> Self {
        WebhookSettings {
            url: url.into(),
            format,
            secret: None,
            routing_key: None,
            timeout: default_timeout(),
            group: None,
            rate_limit: None,
            source: "liqwatch".to_string(),
            concurrency: 1,
            max_batch_time: default_batch_time(),
            batch_max: default_batch_max(),
        }
    }
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL of a chat webhook is itself a credential: print only scheme, host and port.
        let shown = reqwest::Url::parse(&self.url)
            .map(|u| {
                format!(
                    "{}://{}:{}/…",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .unwrap_or_else(|_| "<invalid>".to_string());
        f.debug_struct("WebhookSettings")
            .field("url", &shown)
            .field("format", &self.format)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "routing_key",
                &self.routing_key.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .field("group", &self.group)
            .field("rate_limit", &self.rate_limit)
            .field("source", &self.source)
            .field("concurrency", &self.concurrency)
            .field("max_batch_time", &self.max_batch_time)
            .field("batch_max", &self.batch_max)
            .finish()
    }
}

/// Why a webhook sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    /// The HTTP client could not be built (TLS setup).
    #[error("webhook {sink}: cannot build HTTP client: {reason}")]
    Client {
        /// The sink.
        sink: String,
        /// The underlying error.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Signature
// ---------------------------------------------------------------------------------------------

/// The signature header value for `body` sent at `timestamp` (unix seconds):
/// `t=<timestamp>,v1=<hex hmac_sha256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail; if it ever did, an empty
    // signature makes every receiver reject the request rather than accept it unsigned.
    let Ok(mut m) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        tracing::error!("HMAC-SHA256 rejected the webhook secret");
        return Vec::new();
    };
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header is not `t=…,v1=…`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further than the tolerance from now (replay or clock skew).
    #[error("timestamp outside tolerance")]
    Stale,
    /// No `v1` signature matched.
    #[error("signature mismatch")]
    Mismatch,
}

/// Verifies a signature header the way receivers should: parse `t` and every `v1`, reject a
/// timestamp more than `tolerance` away from `now` (unix seconds), recompute the HMAC over
/// `"<t>.<body>"` and compare in constant time.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let mut t: Option<i64> = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse().ok(),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| VerifyError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if sigs.is_empty() {
        return Err(VerifyError::Malformed);
    }
    let tol = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(t) > tol.unsigned_abs() {
        return Err(VerifyError::Stale);
    }
    for sig in sigs {
        let Ok(mut m) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
            return Err(VerifyError::Mismatch);
        };
        m.update(t.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        if m.verify_slice(&sig).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::Mismatch)
}

/// Parses `Retry-After`: delta seconds (fractional accepted) or an HTTP date (relative to `now`), capped at
/// [`MAX_RETRY_AFTER`]. A date in the past is zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Some(d) = v
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 0.0)
        .and_then(|f| Duration::try_from_secs_f64(f.min(MAX_RETRY_AFTER.as_secs_f64())).ok())
    {
        // Some receivers (Discord) send fractional seconds.
        d
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// One HTTP request to send.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingRequest {
    /// The `Idempotency-Key` header.
    pub idempotency_key: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

fn round2(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

fn fmt_money(d: Decimal) -> String {
    let mut r = round2(d);
    r.rescale(2);
    r.to_string()
}

fn fmt_ratio(r: &MarginRatio) -> String {
    match r {
        MarginRatio::Finite(d) => d
            .round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero)
            .normalize()
            .to_string(),
        MarginRatio::Infinite => "inf (equity ≤ 0)".to_string(),
    }
}

fn fmt_pct(d: Option<Decimal>) -> String {
    match d.and_then(|d| d.checked_mul(Decimal::ONE_HUNDRED)) {
        Some(p) => format!("{} %", round2(p)),
        None => "none".to_string(),
    }
}

fn fmt_level(d: Option<Decimal>) -> String {
    d.map(|d| d.normalize().to_string())
        .unwrap_or_else(|| "-".to_string())
}

fn account_of(ev: &RiskEvent) -> String {
    ev.account_id
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".to_string())
}

/// Human-readable text of one event: a title, a one-line summary and labelled fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertText {
    /// E.g. `LIQUIDATION TRIGGER: acct-7`.
    pub title: String,
    /// One line with every number that matters: `<kind> <account>: <details>`.
    pub summary: String,
    /// The numbers alone (`margin ratio …, equity …, MM …, shock distance …`).
    pub details: String,
    /// Labelled values for chat layouts.
    pub fields: Vec<(&'static str, String)>,
}

/// Builds the readable text of an event: account, kind, level, ratio, equity, MM, shock distance.
pub fn alert_text(ev: &RiskEvent) -> AlertText {
    let account = account_of(ev);
    let stale = if ev.stale_prices {
        " (STALE PRICES)"
    } else {
        ""
    };
    let (title, mut fields) = match ev.kind {
        EventKind::LiquidationWarning => (
            format!("Liquidation warning: {account}"),
            vec![("Account", account.clone())],
        ),
        EventKind::LiquidationTrigger => (
            format!("LIQUIDATION TRIGGER: {account}"),
            vec![("Account", account.clone())],
        ),
        EventKind::Recovered => (
            format!("Recovered: {account}"),
            vec![("Account", account.clone())],
        ),
        EventKind::FeedStale | EventKind::FeedRestored => {
            let inst = ev
                .feed
                .as_ref()
                .map(|f| f.instrument.to_string())
                .unwrap_or_else(|| "-".to_string());
            let what = if ev.kind == EventKind::FeedStale {
                "Feed stale"
            } else {
                "Feed restored"
            };
            (format!("{what}: {inst}"), vec![("Instrument", inst)])
        }
    };
    fields.push(("Kind", ev.kind.as_str().to_string()));
    let details = if let Some(s) = &ev.snapshot {
        let ratio = fmt_ratio(&s.margin_ratio);
        let equity = fmt_money(s.equity);
        let mm = fmt_money(s.maintenance_margin);
        let shock = fmt_pct(s.shock_distance.nearest);
        let level = fmt_level(ev.level);
        fields.push(("Level", level.clone()));
        fields.push(("Margin ratio", ratio.clone()));
        fields.push(("Equity", equity.clone()));
        fields.push(("Maintenance margin", mm.clone()));
        fields.push(("Shock distance", shock.clone()));
        format!(
            "margin ratio {ratio} (level {level}), equity {equity}, MM {mm}, \
             shock distance {shock}{stale}"
        )
    } else if let Some(f) = &ev.feed {
        let last = f
            .last_price
            .map(|p| p.normalize().to_string())
            .unwrap_or_else(|| "none".to_string());
        let age = f
            .age_ms
            .map(|a| format!("{a} ms"))
            .unwrap_or_else(|| "-".to_string());
        fields.push(("Last price", last.clone()));
        fields.push(("Age", age.clone()));
        format!(
            "last price {last}, age {age}, stale after {} ms",
            f.stale_after_ms
        )
    } else {
        format!("level {}", fmt_level(ev.level))
    };
    let subject = match &ev.feed {
        Some(f) if ev.account_id.is_none() => f.instrument.to_string(),
        _ => account.clone(),
    };
    let summary = format!("{} {subject}: {details}", ev.kind.as_str());
    if ev.stale_prices {
        fields.push(("Prices", "STALE".to_string()));
    }
    AlertText {
        title,
        summary,
        details,
        fields,
    }
}

fn emoji(kind: EventKind) -> &'static str {
    match kind {
        EventKind::LiquidationTrigger => "🚨",
        EventKind::LiquidationWarning => "⚠️",
        EventKind::Recovered | EventKind::FeedRestored => "✅",
        EventKind::FeedStale => "📉",
    }
}

fn discord_color(kind: EventKind) -> u32 {
    match kind {
        EventKind::LiquidationTrigger => 0xE0_1E_5A,
        EventKind::LiquidationWarning | EventKind::FeedStale => 0xEC_B2_2E,
        EventKind::Recovered | EventKind::FeedRestored => 0x2E_B6_7D,
    }
}

/// Escapes Slack mrkdwn control characters.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A summary of a grouped message: how many warnings, over which time span, the worst accounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupText {
    /// E.g. `⚠️ 1234 liquidation warnings in 8.2 s`.
    pub title: String,
    /// One line per listed account, worst first.
    pub worst: Vec<String>,
    /// First and last detection times.
    pub span: String,
}

/// Builds the readable text of a group of warnings, listing the `top` worst accounts by ratio.
pub fn group_text(entries: &[&JournalEntry], top: usize) -> GroupText {
    let n = entries.len();
    let first = entries.iter().map(|e| e.event.time_ms).min().unwrap_or(0);
    let last = entries.iter().map(|e| e.event.time_ms).max().unwrap_or(0);
    let secs = Decimal::new(last.saturating_sub(first), 3).round_dp(1);
    let mut ranked: Vec<&RiskEvent> = entries.iter().map(|e| &e.event).collect();
    ranked.sort_by(|a, b| {
        let ra = a.snapshot.as_ref().map(|s| s.margin_ratio);
        let rb = b.snapshot.as_ref().map(|s| s.margin_ratio);
        rb.cmp(&ra)
    });
    let accounts = entries
        .iter()
        .map(|e| account_of(&e.event))
        .collect::<std::collections::HashSet<_>>()
        .len();
    let mut seen = std::collections::HashSet::new();
    let worst = ranked
        .into_iter()
        .filter(|e| seen.insert(account_of(e)))
        .take(top)
        .map(|e| alert_text(e).summary)
        .collect();
    GroupText {
        title: format!("⚠️ {n} liquidation warnings in {secs} s"),
        worst,
        span: format!(
            "{accounts} accounts, first {} · last {}",
            crate::model::format_rfc3339_ms(first),
            crate::model::format_rfc3339_ms(last)
        ),
    }
}

fn body(v: &Value) -> Result<Vec<u8>, SinkError> {
    serde_json::to_vec(v).map_err(|e| SinkError::Permanent {
        reason: format!("cannot serialise body: {e}"),
    })
}

fn pd_key(parts: &[&str]) -> String {
    let mut k = String::from("liqwatch");
    for p in parts {
        k.push(':');
        k.push_str(p);
    }
    k
}

fn pd_severity(kind: EventKind) -> &'static str {
    match kind {
        EventKind::LiquidationTrigger => "critical",
        EventKind::LiquidationWarning => "warning",
        EventKind::FeedStale => "error",
        EventKind::Recovered | EventKind::FeedRestored => "info",
    }
}

fn custom_details(ev: &RiskEvent) -> Value {
    let s = ev.snapshot.as_ref();
    json!({
        "event_id": ev.event_id,
        "kind": ev.kind,
        "account_id": ev.account_id,
        "seq": ev.seq,
        "level": ev.level,
        "margin_ratio": s.map(|s| s.margin_ratio),
        "equity": s.map(|s| s.equity),
        "maintenance_margin": s.map(|s| s.maintenance_margin),
        "shock_distance": s.map(|s| s.shock_distance.nearest),
        "stale_prices": ev.stale_prices,
        "feed": ev.feed,
        "time": ev.time,
    })
}

/// Renders one batched request (generic format, `batch_max > 1`): the body is
/// `{"events":[<event JSON>,…]}` with each event's JSON byte for byte as journaled, in the
/// given (journal) order; the `Idempotency-Key` is `batch:<first event_id>:<last event_id>:<count>`,
/// the same on every retry of the same events.
pub fn render_batch(entries: &[&JournalEntry]) -> OutgoingRequest {
    let len: usize = entries.iter().map(|e| e.json.len() + 1).sum();
    let mut body = Vec::with_capacity(len + 16);
    body.extend_from_slice(b"{\"events\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e.json.as_bytes());
    }
    body.extend_from_slice(b"]}");
    let first = entries
        .first()
        .map(|e| e.event.event_id.to_string())
        .unwrap_or_default();
    let last = entries
        .last()
        .map(|e| e.event.event_id.to_string())
        .unwrap_or_default();
    OutgoingRequest {
        idempotency_key: format!("batch:{first}:{last}:{}", entries.len()),
        body,
    }
}

/// Renders the request(s) for one event. Most events are one request; a PagerDuty recovery
/// resolves every level it recovered from, one request each.
pub fn render_single(
    settings: &WebhookSettings,
    entry: &JournalEntry,
) -> Result<Vec<OutgoingRequest>, SinkError> {
    let ev = &entry.event;
    let key = ev.event_id.to_string();
    let one = |b: Vec<u8>| {
        vec![OutgoingRequest {
            idempotency_key: key.clone(),
            body: b,
        }]
    };
    match settings.format {
        WebhookFormat::Generic => Ok(one(entry.json.clone().into_bytes())),
        WebhookFormat::Slack => {
            let t = alert_text(ev);
            let title = format!("{} {}", emoji(ev.kind), t.title);
            let fields: Vec<Value> = t
                .fields
                .iter()
                .take(10)
                .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{k}*\n{}", slack_escape(v))}))
                .collect();
            let v = json!({
                "text": format!("{title} — {}", slack_escape(&t.details)),
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": truncate(&title, 150), "emoji": true}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(&t.summary)}, "fields": fields},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("event `{}` · seq {} · {}", ev.event_id, ev.seq, ev.time)}]}
                ]
            });
            Ok(one(body(&v)?))
        }
        WebhookFormat::Discord => {
            let t = alert_text(ev);
            let fields: Vec<Value> = t
                .fields
                .iter()
                .take(25)
                .map(|(k, v)| json!({"name": k, "value": truncate(v, 1024), "inline": true}))
                .collect();
            let v = json!({
                "content": truncate(&format!("{} {}", emoji(ev.kind), t.title), 2000),
                "embeds": [{
                    "title": truncate(&t.title, 256),
                    "description": truncate(&t.summary, 4096),
                    "color": discord_color(ev.kind),
                    "fields": fields,
                    "timestamp": ev.time,
                    "footer": {"text": format!("event {} · seq {}", ev.event_id, ev.seq)}
                }],
                "allowed_mentions": {"parse": []}
            });
            Ok(one(body(&v)?))
        }
        WebhookFormat::Pagerduty => {
            let rk = settings.routing_key.clone().unwrap_or_default();
            let account = account_of(ev);
            let feed_inst = ev.feed.as_ref().map(|f| f.instrument.to_string());
            match ev.kind {
                EventKind::Recovered => {
                    let mut levels: Vec<Decimal> =
                        ev.crossed_levels.iter().map(|d| d.normalize()).collect();
                    if let Some(l) = ev.level {
                        levels.push(l.normalize());
                    }
                    levels.sort();
                    levels.dedup();
                    let mut out = Vec::with_capacity(levels.len());
                    for l in levels {
                        let lvl = l.to_string();
                        let v = json!({
                            "routing_key": rk,
                            "event_action": "resolve",
                            "dedup_key": pd_key(&[&account, &lvl]),
                        });
                        out.push(OutgoingRequest {
                            idempotency_key: format!("{key}/{lvl}"),
                            body: body(&v)?,
                        });
                    }
                    Ok(out)
                }
                EventKind::FeedRestored => {
                    let inst = feed_inst.unwrap_or_default();
                    let v = json!({
                        "routing_key": rk,
                        "event_action": "resolve",
                        "dedup_key": pd_key(&["feed", &inst]),
                    });
                    Ok(one(body(&v)?))
                }
                EventKind::LiquidationWarning
                | EventKind::LiquidationTrigger
                | EventKind::FeedStale => {
                    let dedup = if ev.kind == EventKind::FeedStale {
                        pd_key(&["feed", &feed_inst.unwrap_or_default()])
                    } else {
                        pd_key(&[&account, &fmt_level(ev.level)])
                    };
                    let t = alert_text(ev);
                    let v = json!({
                        "routing_key": rk,
                        "event_action": "trigger",
                        "dedup_key": dedup,
                        "payload": {
                            "summary": truncate(&t.summary, 1024),
                            "severity": pd_severity(ev.kind),
                            "source": settings.source,
                            "timestamp": ev.time,
                            "component": account,
                            "group": "liquidation",
                            "class": ev.kind.as_str(),
                            "custom_details": custom_details(ev),
                        }
                    });
                    Ok(one(body(&v)?))
                }
            }
        }
    }
}

/// Renders one grouped message for `entries` (all warnings).
pub fn render_group(
    settings: &WebhookSettings,
    entries: &[&JournalEntry],
    top: usize,
) -> Result<OutgoingRequest, SinkError> {
    let g = group_text(entries, top);
    let first_id = entries
        .first()
        .map(|e| e.event.event_id.to_string())
        .unwrap_or_default();
    let key = format!("group-{first_id}-{}", entries.len());
    let v = match settings.format {
        WebhookFormat::Slack => {
            let list: String = g
                .worst
                .iter()
                .map(|l| format!("• {}\n", slack_escape(l)))
                .collect();
            json!({
                "text": format!("{}: worst {}", g.title, g.worst.first().map(|s| slack_escape(s)).unwrap_or_default()),
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": truncate(&g.title, 150), "emoji": true}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Worst {} by margin ratio*\n{list}", g.worst.len()), 3000)}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": g.span}]}
                ]
            })
        }
        WebhookFormat::Discord => {
            let list: String = g.worst.iter().map(|l| format!("• {l}\n")).collect();
            json!({
                "content": truncate(&g.title, 2000),
                "embeds": [{
                    "title": truncate(&g.title, 256),
                    "description": truncate(&format!("Worst {} by margin ratio:\n{list}", g.worst.len()), 4096),
                    "color": discord_color(EventKind::LiquidationWarning),
                    "footer": {"text": truncate(&g.span, 2048)}
                }],
                "allowed_mentions": {"parse": []}
            })
        }
        WebhookFormat::Pagerduty => {
            let ids: Vec<String> = entries
                .iter()
                .map(|e| e.event.event_id.to_string())
                .collect();
            json!({
                "routing_key": settings.routing_key.clone().unwrap_or_default(),
                "event_action": "trigger",
                "dedup_key": pd_key(&["warnings", &first_id]),
                "payload": {
                    "summary": truncate(&format!("{}; worst: {}", g.title, g.worst.first().cloned().unwrap_or_default()), 1024),
                    "severity": "warning",
                    "source": settings.source,
                    "timestamp": entries.first().map(|e| e.event.time.clone()),
                    "group": "liquidation",
                    "class": "liquidation_warning_group",
                    "custom_details": {"count": entries.len(), "worst": g.worst, "span": g.span, "event_ids": ids},
                }
            })
        }
        WebhookFormat::Generic => {
            return Err(SinkError::Permanent {
                reason: "generic webhooks never group events".to_string(),
            });
        }
    };
    Ok(OutgoingRequest {
        idempotency_key: key,
        body: body(&v)?,
    })
}

// ---------------------------------------------------------------------------------------------
// The sink
// ---------------------------------------------------------------------------------------------

/// The webhook sink.
pub struct WebhookSink {
    name: String,
    settings: WebhookSettings,
    client: reqwest::Client,
    limiter: Option<RateLimiter>,
    recent: parking_lot::Mutex<RecentKeys>,
}

/// Idempotency keys the receiver accepted recently, so a batch retried after partial progress
/// does not post them again (bounded; oldest forgotten first).
#[derive(Debug, Default)]
struct RecentKeys {
    order: std::collections::VecDeque<String>,
    set: HashSet<String>,
}

impl RecentKeys {
    const CAPACITY: usize = 4096;

    fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    fn insert(&mut self, key: String) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
            while self.order.len() > Self::CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

fn budget_used(done: usize, total: usize, budget: Duration) -> SinkError {
    SinkError::Retriable {
        reason: format!(
            "batch time budget of {} used after {done} of {total} events (slow receiver or \
             rate limit); continuing",
            humantime::format_duration(budget)
        ),
        retry_after: Some(Duration::ZERO),
    }
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish()
    }
}

impl WebhookSink {
    /// Builds the sink (installs the rustls ring provider if none is installed).
    pub fn new(
        name: impl Into<String>,
        settings: WebhookSettings,
    ) -> Result<WebhookSink, WebhookSetupError> {
        install_crypto_provider();
        let name = name.into();
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("liqwatch/", env!("CARGO_PKG_VERSION")))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| WebhookSetupError::Client {
                sink: name.clone(),
                reason: e.to_string(),
            })?;
        let limiter = settings.rate_limit.map(RateLimiter::new);
        Ok(WebhookSink {
            name,
            settings,
            client,
            limiter,
            recent: parking_lot::Mutex::new(RecentKeys::default()),
        })
    }

    /// The validated settings.
    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    async fn post(&self, req: OutgoingRequest) -> Result<(), SinkError> {
        if self.recent.lock().contains(&req.idempotency_key) {
            // Accepted earlier in this process (a batch retried after partial progress).
            return Ok(());
        }
        let key = req.idempotency_key.clone();
        let started = tokio::time::Instant::now();
        let result = self.post_inner(req).await;
        if result.is_ok() {
            self.recent.lock().insert(key);
        }
        let outcome = match &result {
            Ok(()) => "ok",
            Err(SinkError::Retriable { .. }) => "retriable",
            Err(SinkError::Permanent { .. }) => "permanent",
        };
        metrics::counter!("liqwatch_webhook_requests_total", "sink" => self.name.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("liqwatch_webhook_request_seconds", "sink" => self.name.clone())
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::warn!(sink = %self.name, error = %e, "Webhook delivery failed");
        }
        result
    }

    async fn post_inner(&self, req: OutgoingRequest) -> Result<(), SinkError> {
        let mut builder = self
            .client
            .post(&self.settings.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_HEADER, &req.idempotency_key);
        if let Some(secret) = &self.settings.secret {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            builder = builder.header(SIGNATURE_HEADER, sign(&secret.0, now, &req.body));
        }
        let send = builder.body(req.body).send();
        let resp = match tokio::time::timeout(self.settings.timeout, send).await {
            Err(_) => {
                return Err(SinkError::Retriable {
                    reason: format!(
                        "no response within {}",
                        humantime::format_duration(self.settings.timeout)
                    ),
                    retry_after: None,
                });
            }
            Ok(Err(e)) => {
                // reqwest errors may print the URL, which can hold a token: strip it.
                let e = e.without_url();
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                return Err(SinkError::Retriable {
                    reason: format!("{what}: {e}"),
                    retry_after: None,
                });
            }
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // Read the body (bounded by the timeout) so the connection can be reused and so a
        // rejection can say why.
        let text = match tokio::time::timeout(self.settings.timeout, resp.bytes()).await {
            Ok(Ok(b)) => String::from_utf8_lossy(&b).into_owned(),
            _ => String::new(),
        };
        if status.is_success() {
            return Ok(());
        }
        let excerpt = truncate(text.trim(), BODY_EXCERPT_CHARS);
        let code = status.as_u16();
        if status.is_server_error() || code == 429 || code == 408 {
            Err(SinkError::Retriable {
                reason: format!("HTTP {status}: {excerpt}"),
                retry_after,
            })
        } else if status.is_redirection() {
            Err(SinkError::Permanent {
                reason: format!(
                    "HTTP {status}: redirects are not followed, configure the final URL"
                ),
            })
        } else {
            Err(SinkError::Permanent {
                reason: format!("HTTP {status}: {excerpt}"),
            })
        }
    }

    /// Renders and posts one event (every request it needs, in order).
    async fn post_one(&self, batch: &[JournalEntry], i: usize) -> Result<(), SinkError> {
        let Some(e) = batch.get(i) else {
            return Ok(());
        };
        for req in render_single(&self.settings, e)? {
            self.post(req).await?;
        }
        Ok(())
    }

    /// Posts the events at `chunk` (indices into `batch`, journal order) as one batched
    /// request and records each event's outcome in `done`; returns true when the lane must
    /// stop. A retriable failure fails the whole chunk (retried as a whole). A permanent one
    /// (the receiver rejected the body) splits the chunk: its events are posted one by one, so
    /// only the events the receiver rejects on their own are dead-lettered.
    async fn post_chunk(
        &self,
        batch: &[JournalEntry],
        chunk: &[usize],
        done: &mut Vec<(usize, Result<(), SinkError>)>,
    ) -> bool {
        let entries: Vec<&JournalEntry> = chunk.iter().filter_map(|&i| batch.get(i)).collect();
        match self.post(render_batch(&entries)).await {
            Ok(()) => {
                metrics::counter!("liqwatch_webhook_batched_events_total", "sink" => self.name.clone())
                    .increment(entries.len() as u64);
                done.extend(chunk.iter().map(|&i| (i, Ok(()))));
                false
            }
            Err(e @ SinkError::Retriable { .. }) => {
                if let Some(&first) = chunk.first() {
                    done.push((first, Err(e)));
                }
                true
            }
            Err(SinkError::Permanent { reason }) => {
                metrics::counter!("liqwatch_webhook_batch_splits_total", "sink" => self.name.clone())
                    .increment(1);
                tracing::warn!(
                    sink = %self.name,
                    events = chunk.len(),
                    %reason,
                    "Webhook receiver rejected a batch; posting its events one by one"
                );
                for &i in chunk {
                    let res = self.post_one(batch, i).await;
                    let failed = res.is_err();
                    done.push((i, res));
                    if failed {
                        return true;
                    }
                }
                false
            }
        }
    }

    /// Delivers over `concurrency` lanes keyed by account: each lane posts its events in order
    /// and stops at its first failure; the result is the delivered prefix and the error of the
    /// first entry not delivered.
    async fn deliver_lanes(&self, batch: &[JournalEntry]) -> (usize, Option<SinkError>) {
        use std::hash::{Hash, Hasher};
        let deadline = tokio::time::Instant::now() + self.settings.max_batch_time;
        let n = self.settings.concurrency.max(1);
        let mut lanes: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, e) in batch.iter().enumerate() {
            let mut h = std::hash::DefaultHasher::new();
            match (&e.event.account_id, &e.event.feed) {
                (Some(a), _) => a.as_str().hash(&mut h),
                (None, Some(f)) => f.instrument.as_str().hash(&mut h),
                (None, None) => e.event.event_id.hash(&mut h),
            }
            let lane = usize::try_from(h.finish() % n as u64).unwrap_or(0);
            if let Some(l) = lanes.get_mut(lane) {
                l.push(i);
            }
        }
        let per_request = self.settings.batch_max.max(1);
        let runs = lanes
            .into_iter()
            .filter(|l| !l.is_empty())
            .map(|lane| async move {
                let mut done = Vec::with_capacity(lane.len());
                for chunk in lane.chunks(per_request) {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    let failed = if chunk.len() > 1 {
                        self.post_chunk(batch, chunk, &mut done).await
                    } else {
                        let mut failed = false;
                        for &i in chunk {
                            let res = self.post_one(batch, i).await;
                            failed = res.is_err();
                            done.push((i, res));
                        }
                        failed
                    };
                    if failed {
                        break;
                    }
                }
                done
            });
        let results = futures::future::join_all(runs).await;
        let mut status: Vec<Option<Result<(), SinkError>>> = vec![None; batch.len()];
        for (i, res) in results.into_iter().flatten() {
            if let Some(s) = status.get_mut(i) {
                *s = Some(res);
            }
        }
        let mut delivered = 0;
        for s in status {
            match s {
                Some(Ok(())) => delivered += 1,
                Some(Err(e)) => return (delivered, Some(e)),
                None => {
                    // Not attempted: the budget ran out (an earlier failure in its lane would
                    // have ended the prefix before this entry).
                    return (
                        delivered,
                        Some(budget_used(
                            delivered,
                            batch.len(),
                            self.settings.max_batch_time,
                        )),
                    );
                }
            }
        }
        (delivered, None)
    }

    /// Renders and posts one planned message; `Ok` once the receiver accepted all of it.
    async fn send_message(
        &self,
        batch: &[JournalEntry],
        msg: &PlannedMessage,
        top: usize,
    ) -> Result<(), SinkError> {
        let members: Vec<&JournalEntry> =
            msg.members.iter().filter_map(|&i| batch.get(i)).collect();
        let requests = if msg.is_group() {
            vec![render_group(&self.settings, &members, top)?]
        } else {
            match members.first() {
                Some(e) => render_single(&self.settings, e)?,
                None => Vec::new(),
            }
        };
        for req in requests {
            self.post(req).await?;
        }
        if msg.is_group() {
            metrics::counter!("liqwatch_webhook_grouped_events_total", "sink" => self.name.clone())
                .increment(msg.members.len() as u64);
        }
        Ok(())
    }

    /// While the rate limiter holds message `idx` back, sends the later trigger messages whose
    /// accounts have nothing unsent before them (so per-account order holds). A failure here is
    /// only logged: the trigger stays unsent and is retried in its turn, where its error is
    /// reported against the right entry.
    async fn send_triggers_ahead(
        &self,
        batch: &[JournalEntry],
        planned: &[PlannedMessage],
        idx: usize,
        sent: &mut [bool],
        tracker: &mut PrefixTracker,
        top: usize,
    ) {
        let accounts = |m: &PlannedMessage| -> Vec<AccountId> {
            m.members
                .iter()
                .filter_map(|&i| batch.get(i).and_then(|e| e.event.account_id.clone()))
                .collect()
        };
        let mut blocked: HashSet<AccountId> = planned
            .get(idx)
            .map(|m| accounts(m).into_iter().collect())
            .unwrap_or_default();
        for j in idx + 1..planned.len() {
            let (Some(m), Some(false)) = (planned.get(j), sent.get(j).copied()) else {
                continue;
            };
            let accs = accounts(m);
            let trigger = has_trigger(batch, m);
            if trigger && !accs.is_empty() && accs.iter().all(|a| !blocked.contains(a)) {
                match self.send_message(batch, m, top).await {
                    Ok(()) => {
                        if let Some(s) = sent.get_mut(j) {
                            *s = true;
                        }
                        tracker.mark(&m.members);
                        metrics::counter!("liqwatch_webhook_triggers_ahead_total", "sink" => self.name.clone())
                            .increment(1);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(sink = %self.name, error = %e, "Trigger sent ahead of the rate limit failed; it will be retried in order");
                    }
                }
            }
            blocked.extend(accs);
        }
    }

    async fn deliver_batch(&mut self, batch: &[JournalEntry]) -> (usize, Option<SinkError>) {
        if self.settings.format == WebhookFormat::Generic
            && (self.settings.concurrency > 1 || self.settings.batch_max > 1)
        {
            return self.deliver_lanes(batch).await;
        }
        let group = match self.settings.format {
            WebhookFormat::Generic => None,
            _ => self.settings.group.clone(),
        };
        let top = group.as_ref().map(|g| g.top).unwrap_or(5);
        let planned: Vec<PlannedMessage> = noise::plan(batch, group.as_ref());
        let mut sent = vec![false; planned.len()];
        let mut tracker = PrefixTracker::new(batch.len());
        let deadline = tokio::time::Instant::now() + self.settings.max_batch_time;
        // Messages go in plan order (by first member), so when message `idx` fails every entry
        // before its first member is delivered and the error applies to that first member.
        for idx in 0..planned.len() {
            let (Some(msg), Some(false)) = (planned.get(idx), sent.get(idx).copied()) else {
                continue;
            };
            if tokio::time::Instant::now() >= deadline {
                let done = tracker.prefix();
                return (
                    done,
                    Some(budget_used(done, batch.len(), self.settings.max_batch_time)),
                );
            }
            if self.limiter.is_some() {
                if has_trigger(batch, msg) {
                    // Triggers never wait: take a token if there is one, go regardless.
                    if let Some(l) = self.limiter.as_mut() {
                        l.take_if_available();
                    }
                } else {
                    let must_wait = self
                        .limiter
                        .as_mut()
                        .is_some_and(|l| !l.wait_time().is_zero());
                    if must_wait {
                        self.send_triggers_ahead(
                            batch,
                            &planned,
                            idx,
                            &mut sent,
                            &mut tracker,
                            top,
                        )
                        .await;
                        // Do not sleep past the budget: report progress and ask the driver to
                        // come back when the next token is due.
                        let wait = self
                            .limiter
                            .as_mut()
                            .map(|l| l.wait_time())
                            .unwrap_or_default();
                        if tokio::time::Instant::now() + wait > deadline {
                            metrics::counter!("liqwatch_webhook_rate_limited_total", "sink" => self.name.clone())
                                .increment(1);
                            return (
                                tracker.prefix(),
                                Some(SinkError::Retriable {
                                    reason: format!(
                                        "rate limit: next message allowed in {}",
                                        humantime::format_duration(wait)
                                    ),
                                    retry_after: Some(wait),
                                }),
                            );
                        }
                    }
                    if let Some(l) = self.limiter.as_mut() {
                        let waited = l.acquire().await;
                        if !waited.is_zero() {
                            metrics::counter!("liqwatch_webhook_rate_limited_total", "sink" => self.name.clone())
                                .increment(1);
                            tracing::debug!(sink = %self.name, waited_ms = waited.as_millis() as u64, "Rate limit delayed a message");
                        }
                    }
                }
            }
            if let Err(e) = self.send_message(batch, msg, top).await {
                return (tracker.prefix(), Some(e));
            }
            if let Some(s) = sent.get_mut(idx) {
                *s = true;
            }
            tracker.mark(&msg.members);
        }
        (tracker.prefix(), None)
    }
}

fn has_trigger(batch: &[JournalEntry], msg: &PlannedMessage) -> bool {
    msg.members.iter().any(|&i| {
        batch
            .get(i)
            .is_some_and(|e| e.event.kind == EventKind::LiquidationTrigger)
    })
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a [JournalEntry],
    ) -> BoxFuture<'a, (usize, Option<SinkError>)> {
        Box::pin(self.deliver_batch(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::noise::tests::entry;
    use rust_decimal_macros::dec;

    fn settings(format: WebhookFormat) -> WebhookSettings {
        WebhookSettings {
            url: "http://127.0.0.1:9/hook".to_string(),
            format,
            secret: Some(Secret(b"s3cret".to_vec())),
            routing_key: Some("R0UT1NG".to_string()),
            timeout: Duration::from_secs(1),
            group: None,
            rate_limit: None,
            source: "liqwatch-test".to_string(),
            concurrency: 1,
            max_batch_time: Duration::from_secs(15),
            batch_max: 1,
        }
    }

    /// The signature is HMAC-SHA256 over "<t>.<body>" and verifies; tampering or replay fails.
    #[test]
    fn sign_and_verify() {
        let body = br#"{"a":1}"#;
        let h = sign(b"key", 1_700_000_000, body);
        // Independent check: openssl dgst -sha256 -hmac key of '1700000000.{"a":1}'.
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(b"key").unwrap();
        m.update(b"1700000000.{\"a\":1}");
        let want = hex::encode(m.finalize().into_bytes());
        assert_eq!(h, format!("t=1700000000,v1={want}"));
        // The README's openssl recipe gives the same digest:
        // printf '%s.%s' 1700000000 '{"a":1}' | openssl dgst -sha256 -hmac key -hex
        assert_eq!(
            want,
            "a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
        let tol = Duration::from_secs(300);
        assert_eq!(verify(b"key", &h, body, 1_700_000_100, tol), Ok(()));
        assert_eq!(
            verify(b"key", &h, b"{\"a\":2}", 1_700_000_100, tol),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &h, body, 1_700_000_100, tol),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"key", &h, body, 1_700_000_301, tol),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(b"key", "v1=zz", body, 0, tol),
            Err(VerifyError::Malformed)
        );
    }

    /// Retry-After parses delta seconds and HTTP dates, capped, past dates are zero.
    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("0.25", now),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    /// Config resolution reads named env vars, reports every problem at once, and never prints
    /// secrets.
    #[test]
    fn config_resolve() {
        let env = |k: &str| match k {
            "SECRET" => Some("abc".to_string()),
            "PD" => Some("rk".to_string()),
            "URL" => Some("https://hooks.slack.com/services/T/B/XYZ".to_string()),
            _ => None,
        };
        let cfg: WebhookConfig = toml::from_str(
            r#"
            url_env = "URL"
            format = "slack"
            secret_env = "SECRET"
            timeout = "5s"
            group = { window = "30s", min_events = 4, top = 3 }
            rate_limit = { messages = 10, per = "1m" }
            "#,
        )
        .unwrap();
        let s = cfg.resolve(&env).unwrap();
        assert_eq!(s.url, "https://hooks.slack.com/services/T/B/XYZ");
        assert_eq!(s.secret, Some(Secret(b"abc".to_vec())));
        assert_eq!(s.group.as_ref().unwrap().min_events, 4);
        assert_eq!(s.rate_limit.unwrap().messages, 10);
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("XYZ") && !dbg.contains("abc"), "{dbg}");

        let bad: WebhookConfig = toml::from_str(
            r#"
            url = "ftp://x"
            format = "pagerduty"
            secret_env = "MISSING"
            timeout = "0s"
            "#,
        )
        .unwrap();
        let errs = bad.resolve(&env).unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("MISSING")));
        assert!(errs.iter().any(|e| e.contains("routing_key_env")));
        let unknown = toml::from_str::<WebhookConfig>("url = \"http://x\"\nsecrett = \"a\"");
        assert!(unknown.is_err());
        let grouped_generic: WebhookConfig =
            toml::from_str("url = \"http://x\"\ngroup = {}").unwrap();
        assert!(grouped_generic.resolve(&env).is_err());
    }

    /// The readable text carries account, kind, level, ratio, equity, MM and shock distance.
    #[test]
    fn alert_text_has_the_numbers() {
        let e = entry(
            1,
            EventKind::LiquidationTrigger,
            "acct-7",
            0,
            dec!(1.012345),
        );
        let t = alert_text(&e.event);
        assert_eq!(t.title, "LIQUIDATION TRIGGER: acct-7");
        assert_eq!(
            t.summary,
            "liquidation_trigger acct-7: margin ratio 1.0123 (level 1), equity 10000.00, \
             MM 10123.45, shock distance -5.12 %"
        );
    }

    /// A batched body is `{"events":[…]}` of the journaled JSON in order, parses back to the
    /// same events, and its key names the first and last event and the count.
    #[test]
    fn batch_body_and_key() {
        let a = entry(1, EventKind::LiquidationWarning, "acct-1", 0, dec!(0.85));
        let b = entry(2, EventKind::LiquidationTrigger, "acct-2", 0, dec!(1.2));
        let req = render_batch(&[&a, &b]);
        let want = format!("{{\"events\":[{},{}]}}", a.json, b.json);
        assert_eq!(req.body, want.as_bytes());
        let v: Value = serde_json::from_slice(&req.body).unwrap();
        let a_json: Value = serde_json::from_str(&a.json).unwrap();
        assert_eq!(v["events"][0], a_json);
        assert_eq!(
            req.idempotency_key,
            format!("batch:{}:{}:2", a.event.event_id, b.event.event_id)
        );
        assert_eq!(render_batch(&[&a, &b]), req, "deterministic across retries");
    }

    /// Each format's body has the shape its receiver expects.
    #[test]
    fn body_shapes() {
        let w = entry(1, EventKind::LiquidationWarning, "acct-1", 0, dec!(0.85));
        let g = render_single(&settings(WebhookFormat::Generic), &w).unwrap();
        assert_eq!(g[0].body, w.json.as_bytes());
        assert_eq!(g[0].idempotency_key, w.event.event_id.to_string());

        let s: Value = serde_json::from_slice(
            &render_single(&settings(WebhookFormat::Slack), &w).unwrap()[0].body,
        )
        .unwrap();
        assert!(s["text"].as_str().unwrap().contains("acct-1"));
        assert_eq!(s["blocks"][0]["type"], "header");

        let d: Value = serde_json::from_slice(
            &render_single(&settings(WebhookFormat::Discord), &w).unwrap()[0].body,
        )
        .unwrap();
        assert!(d["content"].as_str().unwrap().contains("acct-1"));
        assert_eq!(d["embeds"][0]["timestamp"], w.event.time);
        assert_eq!(d["allowed_mentions"]["parse"], json!([]));

        let p: Value = serde_json::from_slice(
            &render_single(&settings(WebhookFormat::Pagerduty), &w).unwrap()[0].body,
        )
        .unwrap();
        assert_eq!(p["routing_key"], "R0UT1NG");
        assert_eq!(p["event_action"], "trigger");
        assert_eq!(p["dedup_key"], "liqwatch:acct-1:0.8");
        assert_eq!(p["payload"]["severity"], "warning");
        assert_eq!(p["payload"]["source"], "liqwatch-test");
        assert_eq!(p["payload"]["custom_details"]["margin_ratio"], "0.85");

        // A recovery resolves the incident of each level it recovered from.
        let mut r = entry(2, EventKind::Recovered, "acct-1", 5, dec!(0.5));
        r.event.level = Some(dec!(1.0));
        r.event.crossed_levels = vec![dec!(0.80), dec!(1.0)];
        let reqs = render_single(&settings(WebhookFormat::Pagerduty), &r).unwrap();
        let keys: Vec<String> = reqs
            .iter()
            .map(|q| {
                let v: Value = serde_json::from_slice(&q.body).unwrap();
                assert_eq!(v["event_action"], "resolve");
                v["dedup_key"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(keys, vec!["liqwatch:acct-1:0.8", "liqwatch:acct-1:1"]);
    }

    /// A grouped message counts every warning and lists the worst accounts first.
    #[test]
    fn group_body_lists_worst() {
        let es: Vec<JournalEntry> = [dec!(0.81), dec!(0.95), dec!(0.88), dec!(0.99)]
            .iter()
            .enumerate()
            .map(|(i, r)| {
                entry(
                    i as u64,
                    EventKind::LiquidationWarning,
                    &format!("a{i}"),
                    i as i64 * 500,
                    *r,
                )
            })
            .collect();
        let refs: Vec<&JournalEntry> = es.iter().collect();
        let g = group_text(&refs, 2);
        assert_eq!(g.title, "⚠️ 4 liquidation warnings in 1.5 s");
        assert_eq!(g.worst.len(), 2);
        assert!(
            g.worst[0].contains("a3") && g.worst[1].contains("a1"),
            "{:?}",
            g.worst
        );
        let req = render_group(&settings(WebhookFormat::Slack), &refs, 2).unwrap();
        let v: Value = serde_json::from_slice(&req.body).unwrap();
        assert!(
            v["blocks"][1]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("a3")
        );
        assert!(render_group(&settings(WebhookFormat::Generic), &refs, 2).is_err());
    }
}
