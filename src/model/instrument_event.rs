//! The details of an `instrument_changed` event: which instrument's margin terms changed, from
//! what to what, and how many holders were revalued on the new terms.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::*;

/// The margin terms of an instrument that can be replaced live (the rest of its definition,
/// what a quantity means, stays as configured).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstrumentTerms {
    /// Maintenance-margin brackets.
    pub tiers: Vec<MarginTier>,
    /// Liquidation (clearance) fee rate.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub liquidation_fee_rate: Decimal,
    /// Venue-specific margin options (absent when none is set).
    #[serde(default, skip_serializing_if = "MarginOptions::is_plain")]
    pub margin: MarginOptions,
    /// Collateral: flat haircut ratio.
    #[serde(serialize_with = "crate::model::dec_json::decimal")]
    pub collateral_ratio: Decimal,
    /// Collateral: tiered haircut slices (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub haircut_tiers: Vec<HaircutTier>,
}

impl InstrumentTerms {
    /// The terms of `i`.
    pub fn of(i: &Instrument) -> InstrumentTerms {
        InstrumentTerms {
            tiers: i.tiers.clone(),
            liquidation_fee_rate: i.liquidation_fee_rate,
            margin: i.margin.clone(),
            collateral_ratio: i.collateral_ratio,
            haircut_tiers: i.haircut_tiers.clone(),
        }
    }

    /// The names of the fields that differ between `self` and `new`, in field order.
    pub fn changed_fields(&self, new: &InstrumentTerms) -> Vec<String> {
        let mut out = Vec::new();
        if self.tiers != new.tiers {
            out.push("tiers".to_string());
        }
        if self.liquidation_fee_rate != new.liquidation_fee_rate {
            out.push("liquidation_fee_rate".to_string());
        }
        if self.margin != new.margin {
            out.push("margin".to_string());
        }
        if self.collateral_ratio != new.collateral_ratio {
            out.push("collateral_ratio".to_string());
        }
        if self.haircut_tiers != new.haircut_tiers {
            out.push("haircut_tiers".to_string());
        }
        out
    }
}

/// Details of an `instrument_changed` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstrumentChangeInfo {
    /// The instrument whose terms changed.
    pub instrument: InstrumentId,
    /// Where the new terms came from (`binance-usdm refresh from https://…`).
    pub source: String,
    /// The fields that changed (`tiers`, `liquidation_fee_rate`, `margin`, `collateral_ratio`,
    /// `haircut_tiers`).
    pub changed: Vec<String>,
    /// Accounts holding the instrument, revalued on the new terms.
    pub holders_revalued: u64,
    /// The terms before.
    pub before: InstrumentTerms,
    /// The terms now in force.
    pub after: InstrumentTerms,
}
