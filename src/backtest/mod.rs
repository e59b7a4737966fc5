//! Deterministic backtests: a replay recording driven through the one [`Engine`] in recorded
//! time, every price applied, and what came out of it — per account the equity / MM series,
//! the events, the first warning, the trigger and the lead time between them ([`report`]), an
//! SVG chart per account and an HTML summary ([`svg`]).
//!
//! No wall clock, no coalescing, no price board: each frame of the recording is parsed by its
//! venue's adapter, each tick is routed by the instruments' `sources` (mark or index field) and
//! every instrument it prices is applied in one [`Engine::on_prices`] step at the frame's
//! `received_ms`. Event ids are the run's event numbers, so two runs of the same inputs give
//! the same bytes. The CLI (`liqwatch backtest`) is `crate::cli::backtest`.

pub mod report; // per-account summary: first warning, trigger, lead time, worst ratio, events
pub mod svg; // hand-built SVG charts and the index.html page

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::engine::map::AccountMap;
use crate::engine::{AfterTrigger, Engine, EngineConfig, MonitorConfig, PriceInfo};
use crate::feeds::replay::{BadLine, parse_line, routes_for};
use crate::feeds::{Feed, VenueTick};
use crate::model::{
    Account, AccountId, AccountUpdate, Instrument, InstrumentId, MarginRatio, PriceField,
    PriceUsed, RiskEvent, TimestampMs, Venue,
};

/// Everything a backtest runs with.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Instruments (with their price sources).
    pub instruments: Vec<Instrument>,
    /// Accounts, in the order the report lists them.
    pub accounts: Vec<Account>,
    /// Levels and stale policy.
    pub monitor: MonitorConfig,
    /// After a trigger.
    pub after_trigger: AfterTrigger,
    /// The distance index on (the daemon's default) or off (eager): same events.
    pub distance_index: bool,
    /// `warn_before_funding` (config `[engine]`); funding is read from the replay's frames and
    /// checked at each recorded time, so the result is deterministic.
    pub warn_before_funding: Option<std::time::Duration>,
}

/// One point of an account's series: its figures after a step that changed them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Point {
    /// Recorded time, ms.
    pub time_ms: TimestampMs,
    /// Equity.
    pub equity: Decimal,
    /// Maintenance margin.
    pub maintenance_margin: Decimal,
    /// MM / equity.
    pub margin_ratio: MarginRatio,
}

/// What the replay contained.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayCounts {
    /// Lines read (including blank and comment lines).
    pub lines: u64,
    /// Frames parsed.
    pub frames: u64,
    /// Steps applied (frames that priced at least one instrument).
    pub steps: u64,
    /// Instrument prices applied.
    pub prices: u64,
    /// Lines skipped: not a replay record, unknown venue, back in time.
    pub bad_lines: u64,
    /// Frames their adapter rejected, or of a venue without an adapter.
    pub bad_frames: u64,
    /// Ticks of venue symbols no instrument is priced from.
    pub unrouted_ticks: u64,
    /// First and last recorded time of an applied step.
    pub first_ms: Option<TimestampMs>,
    /// See `first_ms`.
    pub last_ms: Option<TimestampMs>,
}

/// The raw outcome of a run.
#[derive(Clone, Debug)]
pub struct Run {
    /// Per account (the setup's order): its series.
    pub series: Vec<(AccountId, Vec<Point>)>,
    /// Every account event, in emission order, with deterministic ids.
    pub events: Vec<RiskEvent>,
    /// Replay counts.
    pub counts: ReplayCounts,
    /// Accounts the engine refused (id, reason).
    pub rejected: Vec<(AccountId, String)>,
    /// Accounts never valued in the whole run (an instrument they hold had no price in the
    /// recording, or a figure overflowed), with why, as at the end: no event could fire for
    /// them, which an empty row must not hide.
    pub never_valued: Vec<(AccountId, String)>,
}

/// Errors that stop a backtest.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// The recording could not be read.
    #[error("reading the replay: {0}")]
    Io(#[from] std::io::Error),
    /// The engine refused the levels.
    #[error("engine: {0}")]
    Engine(String),
}

