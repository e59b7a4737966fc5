//! The webhook sink's config: the keys of a `[[sinks]] type = "webhook"` entry
//! ([`WebhookConfig`]), their validation with the environment resolved up front
//! ([`WebhookConfig::resolve`]: the URL may come from `url_env`, the HMAC secret from
//! `secret_env`, the PagerDuty routing key from `routing_key_env`), and the resulting
//! [`WebhookSettings`], whose `Debug` never shows a secret or a chat webhook's URL.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::WebhookSink;
use crate::runtime::Secret;
use crate::sinks::noise::{GroupConfig, RateLimit};
use crate::sinks::{Sink, SinkBuildError, SinkConfig, SinkContext, SinkSettings};

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
    /// [`render_batch`](super::render_batch)). The driver's batch size (256) also bounds it.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Chat and incident formats: the risk page's address as the alert's readers reach it
    /// (`https://risk.example.com/`); each account alert then links to the account on it
    /// (`…/#account=ID`).
    #[serde(default)]
    pub page_url: Option<String>,
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
            page_url: None,
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
            crate::runtime::secret::read_named_env(env, key)
                .map_err(|e| errors.push(format!("{what}: {e}")))
                .ok()
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
            .and_then(|k| read_env(k, "secret_env", &mut errors).map(|v| Secret::from_env(k, v)));
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
        let page_url = self.page_url.as_deref().and_then(|u| {
            if !chat {
                errors.push(
                    "page_url applies to slack, discord and pagerduty only (the generic body is the event as journaled)"
                        .to_string(),
                );
                return None;
            }
            match reqwest::Url::parse(u) {
                Ok(p) if (p.scheme() == "http" || p.scheme() == "https") && p.fragment().is_none() => {
                    Some(u.trim_end_matches('/').to_string())
                }
                Ok(_) => {
                    errors.push(format!(
                        "page_url {u:?}: expected an http or https address without a #fragment"
                    ));
                    None
                }
                Err(e) => {
                    errors.push(format!("page_url {u:?}: not a valid URL ({e})"));
                    None
                }
            }
        });
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
            page_url,
        })
    }
}

impl SinkConfig for WebhookConfig {
    const TYPE: &'static str = "webhook";
    type Settings = WebhookSettings;

    fn into_settings(self, cx: &SinkContext<'_>) -> Result<WebhookSettings, Vec<String>> {
        WebhookConfig::resolve(&self, cx.env)
    }
}

impl SinkSettings for WebhookSettings {
    fn build(&self, name: &str) -> Result<Box<dyn Sink>, SinkBuildError> {
        if self.secret.is_none() {
            tracing::warn!(sink = %name, "Webhook sink has no secret_env: its requests are not signed");
        }
        WebhookSink::new(name, self.clone())
            .map(|s| Box::new(s) as Box<dyn Sink>)
            .map_err(|e| SinkBuildError(e.to_string()))
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
    /// The risk page's address, without a trailing `/` (chat and incident formats): account
    /// alerts link to `{page_url}/#account={id}`.
    pub page_url: Option<String>,
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
            page_url: None,
        }
    }

    /// The link to `account` on the risk page, when [`WebhookSettings::page_url`] is set.
    pub fn account_link(&self, account: &str) -> Option<String> {
        let base = self.page_url.as_deref()?;
        // As the page's `encodeURIComponent` writes it, so its `decodeURIComponent` reads it.
        const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'!')
            .remove(b'~')
            .remove(b'*')
            .remove(b'\'')
            .remove(b'(')
            .remove(b')');
        let id = percent_encoding::utf8_percent_encode(account, COMPONENT);
        Some(format!("{base}/#account={id}"))
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
            .field("page_url", &self.page_url)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `page_url`: an http(s) address for the chat and incident formats, kept without its
    /// trailing `/`; a fragment, another scheme, garbage or a generic webhook is refused.
    #[test]
    fn page_url_is_checked() {
        let env = |_: &str| Some("rk".to_string());
        let with = |format, url: &str| WebhookConfig {
            format,
            routing_key_env: (format == WebhookFormat::Pagerduty).then(|| "PD".to_string()),
            page_url: Some(url.to_string()),
            ..WebhookConfig::generic("https://hooks.example.com/x")
        };
        let s = with(WebhookFormat::Slack, "https://risk.example.com/")
            .resolve(&env)
            .unwrap();
        assert_eq!(s.page_url.as_deref(), Some("https://risk.example.com"));
        assert_eq!(
            s.account_link("a b").as_deref(),
            Some("https://risk.example.com/#account=a%20b")
        );
        let s = with(WebhookFormat::Pagerduty, "http://10.0.0.5:9477/risk")
            .resolve(&env)
            .unwrap();
        assert_eq!(
            s.account_link("x").as_deref(),
            Some("http://10.0.0.5:9477/risk/#account=x")
        );
        for (format, url, says) in [
            (
                WebhookFormat::Slack,
                "https://risk.example.com/#x",
                "#fragment",
            ),
            (
                WebhookFormat::Discord,
                "ftp://risk.example.com/",
                "#fragment",
            ),
            (WebhookFormat::Slack, "not a url", "not a valid URL"),
            (
                WebhookFormat::Generic,
                "https://risk.example.com/",
                "slack, discord and pagerduty only",
            ),
        ] {
            let errors = with(format, url).resolve(&env).unwrap_err();
            assert!(errors.iter().any(|e| e.contains(says)), "{url}: {errors:?}");
        }
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
        assert_eq!(s.secret, Some(Secret::new("abc")));
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
}
