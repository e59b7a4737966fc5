//! Decimals written as JSON strings fast: the output is exactly `Decimal`'s `Display` (sign,
//! every digit of the mantissa, `scale` places with their trailing zeros) — what
//! `rust_decimal`'s own `Serialize` writes — without its digit-by-digit division of the 96-bit
//! mantissa. An event carries ~50 decimals, many with 28 significant digits (the distances are
//! never rounded), so in a correlated move this is a large share of what journaling costs.
//!
//! Use on output fields: `#[serde(serialize_with = "crate::model::dec_json::decimal")]`
//! (`opt` for `Option<Decimal>`, `list` for `Vec<Decimal>`). Reading is unchanged.

use rust_decimal::Decimal;
use serde::Serializer;
use serde::ser::SerializeSeq;

/// Enough for a sign, 29 digits, a point and up to 28 leading zeros after it.
const BUF: usize = 64;

/// `d` formatted exactly as `d.to_string()`, into `buf`.
pub fn write<'b>(d: &Decimal, buf: &'b mut [u8; BUF]) -> &'b str {
    let mut digits = itoa::Buffer::new();
    let s = digits.format(d.mantissa().unsigned_abs()).as_bytes();
    let scale = d.scale() as usize;
    let mut n = 0;
    let mut push = |bytes: &[u8], n: &mut usize| {
        if let Some(dst) = buf.get_mut(*n..*n + bytes.len()) {
            dst.copy_from_slice(bytes);
            *n += bytes.len();
        }
    };
    if d.is_sign_negative() {
        push(b"-", &mut n);
    }
    if scale == 0 {
        push(s, &mut n);
    } else if s.len() > scale {
        let (whole, frac) = s.split_at(s.len() - scale);
        push(whole, &mut n);
        push(b".", &mut n);
        push(frac, &mut n);
    } else {
        push(b"0.", &mut n);
        for _ in s.len()..scale {
            push(b"0", &mut n);
        }
        push(s, &mut n);
    }
    // Only ASCII digits, '-' and '.' were written.
    std::str::from_utf8(buf.get(..n).unwrap_or_default()).unwrap_or_default()
}

/// Serialises a decimal as a string ([`write`]).
pub fn decimal<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; BUF];
    s.serialize_str(write(d, &mut buf))
}

/// Serialises an optional decimal as a string or `null`.
pub fn opt<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => decimal(d, s),
        None => s.serialize_none(),
    }
}

/// Serialises decimals as a list of strings.
pub fn list<S: Serializer>(ds: &[Decimal], s: S) -> Result<S::Ok, S::Error> {
    struct One<'a>(&'a Decimal);
    impl serde::Serialize for One<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            decimal(self.0, s)
        }
    }
    let mut seq = s.serialize_seq(Some(ds.len()))?;
    for d in ds {
        seq.serialize_element(&One(d))?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(d: Decimal) {
        let mut buf = [0u8; BUF];
        assert_eq!(write(&d, &mut buf), d.to_string(), "{d:?}");
        let ours = serde_json::to_string(&Wrapped(d)).unwrap_or_default();
        assert_eq!(ours, serde_json::to_string(&d).unwrap_or_default());
    }

    struct Wrapped(Decimal);
    impl serde::Serialize for Wrapped {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            decimal(&self.0, s)
        }
    }

    /// The edges: zero with and without places, negative zero, the extremes, every scale.
    #[test]
    fn edges_equal_display() {
        for scale in 0..=28u32 {
            for m in [
                0i128,
                1,
                -1,
                7,
                10,
                -100,
                79_228_162_514_264_337_593_543_950_335,
            ] {
                same(Decimal::from_i128_with_scale(m, scale));
            }
            let mut neg_zero = Decimal::from_i128_with_scale(0, scale);
            neg_zero.set_sign_negative(true);
            same(neg_zero);
        }
        same(Decimal::MAX);
        same(Decimal::MIN);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// Any decimal is written exactly as `Display` writes it.
        #[test]
        fn any_decimal_equals_display(lo in any::<u32>(), mid in any::<u32>(), hi in any::<u32>(),
                                      negative in any::<bool>(), scale in 0u32..=28) {
            same(Decimal::from_parts(lo, mid, hi, negative, scale));
        }
    }
}
