//! The bounded per-account history behind the risk page's drill-down chart and "last event"
//! column: for at most `max_accounts` accounts, up to `max_points` downsampled snapshots
//! (equity, maintenance margin, ratio) and the last journaled event.
//!
//! Kept in memory, filled from the committed events, the daemon's periodic sampling of accounts
//! at risk or being watched, and every account view the API serves. When persistence is on
//! ([`HistoryStore::persist`]), kept points are also queued for the journal, downsampled more
//! coarsely (one per account per persist spacing, plus every event's point)
//! ([`HistoryStore::take_unsaved`]; the daemon writes the queue in batches off the engine's
//! path, `crate::journal::history`) and the store is refilled from the journal at start
//! ([`HistoryStore::restore`]), so the chart survives a restart. Downsampling: points closer than `min_spacing_ms` replace
//! the previous one; when an account's ring is full, every other point of its older half is
//! dropped, so the recent past stays at full resolution and the distant past thins out.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::Mutex;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::model::{AccountId, EventKind, MarginRatio, RiskSnapshot, TimestampMs};

/// One sample of an account's risk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// When, ms since the epoch.
    pub t_ms: TimestampMs,
    /// Equity (USD).
    pub equity: Decimal,
    /// Maintenance margin (USD).
    pub maintenance_margin: Decimal,
    /// MM / equity.
    pub margin_ratio: MarginRatio,
}

impl HistoryPoint {
    /// The point of a snapshot taken at `t_ms`.
    pub fn of(snapshot: &RiskSnapshot, t_ms: TimestampMs) -> HistoryPoint {
        HistoryPoint {
            t_ms,
            equity: snapshot.equity,
            maintenance_margin: snapshot.maintenance_margin,
            margin_ratio: snapshot.margin_ratio,
        }
    }
}

/// The last journaled event of an account, as the accounts table shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastEvent {
    /// Journal sequence.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// When it was detected, ms since the epoch.
    pub time_ms: TimestampMs,
    /// The level crossed, if any.
    #[serde(default)]
    pub level: Option<Decimal>,
}

#[derive(Default)]
struct Entry {
    points: VecDeque<HistoryPoint>,
    last_event: Option<LastEvent>,
    /// Last time the API was asked about this account (0 = never): watched accounts are sampled.
    watched_ms: TimestampMs,
    /// Last write or read, for eviction.
    used_ms: TimestampMs,
    /// Time of the last point queued for (or restored from) the journal; 0 = none.
    saved_ms: TimestampMs,
}

/// The store (one per daemon, shared by the API backend and the sampler).
pub struct HistoryStore {
    inner: Mutex<HashMap<AccountId, Entry>>,
    max_accounts: usize,
    max_points: usize,
    min_spacing_ms: i64,
    /// Spacing of the points queued for the journal per account, ms; negative: not queued.
    persist_spacing_ms: AtomicI64,
    /// Points kept since the last [`HistoryStore::take_unsaved`], oldest first (bounded).
    unsaved: Mutex<VecDeque<(AccountId, HistoryPoint)>>,
}

/// Most points queued for the journal; past it the oldest queued point is dropped (and
/// counted in `liqwatch_history_unsaved_dropped_total`): only when the journal cannot keep up.
pub const MAX_UNSAVED_POINTS: usize = 100_000;

/// Default number of accounts with a history.
pub const DEFAULT_HISTORY_ACCOUNTS: usize = 2_000;
/// Default points per account.
pub const DEFAULT_HISTORY_POINTS: usize = 720;
/// Default minimum spacing of two points, ms.
pub const DEFAULT_HISTORY_SPACING_MS: i64 = 1_000;

impl Default for HistoryStore {
    fn default() -> Self {
        HistoryStore::new(
            DEFAULT_HISTORY_ACCOUNTS,
            DEFAULT_HISTORY_POINTS,
            DEFAULT_HISTORY_SPACING_MS,
        )
    }
}

