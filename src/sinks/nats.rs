//! NATS JetStream sink: publishes each event's journaled JSON to a subject (default
//! `liqwatch.events.{kind}`) with `Nats-Msg-Id: <event_id>` so JetStream de-duplicates
//! re-deliveries, and reports an event delivered only after its publish ack.
//!
//! Publishes of a batch are pipelined (up to `max_in_flight` unacknowledged) and their acks
//! awaited in order, so the delivered count is always a prefix of the batch. Connection
//! failures, ack timeouts and a missing stream are [`SinkError::Retriable`]; a message larger
//! than the server's `max_payload` is [`SinkError::Permanent`]. The client reconnects on its
//! own after a broker restart; the stream can be created/ensured at connect time.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::model::RiskEvent;
use crate::sinks::{JournalEntry, Sink, SinkError};

/// Default subject template.
pub const DEFAULT_SUBJECT: &str = "liqwatch.events.{kind}";

fn default_subject() -> String {
    DEFAULT_SUBJECT.to_string()
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_in_flight() -> usize {
    256
}
fn default_stream_name() -> String {
    "LIQWATCH_EVENTS".to_string()
}
fn default_stream_subjects() -> Vec<String> {
    vec!["liqwatch.events.>".to_string()]
}
fn default_dup_window() -> Duration {
    Duration::from_secs(120)
}
fn yes() -> bool {
    true
}

/// The stream to create or check at connect time.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Stream name (default `LIQWATCH_EVENTS`).
    #[serde(default = "default_stream_name")]
    pub name: String,
    /// Subjects the stream captures (default `["liqwatch.events.>"]`).
    #[serde(default = "default_stream_subjects")]
    pub subjects: Vec<String>,
    /// JetStream's de-duplication window on `Nats-Msg-Id` (default `2m`). Keep it longer than
    /// the longest outage the sink should re-deliver across without duplicates.
    #[serde(default = "default_dup_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Create the stream when it does not exist (default true); false only checks it exists.
    #[serde(default = "yes")]
    pub create: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            name: default_stream_name(),
            subjects: default_stream_subjects(),
            duplicate_window: default_dup_window(),
            create: true,
        }
    }
}

/// Reads `stream` as a table or, as a shorthand, a stream name with defaults elsewhere.
fn stream_or_name<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<StreamConfig>, D::Error> {
    struct NameOrTable;
    impl<'de> serde::de::Visitor<'de> for NameOrTable {
        type Value = StreamConfig;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a stream name or a table { name, subjects, duplicate_window, create }")
        }
        fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<StreamConfig, E> {
            Ok(StreamConfig {
                name: name.to_string(),
                ..StreamConfig::default()
            })
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<StreamConfig, A::Error> {
            StreamConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(NameOrTable).map(Some)
}

/// A NATS sink as written in the config file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), e.g. `nats://127.0.0.1:4222` (comma-separated for a cluster).
    pub url: String,
    /// Subject template; `{kind}` and `{account}` are replaced (default
    /// `liqwatch.events.{kind}`).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Stream to ensure at connect time (none: the stream is managed elsewhere).
    /// `stream = "NAME"` is shorthand for `stream = { name = "NAME" }`.
    #[serde(default, deserialize_with = "stream_or_name")]
    pub stream: Option<StreamConfig>,
    /// Timeout for connect, stream management and each publish ack (default `5s`).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most unacknowledged publishes at once (default 256).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Environment variable holding an auth token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// User name (with `password_env`).
    #[serde(default)]
    pub user: Option<String>,
    /// Environment variable holding the password for `user`.
    #[serde(default)]
    pub password_env: Option<String>,
}

impl NatsConfig {
    /// A config for `url` with defaults everywhere else.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            subject: default_subject(),
            stream: None,
            timeout: default_timeout(),
            max_in_flight: default_in_flight(),
            token_env: None,
            user: None,
            password_env: None,
        }
    }

    /// Validates the config and reads secrets through `env`; returns every problem at once.
    pub fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<NatsSettings, Vec<String>> {
        let mut errors = Vec::new();
        if self.url.trim().is_empty() {
            errors.push("url must not be empty".to_string());
        }
        if let Err(e) = check_template(&self.subject) {
            errors.push(format!("subject {:?}: {e}", self.subject));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            errors.push("timeout must be between 1ms and 5m".to_string());
        }
        if self.max_in_flight == 0 {
            errors.push("max_in_flight must be at least 1".to_string());
        }
        if let Some(s) = &self.stream {
            if s.name.is_empty() || s.name.contains(['.', '*', '>', ' ']) {
                errors.push(format!("stream.name {:?} must be a plain token", s.name));
            }
            if s.subjects.is_empty() {
                errors.push("stream.subjects must not be empty".to_string());
            }
            if check_template(&self.subject).is_ok()
                && !s.subjects.is_empty()
                && !s
                    .subjects
                    .iter()
                    .any(|pat| subject_matches(pat, &self.subject))
            {
                errors.push(format!(
                    "subject {:?} is not captured by stream.subjects {:?}: every publish would \
                     fail with \"no stream\"",
                    self.subject, s.subjects
                ));
            }
            if s.duplicate_window.is_zero() {
                errors.push("stream.duplicate_window must be positive".to_string());
            }
        }
        let mut read = |key: &str, what: &str| {
            crate::runtime::secret::read_named_env(env, key)
                .map_err(|e| errors.push(format!("{what}: {e}")))
                .ok()
        };
        let token = self.token_env.as_deref().and_then(|k| read(k, "token_env"));
        let password = self
            .password_env
            .as_deref()
            .and_then(|k| read(k, "password_env"));
        let auth = match (token, &self.user, password) {
            (Some(t), None, None) => Auth::Token(t),
            (None, Some(u), Some(p)) => Auth::UserPassword(u.clone(), p),
            (None, None, None) => Auth::None,
            _ => {
                errors.push("auth: set either token_env, or user with password_env".to_string());
                Auth::None
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(NatsSettings {
            url: self.url.clone(),
            subject: self.subject.clone(),
            stream: self.stream.clone(),
            timeout: self.timeout,
            max_in_flight: self.max_in_flight,
            auth,
        })
    }
}

impl crate::sinks::SinkConfig for NatsConfig {
    const TYPE: &'static str = "nats";
    type Settings = NatsSettings;

    fn into_settings(
        self,
        cx: &crate::sinks::SinkContext<'_>,
    ) -> Result<NatsSettings, Vec<String>> {
        NatsConfig::resolve(&self, cx.env)
    }
}

impl crate::sinks::SinkSettings for NatsSettings {
    fn build(&self, name: &str) -> Result<Box<dyn Sink>, crate::sinks::SinkBuildError> {
        Ok(Box::new(NatsSink::new(name, self.clone())))
    }
}

/// How to authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// No auth.
    None,
    /// A token.
    Token(String),
    /// User and password.
    UserPassword(String, String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::UserPassword(u, _) => write!(f, "UserPassword({u:?}, <redacted>)"),
        }
    }
}

