//! The distance index: which accounts a price move can actually change.
//!
//! Revaluing every holder of an instrument on every tick costs O(holders) — at 100k accounts
//! that is ~16 ms per BTC tick, and an alert for one account waits behind it. Most accounts sit
//! far from their next level, and a small move cannot change their monitor state. This index
//! (the "index accounts by how far each price may move" step of `design.md`) keeps, per
//! account, the price band inside which its state provably cannot change, and a tick wakes only
//! the accounts whose band it leaves.
//!
//! # The bound
//! Between two valuations, the account's equity `E` and maintenance margin `MM` move by at most
//! a sum of per-slot terms, each linear in its price move `|Δpᵢ|`:
//! - linear contract (quantity `q`, contract size `cs`): `|ΔuPnL| ≤ |q|·cs·|Δp|` and
//!   `|ΔMM| ≤ |q|·cs·max(mmr)·|Δp| + J`, where `J` is the sum of the tier table's jumps (zero for
//!   the venues' continuous tables, whose `cum` is built to make `MM` continuous);
//! - inverse contract (entry `EP`): `uPnL = q·cs·(p/EP − 1)` gives `|ΔuPnL| ≤ |q|·cs/EP·|Δp|`, and
//!   `MM = face·mmr − cum·p` has slope `−cum` on each tier, so `|ΔMM| ≤ max|cum|·|Δp|` when the
//!   coin-notional tiers are continuous (otherwise its holders are always revalued);
//! - collateral: `|ΔE| ≤ |haircut amount|·|Δp|`; stablecoins never move.
//!
//! The monitor's state holds while the ratio stays in its quiet range `[floor, ceiling)`
//! ([`crate::engine::monitor::Monitor::quiet_range`]). For the ceiling `U` the state is safe while
//! `U·E − MM > 0`; that slack shrinks by at most `Σᵢ (U·aᵢ + bᵢ)·|Δpᵢ| + Σ J`. For the floor `D`
//! the slack is `MM − D·E`. Sharing the slack as one fractional move `δ` for every price,
//! `δ = slack / Σᵢ (L·aᵢ + bᵢ)·pᵢ` (the smaller over both sides), no state change is possible
//! while every price stays strictly inside `pᵢ·(1 ± δ)`. `δ` is shrunk by a relative `10⁻⁶` and
//! the slack by a margin for the 12-place rounding of the cached figures, and the band ends are
//! rounded inwards, so every approximation errs towards waking an account.
//!
//! # What this changes and what it keeps
//! - A tick ([`Engine::on_prices`](crate::engine::Engine::on_prices)) only sets the engine price ([`AccountMap::set_price`]); the woken
//!   accounts — out of band, or *eager* (no band: incomplete, zero slack, no known bound) — are
//!   brought to the current prices with [`AccountMap::materialise`] and evaluated. Every other
//!   account's caches stay at the prices they were valued at, slot by slot, and still equal a
//!   from-scratch recomputation at *those* prices; reads that rank accounts materialise first.
//! - The monitor sees exactly the crossings it would see if every holder were revalued on every
//!   tick: the property test `tests/it/engine/index_props.rs` runs both engines side by side on random
//!   ticks and account updates and compares every event.
//! - The index is owned by the engine task (`&mut self`, no locks). Call [`DistanceIndex::track`]
//!   after every account update and [`DistanceIndex::forget`] after a removal.
//!
//! # Storage
//! Per instrument, the eager holders and the banded holders ordered by their band ends as
//! fixed-point integers, never wider than the exact band (`index/store.rs`). A step's changes are
//! queued and applied at once: when they touch a large share of an instrument's holders (a
//! correlated move, the first build), its ordered sets are rebuilt from sorted input rather than
//! edited key by key.
//!
//! # Metrics
//! `liqwatch_engine_woken_accounts_total` (accounts revalued by ticks), gauge
//! `liqwatch_engine_banded_accounts` (accounts with a band; the rest are revalued on every tick
//! of their instruments).

mod store;

use rust_decimal::{Decimal, RoundingStrategy};