/// Source, age and staleness of the replayed prices at the step's recorded time.
struct Recorded {
    last: HashMap<InstrumentId, (Venue, TimestampMs)>,
    now: TimestampMs,
    /// Latest funding per instrument, read from the replayed frames.
    funding: crate::prices::funding::FundingBoard,
}

impl PriceInfo for Recorded {
    fn price_info(&self, instrument: &InstrumentId) -> Option<PriceUsed> {
        let (venue, at) = self.last.get(instrument)?;
        Some(PriceUsed {
            instrument: instrument.clone(),
            // Replaced by the engine's price.
            price: Decimal::ZERO,
            source: venue.as_str().to_string().into(),
            received_ts: *at,
            age_ms: self.now.saturating_sub(*at),
            stale: false,
        })
    }

    fn funding(&self, instrument: &InstrumentId) -> Option<crate::margin::funding::FundingRate> {
        self.funding.get(instrument).map(|e| e.rate)
    }
}

/// Runs `replay` (liqwatch replay JSONL) against the setup. Bad lines and frames are counted
/// and skipped, as the daemon's replay does.
pub fn run(setup: &Setup, replay: impl BufRead) -> Result<Run, BacktestError> {
    let map = Arc::new(AccountMap::new(setup.instruments.iter().cloned()));
    let mut engine = Engine::new(
        Arc::clone(&map),
        EngineConfig {
            monitor: setup.monitor.clone(),
            distance_index: setup.distance_index,
        },
    )
    .map_err(BacktestError::Engine)?;
    engine.set_after_trigger(setup.after_trigger);
    engine.set_warn_before_funding(setup.warn_before_funding);
    let mut info = Recorded {
        last: HashMap::new(),
        now: 0,
        funding: Default::default(),
    };
    let mut events = Vec::new();
    let mut rejected = Vec::new();
    for a in &setup.accounts {
        match engine.on_update(AccountUpdate::Replace { account: a.clone() }, &info, 0) {
            Ok((_, emitted)) => events.extend(emitted.into_iter().map(|e| e.event)),
            Err(e) => rejected.push((a.id.clone(), e.to_string())),
        }
    }
    let mut series: Vec<(AccountId, Vec<Point>)> = setup
        .accounts
        .iter()
        .filter(|a| !rejected.iter().any(|(id, _)| *id == a.id))
        .map(|a| (a.id.clone(), Vec::new()))
        .collect();
    let routes = routes_for(&setup.instruments);
    let mut feeds: HashMap<Venue, Option<Box<dyn Feed>>> = HashMap::new();
    let mut counts = ReplayCounts::default();
    let mut previous: Option<TimestampMs> = None;
    let mut changed: Vec<(InstrumentId, Decimal)> = Vec::new();
    for line in replay.lines() {
        let line = line?;
        counts.lines += 1;
        let rec = match parse_line(&line, counts.lines) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(bad) => {
                counts.bad_lines += 1;
                tracing::warn!(error = %bad, "Skipping bad replay line");
                continue;
            }
        };
        if let Some(prev) = previous
            && rec.received_ms < prev
        {
            counts.bad_lines += 1;
            let bad = BadLine::BackInTime {
                line_no: rec.line_no,
                received_ms: rec.received_ms,
                previous: prev,
            };
            tracing::warn!(error = %bad, "Skipping bad replay line");
            continue;
        }
        previous = Some(rec.received_ms);
        let feed = feeds
            .entry(rec.venue)
            .or_insert_with(|| crate::feeds::feed_for(rec.venue).ok());
        let Some(feed) = feed.as_mut() else {
            counts.bad_frames += 1;
            continue;
        };
        counts.frames += 1;
        // Recorded times, unchanged: a frame's funding is known from its receive time on.
        let funded = routes.get(&rec.venue).is_some_and(|r| {
            crate::feeds::funding::publish_funding(
                rec.venue,
                &rec.frame,
                r,
                &info.funding,
                rec.received_ms,
                |t| t,
            )
            .is_ok_and(|n| n > 0)
        });
        // Ticks borrow the frame: parse into a local vector tied to `rec.frame`.
        let mut parsed: Vec<VenueTick<'_>> = Vec::new();
        if feed.parse(&rec.frame, &mut parsed).is_err() {
            counts.bad_frames += 1;
            continue;
        }
        changed.clear();
        let venue_routes = routes.get(&rec.venue);
        for tick in &parsed {
            let Some(targets) = venue_routes.and_then(|r| r.get(tick.symbol)) else {
                counts.unrouted_ticks += 1;
                continue;
            };
            for (inst, field) in targets {
                let price = match field {
                    PriceField::Mark => tick.mark,
                    PriceField::Index => tick.index,
                };
                if let Some(p) = price {
                    changed.retain(|(i, _)| i != inst);
                    changed.push((inst.clone(), p));
                    info.last.insert(inst.clone(), (rec.venue, rec.received_ms));
                }
            }
        }
        if changed.is_empty() {
            if funded {
                info.now = rec.received_ms;
                let emitted = engine.on_funding_clock(&info, info.now);
                events.extend(emitted.into_iter().map(|e| e.event));
            }
            continue;
        }
        counts.steps += 1;
        counts.prices += changed.len() as u64;
        counts.first_ms.get_or_insert(rec.received_ms);
        counts.last_ms = Some(rec.received_ms);
        info.now = rec.received_ms;
        let emitted = engine.on_prices(changed.iter().map(|(i, p)| (i, *p)), &info, info.now);
        events.extend(emitted.into_iter().map(|e| e.event));
        let emitted = engine.on_funding_clock(&info, info.now);
        events.extend(emitted.into_iter().map(|e| e.event));
        sample(&map, &mut series, rec.received_ms);
    }
    // Deterministic ids: the run's event number (backtest events go nowhere to be de-duplicated).
    for (n, e) in events.iter_mut().enumerate() {
        e.event_id = Uuid::from_u128(n as u128 + 1);
    }
    let never_valued = series
        .iter()
        .filter(|(_, points)| points.is_empty())
        .map(|(id, _)| {
            let reason = match map.snapshot(id, Decimal::ONE) {
                Err(crate::engine::AccountError::Margin { source, .. }) => source.to_string(),
                Err(e) => e.to_string(),
                Ok(_) => "valued only after the last price of the recording".to_string(),
            };
            (id.clone(), reason)
        })
        .collect();
    Ok(Run {
        series,
        events,
        counts,
        rejected,
        never_valued,
    })
}

