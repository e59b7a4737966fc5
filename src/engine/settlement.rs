//! `apply_funding`: which funding settlements are due on the engine's clock, and the collateral
//! update each holder gets. Pure (no I/O); the daemon's runner applies the updates through the
//! ordinary idempotent account-update path, each with the update id
//! `funding:<instrument>:<funding_time>:<account>`, journaled with the account write, so a
//! settlement is applied once per account however often the runner sees it, across restarts.
//!
//! **When.** The tracker remembers the last funding time announced for each instrument; a time
//! at or before `now` is due once (the feeds announce the next time right after a settlement,
//! so a time is settled even when the announcement moved on before the runner looked). A due
//! settlement whose instrument has no price in the engine yet (a daemon started at a funding
//! time hears the time with the first price) waits for one, due again at every check, for up
//! to [`WAIT_FOR_PRICE_MS`]; only then is it given up, with a warning.
//!
//! **How much.** The payment of [`crate::margin::funding::position_funding`] at the engine's
//! price of the instrument at settlement, with the rate announced for that time:
//! a linear perpetual pays in the account's stable collateral (the stable balance it holds
//! most of, else the first stable instrument configured); an inverse perpetual in its coin
//! (`payment / price` of the underlying collateral).
//!
//! **Whom.** Only accounts with `apply_funding` (`Account::apply_funding`: set in the account's
//! JSON, or by its source's `apply_funding` switch — `[accounts]` for the snapshot file and the
//! HTTP API, `[accounts.nats]` for NATS), so one daemon can mix balance-reporting sources with
//! position-only ones.
//!
//! **Never double-counted.** An account update that reports balances (a full replacement)
//! replaces the applied payment with what the source reports: sources that report balances
//! already include funding and should not set `apply_funding`.

use std::collections::{HashMap, HashSet};

use rust_decimal::Decimal;

use crate::engine::map::AccountMap;
use crate::margin::funding::{FundingRate, position_funding};
use crate::model::{AccountId, AccountUpdate, InstrumentId, InstrumentKind, TimestampMs};

/// How long settled times are remembered in memory (the journal's update ids remember them
/// for `update_id_window` as well).
const REMEMBER_MS: i64 = 24 * 3_600_000;

/// One settlement that is due: the instrument, its rate and its time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueSettlement {
    /// The perpetual.
    pub instrument: InstrumentId,
    /// The rate announced for this settlement.
    pub rate: Decimal,
    /// The funding time, ms since the epoch.
    pub funding_ms: TimestampMs,
}

/// How long a due settlement waits for its instrument's price before it is given up
/// ([`SettlementTracker::wait_for_price`]).
pub const WAIT_FOR_PRICE_MS: i64 = 5 * 60_000;

/// Tracks announced funding times and says which are due.
#[derive(Debug, Default)]
pub struct SettlementTracker {
    last_seen: HashMap<InstrumentId, FundingRate>,
    settled: HashSet<(InstrumentId, TimestampMs)>,
    /// Due settlements waiting for their instrument's price: due again at every call.
    waiting: Vec<DueSettlement>,
    /// When each waiting settlement first waited.
    waiting_since: HashMap<(InstrumentId, TimestampMs), TimestampMs>,
}

impl SettlementTracker {
    /// Takes the latest announcements and returns the settlements due at `now_ms` that were
    /// not returned before (each once), sorted by time then instrument.
    pub fn due(
        &mut self,
        observed: impl IntoIterator<Item = (InstrumentId, FundingRate)>,
        now_ms: TimestampMs,
    ) -> Vec<DueSettlement> {
        let mut candidates: Vec<(InstrumentId, FundingRate)> = Vec::new();
        for (inst, f) in observed {
            if let Some(prev) = self.last_seen.insert(inst.clone(), f)
                && prev.next_funding_ts != f.next_funding_ts
            {
                candidates.push((inst.clone(), prev));
            }
            candidates.push((inst, f));
        }
        // What waits for a price is due again, first.
        let mut out = std::mem::take(&mut self.waiting);
        self.waiting_since.retain(|(inst, t), _| {
            out.iter()
                .any(|s| s.instrument == *inst && s.funding_ms == *t)
        });
        for (inst, f) in candidates {
            let Some(t) = f.next_funding_ts.filter(|t| *t <= now_ms) else {
                continue;
            };
            if self.settled.insert((inst.clone(), t)) {
                out.push(DueSettlement {
                    instrument: inst,
                    rate: f.rate,
                    funding_ms: t,
                });
            }
        }
        let horizon = now_ms.saturating_sub(REMEMBER_MS);
        self.settled.retain(|(_, t)| *t >= horizon);
        out.sort_by(|a, b| (a.funding_ms, &a.instrument).cmp(&(b.funding_ms, &b.instrument)));
        out
    }

