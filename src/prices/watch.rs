//! Which instruments the board watches for staleness: those some account holds (the engine's
//! held set, handed over by the runner with [`PriceBoard::set_held`]) and those listed in
//! `[prices] watch`. Until a held set is first given, every tracked instrument is watched (a
//! board driven on its own, as in tests and tools, behaves as before). An instrument that is
//! watched but priced by no feed is **unserved**: reported once, loudly (ERROR), at start
//! ([`PriceBoard::report_unserved`]) and whenever a new one appears later, and listed in
//! readiness ([`PriceBoard::unserved`]).

use std::collections::HashSet;

use crate::model::InstrumentId;

use super::PriceBoard;

/// The board's watch state (behind its own lock, taken once per staleness check).
#[derive(Debug, Default)]
pub(super) struct WatchState {
    /// The held set from the engine; `None` until first given.
    held: Option<HashSet<InstrumentId>>,
    /// Unserved instruments already reported.
    reported: HashSet<InstrumentId>,
    /// Whether the start-up report ran (later reports name only new ones).
    started: bool,
}

impl WatchState {
    /// Whether staleness of `id` is watched, given the configured `watch` list.
    pub(super) fn watched(&self, id: &InstrumentId, explicit: &[InstrumentId]) -> bool {
        match &self.held {
            None => true,
            Some(held) => held.contains(id) || explicit.contains(id),
        }
    }
}

impl PriceBoard {
    /// Whether the board watches this instrument's staleness (held, or listed in `watch`; every
    /// instrument until a held set was given).
    pub fn is_watched(&self, id: &InstrumentId) -> bool {
        self.watch.lock().watched(id, &self.cfg.watch)
    }

    /// Replaces the set of instruments some account holds (the engine's
    /// `AccountMap::held_instruments`); the runner calls it before every staleness check. Once
    /// the start-up report ran, a held instrument that no feed prices and that was not reported
    /// before is reported now (ERROR) and returned.
    pub fn set_held(&self, held: impl IntoIterator<Item = InstrumentId>) -> Vec<InstrumentId> {
        let held: HashSet<InstrumentId> = held.into_iter().collect();
        let started = {
            let mut w = self.watch.lock();
            w.held = Some(held);
            w.started
        };
        if started {
            self.report_new_unserved(false)
        } else {
            Vec::new()
        }
    }

