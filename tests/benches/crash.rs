//! The crash path, side by side in one run on one book: a correlated move of **every** price
//! (−10 % together), then the bounce back, through
//!
//! - an **exact from-scratch rescan** — what a watcher without incremental state does (the peers'
//!   method, written plainly): `margin::account_totals` for every account at the new prices,
//!   the ratio against the levels, an event where the level changed; on 1 core and split
//!   over 2 cores; and, on 2 cores, the same rescan asked for the engine's output: each account
//!   that changes level also gets its event's snapshot (`margin::account_snapshot`, a trigger's
//!   liquidation cost), so the engine's step is also seen beside a rescan that does its work;
//! - the one `Engine` with the index off (**eager**: every holder of a changed instrument is
//!   revalued incrementally);
//! - the one `Engine` with the distance index on (**indexed**, the default).
//!
//! Every path sees the same prices and must reach the same states: the bench checks that the
//! three agree on the number of accounts in each state after every step (and panics if not).
//! The 1-core rescan is on-CPU time of its thread (`/proc/thread-self/schedstat`); the 2-core
//! rescan and the engine steps are wall time (the engine builds event snapshots on every core),
//! with the engine's whole-process CPU time beside it (10 ms resolution). The engines read the
//! source, age and staleness of the prices their events used from a real `PriceBoard`, fed the
//! step's prices before each step, as the daemon's are.
//!
//! `cargo bench --bench crash` (100k accounts, the leveraged all-long book) or
//! `LIQWATCH_CRASH_ACCOUNTS=1000000 cargo bench --bench crash`; `LIQWATCH_CRASH_ROUNDS` (default
//! 3) crash-and-bounce rounds; `LIQWATCH_CRASH_BOOK=calm` for the engine bench's calmer book;
//! `LIQWATCH_CRASH_SHOCK_LEVELS="10%,5%"` adds distance levels (`warn_within_shock`);
//! `LIQWATCH_CRASH_PATHS=indexed` (a comma list of `rescan`, `eager`, `indexed`; default all)
//! runs only some paths — to profile one (`perf record`), or to save the eager map's memory.
//! The states are checked among the paths that ran. `LIQWATCH_CRASH_EVENT_COST_RUNS` (default 1)
//! repeats the closing per-event cost breakdown (to profile it).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use liqwatch::engine::map::InstrumentTable;
use liqwatch::engine::monitor::transition;
use liqwatch::engine::{AccountMap, Engine, EngineConfig, MonitorConfig};
use liqwatch::margin;
use liqwatch::model::{
    Account, AccountState, EventKind, Instrument, InstrumentId, MarginRatio, PriceTick, Thresholds,
    Venue,
};
use liqwatch::prices::{PriceBoard, PriceBoardConfig, PublishOutcome};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

#[allow(dead_code)] // each bench uses only some of the book's helpers
#[path = "support/book.rs"]
mod book;
use book::{
    Lcg, PERPS, account, accounts_with, build_with, instruments, leveraged_account, thread_cpu_ns,
    vm_rss_kib,
};

/// The daemon's allocator (`src/main.rs`), so what is timed here is what runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Accounts per state: (healthy, warning, triggered).
type Census = (usize, usize, usize);

fn census<'a>(states: impl Iterator<Item = &'a AccountState>) -> Census {
    let mut c = (0, 0, 0);
    for s in states {
        match s {
            AccountState::Healthy => c.0 += 1,
            AccountState::Warning { .. } => c.1 += 1,
            AccountState::Triggered => c.2 += 1,
        }
    }
    c
}

/// What a rescan pays per event besides the state change, when it is asked for the events the
/// engine emits: the engine's instrument table (each contract's tiers in `f64`) and the trigger
/// level for `margin::account_snapshot`.
type Snapshots<'t> = Option<(&'t InstrumentTable, Decimal)>;