impl HistoryStore {
    /// A store for `max_accounts` accounts of `max_points` points (at least 4) each.
    pub fn new(max_accounts: usize, max_points: usize, min_spacing_ms: i64) -> HistoryStore {
        HistoryStore {
            inner: Mutex::new(HashMap::new()),
            max_accounts: max_accounts.max(1),
            max_points: max_points.max(4),
            min_spacing_ms,
            persist_spacing_ms: AtomicI64::new(-1),
            unsaved: Mutex::new(VecDeque::new()),
        }
    }

    /// The most accounts it keeps a history for.
    pub fn max_accounts(&self) -> usize {
        self.max_accounts
    }

    /// The accounts it keeps a history for, in no order.
    pub fn accounts(&self) -> Vec<AccountId> {
        self.inner.lock().keys().cloned().collect()
    }

    /// From now on queues kept points for the journal ([`HistoryStore::take_unsaved`]): an
    /// account's point when at least `spacing_ms` has passed since its last queued one, and
    /// every point an event carried.
    pub fn persist(&self, spacing_ms: i64) {
        self.persist_spacing_ms
            .store(spacing_ms.max(0), Ordering::SeqCst);
    }

    /// Whether `point`, just kept for `e`, goes to the journal (`event`: an event's point);
    /// marks it queued.
    fn to_save(&self, e: &mut Entry, t_ms: TimestampMs, event: bool) -> bool {
        let spacing = self.persist_spacing_ms.load(Ordering::Relaxed);
        if spacing < 0 || !(event || e.saved_ms == 0 || t_ms.saturating_sub(e.saved_ms) >= spacing)
        {
            return false;
        }
        e.saved_ms = e.saved_ms.max(t_ms);
        true
    }

    /// The points kept since the last call, oldest first, for the journal.
    pub fn take_unsaved(&self) -> Vec<(AccountId, HistoryPoint)> {
        self.unsaved.lock().drain(..).collect()
    }

    /// Puts back a batch the journal could not write (ahead of newer points, within the bound).
    pub fn requeue(&self, batch: Vec<(AccountId, HistoryPoint)>) {
        let mut q = self.unsaved.lock();
        let room = MAX_UNSAVED_POINTS.saturating_sub(q.len());
        let skip = batch.len().saturating_sub(room);
        if skip > 0 {
            metrics::counter!("liqwatch_history_unsaved_dropped_total").increment(skip as u64);
        }
        for p in batch.into_iter().skip(skip).rev() {
            q.push_front(p);
        }
    }

    fn queue(&self, id: &AccountId, point: HistoryPoint) {
        let mut q = self.unsaved.lock();
        if q.len() >= MAX_UNSAVED_POINTS {
            q.pop_front();
            metrics::counter!("liqwatch_history_unsaved_dropped_total").increment(1);
        }
        q.push_back((id.clone(), point));
    }

    /// Refills the store from points read back from the journal (oldest first per account);
    /// they are not queued again.
    pub fn restore(&self, id: &AccountId, point: HistoryPoint) {
        let mut map = self.inner.lock();
        let (max, spacing) = (self.max_points, self.min_spacing_ms);
        let e = self.entry(&mut map, id);
        e.used_ms = e.used_ms.max(point.t_ms);
        e.saved_ms = e.saved_ms.max(point.t_ms);
        push_point(&mut e.points, point, max, spacing);
    }

