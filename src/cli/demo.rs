//! `liqwatch demo`: replays the 2021-05-19 crash against sample accounts with no network and no
//! config, printing events as readable lines as they happen and a summary at the end.
//!
//! Everything it needs is compiled in (the demo config, the instrument presets, the sample
//! accounts and the recording), written to a fresh temporary directory and run through the
//! same [`crate::app::run`] as the daemon: replay feed → price board → account map → monitor →
//! journal → sinks. The readable lines come from a sink ([`DemoSink`]) reading the journal like
//! any other, so what the demo shows is what a real sink would be sent.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use rust_decimal::{Decimal, RoundingStrategy};
use tokio_util::sync::CancellationToken;

use crate::app::{AppError, RunOptions};
use crate::config::{self, Config, FeedSource};
use crate::feeds::replay::{ReplayClock, ReplaySpeed};
use crate::model::{Account, AccountState, EventKind, MarginRatio, RiskEvent, TimestampMs};
use crate::sinks::{JournalEntry, Sink, SinkError, SinkFilter};

/// Arguments of `liqwatch demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Replay speed over the recording's real time (`3000` = 16 market hours in ~19 s), or
    /// `max` (as fast as possible).
    #[arg(long, default_value = "3000")]
    pub speed: String,
    /// Never colour the output (colour is used only on a terminal anyway).
    #[arg(long)]
    pub no_color: bool,
}

/// The files the demo needs, compiled in: (path under the temporary directory, contents).
const FILES: &[(&str, &str)] = &[
    (
        "feeds/presets.toml",
        include_str!("../../feeds/presets.toml"),
    ),
    (
        "feeds/binance-usdm/instruments.toml",
        include_str!("../../feeds/binance-usdm/instruments.toml"),
    ),
    (
        "feeds/binance-coinm/instruments.toml",
        include_str!("../../feeds/binance-coinm/instruments.toml"),
    ),
    (
        "feeds/bybit-linear/instruments.toml",
        include_str!("../../feeds/bybit-linear/instruments.toml"),
    ),
    (
        "feeds/hyperliquid/instruments.toml",
        include_str!("../../feeds/hyperliquid/instruments.toml"),
    ),
    (
        "feeds/okx/instruments.toml",
        include_str!("../../feeds/okx/instruments.toml"),
    ),
    (
        "feeds/deribit/instruments.toml",
        include_str!("../../feeds/deribit/instruments.toml"),
    ),
    (
        "feeds/demo/accounts.json",
        include_str!("../../feeds/demo/accounts.json"),
    ),
    (
        "feeds/replay/crash-2021-05-19.jsonl",
        include_str!("../../feeds/replay/crash-2021-05-19.jsonl"),
    ),
];

