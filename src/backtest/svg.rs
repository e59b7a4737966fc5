//! Hand-built SVG: one chart per account (equity and maintenance margin over recorded time, the
//! levels as the equity at which each is reached — `MM / level` — and the events marked) and an
//! `index.html` page linking them. Plain strings, no script; coordinates are computed in
//! `Decimal` and written to 0.1 px, so the same run gives the same bytes on any machine.

use std::fmt::Write as _;

use rust_decimal::{Decimal, RoundingStrategy};

use super::Point;
use super::report::{AccountReport, Report, clock_text, ratio_text};
use crate::cli::stress::money;
use crate::model::EventKind;

const W: i64 = 960;
const H: i64 = 440;
const LEFT: i64 = 110;
const RIGHT: i64 = 940;
const TOP: i64 = 70;
const BOTTOM: i64 = 370;

const EQUITY: &str = "#2c7bb6";
const MM: &str = "#333333";
const WARNING: &str = "#e08214";
const TRIGGER: &str = "#d7191c";
const RECOVERED: &str = "#1a9641";

/// Escapes text for XML/HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A file name for an account's chart: its position and its id with anything but
/// `[A-Za-z0-9._-]` replaced by `_` (ids may hold `/`).
pub fn chart_file(n: usize, id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    format!("charts/{:03}-{safe}.svg", n + 1)
}

