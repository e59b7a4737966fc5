//! The backtest report: per account the first warning, the first trigger, the **lead time**
//! between the warning that opened the episode and the trigger, the worst margin ratio, what
//! the liquidation would have cost, and every event — as JSON and as an aligned table.
//!
//! Lead time: the time from the `liquidation_warning` that took the account out of healthy
//! (without returning to healthy before the trigger) to its first `liquidation_trigger`. A
//! trigger that jumps straight from healthy has lead time 0 and no opening warning.

use rust_decimal::Decimal;
use serde::Serialize;

use super::{Point, ReplayCounts, Run};
use crate::cli::stress::money;
use crate::engine::AfterTrigger;
use crate::model::{
    AccountId, AccountState, EventKind, LevelType, LiquidationCost, MarginCall, MarginRatio,
    RiskEvent, Thresholds, TimestampMs, format_rfc3339_ms,
};

/// A moment in an account's run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mark {
    /// RFC 3339 UTC.
    pub time: String,
    /// ms since the epoch (recorded time).
    pub time_ms: TimestampMs,
    /// The event's level.
    pub level: Option<Decimal>,
    /// MM / equity then.
    pub margin_ratio: Option<MarginRatio>,
    /// Equity then.
    pub equity: Option<Decimal>,
}

/// The worst (highest) margin ratio seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Worst {
    /// The ratio (`"inf"` at equity ≤ 0).
    pub margin_ratio: MarginRatio,
    /// When (the first time it was reached).
    pub time: String,
    /// Same, ms.
    pub time_ms: TimestampMs,
    /// Equity then.
    pub equity: Decimal,
    /// MM then.
    pub maintenance_margin: Decimal,
}

/// One event, in short.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventLine {
    /// Kind.
    pub kind: EventKind,
    /// RFC 3339 UTC.
    pub time: String,
    /// ms.
    pub time_ms: TimestampMs,
    /// Per-account sequence number.
    pub seq: u64,
    /// The level of the event.
    pub level: Option<Decimal>,
    /// Every level crossed.
    pub crossed_levels: Vec<Decimal>,
    /// Which kind of level, when not the margin ratio (`shock_distance`, `funding`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level_type: Option<LevelType>,
    /// MM / equity.
    pub margin_ratio: Option<MarginRatio>,
    /// Equity.
    pub equity: Option<Decimal>,
    /// MM.
    pub maintenance_margin: Option<Decimal>,
    /// The margin call a warning or trigger carried (`snapshot.margin_call`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub margin_call: Option<MarginCall>,
}

/// One account's backtest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountReport {
    /// The account.
    pub account: AccountId,
    /// The levels it was watched with.
    pub levels: Thresholds,
    /// Its first `liquidation_warning`.
    pub first_warning: Option<Mark>,
    /// Its first `liquidation_trigger`.
    pub first_trigger: Option<Mark>,
    /// The warning that opened the episode ending in the first trigger.
    pub episode_warning: Option<Mark>,
    /// First trigger − episode warning, ms (0 when the trigger came straight from healthy);
    /// `null` without a trigger.
    pub lead_time_ms: Option<i64>,
    /// The same, as text (`1h 05m 00s`).
    pub lead_time: Option<String>,
    /// How many triggers fired.
    pub triggers: usize,
    /// The worst margin ratio of the run.
    pub worst_ratio: Option<Worst>,
    /// What the first trigger's liquidation would have cost.
    pub liquidation_cost: Option<LiquidationCost>,
    /// Points in its series.
    pub points: usize,
    /// The chart, relative to the output directory.
    pub chart: String,
    /// Every event.
    pub events: Vec<EventLine>,
}

