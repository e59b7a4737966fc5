//! `[[instruments.sources]]`: a venue's own REST responses as the daemon's instrument source —
//! read from files at start-up and, with `urls`, refreshed on a schedule while it runs.
//!
//! At start-up ([`load_sources`]) each source's files go through the venue's importer; an
//! instrument also defined in the preset files keeps its preset identity (kind, underlying,
//! contract size, price sources) and takes the source's margin terms, the rest are added. While
//! running, `app` owns one refresh task per source with URLs (`refresh::Refresher`), and hands
//! each changed good set to the engine (`Engine::replace_instruments`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::refresh::RefreshUrl;
use super::{ImportVenue, Input, import};
use crate::engine::map::{identity_change, with_terms_of};
use crate::model::{Instrument, InstrumentId};

/// Default refresh interval.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(3600);
/// Default timeout of one fetch.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[[instruments.sources]]` entry, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstrumentSourceConfig {
    /// The venue format.
    pub venue: ImportVenue,
    /// Responses read at start-up (resolved paths; at least one).
    pub files: Vec<PathBuf>,
    /// Where to fetch the same responses from while running (empty: no refresh).
    pub urls: Vec<RefreshUrl>,
    /// Only these instrument ids (empty: every instrument the files list).
    pub only: Vec<InstrumentId>,
    /// How often to refresh.
    pub every: Duration,
    /// Timeout of each fetch.
    pub timeout: Duration,
    /// `/readyz` fails when the terms in force are older than this (the last good fetch, or
    /// the start-up files): the refresh has been failing for too long.
    pub max_age: Duration,
}

impl InstrumentSourceConfig {
    /// A label for logs and events: `binance-usdm`.
    pub fn name(&self) -> &'static str {
        self.venue.as_str()
    }

    /// Keeps the instruments `only` names (all when it is empty).
    pub fn filter(&self, instruments: Vec<Instrument>) -> Vec<Instrument> {
        if self.only.is_empty() {
            return instruments;
        }
        instruments
            .into_iter()
            .filter(|i| self.only.contains(&i.id))
            .collect()
    }
}

/// Reads every source's files and merges them into the preset instruments (see the module
/// docs). Errors name the file (and line and field for a malformed one), an instrument two
/// sources define, an identity field a source changes, or an `only` id no file lists.
pub fn load_sources(
    sources: &[InstrumentSourceConfig],
    presets: &mut HashMap<InstrumentId, Instrument>,
) -> Result<(), String> {
    let mut from: HashMap<InstrumentId, &'static str> = HashMap::new();
    for s in sources {
        let inputs = s
            .files
            .iter()
            .map(|p| Input::read(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("instruments.sources ({}): {e}", s.name()))?;
        let imported = import(s.venue, &inputs).map_err(|e| format!("instruments.sources: {e}"))?;
        for id in &s.only {
            if !imported.instruments.iter().any(|i| &i.id == id) {
                return Err(format!(
                    "instruments.sources ({}): instruments lists {id}, which the files do not",
                    s.name()
                ));
            }
        }
        for inst in s.filter(imported.instruments) {
            if let Some(other) = from.get(&inst.id) {
                return Err(format!(
                    "instrument {} is defined by two instrument sources ({other} and {})",
                    inst.id,
                    s.name()
                ));
            }
            from.insert(inst.id.clone(), s.name());
            let merged = match presets.get(&inst.id) {
                Some(preset) => {
                    if let Some(e) = identity_change(preset, &inst) {
                        return Err(format!(
                            "instruments.sources ({}): {e} (between the presets and the files)",
                            s.name()
                        ));
                    }
                    with_terms_of(preset, &inst)
                }
                None => inst,
            };
            presets.insert(merged.id.clone(), merged);
        }
    }
    Ok(())
}

/// What each instrument source has done, shared between its refresh task and `/readyz`.
#[derive(Clone, Debug, Default)]
pub struct InstrumentHealth(std::sync::Arc<parking_lot::RwLock<Vec<SourceHealth>>>);

/// One source's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceHealth {
    /// The venue format.
    pub venue: &'static str,
    /// True when it refreshes from URLs.
    pub refreshing: bool,
    /// When the terms in force were read (ms): the start-up files, then each good fetch.
    pub last_success_ms: i64,
    /// The last refresh failure, cleared by a success.
    pub last_error: Option<String>,
    /// Refresh failures since the last success.
    pub consecutive_failures: u32,
    /// Definitions refused by the last applied set (an identity field changed), with why.
    pub refused: Vec<String>,
    /// Not ready when the terms in force are older than this (ms).
    pub max_age_ms: i64,
}

