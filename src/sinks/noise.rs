//! Noise control for chat sinks (Slack, Discord, PagerDuty): grouping of warnings during a
//! cascade and a per-sink rate limit that delays rather than drops.
//!
//! Everything here is pure planning over a batch of journal entries plus a token bucket on
//! `tokio::time` (pausable in tests); the webhook sink renders and sends what is planned.
//!
//! Rules this module keeps:
//! - Only `liquidation_warning` events are ever grouped. Triggers, recoveries and feed events
//!   always go as their own message, and triggers never wait for the rate limiter.
//! - Per-account order is preserved: a group is sent at the position of its first member, and a
//!   warning joins an open group only if its account had no event outside the group since the
//!   group opened (otherwise the group closes and a new one starts).
//! - A grouped message's events count as delivered only once the message is accepted
//!   ([`PrefixTracker`] turns accepted messages into the delivered prefix of the batch).

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{AccountId, EventKind};
use crate::sinks::JournalEntry;

/// How warnings are grouped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// Warnings whose detection times lie within this window of the group's first warning
    /// share one message.
    pub window: Duration,
    /// A group needs at least this many warnings; smaller groups are sent one by one.
    pub min_events: usize,
    /// How many of the worst accounts (by margin ratio) a grouped message lists.
    pub top: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            window: Duration::from_secs(10),
            min_events: 3,
            top: 5,
        }
    }
}

/// One message to send: the batch indices (ascending) it covers. More than one member means a
/// grouped warning message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedMessage {
    /// Indices into the batch, ascending; the first decides the message's position.
    pub members: Vec<usize>,
}

impl PlannedMessage {
    /// True when this message groups several warnings.
    pub fn is_group(&self) -> bool {
        self.members.len() > 1
    }
}

fn single(i: usize) -> PlannedMessage {
    PlannedMessage { members: vec![i] }
}

/// Plans the messages for `batch`: singles for everything, except runs of warnings that fall in
/// one window, which become one grouped message when there are at least `min_events` of them.
/// With `group = None` every entry is its own message. The result is ordered by first member.
pub fn plan(batch: &[JournalEntry], group: Option<&GroupConfig>) -> Vec<PlannedMessage> {
    let Some(cfg) = group else {
        return (0..batch.len()).map(single).collect();
    };
    let window_ms = i64::try_from(cfg.window.as_millis()).unwrap_or(i64::MAX);
    let mut out: Vec<PlannedMessage> = Vec::with_capacity(batch.len());
    let mut open: Option<OpenGroup> = None;

    for (i, entry) in batch.iter().enumerate() {
        let ev = &entry.event;
        if ev.kind == EventKind::LiquidationWarning {
            let joins = open.as_ref().is_some_and(|g| {
                ev.time_ms.saturating_sub(g.start_ms) <= window_ms
                    && !ev
                        .account_id
                        .as_ref()
                        .is_some_and(|a| g.blocked.contains(a))
            });
            if joins {
                if let Some(g) = open.as_mut() {
                    g.add(i, ev.account_id.as_ref());
                }
            } else {
                close(&mut open, &mut out);
                let mut g = OpenGroup {
                    slot: out.len(),
                    start_ms: ev.time_ms,
                    members: Vec::new(),
                    accounts: HashSet::new(),
                    blocked: HashSet::new(),
                };
                g.add(i, ev.account_id.as_ref());
                out.push(PlannedMessage {
                    members: Vec::new(),
                });
                open = Some(g);
            }
        } else {
            if let (Some(g), Some(acc)) = (open.as_mut(), ev.account_id.as_ref()) {
                if g.accounts.contains(acc) {
                    close(&mut open, &mut out);
                } else {
                    g.blocked.insert(acc.clone());
                }
            }
            out.push(single(i));
        }
    }
    close(&mut open, &mut out);

    // Split groups that are too small back into singles at their own positions.
    let min = cfg.min_events.max(2);
    let mut planned: Vec<PlannedMessage> = Vec::with_capacity(out.len());
    for msg in out {
        if msg.members.len() >= min {
            planned.push(msg);
        } else {
            planned.extend(msg.members.into_iter().map(single));
        }
    }
    planned.sort_by_key(|m| m.members.first().copied().unwrap_or(usize::MAX));
    planned
}

