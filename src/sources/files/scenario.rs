//! Stress scenarios as people type them: `BTC=-20%,ETH=-25%`, `all=-10%`.

use super::*;

/// A stress scenario: fractional moves per underlying, and optionally one for every other
/// non-stable underlying (`all`). Stablecoins never move.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Scenario {
    /// The scenario as written (`BTC=-20%,ETH=-25%`), or `none`.
    pub name: String,
    /// The move of every underlying not named explicitly (−0.1 = −10 %).
    pub all: Option<Decimal>,
    /// Moves per underlying.
    pub moves: BTreeMap<String, Decimal>,
}

impl Scenario {
    /// The scenario that moves nothing.
    pub fn none() -> Scenario {
        Scenario {
            name: "none".into(),
            ..Scenario::default()
        }
    }

    /// The move of an underlying under this scenario (0 when untouched).
    pub fn move_of(&self, underlying: &str) -> Decimal {
        self.moves
            .get(underlying)
            .copied()
            .or(self.all)
            .unwrap_or(Decimal::ZERO)
    }

    /// Applies the scenario to a price set: every non-stable instrument's price × (1 + move).
    /// Exact; no rounding.
    pub fn apply(
        &self,
        instruments: &HashMap<InstrumentId, Instrument>,
        prices: &HashMap<InstrumentId, Decimal>,
    ) -> Option<HashMap<InstrumentId, Decimal>> {
        let mut out = HashMap::with_capacity(prices.len());
        for (id, p) in prices {
            let m = instruments
                .get(id)
                .map(|i| self.move_of(&i.underlying))
                .unwrap_or(Decimal::ZERO);
            let np = p.checked_mul(Decimal::ONE.checked_add(m)?)?;
            out.insert(id.clone(), np);
        }
        Some(out)
    }
}

/// Parses `BTC=-20%,ETH=-25%`, `all=-10%`, `all=-10%,SOL=+5%` or `none`. Moves are percentages
/// (a `%` is required) greater than −100 %. A named underlying overrides `all`. With
/// `known_underlyings`, an underlying that no instrument has is an error (catches typos).
pub fn parse_scenario(
    s: &str,
    known_underlyings: Option<&HashSet<String>>,
) -> Result<Scenario, InputError> {
    let err = |message: String| InputError::Scenario {
        scenario: s.to_string(),
        message,
    };
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err(err(
            "empty scenario; write e.g. all=-10% or BTC=-20%,ETH=-25%".into(),
        ));
    }
    if trimmed.eq_ignore_ascii_case("none") {
        return Ok(Scenario::none());
    }
    let mut sc = Scenario {
        name: trimmed.to_string(),
        ..Scenario::default()
    };
    for part in trimmed.split(',') {
        let part = part.trim();
        let Some((k, v)) = part.split_once('=') else {
            return Err(err(format!(
                "{part:?} is not UNDERLYING=PERCENT% (e.g. BTC=-20%)"
            )));
        };
        let (k, v) = (k.trim(), v.trim());
        let Some(num) = v.strip_suffix('%') else {
            return Err(err(format!("{v:?} needs a % sign (e.g. -20%)")));
        };
        let num = num.trim().trim_start_matches('+');
        let pct: Decimal = crate::model::parse_exact(num)
            .map_err(|e| err(format!("{v:?} is not a percentage: {e}")))?;
        if pct <= -Decimal::ONE_HUNDRED {
            return Err(err(format!(
                "{v} would take prices to zero or below; use > -100%"
            )));
        }
        let frac = pct / Decimal::ONE_HUNDRED;
        if k.eq_ignore_ascii_case("all") {
            if sc.all.replace(frac).is_some() {
                return Err(err("`all` given twice".into()));
            }
        } else {
            if k.is_empty() {
                return Err(err(format!("{part:?} has no underlying before =")));
            }
            if let Some(known) = known_underlyings
                && !known.contains(k)
            {
                let mut names: Vec<_> = known.iter().map(String::as_str).collect();
                names.sort_unstable();
                return Err(err(format!(
                    "unknown underlying {k:?}; known: {}",
                    names.join(", ")
                )));
            }
            if sc.moves.insert(k.to_string(), frac).is_some() {
                return Err(err(format!("{k} given twice")));
            }
        }
    }
    Ok(sc)
}
