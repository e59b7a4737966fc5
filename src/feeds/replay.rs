//! Replay: plays a recorded JSONL file of venue frames through the same venue parsers as the live
//! feeds, at real or accelerated speed. The demo and backtests use it.
//!
//! ## File format
//!
//! One JSON object per line, one line per WebSocket text frame, in receive order:
//!
//! ```json
//! {"venue":"binance-usdm","received_ms":1621382400000,"frame":"{\"stream\":\"btcusdt@markPrice@1s\",\"data\":{…}}"}
//! ```
//!
//! - `venue`: a venue name (`binance-usdm`, `bybit-linear`, `okx`, `deribit`, `hyperliquid`, …);
//!   the frame goes to that venue's adapter (one adapter instance per venue for the whole file,
//!   so stateful parsing such as Bybit delta merging works as live);
//! - `received_ms`: receive time, ms since the epoch; must not go backwards;
//! - `frame`: the raw frame text, JSON-escaped.
//!
//! Blank lines and lines starting with `#` are skipped silently. A bad line (not this shape,
//! unknown venue, time going backwards) is counted (`liqwatch_replay_bad_lines_total{reason}`),
//! logged at WARN with its line number and skipped; a frame its adapter cannot parse is counted
//! (`liqwatch_replay_bad_frames_total{venue}`) and logged likewise. Only a file that cannot be
//! opened or read stops the replay.
//!
//! ## Timing
//!
//! [`ReplaySpeed::Factor`]`(k)` sleeps so that recorded gaps take `1/k` of their time (1 = real
//! time); [`ReplaySpeed::Max`] does not sleep. With [`ReplayClock::Shifted`] (the default) the
//! ticks carry the time they are published at: the first line maps to the start of the replay
//! and later lines keep their relative spacing divided by the speed, so ages and staleness on
//! the price board behave as with a live feed (at `Max`, each tick carries the wall-clock time it
//! is published at). The venue timestamps are moved by the same amount. [`ReplayClock::Recorded`]
//! keeps the recorded times unchanged (backtests).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Deserialize;
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::{Feed, FeedRegistry, Frame, SymbolRoutes, VenueTick};
use crate::model::{Instrument, PriceField, PriceTick, TimestampMs, Venue, now_ms};
use crate::prices::PriceBoard;

/// How fast to play a recording.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReplaySpeed {
    /// As fast as possible, no sleeping.
    Max,
    /// Recorded gaps take `1/k` of their recorded time (`1.0` = real time, `2000.0` = 16 h in
    /// under 30 s). Always finite and positive.
    Factor(f64),
}

impl Default for ReplaySpeed {
    fn default() -> Self {
        ReplaySpeed::Factor(1.0)
    }
}

impl ReplaySpeed {
    /// From a config factor: `None` or `0` → [`ReplaySpeed::Max`], a positive number → that
    /// factor (timing only, so `f64` is fine here), anything else an error saying what is
    /// accepted.
    pub fn from_factor(factor: Option<Decimal>) -> Result<ReplaySpeed, String> {
        match factor {
            None => Ok(ReplaySpeed::Max),
            Some(d) if d.is_zero() => Ok(ReplaySpeed::Max),
            Some(d) => match d.to_f64() {
                Some(k) if d.is_sign_positive() && k.is_finite() && k > 0.0 => {
                    Ok(ReplaySpeed::Factor(k))
                }
                _ => Err(format!(
                    "replay speed {d}: expected a positive number (1 = real time) or 0 (as fast as possible)"
                )),
            },
        }
    }
}

impl FromStr for ReplaySpeed {
    type Err = String;

    /// `max` or `0` → [`ReplaySpeed::Max`]; a positive finite number → a factor; an optional
    /// trailing `x` is accepted (`100x`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(ReplaySpeed::Max);
        }
        let num = t.strip_suffix(['x', 'X']).unwrap_or(t);
        match num.parse::<f64>() {
            Ok(0.0) => Ok(ReplaySpeed::Max),
            Ok(k) if k.is_finite() && k > 0.0 => Ok(ReplaySpeed::Factor(k)),
            _ => Err(format!(
                "replay speed {s:?}: expected a positive number (1 = real time, 100 = 100× faster) or `max`/`0` (as fast as possible)"
            )),
        }
    }
}

impl fmt::Display for ReplaySpeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplaySpeed::Max => f.write_str("max"),
            ReplaySpeed::Factor(k) => write!(f, "{k}"),
        }
    }
}

