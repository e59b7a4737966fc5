//! Engine benchmarks: one price tick's cost with 10k, 100k and 1M accounts (4 positions each,
//! most accounts holding BTC and ETH), the monitor's evaluation of a tick, account updates, and
//! the resident memory per account at 1M accounts (printed, from /proc/self/status VmRSS).
//!
//! `cargo bench --bench engine` (all sizes) or `LIQWATCH_BENCH_MAX=100000 cargo bench --bench engine`.
//!
//! `LIQWATCH_BENCH_CHURN=0.2` replaces that share of the accounts (picked at random, with the
//! same contents) after the book is laid out, as a day of account updates does: each gets a
//! new slot array wherever the allocator puts it. `LIQWATCH_BENCH_RELAYOUT_AFTER_CHURN=1` then
//! lays the book out again.
//!
//! Two clocks: the `tick` and `update` groups measure wall time; `tick-cpu` measures the time
//! the process was actually on a CPU, every thread summed (`CLOCK_PROCESS_CPUTIME_ID`): a tick
//! with more than `engine::par::PARALLEL_MIN` holders runs on every core, so its wall time is
//! what it costs on this machine and its CPU time what it costs per core (its throughput is
//! position revaluations per second of one core).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
#[allow(dead_code)] // each bench uses only some of the book's helpers
#[path = "support/book.rs"]
mod book;
use book::{Lcg, account, build, build_unlaid, process_cpu_ns, vm_rss_kib};

use std::sync::Arc;

use liqwatch::engine::{AccountMap, Engine, EngineConfig, Monitor, MonitorConfig};
use liqwatch::model::{AccountUpdate, Fill, InstrumentId, PositionSide, PriceUsed};
use rust_decimal_macros::dec;

/// The daemon's allocator (`src/main.rs`), so what is timed here is what runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Criterion measurement of on-CPU time of the process (every thread).
struct CpuTime;
static WALL: WallTime = WallTime;

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = Duration;
    fn start(&self) -> u64 {
        process_cpu_ns()
    }
    fn end(&self, i: u64) -> Duration {
        Duration::from_nanos(process_cpu_ns().saturating_sub(i))
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

/// See the module docs: `LIQWATCH_BENCH_CHURN`, `LIQWATCH_BENCH_RELAYOUT_AFTER_CHURN`.
fn churn(m: &AccountMap, n: usize) {
    let share: f64 = std::env::var("LIQWATCH_BENCH_CHURN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    if share <= 0.0 {
        return;
    }
    let mut rng = Lcg(7);
    let t = std::time::Instant::now();
    let mut replaced = 0;
    for a in book::accounts(n) {
        if (rng.next() % 1_000_000) as f64 / 1e6 < share {
            m.apply_update(AccountUpdate::Replace { account: a })
                .unwrap();
            replaced += 1;
        }
    }
    println!(
        "engine: {replaced} of {n} accounts replaced after the layout (LIQWATCH_BENCH_CHURN={share}) in {:.2?}",
        t.elapsed()
    );
    if std::env::var("LIQWATCH_BENCH_RELAYOUT_AFTER_CHURN").as_deref() == Ok("1") {
        let t = std::time::Instant::now();
        m.relayout();
        println!("engine: laid out again in {:.2?}", t.elapsed());
    }
}

fn sizes() -> Vec<usize> {
    let max: usize = std::env::var("LIQWATCH_BENCH_MAX")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    [10_000, 100_000, 1_000_000]
        .into_iter()
        .filter(|n| *n <= max)
        .collect()
}

fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("tick");
    g.warm_up_time(Duration::from_secs(1));
    for n in sizes() {
        let before = vm_rss_kib();
        let t0 = std::time::Instant::now();
        let m = Arc::new(build_unlaid(n));
        let built = t0.elapsed();
        let after = vm_rss_kib();
        // As the daemon does after loading (RSS read before: see `build_unlaid`).
        let t1 = std::time::Instant::now();
        m.relayout();
        println!(
            "engine: {n} accounts' slots laid out in key order in {:.2?}",
            t1.elapsed()
        );
        churn(&m, n);
        let holders = m.holder_keys(&"BTCUSDT-PERP".into()).len();
        let per_account = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
        println!(
            "engine: {n} accounts built in {built:.2?} ({:.2} µs/account); RSS +{} MiB = {per_account:.0} B/account = {:.0} B/position; BTC holders {holders}",
            built.as_secs_f64() * 1e6 / n as f64,
            after.saturating_sub(before) / 1024,
            per_account / 4.0,
        );
        g.sample_size(if n >= 1_000_000 { 10 } else { 20 });
        g.measurement_time(Duration::from_secs(if n >= 1_000_000 { 20 } else { 5 }));
        g.throughput(Throughput::Elements(holders as u64));
        let mut out = Vec::with_capacity(holders);
        let mut flip = false;
        g.bench_function(BenchmarkId::new("BTCUSDT-PERP", n), |b| {
            b.iter(|| {
                flip = !flip;
                let p = if flip { dec!(60012.5) } else { dec!(59987.5) };
                out.clear();
                black_box(m.apply_price(&"BTCUSDT-PERP".into(), p, &mut out).unwrap())
            })
        });
        // The monitor's pass over one tick's reports (all healthy: the common case).
        let mut mon = Monitor::new(MonitorConfig::default()).unwrap();
        let info: HashMap<InstrumentId, PriceUsed> = HashMap::new();
        out.clear();
        m.apply_price(&"BTCUSDT-PERP".into(), dec!(60000), &mut out)
            .unwrap();
        let _ = mon.evaluate(&m, &out, &info, 0);
        g.bench_function(BenchmarkId::new("monitor-evaluate", n), |b| {
            b.iter(|| black_box(mon.evaluate(&m, &out, &info, 0).len()))
        });
        tick_cpu(&m, n, holders);
        indexed(&m, n);
        if n == 100_000 || sizes().len() == 1 {
            updates(&m, n);
        }
        drop(m);
    }
    g.finish();
}

