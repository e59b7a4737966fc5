//! Funding in the monitor: the next funding payment inside every event snapshot, and the
//! `warn_before_funding` warning.
//!
//! # Warning before funding
//! Within `warn_before_funding` of a perpetual's next funding time `T` (`T − window ≤ now < T`,
//! `now` being the engine's clock, which the runner passes), every holder is checked once per
//! engine funding step ([`Monitor::evaluate_funding`]): its payments due by `now + window`
//! are added to its equity at the engine's current prices, and when `MM / (equity + payments)`
//! reaches a level above the account's current rank (a warning level or the trigger), one
//! `liquidation_warning` fires with `level_type: "funding"`, `level` = the highest level the
//! payment would reach and `crossed_levels` = every level it would cross.
//!
//! - **Once per funding time.** The account remembers `T` ([`super::MonitorState`]'s
//!   `funding_warned`, journaled with the event), so it is not warned about the same settlement
//!   again — not on the next step, not after a restart. The next settlement (`T' ≠ T`) can
//!   warn again.
//! - **No state change, no recovery event.** The warning is about a payment that has not been
//!   made: the account's margin-ratio state (and `seq`-numbered state machine) stays where it
//!   is (`previous_state` = `state`), so the usual levels and hysteresis still decide its
//!   `liquidation_warning` / `recovered` once the payment lands in its balances. A funding
//!   warning expires at `T`; there is no `recovered` with `level_type: "funding"`.
//! - Accounts already triggered, marked liquidated or incomplete are not checked; payments with
//!   an unknown time (Deribit) never warn.

use rust_decimal::Decimal;

use super::snapshots::{Change, push_event};
use super::{
    Emitted, Monitor, MonitorState, PriceInfo, Read, SnapshotJob, fill_snapshots, level_at, levels,
    prices_used, rank_of,
};
use crate::engine::map::{AccountKey, AccountMap};
use crate::margin;
use crate::margin::funding::{FundingRate, position_funding};
use crate::model::{
    Account, AccountState, EventKind, InstrumentId, InstrumentKind, LevelType, MarginRatio,
    RiskSnapshot, Thresholds, TimestampMs, format_rfc3339_ms,
};

/// The known funding rates of an account's perpetual positions (each instrument once). A rate
/// whose funding time is at or before `now_ms` is over (paid, or applied by `apply_funding`):
/// it is left out until the feed announces the next one, so a payment is never shown twice.
pub fn rates_for(
    account: &Account,
    prices: &dyn PriceInfo,
    now_ms: TimestampMs,
) -> Vec<(InstrumentId, FundingRate)> {
    let mut out: Vec<(InstrumentId, FundingRate)> = Vec::new();
    for p in &account.positions {
        if out.iter().any(|(i, _)| *i == p.instrument) {
            continue;
        }
        if let Some(f) = prices.funding(&p.instrument)
            && f.next_funding_ts.is_none_or(|t| t > now_ms)
        {
            out.push((p.instrument.clone(), f));
        }
    }
    out
}

/// Adds the next funding payment to a snapshot (nothing when no rate is known). A failure is
/// counted and logged; the snapshot goes out without it.
pub fn attach(
    snapshot: &mut RiskSnapshot,
    instruments: &dyn margin::InstrumentLookup,
    rates: &[(InstrumentId, FundingRate)],
) {
    if rates.is_empty() {
        return;
    }
    let rate_of = |id: &InstrumentId| rates.iter().find(|(i, _)| i == id).map(|(_, f)| *f);
    match margin::funding::funding_snapshot(snapshot, instruments, &rate_of) {
        Ok(f) => snapshot.funding = f.map(Box::new),
        Err(error) => {
            metrics::counter!("liqwatch_monitor_snapshot_errors_total").increment(1);
            tracing::warn!(%error, "Funding payment not computed; the snapshot goes out without it");
        }
    }
}