/// Which times the replayed ticks carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReplayClock {
    /// Shifted to the time of publication (keeps relative spacing ÷ speed). For the daemon.
    #[default]
    Shifted,
    /// The recorded times, unchanged. For backtests that evaluate at recorded time.
    Recorded,
}

/// Options of one replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Playback speed.
    pub speed: ReplaySpeed,
    /// Timestamps carried by the ticks.
    pub clock: ReplayClock,
}

/// One line of a recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayLine {
    /// 1-based line number in the file.
    pub line_no: u64,
    /// The venue whose adapter parses the frame.
    pub venue: Venue,
    /// Recorded receive time, ms since the epoch.
    pub received_ms: TimestampMs,
    /// The raw frame text.
    pub frame: String,
}

/// Why a line of a recording was skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadLine {
    /// Not a JSON object with `venue`, `received_ms` and `frame`.
    #[error(
        "line {line_no}: not a replay record ({detail}); expected {{\"venue\":…,\"received_ms\":…,\"frame\":\"…\"}}"
    )]
    Shape {
        /// 1-based line number.
        line_no: u64,
        /// What the JSON parser said.
        detail: String,
    },
    /// The venue name is not one liqwatch knows.
    #[error(
        "line {line_no}: unknown venue {venue:?} (known: {known})",
        known = Venue::NAMES.join(", ")
    )]
    UnknownVenue {
        /// 1-based line number.
        line_no: u64,
        /// The name found.
        venue: String,
    },
    /// `received_ms` is earlier than the previous line's.
    #[error(
        "line {line_no}: received_ms {received_ms} goes back in time (previous line {previous})"
    )]
    BackInTime {
        /// 1-based line number.
        line_no: u64,
        /// This line's time.
        received_ms: TimestampMs,
        /// The previous accepted line's time.
        previous: TimestampMs,
    },
}

impl BadLine {
    /// A short label for the metric.
    pub fn reason(&self) -> &'static str {
        match self {
            BadLine::Shape { .. } => "shape",
            BadLine::UnknownVenue { .. } => "unknown_venue",
            BadLine::BackInTime { .. } => "back_in_time",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine<'a> {
    #[serde(borrow)]
    venue: Cow<'a, str>,
    received_ms: TimestampMs,
    #[serde(borrow)]
    frame: Cow<'a, str>,
}

/// Parses one line of a recording. `Ok(None)` for blank and `#` comment lines.
pub fn parse_line(line: &str, line_no: u64) -> Result<Option<ReplayLine>, BadLine> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return Ok(None);
    }
    let raw: RawLine<'_> = serde_json::from_str(t).map_err(|e| BadLine::Shape {
        line_no,
        detail: e.to_string(),
    })?;
    let venue = Venue::parse(&raw.venue).ok_or_else(|| BadLine::UnknownVenue {
        line_no,
        venue: raw.venue.to_string(),
    })?;
    Ok(Some(ReplayLine {
        line_no,
        venue,
        received_ms: raw.received_ms,
        frame: raw.frame.into_owned(),
    }))
}

/// A replay that cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be opened or read.
    #[error("replay file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Lines read (including skipped ones).
    pub lines: u64,
    /// Frames handed to a venue parser.
    pub frames: u64,
    /// Price observations handed on (one per venue tick; routing may fan out or drop them).
    pub ticks: u64,
    /// Lines skipped as bad.
    pub bad_lines: u64,
    /// Frames their parser rejected.
    pub bad_frames: u64,
    /// Lines whose venue has no adapter.
    pub no_adapter: u64,
    /// Recorded time of the first frame.
    pub first_ms: Option<TimestampMs>,
    /// Recorded time of the last frame.
    pub last_ms: Option<TimestampMs>,
    /// True when the replay was cancelled before the end of the file.
    pub cancelled: bool,
}

/// Maps recorded times to the times the ticks carry, and says when to publish them.
#[derive(Clone, Debug)]
struct Clock {
    speed: ReplaySpeed,
    mode: ReplayClock,
    /// (first recorded ms, wall ms at start, tokio instant at start)
    origin: Option<(TimestampMs, TimestampMs, Instant)>,
}

impl Clock {
    fn new(opts: &ReplayOptions) -> Self {
        Self {
            speed: opts.speed,
            mode: opts.clock,
            origin: None,
        }
    }

    fn origin(&mut self, recorded: TimestampMs) -> (TimestampMs, TimestampMs, Instant) {
        *self
            .origin
            .get_or_insert_with(|| (recorded, now_ms(), Instant::now()))
    }

