//! Splitting a step's per-account work over the cores, with the output in input order.
//!
//! A correlated move wakes a large share of the book; valuing the woken accounts and computing
//! their new bands are independent per account (the map locks per instrument and per account;
//! the index only reads while bands are computed), so both run on every core. Results come back
//! in the order of the input, so what a step does next — and the journal order — does not
//! depend on the split.

use std::sync::OnceLock;

/// Items below which the work stays on the calling thread (spawning costs more than it saves).
pub const PARALLEL_MIN: usize = 2_048;

/// Threads at most, whatever the machine.
const MAX_THREADS: usize = 8;

/// The threads to split work over: the available cores (at most [`MAX_THREADS`]), asked once —
/// `available_parallelism` reads the cgroup quota files on Linux, tens of µs per call, which a
/// quiet tick cannot afford.
pub fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(MAX_THREADS)
    })
}

/// `f` over `items`, in order; split over the available cores when there are many items.
pub fn map_in_order<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    map_in_order_from(PARALLEL_MIN, items, f)
}

/// [`map_in_order`] split from `min` items on (dear work, such as an event's snapshot, pays for
/// the threads sooner).
pub fn map_in_order_from<T: Sync, R: Send>(
    min: usize,
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    map_chunks_in_order_from(min, items, |chunk| chunk.iter().map(&f).collect())
}

/// `f` over consecutive chunks of `items` — one chunk per core when there are many items,
/// else all of them in one — each returning one result per item, concatenated in order. For
/// work that takes something once per chunk (locks, a table) rather than once per item.
pub fn map_chunks_in_order<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&[T]) -> Vec<R> + Sync,
) -> Vec<R> {
    map_chunks_in_order_from(PARALLEL_MIN, items, f)
}

/// `items` split over the available cores as [`map_chunks_in_order`] splits them, without
/// collecting the calling thread's share: the calling thread runs `here` on the first chunk
/// (handing its results on as it makes them), the other threads run `worker` on the others, and
/// their results then go to `rest` in chunk order. If `here` hands its results on in order, what
/// comes out is the sequence `map_chunks_in_order(items, worker)` would return — minus the copy
/// of the first chunk's results (at a million accounts a tick's first half is tens of MB).
/// Below two threads, everything runs through `here`.
/// `here` and `rest` share `ctx` (they never run at once).
pub fn split_first_here<T: Sync, R: Send, C>(
    items: &[T],
    ctx: &mut C,
    worker: impl Fn(&[T]) -> Vec<R> + Sync,
    here: impl FnOnce(&mut C, &[T]),
    mut rest: impl FnMut(&mut C, R),
) {
    let threads = threads();
    if threads < 2 || items.len() < 2 {
        here(ctx, items);
        return;
    }
    let chunk = items.len().div_ceil(threads);
    let (first, others) = items.split_at(chunk.min(items.len()));
    let worker = &worker;
    std::thread::scope(|scope| {
        let handles: Vec<_> = others
            .chunks(chunk)
            .map(|c| scope.spawn(move || worker(c)))
            .collect();
        here(ctx, first);
        for h in handles {
            match h.join() {
                Ok(part) => part.into_iter().for_each(|r| rest(ctx, r)),
                // A panic in a worker is a bug in `worker`: raised again here, as it would have
                // been without the split.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
}

/// [`map_chunks_in_order`] split from `min` items on.
pub fn map_chunks_in_order_from<T: Sync, R: Send>(
    min: usize,
    items: &[T],
    f: impl Fn(&[T]) -> Vec<R> + Sync,
) -> Vec<R> {
    if items.len() < min.max(2) {
        return f(items);
    }
    let mut out = Vec::new();
    split_first_here(
        items,
        &mut out,
        &f,
        |out, first| {
            *out = f(first);
            out.reserve(items.len().saturating_sub(first.len()));
        },
        |out, r| out.push(r),
    );
    out
}

/// Runs `f` on every item, split over the available cores when the items' total `cost` is at
/// least `min`: the dearest items first, each thread taking the next one left (a few unequal
/// jobs — one ordered set per instrument — spread evenly). Nothing is returned, so the order
/// of the work does not matter.
pub fn for_each_balanced<T: Send>(
    mut items: Vec<T>,
    cost: impl Fn(&T) -> usize,
    min: usize,
    f: impl Fn(T) + Sync,
) {
    let total: usize = items.iter().map(&cost).sum();
    let threads = threads().min(items.len());
    if total < min || threads < 2 {
        items.into_iter().for_each(f);
        return;
    }
    // Cheapest first, so that `pop` takes the dearest left.
    items.sort_by_key(|i| cost(i));
    let queue = std::sync::Mutex::new(items);
    let next = || queue.lock().ok().and_then(|mut q| q.pop());
    on_threads(threads, || {
        while let Some(item) = next() {
            f(item);
        }
    });
}

/// Runs `work` on `threads` threads at once, the calling thread one of them (each takes its
/// share of a common queue). A panic in `work` is a bug: it is raised again here, where it
/// would have been raised without the split.
pub fn on_threads(threads: usize, work: impl Fn() + Sync) {
    let work = &work;
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        work();
        for h in helpers {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Split or not, the output is `f` over the input, in input order.
    #[test]
    fn output_in_input_order() {
        for n in [0, 1, PARALLEL_MIN - 1, PARALLEL_MIN, 3 * PARALLEL_MIN + 7] {
            let items: Vec<u64> = (0..n as u64).collect();
            let out = map_in_order(&items, |x| x * 3 + 1);
            let expected: Vec<u64> = items.iter().map(|x| x * 3 + 1).collect();
            assert_eq!(out, expected, "n = {n}");
            for min in [0, 2, 64] {
                let out = map_in_order_from(min, &items, |x| x * 3 + 1);
                assert_eq!(out, expected, "n = {n}, min = {min}");
            }
        }
        for n in [63, 64, 65, 129] {
            let items: Vec<u64> = (0..n).collect();
            let expected: Vec<u64> = items.iter().map(|x| x * 3 + 1).collect();
            assert_eq!(
                map_in_order_from(64, &items, |x| x * 3 + 1),
                expected,
                "n = {n}"
            );
        }
    }

    /// The first chunk's results handed on by the calling thread, then the other chunks' in
    /// order: the same sequence as `map_chunks_in_order`, for any length.
    #[test]
    fn first_chunk_here_keeps_the_order() {
        for n in [0usize, 1, 2, 3, 7, 100, 3 * PARALLEL_MIN + 7] {
            let items: Vec<u64> = (0..n as u64).collect();
            let mut out = Vec::new();
            split_first_here(
                &items,
                &mut out,
                |c| c.iter().map(|x| x * 3 + 1).collect(),
                |out, c| out.extend(c.iter().map(|x| x * 3 + 1)),
                |out, r| out.push(r),
            );
            let expected: Vec<u64> = items.iter().map(|x| x * 3 + 1).collect();
            assert_eq!(out, expected, "n = {n}");
        }
    }

    /// Split or not, every item is worked on exactly once.
    #[test]
    fn balanced_work_covers_every_item_once() {
        use std::sync::atomic::{AtomicU64, Ordering};
        for (n, min) in [(0, 0), (1, 0), (7, 0), (7, usize::MAX), (100, 10)] {
            let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            let items: Vec<usize> = (0..n).collect();
            for_each_balanced(
                items,
                |&i| i % 5,
                min,
                |i| {
                    if let Some(h) = hits.get(i) {
                        h.fetch_add(1, Ordering::Relaxed);
                    }
                },
            );
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}, min = {min}"
            );
        }
    }
}
