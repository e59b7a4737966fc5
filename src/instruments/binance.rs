//! Binance USD-M futures: leverage brackets and exchange info → instruments.
//!
//! Inputs, told apart by shape (any order, any number of files):
//!
//! - `GET /fapi/v1/leverageBracket`: `[{"symbol","notionalCoef"?,"brackets":[{"bracket",
//!   "initialLeverage","notionalCap","notionalFloor","maintMarginRatio","cum"}]}]` (or one such
//!   object when asked for one symbol). Numbers are JSON numbers on the wire; strings are
//!   accepted too.
//! - The same brackets as saved by ccxt's `fetch_leverage_tiers` (freqtrade ships a snapshot as
//!   `binance_leverage_tiers.json`): `{"BTC/USDT:USDT":[{…,"info":{<the raw bracket>}}]}`. Only
//!   `info` — the venue's own strings — is read; ccxt's float copies are ignored.
//! - `GET /fapi/v1/exchangeInfo`: `{"symbols":[{"symbol","contractType","baseAsset",
//!   "liquidationFee",…}]}`. Optional; when given it supplies the contract type, the base asset
//!   and the liquidation fee, and symbols it does not list are skipped.
//!
//! `MM = N·maintMarginRatio − cum` on mark notional, tiers `[notionalFloor, notionalCap]`
//! (margin-math §2.1).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ImportError, Imported, Input};
use crate::model::{
    Instrument, InstrumentId, InstrumentKind, MarginTier, PriceField, PriceSource, Venue,
};

/// Quote assets Binance USD-M symbols end with, to tell the base asset from a bare symbol.
const QUOTES: [&str; 4] = ["USDT", "USDC", "BUSD", "FDUSD"];

#[derive(Deserialize)]
struct SymbolBrackets<'a> {
    #[serde(alias = "pair")]
    symbol: String,
    #[serde(borrow, default, rename = "notionalCoef")]
    notional_coef: Option<&'a RawValue>,
    #[serde(borrow)]
    brackets: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Bracket<'a> {
    #[serde(borrow, default, rename = "notionalFloor")]
    floor: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "notionalCap")]
    cap: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "maintMarginRatio")]
    mmr: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cum: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CcxtTier<'a> {
    #[serde(borrow)]
    info: &'a RawValue,
}

#[derive(Deserialize)]
struct ExchangeInfo<'a> {
    #[serde(borrow)]
    symbols: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct ExSymbol<'a> {
    symbol: String,
    #[serde(default, rename = "contractType")]
    contract_type: String,
    #[serde(default, rename = "baseAsset")]
    base_asset: String,
    #[serde(borrow, default, rename = "liquidationFee")]
    liquidation_fee: Option<&'a RawValue>,
}

/// What the exchange info says about one symbol.
struct SymbolInfo {
    kind: Option<InstrumentKind>,
    contract_type: String,
    base: String,
    fee: Option<Decimal>,
    file: String,
}

/// One symbol's brackets, where they were read and where to point errors.
struct Read<'a> {
    symbol: String,
    base: Option<String>,
    tiers: Vec<MarginTier>,
    coef: Option<Decimal>,
    input: &'a Input,
    at: &'a str,
    field: String,
}

/// Parses a sub-value of `input` (a borrowed raw value), with errors located in the file.
fn parse_at<'a, T: Deserialize<'a>>(
    input: &'a Input,
    raw: &'a RawValue,
    field: &str,
) -> Result<T, ImportError> {
    serde_json::from_str(raw.get()).map_err(|e| {
        input.invalid(
            Some(raw.get()),
            field,
            // serde_json's own message, without its (sub-value relative) position.
            e.to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_string(),
        )
    })
}

fn tier<'a>(input: &'a Input, raw: &'a RawValue, field: &str) -> Result<MarginTier, ImportError> {
    let b: Bracket = parse_at(input, raw, field)?;
    let at = |name: &str| format!("{field}.{name}");
    let located = |r: Option<&RawValue>, name: &str| match r {
        Some(r) => input.decimal(Some(r), &at(name)),
        None => Err(input.invalid(Some(raw.get()), &at(name), "missing".into())),
    };
    Ok(MarginTier {
        notional_floor: located(b.floor, "notionalFloor")?,
        notional_cap: located(b.cap, "notionalCap")?,
        mmr: located(b.mmr, "maintMarginRatio")?,
        cum: located(b.cum, "cum")?,
    })
}

