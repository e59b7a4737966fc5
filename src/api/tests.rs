//! Unit tests of the API's pieces (routes table, limits, errors).

use super::*;

/// `since` is a sequence number when all digits, else an RFC 3339 UTC time; anything else
/// (negative, overflow, offsets, words) is refused.
#[test]
fn events_since_parsing() {
    let cases: &[(&str, Option<EventsSince>)] = &[
        ("0", Some(EventsSince::Seq(0))),
        ("4711", Some(EventsSince::Seq(4711))),
        (
            "2021-05-19T12:40:04Z",
            Some(EventsSince::Time(1_621_428_004_000)),
        ),
        (
            "2021-05-19T12:40:04.250Z",
            Some(EventsSince::Time(1_621_428_004_250)),
        ),
        ("99999999999999999999999", None),
        ("-1", None),
        ("", None),
        ("yesterday", None),
    ];
    for (input, want) in cases {
        assert_eq!(EventsSince::parse(input), *want, "{input:?}");
    }
}

/// Each error maps to its documented status and code, and only server-side trouble is
/// retriable.
#[test]
fn error_status_and_code() {
    let cases = [
        (ApiError::Unauthorized, 401, "unauthorized", false),
        (
            ApiError::MutationsDisabled,
            403,
            "mutations_disabled",
            false,
        ),
        (ApiError::NotFound("x".into()), 404, "not_found", false),
        (
            ApiError::PayloadTooLarge { limit: 1 },
            413,
            "payload_too_large",
            false,
        ),
        (
            ApiError::UnsupportedMediaType,
            415,
            "unsupported_media_type",
            false,
        ),
        (ApiError::Unavailable("x".into()), 503, "unavailable", true),
        (ApiError::Internal("x".into()), 500, "internal", true),
        (
            ApiError::from(ApplyError::Persist("locked".into())),
            503,
            "unavailable",
            true,
        ),
        (
            ApiError::from(ApplyError::NotFound(AccountId::from("a"))),
            404,
            "not_found",
            false,
        ),
        (
            ApiError::from(ApplyError::Invalid {
                field: "positions[0]".into(),
                message: "no".into(),
            }),
            422,
            "invalid_value",
            false,
        ),
    ];
    for (error, status, code, retriable) in cases {
        assert_eq!(error.status().as_u16(), status, "{error:?}");
        assert_eq!(error.code(), code, "{error:?}");
        assert_eq!(error.is_retriable(), retriable, "{error:?}");
    }
}
