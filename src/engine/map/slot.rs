//! One position or collateral balance with its cached contributions, in 48 bytes.
//!
//! A slot holds five `Decimal`s: quantity, entry price, the price it was valued at, and its
//! equity and MM contributions. Kept as `Decimal`s they took 80 of the slot's 88 bytes, most of
//! it zeros: a `Decimal` is a 96-bit mantissa and a flags word, and a quantity, a price or a
//! contribution of any account this daemon will watch has a mantissa that fits 64 bits. So a
//! slot keeps each value as its 64-bit magnitude and one byte for its sign and scale — the same
//! value, scale and sign of zero, bit for bit (`narrow_values_are_the_decimal_bit_for_bit`) — and
//! a slot with a value that does not fit keeps all five as `Decimal`s in a side table (below).
//! Nothing is rounded either way; only the storage differs.
//!
//! The instrument, the kind and the "valued" bit sit at fixed offsets after the values, in
//! what would otherwise be padding: a tick reads every holder's slots and compares each one's
//! instrument, so that field must not move with the layout (a 48-byte enum layout tried at
//! stop 31 put it at a tag-dependent offset and cost the eager tick a fifth).
//!
//! # Wide values
//! A slot whose values do not all fit 64 bits (a whale: a contribution past 2⁶⁴ units of the
//! accounting scale, ~18.4 million) keeps its five `Decimal`s in a process-wide table, under a
//! key held in its first magnitude; the slot owns that row (cloning copies it under a new key,
//! dropping removes it). Such slots are rare, and every read of them goes through the table.
//!
//! Smaller slots are fewer bytes per position (issue 10's ≤ 128 B target) and fewer cache lines
//! for a tick to stream through (an eager tick reads every slot of each holder).

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use rust_decimal::Decimal;

use super::{InstrumentIdx, SlotKind, zero_scaled};
use crate::margin::ACCOUNTING_SCALE;
use crate::margin::fixed::Fx;
use crate::model::PositionSide;

/// The five values, in this order.
const QUANTITY: usize = 0;
const ENTRY: usize = 1;
const AT: usize = 2;
const EQUITY: usize = 3;
const MM: usize = 4;

/// The sign bit of a flags byte; the low five bits are the scale (0–28).
const NEGATIVE: u8 = 0x80;

/// The rows of the wide slots, by key (see the module docs).
static WIDE: std::sync::LazyLock<DashMap<u64, [Decimal; 5]>> =
    std::sync::LazyLock::new(DashMap::new);

/// The next wide row's key (never reused).
static NEXT_WIDE: AtomicU64 = AtomicU64::new(0);

/// `meta`: the kind in the low two bits, then the valued bit and the wide bit.
const KIND_BITS: u8 = 0b11;
const VALID: u8 = 0b100;
const WIDE_BIT: u8 = 0b1000;

/// A `Decimal` as its 64-bit magnitude and sign-and-scale byte, when the mantissa fits (the
/// monitor's slots keep their levels this way too).
#[inline(always)]
pub(in crate::engine) fn narrow(d: Decimal) -> Option<(u64, u8)> {
    let u = d.unpack();
    if u.hi != 0 {
        return None;
    }
    // The scale is 0–28: five bits.
    let flags = (u.scale & 0x1F) as u8 | if u.negative { NEGATIVE } else { 0 };
    Some((u64::from(u.mid) << 32 | u64::from(u.lo), flags))
}

/// The `Decimal` [`narrow`] took apart, bit for bit.
#[inline(always)]
pub(in crate::engine) fn widen(mag: u64, flags: u8) -> Decimal {
    let negative = flags & NEGATIVE != 0;
    if mag == 0 && negative {
        return negative_zero(flags);
    }
    // `min`: a scale [`narrow`] stored is at most 28 already.
    let scale = u32::from(flags & 0x1F).min(28);
    Decimal::from_parts(mag as u32, (mag >> 32) as u32, 0, negative, scale)
}

/// Zero with its sign bit set, as arithmetic can leave it (`from_parts` would clear the sign).
#[cold]
fn negative_zero(flags: u8) -> Decimal {
    Decimal::deserialize([
        0,
        0,
        flags & !NEGATIVE,
        NEGATIVE,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ])
}

