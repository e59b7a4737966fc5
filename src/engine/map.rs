//! The account map: every watched account with cached equity and maintenance margin, an index
//! from instrument to the accounts that hold it, and the engine's current price per instrument.
//!
//! # Incremental revaluation
//! Each account keeps, per position and per collateral balance (a *slot*), that slot's last
//! contribution to equity and to maintenance margin, plus the account totals. A price tick
//! ([`AccountMap::apply_price`]) visits only the holders of that instrument and, for each slot
//! on it, replaces the old contribution by the new one: `total − old + new`. Contributions come
//! from [`margin::position_figures`] / [`margin::collateral_value`], which normalise them to
//! [`margin::ACCOUNTING_SCALE`] places, so the sums are exact and equal
//! [`margin::account_totals`] bit for bit (the property test `tests/it/engine/props.rs` checks this
//! after every step). A sum that would leave that fixed scale (beyond ~7.9·10¹⁶) is treated as an
//! overflow: the account is marked incomplete rather than rounded.
//!
//! # Lazy valuation (the distance index)
//! Each slot remembers the price its contributions were computed at. [`AccountMap::set_price`]
//! only records a new engine price; [`AccountMap::materialise`] revalues the slots of one
//! account whose price moved since (exactly as a tick would have), so an account's caches
//! always equal a recomputation at the prices its slots were valued at, and at the current
//! prices once materialised. The distance index ([`crate::engine::index`]) uses this to revalue only
//! the accounts a tick can move across a level; [`AccountMap::riskiest`] materialises every
//! account before it ranks them. [`AccountMap::apply_price`] still revalues every holder — on
//! every core from [`TICK_PARALLEL_MIN`] holders on, reported in key order all the same.
//!
//! # Incomplete accounts
//! An account with a slot whose instrument has no price yet (or whose figures overflowed) is
//! *incomplete*: its totals only cover the valued slots, [`Touched::complete`] and
//! [`AccountView::complete`] are false, [`AccountView::ratio`] is `None`, and the monitor does not
//! evaluate it until every price is known. Stablecoins are always priced at 1.
//!
//! # Layout and locking
//! - `ids` — the directory (`map/directory.rs`): per id, its key and 32 bits of the id's hash
//!   in a sharded hash table, the id itself kept once, in the account's cell; an account keeps
//!   its small integer key for as long as it exists (keys are never reused). A key reserved for
//!   an account being created holds a *pending* entry (its id only) that readers do not see.
//! - a slab of accounts indexed by key (chunks of 4,096 `Mutex<Option<Entry>>`, allocated on
//!   demand): each entry holds the id, the slots (instrument interned to a `u32`) and caches.
//!   Keys are handed out in order, so a bulk load lays accounts out in memory in key order.
//! - per instrument, one `RwLock` over `{price, holders}` where `holders` is a
//!   `BTreeSet<AccountKey>`: a tick walks its holders in key order, i.e. in memory order.
//!   (A `DashMap<AccountKey, Entry>` with holders in a hash set was measured first: every
//!   holder was a random memory access and a tick cost ~3× more.)
//!
//! Keys are not reused: a removed account leaves an empty 88-byte cell behind.
//!
//! Lock order, always: update stripe → instrument locks (ascending index) → one account cell at
//! a time. A tick takes its instrument's lock, then each holder's cell in turn; an account
//! update takes its account's update stripe (one of 64 mutexes chosen by key: this serialises
//! updates of one account), the locks of every instrument the account holds before and after,
//! then writes the cell. A directory shard is locked only for one lookup, insert or removal, and
//! under it only the cells of the candidates whose hash bits match (one, almost always) — it
//! never waits for a stripe or an instrument lock, so reads stay fast while an update waits for
//! a long tick. Nothing ever
//! waits for a lock while holding an account cell, and no guard is ever returned: access is
//! closure-style ([`AccountMap::read`]). Do not call the map from inside a `read` closure.
//!
//! # Account update rules
//! - `replace`: the account is stored as given (zero-quantity positions and zero balances are
//!   kept). Validation first: every instrument known, positions only on contracts and balances
//!   only on collateral assets, at most one position per (instrument, side), hedge legs signed
//!   consistently (`long` ≥ 0, `short` ≤ 0), entry price > 0 for open positions, thresholds
//!   well-formed. Any error leaves the map unchanged.
//! - `fill` (quantity `dq` at price `p`, fee `f`, on leg `(instrument, side)`):
//!   - increase (no position, or same sign): the entry becomes the size-weighted average —
//!     arithmetic for linear contracts `(|q|·EP + |dq|·p) / (|q| + |dq|)`, harmonic for inverse
//!     ones `(|q| + |dq|) / (|q|/EP + |dq|/p)`, as the venues compute it;
//!   - reduce (opposite sign): the closed part `c = min(|dq|, |q|)` realises
//!     `c·cs·(p − EP)·sign(q)` (linear, in the quote asset) or `c·cs·(1/EP − 1/p)·sign(q)` (inverse,
//!     in the coin), normalised to [`margin::ACCOUNTING_SCALE`], credited to the settle asset; the
//!     entry of the remaining position is unchanged; a position brought to exactly 0 is removed;
//!   - flip (one-way mode only, `|dq| > |q|`): realise on `|q|`, open the remainder at `p`; a
//!     hedge leg may not flip (error);
//!   - the fee is debited from the settle asset; the settle asset is `fill.settle_asset`, or
//!     `USDT` for linear and the `underlying` coin for inverse contracts; it must be a configured
//!     collateral asset. Balances at 0 are kept.
//! - `collateral`: `balance += delta` (a negative result is a borrow, counted at 100 %).
//! - `remove`: the account and its index entries go.
//!
//! Fills, collateral changes and removals of an unknown account are errors.
//!
//! # Why this file is long
//! The map's caches, its lock order and the lazy valuation all rely on one another; they are
//! kept together (about 950 lines) so that the invariants above can be checked in one read.
//! Updates and fills live in `map/update.rs`, the unit tests in `map/tests.rs`.
//!
//! # Metrics
//! `liqwatch_accounts_updates_total{kind}`, `liqwatch_accounts_rejected_total{kind}`,
//! `liqwatch_accounts_ticks_total{instrument}`, `liqwatch_accounts_rejected_prices_total{instrument}`,
//! `liqwatch_accounts_revaluation_errors_total{instrument}`, gauge `liqwatch_accounts_loaded`.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use rust_decimal::Decimal;

use crate::engine::blocks::Blocks;
use crate::margin::fixed::{exact_add, exact_sub, fast_delta, fast_delta_m};
use crate::margin::{
    self, ACCOUNTING_SCALE, InstrumentLookup, MarginError, PositionPricer, PriceLookup, TierFloats,
};
use crate::model::{
    Account, AccountId, AccountUpdate, Fill, Instrument, InstrumentId, MarginRatio, Position,
    PositionSide, RiskSnapshot, Thresholds,
};
use directory::Directory;
use slot::{Narrowed, Slot};
pub(in crate::engine) use slot::{narrow, widen};

/// The small integer an account is known by inside the engine (stable while it exists).
pub type AccountKey = u32;

/// Index of an interned instrument.
pub type InstrumentIdx = u32;

/// The most instruments the engine holds: a slot keeps its instrument's index in 16 bits
/// (`map/slot.rs`). The daemon refuses a configuration with more at start; venues list a few
/// thousand at most.
pub const MAX_INSTRUMENTS: usize = 1 << 16;

