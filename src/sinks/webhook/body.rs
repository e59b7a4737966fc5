//! The bodies the webhook sink posts: the event JSON as journaled (`generic`), batches of it
//! (`{"events":[…]}`), and the chat and incident formats (Slack, Discord, PagerDuty), single
//! events and grouped warnings, with the readable alert text they share. Pure functions: no
//! I/O, so every shape is tested here.

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};

use super::{WebhookFormat, WebhookSettings};
use crate::model::{EventKind, LevelType, MarginRatio, RiskEvent};
use crate::sinks::{JournalEntry, SinkError};

/// One HTTP request to send.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingRequest {
    /// The `Idempotency-Key` header.
    pub idempotency_key: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

fn round2(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

fn fmt_money(d: Decimal) -> String {
    let mut r = round2(d);
    r.rescale(2);
    r.to_string()
}

/// A margin ratio in percent, as the risk page and `liqwatch stress` show it (`101.23 %`).
fn fmt_ratio(r: &MarginRatio) -> String {
    match r {
        MarginRatio::Finite(d) => fmt_pct(Some(*d)),
        MarginRatio::Infinite => "∞ (equity ≤ 0)".to_string(),
    }
}

fn fmt_pct(d: Option<Decimal>) -> String {
    match d.and_then(|d| d.checked_mul(Decimal::ONE_HUNDRED)) {
        Some(p) => format!("{} %", round2(p)),
        None => "none".to_string(),
    }
}

/// A level as a key part (PagerDuty's `dedup_key`): the bare number, so incidents keep their keys.
fn fmt_level(d: Option<Decimal>) -> String {
    d.map(|d| d.normalize().to_string())
        .unwrap_or_else(|| "-".to_string())
}

/// A level for people: every level type is a fraction (a ratio, a move, a probability, ES over
/// equity), shown in percent without trailing zeros (`level 80 %`).
fn fmt_level_pct(d: Option<Decimal>) -> String {
    match d.and_then(|d| d.checked_mul(Decimal::ONE_HUNDRED)) {
        Some(p) => format!("{} %", round2(p).normalize()),
        None => "-".to_string(),
    }
}

/// The level as a key part: the bare level for the margin ratio (as before distance levels),
/// prefixed by the level type otherwise, so a distance level never shares an incident with a
/// ratio level of the same number.
fn level_key(ev: &RiskEvent, level: &str) -> String {
    match ev.level_type {
        Some(t) if t != crate::model::LevelType::MarginRatio => format!("{}:{level}", t.as_str()),
        _ => level.to_string(),
    }
}

pub(super) fn account_of(ev: &RiskEvent) -> String {
    ev.account_id
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".to_string())
}

/// Human-readable text of one event: a title, a one-line summary and labelled fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertText {
    /// E.g. `LIQUIDATION TRIGGER: acct-7`.
    pub title: String,
    /// One line with every number that matters: `<kind> <account>: <details>`.
    pub summary: String,
    /// The numbers alone (`margin ratio …, equity …, MM …, shock distance …`).
    pub details: String,
    /// Labelled values for chat layouts.
    pub fields: Vec<(&'static str, String)>,
}

/// Builds the readable text of an event: account, kind, level, ratio, equity, MM, shock distance.
pub fn alert_text(ev: &RiskEvent) -> AlertText {
    let account = account_of(ev);
    let stale = if ev.stale_prices {
        " (STALE PRICES)"
    } else {
        ""
    };
    let (title, mut fields) = match ev.kind {
        EventKind::LiquidationWarning => (
            format!("Liquidation warning: {account}"),
            vec![("Account", account.clone())],
        ),
        EventKind::LiquidationTrigger => (
            format!("LIQUIDATION TRIGGER: {account}"),
            vec![("Account", account.clone())],
        ),
        EventKind::Recovered => (
            format!("Recovered: {account}"),
            vec![("Account", account.clone())],
        ),
        EventKind::RiskWarning => (
            format!("Risk warning: {account}"),
            vec![("Account", account.clone())],
        ),
        EventKind::FeedStale | EventKind::FeedRestored => {
            let inst = ev
                .feed
                .as_ref()
                .map(|f| f.instrument.to_string())
                .unwrap_or_else(|| "-".to_string());
            let what = if ev.kind == EventKind::FeedStale {
                "Feed stale"
            } else {
                "Feed restored"
            };
            (format!("{what}: {inst}"), vec![("Instrument", inst)])
        }
        EventKind::InstrumentChanged => {
            let inst = ev
                .instrument_change
                .as_ref()
                .map(|c| c.instrument.to_string())
                .unwrap_or_else(|| "-".to_string());
            (
                format!("Instrument terms changed: {inst}"),
                vec![("Instrument", inst)],
            )
        }
    };
    fields.push(("Kind", ev.kind.as_str().to_string()));
    let details = if let Some(r) = &ev.risk {
        // Scenario risk (`risk_warning` and its `recovered`): the figures that crossed.
        let level_type = ev.level_type.map(|t| t.as_str()).unwrap_or("-");
        let level = fmt_level_pct(ev.level);
        let p = fmt_pct(Some(r.p_liquidation));
        let es = fmt_money(r.es);
        let ratio = fmt_pct(r.es_to_equity);
        fields.push(("Level", format!("{level_type} {level}")));
        fields.push(("P(liquidation)", p.clone()));
        fields.push(("ES", es.clone()));
        fields.push(("ES / equity", ratio.clone()));
        format!(
            "{level_type} level {level}: P(liquidation) {p}, ES {es} ({ratio} of equity) over {}{stale}",
            r.horizon
        )
    } else if let Some(s) = &ev.snapshot {
        let ratio = fmt_ratio(&s.margin_ratio);
        let equity = fmt_money(s.equity);
        let mm = fmt_money(s.maintenance_margin);
        let shock = fmt_pct(s.shock_distance.nearest);
        let level = fmt_level_pct(ev.level);
        fields.push(("Level", level.clone()));
        fields.push(("Margin ratio", ratio.clone()));
        fields.push(("Equity", equity.clone()));
        fields.push(("Maintenance margin", mm.clone()));
        fields.push(("Shock distance", shock.clone()));
        if ev.level_type == Some(crate::model::LevelType::ShockDistance) {
            // A distance level: the move to the trigger is what crossed it.
            format!(
                "shock distance {shock} (level {level} move), margin ratio {ratio}, \
                 equity {equity}, MM {mm}{stale}"
            )
        } else {
            // A desk's next step: what the client must deposit to be healthy again.
            let call = match &s.margin_call {
                Some(c) => {
                    let deposit = fmt_money(c.deposit);
                    let under = fmt_level_pct(Some(c.below_ratio));
                    fields.push((
                        "Margin call",
                        format!("deposit {deposit} (ratio under {under})"),
                    ));
                    format!(", margin call: deposit {deposit} to bring the ratio under {under}")
                }
                None => String::new(),
            };
            format!(
                "margin ratio {ratio} (level {level}), equity {equity}, MM {mm}, \
                 shock distance {shock}{call}{stale}"
            )
        }
    } else if let Some(f) = &ev.feed {
        let last = f
            .last_price
            .map(|p| p.normalize().to_string())
            .unwrap_or_else(|| "none".to_string());
        let age = f
            .age_ms
            .map(|a| format!("{a} ms"))
            .unwrap_or_else(|| "-".to_string());
        fields.push(("Last price", last.clone()));
        fields.push(("Age", age.clone()));
        format!(
            "last price {last}, age {age}, stale after {} ms",
            f.stale_after_ms
        )
    } else if let Some(c) = &ev.instrument_change {
        fields.push(("Changed", c.changed.join(", ")));
        fields.push(("Holders revalued", c.holders_revalued.to_string()));
        format!(
            "{} changed ({}), {} holders revalued",
            c.changed.join(", "),
            c.source,
            c.holders_revalued
        )
    } else {
        format!("level {}", fmt_level_pct(ev.level))
    };
    let subject = match (&ev.feed, &ev.instrument_change) {
        (Some(f), _) if ev.account_id.is_none() => f.instrument.to_string(),
        (_, Some(c)) if ev.account_id.is_none() => c.instrument.to_string(),
        _ => account.clone(),
    };
    let summary = format!("{} {subject}: {details}", ev.kind.as_str());
    if ev.stale_prices {
        fields.push(("Prices", "STALE".to_string()));
    }
    AlertText {
        title,
        summary,
        details,
        fields,
    }
}

fn emoji(kind: EventKind) -> &'static str {
    match kind {
        EventKind::LiquidationTrigger => "🚨",
        EventKind::LiquidationWarning | EventKind::RiskWarning => "⚠️",
        EventKind::Recovered | EventKind::FeedRestored => "✅",
        EventKind::FeedStale => "📉",
        EventKind::InstrumentChanged => "📋",
    }
}

