//! Account sources other than the start-up snapshot: the validation every account update passes
//! before it reaches the engine (shared by the HTTP API and NATS), the [`AccountWriter`] trait the
//! daemon implements to apply **and persist** an update, and the NATS JetStream durable pull
//! consumer that feeds `model::AccountUpdate` messages into it.
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
//! let ingest = ingest::NatsIngest::connect(ingest::NatsIngestConfig {
//!     url, subject, stream, durable,          // from [accounts.nats]
//!     ..Default::default()
//! }).await?;                                  // fails fast: exit 1 if NATS is unreachable
//! tracker.spawn(ingest.run(backend.clone(), cancel.clone()));
//! ```

pub mod files; // instrument presets, account snapshots, price sets, scenarios

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::StreamExt;
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::model::{Account, AccountId, AccountUpdate, Fill, InstrumentId, InstrumentKind};
use crate::runtime::Backoff;

/// Where an update came from; lets the writer de-duplicate redeliveries (a NATS message is
/// redelivered if the process dies between applying it and acking it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateOrigin {
    /// `PUT`/`POST`/`DELETE` on the HTTP API.
    Http,
    /// A JetStream message.
    Nats {
        /// The stream the message is stored in.
        stream: String,
        /// Its sequence in that stream (unique per stream; use it to skip a redelivery).
        stream_sequence: u64,
        /// The subject it was published on.
        subject: String,
    },
}

impl UpdateOrigin {
    /// Low-cardinality label for metrics (`http`, `nats`).
    pub fn label(&self) -> &'static str {
        match self {
            UpdateOrigin::Http => "http",
            UpdateOrigin::Nats { .. } => "nats",
        }
    }
}

/// What applying an update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// A new account was created.
    Created,
    /// An existing account was replaced or changed.
    Updated,
    /// The account was removed.
    Removed,
    /// The update had already been applied (a redelivery); nothing changed.
    Duplicate,
}

/// Why the writer could not apply an update.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The account does not exist (a fill, collateral change or removal of an unknown account).
    #[error("account {0} not found")]
    NotFound(AccountId),
    /// The update is well-formed but the engine refuses it (the field names the serde path).
    #[error("{field}: {message}")]
    Invalid {
        /// Serde path of the offending field.
        field: String,
        /// What is wrong, for a person.
        message: String,
    },
    /// The engine cannot take updates right now (shutting down, overloaded); try again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Applying worked but persisting failed (store error); nothing was kept, try again later.
    #[error("persist failed: {0}")]
    Persist(String),
}

impl ApplyError {
    /// True when the same update may succeed later.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ApplyError::Unavailable(_) | ApplyError::Persist(_))
    }
}

/// What the daemon provides to account sources: instrument lookups for validation, and the one
/// way to change the account map.
pub trait AccountWriter: Send + Sync + 'static {
    /// The kind of a configured instrument; `None` when the instrument is not configured.
    fn instrument_kind(&self, id: &InstrumentId) -> Option<InstrumentKind>;

    /// Applies one (already validated) update to the engine **and persists it**; resolves only
    /// when the account store holds the result.
    fn apply(
        &self,
        update: AccountUpdate,
        origin: UpdateOrigin,
    ) -> BoxFuture<'_, Result<Applied, ApplyError>>;
}

