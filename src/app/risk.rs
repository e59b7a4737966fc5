//! `[risk]` in the daemon: the scenario set built at startup from the configured history (and
//! rebuilt with the daemon's recorded prices when `history` lists `"recorded"`), and one
//! account's VaR/ES/P(liquidation) at the engine's current prices for
//! `GET /v1/accounts/{id}/risk` when the scheduled recompute has not stored it yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use rust_decimal::Decimal;

use super::AppError;
use crate::config::RiskConfig;
use crate::engine::AccountMap;
use crate::model::{AccountId, Instrument, InstrumentId};
use crate::risk::scenarios::{self, History};
use crate::risk::{AccountRisk, RiskBook, ScenarioSet, episodes};

/// The scenarios and α the endpoint and the scheduled recompute use.
pub(crate) struct RiskSettings {
    /// The scenario set over every underlying the history prices; `None` while only
    /// recorded history is configured and too little is recorded yet.
    set: parking_lot::RwLock<Option<Arc<ScenarioSet>>>,
    /// α.
    pub alpha: Decimal,
    /// Instruments by id (the presets the daemon runs with).
    pub instruments: HashMap<InstrumentId, Instrument>,
    /// The `[risk]` section.
    pub cfg: RiskConfig,
    /// The history files and episodes, loaded once.
    files: History,
    /// Non-stable underlyings of the presets.
    underlyings: BTreeSet<String>,
}

impl RiskSettings {
    /// The current scenario set.
    pub fn set(&self) -> Option<Arc<ScenarioSet>> {
        self.set.read().clone()
    }

    /// True when `history` lists the daemon's recorded prices.
    pub fn uses_recorded(&self) -> bool {
        self.cfg
            .history
            .iter()
            .any(|h| h == crate::risk::schedule::RECORDED)
    }

    /// Rebuilds the set from the files plus recorded samples (each underlying's samples join
    /// the series that prices it, or the recorded instrument with most samples becomes its
    /// series). Keeps the old set and returns why when the new one cannot be built.
    pub fn rebuild(
        &self,
        recorded: &[crate::journal::prices::RecordedPrice],
    ) -> Result<usize, String> {
        let mut history = self.files.clone();
        merge_recorded(&mut history, recorded, &self.instruments, &self.cfg.map);
        let set = build_set(&history, &self.underlyings, &self.cfg)?;
        let n = set.as_ref().map_or(0, |s| s.len());
        *self.set.write() = set.map(Arc::new);
        Ok(n)
    }
}

/// Adds recorded samples to `history`, one series per underlying.
fn merge_recorded(
    history: &mut History,
    recorded: &[crate::journal::prices::RecordedPrice],
    instruments: &HashMap<InstrumentId, Instrument>,
    explicit: &BTreeMap<String, String>,
) {
    // underlying → instrument → samples
    type Samples = Vec<(i64, Decimal)>;
    let mut by_u: BTreeMap<String, BTreeMap<&str, Samples>> = BTreeMap::new();
    for r in recorded {
        let Some(i) = instruments.get(&InstrumentId::from(r.instrument.as_str())) else {
            continue;
        };
        if i.stable {
            continue;
        }
        by_u.entry(i.underlying.clone())
            .or_default()
            .entry(r.instrument.as_str())
            .or_default()
            .push((r.time_ms, r.price));
    }
    for (u, per) in by_u {
        // The instrument with the most samples (ties: first by name) speaks for the underlying.
        let Some((inst, points)) = per
            .into_iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)))
        else {
            continue;
        };
        let one: BTreeSet<String> = [u.clone()].into();
        let symbol = scenarios::resolve(history, &one, explicit)
            .ok()
            .and_then(|c| c.get(&u).cloned())
            .unwrap_or_else(|| u.clone());
        let series = history.series.entry(symbol).or_default();
        series.sources.insert(format!("recorded:{inst}"));
        for (t, p) in points {
            series.points.entry(t).or_insert(p);
        }
    }
}

