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
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use rust_decimal::{Decimal, RoundingStrategy};

use crate::app::AppError;
use crate::model::{AccountState, EventKind, MarginRatio, RiskEvent, TimestampMs};
use crate::sinks::{JournalEntry, Sink, SinkError};

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

/// Runs the demo.
pub fn main(_args: DemoArgs) -> Result<(), AppError> {
    Err(AppError::Runtime(
        "the demo needs the replay feed and the engine, which are not wired yet".into(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Readable event lines
// ---------------------------------------------------------------------------------------------

/// How event times are shown: as market time of the recording (replay at a known speed) or as
/// wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock ms when the replay started.
    pub wall_start: TimestampMs,
    /// Recording time (ms) that corresponds to `wall_start`.
    pub market_start: TimestampMs,
    /// Replay speed; `None` = as fast as possible (market time unknown: wall time is shown).
    pub speed: Option<Decimal>,
}

impl Clock {
    /// The time to show for an event detected at wall time `ts`, `HH:MM:SS` UTC.
    pub fn show(&self, ts: TimestampMs) -> String {
        let t = match self.speed {
            Some(speed) => {
                let elapsed = Decimal::from(ts.saturating_sub(self.wall_start));
                let market = elapsed
                    .checked_mul(speed)
                    .and_then(|d| i64::try_from(d.trunc()).ok())
                    .unwrap_or(0);
                self.market_start.saturating_add(market)
            }
            None => ts,
        };
        let rfc = crate::model::format_rfc3339_ms(t);
        rfc.get(11..19).unwrap_or(&rfc).to_string()
    }
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
pub fn format_event(ev: &RiskEvent, clock: &Clock, style: &Style) -> String {
    let time = clock.show(ev.time_ms);
    let (label, code) = match ev.kind {
        EventKind::LiquidationWarning => ("WARNING  ", "1;33"),
        EventKind::LiquidationTrigger => ("TRIGGER  ", "1;31"),
        EventKind::Recovered => ("recovered", "32"),
        EventKind::FeedStale => ("feed stale", "35"),
        EventKind::FeedRestored => ("feed back", "36"),
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
            "  {:<14} {:>11}  {:<12} {}\n",
            "account", "worst ratio", "final state", "events"
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
                })
                .collect();
            out.push_str(&format!(
                "  {:<14} {:>11}  {:<12} {}\n",
                id,
                a.worst_ratio.map(ratio_pct).unwrap_or_else(|| "-".into()),
                state,
                compress(&events)
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
    clock: Clock,
    style: Style,
    summary: Arc<Mutex<Summary>>,
    /// Accounts the demo shows (the rest are counted only); empty = all.
    pub only: Vec<String>,
}

impl DemoSink {
    /// A printer writing to stdout.
    pub fn new(clock: Clock, style: Style, summary: Arc<Mutex<Summary>>) -> Self {
        DemoSink {
            clock,
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
                let line = format_event(&e.event, &self.clock, &self.style);
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

    /// The market clock maps wall time back to the recording's time at the replay speed.
    #[test]
    fn market_clock() {
        let c = Clock {
            wall_start: 1_000_000,
            market_start: 1_621_382_400_000, // 2021-05-19T00:00:00Z
            speed: Some(dec!(3000)),
        };
        // 15.6 s of wall time at ×3000 = 13 h.
        assert_eq!(c.show(1_015_600), "13:00:00");
    }

    /// A trigger line names the account, level, ratio, equity, MM and shock distance.
    #[test]
    fn trigger_line() {
        let ev = RiskEvent {
            event_id: RiskEvent::new_id(),
            kind: EventKind::LiquidationTrigger,
            time: String::new(),
            time_ms: 1_621_429_200_000,
            account_id: Some(AccountId::new("desk-alpha")),
            seq: 2,
            level: Some(dec!(1)),
            crossed_levels: vec![dec!(1)],
            previous_state: Some(AccountState::Warning { level: dec!(0.8) }),
            state: Some(AccountState::Triggered),
            snapshot: Some(RiskSnapshot {
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
            }),
            prices: vec![],
            stale_prices: false,
            feed: None,
        };
        let clock = Clock {
            wall_start: 0,
            market_start: 0,
            speed: None,
        };
        let line = format_event(&ev, &clock, &Style { color: false });
        assert!(line.starts_with("13:00:00  desk-alpha"), "{line}");
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
    }
}
