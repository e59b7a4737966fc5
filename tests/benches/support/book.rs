//! The synthetic book the engine benches share: 10 linear perpetuals (BTC/ETH with Binance's
//! BTCUSDT brackets, the others with SOLUSDT's), every account with a USDT balance and 4
//! positions — BTC in 90 % of accounts, ETH in 80 %, the rest spread over the other 8 perps.

use liqwatch::engine::AccountMap;
use liqwatch::model::{
    Account, AccountUpdate, Instrument, InstrumentId, InstrumentKind, MarginTier, Position,
    PositionSide,
};
use rust_decimal::Decimal;

#[allow(dead_code)]
#[path = "../../it/support/engine_fixtures.rs"]
mod engine_fixtures;

pub fn tiers(rows: &[(i64, i64, &str, i64)]) -> Vec<MarginTier> {
    rows.iter()
        .map(|(f, c, mmr, cum)| MarginTier {
            notional_floor: Decimal::from(*f),
            notional_cap: Decimal::from(*c),
            mmr: mmr.parse().unwrap(),
            cum: Decimal::from(*cum),
        })
        .collect()
}

pub fn perp(id: &str, t: Vec<MarginTier>) -> Instrument {
    let underlying = id.trim_end_matches("USDT-PERP");
    engine_fixtures::tiered(id, InstrumentKind::LinearPerpetual, underlying, t)
}

/// (instrument, price) of the 10 perps; BTC/ETH/SOL with Binance's published tiers.
pub const PERPS: [(&str, i64); 10] = [
    ("BTCUSDT-PERP", 60000),
    ("ETHUSDT-PERP", 3000),
    ("SOLUSDT-PERP", 150),
    ("BNBUSDT-PERP", 500),
    ("XRPUSDT-PERP", 1),
    ("ADAUSDT-PERP", 2),
    ("DOGEUSDT-PERP", 1),
    ("DOTUSDT-PERP", 30),
    ("LTCUSDT-PERP", 200),
    ("LINKUSDT-PERP", 30),
];

pub fn instruments() -> Vec<Instrument> {
    let btc = tiers(&[
        (0, 50_000, "0.004", 0),
        (50_000, 600_000, "0.005", 50),
        (600_000, 3_000_000, "0.0065", 950),
        (3_000_000, 12_000_000, "0.01", 11_450),
        (12_000_000, 70_000_000, "0.02", 131_450),
    ]);
    let sol = tiers(&[
        (0, 20_000, "0.005", 0),
        (20_000, 100_000, "0.0065", 30),
        (100_000, 800_000, "0.01", 380),
        (800_000, 4_000_000, "0.02", 8_380),
    ]);
    let mut v: Vec<Instrument> = PERPS
        .iter()
        .enumerate()
        .map(|(i, (id, _))| perp(id, if i < 2 { btc.clone() } else { sol.clone() }))
        .collect();
    let mut usdt = perp("USDT", vec![]);
    usdt.kind = InstrumentKind::Collateral;
    usdt.stable = true;
    v.push(usdt);
    v
}

pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// 4 positions per account: BTC for 90 %, ETH for 80 %, the rest from the other 8 perps.
pub fn account(i: usize, rng: &mut Lcg) -> Account {
    let mut picks: Vec<usize> = Vec::with_capacity(4);
    if rng.next() % 10 < 9 {
        picks.push(0);
    }
    if rng.next() % 10 < 8 {
        picks.push(1);
    }
    while picks.len() < 4 {
        let p = 2 + (rng.next() % 8) as usize;
        if !picks.contains(&p) {
            picks.push(p);
        }
    }
    let positions = picks
        .into_iter()
        .map(|p| {
            let (id, price) = PERPS[p];
            // Notional between ~100 and ~100,000 USDT; entry within ±10 % of the price.
            let notional = 100 + (rng.next() % 100_000) as i64;
            let q = Decimal::new(notional * 1000 / price.max(1), 3);
            let q = if rng.next().is_multiple_of(3) { -q } else { q };
            let entry = Decimal::new(
                price * 1000 + (rng.next() % 200) as i64 * price - 100 * price,
                3,
            );
            Position {
                instrument: id.into(),
                side: PositionSide::Both,
                quantity: q,
                entry_price: entry,
            }
        })
        .collect();
    Account {
        id: format!("acct-{i:08}").into(),
        collateral: [(
            InstrumentId::from("USDT"),
            Decimal::from(20_000 + rng.next() % 200_000),
        )]
        .into_iter()
        .collect(),
        positions,
        thresholds: None,
        apply_funding: false,
    }
}