impl AccountReport {
    /// The warning the tables show beside the trigger: the one its lead time runs from (the
    /// episode's), or for an account that never triggered its first warning. `None` for a
    /// trigger straight from healthy, even when a warning of an earlier, recovered episode or a
    /// later one exists (`first_warning` in the JSON has that one): a table must not show a
    /// warning that did not lead to the trigger beside it.
    pub fn lead_warning(&self) -> Option<&Mark> {
        if self.first_trigger.is_some() {
            self.episode_warning.as_ref()
        } else {
            self.first_warning.as_ref()
        }
    }
}

/// The whole report (`report.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The replay file, as given.
    pub replay: String,
    /// The config file, as given.
    pub config: Option<String>,
    /// The after-trigger mode.
    pub after_trigger: AfterTrigger,
    /// What the replay held.
    pub counts: ReplayCounts,
    /// Accounts the engine refused.
    pub rejected: Vec<Rejected>,
    /// Accounts never valued in the run (an instrument they hold had no price in the
    /// recording), with why: no event could fire for them.
    pub never_valued: Vec<Rejected>,
    /// Per account, in the accounts file's order.
    pub accounts: Vec<AccountReport>,
}

/// An account the engine refused, or never valued, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Rejected {
    /// The account.
    pub account: AccountId,
    /// Why.
    pub reason: String,
}

fn mark(e: &RiskEvent) -> Mark {
    Mark {
        time: e.time.clone(),
        time_ms: e.time_ms,
        level: e.level,
        margin_ratio: e.snapshot.as_ref().map(|s| s.margin_ratio),
        equity: e.snapshot.as_ref().map(|s| s.equity),
    }
}

/// `3_900_000` → `1h 05m 00s`; `0` → `0s`.
pub fn duration_text(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{sec}s"),
        (0, _) => format!("{m}m {sec:02}s"),
        _ => format!("{h}h {m:02}m {sec:02}s"),
    }
}

/// The report of one account from its series and events (in emission order).
pub fn account_report(
    id: &AccountId,
    levels: &Thresholds,
    points: &[Point],
    events: &[&RiskEvent],
    chart: String,
) -> AccountReport {
    let first_warning = events
        .iter()
        .find(|e| e.kind == EventKind::LiquidationWarning)
        .map(|e| mark(e));
    // One episode per level type (ratio, shock distance, funding): each opens on its warning
    // from healthy and closes on its recovery to healthy; the trigger's lead time runs from
    // the earliest episode still open (a distance warning counts, issue 13).
    let mut episodes: Vec<(LevelType, &RiskEvent)> = Vec::new();
    let mut first_trigger: Option<&RiskEvent> = None;
    for e in events {
        let lt = e.level_type.unwrap_or(LevelType::MarginRatio);
        match e.kind {
            EventKind::LiquidationWarning
                if e.previous_state == Some(AccountState::Healthy) && first_trigger.is_none() =>
            {
                episodes.retain(|(t, _)| *t != lt);
                episodes.push((lt, e));
            }
            EventKind::Recovered
                if e.state == Some(AccountState::Healthy) && first_trigger.is_none() =>
            {
                episodes.retain(|(t, _)| *t != lt);
            }
            EventKind::LiquidationTrigger if first_trigger.is_none() => {
                first_trigger = Some(e);
            }
            _ => {}
        }
    }
    let episode = episodes.iter().map(|(_, e)| *e).min_by_key(|e| e.time_ms);
    let lead_time_ms = first_trigger.map(|t| episode.map_or(0, |w| t.time_ms - w.time_ms));
    let worst = points
        .iter()
        .fold(None::<&Point>, |w, p| match w {
            Some(w) if w.margin_ratio >= p.margin_ratio => Some(w),
            _ => Some(p),
        })
        .map(|p| Worst {
            margin_ratio: p.margin_ratio,
            time: format_rfc3339_ms(p.time_ms),
            time_ms: p.time_ms,
            equity: p.equity,
            maintenance_margin: p.maintenance_margin,
        });
    AccountReport {
        account: id.clone(),
        levels: levels.clone(),
        first_warning,
        first_trigger: first_trigger.map(mark),
        episode_warning: first_trigger.and(episode).map(mark),
        lead_time_ms,
        lead_time: lead_time_ms.map(duration_text),
        triggers: events
            .iter()
            .filter(|e| e.kind == EventKind::LiquidationTrigger)
            .count(),
        worst_ratio: worst,
        liquidation_cost: first_trigger
            .and_then(|t| t.snapshot.as_ref())
            .and_then(|s| s.liquidation_cost.as_deref().cloned()),
        points: points.len(),
        chart,
        events: events
            .iter()
            .map(|e| EventLine {
                kind: e.kind,
                time: e.time.clone(),
                time_ms: e.time_ms,
                seq: e.seq,
                level: e.level,
                crossed_levels: e.crossed_levels.clone(),
                level_type: e.level_type.filter(|t| *t != LevelType::MarginRatio),
                margin_ratio: e.snapshot.as_ref().map(|s| s.margin_ratio),
                equity: e.snapshot.as_ref().map(|s| s.equity),
                maintenance_margin: e.snapshot.as_ref().map(|s| s.maintenance_margin),
                margin_call: e.snapshot.as_ref().and_then(|s| s.margin_call.clone()),
            })
            .collect(),
    }
}