    /// When a frame recorded at `recorded` is due (None: now).
    fn due(&mut self, recorded: TimestampMs) -> Option<Instant> {
        let (rec0, _, start) = self.origin(recorded);
        match self.speed {
            ReplaySpeed::Max => None,
            ReplaySpeed::Factor(k) => {
                let gap_ms = recorded.saturating_sub(rec0).max(0) as f64 / k;
                let gap = Duration::try_from_secs_f64(gap_ms / 1000.0).ok()?;
                start.checked_add(gap)
            }
        }
    }

    /// The time a tick recorded at `t` carries.
    fn map(&mut self, t: TimestampMs, line_recorded: TimestampMs) -> TimestampMs {
        let (rec0, wall0, _) = self.origin(line_recorded);
        match (self.mode, self.speed) {
            (ReplayClock::Recorded, _) => t,
            (ReplayClock::Shifted, ReplaySpeed::Max) => {
                // Published now: move by however far the line's receive time is from now.
                t.saturating_add(now_ms().saturating_sub(line_recorded))
            }
            (ReplayClock::Shifted, ReplaySpeed::Factor(k)) => {
                let scaled = (t.saturating_sub(rec0)) as f64 / k;
                wall0.saturating_add(scaled.round() as i64)
            }
        }
    }
}

/// Plays a recording, handing every price observation to `on_tick(venue, tick, received_ts)`,
/// where `tick.exchange_ts` and `received_ts` are already mapped by [`ReplayOptions::clock`].
///
/// `feed_for` makes the adapter of a venue the first time the file names it (normally
/// [`super::feed_for`]); a venue without one is counted and its lines skipped. Control frames
/// (acks, pongs, replies) are parsed and otherwise ignored. Returns at the end of the file or
/// when `cancel` fires; only I/O errors on the file are fatal.
pub async fn play<F, T>(
    path: &Path,
    opts: &ReplayOptions,
    feed_for: F,
    cancel: &CancellationToken,
    on_tick: T,
) -> Result<ReplayStats, ReplayError>
where
    F: FnMut(Venue) -> Option<Box<dyn Feed>>,
    T: FnMut(Venue, &VenueTick<'_>, TimestampMs),
{
    play_with(path, opts, feed_for, cancel, on_tick, |_, _, _, _| {}).await
}

/// [`play`], also handing every frame to `on_frame(venue, frame, received_ts, map_ts)` before
/// its prices (`received_ts` mapped, `map_ts` maps a venue time the same way): the daemon's
/// replay reads funding from it.
pub async fn play_with<F, T, R>(
    path: &Path,
    opts: &ReplayOptions,
    mut feed_for: F,
    cancel: &CancellationToken,
    mut on_tick: T,
    mut on_frame: R,
) -> Result<ReplayStats, ReplayError>
where
    F: FnMut(Venue) -> Option<Box<dyn Feed>>,
    T: FnMut(Venue, &VenueTick<'_>, TimestampMs),
    R: FnMut(Venue, &str, TimestampMs, &mut dyn FnMut(TimestampMs) -> TimestampMs),
{
    let io_err = |source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(io_err)?;
    let mut reader = tokio::io::BufReader::new(file);
    let mut feeds: HashMap<Venue, Option<Box<dyn Feed>>> = HashMap::new();
    let mut clock = Clock::new(opts);
    let mut stats = ReplayStats::default();
    let mut buf = String::new();
    let mut previous: Option<TimestampMs> = None;
    let file_label = path.display().to_string();

    loop {
        buf.clear();
        let n = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                stats.cancelled = true;
                break;
            }
            r = reader.read_line(&mut buf) => r.map_err(io_err)?,
        };
        if n == 0 {
            break;
        }
        stats.lines += 1;
        let line_no = stats.lines;
        if line_no % 256 == 0 {
            // Large files at `Max` speed must not starve the other tasks.
            tokio::task::yield_now().await;
        }
        let line = match parse_line(&buf, line_no) {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(bad) => {
                stats.bad_lines += 1;
                metrics::counter!("liqwatch_replay_bad_lines_total", "reason" => bad.reason())
                    .increment(1);
                tracing::warn!(file = %file_label, line = line_no, error = %bad, "Skipping bad replay line");
                continue;
            }
        };
        if let Some(prev) = previous
            && line.received_ms < prev
        {
            let bad = BadLine::BackInTime {
                line_no,
                received_ms: line.received_ms,
                previous: prev,
            };
            stats.bad_lines += 1;
            metrics::counter!("liqwatch_replay_bad_lines_total", "reason" => bad.reason())
                .increment(1);
            tracing::warn!(file = %file_label, line = line_no, error = %bad, "Skipping bad replay line");
            continue;
        }
        previous = Some(line.received_ms);

        let feed = feeds.entry(line.venue).or_insert_with(|| {
            let f = feed_for(line.venue);
            if f.is_none() {
                tracing::error!(file = %file_label, venue = %line.venue, "No adapter for this venue: its replay lines are skipped");
            }
            f
        });
        let Some(feed) = feed.as_mut() else {
            stats.no_adapter += 1;
            metrics::counter!("liqwatch_replay_bad_lines_total", "reason" => "no_adapter")
                .increment(1);
            continue;
        };

        if let Some(due) = clock.due(line.received_ms) {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    stats.cancelled = true;
                    break;
                }
                () = tokio::time::sleep_until(due) => {}
            }
        }
        stats.first_ms.get_or_insert(line.received_ms);
        stats.last_ms = Some(line.received_ms);
        stats.frames += 1;
        let venue = line.venue;
        metrics::counter!("liqwatch_replay_frames_total", "venue" => venue.as_str()).increment(1);

        {
            let received_ts = clock.map(line.received_ms, line.received_ms);
            let recorded = line.received_ms;
            on_frame(venue, &line.frame, received_ts, &mut |t| {
                clock.map(t, recorded)
            });
        }
        let mut out: Vec<VenueTick<'_>> = Vec::new();
        match feed.parse(&line.frame, &mut out) {
            Ok(Frame::Data) => {
                let received_ts = clock.map(line.received_ms, line.received_ms);
                for tick in &mut out {
                    tick.exchange_ts = tick.exchange_ts.map(|t| clock.map(t, line.received_ms));
                    on_tick(venue, tick, received_ts);
                    stats.ticks += 1;
                }
            }
            Ok(other) => {
                tracing::trace!(file = %file_label, line = line_no, %venue, frame = ?other, "Replay control frame");
            }
            Err(e) => {
                stats.bad_frames += 1;
                metrics::counter!("liqwatch_replay_bad_frames_total", "venue" => venue.as_str())
                    .increment(1);
                tracing::warn!(file = %file_label, line = line_no, %venue, error = %e, "Skipping replay frame its parser rejected");
            }
        }
    }
    tracing::info!(
        file = %file_label,
        lines = stats.lines,
        frames = stats.frames,
        ticks = stats.ticks,
        bad_lines = stats.bad_lines,
        bad_frames = stats.bad_frames,
        cancelled = stats.cancelled,
        "Replay finished"
    );
    Ok(stats)
}

