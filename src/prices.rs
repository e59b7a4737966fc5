//! Price board: the latest accepted price per instrument and venue, the composite price the
//! engine uses, data freshness (staleness) and price sanity.
//!
//! The feed drivers [`publish`](PriceBoard::publish) every [`PriceTick`]; the engine waits on
//! [`changed`](PriceBoard::changed) and receives the instruments whose composite price (or stale
//! flag) changed since it last asked, each with its current [`Composite`]. Latest value wins: a
//! slow engine sees fewer, fresher prices, never a queue of old ones, and a feed never waits for
//! the engine (publishing takes one short uncontended lock and at most one `Notify`).
//!
//! ```text
//!   feeds ──publish(tick)──▶ PriceBoard ──changed().await──▶ engine: Vec<(InstrumentId, Composite)>
//!                                │
//!   daemon ──check_staleness(now) every ~250 ms──▶ Vec<StaleTransition> ──▶ feed_stale / feed_restored
//! ```
//!
//! API used by the daemon:
//! - [`PriceBoard::new`]`(cfg)`, then [`PriceBoard::track`] for every instrument that must have
//!   a price (so an instrument that never receives one goes stale too);
//! - [`PriceBoard::publish`]`(tick) -> `[`PublishOutcome`];
//! - `async` [`PriceBoard::changed`]` -> Vec<(InstrumentId, Composite)>` (one consumer);
//! - [`PriceBoard::composite`]`(&id) -> Option<Composite>`;
//! - [`PriceBoard::check_staleness`]`(now) -> Vec<StaleTransition>`, and
//!   [`StaleTransition::to_event`] to build the `feed_stale` / `feed_restored` [`RiskEvent`];
//! - [`PriceBoard::status`]` -> Vec<InstrumentStatus>` for the API.
//!
//! **Sanity.** A price that is zero or negative is rejected (never accepted). A price that moves
//! more than its spike fraction (the instrument's, else the venue's, else `spike_fraction`) away
//! from the reference (this venue's last accepted price, else the instrument's current
//! composite) is *held* and counted; it is accepted when another venue's price (accepted or
//! held) confirms it, or when the same venue keeps quoting it for `spike_confirm_frames` ticks
//! or for `spike_confirm_after` — the rule is written out in [`spike`]. A later tick close to
//! the old reference discards the held spike.
//!
//! **Staleness (data freshness).** Only accepted prices count: a source (instrument, venue) is
//! fresh while its last accepted price is younger than its limit: the instrument's
//! `instrument_stale_after` if set, else the venue's `venue_stale_after` (per feed), else the
//! default `stale_after`. An instrument with no fresh source is stale (one never priced goes
//! stale after the longest limit of its sources):
//! [`check_staleness`](PriceBoard::check_staleness) reports the transition once
//! (`feed_stale`), and `feed_restored` once a fresh price returns. Transport liveness (pings,
//! pongs, dead peers) is the feed driver's business and never makes a price fresh. Time is
//! `tokio::time::Instant`, so tests can pause it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use metrics::{counter, gauge};
use parking_lot::Mutex;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::model::{
    EventKind, FeedEventInfo, InstrumentId, PriceTick, PriceUsed, RiskEvent, TimestampMs, Venue,
    format_rfc3339_ms,
};

/// At most this many venues price one instrument (one slot per [`Venue`]).
const MAX_VENUES: usize = Venue::ALL.len();

/// How the composite price of an instrument is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
pub enum CompositeMode {
    /// The median of the venues whose price is fresh (mean of the two middle ones for an even
    /// count). Config: `composite = "median"`.
    #[default]
    Median,
    /// This venue while it is fresh; otherwise the median of the other fresh venues.
    /// Config: `composite = "binance-usdm"` (any venue name).
    Venue(Venue),
}