/// The payments of `account` due at or before `due_by` (and after `now`), at the engine's
/// prices: their sum and the earliest funding time among them. `None` when none is due.
fn due_payments(
    map: &AccountMap,
    account: &Account,
    prices: &dyn PriceInfo,
    now_ms: TimestampMs,
    due_by: TimestampMs,
) -> Option<(Decimal, TimestampMs)> {
    let table = map.instruments();
    let mut total = Decimal::ZERO;
    let mut first: Option<TimestampMs> = None;
    for p in &account.positions {
        let Some(inst) = table.index(&p.instrument).and_then(|i| table.get(i)) else {
            continue;
        };
        if !matches!(
            inst.kind,
            InstrumentKind::LinearPerpetual | InstrumentKind::InversePerpetual
        ) {
            continue;
        }
        let Some(f) = prices.funding(&p.instrument) else {
            continue;
        };
        let Some(ts) = f.next_funding_ts.filter(|t| *t > now_ms && *t <= due_by) else {
            continue;
        };
        let price = map.price(&p.instrument)?;
        let pay =
            position_funding(inst.kind, inst.contract_size, p.quantity, price, f.rate).ok()?;
        total = total.checked_add(pay)?;
        first = Some(first.map_or(ts, |t| t.min(ts)));
    }
    first.map(|t| (total, t))
}

