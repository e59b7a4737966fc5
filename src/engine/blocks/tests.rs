use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

/// One batch of changes: removals, then insertions (values from a small range, so batches
/// remove what is there and what is not, re-add what they remove and insert what is present).
fn batch() -> impl Strategy<Value = (Vec<u16>, Vec<u16>)> {
    let small = (
        proptest::collection::vec(0u16..600, 0..12),
        proptest::collection::vec(0u16..600, 0..12),
    );
    let bulk = (
        proptest::collection::vec(0u16..600, 0..400),
        proptest::collection::vec(0u16..600, 0..400),
    );
    prop_oneof![3 => small, 1 => bulk]
}

/// What a set answers, read every way it can be read.
fn reads(set: &Blocks<u16>, at: u16) -> (Vec<u16>, Vec<u16>, Vec<u16>, usize) {
    let (mut from, mut to) = (Vec::new(), Vec::new());
    set.extend_from(at, &mut from, |x| x);
    set.extend_to(at, &mut to, |x| x);
    (set.to_vec(), from, to, set.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Blocks hold exactly what a `BTreeSet` given the same batches holds, and read the same
    /// ranges in the same order, whether a batch edits them (splitting and dropping blocks) or
    /// rebuilds them.
    #[test]
    fn blocks_equal_a_btree_set(
        batches in proptest::collection::vec(batch(), 1..12),
        block in 1usize..40,
        probes in proptest::collection::vec(0u16..620, 1..6),
    ) {
        let mut set = Blocks::with_block(block);
        let mut model = BTreeSet::new();
        for (rm, add) in batches {
            for r in &rm {
                model.remove(r);
            }
            model.extend(add.iter().copied());
            let (mut rm, mut add) = (rm, add);
            set.apply(&mut rm, &mut add);
            prop_assert!(rm.is_empty() && add.is_empty());
            if let Err(e) = set.check() {
                prop_assert!(false, "{}", e);
            }
            for &at in &probes {
                let from: Vec<u16> = model.range(at..).copied().collect();
                let to: Vec<u16> = model.range(..=at).copied().collect();
                let expected = (model.iter().copied().collect::<Vec<_>>(), from, to, model.len());
                prop_assert_eq!(reads(&set, at), expected);
            }
        }
    }
}

/// A large batch rebuilds the blocks at the block size; edits split a block that doubles and
/// drop one that empties; every read in between is the set's.
#[test]
fn edits_split_and_drop_blocks() {
    let mut set = Blocks::with_block(4);
    set.apply(&mut Vec::new(), &mut (0u32..300).rev().collect());
    assert_eq!(
        set.blocks.len(),
        75,
        "300 insertions are a bulk batch: blocks of 4"
    );
    assert_eq!(set.to_vec(), (0..300).collect::<Vec<_>>());
    // 5 removed, 7 removed and re-added, 1,000 added at the end.
    set.apply(&mut vec![5, 7], &mut vec![1_000, 7]);
    assert_eq!(set.len(), 300);
    set.check().unwrap();
    let mut above = Vec::new();
    set.extend_from(298, &mut above, |x| x);
    assert_eq!(above, vec![298, 299, 1_000]);
    let mut below = Vec::new();
    set.extend_to(6, &mut below, |x| x * 10);
    assert_eq!(below, vec![0, 10, 20, 30, 40, 60]);
    // The last block (296..=299, 1,000) takes three more and splits at 8.
    for x in 2_000..2_003 {
        set.apply(&mut Vec::new(), &mut vec![x]);
    }
    assert_eq!(set.blocks.len(), 76);
    set.check().unwrap();
    // Emptying the first block drops it.
    set.apply(&mut vec![0, 1, 2, 3], &mut Vec::new());
    assert_eq!(set.blocks.len(), 75);
    set.check().unwrap();
    // Removing what is absent and inserting what is present change nothing.
    set.apply(&mut vec![5, 9_999], &mut vec![4, 1_000]);
    assert_eq!(set.len(), 299);
    set.check().unwrap();
    // A quiet read (a price inside every band) reads two blocks at most.
    let mut none = Vec::new();
    set.extend_from(5_000, &mut none, |x| x);
    set.extend_to(3, &mut none, |x| x);
    assert!(none.is_empty());
}

/// A rebuilt block holds no spare room; its first insert grows it by an eighth of a block.
#[test]
fn rebuilt_blocks_are_exactly_full() {
    let mut set = Blocks::with_block(64);
    set.apply(&mut Vec::new(), &mut (0u32..1_000).map(|x| x * 2).collect());
    let caps: Vec<usize> = set.blocks.iter().map(Vec::capacity).collect();
    assert_eq!(caps.len(), 16);
    assert!(caps[..15].iter().all(|c| *c == 64), "{caps:?}");
    set.apply(&mut Vec::new(), &mut vec![3]);
    assert_eq!(set.blocks[0].capacity(), 64 + 8);
    set.check().unwrap();
}
