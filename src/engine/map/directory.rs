//! The account directory: an account's id to its key.
//!
//! A hash table per shard that keeps, per account, only its key and 32 bits of its id's hash
//! (8 bytes and a control byte per bucket): the id itself lives once, in the account's cell,
//! and a lookup compares it there (`is`). A table grows from the bits it keeps, never reading
//! an id. At 1M accounts this is ~19 bytes per account, against ~52 for a `DashMap` keyed by
//! the id (24-byte buckets), which the map used until stop 33.
//!
//! Locking: a shard's lock is held for one lookup, insert or removal; a lookup under it locks
//! the cells of the candidates whose hash bits match (one, almost always) — allowed by the
//! map's lock order, as nothing waits for a lock while holding a cell.

use std::hash::BuildHasher;

use hashbrown::HashTable;
use parking_lot::RwLock;

use super::AccountKey;
use crate::model::AccountId;

/// Shards (a power of two, at most 64: picked by the hash's top six bits).
const SHARDS: usize = 64;

/// One shard: per account, its key and the kept bits of its id's hash.
type Shard = RwLock<HashTable<(AccountKey, u32)>>;

pub(super) struct Directory {
    shards: Box<[Shard]>,
    hasher: foldhash::fast::RandomState,
    /// Tests: file every id in one shard under the same bits, so that only the ids tell them
    /// apart.
    #[cfg(test)]
    colliding: bool,
}

/// Where an id is filed: its shard and the 32 bits of its hash the table keeps.
#[derive(Clone, Copy)]
struct Spot {
    shard: usize,
    bits: u32,
}

/// The table's hash of the kept bits (spread to the top bits, which the table's probe tags
/// read).
fn table_hash(bits: u32) -> u64 {
    u64::from(bits).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Directory {
    pub(super) fn new() -> Self {
        Directory {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: foldhash::fast::RandomState::default(),
            #[cfg(test)]
            colliding: false,
        }
    }

    fn spot(&self, id: &AccountId) -> Spot {
        #[cfg(test)]
        if self.colliding {
            return Spot { shard: 0, bits: 7 };
        }
        let h = self.hasher.hash_one(id);
        Spot {
            shard: (h >> 58) as usize % SHARDS,
            bits: h as u32,
        }
    }

    /// The key filed under `id`; `is(key)` says whether the account with that key has this id.
    pub(super) fn get(
        &self,
        id: &AccountId,
        is: impl Fn(AccountKey) -> bool,
    ) -> Option<AccountKey> {
        let s = self.spot(id);
        let shard = self.shards.get(s.shard)?.read();
        shard
            .find(table_hash(s.bits), |&(k, b)| b == s.bits && is(k))
            .map(|&(k, _)| k)
    }

    /// The key filed under `id`, or one from `new`, filed under it — `new` runs under the
    /// shard's lock and must leave `is(key)` true for its key, so that no other caller files a
    /// second key for the same id.
    pub(super) fn get_or_insert<E>(
        &self,
        id: &AccountId,
        is: impl Fn(AccountKey) -> bool,
        new: impl FnOnce() -> Result<AccountKey, E>,
    ) -> Result<AccountKey, E> {
        let s = self.spot(id);
        let Some(shard) = self.shards.get(s.shard) else {
            return new(); // never: the spot is always a shard
        };
        let mut table = shard.write();
        if let Some(&(k, _)) = table.find(table_hash(s.bits), |&(k, b)| b == s.bits && is(k)) {
            return Ok(k);
        }
        let k = new()?;
        table.insert_unique(table_hash(s.bits), (k, s.bits), |&(_, b)| table_hash(b));
        Ok(k)
    }

    /// Forgets `key` as `id`'s key (nothing when it is not filed under `id`).
    pub(super) fn remove(&self, id: &AccountId, key: AccountKey) {
        let s = self.spot(id);
        let Some(shard) = self.shards.get(s.shard) else {
            return;
        };
        if let Ok(entry) = shard
            .write()
            .find_entry(table_hash(s.bits), |&(k, b)| b == s.bits && k == key)
        {
            entry.remove();
        }
    }

    /// Keys filed (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Against a `HashMap`: ids filed, found, refiled and forgotten in any order — with real
    /// hashes, and with every id under the same shard and bits (only the id compare in the
    /// accounts' cells tells them apart). The cells are a list of ids by key, `None` once
    /// removed, as the map's are.
    #[test]
    fn the_directory_files_what_a_hash_map_would() {
        for colliding in [false, true] {
            let d = Directory {
                colliding,
                ..Directory::new()
            };
            let mut cells: Vec<Option<AccountId>> = Vec::new();
            let mut want: HashMap<AccountId, AccountKey> = HashMap::new();
            let mut rng = 0x2545_F491_4F6C_DD1Du64;
            for n in 0..20_000u32 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let id = AccountId::new(format!("acct-{}", rng % 3_000));
                let is = |cells: &[Option<AccountId>], k: AccountKey| {
                    cells.get(k as usize).and_then(|i| i.as_ref()) == Some(&id)
                };
                assert_eq!(
                    d.get(&id, |k| is(&cells, k)),
                    want.get(&id).copied(),
                    "{id}"
                );
                if rng.is_multiple_of(3) {
                    if let Some(k) = want.remove(&id) {
                        // As the map removes: the cell emptied first, then the entry.
                        cells[k as usize] = None;
                        d.remove(&id, k);
                    }
                } else {
                    let next = cells.len() as AccountKey;
                    let k = d
                        .get_or_insert(&id, |k| is(&cells, k), || Ok::<_, ()>(next))
                        .unwrap();
                    if k == next {
                        cells.push(Some(id.clone()));
                    }
                    assert_eq!(*want.entry(id.clone()).or_insert(k), k, "{id} refiled");
                }
                if n.is_multiple_of(64) {
                    assert_eq!(d.len(), want.len());
                }
            }
            assert_eq!(d.len(), want.len());
            assert!(want.len() > 1_000);
        }
    }
}