fn px(d: Decimal) -> String {
    d.round_dp_with_strategy(1, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
        .to_string()
}

/// `v` in `[lo, hi]` mapped onto `[a, b]` pixels (`a` at `lo`).
fn scale(v: Decimal, lo: Decimal, hi: Decimal, a: i64, b: i64) -> Option<Decimal> {
    let span = hi.checked_sub(lo)?;
    if span.is_zero() {
        return Some(Decimal::from(a));
    }
    let f = v.checked_sub(lo)?.checked_div(span)?;
    Decimal::from(a).checked_add(f.checked_mul(Decimal::from(b - a))?)
}

/// The equity at which the ratio reaches `level`: `MM / level`.
fn level_equity(mm: Decimal, level: Decimal) -> Option<Decimal> {
    if level <= Decimal::ZERO {
        return None;
    }
    mm.checked_div(level)
}

/// Round UTC instants between `t0` and `t1` (at most 9): multiples of the smallest of 1 min …
/// 1 day that keeps them few.
fn time_ticks(t0: i64, t1: i64) -> Vec<i64> {
    const MIN: i64 = 60_000;
    let span = t1.saturating_sub(t0);
    let step = [1, 5, 15, 30, 60, 120, 180, 360, 720, 1440]
        .into_iter()
        .map(|m| m * MIN)
        .find(|s| span / s <= 8)
        .unwrap_or(span.max(1));
    let first = t0.div_euclid(step) * step + if t0.rem_euclid(step) == 0 { 0 } else { step };
    (0..)
        .map(|k| first + k * step)
        .take_while(|t| *t <= t1)
        .take(9)
        .collect()
}

/// The chart of one account.
pub fn chart(a: &AccountReport, points: &[Point]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#ffffff\"/>\n"
    );
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{}</text>",
        escape(&a.account.to_string())
    );
    let summary = format!(
        "warning {} · trigger {} · lead time {} · worst ratio {}",
        a.lead_warning()
            .map_or("none".into(), |m| clock_text(m.time_ms, true)),
        a.first_trigger
            .as_ref()
            .map_or("none".into(), |m| clock_text(m.time_ms, true)),
        a.lead_time.as_deref().unwrap_or("-"),
        a.worst_ratio
            .as_ref()
            .map_or("-".into(), |w| ratio_text(w.margin_ratio)),
    );
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"44\" fill=\"#555555\">{}</text>",
        escape(&summary)
    );
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        let _ = writeln!(
            s,
            "<text x=\"{LEFT}\" y=\"{}\">no complete prices for this account in the replay</text>\n</svg>",
            (TOP + BOTTOM) / 2
        );
        return s;
    };
    let (t0, t1) = (Decimal::from(first.time_ms), Decimal::from(last.time_ms));
    let mut levels: Vec<(Decimal, &str)> = a
        .levels
        .warning_levels
        .iter()
        .map(|l| (*l, WARNING))
        .collect();
    levels.push((a.levels.trigger, TRIGGER));
    // The value range: equity, MM and every level's equity, and 0.
    let mut lo = Decimal::ZERO;
    let mut hi = Decimal::ZERO;
    for p in points {
        let mut vals = vec![p.equity, p.maintenance_margin];
        vals.extend(
            levels
                .iter()
                .filter_map(|(l, _)| level_equity(p.maintenance_margin, *l)),
        );
        for v in vals {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if hi == lo {
        hi = lo + Decimal::ONE;
    }
    let x = |t: i64| scale(Decimal::from(t), t0, t1, LEFT, RIGHT);
    let y = |v: Decimal| scale(v, lo, hi, BOTTOM, TOP);
    // Grid and axes.
    s.push_str("<g stroke=\"#e5e5e5\" stroke-width=\"1\">\n");
    let ticks = 4i64;
    for k in 0..=ticks {
        let v = lo + (hi - lo) * Decimal::from(k) / Decimal::from(ticks);
        if let Some(yy) = y(v) {
            let _ = writeln!(
                s,
                "<line x1=\"{LEFT}\" y1=\"{0}\" x2=\"{RIGHT}\" y2=\"{0}\"/>",
                px(yy)
            );
        }
    }
    s.push_str("</g>\n<g fill=\"#555555\" text-anchor=\"end\">\n");
    for k in 0..=ticks {
        let v = lo + (hi - lo) * Decimal::from(k) / Decimal::from(ticks);
        if let Some(yy) = y(v) {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\">{}</text>",
                LEFT - 6,
                px(yy + Decimal::from(4)),
                escape(money(v.round_dp(0)).trim_end_matches(".00"))
            );
        }
    }
    s.push_str("</g>\n<g fill=\"#555555\" text-anchor=\"middle\">\n");
    for t in time_ticks(first.time_ms, last.time_ms) {
        if let Some(xx) = x(t) {
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\">{}</text>",
                px(xx),
                BOTTOM + 18,
                clock_text(t, false).get(..5).unwrap_or("")
            );
        }
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\">UTC, {}</text>",
        (LEFT + RIGHT) / 2,
        BOTTOM + 36,
        clock_text(first.time_ms, true).get(..10).unwrap_or("")
    );
    s.push_str("</g>\n");
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999999\"/>",
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    // Zero equity: below it the account is bankrupt.
    if lo < Decimal::ZERO
        && let Some(zero) = y(Decimal::ZERO)
    {
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{0}\" x2=\"{RIGHT}\" y2=\"{0}\" stroke=\"#999999\" stroke-width=\"1\"/>",
            px(zero)
        );
    }
    // Series: the level curves (dashed), MM, equity.
    let path = |f: &dyn Fn(&Point) -> Option<Decimal>| {
        let mut d = String::new();
        for p in points {
            if let (Some(xx), Some(yy)) = (x(p.time_ms), f(p).and_then(y)) {
                d.push_str(if d.is_empty() { "M" } else { " L" });
                let _ = write!(d, "{},{}", px(xx), px(yy));
            }
        }
        d
    };
    for (level, colour) in &levels {
        let d = path(&|p| level_equity(p.maintenance_margin, *level));
        let _ = writeln!(
            s,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1\" stroke-dasharray=\"5,4\"><title>equity at ratio {level} (MM / {level})</title></path>"
        );
    }
    let _ = writeln!(
        s,
        "<path d=\"{}\" fill=\"none\" stroke=\"{MM}\" stroke-width=\"1.5\"><title>maintenance margin</title></path>",
        path(&|p| Some(p.maintenance_margin))
    );
    let _ = writeln!(
        s,
        "<path d=\"{}\" fill=\"none\" stroke=\"{EQUITY}\" stroke-width=\"2\"><title>equity</title></path>",
        path(&|p| Some(p.equity))
    );
    // Events.
    for e in &a.events {
        let (colour, letter) = match e.kind {
            EventKind::LiquidationWarning => (WARNING, "W"),
            EventKind::LiquidationTrigger => (TRIGGER, "T"),
            EventKind::Recovered => (RECOVERED, "R"),
            _ => continue,
        };
        let Some(xx) = x(e.time_ms) else { continue };
        let label = format!(
            "{} at {}: level {}, ratio {}",
            e.kind,
            clock_text(e.time_ms, true),
            e.level.map_or("-".into(), |l| l.to_string()),
            e.margin_ratio.map_or("-".into(), ratio_text)
        );
        let _ = writeln!(
            s,
            "<g><title>{}</title><line x1=\"{x}\" y1=\"{TOP}\" x2=\"{x}\" y2=\"{BOTTOM}\" stroke=\"{colour}\" stroke-width=\"1\" stroke-dasharray=\"2,3\"/><text x=\"{x}\" y=\"{}\" fill=\"{colour}\" text-anchor=\"middle\" font-weight=\"bold\">{letter}</text>",
            escape(&label),
            TOP - 6,
            x = px(xx)
        );
        if let Some(yy) = e.equity.and_then(y) {
            let _ = writeln!(
                s,
                "<circle cx=\"{}\" cy=\"{}\" r=\"4\" fill=\"{colour}\"/>",
                px(xx),
                px(yy)
            );
        }
        s.push_str("</g>\n");
    }
    // Legend.
    let legend: [(&str, &str, &str); 5] = [
        (EQUITY, "", "equity"),
        (MM, "", "maintenance margin"),
        (WARNING, "5,4", "warning levels (MM / level)"),
        (TRIGGER, "5,4", "trigger (MM / trigger)"),
        (TRIGGER, "2,3", "events: W, T, R"),
    ];
    let mut lx = LEFT;
    for (colour, dash, text) in legend {
        let dash = if dash.is_empty() {
            String::new()
        } else {
            format!(" stroke-dasharray=\"{dash}\"")
        };
        let _ = writeln!(
            s,
            "<line x1=\"{lx}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/><text x=\"{2}\" y=\"{3}\">{4}</text>",
            H - 22,
            lx + 20,
            lx + 24,
            H - 18,
            escape(text)
        );
        // ~7 px a character at 12 px sans-serif (6 let "maintenance margin" run into the next
        // swatch); the five entries end near x = 890, inside the 960 px chart.
        lx += 36 + 7 * i64::try_from(text.len()).unwrap_or(20);
    }
    s.push_str("</svg>\n");
    s
}

