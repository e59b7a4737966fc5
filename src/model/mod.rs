//! Core domain types shared by every stage of the pipeline: instruments, price ticks, accounts,
//! account updates, risk snapshots and risk events.
//!
//! Everything that is money is a [`Decimal`] parsed from a string. Input types deserialise
//! decimals from JSON/TOML **strings only** (a JSON float is rejected) so that no value ever
//! passes through `f64`. Output types serialise decimals as strings.

use std::fmt;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

mod account; // accounts, positions, levels, fills, updates, validation
pub mod dec_json; // decimals written as JSON strings, fast and exactly as `Display`
mod exact; // decimal strings read exactly, never rounded
mod funding; // the next funding payment inside a snapshot
mod instrument; // instruments, tiers, haircuts, price sources
mod instrument_event; // what an instrument_changed event carries
mod risk; // ratios, snapshots, states, events

pub use account::*;
pub use exact::*;
pub use funding::*;
pub use instrument::*;
pub use instrument_event::*;
pub use risk::*;

/// Milliseconds since the Unix epoch, UTC.
pub type TimestampMs = i64;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> TimestampMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Formats a millisecond timestamp as RFC 3339 UTC with milliseconds (`2021-05-19T12:50:00.000Z`).
pub fn format_rfc3339_ms(ts: TimestampMs) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ts).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// What an id holds: its text, shared. `Arc<str>` for account ids (each account's own, and
/// accounts come and go); [`IdText`] for instrument ids, which the instrument table interns so
/// that the clones every event makes of them are copies, not reference-count writes to one
/// cache line from every core.
trait IdRepr: Clone {
    fn from_str(s: &str) -> Self;
    fn from_string(s: String) -> Self;
    fn text(&self) -> &str;
}

impl IdRepr for Arc<str> {
    fn from_str(s: &str) -> Self {
        Arc::from(s)
    }
    fn from_string(s: String) -> Self {
        Arc::from(s)
    }
    fn text(&self) -> &str {
        self
    }
}

/// An instrument id's text: shared like any id, or interned for the life of the process
/// ([`InstrumentId::interned`]).
#[derive(Clone)]
enum IdText {
    Shared(Arc<str>),
    Interned(&'static str),
}

impl IdRepr for IdText {
    fn from_str(s: &str) -> Self {
        IdText::Shared(Arc::from(s))
    }
    fn from_string(s: String) -> Self {
        IdText::Shared(Arc::from(s))
    }
    fn text(&self) -> &str {
        match self {
            IdText::Shared(s) => s,
            IdText::Interned(s) => s,
        }
    }
}

/// `s` kept for the life of the process, once per distinct text: what may be interned is
/// bounded by configuration (instrument ids, price sources), never by input.
pub fn intern(s: &str) -> &'static str {
    static TEXTS: std::sync::LazyLock<parking_lot::Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::LazyLock::new(Default::default);
    let mut texts = TEXTS.lock();
    match texts.get(s) {
        Some(t) => t,
        None => {
            let t: &'static str = Box::leak(Box::<str>::from(s));
            texts.insert(t);
            t
        }
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $repr:ty) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name($repr);

        impl $name {
            /// Creates the id from any string.
            pub fn new(s: impl AsRef<str>) -> Self {
                Self(<$repr as IdRepr>::from_str(s.as_ref()))
            }
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                self.0.text()
            }
        }
        // Compared, hashed and ordered as its text (as `Borrow<str>` requires). Two copies of
        // one text (interned ids, clones of one `Arc`) are equal without reading it: a
        // correlated move's events look instruments up by id hundreds of thousands of times.
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                let (a, b) = (self.as_str(), other.as_str());
                std::ptr::eq(a, b) || a == b
            }
        }
        impl Eq for $name {}
        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.as_str().hash(state)
            }
        }
        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.as_str().cmp(other.as_str())
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.as_str())
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(<$repr as IdRepr>::from_string(s))
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                if s.is_empty() {
                    return Err(serde::de::Error::custom(concat!(stringify!($name), " must not be empty")));
                }
                Ok(Self::new(s))
            }
        }
    };
}

string_id!(
    /// Canonical instrument id, e.g. `BTCUSDT-PERP`, or a collateral asset such as `BTC`, `USDT`.
    InstrumentId,
    IdText
);
string_id!(
    /// Account id as given by the account source (exchange sub-account, client id, …).
    AccountId,
    Arc<str>
);