struct OpenGroup {
    slot: usize,
    start_ms: i64,
    members: Vec<usize>,
    accounts: HashSet<AccountId>,
    blocked: HashSet<AccountId>,
}

impl OpenGroup {
    fn add(&mut self, i: usize, account: Option<&AccountId>) {
        self.members.push(i);
        if let Some(a) = account {
            self.accounts.insert(a.clone());
        }
    }
}

fn close(open: &mut Option<OpenGroup>, out: &mut [PlannedMessage]) {
    if let Some(g) = open.take()
        && let Some(slot) = out.get_mut(g.slot)
    {
        slot.members = g.members;
    }
}

/// Turns accepted messages into "how many leading entries of the batch are delivered".
#[derive(Clone, Debug)]
pub struct PrefixTracker {
    done: Vec<bool>,
    prefix: usize,
}

impl PrefixTracker {
    /// A tracker for a batch of `len` entries, none delivered.
    pub fn new(len: usize) -> Self {
        PrefixTracker {
            done: vec![false; len],
            prefix: 0,
        }
    }

    /// Marks `members` delivered and returns the new delivered prefix.
    pub fn mark(&mut self, members: &[usize]) -> usize {
        for &i in members {
            if let Some(d) = self.done.get_mut(i) {
                *d = true;
            }
        }
        while self.done.get(self.prefix).copied().unwrap_or(false) {
            self.prefix += 1;
        }
        self.prefix
    }

    /// How many leading entries are delivered.
    pub fn prefix(&self) -> usize {
        self.prefix
    }
}

/// A rate limit: at most `messages` per `per`, with bursts up to `messages`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Messages allowed per period (also the burst size).
    pub messages: u32,
    /// The period.
    pub per: Duration,
}