use store::{FixedBand, PriceKey, Store};

use crate::engine::map::{
    AccountKey, AccountMap, AccountView, InstrumentIdx, InstrumentTable, SlotValuation, Touched,
};
use crate::engine::monitor::distance::ShockQuiet;
use crate::engine::monitor::{Monitor, QuietRange};

pub mod distance; // bands for the distance levels (`warn_within_shock`)
use crate::margin;
use crate::model::{Instrument, InstrumentId, MarginTier};

/// The largest fractional move a band allows, whatever the slack.
pub const MAX_MOVE: Decimal = Decimal::from_parts(5, 0, 0, false, 1);

/// Places the band ends are rounded to (inwards); the fixed-point storage keeps them exactly.
const BAND_SCALE: u32 = store::FIXED_SCALE;

/// How an instrument's price moves an account's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sensitivity {
    /// A stablecoin: its price never moves.
    Fixed,
    /// Linear contract.
    Linear {
        cs: Decimal,
        max_mmr: Decimal,
        jumps: Decimal,
    },
    /// Inverse contract with continuous coin-notional tiers.
    Inverse { cs: Decimal, max_cum: Decimal },
    /// Collateral asset (linear in its price).
    Collateral,
    /// No bound is known: holders are revalued on every tick.
    Unbounded,
}

/// `Σ |MM just below floor − MM at floor|` over the tier boundaries (`None` on overflow).
fn tier_jumps(tiers: &[MarginTier]) -> Option<Decimal> {
    let mut total = Decimal::ZERO;
    for w in tiers.windows(2) {
        let (lo, hi) = (&w[0], &w[1]);
        let f = hi.notional_floor;
        let left = f.checked_mul(lo.mmr)?.checked_sub(lo.cum)?;
        let right = f.checked_mul(hi.mmr)?.checked_sub(hi.cum)?;
        total = total.checked_add(left.checked_sub(right)?.abs())?;
    }
    Some(total)
}

fn sensitivity(inst: &Instrument) -> Sensitivity {
    if inst.stable {
        return Sensitivity::Fixed;
    }
    if !inst.kind.is_contract() {
        return Sensitivity::Collateral;
    }
    if inst.tiers.is_empty() || !inst.margin.is_plain() {
        // Venue-specific MM shapes (`MarginOptions`) have no bound here: revalue on every tick.
        return Sensitivity::Unbounded;
    }
    let max_mmr = inst.tiers.iter().map(|t| t.mmr).max().unwrap_or_default();
    let max_cum = inst
        .tiers
        .iter()
        .map(|t| t.cum.abs())
        .max()
        .unwrap_or_default();
    match tier_jumps(&inst.tiers) {
        None => Sensitivity::Unbounded,
        Some(j) if inst.kind.is_inverse() => {
            if j.is_zero() {
                Sensitivity::Inverse {
                    cs: inst.contract_size,
                    max_cum,
                }
            } else {
                Sensitivity::Unbounded
            }
        }
        Some(jumps) => Sensitivity::Linear {
            cs: inst.contract_size,
            max_mmr,
            jumps,
        },
    }
}

/// One slot's sensitivity: `|ΔE| ≤ a·|Δp|`, `|ΔMM| ≤ b·|Δp| + c`, valued at `price`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// Equity per unit of price move.
    pub a: Decimal,
    /// Maintenance margin per unit of price move.
    pub b: Decimal,
    /// Maintenance-margin jumps the move may cross, whatever its size.
    pub c: Decimal,
    /// The price the slot was valued at.
    pub price: Decimal,
    /// `|equity| + |MM|` of the slot (scales the rounding margin).
    pub magnitude: Decimal,
}

