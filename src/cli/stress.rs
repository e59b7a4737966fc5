//! `liqwatch stress`: load instruments, accounts and prices from files, apply price-shock
//! scenarios, and print every account's equity, maintenance margin, margin ratio, state and
//! distances to liquidation — an aligned table, or JSON with `--format json`.
//!
//! Exit codes: 0 done; 2 a bad file, flag or scenario (the message names the file, line and
//! field); 1 an account could not be valued (e.g. arithmetic overflow), after printing the
//! others.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use crate::engine::{AccountError, AccountMap, Engine, EngineConfig, MonitorConfig};
use crate::margin::to_cents;
use crate::model::{
    Account, AccountId, AccountState, AccountUpdate, Instrument, InstrumentId, LiquidationCost,
    MarginRatio, PositionSide, PriceUsed, RiskSnapshot, ShockDistance,
};
use crate::sources::files::{self as inputs, InputError, Scenario};

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Aligned, human-readable table.
    Table,
    /// One JSON document (`{"scenarios": […], "results": […]}`).
    Json,
}

/// Arguments of `liqwatch stress`.
#[derive(clap::Args, Debug)]
pub struct StressArgs {
    /// Instrument presets (TOML, `[[instrument]]` tables and an `include` list).
    #[arg(long, value_name = "FILE", default_value = "feeds/presets.toml")]
    pub instruments: PathBuf,
    /// Accounts: `{"accounts": […]}` JSON, or JSONL when the name ends in `.jsonl`.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "feeds/sample/accounts.json"
    )]
    pub accounts: PathBuf,
    /// Prices (TOML `[prices]`, keys are underlyings or instrument ids).
    #[arg(long, value_name = "FILE", default_value = "feeds/sample/prices.toml")]
    pub prices: PathBuf,
    /// A scenario such as `all=-10%` or `BTC=-20%,ETH=-25%`. Repeat the flag, or separate
    /// scenarios with `;`, for several. The unshocked state (`none`) is always shown first.
    #[arg(long = "shock", value_name = "SCENARIO", allow_hyphen_values = true)]
    pub shocks: Vec<String>,
    /// A shipped episode's worst joint window, e.g. `crash-2021-05-19:4h` (horizons 1h, 4h,
    /// 1d; docs/risk.md). Repeat for several. Every underlying the accounts hold must be in it.
    #[arg(long = "scenario", value_name = "EPISODE:HORIZON")]
    pub episodes: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Funding rates (TOML `[funding]`, instrument id → rate): also show each account's next
    /// funding payment and its margin ratio once paid.
    #[arg(long, value_name = "FILE")]
    pub funding: Option<PathBuf>,
    /// Distance levels for accounts without their own, outermost first (`10%,5%`): a row
    /// within one says so in its state (`shock_state`), as the daemon's `warn_within_shock`.
    #[arg(long, value_name = "LEVELS", value_delimiter = ',', value_parser = crate::model::parse_fraction)]
    pub warn_within_shock: Vec<Decimal>,
}

/// The nearest per-position liquidation price of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NearestLiquidation {
    /// The position's instrument.
    pub instrument: InstrumentId,
    /// The position's leg.
    pub side: PositionSide,
    /// Its price now (under the scenario).
    pub mark_price: Decimal,
    /// The price at which the account reaches its trigger, others frozen (exact).
    pub liquidation_price: Decimal,
    /// `liquidation_price / mark_price − 1`.
    pub relative_move: Decimal,
}

/// One account under one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct StressRow {
    /// The account.
    pub account: AccountId,
    /// The scenario (`none` for today's prices).
    pub scenario: String,
    /// Equity rounded half-up to the cent.
    pub equity: Decimal,
    /// Maintenance margin rounded to the cent.
    pub maintenance_margin: Decimal,
    /// MM / equity, exact (`"inf"` when equity ≤ 0).
    pub margin_ratio: MarginRatio,
    /// Margin ratio in percent, rounded to 0.01 (`"inf"`).
    pub margin_ratio_pct: String,
    /// Healthy / warning (with level) / triggered against the account's levels.
    pub state: AccountState,
    /// Against the account's distance levels (`warn_within_shock`): `warning` at the innermost
    /// level the shock distance is within; left out while healthy.
    #[serde(skip_serializing_if = "is_healthy")]
    pub shock_state: AccountState,
    /// The trigger level the distances are measured to.
    pub trigger: Decimal,
    /// Uniform-shock distance from this scenario's prices, exact fractions.
    pub shock_distance: ShockDistance,
    /// The per-position liquidation price nearest to its mark, if any.
    pub nearest_liquidation: Option<NearestLiquidation>,
    /// What a liquidation would cost: at this scenario's prices when the account is
    /// triggered, else at the uniform shock to its trigger; `null` when no shock reaches it.
    pub liquidation_cost: Option<StressLiquidationCost>,
    /// The full snapshot, exact figures.
    pub snapshot: RiskSnapshot,
    /// The next funding payment and the ratio after it (with `--funding`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub funding: Option<super::stress_funding::FundingColumns>,
}

