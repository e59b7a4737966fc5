//! Per-symbol subscription state of one feed, kept across its connections: which symbols the
//! venue refused (retried with backoff; a refused batch is split in halves to find the symbol
//! at fault), which it called unknown or left unconfirmed (retried rarely, `unknown_retry`),
//! and the retries that are due. The driver asks it what to subscribe on a new connection and
//! what to resend on a live one; it holds no I/O.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::runtime::Backoff;

/// One symbol's trouble.
#[derive(Debug)]
struct SymState {
    /// Refusal backoff: doubles per refusal, reset by a first price.
    backoff: Backoff,
    /// The venue called it unknown (or it stayed silent after an ack): retried rarely.
    unknown: bool,
    /// Not before this is it subscribed again (unknown symbols only; refusals are scheduled
    /// as [`Retry`] batches).
    due: Instant,
}

/// A batch of symbols to subscribe again at `due`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Retry {
    /// When.
    pub(super) due: Instant,
    /// Which symbols (one request).
    pub(super) symbols: Vec<String>,
    /// A rare retry of unknown or unconfirmed symbols (not worth a rebuilt connection).
    pub(super) unknown: bool,
}

/// The subscription state of one feed.
#[derive(Debug)]
pub(super) struct Subscriptions {
    initial: Duration,
    max: Duration,
    unknown_retry: Duration,
    state: HashMap<String, SymState>,
    pending: Vec<Retry>,
}

impl Subscriptions {
    /// Refusals back off from `initial` doubling up to `max` (jittered into [½·d, d]); unknown
    /// symbols are retried every `unknown_retry`.
    pub(super) fn new(initial: Duration, max: Duration, unknown_retry: Duration) -> Subscriptions {
        Subscriptions {
            initial,
            max,
            unknown_retry,
            state: HashMap::new(),
            pending: Vec::new(),
        }
    }

    fn entry(&mut self, symbol: &str, now: Instant) -> &mut SymState {
        let (initial, max) = (self.initial, self.max);
        self.state
            .entry(symbol.to_string())
            .or_insert_with(|| SymState {
                backoff: Backoff::new(initial, max),
                unknown: false,
                due: now,
            })
    }

    /// The symbols to subscribe on a new connection, in `all`'s order: every one except the
    /// unknown ones not yet due. Pending retries are dropped: the new connection subscribes
    /// everything it can.
    pub(super) fn for_new_connection(&mut self, all: &[String], now: Instant) -> Vec<String> {
        self.pending.clear();
        all.iter()
            .filter(|s| {
                self.state
                    .get(s.as_str())
                    .is_none_or(|st| !st.unknown || st.due <= now)
            })
            .cloned()
            .collect()
    }

    /// When the earliest unknown symbol may be subscribed again.
    pub(super) fn next_unknown_due(&self) -> Option<Instant> {
        self.state
            .values()
            .filter(|s| s.unknown)
            .map(|s| s.due)
            .min()
    }

    /// The venue refused a request carrying `symbols`: each half of a batch (or the lone
    /// symbol) is scheduled after the longest next backoff of its symbols. Returns the
    /// scheduled batches with their delays.
    pub(super) fn refused(
        &mut self,
        symbols: &[String],
        now: Instant,
    ) -> Vec<(Duration, Vec<String>)> {
        let halves: Vec<&[String]> = if symbols.len() > 1 {
            let (a, b) = symbols.split_at(symbols.len() / 2);
            vec![a, b]
        } else {
            vec![symbols]
        };
        let mut out = Vec::new();
        for half in halves.into_iter().filter(|h| !h.is_empty()) {
            let mut delay = Duration::ZERO;
            for s in half {
                delay = delay.max(self.entry(s, now).backoff.next_delay(None));
            }
            self.pending
                .retain(|r| !r.symbols.iter().any(|s| half.contains(s)));
            self.pending.push(Retry {
                due: now + delay,
                symbols: half.to_vec(),
                unknown: false,
            });
            out.push((delay, half.to_vec()));
        }
        out
    }