fn discord_color(kind: EventKind) -> u32 {
    match kind {
        EventKind::LiquidationTrigger => 0xE0_1E_5A,
        EventKind::LiquidationWarning | EventKind::FeedStale | EventKind::RiskWarning => 0xEC_B2_2E,
        EventKind::Recovered | EventKind::FeedRestored => 0x2E_B6_7D,
        EventKind::InstrumentChanged => 0x3B_82_F6,
    }
}

/// Escapes Slack mrkdwn control characters.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// A summary of a grouped message: how many warnings, over which time span, the worst accounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupText {
    /// E.g. `⚠️ 1234 liquidation warnings in 8.2 s`.
    pub title: String,
    /// One line per listed account, worst first.
    pub worst: Vec<String>,
    /// First and last detection times.
    pub span: String,
}

/// Builds the readable text of a group of warnings, listing the `top` worst accounts by ratio.
pub fn group_text(entries: &[&JournalEntry], top: usize) -> GroupText {
    let n = entries.len();
    let first = entries.iter().map(|e| e.event.time_ms).min().unwrap_or(0);
    let last = entries.iter().map(|e| e.event.time_ms).max().unwrap_or(0);
    let secs = Decimal::new(last.saturating_sub(first), 3).round_dp(1);
    let mut ranked: Vec<&RiskEvent> = entries.iter().map(|e| &e.event).collect();
    ranked.sort_by(|a, b| {
        let ra = a.snapshot.as_ref().map(|s| s.margin_ratio);
        let rb = b.snapshot.as_ref().map(|s| s.margin_ratio);
        rb.cmp(&ra)
    });
    let accounts = entries
        .iter()
        .map(|e| account_of(&e.event))
        .collect::<std::collections::HashSet<_>>()
        .len();
    let mut seen = std::collections::HashSet::new();
    let worst = ranked
        .into_iter()
        .filter(|e| seen.insert(account_of(e)))
        .take(top)
        .map(|e| alert_text(e).summary)
        .collect();
    GroupText {
        title: format!("⚠️ {n} liquidation warnings in {secs} s"),
        worst,
        span: format!(
            "{accounts} accounts, first {} · last {}",
            crate::model::format_rfc3339_ms(first),
            crate::model::format_rfc3339_ms(last)
        ),
    }
}