/// One validation failure, naming the field by its serde path (`positions[1].instrument`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Machine-readable code: `unknown_instrument` or `invalid_value`.
    pub code: &'static str,
    /// Serde path of the field.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl FieldError {
    fn unknown(field: String, id: &InstrumentId) -> Self {
        FieldError {
            code: "unknown_instrument",
            field,
            message: format!(
                "unknown instrument {id:?}: it is not in the configured instrument presets"
            ),
        }
    }
    fn invalid(field: String, message: impl Into<String>) -> Self {
        FieldError {
            code: "invalid_value",
            field,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Checks an update against the configured instruments and the model's rules, returning every
/// problem at once (empty = valid). Field paths are those of the `AccountUpdate` JSON
/// (`account.positions[0].instrument`).
pub fn validate_update(
    update: &AccountUpdate,
    kind_of: &dyn Fn(&InstrumentId) -> Option<InstrumentKind>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match update {
        AccountUpdate::Replace { account } => {
            validate_account_into(account, "account", kind_of, &mut errors)
        }
        AccountUpdate::Fill { fill, .. } => validate_fill_into(fill, "fill", kind_of, &mut errors),
        AccountUpdate::Collateral { asset, .. } => {
            check_collateral_asset(asset, "asset".to_string(), kind_of, &mut errors)
        }
        AccountUpdate::Remove { .. } => {}
    }
    errors
}

/// Validates a full account; `prefix` is the serde path of the account (`""` for an HTTP body).
pub fn validate_account(
    account: &Account,
    prefix: &str,
    kind_of: &dyn Fn(&InstrumentId) -> Option<InstrumentKind>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_account_into(account, prefix, kind_of, &mut errors);
    errors
}

/// Validates a fill; `prefix` is the serde path of the fill (`""` for an HTTP body).
pub fn validate_fill(
    fill: &Fill,
    prefix: &str,
    kind_of: &dyn Fn(&InstrumentId) -> Option<InstrumentKind>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_fill_into(fill, prefix, kind_of, &mut errors);
    errors
}

fn check_collateral_asset(
    asset: &InstrumentId,
    field: String,
    kind_of: &dyn Fn(&InstrumentId) -> Option<InstrumentKind>,
    errors: &mut Vec<FieldError>,
) {
    match kind_of(asset) {
        None => errors.push(FieldError::unknown(field, asset)),
        Some(InstrumentKind::Collateral) => {}
        Some(_) => errors.push(FieldError::invalid(
            field,
            format!("{asset:?} is a contract, not a collateral asset"),
        )),
    }
}

fn check_contract(
    id: &InstrumentId,
    field: String,
    kind_of: &dyn Fn(&InstrumentId) -> Option<InstrumentKind>,
    errors: &mut Vec<FieldError>,
) {
    match kind_of(id) {
        None => errors.push(FieldError::unknown(field, id)),
        Some(k) if k.is_contract() => {}
        Some(_) => errors.push(FieldError::invalid(
            field,
            format!("{id:?} is a collateral asset; list it under `collateral`, not as a position"),
        )),
    }
}

fn validate_account_into(
    account: &Account,
    prefix: &str,
    kind_of: &dyn Fn(&InstrumentId) -> Option<InstrumentKind>,
    errors: &mut Vec<FieldError>,
) {
    for asset in account.collateral.keys() {
        let field = format!("{}.{}", join(prefix, "collateral"), asset);
        check_collateral_asset(asset, field, kind_of, errors);
    }
    for (i, p) in account.positions.iter().enumerate() {
        let at = join(prefix, &format!("positions[{i}]"));
        check_contract(&p.instrument, join(&at, "instrument"), kind_of, errors);
    }
    // The rules every path shares (files, HTTP, NATS, the map): `Account::problems`.
    for p in account.problems() {
        errors.push(FieldError::invalid(join(prefix, &p.field), p.message));
    }
}

fn validate_fill_into(
    fill: &Fill,
    prefix: &str,
    kind_of: &dyn Fn(&InstrumentId) -> Option<InstrumentKind>,
    errors: &mut Vec<FieldError>,
) {
    check_contract(
        &fill.instrument,
        join(prefix, "instrument"),
        kind_of,
        errors,
    );
    if fill.quantity.is_zero() {
        errors.push(FieldError::invalid(
            join(prefix, "quantity"),
            "a fill has a non-zero signed quantity (buy > 0, sell < 0)",
        ));
    }
    if fill.price <= Decimal::ZERO {
        errors.push(FieldError::invalid(
            join(prefix, "price"),
            format!("fill price must be positive, got {}", fill.price),
        ));
    }
    if let Some(asset) = &fill.settle_asset {
        check_collateral_asset(asset, join(prefix, "settle_asset"), kind_of, errors);
    }
}

/// Rewrites a serde / serde_json error about a JSON number where a decimal string is expected
/// into a message telling the sender what to do; other messages pass through.
pub fn explain_json_error(path: &str, error: &serde_json::Error) -> (&'static str, String) {
    let text = error.to_string();
    let at = if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("{path}: ")
    };
    if text.contains("invalid type: floating point") || text.contains("invalid type: integer") {
        (
            "number_not_string",
            format!(
                "{at}money and quantities must be JSON strings (e.g. \"0.1\"), not JSON numbers, so that no value passes through binary floating point ({text})"
            ),
        )
    } else if error.is_syntax() || error.is_eof() {
        ("malformed_json", format!("body is not valid JSON: {text}"))
    } else {
        ("invalid_body", format!("{at}{text}"))
    }
}

/// Parses JSON into `T`, reporting the serde path of the first bad field.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, (String, &'static str, String)> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let (code, message) = explain_json_error(&path, e.inner());
            Err((path, code, message))
        }
    }
}

