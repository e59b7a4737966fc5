//! The distance index's storage: per instrument, the eager holders and the banded holders
//! ordered by the ends of their bands, as fixed-point integers.
//!
//! # Fixed-point band ends, compact keys
//! A band end is an integer count of `10⁻¹⁶` ([`FIXED_SCALE`]), so ordering and range queries
//! are plain integer compares instead of mixed-scale `Decimal` compares. The ends are converted
//! *inwards* (the low end rounded up, the high end down), so the stored band is never wider
//! than the exact one, and then rounded inwards once more to 26 significant bits
//! ([`Code`]: the bit length and the 25 bits below the leading one, relative step ≤ 2⁻²⁵ ≈
//! 3·10⁻⁸ of the price — a band narrower by that wakes its account a hair earlier, never
//! later). The 32-bit code of an end packed with the 32-bit account key is one `u64`
//! (`code << 32 | key`) — half the bytes of the `u128` it was, per entry of two ordered sets
//! per holding. A price is queried through two keys: `p ≤ lo ⇔ ⌈p·10¹⁶⌉ ≤ lo` and
//! `p ≥ hi ⇔ ⌊p·10¹⁶⌋ ≥ hi` (both ends are integers at that scale), and in codes
//! `lo ≥ P ⇔ code(lo) ≥ code⌈P⌉`, `hi ≤ F ⇔ code(hi) ≤ code⌊F⌋` (codes keep order, and every
//! stored end is exactly representable), so a tick wakes exactly the accounts whose stored band
//! [`FixedBand::holds`] says the price left. Ends must lie in `[1, 2⁹⁶)` (prices below
//! ~7.9·10¹²); an account with a band end outside stays eager, and a price outside saturates
//! (see [`PriceKey`]).
//!
//! # Bulk changes
//! Changes are queued per instrument ([`Store::flush`] applies them: removals, then
//! insertions). Each set is [`Blocks`]: sorted blocks read by binary search and slices. When
//! one flush changes a large share of an instrument's entries — a correlated move re-bands most
//! of the book, or the index is built — the blocks are rebuilt in one linear merge instead of
//! O(k log n) edits.

use rust_decimal::{Decimal, RoundingStrategy};

use crate::engine::blocks::Blocks;
use crate::engine::map::{AccountKey, InstrumentIdx};

/// Decimal places of the fixed-point band ends.
pub const FIXED_SCALE: u32 = 16;

/// Band ends are below this in fixed point (codes stay within 32 bits).
const FIXED_LIMIT: u128 = 1 << 96;

/// Bits kept below the leading one of a band end ([`Code`]).
const CODE_BITS: u32 = 25;

/// An order-preserving 32-bit code of a fixed-point value in `[1, 2⁹⁶]`: its bit length − 1
/// above the [`CODE_BITS`] bits below its leading one. Values of at most 26 significant bits
/// are coded exactly; others are rounded down ([`Code::down`]) or up ([`Code::up`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Code(u32);

impl Code {
    /// The largest code whose value is ≤ `v` (`v ≥ 1`).
    fn down(v: u128) -> Self {
        Self::of(v, false)
    }

    /// The smallest code whose value is ≥ `v` (`v ≥ 1`; `v = 0` gives the smallest code).
    fn up(v: u128) -> Self {
        Self::of(v, true)
    }

    fn of(v: u128, up: bool) -> Self {
        if v == 0 {
            return Code(0);
        }
        let exp = 127 - v.leading_zeros();
        let code = if exp <= CODE_BITS {
            // Exact: the bits below the leading one, shifted up into place.
            let m = (v ^ (1u128 << exp)) << (CODE_BITS - exp);
            (exp << CODE_BITS) | m as u32
        } else {
            let shift = exp - CODE_BITS;
            let m = ((v >> shift) & ((1u128 << CODE_BITS) - 1)) as u32;
            let rest = v & ((1u128 << shift) - 1);
            // A carry out of the mantissa moves to the next power of two: still in order.
            ((exp << CODE_BITS) | m) + u32::from(up && rest != 0)
        };
        Code(code)
    }

    /// The value of the code (exact for every code [`Code::of`] gives).
    fn value(self) -> u128 {
        let exp = self.0 >> CODE_BITS;
        let m = u128::from(self.0 & ((1 << CODE_BITS) - 1)) | (1u128 << CODE_BITS);
        if exp >= CODE_BITS {
            m << (exp - CODE_BITS)
        } else {
            m >> (CODE_BITS - exp)
        }
    }
}

/// The band `(lo, hi)` (fixed-point, inwards) rounded inwards to codes; `None` when empty.
fn coded(lo: u128, hi: u128) -> Option<FixedBand> {
    if lo == 0 || hi >= FIXED_LIMIT {
        return None;
    }
    let (lo, hi) = (Code::up(lo).value(), Code::down(hi).value());
    (lo < hi).then_some(FixedBand { lo, hi })
}

