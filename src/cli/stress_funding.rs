//! `liqwatch stress --funding FILE`: the next funding payment of every account under every
//! scenario, and its margin ratio once paid ([`crate::margin::funding`]).
//!
//! The file is TOML: a `[funding]` table of instrument id → rate of the next settlement, as a
//! decimal string (`"BTCUSDT-PERP" = "0.0001"`: longs pay 0.01 % of notional).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::feeds::wire::parse_decimal;
use crate::margin::funding::{FundingRate, funding_outlook};
use crate::margin::to_cents;
use crate::model::{Account, Instrument, InstrumentId, InstrumentKind, MarginRatio};
use crate::sources::files::InputError;

/// One account's next funding under one scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FundingColumns {
    /// Σ payments to the account (negative = it pays), to the cent.
    pub total: Decimal,
    /// Equity once paid, to the cent.
    pub equity_after: Decimal,
    /// MM / equity once paid, exact (`"inf"` when equity ≤ 0).
    pub margin_ratio_after: MarginRatio,
    /// Perpetuals held whose rate the file does not give (not counted).
    pub missing_rate: Vec<InstrumentId>,
}

fn invalid(path: &Path, field: String, message: String) -> InputError {
    InputError::Invalid {
        path: path.to_path_buf(),
        line: None,
        field,
        message,
    }
}

/// Reads the `[funding]` table: every key a configured perpetual, every value decimal text.
pub fn load_rates(
    path: &Path,
    instruments: &HashMap<InstrumentId, Instrument>,
) -> Result<HashMap<InstrumentId, FundingRate>, InputError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        funding: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file: File = toml::from_str(&text).map_err(|e| InputError::Syntax {
        path: path.to_path_buf(),
        line: e
            .span()
            .map(|s| text.get(..s.start).unwrap_or("").matches('\n').count() + 1),
        column: None,
        field: String::new(),
        message: e.message().to_string(),
    })?;
    let mut out = HashMap::new();
    for (id, rate) in file.funding {
        let field = format!("funding.{id}");
        let Some(i) = instruments.get(id.as_str()) else {
            return Err(invalid(path, field, format!("unknown instrument {id:?}")));
        };
        if !matches!(
            i.kind,
            InstrumentKind::LinearPerpetual | InstrumentKind::InversePerpetual
        ) {
            return Err(invalid(path, field, format!("{id} is not a perpetual")));
        }
        let rate = parse_decimal(&rate)
            .map_err(|e| invalid(path, field.clone(), format!("{rate:?}: {e}")))?;
        out.insert(
            i.id.clone(),
            FundingRate {
                rate,
                next_funding_ts: None,
            },
        );
    }
    Ok(out)
}

/// The funding columns of `account` at `prices`.
pub fn columns(
    account: &Account,
    instruments: &HashMap<InstrumentId, Instrument>,
    prices: &HashMap<InstrumentId, Decimal>,
    rates: &HashMap<InstrumentId, FundingRate>,
) -> Result<FundingColumns, String> {
    let o =
        funding_outlook(account, instruments, prices, rates, None).map_err(|e| e.to_string())?;
    Ok(FundingColumns {
        total: to_cents(o.total),
        equity_after: to_cents(o.equity_after),
        margin_ratio_after: o.margin_ratio_after,
        missing_rate: o.missing_rate,
    })
}

/// The funding table printed under the stress table: one line per account and scenario.
pub fn render(rows: &[(String, String, FundingColumns)]) -> String {
    let mut out = String::from("\nnext funding (rates from --funding; MM unchanged)\n");
    let _ = writeln!(
        out,
        "{:<20} {:<22} {:>16} {:>18} {:>12}  missing rate",
        "account", "scenario", "funding", "equity after", "ratio after"
    );
    for (account, scenario, c) in rows {
        let ratio = match c.margin_ratio_after {
            MarginRatio::Finite(r) => r
                .checked_mul(Decimal::ONE_HUNDRED)
                .map_or_else(|| "huge".to_string(), |p| format!("{}%", to_cents(p))),
            MarginRatio::Infinite => "inf".into(),
        };
        let missing: Vec<&str> = c.missing_rate.iter().map(|i| i.as_str()).collect();
        let _ = writeln!(
            out,
            "{account:<20} {scenario:<22} {:>16} {:>18} {ratio:>12}  {}",
            format!("{:.2}", c.total),
            format!("{:.2}", c.equity_after),
            if missing.is_empty() {
                "-".to_string()
            } else {
                missing.join(",")
            }
        );
    }
    out
}
