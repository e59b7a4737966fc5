//! Instrument import: the venues' own REST responses (instrument lists, leverage brackets,
//! risk-limit tiers, margin tables) → [`Instrument`] presets, written as TOML by [`write`].
//!
//! One file per venue holds its wire types and a pure reader; nothing here does I/O beyond
//! reading the files it is given (`liqwatch instruments import`, `src/cli/instruments.rs`).
//!
//! ## Policy
//!
//! - Numbers are read as **exact decimal text**, whether the venue sends a JSON string
//!   (`"0.0065"`) or a JSON number (`0.0065`, read as raw number text, never through `f64`).
//! - Malformed input is refused with the file, line, column and field path
//!   (`feeds/x.json:3:41: [0].brackets[0].maintMarginRatio: …`); nothing is half-imported.
//! - Tiers are written exactly as the venue publishes them; where a venue publishes no cap on
//!   its last tier, [`OPEN_CAP`] stands in (as the hand-written presets do).
//! - A reader only reads what the format carries: a field the input does not publish (the
//!   liquidation fee when only brackets are given) is left at its default and the
//!   `source_note` says so.
//!
//! Venues with a reader: Binance USD-M (leverage brackets, raw or as saved by ccxt/freqtrade,
//! plus `exchangeInfo`) and Hyperliquid (`meta`). Bybit, OKX, Deribit and Binance COIN-M are
//! recognised by the command line and refused with the reason ([`ImportError::Unsupported`]).

pub mod binance;
pub mod hyperliquid;
pub mod refresh;
pub mod source;
pub mod write;

use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::value::RawValue;

use crate::feeds::wire::parse_decimal;
use crate::model::{Instrument, InstrumentKind};

/// The cap written for a last tier that the venue publishes without one (1e12 in the quote
/// currency), as in the hand-written Hyperliquid presets.
pub const OPEN_CAP: Decimal = dec!(1000000000000);

/// The venues (and venue formats) `liqwatch instruments import --venue` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImportVenue {
    /// Binance USD-M futures: `GET /fapi/v1/leverageBracket` (+ `GET /fapi/v1/exchangeInfo`).
    BinanceUsdm,
    /// Binance COIN-M futures (not yet: no real sample response at hand).
    BinanceCoinm,
    /// Bybit v5 instruments-info + risk-limit (not yet: no real sample response at hand).
    Bybit,
    /// OKX v5 instruments + position-tiers (not yet: tiers are in contracts, see below).
    Okx,
    /// Deribit `public/get_instruments` (not yet: it publishes no margin tiers).
    Deribit,
    /// Hyperliquid `POST /info {"type":"meta"}` with its margin tables.
    Hyperliquid,
}

impl ImportVenue {
    /// True when [`import`] has a reader for the venue (the others are refused with why).
    pub fn has_reader(self) -> bool {
        matches!(self, ImportVenue::BinanceUsdm | ImportVenue::Hyperliquid)
    }

    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ImportVenue::BinanceUsdm => "binance-usdm",
            ImportVenue::BinanceCoinm => "binance-coinm",
            ImportVenue::Bybit => "bybit",
            ImportVenue::Okx => "okx",
            ImportVenue::Deribit => "deribit",
            ImportVenue::Hyperliquid => "hyperliquid",
        }
    }
}

/// Why an import failed. Every variant names the file; format errors name line and field.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not JSON, or JSON of the wrong shape (serde_json's own message names the field).
    #[error("{path}:{line}:{column}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value of the right JSON type that is not acceptable (a bad number, unsorted tiers).
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the value (1 when unknown).
        line: usize,
        /// 1-based column of the value (1 when unknown).
        column: usize,
        /// The field path (`[3].brackets[0].cum`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The venue's reader is not written, and why.
    #[error("--venue {venue}: {reason}")]
    Unsupported {
        /// The venue.
        venue: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The files given do not make an instrument set (no brackets file, nothing inside).
    #[error("{0}")]
    Incomplete(String),
}

/// What an import produced: the instruments (sorted by id) and what was left out, and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imported {
    /// The instruments read, sorted by id.
    pub instruments: Vec<Instrument>,
    /// Venue symbols left out, each with the reason (`MATIC: delisted`).
    pub skipped: Vec<String>,
    /// For each instrument id, how large the venue lets a position get (the top tier's cap, or
    /// the maximum leverage where caps are open) — the ranking `--top` uses.
    pub size_rank: Vec<(String, Decimal)>,
}

impl Imported {
    /// Keeps the `n` perpetuals ranked largest by [`Imported::size_rank`] (ties by id) and
    /// drops everything else.
    pub fn keep_top_perpetuals(&mut self, n: usize) {
        let mut ranked: Vec<(String, Decimal)> = self
            .size_rank
            .iter()
            .filter(|(id, _)| {
                self.instruments.iter().any(|i| {
                    i.id.as_str() == id
                        && matches!(
                            i.kind,
                            InstrumentKind::LinearPerpetual | InstrumentKind::InversePerpetual
                        )
                })
            })
            .cloned()
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(n);
        self.instruments
            .retain(|i| ranked.iter().any(|(id, _)| id == i.id.as_str()));
        self.size_rank
            .retain(|(id, _)| ranked.iter().any(|(r, _)| r == id));
    }
}

