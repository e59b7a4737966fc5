//! Hyperliquid: `POST /info {"type":"meta"}` (or `metaAndAssetCtxs`, whose first element is the
//! same object) → instruments.
//!
//! `{"universe":[{"name","szDecimals","maxLeverage","marginTableId"?,"onlyIsolated"?,
//! "isDelisted"?}],"marginTables":[[id,{"description","marginTiers":[{"lowerBound",
//! "maxLeverage"}]}]]}`.
//!
//! Margin (Hyperliquid docs "Liquidations" and "Margin tiers", margin-math §2.5): tier `n`
//! starts at `lowerBound_n`, `mmr_n = 1/(2·maxLeverage_n)` and the deduction is
//! `cum_n = cum_(n−1) + lowerBound_n·(mmr_n − mmr_(n−1))`. A table id the response does not
//! list (ids below 50) is a single tier at the asset's `maxLeverage`. The last tier is open;
//! [`super::OPEN_CAP`] stands in for its cap. A non-terminating rate (1/30) is the nearest
//! 28-place decimal, and the deduction is computed from that same value, so MM stays continuous.

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ImportError, Imported, Input, OPEN_CAP, next_cum};
use crate::model::{
    Instrument, InstrumentId, InstrumentKind, MarginTier, PriceField, PriceSource, Venue,
};

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    universe: Vec<&'a RawValue>,
    #[serde(borrow, default, rename = "marginTables")]
    margin_tables: Vec<(u32, &'a RawValue)>,
}

#[derive(Deserialize)]
struct Asset {
    name: String,
    #[serde(rename = "maxLeverage")]
    max_leverage: u32,
    #[serde(default, rename = "marginTableId")]
    margin_table_id: Option<u32>,
    #[serde(default, rename = "onlyIsolated")]
    only_isolated: Option<bool>,
    #[serde(default, rename = "isDelisted")]
    is_delisted: Option<bool>,
}

#[derive(Deserialize)]
struct Table<'a> {
    #[serde(default)]
    description: String,
    #[serde(borrow, rename = "marginTiers")]
    margin_tiers: Vec<TierRow<'a>>,
}

#[derive(Deserialize)]
struct TierRow<'a> {
    #[serde(borrow, rename = "lowerBound")]
    lower_bound: &'a RawValue,
    #[serde(rename = "maxLeverage")]
    max_leverage: u32,
}

fn parse_at<'a, T: Deserialize<'a>>(
    input: &'a Input,
    raw: &'a RawValue,
    field: &str,
) -> Result<T, ImportError> {
    serde_json::from_str(raw.get()).map_err(|e| {
        let msg = e.to_string();
        let msg = msg
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_string();
        input.invalid(Some(raw.get()), field, msg)
    })
}

/// `1/(2·max leverage)`, exact where it terminates, else to 28 places.
fn mmr_of(input: &Input, at: &RawValue, field: &str, lev: u32) -> Result<Decimal, ImportError> {
    if lev == 0 {
        return Err(input.invalid(
            Some(at.get()),
            field,
            "maxLeverage must be at least 1".into(),
        ));
    }
    Decimal::ONE
        .checked_div(Decimal::from(lev) * Decimal::TWO)
        .ok_or_else(|| input.invalid(Some(at.get()), field, "rate out of range".into()))
}

/// Builds the tiers of one margin table: `(lower bound, max leverage)` rows, sorted.
fn tiers(
    input: &Input,
    at: &RawValue,
    field: &str,
    rows: &[(Decimal, u32)],
) -> Result<Vec<MarginTier>, ImportError> {
    let mut out: Vec<MarginTier> = Vec::with_capacity(rows.len());
    for (k, &(floor, lev)) in rows.iter().enumerate() {
        let f = format!("{field}.marginTiers[{k}]");
        let mmr = mmr_of(input, at, &format!("{f}.maxLeverage"), lev)?;
        let cap = rows.get(k + 1).map_or(OPEN_CAP, |n| n.0);
        let cum = match out.last() {
            None => Decimal::ZERO,
            Some(p) => next_cum(p.cum, floor, mmr, p.mmr).ok_or_else(|| {
                input.invalid(Some(at.get()), &f, "maintenance deduction overflows".into())
            })?,
        };
        out.push(MarginTier {
            notional_floor: floor,
            notional_cap: cap,
            mmr,
            cum,
        });
    }
    Ok(out)
}

