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
    if items.len() < PARALLEL_MIN {
        return items.iter().map(f).collect();
    }
    let threads = threads();
    if threads < 2 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .skip(1)
            .map(|c| scope.spawn(move || c.iter().map(f).collect::<Vec<R>>()))
            .collect();
        // The calling thread takes the first chunk.
        let mut out: Vec<R> = items.iter().take(chunk).map(f).collect();
        out.reserve(items.len().saturating_sub(chunk));
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part),
                // A panic in a worker is a bug in `f`: surface it where it would have been
                // raised without the split.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
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
        }
    }
}