impl<'de> Deserialize<'de> for CompositeMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s == "median" {
            return Ok(CompositeMode::Median);
        }
        Venue::parse(&s).map(CompositeMode::Venue).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "composite {s:?}: expected \"median\" or a venue name ({})",
                Venue::NAMES.join(", ")
            ))
        })
    }
}

fn default_stale_after() -> Duration {
    Duration::from_secs(30)
}

fn default_spike_fraction() -> Decimal {
    Decimal::new(2, 1)
}

/// Price board configuration (TOML table `[prices]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceBoardConfig {
    /// How the composite price is chosen (`"median"` or a venue name). Default median.
    #[serde(default)]
    pub composite: CompositeMode,
    /// Default data-freshness limit per instrument (`"30s"`).
    #[serde(default = "default_stale_after", with = "humantime_serde")]
    pub stale_after: Duration,
    /// Per-instrument freshness limits; they override the venue limits for that instrument
    /// (`{ "BTCUSDT-PERP" = "10s" }`).
    #[serde(default)]
    pub instrument_stale_after: BTreeMap<InstrumentId, humantime_serde::Serde<Duration>>,
    /// Per-venue (per-feed) freshness limits, overriding `stale_after` for that venue's prices
    /// (`{ okx = "20s" }`).
    #[serde(default)]
    pub venue_stale_after: BTreeMap<Venue, humantime_serde::Serde<Duration>>,
    /// A move larger than this fraction of the reference price is held until confirmed
    /// (`"0.2"` = 20 %).
    #[serde(default = "default_spike_fraction", with = "rust_decimal::serde::str")]
    pub spike_fraction: Decimal,
    /// Per-instrument spike fractions, winning over the venue's and the global one
    /// (`{ "DOGEUSDT-PERP" = "0.8" }`). See [`spike`] for the rule.
    #[serde(default)]
    pub instrument_spike_fraction: BTreeMap<InstrumentId, spike::Fraction>,
    /// Per-venue spike fractions, winning over the global one (`{ hyperliquid = "0.5" }`).
    #[serde(default)]
    pub venue_spike_fraction: BTreeMap<Venue, spike::Fraction>,
    /// Consecutive ticks of one venue near a held price that accept it (the held one
    /// included). Default 2; 1 accepts every jump at once.
    #[serde(default = "spike::default_confirm_frames")]
    pub spike_confirm_frames: u32,
    /// A held price the same venue still quotes this long after it was first held is accepted,
    /// however few frames came. Default: off.
    #[serde(default, with = "humantime_serde")]
    pub spike_confirm_after: Option<Duration>,
    /// Instruments whose staleness is watched even when no account holds them
    /// (`["BTCUSDT-PERP"]`). Held instruments are always watched; others are not (no
    /// `feed_stale` noise for instruments nobody holds).
    #[serde(default)]
    pub watch: Vec<InstrumentId>,
}

impl Default for PriceBoardConfig {
    fn default() -> Self {
        PriceBoardConfig {
            composite: CompositeMode::Median,
            stale_after: default_stale_after(),
            instrument_stale_after: BTreeMap::new(),
            venue_stale_after: BTreeMap::new(),
            spike_fraction: default_spike_fraction(),
            instrument_spike_fraction: BTreeMap::new(),
            venue_spike_fraction: BTreeMap::new(),
            spike_confirm_frames: spike::default_confirm_frames(),
            spike_confirm_after: None,
            watch: Vec::new(),
        }
    }
}

/// What happened to a published tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Accepted as the venue's latest price.
    Accepted,
    /// A held spike was confirmed (by this tick or by another venue) and accepted.
    Confirmed,
    /// Moved more than `spike_fraction` from the reference: held until confirmed.
    Held,
    /// Zero or negative: rejected.
    Rejected,
    /// Older (by exchange timestamp) than the venue's last accepted price: dropped.
    OutOfOrder,
}

