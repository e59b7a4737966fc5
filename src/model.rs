//! Core domain types shared by every stage of the pipeline: instruments, price ticks, accounts,
//! account updates, risk snapshots and risk events.
//!
//! Everything that is money is a [`Decimal`] parsed from a string. Input types deserialise
//! decimals from JSON/TOML **strings only** (a JSON float is rejected) so that no value ever
//! passes through `f64`. Output types serialise decimals as strings.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

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

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Creates the id from any string.
            pub fn new(s: impl AsRef<str>) -> Self {
                Self(Arc::from(s.as_ref()))
            }
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
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
    InstrumentId
);
string_id!(
    /// Account id as given by the account source (exchange sub-account, client id, …).
    AccountId
);

/// Generates [`Venue`] from the venue table, `venues!` in [`crate::feeds`], which is the one
/// list of venues (see "Adding a venue" there).
///
/// The enum is generated *here*, in the leaf module, so that `model` stays the module everyone
/// imports and imports nothing of the crate: the table is only tokens, and this expansion keeps
/// the variant, its name and its docs and drops the adapter paths, which only
/// [`crate::feeds`]'s own expansion (the adapter lookup) reads.
macro_rules! venue_enum {
    ($( $(#[$doc:meta])* $variant:ident $name:literal $(=> $module:ident :: $adapter:ident)? ; )*) => {
        /// A price venue. The variants, their names and their adapters come from one table,
        /// `venues!` in [`crate::feeds`] ("Adding a venue" there).
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

crate::feeds::venues!(venue_enum);

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
// Instruments
// ---------------------------------------------------------------------------------------------

/// What kind of thing an instrument is, which decides how it is margined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstrumentKind {
    /// USDT/USDC-margined perpetual: quantity in base units (× `contract_size`), PnL in quote.
    LinearPerpetual,
    /// USDT/USDC-margined dated future.
    LinearFuture,
    /// Coin-margined perpetual: quantity in contracts of `contract_size` USD face value.
    InversePerpetual,
    /// Coin-margined dated future.
    InverseFuture,
    /// A collateral asset held in the wallet (BTC, ETH, USDT, …), counted with a haircut.
    Collateral,
}

impl InstrumentKind {
    /// True for coin-margined contracts.
    pub fn is_inverse(self) -> bool {
        matches!(
            self,
            InstrumentKind::InversePerpetual | InstrumentKind::InverseFuture
        )
    }
    /// True for anything that is a position rather than a wallet balance.
    pub fn is_contract(self) -> bool {
        !matches!(self, InstrumentKind::Collateral)
    }
}

/// One maintenance-margin bracket: `MM = N·mmr − cum` for `notional_floor ≤ N < notional_cap`.
///
/// For linear contracts notional and `cum` are in the quote currency (USDT); for inverse
/// contracts they are in the coin, as the venues publish them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarginTier {
    /// Lower bound of the bracket's notional (inclusive).
    #[serde(with = "rust_decimal::serde::str")]
    pub notional_floor: Decimal,
    /// Upper bound of the bracket's notional.
    #[serde(with = "rust_decimal::serde::str")]
    pub notional_cap: Decimal,
    /// Maintenance-margin rate of the bracket (0.004 = 0.4 %).
    #[serde(with = "rust_decimal::serde::str")]
    pub mmr: Decimal,
    /// Maintenance amount ("cum", "mmDeduction") of the bracket.
    #[serde(with = "rust_decimal::serde::str")]
    pub cum: Decimal,
}

/// One slice of a tiered collateral haircut: amounts (in units of the asset) from
/// `amount_floor` count at `ratio`, applied slice by slice like income-tax brackets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaircutTier {
    /// Lower bound of the slice, in units of the asset (inclusive).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_floor: Decimal,
    /// Collateral value ratio for the slice (0.95 = counts at 95 %).
    #[serde(with = "rust_decimal::serde::str")]
    pub ratio: Decimal,
}

/// Which field of a venue's price frame prices an instrument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PriceField {
    /// The mark price (contracts are margined on mark).
    #[default]
    Mark,
    /// The index price (collateral is valued at index).
    Index,
}