const UPDATE_STRIPES: usize = 64;

/// Books smaller than this are not laid out again as they change: their slots fit in the
/// caches, where the order they lie in matters little.
pub const RELAYOUT_MIN_ACCOUNTS: usize = 16_384;

/// [`AccountMap::relayout_due`] for `changed` accounts changed of `accounts` (pure).
pub fn relayout_due(changed: usize, accounts: usize) -> bool {
    accounts >= RELAYOUT_MIN_ACCOUNTS && changed.saturating_mul(10) >= accounts
}

/// Holders from which a tick is valued on every core. A tick streams its holders' accounts
/// through memory, so a second core adds memory traffic more than it adds valuing: on the
/// engine bench (2 cores) the 1M-account tick fell from 115 to 82–93 ms of wall time for 15–30 %
/// more CPU, the 100k one from 12.4 to 8.6 ms for ~10 % more; at 10k (9,000 holders) it saved 170 µs
/// for 23 % more CPU, the thread's start-up included — below this the tick stays on its
/// thread, leaving the other core to the feeds.
pub(crate) const TICK_PARALLEL_MIN: usize = 16_384;

/// Accounts brought forward together from which [`AccountMap::materialise_many`] takes every
/// instrument's read lock once and decodes each price once, rather than each account's own
/// locks and a price decoded per slot (on the 3,000-account crash book, 1,740 woken accounts
/// cost ~6,500 instructions each that way).
const MATERIALISE_SHARED_MIN: usize = 64;
const CHUNK_SHIFT: u32 = 12;
const CHUNK_LEN: usize = 1 << CHUNK_SHIFT;
const MAX_CHUNKS: usize = 1 << 16;

type Cell = Mutex<Option<Entry>>;

/// A cell's account, unless there is none or it is still being created ([`Entry::pending`]).
fn live(cell: &Option<Entry>) -> Option<&Entry> {
    cell.as_ref().filter(|e| !e.pending)
}

/// [`live`], to change it.
fn live_mut(cell: &mut Option<Entry>) -> Option<&mut Entry> {
    cell.as_mut().filter(|e| !e.pending)
}
type Chunk = Box<[Cell]>;

/// Accounts by key: lazily allocated fixed-size chunks, so cells never move.
struct Slab {
    chunks: Box<[OnceLock<Chunk>]>,
    len: AtomicUsize,
    next: AtomicU32,
}

impl Slab {
    fn new() -> Self {
        Slab {
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            next: AtomicU32::new(0),
        }
    }

    fn cell(&self, key: AccountKey) -> Option<&Cell> {
        self.chunks
            .get((key >> CHUNK_SHIFT) as usize)?
            .get()?
            .get(key as usize & (CHUNK_LEN - 1))
    }

    fn cell_or_init(&self, key: AccountKey) -> Option<&Cell> {
        self.chunks
            .get((key >> CHUNK_SHIFT) as usize)?
            .get_or_init(|| (0..CHUNK_LEN).map(|_| Mutex::new(None)).collect())
            .get(key as usize & (CHUNK_LEN - 1))
    }

    fn alloc(&self) -> Option<AccountKey> {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        if (k as usize) >= MAX_CHUNKS * CHUNK_LEN {
            self.next.store(u32::MAX, Ordering::Relaxed);
            return None;
        }
        Some(k)
    }

    fn with<R>(&self, key: AccountKey, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let g = self.cell(key)?.lock();
        live(&g).map(f)
    }

    /// Whether the account with this key, or the one being created under it, has this id.
    fn is(&self, key: AccountKey, id: &AccountId) -> bool {
        self.cell(key)
            .is_some_and(|c| c.lock().as_ref().is_some_and(|e| e.id == *id))
    }

    /// Files `id` in the cell of a new key (an empty, *pending* entry: no reader sees it until
    /// the account is committed, or [`Slab::unreserve`]d), so that the directory can compare it.
    fn reserve(&self, key: AccountKey, id: &AccountId) {
        if let Some(cell) = self.cell_or_init(key) {
            let mut g = cell.lock();
            if g.is_none() {
                *g = Some(Entry::pending(id.clone()));
            }
        }
    }

    /// Empties a cell that is still pending (its account was not created).
    fn unreserve(&self, key: AccountKey) {
        if let Some(cell) = self.cell(key) {
            let mut g = cell.lock();
            if g.as_ref().is_some_and(|e| e.pending) {
                *g = None;
            }
        }
    }

    fn put(&self, key: AccountKey, e: Option<Entry>) {
        let Some(cell) = self.cell_or_init(key) else {
            return;
        };
        let mut g = cell.lock();
        match (live(&g).is_some(), e.is_some()) {
            (false, true) => {
                self.len.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        *g = e;
    }

    /// Calls `f` on every account, in key order, one lock at a time.
    fn for_each(&self, mut f: impl FnMut(AccountKey, &Entry)) {
        let end = self
            .next
            .load(Ordering::Relaxed)
            .min((MAX_CHUNKS * CHUNK_LEN) as u32);
        for (c, chunk) in self.chunks.iter().enumerate() {
            if (c << CHUNK_SHIFT) as u64 >= u64::from(end) {
                break;
            }
            let Some(chunk) = chunk.get() else { continue };
            for (i, cell) in chunk.iter().enumerate() {
                let g = cell.lock();
                if let Some(e) = live(&g) {
                    f(((c << CHUNK_SHIFT) + i) as AccountKey, e);
                }
            }
        }
    }
}

/// Errors of the account map. None of them changes the map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The update or tick names an instrument that is not configured.
    #[error("unknown instrument {0:?}: add it to the instrument presets or fix the update")]
    UnknownInstrument(InstrumentId),
    /// The account does not exist (fills, collateral changes and removals need one).
    #[error("unknown account {0:?}: send a full `replace` first")]
    UnknownAccount(AccountId),
    /// The update is malformed.
    #[error("account {account:?}: {message}")]
    Invalid {
        /// The account.
        account: AccountId,
        /// What is wrong, for a person to fix.
        message: String,
    },
    /// A price tick that cannot be a price.
    #[error("price {price} for {instrument:?} rejected: prices must be positive")]
    InvalidPrice {
        /// The instrument.
        instrument: InstrumentId,
        /// The price.
        price: Decimal,
    },
    /// The margin model failed for the account at the current prices (overflow, …).
    #[error("account {account:?}: {source}")]
    Margin {
        /// The account.
        account: AccountId,
        /// The model error.
        source: MarginError,
    },
    /// More than 2²⁸ accounts were created in this process.
    #[error("account key space exhausted")]
    Capacity,
}

impl AccountError {
    /// Account errors come from data; retrying the same input fails the same way.
    pub fn is_retriable(&self) -> bool {
        false
    }
}

/// What an account update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The account was created.
    Created(AccountKey),
    /// The account was changed.
    Updated(AccountKey),
    /// The account was removed.
    Removed(AccountKey),
}

impl UpdateOutcome {
    /// The key of the account concerned.
    pub fn key(&self) -> AccountKey {
        match self {
            UpdateOutcome::Created(k) | UpdateOutcome::Updated(k) | UpdateOutcome::Removed(k) => *k,
        }
    }
}

/// An account revalued by a tick, with its new totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touched {
    /// The account.
    pub key: AccountKey,
    /// Cached equity after the tick.
    pub equity: Decimal,
    /// Cached maintenance margin after the tick.
    pub maintenance_margin: Decimal,
    /// False while some price is missing or a figure overflowed (then do not evaluate).
    pub complete: bool,
    /// True when the account carries its own thresholds.
    pub custom_thresholds: bool,
}

