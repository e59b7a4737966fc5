//! The NATS JetStream durable pull consumer that feeds `model::AccountUpdate` messages into the
//! daemon's [`AccountWriter`], with sharding (`hash(account_id) mod N`).
//!
//! Delivery contract of the NATS consumer: a message is acked only after
//! [`AccountWriter::apply`] returned `Ok` (the update is applied and durable). A message that can
//! never succeed — not JSON, not an `AccountUpdate`, failing validation, or rejected by the
//! writer as permanent — is counted, logged with its subject and stream sequence, and terminated
//! (`+TERM`) so that JetStream does not redeliver it forever. A transient failure (store busy,
//! shutting down) is nak'ed with a delay and comes back.
//!
//! Wiring, in the daemon (`backend` implements [`AccountWriter`]):
//!
//! ```text
//! let ingest = sources::NatsIngest::connect(sources::NatsIngestConfig {
//!     url, subject, stream, durable,          // from [accounts.nats]
//!     ..Default::default()
//! }).await?;                                  // fails fast: exit 1 if NATS is unreachable
//! tracker.spawn(ingest.run(backend.clone(), cancel.clone()));
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    AccountWriter, Applied, Outcome, UpdateKey, UpdateOrigin, count_update, merge_ids,
    parse_update_with_id, validate_update,
};
use crate::runtime::Backoff;

/// Settings of the JetStream account-update consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsIngestConfig {
    /// Server URL(s), comma-separated (`nats://127.0.0.1:4222`).
    pub url: String,
    /// Token for the server, read by the daemon from the environment variable named in the
    /// config file. Never logged.
    pub token: Option<String>,
    /// The stream holding account updates.
    pub stream: String,
    /// Filter subject of the consumer; a shard consumes its own subtree
    /// (`liqwatch.accounts.shard-3.>`).
    pub subject: String,
    /// Durable consumer name (one per shard); JetStream keeps its position across restarts.
    pub durable: String,
    /// Create the stream (file storage, [`NatsIngestConfig::stream_subjects`]) when it does not
    /// exist. Off when operators manage streams themselves.
    pub create_stream: bool,
    /// Subjects of the stream when it is created. `None`: `liqwatch.accounts.>` when `subject`
    /// lies under it (so every shard's consumer shares one stream), else `subject` itself.
    pub stream_subjects: Option<Vec<String>>,
    /// How long JetStream waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Delay asked for when nak'ing a transient failure.
    pub nak_delay: Duration,
    /// Timeout of connecting and of each request to the server.
    pub timeout: Duration,
    /// This instance's shard; updates for accounts of other shards are terminated (counted as
    /// `wrong_shard`), protecting against a publisher that routes by a different hash.
    pub shard: Option<Shard>,
}

/// One shard of `count`: this instance owns the accounts with
/// [`shard_of`]`(account_id, count) == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index of this instance.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

/// The shard owning `account_id` among `count` shards: FNV-1a 64 of the id's UTF-8 bytes,
/// modulo `count` (0 when `count` is 0). Publishers put an update for account `A` on
/// `liqwatch.accounts.shard-<shard_of(A, N)>.<A>`; see docs/nats.md#sharding.
pub fn shard_of(account_id: &str, count: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    if count == 0 {
        return 0;
    }
    let hash = account_id
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    u32::try_from(hash % u64::from(count)).unwrap_or(0)
}

impl Default for NatsIngestConfig {
    fn default() -> Self {
        NatsIngestConfig {
            url: "nats://127.0.0.1:4222".to_string(),
            token: None,
            stream: "LIQWATCH_ACCOUNTS".to_string(),
            subject: DEFAULT_SUBJECT.to_string(),
            durable: "liqwatch".to_string(),
            create_stream: true,
            stream_subjects: None,
            ack_wait: Duration::from_secs(30),
            nak_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            shard: None,
        }
    }
}

impl NatsIngestConfig {
    /// The subjects the stream is created with (see [`NatsIngestConfig::stream_subjects`]).
    pub fn stream_subjects(&self) -> Vec<String> {
        match &self.stream_subjects {
            Some(s) => s.clone(),
            None if self.subject.starts_with("liqwatch.accounts.") => {
                vec![DEFAULT_SUBJECT.to_string()]
            }
            None => vec![self.subject.clone()],
        }
    }
}

/// Default subject of account updates.
pub const DEFAULT_SUBJECT: &str = "liqwatch.accounts.>";