/// The fractional move `δ` every price may make (strictly inside `p·(1 ± δ)`) without the
/// ratio `MM / E` leaving `range`; `None` when no positive move is safe or a figure overflows.
/// Pure: this is the whole of the maths of the index.
pub fn allowed_move(
    equity: Decimal,
    mm: Decimal,
    terms: &[Term],
    range: QuietRange,
) -> Option<Decimal> {
    let mut magnitude = equity.abs().checked_add(mm.abs())?;
    let mut jumps = Decimal::ZERO;
    for t in terms {
        magnitude = magnitude.checked_add(t.magnitude)?;
        jumps = jumps.checked_add(t.c)?;
    }
    let n = Decimal::from(terms.len() as u64 + 1);
    let side = |level: Decimal, slack: Decimal| -> Option<Decimal> {
        // The cached figures are rounded to 12 places (at most 10⁻¹² per slot and figure,
        // before and after); Decimal's own rounding is ~10⁻²⁸ relative. Both are far inside
        // this margin.
        let scale = level.checked_add(Decimal::ONE)?;
        let margin = magnitude
            .checked_mul(Decimal::new(1, 9))?
            .checked_add(n.checked_mul(Decimal::new(1, 10))?)?
            .checked_mul(scale)?;
        let slack = slack.checked_sub(jumps)?.checked_sub(margin)?;
        if slack <= Decimal::ZERO {
            return None;
        }
        let mut weight = Decimal::ZERO;
        for t in terms {
            let w = level
                .checked_mul(t.a)?
                .checked_add(t.b)?
                .checked_mul(t.price)?;
            weight = weight.checked_add(w)?;
        }
        if weight <= Decimal::ZERO {
            return Some(MAX_MOVE);
        }
        Some(slack.checked_div(weight)?.min(MAX_MOVE))
    };
    let mut delta = MAX_MOVE;
    if let Some(u) = range.ceiling {
        let slack = u.checked_mul(equity)?.checked_sub(mm)?;
        delta = delta.min(side(u, slack)?);
    }
    if let Some(d) = range.floor.filter(|d| *d > Decimal::ZERO) {
        // `MM − D·E > 0` implies `ratio ≥ D` only while there is exposure: with `MM = 0` the
        // ratio is 0 whatever the equity (`MarginRatio::compute`). A band keeps every price
        // positive, so a positive MM stays positive inside it; with no MM, no band.
        if mm <= Decimal::ZERO {
            return None;
        }
        let slack = mm.checked_sub(d.checked_mul(equity)?)?;
        delta = delta.min(side(d, slack)?);
    }
    let delta = delta.checked_mul(Decimal::new(999_999, 6))?;
    (delta > Decimal::ZERO).then_some(delta)
}

/// The band `(lo, hi)` of a price for a move `δ`, rounded inwards; `None` when empty.
pub fn band(price: Decimal, delta: Decimal) -> Option<(Decimal, Decimal)> {
    let lo = price
        .checked_mul(Decimal::ONE.checked_sub(delta)?)?
        .round_dp_with_strategy(BAND_SCALE, RoundingStrategy::ToPositiveInfinity);
    let hi = price
        .checked_mul(Decimal::ONE.checked_add(delta)?)?
        .round_dp_with_strategy(BAND_SCALE, RoundingStrategy::ToNegativeInfinity);
    (lo < price && price < hi).then_some((lo, hi))
}

struct Tracked {
    /// The moving instruments the account holds, ascending.
    instrs: Box<[InstrumentIdx]>,
    /// Per instrument (same order), the band; `None` while eager.
    bands: Option<Box<[FixedBand]>>,
}

impl Tracked {
    fn eager(instrs: Box<[InstrumentIdx]>) -> Self {
        Tracked {
            instrs,
            bands: None,
        }
    }
}

/// Per instrument, the accounts a tick must wake. Owned by the engine task.
pub struct DistanceIndex {
    sens: Vec<Sensitivity>,
    store: Store,
    accounts: Vec<Option<Tracked>>,
    banded: usize,
    /// Scratch space for [`DistanceIndex::wake`].
    scratch: Vec<AccountKey>,
}

impl DistanceIndex {
    /// An empty index over the map's instruments.
    pub fn new(table: &InstrumentTable) -> Self {
        DistanceIndex {
            sens: table.iter().map(sensitivity).collect(),
            store: Store::new(table.len()),
            accounts: Vec::new(),
            banded: 0,
            scratch: Vec::new(),
        }
    }