/// The demo's config (also usable as `liqwatch run --config feeds/demo/liqwatch.toml`).
const CONFIG: &str = include_str!("../../feeds/demo/liqwatch.toml");

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("liqwatch-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo: writes the compiled-in files to a temporary directory, runs the daemon on
/// them with the replay feed until the recording ends, prints every event and a summary.
pub fn main(args: DemoArgs) -> Result<(), AppError> {
    let speed: ReplaySpeed = args
        .speed
        .parse()
        .map_err(|e: String| AppError::Startup(format!("--speed: {e}")))?;
    let style = style_for_stdout(args.no_color);
    let dir = TempDir::new()
        .map_err(|e| AppError::Startup(format!("cannot create a temporary directory: {e}")))?;
    for (rel, text) in FILES {
        let p = dir.0.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| AppError::Startup(format!("{}: {e}", parent.display())))?;
        }
        std::fs::write(&p, text).map_err(|e| AppError::Startup(format!("{}: {e}", p.display())))?;
    }
    let config_path = dir.0.join("feeds/demo/liqwatch.toml");
    let mut cfg = config::parse(CONFIG, &config_path, &|_| None)?;
    for f in &mut cfg.feeds {
        if let FeedSource::Replay { speed: s, .. } = &mut f.source {
            *s = speed;
        }
    }
    let accounts: Vec<Account> = serde_json::from_str::<AccountsFile>(
        FILES
            .iter()
            .find(|(p, _)| p.ends_with("accounts.json"))
            .map(|(_, t)| *t)
            .unwrap_or("{\"accounts\":[]}"),
    )
    .map(|f| f.accounts)
    .map_err(|e| AppError::Startup(format!("demo accounts: {e}")))?;

    // A new journal in the temporary directory, created explicitly like any other.
    crate::app::init_journal(&cfg, false)?;
    print_intro(&cfg, &accounts, speed, &style);
    // Every account is in the summary, also those that stay quiet.
    let summary = Arc::new(Mutex::new(Summary::for_accounts(
        accounts.iter().map(|a| a.id.to_string()),
    )));
    let sink = DemoSink::new(Style { ..style }, Arc::clone(&summary));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| AppError::Runtime(format!("cannot start the tokio runtime: {e}")))?;
    let started = std::time::Instant::now();
    let report = rt.block_on(async move {
        let cancel = CancellationToken::new();
        crate::runtime::telemetry::spawn_signal_watcher(cancel.clone(), None)
            .map_err(AppError::Startup)?;
        crate::app::run(
            cfg,
            RunOptions {
                cancel,
                stop_after_replay: true,
                extra_sinks: vec![(Box::new(sink), SinkFilter::all())],
                replay_clock: ReplayClock::Recorded,
                ..RunOptions::default()
            },
        )
        .await
    })?;
    let elapsed = started.elapsed();
    println!();
    print!("{}", summary.lock().render(&style));
    println!(
        "\n{} price ticks replayed in {:.1} s; {} events journaled (SQLite, in a temporary directory now removed).",
        report.replay_ticks,
        elapsed.as_secs_f64(),
        report.events
    );
    println!(
        "Next: `liqwatch stress` for what-if shocks, `liqwatch run --config deploy/liqwatch.example.toml` for live feeds."
    );
    Ok(())
}

#[derive(serde::Deserialize)]
struct AccountsFile {
    accounts: Vec<Account>,
}

