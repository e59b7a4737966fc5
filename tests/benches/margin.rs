//! Criterion benches of the pure margin model: one position revaluation (the account map's hot
//! path), a W3 snapshot with both distances, and the uniform-shock solve alone.
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group};
use liqwatch::margin::{account_snapshot, position_figures, shock_distance};
use liqwatch::model::{Instrument, InstrumentId};
use liqwatch::sources::files::{load_accounts, load_instruments, load_prices};
use rust_decimal_macros::dec;

/// The daemon's allocator (`src/main.rs`), so what is timed here is what runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn bench(c: &mut Criterion) {
    let m: HashMap<InstrumentId, Instrument> =
        load_instruments(&root().join("feeds/presets.toml")).unwrap();
    let btc = &m["BTCUSDT-PERP"];
    let inv = &m["BTCUSD-INV-PERP"];
    c.bench_function("position_figures/linear_tier3", |b| {
        b.iter(|| {
            position_figures(
                black_box(btc),
                black_box(dec!(10.5)),
                black_box(dec!(62000)),
                black_box(dec!(60012.3)),
            )
        })
    });
    c.bench_function("position_figures_exact/linear_tier3", |b| {
        b.iter(|| {
            liqwatch::margin::position_figures_exact(
                black_box(btc),
                black_box(dec!(10.5)),
                black_box(dec!(62000)),
                black_box(dec!(60012.3)),
            )
        })
    });
    c.bench_function("select_tier", |b| {
        b.iter(|| {
            liqwatch::margin::select_tier(&btc.tiers, black_box(dec!(630129.15))).map(|x| x.0)
        })
    });
    c.bench_function("decimal_sub_scales", |b| {
        b.iter(|| black_box(dec!(60012.3)).checked_sub(black_box(dec!(62000))))
    });
    c.bench_function("decimal_cmp", |b| {
        b.iter(|| black_box(dec!(630129.15)) < black_box(dec!(600000)))
    });
    c.bench_function("normalise", |b| {
        b.iter(|| liqwatch::margin::normalise(black_box(dec!(3905.79950))))
    });
    c.bench_function("decimal_mul", |b| {
        b.iter(|| black_box(dec!(630129.15)).checked_mul(black_box(dec!(0.0065))))
    });
    c.bench_function("position_figures/inverse", |b| {
        b.iter(|| {
            position_figures(
                black_box(inv),
                black_box(dec!(2500)),
                black_box(dec!(62000)),
                black_box(dec!(60012.3)),
            )
        })
    });
    let accounts = load_accounts(&root().join("feeds/sample/accounts.json")).unwrap();
    let prices = load_prices(&root().join("feeds/sample/prices.toml"), &m).unwrap();
    let w3 = &accounts[0];
    c.bench_function("account_snapshot/w3_with_distances", |b| {
        b.iter(|| account_snapshot(black_box(w3), &m, &prices, dec!(1)))
    });
    c.bench_function("shock_distance/w3", |b| {
        b.iter(|| shock_distance(black_box(w3), &m, &prices, dec!(1)))
    });
}

/// `LIQWATCH_COUNT_LOOP=N` runs N linear revaluations and exits, for `perf stat -e
/// instructions:u` (instruction counts do not depend on machine load).
fn count_loop() -> bool {
    let Some(n) = std::env::var("LIQWATCH_COUNT_LOOP")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return false;
    };
    let m = load_instruments(&root().join("feeds/presets.toml")).unwrap();
    let btc = &m["BTCUSDT-PERP"];
    let mut p = dec!(60000.1);
    for _ in 0..n {
        p += dec!(0.1);
        black_box(position_figures(btc, dec!(10.5), dec!(62000), black_box(p)).ok());
    }
    true
}

criterion_group!(benches, bench);

fn main() {
    if count_loop() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