/// One input file: its path and its text.
#[derive(Clone, Debug)]
pub struct Input {
    /// Where it came from (for error messages and the generated header).
    pub path: PathBuf,
    /// The JSON text.
    pub text: String,
}

impl Input {
    /// Reads a file.
    pub fn read(path: &Path) -> Result<Input, ImportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Input {
            path: path.to_path_buf(),
            text,
        })
    }

    /// Parses the whole text as `T`, mapping serde_json's error to file/line/column.
    pub(crate) fn parse<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, ImportError> {
        serde_json::from_str(&self.text).map_err(|e| ImportError::Json {
            path: self.path.clone(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
    }

    /// An [`ImportError::Invalid`] located at `at`, a slice of this input's text (a borrowed
    /// raw value), or at line 1 when `at` is not inside the text.
    pub(crate) fn invalid(&self, at: Option<&str>, field: &str, message: String) -> ImportError {
        let (line, column) = at
            .and_then(|s| offset_in(&self.text, s))
            .map(|off| line_col(&self.text, off))
            .unwrap_or((1, 1));
        ImportError::Invalid {
            path: self.path.clone(),
            line,
            column,
            field: field.to_string(),
            message,
        }
    }

    /// An exact decimal from a raw JSON value that is either a string (`"0.0065"`) or a number
    /// (`0.0065`); `null`, `""` and absence are errors naming `field`.
    pub(crate) fn decimal(
        &self,
        raw: Option<&RawValue>,
        field: &str,
    ) -> Result<Decimal, ImportError> {
        let Some(raw) = raw else {
            return Err(self.invalid(None, field, "missing".into()));
        };
        let text = raw.get();
        let inner = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text);
        parse_decimal(inner).map_err(|e| {
            self.invalid(
                Some(text),
                field,
                format!("{}: {e}", text.chars().take(40).collect::<String>()),
            )
        })
    }

    /// Like [`Input::decimal`], but `""`, `null` and absence are `None`.
    pub(crate) fn decimal_opt(
        &self,
        raw: Option<&RawValue>,
        field: &str,
    ) -> Result<Option<Decimal>, ImportError> {
        match raw.map(RawValue::get) {
            None | Some("null") | Some("\"\"") => Ok(None),
            Some(_) => self.decimal(raw, field).map(Some),
        }
    }
}

/// The byte offset of `part` inside `whole`, when `part` is a slice of it.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    (p >= start && p <= start + whole.len()).then(|| p - start)
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Reads the files for `venue` into instruments.
pub fn import(venue: ImportVenue, files: &[Input]) -> Result<Imported, ImportError> {
    match venue {
        ImportVenue::BinanceUsdm => binance::import(files),
        ImportVenue::Hyperliquid => hyperliquid::import(files),
        ImportVenue::BinanceCoinm => Err(ImportError::Unsupported {
            venue: venue.as_str(),
            reason: "no real GET /dapi/v1/leverageBracket response (qtyFloor/qtyCap in coin) was \
                     found to test a reader against; the COIN-M preset stays hand-written",
        }),
        ImportVenue::Bybit => Err(ImportError::Unsupported {
            venue: venue.as_str(),
            reason: "no real linear GET /v5/market/risk-limit response was found to test a reader \
                     against (the docs' example is an elided inverse table whose rate units are \
                     ambiguous)",
        }),
        ImportVenue::Okx => Err(ImportError::Unsupported {
            venue: venue.as_str(),
            reason: "no real SWAP GET /api/v5/public/position-tiers response was found to test a \
                     reader against (the only saved one, in nautilus_trader, is a one-tier \
                     MARGIN example); the model can hold OKX's contract step tiers \
                     (margin.tier_basis = \"contracts\"), so the OKX presets stay hand-written",
        }),
        ImportVenue::Deribit => Err(ImportError::Unsupported {
            venue: venue.as_str(),
            reason: "public/get_instruments publishes no maintenance-margin parameters: Deribit's \
                     size-linear rate (margin.mmr_size_slope) is documented on its pages, not in \
                     the response, so no preset can be built from it",
        }),
    }
}

/// `cum_k = cum_(k−1) + floor_k·(mmr_k − mmr_(k−1))`, the deduction that makes MM continuous,
/// for venues that publish rates and floors but not the deduction (Hyperliquid).
pub(crate) fn next_cum(
    prev_cum: Decimal,
    floor: Decimal,
    mmr: Decimal,
    prev_mmr: Decimal,
) -> Option<Decimal> {
    mmr.checked_sub(prev_mmr)
        .and_then(|r| floor.checked_mul(r))
        .and_then(|d| d.checked_add(prev_cum))
}

#[cfg(test)]
mod tests;