/// Why the consumer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Could not connect to the server.
    #[error("connecting to NATS at {url}: {reason}")]
    Connect {
        /// The configured URL.
        url: String,
        /// The client's error.
        reason: String,
    },
    /// The stream does not exist (and `create_stream` is off) or could not be created.
    #[error("JetStream stream {stream}: {reason}")]
    Stream {
        /// Stream name.
        stream: String,
        /// The server's error.
        reason: String,
    },
    /// The durable consumer could not be created or bound.
    #[error("JetStream consumer {durable} on {stream}: {reason}")]
    Consumer {
        /// Stream name.
        stream: String,
        /// Durable name.
        durable: String,
        /// The server's error.
        reason: String,
    },
}

impl IngestError {
    /// True when retrying later may help (every variant: servers come back).
    pub fn is_retriable(&self) -> bool {
        true
    }
}

/// A connected, bound JetStream consumer, ready to [`run`](NatsIngest::run).
pub struct NatsIngest {
    config: NatsIngestConfig,
    client: async_nats::Client,
    consumer: jetstream::consumer::Consumer<pull::Config>,
}

impl NatsIngest {
    /// Connects, makes sure the stream exists (creating it when allowed) and binds the durable
    /// pull consumer. After this returns, messages published on the subject will be consumed.
    pub async fn connect(config: NatsIngestConfig) -> Result<NatsIngest, IngestError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("liqwatch-ingest")
            .connection_timeout(config.timeout)
            .request_timeout(Some(config.timeout));
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        let client = tokio::time::timeout(config.timeout, options.connect(config.url.as_str()))
            .await
            .map_err(|_| IngestError::Connect {
                url: config.url.clone(),
                reason: format!("timed out after {:?}", config.timeout),
            })?
            .map_err(|e| IngestError::Connect {
                url: config.url.clone(),
                reason: e.to_string(),
            })?;
        let js = jetstream::new(client.clone());
        let stream_err = |reason: String| IngestError::Stream {
            stream: config.stream.clone(),
            reason,
        };
        let stream = if config.create_stream {
            js.get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: config.stream_subjects(),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| stream_err(e.to_string()))?
        } else {
            js.get_stream(&config.stream)
                .await
                .map_err(|e| stream_err(e.to_string()))?
        };
        let consumer = stream
            .get_or_create_consumer(
                &config.durable,
                pull::Config {
                    durable_name: Some(config.durable.clone()),
                    filter_subject: config.subject.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| IngestError::Consumer {
                stream: config.stream.clone(),
                durable: config.durable.clone(),
                reason: e.to_string(),
            })?;
        info!(stream = %config.stream, subject = %config.subject, durable = %config.durable, "NATS account ingest bound");
        Ok(NatsIngest {
            config,
            client,
            consumer,
        })
    }

    /// Consumes until `cancel` fires: each message is parsed, validated, applied through
    /// `writer`, and then acked / terminated / nak'ed. The message in hand when `cancel` fires is
    /// finished first. Pull errors (server gone, missed heartbeats) are logged and retried with
    /// backoff; this only returns on cancellation.
    pub async fn run(self, writer: Arc<dyn AccountWriter>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        'outer: loop {
            let messages = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                m = tokio::time::timeout(self.config.timeout, self.consumer.messages()) => m,
            };
            let mut messages = match messages {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    self.pull_failed(&e.to_string());
                    if !sleep_or_cancel(&mut backoff, &cancel).await {
                        break;
                    }
                    continue;
                }
                Err(_) => {
                    self.pull_failed("timed out starting the pull");
                    if !sleep_or_cancel(&mut backoff, &cancel).await {
                        break;
                    }
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break 'outer,
                    n = messages.next() => n,
                };
                match next {
                    Some(Ok(msg)) => {
                        backoff.reset();
                        self.handle(&msg, writer.as_ref()).await;
                    }
                    Some(Err(e)) => {
                        self.pull_failed(&e.to_string());
                        if !sleep_or_cancel(&mut backoff, &cancel).await {
                            break 'outer;
                        }
                        continue 'outer;
                    }
                    None => continue 'outer,
                }
            }
        }
        // Close the connection now, so the server drops our outstanding pull request instead
        // of handing new messages to a consumer that is going away (they would wait `ack_wait`
        // before being redelivered).
        match tokio::time::timeout(self.config.timeout, self.client.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "NATS drain failed"),
            Err(_) => warn!("NATS drain timed out"),
        }
        info!(durable = %self.config.durable, "NATS account ingest stopped");
    }

    fn pull_failed(&self, reason: &str) {
        metrics::counter!("liqwatch_ingest_nats_errors_total").increment(1);
        warn!(stream = %self.config.stream, durable = %self.config.durable, reason, "NATS pull failed; retrying");
    }

    async fn handle(&self, msg: &jetstream::Message, writer: &dyn AccountWriter) {
        let subject = msg.subject.to_string();
        let (stream_sequence, delivered, published) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.delivered, i.published.to_string()),
            Err(_) => (0, 0, String::new()),
        };
        let msg_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_string());
        let outcome = process(
            &msg.payload,
            msg_id.as_deref(),
            self.config.shard,
            UpdateOrigin::Nats {
                stream: self.config.stream.clone(),
                stream_sequence,
                subject: subject.clone(),
                published,
            },
            writer,
        )
        .await;
        let (outcome, ack) = match outcome {
            Ok(Applied::Duplicate) => {
                debug!(%subject, stream_sequence, "account update already applied; acked");
                (Outcome::Duplicate, AckKind::Ack)
            }
            Ok(applied) => {
                debug!(%subject, stream_sequence, ?applied, "account update applied");
                (Outcome::Applied, AckKind::Ack)
            }
            Err((outcome, reason)) => {
                let ack = if outcome == Outcome::Retry {
                    warn!(%subject, stream_sequence, delivered, %reason, "account update not applied; will be redelivered");
                    AckKind::Nak(Some(self.config.nak_delay))
                } else {
                    warn!(%subject, stream_sequence, outcome = outcome.as_str(), %reason, "account update dropped (terminated, not redelivered)");
                    AckKind::Term
                };
                (outcome, ack)
            }
        };
        count_update("nats", outcome.as_str());
        // Double ack: wait for the server to confirm, so a lost ack is seen (and logged) here.
        match tokio::time::timeout(self.config.timeout, msg.double_ack_with(ack)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                metrics::counter!("liqwatch_ingest_nats_errors_total").increment(1);
                warn!(%subject, stream_sequence, error = %e, "ack failed; the message will be redelivered");
            }
            Err(_) => {
                metrics::counter!("liqwatch_ingest_nats_errors_total").increment(1);
                warn!(%subject, stream_sequence, "ack timed out; the message may be redelivered");
            }
        }
    }
}