    /// An index tracking every account of the map (all eager until evaluated and re-banded).
    pub fn for_map(map: &AccountMap) -> Self {
        let mut index = DistanceIndex::new(&map.instruments());
        for key in map.keys() {
            let instrs = map.read_key(key, |v| index.moving_instruments(v));
            index.replace(key, instrs.map(Tracked::eager));
        }
        index.store.flush();
        index
    }

    /// Takes the new terms of the instrument at `idx` (its tiers set the bound; see
    /// [`crate::engine::Engine::replace_instruments`]). Re-band its holders afterwards.
    pub fn set_terms(&mut self, idx: InstrumentIdx, inst: &Instrument) {
        if let Some(s) = self.sens.get_mut(idx as usize) {
            *s = sensitivity(inst);
        }
    }

    /// Accounts tracked, and of those, banded.
    pub fn counts(&self) -> (usize, usize) {
        let tracked = self.accounts.iter().filter(|a| a.is_some()).count();
        (tracked, self.banded)
    }

    /// The band of an account on an instrument, if it has one.
    pub fn band_of(
        &self,
        key: AccountKey,
        instrument: InstrumentIdx,
    ) -> Option<(Decimal, Decimal)> {
        let t = self.accounts.get(key as usize)?.as_ref()?;
        let i = t.instrs.binary_search(&instrument).ok()?;
        t.bands.as_ref()?.get(i).map(|b| b.to_decimal())
    }

    /// (Re)registers an account after it was created or changed: it becomes eager on the
    /// moving instruments it now holds until it is re-banded. Forgets it when it is gone.
    pub fn track(&mut self, map: &AccountMap, key: AccountKey) {
        self.store.flush();
        let instrs = map.read_key(key, |v| self.moving_instruments(v));
        self.replace(key, instrs.map(Tracked::eager));
        self.store.flush();
    }

    /// Drops an account (after it was removed from the map).
    pub fn forget(&mut self, key: AccountKey) {
        self.store.flush();
        self.replace(key, None);
        self.store.flush();
    }

    fn moving_instruments(&self, v: &AccountView<'_>) -> Box<[InstrumentIdx]> {
        let mut instrs: Vec<InstrumentIdx> = v
            .valuation()
            .map(|s| s.instrument)
            .filter(|i| self.sens.get(*i as usize) != Some(&Sensitivity::Fixed))
            .collect();
        instrs.sort_unstable();
        instrs.dedup();
        instrs.into_boxed_slice()
    }

    /// Queues the account's entries out and its new ones (`None`: forgotten) in. Between two
    /// flushes of the store, call it at most once per account (the store queues net changes).
    fn replace(&mut self, key: AccountKey, new: Option<Tracked>) {
        let i = key as usize;
        if new.is_some() && self.accounts.len() <= i {
            self.accounts.resize_with(i + 1, || None);
        }
        let Some(slot) = self.accounts.get_mut(i) else {
            return;
        };
        if let Some(old) = slot.take() {
            match &old.bands {
                Some(bands) => {
                    self.banded = self.banded.saturating_sub(1);
                    for (idx, band) in old.instrs.iter().zip(bands.iter()) {
                        self.store.band(*idx, key, *band, false);
                    }
                }
                None => {
                    for idx in old.instrs.iter() {
                        self.store.eager(*idx, key, false);
                    }
                }
            }
        }
        let Some(new) = new else {
            return;
        };
        match &new.bands {
            Some(b) => {
                self.banded += 1;
                for (idx, band) in new.instrs.iter().zip(b.iter()) {
                    self.store.band(*idx, key, *band, true);
                }
            }
            None => {
                for idx in new.instrs.iter() {
                    self.store.eager(*idx, key, true);
                }
            }
        }
        *slot = Some(new);
    }

