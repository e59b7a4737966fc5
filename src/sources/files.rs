//! Input files: instrument presets (TOML), account snapshots (JSON or JSONL), price sets (TOML)
//! and stress scenarios (`BTC=-20%,ETH=-25%`, `all=-10%`).
//!
//! Every error names the file, the line (and column where the parser gives one) and the field
//! path (`instrument[2].tiers[0].mmr`, `accounts[1].positions[0].quantity`), so a person can go
//! straight to the mistake. Decimals are read from strings only: a TOML or JSON float would
//! already have lost exactness and is rejected.
//!
//! Checks beyond the syntax: duplicate ids, unknown instruments in accounts, tiers not sorted or
//! not starting at 0, rates outside `[0, 1]`, negative prices (all errors); a `cum` that does
//! not follow the recursion `cum_k = cum_(k−1) + floor_k·(mmr_k − mmr_(k−1))` or a cap that
//! is not the next floor (warnings: MM is then discontinuous, which a venue like OKX does on
//! purpose). Each rejected file counts `liqwatch_inputs_rejected_total{kind}`; each warning
//! `liqwatch_inputs_warnings_total{kind}`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::model::{Account, Instrument, InstrumentId, InstrumentKind};

/// An input file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML/JSON or a value has the wrong type.
    #[error("{}", fmt_location(path, *line, *column, field, message))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// Path of the field in the document (`instrument[2].tiers[0].mmr`), may be empty.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The file parses but its content is inconsistent.
    #[error("{}", fmt_location(path, *line, None, field, message))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending item, when known.
        line: Option<usize>,
        /// Path of the field (`instrument[BTCUSDT-PERP].tiers[2].cum`).
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A stress scenario string is malformed.
    #[error("scenario {scenario:?}: {message}")]
    Scenario {
        /// The scenario as given.
        scenario: String,
        /// What is wrong.
        message: String,
    },
}

impl InputError {
    /// The file the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            InputError::Io { path, .. }
            | InputError::Syntax { path, .. }
            | InputError::Invalid { path, .. } => Some(path),
            InputError::Scenario { .. } => None,
        }
    }
}

fn fmt_location(
    path: &Path,
    line: Option<usize>,
    column: Option<usize>,
    field: &str,
    message: &str,
) -> String {
    let mut s = path.display().to_string();
    if let Some(l) = line {
        s.push_str(&format!(":{l}"));
        if let Some(c) = column {
            s.push_str(&format!(":{c}"));
        }
    }
    s.push_str(": ");
    if !field.is_empty() {
        s.push_str(&format!("field `{field}`: "));
    }
    s.push_str(message);
    s
}

/// Something accepted but suspicious in an input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputWarning {
    /// The file.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Field path.
    pub field: String,
    /// What is suspicious.
    pub message: String,
}

impl fmt::Display for InputWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&fmt_location(
            &self.path,
            self.line,
            None,
            &self.field,
            &self.message,
        ))
    }
}

fn reject(kind: &'static str, e: InputError) -> InputError {
    metrics::counter!("liqwatch_inputs_rejected_total", "kind" => kind).increment(1);
    tracing::warn!(kind, error = %e, "Input file rejected");
    e
}

fn read(path: &Path) -> Result<String, InputError> {
    std::fs::read_to_string(path).map_err(|source| InputError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Byte offsets of line starts, for O(log n) line lookups in large account files (computing
/// each account's line from scratch made a 100k-account snapshot take minutes to load).
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// 1-based (line, column) of a byte offset; the column counts bytes.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        (line, offset.saturating_sub(start) + 1)
    }
}

/// 1-based (line, column) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|i| before.len() - i)
        .unwrap_or(before.len() + 1);
    (line, col)
}

#[cfg(test)]
mod line_index_tests {
    use super::*;

    /// The line index agrees with the direct computation at every offset.
    #[test]
    fn line_index_matches_line_col() {
        let text = "ab\n\ncd\nefg\n";
        let idx = LineIndex::new(text);
        for off in 0..=text.len() {
            assert_eq!(idx.line_col(off), line_col(text, off), "offset {off}");
        }
    }
}