    /// The venue called `symbol` unknown (or it stayed silent after an ack): it is left out of
    /// new connections and retried once per `unknown_retry`. Returns whether it was not
    /// already known as unknown.
    pub(super) fn unknown(&mut self, symbol: &str, now: Instant) -> bool {
        let due = now + self.unknown_retry;
        let st = self.entry(symbol, now);
        let newly = !st.unknown;
        st.unknown = true;
        st.due = due;
        self.pending
            .retain(|r| !r.symbols.iter().any(|s| s == symbol));
        self.pending.push(Retry {
            due,
            symbols: vec![symbol.to_string()],
            unknown: true,
        });
        newly
    }

    /// A first price proved the subscription: the symbol's trouble is forgotten. Returns
    /// whether it had any.
    pub(super) fn confirmed(&mut self, symbol: &str) -> bool {
        self.state.remove(symbol).is_some()
    }

    /// Whether the symbol is still in trouble (refused or unknown, not confirmed since).
    pub(super) fn troubled(&self, symbol: &str) -> bool {
        self.state.contains_key(symbol)
    }

    /// The retries due at `now`, removed from the schedule (each batch keeps only the symbols
    /// still in trouble).
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Retry> {
        let (due, later): (Vec<Retry>, Vec<Retry>) =
            self.pending.drain(..).partition(|r| r.due <= now);
        self.pending = later;
        due.into_iter()
            .filter_map(|mut r| {
                r.symbols.retain(|s| self.state.contains_key(s));
                (!r.symbols.is_empty()).then_some(r)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syms(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    /// A refused batch is split in halves, each scheduled within the backoff; halves of halves
    /// narrow down to the symbol at fault, whose delay doubles per refusal; a first price
    /// clears it.
    #[test]
    fn refused_batches_split_and_back_off() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut s = Subscriptions::new(ms(100), ms(1000), Duration::from_secs(600));
        let got = s.refused(&syms(&["A", "B", "C"]), now);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, syms(&["A"]));
        assert_eq!(got[1].1, syms(&["B", "C"]));
        for (d, _) in &got {
            assert!(*d >= ms(50) && *d <= ms(100), "{d:?}");
        }
        assert!(s.take_due(now).is_empty());
        let due = s.take_due(now + ms(100));
        assert_eq!(due.len(), 2);
        assert!(s.confirmed("A"));
        assert!(!s.confirmed("A"));
        let got = s.refused(&syms(&["B", "C"]), now);
        assert_eq!(
            got.iter().map(|g| g.1.clone()).collect::<Vec<_>>(),
            vec![syms(&["B"]), syms(&["C"])]
        );
        // Second refusal of B and C: 100..200 ms; third of C: 200..400 ms.
        assert!(got.iter().all(|(d, _)| *d >= ms(100) && *d <= ms(200)));
        let got = s.refused(&syms(&["C"]), now);
        assert!(got[0].0 >= ms(200) && got[0].0 <= ms(400), "{:?}", got[0].0);
        // The confirmed B's retry is dropped from what comes due.
        assert!(s.confirmed("B"));
        let due = s.take_due(now + ms(1000));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].symbols, syms(&["C"]));
        // Refused symbols stay in new connections.
        assert_eq!(
            s.for_new_connection(&syms(&["A", "B", "C"]), now),
            syms(&["A", "B", "C"])
        );
    }

    /// An unknown symbol is left out of new connections until `unknown_retry` has passed,
    /// then tried again; a rare retry is scheduled for live connections.
    #[test]
    fn unknown_symbols_retried_rarely() {
        let now = Instant::now();
        let retry = Duration::from_secs(600);
        let mut s = Subscriptions::new(Duration::from_millis(100), Duration::from_secs(1), retry);
        assert!(s.unknown("X", now));
        assert!(!s.unknown("X", now));
        assert_eq!(s.next_unknown_due(), Some(now + retry));
        let all = syms(&["A", "X"]);
        assert_eq!(s.for_new_connection(&all, now), syms(&["A"]));
        assert_eq!(s.for_new_connection(&all, now + retry), all);
        s.unknown("X", now);
        assert!(s.take_due(now + retry - Duration::from_secs(1)).is_empty());
        let due = s.take_due(now + retry);
        assert_eq!(
            due,
            vec![Retry {
                due: now + retry,
                symbols: syms(&["X"]),
                unknown: true
            }]
        );
        assert!(s.troubled("X"));
        s.confirmed("X");
        assert!(!s.troubled("X"));
        assert_eq!(s.next_unknown_due(), None);
    }
}