/// The events of one account, in emission order.
pub fn events_of<'a>(run: &'a Run, id: &AccountId) -> Vec<&'a RiskEvent> {
    run.events
        .iter()
        .filter(|e| e.account_id.as_ref() == Some(id))
        .collect()
}

/// A ratio as a percentage to 0.01 (`"inf"`).
pub fn ratio_text(r: MarginRatio) -> String {
    match r {
        MarginRatio::Finite(d) => match d.checked_mul(Decimal::ONE_HUNDRED) {
            Some(p) => format!("{} %", crate::margin::to_cents(p)),
            None => "huge".into(),
        },
        MarginRatio::Infinite => "inf".into(),
    }
}

/// Time of day of a recorded instant, `HH:MM:SS` UTC (with the date when `full`).
pub fn clock_text(ms: TimestampMs, full: bool) -> String {
    let t = format_rfc3339_ms(ms);
    if full {
        t.get(..19).unwrap_or(&t).replace('T', " ")
    } else {
        t.get(11..19).unwrap_or(&t).to_string()
    }
}

/// The aligned table (`report.txt` and standard output).
pub fn render_table(report: &Report) -> String {
    let header = [
        "account",
        "warning",
        "trigger",
        "lead time",
        "worst ratio",
        "liquidation cost at trigger",
        "events",
    ];
    let rows: Vec<[String; 7]> = report
        .accounts
        .iter()
        .map(|a| {
            let cost = a.liquidation_cost.as_ref().map_or("-".into(), |c| {
                if c.shortfall > Decimal::ZERO {
                    format!(
                        "penalty {}, shortfall {}",
                        money(c.penalty),
                        money(c.shortfall)
                    )
                } else {
                    format!("penalty {}, surplus {}", money(c.penalty), money(c.surplus))
                }
            });
            [
                a.account.to_string(),
                a.lead_warning()
                    .map_or("-".into(), |m| clock_text(m.time_ms, true)),
                a.first_trigger
                    .as_ref()
                    .map_or("-".into(), |m| clock_text(m.time_ms, true)),
                a.lead_time.clone().unwrap_or_else(|| "-".into()),
                a.worst_ratio
                    .as_ref()
                    .map_or("-".into(), |w| ratio_text(w.margin_ratio)),
                cost,
                a.events.len().to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (k, c) in cells.iter().enumerate() {
            if k > 0 {
                s.push_str("  ");
            }
            s.push_str(c);
            if k + 1 < cells.len() {
                s.push_str(&" ".repeat(widths[k].saturating_sub(c.chars().count())));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(String::from));
    for r in &rows {
        out.push_str(&line(r));
    }
    for r in &report.rejected {
        out.push_str(&format!("refused: {}: {}\n", r.account, r.reason));
    }
    for r in &report.never_valued {
        out.push_str(&format!(
            "never valued (no event could fire): {}: {}\n",
            r.account, r.reason
        ));
    }
    out.push('\n');
    out.push_str(&events_table(report));
    out
}

/// Every event of every account, one line each, in account order.
fn events_table(report: &Report) -> String {
    let header = [
        "account",
        "time (UTC)",
        "event",
        "level",
        "ratio",
        "equity",
        "maint. margin",
        "margin call",
    ];
    let mut rows: Vec<[String; 8]> = Vec::new();
    for a in &report.accounts {
        for e in &a.events {
            rows.push([
                a.account.to_string(),
                e.time.replace('T', " ").trim_end_matches('Z').to_string(),
                e.kind.to_string(),
                match (e.level, e.level_type) {
                    (None, _) => "-".into(),
                    (Some(l), None) => l.to_string(),
                    // A distance level reads as a move: `10% move`.
                    (Some(l), Some(LevelType::ShockDistance)) => {
                        format!("{}% move", (l * Decimal::ONE_HUNDRED).normalize())
                    }
                    (Some(l), Some(t)) => format!("{l} {}", t.as_str()),
                },
                e.margin_ratio.map_or("-".into(), ratio_text),
                e.equity.map_or("-".into(), money),
                e.maintenance_margin.map_or("-".into(), money),
                e.margin_call
                    .as_ref()
                    .map_or("-".into(), |c| money(c.deposit)),
            ]);
        }
    }
    if rows.is_empty() {
        return "no events\n".into();
    }
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    // Numbers right-aligned.
    let right = [false, false, false, true, true, true, true, true];
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (k, c) in cells.iter().enumerate() {
            if k > 0 {
                s.push_str("  ");
            }
            let pad = " ".repeat(widths[k].saturating_sub(c.chars().count()));
            if right[k] {
                s.push_str(&pad);
                s.push_str(c);
            } else {
                s.push_str(c);
                if k + 1 < cells.len() {
                    s.push_str(&pad);
                }
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(String::from));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations read as a person would write them.
    #[test]
    fn durations() {
        assert_eq!(duration_text(0), "0s");
        assert_eq!(duration_text(59_999), "59s");
        assert_eq!(duration_text(75_000), "1m 15s");
        assert_eq!(duration_text(3_900_000), "1h 05m 00s");
        assert_eq!(duration_text(-5), "0s");
    }

    fn ev(kind: EventKind, t: i64, prev: AccountState, next: AccountState) -> RiskEvent {
        RiskEvent {
            event_id: RiskEvent::new_id(),
            kind,
            time: format_rfc3339_ms(t),
            time_ms: t,
            account_id: Some("a".into()),
            seq: 0,
            level: None,
            crossed_levels: vec![],
            level_type: None,
            previous_state: Some(prev),
            state: Some(next),
            snapshot: None,
            prices: vec![],
            stale_prices: false,
            instrument_change: None,
            feed: None,
            risk: None,
        }
    }

    fn lead(events: &[RiskEvent]) -> (Option<i64>, Option<i64>, Option<i64>) {
        let refs: Vec<&RiskEvent> = events.iter().collect();
        let r = account_report(
            &"a".into(),
            &Thresholds::default(),
            &[],
            &refs,
            String::new(),
        );
        (
            r.lead_time_ms,
            r.first_warning.map(|m| m.time_ms),
            r.episode_warning.map(|m| m.time_ms),
        )
    }

    /// Lead time runs from the warning that opened the episode: an episode that recovered to
    /// healthy does not count, a second warning level does not restart it, a jump straight to
    /// the trigger has lead time 0, and no trigger means no lead time.
    #[test]
    fn lead_times() {
        use AccountState::{Healthy, Triggered};
        let w = |l: &str| AccountState::Warning {
            level: l.parse().unwrap(),
        };
        use EventKind::{LiquidationTrigger as T, LiquidationWarning as W, Recovered as R};
        // Warn at 10, recover at 20, warn at 30, higher warning at 40, trigger at 100.
        let story = [
            ev(W, 10, Healthy, w("0.8")),
            ev(R, 20, w("0.8"), Healthy),
            ev(W, 30, Healthy, w("0.8")),
            ev(W, 40, w("0.8"), w("0.9")),
            ev(T, 100, w("0.9"), Triggered),
            // After the first trigger nothing changes the answer.
            ev(R, 200, Triggered, Healthy),
            ev(W, 210, Healthy, w("0.8")),
            ev(T, 220, w("0.8"), Triggered),
        ];
        assert_eq!(lead(&story), (Some(70), Some(10), Some(30)));
        // Straight from healthy to the trigger.
        assert_eq!(
            lead(&[ev(T, 50, Healthy, Triggered)]),
            (Some(0), None, None)
        );
        // A warning that recovered, then a jump: still 0.
        let jump = [
            ev(W, 10, Healthy, w("0.8")),
            ev(R, 20, w("0.8"), Healthy),
            ev(T, 50, Healthy, Triggered),
        ];
        assert_eq!(lead(&jump), (Some(0), Some(10), None));
        // A partial recovery (trigger → warning) keeps the episode open.
        let partial = [
            ev(W, 10, Healthy, w("0.8")),
            ev(R, 20, w("0.9"), w("0.8")),
            ev(T, 50, w("0.8"), Triggered),
        ];
        assert_eq!(lead(&partial), (Some(40), Some(10), Some(10)));
        assert_eq!(lead(&story[..2]), (None, Some(10), None));
    }

    /// Issue 13: a distance warning opens its own episode, so a ratio that jumps straight to
    /// the trigger still has the distance warning's lead time; a distance recovery closes only
    /// the distance episode, a ratio recovery only the ratio's.
    #[test]
    fn distance_warnings_count_for_lead_time() {
        use AccountState::{Healthy, Triggered};
        use EventKind::{LiquidationTrigger as T, LiquidationWarning as W, Recovered as R};
        let w = |l: &str| AccountState::Warning {
            level: l.parse().unwrap(),
        };
        let shock = |mut e: RiskEvent| {
            e.level_type = Some(LevelType::ShockDistance);
            e
        };
        // 6 % from liquidation at 10 while the ratio is calm; the ratio jumps at 25.
        let story = [
            shock(ev(W, 10, Healthy, w("0.1"))),
            ev(T, 25, Healthy, Triggered),
        ];
        assert_eq!(lead(&story), (Some(15), Some(10), Some(10)));
        // A ratio warning at 5 closed by its recovery at 8: the distance episode (from 10) is
        // what leads to the trigger.
        let two = [
            ev(W, 5, Healthy, w("0.8")),
            ev(R, 8, w("0.8"), Healthy),
            shock(ev(W, 10, Healthy, w("0.1"))),
            ev(W, 20, Healthy, w("0.8")),
            ev(T, 25, w("0.8"), Triggered),
        ];
        assert_eq!(lead(&two), (Some(15), Some(5), Some(10)));
        // The distance recovered before the trigger: only the ratio's episode is left.
        let recovered = [
            shock(ev(W, 10, Healthy, w("0.1"))),
            ev(W, 12, Healthy, w("0.8")),
            shock(ev(R, 14, w("0.1"), Healthy)),
            ev(T, 25, w("0.8"), Triggered),
        ];
        assert_eq!(lead(&recovered), (Some(13), Some(10), Some(12)));
    }

    /// Clock text is UTC from the recorded instant.
    #[test]
    fn clocks() {
        assert_eq!(clock_text(1_621_428_600_000, false), "12:50:00");
        assert_eq!(clock_text(1_621_428_600_000, true), "2021-05-19 12:50:00");
    }
}