/// Parses an `AccountUpdate` message, naming the serde path of the first bad field (the
/// internally tagged enum alone would lose the path, so each variant is read on its own).
pub fn parse_update(bytes: &[u8]) -> Result<AccountUpdate, (String, &'static str, String)> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ReplaceMsg {
        #[serde(rename = "type")]
        _type: String,
        account: Account,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FillMsg {
        #[serde(rename = "type")]
        _type: String,
        account_id: AccountId,
        fill: Fill,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CollateralMsg {
        #[serde(rename = "type")]
        _type: String,
        account_id: AccountId,
        asset: InstrumentId,
        #[serde(with = "rust_decimal::serde::str")]
        delta: Decimal,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RemoveMsg {
        #[serde(rename = "type")]
        _type: String,
        account_id: AccountId,
    }
    fn variant<T: serde::de::DeserializeOwned>(
        v: &serde_json::Value,
    ) -> Result<T, (String, &'static str, String)> {
        serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
            let path = e.path().to_string();
            let (code, message) = explain_json_error(&path, e.inner());
            (path, code, message)
        })
    }
    let value: serde_json::Value = parse_json(bytes)?;
    let kind = value.get("type").and_then(serde_json::Value::as_str);
    match kind {
        Some("replace") => {
            variant::<ReplaceMsg>(&value).map(|m| AccountUpdate::Replace { account: m.account })
        }
        Some("fill") => variant::<FillMsg>(&value).map(|m| AccountUpdate::Fill {
            account_id: m.account_id,
            fill: m.fill,
        }),
        Some("collateral") => variant::<CollateralMsg>(&value).map(|m| AccountUpdate::Collateral {
            account_id: m.account_id,
            asset: m.asset,
            delta: m.delta,
        }),
        Some("remove") => variant::<RemoveMsg>(&value).map(|m| AccountUpdate::Remove {
            account_id: m.account_id,
        }),
        _ => Err((
            "type".to_string(),
            "invalid_body",
            "type: expected one of \"replace\", \"fill\", \"collateral\", \"remove\"".to_string(),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// NATS JetStream
// ---------------------------------------------------------------------------------------------

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
/// `liqwatch.accounts.shard-<shard_of(A, N)>.<A>`; see the README.
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

/// The outcome of one message, as counted in `liqwatch_ingest_updates_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied and persisted; acked.
    Applied,
    /// Not JSON or not an `AccountUpdate`; terminated.
    Malformed,
    /// Failed validation; terminated.
    Invalid,
    /// The writer refused it permanently (unknown account, …); terminated.
    Rejected,
    /// Transient failure; nak'ed with a delay.
    Retry,
    /// The account belongs to another shard; terminated.
    WrongShard,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Malformed => "malformed",
            Outcome::Invalid => "invalid",
            Outcome::Rejected => "rejected",
            Outcome::Retry => "retry",
            Outcome::WrongShard => "wrong_shard",
        }
    }
}

/// Counts one update in `liqwatch_ingest_updates_total{source, outcome}`.
pub fn count_update(source: &'static str, outcome: &'static str) {
    metrics::counter!("liqwatch_ingest_updates_total", "source" => source, "outcome" => outcome)
        .increment(1);
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
    /// the one jittered [`Backoff`] (100 ms doubling to 10 s, reset by a message); this only
    /// returns on cancellation.
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
        let (stream_sequence, delivered) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.delivered),
            Err(_) => (0, 0),
        };
        let outcome = process(
            &msg.payload,
            self.config.shard,
            UpdateOrigin::Nats {
                stream: self.config.stream.clone(),
                stream_sequence,
                subject: subject.clone(),
            },
            writer,
        )
        .await;
        let (outcome, ack) = match outcome {
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

/// Sleeps for the backoff's next delay unless cancelled; false when cancelled.
async fn sleep_or_cancel(backoff: &mut Backoff, cancel: &CancellationToken) -> bool {
    let wait = backoff.next_delay(None);
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Parses, validates and applies one `AccountUpdate` JSON message. `Err` carries the outcome
/// (malformed, invalid, rejected, retry) and the reason.
pub async fn process(
    payload: &[u8],
    shard: Option<Shard>,
    origin: UpdateOrigin,
    writer: &dyn AccountWriter,
) -> Result<Applied, (Outcome, String)> {
    let update = parse_update(payload).map_err(|(_, _, message)| (Outcome::Malformed, message))?;
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
    writer.apply(update, origin).await.map_err(|e| {
        let outcome = if e.is_retriable() {
            Outcome::Retry
        } else {
            Outcome::Rejected
        };
        (outcome, format!("account {account}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(id: &InstrumentId) -> Option<InstrumentKind> {
        match id.as_str() {
            "BTCUSDT-PERP" | "ETHUSDT-PERP" => Some(InstrumentKind::LinearPerpetual),
            "USDT" | "BTC" => Some(InstrumentKind::Collateral),
            _ => None,
        }
    }

    fn update(json: &str) -> AccountUpdate {
        match parse_update(json.as_bytes()) {
            Ok(u) => u,
            Err(e) => panic!("{e:?}"),
        }
    }

    /// Each validation rule reports its field by serde path, all at once.
    #[test]
    fn validation_names_every_bad_field() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            (
                r#"{"type":"replace","account":{"id":"a","collateral":{"USDT":"1"},"positions":[{"instrument":"BTCUSDT-PERP","quantity":"1","entry_price":"100"}]}}"#,
                &[],
            ),
            (
                r#"{"type":"replace","account":{"id":"a","collateral":{"DOGE":"1","BTCUSDT-PERP":"1"},"positions":[{"instrument":"NOPE","quantity":"1","entry_price":"0"},{"instrument":"USDT","side":"long","quantity":"-1","entry_price":"1"}]}}"#,
                &[
                    ("invalid_value", "account.collateral.BTCUSDT-PERP"),
                    ("unknown_instrument", "account.collateral.DOGE"),
                    ("unknown_instrument", "account.positions[0].instrument"),
                    ("invalid_value", "account.positions[0].entry_price"),
                    ("invalid_value", "account.positions[1].instrument"),
                    ("invalid_value", "account.positions[1].quantity"),
                ],
            ),
            (
                r#"{"type":"replace","account":{"id":"a","positions":[{"instrument":"BTCUSDT-PERP","quantity":"1","entry_price":"1"},{"instrument":"BTCUSDT-PERP","quantity":"2","entry_price":"1"}],"thresholds":{"warning_levels":["0.9","0.8","1.2"],"trigger":"1","hysteresis":"-0.1"}}}"#,
                &[
                    ("invalid_value", "account.positions[1].instrument"),
                    ("invalid_value", "account.thresholds.hysteresis"),
                    ("invalid_value", "account.thresholds.warning_levels[1]"),
                    ("invalid_value", "account.thresholds.warning_levels[2]"),
                ],
            ),
            (
                r#"{"type":"fill","account_id":"a","fill":{"instrument":"ETHUSDT-PERP","quantity":"0","price":"-1","settle_asset":"EUR"}}"#,
                &[
                    ("invalid_value", "fill.quantity"),
                    ("invalid_value", "fill.price"),
                    ("unknown_instrument", "fill.settle_asset"),
                ],
            ),
            (
                r#"{"type":"collateral","account_id":"a","asset":"ETHUSDT-PERP","delta":"5"}"#,
                &[("invalid_value", "asset")],
            ),
            (r#"{"type":"remove","account_id":"a"}"#, &[]),
        ];
        for (json, want) in cases {
            let got = validate_update(&update(json), &kinds);
            let mut got: Vec<(&str, &str)> =
                got.iter().map(|e| (e.code, e.field.as_str())).collect();
            got.sort();
            let mut want = want.to_vec();
            want.sort();
            assert_eq!(got, want, "{json}");
        }
    }

    /// The shard function is FNV-1a 64 mod N, pinned by known values so publishers in other
    /// languages can match it.
    #[test]
    fn shard_of_is_fnv1a_mod_n() {
        // FNV-1a 64 of "" is the offset basis; of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(shard_of("", 1000), (0xcbf2_9ce4_8422_2325u64 % 1000) as u32);
        assert_eq!(
            shard_of("a", 1_000_003),
            (0xaf63_dc4c_8601_ec8cu64 % 1_000_003) as u32
        );
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(shard_of("anything", 0), 0);
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            counts[shard_of(&format!("acct-{i}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    /// A JSON float where a decimal string is expected is explained with its path.
    #[test]
    fn float_money_is_explained() {
        let body = r#"{"type":"fill","account_id":"a","fill":{"instrument":"BTCUSDT-PERP","quantity":0.5,"price":"1"}}"#;
        let Err((path, code, message)) = parse_update(body.as_bytes()) else {
            panic!("a float quantity must be rejected");
        };
        assert_eq!(path, "fill.quantity");
        assert_eq!(code, "number_not_string");
        assert!(message.starts_with("fill.quantity: "), "{message}");
        assert!(message.contains("JSON strings"), "{message}");
        let Err((_, code, _)) = parse_update(b"{not json") else {
            panic!("garbage must be rejected");
        };
        assert_eq!(code, "malformed_json");
    }
}