// ---------------------------------------------------------------------------------------------
// Running a replay like a feed: routes, price board, status registry
// ---------------------------------------------------------------------------------------------

/// Symbol routes for every venue priced by `instruments` (from their `sources`).
pub fn routes_for(instruments: &[Instrument]) -> HashMap<Venue, SymbolRoutes> {
    Venue::ALL
        .into_iter()
        .map(|v| (v, SymbolRoutes::from_instruments(v, instruments)))
        .filter(|(_, r)| !r.symbols().is_empty())
        .collect()
}

/// The venues a recording holds: those of the lines the replay would play ([`parse_line`];
/// blank, comment and unreadable lines are skipped here as there).
pub fn recorded_venues(path: &Path) -> Result<BTreeSet<Venue>, ReplayError> {
    use std::io::BufRead;
    let io_err = |source| ReplayError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = std::io::BufReader::new(std::fs::File::open(path).map_err(io_err)?);
    let mut venues = BTreeSet::new();
    let mut line = String::new();
    let mut line_no = 0;
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(io_err)? == 0 {
            return Ok(venues);
        }
        line_no += 1;
        if let Ok(Some(l)) = parse_line(&line, line_no) {
            venues.insert(l.venue);
        }
    }
}

/// Tracks every routed instrument on the board and registers each venue of the replay in
/// `registry` (so `GET /feeds` lists its instruments, prices, ages and staleness at once).
/// With `only`, just those venues are routed: the daemon passes the venues its recording holds
/// ([`recorded_venues`]), so an instrument no line can price is neither tracked (no
/// `feed_stale` event, no "no price yet" keeping `/readyz` false) nor listed.
pub fn prepare(
    instruments: &[Instrument],
    only: Option<&BTreeSet<Venue>>,
    board: &PriceBoard,
    registry: &FeedRegistry,
) -> Prepared {
    let mut routes = routes_for(instruments);
    if let Some(only) = only {
        routes.retain(|v, _| only.contains(v));
    }
    let mut status = HashMap::new();
    for (venue, r) in &routes {
        for (_, inst, _) in r.iter() {
            board.track(inst, &[*venue]);
        }
        status.insert(*venue, registry.register_replay(*venue, r));
    }
    Prepared { routes, status }
}