impl Touched {
    /// `MM / equity`, or `None` for an incomplete account.
    pub fn ratio(&self) -> Option<MarginRatio> {
        self.complete
            .then(|| MarginRatio::compute(self.maintenance_margin, self.equity))
    }
}

/// Counts of one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickSummary {
    /// Accounts revalued.
    pub accounts: usize,
    /// Slots (positions and balances) revalued.
    pub slots: usize,
    /// Slots whose figures failed (overflow) and were marked unvalued.
    pub errors: usize,
}

impl TickSummary {
    /// Adds the counts of `other` (another share of the same tick).
    fn add(&mut self, other: TickSummary) {
        self.accounts += other.accounts;
        self.slots += other.slots;
        self.errors += other.errors;
    }
}

/// One row of [`AccountMap::riskiest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskRow {
    /// The account.
    pub id: AccountId,
    /// Its margin ratio.
    pub ratio: MarginRatio,
    /// Cached equity.
    pub equity: Decimal,
    /// Cached maintenance margin.
    pub maintenance_margin: Decimal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotKind {
    Collateral,
    Position(PositionSide),
}

struct Entry {
    id: AccountId,
    slots: Box<[Slot]>,
    equity: Decimal,
    mm: Decimal,
    /// Slots without a value (missing price or failed figures).
    invalid: u16,
    /// False when the totals could not be summed exactly.
    totals_ok: bool,
    thresholds: Option<Box<Thresholds>>,
    /// `Account::apply_funding` (fits in the padding beside `invalid` and `totals_ok`).
    apply_funding: bool,
    /// The key is reserved for a new account that is not committed yet: only its id is set,
    /// for the directory to compare; every reader treats the cell as empty ([`live`]).
    pending: bool,
}

fn zero_scaled() -> Decimal {
    let mut z = Decimal::ZERO;
    z.rescale(ACCOUNTING_SCALE);
    z
}

impl Entry {
    fn pending(id: AccountId) -> Self {
        Entry {
            id,
            slots: Box::default(),
            equity: zero_scaled(),
            mm: zero_scaled(),
            invalid: 0,
            totals_ok: true,
            thresholds: None,
            apply_funding: false,
            pending: true,
        }
    }

    fn complete(&self) -> bool {
        self.invalid == 0 && self.totals_ok
    }

    fn recompute_totals(&mut self) {
        let mut eq = zero_scaled();
        let mut mm = zero_scaled();
        let mut ok = true;
        self.invalid = 0;
        for s in self.slots.iter() {
            if !s.valid() {
                self.invalid = self.invalid.saturating_add(1);
                continue;
            }
            match (exact_add(eq, s.equity()), exact_add(mm, s.mm())) {
                (Some(e), Some(m)) => {
                    eq = e;
                    mm = m;
                }
                _ => ok = false,
            }
        }
        self.totals_ok = ok;
        if ok {
            self.equity = eq;
            self.mm = mm;
        } else {
            self.equity = zero_scaled();
            self.mm = zero_scaled();
        }
    }

    /// Replaces slot `i`'s contributions, updating the totals by the difference.
    #[inline]
    fn set_slot(&mut self, i: usize, new: Option<(Decimal, Decimal)>, at: Decimal) {
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        let (old_eq, old_mm, was_valid) = (s.equity(), s.mm(), s.valid());
        let (new_eq, new_mm) = new.unwrap_or_else(|| (zero_scaled(), zero_scaled()));
        s.set_value(new, at);
        match (was_valid, s.valid()) {
            (true, false) => self.invalid = self.invalid.saturating_add(1),
            (false, true) => self.invalid = self.invalid.saturating_sub(1),
            _ => {}
        }
        if self.totals_ok {
            if let (Some(e), Some(m)) = (
                fast_delta(self.equity, old_eq, new_eq),
                fast_delta(self.mm, old_mm, new_mm),
            ) {
                self.equity = e;
                self.mm = m;
                return;
            }
            let eq = exact_sub(self.equity, old_eq).and_then(|e| exact_add(e, new_eq));
            let mm = exact_sub(self.mm, old_mm).and_then(|m| exact_add(m, new_mm));
            if let (Some(e), Some(m)) = (eq, mm) {
                self.equity = e;
                self.mm = m;
                return;
            }
        }
        self.recompute_totals();
    }

    /// [`Entry::set_slot`] of a valued slot revalued on the integer path: `eq` and `mm` are the
    /// new contributions' mantissas at the accounting scale, `at` the price. Does exactly
    /// what `set_slot` does with those figures when the slot was valued, its old figures and
    /// the new ones are narrow at the accounting scale and the totals' `fast_delta` holds;
    /// otherwise changes nothing and returns `false` (call `set_slot`).
    #[inline(always)]
    fn set_slot_m(&mut self, i: usize, eq: i128, mm: i128, at: Narrowed) -> bool {
        if !self.totals_ok {
            return false;
        }
        let Some(s) = self.slots.get_mut(i) else {
            return false;
        };
        let Some((old_eq, old_mm)) = s.contributions_m() else {
            return false;
        };
        let (Some(e), Some(m)) = (
            fast_delta_m(self.equity, old_eq, eq),
            fast_delta_m(self.mm, old_mm, mm),
        ) else {
            return false;
        };
        if !s.set_value_m(eq, mm, at) {
            return false;
        }
        self.equity = e;
        self.mm = m;
        true
    }

    /// Slot `i` revalued on the integer path at `pricer`'s price (`at`: that price narrowed;
    /// the pricer is the slot's instrument's, not a stable's): a narrow position whose figures
    /// and totals take that path ([`Entry::set_slot_m`]). `false` when it declines: nothing
    /// changed, value the slot on `Decimal`.
    #[inline(always)]
    fn revalue_integer(
        &mut self,
        i: usize,
        pricer: &mut PositionPricer<'_>,
        at: Option<Narrowed>,
    ) -> bool {
        let (Some(at), Some(slot)) = (at, self.slots.get(i)) else {
            return false;
        };
        if !matches!(slot.kind(), SlotKind::Position(_)) {
            return false;
        }
        let Some((eq, mm)) = slot
            .position_fx()
            .and_then(|(q, entry)| pricer.value_fx(q, entry))
        else {
            return false;
        };
        self.set_slot_m(i, eq, mm, at)
    }

    fn touched(&self, key: AccountKey) -> Touched {
        Touched {
            key,
            equity: self.equity,
            maintenance_margin: self.mm,
            complete: self.complete(),
            custom_thresholds: self.thresholds.is_some(),
        }
    }
}

/// The configured instruments, interned to small indices.
#[derive(Debug, Clone, Default)]
pub struct InstrumentTable {
    list: Vec<Instrument>,
    /// Per instrument in `list` order: its tiers in `f64` for the shock filter, converted when
    /// the instrument is set (every event's snapshot and every band would convert them again).
    floats: Vec<Option<TierFloats>>,
    /// Looked up for every position of every event: a fast hasher (ids come from the config).
    by_id: HashMap<InstrumentId, InstrumentIdx, foldhash::fast::RandomState>,
}