fn tick_cpu(m: &AccountMap, n: usize, holders: usize) {
    let mut c = Criterion::default()
        .with_measurement(CpuTime)
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(if n >= 1_000_000 { 20 } else { 5 }));
    let mut g = c.benchmark_group("tick-cpu");
    g.throughput(Throughput::Elements(holders as u64));
    let mut out = Vec::with_capacity(holders);
    let mut flip = false;
    g.bench_function(BenchmarkId::new("BTCUSDT-PERP", n), |b| {
        b.iter(|| {
            flip = !flip;
            let p = if flip { dec!(60012.5) } else { dec!(59987.5) };
            out.clear();
            black_box(m.apply_price(&"BTCUSDT-PERP".into(), p, &mut out).unwrap())
        })
    });
    g.finish();
}

/// The distance index, through the one `Engine` the daemon runs: build it over the map (every
/// account evaluated, then banded), then ticks through `Engine::on_prices` — set the price,
/// wake, value, evaluate and re-band the woken. Three workloads: a random walk of 0.05 % steps
/// (a busy but normal market: bands are crossed now and then and rebuilt), a quiet tick (one
/// price step back and forth: crosses nobody) and alternating ±1 % jumps.
fn indexed(m: &Arc<AccountMap>, n: usize) {
    let info: HashMap<InstrumentId, PriceUsed> = HashMap::new();
    let mut out = Vec::new();
    m.apply_price(&"BTCUSDT-PERP".into(), dec!(60000), &mut out)
        .unwrap();
    let before = vm_rss_kib();
    let t0 = std::time::Instant::now();
    let mut engine = Engine::new(
        Arc::clone(m),
        EngineConfig {
            monitor: MonitorConfig::default(),
            distance_index: true,
        },
    )
    .unwrap();
    let _ = engine.evaluate_all(&info, 0);
    let (tracked, banded) = engine.index().map(|i| i.counts()).unwrap_or_default();
    println!(
        "engine: distance index over {n} accounts built in {:.2?}; {banded} of {tracked} banded; RSS +{} MiB = {:.0} B/account",
        t0.elapsed(),
        vm_rss_kib().saturating_sub(before) / 1024,
        vm_rss_kib().saturating_sub(before) as f64 * 1024.0 / n as f64,
    );
    let mut c = Criterion::default()
        .with_measurement(CpuTime)
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let mut g = c.benchmark_group("tick-indexed-cpu");
    let btc = InstrumentId::from("BTCUSDT-PERP");
    let mut rng = Lcg(99);
    let mut price = dec!(60000);
    let mut walk = Counted::default();
    g.bench_function(BenchmarkId::new("walk-0.05%", n), |b| {
        b.iter(|| {
            let step = if rng.next().is_multiple_of(2) {
                dec!(1.0005)
            } else {
                dec!(0.9995)
            };
            price = (price * step).round_dp(1);
            walk.tick(&mut engine, &btc, price)
        })
    });
    println!(
        "engine: indexed walk over {n} accounts: {} ticks, {:.1} accounts woken (valued) per tick, {:.1} re-spread without valuing, {} events ({:.2} per tick, {:.1} woken per event), final BTC {price}",
        walk.ticks,
        walk.woken_per_tick(),
        walk.respread_per_tick(),
        walk.events,
        walk.events as f64 / walk.ticks.max(1) as f64,
        walk.woken_per_event(),
    );
    // A tick that crosses nobody: BTC one price step (0.1) up and back where the walk ended —
    // the common tick of a quiet market; what it costs is waking (almost) no one.
    let mut quiet = Counted::default();
    let mut flip = false;
    g.bench_function(BenchmarkId::new("quiet-0.1", n), |b| {
        b.iter(|| {
            flip = !flip;
            let p = if flip { price + dec!(0.1) } else { price };
            quiet.tick(&mut engine, &btc, p)
        })
    });
    println!(
        "engine: indexed quiet ticks (BTC {price} ± 0.1) over {n} accounts: {} ticks, {:.3} accounts woken per tick, {} events",
        quiet.ticks,
        quiet.woken_per_tick(),
        quiet.events
    );
    let mut jumps = Counted::default();
    let mut flip = false;
    g.bench_function(BenchmarkId::new("jump-1%", n), |b| {
        b.iter(|| {
            flip = !flip;
            let p = if flip { price * dec!(1.01) } else { price };
            jumps.tick(&mut engine, &btc, p.round_dp(1))
        })
    });
    println!(
        "engine: indexed ±1 % jumps over {n} accounts: {:.1} accounts woken per tick, {:.1} re-spread",
        jumps.woken_per_tick(),
        jumps.respread_per_tick()
    );
    g.finish();
}