/// The rescan: every account from scratch at `prices`, its new state from its old one.
/// Returns the number of level changes (events). With `snapshots`, each account that changes
/// level also gets the snapshot its event would carry — the same `margin::account_snapshot`
/// the engine builds (a trigger's liquidation cost too), so the two produce the same output.
fn rescan(
    accounts: &[Account],
    states: &mut [AccountState],
    table: &HashMap<InstrumentId, Instrument>,
    prices: &HashMap<InstrumentId, Decimal>,
    levels: &Thresholds,
    snapshots: Snapshots<'_>,
) -> usize {
    let mut events = 0;
    for (a, s) in accounts.iter().zip(states.iter_mut()) {
        let Ok(t) = margin::account_totals(a, table, prices) else {
            continue;
        };
        let ratio = MarginRatio::compute(t.maintenance_margin, t.equity);
        let (next, crossing) = transition(s, ratio, levels);
        if let Some(c) = crossing {
            events += 1;
            if let Some((lookup, trigger)) = snapshots
                && let Ok(mut snap) = margin::account_snapshot(a, lookup, prices, trigger)
            {
                if c.kind == EventKind::LiquidationTrigger {
                    margin::attach_liquidation_cost_to(&mut snap, lookup, &a.id);
                }
                std::hint::black_box(snap);
            }
        }
        *s = next;
    }
    events
}

/// The same rescan split over two threads; wall time of the pair.
fn rescan_2(
    accounts: &[Account],
    states: &mut [AccountState],
    table: &HashMap<InstrumentId, Instrument>,
    prices: &HashMap<InstrumentId, Decimal>,
    levels: &Thresholds,
    snapshots: Snapshots<'_>,
) -> (usize, Duration) {
    let mid = accounts.len() / 2;
    let (a1, a2) = accounts.split_at(mid);
    let (s1, s2) = states.split_at_mut(mid);
    let t0 = Instant::now();
    let (e1, e2) = std::thread::scope(|sc| {
        let h = sc.spawn(|| rescan(a2, s2, table, prices, levels, snapshots));
        let e1 = rescan(a1, s1, table, prices, levels, snapshots);
        (e1, h.join().unwrap())
    });
    (e1 + e2, t0.elapsed())
}

fn cpu<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let t0 = thread_cpu_ns();
    let r = f();
    (r, Duration::from_nanos(thread_cpu_ns().saturating_sub(t0)))
}

/// CPU time of the whole process, threads that have ended included (`/proc/self/stat` utime +
/// stime, in clock ticks of 10 ms).
fn process_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the command name: state is field 3, utime 14 and stime 15 (1-based).
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Wall time and whole-process CPU time of `f` (the engine may use every core).
fn wall<R>(f: impl FnOnce() -> R) -> (R, Duration, Duration) {
    let (c0, t0) = (process_cpu(), Instant::now());
    let r = f();
    (r, t0.elapsed(), process_cpu().saturating_sub(c0))
}

