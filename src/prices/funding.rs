//! The funding board: the latest funding rate and next funding time per instrument, beside the
//! prices on the [`PriceBoard`](super::PriceBoard).
//!
//! The feed drivers and the replay [`publish`](FundingBoard::publish) every funding observation
//! they parse ([`crate::feeds::funding`]); the engine reads them through
//! [`PriceInfo::funding`](crate::engine::PriceInfo::funding) when it builds a snapshot or checks
//! `warn_before_funding`. Latest value wins, per instrument: publishing takes one short
//! uncontended lock and never waits for the engine, and nothing queues. When several venues
//! fund the same instrument, the last one heard from is used and named
//! ([`FundingEntry::venue`]); a venue's perpetual is normally priced by that venue alone.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::margin::funding::FundingRate;
use crate::model::{InstrumentId, TimestampMs, Venue};

/// The latest funding observation of one instrument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FundingEntry {
    /// Rate and next settlement time.
    pub rate: FundingRate,
    /// The venue it came from.
    pub venue: Venue,
    /// When it was received (ms since the epoch).
    pub received_ts: TimestampMs,
}

/// Latest funding per instrument. Share it through the price board; every method takes `&self`.
#[derive(Debug, Default)]
pub struct FundingBoard {
    inner: Mutex<HashMap<InstrumentId, FundingEntry>>,
}

impl FundingBoard {
    /// Records the latest funding of `instrument` (replacing the previous one). An observation
    /// older than the one held (by receive time) is ignored, so a slow connection cannot roll a
    /// newer rate back.
    pub fn publish(&self, instrument: &InstrumentId, entry: FundingEntry) {
        metrics::counter!("liqwatch_prices_funding_updates_total", "venue" => entry.venue.as_str())
            .increment(1);
        let mut inner = self.inner.lock();
        match inner.get_mut(instrument) {
            Some(held) if held.received_ts > entry.received_ts => {}
            Some(held) => *held = entry,
            None => {
                inner.insert(instrument.clone(), entry);
            }
        }
    }

    /// The latest funding of `instrument`, if any was heard.
    pub fn get(&self, instrument: &InstrumentId) -> Option<FundingEntry> {
        self.inner.lock().get(instrument).copied()
    }

    /// Every instrument's latest funding, sorted by instrument (for checks and the API).
    pub fn all(&self) -> Vec<(InstrumentId, FundingEntry)> {
        let mut v: Vec<(InstrumentId, FundingEntry)> = self
            .inner
            .lock()
            .iter()
            .map(|(k, e)| (k.clone(), *e))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    fn entry(rate: rust_decimal::Decimal, next: Option<i64>, at: i64) -> FundingEntry {
        FundingEntry {
            rate: FundingRate {
                rate,
                next_funding_ts: next,
            },
            venue: Venue::BinanceUsdm,
            received_ts: at,
        }
    }

    /// Latest wins by receive time; an older observation does not roll the rate back.
    #[test]
    fn latest_wins() {
        let b = FundingBoard::default();
        let id = InstrumentId::new("BTCUSDT-PERP");
        assert_eq!(b.get(&id), None);
        b.publish(&id, entry(dec!(0.0001), Some(10), 5));
        b.publish(&id, entry(dec!(0.0002), Some(10), 7));
        b.publish(&id, entry(dec!(0.0009), Some(10), 6));
        assert_eq!(b.get(&id).map(|e| e.rate.rate), Some(dec!(0.0002)));
        assert_eq!(b.all().len(), 1);
    }
}