    /// The accounts a new `price` of `instrument` may change: every eager holder and every
    /// banded holder whose band the price leaves (those become eager). Appends to `out`
    /// (unsorted; an account may appear more than once). The changes are queued: call
    /// [`DistanceIndex::flush`] after the step's last `wake`, before anything else.
    pub fn wake(&mut self, instrument: InstrumentIdx, price: Decimal, out: &mut Vec<AccountKey>) {
        let mut leaving = std::mem::take(&mut self.scratch);
        leaving.clear();
        self.store
            .wake(instrument, PriceKey::new(price), out, &mut leaving);
        leaving.sort_unstable();
        leaving.dedup();
        for key in &leaving {
            self.unband(*key);
        }
        out.extend(leaving.iter().copied());
        self.scratch = leaving;
    }

    /// Queues a banded account's band out and makes it eager; nothing when it is not banded
    /// (an earlier `wake` of the step already did it).
    fn unband(&mut self, key: AccountKey) {
        let Some(Some(t)) = self.accounts.get_mut(key as usize) else {
            return;
        };
        let Some(bands) = t.bands.take() else {
            return;
        };
        self.banded = self.banded.saturating_sub(1);
        for (idx, band) in t.instrs.iter().zip(bands.iter()) {
            self.store.band(*idx, key, *band, false);
            self.store.eager(*idx, key, true);
        }
    }

    /// Applies the changes queued by [`DistanceIndex::wake`].
    pub fn flush(&mut self) {
        self.store.flush();
    }

    /// Gives the account a band from its current figures and monitor state, or leaves it
    /// eager when none is safe. Call it after the monitor evaluated the account.
    pub fn rebuild(&mut self, map: &AccountMap, monitor: &Monitor, key: AccountKey) {
        self.rebuild_many(map, monitor, vec![key]);
    }

    /// [`DistanceIndex::rebuild`] for many accounts at once: their sets are edited once, in
    /// bulk when the accounts are a large share of an instrument's holders.
    pub fn rebuild_many(&mut self, map: &AccountMap, monitor: &Monitor, mut keys: Vec<AccountKey>) {
        self.store.flush();
        keys.sort_unstable();
        keys.dedup();
        // The new bands are computed on every core when there are many (reads only), then
        // stored in key order.
        let found = crate::engine::par::map_in_order(&keys, |key| {
            let range = monitor.quiet_range(map, *key);
            let shock = monitor.shock_quiet(map, *key);
            map.read_key(*key, |v| {
                let instrs = self.moving_instruments(v);
                let bands = range.and_then(|r| self.bands_for(v, &instrs, r, shock));
                Tracked { instrs, bands }
            })
        });
        for (key, found) in keys.into_iter().zip(found) {
            self.replace(key, found);
        }
        self.store.flush();
    }

    /// The bands of a complete account, one per moving instrument (`instrs` order).
    fn bands_for(
        &self,
        v: &AccountView<'_>,
        instrs: &[InstrumentIdx],
        range: QuietRange,
        shock: Option<ShockQuiet>,
    ) -> Option<Box<[FixedBand]>> {
        if !v.complete() {
            return None;
        }
        let table = v.instruments_table();
        let mut terms: Vec<Term> = Vec::with_capacity(instrs.len() + 2);
        let mut at: Vec<Option<Decimal>> = vec![None; instrs.len()];
        for s in v.valuation() {
            let sens = self.sens.get(s.instrument as usize)?;
            if *sens == Sensitivity::Fixed {
                continue;
            }
            let price = s.at?;
            let i = instrs.binary_search(&s.instrument).ok()?;
            match at.get_mut(i)? {
                Some(p) if *p != price => return None,
                slot => *slot = Some(price),
            }
            terms.push(term(sens, table.get(s.instrument)?, &s, price)?);
        }
        let mut delta = allowed_move(v.equity(), v.maintenance_margin(), &terms, range)?;
        if let Some(q) = shock {
            delta = delta.min(distance::allowed_move(v, &terms, q)?);
        }
        at.into_iter()
            .map(|p| band(p?, delta).and_then(|(lo, hi)| FixedBand::new(lo, hi)))
            .collect::<Option<Vec<_>>>()
            .map(Vec::into_boxed_slice)
    }
}