fn engine_states(e: &Engine, ids: &[liqwatch::model::AccountId]) -> Census {
    let states: Vec<AccountState> = ids
        .iter()
        .map(|id| {
            e.monitor()
                .state(e.map(), id)
                .map(|s| s.state)
                .unwrap_or(AccountState::Healthy)
        })
        .collect();
    census(states.iter())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    // As the daemon runs (src/main.rs).
    let _ = liqwatch::runtime::memory::disable_transparent_huge_pages();
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists; nothing to list here
    }
    let n = env_usize("LIQWATCH_CRASH_ACCOUNTS", 100_000);
    // `LIQWATCH_CRASH_BOOK=calm` uses the engine bench's book (mixed long/short, well
    // collateralised: a −10 % move takes few accounts across a level).
    let calm = std::env::var("LIQWATCH_CRASH_BOOK").as_deref() == Ok("calm");
    let gen_account: fn(usize, &mut Lcg) -> liqwatch::model::Account =
        if calm { account } else { leveraged_account };
    let rounds = env_usize("LIQWATCH_CRASH_ROUNDS", 3);
    // `LIQWATCH_CRASH_SHOCK_LEVELS="10%,5%"` adds distance levels (`warn_within_shock`) to the
    // engines' levels: what the distance machine and its bands cost in a crash.
    let mut levels = Thresholds::default();
    if let Ok(v) = std::env::var("LIQWATCH_CRASH_SHOCK_LEVELS") {
        levels.warn_within_shock = v
            .split(',')
            .map(|l| liqwatch::model::parse_fraction(l).expect("a distance level"))
            .collect();
        println!("crash: distance levels {:?}", levels.warn_within_shock);
    }
    let table: HashMap<InstrumentId, Instrument> = instruments()
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
    let base: Vec<(InstrumentId, Decimal)> = PERPS
        .iter()
        .map(|(id, p)| (InstrumentId::from(*id), Decimal::from(*p)))
        .collect();
    let crashed: Vec<(InstrumentId, Decimal)> = base
        .iter()
        .map(|(i, p)| (i.clone(), (p * dec!(0.9)).round_dp(4)))
        .collect();
    let as_map = |v: &[(InstrumentId, Decimal)]| -> HashMap<InstrumentId, Decimal> {
        let mut m: HashMap<InstrumentId, Decimal> = v.iter().cloned().collect();
        m.insert("USDT".into(), Decimal::ONE);
        m
    };
    // The daemon's price board: every event reads the source, age and staleness of the prices
    // it used from it (and the funding rates), so the steps below pay what the daemon pays.
    let info = PriceBoard::new(PriceBoardConfig::default());
    let publish = |step: &[(InstrumentId, Decimal)]| {
        for (instrument, price) in step {
            let tick = PriceTick {
                instrument: instrument.clone(),
                venue: Venue::BinanceUsdm,
                price: *price,
                index: None,
                exchange_ts: None,
                received_ts: 0,
            };
            assert!(
                info.publish(tick) == PublishOutcome::Accepted,
                "the board takes {instrument} at {price}"
            );
        }
    };
    publish(&base);
    let paths =
        std::env::var("LIQWATCH_CRASH_PATHS").unwrap_or_else(|_| "rescan,eager,indexed".into());
    let run = |name: &str| paths.split(',').any(|p| p.trim() == name);
    let (run_rescan, run_eager) = (run("rescan"), run("eager"));
    assert!(
        run("indexed"),
        "LIQWATCH_CRASH_PATHS must include `indexed` (the default engine)"
    );

    println!(
        "crash: building the {} book of {n} accounts (4 positions each, 10 perps)",
        if calm { "calm" } else { "leveraged, all-long" }
    );
    let plain = accounts_with(n, gen_account);
    let ids: Vec<_> = plain.iter().map(|a| a.id.clone()).collect();
    let eager_map: Arc<AccountMap> =
        Arc::new(build_with(if run_eager { n } else { 0 }, gen_account));
    // The map the indexed engine runs on (built in every run, unlike the eager engine's).
    let rss0 = vm_rss_kib();
    let lazy_map: Arc<AccountMap> = Arc::new(build_with(n, gen_account));
    let rss_map = vm_rss_kib().saturating_sub(rss0);
    let cfg = |distance_index| EngineConfig {
        monitor: MonitorConfig {
            thresholds: levels.clone(),
            ..MonitorConfig::default()
        },
        distance_index,
    };
    let mut eager = Engine::new(eager_map, cfg(false)).unwrap();
    let _ = eager.evaluate_all(&info, 0);
    let rss1 = vm_rss_kib();
    // Wall and whole-process CPU: the build re-bands on every core.
    let (mut lazy, built_wall, built) = wall(|| {
        let mut lazy = Engine::new(lazy_map, cfg(true)).unwrap();
        let _ = lazy.evaluate_all(&info, 0);
        lazy
    });
    let rss_index = vm_rss_kib().saturating_sub(rss1);
    let positions = (n * 4) as f64;
    println!(
        "crash: map {:.0} B/position; index + monitor state {:.0} B/position (RSS growth: with MIMALLOC_PURGE_DELAY > 0 it counts the build's freed scratch the allocator still holds; index built in {} wall, {} process CPU)",
        rss_map as f64 * 1024.0 / positions,
        rss_index as f64 * 1024.0 / positions,
        ms(built_wall),
        ms(built)
    );

    let mut states1 = vec![AccountState::Healthy; n];
    let mut states2 = vec![AccountState::Healthy; n];
    let p0 = as_map(&base);
    let mut states3 = vec![AccountState::Healthy; n];
    rescan(&plain, &mut states1, &table, &p0, &levels, None);
    rescan(&plain, &mut states2, &table, &p0, &levels, None);
    rescan(&plain, &mut states3, &table, &p0, &levels, None);
    // The engine's own lookup, for the rescan that also builds the events' snapshots.
    let lookup = InstrumentTable::new(table.values().cloned());
    let start = census(states1.iter());
    if run_eager {
        assert_eq!(start, engine_states(&eager, &ids), "eager at start");
    }
    assert_eq!(start, engine_states(&lazy, &ids), "indexed at start");
    println!("crash: at start (healthy, warning, triggered) = {start:?}");

    println!(
        "\n| step | rescan, 1 core | rescan, 2 cores | rescan + the events' snapshots, 2 cores | eager Engine | indexed Engine | indexed: value / evaluate / reband | valued (eager / indexed) | events |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for round in 0..rounds {
        for (name, step) in [("crash −10 %", &crashed), ("bounce +11.1 %", &base)] {
            publish(step);
            let prices = as_map(step);
            let (ev1, t1, ev2, t2, t3) = if run_rescan {
                let (ev1, t1) =
                    cpu(|| rescan(&plain, &mut states1, &table, &prices, &levels, None));
                let (ev2, t2) = rescan_2(&plain, &mut states2, &table, &prices, &levels, None);
                let with = Some((&lookup, levels.trigger));
                let (ev3, t3) = rescan_2(&plain, &mut states3, &table, &prices, &levels, with);
                assert_eq!(
                    census(states1.iter()),
                    census(states2.iter()),
                    "2-core rescan"
                );
                assert_eq!(
                    census(states1.iter()),
                    census(states3.iter()),
                    "rescan with snapshots"
                );
                assert_eq!(ev2, ev3, "rescan with snapshots: event count");
                (Some(ev1), Some(t1), Some(ev2), Some(t2), Some(t3))
            } else {
                (None, None, None, None, None)
            };
            let (ee, te, ce) = if run_eager {
                let (ee, te, ce) =
                    wall(|| eager.on_prices(step.iter().map(|(i, p)| (i, *p)), &info, 1));
                (Some(ee.len()), Some(te), Some(ce))
            } else {
                (None, None, None)
            };
            let valued_e = eager.last_valued();
            let (el, tl, cl) = wall(|| lazy.on_prices(step.iter().map(|(i, p)| (i, *p)), &info, 1));
            let valued_l = lazy.last_valued();
            let phases = lazy.last_step();
            assert_eq!(phases.valued, valued_l);
            let cl_census = engine_states(&lazy, &ids);
            if run_rescan {
                assert_eq!(census(states1.iter()), cl_census, "indexed after {name}");
                assert_eq!((ev1, ev2), (Some(el.len()), Some(el.len())), "event counts");
            }
            if run_eager {
                assert_eq!(engine_states(&eager, &ids), cl_census, "eager after {name}");
                assert_eq!(ee, Some(el.len()), "event counts");
            }
            let opt = |d: Option<Duration>| d.map_or_else(|| "–".to_string(), ms);
            let ev1 = el.len();
            println!(
                "| {name} (round {}) | {} | {} | {} | {} (CPU {}) | {} (CPU {}) | {} / {} / {} | {valued_e} / {valued_l} | {ev1} |",
                round + 1,
                opt(t1),
                opt(t2),
                opt(t3),
                opt(te),
                opt(ce),
                ms(tl),
                ms(cl),
                ms(phases.value),
                ms(phases.evaluate),
                ms(phases.reband),
            );
        }
    }
    println!(
        "\ncrash: {n} accounts; per valued account, indexed: see the table (time ÷ valued); states agree after every step"
    );
    for _ in 0..env_usize("LIQWATCH_CRASH_EVENT_COST_RUNS", 1) {
        event_costs(&plain, lazy.map(), &table, &as_map(&crashed), &levels);
    }
}

