//! Fuzzing run of every input reader (issue 12 item 7), a benchmark-style binary, not part of
//! `cargo test`: each venue parser (Binance USD-M, Bybit linear, OKX, Deribit, Hyperliquid)
//! gets `FUZZ_FRAMES` frames (default 10,000,000) — the recorded frames of `feeds/<venue>/` and
//! the replay recording, stacked byte-level mutations of them (flips, truncations, splices,
//! duplications, hostile number texts), and random bytes — through one long-lived adapter (so
//! stateful paths such as Bybit's delta merge and request-id lookups are reached) that is
//! reset and resubscribed now and then. The account reader (`parse_accounts`, JSONL) gets
//! `FUZZ_FRAMES` mutated account lines, the replay line parser `FUZZ_FRAMES` lines, and the
//! config reader (`config::parse`) `FUZZ_CONFIGS` (default 1,000,000) mutated configs.
//!
//! Every call runs under `catch_unwind`; the report counts frames, parse errors, ticks,
//! panics (must be 0) and failed parses that left ticks behind (must be 0), and exits 1
//! otherwise, saving the first panicking inputs under `target/fuzz-panics/`.
//!
//! ```text
//! nice cargo bench --bench fuzz_parsers                         # the full run
//! FUZZ_FRAMES=100000 FUZZ_CONFIGS=10000 cargo bench --bench fuzz_parsers   # a quick one
//! ```
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use liqwatch::feeds::{Feed, VenueTick, feed_for, replay::parse_line};
use liqwatch::model::Venue;

/// The daemon's allocator (`src/main.rs`), so what is timed here is what runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A small, fast, deterministic PRNG (xorshift64*), so a run can be repeated with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Texts that stress number and structure handling.
const HOSTILE: &[&str] = &[
    "",
    "null",
    "-0",
    "0",
    "NaN",
    "-inf",
    "1e99999",
    "1e-99999",
    "79228162514264337593543950336",
    "-79228162514264337593543950335",
    "0.00000000000000000000000000001",
    "1.0000000000000000000000000000001",
    "99999999999999999999999999999999999999999",
    "\"",
    "\\u0000",
    "\\ud800",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "true",
    "[]",
    "{}",
    "\"\"",
    "é",
    "\u{1F4A5}",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
];

