//! What each feed prices and how it is doing: [`SymbolRoutes`] (venue symbol → canonical
//! instruments), the live [`FeedStatusHandle`] its driver updates (atomics on the hot path), the
//! [`FeedStatus`] snapshot that `GET /v1/feeds` serves, and the [`FeedRegistry`] of every feed.
//! The connection loop that writes these lives in `driver`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::model::{Instrument, InstrumentId, PriceField, TimestampMs, Venue};
use crate::prices::PriceBoard;

/// Venue symbol → the canonical instruments (and which price field) it prices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SymbolRoutes {
    symbols: Vec<String>,
    map: HashMap<String, Vec<(InstrumentId, PriceField)>>,
}

impl SymbolRoutes {
    /// Routes for one venue from the instruments' `sources`.
    pub fn from_instruments(venue: Venue, instruments: &[Instrument]) -> SymbolRoutes {
        let mut r = SymbolRoutes::default();
        for inst in instruments {
            for src in inst.sources.iter().filter(|s| s.venue == venue) {
                r.add(&src.symbol, inst.id.clone(), src.field);
            }
        }
        r
    }

    /// Adds one route.
    pub fn add(&mut self, symbol: &str, instrument: InstrumentId, field: PriceField) {
        let e = self.map.entry(symbol.to_string()).or_insert_with(|| {
            self.symbols.push(symbol.to_string());
            Vec::new()
        });
        if !e.iter().any(|(i, f)| *i == instrument && *f == field) {
            e.push((instrument, field));
        }
    }

    /// Venue symbols to subscribe, in insertion order.
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    /// Routes of one venue symbol.
    pub fn get(&self, symbol: &str) -> Option<&[(InstrumentId, PriceField)]> {
        self.map.get(symbol).map(Vec::as_slice)
    }

    /// Every (symbol, instrument, field).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &InstrumentId, PriceField)> {
        self.symbols.iter().flat_map(move |s| {
            self.map
                .get(s)
                .into_iter()
                .flatten()
                .map(move |(i, f)| (s.as_str(), i, *f))
        })
    }
}

/// Price status of one instrument on one venue: an entry of [`FeedStatus::instruments`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstrumentFeedStatus {
    /// Canonical instrument.
    pub instrument: InstrumentId,
    /// The venue's symbol.
    pub symbol: String,
    /// True only while connected and the subscription is confirmed: the symbol delivered a
    /// price on the current connection (an ack proves nothing on Binance).
    pub subscribed: bool,
    /// The last accepted price from this venue.
    pub last_price: Option<Decimal>,
    /// When it was received, ms since the epoch.
    pub received_ts: Option<TimestampMs>,
    /// Its age now, ms.
    pub age_ms: Option<i64>,
    /// True when older than `stale_after` (or never received).
    pub stale: bool,
    /// A price from this venue held by the price board as a possible spike, awaiting
    /// confirmation (`spike_fraction`); absent when none is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_price: Option<Decimal>,
}

/// Status of one venue feed: what [`FeedRegistry::snapshot`] returns and `GET /v1/feeds` serves
/// (the `FeedList` schema of `src/api/openapi.json`): the connection, the driver's counters,
/// the symbols in trouble and per-instrument prices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedStatus {
    /// The venue.
    pub venue: Venue,
    /// A replay of a recording, not a live connection: `connected`, `connected_since` and
    /// `reconnects` stay at zero and no symbol is subscribed; `frames`, `last_frame` and
    /// `unknown_symbols` count the recording's frames as they are played; its prices are the
    /// recording's.
    #[serde(default)]
    pub replay: bool,
    /// A replay that has played its whole recording: when it ended, ms since the epoch. Its
    /// prices then age like a stopped feed's; left out while it plays (and for live feeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_finished_ms: Option<TimestampMs>,
    /// True while the socket is up.
    pub connected: bool,
    /// When the current (or last) connection opened, ms since the epoch; `null` before the
    /// first.
    pub connected_since: Option<TimestampMs>,
    /// When the last frame of any kind arrived, ms since the epoch.
    pub last_frame: Option<TimestampMs>,
    /// Frames received since start.
    pub frames: u64,
    /// Reconnects since start (every connection after the first).
    pub reconnects: u64,
    /// Frames that could not be parsed since start (ignored).
    pub parse_errors: u64,
    /// Ticks for venue symbols no instrument maps, since start (ignored).
    pub unknown_symbols: u64,
    /// The last error: connect failure, close reason, refusal, rejection, silence.
    pub last_error: Option<String>,
    /// Symbols the venue refused (being retried with backoff) or called unknown (retried every
    /// `unknown_retry`), until they deliver a price.
    pub rejected_symbols: Vec<String>,
    /// Symbols acknowledged (or at least sent) but with no price within
    /// `first_data_timeout`, until they deliver one.
    pub unconfirmed_symbols: Vec<String>,
    /// Per-instrument prices.
    pub instruments: Vec<InstrumentFeedStatus>,
}