/// Nanoseconds this thread has spent on a CPU (`CLOCK_THREAD_CPUTIME_ID`, which brings the
/// running thread's time up to date: `/proc/thread-self/schedstat` does not, and advances only
/// at scheduler ticks — 10 ms here).
pub fn thread_cpu_ns() -> u64 {
    u64::try_from(cpu_time::ThreadTime::now().as_duration().as_nanos()).unwrap_or(u64::MAX)
}

/// On-CPU time of the whole process, every thread (ended ones included), in ns.
pub fn process_cpu_ns() -> u64 {
    u64::try_from(cpu_time::ProcessTime::now().as_duration().as_nanos()).unwrap_or(u64::MAX)
}

pub fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

pub fn build(n: usize) -> AccountMap {
    let m = build_unlaid(n);
    // As the daemon does after loading its accounts.
    m.relayout();
    m
}

/// [`build`] without the final `AccountMap::relayout`: its resident size is what the book
/// holds (the pass frees as much as it allocates, but the allocator keeps the freed arrays for
/// a while).
pub fn build_unlaid(n: usize) -> AccountMap {
    let m = AccountMap::new(instruments());
    let mut out = Vec::new();
    for (id, p) in PERPS {
        m.apply_price(&id.into(), Decimal::from(p), &mut out)
            .unwrap();
    }
    let mut rng = Lcg(42);
    for i in 0..n {
        m.apply_update(AccountUpdate::Replace {
            account: account(i, &mut rng),
        })
        .unwrap();
    }
    m
}

/// The accounts of [`build`]`(n)`, as plain values (what a from-scratch rescan reads).
pub fn accounts(n: usize) -> Vec<Account> {
    let mut rng = Lcg(42);
    (0..n).map(|i| account(i, &mut rng)).collect()
}

/// A leveraged, correlated book for the crash: 4 **long** positions per account (BTC for 90 %,
/// ETH for 80 %, the rest from the other 8 perps), 10k–60k USDT notional each, and a USDT
/// balance of 3–30 % of the total notional. A −10 % move of everything takes about a third of
/// the accounts to the trigger and many more across the warning level.
pub fn leveraged_account(i: usize, rng: &mut Lcg) -> Account {
    let mut a = account(i, rng);
    let mut notional = Decimal::ZERO;
    for p in &mut a.positions {
        let price = PERPS
            .iter()
            .find(|(id, _)| *id == p.instrument.as_str())
            .map(|(_, px)| *px)
            .unwrap_or(1);
        let n = 10_000 + (rng.next() % 50_000) as i64;
        p.quantity = Decimal::new(n * 1000 / price.max(1), 3);
        p.entry_price = Decimal::from(price);
        notional += p.quantity * Decimal::from(price);
    }
    let pct = 3 + (rng.next() % 28) as i64;
    a.collateral = [(
        InstrumentId::from("USDT"),
        (notional * Decimal::new(pct, 2)).round_dp(2),
    )]
    .into_iter()
    .collect();
    a
}

/// [`build`] with another account generator.
pub fn build_with(n: usize, gen_account: fn(usize, &mut Lcg) -> Account) -> AccountMap {
    let m = AccountMap::new(instruments());
    let mut out = Vec::new();
    for (id, p) in PERPS {
        m.apply_price(&id.into(), Decimal::from(p), &mut out)
            .unwrap();
    }
    let mut rng = Lcg(42);
    for i in 0..n {
        m.apply_update(AccountUpdate::Replace {
            account: gen_account(i, &mut rng),
        })
        .unwrap();
    }
    // As the daemon does after loading its accounts.
    m.relayout();
    m
}

/// The accounts of [`build_with`], as plain values.
pub fn accounts_with(n: usize, gen_account: fn(usize, &mut Lcg) -> Account) -> Vec<Account> {
    let mut rng = Lcg(42);
    (0..n).map(|i| gen_account(i, &mut rng)).collect()
}
