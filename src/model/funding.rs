//! The next funding payment inside a risk snapshot ([`RiskSnapshot::funding`]).

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{InstrumentId, MarginRatio, PositionSide, TimestampMs};

/// One perpetual position's next funding payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionFundingRisk {
    /// The contract.
    pub instrument: InstrumentId,
    /// The leg.
    pub side: PositionSide,
    /// The rate of the next settlement (0.0001 = 0.01 % of notional; > 0: longs pay).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub rate: Decimal,
    /// Signed payment to the account in the account currency (USD; negative = it pays).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub payment: Decimal,
    /// When it settles, ms since the epoch (`null`: the venue does not say, e.g. Deribit).
    pub next_funding_ms: Option<TimestampMs>,
}

/// The account's next funding payments and its margin ratio once they are paid, at the prices
/// of the snapshot. Funding moves equity, not maintenance margin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FundingSnapshot {
    /// Per perpetual position with a known rate.
    pub positions: Vec<PositionFundingRisk>,
    /// Σ payments (USD; negative = the account pays).
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub total: Decimal,
    /// Equity once paid: `equity + total`.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub equity_after: Decimal,
    /// `MM / equity_after` ([`MarginRatio::compute`]).
    pub margin_ratio_after: MarginRatio,
    /// The earliest settlement among the payments, ms since the epoch.
    pub next_funding_ms: Option<TimestampMs>,
    /// Perpetuals held whose rate is not known yet (not counted, never guessed as 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_rate: Vec<InstrumentId>,
}