/// The texts of a feed's status, behind one lock (written rarely: connect, errors, rejections).
#[derive(Debug, Default)]
pub(super) struct StatusText {
    /// The last error.
    pub(super) last_error: Option<String>,
    /// Symbols the venue rejected.
    pub(super) rejected: Vec<String>,
    /// Symbols with no first price within `first_data_timeout`.
    pub(super) unconfirmed: Vec<String>,
    /// Symbols that delivered a price on the current connection.
    pub(super) confirmed: HashSet<String>,
    /// The URL of the current connection.
    pub(super) url: String,
}

/// Live status of one feed, updated by its driver (atomics on the hot path).
#[derive(Debug)]
pub struct FeedStatusHandle {
    venue: Venue,
    routes: SymbolRoutes,
    /// A replay of a recording: it has no connection, only prices.
    replay: bool,
    pub(super) connected: AtomicBool,
    pub(super) connected_since: AtomicI64,
    pub(super) last_frame: AtomicI64,
    pub(super) frames: AtomicU64,
    pub(super) connections: AtomicU64,
    pub(super) parse_errors: AtomicU64,
    pub(super) unknown_symbols: AtomicU64,
    /// A replay's end (ms since the epoch; 0 while it plays).
    pub(super) replay_finished: AtomicI64,
    pub(super) text: Mutex<StatusText>,
}

impl FeedStatusHandle {
    fn new(venue: Venue, routes: SymbolRoutes, replay: bool) -> FeedStatusHandle {
        FeedStatusHandle {
            venue,
            routes,
            replay,
            connected: AtomicBool::new(false),
            connected_since: AtomicI64::new(0),
            last_frame: AtomicI64::new(0),
            frames: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            parse_errors: AtomicU64::new(0),
            unknown_symbols: AtomicU64::new(0),
            replay_finished: AtomicI64::new(0),
            text: Mutex::new(StatusText::default()),
        }
    }

    /// Connections opened since start.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Frames that failed to parse since start.
    pub fn parse_errors(&self) -> u64 {
        self.parse_errors.load(Ordering::Relaxed)
    }

    /// Frames received since start.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Whether a connection is open now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Symbols the venue rejected.
    pub fn rejected_symbols(&self) -> Vec<String> {
        self.text.lock().rejected.clone()
    }

    /// Symbols not yet confirmed by data past `first_data_timeout`.
    pub fn unconfirmed_symbols(&self) -> Vec<String> {
        self.text.lock().unconfirmed.clone()
    }

    /// The last error (connect failure, close reason, rejection).
    pub fn last_error(&self) -> Option<String> {
        self.text.lock().last_error.clone()
    }

    /// Ticks for symbols with no route since start.
    pub fn unknown_symbols(&self) -> u64 {
        self.unknown_symbols.load(Ordering::Relaxed)
    }

    /// The URL of the current (or last) connection.
    pub fn url(&self) -> String {
        self.text.lock().url.clone()
    }