/// Ticks through the engine, counting the accounts each woke and the events it made.
#[derive(Default)]
struct Counted {
    ticks: u64,
    woken: u64,
    respread: u64,
    events: u64,
}

impl Counted {
    /// One BTC tick at `price`; returns the number of events (for `black_box`).
    fn tick(
        &mut self,
        engine: &mut Engine,
        btc: &InstrumentId,
        price: rust_decimal::Decimal,
    ) -> usize {
        let info: HashMap<InstrumentId, PriceUsed> = HashMap::new();
        let e = engine.on_prices([(btc, price)], &info, 0);
        self.ticks += 1;
        self.woken += engine.last_valued() as u64;
        self.respread += engine.last_respread() as u64;
        self.events += e.len() as u64;
        black_box(e.len())
    }

    fn woken_per_tick(&self) -> f64 {
        self.woken as f64 / self.ticks.max(1) as f64
    }

    fn respread_per_tick(&self) -> f64 {
        self.respread as f64 / self.ticks.max(1) as f64
    }

    /// Accounts valued per event.
    fn woken_per_event(&self) -> f64 {
        self.woken as f64 / self.events.max(1) as f64
    }
}

fn updates(m: &AccountMap, n: usize) {
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut g = c.benchmark_group("update");
    let mut k = 0usize;
    g.bench_function(BenchmarkId::new("fill", n), |b| {
        b.iter(|| {
            k += 1;
            let q = if k.is_multiple_of(2) {
                dec!(0.01)
            } else {
                dec!(-0.01)
            };
            m.apply_update(AccountUpdate::Fill {
                account_id: format!("acct-{:08}", (k * 7919) % n).into(),
                fill: Fill {
                    instrument: "BTCUSDT-PERP".into(),
                    side: PositionSide::Both,
                    quantity: q,
                    price: dec!(60000),
                    fee: dec!(0.24),
                    settle_asset: None,
                },
            })
            .unwrap()
        })
    });
    let mut rng = Lcg(7);
    g.bench_function(BenchmarkId::new("replace", n), |b| {
        b.iter(|| {
            k += 1;
            let a = account((k * 7919) % n, &mut rng);
            m.apply_update(AccountUpdate::Replace { account: a })
                .unwrap()
        })
    });
    g.bench_function(BenchmarkId::new("collateral", n), |b| {
        b.iter(|| {
            k += 1;
            m.apply_update(AccountUpdate::Collateral {
                account_id: format!("acct-{:08}", (k * 7919) % n).into(),
                asset: "USDT".into(),
                delta: dec!(1),
            })
            .unwrap()
        })
    });
    g.finish();
}

/// `LIQWATCH_COUNT_TICKS=N` builds 10,000 accounts, applies N BTC ticks and exits: a fixed
/// workload for `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*apply_price*'`
/// (instruction counts do not depend on machine load).
fn count_ticks() -> bool {
    let Some(n) = std::env::var("LIQWATCH_COUNT_TICKS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return false;
    };
    let m = build(10_000);
    let mut out = Vec::with_capacity(10_000);
    let mut touched = 0usize;
    for k in 0..n {
        let p = if k % 2 == 0 {
            dec!(60012.5)
        } else {
            dec!(59987.5)
        };
        out.clear();
        let s = m.apply_price(&"BTCUSDT-PERP".into(), p, &mut out).unwrap();
        touched += s.slots;
    }
    println!("count_ticks: {n} ticks, {touched} positions revalued");
    true
}

criterion_group!(benches, engine);

fn main() {
    // As the daemon runs (src/main.rs).
    let _ = liqwatch::runtime::memory::disable_transparent_huge_pages();
    if count_ticks() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
