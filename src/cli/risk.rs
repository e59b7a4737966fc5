//! `liqwatch risk`: historical VaR, expected shortfall, probability of liquidation and
//! component ES of every account, from price history files over a horizon (`docs/risk.md`).
//!
//! Exit codes: 0 done; 2 a bad file, flag, mapping or horizon (the message names the file and
//! line); 1 an account could not be valued, after printing the others.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use rust_decimal::Decimal;
use serde::Serialize;

use super::stress::{Format, money, times_100_text};
use crate::model::{Account, InstrumentId, format_rfc3339_ms, parse_exact};
use crate::risk::scenarios::{self, History, parse_map};
use crate::risk::{AccountRisk, ComponentKind, RiskBook, ScenarioSet, episodes};
use crate::sources::files as inputs;

/// Arguments of `liqwatch risk`.
#[derive(clap::Args, Debug)]
pub struct RiskArgs {
    /// Instrument presets (TOML).
    #[arg(long, value_name = "FILE", default_value = "feeds/presets.toml")]
    pub instruments: PathBuf,
    /// Accounts: `{"accounts": […]}` JSON, or JSONL.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "feeds/sample/accounts.json"
    )]
    pub accounts: PathBuf,
    /// Today's prices (TOML `[prices]`).
    #[arg(long, value_name = "FILE", default_value = "feeds/sample/prices.toml")]
    pub prices: PathBuf,
    /// Price history: `*.csv` (ts,symbol,price), `*.json` (freqtrade candles), `*.jsonl`
    /// (replay recording), or `episode:NAME` (a shipped episode). Repeat or list several.
    #[arg(long, value_name = "FILE|episode:NAME", num_args = 1.., required = true)]
    pub history: Vec<String>,
    /// Map a history symbol to an underlying (`BTC_USDT=BTC`); needed when a symbol does not
    /// name its underlying by itself, or two symbols could.
    #[arg(long = "map", value_name = "SYMBOL=UNDERLYING")]
    pub map: Vec<String>,
    /// Horizon of each scenario (overlapping windows): `1h`, `4h`, `1d`, …
    #[arg(long, default_value = "1d")]
    pub horizon: String,
    /// Confidence level α (k = ⌈N·(1 − α)⌉ worst scenarios).
    #[arg(long, default_value = "0.99")]
    pub alpha: String,
    /// How many of the worst scenarios to show per account.
    #[arg(long, default_value_t = 3)]
    pub worst: usize,
    /// Worker threads (0: every core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Serialize)]
struct HistoryOut<'a> {
    files: &'a [String],
    series: BTreeMap<&'a str, &'a str>,
    horizon: &'a str,
    horizon_ms: i64,
    first_window: String,
    last_window: String,
    return_scale: u32,
}

#[derive(Serialize)]
struct JsonOut<'a> {
    history: HistoryOut<'a>,
    scenarios: usize,
    alpha: Decimal,
    k: usize,
    results: &'a [AccountRisk],
    errors: &'a [String],
}

/// Everything the command needs, loaded and checked.
pub struct RiskInputs {
    /// Instruments by id.
    pub instruments: std::collections::HashMap<InstrumentId, crate::model::Instrument>,
    /// Accounts in file order.
    pub accounts: Vec<Account>,
    /// Today's prices.
    pub prices: std::collections::HashMap<InstrumentId, Decimal>,
    /// The scenarios.
    pub set: ScenarioSet,
    /// α.
    pub alpha: Decimal,
}

