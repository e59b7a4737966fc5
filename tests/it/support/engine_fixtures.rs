//! Instrument builders shared by the engine's property tests.

use liqwatch::model::{Instrument, InstrumentKind, MarginTier};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

/// One maintenance-margin bracket.
pub fn tier(floor: Decimal, cap: Decimal, mmr: Decimal, cum: Decimal) -> MarginTier {
    MarginTier {
        notional_floor: floor,
        notional_cap: cap,
        mmr,
        cum,
    }
}

/// An instrument of size 1, no tiers, fee 0.5 %, counted at 100 % as collateral.
pub fn instrument(id: &str, kind: InstrumentKind, underlying: &str) -> Instrument {
    Instrument {
        id: id.into(),
        kind,
        underlying: underlying.into(),
        contract_size: Decimal::ONE,
        tiers: vec![],
        liquidation_fee_rate: dec!(0.005),
        margin: Default::default(),
        collateral_ratio: Decimal::ONE,
        haircut_tiers: vec![],
        stable: false,
        sources: vec![],
        source_note: None,
    }
}

/// [`instrument`] with maintenance-margin brackets.
pub fn tiered(
    id: &str,
    kind: InstrumentKind,
    underlying: &str,
    tiers: Vec<MarginTier>,
) -> Instrument {
    Instrument {
        tiers,
        ..instrument(id, kind, underlying)
    }
}
