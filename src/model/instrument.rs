//! Instruments: kinds, maintenance-margin tiers, collateral haircuts, price sources.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::*;

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
    #[serde(with = "crate::model::exact_str")]
    pub notional_floor: Decimal,
    /// Upper bound of the bracket's notional.
    #[serde(with = "crate::model::exact_str")]
    pub notional_cap: Decimal,
    /// Maintenance-margin rate of the bracket (0.004 = 0.4 %).
    #[serde(with = "crate::model::exact_str")]
    pub mmr: Decimal,
    /// Maintenance amount ("cum", "mmDeduction") of the bracket.
    #[serde(with = "crate::model::exact_str")]
    pub cum: Decimal,
}

/// One slice of a tiered collateral haircut: amounts (in units of the asset) from
/// `amount_floor` count at `ratio`, applied slice by slice like income-tax brackets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaircutTier {
    /// Lower bound of the slice, in units of the asset (inclusive).
    #[serde(with = "crate::model::exact_str")]
    pub amount_floor: Decimal,
    /// Collateral value ratio for the slice (0.95 = counts at 95 %).
    #[serde(with = "crate::model::exact_str")]
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
    #[serde(default = "one", with = "crate::model::exact_str")]
    pub contract_size: Decimal,
    /// Maintenance-margin brackets, sorted by floor, first floor 0. Empty for collateral.
    #[serde(default)]
    pub tiers: Vec<MarginTier>,
    /// Liquidation (clearance) fee rate on liquidated notional.
    #[serde(default, with = "crate::model::exact_str")]
    pub liquidation_fee_rate: Decimal,
    /// Venue-specific shapes of the maintenance requirement (OKX step tiers by contract count,
    /// Deribit's size-linear rate, the liquidation fee inside MM). Default: none.
    #[serde(default, skip_serializing_if = "MarginOptions::is_plain")]
    pub margin: MarginOptions,
    /// Collateral only: flat haircut ratio, used when `haircut_tiers` is empty.
    #[serde(default = "one", with = "crate::model::exact_str")]
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

/// What a contract's tier floors and caps count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierBasis {
    /// Notional (quote currency; coin for inverse contracts), as Binance, Bybit and Hyperliquid
    /// publish them.
    #[default]
    Notional,
    /// Whole contracts, `|quantity|` (OKX `minSz`/`maxSz`, both ends inclusive: write floors
    /// 0, 5001, 7501, …). The tier does not move with the price.
    Contracts,
}

/// Venue-specific shapes of the maintenance requirement of a contract (preset key `margin`,
/// e.g. `margin = { tier_basis = "contracts", liquidation_fee_in_mm = true }`). With every
/// leg's quantity fixed, each keeps MM linear in the price, so the shock and
/// liquidation-price solvers stay exact:
///
/// `MM = N·(mmr_tier + mmr_size_slope·|q|·cs + fee) − cum_tier`, where `fee` is
/// `liquidation_fee_rate` when `liquidation_fee_in_mm`, else 0 (inverse contracts: `N` is the
/// USD face value and `cum` is multiplied by the price, as before).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarginOptions {
    /// What the tier floors count (OKX: `contracts`; a step function with no deduction).
    #[serde(default)]
    pub tier_basis: TierBasis,
    /// Deribit standard margin: the rate grows by this per unit of position size (base units,
    /// `|q|·contract_size`): BTC_USDC `0.00005` (0.005 % per BTC). Linear contracts only.
    #[serde(default, with = "crate::model::exact_str")]
    pub mmr_size_slope: Decimal,
    /// OKX: the liquidation fee (`liquidation_fee_rate` × notional) is part of the maintenance
    /// requirement (the denominator of OKX's margin ratio).
    #[serde(default)]
    pub liquidation_fee_in_mm: bool,
}

impl MarginOptions {
    /// True when no option is set (the plain bracket model and its `i128` fast path).
    pub fn is_plain(&self) -> bool {
        *self == MarginOptions::default()
    }
}