/// Where a stress row's liquidation cost was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CostAt {
    /// At the scenario's prices (the account is triggered there).
    Scenario,
    /// At the scenario's prices moved by the uniform shock to the trigger (`shock`).
    ShockToTrigger,
}

/// A [`LiquidationCost`] and the prices it was computed at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StressLiquidationCost {
    /// Which prices.
    pub at: CostAt,
    /// The uniform shock applied on top of the scenario (`shock_to_trigger` only), exact.
    pub shock: Option<Decimal>,
    /// The cost.
    #[serde(flatten)]
    pub cost: LiquidationCost,
}

/// The liquidation cost of a row: at its prices when triggered, else at the nearest uniform
/// shock to the trigger (every non-stable price × (1 + s)). `None` when unreachable or when
/// the figures overflow (the row itself is still shown).
fn cost_of_row(
    engine: &Engine,
    id: &AccountId,
    snap: &RiskSnapshot,
    state: &AccountState,
    trigger: Decimal,
) -> Option<StressLiquidationCost> {
    let map = engine.map();
    if *state == AccountState::Triggered {
        let cost = crate::margin::liquidation_cost(snap, &*map.instruments()).ok()?;
        return Some(StressLiquidationCost {
            at: CostAt::Scenario,
            shock: None,
            cost,
        });
    }
    let s = snap.shock_distance.nearest?;
    let x = Decimal::ONE.checked_add(s)?;
    let account = map.account(id)?;
    let mut prices = map.prices_for(&account);
    for p in prices.0.values_mut() {
        *p = p.checked_mul(x)?;
    }
    let at_root: RiskSnapshot =
        crate::margin::account_snapshot(&account, &*map.instruments(), &prices, trigger).ok()?;
    let cost = crate::margin::liquidation_cost(&at_root, &*map.instruments()).ok()?;
    Some(StressLiquidationCost {
        at: CostAt::ShockToTrigger,
        shock: Some(s),
        cost,
    })
}

#[derive(Serialize)]
struct JsonOut<'a> {
    scenarios: Vec<&'a str>,
    results: &'a [StressRow],
    errors: &'a [String],
}

fn nearest_liquidation(s: &RiskSnapshot) -> Option<NearestLiquidation> {
    s.positions
        .iter()
        .filter_map(|p| {
            let lp = p.liquidation_price?;
            if p.mark_price <= Decimal::ZERO {
                return None;
            }
            let rel = lp.checked_div(p.mark_price)?.checked_sub(Decimal::ONE)?;
            Some(NearestLiquidation {
                instrument: p.instrument.clone(),
                side: p.side,
                mark_price: p.mark_price,
                liquidation_price: lp,
                relative_move: rel,
            })
        })
        .min_by_key(|n| n.relative_move.abs())
}

/// One row from the engine: the account's snapshot at the engine's prices and the state the
/// monitor put it in.
fn stress_row(engine: &Engine, id: &AccountId, scenario: &str) -> Result<StressRow, AccountError> {
    let map = engine.map();
    let levels = map
        .read(id, |v| v.thresholds().cloned())
        .ok_or_else(|| AccountError::UnknownAccount(id.clone()))?
        .unwrap_or_else(|| engine.monitor().config().thresholds.clone());
    let mut snap = map.snapshot(id, levels.trigger)?;
    let pct = match snap.margin_ratio {
        MarginRatio::Finite(r) => match r.checked_mul(Decimal::ONE_HUNDRED) {
            Some(p) => to_cents(p).to_string(),
            // Beyond Decimal's range in percent (ratio > 7.9e26): shift the digits instead.
            None => {
                times_100_text(r.round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero))
            }
        },
        MarginRatio::Infinite => "inf".into(),
    };
    let monitored = engine.monitor().state(map, id).unwrap_or_default();
    let (state, shock_state) = (monitored.state, monitored.shock_state);
    // In warning or triggered under the scenario: what the client would have to deposit.
    if state != AccountState::Healthy {
        snap.margin_call =
            crate::margin::call::margin_call(snap.maintenance_margin, snap.equity, &levels);
    }
    let liquidation_cost = cost_of_row(engine, id, &snap, &state, levels.trigger);
    Ok(StressRow {
        account: id.clone(),
        scenario: scenario.to_string(),
        equity: to_cents(snap.equity),
        maintenance_margin: to_cents(snap.maintenance_margin),
        margin_ratio: snap.margin_ratio,
        margin_ratio_pct: pct,
        state,
        shock_state,
        trigger: levels.trigger,
        shock_distance: snap.shock_distance.clone(),
        nearest_liquidation: nearest_liquidation(&snap),
        liquidation_cost,
        snapshot: snap,
        funding: None,
    })
}

