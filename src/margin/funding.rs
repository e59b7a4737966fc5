//! Funding: the next funding payment of each perpetual position, their total, and the
//! account's margin ratio once they are paid — pure `Decimal`, no I/O.
//!
//! Funding is not part of maintenance margin (margin-math §5 pitfall 4): it moves the wallet
//! balance at each settlement. So the payment changes equity and leaves MM as it is:
//!
//! ```text
//! linear   payment = −q·cs·P·rate        (quote currency; q signed, long > 0)
//! inverse  payment = −q·cs·rate          (USD: q contracts of cs USD; valued in USD like uPnL)
//! equity_after = equity + Σ payment      ratio_after = MM / equity_after (∞ when ≤ 0)
//! ```
//!
//! A positive rate makes longs pay shorts. `P` is the price the account is valued at (the
//! mark); venues that settle on another price (Hyperliquid uses the oracle) differ by the
//! basis times the rate, a fraction of a cent per thousand of notional. Every payment is
//! normalised to [`super::ACCOUNTING_SCALE`] places before summing, like every contribution.

use std::collections::HashMap;

use rust_decimal::Decimal;

use super::{
    AccountTotals, InstrumentLookup, MarginError, PriceLookup, account_totals, add, mul, normalise,
};
use crate::model::{
    Account, FundingSnapshot, Instrument, InstrumentId, InstrumentKind, MarginRatio,
    PositionFundingRisk, PositionSide, RiskSnapshot, TimestampMs,
};

/// The funding a venue announced for a perpetual: the rate of the next settlement and when it
/// is (when the venue says; Hyperliquid and Deribit do not send the time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FundingRate {
    /// Rate of the next settlement (0.0001 = 0.01 % of notional).
    pub rate: Decimal,
    /// When it settles, ms since epoch, if known.
    pub next_funding_ts: Option<TimestampMs>,
}

/// One position's next funding payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PositionFunding {
    /// The contract.
    pub instrument: InstrumentId,
    /// The position's side (one-way or a hedge leg).
    pub side: PositionSide,
    /// The rate used.
    pub rate: Decimal,
    /// Signed payment to the account (negative = the account pays).
    pub payment: Decimal,
    /// When it settles, if known.
    pub next_funding_ts: Option<TimestampMs>,
}

/// The account's next funding payments and the margin ratio after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FundingOutlook {
    /// Per perpetual position with a known rate (and, when `due_by` is given, due by then).
    pub positions: Vec<PositionFunding>,
    /// Σ payments.
    pub total: Decimal,
    /// Equity and MM before funding.
    pub before: AccountTotals,
    /// Equity once the payments are made.
    pub equity_after: Decimal,
    /// `MM / equity_after`.
    pub margin_ratio_after: MarginRatio,
    /// The earliest settlement time among the payments counted.
    pub next_funding_ts: Option<TimestampMs>,
    /// Perpetual positions whose rate is unknown (not counted: say so, never guess 0).
    pub missing_rate: Vec<InstrumentId>,
}

/// The signed funding payment of one position (negative = the account pays). Dated futures
/// and collateral pay no funding (0).
pub fn position_funding(
    kind: InstrumentKind,
    contract_size: Decimal,
    quantity: Decimal,
    price: Decimal,
    rate: Decimal,
) -> Result<Decimal, MarginError> {
    let face = mul(quantity, contract_size, "funding")?;
    let paid = match kind {
        InstrumentKind::LinearPerpetual => mul(mul(face, price, "funding")?, rate, "funding")?,
        InstrumentKind::InversePerpetual => mul(face, rate, "funding")?,
        _ => return Ok(Decimal::ZERO),
    };
    Ok(normalise(-paid))
}

/// The account's next funding payments at the given prices and rates, the total and the
/// margin ratio after them. With `due_by`, only payments known to settle at or before it
/// count (the window a "warn before funding" check looks at); payments with no known time
/// count only when `due_by` is `None`.
pub fn funding_outlook(
    account: &Account,
    instruments: &dyn InstrumentLookup,
    prices: &dyn PriceLookup,
    funding: &HashMap<InstrumentId, FundingRate>,
    due_by: Option<TimestampMs>,
) -> Result<FundingOutlook, MarginError> {
    let before = account_totals(account, instruments, prices)?;
    let mut positions = Vec::new();
    let mut tally = Tally::default();
    for p in &account.positions {
        let Some(i) = perpetual(instruments, &p.instrument)? else {
            continue;
        };
        let Some(f) = funding.get(&p.instrument) else {
            tally.missing(&p.instrument);
            continue;
        };
        let due = match (due_by, f.next_funding_ts) {
            (None, _) => true,
            (Some(limit), Some(ts)) => ts <= limit,
            (Some(_), None) => false,
        };
        if !due {
            continue;
        }
        let price = prices
            .price(&p.instrument)
            .ok_or_else(|| MarginError::MissingPrice(p.instrument.clone()))?;
        let payment = tally.pay(i, p.quantity, price, f)?;
        positions.push(PositionFunding {
            instrument: p.instrument.clone(),
            side: p.side,
            rate: f.rate,
            payment,
            next_funding_ts: f.next_funding_ts,
        });
    }
    let equity_after = add(before.equity, tally.total, "equity after funding")?;
    Ok(FundingOutlook {
        positions,
        total: tally.total,
        before,
        equity_after,
        margin_ratio_after: MarginRatio::compute(before.maintenance_margin, equity_after),
        next_funding_ts: tally.next,
        missing_rate: tally.missing_rate,
    })
}