fn term(sens: &Sensitivity, inst: &Instrument, s: &SlotValuation, price: Decimal) -> Option<Term> {
    let q = s.quantity.abs();
    let (a, b, c) = match sens {
        Sensitivity::Fixed => (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO),
        Sensitivity::Unbounded => return None,
        Sensitivity::Collateral => {
            let hw = margin::haircut_weighted_amount(inst, s.quantity).ok()?;
            (hw.abs(), Decimal::ZERO, Decimal::ZERO)
        }
        Sensitivity::Linear { cs, max_mmr, jumps } => {
            let size = q.checked_mul(*cs)?;
            let c = if q.is_zero() { Decimal::ZERO } else { *jumps };
            (size, size.checked_mul(*max_mmr)?, c)
        }
        Sensitivity::Inverse { cs, max_cum } => {
            let a = if q.is_zero() {
                Decimal::ZERO
            } else {
                if s.entry <= Decimal::ZERO {
                    return None;
                }
                q.checked_mul(*cs)?.checked_div(s.entry)?
            };
            (a, *max_cum, Decimal::ZERO)
        }
    };
    Some(Term {
        a,
        b,
        c,
        price,
        magnitude: s.equity.abs().checked_add(s.maintenance_margin.abs())?,
    })
}

/// Sets each changed price and brings the accounts it may change to the current prices,
/// reporting them into `touched` (cleared first), in key order, each once. `wake` is scratch
/// space. A price the map refuses is logged, counted by the map and skipped.
pub fn wake_and_value<'a>(
    map: &AccountMap,
    index: &mut DistanceIndex,
    changed: impl IntoIterator<Item = (&'a InstrumentId, Decimal)>,
    wake: &mut Vec<AccountKey>,
    touched: &mut Vec<Touched>,
) {
    touched.clear();
    wake.clear();
    for (id, price) in changed {
        match map.set_price(id, price) {
            Ok(true) => {
                if let Some(idx) = map.instruments().index(id) {
                    index.wake(idx, price, wake);
                }
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(instrument = %id, %error, "Price not applied"),
        }
    }
    index.flush();
    wake.sort_unstable();
    wake.dedup();
    // Valued on every core when many are woken (a correlated move), in key order.
    let valued = crate::engine::par::map_in_order(wake, |k| map.materialise(*k));
    touched.extend(valued.into_iter().flatten());
    metrics::counter!("liqwatch_engine_woken_accounts_total").increment(touched.len() as u64);
}

/// After the monitor evaluated `touched`: re-bands each of them.
pub fn rebuild_touched(
    map: &AccountMap,
    monitor: &Monitor,
    index: &mut DistanceIndex,
    touched: &[Touched],
) {
    index.rebuild_many(map, monitor, touched.iter().map(|t| t.key).collect());
    metrics::gauge!("liqwatch_engine_banded_accounts").set(index.banded as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn lin(q: Decimal, p: Decimal, mmr: Decimal) -> Term {
        Term {
            a: q,
            b: q * mmr,
            c: Decimal::ZERO,
            price: p,
            magnitude: Decimal::ZERO,
        }
    }

    /// A healthy account: the move allowed is the slack to the first level over the
    /// sensitivity-weighted exposure (shrunk by the safety factors), and nothing more.
    #[test]
    fn healthy_account_move_is_slack_over_weight() {
        // E = 10,000, MM = 2,000 (ratio 0.2), ceiling 0.8: slack 6,000 (less the margin).
        // One long of 2 BTC at 50,000 with max mmr 0.05: weight (0.8·2 + 0.1)·50,000 = 85,000.
        let terms = [lin(dec!(2), dec!(50000), dec!(0.05))];
        let range = QuietRange {
            floor: None,
            ceiling: Some(dec!(0.8)),
        };
        let d = allowed_move(dec!(10000), dec!(2000), &terms, range).unwrap();
        let exact = dec!(6000) / dec!(85000);
        assert!(d < exact, "{d} must be below {exact}");
        assert!(
            d > exact * dec!(0.9999),
            "{d} too conservative against {exact}"
        );
    }

    /// At the level exactly (no slack), or above it, no band: the account stays eager.
    #[test]
    fn no_slack_no_band() {
        let terms = [lin(dec!(1), dec!(100), dec!(0.01))];
        let at_level = QuietRange {
            floor: None,
            ceiling: Some(dec!(0.5)),
        };
        assert_eq!(allowed_move(dec!(100), dec!(50), &terms, at_level), None);
        assert_eq!(allowed_move(dec!(100), dec!(60), &terms, at_level), None);
        // Negative equity below a ceiling: no band either.
        assert_eq!(allowed_move(dec!(-1), dec!(1), &terms, at_level), None);
    }

    /// In warning, the floor (level − hysteresis) bounds the move too: the nearer side wins.
    #[test]
    fn floor_and_ceiling_take_the_nearer_side() {
        let terms = [lin(dec!(1), dec!(100), dec!(0))];
        // E = 100, MM = 80: ratio 0.8. Ceiling 1.0 → slack 20 over weight 100 → 0.2.
        // Floor 0.75 → slack 80 − 75 = 5 over weight 75 → 0.0667: the floor is nearer.
        let range = QuietRange {
            floor: Some(dec!(0.75)),
            ceiling: Some(dec!(1.0)),
        };
        let d = allowed_move(dec!(100), dec!(80), &terms, range).unwrap();
        assert!(d < dec!(5) / dec!(75) && d > dec!(0.066));
        // A floor at or below zero can never be crossed by a finite ratio ≥ 0.
        let only_ceiling = QuietRange {
            floor: Some(dec!(0)),
            ceiling: Some(dec!(1.0)),
        };
        let d = allowed_move(dec!(100), dec!(80), &terms, only_ceiling).unwrap();
        assert!(d > dec!(0.19) && d < dec!(0.2));
    }

    /// Tier jumps are paid out of the slack; an account with less slack than the jumps stays
    /// eager. Exposure-free accounts get the largest band.
    #[test]
    fn jumps_and_empty_exposure() {
        let mut t = lin(dec!(1), dec!(100), dec!(0));
        t.c = dec!(30);
        let range = QuietRange {
            floor: None,
            ceiling: Some(dec!(1)),
        };
        assert_eq!(allowed_move(dec!(100), dec!(80), &[t], range), None);
        t.c = dec!(10);
        let d = allowed_move(dec!(100), dec!(80), &[t], range).unwrap();
        assert!(d < dec!(0.1) && d > dec!(0.0999));
        let free = allowed_move(dec!(100), dec!(0), &[], range).unwrap();
        assert_eq!(free, MAX_MOVE * dec!(0.999999));
    }

    /// Band ends are rounded inwards and an empty band is refused.
    #[test]
    fn bands_round_inwards() {
        let (lo, hi) = band(dec!(3), dec!(0.1234567890123456789)).unwrap();
        assert!(lo >= dec!(3) * (dec!(1) - dec!(0.1234567890123456789)));
        assert!(hi <= dec!(3) * (dec!(1) + dec!(0.1234567890123456789)));
        assert!(lo.scale() <= BAND_SCALE && hi.scale() <= BAND_SCALE);
        assert_eq!(band(dec!(1), dec!(0.00000000000000000001)), None);
    }

    /// Venue tier tables are continuous (no jumps); a table with a gap is measured.
    #[test]
    fn tier_jumps_measure_discontinuities() {
        let t = |floor: Decimal, cap: Decimal, mmr: Decimal, cum: Decimal| MarginTier {
            notional_floor: floor,
            notional_cap: cap,
            mmr,
            cum,
        };
        // Binance BTCUSDT's first brackets: cum makes MM continuous.
        let cont = [
            t(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
            t(dec!(50000), dec!(500000), dec!(0.005), dec!(50)),
        ];
        assert_eq!(tier_jumps(&cont), Some(dec!(0)));
        let gap = [
            t(dec!(0), dec!(50000), dec!(0.004), dec!(0)),
            t(dec!(50000), dec!(500000), dec!(0.005), dec!(0)),
        ];
        assert_eq!(tier_jumps(&gap), Some(dec!(50)));
    }
}
