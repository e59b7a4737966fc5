//! The one wire-decimal parser every venue adapter reads prices with, and its one policy.
//!
//! ## Policy
//!
//! A price on the wire is **decimal number text**, whether the venue sends it as a JSON string
//! (`"79107.36"`: Binance, Bybit, OKX, Hyperliquid) or as a JSON number (`79107.36`: Deribit,
//! read as raw number text). The text must have the grammar of a JSON number —
//! `-?digits(.digits)?([eE][+-]?digits)?` (leading zeros tolerated) — so both plain decimals
//! (`-12.5`) and scientific notation (`1.423e-4`, `2.2E+3`) are accepted, and converted
//! **exactly**: the digits become a [`Decimal`] mantissa and the exponent moves its point.
//! Nothing ever goes through `f64`, and nothing is rounded: a value that does not fit a
//! `Decimal` exactly (more than 28 digits after the point once trailing zeros are dropped, or
//! beyond ±7.9·10²⁸) is rejected, not approximated.
//!
//! Rejected, with a [`NumberError`] saying why: empty text, `NaN`, `inf`/`Infinity`, a sign
//! `+`, `.5`, `1.`, `1_000`, `84,612.3`, surrounding spaces, anything else that is not number
//! text ([`NumberError::Malformed`]), and exact values that do not fit
//! ([`NumberError::OutOfRange`]).
//!
//! Whether a field is a string or a number on the wire is the adapter's business (its wire
//! types); an empty string or a JSON `null` in a price field means "absent" ([`decimal_str`],
//! [`decimal_raw`]), not zero.

use rust_decimal::Decimal;
use serde_json::value::RawValue;

use super::ParseError;

/// The largest scale (digits after the point) a [`Decimal`] holds.
const MAX_SCALE: u32 = 28;

/// Why wire text is not an exact decimal (or integer) number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// The text is empty.
    #[error("empty")]
    Empty,
    /// Not number text: `NaN`, `inf`, a `+` sign, `.5`, `1_000`, a comma, spaces, garbage.
    #[error("not a plain or scientific decimal number")]
    Malformed,
    /// A number, but not one a `Decimal` holds exactly (too many digits, too large, too small).
    #[error("does not fit an exact decimal (at most 28 digits after the point, |x| < 7.9e28)")]
    OutOfRange,
    /// A number where an integer is required (timestamps).
    #[error("not an integer")]
    NotAnInteger,
}