/// A value taken apart as a slot keeps it (a tick's price, narrowed once for all its slots).
#[derive(Clone, Copy, Debug)]
pub(super) struct Narrowed(u64, u8);

impl Narrowed {
    /// `d` as a slot keeps it; `None` when its mantissa needs more than 64 bits.
    #[inline]
    pub(super) fn of(d: Decimal) -> Option<Self> {
        narrow(d).map(|(m, f)| Narrowed(m, f))
    }
}

/// A narrow value as `Decimal::mantissa` and `Decimal::scale` give it.
#[inline(always)]
fn fx_of(mag: u64, flags: u8) -> Fx {
    let m = i128::from(mag);
    (
        if flags & NEGATIVE != 0 { -m } else { m },
        u32::from(flags & 0x1F),
    )
}

/// One position or collateral balance with its cached contributions.
#[derive(Debug)]
pub(super) struct Slot {
    /// Each value's 64-bit magnitude; a wide slot's key in its table at `[0]`.
    mag: [u64; 5],
    /// Each value's sign-and-scale byte (unused when wide).
    flags: [u8; 5],
    /// Kind, valued, wide ([`KIND_BITS`], [`VALID`], [`WIDE_BIT`]).
    meta: u8,
    /// The instrument (the map holds at most 65,536: [`slot_instrument`]).
    instr: u16,
}

/// The index a slot keeps for instrument `idx`, when it has one (below
/// [`super::MAX_INSTRUMENTS`]).
pub(super) fn slot_instrument(idx: InstrumentIdx) -> Option<u16> {
    const _: () = assert!(super::MAX_INSTRUMENTS == 1 << u16::BITS);
    u16::try_from(idx).ok()
}

fn kind_bits(kind: SlotKind) -> u8 {
    match kind {
        SlotKind::Collateral => 0,
        SlotKind::Position(PositionSide::Both) => 1,
        SlotKind::Position(PositionSide::Long) => 2,
        SlotKind::Position(PositionSide::Short) => 3,
    }
}

impl Clone for Slot {
    fn clone(&self) -> Self {
        let mut c = Slot {
            mag: self.mag,
            flags: self.flags,
            meta: self.meta,
            instr: self.instr,
        };
        if let Some(row) = self.wide_row() {
            c.mag[0] = new_wide(row);
        }
        c
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.is_wide() {
            WIDE.remove(&self.mag[0]);
        }
    }
}

/// Stores a wide row under a new key.
fn new_wide(row: [Decimal; 5]) -> u64 {
    let key = NEXT_WIDE.fetch_add(1, Ordering::Relaxed);
    WIDE.insert(key, row);
    key
}

impl Slot {
    /// A slot not yet valued (price zero, contributions zero at the accounting scale) of
    /// instrument `instr`, which the map resolved and checked ([`slot_instrument`]: an update
    /// naming an instrument past the 65,536th is refused with an error before any slot is
    /// made).
    pub(super) fn new(
        instr: InstrumentIdx,
        kind: SlotKind,
        quantity: Decimal,
        entry: Decimal,
    ) -> Slot {
        debug_assert!(
            slot_instrument(instr).is_some(),
            "instrument {instr} unchecked"
        );
        let mut s = Slot {
            mag: [0; 5],
            flags: [0; 5],
            meta: kind_bits(kind),
            instr: slot_instrument(instr).unwrap_or(u16::MAX),
        };
        let z = zero_scaled();
        for (i, v) in [quantity, entry, Decimal::ZERO, z, z]
            .into_iter()
            .enumerate()
        {
            s.set(i, v);
        }
        s
    }

    /// The instrument.
    #[inline(always)]
    pub(super) fn instr(&self) -> InstrumentIdx {
        InstrumentIdx::from(self.instr)
    }

    /// Position (and its side) or collateral balance.
    #[inline(always)]
    pub(super) fn kind(&self) -> SlotKind {
        match self.meta & KIND_BITS {
            0 => SlotKind::Collateral,
            1 => SlotKind::Position(PositionSide::Both),
            2 => SlotKind::Position(PositionSide::Long),
            _ => SlotKind::Position(PositionSide::Short),
        }
    }

    /// Valued: the contributions are those at [`Slot::at`].
    #[inline(always)]
    pub(super) fn valid(&self) -> bool {
        self.meta & VALID != 0
    }