/// Sleeps for the next backoff delay unless cancelled; false when cancelled.
async fn sleep_or_cancel(backoff: &mut Backoff, cancel: &CancellationToken) -> bool {
    let wait = backoff.next_delay(None);
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Parses, validates and applies one `AccountUpdate` JSON message. Its id is the
/// `Nats-Msg-Id` header (`msg_id`), else its `update_id` / `fill.fill_id`, else its place in the
/// stream (so a redelivery is applied once even across a restart). `Err` carries the outcome
/// (malformed, invalid, rejected, retry) and the reason.
pub async fn process(
    payload: &[u8],
    msg_id: Option<&str>,
    shard: Option<Shard>,
    origin: UpdateOrigin,
    writer: &dyn AccountWriter,
) -> Result<Applied, (Outcome, String)> {
    let (update, body_id) =
        parse_update_with_id(payload).map_err(|(_, _, message)| (Outcome::Malformed, message))?;
    let key = merge_ids("Nats-Msg-Id", msg_id, body_id)
        .map_err(|e| (Outcome::Invalid, e.to_string()))?
        .or(match &origin {
            UpdateOrigin::Nats {
                stream,
                stream_sequence,
                published,
                ..
            } if *stream_sequence > 0 => {
                Some(UpdateKey::jetstream(stream, *stream_sequence, published))
            }
            _ => None,
        });
    if let Some(shard) = shard {
        let owner = shard_of(update.account_id().as_str(), shard.count);
        if owner != shard.index {
            return Err((
                Outcome::WrongShard,
                format!(
                    "account {} belongs to shard {owner} of {}, this instance is shard {}",
                    update.account_id(),
                    shard.count,
                    shard.index
                ),
            ));
        }
    }
    let errors = validate_update(&update, &|id| writer.instrument_kind(id));
    if !errors.is_empty() {
        let reason = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err((Outcome::Invalid, reason));
    }
    let account = update.account_id().clone();
    writer.apply(update, origin, key).await.map_err(|e| {
        let outcome = if e.is_retriable() {
            Outcome::Retry
        } else {
            Outcome::Rejected
        };
        (outcome, format!("account {account}: {e}"))
    })
}