/// The windows over every underlying a series prices; `None` when none does.
fn build_set(
    history: &History,
    underlyings: &BTreeSet<String>,
    cfg: &RiskConfig,
) -> Result<Option<ScenarioSet>, String> {
    let mut chosen = BTreeMap::new();
    for u in underlyings {
        let one: BTreeSet<String> = [u.clone()].into();
        if let Ok(c) = scenarios::resolve(history, &one, &cfg.map) {
            chosen.extend(c);
        }
    }
    if chosen.is_empty() {
        return Ok(None);
    }
    scenarios::build("history", history, &chosen, cfg.horizon.1)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Loads the history and builds the windows over every non-stable underlying of the presets
/// that a history series prices (explicit `map` entries first). A bad file or an empty set is
/// a startup error (exit 2).
pub(crate) fn settings(
    cfg: &RiskConfig,
    instruments: &HashMap<InstrumentId, Instrument>,
) -> Result<RiskSettings, AppError> {
    let err = |m: String| AppError::Startup(format!("[risk]: {m}"));
    let mut history = History::new();
    for h in &cfg.history {
        if h == crate::risk::schedule::RECORDED {
            continue;
        }
        match h.strip_prefix("episode:") {
            Some(name) => {
                let e = episodes::find(name)
                    .ok_or_else(|| err(format!("history {h}: unknown episode")))?;
                history
                    .add_csv(Path::new(h), e.csv)
                    .map_err(|e| err(e.to_string()))?;
            }
            None => history.load(Path::new(h)).map_err(|e| err(e.to_string()))?,
        }
    }
    let underlyings: BTreeSet<String> = instruments
        .values()
        .filter(|i| !i.stable)
        .map(|i| i.underlying.clone())
        .collect();
    for u in cfg.map.values() {
        if !underlyings.contains(u) {
            return Err(err(format!("map: unknown underlying {u:?}")));
        }
    }
    // Every underlying a series prices; the others are refused per account at request time.
    let recorded = cfg
        .history
        .iter()
        .any(|h| h == crate::risk::schedule::RECORDED);
    let set = match build_set(&history, &underlyings, cfg) {
        Ok(Some(set)) => Some(Arc::new(set)),
        // Recorded prices may price them later; the endpoint says so meanwhile.
        Ok(None) if recorded => None,
        Ok(None) => {
            return Err(err(format!(
                "no history series prices any underlying of the presets ({})",
                underlyings.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        Err(e) if recorded => {
            tracing::warn!(error = %e, "[risk]: no scenarios from the history files yet");
            None
        }
        Err(e) => return Err(err(e)),
    };
    Ok(RiskSettings {
        set: parking_lot::RwLock::new(set),
        alpha: cfg.alpha,
        instruments: instruments.clone(),
        cfg: cfg.clone(),
        files: history,
        underlyings,
    })
}

/// Why an account's risk cannot be answered.
pub(crate) enum RiskAnswerError {
    /// No such account.
    Unknown,
    /// The account cannot be valued (no returns for an asset, no price yet, …).
    Failed(String),
}

/// The account's risk at the engine's current prices.
pub(crate) fn account_risk(
    s: &RiskSettings,
    map: &AccountMap,
    id: &AccountId,
    default_trigger: Decimal,
) -> Result<AccountRisk, RiskAnswerError> {
    let account = map.account(id).ok_or(RiskAnswerError::Unknown)?;
    let prices: HashMap<InstrumentId, Decimal> = account
        .collateral
        .keys()
        .chain(account.positions.iter().map(|p| &p.instrument))
        .filter_map(|i| map.price(i).map(|p| (i.clone(), p)))
        .collect();
    let set = s.set().ok_or_else(|| {
        RiskAnswerError::Failed(
            "no scenarios yet: the recorded history is too short for one window of the horizon"
                .into(),
        )
    })?;
    let mut book = RiskBook::new(&s.instruments, &prices, &set, s.alpha)
        .map_err(|e| RiskAnswerError::Failed(e.to_string()))?;
    book.default_trigger = default_trigger;
    book.account(&account)
        .map_err(|e| RiskAnswerError::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::prices::RecordedPrice;
    use crate::risk::schedule::RiskSchedule;

    fn presets() -> HashMap<InstrumentId, Instrument> {
        crate::sources::files::load_instruments(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml"),
        )
        .unwrap()
    }

    fn cfg(history: &[&str]) -> RiskConfig {
        RiskConfig {
            history: history.iter().map(|h| h.to_string()).collect(),
            horizon: ("1h".into(), 3_600_000),
            alpha: Decimal::new(99, 2),
            map: BTreeMap::new(),
            schedule: RiskSchedule::default(),
        }
    }

    fn sample(instrument: &str, hour: i64, price: i64) -> RecordedPrice {
        RecordedPrice {
            instrument: instrument.into(),
            time_ms: 2_000_000_000_000 + hour * 3_600_000,
            price: Decimal::from(price),
        }
    }

    /// With only `recorded`, the daemon starts without scenarios; recorded samples then build
    /// the windows (the instrument with most samples speaks for its underlying), and with an
    /// episode they join the episode's series for the same underlying instead of competing.
    #[test]
    fn recorded_samples_build_and_join_the_set() {
        let instruments = presets();
        let s = settings(&cfg(&["recorded"]), &instruments).unwrap();
        assert!(s.set().is_none() && s.uses_recorded());
        let rows = [
            sample("BTCUSDT-PERP", 0, 100),
            sample("BTCUSDT-PERP", 1, 90),
            sample("BTCUSDT-PERP", 2, 99),
            sample("BTC", 0, 100),
        ];
        assert_eq!(s.rebuild(&rows).unwrap(), 2);
        let set = s.set().unwrap();
        assert_eq!(set.underlyings, ["BTC"]);
        assert_eq!(set.return_of(0, 0), Decimal::new(-1, 1));

        let with_episode = settings(
            &cfg(&["episode:crash-2021-05-19", "recorded"]),
            &instruments,
        )
        .unwrap();
        let before = with_episode.set().unwrap().len();
        let underlyings = with_episode.set().unwrap().underlyings.clone();
        // Every underlying of the set recorded for three hours: two more joint windows on top of
        // the episode's, in the same columns (no second BTC series).
        let mut rows = Vec::new();
        for u in &underlyings {
            let inst = format!("{u}USDT-PERP");
            for h in 0..3 {
                rows.push(sample(&inst, h, 100 + h));
            }
        }
        with_episode.rebuild(&rows).unwrap();
        let set = with_episode.set().unwrap();
        assert_eq!(set.underlyings, underlyings);
        assert_eq!(set.len(), before + 2);
    }
}