    /// Instruments watched (held or listed in `watch`) that no feed prices: no feed tracks them
    /// on the board. Sorted. Empty until a held set was given (plus the `watch` list).
    pub fn unserved(&self) -> Vec<InstrumentId> {
        let candidates: Vec<InstrumentId> = {
            let w = self.watch.lock();
            w.held
                .iter()
                .flatten()
                .chain(self.cfg.watch.iter())
                .cloned()
                .collect()
        };
        let inner = self.inner.lock();
        let mut out: Vec<InstrumentId> = candidates
            .into_iter()
            .filter(|id| {
                inner
                    .instruments
                    .get(id)
                    .is_none_or(|st| st.slots.is_empty())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The start-up report: every watched instrument no feed prices, logged once at ERROR
    /// (call it after the feeds are spawned and the held set is given). Returns them.
    pub fn report_unserved(&self) -> Vec<InstrumentId> {
        self.watch.lock().started = true;
        self.report_new_unserved(true)
    }

    fn report_new_unserved(&self, at_start: bool) -> Vec<InstrumentId> {
        let unserved = self.unserved();
        let new: Vec<InstrumentId> = {
            let mut w = self.watch.lock();
            unserved
                .into_iter()
                .filter(|id| w.reported.insert(id.clone()))
                .collect()
        };
        if !new.is_empty() {
            let list: Vec<String> = new.iter().map(ToString::to_string).collect();
            metrics::gauge!("liqwatch_prices_unserved_instruments")
                .set(self.unserved().len() as f64);
            tracing::error!(
                instruments = ?list,
                at_start,
                "Held or watched instruments have no feed pricing them: positions in them are valued at no price and can never go stale or trigger; add a source for them to the instrument presets or a feed"
            );
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::super::PriceBoardConfig;
    use super::*;
    use crate::model::Venue;

    fn ids(s: &[&str]) -> Vec<InstrumentId> {
        s.iter().map(|x| InstrumentId::from(*x)).collect()
    }

    /// Every tracked instrument is watched until a held set is given; then only held and
    /// explicitly watched ones. Unserved watched instruments are reported once at start and a
    /// new one once when it appears.
    #[test]
    fn held_and_explicit_watch_and_unserved_reports() {
        let b = PriceBoard::new(PriceBoardConfig {
            watch: ids(&["ETHUSDT-PERP"]),
            ..PriceBoardConfig::default()
        });
        b.track(&InstrumentId::from("BTCUSDT-PERP"), &[Venue::BinanceUsdm]);
        b.track(&InstrumentId::from("SOLUSDT-PERP"), &[Venue::BinanceUsdm]);
        let sol = InstrumentId::from("SOLUSDT-PERP");
        assert!(b.is_watched(&sol));
        assert_eq!(b.unserved(), ids(&["ETHUSDT-PERP"]));
        assert!(
            b.set_held(ids(&["BTCUSDT-PERP", "XRPUSDT-PERP"]))
                .is_empty()
        );
        assert!(!b.is_watched(&sol));
        assert!(b.is_watched(&InstrumentId::from("BTCUSDT-PERP")));
        assert!(b.is_watched(&InstrumentId::from("ETHUSDT-PERP")));
        assert_eq!(b.unserved(), ids(&["ETHUSDT-PERP", "XRPUSDT-PERP"]));
        assert_eq!(b.report_unserved(), ids(&["ETHUSDT-PERP", "XRPUSDT-PERP"]));
        // Reported once: the same set again reports nothing, a new one is reported.
        assert!(
            b.set_held(ids(&["BTCUSDT-PERP", "XRPUSDT-PERP"]))
                .is_empty()
        );
        assert_eq!(
            b.set_held(ids(&["BTCUSDT-PERP", "XRPUSDT-PERP", "DOGEUSDT-PERP"])),
            ids(&["DOGEUSDT-PERP"])
        );
        // Served once a feed tracks it.
        b.track(&InstrumentId::from("XRPUSDT-PERP"), &[Venue::Okx]);
        assert_eq!(b.unserved(), ids(&["DOGEUSDT-PERP", "ETHUSDT-PERP"]));
    }

    /// Issue 12 item 5: once a held set is given, `check_staleness` reports only held and
    /// explicitly watched instruments; before it, every tracked one.
    #[tokio::test(start_paused = true)]
    async fn staleness_only_for_watched() {
        let b = PriceBoard::new(PriceBoardConfig {
            stale_after: std::time::Duration::from_secs(1),
            watch: ids(&["ETHUSDT-PERP"]),
            ..PriceBoardConfig::default()
        });
        for id in ["BTCUSDT-PERP", "ETHUSDT-PERP", "SOLUSDT-PERP"] {
            b.track(&InstrumentId::from(id), &[Venue::BinanceUsdm]);
        }
        b.set_held(ids(&["BTCUSDT-PERP"]));
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        let mut got: Vec<InstrumentId> = b
            .check_staleness(tokio::time::Instant::now())
            .into_iter()
            .map(|t| t.info.instrument)
            .collect();
        got.sort();
        assert_eq!(got, ids(&["BTCUSDT-PERP", "ETHUSDT-PERP"]));
        let all = PriceBoard::new(PriceBoardConfig {
            stale_after: std::time::Duration::from_secs(1),
            ..PriceBoardConfig::default()
        });
        all.track(&InstrumentId::from("SOLUSDT-PERP"), &[Venue::BinanceUsdm]);
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        assert_eq!(all.check_staleness(tokio::time::Instant::now()).len(), 1);
    }
}
