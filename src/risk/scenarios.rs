//! Historical scenarios: price history in, joint return vectors out.
//!
//! History comes from three kinds of file, told apart by their name:
//! - `*.csv`: `ts,symbol,price` lines (`ts` in ms since the epoch or RFC 3339, UTC); an optional
//!   `ts,symbol,price` header, blank lines and `#` comments are skipped;
//! - `*.json`: a freqtrade candle file (`[[open_time_ms, open, high, low, close, volume], …]`,
//!   as in `../shared/data/`); the symbol is the file name up to its first `-`
//!   (`BTC_USDT-5m.json` → `BTC_USDT`) and the price at the open time is the candle's open;
//! - `*.jsonl`: a liqwatch replay recording (`feeds/replay/`), parsed by the venue adapters; the
//!   price of a symbol in each whole second is its last mark (else index) in that second.
//!
//! Prices are parsed from the numbers' text into `Decimal` (never through a float) and must be
//! positive. Every error names the file and line (candle files: the candle's index).
//!
//! A window starts at every time `t` at which every mapped series has a price at `t` *and* at
//! `t + horizon` (overlapping windows; a gap in any series removes the windows that need it,
//! nothing is interpolated). Its multiplier per underlying is `m = P(t + h) / P(t)`, rounded
//! half-up to [`RETURN_SCALE`] places in exact integer arithmetic; `r = m − 1`. Everything
//! downstream is exact for these `r`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::value::RawValue;

use crate::feeds::{Frame, VenueTick, feed_for, replay};
use crate::model::{TimestampMs, Venue, parse_exact};

/// Decimal places of a scenario's return (`r` is a multiple of 10⁻⁸, i.e. 0.000001 %).
pub const RETURN_SCALE: u32 = 8;

/// `10^RETURN_SCALE`: the multiplier mantissa of "no move".
pub const ONE_M: i64 = 100_000_000;

/// A history that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line (or candle) of the file is wrong.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line (candle files: 1-based candle index, said in the message).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file as a whole is wrong.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// History symbols cannot be mapped onto the book's underlyings.
    #[error("{0}")]
    Mapping(String),
    /// The horizon or the windows are unusable.
    #[error("{0}")]
    Windows(String),
}

/// One price series: prices by time (ms), with the file each came from.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Price by timestamp.
    pub points: BTreeMap<TimestampMs, Decimal>,
    /// The files the points came from.
    pub sources: BTreeSet<String>,
}

/// Price history by symbol, from any number of files.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Series by history symbol.
    pub series: BTreeMap<String, Series>,
}