/// The price the engine uses for one instrument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Composite {
    /// The price.
    pub price: Decimal,
    /// Where it came from: `binance-usdm`, `median(binance-usdm,okx)`.
    pub source: String,
    /// When the newest contributing price was received (ms since epoch).
    pub received_ts: TimestampMs,
    /// Age of the newest contributing price, ms.
    pub age_ms: i64,
    /// True when no source of the instrument is fresh (the price is the last one known).
    pub stale: bool,
    /// When the board accepted the newest contributing price (monotonic, µs resolution: the
    /// start of the engine's tick-to-event latency).
    #[serde(skip)]
    pub received_at: Instant,
}

impl Composite {
    /// This composite as the [`PriceUsed`] carried in risk events.
    pub fn price_used(&self, instrument: &InstrumentId) -> PriceUsed {
        PriceUsed {
            instrument: instrument.clone(),
            price: self.price,
            source: self.source.clone().into(),
            received_ts: self.received_ts,
            age_ms: self.age_ms,
            stale: self.stale,
        }
    }
}

/// A stale/restored transition of one instrument, for the daemon to turn into a [`RiskEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleTransition {
    /// [`EventKind::FeedStale`] or [`EventKind::FeedRestored`].
    pub kind: EventKind,
    /// Per-instrument sequence number of feed events, 1, 2, 3, …
    pub seq: u64,
    /// Details for the event.
    pub info: FeedEventInfo,
}

impl StaleTransition {
    /// Builds the `feed_stale` / `feed_restored` event at wall-clock time `time_ms`.
    pub fn to_event(&self, time_ms: TimestampMs) -> RiskEvent {
        RiskEvent {
            event_id: RiskEvent::new_id(),
            kind: self.kind,
            time: format_rfc3339_ms(time_ms),
            time_ms,
            account_id: None,
            seq: self.seq,
            level: None,
            crossed_levels: Vec::new(),
            level_type: None,
            previous_state: None,
            state: None,
            snapshot: None,
            prices: Vec::new(),
            stale_prices: self.kind == EventKind::FeedStale,
            instrument_change: None,
            feed: Some(Box::new(self.info.clone())),
            risk: None,
        }
    }
}

/// One venue's view of one instrument, for the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    /// The venue.
    pub venue: Venue,
    /// Last accepted price.
    pub last_price: Option<Decimal>,
    /// Last index price seen with it.
    pub last_index: Option<Decimal>,
    /// When it was received (ms since epoch).
    pub received_ts: Option<TimestampMs>,
    /// Its age, ms.
    pub age_ms: Option<i64>,
    /// True when this source is not fresh.
    pub stale: bool,
    /// A price held as a possible spike, awaiting confirmation.
    pub held_price: Option<Decimal>,
}

/// One instrument's state on the board, for the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstrumentStatus {
    /// The instrument.
    pub instrument: InstrumentId,
    /// Its composite price, if any price was ever accepted.
    pub composite: Option<Composite>,
    /// True when no source is fresh.
    pub stale: bool,
    /// Its freshness limit, ms.
    pub stale_after_ms: i64,
    /// Per venue.
    pub sources: Vec<SourceStatus>,
}

#[derive(Clone, Debug)]
struct Accepted {
    price: Decimal,
    index: Option<Decimal>,
    exchange_ts: Option<TimestampMs>,
    received_ts: TimestampMs,
    at: Instant,
}

#[derive(Clone, Debug)]
struct Held {
    price: Decimal,
    index: Option<Decimal>,
    exchange_ts: Option<TimestampMs>,
    received_ts: TimestampMs,
    at: Instant,
    /// Ticks of this venue near the held price so far (the first included).
    count: u32,
    /// When the jump was first held.
    since: Instant,
}

#[derive(Clone, Debug)]
struct Slot {
    venue: Venue,
    accepted: Option<Accepted>,
    held: Option<Held>,
}