/// A token bucket on `tokio::time`. [`RateLimiter::acquire`] waits for a token (delays, never
/// drops); [`RateLimiter::take_if_available`] is for triggers, which never wait.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            tokens: f64::from(limit.messages.max(1)),
            last: Instant::now(),
        }
    }

    fn capacity(&self) -> f64 {
        f64::from(self.limit.messages.max(1))
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let per = self.limit.per.as_secs_f64().max(1e-9);
        self.tokens = (self.tokens + elapsed * self.capacity() / per).min(self.capacity());
    }

    /// How long until a token is available (zero when one is available now).
    pub fn wait_time(&mut self) -> Duration {
        self.refill();
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        let per = self.limit.per.as_secs_f64();
        let missing = 1.0 - self.tokens;
        Duration::from_secs_f64((missing * per / self.capacity()).max(0.0))
    }

    /// Waits until a token is available and takes it. Returns how long it waited.
    pub async fn acquire(&mut self) -> Duration {
        let mut waited = Duration::ZERO;
        loop {
            let wait = self.wait_time();
            if wait.is_zero() {
                self.tokens -= 1.0;
                return waited;
            }
            tokio::time::sleep(wait).await;
            waited += wait;
        }
    }

    /// Takes a token if one is available; never waits. Returns whether a token was taken.
    pub fn take_if_available(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{AccountState, MarginRatio, RiskEvent, RiskSnapshot, ShockDistance};
    use rust_decimal::Decimal;
    use rust_decimal_macros::dec;

    /// A journal entry for tests: `kind` for `account` at `time_ms` with margin ratio `ratio`.
    pub(crate) fn entry(
        seq: u64,
        kind: EventKind,
        account: &str,
        time_ms: i64,
        ratio: Decimal,
    ) -> JournalEntry {
        let level = match kind {
            EventKind::LiquidationTrigger => dec!(1.0),
            _ => dec!(0.8),
        };
        let event = RiskEvent {
            event_id: RiskEvent::new_id(),
            kind,
            time: crate::model::format_rfc3339_ms(time_ms),
            time_ms,
            account_id: Some(AccountId::from(account)),
            seq,
            level: Some(level),
            crossed_levels: vec![level],
            level_type: None,
            previous_state: Some(AccountState::Healthy),
            state: Some(AccountState::Warning { level }),
            snapshot: Some(Box::new(RiskSnapshot {
                equity: dec!(10000),
                maintenance_margin: dec!(10000) * ratio,
                margin_ratio: MarginRatio::Finite(ratio),
                free_margin: dec!(10000) - dec!(10000) * ratio,
                shock_distance: ShockDistance {
                    down: Some(dec!(-0.0512)),
                    up: None,
                    nearest: Some(dec!(-0.0512)),
                },
                liquidation_penalty: dec!(12.5),
                positions: vec![],
                collateral: vec![],
                liquidation_cost: None,
                funding: None,
                margin_call: None,
            })),
            prices: vec![],
            stale_prices: false,
            instrument_change: None,
            feed: None,
            risk: None,
        };
        let json = serde_json::to_string(&event).unwrap();
        JournalEntry { seq, event, json }
    }

    fn members(plan: &[PlannedMessage]) -> Vec<Vec<usize>> {
        plan.iter().map(|m| m.members.clone()).collect()
    }

    const W: EventKind = EventKind::LiquidationWarning;
    const T: EventKind = EventKind::LiquidationTrigger;
    const R: EventKind = EventKind::Recovered;

    /// Table: how batches are planned into singles and groups.
    #[test]
    fn plan_table() {
        let cfg = GroupConfig {
            window: Duration::from_secs(10),
            min_events: 3,
            top: 5,
        };
        type Case = (
            &'static str,
            Vec<(EventKind, &'static str, i64)>,
            Vec<Vec<usize>>,
        );
        let cases: Vec<Case> = vec![
            (
                "cascade of warnings is one group",
                vec![(W, "a", 0), (W, "b", 100), (W, "c", 200), (W, "d", 300)],
                vec![vec![0, 1, 2, 3]],
            ),
            (
                "too few warnings go one by one",
                vec![(W, "a", 0), (W, "b", 100)],
                vec![vec![0], vec![1]],
            ),
            (
                "a trigger in the middle is its own message, never grouped",
                vec![(W, "a", 0), (W, "b", 1), (T, "c", 2), (W, "d", 3)],
                vec![vec![0, 1, 3], vec![2]],
            ),
            (
                "window closes a group",
                vec![
                    (W, "a", 0),
                    (W, "b", 1),
                    (W, "c", 2),
                    (W, "d", 20_000),
                    (W, "e", 20_001),
                    (W, "f", 20_002),
                ],
                vec![vec![0, 1, 2], vec![3, 4, 5]],
            ),
            (
                "a trigger of a grouped account closes the group (order per account)",
                vec![
                    (W, "a", 0),
                    (W, "b", 1),
                    (W, "c", 2),
                    (T, "a", 3),
                    (W, "d", 4),
                ],
                vec![vec![0, 1, 2], vec![3], vec![4]],
            ),
            (
                "a warning after an ungrouped event of its account cannot be pulled ahead",
                vec![
                    (W, "a", 0),
                    (W, "b", 1),
                    (R, "x", 2),
                    (W, "x", 3),
                    (W, "c", 4),
                    (W, "d", 5),
                ],
                vec![vec![0], vec![1], vec![2], vec![3, 4, 5]],
            ),
        ];
        for (name, spec, want) in cases {
            let batch: Vec<JournalEntry> = spec
                .iter()
                .enumerate()
                .map(|(i, (k, a, t))| entry(i as u64 + 1, *k, a, *t, dec!(0.85)))
                .collect();
            let got = members(&plan(&batch, Some(&cfg)));
            assert_eq!(got, want, "{name}");
            // Every entry is covered exactly once.
            let mut all: Vec<usize> = got.concat();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..batch.len()).collect::<Vec<_>>(),
                "{name}: coverage"
            );
            // Per account, messages go in journal order.
            let mut pos = vec![0usize; batch.len()];
            for (m, msg) in got.iter().enumerate() {
                for &i in msg {
                    pos[i] = m;
                }
            }
            for i in 0..batch.len() {
                for j in i + 1..batch.len() {
                    if batch[i].event.account_id == batch[j].event.account_id {
                        assert!(pos[i] <= pos[j], "{name}: order of {i} and {j}");
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// On any batch: every entry is in exactly one message, only warnings are ever grouped,
        /// groups meet the minimum, and each account's entries go out in journal order.
        #[test]
        fn plan_invariants(spec in proptest::collection::vec((0u8..4, 0u8..5, 0i64..4000), 0..60)) {
            let cfg = GroupConfig { window: Duration::from_secs(5), min_events: 3, top: 5 };
            let mut t = 0i64;
            let batch: Vec<JournalEntry> = spec.iter().enumerate().map(|(i, (k, a, dt))| {
                t += dt;
                let kind = match k { 0 | 1 => W, 2 => T, _ => R };
                entry(i as u64, kind, &format!("a{a}"), t, dec!(0.9))
            }).collect();
            let planned = plan(&batch, Some(&cfg));
            let mut owner = vec![usize::MAX; batch.len()];
            for (m, msg) in planned.iter().enumerate() {
                proptest::prop_assert!(!msg.members.is_empty());
                if msg.is_group() {
                    proptest::prop_assert!(msg.members.len() >= 3);
                    for &i in &msg.members {
                        proptest::prop_assert_eq!(batch[i].event.kind, W);
                    }
                }
                for &i in &msg.members {
                    proptest::prop_assert_eq!(owner[i], usize::MAX, "entry in two messages");
                    owner[i] = m;
                }
            }
            proptest::prop_assert!(owner.iter().all(|&o| o != usize::MAX), "entry lost");
            for i in 0..batch.len() {
                for j in i + 1..batch.len() {
                    if batch[i].event.account_id == batch[j].event.account_id {
                        proptest::prop_assert!(owner[i] <= owner[j], "order of {} and {}", i, j);
                    }
                }
            }
        }
    }

    /// Without grouping every entry is its own message.
    #[test]
    fn no_group_config_means_singles() {
        let batch: Vec<JournalEntry> = (0..4)
            .map(|i| entry(i, W, &format!("a{i}"), 0, dec!(0.9)))
            .collect();
        assert_eq!(
            members(&plan(&batch, None)),
            vec![vec![0], vec![1], vec![2], vec![3]]
        );
    }

    /// The delivered prefix only advances over contiguous accepted entries.
    #[test]
    fn prefix_tracker_counts_leading_done() {
        let mut t = PrefixTracker::new(5);
        assert_eq!(t.mark(&[0, 2, 4]), 1);
        assert_eq!(t.mark(&[3]), 1);
        assert_eq!(t.mark(&[1]), 5);
        assert_eq!(t.prefix(), 5);
    }

    /// The limiter lets a burst through, then delays (never drops) at the configured rate.
    #[tokio::test(start_paused = true)]
    async fn rate_limiter_delays_after_burst() {
        let mut rl = RateLimiter::new(RateLimit {
            messages: 2,
            per: Duration::from_secs(10),
        });
        let start = Instant::now();
        assert_eq!(rl.acquire().await, Duration::ZERO);
        assert_eq!(rl.acquire().await, Duration::ZERO);
        let waited = rl.acquire().await;
        assert!(waited >= Duration::from_millis(4_999), "waited {waited:?}");
        assert!(Instant::now() - start >= Duration::from_secs(5));
        // A trigger never waits: no token now, so it goes without taking one.
        assert!(!rl.take_if_available());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(rl.take_if_available());
    }
}
