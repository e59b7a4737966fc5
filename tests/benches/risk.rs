//! Historical VaR/ES/P(liquidation)/component ES over a book: accounts × scenarios, the
//! compiled linear path (`RiskBook::accounts`) beside a plain full revaluation of every
//! scenario through the margin model (`RiskBook::account_full`), both on every core.
//!
//! Book: each account holds USDT, half of them also BTC collateral, and 3 linear perps (BTC,
//! ETH, SOL; random sides, sizes with 2–3 decimals, entries within ±20 % of the mark) — tier
//! walks included (BTC notionals span tiers 1–4). Scenarios: seeded random joint returns within
//! ±25 % (4 decimals), 1,000 of them by default.
//!
//! Before criterion runs, one timed pass at `LIQWATCH_BENCH_RISK_ACCOUNTS` accounts (default
//! 200,000) prints the throughput and the extrapolation to 1M accounts.
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use liqwatch::model::{Account, Instrument, InstrumentId, Position, PositionSide};
use liqwatch::risk::{RiskBook, ScenarioSet};
use liqwatch::sources::files::load_instruments;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

/// The daemon's allocator (`src/main.rs`), so what is timed here is what runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SCENARIOS: usize = 1000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % ((hi - lo) as u64)) as i64
    }
}

fn instruments() -> HashMap<InstrumentId, Instrument> {
    load_instruments(&Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml")).unwrap()
}

fn prices() -> HashMap<InstrumentId, Decimal> {
    [
        ("BTCUSDT-PERP", dec!(60000)),
        ("BTC", dec!(60000)),
        ("ETHUSDT-PERP", dec!(3000)),
        ("SOLUSDT-PERP", dec!(150)),
    ]
    .into_iter()
    .map(|(k, v)| (InstrumentId::from(k), v))
    .collect()
}

fn scenarios(n: usize) -> ScenarioSet {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let rows: Vec<Vec<Decimal>> = (0..n)
        .map(|_| {
            let common = rng.range(-1500, 1500);
            (0..3)
                .map(|_| Decimal::new(common + rng.range(-1000, 1000), 4))
                .collect()
        })
        .collect();
    ScenarioSet::from_returns("bench", &["BTC", "ETH", "SOL"], &rows).unwrap()
}

fn book(n: usize) -> Vec<Account> {
    let mut rng = Rng(42);
    let legs = [
        ("BTCUSDT-PERP", 60000i64, 2_000i64),
        ("ETHUSDT-PERP", 3000, 40_000),
        ("SOLUSDT-PERP", 150, 800_000),
    ];
    (0..n)
        .map(|i| {
            let mut collateral = BTreeMap::new();
            collateral.insert(
                InstrumentId::from("USDT"),
                Decimal::new(rng.range(10_000, 5_000_000), 1),
            );
            if i % 2 == 0 {
                collateral.insert(
                    InstrumentId::from("BTC"),
                    Decimal::new(rng.range(1, 500), 2),
                );
            }
            let positions = legs
                .iter()
                .map(|(id, px, max)| {
                    let q = rng.range(1, *max) * if rng.next().is_multiple_of(2) { 1 } else { -1 };
                    Position {
                        instrument: InstrumentId::from(*id),
                        side: PositionSide::Both,
                        quantity: Decimal::new(q, 2 + (i % 2) as u32),
                        entry_price: Decimal::new(px * rng.range(80, 120), 2),
                    }
                })
                .collect();
            Account {
                id: format!("a{i}").into(),
                collateral,
                positions,
                thresholds: None,
                apply_funding: false,
            }
        })
        .collect()
}

/// Plain full revaluation of every scenario, on every core.
fn full(book: &RiskBook<'_>, accounts: &[Account]) -> usize {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = accounts.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let hs: Vec<_> = accounts
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|a| book.account_full(a).unwrap().liquidating_scenarios)
                        .sum::<usize>()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

fn fast(book: &RiskBook<'_>, accounts: &[Account]) -> usize {
    book.accounts(accounts, 0)
        .into_iter()
        .map(|r| r.unwrap().liquidating_scenarios)
        .sum()
}

/// CPU seconds (user + system) of the whole process so far, from `/proc/self/stat` (Linux;
/// 100 ticks per second), or 0 where that file does not exist.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn one_shot(inst: &HashMap<InstrumentId, Instrument>, px: &HashMap<InstrumentId, Decimal>) {
    let n: usize = std::env::var("LIQWATCH_BENCH_RISK_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let set = scenarios(SCENARIOS);
    let b = RiskBook::new(inst, px, &set, dec!(0.99)).unwrap();
    let accounts = book(n);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (t, c) = (Instant::now(), cpu_seconds());
    let liq = fast(&b, &accounts);
    let (fast_s, fast_cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    let base_n = (n / 100).max(100);
    let (t, c) = (Instant::now(), cpu_seconds());
    let liq_full = full(&b, &accounts[..base_n]);
    let (full_s, full_cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    let per_m = |secs: f64, accts: usize| secs * 1e6 / accts as f64;
    println!(
        "risk one-shot: {n} accounts × {SCENARIOS} scenarios on {threads} threads, linear path: \
         wall {fast_s:.2} s, CPU {fast_cpu:.2} s ({liq} liquidating) → 1M accounts: wall ≈ {:.1} s \
         as loaded, CPU {:.1} s = {:.1} s on {threads} free cores",
        per_m(fast_s, n),
        per_m(fast_cpu, n),
        per_m(fast_cpu, n) / threads as f64,
    );
    println!(
        "risk one-shot: full revaluation baseline, {base_n} accounts × {SCENARIOS}: wall \
         {full_s:.2} s, CPU {full_cpu:.2} s ({liq_full} liquidating) → 1M accounts: CPU {:.0} s \
         = {:.0} s on {threads} free cores; linear/full CPU per account: {:.1}×",
        per_m(full_cpu, base_n),
        per_m(full_cpu, base_n) / threads as f64,
        (full_cpu / base_n as f64) / (fast_cpu / n as f64),
    );
    // Same figures on the baseline's accounts.
    for a in &accounts[..base_n.min(200)] {
        let x = b.account(a).unwrap();
        let y = b.account_full(a).unwrap();
        assert_eq!(
            (x.var, x.es, x.liquidating_scenarios),
            (y.var, y.es, y.liquidating_scenarios)
        );
    }
}

fn bench(c: &mut Criterion) {
    let (inst, px) = (instruments(), prices());
    one_shot(&inst, &px);
    let set = scenarios(SCENARIOS);
    let b = RiskBook::new(&inst, &px, &set, dec!(0.99)).unwrap();
    let small = book(10_000);
    let mut g = c.benchmark_group("risk");
    g.sample_size(10);
    g.bench_function("linear/10k_accounts_x_1000", |bn| {
        bn.iter(|| black_box(fast(&b, &small)))
    });
    g.bench_function("full_revaluation/1k_accounts_x_1000", |bn| {
        bn.iter(|| black_box(full(&b, &small[..1000])))
    });
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