/// What [`prepare`] made ready for [`play_routed`]: the routes per venue, and each venue's
/// status handle, whose `frames`, `last_frame` and `unknown_symbols` the replay counts as it
/// plays (`GET /v1/feeds`).
#[derive(Debug, Default)]
pub struct Prepared {
    /// Symbol routes per venue.
    pub routes: HashMap<Venue, SymbolRoutes>,
    /// Status handles per venue (none in tests that play without a registry).
    pub status: HashMap<Venue, std::sync::Arc<super::status::FeedStatusHandle>>,
}

/// Plays a recording into the price board exactly as the live feeds do: each venue tick is
/// routed by the instruments' `sources` to canonical instruments (mark or index field) and
/// published with [`PriceBoard::publish`]; every routed instrument is tracked on the board and
/// each venue registered in `registry`. A symbol without a route is counted
/// (`liqwatch_replay_unknown_symbols_total{venue}`) and ignored. Adapters come from
/// [`super::feed_for`]. Returns at the end of the file or on `cancel`.
pub async fn run_replay(
    path: &Path,
    opts: &ReplayOptions,
    instruments: &[Instrument],
    board: Arc<PriceBoard>,
    registry: &FeedRegistry,
    cancel: CancellationToken,
) -> Result<ReplayStats, ReplayError> {
    let prepared = prepare(instruments, None, &board, registry);
    play_routed(path, opts, prepared, board, cancel).await
}

/// Spawns a replay as a task, like [`super::spawn_feed`] spawns a live feed: the venues are
/// registered in `registry` before this returns. The demo awaits the handle to know when the
/// recording has ended.
pub fn spawn_replay(
    path: PathBuf,
    opts: ReplayOptions,
    instruments: &[Instrument],
    board: Arc<PriceBoard>,
    registry: &FeedRegistry,
    cancel: CancellationToken,
) -> JoinHandle<Result<ReplayStats, ReplayError>> {
    let prepared = prepare(instruments, None, &board, registry);
    let span = tracing::info_span!("replay", file = %path.display());
    tokio::spawn(
        async move { play_routed(&path, &opts, prepared, board, cancel).await }.instrument(span),
    )
}

