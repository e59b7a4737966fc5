//! An ordered set kept as sorted blocks: the distance index's sets (every band end of every
//! holder, one set per instrument and side) and the account map's holders of each instrument.
//!
//! A correlated move re-bands much of the book at once. A `BTreeSet` rebuilt from sorted input
//! walks its old nodes one by one to free them, re-sorts the two runs it is given and allocates
//! a node per eleven entries; on the crash bench that was 13 % of the step's instructions. Here
//! the set is a list of sorted blocks of up to [`BLOCK`]·2 entries, each a `Vec`, with each
//! block's last entry kept beside the list for the search: a large batch rebuilds every block
//! in one linear merge, a small one edits the block an entry falls in (a binary search and a
//! `memmove` of at most a few kilobytes), and a range is read as slices. Entries take 8 bytes;
//! a rebuilt block is exactly full, grows by an eighth of [`BLOCK`] at a time and gives memory
//! back when removals leave it three quarters empty, so a block never holds memory for more
//! than four times its entries and an eighth of a block (a `BTreeSet` of `u64` takes ~9.5
//! bytes per entry when bulk-built and more once edited).

/// Entries per block after a rebuild; a block that grows to twice this is split.
const BLOCK: usize = 512;

/// A change batch with at least this many changes, and at least one per [`BULK_SHARE`] of the
/// set's entries, rebuilds the blocks instead of editing them.
const BULK_MIN: usize = 256;

/// See [`BULK_MIN`]: one change in 32 entries (~3 %).
const BULK_SHARE: usize = 32;

/// Sorted blocks (see the module docs).
#[derive(Debug, Clone)]
pub struct Blocks<T> {
    /// Non-empty, each sorted, every entry of a block below every entry of the next.
    blocks: Vec<Vec<T>>,
    /// The last entry of each block (searched without reading the blocks).
    lasts: Vec<T>,
    len: usize,
    /// Entries per block after a rebuild (tests make it small).
    block: usize,
}

impl<T> Default for Blocks<T> {
    fn default() -> Self {
        Blocks {
            blocks: Vec::new(),
            lasts: Vec::new(),
            len: 0,
            block: BLOCK,
        }
    }
}

impl<T: Ord + Copy> Blocks<T> {
    /// An empty set with `block` entries per block after a rebuild (tests).
    #[cfg(test)]
    pub fn with_block(block: usize) -> Self {
        Blocks {
            block: block.max(1),
            ..Self::default()
        }
    }