/// Loads the files and builds the scenario set; the error is the message to print.
pub fn load(args: &RiskArgs) -> Result<RiskInputs, String> {
    let instruments = inputs::load_instruments(&args.instruments).map_err(|e| e.to_string())?;
    let accounts =
        inputs::load_accounts_checked(&args.accounts, &instruments).map_err(|e| e.to_string())?;
    let prices = inputs::load_prices(&args.prices, &instruments).map_err(|e| e.to_string())?;
    super::stress::check_prices_cover(&args.prices, &accounts, &instruments, &prices)
        .map_err(|e| e.to_string())?;
    let alpha =
        parse_exact(args.alpha.trim()).map_err(|e| format!("--alpha {:?}: {e}", args.alpha))?;
    if alpha <= Decimal::ZERO || alpha >= Decimal::ONE {
        return Err(format!(
            "--alpha {alpha}: must be between 0 and 1 (e.g. 0.99)"
        ));
    }
    let horizon = scenarios::parse_horizon(&args.horizon).map_err(|e| format!("--horizon: {e}"))?;
    let known: HashSet<&str> = instruments
        .values()
        .filter(|i| !i.stable)
        .map(|i| i.underlying.as_str())
        .collect();
    let mut explicit = BTreeMap::new();
    for m in &args.map {
        let (sym, u) = parse_map(m)?;
        if !known.contains(u.as_str()) {
            let mut names: Vec<_> = known.iter().copied().collect();
            names.sort_unstable();
            return Err(format!(
                "--map {m}: unknown underlying {u:?} (known: {})",
                names.join(", ")
            ));
        }
        explicit.insert(sym, u);
    }
    let mut history = History::new();
    for h in &args.history {
        match h.strip_prefix("episode:") {
            Some(name) => {
                let e = episodes::find(name).ok_or_else(|| {
                    format!(
                        "--history {h}: unknown episode (episodes: {})",
                        episodes::EPISODES
                            .iter()
                            .map(|e| e.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                history
                    .add_csv(std::path::Path::new(h), e.csv)
                    .map_err(|e| e.to_string())?;
            }
            None => history
                .load(std::path::Path::new(h))
                .map_err(|e| e.to_string())?,
        }
    }
    let needed: BTreeSet<String> = accounts
        .iter()
        .flat_map(|a| {
            a.collateral
                .keys()
                .chain(a.positions.iter().map(|p| &p.instrument))
        })
        .filter_map(|id| instruments.get(id))
        .filter(|i| !i.stable)
        .map(|i| i.underlying.clone())
        .collect();
    let chosen = scenarios::resolve(&history, &needed, &explicit).map_err(|e| e.to_string())?;
    let set = scenarios::build("history", &history, &chosen, horizon).map_err(|e| e.to_string())?;
    Ok(RiskInputs {
        instruments,
        accounts,
        prices,
        set,
        alpha,
    })
}

/// Runs the command.
pub fn main(args: RiskArgs) -> ExitCode {
    let inputs = match load(&args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("liqwatch risk: {e}");
            if let Some(h) = super::missing_default_hint(&[
                ("--instruments", &args.instruments),
                ("--accounts", &args.accounts),
                ("--prices", &args.prices),
            ]) {
                eprintln!("{h}");
            }
            return ExitCode::from(2);
        }
    };
    let mut book = match RiskBook::new(
        &inputs.instruments,
        &inputs.prices,
        &inputs.set,
        inputs.alpha,
    ) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("liqwatch risk: {e}");
            return ExitCode::from(2);
        }
    };
    book.worst = args.worst;
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (a, r) in inputs
        .accounts
        .iter()
        .zip(book.accounts(&inputs.accounts, args.threads))
    {
        match r {
            Ok(r) => results.push(r),
            Err(e) => errors.push(format!("account {}: {e}", a.id)),
        }
    }
    let set = &inputs.set;
    let mut out = std::io::stdout().lock();
    let written = match args.format {
        Format::Json => {
            let doc = JsonOut {
                history: HistoryOut {
                    files: &args.history,
                    series: set
                        .underlyings
                        .iter()
                        .map(String::as_str)
                        .zip(set.symbols.iter().map(String::as_str))
                        .collect(),
                    horizon: &args.horizon,
                    horizon_ms: set.horizon_ms,
                    first_window: set
                        .windows
                        .first()
                        .map(|w| format_rfc3339_ms(w.start_ms))
                        .unwrap_or_default(),
                    last_window: set
                        .windows
                        .last()
                        .map(|w| format_rfc3339_ms(w.start_ms))
                        .unwrap_or_default(),
                    return_scale: scenarios::RETURN_SCALE,
                },
                scenarios: set.len(),
                alpha: inputs.alpha,
                k: book.k,
                results: &results,
                errors: &errors,
            };
            serde_json::to_writer_pretty(&mut out, &doc)
                .map_err(std::io::Error::other)
                .and_then(|()| writeln!(out))
        }
        Format::Table => out.write_all(render_table(&args, set, book.k, &results).as_bytes()),
    };
    if let Err(e) = written {
        eprintln!("liqwatch risk: cannot write output: {e}");
        return ExitCode::from(1);
    }
    for e in &errors {
        eprintln!("liqwatch risk: {e}");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn pct(num: Decimal, den: Decimal) -> String {
    if den <= Decimal::ZERO {
        return "-".into();
    }
    match num.checked_div(den) {
        Some(f) => format!(
            "{} %",
            times_100_text(
                f.round_dp_with_strategy(4, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
            )
        ),
        None => "-".into(),
    }
}

/// The table printed by default: one line per account, then its components.
pub fn render_table(args: &RiskArgs, set: &ScenarioSet, k: usize, rows: &[AccountRisk]) -> String {
    let mut s = format!(
        "{} scenarios of {} ({} → {}), α = {}, k = {k}\n\n",
        set.len(),
        args.horizon,
        set.windows
            .first()
            .map(|w| format_rfc3339_ms(w.start_ms))
            .unwrap_or_default(),
        set.windows
            .last()
            .map(|w| format_rfc3339_ms(w.start_ms))
            .unwrap_or_default(),
        args.alpha
    );
    let header = [
        "account",
        "equity",
        "VaR",
        "ES",
        "ES/equity",
        "P(liq)",
        "worst window",
        "worst PnL",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let w = r.worst.first();
        cells.push(vec![
            r.account.to_string(),
            money(r.equity),
            money(r.var),
            money(r.es),
            pct(r.es, r.equity),
            format!(
                "{} ({}/{})",
                pct(r.p_liquidation, Decimal::ONE),
                r.liquidating_scenarios,
                r.scenarios
            ),
            w.map(|w| w.start.clone()).unwrap_or_default(),
            w.map(|w| money(w.pnl)).unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            cells
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, row) in cells.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c > 0 {
                line.push_str("  ");
            }
            if c == 0 || c == 6 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
        if i > 0
            && let Some(r) = rows.get(i - 1)
        {
            let parts: Vec<String> = r
                .components
                .iter()
                .map(|c| {
                    let side = match (c.kind, c.side) {
                        (ComponentKind::Collateral, _) => " (collateral)".to_string(),
                        (_, Some(crate::model::PositionSide::Long)) => "/long".into(),
                        (_, Some(crate::model::PositionSide::Short)) => "/short".into(),
                        _ => String::new(),
                    };
                    format!("{}{side} {}", c.instrument, money(c.es))
                })
                .collect();
            s.push_str(&format!("    component ES: {}\n", parts.join(", ")));
        }
    }
    s
}
