//! Accounts, positions, levels, fills and account updates, with the one set of validation rules
//! every input path shares ([`Account::problems`], [`Thresholds::problems`]).

use std::collections::BTreeMap;
use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::*;

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
    #[serde(with = "crate::model::exact_str")]
    pub quantity: Decimal,
    /// Average entry price.
    #[serde(with = "crate::model::exact_str")]
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
    #[serde(with = "crate::model::exact_str")]
    pub trigger: Decimal,
    /// Recovery hysteresis: a level is recovered below `level − hysteresis` (default 0.05).
    #[serde(with = "crate::model::exact_str")]
    pub hysteresis: Decimal,
    /// Warning levels on the shock distance (the uniform move of every price that brings the
    /// ratio to the trigger), outermost first, as fractions (`"10%"` or `"0.1"`); empty: none
    /// (default). See `engine::monitor::distance`.
    #[serde(
        default,
        with = "fraction_vec_str",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub warn_within_shock: Vec<Decimal>,
    /// Recovery hysteresis of the distance levels: a level is recovered when the distance grows
    /// strictly past `level + shock_hysteresis` (default 0.01).
    #[serde(
        default = "default_shock_hysteresis",
        with = "fraction_str",
        skip_serializing_if = "is_default_shock_hysteresis"
    )]
    pub shock_hysteresis: Decimal,
}

/// The default `shock_hysteresis`: 1 %.
pub const DEFAULT_SHOCK_HYSTERESIS: Decimal = Decimal::from_parts(1, 0, 0, false, 2);

fn default_shock_hysteresis() -> Decimal {
    DEFAULT_SHOCK_HYSTERESIS
}

fn is_default_shock_hysteresis(d: &Decimal) -> bool {
    *d == DEFAULT_SHOCK_HYSTERESIS
}

/// Parses a fraction written as a percentage (`"10%"`, `"2.5 %"`) or a decimal (`"0.1"`),
/// exactly.
pub fn parse_fraction(s: &str) -> Result<Decimal, String> {
    let t = s.trim();
    match t.strip_suffix('%') {
        Some(pct) => {
            let v = super::parse_exact(pct.trim()).map_err(|e| format!("{s:?}: {e}"))?;
            // `10%` is written back as `0.1`, not `0.10`.
            v.checked_div(Decimal::ONE_HUNDRED)
                .map(|d| d.normalize())
                .ok_or_else(|| format!("{s:?}: out of range"))
        }
        None => super::parse_exact(t).map_err(|e| format!("{s:?}: {e}")),
    }
}

/// A fraction: written as a decimal string, read from `"10%"` or `"0.1"`.
mod fraction_str {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let raw = std::borrow::Cow::<'de, str>::deserialize(d)?;
        super::parse_fraction(&raw).map_err(serde::de::Error::custom)
    }
}

/// A list of fractions: written as decimal strings, read from `"10%"` or `"0.1"`.
mod fraction_vec_str {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer};

    /// Written like any decimal list.
    pub use crate::model::decimal_vec_str::serialize;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Decimal>, D::Error> {
        let raw = Vec::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        raw.iter()
            .map(|s| super::parse_fraction(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warning_levels: vec![Decimal::new(8, 1)],
            trigger: Decimal::ONE,
            hysteresis: Decimal::new(5, 2),
            warn_within_shock: Vec::new(),
            shock_hysteresis: DEFAULT_SHOCK_HYSTERESIS,
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
        if self.shock_hysteresis < Decimal::ZERO {
            out.push(Problem::new(
                "shock_hysteresis",
                format!(
                    "shock_hysteresis must be ≥ 0, got {}",
                    self.shock_hysteresis
                ),
            ));
        }
        let mut previous: Option<Decimal> = None;
        for (i, level) in self.warn_within_shock.iter().enumerate() {
            let field = format!("warn_within_shock[{i}]");
            if *level <= Decimal::ZERO || *level >= Decimal::ONE {
                out.push(Problem::new(
                    field,
                    format!("a distance level is a fraction above 0 and below 1 (\"10%\" or \"0.1\"), got {level}"),
                ));
            } else if previous.is_some_and(|p| *level >= p) {
                out.push(Problem::new(
                    field,
                    "distance levels must be strictly descending, outermost first (e.g. [\"10%\", \"5%\"])",
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
    /// The daemon applies each funding settlement of this account's perpetuals to its
    /// collateral (`engine::settlement`): for accounts whose source does not report balances.
    /// Set in the account's JSON, or by its source's `apply_funding` (`[accounts]` for the
    /// snapshot file and the HTTP API, `[accounts.nats]` for NATS). Left out of the JSON when
    /// false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub apply_funding: bool,
}

/// Longest account id accepted, in bytes.
pub const MAX_ACCOUNT_ID_BYTES: usize = 256;

/// The rule for an account id from any source (files, HTTP paths and bodies, NATS): not empty,
/// at most [`MAX_ACCOUNT_ID_BYTES`] bytes, no control characters — so an id can neither forge a
/// log line nor bloat every event, metric-free log and journal row that carries it.
pub fn check_account_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("an account id must not be empty".to_string());
    }
    if id.len() > MAX_ACCOUNT_ID_BYTES {
        return Err(format!(
            "an account id is at most {MAX_ACCOUNT_ID_BYTES} bytes, this one has {}",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!(
            "an account id must not contain control characters (found {:?})",
            c
        ));
    }
    Ok(())
}

impl Account {
    /// Every rule the account breaks that needs no instrument table: a hedge-mode long leg has
    /// quantity ≥ 0 and a short leg ≤ 0; an open leg has an entry price > 0 (a flat one ≥ 0);
    /// at most one position per instrument and side; its own levels follow
    /// [`Thresholds::problems`]; its id follows [`check_account_id`]. The one set of rules for
    /// account files, the HTTP API, NATS and the account map.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Err(message) = check_account_id(self.id.as_str()) {
            out.push(Problem::new("id", message));
        }
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
    #[serde(with = "crate::model::exact_str")]
    pub quantity: Decimal,
    /// Fill price.
    #[serde(with = "crate::model::exact_str")]
    pub price: Decimal,
    /// Fee paid, in the settlement asset (positive = paid).
    #[serde(default, with = "crate::model::exact_str")]
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
        #[serde(with = "crate::model::exact_str")]
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
