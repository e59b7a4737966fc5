//! Exact decimal input: a decimal string is read into a [`Decimal`] only when no digit is lost.
//!
//! `str::parse::<Decimal>` and `rust_decimal::serde::str` round a string with more digits than
//! `Decimal` holds (28 decimal places, a 96-bit mantissa): `"0.00000000000000000000000000001"`
//! becomes 0, a quantity silently vanishes. Every input path of the margin model (accounts,
//! updates, fills, instruments, prices, levels) reads decimals through [`parse_exact`] instead,
//! and refuses such a value with a message saying why (issue 12 item 3). Trailing zeros past
//! the 28th place are not digits lost, so `"1.000…0"` is accepted. Scientific notation
//! (`"1.5e3"`) is accepted when it is exact.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserializer, Serializer, de};

/// Why a decimal string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExactDecimalError {
    /// Not a decimal number at all.
    #[error("{0:?} is not a decimal number")]
    Invalid(String),
    /// More significant digits or decimal places than `Decimal` holds: it would be rounded.
    #[error(
        "{0:?} has more digits than a decimal holds (at most 28 decimal places and 28–29 significant digits); it would be rounded, so it is refused"
    )]
    TooPrecise(String),
    /// Larger in magnitude than `Decimal`'s range (about ±7.9e28).
    #[error("{0:?} is out of range (the largest magnitude is 79228162514264337593543950335)")]
    OutOfRange(String),
}

/// The significant digits of a plain or scientific decimal string (no sign, no point, no
/// exponent, no leading or trailing zeros), or `None` when it has no digit.
fn significant_digits(s: &str) -> Option<String> {
    let mantissa = s
        .split(['e', 'E'])
        .next()
        .unwrap_or(s)
        .trim_start_matches(['+', '-']);
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        return None;
    }
    Some(
        digits
            .trim_start_matches('0')
            .trim_end_matches('0')
            .to_string(),
    )
}

/// Parses `s` exactly: the decimal it denotes, or an error when it is not a number, is out of
/// range, or would need rounding.
pub fn parse_exact(s: &str) -> Result<Decimal, ExactDecimalError> {
    match Decimal::from_str_exact(s) {
        Ok(d) => return Ok(d),
        Err(rust_decimal::Error::Underflow) => {
            // Trailing zeros after the point lose nothing: drop them and try again.
            if let Some((int, frac)) = s.split_once('.') {
                let frac = frac.trim_end_matches('0');
                let trimmed = if frac.is_empty() {
                    int.to_string()
                } else {
                    format!("{int}.{frac}")
                };
                if trimmed.len() < s.len() {
                    return parse_exact(&trimmed);
                }
            }
            return Err(ExactDecimalError::TooPrecise(s.to_string()));
        }
        Err(_) => {}
    }
    if s.contains(['e', 'E'])
        && let Ok(d) = Decimal::from_scientific(s)
    {
        // Exact when the value keeps every significant digit of the input.
        let want = significant_digits(s).ok_or_else(|| ExactDecimalError::Invalid(s.into()))?;
        let got = significant_digits(&d.normalize().to_string()).unwrap_or_default();
        return if want == got {
            Ok(d)
        } else {
            Err(ExactDecimalError::TooPrecise(s.to_string()))
        };
    }
    // Distinguish a number too large from something that is not a number.
    let plain = s.strip_prefix(['+', '-']).unwrap_or(s);
    let is_number = !plain.is_empty()
        && plain.chars().filter(|c| *c == '.').count() <= 1
        && plain
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '_')
        && plain.chars().any(|c| c.is_ascii_digit());
    if is_number {
        Err(ExactDecimalError::OutOfRange(s.to_string()))
    } else {
        Err(ExactDecimalError::Invalid(s.to_string()))
    }
}

struct ExactVisitor;

impl de::Visitor<'_> for ExactVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal string such as \"0.1\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
        parse_exact(v).map_err(E::custom)
    }

    // Self-describing formats (TOML) hand integers to `deserialize_str`'s visitor; an integer
    // is exact. Floats are refused (the default): they have been through binary floating point.
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }
}

/// `#[serde(with = "crate::model::exact_str")]`: a [`Decimal`] from a string, exactly
/// ([`parse_exact`]); serialised as a string.
pub mod exact_str {
    use super::*;

    /// Reads a decimal string exactly.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        d.deserialize_str(ExactVisitor)
    }

    /// Writes the decimal as a string.
    pub fn serialize<S: Serializer>(v: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        crate::model::dec_json::decimal(v, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    /// Exact values parse; values that would be rounded, out of range or not numbers are
    /// refused with the reason (issue 12 item 3).
    #[test]
    fn parse_exact_table() {
        let ok = [
            ("0.1", dec!(0.1)),
            ("-60000", dec!(-60000)),
            (
                "0.0000000000000000000000000001",
                dec!(0.0000000000000000000000000001),
            ),
            ("1.00000000000000000000000000000000", dec!(1)),
            ("79228162514264337593543950335", Decimal::MAX),
            ("-79228162514264337593543950335", Decimal::MIN),
            ("1.5e3", dec!(1500)),
            ("0", Decimal::ZERO),
        ];
        for (s, want) in ok {
            assert_eq!(parse_exact(s), Ok(want), "{s}");
        }
        let too_precise = [
            "0.00000000000000000000000000001",
            "8.0000000000000000000000000001",
            "1.00000000000000000000000000001",
            "0.123456789012345678901234567891",
        ];
        for s in too_precise {
            assert_eq!(
                parse_exact(s),
                Err(ExactDecimalError::TooPrecise(s.into())),
                "{s}"
            );
        }
        for s in [
            "79228162514264337593543950336",
            "100000000000000000000000000000000",
        ] {
            assert_eq!(
                parse_exact(s),
                Err(ExactDecimalError::OutOfRange(s.into())),
                "{s}"
            );
        }
        for s in ["", "abc", "1.2.3", "--1", "0x10"] {
            assert_eq!(
                parse_exact(s),
                Err(ExactDecimalError::Invalid(s.into())),
                "{s}"
            );
        }
        assert!(
            parse_exact("0.00000000000000000000000000001")
                .unwrap_err()
                .to_string()
                .contains("rounded")
        );
    }

    /// The serde adapter reads strings exactly and refuses JSON numbers.
    #[test]
    fn serde_adapter() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[serde(with = "exact_str")]
            q: Decimal,
        }
        let t: T = serde_json::from_str(r#"{"q":"0.5"}"#).unwrap();
        assert_eq!(t.q, dec!(0.5));
        let e = serde_json::from_str::<T>(r#"{"q":"0.00000000000000000000000000001"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rounded"), "{e}");
        let e = serde_json::from_str::<T>(r#"{"q":0.5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type: floating point"), "{e}");
        let e = serde_json::from_str::<T>(r#"{"q":5}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type: integer"), "{e}");
    }
}