/// The book under one scenario, in the one [`Engine`]: every account loaded, the scenario's
/// prices applied as one step (so the monitor classifies each account from healthy, exactly as
/// the daemon would on its first tick).
fn engine_at(
    inputs: &StressInputs,
    prices: &HashMap<InstrumentId, Decimal>,
) -> Result<Engine, String> {
    let map = Arc::new(AccountMap::new(inputs.instruments.values().cloned()));
    let mut engine = Engine::new(
        map,
        EngineConfig {
            monitor: MonitorConfig {
                thresholds: crate::model::Thresholds {
                    warn_within_shock: inputs.warn_within_shock.clone(),
                    ..Default::default()
                },
                ..MonitorConfig::default()
            },
            distance_index: false,
        },
    )?;
    let no_info: HashMap<InstrumentId, PriceUsed> = HashMap::new();
    for a in &inputs.accounts {
        engine
            .on_update(AccountUpdate::Replace { account: a.clone() }, &no_info, 0)
            .map_err(|e| e.to_string())?;
    }
    engine.on_prices(prices.iter().map(|(i, p)| (i, *p)), &no_info, 0);
    Ok(engine)
}

/// Everything the command needs, loaded and checked.
pub struct StressInputs {
    /// Instruments by id.
    pub instruments: HashMap<InstrumentId, Instrument>,
    /// Accounts in file order.
    pub accounts: Vec<Account>,
    /// Today's prices by instrument.
    pub prices: HashMap<InstrumentId, Decimal>,
    /// `none` first, then the scenarios asked for.
    pub scenarios: Vec<Scenario>,
    /// Warnings about the input files.
    pub warnings: Vec<String>,
    /// Funding rates, with `--funding`.
    pub funding: Option<HashMap<InstrumentId, crate::margin::funding::FundingRate>>,
    /// `--warn-within-shock`: distance levels for accounts without their own.
    pub warn_within_shock: Vec<Decimal>,
}

/// Loads and checks the files and scenarios named by `args`.
pub fn load(args: &StressArgs) -> Result<StressInputs, InputError> {
    let (instruments, warns) = inputs::load_instruments_with_warnings(&args.instruments)?;
    let accounts = inputs::load_accounts_checked(&args.accounts, &instruments)?;
    let prices = inputs::load_prices(&args.prices, &instruments)?;
    check_prices_cover(&args.prices, &accounts, &instruments, &prices)?;
    let known: HashSet<String> = instruments
        .values()
        .filter(|i| !i.stable)
        .map(|i| i.underlying.clone())
        .collect();
    let funding = match &args.funding {
        Some(p) => Some(super::stress_funding::load_rates(p, &instruments)?),
        None => None,
    };
    let levels = crate::model::Thresholds {
        warn_within_shock: args.warn_within_shock.clone(),
        ..Default::default()
    };
    if let Some(p) = levels.problems().into_iter().next() {
        return Err(InputError::Invalid {
            path: PathBuf::from("--warn-within-shock"),
            line: None,
            field: p.field,
            message: p.message,
        });
    }
    let mut scenarios = vec![Scenario::none()];
    for arg in &args.shocks {
        for part in arg.split(';').filter(|p| !p.trim().is_empty()) {
            let sc = inputs::parse_scenario(part, Some(&known))?;
            if sc.name != "none" {
                scenarios.push(sc);
            }
        }
    }
    let mut warnings: Vec<String> = warns.iter().map(|w| format!("warning: {w}")).collect();
    for spec in &args.episodes {
        let (sc, note) = episode_scenario(spec, &accounts, &instruments)?;
        warnings.push(note);
        scenarios.push(sc);
    }
    Ok(StressInputs {
        instruments,
        accounts,
        prices,
        scenarios,
        warnings,
        funding,
        warn_within_shock: args.warn_within_shock.clone(),
    })
}

