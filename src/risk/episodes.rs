//! Named episodes shipped in the binary: real joint moves cut from `../shared/data/`
//! (`src/risk/episodes/cut.py` says how), for `liqwatch stress --scenario NAME:HORIZON` and as
//! a history (`liqwatch risk --history episode:NAME`).
//!
//! An episode's **worst window** over a horizon is the window whose equal-weighted mean return
//! over the episode's assets is the lowest (the earliest on a tie): the joint move of the
//! market, chosen without looking at any one book.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rust_decimal::Decimal;

use super::scenarios::{self, History, HistoryError, ScenarioSet};

/// One shipped episode.
#[derive(Clone, Copy, Debug)]
pub struct Episode {
    /// The name (`crash-2021-05-19`).
    pub name: &'static str,
    /// What it is and where it comes from.
    pub about: &'static str,
    /// `ts,symbol,price` CSV (symbols are underlyings).
    pub csv: &'static str,
}

/// Every shipped episode.
pub const EPISODES: &[Episode] = &[Episode {
    name: "crash-2021-05-19",
    about: "2021-05-19 sell-off: Binance spot 5-minute opens of BTC, ETH, SOL, XRP, ADA, DOT, 2021-05-18 12:00 to 2021-05-20 12:00 UTC",
    csv: include_str!("episodes/crash-2021-05-19.csv"),
}];

/// The horizons an episode can be asked for by name.
pub const HORIZONS: &[&str] = &["1h", "4h", "1d"];

/// The episode called `name`.
pub fn find(name: &str) -> Option<&'static Episode> {
    EPISODES.iter().find(|e| e.name == name)
}

fn names() -> String {
    EPISODES
        .iter()
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Episode {
    /// The episode's prices as a history (file label `episode:NAME`).
    pub fn history(&self) -> Result<History, HistoryError> {
        let mut h = History::new();
        h.add_csv(Path::new(&format!("episode:{}", self.name)), self.csv)?;
        Ok(h)
    }

    /// Every window of `horizon_ms` over all the episode's assets.
    pub fn windows(&self, horizon_ms: i64) -> Result<ScenarioSet, HistoryError> {
        let h = self.history()?;
        let chosen: BTreeMap<String, String> =
            h.series.keys().map(|s| (s.clone(), s.clone())).collect();
        scenarios::build(self.name, &h, &chosen, horizon_ms)
    }

    /// The worst window of `horizon_ms` (lowest mean return; earliest on a tie), as a
    /// one-scenario set named `NAME:HORIZON`.
    pub fn worst(&self, horizon: &str) -> Result<ScenarioSet, HistoryError> {
        let ms = scenarios::parse_horizon(horizon).map_err(HistoryError::Windows)?;
        let all = self.windows(ms)?;
        let mut best: Option<(i128, usize)> = None;
        for s in 0..all.len() {
            // Equal weights: compare sums (same column count in every row).
            let sum: i128 = all.row(s).iter().map(|m| i128::from(*m)).sum();
            if best.is_none_or(|(b, _)| sum < b) {
                best = Some((sum, s));
            }
        }
        let name = format!("{}:{horizon}", self.name);
        best.and_then(|(_, s)| all.only(s, &name))
            .ok_or_else(|| HistoryError::Windows(format!("{name}: no window")))
    }

    /// The underlyings the episode covers.
    pub fn underlyings(&self) -> BTreeSet<String> {
        self.history()
            .map(|h| h.series.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Resolves `NAME:HORIZON` (e.g. `crash-2021-05-19:4h`) to the episode's worst window.
pub fn worst_window(spec: &str) -> Result<ScenarioSet, String> {
    let (name, horizon) = spec.split_once(':').ok_or_else(|| {
        format!(
            "scenario {spec:?}: expected NAME:HORIZON, e.g. crash-2021-05-19:4h (episodes: {})",
            names()
        )
    })?;
    let e = find(name).ok_or_else(|| {
        format!(
            "scenario {spec:?}: unknown episode {name:?} (episodes: {})",
            names()
        )
    })?;
    e.worst(horizon)
        .map_err(|err| format!("scenario {spec:?}: {err}"))
}

/// The returns of a one-window set, by underlying (for `stress`).
pub fn moves(set: &ScenarioSet) -> BTreeMap<String, Decimal> {
    set.underlyings
        .iter()
        .enumerate()
        .map(|(j, u)| (u.clone(), set.return_of(0, j)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::format_rfc3339_ms;
    use rust_decimal_macros::dec;

    /// The shipped episode parses, and its worst windows are where the 2021-05-19 lows are.
    #[test]
    fn crash_worst_windows() {
        let e = find("crash-2021-05-19").unwrap();
        assert_eq!(
            e.underlyings().into_iter().collect::<Vec<_>>(),
            ["ADA", "BTC", "DOT", "ETH", "SOL", "XRP"]
        );
        let want = [
            (
                "1h",
                "2021-05-19T12:10:00.000Z",
                dec!(-0.22379252),
                dec!(-0.27421213),
            ),
            (
                "4h",
                "2021-05-19T09:10:00.000Z",
                dec!(-0.25868662),
                dec!(-0.35897697),
            ),
            (
                "1d",
                "2021-05-18T13:10:00.000Z",
                dec!(-0.31563657),
                dec!(-0.40306567),
            ),
        ];
        for (h, start, btc, sol) in want {
            let w = e.worst(h).unwrap();
            assert_eq!(w.len(), 1, "{h}");
            assert_eq!(format_rfc3339_ms(w.windows[0].start_ms), start, "{h}");
            let m = moves(&w);
            assert_eq!(m["BTC"], btc, "{h}");
            assert_eq!(m["SOL"], sol, "{h}");
        }
        assert_eq!(HORIZONS.len(), want.len());
        assert!(worst_window("crash-2021-05-19").is_err());
        assert!(
            worst_window("nope:4h")
                .unwrap_err()
                .contains("unknown episode")
        );
    }
}