/// Reads Hyperliquid `meta` files into instruments.
pub fn import(files: &[Input]) -> Result<Imported, ImportError> {
    let mut out = Imported::default();
    for input in files {
        let raw: &RawValue = input.parse()?;
        // `metaAndAssetCtxs` is `[meta, ctxs]`.
        let meta_raw: &RawValue = if raw.get().trim_start().starts_with('[') {
            let pair: Vec<&RawValue> = input.parse()?;
            pair.first().copied().ok_or_else(|| {
                input.invalid(Some(raw.get()), "[0]", "expected [meta, assetCtxs]".into())
            })?
        } else {
            raw
        };
        let meta: Meta = parse_at(input, meta_raw, "")?;
        let file = input
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (i, araw) in meta.universe.iter().enumerate() {
            let field = format!("universe[{i}]");
            let a: Asset = parse_at(input, araw, &field)?;
            if a.is_delisted == Some(true) {
                out.skipped.push(format!("{}: delisted", a.name));
                continue;
            }
            let table = a
                .margin_table_id
                .and_then(|id| meta.margin_tables.iter().find(|(t, _)| *t == id));
            let (rows, desc) = match (table, a.margin_table_id) {
                (Some((id, traw)), _) => {
                    let tf = format!("marginTables[id {id}]");
                    let t: Table = parse_at(input, traw, &tf)?;
                    let mut rows = Vec::with_capacity(t.margin_tiers.len());
                    for (k, r) in t.margin_tiers.iter().enumerate() {
                        let lb = input.decimal(
                            Some(r.lower_bound),
                            &format!("{tf}.marginTiers[{k}].lowerBound"),
                        )?;
                        rows.push((lb, r.max_leverage));
                    }
                    (rows, format!("margin table {id} ({:?})", t.description))
                }
                (None, Some(id)) if id >= 50 => {
                    return Err(input.invalid(
                        Some(araw.get()),
                        &format!("{field}.marginTableId"),
                        format!("margin table {id} is not in marginTables"),
                    ));
                }
                (None, id) => (
                    vec![(Decimal::ZERO, a.max_leverage)],
                    match id {
                        Some(id) => format!("margin table {id} (single tier, not listed)"),
                        None => "no margin table (single tier)".into(),
                    },
                ),
            };
            let tiers = tiers(input, araw, &field, &rows)?;
            let fee = tiers.first().map(|t| t.mmr).unwrap_or_default();
            let isolated = if a.only_isolated == Some(true) {
                " Only isolated margin on Hyperliquid."
            } else {
                ""
            };
            let id = format!("HL-{}-PERP", a.name);
            let inst = Instrument {
                id: InstrumentId::new(&id),
                kind: InstrumentKind::LinearPerpetual,
                underlying: a.name.clone(),
                contract_size: Decimal::ONE,
                tiers,
                liquidation_fee_rate: fee,
                collateral_ratio: Decimal::ONE,
                haircut_tiers: Vec::new(),
                stable: false,
                sources: vec![PriceSource {
                    venue: Venue::Hyperliquid,
                    symbol: a.name.clone(),
                    field: PriceField::Mark,
                }],
                margin: Default::default(),
                source_note: Some(format!(
                    "Hyperliquid {} from {file}: maxLeverage {}, {desc}; mmr = 1/(2*max leverage) \
                     per tier; liquidation_fee_rate = first-tier mmr (a backstop liquidation keeps \
                     the maintenance margin).{isolated}",
                    a.name, a.max_leverage
                )),
            };
            let (errs, _) = crate::sources::files::check_instrument(&inst);
            if let Some((f, message)) = errs.into_iter().next() {
                return Err(input.invalid(Some(araw.get()), &format!("{field}{f}"), message));
            }
            out.size_rank.push((id, Decimal::from(a.max_leverage)));
            out.instruments.push(inst);
        }
    }
    out.instruments.sort_by(|a, b| a.id.cmp(&b.id));
    for w in out.instruments.windows(2) {
        if let [a, b] = w
            && a.id == b.id
        {
            return Err(ImportError::Incomplete(format!(
                "hyperliquid: {} appears in more than one meta file",
                a.id
            )));
        }
    }
    Ok(out)
}