#[derive(Debug)]
struct InstState {
    slots: Vec<Slot>,
    /// Per-instrument override of every source's freshness limit.
    override_limit: Option<Duration>,
    /// Per-instrument spike fraction (`instrument_spike_fraction`).
    spike_override: Option<Decimal>,
    tracked_at: Instant,
    stale: bool,
    restored_pending: bool,
    dirty: bool,
    feed_seq: u64,
    /// Composite price last handed to the engine (or computed at the last publish).
    last_composite: Option<Decimal>,
}

#[derive(Debug, Default)]
struct Inner {
    instruments: HashMap<InstrumentId, InstState>,
    dirty: Vec<InstrumentId>,
}

/// The price board. Share it as `Arc<PriceBoard>`; every method takes `&self`.
pub struct PriceBoard {
    cfg: PriceBoardConfig,
    venue_limits: [Option<Duration>; MAX_VENUES],
    venue_spikes: [Option<Decimal>; MAX_VENUES],
    inner: Mutex<Inner>,
    notify: Notify,
    /// Which instruments are watched for staleness (`watch`).
    watch: Mutex<watch::WatchState>,
    /// Latest funding per instrument ([`funding`]).
    funding: funding::FundingBoard,
}

impl fmt::Debug for PriceBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriceBoard")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn venue_idx(v: Venue) -> usize {
    Venue::ALL.iter().position(|x| *x == v).unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `|a − b| / |b| > fraction`, exact; a zero reference counts as a jump.
fn jumps(a: Decimal, reference: Decimal, fraction: Decimal) -> bool {
    if reference.is_zero() {
        return true;
    }
    let diff = match a.checked_sub(reference) {
        Some(d) => d.abs(),
        None => return true,
    };
    match reference.abs().checked_mul(fraction) {
        Some(limit) => diff > limit,
        None => false,
    }
}

/// Median of a non-empty slice (sorted in place); `None` on overflow.
fn median(prices: &mut [Decimal]) -> Option<Decimal> {
    prices.sort_unstable();
    let n = prices.len();
    if n == 0 {
        return None;
    }
    if n % 2 == 1 {
        Some(prices[n / 2])
    } else {
        prices[n / 2 - 1]
            .checked_add(prices[n / 2])
            .and_then(|s| s.checked_div(Decimal::TWO))
    }
}

impl PriceBoard {
    /// An empty board.
    pub fn new(cfg: PriceBoardConfig) -> PriceBoard {
        let mut venue_limits = [None; MAX_VENUES];
        for (v, d) in &cfg.venue_stale_after {
            venue_limits[venue_idx(*v)] = Some(**d);
        }
        let mut venue_spikes = [None; MAX_VENUES];
        for (v, f) in &cfg.venue_spike_fraction {
            venue_spikes[venue_idx(*v)] = Some(f.0);
        }
        PriceBoard {
            cfg,
            venue_limits,
            venue_spikes,
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            watch: Mutex::new(watch::WatchState::default()),
            funding: funding::FundingBoard::default(),
        }
    }

    /// The latest funding rate and next funding time per instrument (the feeds publish to it).
    pub fn funding(&self) -> &funding::FundingBoard {
        &self.funding
    }

    /// The configuration.
    pub fn config(&self) -> &PriceBoardConfig {
        &self.cfg
    }

    /// Freshness limit of one source: the instrument's override, else the venue's, else the
    /// default.
    fn source_limit(&self, st: &InstState, venue: Venue) -> Duration {
        st.override_limit
            .or(self.venue_limits[venue_idx(venue)])
            .unwrap_or(self.cfg.stale_after)
    }

    /// The instrument's limit: how long it may go without any fresh price (the longest of its
    /// sources' limits).
    fn inst_limit(&self, st: &InstState) -> Duration {
        if let Some(d) = st.override_limit {
            return d;
        }
        st.slots
            .iter()
            .map(|s| self.source_limit(st, s.venue))
            .max()
            .unwrap_or(self.cfg.stale_after)
    }