fn line_err(path: &Path, line: usize, message: impl Into<String>) -> HistoryError {
    HistoryError::Line {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

fn parse_price(text: &str) -> Result<Decimal, String> {
    let p =
        parse_exact(text.trim()).map_err(|e| format!("price {text:?} is not a decimal: {e}"))?;
    if p <= Decimal::ZERO {
        return Err(format!("price must be positive, got {p}"));
    }
    Ok(p)
}

fn parse_ts(text: &str) -> Result<TimestampMs, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<TimestampMs>()
            .map_err(|e| format!("timestamp {t:?}: {e}"));
    }
    let st = humantime::parse_rfc3339_weak(t).map_err(|e| {
        format!(
            "timestamp {t:?} is neither ms since the epoch nor RFC 3339 (2021-05-19T12:00:00Z): {e}"
        )
    })?;
    let d = st
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("timestamp {t:?} is before 1970"))?;
    TimestampMs::try_from(d.as_millis()).map_err(|_| format!("timestamp {t:?} is out of range"))
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one file (format by extension, see the module docs) into the history.
    pub fn load(&mut self, path: &Path) -> Result<(), HistoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| HistoryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "csv" => self.add_csv(path, &text),
            "json" => {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let symbol = stem.split('-').next().unwrap_or(stem);
                self.add_candles(path, &text, symbol)
            }
            "jsonl" => self.add_replay(path, &text),
            _ => Err(HistoryError::File {
                path: path.to_path_buf(),
                message: "unknown history format: name it *.csv (ts,symbol,price), *.json (freqtrade candles) or *.jsonl (liqwatch replay recording)".into(),
            }),
        }
    }

    fn insert(
        &mut self,
        path: &Path,
        line: usize,
        symbol: &str,
        ts: TimestampMs,
        price: Decimal,
        last_wins: bool,
    ) -> Result<(), HistoryError> {
        let series = self.series.entry(symbol.to_string()).or_default();
        let label = path.display().to_string();
        if let Some(old) = series.points.get(&ts)
            && *old != price
            && !last_wins
        {
            return Err(line_err(
                path,
                line,
                format!(
                    "{symbol} at {ts} is {price} here but {old} earlier (from {}); one price per symbol and time",
                    series
                        .sources
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        series.points.insert(ts, price);
        series.sources.insert(label);
        Ok(())
    }

    /// Adds `ts,symbol,price` lines; `path` labels the errors.
    pub fn add_csv(&mut self, path: &Path, text: &str) -> Result<(), HistoryError> {
        let mut seen_data = false;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = t.split(',').map(str::trim).collect();
            if !seen_data
                && fields.len() == 3
                && fields[0].eq_ignore_ascii_case("ts")
                && fields[1].eq_ignore_ascii_case("symbol")
                && fields[2].eq_ignore_ascii_case("price")
            {
                seen_data = true;
                continue;
            }
            seen_data = true;
            let [ts, symbol, price] = fields.as_slice() else {
                return Err(line_err(
                    path,
                    line,
                    format!(
                        "expected 3 fields ts,symbol,price, got {}: {t:?}",
                        fields.len()
                    ),
                ));
            };
            if symbol.is_empty() || symbol.contains(char::is_whitespace) {
                return Err(line_err(
                    path,
                    line,
                    format!("symbol {symbol:?} must be non-empty, without spaces"),
                ));
            }
            let ts = parse_ts(ts).map_err(|m| line_err(path, line, m))?;
            let price = parse_price(price).map_err(|m| line_err(path, line, m))?;
            self.insert(path, line, symbol, ts, price, false)?;
        }
        Ok(())
    }

    /// Adds a freqtrade candle file of `symbol` (open price at open time).
    pub fn add_candles(
        &mut self,
        path: &Path,
        text: &str,
        symbol: &str,
    ) -> Result<(), HistoryError> {
        if symbol.is_empty() {
            return Err(HistoryError::File {
                path: path.to_path_buf(),
                message:
                    "cannot tell the symbol from the file name (expected e.g. BTC_USDT-5m.json)"
                        .into(),
            });
        }
        let rows: Vec<Vec<&RawValue>> =
            serde_json::from_str(text).map_err(|e| HistoryError::Line {
                path: path.to_path_buf(),
                line: e.line(),
                message: format!(
                    "not a freqtrade candle file ([[open_time_ms, open, high, low, close, volume], …]): {e} (column {})",
                    e.column()
                ),
            })?;
        let mut previous: Option<TimestampMs> = None;
        for (i, row) in rows.iter().enumerate() {
            let n = i + 1;
            let at = |m: String| HistoryError::File {
                path: path.to_path_buf(),
                message: format!("candle {n}: {m}"),
            };
            let (Some(ts), Some(open)) = (row.first(), row.get(1)) else {
                return Err(at(format!(
                    "expected [open_time_ms, open, …], got {} fields",
                    row.len()
                )));
            };
            let ts = parse_ts(ts.get()).map_err(at)?;
            let price = parse_price(open.get().trim_matches('"')).map_err(at)?;
            if previous.is_some_and(|p| ts <= p) {
                return Err(at(format!(
                    "open time {ts} does not come after the previous candle's"
                )));
            }
            previous = Some(ts);
            self.insert(path, n, symbol, ts, price, false)
                .map_err(|e| at(e.to_string()))?;
        }
        Ok(())
    }

    /// Adds a liqwatch replay recording: the last mark (else index) of each symbol in each
    /// whole second, at the second's start.
    pub fn add_replay(&mut self, path: &Path, text: &str) -> Result<(), HistoryError> {
        let mut feeds: std::collections::HashMap<Venue, Box<dyn crate::feeds::Feed>> =
            std::collections::HashMap::new();
        let mut previous: Option<TimestampMs> = None;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let parsed = replay::parse_line(raw, line_no as u64)
                .map_err(|e| line_err(path, line_no, e.to_string()))?;
            let Some(line) = parsed else { continue };
            if previous.is_some_and(|p| line.received_ms < p) {
                return Err(line_err(
                    path,
                    line_no,
                    format!("received_ms {} goes back in time", line.received_ms),
                ));
            }
            previous = Some(line.received_ms);
            let venue: Venue = line.venue;
            let feed = match feeds.entry(venue) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(feed_for(venue).map_err(|e| line_err(path, line_no, e.to_string()))?)
                }
            };
            let mut out: Vec<VenueTick<'_>> = Vec::new();
            match feed.parse(&line.frame, &mut out) {
                Ok(Frame::Data) => {}
                Ok(_) => continue,
                Err(e) => {
                    return Err(line_err(
                        path,
                        line_no,
                        format!("{venue} frame rejected: {e}"),
                    ));
                }
            }
            let second = line.received_ms.div_euclid(1000) * 1000;
            for tick in &out {
                let Some(p) = tick.mark.or(tick.index) else {
                    continue;
                };
                if p <= Decimal::ZERO {
                    return Err(line_err(
                        path,
                        line_no,
                        format!("{} price must be positive, got {p}", tick.symbol),
                    ));
                }
                self.insert(path, line_no, tick.symbol, second, p, true)?;
            }
        }
        Ok(())
    }

    /// The history symbols, sorted.
    pub fn symbols(&self) -> Vec<&str> {
        self.series.keys().map(String::as_str).collect()
    }
}

