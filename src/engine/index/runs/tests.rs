use super::*;
use proptest::prelude::*;

/// One batch of changes: removals, then insertions (values from a small range, so batches
/// remove what is there, re-add what was removed and insert what is present).
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
fn reads(set: &RunSet<u16>, at: u16) -> (Vec<u16>, Vec<u16>, Vec<u16>, usize) {
    let (mut from, mut to) = (Vec::new(), Vec::new());
    set.extend_from(at, &mut from, |x| x);
    set.extend_to(at, &mut to, |x| x);
    from.sort_unstable();
    to.sort_unstable();
    (set.to_vec(), from, to, set.len())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// A run set holds exactly what a `BTreeSet` given the same batches holds, and reads the
    /// same ranges, whether its batches are edited beside the run, merged into it when the
    /// edits grow, or rebuild it.
    #[test]
    fn run_set_equals_btree_set(
        batches in proptest::collection::vec(batch(), 1..12),
        edits_min in 0usize..40,
        probes in proptest::collection::vec(0u16..620, 1..6),
    ) {
        let mut set = RunSet::with_edits_min(edits_min);
        let mut model = BTreeSet::new();
        for (rm, add) in batches {
            for r in &rm {
                model.remove(r);
            }
            model.extend(add.iter().copied());
            let (mut rm, mut add) = (rm, add);
            set.apply(&mut rm, &mut add);
            prop_assert!(rm.is_empty() && add.is_empty());
            // Edits never pile up past the bound that merges them.
            prop_assert!(set.edits() <= edits_min.max(set.len() / EDITS_SHARE) + 2 * 12);
            for &at in &probes {
                let from: Vec<u16> = model.range(at..).copied().collect();
                let to: Vec<u16> = model.range(..=at).copied().collect();
                let expected = (model.iter().copied().collect::<Vec<_>>(), from, to, model.len());
                prop_assert_eq!(reads(&set, at), expected);
            }
        }
    }
}

/// Small batches stay beside the run until they outgrow it, then merge into it; a large batch
/// rebuilds the run at once. Every read in between is the set's.
#[test]
fn edits_merge_when_they_outgrow_the_run() {
    let mut set = RunSet::with_edits_min(4);
    set.apply(&mut Vec::new(), &mut (0u32..300).collect());
    assert_eq!(
        set.edits(),
        0,
        "300 insertions are a bulk batch: one rebuild"
    );
    assert_eq!(set.to_vec(), (0..300).collect::<Vec<_>>());
    set.apply(&mut vec![5, 7], &mut vec![1_000, 7]);
    // 5 removed, 7 removed and re-added (back in the run), 1,000 added beside it.
    assert_eq!(set.edits(), 2);
    assert_eq!(set.len(), 300);
    let mut above = Vec::new();
    set.extend_from(298, &mut above, |x| x);
    above.sort_unstable();
    assert_eq!(above, vec![298, 299, 1_000]);
    let mut below = Vec::new();
    set.extend_to(6, &mut below, |x| x * 10);
    below.sort_unstable();
    assert_eq!(below, vec![0, 10, 20, 30, 40, 60]);
    // 300 / 16 = 18 edits kept beside the run; the 19th merges them all.
    for x in 2_000..2_016 {
        set.apply(&mut Vec::new(), &mut vec![x]);
    }
    assert_eq!(set.edits(), 18);
    set.apply(&mut Vec::new(), &mut vec![3_000]);
    assert_eq!(set.edits(), 0);
    assert_eq!(set.len(), 300 + 17);
    assert!(set.to_vec().windows(2).all(|w| w[0] < w[1]));
    // Removing what is absent and inserting what is present change nothing.
    set.apply(&mut vec![5, 9_999], &mut vec![0, 1_000]);
    assert_eq!(set.edits(), 0);
    assert_eq!(set.len(), 317);
}