/// A venue symbol that prices an instrument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSource {
    /// The venue.
    pub venue: Venue,
    /// The venue's own symbol (`BTCUSDT`, `BTC-USDT-SWAP`, `BTC-PERPETUAL`, `BTC`).
    pub symbol: String,
    /// Which price of that symbol to use.
    #[serde(default)]
    pub field: PriceField,
}

/// A canonical instrument with everything the margin model needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instrument {
    /// Canonical id (`BTCUSDT-PERP`, `BTC`).
    pub id: InstrumentId,
    /// Contract or collateral.
    pub kind: InstrumentKind,
    /// The underlying asset whose price moves this instrument (`BTC` for `BTCUSDT-PERP` and for
    /// the `BTC` collateral). Shocks and liquidation-price searches move every instrument with
    /// the same underlying together. Stablecoins have `stable = true` instead.
    pub underlying: String,
    /// Linear: base units per unit of quantity (usually 1). Inverse: USD face value of one
    /// contract (100 for Binance COIN-M BTCUSD). Collateral: unused (1).
    #[serde(default = "one", with = "rust_decimal::serde::str")]
    pub contract_size: Decimal,
    /// Maintenance-margin brackets, sorted by floor, first floor 0. Empty for collateral.
    #[serde(default)]
    pub tiers: Vec<MarginTier>,
    /// Liquidation (clearance) fee rate on liquidated notional.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub liquidation_fee_rate: Decimal,
    /// Collateral only: flat haircut ratio, used when `haircut_tiers` is empty.
    #[serde(default = "one", with = "rust_decimal::serde::str")]
    pub collateral_ratio: Decimal,
    /// Collateral only: tiered haircut slices (Bybit UTA style), sorted by floor.
    #[serde(default)]
    pub haircut_tiers: Vec<HaircutTier>,
    /// A stablecoin valued at exactly 1 with no feed (USDT, USDC).
    #[serde(default)]
    pub stable: bool,
    /// Venue symbols that price this instrument.
    #[serde(default)]
    pub sources: Vec<PriceSource>,
    /// Where the numbers come from (venue page, API snapshot date).
    #[serde(default)]
    pub source_note: Option<String>,
}

fn one() -> Decimal {
    Decimal::ONE
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
    /// Where it came from: a venue name, `median(binance-usdm,okx)`, `scenario`, `stable`.
    pub source: String,
    /// When it was received (ms since epoch).
    pub received_ts: TimestampMs,
    /// Its age when the snapshot was taken, in milliseconds.
    pub age_ms: i64,
    /// True when every source of the instrument is stale.
    pub stale: bool,
}

// ---------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------

/// Position side. `Both` is one-way mode; `Long`/`Short` are the legs of hedge mode, each
/// margined in its own bracket.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum PositionSide {
    /// One-way mode: quantity is signed.
    #[default]
    Both,
    /// Hedge-mode long leg: quantity ≥ 0.
    Long,
    /// Hedge-mode short leg: quantity ≤ 0.
    Short,
}

/// An open position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// The contract.
    pub instrument: InstrumentId,
    /// One-way (`both`) or a hedge-mode leg.
    #[serde(default)]
    pub side: PositionSide,
    /// Signed quantity: long > 0, short < 0. Linear: base units; inverse: contracts.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Average entry price.
    #[serde(with = "rust_decimal::serde::str")]
    pub entry_price: Decimal,
}

/// Per-account override of the monitor's levels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Ascending warning levels on the margin ratio MM / equity (default `[0.8]`).
    #[serde(with = "decimal_vec_str")]
    pub warning_levels: Vec<Decimal>,
    /// Trigger level (default 1.0).
    #[serde(with = "rust_decimal::serde::str")]
    pub trigger: Decimal,
    /// Recovery hysteresis: a level is recovered below `level − hysteresis` (default 0.05).
    #[serde(with = "rust_decimal::serde::str")]
    pub hysteresis: Decimal,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warning_levels: vec![Decimal::new(8, 1)],
            trigger: Decimal::ONE,
            hysteresis: Decimal::new(5, 2),
        }
    }
}

/// A rule an account or its levels break: the field (a path relative to the object checked,
/// e.g. `positions[1].entry_price`) and what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field, relative to the object checked.
    pub field: String,
    /// What is wrong, in words a person can act on.
    pub message: String,
}