impl InstrumentId {
    /// The same id, its text kept for the life of the process ([`intern`]): its clones copy
    /// a pointer and its drops do nothing. The instrument table interns every instrument's
    /// id, so the ids events carry are these (configured ids only, a bounded set).
    pub fn interned(&self) -> Self {
        match &self.0 {
            IdText::Interned(_) => self.clone(),
            IdText::Shared(s) => InstrumentId(IdText::Interned(intern(s))),
        }
    }

    /// Whether the id's text is interned.
    pub fn is_interned(&self) -> bool {
        matches!(self.0, IdText::Interned(_))
    }
}

/// Generates [`Venue`] from the venue table, `venues!` in `crate::venues`, which is the one
/// list of venues (see "Adding a venue" there).
///
/// The enum is generated *here*, in the leaf module, so that `model` stays the module everyone
/// imports and imports nothing of the crate: the table is only tokens, and this expansion keeps
/// the variant, its name and its docs and drops the adapter paths, which only
/// [`crate::feeds`]'s own expansion (the adapter lookup) reads.
macro_rules! venue_enum {
    ($( $(#[$doc:meta])* $variant:ident $name:literal $(=> $module:ident :: $adapter:ident)? ; )*) => {
        /// A price venue. The variants, their names and their adapters come from one table,
        /// `venues!` in `crate::venues` ("Adding a venue" there).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum Venue {
            $( $(#[$doc])* #[serde(rename = $name)] $variant, )*
        }

        impl Venue {
            /// All venues, in display (table) order.
            pub const ALL: [Venue; [$($name),*].len()] = [$(Venue::$variant),*];

            /// Every venue's config/wire name, in the order of [`Venue::ALL`].
            pub const NAMES: [&'static str; [$($name),*].len()] = [$($name),*];

            /// The venue's config/wire name (`binance-usdm`, …).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Venue::$variant => $name, )*
                }
            }
        }
    };
}

crate::venues::venues!(venue_enum);

impl Venue {
    /// Parses a venue name as written in config files.
    pub fn parse(s: &str) -> Option<Venue> {
        Venue::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Venue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A venue name that is not in the venue table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown venue {0:?} (known: {known})", known = Venue::NAMES.join(", "))]
pub struct UnknownVenue(pub String);

impl std::str::FromStr for Venue {
    type Err = UnknownVenue;

    fn from_str(s: &str) -> Result<Venue, UnknownVenue> {
        Venue::parse(s).ok_or_else(|| UnknownVenue(s.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------
// Prices
// ---------------------------------------------------------------------------------------------

/// One price observation for one canonical instrument from one venue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceTick {
    /// The canonical instrument priced.
    pub instrument: InstrumentId,
    /// The venue that sent it.
    pub venue: Venue,
    /// The price the engine uses for this instrument: the venue's mark price for contracts,
    /// its index price for collateral (see [`PriceSource::field`]).
    pub price: Decimal,
    /// The venue's index price, when the frame carried one (informational).
    pub index: Option<Decimal>,
    /// The venue's own timestamp of the observation, if it sends one.
    pub exchange_ts: Option<TimestampMs>,
    /// When liqwatch received the frame.
    pub received_ts: TimestampMs,
}

/// A price as used to compute a snapshot, carried in every event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceUsed {
    /// The instrument.
    pub instrument: InstrumentId,
    /// The price.
    pub price: Decimal,
    /// Where it came from: a venue name, `median(binance-usdm,okx)`, `scenario`, `stable`
    /// (borrowed when it is one of a fixed set, so that copying it into every event of a
    /// correlated move allocates nothing).
    pub source: std::borrow::Cow<'static, str>,
    /// When it was received (ms since epoch).
    pub received_ts: TimestampMs,
    /// Its age when the snapshot was taken, in milliseconds.
    pub age_ms: i64,
    /// True when every source of the instrument is stale.
    pub stale: bool,
}

// ---------------------------------------------------------------------------------------------
// Serde helpers for decimals that must come from strings
// ---------------------------------------------------------------------------------------------

/// `Vec<Decimal>` from/to a list of strings.
pub mod decimal_vec_str {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    /// Serialises as strings.
    pub fn serialize<S: Serializer>(v: &[Decimal], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for d in v {
            seq.serialize_element(&d.to_string())?;
        }
        seq.end()
    }
    /// Deserialises from strings only.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Decimal>, D::Error> {
        let raw = Vec::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        raw.iter()
            .map(|s| {
                super::parse_exact(s)
                    .map_err(|e| serde::de::Error::custom(format!("decimal {s:?}: {e}")))
            })
            .collect()
    }
}

/// `BTreeMap<InstrumentId, Decimal>` with string values.
pub mod decimal_map_str {
    use std::collections::BTreeMap;

    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeMap};

    use super::InstrumentId;

    /// Serialises values as strings.
    pub fn serialize<S: Serializer>(
        m: &BTreeMap<InstrumentId, Decimal>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            map.serialize_entry(k.as_str(), &v.to_string())?;
        }
        map.end()
    }
    /// Deserialises from string values only.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<InstrumentId, Decimal>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                let d = super::parse_exact(&v).map_err(|e| {
                    serde::de::Error::custom(format!("collateral {k:?}: decimal {v:?}: {e}"))
                })?;
                Ok((InstrumentId::from(k), d))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    /// An interned instrument id is the same id as its shared form: equal, hashed, ordered,
    /// printed and serialised alike, found by either in a map, and interned once per text.
    #[test]
    fn an_interned_instrument_id_is_the_same_id() {
        use std::collections::{BTreeSet, HashMap};
        use std::hash::BuildHasher;
        let shared = InstrumentId::new("ETHUSDT-PERP");
        let interned = shared.interned();
        assert!(interned.is_interned() && !shared.is_interned());
        assert_eq!(shared, interned);
        // Two copies of one text are equal without comparing it; other texts never are.
        assert_eq!(interned, interned.clone());
        assert_ne!(interned, InstrumentId::new("ETHUSDT-PERQ").interned());
        assert_ne!(shared, InstrumentId::new("ETHUSDT"));
        let h = std::hash::RandomState::new();
        assert_eq!(h.hash_one(&shared), h.hash_one(&interned));
        assert_eq!(h.hash_one(&shared), h.hash_one("ETHUSDT-PERP"));
        let other = InstrumentId::new("BTCUSDT-PERP").interned();
        assert!(other < interned && other < shared);
        let set: BTreeSet<InstrumentId> = [interned.clone(), shared.clone(), other].into();
        assert_eq!(set.len(), 2);
        let map: HashMap<InstrumentId, u8> = [(interned.clone(), 7)].into();
        assert_eq!(map.get(&shared), Some(&7));
        assert_eq!(map.get("ETHUSDT-PERP"), Some(&7));
        assert_eq!(
            format!("{interned} {interned:?}"),
            r#"ETHUSDT-PERP "ETHUSDT-PERP""#
        );
        assert_eq!(
            serde_json::to_string(&interned).unwrap(),
            serde_json::to_string(&shared).unwrap()
        );
        // One text per distinct id, however often it is interned.
        assert!(std::ptr::eq(
            intern("ETHUSDT-PERP"),
            InstrumentId::from(String::from("ETHUSDT-PERP"))
                .interned()
                .as_str()
        ));
        assert_eq!(
            interned.interned().as_str().as_ptr(),
            interned.as_str().as_ptr()
        );
    }

    /// Decimals in accounts are read from strings and a JSON float is rejected.
    #[test]
    fn account_rejects_float_quantities() {
        let ok = r#"{"id":"a1","collateral":{"USDT":"100.5"},"positions":[{"instrument":"BTCUSDT-PERP","quantity":"-0.5","entry_price":"60000"}]}"#;
        let a: Account = serde_json::from_str(ok).unwrap();
        assert_eq!(a.collateral[&InstrumentId::from("USDT")], dec!(100.5));
        assert_eq!(a.positions[0].quantity, dec!(-0.5));
        assert_eq!(a.positions[0].side, PositionSide::Both);
        let bad =
            r#"{"id":"a1","positions":[{"instrument":"X","quantity":0.1,"entry_price":"1"}]}"#;
        assert!(serde_json::from_str::<Account>(bad).is_err());
        let unknown = r#"{"id":"a1","colateral":{}}"#;
        assert!(serde_json::from_str::<Account>(unknown).is_err());
    }

    /// Issue 12 item 3: a quantity, price or balance with more digits than a decimal holds is
    /// refused with the reason, not rounded (to 0).
    #[test]
    fn account_refuses_rounded_decimals() {
        let tiny = "0.00000000000000000000000000001";
        for body in [
            format!(
                r#"{{"id":"a","positions":[{{"instrument":"X","quantity":"{tiny}","entry_price":"1"}}]}}"#
            ),
            format!(
                r#"{{"id":"a","positions":[{{"instrument":"X","quantity":"1","entry_price":"{tiny}"}}]}}"#
            ),
            format!(r#"{{"id":"a","collateral":{{"USDT":"{tiny}"}}}}"#),
            r#"{"id":"a","collateral":{"USDT":"79228162514264337593543950336"}}"#.to_string(),
        ] {
            let e = serde_json::from_str::<Account>(&body)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("rounded") || e.contains("out of range"),
                "{body}: {e}"
            );
        }
        let a: Account = serde_json::from_str(
            r#"{"id":"a","collateral":{"USDT":"0.0000000000000000000000000001"}}"#,
        )
        .unwrap();
        assert_eq!(
            a.collateral[&InstrumentId::from("USDT")],
            dec!(0.0000000000000000000000000001)
        );
    }

    /// The margin ratio is infinite at non-positive equity and round-trips through JSON.
    #[test]
    fn margin_ratio_infinite_and_serde() {
        assert_eq!(
            MarginRatio::compute(dec!(1), dec!(0)),
            MarginRatio::Infinite
        );
        assert_eq!(
            MarginRatio::compute(dec!(1), dec!(-5)),
            MarginRatio::Infinite
        );
        assert_eq!(
            MarginRatio::compute(dec!(7965), dec!(90000)),
            MarginRatio::Finite(dec!(0.0885))
        );
        assert!(MarginRatio::Infinite > MarginRatio::Finite(dec!(1000000)));
        assert!(MarginRatio::Infinite.at_or_above(dec!(1)));
        let s = serde_json::to_string(&MarginRatio::Infinite).unwrap();
        assert_eq!(s, "\"inf\"");
        let back: MarginRatio = serde_json::from_str("\"0.0885\"").unwrap();
        assert_eq!(back, MarginRatio::Finite(dec!(0.0885)));
    }

    /// Issue 11 item 5: the one ratio rule — no exposure (MM = 0) is ratio 0 whatever the
    /// equity; with exposure, equity ≤ 0 is infinite; otherwise MM / equity.
    #[test]
    fn margin_ratio_rule_issue_11_item_5() {
        let f = MarginRatio::Finite;
        let table = [
            // (MM, equity, ratio)
            (dec!(0), dec!(0), f(dec!(0))),
            (dec!(0), dec!(-1000), f(dec!(0))),
            (dec!(0), dec!(-0.000000000001), f(dec!(0))),
            (dec!(0), dec!(500), f(dec!(0))),
            (dec!(0.000000000001), dec!(0), MarginRatio::Infinite),
            (dec!(10), dec!(-1), MarginRatio::Infinite),
            (dec!(10), dec!(20), f(dec!(0.5))),
            (
                Decimal::MAX,
                dec!(0.0000000000000000000000000001),
                MarginRatio::Infinite,
            ),
        ];
        for (mm, equity, want) in table {
            assert_eq!(
                MarginRatio::compute(mm, equity),
                want,
                "MM {mm}, equity {equity}"
            );
        }
        assert!(MarginRatio::compute(dec!(0), dec!(-5)).below(dec!(0.8)));
    }

    /// Venue names round-trip through `parse`, `FromStr`, `Display` and serde, are kebab-case,
    /// and unknown names are refused with the list of known ones.
    #[test]
    fn venue_names() {
        assert_eq!(Venue::ALL.len(), Venue::NAMES.len());
        for (v, name) in Venue::ALL.into_iter().zip(Venue::NAMES) {
            assert_eq!(v.as_str(), name);
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name} is not kebab-case"
            );
            assert_eq!(Venue::parse(v.as_str()), Some(v));
            assert_eq!(name.parse::<Venue>(), Ok(v));
            assert_eq!(v.to_string(), name);
            let j = serde_json::to_string(&v).unwrap();
            assert_eq!(j, format!("\"{}\"", v.as_str()));
            assert_eq!(serde_json::from_str::<Venue>(&j).unwrap(), v);
        }
        let e = "binance".parse::<Venue>().unwrap_err();
        assert!(e.to_string().contains("binance-usdm, bybit-linear"), "{e}");
        assert!(serde_json::from_str::<Venue>("\"binance\"").is_err());
    }
}