/// Validated NATS settings.
#[derive(Clone, Debug)]
pub struct NatsSettings {
    /// Server URL(s).
    pub url: String,
    /// Subject template.
    pub subject: String,
    /// Stream to ensure.
    pub stream: Option<StreamConfig>,
    /// Connect/ack timeout.
    pub timeout: Duration,
    /// Most unacknowledged publishes.
    pub max_in_flight: usize,
    /// Authentication.
    pub auth: Auth,
}

fn check_template(t: &str) -> Result<(), String> {
    let sample = t.replace("{kind}", "k").replace("{account}", "a");
    if sample.contains(['{', '}']) {
        return Err("only {kind} and {account} can be substituted".to_string());
    }
    if sample.is_empty()
        || sample
            .split('.')
            .any(|tok| tok.is_empty() || tok.contains(['*', '>', ' ', '\t']))
    {
        return Err("not a valid publish subject (empty token, wildcard or space)".to_string());
    }
    Ok(())
}

/// True when NATS subject pattern `pattern` (`*` = one token, `>` = one or more trailing
/// tokens) captures every subject `template` can produce (`{kind}`/`{account}` are one token).
pub fn subject_matches(pattern: &str, template: &str) -> bool {
    let pat: Vec<&str> = pattern.split('.').collect();
    let sub: Vec<&str> = template.split('.').collect();
    for (i, p) in pat.iter().enumerate() {
        if *p == ">" {
            return sub.len() > i;
        }
        let Some(t) = sub.get(i) else { return false };
        let placeholder = t.starts_with('{') && t.ends_with('}');
        if *p != "*" && (placeholder || p != t) {
            return false;
        }
    }
    pat.len() == sub.len()
}

/// Makes any account id a single valid subject token: characters other than ASCII letters,
/// digits, `-` and `_` become `_`.
pub fn subject_token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "_".to_string() } else { t }
}

/// The subject for an event under `template`.
pub fn subject_for(template: &str, ev: &RiskEvent) -> String {
    let mut s = template.replace("{kind}", ev.kind.as_str());
    if s.contains("{account}") {
        let acc = ev
            .account_id
            .as_ref()
            .map(|a| subject_token(a.as_str()))
            .unwrap_or_else(|| "_feed".to_string());
        s = s.replace("{account}", &acc);
    }
    s
}