/// The underlying a history symbol names by itself: the symbol upper-cased, separators
/// (`_ - /`) removed, and a quote suffix (`USDT`, `USDC`, `BUSD`, `USD`) stripped:
/// `BTC_USDT`, `BTCUSDT`, `btc/usdt` and `BTC` all name `BTC`.
pub fn auto_underlying(symbol: &str) -> String {
    let s: String = symbol
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | '/'))
        .collect::<String>()
        .to_ascii_uppercase();
    for quote in ["USDT", "USDC", "BUSD", "USD"] {
        if let Some(base) = s.strip_suffix(quote)
            && !base.is_empty()
        {
            return base.to_string();
        }
    }
    s
}

/// Parses `SYMBOL=UNDERLYING` (a `--map` flag).
pub fn parse_map(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() => {
            Ok((a.trim().to_string(), b.trim().to_string()))
        }
        _ => Err(format!(
            "--map {s:?}: expected SYMBOL=UNDERLYING (e.g. BTC_USDT=BTC)"
        )),
    }
}

/// Chooses one history series for each needed underlying. An explicit map (`symbol →
/// underlying`) wins; otherwise the one symbol whose [`auto_underlying`] is the underlying.
/// An underlying with no series, or with two candidates, is refused with what to do.
pub fn resolve(
    history: &History,
    needed: &BTreeSet<String>,
    explicit: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, HistoryError> {
    let mut chosen: BTreeMap<String, String> = BTreeMap::new();
    for (symbol, underlying) in explicit {
        if !history.series.contains_key(symbol) {
            return Err(HistoryError::Mapping(format!(
                "--map {symbol}={underlying}: no history series {symbol:?} (series: {})",
                history.symbols().join(", ")
            )));
        }
        if let Some(other) = chosen.insert(underlying.clone(), symbol.clone()) {
            return Err(HistoryError::Mapping(format!(
                "--map gives {underlying} twice ({other} and {symbol})"
            )));
        }
    }
    let mut missing = Vec::new();
    for u in needed {
        if chosen.contains_key(u) {
            continue;
        }
        let candidates: Vec<&str> = history
            .series
            .keys()
            .filter(|s| !explicit.contains_key(*s) && auto_underlying(s) == *u)
            .map(String::as_str)
            .collect();
        match candidates.as_slice() {
            [one] => {
                chosen.insert(u.clone(), (*one).to_string());
            }
            [] => missing.push(u.clone()),
            many => {
                return Err(HistoryError::Mapping(format!(
                    "{u}: several history series could price it ({}); choose one with --map SYMBOL={u}",
                    many.join(", ")
                )));
            }
        }
    }
    if !missing.is_empty() {
        return Err(HistoryError::Mapping(format!(
            "no price history for {} (held by the accounts); history series: {}; add a file with their prices or map one explicitly with --map SYMBOL=UNDERLYING",
            missing.join(", "),
            if history.series.is_empty() {
                "none".to_string()
            } else {
                history.symbols().join(", ")
            }
        )));
    }
    chosen.retain(|u, _| needed.contains(u));
    Ok(chosen)
}

/// Parses a horizon: `15m`, `1h`, `4h`, `1d` (humantime syntax), at least 1 ms.
pub fn parse_horizon(s: &str) -> Result<TimestampMs, String> {
    let d: Duration = humantime::parse_duration(s.trim())
        .map_err(|e| format!("horizon {s:?}: {e} (write e.g. 1h, 4h, 1d)"))?;
    match TimestampMs::try_from(d.as_millis()) {
        Ok(ms) if ms > 0 => Ok(ms),
        _ => Err(format!("horizon {s:?} must be at least 1 ms")),
    }
}

/// One joint move: the window and its multiplier per underlying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Start of the window (ms).
    pub start_ms: TimestampMs,
    /// End of the window (ms).
    pub end_ms: TimestampMs,
}