/// True when `s` has the grammar of a JSON number: `-?digits(.digits)?([eE][+-]?digits)?`
/// (leading zeros tolerated).
fn is_number_text(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if b.first() == Some(&b'-') {
        i += 1;
    }
    if !digits(&mut i) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// Parses decimal number text — plain (`-12.5`) or scientific (`1.423e-4`) — into the exact
/// [`Decimal`] it denotes, or says why not. The policy is in the [module docs](self).
pub fn parse_decimal(text: &str) -> Result<Decimal, NumberError> {
    if text.is_empty() {
        return Err(NumberError::Empty);
    }
    if !is_number_text(text) {
        return Err(NumberError::Malformed);
    }
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    // Exact or an error: `from_str_exact` refuses what it would have to round.
    let mut m = Decimal::from_str_exact(mantissa).map_err(|_| NumberError::OutOfRange)?;
    let Some(exponent) = exponent else {
        return Ok(m);
    };
    if m.is_zero() {
        return Ok(Decimal::ZERO);
    }
    let (negative, digits) = match exponent.as_bytes().first() {
        Some(b'-') => (true, &exponent[1..]),
        Some(b'+') => (false, &exponent[1..]),
        _ => (false, exponent),
    };
    // More than 2^32 orders of magnitude from a non-zero mantissa fits nothing.
    let e: u32 = digits.parse().map_err(|_| NumberError::OutOfRange)?;
    if negative {
        let mut scale = m.scale().saturating_add(e);
        if scale > MAX_SCALE {
            // `1.000e-26` is exact once the trailing zeros are dropped.
            m = m.normalize();
            scale = m.scale().saturating_add(e);
        }
        if scale > MAX_SCALE {
            return Err(NumberError::OutOfRange);
        }
        m.set_scale(scale).map_err(|_| NumberError::OutOfRange)?;
        Ok(m)
    } else if e <= m.scale() {
        m.set_scale(m.scale() - e)
            .map_err(|_| NumberError::OutOfRange)?;
        Ok(m)
    } else {
        // Drop the point, then multiply by the powers of ten left over.
        let left = e - m.scale();
        m.set_scale(0).map_err(|_| NumberError::OutOfRange)?;
        if left > MAX_SCALE + 1 {
            return Err(NumberError::OutOfRange);
        }
        for _ in 0..left {
            m = m.checked_mul(Decimal::TEN).ok_or(NumberError::OutOfRange)?;
        }
        Ok(m)
    }
}

/// A `BadNumber` parse error for `field`, quoting at most 64 characters of the text.
fn bad(field: &'static str, text: &str, reason: NumberError) -> ParseError {
    ParseError::BadNumber {
        field,
        value: text.chars().take(64).collect(),
        reason,
    }
}

/// A price sent as a JSON string (Binance, Bybit, OKX, Hyperliquid): absent or `""` is
/// `Ok(None)`; anything else must be decimal number text ([`parse_decimal`]).
pub fn decimal_str(field: &'static str, text: Option<&str>) -> Result<Option<Decimal>, ParseError> {
    match text {
        None | Some("") => Ok(None),
        Some(t) => parse_decimal(t).map(Some).map_err(|r| bad(field, t, r)),
    }
}

/// A price sent as a JSON number (Deribit), borrowed as raw number text so it never goes
/// through `f64`: absent or `null` is `Ok(None)`; anything else must be decimal number text
/// ([`parse_decimal`]) — a JSON string there is refused.
pub fn decimal_raw(
    field: &'static str,
    raw: Option<&RawValue>,
) -> Result<Option<Decimal>, ParseError> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(t) => parse_decimal(t).map(Some).map_err(|r| bad(field, t, r)),
    }
}

/// An integer (a millisecond timestamp) sent as a JSON number, borrowed as raw text: absent or
/// `null` is `Ok(None)`.
pub fn integer_raw(field: &'static str, raw: Option<&RawValue>) -> Result<Option<i64>, ParseError> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(t) => integer_text(field, t).map(Some),
    }
}

/// An integer (a millisecond timestamp) sent as a JSON string (OKX): absent or `""` is
/// `Ok(None)`.
pub fn integer_str(field: &'static str, text: Option<&str>) -> Result<Option<i64>, ParseError> {
    match text {
        None | Some("") => Ok(None),
        Some(t) => integer_text(field, t).map(Some),
    }
}