impl Problem {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl Thresholds {
    /// Every rule the levels break: trigger > 0, hysteresis ≥ 0, warning levels > 0, strictly
    /// ascending and below the trigger. The one set of rules for the config, account files, the
    /// HTTP API, NATS and the account map.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.trigger <= Decimal::ZERO {
            out.push(Problem::new(
                "trigger",
                format!("the trigger level must be > 0, got {}", self.trigger),
            ));
        }
        if self.hysteresis < Decimal::ZERO {
            out.push(Problem::new(
                "hysteresis",
                format!("hysteresis must be ≥ 0, got {}", self.hysteresis),
            ));
        }
        let mut previous: Option<Decimal> = None;
        for (i, level) in self.warning_levels.iter().enumerate() {
            let field = format!("warning_levels[{i}]");
            if *level <= Decimal::ZERO || *level >= self.trigger {
                out.push(Problem::new(
                    field,
                    format!(
                        "warning level {level} must be > 0 and below the trigger {}",
                        self.trigger
                    ),
                ));
            } else if previous.is_some_and(|p| *level <= p) {
                out.push(Problem::new(
                    field,
                    "warning levels must be strictly ascending",
                ));
            }
            previous = Some(*level);
        }
        out
    }

    /// `Ok` when [`Thresholds::problems`] finds none; otherwise the first, as text.
    pub fn validate(&self) -> Result<(), String> {
        match self.problems().into_iter().next() {
            None => Ok(()),
            Some(p) => Err(p.to_string()),
        }
    }
}

/// A cross-margin account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// The account id.
    pub id: AccountId,
    /// Wallet balances per collateral asset (negative = borrowed, counted at 100 %).
    #[serde(default, with = "decimal_map_str")]
    pub collateral: BTreeMap<InstrumentId, Decimal>,
    /// Open positions; at most one per (instrument, side).
    #[serde(default)]
    pub positions: Vec<Position>,
    /// Optional per-account levels overriding the configured defaults.
    #[serde(default)]
    pub thresholds: Option<Thresholds>,
}

impl Account {
    /// Every rule the account breaks that needs no instrument table: a hedge-mode long leg has
    /// quantity ≥ 0 and a short leg ≤ 0; an open leg has an entry price > 0 (a flat one ≥ 0);
    /// at most one position per instrument and side; its own levels follow
    /// [`Thresholds::problems`]. The one set of rules for account files, the HTTP API, NATS and
    /// the account map.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.positions.iter().enumerate() {
            let at = format!("positions[{i}]");
            match p.side {
                PositionSide::Long if p.quantity < Decimal::ZERO => out.push(Problem::new(
                    format!("{at}.quantity"),
                    format!("a hedge-mode long leg has quantity ≥ 0, got {}", p.quantity),
                )),
                PositionSide::Short if p.quantity > Decimal::ZERO => out.push(Problem::new(
                    format!("{at}.quantity"),
                    format!(
                        "a hedge-mode short leg has quantity ≤ 0, got {}",
                        p.quantity
                    ),
                )),
                _ => {}
            }
            if p.entry_price < Decimal::ZERO || (!p.quantity.is_zero() && p.entry_price.is_zero()) {
                out.push(Problem::new(
                    format!("{at}.entry_price"),
                    format!("entry price must be positive, got {}", p.entry_price),
                ));
            }
            if !seen.insert((p.instrument.clone(), p.side)) {
                out.push(Problem::new(
                    format!("{at}.instrument"),
                    format!(
                        "duplicate position for {:?} side {:?}: at most one per instrument and side",
                        p.instrument, p.side
                    ),
                ));
            }
        }
        if let Some(t) = &self.thresholds {
            out.extend(t.problems().into_iter().map(|p| Problem {
                field: format!("thresholds.{}", p.field),
                message: p.message,
            }));
        }
        out
    }
}

/// A trade that changes one position (and the settlement balance by realised PnL and fee).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fill {
    /// The contract traded.
    pub instrument: InstrumentId,
    /// The position leg the fill applies to.
    #[serde(default)]
    pub side: PositionSide,
    /// Signed quantity: buy > 0, sell < 0.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Fill price.
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    /// Fee paid, in the settlement asset (positive = paid).
    #[serde(default, with = "rust_decimal::serde::str")]
    pub fee: Decimal,
    /// The collateral asset that settles PnL and fees (default `USDT`).
    #[serde(default)]
    pub settle_asset: Option<InstrumentId>,
}

