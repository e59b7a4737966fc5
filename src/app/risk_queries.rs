//! The daemon's answers to the risk page's queries, over the account map's public accessors
//! (no engine internals): a sorted, filtered page of the whole book, the what-if stress of one
//! account (the margin code `liqwatch stress` uses), and the tasks that keep the bounded
//! per-account history ([`HistoryStore`]) filled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use rust_decimal::Decimal;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::api::{
    AccountsPageQuery, ApiError, HistoryPoint, HistoryStore, LastEvent, SortFields, StressBody,
    StressPrice, StressQuery,
};
use crate::engine::AccountMap;
use crate::engine::map::PriceSnapshot;
use crate::engine::monitor::transition;
use crate::model::{
    AccountId, AccountState, Instrument, InstrumentId, MarginRatio, Thresholds, now_ms,
};
use crate::sinks::JournalEntry;
use crate::sources::files::Scenario;

struct Row {
    id: AccountId,
    ratio: MarginRatio,
    equity: Decimal,
    mm: Decimal,
}

impl Row {
    fn fields(&self) -> SortFields<'_> {
        SortFields {
            id: &self.id,
            ratio: self.ratio,
            equity: self.equity,
            maintenance_margin: self.mm,
        }
    }
}

/// The ids of one page of the book in the query's order, and how many accounts matched.
/// Ranks every complete account from the map's cached figures (brought to the current prices
/// first) without building a view for any; only the page's rows are viewed afterwards.
pub(super) fn page_ids(
    map: &AccountMap,
    states: &DashMap<AccountId, AccountState>,
    q: &AccountsPageQuery,
) -> (Vec<AccountId>, usize) {
    map.materialise_all();
    let mut rows: Vec<Row> = Vec::new();
    for key in map.keys() {
        let row = map.read_key(key, |v| {
            if !q.id_matches(v.id().as_str()) {
                return None;
            }
            Some(Row {
                id: v.id().clone(),
                ratio: v.ratio()?,
                equity: v.equity(),
                mm: v.maintenance_margin(),
            })
        });
        let Some(Some(row)) = row else { continue };
        if !q.states.all() {
            let state = states
                .get(&row.id)
                .map(|s| s.clone())
                .unwrap_or(AccountState::Healthy);
            if !q.states.keeps(&state) {
                continue;
            }
        }
        rows.push(row);
    }
    let total = rows.len();
    let end = q.offset.saturating_add(q.limit).min(total);
    if q.offset >= end {
        return (Vec::new(), total);
    }
    let cmp = |a: &Row, b: &Row| q.compare(&a.fields(), &b.fields());
    if end < total {
        rows.select_nth_unstable_by(end - 1, cmp);
        rows.truncate(end);
    }
    rows.sort_by(cmp);
    let ids = rows.drain(q.offset..).map(|r| r.id).collect();
    (ids, total)
}

fn unprocessable(code: &'static str, field: &str, message: String) -> ApiError {
    ApiError::Unprocessable {
        code,
        field: Some(field.to_string()),
        message,
        details: Vec::new(),
    }
}