fn toml_error(path: &Path, text: &str, field: String, e: &toml::de::Error) -> InputError {
    let (line, column) = match e.span() {
        Some(r) => {
            let (l, c) = line_col(text, r.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    InputError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        field,
        message: e.message().trim().to_string(),
    }
}

/// The first TOML float in a document, with its key path. TOML floats are binary `f64`
/// (`0.1` is not 0.1), and serde would hand them to the decimal parser silently, so they are
/// refused before deserialising.
fn first_float(
    v: &toml::Spanned<toml::de::DeValue<'_>>,
    field: String,
) -> Option<(String, std::ops::Range<usize>)> {
    match v.get_ref() {
        toml::de::DeValue::Float(_) => Some((field, v.span())),
        toml::de::DeValue::Array(a) => a
            .into_iter()
            .enumerate()
            .find_map(|(i, x)| first_float(x, format!("{field}[{i}]"))),
        toml::de::DeValue::Table(t) => t.iter().find_map(|(k, x)| {
            let key: &str = k.get_ref();
            let f = if field.is_empty() {
                key.to_string()
            } else {
                format!("{field}.{key}")
            };
            first_float(x, f)
        }),
        _ => None,
    }
}

/// Deserialises a TOML document, keeping the field path of the first error.
fn from_toml<'de, T: Deserialize<'de>>(path: &Path, text: &'de str) -> Result<T, InputError> {
    let root =
        toml::de::DeTable::parse(text).map_err(|e| toml_error(path, text, String::new(), &e))?;
    let as_value = toml::Spanned::new(root.span(), toml::de::DeValue::Table(root.into_inner()));
    if let Some((field, span)) = first_float(&as_value, String::new()) {
        let (line, column) = line_col(text, span.start);
        return Err(InputError::Syntax {
            path: path.to_path_buf(),
            line: Some(line),
            column: Some(column),
            field,
            message: format!(
                "{} is a TOML float, which is not exact; write the decimal as a string: \"{}\"",
                text.get(span.clone()).unwrap_or("the value"),
                text.get(span).unwrap_or("…")
            ),
        });
    }
    let de =
        toml::Deserializer::parse(text).map_err(|e| toml_error(path, text, String::new(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        toml_error(path, text, field, e.inner())
    })
}

// ---------------------------------------------------------------------------------------------
// Instruments
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetFile {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    instrument: Vec<toml::Spanned<Instrument>>,
}

/// Loads instrument presets from a TOML file (and the files its `include` list names,
/// relative to it). Warnings are logged; see [`load_instruments_with_warnings`] to get them.
pub fn load_instruments(path: &Path) -> Result<HashMap<InstrumentId, Instrument>, InputError> {
    let (map, warnings) = load_instruments_with_warnings(path)?;
    for w in &warnings {
        tracing::warn!(warning = %w, "Instrument preset warning");
    }
    Ok(map)
}

/// Loads instrument presets and returns the warnings instead of logging them.
pub fn load_instruments_with_warnings(
    path: &Path,
) -> Result<(HashMap<InstrumentId, Instrument>, Vec<InputWarning>), InputError> {
    let mut out = HashMap::new();
    let mut first_seen: HashMap<InstrumentId, (PathBuf, usize)> = HashMap::new();
    let mut warnings = Vec::new();
    let mut visiting = Vec::new();
    load_preset_file(
        path,
        &mut out,
        &mut first_seen,
        &mut warnings,
        &mut visiting,
    )
    .map_err(|e| reject("instruments", e))?;
    metrics::counter!("liqwatch_inputs_warnings_total", "kind" => "instruments")
        .increment(warnings.len() as u64);
    Ok((out, warnings))
}

fn load_preset_file(
    path: &Path,
    out: &mut HashMap<InstrumentId, Instrument>,
    first_seen: &mut HashMap<InstrumentId, (PathBuf, usize)>,
    warnings: &mut Vec<InputWarning>,
    visiting: &mut Vec<PathBuf>,
) -> Result<(), InputError> {
    if visiting.iter().any(|p| p == path) || visiting.len() > 8 {
        return Err(InputError::Invalid {
            path: path.to_path_buf(),
            line: None,
            field: "include".into(),
            message: "include cycle (or more than 8 levels of includes)".into(),
        });
    }
    let text = read(path)?;
    let file: PresetFile = from_toml(path, &text)?;
    visiting.push(path.to_path_buf());
    for inc in &file.include {
        let p = path.parent().unwrap_or(Path::new(".")).join(inc);
        load_preset_file(&p, out, first_seen, warnings, visiting)?;
    }
    visiting.pop();
    for (idx, spanned) in file.instrument.into_iter().enumerate() {
        let line = line_col(&text, spanned.span().start).0;
        let inst = spanned.into_inner();
        let here = |field: String, message: String| InputError::Invalid {
            path: path.to_path_buf(),
            line: Some(line),
            field,
            message,
        };
        if let Some((p, l)) = first_seen.get(&inst.id) {
            return Err(here(
                format!("instrument[{idx}].id"),
                format!(
                    "duplicate instrument id {:?} (first defined at {}:{l})",
                    inst.id.as_str(),
                    p.display()
                ),
            ));
        }
        let (errs, warns) = check_instrument(&inst);
        if let Some((field, message)) = errs.into_iter().next() {
            return Err(here(format!("instrument[{idx}]{field}"), message));
        }
        for (field, message) in warns {
            warnings.push(InputWarning {
                path: path.to_path_buf(),
                line: Some(line),
                field: format!("instrument[{idx}]{field}"),
                message,
            });
        }
        first_seen.insert(inst.id.clone(), (path.to_path_buf(), line));
        out.insert(inst.id.clone(), inst);
    }
    Ok(())
}

/// Findings of [`check_instrument`]: `(field suffix, message)` pairs.
pub type Findings = Vec<(String, String)>;

/// Checks one instrument. Returns `(errors, warnings)`.
pub fn check_instrument(i: &Instrument) -> (Findings, Findings) {
    let mut errs = Vec::new();
    let mut warns = Vec::new();
    let zero = Decimal::ZERO;
    let one = Decimal::ONE;
    if i.underlying.trim().is_empty() {
        errs.push((".underlying".into(), "must not be empty".into()));
    }
    if i.contract_size <= zero {
        errs.push((
            ".contract_size".into(),
            format!("must be positive, got {}", i.contract_size),
        ));
    }
    if i.liquidation_fee_rate < zero || i.liquidation_fee_rate > one {
        errs.push((
            ".liquidation_fee_rate".into(),
            format!("must be in [0, 1], got {}", i.liquidation_fee_rate),
        ));
    }
    if i.kind.is_contract() {
        if i.stable {
            errs.push((".stable".into(), "a contract cannot be a stablecoin".into()));
        }
        if i.tiers.is_empty() {
            errs.push((
                ".tiers".into(),
                "a contract needs at least one maintenance-margin tier".into(),
            ));
        }
        for (k, t) in i.tiers.iter().enumerate() {
            let f = format!(".tiers[{k}]");
            if t.mmr < zero || t.mmr > one {
                errs.push((
                    format!("{f}.mmr"),
                    format!("must be in [0, 1], got {}", t.mmr),
                ));
            }
            if t.cum < zero {
                errs.push((
                    format!("{f}.cum"),
                    format!("must not be negative, got {}", t.cum),
                ));
            }
            if t.notional_cap <= t.notional_floor {
                errs.push((
                    format!("{f}.notional_cap"),
                    format!(
                        "cap {} must be above the floor {}",
                        t.notional_cap, t.notional_floor
                    ),
                ));
            }
            if k == 0 {
                if !t.notional_floor.is_zero() {
                    errs.push((
                        format!("{f}.notional_floor"),
                        format!("the first tier must start at 0, got {}", t.notional_floor),
                    ));
                }
                if !t.cum.is_zero() {
                    warns.push((
                        format!("{f}.cum"),
                        format!(
                            "the first tier's maintenance amount is normally 0, got {}",
                            t.cum
                        ),
                    ));
                }
                continue;
            }
            let Some(prev) = i.tiers.get(k - 1) else {
                continue;
            };
            if t.notional_floor <= prev.notional_floor {
                errs.push((
                    format!("{f}.notional_floor"),
                    format!(
                        "tiers must be sorted by floor: {} after {}",
                        t.notional_floor, prev.notional_floor
                    ),
                ));
                continue;
            }
            if prev.notional_cap != t.notional_floor {
                warns.push((
                    format!(".tiers[{}].notional_cap", k - 1),
                    format!(
                        "cap {} is not the next tier's floor {}",
                        prev.notional_cap, t.notional_floor
                    ),
                ));
            }
            if t.mmr < prev.mmr {
                warns.push((
                    format!("{f}.mmr"),
                    format!(
                        "rate {} falls below the previous tier's {}",
                        t.mmr, prev.mmr
                    ),
                ));
            }
            let expected = t
                .notional_floor
                .checked_mul(t.mmr - prev.mmr)
                .and_then(|d| d.checked_add(prev.cum));
            if expected != Some(t.cum) {
                warns.push((
                    format!("{f}.cum"),
                    format!(
                        "maintenance amount {} breaks cum_k = cum_(k-1) + floor_k*(mmr_k - mmr_(k-1)) = {}; MM jumps at {}",
                        t.cum,
                        expected.map(|d| d.to_string()).unwrap_or_else(|| "overflow".into()),
                        t.notional_floor
                    ),
                ));
            }
        }
    } else {
        if !i.tiers.is_empty() {
            errs.push((
                ".tiers".into(),
                "a collateral asset has no maintenance-margin tiers (use haircut_tiers)".into(),
            ));
        }
        if i.collateral_ratio < zero || i.collateral_ratio > one {
            errs.push((
                ".collateral_ratio".into(),
                format!("must be in [0, 1], got {}", i.collateral_ratio),
            ));
        }
        for (k, h) in i.haircut_tiers.iter().enumerate() {
            let f = format!(".haircut_tiers[{k}]");
            if h.ratio < zero || h.ratio > one {
                errs.push((
                    format!("{f}.ratio"),
                    format!("must be in [0, 1], got {}", h.ratio),
                ));
            }
            if k == 0 && !h.amount_floor.is_zero() {
                errs.push((
                    format!("{f}.amount_floor"),
                    format!("the first slice must start at 0, got {}", h.amount_floor),
                ));
            }
            if let Some(prev) = k.checked_sub(1).and_then(|p| i.haircut_tiers.get(p)) {
                if h.amount_floor <= prev.amount_floor {
                    errs.push((
                        format!("{f}.amount_floor"),
                        format!(
                            "slices must be sorted by floor: {} after {}",
                            h.amount_floor, prev.amount_floor
                        ),
                    ));
                }
            }
        }
    }
    if i.kind == InstrumentKind::Collateral && i.stable && !i.sources.is_empty() {
        warns.push((
            ".sources".into(),
            "a stablecoin is valued at 1; its price sources are ignored".into(),
        ));
    }
    (errs, warns)
}

// ---------------------------------------------------------------------------------------------
// Accounts
// ---------------------------------------------------------------------------------------------

/// An account with the line it starts on in its file.
#[derive(Clone, Debug)]
pub struct LocatedAccount {
    /// The account.
    pub account: Account,
    /// 1-based line where the account's JSON object starts.
    pub line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile<'a> {
    #[serde(borrow)]
    accounts: Vec<&'a serde_json::value::RawValue>,
}

/// Loads accounts from a file: `{"accounts": [ {…}, … ]}` (JSON), or one account object per
/// line when the file name ends in `.jsonl` (blank lines and lines starting with `#` are
/// skipped). Checks duplicate account ids, duplicate legs and the sign of hedge-mode legs.
pub fn load_accounts(path: &Path) -> Result<Vec<Account>, InputError> {
    load_accounts_located(path).map(|v| v.into_iter().map(|a| a.account).collect())
}

/// [`load_accounts`], plus every instrument an account refers to must be configured: positions
/// on contracts, collateral on collateral assets.
pub fn load_accounts_checked(
    path: &Path,
    instruments: &HashMap<InstrumentId, Instrument>,
) -> Result<Vec<Account>, InputError> {
    let located = load_accounts_located(path)?;
    for (idx, la) in located.iter().enumerate() {
        check_account_refs(path, idx, la, instruments).map_err(|e| reject("accounts", e))?;
    }
    Ok(located.into_iter().map(|a| a.account).collect())
}

/// [`load_accounts`] keeping each account's line.
pub fn load_accounts_located(path: &Path) -> Result<Vec<LocatedAccount>, InputError> {
    let text = read(path).map_err(|e| reject("accounts", e))?;
    parse_accounts(path, &text).map_err(|e| reject("accounts", e))
}

fn json_error(
    path: &Path,
    base_line: usize,
    base_col: usize,
    field: String,
    e: &serde_json::Error,
) -> InputError {
    let line = e.line();
    let (line, column) = if line == 0 {
        (Some(base_line), None)
    } else if line == 1 {
        (
            Some(base_line),
            Some(base_col + e.column().saturating_sub(1)),
        )
    } else {
        (Some(base_line + line - 1), Some(e.column()))
    };
    // serde_json appends " at line X column Y" relative to the fragment; drop it.
    let msg = e.to_string();
    let msg = msg
        .rsplit_once(" at line ")
        .map(|(m, _)| m.to_string())
        .unwrap_or(msg);
    InputError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        field,
        message: msg,
    }
}

fn parse_account_at(
    path: &Path,
    lines: &LineIndex,
    offset: usize,
    raw: &str,
    field_prefix: &str,
) -> Result<LocatedAccount, InputError> {
    let (line, col) = lines.line_col(offset);
    let mut de = serde_json::Deserializer::from_str(raw);
    let account: Account = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let p = e.path().to_string();
        let field = if p == "." {
            field_prefix.to_string()
        } else {
            format!("{field_prefix}.{p}")
        };
        json_error(path, line, col, field, e.inner())
    })?;
    Ok(LocatedAccount { account, line })
}