/// Queued changes kept allocated between flushes, per set and direction.
const OPS_KEEP: usize = 4_096;

/// A band as fixed-point ends (`10⁻¹⁶` units, each exactly a [`Code`]), never wider than the
/// exact band.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedBand {
    /// Low end, rounded up.
    pub lo: u128,
    /// High end, rounded down.
    pub hi: u128,
}

impl FixedBand {
    /// The fixed-point band of `(lo, hi)`, rounded inwards (tests: the index builds its bands
    /// in `f64`, [`FixedBand::from_units`]); `None` when an end is outside the
    /// representable range or the rounded band is empty.
    #[cfg(test)]
    pub fn new(lo: Decimal, hi: Decimal) -> Option<Self> {
        let lo = fixed(lo, RoundingStrategy::ToPositiveInfinity)?;
        let hi = fixed(hi, RoundingStrategy::ToNegativeInfinity)?;
        coded(lo, hi)
    }

    /// The band of two fixed-point ends already rounded inwards (integral `f64` counts of
    /// `10⁻¹⁶`); `None` when an end is outside the representable range or the band is empty.
    pub fn from_units(lo: f64, hi: f64) -> Option<Self> {
        // 2⁹⁶ is exact in `f64`, and so is the cast of an integral value below it.
        let limit = FIXED_LIMIT as f64;
        if !(lo > 0.0 && lo < hi && hi < limit && lo.fract() == 0.0 && hi.fract() == 0.0) {
            return None;
        }
        coded(lo as u128, hi as u128)
    }

    /// The codes of the ends (exact: every band's ends are codes' values).
    pub fn codes(self) -> (u32, u32) {
        (Code::up(self.lo).0, Code::down(self.hi).0)
    }

    /// The band whose ends are these codes' values (of [`FixedBand::codes`]).
    pub fn from_codes((lo, hi): (u32, u32)) -> Self {
        FixedBand {
            lo: Code(lo).value(),
            hi: Code(hi).value(),
        }
    }

    /// Whether a price is strictly inside the band (what keeps its holder asleep; the store
    /// answers the same question with range queries).
    pub fn holds(self, price: PriceKey) -> bool {
        price.ceil > self.lo && price.floor < self.hi
    }

    /// The band back as `Decimal`s (exact: the ends are integers at [`FIXED_SCALE`]).
    pub fn to_decimal(self) -> (Decimal, Decimal) {
        let d = |v: u128| {
            // `v < 2⁹⁶` fits `Decimal`'s mantissa.
            Decimal::try_from_i128_with_scale(v as i128, FIXED_SCALE).unwrap_or(Decimal::MAX)
        };
        (d(self.lo), d(self.hi))
    }
}

/// `d` as a count of `10⁻¹⁶`, rounded with `strategy`; `None` when negative or ≥ 2⁹⁶.
fn fixed(d: Decimal, strategy: RoundingStrategy) -> Option<u128> {
    let r = d.round_dp_with_strategy(FIXED_SCALE, strategy);
    let m = u128::try_from(r.mantissa()).ok()?;
    let v = m.checked_mul(10u128.checked_pow(FIXED_SCALE.checked_sub(r.scale())?)?)?;
    (v < FIXED_LIMIT).then_some(v)
}

/// `d` as a count of `10⁻¹⁶` rounded with `strategy`, saturated to `[0, 2⁹⁶]`.
fn fixed_saturating(d: Decimal, strategy: RoundingStrategy) -> u128 {
    // At or below zero both keys are 0: below every low end (> 0), not above any high end.
    if d <= Decimal::ZERO {
        return 0;
    }
    fixed(d, strategy).unwrap_or(FIXED_LIMIT)
}

/// A price as the two fixed-point keys the band tests use. Saturated: a price at or above 2⁹⁶
/// units leaves every band upwards and none downwards; a price at or below zero the reverse —
/// exactly what the `Decimal` tests give, since every stored end lies in `(0, 2⁹⁶)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceKey {
    /// `⌈p·10¹⁶⌉`, saturated.
    pub ceil: u128,
    /// `⌊p·10¹⁶⌋`, saturated.
    pub floor: u128,
}

impl PriceKey {
    /// The keys of a price.
    pub fn new(price: Decimal) -> Self {
        PriceKey {
            ceil: fixed_saturating(price, RoundingStrategy::ToPositiveInfinity),
            floor: fixed_saturating(price, RoundingStrategy::ToNegativeInfinity),
        }
    }
}

fn pack(code: Code, key: AccountKey) -> u64 {
    u64::from(code.0) << 32 | u64::from(key)
}

fn key_of(packed: u64) -> AccountKey {
    // The low 32 bits are the key.
    (packed & u64::from(u32::MAX)) as AccountKey
}