/// The NATS JetStream sink.
pub struct NatsSink {
    name: String,
    settings: NatsSettings,
    js: Option<jetstream::Context>,
    stream_ready: bool,
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field("connected", &self.js.is_some())
            .finish()
    }
}

fn retriable(reason: String) -> SinkError {
    SinkError::Retriable {
        reason,
        retry_after: None,
    }
}

impl NatsSink {
    /// A sink that connects on first delivery (so a broker that is down at startup only delays
    /// this sink).
    pub fn new(name: impl Into<String>, settings: NatsSettings) -> NatsSink {
        NatsSink {
            name: name.into(),
            settings,
            js: None,
            stream_ready: false,
        }
    }

    /// Connects (if not yet connected) and ensures the stream (if configured and not yet done).
    pub async fn connect(&mut self) -> Result<jetstream::Context, SinkError> {
        let t = self.settings.timeout;
        let js = match &self.js {
            Some(js) => js.clone(),
            None => {
                let mut opts = async_nats::ConnectOptions::new()
                    .name("liqwatch")
                    .connection_timeout(t)
                    .request_timeout(Some(t))
                    .reconnect_delay_callback(|attempts| {
                        let ms = 100u64.saturating_mul(1 << attempts.min(6));
                        Duration::from_millis(ms.min(5_000))
                    });
                opts = match &self.settings.auth {
                    Auth::None => opts,
                    Auth::Token(tok) => opts.token(tok.clone()),
                    Auth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
                };
                let client = match tokio::time::timeout(t, opts.connect(self.settings.url.as_str()))
                    .await
                {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Err(retriable(format!("cannot connect to NATS: {e}"))),
                    Err(_) => {
                        return Err(retriable(format!(
                            "cannot connect to NATS within {}",
                            humantime::format_duration(t)
                        )));
                    }
                };
                tracing::info!(sink = %self.name, "Connected to NATS");
                let js = jetstream::context::ContextBuilder::new()
                    .timeout(t)
                    .build(client);
                self.js = Some(js.clone());
                js
            }
        };
        if !self.stream_ready {
            if let Some(sc) = &self.settings.stream {
                let res = if sc.create {
                    let cfg = jetstream::stream::Config {
                        name: sc.name.clone(),
                        subjects: sc.subjects.clone(),
                        duplicate_window: sc.duplicate_window,
                        ..Default::default()
                    };
                    tokio::time::timeout(t, js.get_or_create_stream(cfg))
                        .await
                        .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
                } else {
                    tokio::time::timeout(t, js.get_stream(sc.name.as_str()))
                        .await
                        .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
                };
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return Err(retriable(format!("stream {}: {e}", sc.name)));
                    }
                    Err(_) => return Err(retriable(format!("stream {}: timed out", sc.name))),
                }
            }
            self.stream_ready = true;
        }
        Ok(js)
    }

    async fn deliver_batch(&mut self, batch: &[JournalEntry]) -> (usize, Option<SinkError>) {
        let js = match self.connect().await {
            Ok(js) => js,
            Err(e) => {
                self.count("retriable", 1);
                tracing::warn!(sink = %self.name, error = %e, "NATS delivery failed");
                return (0, Some(e));
            }
        };
        let t = self.settings.timeout;
        let mut delivered = 0usize;
        let mut next = 0usize;
        let mut pending: VecDeque<(jetstream::context::PublishAckFuture, tokio::time::Instant)> =
            VecDeque::new();
        let mut send_error: Option<SinkError> = None;
        while delivered < batch.len() {
            // Fill the pipeline.
            while send_error.is_none()
                && next < batch.len()
                && pending.len() < self.settings.max_in_flight
            {
                let Some(e) = batch.get(next) else { break };
                let subject = subject_for(&self.settings.subject, &e.event);
                let msg = jetstream::message::PublishMessage::build()
                    .payload(bytes::Bytes::from(e.json.clone()))
                    .message_id(e.event.event_id.to_string())
                    .header("Liqwatch-Kind", e.event.kind.as_str());
                match tokio::time::timeout(t, js.send_publish(subject, msg)).await {
                    Ok(Ok(ack)) => {
                        pending.push_back((ack, tokio::time::Instant::now()));
                        next += 1;
                    }
                    Ok(Err(err)) => send_error = Some(classify(err.kind(), &err.to_string())),
                    Err(_) => send_error = Some(retriable("publish timed out".to_string())),
                }
            }
            // Await the oldest ack.
            let Some((ack, started)) = pending.pop_front() else {
                break;
            };
            match tokio::time::timeout(t, ack.into_future()).await {
                Ok(Ok(ack)) => {
                    delivered += 1;
                    self.count("ok", 1);
                    if ack.duplicate {
                        metrics::counter!("liqwatch_nats_duplicates_total", "sink" => self.name.clone())
                            .increment(1);
                    }
                    metrics::histogram!("liqwatch_nats_publish_seconds", "sink" => self.name.clone())
                        .record(started.elapsed().as_secs_f64());
                }
                Ok(Err(err)) => {
                    let e = classify(err.kind(), &err.to_string());
                    return self.fail(delivered, e);
                }
                Err(_) => {
                    return self.fail(delivered, retriable("publish ack timed out".to_string()));
                }
            }
        }
        match send_error {
            Some(e) if delivered < batch.len() => self.fail(delivered, e),
            _ => (delivered, None),
        }
    }

    fn count(&self, outcome: &'static str, n: u64) {
        metrics::counter!("liqwatch_nats_publish_total", "sink" => self.name.clone(), "outcome" => outcome)
            .increment(n);
    }

    fn fail(&self, delivered: usize, e: SinkError) -> (usize, Option<SinkError>) {
        self.count(
            if e.is_retriable() {
                "retriable"
            } else {
                "permanent"
            },
            1,
        );
        tracing::warn!(sink = %self.name, delivered, error = %e, "NATS delivery failed");
        (delivered, Some(e))
    }
}

