//! `[risk]` in the daemon: the scenario set built once at startup from the configured history,
//! and one account's VaR/ES/P(liquidation) at the engine's current prices for
//! `GET /v1/accounts/{id}/risk`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use rust_decimal::Decimal;

use super::AppError;
use crate::config::RiskConfig;
use crate::engine::AccountMap;
use crate::model::{AccountId, Instrument, InstrumentId};
use crate::risk::scenarios::{self, History};
use crate::risk::{AccountRisk, RiskBook, ScenarioSet, episodes};

/// The scenarios and α the endpoint uses.
pub(crate) struct RiskSettings {
    /// The scenario set over every underlying the history prices.
    pub set: ScenarioSet,
    /// α.
    pub alpha: Decimal,
    /// Instruments by id (the presets the daemon runs with).
    pub instruments: HashMap<InstrumentId, Instrument>,
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
    let mut chosen = std::collections::BTreeMap::new();
    for u in &underlyings {
        let one: BTreeSet<String> = [u.clone()].into();
        if let Ok(c) = scenarios::resolve(&history, &one, &cfg.map) {
            chosen.extend(c);
        }
    }
    if chosen.is_empty() {
        return Err(err(format!(
            "no history series prices any underlying of the presets ({})",
            underlyings.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    let set = scenarios::build("history", &history, &chosen, cfg.horizon.1)
        .map_err(|e| err(e.to_string()))?;
    Ok(RiskSettings {
        set,
        alpha: cfg.alpha,
        instruments: instruments.clone(),
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
    let mut book = RiskBook::new(&s.instruments, &prices, &s.set, s.alpha)
        .map_err(|e| RiskAnswerError::Failed(e.to_string()))?;
    book.default_trigger = default_trigger;
    book.account(&account)
        .map_err(|e| RiskAnswerError::Failed(e.to_string()))
}
