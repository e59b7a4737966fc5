//! Writes instruments as a presets TOML file in the format `feeds/presets.toml` uses
//! (`[[instrument]]` tables, decimals as strings, tiers inline), which
//! [`crate::sources::files::load_instruments`] reads back unchanged.

use std::fmt::Write as _;

use rust_decimal::Decimal;

use crate::model::{Instrument, InstrumentKind, PriceField};

/// A TOML basic string, quoted and escaped.
fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A decimal as a TOML string, without trailing zeros (`"50.0"` → `"50"`).
fn d(x: Decimal) -> String {
    q(&x.normalize().to_string())
}

fn kind(k: InstrumentKind) -> &'static str {
    match k {
        InstrumentKind::LinearPerpetual => "linear_perpetual",
        InstrumentKind::LinearFuture => "linear_future",
        InstrumentKind::InversePerpetual => "inverse_perpetual",
        InstrumentKind::InverseFuture => "inverse_future",
        InstrumentKind::Collateral => "collateral",
    }
}

/// The presets file for `instruments`, under a header of `#` lines (each `header` line is
/// prefixed with `# `).
pub fn presets_toml(header: &[String], instruments: &[Instrument]) -> String {
    let mut out = String::new();
    for line in header {
        let _ = writeln!(out, "# {line}");
    }
    for i in instruments {
        out.push('\n');
        let _ = writeln!(out, "[[instrument]]");
        let _ = writeln!(out, "id = {}", q(i.id.as_str()));
        let _ = writeln!(out, "kind = \"{}\"", kind(i.kind));
        let _ = writeln!(out, "underlying = {}", q(&i.underlying));
        let _ = writeln!(out, "contract_size = {}", d(i.contract_size));
        let _ = writeln!(out, "liquidation_fee_rate = {}", d(i.liquidation_fee_rate));
        if i.kind == InstrumentKind::Collateral {
            let _ = writeln!(out, "collateral_ratio = {}", d(i.collateral_ratio));
        }
        if i.stable {
            let _ = writeln!(out, "stable = true");
        }
        if let Some(n) = &i.source_note {
            let _ = writeln!(out, "source_note = {}", q(n));
        }
        let _ = writeln!(out, "sources = [");
        for s in &i.sources {
            let field = match s.field {
                PriceField::Mark => "mark",
                PriceField::Index => "index",
            };
            let _ = writeln!(
                out,
                "  {{ venue = \"{}\", symbol = {}, field = \"{field}\" }},",
                s.venue.as_str(),
                q(&s.symbol)
            );
        }
        let _ = writeln!(out, "]");
        if !i.tiers.is_empty() {
            let _ = writeln!(out, "tiers = [");
            for t in &i.tiers {
                let _ = writeln!(
                    out,
                    "  {{ notional_floor = {}, notional_cap = {}, mmr = {}, cum = {} }},",
                    d(t.notional_floor),
                    d(t.notional_cap),
                    d(t.mmr),
                    d(t.cum)
                );
            }
            let _ = writeln!(out, "]");
        }
        if !i.haircut_tiers.is_empty() {
            let _ = writeln!(out, "haircut_tiers = [");
            for h in &i.haircut_tiers {
                let _ = writeln!(
                    out,
                    "  {{ amount_floor = {}, ratio = {} }},",
                    d(h.amount_floor),
                    d(h.ratio)
                );
            }
            let _ = writeln!(out, "]");
        }
    }
    out
}