/// A change to the account map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AccountUpdate {
    /// Full replacement (or creation).
    Replace {
        /// The new account.
        account: Account,
    },
    /// A fill on one position.
    Fill {
        /// The account.
        account_id: AccountId,
        /// The fill.
        fill: Fill,
    },
    /// A deposit (positive) or withdrawal (negative) of collateral.
    Collateral {
        /// The account.
        account_id: AccountId,
        /// The asset.
        asset: InstrumentId,
        /// Signed change of the balance.
        #[serde(with = "rust_decimal::serde::str")]
        delta: Decimal,
    },
    /// Remove the account.
    Remove {
        /// The account.
        account_id: AccountId,
    },
}

impl AccountUpdate {
    /// The account the update applies to.
    pub fn account_id(&self) -> &AccountId {
        match self {
            AccountUpdate::Replace { account } => &account.id,
            AccountUpdate::Fill { account_id, .. }
            | AccountUpdate::Collateral { account_id, .. }
            | AccountUpdate::Remove { account_id } => account_id,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Risk
// ---------------------------------------------------------------------------------------------

/// Margin ratio `MM / equity`; equity ≤ 0 is infinitely risky. Serialises as a decimal string
/// or `"inf"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MarginRatio {
    /// A finite ratio.
    Finite(Decimal),
    /// Equity ≤ 0.
    Infinite,
}

impl MarginRatio {
    /// `MM / equity`, infinite when equity ≤ 0. MM = 0 with positive equity is 0.
    pub fn compute(maintenance_margin: Decimal, equity: Decimal) -> MarginRatio {
        if equity <= Decimal::ZERO {
            return MarginRatio::Infinite;
        }
        match maintenance_margin.checked_div(equity) {
            Some(r) => MarginRatio::Finite(r),
            None => MarginRatio::Infinite,
        }
    }
    /// True when the ratio is at or above `level`.
    pub fn at_or_above(self, level: Decimal) -> bool {
        match self {
            MarginRatio::Finite(r) => r >= level,
            MarginRatio::Infinite => true,
        }
    }
    /// True when the ratio is strictly below `level`.
    pub fn below(self, level: Decimal) -> bool {
        !self.at_or_above(level)
    }
}

impl fmt::Display for MarginRatio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MarginRatio::Finite(d) => write!(f, "{d}"),
            MarginRatio::Infinite => f.write_str("inf"),
        }
    }
}

impl Serialize for MarginRatio {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MarginRatio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s == "inf" {
            return Ok(MarginRatio::Infinite);
        }
        s.parse::<Decimal>()
            .map(MarginRatio::Finite)
            .map_err(|e| serde::de::Error::custom(format!("margin ratio {s:?}: {e}")))
    }
}

/// Risk of one position inside a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionRisk {
    /// The contract.
    pub instrument: InstrumentId,
    /// The leg.
    pub side: PositionSide,
    /// Signed quantity.
    pub quantity: Decimal,
    /// Entry price.
    pub entry_price: Decimal,
    /// Price used.
    pub mark_price: Decimal,
    /// Notional at mark in the account currency (USD).
    pub notional: Decimal,
    /// Unrealised PnL in the account currency.
    pub unrealized_pnl: Decimal,
    /// Maintenance margin in the account currency.
    pub maintenance_margin: Decimal,
    /// 1-based bracket index in use.
    pub tier: u32,
    /// Mark price of this instrument at which the account reaches the trigger, every other
    /// price held fixed; `None` when its own price alone cannot liquidate the account.
    pub liquidation_price: Option<Decimal>,
}

/// A collateral balance inside a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollateralRisk {
    /// The asset.
    pub asset: InstrumentId,
    /// Balance in units of the asset.
    pub amount: Decimal,
    /// Price used (1 for stables).
    pub price: Decimal,
    /// Value after haircut, in the account currency.
    pub value: Decimal,
}

/// The uniform-shock distance to the trigger: the single fractional move of all non-stable
/// prices together at which the margin ratio reaches the trigger (−0.0957 = a 9.57 % fall).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShockDistance {
    /// The fall (negative fraction) that reaches the trigger, if any.
    pub down: Option<Decimal>,
    /// The rise (positive fraction) that reaches the trigger, if any.
    pub up: Option<Decimal>,
    /// Whichever of the two is nearer to 0.
    pub nearest: Option<Decimal>,
}