/// Plays `path` into the board through routes from [`prepare`].
pub async fn play_routed(
    path: &Path,
    opts: &ReplayOptions,
    prepared: Prepared,
    board: Arc<PriceBoard>,
    cancel: CancellationToken,
) -> Result<ReplayStats, ReplayError> {
    let Prepared { routes, status } = prepared;
    let finished = status.clone();
    tracing::info!(file = %path.display(), speed = %opts.speed, venues = routes.len(), "Replay starting");
    let funding_board = Arc::clone(&board);
    let funding_routes = routes.clone();
    let unknown_status = status.clone();
    play_with(
        path,
        opts,
        |v| super::feed_for(v).ok(),
        &cancel,
        |venue, tick, received_ts| {
            let Some(targets) = routes.get(&venue).and_then(|r| r.get(tick.symbol)) else {
                metrics::counter!("liqwatch_replay_unknown_symbols_total", "venue" => venue.as_str())
                    .increment(1);
                if let Some(h) = unknown_status.get(&venue) {
                    h.unknown_symbols
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::trace!(%venue, symbol = tick.symbol, "Replayed tick for a symbol with no route");
                return;
            };
            for (inst, field) in targets {
                let price = match field {
                    PriceField::Mark => tick.mark,
                    PriceField::Index => tick.index,
                };
                if let Some(price) = price {
                    metrics::counter!("liqwatch_replay_ticks_total", "venue" => venue.as_str())
                        .increment(1);
                    board.publish(PriceTick {
                        instrument: inst.clone(),
                        venue,
                        price,
                        index: tick.index,
                        exchange_ts: tick.exchange_ts,
                        received_ts,
                    });
                }
            }
        },
        |venue, frame, received_ts, map_ts| {
            if let Some(h) = status.get(&venue) {
                h.frames.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                h.last_frame
                    .store(received_ts, std::sync::atomic::Ordering::Relaxed);
            }
            let Some(r) = funding_routes.get(&venue) else {
                return;
            };
            if let Err(e) = super::funding::publish_funding(
                venue,
                frame,
                r,
                funding_board.funding(),
                received_ts,
                map_ts,
            ) {
                metrics::counter!("liqwatch_replay_funding_errors_total", "venue" => venue.as_str())
                    .increment(1);
                tracing::debug!(%venue, error = %e, "Replayed funding fields not read");
            }
        },
    )
    .await
    .inspect(|stats| {
        // Played to its end (not stopped by shutdown): the feeds say so.
        if !stats.cancelled {
            let now = crate::model::now_ms();
            for h in finished.values() {
                h.replay_finished
                    .store(now, std::sync::atomic::Ordering::Relaxed);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feeds::okx::OkxFeed;
    use rust_decimal_macros::dec;

    /// Speeds parse from config text, with clear errors.
    #[test]
    fn speed_from_str() {
        assert_eq!("max".parse::<ReplaySpeed>(), Ok(ReplaySpeed::Max));
        assert_eq!("0".parse::<ReplaySpeed>(), Ok(ReplaySpeed::Max));
        assert_eq!("1".parse::<ReplaySpeed>(), Ok(ReplaySpeed::Factor(1.0)));
        assert_eq!(
            "100x".parse::<ReplaySpeed>(),
            Ok(ReplaySpeed::Factor(100.0))
        );
        assert_eq!("2.5".parse::<ReplaySpeed>(), Ok(ReplaySpeed::Factor(2.5)));
        for bad in ["-1", "fast", "", "inf", "NaN"] {
            let e = bad.parse::<ReplaySpeed>().unwrap_err();
            assert!(e.contains("positive number"), "{bad}: {e}");
        }
    }

    /// Config factors (Decimal) map to speeds: none/0 = max, positive = factor, negative refused.
    #[test]
    fn speed_from_factor() {
        assert_eq!(ReplaySpeed::from_factor(None), Ok(ReplaySpeed::Max));
        assert_eq!(
            ReplaySpeed::from_factor(Some(dec!(0))),
            Ok(ReplaySpeed::Max)
        );
        assert_eq!(
            ReplaySpeed::from_factor(Some(dec!(3000))),
            Ok(ReplaySpeed::Factor(3000.0))
        );
        assert_eq!(
            ReplaySpeed::from_factor(Some(dec!(0.5))),
            Ok(ReplaySpeed::Factor(0.5))
        );
        assert!(ReplaySpeed::from_factor(Some(dec!(-1))).is_err());
    }

    /// Lines parse into records; blank and comment lines are skipped; bad ones say why.
    #[test]
    fn line_parsing() {
        let ok = r#"{"venue":"okx","received_ms":5,"frame":"pong"}"#;
        assert_eq!(
            parse_line(ok, 3),
            Ok(Some(ReplayLine {
                line_no: 3,
                venue: Venue::Okx,
                received_ms: 5,
                frame: "pong".into()
            }))
        );
        assert_eq!(parse_line("   ", 1), Ok(None));
        assert_eq!(parse_line("# comment", 1), Ok(None));
        assert!(matches!(
            parse_line(r#"{"venue":"kraken","received_ms":5,"frame":"x"}"#, 7),
            Err(BadLine::UnknownVenue { line_no: 7, .. })
        ));
        for bad in [
            r#"{"venue":"okx","received_ms":"5","frame":"x"}"#,
            r#"{"venue":"okx","frame":"x"}"#,
            r#"{"venue":"okx","received_ms":5,"frame":"x","extra":1}"#,
            r#"{"venue":"okx","received_ms":5.5,"frame":"x"}"#,
            "not json",
        ] {
            assert!(
                matches!(parse_line(bad, 2), Err(BadLine::Shape { line_no: 2, .. })),
                "{bad}"
            );
        }
    }

    fn okx_line(ms: i64, px: &str) -> String {
        let frame = format!(
            r#"{{"arg":{{"channel":"mark-price","instId":"BTC-USDT-SWAP"}},"data":[{{"instId":"BTC-USDT-SWAP","markPx":"{px}","ts":"{}"}}]}}"#,
            ms - 3
        );
        serde_json::json!({"venue":"okx","received_ms":ms,"frame":frame}).to_string()
    }

    fn okx_only(v: Venue) -> Option<Box<dyn Feed>> {
        (v == Venue::Okx).then(|| Box::new(OkxFeed::new()) as Box<dyn Feed>)
    }

    /// Good frames become ticks in order; bad lines, back-in-time lines, unparsable frames and
    /// venues without an adapter are counted and skipped without stopping the replay.
    /// The daemon's replay publishes the funding of its frames to the board, the settlement
    /// time moved by the replay clock like the prices (`Recorded`: unchanged; `Shifted` at
    /// `Max`: by how far the line's receive time is from now).
    #[tokio::test]
    async fn replay_publishes_funding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jsonl");
        let inner = r#"{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1000,"s":"BTCUSDT","p":"60000","i":"60000","P":"60000","r":"-0.00020000","T":28800000}}"#;
        let line = serde_json::json!({"venue":"binance-usdm","received_ms":1000,"frame":inner});
        std::fs::write(&path, line.to_string()).unwrap();
        let mut routes = HashMap::new();
        let mut r = SymbolRoutes::default();
        r.add(
            "BTCUSDT",
            "BTCUSDT-PERP".into(),
            crate::model::PriceField::Mark,
        );
        routes.insert(Venue::BinanceUsdm, r);
        for clock in [ReplayClock::Recorded, ReplayClock::Shifted] {
            let board = Arc::new(PriceBoard::new(Default::default()));
            let opts = ReplayOptions {
                speed: ReplaySpeed::Max,
                clock,
            };
            let before = now_ms();
            play_routed(
                &path,
                &opts,
                Prepared {
                    routes: routes.clone(),
                    status: HashMap::new(),
                },
                Arc::clone(&board),
                CancellationToken::new(),
            )
            .await
            .unwrap();
            let after = now_ms();
            let e = board.funding().get(&"BTCUSDT-PERP".into()).unwrap();
            assert_eq!(e.rate.rate, dec!(-0.0002));
            let t = e.rate.next_funding_ts.unwrap();
            match clock {
                ReplayClock::Recorded => assert_eq!(t, 28_800_000),
                ReplayClock::Shifted => {
                    assert!(t >= before + 28_799_000 && t <= after + 28_799_000, "{t}")
                }
            }
            assert!(board.composite(&"BTCUSDT-PERP".into()).is_some());
        }
    }

    #[tokio::test]
    async fn plays_good_lines_and_skips_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let lines = [
            okx_line(1_000, "100.5"),
            "garbage".to_string(),
            r#"{"venue":"okx","received_ms":1001,"frame":"pong"}"#.to_string(),
            okx_line(900, "1"), // back in time
            r#"{"venue":"okx","received_ms":1002,"frame":"{\"arg\":{\"channel\":\"mark-price\"},\"data\":[{\"instId\":\"X\",\"markPx\":\"abc\"}]}"}"#.to_string(),
            r#"{"venue":"deribit","received_ms":1003,"frame":"{}"}"#.to_string(),
            String::new(),
            okx_line(2_000, "101.25"),
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let opts = ReplayOptions {
            speed: ReplaySpeed::Max,
            clock: ReplayClock::Recorded,
        };
        let mut got = Vec::new();
        let stats = play(
            &path,
            &opts,
            okx_only,
            &CancellationToken::new(),
            |v, t, rx| {
                got.push((v, t.symbol.to_string(), t.mark, t.exchange_ts, rx));
            },
        )
        .await
        .unwrap();
        assert_eq!(
            got,
            vec![
                (
                    Venue::Okx,
                    "BTC-USDT-SWAP".to_string(),
                    Some(dec!(100.5)),
                    Some(997),
                    1_000
                ),
                (
                    Venue::Okx,
                    "BTC-USDT-SWAP".to_string(),
                    Some(dec!(101.25)),
                    Some(1_997),
                    2_000
                ),
            ]
        );
        assert_eq!(stats.lines, 8);
        assert_eq!(stats.frames, 4);
        assert_eq!(stats.ticks, 2);
        assert_eq!(stats.bad_lines, 2);
        assert_eq!(stats.bad_frames, 1);
        assert_eq!(stats.no_adapter, 1);
        assert_eq!((stats.first_ms, stats.last_ms), (Some(1_000), Some(2_000)));
        assert!(!stats.cancelled);
    }

    /// At a finite speed the replay sleeps the scaled gaps (tokio time paused) and the ticks
    /// carry shifted times that keep the scaled spacing.
    #[tokio::test(start_paused = true)]
    async fn finite_speed_scales_gaps_and_shifts_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let lines = [
            okx_line(1_000_000, "1"),
            okx_line(1_010_000, "2"),
            okx_line(1_030_000, "3"),
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let opts = ReplayOptions {
            speed: ReplaySpeed::Factor(10.0),
            clock: ReplayClock::Shifted,
        };
        let start = Instant::now();
        let mut got = Vec::new();
        play(
            &path,
            &opts,
            okx_only,
            &CancellationToken::new(),
            |_, t, rx| {
                got.push((t.mark, rx, t.exchange_ts, Instant::now() - start));
            },
        )
        .await
        .unwrap();
        assert_eq!(got.len(), 3);
        // Scheduled at 0 s, 1 s and 3 s of (paused) tokio time.
        assert_eq!(got[1].3 - got[0].3, Duration::from_secs(1));
        assert_eq!(got[2].3 - got[0].3, Duration::from_secs(3));
        // Carried times: spacing 1 000 ms and 3 000 ms from the first; exchange_ts 3 ms
        // recorded before receipt becomes 0.3 ms, rounded.
        assert_eq!(got[1].1 - got[0].1, 1_000);
        assert_eq!(got[2].1 - got[0].1, 3_000);
        assert_eq!(got[0].2, Some(got[0].1));
    }

    /// Cancelling stops a real-time replay while it waits for the next frame.
    #[tokio::test(start_paused = true)]
    async fn cancel_stops_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let lines = [okx_line(0, "1"), okx_line(3_600_000, "2")];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        let mut n = 0;
        let stats = play(
            &path,
            &ReplayOptions::default(),
            okx_only,
            &cancel,
            |_, _, _| {
                n += 1;
                c2.cancel();
            },
        )
        .await
        .unwrap();
        assert_eq!(n, 1);
        assert!(stats.cancelled);
    }

    /// A recording's venues are those of the lines the replay plays: keys in any order, and
    /// nothing from blank, comment, unreadable or unknown-venue lines (nor from a venue named
    /// only inside a frame).
    #[test]
    fn recorded_venues_reads_each_line_as_the_replay_would() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let lines = [
            "# a comment naming okx",
            "",
            r#"{"venue":"binance-usdm","received_ms":1,"frame":"{\"venue\":\"deribit\"}"}"#,
            r#"  { "received_ms": 2, "frame": "{}", "venue": "hyperliquid" }"#,
            r#"{"venue":"bybit-linear","received_ms":3}"#,
            r#"{"venue":"nowhere","received_ms":4,"frame":"{}"}"#,
            r#"{"received_ms":5,"venue":"okx""#,
        ];
        std::fs::write(&path, lines.join("\n")).unwrap();
        let venues = recorded_venues(&path).unwrap();
        assert_eq!(
            venues.into_iter().collect::<Vec<_>>(),
            [Venue::BinanceUsdm, Venue::Hyperliquid]
        );
        assert!(matches!(
            recorded_venues(&dir.path().join("missing.jsonl")),
            Err(ReplayError::Io { .. })
        ));
    }

    /// The demo recording is well formed: 2304 Binance USD-M lines in time order, three symbols,
    /// starting at the 2021-05-19 00:00 UTC opens.
    #[test]
    fn demo_recording_is_well_formed() {
        let path = format!(
            "{}/feeds/replay/crash-2021-05-19.jsonl",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        let mut prev = i64::MIN;
        let mut n = 0;
        let mut per_symbol = std::collections::BTreeMap::new();
        for (i, l) in text.lines().enumerate() {
            let line = parse_line(l, i as u64 + 1).unwrap().unwrap();
            assert_eq!(line.venue, Venue::BinanceUsdm);
            assert!(line.received_ms >= prev, "line {}", i + 1);
            prev = line.received_ms;
            let v: serde_json::Value = serde_json::from_str(&line.frame).unwrap();
            let sym = v["data"]["s"].as_str().unwrap().to_string();
            assert_eq!(v["data"]["p"], v["data"]["i"]);
            per_symbol
                .entry(sym)
                .or_insert_with(Vec::new)
                .push(v["data"]["p"].as_str().unwrap().to_string());
            n += 1;
        }
        assert_eq!(n, 2304);
        assert_eq!(per_symbol.len(), 3);
        assert_eq!(per_symbol["BTCUSDT"][0], "42849.78");
        assert_eq!(per_symbol["ETHUSDT"][0], "3375.08");
        assert_eq!(per_symbol["SOLUSDT"][0], "55.969");
        assert!(per_symbol["BTCUSDT"].iter().any(|p| p == "30000.0"));
        assert_eq!(prev, 1_621_382_400_000 + 16 * 3_600_000 - 75_000 + 200);
    }

    /// A missing file is a clear error naming it.
    #[tokio::test]
    async fn missing_file_is_an_error() {
        let e = play(
            Path::new("/nonexistent/replay.jsonl"),
            &ReplayOptions::default(),
            okx_only,
            &CancellationToken::new(),
            |_, _, _| {},
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/replay.jsonl"), "{e}");
    }
}