fn print_intro(cfg: &Config, accounts: &[Account], speed: ReplaySpeed, style: &Style) {
    let levels: Vec<String> = cfg
        .engine
        .thresholds
        .warning_levels
        .iter()
        .map(|l| level_pct(*l))
        .collect();
    println!(
        "{}",
        style.paint(
            "1",
            "liqwatch demo — the 2021-05-19 crypto sell-off, replayed against three cross-margin accounts"
        )
    );
    println!(
        "Binance BTC/ETH/SOL prices 00:00–16:00 UTC (feeds/replay/crash-2021-05-19.jsonl), speed {}.",
        match speed {
            ReplaySpeed::Max => "max".to_string(),
            ReplaySpeed::Factor(k) => format!("×{k}"),
        }
    );
    if speed == ReplaySpeed::Max {
        // The results differ from a timed replay's: say so where they are read.
        println!(
            "At max the engine sees only the latest prices when the replay outruns it, so some steps (and their events) are skipped; --speed 20000 shows every step in ~3 s."
        );
    }
    println!(
        "Margin ratio = maintenance margin ÷ equity. Warnings at {}, liquidation trigger at {} (hysteresis {}).",
        levels.join(" and "),
        level_pct(cfg.engine.thresholds.trigger),
        level_pct(cfg.engine.thresholds.hysteresis)
    );
    println!();
    for a in accounts {
        let mut parts: Vec<String> = a
            .positions
            .iter()
            .map(|p| {
                let side = if p.quantity.is_sign_negative() {
                    "short"
                } else {
                    "long"
                };
                let sym = p.instrument.as_str();
                let coin = sym.strip_suffix("USDT-PERP").unwrap_or(sym);
                format!(
                    "{side} {} {coin} @ {}",
                    money(p.quantity.abs(), 0),
                    money(p.entry_price, 0)
                )
            })
            .collect();
        let coll: Vec<String> = a
            .collateral
            .iter()
            .map(|(k, v)| format!("{} {}", money(*v, 0), k.as_str()))
            .collect();
        parts.push(format!("collateral {}", coll.join(" + ")));
        println!(
            "  {:<12} {}",
            style.paint("1", a.id.as_str()),
            parts.join(" · ")
        );
    }
    println!();
    println!(
        "{}",
        style.paint(
            "2",
            "market time  account        event                ratio        equity           MM  distance / prices"
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Readable event lines
// ---------------------------------------------------------------------------------------------

/// The market time of an event: when the newest price it used was received. With the demo's
/// recorded replay clock that is the recording's time (2021-05-19), not the wall clock.
pub fn market_time(ev: &RiskEvent) -> TimestampMs {
    ev.prices
        .iter()
        .filter(|p| p.source != "stable" && p.source != "engine")
        .map(|p| p.received_ts)
        .max()
        .unwrap_or(ev.time_ms)
}

/// `HH:MM:SS` UTC of a timestamp.
pub fn hms(ts: TimestampMs) -> String {
    let rfc = crate::model::format_rfc3339_ms(ts);
    rfc.get(11..19).unwrap_or(&rfc).to_string()
}

/// ANSI styling, or none.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// Emit colour codes.
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

/// Groups thousands and rounds half-up to `dp` places: `-84000.5` → `-84,000.50`.
pub fn money(d: Decimal, dp: u32) -> String {
    let r = d.round_dp_with_strategy(dp, RoundingStrategy::MidpointAwayFromZero);
    let s = format!("{:.*}", dp as usize, r.abs());
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (s.clone(), None),
    };
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if r.is_sign_negative() && !r.is_zero() {
        "-"
    } else {
        ""
    };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// A ratio as a percentage with one decimal (`0.8072` → `80.7%`), `∞` when equity ≤ 0.
pub fn ratio_pct(r: MarginRatio) -> String {
    match r {
        MarginRatio::Finite(d) => match d.checked_mul(Decimal::ONE_HUNDRED) {
            Some(p) => format!(
                "{:.1}%",
                p.round_dp_with_strategy(1, RoundingStrategy::MidpointAwayFromZero)
            ),
            None => "∞".into(),
        },
        MarginRatio::Infinite => "∞".into(),
    }
}

/// A signed fraction as a percentage with two decimals (`-0.0957` → `-9.57%`).
pub fn fraction_pct(d: Decimal) -> String {
    match d.checked_mul(Decimal::ONE_HUNDRED) {
        Some(p) => format!(
            "{:+}%",
            p.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
        ),
        None => "?".into(),
    }
}

fn level_pct(d: Decimal) -> String {
    match d.checked_mul(Decimal::ONE_HUNDRED) {
        Some(p) => format!("{}%", p.normalize()),
        None => d.to_string(),
    }
}

/// One readable line for an event.
pub fn format_event(ev: &RiskEvent, style: &Style) -> String {
    let time = hms(market_time(ev));
    let (label, code) = match ev.kind {
        EventKind::LiquidationWarning => ("WARNING  ", "1;33"),
        EventKind::LiquidationTrigger => ("TRIGGER  ", "1;31"),
        EventKind::Recovered => ("recovered", "32"),
        EventKind::FeedStale => ("feed stale", "35"),
        EventKind::FeedRestored => ("feed back", "36"),
        EventKind::InstrumentChanged => ("instrument", "34"),
        EventKind::RiskWarning => ("RISK     ", "1;33"),
    };
    let label = style.paint(code, label);
    if let Some(feed) = &ev.feed {
        let venues: Vec<&str> = feed.venues.iter().map(|v| v.as_str()).collect();
        return format!(
            "{time}  {:<14} {label}  no fresh price from {} for {} ms",
            feed.instrument.as_str(),
            venues.join(", "),
            feed.age_ms.unwrap_or(feed.stale_after_ms)
        );
    }
    let account = ev.account_id.as_ref().map(|a| a.as_str()).unwrap_or("-");
    let level = ev
        .level
        .map(|l| match ev.kind {
            EventKind::Recovered => format!("below {}", level_pct(l)),
            _ => format!("≥ {}", level_pct(l)),
        })
        .unwrap_or_default();
    let mut line = format!("{time}  {account:<14} {label} {level:<9}");
    if let Some(s) = &ev.snapshot {
        line.push_str(&format!(
            "  ratio {:>7}  equity {:>12}  MM {:>10}",
            ratio_pct(s.margin_ratio),
            money(s.equity, 2),
            money(s.maintenance_margin, 2)
        ));
        let triggered = matches!(ev.state, Some(AccountState::Triggered));
        match s.shock_distance.nearest {
            Some(d) if !triggered => {
                line.push_str(&format!("  trigger at {:>7} move", fraction_pct(d)))
            }
            _ => line.push_str(&" ".repeat(25)),
        }
    }
    let prices: Vec<String> = ev
        .prices
        .iter()
        .filter(|p| p.source != "stable")
        .map(|p| {
            let sym = p.instrument.as_str();
            let short = sym.split(['-', '_']).next().unwrap_or(sym);
            let short = short.strip_suffix("USDT").unwrap_or(short);
            format!(
                "{short} {}",
                money(p.price, if p.price < Decimal::ONE_HUNDRED { 2 } else { 0 })
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !prices.is_empty() {
        line.push_str(&format!("  [{}]", prices.join(" · ")));
    }
    if ev.stale_prices {
        line.push_str(&style.paint("35", "  (stale prices)"));
    }
    // What to ask the client for: on a line of its own, under the account's column.
    if let Some(call) = ev.snapshot.as_ref().and_then(|s| s.margin_call.as_ref()) {
        line.push_str(&format!(
            "\n{:<25}margin call: deposit {} to bring the ratio below {}",
            "",
            money(call.deposit, 2),
            level_pct(call.below_ratio)
        ));
    }
    line
}

// ---------------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------------

/// What the demo saw of one account.
#[derive(Clone, Debug, Default)]
pub struct AccountSummary {
    /// Highest margin ratio in any event.
    pub worst_ratio: Option<MarginRatio>,
    /// Events by kind, in order of first appearance.
    pub events: Vec<EventKind>,
    /// State after the last event.
    pub last_state: Option<AccountState>,
}

/// Everything the demo printed, for the summary.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Per account.
    pub accounts: BTreeMap<String, AccountSummary>,
    /// Feed events seen.
    pub feed_events: usize,
}

impl Summary {
    /// A summary listing `accounts` before any event.
    pub fn for_accounts(accounts: impl IntoIterator<Item = String>) -> Self {
        Summary {
            accounts: accounts
                .into_iter()
                .map(|id| (id, AccountSummary::default()))
                .collect(),
            feed_events: 0,
        }
    }

    /// Records an event.
    pub fn record(&mut self, ev: &RiskEvent) {
        let Some(id) = &ev.account_id else {
            self.feed_events += 1;
            return;
        };
        let a = self.accounts.entry(id.to_string()).or_default();
        if let Some(s) = &ev.snapshot {
            a.worst_ratio = Some(match a.worst_ratio {
                Some(w) if w >= s.margin_ratio => w,
                _ => s.margin_ratio,
            });
        }
        a.events.push(ev.kind);
        a.last_state = ev.state.clone();
    }

    /// The summary table.
    pub fn render(&self, style: &Style) -> String {
        let mut out = String::new();
        out.push_str(&style.paint("1", "Summary"));
        out.push('\n');
        out.push_str(&format!(
            "  {:<14} {:>13}  {:<12} {}\n",
            "account", "peak at event", "final state", "events"
        ));
        for (id, a) in &self.accounts {
            let state = match &a.last_state {
                Some(AccountState::Healthy) | None => "healthy".to_string(),
                Some(AccountState::Warning { level }) => format!("warning {}", level_pct(*level)),
                Some(AccountState::Triggered) => "TRIGGERED".to_string(),
            };
            let events: Vec<&str> = a
                .events
                .iter()
                .map(|k| match k {
                    EventKind::LiquidationWarning => "warning",
                    EventKind::LiquidationTrigger => "TRIGGER",
                    EventKind::Recovered => "recovered",
                    EventKind::FeedStale => "feed_stale",
                    EventKind::FeedRestored => "feed_restored",
                    EventKind::InstrumentChanged => "instrument_changed",
                    EventKind::RiskWarning => "risk_warning",
                })
                .collect();
            out.push_str(&format!(
                "  {:<14} {:>13}  {:<12} {}\n",
                id,
                a.worst_ratio.map(ratio_pct).unwrap_or_else(|| "-".into()),
                state,
                if events.is_empty() {
                    "none (never near a level)".to_string()
                } else {
                    compress(&events)
                }
            ));
        }
        if self.feed_events > 0 {
            out.push_str(&format!("  feed events: {}\n", self.feed_events));
        }
        out
    }
}

/// `a, b, b, b, c` → `a → b ×3 → c`.
fn compress(items: &[&str]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let mut j = i;
        while j < items.len() && items[j] == items[i] {
            j += 1;
        }
        if j - i > 1 {
            out.push(format!("{} ×{}", items[i], j - i));
        } else {
            out.push(items[i].to_string());
        }
        i = j;
    }
    out.join(" → ")
}

/// A sink that prints each event as a readable line on stdout and keeps a [`Summary`].
pub struct DemoSink {
    style: Style,
    summary: Arc<Mutex<Summary>>,
    /// Accounts the demo shows (the rest are counted only); empty = all.
    pub only: Vec<String>,
}

impl DemoSink {
    /// A printer writing to stdout.
    pub fn new(style: Style, summary: Arc<Mutex<Summary>>) -> Self {
        DemoSink {
            style,
            summary,
            only: Vec::new(),
        }
    }
}

impl Sink for DemoSink {
    fn name(&self) -> &str {
        "demo"
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a [JournalEntry],
    ) -> BoxFuture<'a, (usize, Option<SinkError>)> {
        Box::pin(async move {
            let mut out = std::io::stdout().lock();
            for (i, e) in batch.iter().enumerate() {
                self.summary.lock().record(&e.event);
                let line = format_event(&e.event, &self.style);
                if let Err(err) = writeln!(out, "{line}") {
                    return (
                        i,
                        Some(SinkError::Retriable {
                            reason: format!("stdout: {err}"),
                            retry_after: None,
                        }),
                    );
                }
            }
            let _ = out.flush();
            (batch.len(), None)
        })
    }
}

/// Colour on a terminal unless disabled (also by `NO_COLOR`).
pub fn style_for_stdout(no_color: bool) -> Style {
    Style {
        color: !no_color
            && std::env::var_os("NO_COLOR").is_none()
            && std::io::stdout().is_terminal(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccountId, RiskSnapshot, ShockDistance};
    use rust_decimal_macros::dec;

    /// Money is grouped by thousands and rounded half-up.
    #[test]
    fn money_format() {
        assert_eq!(money(dec!(-84000.005), 2), "-84,000.01");
        assert_eq!(money(dec!(3450), 2), "3,450.00");
        assert_eq!(money(dec!(999.994), 2), "999.99");
        assert_eq!(money(dec!(1234567), 0), "1,234,567");
        assert_eq!(money(dec!(-0.001), 2), "0.00");
        assert_eq!(ratio_pct(MarginRatio::Finite(dec!(2.052173))), "205.2%");
        assert_eq!(ratio_pct(MarginRatio::Infinite), "∞");
        assert_eq!(fraction_pct(dec!(-0.09576479)), "-9.58%");
    }

    /// An event's market time is the receive time of the newest price it used.
    #[test]
    fn market_time_from_prices() {
        let mut ev = sample_event();
        assert_eq!(hms(market_time(&ev)), "13:00:00");
        ev.prices.push(crate::model::PriceUsed {
            instrument: "BTCUSDT-PERP".into(),
            price: dec!(30000),
            source: "binance-usdm".into(),
            received_ts: 1_621_429_500_000, // 2021-05-19T13:05:00Z
            age_ms: 0,
            stale: false,
        });
        assert_eq!(hms(market_time(&ev)), "13:05:00");
        let line = format_event(&ev, &Style { color: false });
        assert!(line.contains("[BTC 30,000]"), "{line}");
    }

    /// A trigger line names the account, level, ratio, equity, MM and shock distance.
    #[test]
    fn trigger_line() {
        let ev = sample_event();
        let line = format_event(&ev, &Style { color: false });
        assert!(line.starts_with("13:00:00  desk-alpha"), "{line}");
        assert!(!line.contains("margin call"), "{line}");
        for part in ["TRIGGER", "≥ 100%", "205.2%", "3,450.00", "7,080.00"] {
            assert!(line.contains(part), "{part} in {line}");
        }
        let mut s = Summary::default();
        s.record(&ev);
        s.record(&ev);
        let table = s.render(&Style { color: false });
        assert!(
            table.contains("desk-alpha") && table.contains("TRIGGER ×2"),
            "{table}"
        );
        assert!(table.contains("TRIGGERED"), "{table}");
        // The ratio column says what it is: the peak among the account's events.
        assert!(table.contains("peak at event"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.contains("desk-alpha") && l.contains("205.2%")),
            "{table}"
        );
    }

    /// A warning with a margin call says, on a second line, what deposit makes it healthy.
    #[test]
    fn warning_line_carries_the_margin_call() {
        let mut ev = sample_event();
        ev.kind = EventKind::LiquidationWarning;
        ev.state = Some(AccountState::Warning { level: dec!(0.3) });
        if let Some(s) = ev.snapshot.as_mut() {
            s.margin_call = Some(crate::model::MarginCall {
                below_ratio: dec!(0.1),
                deposit: dec!(6612.4),
            });
        }
        let text = format_event(&ev, &Style { color: false });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("WARNING"), "{text}");
        assert_eq!(
            lines[1].trim_start(),
            "margin call: deposit 6,612.40 to bring the ratio below 10%"
        );
        assert_eq!(lines[1].find('m'), Some(25), "{text}");
    }

    fn sample_event() -> RiskEvent {
        RiskEvent {
            event_id: RiskEvent::new_id(),
            kind: EventKind::LiquidationTrigger,
            time: String::new(),
            time_ms: 1_621_429_200_000,
            account_id: Some(AccountId::new("desk-alpha")),
            seq: 2,
            level: Some(dec!(1)),
            crossed_levels: vec![dec!(1)],
            level_type: None,
            previous_state: Some(AccountState::Warning { level: dec!(0.8) }),
            state: Some(AccountState::Triggered),
            snapshot: Some(Box::new(RiskSnapshot {
                equity: dec!(3450),
                maintenance_margin: dec!(7080),
                margin_ratio: MarginRatio::Finite(dec!(2.052173913)),
                free_margin: dec!(-3630),
                shock_distance: ShockDistance {
                    down: Some(dec!(0.021)),
                    up: None,
                    nearest: Some(dec!(0.021)),
                },
                liquidation_penalty: dec!(0),
                positions: vec![],
                collateral: vec![],
                liquidation_cost: None,
                funding: None,
                margin_call: None,
            })),
            prices: vec![],
            stale_prices: false,
            instrument_change: None,
            feed: None,
            risk: None,
        }
    }
}