/// The next funding of an account from its snapshot (the figures at the prices it was valued
/// at): each perpetual position's payment at its mark, the total, and `MM / (equity + total)`.
/// `None` when no perpetual held has a known rate (no funding source: nothing to show). Costs
/// one multiplication per position: it runs only for snapshots that are built (events and
/// account reads), never while the engine bands accounts.
pub fn funding_snapshot(
    snapshot: &RiskSnapshot,
    instruments: &dyn InstrumentLookup,
    rate_of: &dyn Fn(&InstrumentId) -> Option<FundingRate>,
) -> Result<Option<FundingSnapshot>, MarginError> {
    let mut positions = Vec::new();
    let mut tally = Tally::default();
    for p in &snapshot.positions {
        let Some(i) = perpetual(instruments, &p.instrument)? else {
            continue;
        };
        let Some(f) = rate_of(&p.instrument) else {
            tally.missing(&p.instrument);
            continue;
        };
        let payment = tally.pay(i, p.quantity, p.mark_price, &f)?;
        positions.push(PositionFundingRisk {
            instrument: p.instrument.clone(),
            side: p.side,
            rate: f.rate,
            payment,
            next_funding_ms: f.next_funding_ts,
        });
    }
    if positions.is_empty() {
        return Ok(None);
    }
    let equity_after = add(snapshot.equity, tally.total, "equity after funding")?;
    Ok(Some(FundingSnapshot {
        positions,
        total: tally.total,
        equity_after,
        margin_ratio_after: MarginRatio::compute(snapshot.maintenance_margin, equity_after),
        next_funding_ms: tally.next,
        missing_rate: tally.missing_rate,
    }))
}

/// The instrument of a position if it pays funding (a perpetual); `None` for futures and
/// collateral. The first step shared by [`funding_outlook`] and [`funding_snapshot`].
fn perpetual<'a>(
    instruments: &'a dyn InstrumentLookup,
    id: &InstrumentId,
) -> Result<Option<&'a Instrument>, MarginError> {
    let i = instruments
        .instrument(id)
        .ok_or_else(|| MarginError::UnknownInstrument(id.clone()))?;
    Ok(matches!(
        i.kind,
        InstrumentKind::LinearPerpetual | InstrumentKind::InversePerpetual
    )
    .then_some(i))
}

/// The running total, earliest settlement and unknown rates of an account's payments.
#[derive(Default)]
struct Tally {
    total: Decimal,
    next: Option<TimestampMs>,
    missing_rate: Vec<InstrumentId>,
}

impl Tally {
    /// Counts one position's payment at `price` and returns it.
    fn pay(
        &mut self,
        i: &Instrument,
        quantity: Decimal,
        price: Decimal,
        f: &FundingRate,
    ) -> Result<Decimal, MarginError> {
        let payment = position_funding(i.kind, i.contract_size, quantity, price, f.rate)?;
        self.total = add(self.total, payment, "funding total")?;
        if let Some(ts) = f.next_funding_ts {
            self.next = Some(self.next.map_or(ts, |n| n.min(ts)));
        }
        Ok(payment)
    }