/// N joint return vectors over a set of underlyings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioSet {
    /// A name for reports (`history`, `crash-2021-05-19:4h`).
    pub name: String,
    /// The underlyings, in column order.
    pub underlyings: Vec<String>,
    /// The history symbol used for each underlying.
    pub symbols: Vec<String>,
    /// The horizon in ms (0 for hand-made sets).
    pub horizon_ms: TimestampMs,
    /// The windows, in time order.
    pub windows: Vec<Window>,
    /// Multiplier mantissas `m = 1 + r` at [`RETURN_SCALE`], row-major (`windows × underlyings`).
    pub multipliers: Vec<i64>,
}

impl ScenarioSet {
    /// A hand-made set from returns (for tests and the worked example). Each return is
    /// rounded half-up to [`RETURN_SCALE`] places; it must be > −1.
    pub fn from_returns(
        name: &str,
        underlyings: &[&str],
        rows: &[Vec<Decimal>],
    ) -> Result<ScenarioSet, String> {
        let mut multipliers = Vec::with_capacity(rows.len() * underlyings.len());
        let mut windows = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if row.len() != underlyings.len() {
                return Err(format!(
                    "scenario {}: {} returns for {} underlyings",
                    i + 1,
                    row.len(),
                    underlyings.len()
                ));
            }
            for r in row {
                let m = (Decimal::ONE
                    + r.round_dp_with_strategy(
                        RETURN_SCALE,
                        rust_decimal::RoundingStrategy::MidpointAwayFromZero,
                    ))
                .checked_mul(Decimal::from(ONE_M))
                .and_then(|d| i64::try_from(d).ok())
                .filter(|m| *m > 0)
                .ok_or_else(|| format!("scenario {}: return {r} must be > -100 %", i + 1))?;
                multipliers.push(m);
            }
            let t = TimestampMs::try_from(i).unwrap_or(TimestampMs::MAX);
            windows.push(Window {
                start_ms: t,
                end_ms: t,
            });
        }
        Ok(ScenarioSet {
            name: name.to_string(),
            underlyings: underlyings.iter().map(|u| u.to_string()).collect(),
            symbols: underlyings.iter().map(|u| u.to_string()).collect(),
            horizon_ms: 0,
            windows,
            multipliers,
        })
    }

    /// Number of scenarios.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// True when there is no scenario.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The multipliers of scenario `s`, one per underlying.
    pub fn row(&self, s: usize) -> &[i64] {
        let j = self.underlyings.len();
        self.multipliers.get(s * j..(s + 1) * j).unwrap_or(&[])
    }

    /// The column of `underlying`.
    pub fn column(&self, underlying: &str) -> Option<usize> {
        self.underlyings.iter().position(|u| u == underlying)
    }

    /// The return `r = m − 1` of scenario `s`, column `j`, exactly.
    pub fn return_of(&self, s: usize, j: usize) -> Decimal {
        let m = self.row(s).get(j).copied().unwrap_or(ONE_M);
        Decimal::new(m - ONE_M, RETURN_SCALE)
    }

    /// Keeps only scenario `s` (an episode's worst window).
    pub fn only(&self, s: usize, name: &str) -> Option<ScenarioSet> {
        let w = self.windows.get(s)?.clone();
        Some(ScenarioSet {
            name: name.to_string(),
            underlyings: self.underlyings.clone(),
            symbols: self.symbols.clone(),
            horizon_ms: self.horizon_ms,
            windows: vec![w],
            multipliers: self.row(s).to_vec(),
        })
    }
}