fn body(v: &Value) -> Result<Vec<u8>, SinkError> {
    serde_json::to_vec(v).map_err(|e| SinkError::Permanent {
        reason: format!("cannot serialise body: {e}"),
    })
}

fn pd_key(parts: &[&str]) -> String {
    let mut k = String::from("liqwatch");
    for p in parts {
        k.push(':');
        k.push_str(p);
    }
    k
}

fn pd_severity(kind: EventKind) -> &'static str {
    match kind {
        EventKind::LiquidationTrigger => "critical",
        EventKind::LiquidationWarning | EventKind::RiskWarning => "warning",
        EventKind::FeedStale => "error",
        EventKind::Recovered | EventKind::FeedRestored | EventKind::InstrumentChanged => "info",
    }
}

fn custom_details(ev: &RiskEvent) -> Value {
    let s = ev.snapshot.as_ref();
    json!({
        "event_id": ev.event_id,
        "kind": ev.kind,
        "account_id": ev.account_id,
        "seq": ev.seq,
        "level": ev.level,
        "margin_ratio": s.map(|s| s.margin_ratio),
        "equity": s.map(|s| s.equity),
        "maintenance_margin": s.map(|s| s.maintenance_margin),
        "shock_distance": s.map(|s| s.shock_distance.nearest),
        "margin_call": s.and_then(|s| s.margin_call.as_ref()),
        "stale_prices": ev.stale_prices,
        "feed": ev.feed,
        "time": ev.time,
    })
}

/// Where an alert links on the risk page (`page_url` set), and what to call it: an account
/// event to its account's drill-down, a feed or instrument event to the page itself (its feeds
/// table).
fn link_of(settings: &WebhookSettings, ev: &RiskEvent) -> Option<(String, String)> {
    match &ev.account_id {
        Some(a) => Some((
            settings.account_link(a.as_str())?,
            format!("{a} on the risk page"),
        )),
        None => Some((
            format!("{}/", settings.page_url.as_ref()?),
            "the feeds on the risk page".to_string(),
        )),
    }
}

/// Renders one batched request (generic format, `batch_max > 1`): the body is
/// `{"events":[<event JSON>,…]}` with each event's JSON byte for byte as journaled, in the
/// given (journal) order; the `Idempotency-Key` is `batch:<first event_id>:<last event_id>:<count>`,
/// the same on every retry of the same events.
pub fn render_batch(entries: &[&JournalEntry]) -> OutgoingRequest {
    let len: usize = entries.iter().map(|e| e.json.len() + 1).sum();
    let mut body = Vec::with_capacity(len + 16);
    body.extend_from_slice(b"{\"events\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e.json.as_bytes());
    }
    body.extend_from_slice(b"]}");
    let first = entries
        .first()
        .map(|e| e.event.event_id.to_string())
        .unwrap_or_default();
    let last = entries
        .last()
        .map(|e| e.event.event_id.to_string())
        .unwrap_or_default();
    OutgoingRequest {
        idempotency_key: format!("batch:{first}:{last}:{}", entries.len()),
        body,
    }
}

