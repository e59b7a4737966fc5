//! The highest value of `g(z) = MM(z) − trigger·equity(z)` over an interval of the price
//! variable: what the distance index needs to band an account's distance levels (is the trigger
//! reachable within a move of `L`? `max g ≥ 0` over `[1 − L, 1 + L]`).

use rust_decimal::Decimal;

use super::*;

impl PriceMove<'_> {
    /// The supremum of `g(z) = MM(z) − trigger·equity(z)` over `lo ≤ z ≤ hi` (`0 < lo ≤ hi`),
    /// exact: `g` is linear between tier breakpoints, so the supremum is at an end of a piece;
    /// at a breakpoint both one-sided limits count (a table whose `cum` breaks continuity jumps
    /// there), so the result is never below any value `g` takes on the interval, and every
    /// value it reports is approached by points inside the interval.
    pub fn peak(&self, lo: Decimal, hi: Decimal) -> Result<Decimal, MarginError> {
        if lo <= Decimal::ZERO || hi < lo {
            return Err(MarginError::Overflow {
                context: "peak interval",
            });
        }
        let mut ends: Vec<Decimal> = vec![lo];
        ends.extend(
            self.breakpoints()?
                .into_iter()
                .filter(|b| *b > lo && *b < hi),
        );
        ends.push(hi);
        let mut best: Option<Decimal> = None;
        let mut keep = |v: Decimal| {
            best = Some(best.map_or(v, |b| b.max(v)));
        };
        if ends.len() == 2 && lo == hi {
            keep(self.line_at(lo)?.at(lo)?);
        }
        for w in ends.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a == b {
                continue;
            }
            let mid = div(add(a, b, "peak midpoint")?, Decimal::TWO, "peak midpoint")?;
            let line = self.line_at(mid)?;
            keep(line.at(a)?);
            keep(line.at(b)?);
        }
        best.ok_or(MarginError::Overflow {
            context: "peak interval",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rust_decimal::Decimal;
    use rust_decimal_macros::dec;

    use crate::engine::map::tests::{w3_account, w3_instruments};
    use crate::model::{Instrument, InstrumentId};

    /// The peak over an interval is g's largest value at the interval's ends and the tier
    /// breakpoints inside it (re-priced from the exact per-position formulas), and no point of
    /// a fine grid lies above it.
    #[test]
    fn peak_is_the_largest_value_of_g() {
        let instruments: HashMap<InstrumentId, Instrument> = w3_instruments()
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let prices: HashMap<InstrumentId, Decimal> = [
            ("BTCUSDT-PERP", dec!(60000)),
            ("BTC", dec!(60000)),
            ("ETHUSDT-PERP", dec!(3000)),
            ("SOLUSDT-PERP", dec!(150)),
        ]
        .into_iter()
        .map(|(i, p)| (InstrumentId::from(i), p))
        .collect();
        let account = w3_account("w3");
        let pm = crate::margin::shock_problem(&account, &instruments, &prices, dec!(1)).unwrap();
        let g = |z: Decimal| {
            let t = pm.reprice(z).unwrap();
            t.maintenance_margin - t.equity
        };
        let bps = pm.breakpoints().unwrap();
        for (lo, hi) in [
            (dec!(0.9), dec!(1.1)),
            (dec!(0.5), dec!(1.5)),
            (dec!(1), dec!(1)),
        ] {
            let peak = pm.peak(lo, hi).unwrap();
            let expected = bps
                .iter()
                .copied()
                .filter(|b| *b > lo && *b < hi)
                .chain([lo, hi])
                .map(g)
                .max()
                .unwrap();
            assert!(
                (peak - expected).abs() < dec!(0.000000001),
                "[{lo}, {hi}]: peak {peak}, expected {expected}"
            );
            for i in 0..=200 {
                let z = lo + (hi - lo) * Decimal::from(i) / dec!(200);
                assert!(
                    g(z) <= peak + dec!(0.000000001),
                    "g({z}) above the peak {peak}"
                );
            }
        }
    }
}