/// What one event's snapshot costs, on one thread, for the accounts the crash takes across a
/// level (those that emit), at the crash's prices: one valuation from scratch
/// (`margin::account_totals`, what the rescan pays per account) beside the uniform-shock solve,
/// the liquidation prices of every position and the whole `margin::account_snapshot` — and the
/// same snapshot of each account as the engine reads it: out of its map, in key order, and kept
/// (as a step keeps its events) rather than dropped at once.
fn event_costs(
    accounts: &[Account],
    map: &AccountMap,
    table: &HashMap<InstrumentId, Instrument>,
    prices: &HashMap<InstrumentId, Decimal>,
    levels: &Thresholds,
) {
    let emitting: Vec<&Account> = accounts
        .iter()
        .filter(|a| {
            margin::account_totals(a, table, prices).is_ok_and(|t| {
                let r = MarginRatio::compute(t.maintenance_margin, t.equity);
                transition(&AccountState::Healthy, r, levels).1.is_some()
            })
        })
        .collect();
    if emitting.is_empty() {
        return;
    }
    // Looked up as the engine looks them up: its instrument table (a fast hasher, each
    // contract's tiers kept in `f64` for the shock filter).
    let table = &InstrumentTable::new(table.values().cloned());
    let n = emitting.len() as f64;
    let per = |d: Duration| format!("{:.2} µs", d.as_secs_f64() * 1e6 / n);
    let trigger = levels.trigger;
    let (_, valuation) = cpu(|| {
        for a in &emitting {
            std::hint::black_box(margin::account_totals(a, table, prices).unwrap());
        }
    });
    let (_, shock) = cpu(|| {
        for a in &emitting {
            std::hint::black_box(margin::shock_distance(a, table, prices, trigger).unwrap());
        }
    });
    let (_, liq) = cpu(|| {
        for a in &emitting {
            let r = margin::ResolvedAccount::new(a, table, prices).unwrap();
            for i in 0..a.positions.len() {
                if let Some((pm, p0)) = r.liquidation_problem(a, i, trigger).unwrap() {
                    std::hint::black_box(pm.liquidation_prices(p0).unwrap());
                }
            }
        }
    });
    let (_, snapshot) = cpu(|| {
        for a in &emitting {
            std::hint::black_box(margin::account_snapshot(a, table, prices, trigger).unwrap());
        }
    });
    // As the engine's snapshot stage reads them: each account read back out of the map (its
    // positions and balances; its figures are not used), in key order, then its snapshot.
    let mut keys: Vec<_> = emitting.iter().filter_map(|a| map.key_of(&a.id)).collect();
    keys.sort_unstable();
    let map_table = map.instruments();
    let (_, read_back) = cpu(|| {
        for k in &keys {
            std::hint::black_box(map.read_key_in(&map_table, *k, |v| v.to_account()));
        }
    });
    let (_, from_map) = cpu(|| {
        for k in &keys {
            let a = map.read_key_in(&map_table, *k, |v| v.to_account()).unwrap();
            std::hint::black_box(margin::account_snapshot(&a, table, prices, trigger).unwrap());
        }
    });
    // The same, keeping every snapshot (boxed, as an event holds it): the engine keeps a step's
    // events until it hands them on, so each snapshot is written into memory not used since.
    let (kept, retained) = cpu(|| {
        let mut kept = Vec::with_capacity(keys.len());
        for k in &keys {
            let a = map.read_key_in(&map_table, *k, |v| v.to_account()).unwrap();
            kept.push(Box::new(
                margin::account_snapshot(&a, table, prices, trigger).unwrap(),
            ));
        }
        kept
    });
    drop(kept);
    assert_eq!(
        keys.len(),
        emitting.len(),
        "every emitting account is in the map"
    );
    println!(
        "crash: per emitting account at the crash prices ({} accounts, 1 thread, CPU): valuation {}; shock distance {}; liquidation prices of every position {}; whole snapshot {}; read back from the map {}; read back and snapshot, key order {}; the same, every snapshot kept {}",
        emitting.len(),
        per(valuation),
        per(shock),
        per(liq),
        per(snapshot),
        per(read_back),
        per(from_map),
        per(retained)
    );
}