/// Renders the request(s) for one event. Most events are one request; a PagerDuty recovery
/// resolves every level it recovered from, one request each.
pub fn render_single(
    settings: &WebhookSettings,
    entry: &JournalEntry,
) -> Result<Vec<OutgoingRequest>, SinkError> {
    let ev = &entry.event;
    let key = ev.event_id.to_string();
    let one = |b: Vec<u8>| {
        vec![OutgoingRequest {
            idempotency_key: key.clone(),
            body: b,
        }]
    };
    match settings.format {
        WebhookFormat::Generic => Ok(one(entry.json.clone().into_bytes())),
        WebhookFormat::Slack => {
            let t = alert_text(ev);
            let title = format!("{} {}", emoji(ev.kind), t.title);
            let fields: Vec<Value> = t
                .fields
                .iter()
                .take(10)
                .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{k}*\n{}", slack_escape(v))}))
                .collect();
            let mut blocks = vec![
                json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&title, 150), "emoji": true}}),
                json!({"type": "section", "text": {"type": "mrkdwn", "text": slack_escape(&t.summary)}, "fields": fields}),
            ];
            if let Some((link, what)) = link_of(settings, ev) {
                blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
                    "text": format!("<{link}|Open {}>", slack_escape(&what))}}));
            }
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("event `{}` · seq {} · {}", ev.event_id, ev.seq, ev.time)}]}));
            let v = json!({
                "text": format!("{title} — {}", slack_escape(&t.details)),
                "blocks": blocks,
            });
            Ok(one(body(&v)?))
        }
        WebhookFormat::Discord => {
            let t = alert_text(ev);
            let fields: Vec<Value> = t
                .fields
                .iter()
                .take(25)
                .map(|(k, v)| json!({"name": k, "value": truncate(v, 1024), "inline": true}))
                .collect();
            let mut embed = json!({
                "title": truncate(&t.title, 256),
                "description": truncate(&t.summary, 4096),
                "color": discord_color(ev.kind),
                "fields": fields,
                "timestamp": ev.time,
                "footer": {"text": format!("event {} · seq {}", ev.event_id, ev.seq)}
            });
            if let Some((link, _)) = link_of(settings, ev) {
                // The embed's title links to the account (or the feeds) on the risk page.
                embed["url"] = Value::String(link);
            }
            let v = json!({
                "content": truncate(&format!("{} {}", emoji(ev.kind), t.title), 2000),
                "embeds": [embed],
                "allowed_mentions": {"parse": []}
            });
            Ok(one(body(&v)?))
        }
        WebhookFormat::Pagerduty => {
            let rk = settings.routing_key.clone().unwrap_or_default();
            let account = account_of(ev);
            let feed_inst = ev.feed.as_ref().map(|f| f.instrument.to_string());
            // Scenario-risk events: one incident per account and level type.
            let risk_key = match ev.level_type {
                Some(t @ (LevelType::PLiquidation | LevelType::EsToEquity)) => {
                    Some(pd_key(&[&account, t.as_str()]))
                }
                _ => None,
            };
            match ev.kind {
                EventKind::Recovered if risk_key.is_some() => {
                    let v = json!({
                        "routing_key": rk,
                        "event_action": "resolve",
                        "dedup_key": risk_key,
                    });
                    Ok(one(body(&v)?))
                }
                EventKind::Recovered => {
                    let mut levels: Vec<Decimal> =
                        ev.crossed_levels.iter().map(|d| d.normalize()).collect();
                    if let Some(l) = ev.level {
                        levels.push(l.normalize());
                    }
                    levels.sort();
                    levels.dedup();
                    let mut out = Vec::with_capacity(levels.len());
                    for l in levels {
                        let lvl = l.to_string();
                        let v = json!({
                            "routing_key": rk,
                            "event_action": "resolve",
                            "dedup_key": pd_key(&[&account, &level_key(ev, &lvl)]),
                        });
                        out.push(OutgoingRequest {
                            idempotency_key: format!("{key}/{lvl}"),
                            body: body(&v)?,
                        });
                    }
                    Ok(out)
                }
                // A change of terms is not an incident: nothing to open or resolve.
                EventKind::InstrumentChanged => Ok(Vec::new()),
                EventKind::FeedRestored => {
                    let inst = feed_inst.unwrap_or_default();
                    let v = json!({
                        "routing_key": rk,
                        "event_action": "resolve",
                        "dedup_key": pd_key(&["feed", &inst]),
                    });
                    Ok(one(body(&v)?))
                }
                EventKind::LiquidationWarning
                | EventKind::LiquidationTrigger
                | EventKind::FeedStale
                | EventKind::RiskWarning => {
                    let dedup = if ev.kind == EventKind::FeedStale {
                        pd_key(&["feed", &feed_inst.unwrap_or_default()])
                    } else if let Some(k) = risk_key.clone() {
                        k
                    } else {
                        pd_key(&[&account, &level_key(ev, &fmt_level(ev.level))])
                    };
                    let t = alert_text(ev);
                    let mut v = json!({
                        "routing_key": rk,
                        "event_action": "trigger",
                        "dedup_key": dedup,
                        "payload": {
                            "summary": truncate(&t.summary, 1024),
                            "severity": pd_severity(ev.kind),
                            "source": settings.source,
                            "timestamp": ev.time,
                            "component": account,
                            "group": "liquidation",
                            "class": ev.kind.as_str(),
                            "custom_details": custom_details(ev),
                        }
                    });
                    if let Some((link, what)) = link_of(settings, ev) {
                        v["links"] = json!([{"href": link, "text": what}]);
                    }
                    Ok(one(body(&v)?))
                }
            }
        }
    }
}

