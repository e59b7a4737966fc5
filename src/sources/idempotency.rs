//! Update ids (design invariant 9, idempotent input): what identifies one delivery of an
//! account update, so that a retry or a redelivery is applied once.
//!
//! A sender names an update with an HTTP `Idempotency-Key` header, an `update_id` field (any
//! update) or a `fill_id` field (a fill), or the NATS `Nats-Msg-Id` header; all of them share one
//! namespace, so the same fill sent over HTTP and NATS with one id is applied once. A JetStream
//! message without an id is still identified by its stream and sequence, so a redelivery (the
//! process died between applying and acking) is recognised after a restart too. The writer
//! records the key with the account write in one journal transaction
//! (`journal::Journal::store_account_update`).

use sha2::{Digest, Sha256};

use super::FieldError;
use crate::model::AccountUpdate;

/// Longest update id accepted, in bytes.
pub const MAX_UPDATE_ID_BYTES: usize = 256;

/// The identity of one update, as stored in the journal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpdateKey {
    key: String,
    shown: String,
}

impl UpdateKey {
    /// A sender's id (`Idempotency-Key`, `update_id`, `fill_id`, `Nats-Msg-Id`): not empty, at
    /// most [`MAX_UPDATE_ID_BYTES`] bytes, no control characters.
    pub fn client(id: &str) -> Result<UpdateKey, String> {
        if id.is_empty() {
            return Err("an update id must not be empty".to_string());
        }
        if id.len() > MAX_UPDATE_ID_BYTES {
            return Err(format!(
                "an update id is at most {MAX_UPDATE_ID_BYTES} bytes, this one has {}",
                id.len()
            ));
        }
        if let Some(c) = id.chars().find(|c| c.is_control()) {
            return Err(format!(
                "an update id must not contain control characters (found {c:?})"
            ));
        }
        Ok(UpdateKey {
            key: format!("id:{id}"),
            shown: id.to_string(),
        })
    }

    /// A JetStream message without a sender's id, identified by its place in the stream and
    /// the time the server stored it (a stream deleted and recreated reuses sequences; its new
    /// messages must not pass for redeliveries of the old ones).
    pub fn jetstream(stream: &str, stream_sequence: u64, published: &str) -> UpdateKey {
        UpdateKey {
            key: format!("jetstream:{stream}:{stream_sequence}:{published}"),
            shown: format!("{stream} #{stream_sequence}"),
        }
    }

    /// A funding settlement the daemon applies (`apply_funding`), named
    /// `funding:<instrument>:<funding_time>:<account>` (its own namespace: a sender's ids are
    /// stored as `id:…`, so they can never collide with it).
    pub fn funding(id: String) -> UpdateKey {
        UpdateKey {
            shown: id.clone(),
            key: id,
        }
    }

    /// The key as stored (namespaced: `id:…` for a sender's id, `jetstream:…` otherwise).
    pub fn as_stored(&self) -> &str {
        &self.key
    }