/// The account under a what-if move at the engine's current prices: the scenario is applied
/// like `liqwatch stress --shock` applies it ([`Scenario::apply`]) and the snapshot comes from
/// the same [`crate::margin::account_snapshot`]; the state is classified from healthy, as the
/// command does.
pub(super) fn stress(
    map: &AccountMap,
    default_levels: &Thresholds,
    id: &AccountId,
    q: &StressQuery,
) -> Result<StressBody, ApiError> {
    let account = map
        .account(id)
        .ok_or_else(|| ApiError::NotFound(format!("account {id} not found")))?;
    let levels = map
        .read(id, |v| v.thresholds().cloned())
        .flatten()
        .unwrap_or_else(|| default_levels.clone());
    let table = map.instruments();
    let prices = map.prices_for(&account).0;
    let instruments: HashMap<InstrumentId, Instrument> = account
        .collateral
        .keys()
        .chain(account.positions.iter().map(|p| &p.instrument))
        .filter_map(|i| {
            let inst = table.get(table.index(i)?)?;
            Some((i.clone(), inst.clone()))
        })
        .collect();
    let underlyings: BTreeSet<String> = instruments
        .values()
        .filter(|i| !i.stable)
        .map(|i| i.underlying.clone())
        .collect();
    let underlying = match &q.underlying {
        None => None,
        Some(u) => {
            // An underlying (`BTC`), or an instrument id (`BTCUSDT-PERP`) naming its underlying.
            let resolved = if underlyings.contains(u) {
                Some(u.clone())
            } else {
                table
                    .index(&InstrumentId::from(u.as_str()))
                    .and_then(|idx| table.get(idx))
                    .map(|i| i.underlying.clone())
                    .filter(|x| underlyings.contains(x))
            };
            Some(resolved.ok_or_else(|| ApiError::BadRequest {
                code: "invalid_query",
                field: Some("underlying".into()),
                message: format!(
                    "underlying={u:?}: account {id} holds no such asset; it holds {}",
                    underlyings.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            })?)
        }
    };
    let q = StressQuery {
        shock: q.shock,
        underlying,
    };
    let scenario = Scenario {
        name: q.scenario_name(),
        all: q.underlying.is_none().then_some(q.shock),
        moves: q
            .underlying
            .iter()
            .map(|u| (u.clone(), q.shock))
            .collect::<BTreeMap<_, _>>(),
    };
    let shocked = scenario.apply(&instruments, &prices).ok_or_else(|| {
        unprocessable("overflow", "shock", "the moved prices overflow".to_string())
    })?;
    let snapshot = crate::margin::account_snapshot(
        &account,
        table,
        &PriceSnapshot(shocked.clone()),
        levels.trigger,
    )
    .map_err(|e| unprocessable("margin_error", "shock", e.to_string()))?;
    let (state, _) = transition(&AccountState::Healthy, snapshot.margin_ratio, &levels);
    let mut moved: Vec<StressPrice> = prices
        .iter()
        .map(|(i, p)| StressPrice {
            instrument: i.clone(),
            now: *p,
            shocked: shocked.get(i).copied().unwrap_or(*p),
        })
        .collect();
    moved.sort_by(|a, b| a.instrument.cmp(&b.instrument));
    Ok(StressBody {
        account_id: id.clone(),
        scenario: scenario.name,
        shock: q.shock,
        underlying: q.underlying,
        underlyings: underlyings.into_iter().collect(),
        levels,
        state,
        snapshot,
        prices: moved,
    })
}

/// How often at-risk and watched accounts are sampled into the history.
pub(super) const HISTORY_SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// An account opened on the page is sampled for this long after its last view.
const WATCH_FOR_MS: i64 = 10 * 60 * 1000;
/// At most this many at-risk accounts are sampled per round.
const MAX_SAMPLED_AT_RISK: usize = 1_000;

/// One history point of an account from the map's cached figures at the current prices.
pub(super) fn sample_point(map: &AccountMap, id: &AccountId) -> Option<HistoryPoint> {
    let key = map.key_of(id)?;
    let t = map.materialise(key)?;
    Some(HistoryPoint {
        t_ms: now_ms(),
        equity: t.equity,
        maintenance_margin: t.maintenance_margin,
        margin_ratio: t.ratio()?,
    })
}

/// Samples accounts at a warning or trigger level and accounts watched on the page into the
/// history every [`HISTORY_SAMPLE_EVERY`], until `cancel`.
pub(super) async fn sample_history(
    map: Arc<AccountMap>,
    states: Arc<DashMap<AccountId, AccountState>>,
    history: Arc<HistoryStore>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(HISTORY_SAMPLE_EVERY) => {}
        }
        let (map, states, history) = (map.clone(), states.clone(), history.clone());
        let round = tokio::task::spawn_blocking(move || {
            let mut ids: Vec<AccountId> = states
                .iter()
                .filter(|s| !matches!(s.value(), AccountState::Healthy))
                .take(MAX_SAMPLED_AT_RISK)
                .map(|s| s.key().clone())
                .collect();
            ids.extend(history.watched_since(now_ms() - WATCH_FOR_MS));
            ids.sort();
            ids.dedup();
            for id in ids {
                if let Some(p) = sample_point(&map, &id) {
                    history.record(&id, p);
                }
            }
        });
        if round.await.is_err() {
            return;
        }
    }
}

/// Records every committed account event (its kind, and the snapshot it carried as a point)
/// from the API's live broadcast, until `cancel` or the broadcast closes.
pub(super) async fn record_events(
    mut rx: broadcast::Receiver<Arc<JournalEntry>>,
    history: Arc<HistoryStore>,
    cancel: CancellationToken,
) {
    loop {
        let entry = tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.recv() => r,
        };
        let entry = match entry {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let ev = &entry.event;
        let Some(id) = &ev.account_id else { continue };
        let last = LastEvent {
            seq: entry.seq,
            kind: ev.kind,
            time_ms: ev.time_ms,
            level: ev.level,
        };
        let point = ev
            .snapshot
            .as_ref()
            .map(|s| HistoryPoint::of(s, ev.time_ms));
        history.record_event(id, last, point);
    }
}