impl InstrumentHealth {
    /// Health for `sources`, all read at `now_ms` (start-up).
    pub fn new(sources: &[InstrumentSourceConfig], now_ms: i64) -> Self {
        InstrumentHealth(std::sync::Arc::new(parking_lot::RwLock::new(
            sources
                .iter()
                .map(|s| SourceHealth {
                    venue: s.name(),
                    refreshing: !s.urls.is_empty(),
                    last_success_ms: now_ms,
                    last_error: None,
                    consecutive_failures: 0,
                    refused: Vec::new(),
                    max_age_ms: i64::try_from(s.max_age.as_millis()).unwrap_or(i64::MAX),
                })
                .collect(),
        )))
    }

    /// Changes the state of source `i`.
    pub fn update(&self, i: usize, f: impl FnOnce(&mut SourceHealth)) {
        if let Some(h) = self.0.write().get_mut(i) {
            f(h);
        }
    }

    /// Every source's state.
    pub fn sources(&self) -> Vec<SourceHealth> {
        self.0.read().clone()
    }

    /// The `/readyz` check: `None` without sources; else (ok, detail). Not ok when a refreshing
    /// source's terms are older than its `max_age` (its refreshes have failed for that long).
    pub fn readiness(&self, now_ms: i64) -> Option<(bool, String)> {
        let sources = self.sources();
        if sources.is_empty() {
            return None;
        }
        let mut ok = true;
        let mut parts = Vec::new();
        for s in &sources {
            let age_s = (now_ms - s.last_success_ms).max(0) / 1000;
            let too_old = s.refreshing && now_ms - s.last_success_ms > s.max_age_ms;
            ok &= !too_old;
            let mut p = format!(
                "{}: terms in force read {age_s}s ago ({})",
                s.venue,
                if s.refreshing {
                    "refreshed live"
                } else {
                    "files only"
                }
            );
            if let Some(e) = &s.last_error {
                p.push_str(&format!(
                    "; last refresh failed ({} in a row): {e}; keeping the last good set",
                    s.consecutive_failures
                ));
            }
            if too_old {
                p.push_str(&format!("; older than max_age ({} s)", s.max_age_ms / 1000));
            }
            if !s.refused.is_empty() {
                p.push_str(&format!(
                    "; {} definition(s) refused: {}",
                    s.refused.len(),
                    s.refused.join("; ")
                ));
            }
            parts.push(p);
        }
        Some((ok, parts.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/feeds/hyperliquid/rest/meta_nautilus_sample.json"
    );

    fn source(only: &[&str]) -> InstrumentSourceConfig {
        InstrumentSourceConfig {
            venue: ImportVenue::Hyperliquid,
            files: vec![PathBuf::from(META)],
            urls: Vec::new(),
            only: only.iter().map(|s| InstrumentId::from(*s)).collect(),
            every: DEFAULT_EVERY,
            timeout: DEFAULT_TIMEOUT,
            max_age: DEFAULT_EVERY * 3,
        }
    }

    fn presets() -> HashMap<InstrumentId, Instrument> {
        crate::sources::files::load_instruments(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/feeds/hyperliquid/instruments.toml"
        )))
        .unwrap()
    }

    use std::path::Path;

    /// A preset instrument keeps its identity and price sources and takes the file's tiers;
    /// an instrument the presets lack is added; `instruments` restricts the set.
    #[test]
    fn files_merge_into_the_presets() {
        let mut all = presets();
        let btc_before = all[&InstrumentId::from("HL-BTC-PERP")].clone();
        load_sources(&[source(&["HL-BTC-PERP", "HL-ATOM-PERP"])], &mut all).unwrap();
        let btc = &all[&InstrumentId::from("HL-BTC-PERP")];
        assert_eq!(btc.sources, btc_before.sources);
        assert_eq!(btc.kind, btc_before.kind);
        let imported = crate::instruments::import(
            ImportVenue::Hyperliquid,
            &[Input::read(Path::new(META)).unwrap()],
        )
        .unwrap();
        let file_btc = imported
            .instruments
            .iter()
            .find(|i| i.id.as_str() == "HL-BTC-PERP")
            .unwrap();
        assert_eq!(btc.tiers, file_btc.tiers);
        assert!(all.contains_key(&InstrumentId::from("HL-ATOM-PERP")));
    }

    /// Refused at start: an `instruments` id the files do not list, two sources defining one
    /// instrument, a file that changes a preset's identity.
    #[test]
    fn conflicts_are_refused() {
        let e = load_sources(&[source(&["HL-DOGE-PERP"])], &mut presets()).unwrap_err();
        assert!(e.contains("HL-DOGE-PERP"), "{e}");
        let e = load_sources(&[source(&[]), source(&[])], &mut presets()).unwrap_err();
        assert!(e.contains("two instrument sources"), "{e}");
        let mut changed = presets();
        if let Some(b) = changed.get_mut(&InstrumentId::from("HL-BTC-PERP")) {
            b.underlying = "XBT".into();
        }
        let e = load_sources(&[source(&[])], &mut changed).unwrap_err();
        assert!(e.contains("underlying"), "{e}");
    }
}
