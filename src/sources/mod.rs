//! Account input, validated once: every account update — from the start-up snapshot
//! ([`files`]), the HTTP API, or NATS JetStream ([`nats`]) — passes the same checks
//! ([`validate_update`], built on `model::Account::problems`) before it reaches the engine. The
//! daemon implements [`AccountWriter`] to apply **and persist** an update.

pub mod files; // instrument presets, account snapshots, price sets, scenarios
pub mod idempotency; // update ids: one delivery of an update, applied once
pub mod nats; // the JetStream durable pull consumer of account updates, sharding

pub use idempotency::{UpdateKey, merge_ids, take_update_id, update_digest};
pub use nats::{IngestError, NatsIngest, NatsIngestConfig, Shard, shard_of};

use futures::future::BoxFuture;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::model::{Account, AccountId, AccountUpdate, Fill, InstrumentId, InstrumentKind};
pub use crate::model::{MAX_ACCOUNT_ID_BYTES, check_account_id};

/// Where an update came from; lets the writer de-duplicate redeliveries (a NATS message is
/// redelivered if the process dies between applying it and acking it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateOrigin {
    /// `PUT`/`POST`/`DELETE` on the HTTP API.
    Http,
    /// A funding settlement the daemon applied itself (`[accounts] apply_funding`).
    Funding,
    /// A JetStream message.
    Nats {
        /// The stream the message is stored in.
        stream: String,
        /// Its sequence in that stream (unique per stream; use it to skip a redelivery).
        stream_sequence: u64,
        /// The subject it was published on.
        subject: String,
        /// When the server stored it (with the sequence, it tells a redelivery from a new
        /// message that took the same sequence in a recreated stream).
        published: String,
    },
}

impl UpdateOrigin {
    /// Low-cardinality label for metrics (`http`, `nats`).
    pub fn label(&self) -> &'static str {
        match self {
            UpdateOrigin::Http => "http",
            UpdateOrigin::Nats { .. } => "nats",
            UpdateOrigin::Funding => "funding",
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
    /// The update id was already used for a different update (within the id window).
    #[error(
        "update id {id:?} was already used for a different update ({detail}); use a new id for a new update"
    )]
    Conflict {
        /// The id, as the sender gave it.
        id: String,
        /// What the id was first used for.
        detail: String,
    },
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
    /// when the account store holds the result. With a `key`, an update whose key was already
    /// applied (within the id window) answers [`Applied::Duplicate`] without applying, or
    /// [`ApplyError::Conflict`] when the key came with a different update; the key is stored
    /// in the same transaction as the account.
    fn apply(
        &self,
        update: AccountUpdate,
        origin: UpdateOrigin,
        key: Option<UpdateKey>,
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
/// (`account.positions[0].instrument`). Every update's account id follows
/// [`check_account_id`] (≤ [`MAX_ACCOUNT_ID_BYTES`] bytes, no control characters); the HTTP API
/// applies the same rule to ids in its paths.
pub fn validate_update(
    update: &AccountUpdate,
    kind_of: &dyn Fn(&InstrumentId) -> Option<InstrumentKind>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match update {
        // A full account's id is checked with the account (`Account::problems`).
        AccountUpdate::Replace { .. } => {}
        AccountUpdate::Fill { account_id, .. }
        | AccountUpdate::Collateral { account_id, .. }
        | AccountUpdate::Remove { account_id } => {
            if let Err(message) = check_account_id(account_id.as_str()) {
                errors.push(FieldError::invalid("account_id".to_string(), message));
            }
        }
    }
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
/// An `update_id` (or a fill's `fill_id`) is refused here; see [`parse_update_with_id`].
pub fn parse_update(bytes: &[u8]) -> Result<AccountUpdate, (String, &'static str, String)> {
    let value: serde_json::Value = parse_json(bytes)?;
    parse_update_value(value)
}

/// [`parse_update`] for a message that may carry its id: `update_id` at the top, or a fill's
/// `fill_id` (see [`take_update_id`]).
pub fn parse_update_with_id(
    bytes: &[u8],
) -> Result<(AccountUpdate, Option<UpdateKey>), (String, &'static str, String)> {
    let mut value: serde_json::Value = parse_json(bytes)?;
    let fill =
        (value.get("type").and_then(serde_json::Value::as_str) == Some("fill")).then_some("fill");
    let key = take_update_id(&mut value, fill).map_err(|e| (e.field, e.code, e.message))?;
    Ok((parse_update_value(value)?, key))
}

fn parse_update_value(
    value: serde_json::Value,
) -> Result<AccountUpdate, (String, &'static str, String)> {
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
        #[serde(with = "crate::model::exact_str")]
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

/// The outcome of one message, as counted in `liqwatch_ingest_updates_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied and persisted; acked.
    Applied,
    /// Its id was already applied (a retry or redelivery); acked without applying.
    Duplicate,
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
            Outcome::Duplicate => "duplicate",
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
            // Account ids: ≤ 256 bytes, no control characters, on every kind of update.
            (
                r#"{"type":"remove","account_id":"a\nFAKE LOG LINE"}"#,
                &[("invalid_value", "account_id")],
            ),
            (
                r#"{"type":"fill","account_id":"a\u0000","fill":{"instrument":"BTCUSDT-PERP","quantity":"1","price":"1"}}"#,
                &[("invalid_value", "account_id")],
            ),
            (
                r#"{"type":"collateral","account_id":"\u001b[31m","asset":"USDT","delta":"5"}"#,
                &[("invalid_value", "account_id")],
            ),
            (
                r#"{"type":"replace","account":{"id":"a\tb"}}"#,
                &[("invalid_value", "account.id")],
            ),
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

    /// An id of 256 bytes passes, 257 does not, whichever update carries it; unicode is fine.
    #[test]
    fn account_id_length_limit() {
        let ok = "x".repeat(MAX_ACCOUNT_ID_BYTES);
        let long = "x".repeat(MAX_ACCOUNT_ID_BYTES + 1);
        assert_eq!(check_account_id(&ok), Ok(()));
        assert!(check_account_id(&long).is_err());
        assert_eq!(check_account_id("sub-account/äöü"), Ok(()));
        assert!(check_account_id("").is_err());
        let remove = |id: &str| AccountUpdate::Remove {
            account_id: AccountId::from(id),
        };
        assert!(validate_update(&remove(&ok), &kinds).is_empty());
        assert_eq!(validate_update(&remove(&long), &kinds).len(), 1);
        let replace = update(&format!(
            r#"{{"type":"replace","account":{{"id":"{long}"}}}}"#
        ));
        let errors = validate_update(&replace, &kinds);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "account.id");
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