    /// When the current connection opened (ms since epoch), if one ever did.
    pub fn connected_since(&self) -> Option<TimestampMs> {
        Some(self.connected_since.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }

    /// When the last frame of any kind arrived (ms since epoch), if one ever did.
    pub fn last_frame(&self) -> Option<TimestampMs> {
        Some(self.last_frame.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }

    /// Records the last error.
    pub(super) fn set_error(&self, e: impl Into<String>) {
        self.text.lock().last_error = Some(e.into());
    }

    /// A snapshot, with per-instrument prices from the board.
    pub fn snapshot(&self, board: &PriceBoard) -> FeedStatus {
        let connected = self.connected.load(Ordering::Relaxed);
        let text = self.text.lock();
        let board_status = board.status();
        let instruments = self
            .routes
            .iter()
            .map(|(sym, inst, _field)| {
                let src = board_status
                    .iter()
                    .find(|s| s.instrument == *inst)
                    .and_then(|s| s.sources.iter().find(|x| x.venue == self.venue));
                InstrumentFeedStatus {
                    instrument: inst.clone(),
                    symbol: sym.to_string(),
                    subscribed: connected && text.confirmed.contains(sym),
                    last_price: src.and_then(|s| s.last_price),
                    received_ts: src.and_then(|s| s.received_ts),
                    age_ms: src.and_then(|s| s.age_ms),
                    stale: src.is_none_or(|s| s.stale),
                    held_price: src.and_then(|s| s.held_price),
                }
            })
            .collect();
        FeedStatus {
            venue: self.venue,
            replay: self.replay,
            replay_finished_ms: Some(self.replay_finished.load(Ordering::Relaxed))
                .filter(|t| *t > 0),
            connected,
            connected_since: self.connected_since(),
            last_frame: self.last_frame(),
            frames: self.frames(),
            reconnects: self.connections.load(Ordering::Relaxed).saturating_sub(1),
            parse_errors: self.parse_errors(),
            unknown_symbols: self.unknown_symbols(),
            last_error: text.last_error.clone(),
            rejected_symbols: text.rejected.clone(),
            unconfirmed_symbols: text.unconfirmed.clone(),
            instruments,
        }
    }
}

/// Every feed's status handle, for the API (`GET /feeds`).
#[derive(Debug, Default)]
pub struct FeedRegistry {
    feeds: Mutex<Vec<Arc<FeedStatusHandle>>>,
}

impl FeedRegistry {
    /// An empty registry.
    pub fn new() -> FeedRegistry {
        FeedRegistry::default()
    }

    /// Registers a feed and returns its status handle.
    pub fn register(&self, venue: Venue, routes: &SymbolRoutes) -> Arc<FeedStatusHandle> {
        let h = Arc::new(FeedStatusHandle::new(venue, routes.clone(), false));
        self.feeds.lock().push(h.clone());
        h
    }

    /// Removes a feed's status (a feed stopped by a reload).
    pub fn unregister(&self, handle: &Arc<FeedStatusHandle>) {
        self.feeds.lock().retain(|h| !Arc::ptr_eq(h, handle));
    }

    /// Registers the venue of a replay: it serves its instruments like a feed but has no
    /// connection, so readiness judges it by its prices only.
    pub fn register_replay(&self, venue: Venue, routes: &SymbolRoutes) -> Arc<FeedStatusHandle> {
        let h = Arc::new(FeedStatusHandle::new(venue, routes.clone(), true));
        self.feeds.lock().push(h.clone());
        h
    }

    /// Why the feeds are not ready, empty when they are: a live feed that is not connected,
    /// and for every feed (live or replay, whether its replay has started, is playing or has
    /// ended) each watched instrument it serves ([`PriceBoard::is_watched`]: held by an account
    /// or listed in `[prices] watch`) that has no price yet or only a stale one. Returns the
    /// number of feeds too. The `/readyz` "feeds" check.
    pub fn readiness(&self, board: &PriceBoard) -> (usize, Vec<String>) {
        let feeds: Vec<Arc<FeedStatusHandle>> = self.feeds.lock().clone();
        let mut problems = Vec::new();
        for h in &feeds {
            let status = h.snapshot(board);
            let name = if h.replay {
                format!("replay {}", status.venue.as_str())
            } else {
                status.venue.as_str().to_string()
            };
            if !h.replay && !status.connected {
                problems.push(format!("{name} not connected"));
            }
            for i in status
                .instruments
                .iter()
                .filter(|i| board.is_watched(&i.instrument))
            {
                if i.last_price.is_none() {
                    problems.push(format!(
                        "{name} {} ({}) has no price yet",
                        i.symbol, i.instrument
                    ));
                } else if i.stale {
                    problems.push(format!("{name} {} ({}) stale", i.symbol, i.instrument));
                }
            }
        }
        (feeds.len(), problems)
    }

    /// The handle of a venue's feed, if registered.
    pub fn get(&self, venue: Venue) -> Option<Arc<FeedStatusHandle>> {
        self.feeds.lock().iter().find(|h| h.venue == venue).cloned()
    }

    /// Status of every feed.
    pub fn snapshot(&self, board: &PriceBoard) -> Vec<FeedStatus> {
        let feeds: Vec<Arc<FeedStatusHandle>> = self.feeds.lock().clone();
        feeds.iter().map(|h| h.snapshot(board)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes come from the instruments' sources for the venue only.
    #[test]
    fn routes_from_sources() {
        let inst: Vec<Instrument> = serde_json::from_str(
            r#"[{"id":"BTCUSDT-PERP","kind":"linear_perpetual","underlying":"BTC",
                 "sources":[{"venue":"binance-usdm","symbol":"BTCUSDT"},{"venue":"okx","symbol":"BTC-USDT-SWAP"}]},
                {"id":"BTC","kind":"collateral","underlying":"BTC",
                 "sources":[{"venue":"binance-usdm","symbol":"BTCUSDT","field":"index"}]}]"#,
        )
        .unwrap();
        let r = SymbolRoutes::from_instruments(Venue::BinanceUsdm, &inst);
        assert_eq!(r.symbols(), &["BTCUSDT".to_string()]);
        assert_eq!(
            r.get("BTCUSDT").unwrap(),
            &[
                (InstrumentId::from("BTCUSDT-PERP"), PriceField::Mark),
                (InstrumentId::from("BTC"), PriceField::Index)
            ]
        );
        assert!(r.get("BTC-USDT-SWAP").is_none());
    }
}