fn integer_text(field: &'static str, t: &str) -> Result<i64, ParseError> {
    t.parse::<i64>().map_err(|_| {
        let reason = if is_number_text(t) {
            NumberError::NotAnInteger
        } else {
            NumberError::Malformed
        };
        bad(field, t, reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    /// The policy, case by case: plain and scientific text converts exactly; empty, non-number
    /// and non-fitting text is refused with its reason.
    #[test]
    fn parse_decimal_policy() {
        use NumberError::*;
        let cases: &[(&str, Result<Decimal, NumberError>)] = &[
            // Plain decimals.
            ("86778.14", Ok(dec!(86778.14))),
            ("79107.36658171", Ok(dec!(79107.36658171))),
            ("6521.17", Ok(dec!(6521.17))),
            ("0", Ok(dec!(0))),
            ("0.0", Ok(dec!(0))),
            ("007.5", Ok(dec!(7.5))),
            ("-12.5", Ok(dec!(-12.5))),
            ("-0.00000001", Ok(dec!(-0.00000001))),
            ("79228162514264337593543950335", Ok(Decimal::MAX)),
            (
                "0.0000000000000000000000000001",
                Ok(dec!(0.0000000000000000000000000001)),
            ),
            // Scientific notation.
            ("1e-5", Ok(dec!(0.00001))),
            ("1.423e-4", Ok(dec!(0.0001423))),
            ("5.149e-5", Ok(dec!(0.00005149))),
            ("5.149E-5", Ok(dec!(0.00005149))),
            ("2.2e3", Ok(dec!(2200))),
            ("-2.2E+3", Ok(dec!(-2200))),
            ("1.5e1", Ok(dec!(15))),
            ("1.25e0", Ok(dec!(1.25))),
            ("12345e-2", Ok(dec!(123.45))),
            ("1e28", Ok(dec!(10000000000000000000000000000))),
            ("1.000e-26", Ok(dec!(0.00000000000000000000000001))),
            ("0e999999999999", Ok(dec!(0))),
            ("-0.0e-40", Ok(dec!(0))),
            // Too many digits, too large, too small: refused, never rounded.
            ("0.00000000000000000000000000001", Err(OutOfRange)),
            ("79107.366581711111111111111111111", Err(OutOfRange)),
            ("79228162514264337593543950336", Err(OutOfRange)),
            ("1e29", Err(OutOfRange)),
            ("1e99", Err(OutOfRange)),
            ("1e-29", Err(OutOfRange)),
            ("1.5e-28", Err(OutOfRange)),
            ("1e99999999999999999999", Err(OutOfRange)),
            // Empty and garbage.
            ("", Err(Empty)),
            ("NaN", Err(Malformed)),
            ("nan", Err(Malformed)),
            ("inf", Err(Malformed)),
            ("-Infinity", Err(Malformed)),
            ("+1", Err(Malformed)),
            (".5", Err(Malformed)),
            ("1.", Err(Malformed)),
            ("1e", Err(Malformed)),
            ("1e+", Err(Malformed)),
            ("e5", Err(Malformed)),
            ("-", Err(Malformed)),
            ("1_000", Err(Malformed)),
            ("84,612.3", Err(Malformed)),
            ("1.2.3", Err(Malformed)),
            (" 1", Err(Malformed)),
            ("1 ", Err(Malformed)),
            ("0x10", Err(Malformed)),
            ("abc", Err(Malformed)),
            ("\"1\"", Err(Malformed)),
            ("null", Err(Malformed)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_decimal(text), *want, "{text:?}");
        }
    }

    /// Exponent forms give the same value as the plain text they denote, across scales.
    #[test]
    fn exponent_forms_equal_plain_text() {
        for (sci, plain) in [
            ("3.761205e4", "37612.05"),
            ("3761205e-2", "37612.05"),
            ("0.003761205e7", "37612.05"),
            ("-9.87654321e-10", "-0.000000000987654321"),
        ] {
            assert_eq!(parse_decimal(sci), parse_decimal(plain), "{sci}");
        }
    }

    /// String fields: absent and `""` are absent; bad text names the field, the text (cut at
    /// 64 characters) and the reason.
    #[test]
    fn string_and_raw_fields() {
        assert_eq!(decimal_str("p", None), Ok(None));
        assert_eq!(decimal_str("p", Some("")), Ok(None));
        assert_eq!(decimal_str("p", Some("1e-5")), Ok(Some(dec!(0.00001))));
        let long = "9".repeat(100);
        assert_eq!(
            decimal_str("p", Some(&long)),
            Err(ParseError::BadNumber {
                field: "p",
                value: "9".repeat(64),
                reason: NumberError::OutOfRange,
            })
        );
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        assert_eq!(decimal_raw("mark_price", None), Ok(None));
        assert_eq!(decimal_raw("mark_price", Some(&raw("null"))), Ok(None));
        assert_eq!(
            decimal_raw("mark_price", Some(&raw("1.423e-4"))),
            Ok(Some(dec!(0.0001423)))
        );
        assert_eq!(
            decimal_raw("mark_price", Some(&raw("\"1\""))),
            Err(ParseError::BadNumber {
                field: "mark_price",
                value: "\"1\"".into(),
                reason: NumberError::Malformed,
            })
        );
        assert_eq!(integer_raw("timestamp", Some(&raw("17"))), Ok(Some(17)));
        assert_eq!(
            integer_raw("timestamp", Some(&raw("1.5"))),
            Err(ParseError::BadNumber {
                field: "timestamp",
                value: "1.5".into(),
                reason: NumberError::NotAnInteger,
            })
        );
        assert_eq!(integer_str("ts", Some("")), Ok(None));
        assert_eq!(
            integer_str("ts", Some("x")),
            Err(ParseError::BadNumber {
                field: "ts",
                value: "x".into(),
                reason: NumberError::Malformed,
            })
        );
    }
}