    /// `s`, returned by [`SettlementTracker::due`], could not be applied: its instrument has
    /// no price yet ([`settlement_updates`] returned `None`). It is due again at every call
    /// until it has waited [`WAIT_FOR_PRICE_MS`]; then it is given up and this returns false
    /// (the caller says so: the payment is not applied).
    pub fn wait_for_price(&mut self, s: DueSettlement, now_ms: TimestampMs) -> bool {
        let since = *self
            .waiting_since
            .entry((s.instrument.clone(), s.funding_ms))
            .or_insert(now_ms);
        if now_ms.saturating_sub(since) >= WAIT_FOR_PRICE_MS {
            self.waiting_since.remove(&(s.instrument, s.funding_ms));
            return false;
        }
        self.waiting.push(s);
        true
    }
}

/// The update id of one account's payment for one settlement.
pub fn settlement_id(s: &DueSettlement, account: &AccountId) -> String {
    format!("funding:{}:{}:{}", s.instrument, s.funding_ms, account)
}

/// The collateral update of every holder of `s.instrument` (positions only), in account order,
/// with its update id. Zero payments are skipped; an account whose payment cannot be computed
/// (a figure overflows, no stable asset to pay it in) gets none of it — no partial payment —
/// and is logged and counted (`liqwatch_engine_funding_failed_total`). `None` when some
/// holder is to be paid but the engine has no price of the instrument yet (a daemon that just
/// started hears the funding time in the same frame as the first price, and may look before
/// that price is applied): the settlement is due again later
/// ([`SettlementTracker::wait_for_price`]).
pub fn settlement_updates(
    map: &AccountMap,
    s: &DueSettlement,
) -> Option<Vec<(String, AccountUpdate)>> {
    let table = map.instruments();
    let Some(inst) = table.index(&s.instrument).and_then(|i| table.get(i)) else {
        return Some(Vec::new());
    };
    if !matches!(
        inst.kind,
        InstrumentKind::LinearPerpetual | InstrumentKind::InversePerpetual
    ) {
        return Some(Vec::new());
    }
    // Only accounts whose balances do not include funding (set by the account or its source):
    // a balance-reporting account would count it twice. Checked before the account is
    // materialised, so a book of balance-reporting accounts costs a look-up each.
    let payees: Vec<AccountId> = map
        .holders(&s.instrument)
        .into_iter()
        .filter(|id| map.read(id, |v| v.apply_funding()) == Some(true))
        .collect();
    if payees.is_empty() {
        return Some(Vec::new());
    }
    let price = map.price(&s.instrument)?;
    let mut stables: Vec<&InstrumentId> =
        table.iter().filter(|i| i.stable).map(|i| &i.id).collect();
    stables.sort();
    let mut out = Vec::new();
    for id in payees {
        let Some(account) = map.account(&id) else {
            continue; // removed since it was listed: nobody to pay
        };
        match account_payment(inst, &account, s, price, &stables) {
            Ok(Some((asset, delta))) => out.push((
                settlement_id(s, &id),
                AccountUpdate::Collateral {
                    account_id: id,
                    asset,
                    delta,
                },
            )),
            Ok(None) => {} // nothing to pay
            Err(reason) => {
                // All or nothing: a partly computed payment is not applied either.
                metrics::counter!("liqwatch_engine_funding_failed_total").increment(1);
                tracing::warn!(account = %id, instrument = %s.instrument, funding_ms = s.funding_ms, %reason, "Funding not applied");
            }
        }
    }
    Some(out)
}

