//! Replacing instrument terms under a running engine (a venue changed a bracket table, found by
//! the instrument refresh): the one engine step for it, beside `on_prices` and `on_feed`.
//!
//! ```text
//!  replace_instruments(defs) ─▶ diff against the map's table (terms only; identity refused)
//!                             ─▶ map: swap the terms, revalue every slot on them (under the
//!                                instrument's write lock)
//!                             ─▶ index: new bound for the instrument
//!                             ─▶ holders: bring to current prices, evaluate (levels,
//!                                hysteresis → Emitted), re-band
//!                             ─▶ one `instrument_changed` event per changed instrument
//! ```
//!
//! Ids the map does not know are not added (instruments are fixed for the map's lifetime, and
//! no account can hold one): they are counted in [`InstrumentStep::not_configured`].

use crate::engine::map::{TermsError, identity_change, with_terms_of};
use crate::engine::{AccountKey, Emitted, Engine, PriceInfo, Touched, index};
use crate::model::{
    EventKind, Instrument, InstrumentChangeInfo, InstrumentTerms, RiskEvent, TimestampMs,
    format_rfc3339_ms,
};

/// What [`Engine::replace_instruments`] did.
#[derive(Debug, Default)]
pub struct InstrumentStep {
    /// One `instrument_changed` event per instrument whose terms changed (seq per instrument).
    pub events: Vec<RiskEvent>,
    /// Account events from re-evaluating the holders on the new terms.
    pub emitted: Vec<Emitted>,
    /// Definitions refused, each with the reason (an identity field changed).
    pub refused: Vec<TermsError>,
    /// Definitions whose id the engine does not know (not added).
    pub not_configured: usize,
    /// Definitions whose terms are already in force.
    pub unchanged: usize,
}

impl Engine {
    /// Replaces the margin terms of the configured instruments among `defs` whose terms
    /// differ (tiers, liquidation fee, margin options, haircut; merged as
    /// [`with_terms_of`] says), revalues and re-evaluates
    /// every holder at the current prices and re-bands them, and returns one
    /// `instrument_changed` event per changed instrument (its `source` says where the terms
    /// came from). A definition that changes kind, underlying, contract size or the stable
    /// flag is refused and changes nothing.
    pub fn replace_instruments(
        &mut self,
        defs: &[Instrument],
        source: &str,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
    ) -> InstrumentStep {
        let mut step = InstrumentStep::default();
        let table = self.map().instruments();
        let mut changed: Vec<(Instrument, InstrumentTerms, InstrumentTerms, Vec<String>)> =
            Vec::new();
        for d in defs {
            let Some(cur) = table.index(&d.id).and_then(|i| table.get(i)) else {
                step.not_configured += 1;
                continue;
            };
            if let Some(e) = identity_change(cur, d) {
                step.refused.push(e);
                continue;
            }
            let merged = with_terms_of(cur, d);
            let (before, after) = (InstrumentTerms::of(cur), InstrumentTerms::of(&merged));
            let fields = before.changed_fields(&after);
            if fields.is_empty() {
                step.unchanged += 1;
                continue;
            }
            changed.push((merged, before, after, fields));
        }
        if changed.is_empty() {
            return step;
        }
        let new_defs: Vec<Instrument> = changed.iter().map(|c| c.0.clone()).collect();
        let holders = match self.map().replace_terms(&new_defs) {
            Ok(h) => h,
            Err(e) => {
                // Checked above; the map refuses the same things.
                step.refused.push(e);
                return step;
            }
        };
        let table = self.map().instruments();
        if let Some(ix) = self.index.as_mut() {
            for d in &new_defs {
                if let Some(idx) = table.index(&d.id)
                    && let Some(inst) = table.get(idx)
                {
                    ix.set_terms(idx, inst);
                }
            }
        }
        // Every holder once, in key order, on its final figures at the current prices.
        let mut keys: Vec<AccountKey> = holders
            .iter()
            .flat_map(|(_, k)| k.iter().copied())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let touched: Vec<Touched> = keys
            .iter()
            .filter_map(|k| self.map.materialise(*k))
            .collect();
        if !touched.is_empty() {
            step.emitted = self.monitor.evaluate(&self.map, &touched, prices, now_ms);
            if let Some(ix) = self.index.as_mut() {
                index::rebuild_touched(&self.map, &self.monitor, ix, &touched);
            }
        }
        for ((def, before, after, fields), (_, keys)) in changed.into_iter().zip(holders) {
            let seq = self.feed_seq.entry(def.id.clone()).or_insert(0);
            *seq += 1;
            tracing::info!(instrument = %def.id, changed = ?fields, holders = keys.len(), %source, "Instrument terms replaced; holders revalued");
            step.events.push(RiskEvent {
                event_id: RiskEvent::new_id(),
                kind: EventKind::InstrumentChanged,
                time: format_rfc3339_ms(now_ms),
                time_ms: now_ms,
                account_id: None,
                seq: *seq,
                level: None,
                crossed_levels: Vec::new(),
                level_type: None,
                previous_state: None,
                state: None,
                snapshot: None,
                prices: Vec::new(),
                stale_prices: false,
                feed: None,
                risk: None,
                instrument_change: Some(Box::new(InstrumentChangeInfo {
                    instrument: def.id,
                    source: source.to_string(),
                    changed: fields,
                    holders_revalued: keys.len() as u64,
                    before,
                    after,
                })),
            });
        }
        step
    }
}

#[cfg(test)]
mod tests;