/// An account's risk at one moment, computed at the engine's prices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskSnapshot {
    /// Margin balance: haircut collateral + unrealised PnL (USD).
    pub equity: Decimal,
    /// Total maintenance margin (USD).
    pub maintenance_margin: Decimal,
    /// MM / equity.
    pub margin_ratio: MarginRatio,
    /// equity − MM.
    pub free_margin: Decimal,
    /// Uniform-shock distance to the trigger level.
    pub shock_distance: ShockDistance,
    /// Estimated liquidation penalty if liquidated now: Σ notional × fee rate.
    pub liquidation_penalty: Decimal,
    /// Per-position risk.
    pub positions: Vec<PositionRisk>,
    /// Per-asset collateral.
    pub collateral: Vec<CollateralRisk>,
}

/// Where an account stands against its levels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AccountState {
    /// Below every warning level.
    Healthy,
    /// At or above a warning level (the highest one reached).
    Warning {
        /// The warning level in force.
        level: Decimal,
    },
    /// At or above the trigger level.
    Triggered,
}

/// The kind of a [`RiskEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The margin ratio crossed a warning level upwards.
    LiquidationWarning,
    /// The margin ratio reached the trigger level.
    LiquidationTrigger,
    /// The margin ratio fell below a level minus its hysteresis.
    Recovered,
    /// An instrument has had no fresh price from any source for `stale_after`.
    FeedStale,
    /// Fresh prices returned for a stale instrument.
    FeedRestored,
}

impl EventKind {
    /// The wire name (`liquidation_warning`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::LiquidationWarning => "liquidation_warning",
            EventKind::LiquidationTrigger => "liquidation_trigger",
            EventKind::Recovered => "recovered",
            EventKind::FeedStale => "feed_stale",
            EventKind::FeedRestored => "feed_restored",
        }
    }
    /// Severity used by sink filters: recovered/feed_restored 0, warning/feed_stale 1, trigger 2.
    pub fn severity(self) -> u8 {
        match self {
            EventKind::Recovered | EventKind::FeedRestored => 0,
            EventKind::LiquidationWarning | EventKind::FeedStale => 1,
            EventKind::LiquidationTrigger => 2,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Details of a `feed_stale` / `feed_restored` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEventInfo {
    /// The instrument whose price went stale or came back.
    pub instrument: InstrumentId,
    /// The venues that price it.
    pub venues: Vec<Venue>,
    /// The last accepted price, if any.
    pub last_price: Option<Decimal>,
    /// Age of that price when the event was raised, ms.
    pub age_ms: Option<i64>,
    /// The configured `stale_after`, ms.
    pub stale_after_ms: i64,
}

/// An event for the journal and the sinks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskEvent {
    /// Unique id (UUID v7, time-ordered). Receivers de-duplicate on it.
    pub event_id: Uuid,
    /// What happened.
    pub kind: EventKind,
    /// When it was detected, RFC 3339 UTC.
    pub time: String,
    /// The same instant in ms since the epoch.
    pub time_ms: TimestampMs,
    /// The account (account events only).
    pub account_id: Option<AccountId>,
    /// Per-account sequence number, 1, 2, 3, … (per instrument for feed events).
    pub seq: u64,
    /// The level crossed: the warning level, the trigger level, or the level recovered from.
    pub level: Option<Decimal>,
    /// Every level crossed by this move, ascending (a jump from healthy to trigger lists all).
    #[serde(default)]
    pub crossed_levels: Vec<Decimal>,
    /// The account's state before the event.
    pub previous_state: Option<AccountState>,
    /// The account's state after the event.
    pub state: Option<AccountState>,
    /// The account's snapshot at detection.
    pub snapshot: Option<RiskSnapshot>,
    /// Every price used, with its source and age.
    #[serde(default)]
    pub prices: Vec<PriceUsed>,
    /// True when any price used was stale.
    #[serde(default)]
    pub stale_prices: bool,
    /// Feed events only.
    pub feed: Option<FeedEventInfo>,
}

impl RiskEvent {
    /// A fresh time-ordered event id.
    pub fn new_id() -> Uuid {
        Uuid::now_v7()
    }
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
                s.parse::<Decimal>()
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
                let d = v.parse::<Decimal>().map_err(|e| {
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