/// Why one account's funding payment was not computed.
#[derive(Debug, thiserror::Error)]
enum PaymentError {
    #[error("{0}")]
    Figures(#[from] crate::margin::MarginError),
    #[error("the payment overflows")]
    Overflow,
    #[error("no stable asset configured to pay it in")]
    NoStable,
}

/// The asset and amount `account` pays or receives at settlement `s` (every leg of the
/// instrument together), `None` when that is zero.
fn account_payment(
    inst: &crate::model::Instrument,
    account: &crate::model::Account,
    s: &DueSettlement,
    price: Decimal,
    stables: &[&InstrumentId],
) -> Result<Option<(InstrumentId, Decimal)>, PaymentError> {
    let mut payment = Decimal::ZERO;
    for p in account
        .positions
        .iter()
        .filter(|p| p.instrument == s.instrument)
    {
        let v = position_funding(inst.kind, inst.contract_size, p.quantity, price, s.rate)?;
        payment = payment.checked_add(v).ok_or(PaymentError::Overflow)?;
    }
    if payment.is_zero() {
        return Ok(None);
    }
    if inst.kind == InstrumentKind::InversePerpetual {
        let coin = payment.checked_div(price).ok_or(PaymentError::Overflow)?;
        return Ok(Some((
            InstrumentId::from(inst.underlying.as_str()),
            crate::margin::normalise(coin),
        )));
    }
    // The stable the account holds most of (ties: the first id), else the first configured.
    let held = account
        .collateral
        .iter()
        .filter(|(a, _)| stables.contains(a))
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(a, _)| a.clone());
    let asset = held
        .or_else(|| stables.first().map(|a| (*a).clone()))
        .ok_or(PaymentError::NoStable)?;
    Ok(Some((asset, payment)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rust_decimal_macros::dec;

    use super::*;
    use crate::engine::map::tests::w3_instruments;

    /// Adds an account with 10,000 USDT and `q` BTCUSDT-PERP entered at 60,000.
    fn holder(map: &AccountMap, id: &str, q: &str, apply_funding: bool) {
        let a: crate::model::Account = serde_json::from_str(&format!(
            r#"{{"id":"{id}","collateral":{{"USDT":"10000"}},"apply_funding":{apply_funding},"positions":[
            {{"instrument":"BTCUSDT-PERP","quantity":"{q}","entry_price":"60000"}}]}}"#
        ))
        .unwrap();
        map.apply_update(AccountUpdate::Replace { account: a })
            .unwrap();
    }

    /// The BTCUSDT-PERP settlement at time 1000 at `rate`.
    fn btc_due(rate: Decimal) -> DueSettlement {
        DueSettlement {
            instrument: "BTCUSDT-PERP".into(),
            rate,
            funding_ms: 1000,
        }
    }

    /// `f`'s result and how many funding payments it counted as failed.
    fn counting_failures<R>(f: impl FnOnce() -> R) -> (R, u64) {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let r = metrics::with_local_recorder(&recorder, f);
        let failed = handle
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("liqwatch_engine_funding_failed_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        (r, failed)
    }

    fn rate(r: Decimal, t: i64) -> FundingRate {
        FundingRate {
            rate: r,
            next_funding_ts: Some(t),
        }
    }

    /// A time is due once, at or after it; a time the feed already moved past is still
    /// settled (with the rate announced for it); a repeat announcement is not due again.
    #[test]
    fn due_once() {
        let btc = InstrumentId::from("BTCUSDT-PERP");
        let mut t = SettlementTracker::default();
        assert!(
            t.due([(btc.clone(), rate(dec!(0.0001), 1000))], 999)
                .is_empty()
        );
        let d = t.due([(btc.clone(), rate(dec!(0.0001), 1000))], 1000);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].funding_ms, 1000);
        assert!(
            t.due([(btc.clone(), rate(dec!(0.0001), 1000))], 1500)
                .is_empty()
        );
        // Announced 2000 at 0.0002, then moved to 3000 before the runner looked.
        assert!(
            t.due([(btc.clone(), rate(dec!(0.0002), 2000))], 1900)
                .is_empty()
        );
        let d = t.due([(btc.clone(), rate(dec!(0.0003), 3000))], 2100);
        assert_eq!(
            d,
            vec![DueSettlement {
                instrument: btc,
                rate: dec!(0.0002),
                funding_ms: 2000
            }]
        );
    }

    /// A settlement whose instrument has no price yet waits: due again at every call (also
    /// after the feed announced the next time), until it is applied or has waited five
    /// minutes; then it is given up.
    #[test]
    fn a_settlement_waits_for_a_price() {
        let btc = InstrumentId::from("BTCUSDT-PERP");
        let mut t = SettlementTracker::default();
        let d = t.due([(btc.clone(), rate(dec!(0.0001), 1000))], 1000);
        assert_eq!(d.len(), 1);
        let s = d[0].clone();
        assert!(t.wait_for_price(s.clone(), 1000));
        // Due again, though the announcement moved on to the next time meanwhile.
        let again = t.due([(btc.clone(), rate(dec!(0.0002), 2000))], 1500);
        assert_eq!(again, vec![s.clone()]);
        // Still no price: it waits on; applied now (not handed back): never due again.
        assert!(t.wait_for_price(s.clone(), 1500));
        assert_eq!(
            t.due([(btc.clone(), rate(dec!(0.0002), 2000))], 1600),
            vec![s.clone()]
        );
        assert!(
            t.due([(btc.clone(), rate(dec!(0.0002), 2000))], 1700)
                .is_empty()
        );
        // Another time that never gets a price is given up after five minutes.
        let d = t.due([(btc.clone(), rate(dec!(0.0002), 2000))], 2000);
        assert_eq!(d.len(), 1);
        let s = d[0].clone();
        assert!(t.wait_for_price(s.clone(), 2000));
        let d = t.due(
            [(btc.clone(), rate(dec!(0.0002), 2000))],
            2000 + WAIT_FOR_PRICE_MS - 1,
        );
        assert_eq!(d, vec![s.clone()]);
        assert!(t.wait_for_price(s.clone(), 2000 + WAIT_FOR_PRICE_MS - 1));
        let d = t.due(
            [(btc.clone(), rate(dec!(0.0002), 2000))],
            2000 + WAIT_FOR_PRICE_MS,
        );
        assert_eq!(d, vec![s.clone()]);
        assert!(!t.wait_for_price(s, 2000 + WAIT_FOR_PRICE_MS));
        assert!(
            t.due([(btc, rate(dec!(0.0002), 2000))], 2000 + WAIT_FOR_PRICE_MS)
                .is_empty()
        );
    }

    /// Without a price a settlement cannot be computed when someone is to be paid (`None`:
    /// it waits); when nobody is (every holder reports its balances), there is nothing to wait
    /// for.
    #[test]
    fn no_price_waits_only_when_someone_is_paid() {
        let s = btc_due(dec!(0.0001));
        for (apply, expected) in [(true, None), (false, Some(Vec::new()))] {
            let map = Arc::new(AccountMap::new(w3_instruments()));
            holder(&map, "a", "2", apply);
            assert_eq!(
                settlement_updates(&map, &s),
                expected,
                "apply_funding {apply}"
            );
        }
    }

    /// A payment that cannot be computed is not applied, not even in part, and does not pass
    /// silently: the failure is counted. The other holders are paid as usual.
    #[test]
    fn a_payment_that_cannot_be_computed_is_counted_not_applied() {
        let map = Arc::new(AccountMap::new(w3_instruments()));
        holder(&map, "big", "2", true);
        holder(&map, "tiny", "0.000001", true);
        map.apply_price(&"BTCUSDT-PERP".into(), dec!(50000), &mut Vec::new())
            .unwrap();
        // 2 × 50,000 × 10^27 does not fit a `Decimal`; 10^-6 × 50,000 × 10^27 does.
        let s = btc_due(dec!(1000000000000000000000000000));
        let (u, failed) = counting_failures(|| settlement_updates(&map, &s));
        let u = u.expect("the instrument has a price");
        let ids: Vec<&str> = u.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["funding:BTCUSDT-PERP:1000:tiny"]);
        assert_eq!(failed, 1);
    }

    /// With no stable asset configured a linear payment has nothing to be paid in: none is
    /// made, and the failure is counted.
    #[test]
    fn no_stable_asset_is_counted_not_paid() {
        let no_stables: Vec<_> = w3_instruments().into_iter().filter(|i| !i.stable).collect();
        let map = Arc::new(AccountMap::new(no_stables));
        let a: crate::model::Account = serde_json::from_str(
            r#"{"id":"coin-only","collateral":{"BTC":"1"},"apply_funding":true,"positions":[
            {"instrument":"BTCUSDT-PERP","quantity":"2","entry_price":"60000"}]}"#,
        )
        .unwrap();
        map.apply_update(AccountUpdate::Replace { account: a })
            .unwrap();
        map.apply_price(&"BTCUSDT-PERP".into(), dec!(50000), &mut Vec::new())
            .unwrap();
        let s = btc_due(dec!(0.0001));
        let (u, failed) = counting_failures(|| settlement_updates(&map, &s));
        assert_eq!(u, Some(Vec::new()));
        assert_eq!(failed, 1);
    }

    /// Longs pay and shorts receive at a positive rate, in the stable they hold; the id names
    /// the instrument, the time and the account; an account without `apply_funding` (its
    /// source reports balances) gets nothing.
    #[test]
    fn updates_for_holders() {
        let map = Arc::new(AccountMap::new(w3_instruments()));
        for (id, q, apply) in [
            ("long", "2", true),
            ("reports-balances", "3", false),
            ("short", "-1", true),
        ] {
            holder(&map, id, q, apply);
        }
        let mut touched = Vec::new();
        map.apply_price(&"BTCUSDT-PERP".into(), dec!(50000), &mut touched)
            .unwrap();
        let s = btc_due(dec!(0.0001));
        let u = settlement_updates(&map, &s).expect("the instrument has a price");
        assert_eq!(
            u,
            vec![
                (
                    "funding:BTCUSDT-PERP:1000:long".to_string(),
                    AccountUpdate::Collateral {
                        account_id: "long".into(),
                        asset: "USDT".into(),
                        delta: dec!(-10)
                    }
                ),
                (
                    "funding:BTCUSDT-PERP:1000:short".to_string(),
                    AccountUpdate::Collateral {
                        account_id: "short".into(),
                        asset: "USDT".into(),
                        delta: dec!(5)
                    }
                ),
            ]
        );
    }
}