fn read_symbol<'a>(
    input: &'a Input,
    raw: &'a RawValue,
    field: String,
) -> Result<Read<'a>, ImportError> {
    let s: SymbolBrackets = parse_at(input, raw, &field)?;
    let coef = input.decimal_opt(s.notional_coef, &format!("{field}.notionalCoef"))?;
    let tiers = s
        .brackets
        .iter()
        .enumerate()
        .map(|(k, b)| tier(input, b, &format!("{field}.brackets[{k}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Read {
        symbol: s.symbol,
        base: None,
        tiers,
        coef,
        input,
        at: raw.get(),
        field,
    })
}

/// `BTC/USDT:USDT` → (`BTCUSDT`, `BTC`); `BTC/USDT:USDT-241227` → (`BTCUSDT_241227`, `BTC`).
fn ccxt_symbol(key: &str) -> Option<(String, String)> {
    let (pair, settle) = key.split_once(':')?;
    let (base, quote) = pair.split_once('/')?;
    let expiry = settle.split_once('-').map(|(_, e)| e);
    let mut s = format!("{base}{quote}");
    if let Some(e) = expiry {
        s.push('_');
        s.push_str(e);
    }
    Some((s, base.to_string()))
}

fn read_file<'a>(
    input: &'a Input,
    brackets: &mut Vec<Read<'a>>,
    info: &mut BTreeMap<String, SymbolInfo>,
    info_files: &mut usize,
) -> Result<(), ImportError> {
    let trimmed = input.text.trim_start();
    if trimmed.starts_with('[') {
        let list: Vec<&RawValue> = input.parse()?;
        for (i, raw) in list.iter().enumerate() {
            brackets.push(read_symbol(input, raw, format!("[{i}]"))?);
        }
        return Ok(());
    }
    let top: BTreeMap<String, &RawValue> = input.parse()?;
    if top.contains_key("symbols") {
        *info_files += 1;
        let ex: ExchangeInfo = input.parse()?;
        for (i, raw) in ex.symbols.iter().enumerate() {
            let field = format!("symbols[{i}]");
            let s: ExSymbol = parse_at(input, raw, &field)?;
            let fee = input.decimal_opt(s.liquidation_fee, &format!("{field}.liquidationFee"))?;
            let kind = match s.contract_type.as_str() {
                "PERPETUAL" => Some(InstrumentKind::LinearPerpetual),
                "CURRENT_QUARTER" | "NEXT_QUARTER" | "CURRENT_MONTH" | "NEXT_MONTH" => {
                    Some(InstrumentKind::LinearFuture)
                }
                _ => None,
            };
            info.insert(
                s.symbol,
                SymbolInfo {
                    kind,
                    contract_type: s.contract_type,
                    base: s.base_asset,
                    fee,
                    file: file_name(input),
                },
            );
        }
        return Ok(());
    }
    if top.contains_key("brackets") {
        let raw: &RawValue = input.parse()?;
        brackets.push(read_symbol(input, raw, String::new())?);
        return Ok(());
    }
    // ccxt's map: unified symbol → tiers with the raw bracket in `info`.
    for (key, raw) in &top {
        let field = format!("{key:?}");
        let Some((symbol, base)) = ccxt_symbol(key) else {
            return Err(input.invalid(
                Some(raw.get()),
                &field,
                "expected a leverageBracket array, an exchangeInfo object or a ccxt leverage-tiers \
                 map keyed by BASE/QUOTE:SETTLE"
                    .into(),
            ));
        };
        let list: Vec<&RawValue> = parse_at(input, raw, &field)?;
        let tiers = list
            .iter()
            .enumerate()
            .map(|(k, t)| {
                let f = format!("{field}[{k}]");
                let c: CcxtTier = parse_at(input, t, &f)?;
                tier(input, c.info, &format!("{f}.info"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        brackets.push(Read {
            symbol,
            base: Some(base),
            tiers,
            coef: None,
            input,
            at: raw.get(),
            field,
        });
    }
    Ok(())
}

fn file_name(input: &Input) -> String {
    input
        .path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| input.path.display().to_string())
}

/// Reads Binance USD-M files (see the module docs) into instruments.
pub fn import(files: &[Input]) -> Result<Imported, ImportError> {
    let mut brackets = Vec::new();
    let mut info = BTreeMap::new();
    let mut info_files = 0;
    for f in files {
        read_file(f, &mut brackets, &mut info, &mut info_files)?;
    }
    if brackets.is_empty() {
        return Err(ImportError::Incomplete(
            "binance-usdm: no leverage brackets among the files (GET /fapi/v1/leverageBracket, or \
             ccxt's leverage tiers); exchangeInfo alone carries no tiers"
                .into(),
        ));
    }
    let mut out = Imported::default();
    for r in brackets {
        let ex = info.get(&r.symbol);
        if info_files > 0 && ex.is_none() {
            out.skipped.push(format!(
                "{}: not listed in the exchangeInfo given",
                r.symbol
            ));
            continue;
        }
        let (kind, base, fee, note_info) = match ex {
            Some(e) => {
                let Some(kind) = e.kind else {
                    out.skipped.push(format!(
                        "{}: contractType {:?} is not a perpetual or dated future",
                        r.symbol, e.contract_type
                    ));
                    continue;
                };
                let fee_note = match e.fee {
                    Some(f) => format!("liquidationFee {f}"),
                    None => "no liquidationFee published".into(),
                };
                (
                    kind,
                    Some(e.base.clone()),
                    e.fee,
                    format!(
                        "contractType {} and {fee_note} from {}",
                        e.contract_type, e.file
                    ),
                )
            }
            None => {
                let kind = if r.symbol.contains('_') {
                    InstrumentKind::LinearFuture
                } else {
                    InstrumentKind::LinearPerpetual
                };
                let base = r.base.clone().or_else(|| {
                    QUOTES
                        .iter()
                        .find_map(|q| r.symbol.strip_suffix(q))
                        .filter(|b| !b.is_empty())
                        .map(str::to_string)
                });
                (
                    kind,
                    base,
                    None,
                    "contract type read from the symbol; liquidation fee not in the input (no \
                     exchangeInfo given)"
                        .into(),
                )
            }
        };
        let Some(base) = base.filter(|b| !b.is_empty()) else {
            out.skipped.push(format!(
                "{}: base asset unknown (give exchangeInfo)",
                r.symbol
            ));
            continue;
        };
        let id = if kind == InstrumentKind::LinearPerpetual {
            format!("{}-PERP", r.symbol)
        } else {
            r.symbol.clone()
        };
        let coef_note = r
            .coef
            .map(|c| format!("; notionalCoef {c}: these are a user's adjusted brackets"))
            .unwrap_or_default();
        let mut tiers = r.tiers;
        tiers.sort_by_key(|t| t.notional_floor);
        let top_cap = tiers.last().map(|t| t.notional_cap).unwrap_or_default();
        let inst = Instrument {
            id: InstrumentId::new(&id),
            kind,
            underlying: base,
            contract_size: Decimal::ONE,
            tiers,
            liquidation_fee_rate: fee.unwrap_or_default(),
            collateral_ratio: Decimal::ONE,
            haircut_tiers: Vec::new(),
            stable: false,
            sources: vec![PriceSource {
                venue: Venue::BinanceUsdm,
                symbol: r.symbol.clone(),
                field: PriceField::Mark,
            }],
            margin: Default::default(),
            source_note: Some(format!(
                "Binance USD-M {}: leverage brackets from {}; {note_info}{coef_note}.",
                r.symbol,
                file_name(r.input)
            )),
        };
        let (errs, _warnings) = crate::sources::files::check_instrument(&inst);
        if let Some((field, message)) = errs.into_iter().next() {
            return Err(r
                .input
                .invalid(Some(r.at), &format!("{}{field}", r.field), message));
        }
        out.size_rank.push((id, top_cap));
        out.instruments.push(inst);
    }
    out.instruments.sort_by(|a, b| a.id.cmp(&b.id));
    let mut seen = std::collections::HashSet::new();
    for i in &out.instruments {
        if !seen.insert(i.id.clone()) {
            return Err(ImportError::Incomplete(format!(
                "binance-usdm: symbol {} appears in more than one brackets file",
                i.id
            )));
        }
    }
    Ok(out)
}