    /// A perpetual held whose rate is not known (listed once; never guessed as 0).
    fn missing(&mut self, id: &InstrumentId) {
        if !self.missing_rate.contains(id) {
            self.missing_rate.push(id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rust_decimal_macros::dec;

    use super::*;
    use crate::model::{AccountId, Instrument, Position};

    fn presets() -> HashMap<InstrumentId, Instrument> {
        crate::sources::files::load_instruments(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml"),
        )
        .unwrap()
    }

    fn pos(id: &str, q: Decimal, ep: Decimal) -> Position {
        Position {
            instrument: InstrumentId::new(id),
            side: PositionSide::default(),
            quantity: q,
            entry_price: ep,
        }
    }

    fn account(collateral: &[(&str, Decimal)], positions: Vec<Position>) -> Account {
        Account {
            id: AccountId::new("a"),
            collateral: collateral
                .iter()
                .map(|(k, v)| (InstrumentId::new(k), *v))
                .collect(),
            positions,
            thresholds: None,
            apply_funding: false,
        }
    }

    fn prices(p: &[(&str, Decimal)]) -> HashMap<InstrumentId, Decimal> {
        p.iter().map(|(k, v)| (InstrumentId::new(k), *v)).collect()
    }

    fn rates(r: &[(&str, Decimal, Option<i64>)]) -> HashMap<InstrumentId, FundingRate> {
        r.iter()
            .map(|(k, rate, ts)| {
                (
                    InstrumentId::new(k),
                    FundingRate {
                        rate: *rate,
                        next_funding_ts: *ts,
                    },
                )
            })
            .collect()
    }

    /// The W3 account of margin-math (equity 90,000, MM 7,965) at 0.01 % funding on every
    /// perpetual: BTC long pays 10.5·60,000·0.0001 = 63, ETH long pays 150·3,000·0.0001 = 45,
    /// the SOL short receives 2,000·150·0.0001 = 30; total −78, equity 89,922, ratio
    /// 7,965 / 89,922 = 0.088576766530…
    #[test]
    fn w3_account_at_one_basis_point() {
        let inst = presets();
        let a = account(
            &[("USDT", dec!(60500)), ("BTC", dec!(1.5))],
            vec![
                pos("BTCUSDT-PERP", dec!(10.5), dec!(62000)),
                pos("ETHUSDT-PERP", dec!(150), dec!(3100)),
                pos("SOLUSDT-PERP", dec!(-2000), dec!(140)),
            ],
        );
        let px = prices(&[
            ("BTCUSDT-PERP", dec!(60000)),
            ("ETHUSDT-PERP", dec!(3000)),
            ("SOLUSDT-PERP", dec!(150)),
            ("BTC", dec!(60000)),
        ]);
        let r = rates(&[
            ("BTCUSDT-PERP", dec!(0.0001), Some(1_000)),
            ("ETHUSDT-PERP", dec!(0.0001), Some(1_000)),
            ("SOLUSDT-PERP", dec!(0.0001), Some(500)),
        ]);
        let o = funding_outlook(&a, &inst, &px, &r, None).unwrap();
        let pay: Vec<Decimal> = o.positions.iter().map(|p| p.payment).collect();
        assert_eq!(pay, [dec!(-63), dec!(-45), dec!(30)]);
        assert_eq!(o.total, dec!(-78));
        assert_eq!(o.before.equity, dec!(90000));
        assert_eq!(o.before.maintenance_margin, dec!(7965));
        assert_eq!(o.equity_after, dec!(89922));
        let MarginRatio::Finite(ratio) = o.margin_ratio_after else {
            panic!("finite expected")
        };
        assert_eq!(ratio.round_dp(12), dec!(0.088576766531));
        assert_eq!(o.next_funding_ts, Some(500));
        assert!(o.missing_rate.is_empty());
    }

    /// A negative rate makes shorts pay: −2,000 SOL at 150 and −0.05 % pays 150.
    #[test]
    fn negative_rate_shorts_pay() {
        let inst = presets();
        let a = account(
            &[("USDT", dec!(10000))],
            vec![pos("SOLUSDT-PERP", dec!(-2000), dec!(150))],
        );
        let px = prices(&[("SOLUSDT-PERP", dec!(150))]);
        let r = rates(&[("SOLUSDT-PERP", dec!(-0.0005), None)]);
        let o = funding_outlook(&a, &inst, &px, &r, None).unwrap();
        assert_eq!(o.total, dec!(-150));
        assert_eq!(o.equity_after, dec!(9850));
    }

    /// Funding alone can cross the trigger: equity 3,000 against MM 2,950 (10 BTC at 60,000,
    /// tier 3: 600,000·0.0065 − 950), 0.01 % funding costs 60 → equity 2,940 < MM, ratio
    /// 2,950 / 2,940 ≥ 1.
    #[test]
    fn funding_can_cross_the_trigger() {
        let inst = presets();
        let a = account(
            &[("USDT", dec!(3000))],
            vec![pos("BTCUSDT-PERP", dec!(10), dec!(60000))],
        );
        let px = prices(&[("BTCUSDT-PERP", dec!(60000))]);
        let r = rates(&[("BTCUSDT-PERP", dec!(0.0001), Some(10))]);
        let o = funding_outlook(&a, &inst, &px, &r, None).unwrap();
        assert_eq!(o.before.maintenance_margin, dec!(2950));
        assert_eq!(o.equity_after, dec!(2940));
        assert_eq!(
            o.margin_ratio_after,
            MarginRatio::compute(dec!(2950), dec!(2940))
        );
        assert!(matches!(o.margin_ratio_after, MarginRatio::Finite(r) if r > Decimal::ONE));
    }

    /// Inverse perpetuals pay on their USD face value: 100 contracts of 100 USD long at 0.01 %
    /// pay 1 USD, whatever the price.
    #[test]
    fn inverse_pays_on_face_value() {
        assert_eq!(
            position_funding(
                InstrumentKind::InversePerpetual,
                dec!(100),
                dec!(100),
                dec!(25000),
                dec!(0.0001)
            )
            .unwrap(),
            dec!(-1)
        );
        assert_eq!(
            position_funding(
                InstrumentKind::LinearFuture,
                dec!(1),
                dec!(5),
                dec!(100),
                dec!(0.01)
            )
            .unwrap(),
            Decimal::ZERO
        );
    }

    /// Unknown rates are listed, not counted as 0; `due_by` keeps only payments known to
    /// settle by then.
    #[test]
    fn missing_rates_and_due_by_window() {
        let inst = presets();
        let a = account(
            &[("USDT", dec!(100000))],
            vec![
                pos("BTCUSDT-PERP", dec!(1), dec!(60000)),
                pos("ETHUSDT-PERP", dec!(10), dec!(3000)),
                pos("SOLUSDT-PERP", dec!(100), dec!(150)),
            ],
        );
        let px = prices(&[
            ("BTCUSDT-PERP", dec!(60000)),
            ("ETHUSDT-PERP", dec!(3000)),
            ("SOLUSDT-PERP", dec!(150)),
        ]);
        let r = rates(&[
            ("BTCUSDT-PERP", dec!(0.0001), Some(1_000)),
            ("ETHUSDT-PERP", dec!(0.0001), Some(5_000)),
        ]);
        let o = funding_outlook(&a, &inst, &px, &r, Some(2_000)).unwrap();
        assert_eq!(o.positions.len(), 1);
        assert_eq!(o.total, dec!(-6));
        assert_eq!(o.missing_rate, vec![InstrumentId::new("SOLUSDT-PERP")]);
        let all = funding_outlook(&a, &inst, &px, &r, None).unwrap();
        assert_eq!(all.total, dec!(-9));
    }

    proptest::proptest! {
        /// For any linear or inverse position, price and rate: the long pays exactly what the
        /// same short receives; the payment is linear in the rate (twice the rate, twice the
        /// payment, to the accounting scale); a positive rate never pays a long; and the
        /// snapshot's `equity_after` is its equity plus the sum of the payments, with MM unchanged
        /// in `margin_ratio_after`.
        #[test]
        fn payment_relations(
            q in 1i64..1_000_000,
            p in 1i64..10_000_000,
            r in -100_000i64..100_000,
            inverse in proptest::bool::ANY,
        ) {
            let q = Decimal::new(q, 3);
            let price = Decimal::new(p, 2);
            let rate = Decimal::new(r, 8);
            let (kind, cs) = if inverse {
                (InstrumentKind::InversePerpetual, dec!(100))
            } else {
                (InstrumentKind::LinearPerpetual, Decimal::ONE)
            };
            let long = position_funding(kind, cs, q, price, rate).unwrap();
            let short = position_funding(kind, cs, -q, price, rate).unwrap();
            proptest::prop_assert_eq!(long, -short);
            let double = position_funding(kind, cs, q, price, rate * Decimal::TWO).unwrap();
            proptest::prop_assert!((double - long * Decimal::TWO).abs() <= Decimal::new(1, 12));
            if rate > Decimal::ZERO {
                proptest::prop_assert!(long <= Decimal::ZERO);
            }

            let inst = presets();
            let inst_id = if inverse {
                inst.values()
                    .filter(|i| i.kind == InstrumentKind::InversePerpetual)
                    .map(|i| i.id.clone())
                    .min()
                    .unwrap()
            } else {
                InstrumentId::new("BTCUSDT-PERP")
            };
            let a = account(&[("USDT", dec!(1000000))], vec![pos(inst_id.as_str(), q, price)]);
            let px = prices(&[(inst_id.as_str(), price)]);
            let snap = crate::margin::account_snapshot(&a, &inst, &px, Decimal::ONE).unwrap();
            let rates = rates(&[(inst_id.as_str(), rate, Some(1))]);
            let f = funding_snapshot(&snap, &inst, &|i| rates.get(i).copied())
                .unwrap()
                .unwrap();
            let sum = f.positions.iter().fold(Decimal::ZERO, |s, p| s + p.payment);
            proptest::prop_assert_eq!(f.total, sum);
            proptest::prop_assert_eq!(f.equity_after, snap.equity + sum);
            proptest::prop_assert_eq!(
                f.margin_ratio_after,
                MarginRatio::compute(snap.maintenance_margin, f.equity_after)
            );
            // The outlook from the account agrees with the one from its snapshot.
            let o = funding_outlook(&a, &inst, &px, &rates, None).unwrap();
            proptest::prop_assert_eq!(o.total, f.total);
            proptest::prop_assert_eq!(o.equity_after, f.equity_after);
        }
    }
}