impl Monitor {
    /// Funding warnings (module docs) for `keys` — the holders of perpetuals whose next
    /// funding falls within `window_ms` after `now_ms`. Returns the events, in key order.
    pub fn evaluate_funding(
        &mut self,
        map: &AccountMap,
        mut keys: Vec<AccountKey>,
        prices: &dyn PriceInfo,
        now_ms: TimestampMs,
        window_ms: i64,
    ) -> Vec<Emitted> {
        keys.sort_unstable();
        keys.dedup();
        let due_by = now_ms.saturating_add(window_ms);
        let mut out = Vec::new();
        let mut jobs = Vec::new();
        for key in keys {
            let Some(t) = map.materialise(key) else {
                continue;
            };
            if !t.complete {
                continue;
            }
            let Some(account) = map.read_key(key, |v| v.to_account()) else {
                continue;
            };
            let Some((payment, funding_ts)) = due_payments(map, &account, prices, now_ms, due_by)
            else {
                continue;
            };
            let th: Thresholds = account
                .thresholds
                .clone()
                .unwrap_or_else(|| self.cfg.thresholds.clone());
            let Some(slot) = self.slot_mut(map, key) else {
                continue;
            };
            if slot.liquidated()
                || slot.state() == AccountState::Triggered
                || slot.funding_warned() == Some(funding_ts)
            {
                continue;
            }
            let Some(equity_after) = t.equity.checked_add(payment) else {
                continue;
            };
            let after = MarginRatio::compute(t.maintenance_margin, equity_after);
            let r = rank_of(&slot.state(), &th);
            let up = levels(&th).filter(|l| after.at_or_above(*l)).count();
            if up <= r {
                continue;
            }
            let f = slot.update(|f| {
                f.seq += 1;
                f.funding_warned = Some(funding_ts);
                f.clone()
            });
            let seq = f.seq;
            let state = f.state;
            let state_json = serde_json::to_string(&MonitorState {
                state: state.clone(),
                seq,
                shock_state: f.shock,
                funding_warned: Some(funding_ts),
            })
            .unwrap_or_default();
            metrics::counter!("liqwatch_monitor_funding_warnings_total").increment(1);
            tracing::info!(account = %account.id, funding_ms = funding_ts, ratio_after = %after, "Funding payment would cross a level");
            let engine_prices = map.prices_for(&account);
            let used = prices_used(&map.instruments(), &account, &engine_prices, prices, now_ms);
            let account_id = account.id.clone();
            let job = SnapshotJob {
                at: 0, // `push_event` points it at the event
                key,
                kind: EventKind::LiquidationWarning,
                trigger: th.trigger,
                // The account stays healthy: a funding warning carries no margin call.
                recovery: None,
                prices: std::sync::Arc::new(engine_prices),
                now_ms,
                read: Some(Read {
                    funding: rates_for(&account, prices, now_ms),
                    account,
                }),
            };
            let change = Change {
                crossing: super::Crossing {
                    kind: EventKind::LiquidationWarning,
                    level: level_at(&th, up).unwrap_or(th.trigger),
                    crossed_levels: levels(&th).skip(r).take(up - r).collect(),
                },
                level_type: LevelType::Funding,
                previous: state.clone(),
                state,
                seq,
                state_json,
            };
            let time = format_rfc3339_ms(now_ms);
            push_event(&mut out, &mut jobs, &account_id, change, time, job, used);
        }
        fill_snapshots(map, &mut out, jobs, prices);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use rust_decimal_macros::dec;

    use super::*;
    use crate::engine::map::tests::w3_instruments;
    use crate::engine::{Engine, EngineConfig, MonitorConfig};
    use crate::model::{AccountId, AccountUpdate, PriceUsed};

    const T: TimestampMs = 1_700_000_000_000;
    const MIN: i64 = 60_000;

    /// Prices from the engine, funding from a table.
    struct Info(HashMap<InstrumentId, FundingRate>);

    impl PriceInfo for Info {
        fn price_info(&self, _: &InstrumentId) -> Option<PriceUsed> {
            None
        }
        fn funding(&self, i: &InstrumentId) -> Option<FundingRate> {
            self.0.get(i).copied()
        }
    }

    fn info(rate: Decimal, next: TimestampMs) -> Info {
        Info(HashMap::from([(
            InstrumentId::from("BTCUSDT-PERP"),
            FundingRate {
                rate,
                next_funding_ts: Some(next),
            },
        )]))
    }

    /// 3,700 USDT and 10 BTCUSDT-PERP long at 60,000: MM 2,950, ratio 0.797 (healthy). 0.01 %
    /// funding costs 60: equity 3,640, ratio 0.8104 — across the 0.8 warning.
    fn engine() -> Engine {
        let map = Arc::new(AccountMap::new(w3_instruments()));
        let mut e = Engine::new(
            map,
            EngineConfig {
                monitor: MonitorConfig::default(),
                distance_index: true,
            },
        )
        .unwrap();
        e.set_warn_before_funding(Some(Duration::from_secs(600)));
        let none = Info(HashMap::new());
        let account: Account = serde_json::from_str(
            r#"{"id":"f","collateral":{"USDT":"3700"},"positions":[
            {"instrument":"BTCUSDT-PERP","quantity":"10","entry_price":"60000"}]}"#,
        )
        .unwrap();
        e.on_update(AccountUpdate::Replace { account }, &none, T - 60 * MIN)
            .unwrap();
        let btc = InstrumentId::from("BTCUSDT-PERP");
        assert!(
            e.on_prices([(&btc, dec!(60000))], &none, T - 60 * MIN)
                .is_empty()
        );
        e
    }

    /// Outside the window nothing fires; inside, one `liquidation_warning` with
    /// `level_type: funding` at 0.8, the state unchanged, the snapshot showing the payment
    /// (−60) and the ratio after it; never again for the same funding time, also after a
    /// restart from the journaled state; the next funding time warns again.
    #[test]
    fn warns_once_per_funding_time() {
        let mut e = engine();
        let i = info(dec!(0.0001), T);
        assert!(
            e.on_funding_clock(&i, T - 11 * MIN).is_empty(),
            "before the window"
        );
        let ev = e.on_funding_clock(&i, T - 9 * MIN);
        assert_eq!(ev.len(), 1);
        let w = &ev[0].event;
        assert_eq!(w.kind, EventKind::LiquidationWarning);
        assert_eq!(w.level_type, Some(LevelType::Funding));
        assert_eq!(w.level, Some(dec!(0.8)));
        assert_eq!(w.crossed_levels, vec![dec!(0.8)]);
        assert_eq!(w.state, Some(AccountState::Healthy));
        assert_eq!(w.previous_state, Some(AccountState::Healthy));
        assert!(w.time_ms < T);
        let f = w.snapshot.as_ref().unwrap().funding.as_ref().unwrap();
        assert_eq!(f.total, dec!(-60));
        assert_eq!(f.positions[0].payment, dec!(-60));
        assert_eq!(f.equity_after, dec!(3640));
        assert_eq!(
            f.margin_ratio_after,
            MarginRatio::compute(dec!(2950), dec!(3640))
        );
        assert_eq!(f.next_funding_ms, Some(T));
        assert!(
            ev[0]
                .state_json
                .contains(&format!("\"funding_warned\":{T}"))
        );

        // A crossing in the state pass keeps the funding time already warned about (the slot
        // holds it boxed): 59,990 is ratio 2,949.5 / 3,600 ≈ 0.819, across 0.8.
        let btc = InstrumentId::from("BTCUSDT-PERP");
        let moved = e.on_prices([(&btc, dec!(59990))], &Info(HashMap::new()), T - 8 * MIN);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].event.kind, EventKind::LiquidationWarning);
        assert_eq!(moved[0].event.seq, w.seq + 1);
        assert!(
            moved[0]
                .state_json
                .contains(&format!("\"funding_warned\":{T}")),
            "{}",
            moved[0].state_json
        );
        // Back to 60,000 (0.797: inside the hysteresis, no event) for the restart below.
        assert!(
            e.on_prices([(&btc, dec!(60000))], &Info(HashMap::new()), T - 8 * MIN)
                .is_empty()
        );

        assert!(
            e.on_funding_clock(&i, T - 5 * MIN).is_empty(),
            "once per funding time"
        );
        assert!(
            e.on_funding_clock(&i, T + 1).is_empty(),
            "after the funding time"
        );

        // A restart restores the journaled state: no repeat.
        let map = Arc::clone(e.map());
        let mut again = Engine::new(
            map,
            EngineConfig {
                monitor: MonitorConfig::default(),
                distance_index: true,
            },
        )
        .unwrap();
        again.set_warn_before_funding(Some(Duration::from_secs(600)));
        again.restore([(AccountId::from("f"), ev[0].state_json.clone())]);
        assert!(again.evaluate_all(&i, T - 4 * MIN).is_empty());
        assert!(
            again.on_funding_clock(&i, T - 3 * MIN).is_empty(),
            "restart"
        );

        // The next settlement warns again, with the next seq.
        let next = info(dec!(0.0001), T + 480 * MIN);
        let ev2 = again.on_funding_clock(&next, T + 475 * MIN);
        assert_eq!(ev2.len(), 1);
        assert_eq!(ev2[0].event.seq, w.seq + 1);
    }

    /// A rate whose funding time has come is over: left out of snapshots until the next one
    /// is announced (a payment applied by `apply_funding` is not shown again).
    #[test]
    fn past_funding_time_is_not_shown() {
        let e = engine();
        let account = e.map().account(&AccountId::from("f")).unwrap();
        let i = info(dec!(0.0001), T);
        assert_eq!(rates_for(&account, &i, T - 1).len(), 1);
        assert!(rates_for(&account, &i, T).is_empty());
    }

    /// A payment that would bankrupt the account reaches the trigger level (still a
    /// warning, listing both levels); a payment the account receives warns about nothing; a
    /// settlement with no time never warns; with the setting off nothing is checked.
    #[test]
    fn levels_and_signs() {
        let mut e = engine();
        let ev = e.on_funding_clock(&info(dec!(0.01), T), T - MIN);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event.kind, EventKind::LiquidationWarning);
        assert_eq!(ev[0].event.level, Some(dec!(1)));
        assert_eq!(ev[0].event.crossed_levels, vec![dec!(0.8), dec!(1)]);

        let mut e = engine();
        assert!(
            e.on_funding_clock(&info(dec!(-0.01), T), T - MIN)
                .is_empty()
        );
        let no_time = Info(HashMap::from([(
            InstrumentId::from("BTCUSDT-PERP"),
            FundingRate {
                rate: dec!(0.01),
                next_funding_ts: None,
            },
        )]));
        assert!(e.on_funding_clock(&no_time, T + MIN).is_empty());
        e.set_warn_before_funding(None);
        assert!(e.on_funding_clock(&info(dec!(0.01), T), T - MIN).is_empty());
    }
}