    /// Entries in the set.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.blocks.iter().flatten()
    }

    /// Removes every entry of `rm` (absent ones are ignored), then inserts every entry of `add`
    /// (present ones are ignored); both are left empty. A batch that is large for the set
    /// rebuilds it in one merge; a small one edits it entry by entry.
    pub fn apply(&mut self, rm: &mut Vec<T>, add: &mut Vec<T>) {
        if self.rebuilds_for(rm.len() + add.len()) {
            rm.sort_unstable();
            add.sort_unstable();
            add.dedup();
            // The set without `rm`, in order (both sorted: one pass).
            let mut rm = rm.iter().peekable();
            self.rebuild(
                |x| {
                    while rm.next_if(|r| *r < x).is_some() {}
                    rm.next_if(|r| *r == x).is_some()
                },
                add,
            );
        } else {
            for r in rm.iter() {
                self.remove(r);
            }
            for a in add.iter() {
                self.insert(*a);
            }
        }
        rm.clear();
        add.clear();
    }

    /// [`Blocks::apply`] for a set that holds at most one entry per key (`key_of`), where each
    /// entry of `rm` is the set's entry for its key (the distance index's sets: one band end
    /// per account, instrument and side, replaced as a whole). A batch that rebuilds the set
    /// drops the removed keys through a bitmap as it merges, instead of sorting `rm` first —
    /// on a correlated move `rm` is as long as `add`, and sorting both was most of the merge.
    /// A small batch edits the set as [`Blocks::apply`] does.
    pub fn apply_keyed(&mut self, rm: &mut Vec<T>, add: &mut Vec<T>, key_of: impl Fn(&T) -> u32) {
        if !self.rebuilds_for(rm.len() + add.len()) {
            return self.apply(rm, add);
        }
        let words = rm
            .iter()
            .map(|x| key_of(x) as usize / 64 + 1)
            .max()
            .unwrap_or(0);
        let mut gone = vec![0u64; words];
        for x in rm.iter() {
            let k = key_of(x) as usize;
            if let Some(w) = gone.get_mut(k / 64) {
                *w |= 1 << (k % 64);
            }
        }
        add.sort_unstable();
        add.dedup();
        let dropped = self.rebuild(
            |x| {
                let k = key_of(x) as usize;
                gone.get(k / 64).is_some_and(|w| (w >> (k % 64)) & 1 == 1)
            },
            add,
        );
        // Each removed key had its entry in the set (the contract above): tests fail, and a
        // release build says so, if a caller ever breaks it.
        let removed = gone.iter().map(|w| w.count_ones() as usize).sum::<usize>();
        debug_assert_eq!(
            dropped, removed,
            "apply_keyed: a removed key had no entry in the set"
        );
        if dropped != removed {
            tracing::error!(
                dropped,
                removed,
                "Distance index: a removal named an account with no entry in the set (a bug)"
            );
        }
        rm.clear();
        add.clear();
    }

    /// Whether a batch of `changes` rebuilds the set ([`BULK_MIN`], [`BULK_SHARE`]) rather
    /// than editing it entry by entry.
    pub fn rebuilds_for(&self, changes: usize) -> bool {
        changes >= BULK_MIN && changes.saturating_mul(BULK_SHARE) >= self.len
    }

    /// The block `x` falls in: the first whose last entry is `≥ x`, else the last block.
    fn block_of(&self, x: &T) -> usize {
        self.lasts
            .partition_point(|l| l < x)
            .min(self.blocks.len().saturating_sub(1))
    }

    /// Inserts `x` (present: nothing changes).
    pub fn insert(&mut self, x: T) {
        let b = self.block_of(&x);
        let Some(block) = self.blocks.get_mut(b) else {
            self.blocks.push(vec![x]);
            self.lasts.push(x);
            self.len += 1;
            return;
        };
        let Err(at) = block.binary_search(&x) else {
            return;
        };
        if block.len() == block.capacity() {
            // Grow by an eighth of a block, not by doubling: a block edited once would
            // otherwise keep twice its entries' memory.
            block.reserve_exact((self.block / 8).max(1));
        }
        block.insert(at, x);
        self.len += 1;
        if let (Some(last), Some(l)) = (block.last(), self.lasts.get_mut(b)) {
            *l = *last;
        }
        if block.len() >= self.block * 2 {
            let tail = block.split_off(self.block);
            block.shrink_to(self.block + self.block / 8);
            let (Some(&head_last), Some(&tail_last)) = (block.last(), tail.last()) else {
                return;
            };
            if let Some(l) = self.lasts.get_mut(b) {
                *l = head_last;
            }
            self.blocks.insert(b + 1, tail);
            self.lasts.insert(b + 1, tail_last);
        }
    }

    /// Removes `x` (absent: nothing changes).
    pub fn remove(&mut self, x: &T) {
        let b = self.block_of(x);
        let Some(block) = self.blocks.get_mut(b) else {
            return;
        };
        let Ok(at) = block.binary_search(x) else {
            return;
        };
        block.remove(at);
        self.len -= 1;
        if block.capacity() > 4 * block.len() + self.block / 8 {
            block.shrink_to(block.len() + self.block / 8);
        }
        match block.last() {
            Some(&last) => {
                if let Some(l) = self.lasts.get_mut(b) {
                    *l = last;
                }
            }
            None => {
                self.blocks.remove(b);
                self.lasts.remove(b);
            }
        }
    }

    /// The blocks become the set without the entries `drop` says (asked of each entry once, in
    /// order) and with `add` (sorted, no duplicates): one merge into blocks of [`BLOCK`]
    /// entries. Returns how many entries were dropped.
    fn rebuild(&mut self, mut drop: impl FnMut(&T) -> bool, add: &[T]) -> usize {
        // Exactly full: a block that is edited later grows by an eighth at its first insert
        // ([`Blocks::insert`]); one that is not (most, between two correlated moves) holds no
        // spare room — an eighth of the index's band entries at 1M accounts, 2 B/position.
        let cap = self.block;
        let mut out = Out {
            blocks: Vec::with_capacity((self.len + add.len()) / self.block + 1),
            cur: Vec::with_capacity(cap),
            block: self.block,
            cap,
            len: 0,
        };
        let mut dropped = 0;
        let kept = self.blocks.iter().flatten().copied().filter(|x| {
            let d = drop(x);
            dropped += usize::from(d);
            !d
        });
        // Merged with `add` (an entry in both is kept once).
        let mut add = add.iter().copied().peekable();
        for x in kept {
            while let Some(a) = add.next_if(|a| *a < x) {
                out.push(a);
            }
            add.next_if(|a| *a == x);
            out.push(x);
        }
        for a in add {
            out.push(a);
        }
        let (blocks, lasts, len) = out.finish();
        self.blocks = blocks;
        self.lasts = lasts;
        self.len = len;
        dropped
    }

    /// Appends `f` of every entry `≥ from` to `out`, in order.
    pub fn extend_from<U>(&self, from: T, out: &mut Vec<U>, f: impl Fn(T) -> U + Copy) {
        let b = self.lasts.partition_point(|l| *l < from);
        let Some(block) = self.blocks.get(b) else {
            return;
        };
        let at = block.partition_point(|x| *x < from);
        out.extend(block.get(at..).unwrap_or_default().iter().map(|x| f(*x)));
        for block in self.blocks.get(b + 1..).unwrap_or_default() {
            out.extend(block.iter().map(|x| f(*x)));
        }
    }

    /// Appends `f` of every entry `≤ to` to `out`, in order.
    pub fn extend_to<U>(&self, to: T, out: &mut Vec<U>, f: impl Fn(T) -> U + Copy) {
        let b = self.lasts.partition_point(|l| *l <= to);
        for block in self.blocks.get(..b).unwrap_or_default() {
            out.extend(block.iter().map(|x| f(*x)));
        }
        if let Some(block) = self.blocks.get(b) {
            let at = block.partition_point(|x| *x <= to);
            out.extend(block.get(..at).unwrap_or_default().iter().map(|x| f(*x)));
        }
    }

    /// Appends `f` of every entry to `out`, in order.
    pub fn extend_all<U>(&self, out: &mut Vec<U>, f: impl Fn(T) -> U + Copy) {
        for block in &self.blocks {
            out.extend(block.iter().map(|x| f(*x)));
        }
    }

    /// Every entry, in order (tests).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<T> {
        let mut v = Vec::new();
        self.extend_all(&mut v, |x| x);
        v
    }

    /// Checks the blocks' invariants (tests): non-empty, sorted, ordered, their lasts and the
    /// length right, none of twice the block size, none holding memory for more than four
    /// times its entries (and an eighth of a block).
    #[cfg(test)]
    pub fn check(&self) -> Result<(), String> {
        if self.blocks.len() != self.lasts.len() {
            return Err("lasts out of step".into());
        }
        let all = self.to_vec();
        if !all.windows(2).all(|w| w[0] < w[1]) {
            return Err("not strictly ascending".into());
        }
        if all.len() != self.len {
            return Err(format!("len {} for {} entries", self.len, all.len()));
        }
        for (b, l) in self.blocks.iter().zip(&self.lasts) {
            if b.last() != Some(l) || b.len() >= self.block * 2 {
                return Err(format!(
                    "block of {} entries, last wrong or too long",
                    b.len()
                ));
            }
            if b.capacity() > 4 * b.len() + self.block / 8 {
                return Err(format!(
                    "{} entries hold {} of memory",
                    b.len(),
                    b.capacity()
                ));
            }
        }
        Ok(())
    }
}

/// Blocks being filled by a rebuild.
struct Out<T> {
    blocks: Vec<Vec<T>>,
    cur: Vec<T>,
    block: usize,
    cap: usize,
    len: usize,
}

impl<T: Copy> Out<T> {
    fn push(&mut self, x: T) {
        self.cur.push(x);
        self.len += 1;
        if self.cur.len() == self.block {
            let full = std::mem::replace(&mut self.cur, Vec::with_capacity(self.cap));
            self.blocks.push(full);
        }
    }

    fn finish(mut self) -> (Vec<Vec<T>>, Vec<T>, usize) {
        if !self.cur.is_empty() {
            self.cur.shrink_to_fit();
            self.blocks.push(self.cur);
        }
        let lasts = self
            .blocks
            .iter()
            .filter_map(|b| b.last().copied())
            .collect();
        (self.blocks, lasts, self.len)
    }
}

#[cfg(test)]
mod tests;