    fn new_state(&self, id: &InstrumentId, now: Instant) -> InstState {
        InstState {
            slots: Vec::with_capacity(2),
            override_limit: self.cfg.instrument_stale_after.get(id).map(|d| **d),
            spike_override: self.cfg.instrument_spike_fraction.get(id).map(|f| f.0),
            tracked_at: now,
            stale: false,
            restored_pending: false,
            dirty: false,
            feed_seq: 0,
            last_composite: None,
        }
    }

    /// Registers an instrument that must have a price, with the venues expected to price it.
    /// Its freshness clock starts now: with no price within `stale_after` it goes stale.
    pub fn track(&self, id: &InstrumentId, venues: &[Venue]) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let st = inner
            .instruments
            .entry(id.clone())
            .or_insert_with(|| self.new_state(id, now));
        for v in venues {
            if !st.slots.iter().any(|s| s.venue == *v) {
                st.slots.push(Slot {
                    venue: *v,
                    accepted: None,
                    held: None,
                });
            }
        }
    }

    /// Publishes one tick, received now.
    pub fn publish(&self, tick: PriceTick) -> PublishOutcome {
        self.publish_at(tick, Instant::now())
    }

    /// Publishes one tick received at `now` (tests and replays pass their own clock).
    pub fn publish_at(&self, tick: PriceTick, now: Instant) -> PublishOutcome {
        if tick.price <= Decimal::ZERO {
            counter!("liqwatch_prices_rejected_total", "venue" => tick.venue.as_str(), "reason" => "non_positive").increment(1);
            tracing::warn!(venue = %tick.venue, instrument = %tick.instrument, price = %tick.price, "Price rejected: not positive");
            return PublishOutcome::Rejected;
        }
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let st = match inner.instruments.get_mut(&tick.instrument) {
            Some(st) => st,
            None => {
                let fresh = self.new_state(&tick.instrument, now);
                inner
                    .instruments
                    .entry(tick.instrument.clone())
                    .or_insert(fresh)
            }
        };
        let si = match st.slots.iter().position(|s| s.venue == tick.venue) {
            Some(i) => i,
            None => {
                st.slots.push(Slot {
                    venue: tick.venue,
                    accepted: None,
                    held: None,
                });
                st.slots.len() - 1
            }
        };

        let spike = st
            .spike_override
            .or(self.venue_spikes[venue_idx(tick.venue)])
            .unwrap_or(self.cfg.spike_fraction);
        // Drop ticks that go back in time on this venue.
        if let (Some(acc), Some(ts)) = (&st.slots[si].accepted, tick.exchange_ts)
            && acc.exchange_ts.is_some_and(|prev| ts < prev)
        {
            return PublishOutcome::OutOfOrder;
        }

        let reference = match &st.slots[si].accepted {
            Some(acc) => Some(acc.price),
            None => st.last_composite,
        };
        let accepted_now = Accepted {
            price: tick.price,
            index: tick.index,
            exchange_ts: tick.exchange_ts,
            received_ts: tick.received_ts,
            at: now,
        };
        let outcome = match reference {
            Some(r) if jumps(tick.price, r, spike) => {
                // The same venue persisting near its held price (N frames or T; see `spike`)?
                let (count, since) = match &st.slots[si].held {
                    Some(h) if !jumps(tick.price, h.price, spike) => {
                        (h.count.saturating_add(1), h.since)
                    }
                    _ => (1, now),
                };
                let same_venue = spike::persists(&self.cfg, count, since, now);
                // Or by another venue's accepted (fresh) or held price near this one?
                let mut other_confirms = false;
                for (j, s) in st.slots.iter().enumerate() {
                    if j == si {
                        continue;
                    }
                    let lim = self.source_limit(st, s.venue);
                    let acc_ok = s.accepted.as_ref().is_some_and(|a| {
                        now.saturating_duration_since(a.at) <= lim
                            && !jumps(tick.price, a.price, spike)
                    });
                    let held_ok = s
                        .held
                        .as_ref()
                        .is_some_and(|h| !jumps(tick.price, h.price, spike));
                    if acc_ok || held_ok {
                        other_confirms = true;
                    }
                }
                if same_venue || other_confirms {
                    st.slots[si].held = None;
                    st.slots[si].accepted = Some(accepted_now);
                    // Promote other venues' held prices that this one confirms.
                    for (j, s) in st.slots.iter_mut().enumerate() {
                        if j == si {
                            continue;
                        }
                        if let Some(h) = &s.held
                            && !jumps(tick.price, h.price, spike)
                        {
                            s.accepted = Some(Accepted {
                                price: h.price,
                                index: h.index,
                                exchange_ts: h.exchange_ts,
                                received_ts: h.received_ts,
                                at: h.at,
                            });
                            s.held = None;
                        }
                    }
                    counter!("liqwatch_prices_spikes_confirmed_total", "venue" => tick.venue.as_str(), "instrument" => tick.instrument.to_string()).increment(1);
                    tracing::info!(venue = %tick.venue, instrument = %tick.instrument, price = %tick.price, reference = %r, "Price jump confirmed");
                    PublishOutcome::Confirmed
                } else {
                    st.slots[si].held = Some(Held {
                        price: tick.price,
                        index: tick.index,
                        exchange_ts: tick.exchange_ts,
                        received_ts: tick.received_ts,
                        at: now,
                        count,
                        since,
                    });
                    counter!("liqwatch_prices_spikes_held_total", "venue" => tick.venue.as_str(), "instrument" => tick.instrument.to_string()).increment(1);
                    tracing::warn!(venue = %tick.venue, instrument = %tick.instrument, price = %tick.price, reference = %r, fraction = %spike, "Price jump held until confirmed");
                    return PublishOutcome::Held;
                }
            }
            _ => {
                st.slots[si].held = None;
                st.slots[si].accepted = Some(accepted_now);
                PublishOutcome::Accepted
            }
        };

        // A fresh accepted price: restore if stale, recompute the composite, wake the engine.
        let mut wake = false;
        if st.stale {
            st.stale = false;
            st.restored_pending = true;
            wake = true;
        }
        let comp = self.composite_price(st, now);
        if comp != st.last_composite {
            st.last_composite = comp;
            wake = true;
        }
        if wake && !st.dirty {
            st.dirty = true;
            inner.dirty.push(tick.instrument);
            drop(guard);
            self.notify.notify_one();
        }
        outcome
    }

    /// The composite price only (no allocation), with fresh-or-newest fallback.
    fn composite_price(&self, st: &InstState, now: Instant) -> Option<Decimal> {
        self.composite_parts(st, now).map(|(p, _, _, _)| p)
    }

    /// (price, contributing-venue mask, newest contributing slot index, stale).
    fn composite_parts(
        &self,
        st: &InstState,
        now: Instant,
    ) -> Option<(Decimal, [bool; MAX_VENUES], usize, bool)> {
        let mut fresh: [bool; MAX_VENUES] = [false; MAX_VENUES];
        let mut any_fresh = false;
        for (i, s) in st.slots.iter().enumerate().take(MAX_VENUES) {
            if let Some(a) = &s.accepted
                && now.saturating_duration_since(a.at) <= self.source_limit(st, s.venue)
            {
                fresh[i] = true;
                any_fresh = true;
            }
        }
        if !any_fresh {
            // Stale: the newest accepted price, flagged.
            let (i, a) = st
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.accepted.as_ref().map(|a| (i, a)))
                .max_by_key(|(_, a)| a.at)?;
            let mut mask = [false; MAX_VENUES];
            mask[i] = true;
            return Some((a.price, mask, i, true));
        }
        if let CompositeMode::Venue(v) = self.cfg.composite
            && let Some(i) = st.slots.iter().position(|s| s.venue == v)
            && fresh.get(i).copied().unwrap_or(false)
            && let Some(a) = &st.slots[i].accepted
        {
            let mut mask = [false; MAX_VENUES];
            mask[i] = true;
            return Some((a.price, mask, i, false));
        }
        let mut buf = [Decimal::ZERO; MAX_VENUES];
        let mut n = 0;
        let mut newest: Option<(usize, Instant)> = None;
        for (i, s) in st.slots.iter().enumerate().take(MAX_VENUES) {
            if fresh[i]
                && let Some(a) = &s.accepted
            {
                buf[n] = a.price;
                n += 1;
                if newest.is_none_or(|(_, t)| a.at > t) {
                    newest = Some((i, a.at));
                }
            }
        }
        let price = if n == 1 {
            buf[0]
        } else {
            median(&mut buf[..n])?
        };
        Some((price, fresh, newest.map(|(i, _)| i).unwrap_or(0), false))
    }

    fn build_composite(&self, st: &InstState, now: Instant) -> Option<Composite> {
        let (price, mask, newest, stale) = self.composite_parts(st, now)?;
        let names: Vec<&str> = st
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| mask.get(*i).copied().unwrap_or(false))
            .map(|(_, s)| s.venue.as_str())
            .collect();
        let source = if names.len() == 1 {
            names[0].to_string()
        } else {
            format!("median({})", names.join(","))
        };
        let a = st.slots.get(newest)?.accepted.as_ref()?;
        Some(Composite {
            price,
            source,
            received_ts: a.received_ts,
            age_ms: ms(now.saturating_duration_since(a.at)),
            stale,
            received_at: a.at,
        })
    }

    /// The current composite of an instrument, or `None` if no price was ever accepted.
    pub fn composite(&self, id: &InstrumentId) -> Option<Composite> {
        let now = Instant::now();
        let inner = self.inner.lock();
        let st = inner.instruments.get(id)?;
        self.build_composite(st, now)
    }

    /// Drains the instruments whose composite changed since the last call, without waiting.
    pub fn take_changed(&self) -> Vec<(InstrumentId, Composite)> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let dirty = std::mem::take(&mut inner.dirty);
        let mut out = Vec::with_capacity(dirty.len());
        for id in dirty {
            if let Some(st) = inner.instruments.get_mut(&id) {
                st.dirty = false;
                if let Some(c) = self.build_composite(st, now) {
                    out.push((id, c));
                }
            }
        }
        out
    }

    /// Waits until at least one instrument changed, then drains every changed instrument with
    /// its current composite. Meant for one consumer (the engine).
    pub async fn changed(&self) -> Vec<(InstrumentId, Composite)> {
        loop {
            let out = self.take_changed();
            if !out.is_empty() {
                return out;
            }
            self.notify.notified().await;
        }
    }

    /// Finds instruments that became stale or were restored since the last call. Call it
    /// periodically (every ~250 ms) with `Instant::now()`. Stale instruments are also marked
    /// changed so the engine sees their stale flag. Only watched instruments are checked
    /// ([`PriceBoard::is_watched`]: held by an account or listed in `watch`).
    pub fn check_staleness(&self, now: Instant) -> Vec<StaleTransition> {
        let mut out = Vec::new();
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let mut stale_count: usize = 0;
        let watching = self.watch.lock();
        for (id, st) in inner.instruments.iter_mut() {
            if !watching.watched(id, &self.cfg.watch) {
                // Held by no account and not listed in `watch`: no staleness noise.
                continue;
            }
            let newest = st
                .slots
                .iter()
                .filter_map(|s| s.accepted.as_ref().map(|a| (s.venue, a)))
                .max_by_key(|(_, a)| a.at);
            let venues = || st.slots.iter().map(|s| s.venue).collect::<Vec<Venue>>();
            if st.restored_pending {
                st.restored_pending = false;
                st.feed_seq += 1;
                out.push(StaleTransition {
                    kind: EventKind::FeedRestored,
                    seq: st.feed_seq,
                    info: FeedEventInfo {
                        instrument: id.clone(),
                        venues: venues(),
                        last_price: newest.map(|(_, a)| a.price),
                        age_ms: newest.map(|(_, a)| ms(now.saturating_duration_since(a.at))),
                        stale_after_ms: ms(self.inst_limit(st)),
                    },
                });
                counter!("liqwatch_prices_feed_restored_total", "instrument" => id.to_string())
                    .increment(1);
                tracing::info!(instrument = %id, "Feed restored: fresh price received");
            }
            let any_fresh = st.slots.iter().any(|s| {
                s.accepted.as_ref().is_some_and(|a| {
                    now.saturating_duration_since(a.at) <= self.source_limit(st, s.venue)
                })
            });
            let since = newest.map(|(_, a)| a.at).unwrap_or(st.tracked_at);
            let limit = self.inst_limit(st);
            let overdue = now.saturating_duration_since(since) > limit;
            if !any_fresh && (overdue || newest.is_some()) && !st.stale {
                st.stale = true;
                st.feed_seq += 1;
                out.push(StaleTransition {
                    kind: EventKind::FeedStale,
                    seq: st.feed_seq,
                    info: FeedEventInfo {
                        instrument: id.clone(),
                        venues: venues(),
                        last_price: newest.map(|(_, a)| a.price),
                        age_ms: newest.map(|(_, a)| ms(now.saturating_duration_since(a.at))),
                        stale_after_ms: ms(limit),
                    },
                });
                counter!("liqwatch_prices_feed_stale_total", "instrument" => id.to_string())
                    .increment(1);
                tracing::warn!(instrument = %id, stale_after = ?limit, last_price = ?newest.map(|(_, a)| a.price), "Feed stale: no fresh price from any source");
                if !st.dirty && newest.is_some() {
                    st.dirty = true;
                    inner.dirty.push(id.clone());
                }
            }
            if st.stale {
                stale_count += 1;
            }
            if let Some((_, a)) = newest {
                gauge!("liqwatch_prices_price_age_seconds", "instrument" => id.to_string())
                    .set(now.saturating_duration_since(a.at).as_secs_f64());
            }
        }
        drop(watching);
        gauge!("liqwatch_prices_stale_instruments").set(stale_count as f64);
        let woke = !inner.dirty.is_empty();
        drop(guard);
        if woke {
            self.notify.notify_one();
        }
        out
    }

    /// Whether an instrument is currently flagged stale (as of the last staleness check).
    pub fn is_stale(&self, id: &InstrumentId) -> bool {
        self.inner
            .lock()
            .instruments
            .get(id)
            .is_some_and(|s| s.stale)
    }

    /// Every tracked instrument with its sources, sorted by instrument id.
    pub fn status(&self) -> Vec<InstrumentStatus> {
        let now = Instant::now();
        let inner = self.inner.lock();
        let mut out: Vec<InstrumentStatus> = inner
            .instruments
            .iter()
            .map(|(id, st)| InstrumentStatus {
                instrument: id.clone(),
                composite: self.build_composite(st, now),
                stale: st.stale,
                stale_after_ms: ms(self.inst_limit(st)),
                sources: st
                    .slots
                    .iter()
                    .map(|s| SourceStatus {
                        venue: s.venue,
                        last_price: s.accepted.as_ref().map(|a| a.price),
                        last_index: s.accepted.as_ref().and_then(|a| a.index),
                        received_ts: s.accepted.as_ref().map(|a| a.received_ts),
                        age_ms: s
                            .accepted
                            .as_ref()
                            .map(|a| ms(now.saturating_duration_since(a.at))),
                        stale: !s.accepted.as_ref().is_some_and(|a| {
                            now.saturating_duration_since(a.at) <= self.source_limit(st, s.venue)
                        }),
                        held_price: s.held.as_ref().map(|h| h.price),
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.instrument.cmp(&b.instrument));
        out
    }
}

pub mod funding;
mod spike;
#[cfg(test)]
mod tests;
mod watch;

pub use spike::Fraction;