/// Queued changes to one ordered set.
struct Ops<T> {
    rm: Vec<T>,
    add: Vec<T>,
}

impl<T> Default for Ops<T> {
    fn default() -> Self {
        Ops {
            rm: Vec::new(),
            add: Vec::new(),
        }
    }
}

impl<T: Ord + Copy> Ops<T> {
    /// Applies the removals, then the insertions ([`Blocks::apply_keyed`]: each set holds one
    /// entry per account, `key` of it, and a removal is that entry).
    fn apply(&mut self, set: &mut Blocks<T>, key: impl Fn(&T) -> u32) {
        set.apply_keyed(&mut self.rm, &mut self.add, key);
        // A bulk step (a crash, the first build) queues up to every holder: do not keep that
        // much capacity around for the small steps that follow.
        for v in [&mut self.rm, &mut self.add] {
            if v.capacity() > OPS_KEEP {
                *v = Vec::new();
            }
        }
    }

    fn len(&self) -> usize {
        self.rm.len() + self.add.len()
    }

    fn is_empty(&self) -> bool {
        self.rm.is_empty() && self.add.is_empty()
    }
}

/// Queued changes at which [`Store::flush`] splits its sets over the cores.
const PARALLEL_FLUSH: usize = 16_384;

/// One set and its queued changes, for [`Store::flush`].
enum Flush<'a> {
    Keys(&'a mut Ops<AccountKey>, &'a mut Blocks<AccountKey>),
    Ends(&'a mut Ops<u64>, &'a mut Blocks<u64>),
}

impl Flush<'_> {
    /// What applying costs, roughly: the changes, and the set's size when it is rebuilt.
    fn cost(&self) -> usize {
        let (k, n, rebuilds) = match self {
            Flush::Keys(ops, set) => (ops.len(), set.len(), set.rebuilds_for(ops.len())),
            Flush::Ends(ops, set) => (ops.len(), set.len(), set.rebuilds_for(ops.len())),
        };
        if rebuilds { k + n } else { k }
    }

    fn run(self) {
        match self {
            Flush::Keys(ops, set) => ops.apply(set, |k| *k),
            Flush::Ends(ops, set) => ops.apply(set, |p| key_of(*p)),
        }
    }
}

/// One instrument's holders.
#[derive(Default)]
struct InstrBands {
    /// Holders without a band: woken by every tick.
    eager: Blocks<AccountKey>,
    /// Banded holders by the low end of their band (`code(lo) << 32 | key`).
    lo: Blocks<u64>,
    /// Banded holders by the high end of their band (`code(hi) << 32 | key`).
    hi: Blocks<u64>,
    eager_ops: Ops<AccountKey>,
    lo_ops: Ops<u64>,
    hi_ops: Ops<u64>,
}

impl InstrBands {
    /// Changes queued for this instrument's sets.
    fn queued(&self) -> usize {
        self.eager_ops.len() + self.lo_ops.len() + self.hi_ops.len()
    }
}

/// Every instrument's holders, with the changes queued since the last [`Store::flush`].
///
/// Queued changes must be net changes per account: between two flushes, each account changes
/// at most once (its old entries out, its new entries in), which the index guarantees.
pub struct Store {
    instr: Vec<InstrBands>,
    /// Instruments with queued changes.
    dirty: Vec<InstrumentIdx>,
}

impl Store {
    /// Empty sets for `n` instruments.
    pub fn new(n: usize) -> Self {
        Store {
            instr: (0..n).map(|_| InstrBands::default()).collect(),
            dirty: Vec::new(),
        }
    }

    fn queue(&mut self, idx: InstrumentIdx) -> Option<&mut InstrBands> {
        let ib = self.instr.get_mut(idx as usize)?;
        if ib.eager_ops.is_empty() && ib.lo_ops.is_empty() && ib.hi_ops.is_empty() {
            self.dirty.push(idx);
        }
        Some(ib)
    }

    /// Queues the account as an eager holder of `idx` (`add`) or no longer one.
    pub fn eager(&mut self, idx: InstrumentIdx, key: AccountKey, add: bool) {
        if let Some(ib) = self.queue(idx) {
            if add {
                ib.eager_ops.add.push(key);
            } else {
                ib.eager_ops.rm.push(key);
            }
        }
    }

    /// Queues the account's band on `idx` in (`add`) or out (tests; the index keeps its bands
    /// coded and queues them with [`Store::band_coded`]).
    #[cfg(test)]
    pub fn band(&mut self, idx: InstrumentIdx, key: AccountKey, band: FixedBand, add: bool) {
        self.band_coded(idx, key, band.codes(), add);
    }

