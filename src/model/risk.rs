//! Risk figures and events: margin ratio, snapshots, distances, monitor states, `RiskEvent`.

use std::borrow::Cow;
use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::*;

/// Margin ratio. The one rule, used everywhere a ratio is computed ([`MarginRatio::compute`]):
///
/// - `MM = 0` (no exposure: no positions, or none with a maintenance requirement) → `0`,
///   whatever the equity — collateral alone, even a negative balance, cannot be liquidated;
/// - otherwise equity ≤ 0 → infinite;
/// - otherwise `MM / equity`.
///
/// Serialises as a decimal string or `"inf"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MarginRatio {
    /// A finite ratio.
    Finite(Decimal),
    /// Equity ≤ 0 with a maintenance requirement (MM ≠ 0).
    Infinite,
}

impl MarginRatio {
    /// `0` when `MM = 0` (no exposure, whatever the equity; regression for issue 11 item 5:
    /// an empty account used to count as infinitely risky and fire a trigger); otherwise
    /// infinite when equity ≤ 0, else `MM / equity` (infinite if the division overflows).
    pub fn compute(maintenance_margin: Decimal, equity: Decimal) -> MarginRatio {
        if maintenance_margin.is_zero() {
            return MarginRatio::Finite(Decimal::ZERO);
        }
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
        match self {
            MarginRatio::Finite(d) => crate::model::dec_json::decimal(d, s),
            MarginRatio::Infinite => s.serialize_str("inf"),
        }
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
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub quantity: Decimal,
    /// Entry price.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub entry_price: Decimal,
    /// Price used.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub mark_price: Decimal,
    /// Notional at mark in the account currency (USD).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub notional: Decimal,
    /// Unrealised PnL in the account currency.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub unrealized_pnl: Decimal,
    /// Maintenance margin in the account currency.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub maintenance_margin: Decimal,
    /// 1-based bracket index in use.
    pub tier: u32,
    /// Mark price of this instrument at which the account reaches the trigger, its
    /// underlying's other instruments moving with it and every other price held fixed: the
    /// nearer of [`Self::liquidation_price_down`] and [`Self::liquidation_price_up`] (the fall
    /// wins a tie); `None` when its own price alone cannot liquidate the account.
    #[serde(serialize_with = "crate::model::dec_json::opt")]
    pub liquidation_price: Option<Decimal>,
    /// The nearest such price below the mark (a fall), `None` when no fall reaches the trigger.
    #[serde(default)]
    #[serde(serialize_with = "crate::model::dec_json::opt")]
    pub liquidation_price_down: Option<Decimal>,
    /// The nearest such price above the mark (a rise), `None` when no rise reaches the trigger.
    #[serde(default)]
    #[serde(serialize_with = "crate::model::dec_json::opt")]
    pub liquidation_price_up: Option<Decimal>,
}

/// A collateral balance inside a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollateralRisk {
    /// The asset.
    pub asset: InstrumentId,
    /// Balance in units of the asset.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub amount: Decimal,
    /// Price used (1 for stables).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub price: Decimal,
    /// Value after haircut, in the account currency.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub value: Decimal,
}

/// What an account in warning (or triggered) must gain in equity to be healthy again
/// ([`crate::margin::call`]): a deposit of collateral counted at 100 %, or the same in
/// realised profit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarginCall {
    /// The margin ratio to fall strictly below: the account's first level less its hysteresis,
    /// where it recovers.
    #[serde(with = "crate::model::exact_str")]
    pub below_ratio: Decimal,
    /// The smallest such gain in whole cents of the quote currency (USD): with it the ratio is
    /// below `below_ratio`, with one cent less it is not.
    #[serde(with = "crate::model::exact_str")]
    pub deposit: Decimal,
}

/// The uniform-shock distance to the trigger: the single fractional move of all non-stable
/// prices together at which the margin ratio reaches the trigger (−0.0957 = a 9.57 % fall).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShockDistance {
    /// The fall (negative fraction) that reaches the trigger, if any.
    #[serde(serialize_with = "crate::model::dec_json::opt")]
    pub down: Option<Decimal>,
    /// The rise (positive fraction) that reaches the trigger, if any.
    #[serde(serialize_with = "crate::model::dec_json::opt")]
    pub up: Option<Decimal>,
    /// Whichever of the two is nearer to 0.
    #[serde(serialize_with = "crate::model::dec_json::opt")]
    pub nearest: Option<Decimal>,
}

