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
//!
//! This file is the sink and its transport (lanes, batching, rate limit, retries, `Retry-After`);
//! `config.rs` its config, `sign.rs` the signature, `body.rs` what is posted.

mod body; // the four body formats, batches and grouped messages
mod config; // WebhookConfig → WebhookSettings, secrets from the environment
mod sign; // HMAC-SHA256 signature header and its verification

use std::collections::HashSet;
use std::fmt;
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;

use self::body::truncate;
pub use self::body::{
    AlertText, GroupText, OutgoingRequest, alert_text, group_text, render_batch, render_group,
    render_single,
};
pub use self::config::{
    GroupConfigRaw, MAX_BATCH_MAX, RateLimitRaw, WebhookConfig, WebhookFormat, WebhookSettings,
};
pub use self::sign::{VerifyError, sign, verify};
use crate::model::{AccountId, EventKind};
pub use crate::runtime::Secret;
use crate::sinks::noise::{self, PlannedMessage, PrefixTracker, RateLimiter};
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
// The sink
// ---------------------------------------------------------------------------------------------

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
            builder = builder.header(
                SIGNATURE_HEADER,
                sign(secret.expose_bytes(), now, &req.body),
            );
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
                    reason: format!("{what}: {}", error_chain(&e)),
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

/// An error and its causes, `: `-separated, so a log line or `/v1/sinks` says *why* ("error
/// sending request: client error (Connect): tcp connect error: Connection refused (os error
/// 111)"), not only that a request failed. A cause that repeats its parent's text is skipped.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