    /// Queues the account's band on `idx` — the band whose ends have these codes
    /// ([`FixedBand::codes`]) — in (`add`) or out.
    pub fn band_coded(
        &mut self,
        idx: InstrumentIdx,
        key: AccountKey,
        codes: (u32, u32),
        add: bool,
    ) {
        if let Some(ib) = self.queue(idx) {
            let (lo, hi) = (pack(Code(codes.0), key), pack(Code(codes.1), key));
            if add {
                ib.lo_ops.add.push(lo);
                ib.hi_ops.add.push(hi);
            } else {
                ib.lo_ops.rm.push(lo);
                ib.hi_ops.rm.push(hi);
            }
        }
    }

    /// Applies every queued change. A large batch (a correlated move re-bands much of the
    /// book) rebuilds its sets on every core: the sets are independent (three per instrument).
    pub fn flush(&mut self) {
        let queued: usize = (self.dirty.iter())
            .filter_map(|&idx| self.instr.get(idx as usize))
            .map(|ib| ib.queued())
            .sum();
        if queued < PARALLEL_FLUSH {
            for idx in self.dirty.drain(..) {
                if let Some(ib) = self.instr.get_mut(idx as usize) {
                    ib.eager_ops.apply(&mut ib.eager, |k| *k);
                    ib.lo_ops.apply(&mut ib.lo, |p| key_of(*p));
                    ib.hi_ops.apply(&mut ib.hi, |p| key_of(*p));
                }
            }
            return;
        }
        let mut dirty = vec![false; self.instr.len()];
        for idx in self.dirty.drain(..) {
            if let Some(d) = dirty.get_mut(idx as usize) {
                *d = true;
            }
        }
        let mut jobs: Vec<Flush<'_>> = Vec::new();
        for (ib, _) in self.instr.iter_mut().zip(&dirty).filter(|(_, d)| **d) {
            jobs.push(Flush::Keys(&mut ib.eager_ops, &mut ib.eager));
            jobs.push(Flush::Ends(&mut ib.lo_ops, &mut ib.lo));
            jobs.push(Flush::Ends(&mut ib.hi_ops, &mut ib.hi));
        }
        crate::engine::par::for_each_balanced(jobs, Flush::cost, PARALLEL_FLUSH, Flush::run);
    }

    /// Appends the eager holders of `idx` to `eager` and the banded holders whose band `price`
    /// is not strictly inside to `leaving` (as of the last flush).
    pub fn wake(
        &self,
        idx: InstrumentIdx,
        price: PriceKey,
        eager: &mut Vec<AccountKey>,
        leaving: &mut Vec<AccountKey>,
    ) {
        let Some(ib) = self.instr.get(idx as usize) else {
            return;
        };
        ib.eager.extend_all(eager, |k| k);
        // `p ≤ lo`: every entry with `lo ≥ ⌈p⌉`, i.e. `code(lo) ≥ code⌈p⌉` rounded up (none
        // when `⌈p⌉` saturated above every end).
        if price.ceil < FIXED_LIMIT {
            let from = pack(Code::up(price.ceil), 0);
            ib.lo.extend_from(from, leaving, key_of);
        }
        // `p ≥ hi`: every entry with `hi ≤ ⌊p⌋`, i.e. `code(hi) ≤ code⌊p⌋` rounded down (none
        // when `⌊p⌋` is 0: every end is ≥ 1).
        let to = if price.floor >= FIXED_LIMIT {
            Some(u64::MAX)
        } else if price.floor == 0 {
            None
        } else {
            Some(pack(Code::down(price.floor), AccountKey::MAX))
        };
        if let Some(to) = to {
            ib.hi.extend_to(to, leaving, key_of);
        }
    }

    /// Whether the sets of `idx` hold exactly these eager holders and these banded holders
    /// (key, band codes), as of the last flush (tests).
    #[cfg(test)]
    pub fn holds_exactly(
        &self,
        idx: InstrumentIdx,
        mut eager: Vec<AccountKey>,
        banded: &[(AccountKey, (u32, u32))],
    ) -> bool {
        let Some(ib) = self.instr.get(idx as usize) else {
            return false;
        };
        eager.sort_unstable();
        let mut lo: Vec<u64> = banded.iter().map(|(k, c)| pack(Code(c.0), *k)).collect();
        let mut hi: Vec<u64> = banded.iter().map(|(k, c)| pack(Code(c.1), *k)).collect();
        lo.sort_unstable();
        hi.sort_unstable();
        ib.eager.to_vec() == eager && ib.lo.to_vec() == lo && ib.hi.to_vec() == hi
    }

    /// Entries per instrument (eager, lo, hi), as of the last flush.
    #[cfg(test)]
    pub fn sizes(&self, idx: InstrumentIdx) -> Option<(usize, usize, usize)> {
        let ib = self.instr.get(idx as usize)?;
        Some((ib.eager.len(), ib.lo.len(), ib.hi.len()))
    }
}

#[cfg(test)]
mod tests;