fn classify(kind: PublishErrorKind, msg: &str) -> SinkError {
    match kind {
        PublishErrorKind::MaxPayloadExceeded => SinkError::Permanent {
            reason: format!("NATS publish: {msg}"),
        },
        PublishErrorKind::StreamNotFound => retriable(format!(
            "NATS publish: no JetStream stream captures this subject ({msg}); create one or set \
             the sink's stream"
        )),
        _ => retriable(format!("NATS publish: {msg}")),
    }
}

impl Sink for NatsSink {
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
    use crate::model::EventKind;
    use crate::sinks::noise::tests::entry;
    use rust_decimal_macros::dec;

    /// Subjects follow the template; account ids become one safe token.
    #[test]
    fn subjects() {
        let e = entry(1, EventKind::LiquidationTrigger, "desk.7 *x>", 0, dec!(1.1));
        assert_eq!(
            subject_for(DEFAULT_SUBJECT, &e.event),
            "liqwatch.events.liquidation_trigger"
        );
        assert_eq!(
            subject_for("risk.{account}.{kind}", &e.event),
            "risk.desk_7__x_.liquidation_trigger"
        );
    }

    /// Stream subject patterns are matched with NATS wildcard rules.
    #[test]
    fn subject_patterns() {
        for (pat, tpl, want) in [
            ("liqwatch.events.>", "liqwatch.events.{kind}", true),
            ("liqwatch.events.*", "liqwatch.events.{kind}", true),
            (
                "liqwatch.events.*",
                "liqwatch.events.{account}.{kind}",
                false,
            ),
            ("liqwatch.>", "liqwatch.events.{account}.{kind}", true),
            (
                "liqwatch.events.liquidation_trigger",
                "liqwatch.events.{kind}",
                false,
            ),
            ("risk.>", "liqwatch.events.{kind}", false),
            ("liqwatch.events.>", "liqwatch.events", false),
        ] {
            assert_eq!(subject_matches(pat, tpl), want, "{pat} vs {tpl}");
        }
        let mut cfg = NatsConfig::new("nats://x");
        cfg.subject = "risk.{kind}".into();
        cfg.stream = Some(StreamConfig::default());
        let errs = cfg.resolve(&|_| None).unwrap_err();
        assert!(errs[0].contains("not captured"), "{errs:?}");
    }

    /// Config validation reports every problem at once and redacts secrets.
    #[test]
    fn config_resolve() {
        let cfg: NatsConfig = toml::from_str(
            r#"
            url = "nats://127.0.0.1:4222"
            subject = "liqwatch.events.{kind}"
            token_env = "TOK"
            stream = { duplicate_window = "5m" }
            "#,
        )
        .unwrap();
        let s = cfg
            .resolve(&|k| (k == "TOK").then(|| "sekret".to_string()))
            .unwrap();
        assert_eq!(s.stream.as_ref().unwrap().name, "LIQWATCH_EVENTS");
        assert_eq!(
            s.stream.as_ref().unwrap().duplicate_window,
            Duration::from_secs(300)
        );
        assert!(!format!("{s:?}").contains("sekret"));

        let bad: NatsConfig = toml::from_str(
            r#"
            url = ""
            subject = "a.{who}.>"
            max_in_flight = 0
            token_env = "NOPE"
            "#,
        )
        .unwrap();
        let errs = bad.resolve(&|_| None).unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(toml::from_str::<NatsConfig>("url = \"x\"\nsubjct = \"y\"").is_err());
    }
}