impl InstrumentTable {
    /// Builds the table; a later duplicate id replaces an earlier one.
    pub fn new(instruments: impl IntoIterator<Item = Instrument>) -> Self {
        let mut t = InstrumentTable::default();
        for mut i in instruments {
            // Interned: every account read back and every event clones these ids.
            i.id = i.id.interned();
            if let Some(&idx) = t.by_id.get(&i.id) {
                t.set(idx, i);
                continue;
            }
            let idx = InstrumentIdx::try_from(t.list.len()).unwrap_or(InstrumentIdx::MAX);
            t.by_id.insert(i.id.clone(), idx);
            t.floats.push(TierFloats::new(&i));
            t.list.push(i);
        }
        t
    }
    /// Replaces the instrument at `idx` (same id), with its tiers in `f64`: the only way the
    /// list changes after it is built, so the two never disagree.
    pub(super) fn set(&mut self, idx: InstrumentIdx, mut instrument: Instrument) {
        instrument.id = instrument.id.interned();
        if let (Some(slot), Some(floats)) = (
            self.list.get_mut(idx as usize),
            self.floats.get_mut(idx as usize),
        ) {
            *floats = TierFloats::new(&instrument);
            *slot = instrument;
        }
    }
    /// The tiers in `f64` of the instrument at an index, when the shock filter can use them.
    pub fn floats(&self, idx: InstrumentIdx) -> Option<&TierFloats> {
        self.floats.get(idx as usize).and_then(Option::as_ref)
    }
    /// The index of an instrument id.
    pub fn index(&self, id: &InstrumentId) -> Option<InstrumentIdx> {
        self.by_id.get(id).copied()
    }
    /// The instrument at an index.
    pub fn get(&self, idx: InstrumentIdx) -> Option<&Instrument> {
        self.list.get(idx as usize)
    }
    /// Number of instruments.
    pub fn len(&self) -> usize {
        self.list.len()
    }
    /// True when no instrument is configured.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    /// All instruments, in index order.
    pub fn iter(&self) -> impl Iterator<Item = &Instrument> {
        self.list.iter()
    }
}

impl InstrumentLookup for InstrumentTable {
    fn instrument(&self, id: &InstrumentId) -> Option<&Instrument> {
        self.index(id).and_then(|i| self.get(i))
    }
    fn instrument_floats(&self, id: &InstrumentId) -> Option<(&Instrument, Option<&TierFloats>)> {
        let i = self.index(id)?;
        Some((self.get(i)?, self.floats(i)))
    }
}

struct InstrState {
    price: Option<Decimal>,
    /// Accounts holding the instrument (sorted blocks: ~4.5 bytes a holder, read as slices).
    holders: Blocks<AccountKey>,
}

/// Engine prices copied out of the map (for snapshots and oracles).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceSnapshot(pub HashMap<InstrumentId, Decimal, foldhash::fast::RandomState>);

impl PriceSnapshot {
    /// The prices in a map with the standard hasher (for the APIs that take one).
    pub fn to_std(&self) -> HashMap<InstrumentId, Decimal> {
        self.0.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

impl PriceLookup for PriceSnapshot {
    fn price(&self, id: &InstrumentId) -> Option<Decimal> {
        self.0.get(id).copied()
    }
}

/// Read-only view of one account handed to [`AccountMap::read`] closures.
pub struct AccountView<'a> {
    key: AccountKey,
    entry: &'a Entry,
    table: &'a InstrumentTable,
}

impl AccountView<'_> {
    /// The account's engine key.
    pub fn key(&self) -> AccountKey {
        self.key
    }
    /// The account id.
    pub fn id(&self) -> &AccountId {
        &self.entry.id
    }
    /// Cached equity (covers only valued slots while incomplete).
    pub fn equity(&self) -> Decimal {
        self.entry.equity
    }
    /// Cached maintenance margin (covers only valued slots while incomplete).
    pub fn maintenance_margin(&self) -> Decimal {
        self.entry.mm
    }
    /// True when every slot is valued and the totals are exact.
    pub fn complete(&self) -> bool {
        self.entry.complete()
    }
    /// `MM / equity` from the caches, `None` while incomplete.
    pub fn ratio(&self) -> Option<MarginRatio> {
        self.complete()
            .then(|| MarginRatio::compute(self.entry.mm, self.entry.equity))
    }
    /// The cached figures in the form a tick reports them.
    pub fn as_touched(&self) -> Touched {
        self.entry.touched(self.key)
    }
    /// The account's own thresholds, if any.
    pub fn thresholds(&self) -> Option<&Thresholds> {
        self.entry.thresholds.as_deref()
    }

    /// Whether the daemon applies funding settlements to this account (`Account::apply_funding`).
    pub fn apply_funding(&self) -> bool {
        self.entry.apply_funding
    }
    /// Ids of the instruments the account holds (positions and balances), in slot order.
    pub fn instruments(&self) -> impl Iterator<Item = &InstrumentId> {
        self.entry
            .slots
            .iter()
            .filter_map(|s| self.table.get(s.instr()).map(|i| &i.id))
    }
    /// The instrument of every position and balance, in slot order (without valuing anything
    /// out of the slots, unlike [`AccountView::valuation`]).
    pub fn slot_instruments(&self) -> impl Iterator<Item = InstrumentIdx> + '_ {
        self.entry.slots.iter().map(|s| s.instr())
    }
    /// The map's instrument table (to resolve [`SlotValuation::instrument`]).
    pub fn instruments_table(&self) -> &InstrumentTable {
        self.table
    }
    /// Every position and balance as it is valued in the caches, in slot order.
    pub fn valuation(&self) -> impl Iterator<Item = SlotValuation> + '_ {
        self.entry.slots.iter().map(|s| SlotValuation {
            instrument: s.instr(),
            collateral: s.kind() == SlotKind::Collateral,
            quantity: s.quantity(),
            entry: s.entry(),
            at: s.valid().then(|| s.at()),
            equity: s.equity(),
            maintenance_margin: s.mm(),
        })
    }
    /// The account as a model value (balances, positions, thresholds).
    pub fn to_account(&self) -> Account {
        let mut a = Account {
            id: self.entry.id.clone(),
            collateral: Default::default(),
            positions: Vec::new(),
            thresholds: self.entry.thresholds.as_deref().cloned(),
            apply_funding: self.entry.apply_funding,
        };
        for s in self.entry.slots.iter() {
            let Some(inst) = self.table.get(s.instr()) else {
                continue;
            };
            match s.kind() {
                SlotKind::Collateral => {
                    a.collateral.insert(inst.id.clone(), s.quantity());
                }
                SlotKind::Position(side) => a.positions.push(Position {
                    instrument: inst.id.clone(),
                    side,
                    quantity: s.quantity(),
                    entry_price: s.entry(),
                }),
            }
        }
        a
    }
}

/// One position or balance as the account map has valued it (see [`AccountView::valuation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotValuation {
    /// The instrument.
    pub instrument: InstrumentIdx,
    /// A collateral balance (else a position).
    pub collateral: bool,
    /// Position quantity or balance.
    pub quantity: Decimal,
    /// Entry price (positions).
    pub entry: Decimal,
    /// The price the cached figures were computed at (1 for stables); `None` when not valued.
    pub at: Option<Decimal>,
    /// Cached contribution to equity.
    pub equity: Decimal,
    /// Cached contribution to maintenance margin.
    pub maintenance_margin: Decimal,
}