/// Renders one grouped message for `entries` (all warnings).
pub fn render_group(
    settings: &WebhookSettings,
    entries: &[&JournalEntry],
    top: usize,
) -> Result<OutgoingRequest, SinkError> {
    let g = group_text(entries, top);
    let first_id = entries
        .first()
        .map(|e| e.event.event_id.to_string())
        .unwrap_or_default();
    let key = format!("group-{first_id}-{}", entries.len());
    // A cascade's group links to the riskiest accounts listing of the risk page.
    let page = settings.page_url.as_ref().map(|u| format!("{u}/"));
    let mut v = match settings.format {
        WebhookFormat::Slack => {
            let list: String = g
                .worst
                .iter()
                .map(|l| format!("• {}\n", slack_escape(l)))
                .collect();
            json!({
                "text": format!("{}: worst {}", g.title, g.worst.first().map(|s| slack_escape(s)).unwrap_or_default()),
                "blocks": [
                    {"type": "header", "text": {"type": "plain_text", "text": truncate(&g.title, 150), "emoji": true}},
                    {"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Worst {} by margin ratio*\n{list}", g.worst.len()), 3000)}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": g.span}]}
                ]
            })
        }
        WebhookFormat::Discord => {
            let list: String = g.worst.iter().map(|l| format!("• {l}\n")).collect();
            json!({
                "content": truncate(&g.title, 2000),
                "embeds": [{
                    "title": truncate(&g.title, 256),
                    "description": truncate(&format!("Worst {} by margin ratio:\n{list}", g.worst.len()), 4096),
                    "color": discord_color(EventKind::LiquidationWarning),
                    "footer": {"text": truncate(&g.span, 2048)}
                }],
                "allowed_mentions": {"parse": []}
            })
        }
        WebhookFormat::Pagerduty => {
            let ids: Vec<String> = entries
                .iter()
                .map(|e| e.event.event_id.to_string())
                .collect();
            json!({
                "routing_key": settings.routing_key.clone().unwrap_or_default(),
                "event_action": "trigger",
                "dedup_key": pd_key(&["warnings", &first_id]),
                "payload": {
                    "summary": truncate(&format!("{}; worst: {}", g.title, g.worst.first().cloned().unwrap_or_default()), 1024),
                    "severity": "warning",
                    "source": settings.source,
                    "timestamp": entries.first().map(|e| e.event.time.clone()),
                    "group": "liquidation",
                    "class": "liquidation_warning_group",
                    "custom_details": {"count": entries.len(), "worst": g.worst, "span": g.span, "event_ids": ids},
                }
            })
        }
        WebhookFormat::Generic => {
            return Err(SinkError::Permanent {
                reason: "generic webhooks never group events".to_string(),
            });
        }
    };
    if let Some(page) = page {
        match settings.format {
            WebhookFormat::Slack => {
                if let Some(blocks) = v["blocks"].as_array_mut() {
                    let at = blocks.len().saturating_sub(1);
                    blocks.insert(
                        at,
                        json!({"type": "section", "text": {"type": "mrkdwn",
                            "text": format!("<{page}|Open the riskiest accounts on the risk page>")}}),
                    );
                }
            }
            WebhookFormat::Discord => v["embeds"][0]["url"] = Value::String(page),
            WebhookFormat::Pagerduty => {
                v["links"] =
                    json!([{"href": page, "text": "the riskiest accounts on the risk page"}])
            }
            WebhookFormat::Generic => {}
        }
    }
    Ok(OutgoingRequest {
        idempotency_key: key,
        body: body(&v)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Secret;
    use crate::sinks::noise::tests::entry;
    use rust_decimal_macros::dec;
    use std::time::Duration;

    fn settings(format: WebhookFormat) -> WebhookSettings {
        WebhookSettings {
            url: "http://127.0.0.1:9/hook".to_string(),
            format,
            secret: Some(Secret::new("s3cret")),
            routing_key: Some("R0UT1NG".to_string()),
            timeout: Duration::from_secs(1),
            group: None,
            rate_limit: None,
            source: "liqwatch-test".to_string(),
            concurrency: 1,
            max_batch_time: Duration::from_secs(15),
            batch_max: 1,
            page_url: None,
        }
    }

    /// With `page_url`, every chat and incident body of an account event links to the account
    /// on the risk page (its id encoded as the page decodes it), a feed event links nowhere, a
    /// group links to the listing; without it, no link anywhere.
    #[test]
    fn page_links() {
        let linked = |format| WebhookSettings {
            page_url: Some("https://risk.example.com".to_string()),
            ..settings(format)
        };
        let w = entry(1, EventKind::LiquidationTrigger, "desk 7/β", 0, dec!(1.2));
        let href = "https://risk.example.com/#account=desk%207%2F%CE%B2";
        let one = |s: &WebhookSettings| -> Value {
            serde_json::from_slice(&render_single(s, &w).unwrap()[0].body).unwrap()
        };
        let slack = one(&linked(WebhookFormat::Slack));
        assert_eq!(
            slack["blocks"][2]["text"]["text"],
            format!("<{href}|Open desk 7/β on the risk page>")
        );
        let discord = one(&linked(WebhookFormat::Discord));
        assert_eq!(discord["embeds"][0]["url"], href);
        let pd = one(&linked(WebhookFormat::Pagerduty));
        assert_eq!(
            pd["links"],
            json!([{"href": href, "text": "desk 7/β on the risk page"}])
        );
        for format in [
            WebhookFormat::Slack,
            WebhookFormat::Discord,
            WebhookFormat::Pagerduty,
        ] {
            let plain = one(&settings(format)).to_string();
            assert!(!plain.contains("risk page"), "{plain}");
        }
        // A feed event has no account: it links to the page (its feeds table).
        let mut feed = entry(2, EventKind::FeedStale, "x", 0, dec!(0));
        feed.event.account_id = None;
        let body: Value = serde_json::from_slice(
            &render_single(&linked(WebhookFormat::Pagerduty), &feed).unwrap()[0].body,
        )
        .unwrap();
        assert_eq!(
            body["links"],
            json!([{"href": "https://risk.example.com/", "text": "the feeds on the risk page"}])
        );
        // A cascade's group links to the listing.
        let a = entry(3, EventKind::LiquidationWarning, "a", 0, dec!(0.85));
        let b = entry(4, EventKind::LiquidationWarning, "b", 0, dec!(0.9));
        let group = |format| -> Value {
            serde_json::from_slice(&render_group(&linked(format), &[&a, &b], 5).unwrap().body)
                .unwrap()
        };
        let slack = group(WebhookFormat::Slack);
        assert_eq!(
            slack["blocks"][2]["text"]["text"],
            "<https://risk.example.com/|Open the riskiest accounts on the risk page>"
        );
        assert_eq!(slack["blocks"][3]["type"], "context");
        assert_eq!(
            group(WebhookFormat::Discord)["embeds"][0]["url"],
            "https://risk.example.com/"
        );
        assert_eq!(
            group(WebhookFormat::Pagerduty)["links"][0]["href"],
            "https://risk.example.com/"
        );
    }

    /// The readable text carries account, kind, level, ratio, equity, MM and shock distance.
    #[test]
    fn alert_text_has_the_numbers() {
        let e = entry(
            1,
            EventKind::LiquidationTrigger,
            "acct-7",
            0,
            dec!(1.012345),
        );
        let t = alert_text(&e.event);
        assert_eq!(t.title, "LIQUIDATION TRIGGER: acct-7");
        assert_eq!(
            t.summary,
            "liquidation_trigger acct-7: margin ratio 101.23 % (level 100 %), equity 10000.00, \
             MM 10123.45, shock distance -5.12 %"
        );
        // A warning reads in percent like the risk page; an account at or below zero equity
        // reads as ∞. The incident key keeps the bare level (keys of open incidents stay put).
        let mut w = entry(2, EventKind::LiquidationWarning, "acct-7", 0, dec!(0.85));
        assert!(
            alert_text(&w.event)
                .summary
                .starts_with("liquidation_warning acct-7: margin ratio 85.00 % (level 80 %),"),
            "{}",
            alert_text(&w.event).summary
        );
        if let Some(s) = w.event.snapshot.as_mut() {
            s.margin_ratio = MarginRatio::Infinite;
        }
        let t = alert_text(&w.event);
        assert!(
            t.summary
                .contains("margin ratio ∞ (equity ≤ 0) (level 80 %)"),
            "{}",
            t.summary
        );
        assert!(
            t.fields
                .contains(&("Margin ratio", "∞ (equity ≤ 0)".to_string()))
        );
        let p: Value = serde_json::from_slice(
            &render_single(&settings(WebhookFormat::Pagerduty), &w).unwrap()[0].body,
        )
        .unwrap();
        assert_eq!(p["dedup_key"], "liqwatch:acct-7:0.8");

        // With a margin call, the text says what to deposit, and PagerDuty's details carry it.
        if let Some(s) = w.event.snapshot.as_mut() {
            s.margin_call = Some(crate::model::MarginCall {
                below_ratio: dec!(0.75),
                deposit: dec!(1234.56),
            });
        }
        let t = alert_text(&w.event);
        assert!(
            t.summary
                .ends_with(", margin call: deposit 1234.56 to bring the ratio under 75 %"),
            "{}",
            t.summary
        );
        assert!(t.fields.contains(&(
            "Margin call",
            "deposit 1234.56 (ratio under 75 %)".to_string()
        )));
        let p: Value = serde_json::from_slice(
            &render_single(&settings(WebhookFormat::Pagerduty), &w).unwrap()[0].body,
        )
        .unwrap();
        assert_eq!(
            p["payload"]["custom_details"]["margin_call"],
            json!({"below_ratio": "0.75", "deposit": "1234.56"}),
            "{p}"
        );
    }

    /// A batched body is `{"events":[…]}` of the journaled JSON in order, parses back to the
    /// same events, and its key names the first and last event and the count.
    #[test]
    fn batch_body_and_key() {
        let a = entry(1, EventKind::LiquidationWarning, "acct-1", 0, dec!(0.85));
        let b = entry(2, EventKind::LiquidationTrigger, "acct-2", 0, dec!(1.2));
        let req = render_batch(&[&a, &b]);
        let want = format!("{{\"events\":[{},{}]}}", a.json, b.json);
        assert_eq!(req.body, want.as_bytes());
        let v: Value = serde_json::from_slice(&req.body).unwrap();
        let a_json: Value = serde_json::from_str(&a.json).unwrap();
        assert_eq!(v["events"][0], a_json);
        assert_eq!(
            req.idempotency_key,
            format!("batch:{}:{}:2", a.event.event_id, b.event.event_id)
        );
        assert_eq!(render_batch(&[&a, &b]), req, "deterministic across retries");
    }

    /// Each format's body has the shape its receiver expects.
    #[test]
    fn body_shapes() {
        let w = entry(1, EventKind::LiquidationWarning, "acct-1", 0, dec!(0.85));
        let g = render_single(&settings(WebhookFormat::Generic), &w).unwrap();
        assert_eq!(g[0].body, w.json.as_bytes());
        assert_eq!(g[0].idempotency_key, w.event.event_id.to_string());

        let s: Value = serde_json::from_slice(
            &render_single(&settings(WebhookFormat::Slack), &w).unwrap()[0].body,
        )
        .unwrap();
        assert!(s["text"].as_str().unwrap().contains("acct-1"));
        assert_eq!(s["blocks"][0]["type"], "header");

        let d: Value = serde_json::from_slice(
            &render_single(&settings(WebhookFormat::Discord), &w).unwrap()[0].body,
        )
        .unwrap();
        assert!(d["content"].as_str().unwrap().contains("acct-1"));
        assert_eq!(d["embeds"][0]["timestamp"], w.event.time);
        assert_eq!(d["allowed_mentions"]["parse"], json!([]));

        let p: Value = serde_json::from_slice(
            &render_single(&settings(WebhookFormat::Pagerduty), &w).unwrap()[0].body,
        )
        .unwrap();
        assert_eq!(p["routing_key"], "R0UT1NG");
        assert_eq!(p["event_action"], "trigger");
        assert_eq!(p["dedup_key"], "liqwatch:acct-1:0.8");
        assert_eq!(p["payload"]["severity"], "warning");
        assert_eq!(p["payload"]["source"], "liqwatch-test");
        assert_eq!(p["payload"]["custom_details"]["margin_ratio"], "0.85");

        // A recovery resolves the incident of each level it recovered from.
        let mut r = entry(2, EventKind::Recovered, "acct-1", 5, dec!(0.5));
        r.event.level = Some(dec!(1.0));
        r.event.crossed_levels = vec![dec!(0.80), dec!(1.0)];
        let reqs = render_single(&settings(WebhookFormat::Pagerduty), &r).unwrap();
        let keys: Vec<String> = reqs
            .iter()
            .map(|q| {
                let v: Value = serde_json::from_slice(&q.body).unwrap();
                assert_eq!(v["event_action"], "resolve");
                v["dedup_key"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(keys, vec!["liqwatch:acct-1:0.8", "liqwatch:acct-1:1"]);
    }

    /// Issue 13: a distance warning reads as a move to the trigger, and its PagerDuty incident
    /// (opened and resolved) is keyed by level type, apart from a ratio level of equal number.
    #[test]
    fn shock_distance_events_text_and_keys() {
        let mut w = entry(1, EventKind::LiquidationWarning, "acct-1", 0, dec!(0.05));
        w.event.level = Some(dec!(0.1));
        w.event.crossed_levels = vec![dec!(0.1)];
        w.event.level_type = Some(crate::model::LevelType::ShockDistance);
        let t = alert_text(&w.event);
        assert!(
            t.summary.starts_with(
                "liquidation_warning acct-1: shock distance -5.12 % (level 10 % move)"
            ),
            "{}",
            t.summary
        );
        let p: Value = serde_json::from_slice(
            &render_single(&settings(WebhookFormat::Pagerduty), &w).unwrap()[0].body,
        )
        .unwrap();
        assert_eq!(p["dedup_key"], "liqwatch:acct-1:shock_distance:0.1");
        let mut r = w.clone();
        r.event.kind = EventKind::Recovered;
        let reqs = render_single(&settings(WebhookFormat::Pagerduty), &r).unwrap();
        let v: Value = serde_json::from_slice(&reqs[0].body).unwrap();
        assert_eq!(v["dedup_key"], "liqwatch:acct-1:shock_distance:0.1");
    }

    /// A grouped message counts every warning and lists the worst accounts first.
    #[test]
    fn group_body_lists_worst() {
        let es: Vec<JournalEntry> = [dec!(0.81), dec!(0.95), dec!(0.88), dec!(0.99)]
            .iter()
            .enumerate()
            .map(|(i, r)| {
                entry(
                    i as u64,
                    EventKind::LiquidationWarning,
                    &format!("a{i}"),
                    i as i64 * 500,
                    *r,
                )
            })
            .collect();
        let refs: Vec<&JournalEntry> = es.iter().collect();
        let g = group_text(&refs, 2);
        assert_eq!(g.title, "⚠️ 4 liquidation warnings in 1.5 s");
        assert_eq!(g.worst.len(), 2);
        assert!(
            g.worst[0].contains("a3") && g.worst[1].contains("a1"),
            "{:?}",
            g.worst
        );
        let req = render_group(&settings(WebhookFormat::Slack), &refs, 2).unwrap();
        let v: Value = serde_json::from_slice(&req.body).unwrap();
        assert!(
            v["blocks"][1]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("a3")
        );
        assert!(render_group(&settings(WebhookFormat::Generic), &refs, 2).is_err());
    }

    /// A `risk_warning` reads as scenario risk (P(liquidation), ES) and opens one PagerDuty
    /// incident per account and level type, which its `recovered` resolves.
    #[test]
    fn risk_warning_texts_and_incident() {
        let mut w = entry(1, EventKind::RiskWarning, "acct-9", 0, dec!(0.02));
        w.event.level = Some(dec!(0.05));
        w.event.level_type = Some(LevelType::PLiquidation);
        w.event.risk = Some(Box::new(crate::model::RiskFigures {
            equity: dec!(10000),
            var: dec!(10000),
            es: dec!(10000),
            es_to_equity: Some(dec!(1)),
            p_liquidation: dec!(0.1),
            liquidating_scenarios: 1,
            scenarios: 10,
            alpha: dec!(0.9),
            horizon: "1h".into(),
            computed_at: "2026-12-05T21:40:51.352Z".into(),
        }));
        let t = alert_text(&w.event);
        assert_eq!(t.title, "Risk warning: acct-9");
        assert_eq!(
            t.summary,
            "risk_warning acct-9: p_liquidation level 5 %: P(liquidation) 10.0 %, \
             ES 10000.00 (100 % of equity) over 1h"
        );
        let p: Value = serde_json::from_slice(
            &render_single(&settings(WebhookFormat::Pagerduty), &w).unwrap()[0].body,
        )
        .unwrap();
        assert_eq!(p["event_action"], "trigger");
        assert_eq!(p["dedup_key"], "liqwatch:acct-9:p_liquidation");
        let mut r = w.clone();
        r.event.kind = EventKind::Recovered;
        let reqs = render_single(&settings(WebhookFormat::Pagerduty), &r).unwrap();
        assert_eq!(reqs.len(), 1);
        let v: Value = serde_json::from_slice(&reqs[0].body).unwrap();
        assert_eq!(
            (v["event_action"].as_str(), v["dedup_key"].as_str()),
            (Some("resolve"), Some("liqwatch:acct-9:p_liquidation"))
        );
    }
}