    fn set_valid(&mut self, valid: bool) {
        if valid {
            self.meta |= VALID;
        } else {
            self.meta &= !VALID;
        }
    }

    #[inline(always)]
    fn is_wide(&self) -> bool {
        self.meta & WIDE_BIT != 0
    }

    /// A copy of the wide row, when the slot is wide.
    #[cold]
    fn wide_row(&self) -> Option<[Decimal; 5]> {
        if !self.is_wide() {
            return None;
        }
        Some(
            WIDE.get(&self.mag[0])
                .map(|r| *r)
                .unwrap_or([Decimal::ZERO; 5]),
        )
    }

    #[inline(always)]
    fn get(&self, i: usize) -> Decimal {
        if self.is_wide() {
            return self
                .wide_row()
                .and_then(|r| r.get(i).copied())
                .unwrap_or_default();
        }
        match (self.mag.get(i), self.flags.get(i)) {
            (Some(&m), Some(&f)) => widen(m, f),
            _ => Decimal::ZERO,
        }
    }

    #[inline(always)]
    fn set(&mut self, i: usize, v: Decimal) {
        if self.is_wide() {
            if let Some(mut row) = WIDE.get_mut(&self.mag[0])
                && let Some(s) = row.get_mut(i)
            {
                *s = v;
            }
            return;
        }
        match narrow(v) {
            Some((m, f)) => {
                if let (Some(ms), Some(fs)) = (self.mag.get_mut(i), self.flags.get_mut(i)) {
                    *ms = m;
                    *fs = f;
                }
            }
            None => {
                let mut row = [Decimal::ZERO; 5];
                for (k, w) in row.iter_mut().enumerate() {
                    *w = if k == i { v } else { self.get(k) };
                }
                self.mag = [new_wide(row), 0, 0, 0, 0];
                self.flags = [0; 5];
                self.meta |= WIDE_BIT;
            }
        }
    }

    /// Position quantity or collateral amount.
    #[inline(always)]
    pub(super) fn quantity(&self) -> Decimal {
        self.get(QUANTITY)
    }
    /// Entry price (positions; zero for balances).
    #[inline(always)]
    pub(super) fn entry(&self) -> Decimal {
        self.get(ENTRY)
    }
    /// The price the contributions were computed at (1 for stables); zero when not valid.
    #[inline(always)]
    pub(super) fn at(&self) -> Decimal {
        self.get(AT)
    }
    /// Contribution to equity (uPnL or haircut value), normalised; zero when not valid.
    #[inline(always)]
    pub(super) fn equity(&self) -> Decimal {
        self.get(EQUITY)
    }
    /// Contribution to MM, normalised; zero when not valid.
    #[inline(always)]
    pub(super) fn mm(&self) -> Decimal {
        self.get(MM)
    }

    pub(super) fn set_quantity(&mut self, v: Decimal) {
        self.set(QUANTITY, v);
    }
    pub(super) fn set_entry(&mut self, v: Decimal) {
        self.set(ENTRY, v);
    }

    /// Stores a valuation: `Some((equity, MM))` at price `at`, or not valued (zeros).
    #[inline(always)]
    pub(super) fn set_value(&mut self, new: Option<(Decimal, Decimal)>, at: Decimal) {
        let (eq, mm) = new.unwrap_or_else(|| (zero_scaled(), zero_scaled()));
        self.set_valid(new.is_some());
        self.set(AT, if self.valid() { at } else { Decimal::ZERO });
        self.set(EQUITY, eq);
        self.set(MM, mm);
        self.narrow_again();
    }

    /// A wide slot whose values all fit again (a whale's uPnL back under 2⁶⁴ units of the
    /// accounting scale, ~18.4 million) goes back to narrow, so one large swing does not keep
    /// it on the `Decimal` path for good.
    fn narrow_again(&mut self) {
        let Some(row) = self.wide_row() else {
            return;
        };
        let mut mag = [0u64; 5];
        let mut flags = [0u8; 5];
        for ((v, m), f) in row.iter().zip(&mut mag).zip(&mut flags) {
            let Some((vm, vf)) = narrow(*v) else {
                return;
            };
            (*m, *f) = (vm, vf);
        }
        WIDE.remove(&self.mag[0]);
        self.meta &= !WIDE_BIT;
        self.mag = mag;
        self.flags = flags;
    }