    /// The id as the sender gave it, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl std::fmt::Display for UpdateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// SHA-256 (hex) of the update's canonical JSON: a repeat of an id must carry the same update
/// (the same values; whitespace and key order of the request do not matter).
pub fn update_digest(update: &AccountUpdate) -> String {
    // Serialising our own types cannot fail (string keys, no floats); an empty digest would
    // only make a repeat look like a conflict, never like a match.
    let json = serde_json::to_vec(update).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// Removes the sender's id fields from a JSON update body and returns the id: `update_id` at
/// the top level, and, where `fill` names the fill object (`Some("")` for a body that *is* the
/// fill, `Some("fill")` for a message that carries one), `fill_id` in it. Several given must
/// agree. Errors name the field.
pub fn take_update_id(
    value: &mut serde_json::Value,
    fill: Option<&str>,
) -> Result<Option<UpdateKey>, FieldError> {
    let mut found: Vec<(String, serde_json::Value)> = Vec::new();
    if let Some(obj) = value.as_object_mut()
        && let Some(v) = obj.remove("update_id")
    {
        found.push(("update_id".to_string(), v));
    }
    if let Some(at) = fill {
        let (obj, field) = if at.is_empty() {
            (value.as_object_mut(), "fill_id".to_string())
        } else {
            (
                value.get_mut(at).and_then(|v| v.as_object_mut()),
                format!("{at}.fill_id"),
            )
        };
        if let Some(v) = obj.and_then(|o| o.remove("fill_id")) {
            found.push((field, v));
        }
    }
    let mut key: Option<(String, UpdateKey)> = None;
    for (field, v) in found {
        let Some(text) = v.as_str() else {
            return Err(invalid(&field, format!("{field} must be a JSON string")));
        };
        let k = UpdateKey::client(text).map_err(|m| invalid(&field, m))?;
        match &key {
            Some((first, seen)) if *seen != k => {
                return Err(invalid(
                    &field,
                    format!("{field} {text:?} differs from {first} {:?}", seen.shown()),
                ));
            }
            Some(_) => {}
            None => key = Some((field, k)),
        }
    }
    Ok(key.map(|(_, k)| k))
}

/// Merges an id from a header (`Idempotency-Key`, `Nats-Msg-Id`) with one from the body; both
/// given must agree.
pub fn merge_ids(
    header_name: &str,
    header: Option<&str>,
    body: Option<UpdateKey>,
) -> Result<Option<UpdateKey>, FieldError> {
    let Some(h) = header else { return Ok(body) };
    let from_header = UpdateKey::client(h).map_err(|m| invalid(header_name, m))?;
    match body {
        Some(b) if b != from_header => Err(invalid(
            header_name,
            format!(
                "{header_name} {:?} differs from the body's id {:?}",
                from_header.shown(),
                b.shown()
            ),
        )),
        _ => Ok(Some(from_header)),
    }
}

fn invalid(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        code: "invalid_update_id",
        field: field.to_string(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(json: &str, fill: Option<&str>) -> Result<Option<String>, String> {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        let r = take_update_id(&mut v, fill)
            .map(|k| k.map(|k| k.shown().to_string()))
            .map_err(|e| e.field);
        assert!(v.get("update_id").is_none(), "{v}");
        r
    }

    /// Where ids are read from, that they are removed, and how disagreements are named.
    #[test]
    fn ids_are_taken_from_their_fields() {
        assert_eq!(take(r#"{"a":1}"#, None), Ok(None));
        assert_eq!(take(r#"{"update_id":"u1"}"#, None), Ok(Some("u1".into())));
        assert_eq!(take(r#"{"fill_id":"f1"}"#, Some("")), Ok(Some("f1".into())));
        assert_eq!(
            take(
                r#"{"fill":{"fill_id":"f1"},"update_id":"f1"}"#,
                Some("fill")
            ),
            Ok(Some("f1".into()))
        );
        assert_eq!(
            take(
                r#"{"fill":{"fill_id":"f2"},"update_id":"f1"}"#,
                Some("fill")
            ),
            Err("fill.fill_id".into())
        );
        assert_eq!(take(r#"{"update_id":7}"#, None), Err("update_id".into()));
        assert_eq!(take(r#"{"update_id":""}"#, None), Err("update_id".into()));
        assert_eq!(
            take(r#"{"update_id":"a\nforged"}"#, None),
            Err("update_id".into())
        );
        let long = "x".repeat(MAX_UPDATE_ID_BYTES + 1);
        assert_eq!(
            take(&format!(r#"{{"update_id":"{long}"}}"#), None),
            Err("update_id".into())
        );
    }

    /// A header and a body id must agree; either alone is the id.
    #[test]
    fn header_and_body_ids_merge() {
        let k = |s: &str| UpdateKey::client(s).ok();
        assert_eq!(merge_ids("Idempotency-Key", None, k("b")), Ok(k("b")));
        assert_eq!(merge_ids("Idempotency-Key", Some("h"), None), Ok(k("h")));
        assert_eq!(merge_ids("Idempotency-Key", Some("h"), k("h")), Ok(k("h")));
        assert_eq!(
            merge_ids("Idempotency-Key", Some("h"), k("b")).map_err(|e| e.field),
            Err("Idempotency-Key".to_string())
        );
        // A sender's id can never collide with a stream position.
        assert_ne!(
            k("jetstream:S:1").map(|k| k.as_stored().to_string()),
            Some(UpdateKey::jetstream("S", 1, "t").as_stored().to_string())
        );
    }
}
