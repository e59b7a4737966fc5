//! Journal append throughput (events/s) for bursts of 1, 100 and 10,000 realistic events
//! (full snapshot, three positions, prices used) with their monitor states, under
//! `synchronous = full` (the default) and `normal`.
//!
//! Run: `cargo bench --bench journal`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code, unused_macros, unused_imports)] // the bench uses only its event builders
#[path = "../it/support/sink_contract.rs"]
mod sink_contract;

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use liqwatch::journal::{Journal, JournalOptions, Synchronous};
use liqwatch::model::{AccountId, RiskEvent};

/// The daemon's allocator (`src/main.rs`), so what is timed here is what runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fresh(template: &[RiskEvent]) -> (Vec<RiskEvent>, Vec<(AccountId, String)>) {
    let events: Vec<RiskEvent> = template
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.event_id = RiskEvent::new_id();
            e
        })
        .collect();
    let states = events
        .iter()
        .filter_map(|e| {
            let a = e.account_id.clone()?;
            Some((
                a,
                format!(r#"{{"state":"warning","level":"0.8","seq":{}}}"#, e.seq),
            ))
        })
        .collect();
    (events, states)
}

fn append(c: &mut Criterion) {
    for (label, sync) in [("full", Synchronous::Full), ("normal", Synchronous::Normal)] {
        // LIQWATCH_BENCH_DIR=/dev/shm separates CPU cost from disk cost.
        let dir = match std::env::var_os("LIQWATCH_BENCH_DIR") {
            Some(d) => tempfile::tempdir_in(d).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let journal = Journal::create_with(
            dir.path().join("bench.db"),
            JournalOptions {
                synchronous: sync,
                ..JournalOptions::default()
            },
        )
        .unwrap();
        let mut group = c.benchmark_group(format!("journal_append_{label}"));
        group.sample_size(10);
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        for burst in [1usize, 100, 10_000] {
            let template = sink_contract::burst(burst, burst.min(5_000), 1);
            group.throughput(Throughput::Elements(burst as u64));
            group.bench_function(format!("burst_{burst}"), |b| {
                b.iter_batched(
                    || fresh(&template),
                    // Return the inputs so criterion drops them outside the measurement.
                    |(events, states)| {
                        journal.append(&events, &states).unwrap();
                        (events, states)
                    },
                    BatchSize::PerIteration,
                );
            });
        }
        group.finish();
    }
}

/// On-CPU cost per event of the appending thread (from `/proc/thread-self/schedstat`), which
/// unlike wall time does not depend on how busy the machine's other processes keep the cores.
fn cpu_cost_report(_c: &mut Criterion) {
    if thread_cpu_ns().is_none() {
        return;
    }
    for (label, sync) in [("full", Synchronous::Full), ("normal", Synchronous::Normal)] {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::create_with(
            dir.path().join("cpu.db"),
            JournalOptions {
                synchronous: sync,
                ..JournalOptions::default()
            },
        )
        .unwrap();
        let template = sink_contract::burst(10_000, 5_000, 1);
        let (mut encode_ns, mut append_ns, mut wall) = (0u64, 0u64, Duration::ZERO);
        let rounds = 8u64;
        for _ in 0..rounds {
            let (events, states) = fresh(&template);
            let c0 = thread_cpu_ns().unwrap_or(0);
            let bytes: usize = events
                .iter()
                .map(|e| serde_json::to_string(e).unwrap().len())
                .sum();
            std::hint::black_box(bytes);
            let c1 = thread_cpu_ns().unwrap_or(0);
            let t = std::time::Instant::now();
            journal.append(&events, &states).unwrap();
            wall += t.elapsed();
            let c2 = thread_cpu_ns().unwrap_or(0);
            encode_ns += c1 - c0;
            append_ns += c2 - c1;
        }
        // One-event commits, the quiet market's path to a sink (a probe's warning): on-CPU
        // cost and the wall-time distribution of each commit.
        let one = sink_contract::burst(1, 1, 1);
        let commits = 2_000;
        let mut walls = Vec::with_capacity(commits);
        let c0 = thread_cpu_ns().unwrap_or(0);
        for _ in 0..commits {
            let (events, states) = fresh(&one);
            let t = std::time::Instant::now();
            journal.append(&events, &states).unwrap();
            walls.push(t.elapsed());
        }
        let cpu = thread_cpu_ns().unwrap_or(0) - c0;
        walls.sort();
        let q = |f: f64| walls[((walls.len() - 1) as f64 * f) as usize].as_secs_f64() * 1e6;
        println!(
            "journal_cpu_{label}/burst_1: {commits} one-event commits, on-CPU {:.1} us each \
             (event copy included); wall p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
            cpu as f64 / commits as f64 / 1000.0,
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
        );
        let n = (rounds * 10_000) as f64;
        println!(
            "journal_cpu_{label}/burst_10000: append on-CPU {:.2} us/event (JSON encoding {:.2}) \
             = {:.0} events/s per core; wall {:.2} us/event = {:.0} events/s on this machine now",
            append_ns as f64 / n / 1000.0,
            encode_ns as f64 / n / 1000.0,
            n / (append_ns as f64 / 1e9),
            wall.as_nanos() as f64 / n / 1000.0,
            n / wall.as_secs_f64(),
        );
    }
}

fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

criterion_group!(benches, cpu_cost_report, append);
criterion_main!(benches);