/// An episode's worst window as a scenario (`crash-2021-05-19:4h`), refusing a book that holds
/// an underlying the episode does not cover; with a note saying which window it is.
fn episode_scenario(
    spec: &str,
    accounts: &[Account],
    instruments: &HashMap<InstrumentId, Instrument>,
) -> Result<(Scenario, String), InputError> {
    let err = |message: String| InputError::Scenario {
        scenario: spec.to_string(),
        message,
    };
    let set = crate::risk::episodes::worst_window(spec).map_err(err)?;
    let moves = crate::risk::episodes::moves(&set);
    for a in accounts {
        for id in a
            .collateral
            .keys()
            .chain(a.positions.iter().map(|p| &p.instrument))
        {
            if let Some(i) = instruments.get(id)
                && !i.stable
                && !moves.contains_key(&i.underlying)
            {
                return Err(err(format!(
                    "account {} holds {} but the episode has no prices for it (it covers {})",
                    a.id,
                    i.underlying,
                    moves.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
    }
    let w = &set.windows[0];
    let note = format!(
        "note: scenario {spec} = {} → {}: {}",
        crate::model::format_rfc3339_ms(w.start_ms),
        crate::model::format_rfc3339_ms(w.end_ms),
        moves
            .iter()
            .map(|(u, r)| format!("{u} {}", percent(*r, 2)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((
        Scenario {
            name: spec.to_string(),
            all: None,
            moves,
        },
        note,
    ))
}

/// An error naming the first account asset without a price in `path`.
pub fn check_prices_cover(
    path: &Path,
    accounts: &[Account],
    instruments: &HashMap<InstrumentId, Instrument>,
    prices: &HashMap<InstrumentId, Decimal>,
) -> Result<(), InputError> {
    for a in accounts {
        let ids = a
            .collateral
            .keys()
            .chain(a.positions.iter().map(|p| &p.instrument));
        for id in ids {
            let Some(i) = instruments.get(id) else {
                continue;
            };
            if i.stable || prices.contains_key(id) {
                continue;
            }
            return Err(InputError::Invalid {
                path: path.to_path_buf(),
                line: None,
                field: "prices".into(),
                message: format!(
                    "no price for {id} (underlying {u}), needed by account {acct}; add {u} = \"…\" under [prices]",
                    u = i.underlying,
                    acct = a.id
                ),
            });
        }
    }
    Ok(())
}

/// Runs the command.
pub fn main(args: StressArgs) -> ExitCode {
    let inputs = match load(&args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("liqwatch stress: {e}");
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
    for w in &inputs.warnings {
        eprintln!("{w}");
    }
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    let mut engines = Vec::with_capacity(inputs.scenarios.len());
    let mut scenario_prices = Vec::with_capacity(inputs.scenarios.len());
    for sc in &inputs.scenarios {
        let prices = sc.apply(&inputs.instruments, &inputs.prices);
        let engine = match &prices {
            Some(prices) => {
                engine_at(&inputs, prices).map_err(|e| format!("scenario {}: {e}", sc.name))
            }
            None => Err(format!("scenario {}: prices overflow", sc.name)),
        };
        engines.push(engine);
        scenario_prices.push(prices.unwrap_or_default());
    }
    let mut funding_rows = Vec::new();
    for a in &inputs.accounts {
        for ((sc, engine), prices) in inputs.scenarios.iter().zip(&engines).zip(&scenario_prices) {
            let engine = match engine {
                Ok(e) => e,
                Err(e) => {
                    errors.push(format!("account {}, {e}", a.id));
                    continue;
                }
            };
            match stress_row(engine, &a.id, &sc.name) {
                Ok(mut r) => {
                    if let Some(rates) = &inputs.funding {
                        match super::stress_funding::columns(a, &inputs.instruments, prices, rates)
                        {
                            Ok(c) => {
                                funding_rows.push((a.id.to_string(), sc.name.clone(), c.clone()));
                                r.funding = Some(c);
                            }
                            Err(e) => errors.push(format!(
                                "account {}, scenario {}, funding: {e}",
                                a.id, sc.name
                            )),
                        }
                    }
                    rows.push(r)
                }
                Err(e) => errors.push(format!("account {}, scenario {}: {e}", a.id, sc.name)),
            }
        }
    }
    let mut out = std::io::stdout().lock();
    let written = match args.format {
        Format::Json => {
            let doc = JsonOut {
                scenarios: inputs.scenarios.iter().map(|s| s.name.as_str()).collect(),
                results: &rows,
                errors: &errors,
            };
            serde_json::to_writer_pretty(&mut out, &doc)
                .map_err(std::io::Error::other)
                .and_then(|()| writeln!(out))
        }
        Format::Table => {
            let mut text = render_table(&rows);
            if inputs.funding.is_some() {
                text.push_str(&super::stress_funding::render(&funding_rows));
            }
            out.write_all(text.as_bytes())
        }
    };
    if let Err(e) = written {
        eprintln!("liqwatch stress: cannot write output: {e}");
        return ExitCode::from(1);
    }
    for e in &errors {
        eprintln!("liqwatch stress: {e}");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `1234567.891` → `1,234,567.89` (half-up to the cent).
pub fn money(d: Decimal) -> String {
    let s = with_places(to_cents(d).to_string(), 2);
    let (sign, digits) = match s.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", s.as_str()),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, "00"));
    let mut grouped = String::with_capacity(int.len() + int.len() / 3);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}.{frac}")
}

fn price(d: Decimal) -> String {
    if d.abs() >= Decimal::ONE {
        money(d)
    } else {
        d.round_dp(6).normalize().to_string()
    }
}

/// `d × 100` written out exactly, for any `d`: the decimal point is moved on the digits, so
/// it cannot overflow (a ratio or a shock beyond 7.9e26 has no `Decimal` percent).
pub fn times_100_text(d: Decimal) -> String {
    let text = d.to_string();
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", text.as_str()),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let frac = format!("{frac:0<2}");
    let (moved, rest) = frac.split_at(2);
    let int = format!("{int}{moved}");
    let int = match int.trim_start_matches('0') {
        "" => "0",
        t => t,
    };
    if rest.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{rest}")
    }
}

/// A number already rounded to at most `dp` places, padded with zeros to exactly `dp`.
/// (`format!("{:.2}", decimal)` panics past 29 significant digits: rust_decimal formats into
/// a 32-byte buffer.)
fn with_places(text: String, dp: usize) -> String {
    let places = text.split_once('.').map_or(0, |(_, r)| r.len());
    let pad = dp.saturating_sub(places);
    match (places, pad) {
        (_, 0) => text,
        (0, _) => format!("{text}.{}", "0".repeat(pad)),
        _ => format!("{text}{}", "0".repeat(pad)),
    }
}

fn percent(f: Decimal, dp: u32) -> String {
    let half_up = RoundingStrategy::MidpointAwayFromZero;
    let digits = match f.checked_mul(Decimal::ONE_HUNDRED) {
        Some(p) => p.round_dp_with_strategy(dp, half_up).to_string(),
        // Beyond Decimal's range in percent: round the fraction, then shift its digits.
        None => times_100_text(f.round_dp_with_strategy(dp.saturating_add(2), half_up)),
    };
    let text = with_places(digits, dp as usize);
    if f > Decimal::ZERO {
        format!("+{text} %")
    } else {
        format!("{text} %")
    }
}

fn is_healthy(s: &AccountState) -> bool {
    *s == AccountState::Healthy
}

/// The state, and the distance level the account is within (`healthy, within 10% move`).
fn states_text(r: &StressRow) -> String {
    let mut text = state_text(&r.state);
    if let AccountState::Warning { level } = &r.shock_state {
        text.push_str(&format!(
            ", within {}% move",
            level
                .checked_mul(Decimal::ONE_HUNDRED)
                .unwrap_or(*level)
                .normalize()
        ));
    }
    // The margin call: the deposit that would bring it back under its recovery level.
    if let Some(c) = &r.snapshot.margin_call {
        text.push_str(&format!(", call {}", money(c.deposit)));
    }
    text
}

fn state_text(s: &AccountState) -> String {
    match s {
        AccountState::Healthy => "healthy".into(),
        AccountState::Warning { level } => format!("warning {level}"),
        AccountState::Triggered => "TRIGGERED".into(),
    }
}

/// `penalty 6,210.00 (180.00 %), shortfall 2,760.00`, prefixed `at -9.5765 %: ` when the
/// cost is at the shock to the trigger; `-` when there is none.
fn cost_text(c: Option<&StressLiquidationCost>) -> String {
    let Some(c) = c else {
        return "-".into();
    };
    let rate = match c.cost.penalty_rate {
        MarginRatio::Finite(r) => percent(r, 2).trim_start_matches('+').to_string(),
        MarginRatio::Infinite => "inf".into(),
    };
    let rest = if c.cost.shortfall > Decimal::ZERO {
        format!("shortfall {}", money(c.cost.shortfall))
    } else {
        format!("surplus {}", money(c.cost.surplus))
    };
    let at = match c.shock {
        Some(s) => format!("at {}: ", percent(s, 4)),
        None => String::new(),
    };
    format!("{at}penalty {} ({rate}), {rest}", money(c.cost.penalty))
}

/// The aligned table printed by default.
pub fn render_table(rows: &[StressRow]) -> String {
    let header = [
        "account",
        "scenario",
        "equity",
        "maint. margin",
        "ratio",
        "state",
        "shock to trigger",
        "nearest liquidation price (others frozen)",
        "liquidation cost",
    ];
    let mut cells: Vec<[String; 9]> = Vec::with_capacity(rows.len());
    for r in rows {
        let ratio = match r.margin_ratio {
            MarginRatio::Finite(_) => format!("{} %", r.margin_ratio_pct),
            MarginRatio::Infinite => "inf".into(),
        };
        // For a triggered account the nearest crossing is the move that would end it.
        let shock = match (r.shock_distance.nearest, &r.state) {
            (Some(s), AccountState::Triggered) => format!("recovers {}", percent(s, 4)),
            (Some(s), _) => percent(s, 4),
            (None, _) => "unreachable".into(),
        };
        let lp = match &r.nearest_liquidation {
            Some(n) => format!(
                "{}{} {} ({})",
                n.instrument,
                match n.side {
                    PositionSide::Both => "",
                    PositionSide::Long => "/long",
                    PositionSide::Short => "/short",
                },
                price(n.liquidation_price),
                percent(n.relative_move, 2)
            ),
            None => "-".into(),
        };
        cells.push([
            r.account.to_string(),
            r.scenario.clone(),
            money(r.equity),
            money(r.maintenance_margin),
            ratio,
            states_text(r),
            shock,
            lp,
            cost_text(r.liquidation_cost.as_ref()),
        ]);
    }
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, s) in widths.iter_mut().zip(c.iter()) {
            *w = (*w).max(s.chars().count());
        }
    }
    // Numbers right-aligned, text left-aligned.
    let right = [false, false, true, true, true, false, true, false, false];
    let line = |c: &[String]| {
        let mut s = String::new();
        for (k, cell) in c.iter().enumerate() {
            let w = widths[k];
            let pad = w.saturating_sub(cell.chars().count());
            if k > 0 {
                s.push_str("  ");
            }
            if right[k] {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if k + 1 < c.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(String::from));
    let mut prev_account: Option<&AccountId> = None;
    for (r, c) in rows.iter().zip(&cells) {
        if prev_account.is_some_and(|p| p != &r.account) {
            out.push('\n');
        }
        prev_account = Some(&r.account);
        out.push_str(&line(c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    /// Issue 12 item 3: percentages of figures beyond `Decimal`'s range in percent are written
    /// from the digits, exactly, instead of panicking on `× 100`.
    #[test]
    fn percent_never_overflows() {
        assert_eq!(times_100_text(dec!(0.0885)), "8.85");
        assert_eq!(times_100_text(dec!(-0.5)), "-50");
        assert_eq!(times_100_text(dec!(3)), "300");
        assert_eq!(times_100_text(dec!(0.001)), "0.1");
        assert_eq!(
            times_100_text(Decimal::MAX),
            "7922816251426433759354395033500"
        );
        assert_eq!(percent(dec!(-0.095765), 4), "-9.5765 %");
        assert_eq!(percent(dec!(0.5), 2), "+50.00 %");
        assert_eq!(
            percent(dec!(670000000000000000000000000.5), 2),
            "+67000000000000000000000000050.00 %"
        );
        assert_eq!(
            percent(Decimal::MIN, 4),
            "-7922816251426433759354395033500.0000 %"
        );
    }

    /// Money formatting groups thousands and rounds half-up to the cent.
    #[test]
    fn money_format() {
        assert_eq!(money(dec!(1234567.895)), "1,234,567.90");
        assert_eq!(money(dec!(-83100)), "-83,100.00");
        assert_eq!(money(dec!(0.004)), "0.00");
        assert_eq!(money(dec!(999)), "999.00");
    }
}
