//! An ordered set kept as one sorted run with small edits beside it: the distance index's sets
//! (every band end of every holder, one per instrument and side).
//!
//! A correlated move re-bands much of the book at once. A `BTreeSet` rebuilt from sorted input
//! walks its old nodes one by one to free them, re-sorts the two runs it is given and allocates
//! a node per eleven entries; on the crash bench that was 13 % of the step's instructions. Here
//! the set is a sorted `Vec` ([`RunSet::run`]) rebuilt by one linear merge into one allocation,
//! and read by binary search and slices.
//!
//! One account's update must not copy the run, so small changes go beside it: `added` (not in
//! the run) and `removed` (in the run, no longer in the set), two small `BTreeSet`s. When they
//! grow past a share of the run ([`EDITS_SHARE`], at least [`EDITS_MIN`]) they are merged into
//! it: O(n) once per n/16 edits, ~16 entries copied per edit.

use std::collections::BTreeSet;

/// Edits kept beside the run before it is merged, at least.
const EDITS_MIN: usize = 1_024;

/// Edits kept beside the run before it is merged: one per this many entries of the run.
const EDITS_SHARE: usize = 16;

/// A change batch with at least this many changes, and at least one per [`BULK_SHARE`] of the
/// set's entries, rebuilds the run instead of editing beside it.
const BULK_MIN: usize = 256;

/// See [`BULK_MIN`]: one change in 32 entries (~3 %).
const BULK_SHARE: usize = 32;

/// A sorted run with the edits since it was last merged (see the module docs).
#[derive(Debug, Clone)]
pub struct RunSet<T> {
    /// Sorted, without duplicates.
    run: Vec<T>,
    /// Entries of the set not in `run`.
    added: BTreeSet<T>,
    /// Entries of `run` not in the set.
    removed: BTreeSet<T>,
    /// Edits beside the run that trigger a merge, at least (tests make it small).
    edits_min: usize,
}

impl<T> Default for RunSet<T> {
    fn default() -> Self {
        RunSet {
            run: Vec::new(),
            added: BTreeSet::new(),
            removed: BTreeSet::new(),
            edits_min: EDITS_MIN,
        }
    }
}

impl<T: Ord + Copy> RunSet<T> {
    /// An empty set that merges its edits from `edits_min` of them on (tests).
    #[cfg(test)]
    pub fn with_edits_min(edits_min: usize) -> Self {
        RunSet {
            edits_min,
            ..Self::default()
        }
    }

    /// Entries in the set.
    pub fn len(&self) -> usize {
        (self.run.len() + self.added.len()).saturating_sub(self.removed.len())
    }

    /// Entries beside the run (tests).
    #[cfg(test)]
    pub fn edits(&self) -> usize {
        self.added.len() + self.removed.len()
    }

    /// Removes every entry of `rm` (absent ones are ignored), then inserts every entry of `add`
    /// (present ones are ignored); both are left empty, in any order. A batch that is large for
    /// the set rebuilds the run in one merge; a small one edits beside it.
    pub fn apply(&mut self, rm: &mut Vec<T>, add: &mut Vec<T>) {
        let k = rm.len() + add.len();
        if k >= BULK_MIN && k.saturating_mul(BULK_SHARE) >= self.len() {
            rm.sort_unstable();
            add.sort_unstable();
            add.dedup();
            self.rebuild(rm, add);
        } else {
            for r in rm.iter() {
                self.remove(r);
            }
            for a in add.iter() {
                self.insert(*a);
            }
            if self.added.len() + self.removed.len()
                > self.edits_min.max(self.run.len() / EDITS_SHARE)
            {
                self.rebuild(&[], &[]);
            }
        }
        rm.clear();
        add.clear();
    }

    fn insert(&mut self, x: T) {
        if !self.removed.remove(&x) && self.run.binary_search(&x).is_err() {
            self.added.insert(x);
        }
    }

    fn remove(&mut self, x: &T) {
        if !self.added.remove(x) && self.run.binary_search(x).is_ok() {
            self.removed.insert(*x);
        }
    }

    /// The run becomes the set without `rm` (sorted) and with `add` (sorted, no duplicates):
    /// one merge of four sorted sequences into one allocation of the exact size.
    fn rebuild(&mut self, rm: &[T], add: &[T]) {
        let mut kept = Vec::with_capacity(self.len().saturating_add(add.len()));
        let mut removed = self.removed.iter().peekable();
        let mut added = self.added.iter().peekable();
        let mut rm = rm.iter().peekable();
        let mut add = add.iter().peekable();
        // The set in order: the run without `removed`, merged with `added` (disjoint from it).
        let mut set = self
            .run
            .iter()
            .filter(|x| {
                while removed.next_if(|r| r < x).is_some() {}
                removed.next_if(|r| r == x).is_none()
            })
            .peekable();
        loop {
            let next = match (set.peek(), added.peek()) {
                (Some(a), Some(b)) if b < a => added.next(),
                (Some(_), _) => set.next(),
                (None, _) => added.next(),
            };
            let Some(&x) = next else { break };
            while rm.next_if(|r| **r < x).is_some() {}
            if rm.next_if(|r| **r == x).is_some() {
                continue;
            }
            while let Some(&&a) = add.peek() {
                if a < x {
                    kept.push(a);
                    add.next();
                } else {
                    if a == x {
                        add.next();
                    }
                    break;
                }
            }
            kept.push(x);
        }
        kept.extend(add);
        kept.shrink_to_fit();
        self.run = kept;
        self.added.clear();
        self.removed.clear();
    }

    /// Appends `f` of every entry `≥ from` to `out`, in no particular order.
    pub fn extend_from<U>(&self, from: T, out: &mut Vec<U>, f: impl Fn(T) -> U + Copy) {
        let at = self.run.partition_point(|x| *x < from);
        self.extend_run(self.run.get(at..).unwrap_or_default(), out, f);
        out.extend(self.added.range(from..).map(|x| f(*x)));
    }

    /// Appends `f` of every entry `≤ to` to `out`, in no particular order.
    pub fn extend_to<U>(&self, to: T, out: &mut Vec<U>, f: impl Fn(T) -> U + Copy) {
        let at = self.run.partition_point(|x| *x <= to);
        self.extend_run(self.run.get(..at).unwrap_or_default(), out, f);
        out.extend(self.added.range(..=to).map(|x| f(*x)));
    }

    /// Appends `f` of every entry to `out`, in no particular order.
    pub fn extend_all<U>(&self, out: &mut Vec<U>, f: impl Fn(T) -> U + Copy) {
        self.extend_run(&self.run, out, f);
        out.extend(self.added.iter().map(|x| f(*x)));
    }

    /// Appends `f` of the entries of `part` (a slice of the run) that are still in the set.
    fn extend_run<U>(&self, part: &[T], out: &mut Vec<U>, f: impl Fn(T) -> U + Copy) {
        let (Some(first), Some(last)) = (part.first(), part.last()) else {
            return;
        };
        let mut removed = self.removed.range(first..=last).peekable();
        if removed.peek().is_none() {
            out.extend(part.iter().map(|x| f(*x)));
            return;
        }
        out.extend(
            part.iter()
                .copied()
                .filter(|x| {
                    while removed.next_if(|r| *r < x).is_some() {}
                    removed.next_if(|r| *r == x).is_none()
                })
                .map(f),
        );
    }

    /// Every entry, ascending (tests).
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<T> {
        let mut v = Vec::new();
        self.extend_all(&mut v, |x| x);
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests;
