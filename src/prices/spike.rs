//! The spike filter's knobs and its acceptance rule for a held price.
//!
//! **Which fraction.** A tick is a jump when it moves more than a fraction away from its
//! reference. The fraction is the instrument's (`instrument_spike_fraction`), else the venue's
//! (`venue_spike_fraction`), else the global `spike_fraction` — so alts that really wick −70 %
//! can be given a wide band without loosening BTC.
//!
//! **When a held price is accepted** (the documented rule): a jump is held (the composite keeps
//! the old price) until one of
//!
//! 1. **a second venue confirms it**: another venue's fresh accepted price, or its held price,
//!    lies within the fraction of it (then both are accepted);
//! 2. **it persists for N frames**: `spike_confirm_frames` consecutive ticks of the same venue,
//!    each within the fraction of the held one, counting the first (default 2: the held tick
//!    and one more; 1 turns holding off);
//! 3. **it persists for T**: with `spike_confirm_after` set, a tick of the same venue within the
//!    fraction of the held price arriving at least T after the jump was first held is accepted,
//!    however few frames came (venues that push slowly, e.g. OKX's index once a minute).
//!
//! A tick back within the fraction of the old reference discards the held price; a tick that
//! jumps elsewhere starts a new hold (count 1).

use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;
use tokio::time::Instant;

use super::PriceBoardConfig;

/// A spike fraction in config, read from a decimal string (`"0.5"` = 50 %).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Fraction(#[serde(with = "rust_decimal::serde::str")] pub Decimal);

/// The default number of frames that confirm a held price (the held one and one more).
pub(super) fn default_confirm_frames() -> u32 {
    2
}

/// Whether a held price that has been seen `count` times (this tick included), first at
/// `since`, is accepted at `now` by persistence (rules 2 and 3 of the module docs).
pub(super) fn persists(cfg: &PriceBoardConfig, count: u32, since: Instant, now: Instant) -> bool {
    count >= cfg.spike_confirm_frames
        || cfg
            .spike_confirm_after
            .is_some_and(|t: Duration| now.saturating_duration_since(since) >= t)
}

impl PriceBoardConfig {
    /// What is wrong with the spike settings, as `(key, message)` under `[prices]`: every
    /// fraction must be above 0 and `spike_confirm_frames` at least 1.
    pub fn spike_problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (id, f) in &self.instrument_spike_fraction {
            if f.0 <= Decimal::ZERO {
                out.push((
                    "instrument_spike_fraction",
                    format!("{id}: must be above 0 (\"0.5\" = a 50 % jump is held)"),
                ));
            }
        }
        for (v, f) in &self.venue_spike_fraction {
            if f.0 <= Decimal::ZERO {
                out.push((
                    "venue_spike_fraction",
                    format!("{v}: must be above 0 (\"0.5\" = a 50 % jump is held)"),
                ));
            }
        }
        if self.spike_confirm_frames == 0 {
            out.push((
                "spike_confirm_frames",
                "must be at least 1 (1 = accept every jump at once; 2 = the held tick and one more)"
                    .to_string(),
            ));
        }
        out
    }
}