    /// Quantity and entry taken apart (`Decimal::mantissa`, `Decimal::scale`), when narrow.
    #[inline(always)]
    pub(super) fn position_fx(&self) -> Option<(Fx, Fx)> {
        if self.is_wide() {
            return None;
        }
        let ([q, e, ..], [qf, ef, ..]) = (self.mag, self.flags);
        Some((fx_of(q, qf), fx_of(e, ef)))
    }

    /// The equity and MM contributions' mantissas when the slot is valued and both are narrow
    /// at [`ACCOUNTING_SCALE`] (as every valuation leaves them).
    #[inline(always)]
    pub(super) fn contributions_m(&self) -> Option<(i128, i128)> {
        // Valued and not wide: one test of both bits.
        if self.meta & (VALID | WIDE_BIT) != VALID {
            return None;
        }
        let ([.., eq, mm], [.., eqf, mmf]) = (self.mag, self.flags);
        let (eq, eqs) = fx_of(eq, eqf);
        let (mm, mms) = fx_of(mm, mmf);
        (eqs == ACCOUNTING_SCALE && mms == ACCOUNTING_SCALE).then_some((eq, mm))
    }

    /// [`Slot::set_value`] of a valuation given as non-zero mantissas at [`ACCOUNTING_SCALE`]
    /// at a narrowed price, when both fit narrow; `false` (nothing changed) when one does not
    /// or the slot is wide.
    #[inline(always)]
    pub(super) fn set_value_m(&mut self, eq: i128, mm: i128, at: Narrowed) -> bool {
        let (Ok(eqm), Ok(mmm)) = (
            u64::try_from(eq.unsigned_abs()),
            u64::try_from(mm.unsigned_abs()),
        ) else {
            return false;
        };
        if self.is_wide() {
            return false;
        }
        let sign = |m: i128| if m < 0 { NEGATIVE } else { 0 };
        let scale = ACCOUNTING_SCALE as u8;
        let ([.., a, e, m], [.., af, ef, mf]) = (&mut self.mag, &mut self.flags);
        (*a, *af) = (at.0, at.1);
        (*e, *ef) = (eqm, scale | sign(eq));
        (*m, *mf) = (mmm, scale | sign(mm));
        self.meta |= VALID;
        true
    }

