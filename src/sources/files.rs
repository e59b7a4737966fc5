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
    let o = &i.margin;
    if o.mmr_size_slope < zero || o.mmr_size_slope > one {
        errs.push((
            ".margin.mmr_size_slope".into(),
            format!("must be in [0, 1], got {}", o.mmr_size_slope),
        ));
    }
    if !o.is_plain() && !i.kind.is_contract() {
        errs.push((
            ".margin".into(),
            "only contracts have a maintenance requirement".into(),
        ));
    }
    if !o.mmr_size_slope.is_zero() && i.kind.is_inverse() {
        errs.push((
            ".margin.mmr_size_slope".into(),
            "a size-linear rate is modelled for linear contracts only".into(),
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
            if i.margin.tier_basis == crate::model::TierBasis::Contracts {
                // OKX: step tiers by contract count, no deduction by design.
                continue;
            }
            let expected = t
                .mmr
                .checked_sub(prev.mmr)
                .and_then(|r| t.notional_floor.checked_mul(r))
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
            if let Some(prev) = k.checked_sub(1).and_then(|p| i.haircut_tiers.get(p))
                && h.amount_floor <= prev.amount_floor
            {
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
        let value: Decimal =
            crate::model::parse_exact(v.get_ref().trim()).map_err(|e| InputError::Invalid {
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
        // A stablecoin is valued at exactly 1 whatever the file says: a price for one would be
        // silently ignored, so it is refused (issue 12 item 3).
        let priced: Vec<&Instrument> = instruments
            .values()
            .filter(|i| i.id.as_str() == key || i.underlying == *key)
            .collect();
        if !priced.is_empty() && priced.iter().all(|i| i.stable) {
            return Err(InputError::Invalid {
                path: path.to_path_buf(),
                line,
                field,
                message: format!(
                    "{key} is a stablecoin (stable = true in the presets), always valued at exactly 1; remove its price"
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

mod scenario; // `BTC=-20%,ETH=-25%`-style shock scenarios
pub use scenario::{Scenario, parse_scenario};

#[cfg(test)]
mod tests;