/// Appends each account's figures at the current prices when they changed since its last point.
fn sample(map: &AccountMap, series: &mut [(AccountId, Vec<Point>)], at: TimestampMs) {
    for (id, points) in series {
        let Some(t) = map.key_of(id).and_then(|k| map.materialise(k)) else {
            continue;
        };
        if !t.complete {
            continue;
        }
        let same = points
            .last()
            .is_some_and(|p| p.equity == t.equity && p.maintenance_margin == t.maintenance_margin);
        if !same {
            points.push(Point {
                time_ms: at,
                equity: t.equity,
                maintenance_margin: t.maintenance_margin,
                margin_ratio: MarginRatio::compute(t.maintenance_margin, t.equity),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::map::tests::{w3_account, w3_instruments};
    use crate::model::{EventKind, PriceSource};
    use rust_decimal_macros::dec;

    fn setup() -> Setup {
        let mut instruments = w3_instruments();
        for i in &mut instruments {
            let (symbol, field) = match i.id.as_str() {
                "BTCUSDT-PERP" => ("BTCUSDT", PriceField::Mark),
                "BTC" => ("BTCUSDT", PriceField::Index),
                "ETHUSDT-PERP" => ("ETHUSDT", PriceField::Mark),
                "SOLUSDT-PERP" => ("SOLUSDT", PriceField::Mark),
                _ => continue,
            };
            i.sources = vec![PriceSource {
                venue: Venue::BinanceUsdm,
                symbol: symbol.into(),
                field,
            }];
        }
        Setup {
            instruments,
            accounts: vec![w3_account("w3")],
            monitor: MonitorConfig::default(),
            after_trigger: AfterTrigger::KeepWatching,
            warn_before_funding: None,
            distance_index: true,
        }
    }

    fn frame(t: i64, symbol: &str, price: &str) -> String {
        let inner = format!(
            r#"{{"stream":"{}@markPrice@1s","data":{{"e":"markPriceUpdate","E":{t},"s":"{symbol}","p":"{price}","i":"{price}","P":"{price}","r":"0","T":0}}}}"#,
            symbol.to_lowercase()
        );
        serde_json::json!({"venue": "binance-usdm", "received_ms": t, "frame": inner}).to_string()
    }

    fn w(t: i64, p: [&str; 3]) -> Vec<String> {
        vec![
            frame(t, "BTCUSDT", p[0]),
            frame(t, "ETHUSDT", p[1]),
            frame(t, "SOLUSDT", p[2]),
        ]
    }

    /// Every frame is its own step at its recorded time, even several at the same millisecond:
    /// W3 → W4 one coin at a time (the trigger fires mid-millisecond) → W3 (recovered). A wick that lasts
    /// one frame still fires. Bad lines, lines back in time and unrouted symbols are counted
    /// and skipped; event ids are the run's numbers.
    #[test]
    fn every_price_applied_in_recorded_time() {
        let mut lines = vec!["# the W3 story".to_string()];
        lines.extend(w(1_000, ["60000", "3000", "150"]));
        lines.extend(w(2_000, ["54000", "2700", "135"]));
        lines.push("not json".into());
        lines.push(frame(1_500, "BTCUSDT", "1"));
        lines.push(frame(2_000, "DOGEUSDT", "0.1"));
        lines.extend(w(3_000, ["60000", "3000", "150"]));
        // A one-frame BTC wick deep enough to trigger alone, then back.
        lines.push(frame(4_000, "BTCUSDT", "40000"));
        lines.push(frame(4_001, "BTCUSDT", "60000"));
        let text = lines.join("\n");
        let run = run(&setup(), text.as_bytes()).unwrap();
        let c = &run.counts;
        assert_eq!((c.lines, c.bad_lines, c.unrouted_ticks), (15, 2, 1));
        assert_eq!((c.frames, c.steps), (12, 11));
        assert_eq!((c.first_ms, c.last_ms), (Some(1_000), Some(4_001)));
        let kinds: Vec<(EventKind, i64)> = run.events.iter().map(|e| (e.kind, e.time_ms)).collect();
        use EventKind::{LiquidationTrigger as T, Recovered as R};
        assert_eq!(kinds, [(T, 2_000), (R, 3_000), (T, 4_000), (R, 4_001)]);
        // BTC −10 % alone is ratio 41.22 % (§4.1); ETH's fall then takes equity below zero:
        // the trigger fires on the ETH frame, before SOL's frame of the same millisecond.
        let first = run.events[0].snapshot.as_ref().unwrap();
        let marks: Vec<Decimal> = first.positions.iter().map(|p| p.mark_price).collect();
        assert_eq!(marks, [dec!(54000), dec!(2700), dec!(150)]);
        for (n, e) in run.events.iter().enumerate() {
            assert_eq!(e.event_id, Uuid::from_u128(n as u128 + 1));
        }
        let (id, points) = &run.series[0];
        assert_eq!(id.as_str(), "w3");
        // Complete from the third frame (SOL priced): W3, then each change.
        assert_eq!(points[0].time_ms, 1_000);
        assert_eq!(points[0].equity, dec!(90000));
        assert_eq!(points[0].maintenance_margin, dec!(7965));
        let w4 = points.iter().find(|p| p.equity == dec!(3450)).unwrap();
        assert_eq!((w4.time_ms, w4.maintenance_margin), (2_000, dec!(7080)));
        assert!(points.windows(2).all(|p| p[0] != p[1]));
    }

    /// An account holding an instrument the recording never prices is never valued: the run
    /// names it with the reason (no event could fire for it), and a valued one is not named.
    #[test]
    fn an_account_the_recording_never_prices_is_named() {
        let mut s = setup();
        let mut eth_only = w3_account("eth-only");
        eth_only
            .positions
            .retain(|p| p.instrument.as_str() == "ETHUSDT-PERP");
        s.accounts.push(eth_only);
        let mut lines = vec![frame(1_000, "BTCUSDT", "60000")];
        lines.push(frame(1_000, "SOLUSDT", "150"));
        let text = lines.join("\n");
        let first = run(&s, text.as_bytes()).unwrap();
        let named: Vec<(&str, &str)> = first
            .never_valued
            .iter()
            .map(|(id, r)| (id.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("w3", "no price for ETHUSDT-PERP"),
                ("eth-only", "no price for ETHUSDT-PERP")
            ]
        );
        let text = [lines, vec![frame(2_000, "ETHUSDT", "3000")]]
            .concat()
            .join("\n");
        let priced = run(&s, text.as_bytes()).unwrap();
        assert!(priced.never_valued.is_empty(), "{:?}", priced.never_valued);
    }

    /// Issue 13's story in small: W3 → W4 jumps straight to the trigger (lead time 0 on the
    /// ratio alone), while W3 already sat within 10 % of it: with `warn_within_shock = ["10%"]`
    /// the distance warning at W3 is the first warning and the lead time is W3 → W4.
    #[test]
    fn distance_warning_gives_the_lead_time() {
        let mut lines = w(1_000, ["60000", "3000", "150"]);
        lines.extend(w(61_000, ["54000", "2700", "135"]));
        let text = lines.join("\n");
        let lead = |levels: Vec<Decimal>| {
            let mut s = setup();
            s.monitor.thresholds.warn_within_shock = levels;
            let run = run(&s, text.as_bytes()).unwrap();
            let id = AccountId::from("w3");
            let r = report::account_report(
                &id,
                &s.monitor.thresholds,
                &run.series[0].1,
                &report::events_of(&run, &id),
                String::new(),
            );
            (
                r.first_warning.map(|m| m.time_ms),
                r.first_trigger.map(|m| m.time_ms),
                r.lead_time_ms,
            )
        };
        assert_eq!(lead(vec![]), (None, Some(61_000), Some(0)));
        assert_eq!(
            lead(vec![dec!(0.1)]),
            (Some(1_000), Some(61_000), Some(60_000))
        );
    }

    /// `warn_before_funding` in a backtest reads funding from the replayed frames and runs on
    /// the recorded clock: the funding warning fires at the first frame inside the window
    /// (exactly 10 minutes before), once, with the payment in its snapshot — the same on every
    /// run.
    #[test]
    fn funding_warning_on_recorded_time() {
        let mut s = setup();
        s.warn_before_funding = Some(std::time::Duration::from_secs(600));
        s.accounts = vec![
            serde_json::from_str(
                r#"{"id":"f","collateral":{"USDT":"3700"},"positions":[
                {"instrument":"BTCUSDT-PERP","quantity":"10","entry_price":"60000"}]}"#,
            )
            .unwrap(),
        ];
        let funded = |t: i64, next: i64| {
            let inner = format!(
                r#"{{"stream":"btcusdt@markPrice@1s","data":{{"e":"markPriceUpdate","E":{t},"s":"BTCUSDT","p":"60000","i":"60000","P":"60000","r":"0.00010000","T":{next}}}}}"#
            );
            serde_json::json!({"venue": "binance-usdm", "received_ms": t, "frame": inner})
                .to_string()
        };
        let t = 1_000_000;
        let text = [
            funded(1_000, t),
            funded(399_999, t),
            funded(400_000, t),
            funded(500_000, t),
            funded(t + 1, t + 28_800_000),
        ]
        .join("\n");
        let runs: Vec<Vec<crate::model::RiskEvent>> = (0..2)
            .map(|_| run(&s, text.as_bytes()).unwrap().events)
            .collect();
        assert_eq!(runs[0], runs[1], "deterministic");
        let ev = &runs[0];
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].kind, EventKind::LiquidationWarning);
        assert_eq!(ev[0].level_type, Some(crate::model::LevelType::Funding));
        assert_eq!(ev[0].time_ms, 400_000);
        let f = ev[0].snapshot.as_ref().unwrap().funding.as_ref().unwrap();
        assert_eq!((f.total, f.equity_after), (dec!(-60), dec!(3640)));
        assert_eq!(f.next_funding_ms, Some(t));
    }
}