/// An account's risk at one moment, computed at the engine's prices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskSnapshot {
    /// Margin balance: haircut collateral + unrealised PnL (USD).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub equity: Decimal,
    /// Total maintenance margin (USD).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub maintenance_margin: Decimal,
    /// MM / equity.
    pub margin_ratio: MarginRatio,
    /// equity − MM.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub free_margin: Decimal,
    /// Uniform-shock distance to the trigger level.
    pub shock_distance: ShockDistance,
    /// Estimated liquidation penalty if liquidated now: Σ notional × fee rate.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub liquidation_penalty: Decimal,
    /// Per-position risk.
    pub positions: Vec<PositionRisk>,
    /// Per-asset collateral.
    pub collateral: Vec<CollateralRisk>,
    /// What liquidating the account at these prices would cost (`liquidation_trigger` events
    /// and `stress`; absent elsewhere). See [`LiquidationCost`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liquidation_cost: Option<Box<LiquidationCost>>,
    /// The next funding payment per perpetual position, in total, and the margin ratio after
    /// it (events and account reads, when a funding rate is known; absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funding: Option<Box<FundingSnapshot>>,
    /// In warning or triggered: the equity the account must gain (a deposit counted at
    /// 100 %) for its ratio to fall below its recovery level, at these prices
    /// (`liquidation_warning` and `liquidation_trigger` events, account reads; absent
    /// elsewhere). See [`MarginCall`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_call: Option<MarginCall>,
}

/// What a liquidation costs at one set of prices (`crate::margin::liquidation_cost`): the
/// penalty, the penalty rate (`penalty / equity`), and what is left (`surplus`, returned to the
/// account) or missing (`shortfall`, absorbed by an insurance fund or ADL). Exactly
/// `surplus − shortfall = equity − penalty`, and at most one of the two is non-zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiquidationCost {
    /// Equity at these prices (USD).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub equity: Decimal,
    /// Maintenance margin at these prices (USD).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub maintenance_margin: Decimal,
    /// Σ of the positions' penalties (USD), as if every position were liquidated in full.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub penalty: Decimal,
    /// `penalty / equity`: `0` without a penalty, `"inf"` when equity ≤ 0.
    pub penalty_rate: MarginRatio,
    /// `max(equity − penalty, 0)`: what the account keeps.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub surplus: Decimal,
    /// `max(penalty − equity, 0)`: what the account cannot pay (the insurance fund, then ADL).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub shortfall: Decimal,
    /// The venue whose rules were applied: the first price source of every position's
    /// instrument, when they agree; `null` otherwise.
    pub venue: Option<Venue>,
    /// Per position, in the snapshot's order.
    pub positions: Vec<PositionPenalty>,
    /// The venue's documented liquidation procedure; `null` when it is not documented (or the
    /// positions span several venues), with the reason in `order_reason`.
    pub order: Option<LiquidationOrder>,
    /// Why `order` is `null`.
    pub order_reason: Option<String>,
}

/// How a position's penalty was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PenaltyBasis {
    /// `notional × liquidation_fee_rate` (the clearance fee on the liquidated notional).
    FeeRate,
    /// The venue keeps the position's maintenance margin (Hyperliquid backstop liquidation,
    /// when equity < 2/3 of MM).
    BackstopKeepsMaintenanceMargin,
}

/// One position's share of a [`LiquidationCost`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionPenalty {
    /// The contract.
    pub instrument: InstrumentId,
    /// The leg.
    pub side: PositionSide,
    /// Notional at these prices (USD).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub notional: Decimal,
    /// The instrument's `liquidation_fee_rate`.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub fee_rate: Decimal,
    /// The penalty (USD).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub penalty: Decimal,
    /// How it was computed.
    pub basis: PenaltyBasis,
}

/// A venue's documented liquidation procedure, applied to the account. The texts are the same
/// for every trigger on a venue: they are borrowed from the binary rather than allocated for
/// each event (a crash's triggers carry hundreds of thousands of copies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiquidationOrder {
    /// The venue.
    pub venue: Venue,
    /// Where the procedure is documented.
    pub source: Cow<'static, str>,
    /// The procedure, step by step, as the venue documents it.
    pub procedure: Vec<Cow<'static, str>>,
    /// Which position goes first. `null`: the venue does not document it (see
    /// `positions_first_reason`); liqwatch does not guess.
    pub positions_first: Option<String>,
    /// Why `positions_first` is `null`.
    pub positions_first_reason: Option<Cow<'static, str>>,
    /// Partial-liquidation steps, per position the venue reduces step by step.
    pub partial: Vec<PartialLiquidation>,
}

/// How one position is reduced step by step before (or instead of) a full liquidation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialLiquidation {
    /// The contract.
    pub instrument: InstrumentId,
    /// The leg.
    pub side: PositionSide,
    /// The venue's rule, in words.
    pub rule: Cow<'static, str>,
    /// The steps, first first (may be empty when the venue does not publish the sizes).
    pub steps: Vec<PartialStep>,
}

/// One partial-liquidation step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialStep {
    /// Notional closed from the current position to reach this step (cumulative: the steps of
    /// a ladder are alternatives the venue tries in order, each from the full position; USD at
    /// these prices).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub close_notional: Decimal,
    /// Notional left after it.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub remaining_notional: Decimal,
    /// The tier (1-based) the position is in after the step, where the step is a tier.
    pub to_tier: Option<u32>,
    /// Fee on `close_notional` at the instrument's fee rate (USD).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub penalty: Decimal,
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
        #[serde(serialize_with = "crate::model::dec_json::decimal")]
        level: Decimal,
    },
    /// At or above the trigger level.
    Triggered,
}