/// The shared account map. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct AccountMap {
    /// The instrument definitions. Ids and indices are fixed for the map's lifetime; the
    /// margin terms of an instrument can be replaced ([`AccountMap::replace_definitions`]),
    /// always while holding that instrument's write lock, so whoever values a slot loads the
    /// table *after* taking the slot's instrument lock and sees the terms its slot caches use.
    table: RwLock<Arc<InstrumentTable>>,
    instr: Vec<RwLock<InstrState>>,
    ids: Directory,
    accounts: Slab,
    /// Per-account update serialisation (striped by key).
    stripes: Box<[Mutex<()>]>,
    /// See [`AccountMap::changed_since_layout`].
    changed_since_layout: AtomicUsize,
    fallback_stripe: Mutex<()>,
}

type Guards<'a> = Vec<(InstrumentIdx, RwLockWriteGuard<'a, InstrState>)>;

fn guard_of<'a, 'g>(guards: &'a Guards<'g>, idx: InstrumentIdx) -> Option<&'a InstrState> {
    guards
        .binary_search_by_key(&idx, |(i, _)| *i)
        .ok()
        .and_then(|p| guards.get(p))
        .map(|(_, g)| &**g)
}

/// A slot's `(equity, MM)` contributions, `None` when unpriced.
type SlotResult = Result<Option<(Decimal, Decimal)>, MarginError>;

/// Values one slot at `price` (stables at 1). `Ok(None)` when the price is unknown.
fn value_slot(inst: &Instrument, slot: &Slot, price: Option<Decimal>) -> SlotResult {
    let price = if inst.stable {
        Decimal::ONE
    } else {
        match price {
            Some(p) => p,
            None => return Ok(None),
        }
    };
    match slot.kind() {
        SlotKind::Collateral => {
            let v = margin::collateral_value(inst, slot.quantity(), price)?;
            Ok(Some((v, zero_scaled())))
        }
        SlotKind::Position(_) => {
            margin::position_pnl_mm(inst, slot.quantity(), slot.entry(), price).map(Some)
        }
    }
}

/// [`value_slot`] at the pricer's price, for the many slots of one instrument a tick revalues.
#[inline]
fn value_slot_at(pricer: &mut PositionPricer<'_>, inst: &Instrument, slot: &Slot) -> SlotResult {
    match slot.kind() {
        SlotKind::Position(_) if !inst.stable => {
            pricer.pnl_mm(slot.quantity(), slot.entry()).map(Some)
        }
        _ => value_slot(inst, slot, Some(pricer.price())),
    }
}

impl AccountMap {
    /// An empty map over the given instruments. Instruments are fixed for the map's lifetime.
    pub fn new(instruments: impl IntoIterator<Item = Instrument>) -> Self {
        let table = InstrumentTable::new(instruments);
        let instr = (0..table.len())
            .map(|_| {
                RwLock::new(InstrState {
                    price: None,
                    holders: Blocks::default(),
                })
            })
            .collect();
        AccountMap {
            table: RwLock::new(Arc::new(table)),
            instr,
            ids: Directory::new(),
            accounts: Slab::new(),
            stripes: (0..UPDATE_STRIPES).map(|_| Mutex::new(())).collect(),
            changed_since_layout: AtomicUsize::new(0),
            fallback_stripe: Mutex::new(()),
        }
    }

    /// The instrument table in force (a cheap shared copy: terms replaced later are not seen
    /// through it).
    pub fn instruments(&self) -> Arc<InstrumentTable> {
        self.table()
    }

    fn table(&self) -> Arc<InstrumentTable> {
        Arc::clone(&self.table.read())
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.accounts.len.load(Ordering::Relaxed)
    }

    /// True when there is no account.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The engine's current price of an instrument (stables: 1).
    pub fn price(&self, id: &InstrumentId) -> Option<Decimal> {
        let table = self.table();
        let idx = table.index(id)?;
        if table.get(idx).is_some_and(|i| i.stable) {
            return Some(Decimal::ONE);
        }
        self.instr.get(idx as usize).and_then(|l| l.read().price)
    }

    /// The engine's current price of the instrument at `idx` (not 1 for stables: the price
    /// the feed last set, if any).
    pub fn price_at(&self, idx: InstrumentIdx) -> Option<Decimal> {
        self.instr.get(idx as usize).and_then(|l| l.read().price)
    }

    /// Every known engine price (non-stable instruments that have one).
    pub fn prices(&self) -> PriceSnapshot {
        let mut m = HashMap::default();
        for (i, inst) in self.table().iter().enumerate() {
            if let Some(p) = self.instr.get(i).and_then(|l| l.read().price) {
                m.insert(inst.id.clone(), p);
            }
        }
        PriceSnapshot(m)
    }

    /// The key of an account id.
    pub fn key_of(&self, id: &AccountId) -> Option<AccountKey> {
        self.ids.get(id, |k| self.accounts.is(k, id))
    }