/// Parses accounts from text (see [`load_accounts`] for the formats).
pub fn parse_accounts(path: &Path, text: &str) -> Result<Vec<LocatedAccount>, InputError> {
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let lines = LineIndex::new(text);
    let mut out = Vec::new();
    if jsonl {
        let mut offset = 0;
        let mut n = 0usize;
        for l in text.split_inclusive('\n') {
            let trimmed = l.trim();
            if !trimmed.is_empty() && !trimmed.starts_with('#') {
                let lead = l.len() - l.trim_start().len();
                out.push(parse_account_at(
                    path,
                    &lines,
                    offset + lead,
                    trimmed,
                    &format!("accounts[{n}]"),
                )?);
                n += 1;
            }
            offset += l.len();
        }
    } else {
        let mut de = serde_json::Deserializer::from_str(text);
        let file: AccountsFile<'_> = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let p = e.path().to_string();
            json_error(
                path,
                1,
                1,
                if p == "." { String::new() } else { p },
                e.inner(),
            )
        })?;
        de.end()
            .map_err(|e| json_error(path, 1, 1, String::new(), &e))?;
        for (n, raw) in file.accounts.iter().enumerate() {
            let s = raw.get();
            let offset = (s.as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
            out.push(parse_account_at(
                path,
                &lines,
                offset,
                s,
                &format!("accounts[{n}]"),
            )?);
        }
    }
    check_accounts(path, &out)?;
    Ok(out)
}