    /// The slot's values are kept narrow (no box).
    #[cfg(test)]
    pub(super) fn is_narrow(&self) -> bool {
        !self.is_wide()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decimal(hi: u32, mid: u32, lo: u32, negative: bool, scale: u32) -> Decimal {
        // `from_parts` clears the sign of zero; keep it, as arithmetic can leave it.
        let mut b = Decimal::from_parts(lo, mid, hi, false, scale).serialize();
        if negative {
            b[3] |= NEGATIVE;
        }
        Decimal::deserialize(b)
    }

    #[test]
    fn a_slot_is_48_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 48);
    }

    /// Kind, instrument and "valued" read back through every change, narrow and wide; a wide
    /// slot owns its row of the table: a clone gets a row of its own, dropping the clone
    /// removes only that one, and going narrow again removes the slot's.
    #[test]
    fn kind_instrument_and_wide_rows_are_the_slot_s_own() {
        assert_eq!(slot_instrument(65_535), Some(u16::MAX));
        assert_eq!(slot_instrument(65_536), None);
        let kinds = [
            (SlotKind::Collateral, 0),
            (SlotKind::Position(PositionSide::Both), 1),
            (SlotKind::Position(PositionSide::Long), 65_535),
            (SlotKind::Position(PositionSide::Short), 300),
        ];
        let eq = Decimal::new(-1_234_567, 4);
        for (kind, instr) in kinds {
            let mut s = Slot::new(instr, kind, Decimal::new(-15, 1), Decimal::ONE);
            assert_eq!(
                (s.instr(), s.kind(), s.valid(), s.is_narrow()),
                (instr, kind, false, true)
            );
            s.set_value(Some((eq, Decimal::MAX)), Decimal::TWO);
            assert_eq!(
                (s.instr(), s.kind(), s.valid(), s.is_narrow()),
                (instr, kind, true, false)
            );
            let row = s.mag[0];
            assert!(WIDE.contains_key(&row));
            let c = s.clone();
            let copy = c.mag[0];
            assert_ne!(copy, row);
            assert_eq!((c.instr(), c.kind(), c.valid()), (instr, kind, true));
            assert_eq!(
                (c.mm(), c.equity().serialize()),
                (Decimal::MAX, eq.serialize())
            );
            drop(c);
            assert!(!WIDE.contains_key(&copy) && WIDE.contains_key(&row));
            assert_eq!((s.mm(), s.quantity()), (Decimal::MAX, Decimal::new(-15, 1)));
            s.set_value(None, Decimal::ONE);
            assert!(!WIDE.contains_key(&row));
            assert_eq!(
                (s.instr(), s.kind(), s.valid(), s.is_narrow()),
                (instr, kind, false, true)
            );
            assert_eq!(s.quantity().serialize(), Decimal::new(-15, 1).serialize());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Every value a slot is given reads back bit for bit (flags and mantissa), narrow or
        /// wide, whichever field it is and whatever the other fields hold; a value needing more
        /// than 64 bits makes the slot wide without changing the others.
        #[test]
        fn narrow_values_are_the_decimal_bit_for_bit(
            values in proptest::collection::vec(
                (0u32..4, any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>(), 0u32..=28),
                1..12,
            ),
            fields in proptest::collection::vec(0usize..5, 12),
        ) {
            let mut slot = Slot::new(3, SlotKind::Collateral, Decimal::ZERO, Decimal::ZERO);
            let mut expected = [Decimal::ZERO, Decimal::ZERO, Decimal::ZERO, zero_scaled(), zero_scaled()];
            for (&(width, hi, mid, lo, negative, scale), &field) in values.iter().zip(&fields) {
                let (hi, mid, lo) = match width {
                    0 => (0, 0, 0),
                    1 => (0, 0, lo),
                    2 => (0, mid, lo),
                    _ => (hi.max(1), mid, lo),
                };
                let v = decimal(hi, mid, lo, negative, scale);
                let was_narrow = slot.is_narrow();
                slot.set(field, v);
                expected[field] = v;
                prop_assert_eq!(slot.is_narrow(), was_narrow && hi == 0);
                for (k, e) in expected.iter().enumerate() {
                    prop_assert_eq!(slot.get(k).serialize(), e.serialize());
                }
            }
            prop_assert_eq!(slot.instr(), 3);
        }
    }

    #[test]
    fn a_valuation_is_stored_and_cleared() {
        let mut s = Slot::new(
            0,
            SlotKind::Collateral,
            Decimal::new(-15, 1),
            Decimal::new(60_000, 0),
        );
        assert!(!s.valid());
        assert_eq!(s.quantity().serialize(), Decimal::new(-15, 1).serialize());
        assert_eq!(s.entry().serialize(), Decimal::new(60_000, 0).serialize());
        assert_eq!(s.equity().serialize(), zero_scaled().serialize());
        let eq = Decimal::new(-1_234_567, 4);
        let mm = Decimal::MAX; // 96 bits: the slot goes wide
        s.set_value(Some((eq, mm)), Decimal::new(59_000, 1));
        assert!(s.valid() && !s.is_narrow());
        assert_eq!(
            (s.at(), s.equity().serialize(), s.mm()),
            (Decimal::new(59_000, 1), eq.serialize(), Decimal::MAX)
        );
        assert_eq!(s.quantity().serialize(), Decimal::new(-15, 1).serialize());
        s.set_value(None, Decimal::ONE);
        assert!(!s.valid());
        // Every value fits again: narrow again, the same values.
        assert!(s.is_narrow());
        assert_eq!(s.quantity().serialize(), Decimal::new(-15, 1).serialize());
        // A quantity of 96 bits keeps its slot wide whatever its figures.
        let mut whale = Slot::new(0, SlotKind::Collateral, Decimal::MAX, Decimal::ONE);
        whale.set_value(Some((eq, eq)), Decimal::ONE);
        assert!(!whale.is_narrow());
        assert_eq!((whale.quantity(), whale.mm()), (Decimal::MAX, eq));
        assert_eq!(
            (s.at(), s.equity().serialize(), s.mm().serialize()),
            (
                Decimal::ZERO,
                zero_scaled().serialize(),
                zero_scaled().serialize()
            )
        );
    }
}