/// `round_half_up(b / a · 10^RETURN_SCALE)` for positive `a`, `b`, in exact integer arithmetic.
fn multiplier(a: Decimal, b: Decimal) -> Option<i64> {
    let s = a.scale().max(b.scale());
    let am = a
        .mantissa()
        .checked_mul(10i128.checked_pow(s - a.scale())?)?;
    let bm = b
        .mantissa()
        .checked_mul(10i128.checked_pow(s - b.scale())?)?;
    if am <= 0 || bm <= 0 {
        return None;
    }
    let n = bm.checked_mul(i128::from(ONE_M))?;
    let (q, rem) = (n / am, n % am);
    let q = if rem.checked_mul(2)? >= am { q + 1 } else { q };
    i64::try_from(q).ok().filter(|m| *m > 0)
}

/// Builds the overlapping windows of `horizon_ms` over the series chosen for each underlying
/// (`underlying → symbol`, from [`resolve`]).
pub fn build(
    name: &str,
    history: &History,
    chosen: &BTreeMap<String, String>,
    horizon_ms: TimestampMs,
) -> Result<ScenarioSet, HistoryError> {
    if horizon_ms <= 0 {
        return Err(HistoryError::Windows("the horizon must be positive".into()));
    }
    let mut cols: Vec<(&String, &String, &Series)> = Vec::with_capacity(chosen.len());
    for (u, sym) in chosen {
        let s = history
            .series
            .get(sym)
            .ok_or_else(|| HistoryError::Mapping(format!("no history series {sym:?} for {u}")))?;
        cols.push((u, sym, s));
    }
    let mut set = ScenarioSet {
        name: name.to_string(),
        underlyings: cols.iter().map(|c| c.0.clone()).collect(),
        symbols: cols.iter().map(|c| c.1.clone()).collect(),
        horizon_ms,
        windows: Vec::new(),
        multipliers: Vec::new(),
    };
    let Some(first) = cols.first() else {
        return Ok(set);
    };
    let mut row = Vec::with_capacity(cols.len());
    'starts: for &t in first.2.points.keys() {
        let Some(end) = t.checked_add(horizon_ms) else {
            break;
        };
        row.clear();
        for (u, sym, s) in &cols {
            let (Some(a), Some(b)) = (s.points.get(&t), s.points.get(&end)) else {
                continue 'starts;
            };
            let m = multiplier(*a, *b).ok_or_else(|| {
                HistoryError::Windows(format!(
                    "{sym} ({u}) from {a} to {b} at {t}: the move is beyond range"
                ))
            })?;
            row.push(m);
        }
        set.windows.push(Window {
            start_ms: t,
            end_ms: end,
        });
        set.multipliers.extend_from_slice(&row);
    }
    if set.windows.is_empty() {
        return Err(HistoryError::Windows(format!(
            "no {} window has prices of every series ({}) at both ends; the history is too short or the series do not share timestamps",
            humantime::format_duration(Duration::from_millis(
                u64::try_from(horizon_ms).unwrap_or(0)
            )),
            set.symbols.join(", ")
        )));
    }
    Ok(set)
}

#[cfg(test)]
mod tests;