/// The summary page: one row per account linking its chart, and the charts themselves.
pub fn index_html(report: &Report) -> String {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>liqwatch backtest</title>\n<style>\nbody{font-family:sans-serif;margin:2em;color:#222}\ntable{border-collapse:collapse}\nth,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}\ntd.n{text-align:right}\nimg{max-width:100%;border:1px solid #eee;margin:1em 0}\n</style>\n</head>\n<body>\n<h1>liqwatch backtest</h1>\n",
    );
    let c = &report.counts;
    let _ = writeln!(
        s,
        "<p>Replay <code>{}</code>{}: {} steps, {} prices applied, from {} to {} UTC; after a trigger: {}.</p>",
        escape(&report.replay),
        report.config.as_ref().map_or(String::new(), |p| format!(
            ", config <code>{}</code>",
            escape(p)
        )),
        c.steps,
        c.prices,
        c.first_ms.map_or("-".into(), |t| clock_text(t, true)),
        c.last_ms.map_or("-".into(), |t| clock_text(t, true)),
        match report.after_trigger {
            crate::engine::AfterTrigger::KeepWatching => "keep watching",
            crate::engine::AfterTrigger::MarkLiquidated => "mark liquidated",
        }
    );
    s.push_str("<table>\n<tr><th>account</th><th>warning</th><th>trigger</th><th>lead time</th><th>worst ratio</th><th>penalty</th><th>surplus</th><th>shortfall</th><th>events</th></tr>\n");
    for a in &report.accounts {
        let cost = a.liquidation_cost.as_ref();
        let cell = |d: Option<rust_decimal::Decimal>| d.map_or("-".into(), money);
        let _ = writeln!(
            s,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&a.chart),
            escape(&a.account.to_string()),
            a.lead_warning()
                .map_or("-".into(), |m| clock_text(m.time_ms, true)),
            a.first_trigger
                .as_ref()
                .map_or("-".into(), |m| clock_text(m.time_ms, true)),
            escape(a.lead_time.as_deref().unwrap_or("-")),
            a.worst_ratio
                .as_ref()
                .map_or("-".into(), |w| ratio_text(w.margin_ratio)),
            cell(cost.map(|c| c.penalty)),
            cell(cost.map(|c| c.surplus)),
            cell(cost.map(|c| c.shortfall)),
            a.events.len()
        );
    }
    s.push_str("</table>\n");
    for r in &report.rejected {
        let _ = writeln!(
            s,
            "<p>Account <code>{}</code> refused: {}</p>",
            escape(&r.account.to_string()),
            escape(&r.reason)
        );
    }
    for r in &report.never_valued {
        let _ = writeln!(
            s,
            "<p>Account <code>{}</code> never valued (no event could fire): {}</p>",
            escape(&r.account.to_string()),
            escape(&r.reason)
        );
    }
    for a in &report.accounts {
        let _ = writeln!(
            s,
            "<h2 id=\"{0}\">{1}</h2>\n<a href=\"{0}\"><img src=\"{0}\" alt=\"equity and maintenance margin of {1}\"></a>",
            escape(&a.chart),
            escape(&a.account.to_string())
        );
    }
    s.push_str("<p>Report data: <a href=\"report.json\">report.json</a>, <a href=\"report.txt\">report.txt</a>, <a href=\"events.jsonl\">events.jsonl</a>.</p>\n</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text is escaped for XML; file names keep only safe characters.
    #[test]
    fn escaping_and_names() {
        assert_eq!(
            escape("a<b & \"c\">'"),
            "a&lt;b &amp; &quot;c&quot;&gt;&#39;"
        );
        assert_eq!(chart_file(0, "desk-7/w3 ü"), "charts/001-desk-7_w3__.svg");
    }

    /// Time ticks fall on round UTC minutes and hours.
    #[test]
    fn round_time_ticks() {
        let h = 3_600_000;
        let t0 = 1_621_382_400_000; // 2021-05-19 00:00
        assert_eq!(
            time_ticks(t0, t0 + 16 * h - 75_000),
            (0..8).map(|k| t0 + 2 * h * k).collect::<Vec<_>>()
        );
        assert_eq!(
            time_ticks(t0 + 1, t0 + 10 * 60_000),
            vec![t0 + 5 * 60_000, t0 + 10 * 60_000]
        );
        assert_eq!(time_ticks(t0, t0), vec![t0]);
    }

    /// Values map linearly onto pixels, a flat range onto its first pixel.
    #[test]
    fn scaling() {
        use rust_decimal_macros::dec;
        assert_eq!(scale(dec!(5), dec!(0), dec!(10), 100, 200), Some(dec!(150)));
        assert_eq!(scale(dec!(5), dec!(5), dec!(5), 100, 200), Some(dec!(100)));
        assert_eq!(px(dec!(12.345)), "12.3");
        assert_eq!(px(dec!(12.35)), "12.4");
    }
}