    /// The entry of `id`, evicting the least recently used account when full.
    fn entry<'a>(&self, map: &'a mut HashMap<AccountId, Entry>, id: &AccountId) -> &'a mut Entry {
        if !map.contains_key(id) && map.len() >= self.max_accounts {
            let victim = map
                .iter()
                .min_by_key(|(_, e)| e.used_ms)
                .map(|(k, _)| k.clone());
            if let Some(v) = victim {
                map.remove(&v);
            }
        }
        map.entry(id.clone()).or_default()
    }

    /// Adds a point (downsampled, bounded).
    pub fn record(&self, id: &AccountId, point: HistoryPoint) {
        let mut map = self.inner.lock();
        let max = self.max_points;
        let spacing = self.min_spacing_ms;
        let e = self.entry(&mut map, id);
        e.used_ms = e.used_ms.max(point.t_ms);
        let t = point.t_ms;
        let save =
            push_point(&mut e.points, point.clone(), max, spacing) && self.to_save(e, t, false);
        drop(map);
        if save {
            self.queue(id, point);
        }
    }

    /// Records a journaled event (and the snapshot it carried, as a point).
    pub fn record_event(&self, id: &AccountId, event: LastEvent, point: Option<HistoryPoint>) {
        let mut map = self.inner.lock();
        let max = self.max_points;
        let spacing = self.min_spacing_ms;
        let e = self.entry(&mut map, id);
        e.used_ms = e.used_ms.max(event.time_ms);
        if e.last_event.as_ref().is_none_or(|l| l.seq < event.seq) {
            e.last_event = Some(event);
        }
        if let Some(p) = point {
            let t = p.t_ms;
            let save =
                push_point(&mut e.points, p.clone(), max, spacing) && self.to_save(e, t, true);
            drop(map);
            if save {
                self.queue(id, p);
            }
        }
    }

    /// Marks `id` as watched (someone opened it) at `now_ms`.
    pub fn watch(&self, id: &AccountId, now_ms: TimestampMs) {
        let mut map = self.inner.lock();
        let e = self.entry(&mut map, id);
        e.watched_ms = now_ms;
        e.used_ms = e.used_ms.max(now_ms);
    }

    /// Accounts watched at or after `since_ms`.
    pub fn watched_since(&self, since_ms: TimestampMs) -> Vec<AccountId> {
        self.inner
            .lock()
            .iter()
            .filter(|(_, e)| e.watched_ms > 0 && e.watched_ms >= since_ms)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The points of `id`, oldest first.
    pub fn points(&self, id: &AccountId) -> Vec<HistoryPoint> {
        self.inner
            .lock()
            .get(id)
            .map(|e| e.points.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The last event of `id`.
    pub fn last_event(&self, id: &AccountId) -> Option<LastEvent> {
        self.inner.lock().get(id).and_then(|e| e.last_event.clone())
    }

    /// Forgets `id` (the account was removed).
    pub fn forget(&self, id: &AccountId) {
        self.inner.lock().remove(id);
    }

    /// Accounts with an entry.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// True when no account has an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Adds `p` to the ring; false when it was dropped (older than the last point).
fn push_point(
    points: &mut VecDeque<HistoryPoint>,
    p: HistoryPoint,
    max: usize,
    spacing: i64,
) -> bool {
    let len = points.len();
    if let Some(last) = points.back_mut() {
        if p.t_ms < last.t_ms {
            return false; // late sample: the chart is in time order
        }
        // Replace a close last point, but never the first (the chart's start).
        if p.t_ms.saturating_sub(last.t_ms) < spacing && len > 1 {
            *last = p;
            return true;
        }
    }
    if points.len() >= max {
        // Thin the older half: keep every other point of it.
        let half = points.len() / 2;
        let mut idx = 0usize;
        points.retain(|_| {
            let keep = idx >= half || idx.is_multiple_of(2);
            idx += 1;
            keep
        });
    }
    points.push_back(p);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(t: i64) -> HistoryPoint {
        HistoryPoint {
            t_ms: t,
            equity: Decimal::from(t),
            maintenance_margin: Decimal::ONE,
            margin_ratio: MarginRatio::Finite(Decimal::ONE),
        }
    }

    /// The ring never exceeds its bound, keeps time order, keeps the newest point, and spans
    /// the whole past (the first point survives thinning).
    #[test]
    fn bounded_and_downsampled() {
        let s = HistoryStore::new(10, 16, 1_000);
        let id = AccountId::from("a");
        for t in 0..1_000 {
            s.record(&id, pt(t * 1_000));
        }
        let p = s.points(&id);
        assert!(p.len() <= 16, "{}", p.len());
        assert!(p.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
        assert_eq!(p.last().map(|x| x.t_ms), Some(999_000));
        assert_eq!(p.first().map(|x| x.t_ms), Some(0));
    }

    /// Points closer than the spacing replace the last one; late points are dropped.
    #[test]
    fn spacing_and_order() {
        let s = HistoryStore::new(10, 16, 1_000);
        let id = AccountId::from("a");
        for t in [0, 1_000, 1_500, 1_900, 500] {
            s.record(&id, pt(t));
        }
        let ts: Vec<i64> = s.points(&id).iter().map(|p| p.t_ms).collect();
        assert_eq!(ts, vec![0, 1_900]);
    }

    /// The least recently used account is evicted when full; the newest event wins.
    #[test]
    fn eviction_and_last_event() {
        let s = HistoryStore::new(2, 8, 0);
        let (a, b, c) = (
            AccountId::from("a"),
            AccountId::from("b"),
            AccountId::from("c"),
        );
        s.record(&a, pt(1));
        s.record(&b, pt(2));
        s.record(&c, pt(3));
        assert_eq!(s.len(), 2);
        assert!(s.points(&a).is_empty());
        let ev = |seq, kind| LastEvent {
            seq,
            kind,
            time_ms: 10,
            level: None,
        };
        s.record_event(&b, ev(5, EventKind::LiquidationTrigger), None);
        s.record_event(&b, ev(4, EventKind::LiquidationWarning), None);
        assert_eq!(
            s.last_event(&b).map(|e| e.kind),
            Some(EventKind::LiquidationTrigger)
        );
        s.watch(&c, 50);
        assert_eq!(s.watched_since(40), vec![c.clone()]);
        assert!(s.watched_since(60).is_empty());
    }

    /// With persistence on, kept points (appended or replacing) are queued in order when the
    /// persist spacing has passed, event points always, late ones never; restored points are
    /// not queued again; a failed batch goes back ahead of newer points.
    #[test]
    fn unsaved_queue() {
        let s = HistoryStore::new(10, 16, 1_000);
        let id = AccountId::from("a");
        s.record(&id, pt(0));
        assert!(s.take_unsaved().is_empty(), "off by default");
        s.persist(0);
        s.restore(&id, pt(1_000));
        for t in [2_000, 2_500, 1_500, 4_000] {
            s.record(&id, pt(t));
        }
        let ts =
            |v: &[(AccountId, HistoryPoint)]| v.iter().map(|(_, p)| p.t_ms).collect::<Vec<_>>();
        let batch = s.take_unsaved();
        assert_eq!(ts(&batch), vec![2_000, 2_500, 4_000]);
        let pts: Vec<i64> = s.points(&id).iter().map(|p| p.t_ms).collect();
        assert_eq!(pts, vec![0, 1_000, 2_500, 4_000]);
        s.record(&id, pt(9_000));
        s.requeue(batch);
        assert_eq!(ts(&s.take_unsaved()), vec![2_000, 2_500, 4_000, 9_000]);

        // Coarser for the journal: one point per 10 s, plus every event's.
        s.persist(10_000);
        for t in [10_000, 15_000, 19_500, 20_000] {
            s.record(&id, pt(t));
        }
        let ev = LastEvent {
            seq: 1,
            kind: EventKind::LiquidationWarning,
            time_ms: 21_000,
            level: None,
        };
        s.record_event(&id, ev, Some(pt(21_000)));
        // The last queued point was at 9 s: 19.5 s is the first 10 s after it.
        assert_eq!(ts(&s.take_unsaved()), vec![19_500, 21_000]);
    }
}