/// Which kind of level an account event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelType {
    /// The margin ratio `MM / equity` (`[levels] warnings` / `trigger`).
    MarginRatio,
    /// The uniform move of every price to the trigger (`[levels] warn_within_shock`).
    ShockDistance,
    /// The margin ratio after the next funding payment (`[levels] warn_before_funding`).
    Funding,
    /// The historical probability of liquidation (`[risk] warn_p_liquidation`).
    PLiquidation,
    /// Expected shortfall over equity (`[risk] warn_es_to_equity`).
    EsToEquity,
}

impl LevelType {
    /// The wire name (`margin_ratio`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            LevelType::MarginRatio => "margin_ratio",
            LevelType::ShockDistance => "shock_distance",
            LevelType::Funding => "funding",
            LevelType::PLiquidation => "p_liquidation",
            LevelType::EsToEquity => "es_to_equity",
        }
    }
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
    /// An instrument's margin terms were replaced (a venue changed its brackets); its holders
    /// were revalued on the new terms.
    InstrumentChanged,
    /// The account's P(liquidation) or ES/equity from historical scenarios crossed a
    /// `[risk]` warning level upwards (its recovery is a `recovered` with the same level type).
    RiskWarning,
}

impl EventKind {
    /// Every kind, in declaration order (the daemon registers each at zero).
    pub const ALL: [EventKind; 7] = [
        EventKind::LiquidationWarning,
        EventKind::LiquidationTrigger,
        EventKind::Recovered,
        EventKind::FeedStale,
        EventKind::FeedRestored,
        EventKind::InstrumentChanged,
        EventKind::RiskWarning,
    ];

    /// The wire name (`liquidation_warning`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::LiquidationWarning => "liquidation_warning",
            EventKind::LiquidationTrigger => "liquidation_trigger",
            EventKind::Recovered => "recovered",
            EventKind::FeedStale => "feed_stale",
            EventKind::FeedRestored => "feed_restored",
            EventKind::InstrumentChanged => "instrument_changed",
            EventKind::RiskWarning => "risk_warning",
        }
    }
    /// Severity used by sink filters: recovered/feed_restored/instrument_changed 0,
    /// warning/feed_stale/risk_warning 1, trigger 2.
    pub fn severity(self) -> u8 {
        match self {
            EventKind::Recovered | EventKind::FeedRestored | EventKind::InstrumentChanged => 0,
            EventKind::LiquidationWarning | EventKind::FeedStale | EventKind::RiskWarning => 1,
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
    #[serde(serialize_with = "crate::model::dec_json::opt")]
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
    #[serde(serialize_with = "crate::model::dec_json::opt")]
    pub level: Option<Decimal>,
    /// Every level crossed by this move, ascending (a jump from healthy to trigger lists all).
    #[serde(default)]
    #[serde(serialize_with = "crate::model::dec_json::list")]
    pub crossed_levels: Vec<Decimal>,
    /// Which kind of level `level` is (account events only; absent on feed events and in
    /// events journaled before the field existed, which are all `margin_ratio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_type: Option<LevelType>,
    /// The account's state before the event.
    pub previous_state: Option<AccountState>,
    /// The account's state after the event.
    pub state: Option<AccountState>,
    /// The account's snapshot at detection. (Boxed, as are the other large optional parts, so
    /// an event is a few hundred bytes to move: a correlated move makes one per crossing
    /// account and hands them through several queues.)
    pub snapshot: Option<Box<RiskSnapshot>>,
    /// Every price used, with its source and age.
    #[serde(default)]
    pub prices: Vec<PriceUsed>,
    /// True when any price used was stale.
    #[serde(default)]
    pub stale_prices: bool,
    /// Feed events only.
    pub feed: Option<Box<FeedEventInfo>>,
    /// `instrument_changed` events only (absent on every other kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instrument_change: Option<Box<InstrumentChangeInfo>>,
    /// `risk_warning` and its `recovered` only: the scenario risk figures that crossed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<Box<RiskFigures>>,
}

/// The scenario risk figures a `risk_warning` (or its `recovered`) carries (`docs/risk.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskFigures {
    /// Equity at the prices of the recompute.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub equity: Decimal,
    /// VaR of equity over the horizon at α.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub var: Decimal,
    /// Expected shortfall of equity.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub es: Decimal,
    /// `es / equity` (12 places); `null` when equity ≤ 0 (counted as above every level).
    #[serde(serialize_with = "crate::model::dec_json::opt")]
    pub es_to_equity: Option<Decimal>,
    /// Fraction of scenarios that reach the trigger.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub p_liquidation: Decimal,
    /// Scenarios that reach the trigger.
    pub liquidating_scenarios: usize,
    /// Scenarios in the set.
    pub scenarios: usize,
    /// Confidence level α.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub alpha: Decimal,
    /// The scenario horizon (`4h`).
    pub horizon: String,
    /// When the figures were computed, RFC 3339 UTC.
    pub computed_at: String,
}

impl RiskEvent {
    /// A fresh time-ordered event id.
    pub fn new_id() -> Uuid {
        Uuid::now_v7()
    }
}