/// One stacked mutation of `seed` (or random bytes), as text.
fn mutate(rng: &mut Rng, seeds: &[String]) -> String {
    if rng.below(20) == 0 {
        let n = rng.below(256);
        let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    let mut b: Vec<u8> = seeds[rng.below(seeds.len())].as_bytes().to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = b.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                b[at] = rng.next() as u8;
            }
            1 if len > 0 => {
                let at = rng.below(len);
                b[at] = b"\"{}[]:,-.0123456789eE+ \\"[rng.below(24)];
            }
            2 => b.truncate(rng.below(len + 1)),
            3 => {
                let other = seeds[rng.below(seeds.len())].as_bytes();
                let from = rng.below(other.len() + 1);
                let to = from + rng.below(other.len() - from + 1);
                let at = rng.below(len + 1);
                b.splice(at..at, other[from..to].iter().copied());
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let to = from + rng.below((len - from).min(64) + 1);
                let chunk = b[from..to].to_vec();
                let at = rng.below(len + 1);
                b.splice(at..at, chunk);
            }
            5 => {
                // Replace a run of digits (or insert) with a hostile text.
                let h = HOSTILE[rng.below(HOSTILE.len())].as_bytes();
                let at = rng.below(len + 1);
                let mut end = at;
                while end < len && (b[end].is_ascii_digit() || b[end] == b'.') {
                    end += 1;
                }
                b.splice(at..end, h.iter().copied());
            }
            _ if len > 0 => {
                let from = rng.below(len);
                let to = from + rng.below((len - from).min(32) + 1);
                b.drain(from..to);
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The recorded frames of a venue: every fixture file whole and line by line, and the frames
/// of the replay recording for that venue.
fn seeds_of(venue: Venue) -> Vec<String> {
    let mut out = Vec::new();
    let dir = repo(&format!("feeds/{venue}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        if f.extension().is_some_and(|x| x == "json" || x == "txt")
            && let Ok(text) = std::fs::read_to_string(&f)
        {
            out.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(String::from),
            );
            out.push(text);
        }
    }
    if let Ok(rec) = std::fs::read_to_string(repo("feeds/replay/crash-2021-05-19.jsonl")) {
        for (n, line) in rec.lines().enumerate() {
            if let Ok(Some(l)) = parse_line(line, n as u64 + 1)
                && l.venue == venue
            {
                out.push(l.frame.to_string());
            }
            if out.len() > 4000 {
                break;
            }
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    frames: u64,
    errors: u64,
    ticks: u64,
    panics: u64,
    leftovers: u64,
    secs: f64,
}

fn save_panic(what: &str, n: u64, input: &str) {
    let dir = repo("target/fuzz-panics");
    let _ = std::fs::create_dir_all(&dir);
    if n < 20 {
        let _ = std::fs::write(dir.join(format!("{what}-{n}.txt")), input);
    }
}

const SYMBOLS: &[&str] = &[
    "BTCUSDT",
    "ETHUSDT",
    "BTC-USDT-SWAP",
    "BTC-USDT",
    "BTC-PERPETUAL",
    "btc_usd",
    "BTC",
    "ETH",
];

fn fuzz_venue(venue: Venue, frames: u64, rng: &mut Rng) -> Tally {
    let seeds = seeds_of(venue);
    assert!(!seeds.is_empty(), "{venue}: no recorded frames");
    let symbols: Vec<String> = SYMBOLS.iter().map(|s| s.to_string()).collect();
    let fresh = || {
        let mut f: Box<dyn Feed> = feed_for(venue).expect("adapter");
        f.reset();
        let _ = f.subscribe_messages(&symbols);
        f
    };
    let mut feed = fresh();
    let mut t = Tally::default();
    let mut out: Vec<VenueTick<'static>> = Vec::new();
    let start = Instant::now();
    for n in 0..frames {
        if n % 100_000 == 0 {
            feed = fresh();
        }
        let frame = mutate(rng, &seeds);
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut out: Vec<VenueTick<'_>> = Vec::new();
            let r = feed.parse(&frame, &mut out);
            (r.is_ok(), out.len())
        }));
        t.frames += 1;
        match r {
            Ok((true, ticks)) => t.ticks += ticks as u64,
            Ok((false, left)) => {
                t.errors += 1;
                if left > 0 {
                    t.leftovers += 1;
                    save_panic(&format!("{venue}-leftover"), t.leftovers, &frame);
                }
            }
            Err(_) => {
                save_panic(venue.as_str(), t.panics, &frame);
                t.panics += 1;
                feed = fresh();
            }
        }
        out.clear();
    }
    t.secs = start.elapsed().as_secs_f64();
    t
}

fn fuzz_accounts(frames: u64, rng: &mut Rng) -> Tally {
    let mut seeds: Vec<String> = vec![
        r#"{"id":"F1","collateral":{"USDT":"215100"},"positions":[{"instrument":"BTCUSDT-PERP","side":"long","quantity":"199.5","entry_price":"60000"},{"instrument":"BTCUSDT-PERP","side":"short","quantity":"-195.5","entry_price":"60000"}]}"#.into(),
        r#"{"id":"w3","collateral":{"USDT":"60500","BTC":"1.5"},"positions":[{"instrument":"BTCUSDT-PERP","quantity":"10.5","entry_price":"62000"},{"instrument":"SOLUSDT-PERP","quantity":"-2000","entry_price":"140"}],"thresholds":{"warning_levels":["0.8"],"trigger":"1.0"}}"#.into(),
    ];
    if let Ok(text) = std::fs::read_to_string(repo("feeds/sample/accounts.json")) {
        seeds.push(text);
    }
    let path = Path::new("fuzz.jsonl");
    let mut t = Tally::default();
    let start = Instant::now();
    for _ in 0..frames {
        let text = mutate(rng, &seeds);
        let r = catch_unwind(AssertUnwindSafe(|| {
            liqwatch::sources::files::parse_accounts(path, &text).map(|a| a.len())
        }));
        t.frames += 1;
        match r {
            Ok(Ok(n)) => t.ticks += n as u64,
            Ok(Err(_)) => t.errors += 1,
            Err(_) => {
                save_panic("accounts", t.panics, &text);
                t.panics += 1;
            }
        }
    }
    t.secs = start.elapsed().as_secs_f64();
    t
}

fn fuzz_replay_lines(frames: u64, rng: &mut Rng) -> Tally {
    let seeds: Vec<String> = std::fs::read_to_string(repo("feeds/replay/crash-2021-05-19.jsonl"))
        .map(|t| t.lines().take(2000).map(String::from).collect())
        .unwrap_or_default();
    let mut t = Tally::default();
    let start = Instant::now();
    for n in 0..frames {
        let line = mutate(rng, &seeds);
        let r = catch_unwind(|| parse_line(&line, n).map(|l| l.is_some()));
        t.frames += 1;
        match r {
            Ok(Ok(some)) => t.ticks += u64::from(some),
            Ok(Err(_)) => t.errors += 1,
            Err(_) => {
                save_panic("replay-line", t.panics, &line);
                t.panics += 1;
            }
        }
    }
    t.secs = start.elapsed().as_secs_f64();
    t
}

fn fuzz_configs(frames: u64, rng: &mut Rng) -> Tally {
    let seeds: Vec<String> = vec![
        std::fs::read_to_string(repo("deploy/liqwatch.example.toml")).expect("example config"),
        r#"
[engine]
instruments = ["feeds/presets.toml"]
[[feeds]]
venue = "okx"
resubscribe_initial = "1s"
unknown_retry = "10m"
[prices]
spike_fraction = "0.2"
venue_spike_fraction = { okx = "0.5" }
spike_confirm_frames = 3
watch = ["BTCUSDT-PERP"]
[journal]
path = "journal.sqlite"
"#
        .into(),
    ];
    let path = repo("deploy/fuzz.toml");
    let env = |_: &str| Some("secret".to_string());
    let mut t = Tally::default();
    let start = Instant::now();
    for _ in 0..frames {
        let text = mutate(rng, &seeds);
        let r = catch_unwind(AssertUnwindSafe(|| {
            liqwatch::config::parse(&text, &path, &env).is_ok()
        }));
        t.frames += 1;
        match r {
            Ok(true) => t.ticks += 1,
            Ok(false) => t.errors += 1,
            Err(_) => {
                save_panic("config", t.panics, &text);
                t.panics += 1;
            }
        }
    }
    t.secs = start.elapsed().as_secs_f64();
    t
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let frames = env_u64("FUZZ_FRAMES", 10_000_000);
    let configs = env_u64("FUZZ_CONFIGS", 1_000_000);
    let seed = env_u64("FUZZ_SEED", 0x1234_5678_9abc_def1).max(1);
    // Panics are counted, not printed (the inputs are saved).
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng(seed);
    println!("fuzz_parsers: seed {seed:#x}, {frames} frames per parser, {configs} configs");
    println!();
    println!(
        "| reader | inputs | parse errors | ok results (ticks / accounts) | panics | ticks left on error | seconds | inputs/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut bad = 0;
    let mut row = |name: &str, t: Tally| {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {:.1} | {:.0} |",
            t.frames,
            t.errors,
            t.ticks,
            t.panics,
            t.leftovers,
            t.secs,
            t.frames as f64 / t.secs.max(1e-9)
        );
        bad += t.panics + t.leftovers;
    };
    for venue in [
        Venue::BinanceUsdm,
        Venue::BybitLinear,
        Venue::Okx,
        Venue::Deribit,
        Venue::Hyperliquid,
    ] {
        let t = fuzz_venue(venue, frames, &mut rng);
        row(venue.as_str(), t);
    }
    row("replay line", fuzz_replay_lines(frames, &mut rng));
    row("accounts (JSONL)", fuzz_accounts(frames, &mut rng));
    row("config", fuzz_configs(configs, &mut rng));
    if bad > 0 {
        eprintln!("fuzz_parsers: {bad} panics or leftovers; inputs in target/fuzz-panics/");
        std::process::exit(1);
    }
}