fn check_accounts(path: &Path, accounts: &[LocatedAccount]) -> Result<(), InputError> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (n, la) in accounts.iter().enumerate() {
        let a = &la.account;
        let here = |field: String, message: String| InputError::Invalid {
            path: path.to_path_buf(),
            line: Some(la.line),
            field,
            message,
        };
        if let Some(first) = ids.insert(a.id.as_str(), la.line) {
            return Err(here(
                format!("accounts[{n}].id"),
                format!(
                    "duplicate account id {:?} (first at line {first})",
                    a.id.as_str()
                ),
            ));
        }
        // The rules every path shares (files, HTTP, NATS, the map): `Account::problems`.
        if let Some(p) = a.problems().into_iter().next() {
            return Err(here(format!("accounts[{n}].{}", p.field), p.message));
        }
    }
    Ok(())
}

fn check_account_refs(
    path: &Path,
    n: usize,
    la: &LocatedAccount,
    instruments: &HashMap<InstrumentId, Instrument>,
) -> Result<(), InputError> {
    let here = |field: String, message: String| InputError::Invalid {
        path: path.to_path_buf(),
        line: Some(la.line),
        field,
        message,
    };
    for asset in la.account.collateral.keys() {
        match instruments.get(asset) {
            None => {
                return Err(here(
                    format!("accounts[{n}].collateral.{asset}"),
                    format!("unknown collateral asset {asset:?}: not in the instrument presets"),
                ));
            }
            Some(i) if i.kind.is_contract() => {
                return Err(here(
                    format!("accounts[{n}].collateral.{asset}"),
                    format!("{asset:?} is a contract, not a collateral asset"),
                ));
            }
            Some(_) => {}
        }
    }
    for (k, p) in la.account.positions.iter().enumerate() {
        let f = format!("accounts[{n}].positions[{k}].instrument");
        match instruments.get(&p.instrument) {
            None => {
                return Err(here(
                    f,
                    format!(
                        "unknown instrument {:?}: not in the instrument presets",
                        p.instrument.as_str()
                    ),
                ));
            }
            Some(i) if !i.kind.is_contract() => {
                return Err(here(
                    f,
                    format!(
                        "{:?} is a collateral asset; hold it under \"collateral\"",
                        p.instrument.as_str()
                    ),
                ));
            }
            Some(i) if i.kind.is_inverse() && p.entry_price <= Decimal::ZERO => {
                return Err(here(
                    format!("accounts[{n}].positions[{k}].entry_price"),
                    "an inverse contract needs a positive entry price".into(),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Prices
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricesFile {
    prices: BTreeMap<String, toml::Spanned<String>>,
}

/// Loads a price set: a TOML table `[prices]` whose keys are underlyings (`BTC = "60000"`,
/// applied to every non-stable instrument with that underlying: perp marks and collateral
/// alike) or instrument ids (`"BTCUSDT-PERP" = "60010"`, which wins over the underlying).
/// Values are decimal strings, not negative. Unknown keys are errors.
pub fn load_prices(
    path: &Path,
    instruments: &HashMap<InstrumentId, Instrument>,
) -> Result<HashMap<InstrumentId, Decimal>, InputError> {
    let text = read(path).map_err(|e| reject("prices", e))?;
    parse_prices(path, &text, instruments).map_err(|e| reject("prices", e))
}

/// Parses a price set from text (see [`load_prices`]).
pub fn parse_prices(
    path: &Path,
    text: &str,
    instruments: &HashMap<InstrumentId, Instrument>,
) -> Result<HashMap<InstrumentId, Decimal>, InputError> {
    let file: PricesFile = from_toml(path, text)?;
    let underlyings: HashSet<&str> = instruments
        .values()
        .map(|i| i.underlying.as_str())
        .collect();
    let mut by_key = HashMap::new();
    for (key, v) in &file.prices {
        let line = Some(line_col(text, v.span().start).0);
        let field = format!("prices.{key}");
        let value: Decimal = v
            .get_ref()
            .trim()
            .parse()
            .map_err(|e| InputError::Invalid {
                path: path.to_path_buf(),
                line,
                field: field.clone(),
                message: format!("not a decimal {:?}: {e}", v.get_ref()),
            })?;
        if value < Decimal::ZERO {
            return Err(InputError::Invalid {
                path: path.to_path_buf(),
                line,
                field,
                message: format!("a price must not be negative, got {value}"),
            });
        }
        if !instruments.contains_key(key.as_str()) && !underlyings.contains(key.as_str()) {
            return Err(InputError::Invalid {
                path: path.to_path_buf(),
                line,
                field,
                message: format!(
                    "{key:?} is neither an instrument id nor an underlying in the presets"
                ),
            });
        }
        by_key.insert(key.as_str(), value);
    }
    let mut out = HashMap::new();
    for i in instruments.values() {
        if i.stable {
            continue;
        }
        let p = by_key
            .get(i.id.as_str())
            .or_else(|| by_key.get(i.underlying.as_str()));
        if let Some(p) = p {
            out.insert(i.id.clone(), *p);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// A stress scenario: fractional moves per underlying, and optionally one for every other
/// non-stable underlying (`all`). Stablecoins never move.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Scenario {
    /// The scenario as written (`BTC=-20%,ETH=-25%`), or `none`.
    pub name: String,
    /// The move of every underlying not named explicitly (−0.1 = −10 %).
    pub all: Option<Decimal>,
    /// Moves per underlying.
    pub moves: BTreeMap<String, Decimal>,
}

impl Scenario {
    /// The scenario that moves nothing.
    pub fn none() -> Scenario {
        Scenario {
            name: "none".into(),
            ..Scenario::default()
        }
    }

    /// The move of an underlying under this scenario (0 when untouched).
    pub fn move_of(&self, underlying: &str) -> Decimal {
        self.moves
            .get(underlying)
            .copied()
            .or(self.all)
            .unwrap_or(Decimal::ZERO)
    }

    /// Applies the scenario to a price set: every non-stable instrument's price × (1 + move).
    /// Exact; no rounding.
    pub fn apply(
        &self,
        instruments: &HashMap<InstrumentId, Instrument>,
        prices: &HashMap<InstrumentId, Decimal>,
    ) -> Option<HashMap<InstrumentId, Decimal>> {
        let mut out = HashMap::with_capacity(prices.len());
        for (id, p) in prices {
            let m = instruments
                .get(id)
                .map(|i| self.move_of(&i.underlying))
                .unwrap_or(Decimal::ZERO);
            let np = p.checked_mul(Decimal::ONE.checked_add(m)?)?;
            out.insert(id.clone(), np);
        }
        Some(out)
    }
}

/// Parses `BTC=-20%,ETH=-25%`, `all=-10%`, `all=-10%,SOL=+5%` or `none`. Moves are percentages
/// (a `%` is required) greater than −100 %. A named underlying overrides `all`. With
/// `known_underlyings`, an underlying that no instrument has is an error (catches typos).
pub fn parse_scenario(
    s: &str,
    known_underlyings: Option<&HashSet<String>>,
) -> Result<Scenario, InputError> {
    let err = |message: String| InputError::Scenario {
        scenario: s.to_string(),
        message,
    };
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err(err(
            "empty scenario; write e.g. all=-10% or BTC=-20%,ETH=-25%".into(),
        ));
    }
    if trimmed.eq_ignore_ascii_case("none") {
        return Ok(Scenario::none());
    }
    let mut sc = Scenario {
        name: trimmed.to_string(),
        ..Scenario::default()
    };
    for part in trimmed.split(',') {
        let part = part.trim();
        let Some((k, v)) = part.split_once('=') else {
            return Err(err(format!(
                "{part:?} is not UNDERLYING=PERCENT% (e.g. BTC=-20%)"
            )));
        };
        let (k, v) = (k.trim(), v.trim());
        let Some(num) = v.strip_suffix('%') else {
            return Err(err(format!("{v:?} needs a % sign (e.g. -20%)")));
        };
        let num = num.trim().trim_start_matches('+');
        let pct: Decimal = num
            .parse()
            .map_err(|e| err(format!("{v:?} is not a percentage: {e}")))?;
        if pct <= -Decimal::ONE_HUNDRED {
            return Err(err(format!(
                "{v} would take prices to zero or below; use > -100%"
            )));
        }
        let frac = pct / Decimal::ONE_HUNDRED;
        if k.eq_ignore_ascii_case("all") {
            if sc.all.replace(frac).is_some() {
                return Err(err("`all` given twice".into()));
            }
        } else {
            if k.is_empty() {
                return Err(err(format!("{part:?} has no underlying before =")));
            }
            if let Some(known) = known_underlyings {
                if !known.contains(k) {
                    let mut names: Vec<_> = known.iter().map(String::as_str).collect();
                    names.sort_unstable();
                    return Err(err(format!(
                        "unknown underlying {k:?}; known: {}",
                        names.join(", ")
                    )));
                }
            }
            if sc.moves.insert(k.to_string(), frac).is_some() {
                return Err(err(format!("{k} given twice")));
            }
        }
    }
    Ok(sc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn presets() -> HashMap<InstrumentId, Instrument> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
        let (m, w) = load_instruments_with_warnings(&p).unwrap();
        assert!(w.is_empty(), "shipped presets have no warnings: {w:?}");
        m
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The shipped presets load, include the per-venue files, and every tier table follows
    /// the cum recursion (no warnings).
    #[test]
    fn shipped_presets_load() {
        let m = presets();
        for id in [
            "BTCUSDT-PERP",
            "ETHUSDT-PERP",
            "SOLUSDT-PERP",
            "BYBIT-BTCUSDT-PERP",
            "BTCUSD-INV-PERP",
            "HL-BTC-PERP",
            "HL-ETH-PERP",
            "USDT",
            "USDC",
            "BTC",
            "ETH",
            "SOL",
            "BYBIT-BTC",
        ] {
            let i = m.get(id).unwrap_or_else(|| panic!("{id} missing"));
            assert!(i.source_note.is_some(), "{id} cites its source");
        }
        assert_eq!(m["BTCUSDT-PERP"].tiers.len(), 12);
        assert_eq!(m["SOLUSDT-PERP"].tiers[9].cum, dec!(66728380));
        assert!(m["BTCUSD-INV-PERP"].kind.is_inverse());
    }

    /// A float where a decimal string is required is rejected with file, line, column and
    /// the field path.
    #[test]
    fn toml_float_names_file_line_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "bad.toml",
            "[[instrument]]\nid = \"X\"\nkind = \"linear_perpetual\"\nunderlying = \"X\"\ntiers = [\n  { notional_floor = \"0\", notional_cap = \"10\", mmr = 0.01, cum = \"0\" },\n]\n",
        );
        let e = load_instruments(&p).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("{}:6:", p.display())), "{msg}");
        assert!(msg.contains("instrument[0].tiers[0].mmr"), "{msg}");
    }

    /// Unsorted tiers, a first floor above 0 and duplicate ids are errors; an inconsistent
    /// cum is a warning naming the tier.
    #[test]
    fn tier_validation() {
        let dir = tempfile::tempdir().unwrap();
        let tiers = |rows: &str| {
            format!(
                "[[instrument]]\nid = \"X\"\nkind = \"linear_perpetual\"\nunderlying = \"X\"\ntiers = [{rows}]\n"
            )
        };
        let t = |f: &str, c: &str, m: &str, cum: &str| {
            format!(
                "{{ notional_floor = \"{f}\", notional_cap = \"{c}\", mmr = \"{m}\", cum = \"{cum}\" }},"
            )
        };
        let unsorted = tiers(
            &(t("0", "10", "0.01", "0")
                + &t("5", "20", "0.02", "0.05")
                + &t("4", "30", "0.03", "0")),
        );
        let e = load_instruments(&write(&dir, "a.toml", &unsorted)).unwrap_err();
        assert!(
            e.to_string()
                .contains("instrument[0].tiers[2].notional_floor"),
            "{e}"
        );
        let floor = tiers(&t("1", "10", "0.01", "0"));
        let e = load_instruments(&write(&dir, "b.toml", &floor)).unwrap_err();
        assert!(e.to_string().contains("must start at 0"), "{e}");
        let bad_cum = tiers(&(t("0", "10", "0.01", "0") + &t("10", "20", "0.02", "0.2")));
        let (_, w) = load_instruments_with_warnings(&write(&dir, "c.toml", &bad_cum)).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].field, "instrument[0].tiers[1].cum");
        assert!(w[0].message.contains("= 0.1"), "{}", w[0].message);
        let dup = format!(
            "{}\n{}",
            tiers(&t("0", "10", "0.01", "0")),
            tiers(&t("0", "10", "0.01", "0"))
        );
        let e = load_instruments(&write(&dir, "d.toml", &dup)).unwrap_err();
        assert!(
            e.to_string()
                .contains(":7: field `instrument[1].id`: duplicate"),
            "{e}"
        );
    }

    /// Accounts: JSON and JSONL parse; errors give the line of the offending account and the
    /// field path; unknown instruments and duplicate ids are rejected.
    #[test]
    fn accounts_errors_name_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let m = presets();
        let good = "{\"accounts\": [\n  {\"id\": \"a\", \"collateral\": {\"USDT\": \"100\"}},\n  {\"id\": \"b\", \"positions\": [{\"instrument\": \"BTCUSDT-PERP\", \"quantity\": \"1\", \"entry_price\": \"60000\"}]}\n]}\n";
        let v = load_accounts_checked(&write(&dir, "ok.json", good), &m).unwrap();
        assert_eq!(v.len(), 2);
        let float = good.replace("\"quantity\": \"1\"", "\"quantity\": 1.5");
        let p = write(&dir, "f.json", &float);
        let e = load_accounts(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:3:", p.display())), "{e}");
        assert!(e.contains("accounts[1].positions[0].quantity"), "{e}");
        let unknown = good.replace("BTCUSDT-PERP", "BTCUSDT-PREP");
        let p = write(&dir, "u.json", &unknown);
        let e = load_accounts_checked(&p, &m).unwrap_err().to_string();
        assert!(
            e.contains(":3: field `accounts[1].positions[0].instrument`: unknown instrument"),
            "{e}"
        );
        let dup = good.replace("\"id\": \"b\"", "\"id\": \"a\"");
        let e = load_accounts(&write(&dir, "d.json", &dup))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":3: field `accounts[1].id`: duplicate account id"),
            "{e}"
        );
        let jsonl = "# one per line\n{\"id\": \"a\"}\n\n{\"id\": \"b\", \"colateral\": {}}\n";
        let p = write(&dir, "x.jsonl", jsonl);
        let e = load_accounts(&p).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}:4:", p.display())), "{e}");
        assert!(e.contains("unknown field `colateral`"), "{e}");
        let short_long = "{\"accounts\":[{\"id\":\"h\",\"positions\":[{\"instrument\":\"BTCUSDT-PERP\",\"side\":\"long\",\"quantity\":\"-1\",\"entry_price\":\"1\"}]}]}";
        let e = load_accounts(&write(&dir, "h.json", short_long))
            .unwrap_err()
            .to_string();
        assert!(e.contains("positions[0].quantity"), "{e}");
    }

    /// Prices by underlying apply to perp and collateral; an instrument id overrides; unknown
    /// keys and negative prices are errors with their line.
    #[test]
    fn prices_file() {
        let m = presets();
        let p = Path::new("p.toml");
        let ok = parse_prices(
            p,
            "[prices]\nBTC = \"60000\"\n\"HL-BTC-PERP\" = \"60010\"\n",
            &m,
        )
        .unwrap();
        assert_eq!(ok[&InstrumentId::from("BTCUSDT-PERP")], dec!(60000));
        assert_eq!(ok[&InstrumentId::from("BTC")], dec!(60000));
        assert_eq!(ok[&InstrumentId::from("HL-BTC-PERP")], dec!(60010));
        assert!(!ok.contains_key("USDT"));
        let e = parse_prices(p, "[prices]\nBTC = \"1\"\nDOGE = \"0.1\"\n", &m).unwrap_err();
        assert!(
            e.to_string().starts_with("p.toml:3: field `prices.DOGE`"),
            "{e}"
        );
        let e = parse_prices(p, "[prices]\nBTC = \"-1\"\n", &m).unwrap_err();
        assert!(e.to_string().contains("must not be negative"), "{e}");
        let e = parse_prices(p, "[prices]\nBTC = 60000.5\n", &m).unwrap_err();
        assert!(e.to_string().starts_with("p.toml:2:"), "{e}");
    }

    /// Scenario syntax: per underlying, `all`, overrides, and clear errors.
    #[test]
    fn scenarios() {
        let s = parse_scenario("BTC=-20%,ETH=-25%", None).unwrap();
        assert_eq!(s.move_of("BTC"), dec!(-0.2));
        assert_eq!(s.move_of("ETH"), dec!(-0.25));
        assert_eq!(s.move_of("SOL"), Decimal::ZERO);
        let s = parse_scenario(" all=-10% , SOL=+5% ", None).unwrap();
        assert_eq!(s.move_of("BTC"), dec!(-0.1));
        assert_eq!(s.move_of("SOL"), dec!(0.05));
        assert_eq!(parse_scenario("none", None).unwrap(), Scenario::none());
        for bad in [
            "",
            "BTC",
            "BTC=-20",
            "BTC=x%",
            "all=-100%",
            "BTC=1%,BTC=2%",
            "=5%",
        ] {
            assert!(parse_scenario(bad, None).is_err(), "{bad:?}");
        }
        let known: HashSet<String> = ["BTC".to_string()].into_iter().collect();
        let e = parse_scenario("BTX=-1%", Some(&known)).unwrap_err();
        assert!(e.to_string().contains("unknown underlying \"BTX\""), "{e}");
    }
}
