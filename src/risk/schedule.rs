//! The daemon's `[risk]` schedule keys: how often every account is recomputed, how the prices
//! the engine uses are recorded into the journal, and the `risk_warning` levels.

use std::time::Duration;

use rust_decimal::Decimal;

/// The `history` entry naming the daemon's own recorded prices.
pub const RECORDED: &str = "recorded";

/// After an account changes, wait this long for more changes before recomputing (debounce).
pub const DEBOUNCE: Duration = Duration::from_secs(1);

/// The schedule keys of `[risk]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RiskSchedule {
    /// `every`: every account is recomputed this often (default 5 min).
    pub every: Duration,
    /// `record_every`: one price sample per instrument this often (default 5 min).
    pub record_every: Duration,
    /// `record_keep`: samples older than this are forgotten (default 30 days).
    pub record_keep: Duration,
    /// `warn_p_liquidation`: P(liquidation) warning levels, ascending fractions.
    pub warn_p_liquidation: Vec<Decimal>,
    /// `warn_es_to_equity`: ES/equity warning levels, ascending fractions.
    pub warn_es_to_equity: Vec<Decimal>,
    /// `warn_hysteresis`: a warning recovers only below its level minus this (default 1 %).
    pub warn_hysteresis: Decimal,
}

impl Default for RiskSchedule {
    fn default() -> Self {
        RiskSchedule {
            every: Duration::from_secs(300),
            record_every: Duration::from_secs(300),
            record_keep: Duration::from_secs(30 * 86_400),
            warn_p_liquidation: Vec::new(),
            warn_es_to_equity: Vec::new(),
            warn_hysteresis: Decimal::new(1, 2),
        }
    }
}

/// The schedule keys as written.
#[derive(Clone, Debug, Default)]
pub struct RawRiskSchedule {
    /// `every`.
    pub every: Option<String>,
    /// `record_every`.
    pub record_every: Option<String>,
    /// `record_keep`.
    pub record_keep: Option<String>,
    /// `warn_p_liquidation`.
    pub warn_p_liquidation: Option<Vec<String>>,
    /// `warn_es_to_equity`.
    pub warn_es_to_equity: Option<Vec<String>>,
    /// `warn_hysteresis`.
    pub warn_hysteresis: Option<String>,
}

/// Parses a fraction written as a percentage (`"5%"`) or a decimal (`"0.05"`).
pub fn parse_fraction(s: &str) -> Result<Decimal, String> {
    let t = s.trim();
    let (num, pct) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), true),
        None => (t, false),
    };
    let d = crate::model::parse_exact(num)
        .map_err(|e| format!("{s:?} is not a fraction (write \"5%\" or \"0.05\"): {e}"))?;
    if pct {
        d.checked_div(Decimal::ONE_HUNDRED)
            .ok_or_else(|| format!("{s:?} is out of range"))
    } else {
        Ok(d)
    }
}

fn duration(
    key: &'static str,
    v: Option<&str>,
    default: Duration,
) -> Result<Duration, (&'static str, String)> {
    let Some(v) = v else { return Ok(default) };
    match humantime::parse_duration(v.trim()) {
        Ok(d) if d >= Duration::from_secs(1) => Ok(d),
        Ok(_) => Err((key, format!("{v:?} must be at least 1s"))),
        Err(e) => Err((key, format!("{v:?}: {e} (write e.g. \"5m\")"))),
    }
}

fn levels(
    key: &'static str,
    v: Option<&[String]>,
    max: Option<Decimal>,
) -> Result<Vec<Decimal>, (&'static str, String)> {
    let mut out = Vec::new();
    for s in v.unwrap_or_default() {
        let d = parse_fraction(s).map_err(|e| (key, e))?;
        if d <= Decimal::ZERO || max.is_some_and(|m| d > m) {
            return Err((
                key,
                match max {
                    Some(_) => format!("{s:?} must be above 0 % and at most 100 %"),
                    None => format!("{s:?} must be above 0 %"),
                },
            ));
        }
        out.push(d.normalize());
    }
    out.sort();
    let before = out.len();
    out.dedup();
    if out.len() != before {
        return Err((key, "a level is listed twice".into()));
    }
    Ok(out)
}

impl RawRiskSchedule {
    /// Validates every key; all problems at once, each with its key.
    pub fn check(self) -> Result<RiskSchedule, Vec<(&'static str, String)>> {
        let d = RiskSchedule::default();
        let mut problems = Vec::new();
        let mut take = |r: Result<Duration, (&'static str, String)>, def: Duration| match r {
            Ok(v) => v,
            Err(p) => {
                problems.push(p);
                def
            }
        };
        let every = take(duration("every", self.every.as_deref(), d.every), d.every);
        let record_every = take(
            duration("record_every", self.record_every.as_deref(), d.record_every),
            d.record_every,
        );
        let record_keep = take(
            duration("record_keep", self.record_keep.as_deref(), d.record_keep),
            d.record_keep,
        );
        let p = levels(
            "warn_p_liquidation",
            self.warn_p_liquidation.as_deref(),
            Some(Decimal::ONE),
        )
        .unwrap_or_else(|e| {
            problems.push(e);
            Vec::new()
        });
        let es = levels("warn_es_to_equity", self.warn_es_to_equity.as_deref(), None)
            .unwrap_or_else(|e| {
                problems.push(e);
                Vec::new()
            });
        let hysteresis = match self.warn_hysteresis.as_deref().map(parse_fraction) {
            None => d.warn_hysteresis,
            Some(Ok(h)) if h >= Decimal::ZERO => h,
            Some(Ok(_)) => {
                problems.push(("warn_hysteresis", "must not be negative".into()));
                d.warn_hysteresis
            }
            Some(Err(e)) => {
                problems.push(("warn_hysteresis", e));
                d.warn_hysteresis
            }
        };
        if record_keep < record_every {
            problems.push((
                "record_keep",
                "must be at least record_every (nothing would be kept)".into(),
            ));
        }
        if problems.is_empty() {
            Ok(RiskSchedule {
                every,
                record_every,
                record_keep,
                warn_p_liquidation: p,
                warn_es_to_equity: es,
                warn_hysteresis: hysteresis,
            })
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Percentages and decimals parse alike; bad levels and durations are named by key.
    #[test]
    fn schedule_keys() {
        assert_eq!(parse_fraction("5%").unwrap(), Decimal::new(5, 2));
        assert_eq!(parse_fraction("0.05").unwrap(), Decimal::new(5, 2));
        assert!(parse_fraction("five").is_err());
        let ok = RawRiskSchedule {
            every: Some("1m".into()),
            warn_p_liquidation: Some(vec!["10%".into(), "5%".into()]),
            warn_es_to_equity: Some(vec!["150%".into()]),
            ..RawRiskSchedule::default()
        }
        .check()
        .unwrap();
        assert_eq!(ok.every, Duration::from_secs(60));
        assert_eq!(
            ok.warn_p_liquidation,
            vec![Decimal::new(5, 2), Decimal::new(1, 1)]
        );
        assert_eq!(ok.warn_es_to_equity, vec![Decimal::new(15, 1)]);
        let bad = RawRiskSchedule {
            every: Some("soon".into()),
            warn_p_liquidation: Some(vec!["120%".into()]),
            warn_hysteresis: Some("-1%".into()),
            ..RawRiskSchedule::default()
        }
        .check()
        .unwrap_err();
        let keys: Vec<&str> = bad.iter().map(|p| p.0).collect();
        assert_eq!(keys, ["every", "warn_p_liquidation", "warn_hysteresis"]);
    }
}