    /// Runs `f` on the account, if it exists. `f` must not call the map.
    pub fn read<R>(&self, id: &AccountId, f: impl FnOnce(&AccountView<'_>) -> R) -> Option<R> {
        let key = self.key_of(id)?;
        self.read_key(key, f)
    }

    /// Runs `f` on the account with this key, if it exists. `f` must not call the map.
    pub fn read_key<R>(&self, key: AccountKey, f: impl FnOnce(&AccountView<'_>) -> R) -> Option<R> {
        let table = self.table();
        self.accounts.with(key, |e| {
            f(&AccountView {
                key,
                entry: e,
                table: &table,
            })
        })
    }

    /// [`AccountMap::read_key`] with an instrument table the caller loaded
    /// ([`AccountMap::instruments`]) — for work over many accounts on several threads, where
    /// loading the table per account makes every thread write the same lock and reference
    /// count. Ids and indices are fixed for the map's lifetime; the margin terms are those of
    /// when the caller loaded it (they change only through
    /// [`crate::engine::Engine::replace_instruments`], never during a step).
    pub fn read_key_in<R>(
        &self,
        table: &InstrumentTable,
        key: AccountKey,
        f: impl FnOnce(&AccountView<'_>) -> R,
    ) -> Option<R> {
        self.accounts.with(key, |e| {
            f(&AccountView {
                key,
                entry: e,
                table,
            })
        })
    }

    /// The account's id; `None` when there is no such account. Reads no instrument table (see
    /// [`AccountMap::read_key_in`]): the state pass asks it of every emitting account, from
    /// every core.
    pub fn id_of(&self, key: AccountKey) -> Option<AccountId> {
        self.accounts.with(key, |e| e.id.clone())
    }

    /// The account's own levels (`None` inside: the defaults); `None` when there is no such
    /// account. Reads no instrument table (see [`AccountMap::read_key_in`]).
    pub fn thresholds_of(&self, key: AccountKey) -> Option<Option<Thresholds>> {
        self.accounts
            .with(key, |e| e.thresholds.as_deref().cloned())
    }

    /// The account as a model value.
    pub fn account(&self, id: &AccountId) -> Option<Account> {
        self.read(id, |v| v.to_account())
    }

    /// Ids of every account.
    pub fn account_ids(&self) -> Vec<AccountId> {
        let mut ids = Vec::with_capacity(self.len());
        self.accounts.for_each(|_, e| ids.push(e.id.clone()));
        ids
    }

    /// How many accounts cannot be valued as of their last valuation (*incomplete*: an
    /// instrument they hold has no price, or a figure overflowed). Scans the map (one lock per
    /// account, no valuation): for `liqwatch_accounts_incomplete`, set at each scrape.
    pub fn count_incomplete(&self) -> usize {
        let mut n = 0;
        self.accounts.for_each(|_, e| {
            if !e.complete() {
                n += 1;
            }
        });
        n
    }

    /// Accounts created or changed since the last [`AccountMap::relayout`] (each gets a new
    /// slot array wherever the allocator puts it).
    pub fn changed_since_layout(&self) -> usize {
        self.changed_since_layout.load(Ordering::Relaxed)
    }

    /// Whether a [`AccountMap::relayout`] is due: a book of [`RELAYOUT_MIN_ACCOUNTS`] or more of
    /// which a tenth or more has changed since the last layout. On the engine bench's 1M
    /// book, a fifth of the accounts replaced after the layout made the eager tick 21–24 %
    /// slower; laid out again, it was back within 2–7 % (`LIQWATCH_BENCH_CHURN`).
    pub fn relayout_due(&self) -> bool {
        relayout_due(self.changed_since_layout(), self.len())
    }

    /// Lays every account's slots out again in key order, one array after the other, and
    /// returns how many accounts it moved. A tick values its holders in key order, so this is
    /// the order it reads them in: after a bulk load, the arrays lie wherever the allocator
    /// put them among the load's temporaries — at 1M accounts only 5 % of the engine bench's
    /// arrays followed the previous account's (the rest 256 B to 3 KiB away, backwards a third
    /// of the time) — and each account update since puts its new array wherever the allocator
    /// has room. The daemon runs it after loading, and again when [`AccountMap::relayout_due`]
    /// (`app/relayout.rs`); it holds one more copy of every array until it is done
    /// (~0.25 GB at 1M accounts of five slots), then frees the old ones. Safe beside updates
    /// and ticks: each account is copied and swapped under its own lock, from what it holds
    /// then, so nothing written meanwhile is lost; an account whose slots were replaced by a
    /// different number of them in between keeps its new ones where they are.
    pub fn relayout(&self) -> usize {
        self.changed_since_layout.store(0, Ordering::Relaxed);
        // First every new array, in key order, while the old ones are still held (so the
        // allocator cannot hand an old one back)...
        let mut fresh: Vec<(AccountKey, Box<[Slot]>)> = Vec::with_capacity(self.len());
        self.accounts
            .for_each(|k, e| fresh.push((k, e.slots.clone())));
        // ...then each account's current slots copied into its new array and swapped in.
        let mut old = Vec::with_capacity(fresh.len());
        for (key, mut new) in fresh {
            let Some(cell) = self.accounts.cell(key) else {
                continue;
            };
            let mut g = cell.lock();
            let Some(e) = live_mut(&mut g) else {
                continue;
            };
            if e.slots.len() != new.len() {
                continue;
            }
            new.clone_from_slice(&e.slots);
            old.push(std::mem::replace(&mut e.slots, new));
        }
        old.len()
    }

    /// Keys of every account.
    pub fn keys(&self) -> Vec<AccountKey> {
        let mut keys = Vec::with_capacity(self.len());
        self.accounts.for_each(|k, _| keys.push(k));
        keys
    }

    /// Keys of the accounts holding an instrument (unordered).
    pub fn holder_keys(&self, instrument: &InstrumentId) -> Vec<AccountKey> {
        self.table()
            .index(instrument)
            .and_then(|idx| self.instr.get(idx as usize))
            .map(|l| l.read().holders.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The non-stable instruments some account holds (positions or balances), in table
    /// order: the ones whose prices matter (the price board watches their staleness).
    pub fn held_instruments(&self) -> Vec<InstrumentId> {
        self.table()
            .iter()
            .zip(self.instr.iter())
            .filter(|(inst, l)| !inst.stable && !l.read().holders.is_empty())
            .map(|(inst, _)| inst.id.clone())
            .collect()
    }

    /// The accounts holding an instrument (positions or balances), sorted by id.
    pub fn holders(&self, instrument: &InstrumentId) -> Vec<AccountId> {
        let Some(idx) = self.table().index(instrument) else {
            return Vec::new();
        };
        let keys: Vec<AccountKey> = match self.instr.get(idx as usize) {
            Some(l) => l.read().holders.iter().copied().collect(),
            None => return Vec::new(),
        };
        let mut ids: Vec<AccountId> = keys
            .into_iter()
            .filter_map(|k| self.accounts.with(k, |e| e.id.clone()))
            .collect();
        ids.sort();
        ids
    }

    /// The full risk snapshot of one account at the engine's prices, measured to `trigger`
    /// (use the account's own trigger when it has one — see [`AccountMap::trigger_for`]).
    pub fn snapshot(&self, id: &AccountId, trigger: Decimal) -> Result<RiskSnapshot, AccountError> {
        let account = self
            .account(id)
            .ok_or_else(|| AccountError::UnknownAccount(id.clone()))?;
        let prices = self.prices_for(&account);
        margin::account_snapshot(&account, &*self.table(), &prices, trigger).map_err(|source| {
            AccountError::Margin {
                account: id.clone(),
                source,
            }
        })
    }

    /// The account's trigger level: its own override, else `default`.
    pub fn trigger_for(&self, id: &AccountId, default: Decimal) -> Decimal {
        self.read(id, |v| v.thresholds().map(|t| t.trigger))
            .flatten()
            .unwrap_or(default)
    }

    /// The engine prices of the instruments an account uses.
    pub fn prices_for(&self, account: &Account) -> PriceSnapshot {
        let mut m = HashMap::default();
        let ids = account
            .collateral
            .keys()
            .chain(account.positions.iter().map(|p| &p.instrument));
        for id in ids {
            if let Some(p) = self.price(id) {
                m.insert(id.clone(), p);
            }
        }
        PriceSnapshot(m)
    }

    /// The `n` complete accounts with the highest margin ratio, riskiest first (ties by id).
    /// Scans every account: O(accounts), meant for an API query, not the hot path.
    pub fn riskiest(&self, n: usize) -> Vec<RiskRow> {
        if n == 0 {
            return Vec::new();
        }
        // Min-heap on (ratio, Reverse(id)) keeping the n largest.
        struct Item(MarginRatio, AccountId, Decimal, Decimal);
        impl PartialEq for Item {
            fn eq(&self, o: &Self) -> bool {
                self.cmp(o) == CmpOrdering::Equal
            }
        }
        impl Eq for Item {}
        impl PartialOrd for Item {
            fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for Item {
            fn cmp(&self, o: &Self) -> CmpOrdering {
                // Reversed so the heap top is the least risky of the kept ones.
                o.0.cmp(&self.0).then_with(|| self.1.cmp(&o.1))
            }
        }
        self.materialise_all();
        let mut heap: BinaryHeap<Item> = BinaryHeap::with_capacity(n + 1);
        self.accounts.for_each(|_, e| {
            if !e.complete() {
                return;
            }
            let ratio = MarginRatio::compute(e.mm, e.equity);
            if heap.len() == n
                && heap
                    .peek()
                    .is_some_and(|top| ratio < top.0 || ratio == top.0 && e.id > top.1)
            {
                return;
            }
            heap.push(Item(ratio, e.id.clone(), e.equity, e.mm));
            if heap.len() > n {
                heap.pop();
            }
        });
        heap.into_sorted_vec()
            .into_iter()
            .map(|Item(ratio, id, equity, maintenance_margin)| RiskRow {
                id,
                ratio,
                equity,
                maintenance_margin,
            })
            .collect()
    }

    /// Sets the engine price of `instrument` and revalues its holders by the change of their
    /// slots on it, appending each touched account to `out` (not cleared; reuse it across ticks
    /// to avoid allocating). A price equal to the current one touches nothing.
    pub fn apply_price(
        &self,
        instrument: &InstrumentId,
        price: Decimal,
        out: &mut Vec<Touched>,
    ) -> Result<TickSummary, AccountError> {
        self.apply_price_with(instrument, price, |t| out.push(t))
    }

    /// [`AccountMap::apply_price`] reporting each touched account to a callback instead, in
    /// key order (a tick of [`TICK_PARALLEL_MIN`] holders or more values them on every core
    /// first, then reports them). The callback runs under the instrument's lock: keep it short
    /// and do not call the map.
    pub fn apply_price_with(
        &self,
        instrument: &InstrumentId,
        price: Decimal,
        mut on_touched: impl FnMut(Touched),
    ) -> Result<TickSummary, AccountError> {
        let (idx, lock) = self.checked_price(instrument, price)?;
        let mut summary = TickSummary::default();
        let mut state = lock.write();
        if state.price == Some(price) {
            return Ok(summary);
        }
        state.price = Some(price);
        // Loaded under the instrument's lock: the terms the holders' caches are built on.
        let table = self.table();
        let Some(inst) = table.get(idx) else {
            return Err(AccountError::UnknownInstrument(instrument.clone()));
        };
        if inst.stable {
            // Stables are valued at 1 whatever the feed says.
            return Ok(summary);
        }
        // The price as the slots keep it, once for every holder (the integer path's `at`).
        let at = Narrowed::of(price);
        if state.holders.len() >= TICK_PARALLEL_MIN && crate::engine::par::threads() > 1 {
            // A big move on a big book: every core values its share of the holders (each
            // account under its own lock, each thread with its own pricer), and the accounts
            // are reported in key order as below. Holders cannot change meanwhile: an update
            // write-locks the instruments whose holders it changes, and this lock is held.
            // The calling thread reports its share as it values it (collecting it first would
            // copy tens of MB at a million holders); the others' shares come after.
            let keys: Vec<AccountKey> = state.holders.iter().copied().collect();
            let parts = parking_lot::Mutex::new(TickSummary::default());
            crate::engine::par::split_first_here(
                &keys,
                &mut (&mut summary, &mut on_touched),
                |chunk| {
                    let (mut part, mut touched) = (TickSummary::default(), Vec::new());
                    touched.reserve(chunk.len());
                    self.revalue_holders(chunk, idx, inst, at, price, &mut part, &mut |t| {
                        touched.push(t)
                    });
                    parts.lock().add(part);
                    touched
                },
                |(summary, on_touched), chunk| {
                    self.revalue_holders(chunk, idx, inst, at, price, summary, on_touched)
                },
                |(_, on_touched), touched| on_touched(touched),
            );
            summary.add(parts.into_inner());
        } else {
            self.revalue_holders(
                state.holders.iter(),
                idx,
                inst,
                at,
                price,
                &mut summary,
                &mut on_touched,
            );
        }
        drop(state);
        metrics::counter!("liqwatch_accounts_ticks_total", "instrument" => instrument.to_string())
            .increment(1);
        if summary.errors > 0 {
            metrics::counter!("liqwatch_accounts_revaluation_errors_total", "instrument" => instrument.to_string())
                .increment(summary.errors as u64);
            tracing::warn!(%instrument, %price, errors = summary.errors, "Positions could not be valued at this price (overflow); their accounts are incomplete");
        }
        Ok(summary)
    }

    /// Revalues holders `keys` of instrument `idx` at `price` (`at`: as slots keep it) with one
    /// pricer, in order, reporting each to `on_touched` and counting it in `summary`. The
    /// instrument's lock must be held.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn revalue_holders<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k AccountKey>,
        idx: InstrumentIdx,
        inst: &Instrument,
        at: Option<Narrowed>,
        price: Decimal,
        summary: &mut TickSummary,
        on_touched: &mut impl FnMut(Touched),
    ) {
        let mut pricer = PositionPricer::new(inst, price);
        for &key in keys {
            if let Some(touched) = self.revalue_holder(key, idx, inst, at, &mut pricer, summary) {
                summary.accounts += 1;
                on_touched(touched);
            }
        }
    }

    /// Revalues the slots of holder `key` on instrument `idx` at the tick's price (`pricer`'s;
    /// `at` is that price as a slot keeps it) — a position on the integer path
    /// ([`Entry::revalue_integer`]), anything it declines on `Decimal` — and returns its new
    /// figures, counting the slots valued and failed in `summary`; `None` when the account is
    /// gone. The instrument's lock must be held. (Inlined into both loops
    /// of [`AccountMap::apply_price_with`]: a call per holder costs ~4 % of a tick.)
    #[inline(always)]
    fn revalue_holder(
        &self,
        key: AccountKey,
        idx: InstrumentIdx,
        inst: &Instrument,
        at: Option<Narrowed>,
        pricer: &mut PositionPricer<'_>,
        summary: &mut TickSummary,
    ) -> Option<Touched> {
        let price = pricer.price();
        let mut guard = self.accounts.cell(key)?.lock();
        let e = live_mut(&mut guard)?;
        for i in 0..e.slots.len() {
            let Some(slot) = e.slots.get(i) else { break };
            if slot.instr() != idx {
                continue;
            }
            summary.slots += 1;
            if e.revalue_integer(i, pricer, at) {
                continue;
            }
            let Some(slot) = e.slots.get(i) else { break };
            let new = match value_slot_at(pricer, inst, slot) {
                Ok(v) => v,
                Err(error) => {
                    summary.errors += 1;
                    tracing::debug!(account = %e.id, instrument = %inst.id, %error, "Slot not valued");
                    None
                }
            };
            e.set_slot(i, new, price);
        }
        Some(e.touched(key))
    }

    /// The instrument's index and lock, once `price` is known to be usable.
    fn checked_price(
        &self,
        instrument: &InstrumentId,
        price: Decimal,
    ) -> Result<(InstrumentIdx, &RwLock<InstrState>), AccountError> {
        let idx = self
            .table()
            .index(instrument)
            .ok_or_else(|| AccountError::UnknownInstrument(instrument.clone()))?;
        let Some(lock) = self.instr.get(idx as usize) else {
            return Err(AccountError::UnknownInstrument(instrument.clone()));
        };
        if price <= Decimal::ZERO {
            metrics::counter!("liqwatch_accounts_rejected_prices_total", "instrument" => instrument.to_string())
                .increment(1);
            tracing::warn!(%instrument, %price, "Rejected non-positive price");
            return Err(AccountError::InvalidPrice {
                instrument: instrument.clone(),
                price,
            });
        }
        Ok((idx, lock))
    }

    /// Sets the engine price of `instrument` without revaluing anyone: the holders' cached
    /// figures stay at the prices they were valued at until [`AccountMap::materialise`] (or an
    /// [`AccountMap::apply_price`]) brings them forward. This is the tick of the distance index
    /// ([`crate::engine::index`]), which wakes only the accounts the move can change. Returns
    /// whether the price changed.
    pub fn set_price(
        &self,
        instrument: &InstrumentId,
        price: Decimal,
    ) -> Result<bool, AccountError> {
        let (idx, lock) = self.checked_price(instrument, price)?;
        let mut state = lock.write();
        if state.price == Some(price) {
            return Ok(false);
        }
        state.price = Some(price);
        drop(state);
        // `stable` never changes (a replacement may not change it), so no lock is needed.
        if !self.table().get(idx).is_some_and(|i| i.stable) {
            metrics::counter!("liqwatch_accounts_ticks_total", "instrument" => instrument.to_string())
                .increment(1);
        }
        Ok(true)
    }

    /// Revalues the slots of one account whose instrument's price moved since they were valued
    /// (exactly as [`AccountMap::apply_price`] would have, so the caches again equal a
    /// from-scratch recomputation at the current prices) and reports its figures. `None` when
    /// the account does not exist.
    pub fn materialise(&self, key: AccountKey) -> Option<Touched> {
        let cell = self.accounts.cell(key)?;
        loop {
            let mut instrs: Vec<InstrumentIdx> = {
                let g = cell.lock();
                live(&g)?.slots.iter().map(|s| s.instr()).collect()
            };
            instrs.sort_unstable();
            instrs.dedup();
            // Lock order: instrument locks (ascending), then the account cell.
            let guards: Vec<(InstrumentIdx, RwLockReadGuard<'_, InstrState>)> = instrs
                .iter()
                .filter_map(|i| self.instr.get(*i as usize).map(|l| (*i, l.read())))
                .collect();
            let price_of = |idx: InstrumentIdx| {
                guards
                    .binary_search_by_key(&idx, |(i, _)| *i)
                    .ok()
                    .and_then(|p| guards.get(p))
                    .and_then(|(_, g)| g.price)
            };
            // Loaded under the instrument locks (see `table`).
            let table = self.table();
            let mut g = cell.lock();
            let e = live_mut(&mut g)?;
            if e.slots
                .iter()
                .any(|s| instrs.binary_search(&s.instr()).is_err())
            {
                continue; // the account changed between the two looks: look again
            }
            revalue(e, &table, price_of, None);
            return Some(e.touched(key));
        }
    }

    /// [`AccountMap::materialise`] for many accounts, in order; on every core when there are
    /// many (a correlated move's woken accounts, the first step after a start), and then each thread
    /// takes every instrument's read lock and loads the instrument table once for its share:
    /// per account, the threads would otherwise write the same locks and reference count from
    /// every core, which costs more than valuing the account. No account's slots change
    /// meanwhile (an update write-locks the instruments of the slots it changes), so each
    /// account is read and valued under one lock of its own.
    pub fn materialise_many(&self, keys: &[AccountKey]) -> Vec<Option<Touched>> {
        if keys.len() < MATERIALISE_SHARED_MIN {
            // A few accounts: their own instruments' locks, not every instrument's.
            return keys.iter().map(|&k| self.materialise(k)).collect();
        }
        if keys.len() < crate::engine::par::PARALLEL_MIN {
            // Enough to share the locks, the table and the decoded prices, too few to split.
            return self.materialise_shared(keys);
        }
        crate::engine::par::map_chunks_in_order(keys, |chunk| self.materialise_shared(chunk))
    }

    /// [`AccountMap::materialise`] for `keys` under every instrument's read lock, with the
    /// instrument table loaded once and each instrument's price and tiers decoded once.
    fn materialise_shared(&self, keys: &[AccountKey]) -> Vec<Option<Touched>> {
        // Lock order: instrument locks (ascending), then each account's cell.
        let guards: Vec<RwLockReadGuard<'_, InstrState>> =
            self.instr.iter().map(|l| l.read()).collect();
        // Loaded under the instrument locks (see `table`).
        let table = self.table();
        let price_of = |idx: InstrumentIdx| guards.get(idx as usize).and_then(|g| g.price);
        // Each instrument's price and tiers decoded once for the chunk (the prices hold while
        // the locks are held).
        let mut pricers = Pricers::new(&table);
        keys.iter()
            .map(|&key| {
                let mut g = self.accounts.cell(key)?.lock();
                let e = live_mut(&mut g)?;
                revalue(e, &table, price_of, Some(&mut pricers));
                Some(e.touched(key))
            })
            .collect()
    }

    /// [`AccountMap::materialise`] for every account (an O(accounts) pass for queries that
    /// rank all of them).
    pub fn materialise_all(&self) {
        for key in self.keys() {
            let _ = self.materialise(key);
        }
    }
}

/// Each instrument's [`PositionPricer`] at the price it was last asked for (with that price as
/// a slot keeps it), for valuing many accounts' slots under the same instrument locks.
struct Pricers<'t> {
    by_instr: Vec<Option<(PositionPricer<'t>, Option<Narrowed>)>>,
}

impl<'t> Pricers<'t> {
    fn new(table: &InstrumentTable) -> Self {
        Pricers {
            by_instr: (0..table.len()).map(|_| None).collect(),
        }
    }

    /// The pricer of the slot's instrument at `price` and `price` narrowed, made on first use.
    fn at(
        &mut self,
        inst: &'t Instrument,
        slot: &Slot,
        price: Decimal,
    ) -> Option<&mut (PositionPricer<'t>, Option<Narrowed>)> {
        let cached = self.by_instr.get_mut(slot.instr() as usize)?;
        let current = matches!(cached, Some(p) if p.0.price() == price && p.0.price().scale() == price.scale());
        if !current {
            *cached = Some((PositionPricer::new(inst, price), Narrowed::of(price)));
        }
        cached.as_mut()
    }
}

/// Brings every slot of `e` to the price `price_of` gives its instrument (stables at 1); a slot
/// still unpriced stays invalid. The account's instrument locks must be held. With `pricers`,
/// each instrument's price is decoded once for all the accounts valued with them, and a valued
/// narrow position takes the integer path of a tick ([`Entry::revalue_integer`]).
fn revalue<'t>(
    e: &mut Entry,
    table: &'t InstrumentTable,
    price_of: impl Fn(InstrumentIdx) -> Option<Decimal>,
    mut pricers: Option<&mut Pricers<'t>>,
) {
    for i in 0..e.slots.len() {
        let Some(slot) = e.slots.get(i) else { break };
        let Some(inst) = table.get(slot.instr()) else {
            continue;
        };
        let price = if inst.stable {
            Some(Decimal::ONE)
        } else {
            price_of(slot.instr())
        };
        let Some(price) = price else {
            continue; // still unpriced: stays invalid
        };
        if slot.valid() && slot.at() == price {
            continue;
        }
        let cached = match pricers.as_deref_mut() {
            Some(pricers) if !inst.stable => pricers.at(inst, slot, price),
            _ => None,
        };
        let new = match cached {
            Some((pricer, at)) => {
                if e.revalue_integer(i, pricer, *at) {
                    continue;
                }
                let Some(slot) = e.slots.get(i) else { break };
                value_slot_at(pricer, inst, slot)
            }
            None => value_slot(inst, slot, Some(price)),
        };
        let new = match new {
            Ok(v) => v,
            Err(error) => {
                tracing::debug!(account = %e.id, instrument = %inst.id, %error, "Slot not valued");
                None
            }
        };
        e.set_slot(i, new, price);
    }
}

mod directory; // account id to key, 8 bytes a bucket
mod slot; // a slot's five values, instrument and kind in 48 bytes
mod terms; // replacing instruments' margin terms live
mod update; // account updates and fills: validation, slots, the commit under locks

pub use terms::{TermsError, identity_change, with_terms_of};

#[cfg(test)]
pub(crate) mod tests;
