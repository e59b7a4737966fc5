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
use crate::engine::map::AccountView;
use crate::engine::monitor::transition;
use crate::model::{
    AccountId, AccountState, Instrument, InstrumentId, MarginRatio, Thresholds, now_ms,
};
use crate::sinks::JournalEntry;
use crate::sources::files::Scenario;

#[derive(Clone)]
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

/// One page of the book: the ids in the query's order, how many accounts matched, and the
/// accounts matching the filters that could not be ranked (no ratio: incomplete).
pub(super) struct PageIds {
    pub(super) ids: Vec<AccountId>,
    pub(super) total: usize,
    pub(super) incomplete: IncompleteIds,
}

/// The incomplete accounts a listing met: how many, and the first
/// [`crate::api::INCOMPLETE_LISTED`] of them.
#[derive(Default)]
pub(super) struct IncompleteIds {
    pub(super) count: u64,
    pub(super) first: Vec<AccountId>,
}

impl IncompleteIds {
    fn note(&mut self, id: &AccountId) {
        self.count += 1;
        if self.first.len() < crate::api::INCOMPLETE_LISTED {
            self.first.push(id.clone());
        }
    }
}

/// The ids of one page of the book in the query's order, and how many accounts matched.
/// Ranks every complete account from the map's cached figures (brought to the current prices
/// first) without building a view for any; only the page's rows are viewed afterwards. An
/// incomplete account that passes the filters is counted in [`PageIds::incomplete`] instead.
pub(super) fn page_ids(
    map: &AccountMap,
    states: &DashMap<AccountId, AccountState>,
    q: &AccountsPageQuery,
) -> PageIds {
    let keep = q.offset.saturating_add(q.limit);
    let mut top = TopRows::new(q, keep);
    let mut incomplete = IncompleteIds::default();
    if q.states.healthy {
        // Healthy accounts are the book: rank all of it.
        map.materialise_all();
        for key in map.keys() {
            map.read_key(key, |v| {
                if !q.id_matches(v.id().as_str()) {
                    return;
                }
                if !q.states.all() {
                    let state = states
                        .get(v.id())
                        .map(|s| s.clone())
                        .unwrap_or(AccountState::Healthy);
                    if !q.states.keeps(&state) {
                        return;
                    }
                }
                rank(v, &mut top, &mut incomplete);
            });
            top.prune_if_full();
        }
    } else {
        // Only warning or triggered accounts: those are in the state map (accounts that had an
        // event), so the book is not scanned — the page's "how many are triggered" poll stays
        // cheap at a million accounts.
        let ids: Vec<AccountId> = states
            .iter()
            .filter(|s| q.states.keeps(s.value()))
            .map(|s| s.key().clone())
            .collect();
        for id in ids {
            let Some(key) = map.key_of(&id) else { continue };
            map.materialise(key);
            map.read_key(key, |v| {
                if q.id_matches(v.id().as_str()) {
                    rank(v, &mut top, &mut incomplete);
                }
            });
            top.prune_if_full();
        }
    }
    let (ids, total) = top.page();
    PageIds {
        ids,
        total,
        incomplete,
    }
}

/// Offers a complete account to the page; counts an incomplete one (it has no ratio to rank).
fn rank(v: &AccountView<'_>, top: &mut TopRows<'_>, incomplete: &mut IncompleteIds) {
    match v.ratio() {
        Some(ratio) => top.offer(SortFields {
            id: v.id(),
            ratio,
            equity: v.equity(),
            maintenance_margin: v.maintenance_margin(),
        }),
        None => incomplete.note(v.id()),
    }
}

/// The best `keep` rows of a stream in a query's order, without cloning the id of a row that
/// cannot make the page: candidates collect in a buffer that is cut back to `keep` (a linear
/// selection) whenever it doubles, and the worst row kept then is the bar later rows must beat.
struct TopRows<'q> {
    q: &'q AccountsPageQuery,
    keep: usize,
    rows: Vec<Row>,
    bar: Option<Row>,
    total: usize,
}

impl<'q> TopRows<'q> {
    fn new(q: &'q AccountsPageQuery, keep: usize) -> TopRows<'q> {
        TopRows {
            q,
            keep,
            rows: Vec::new(),
            bar: None,
            total: 0,
        }
    }

    fn offer(&mut self, f: SortFields<'_>) {
        self.total += 1;
        if self.keep == 0 {
            return;
        }
        if let Some(bar) = &self.bar
            && self.q.compare(&f, &bar.fields()) != std::cmp::Ordering::Less
        {
            return;
        }
        self.rows.push(Row {
            id: f.id.clone(),
            ratio: f.ratio,
            equity: f.equity,
            mm: f.maintenance_margin,
        });
    }

    fn prune_if_full(&mut self) {
        if self.rows.len() >= self.keep.saturating_mul(2).max(1024) {
            self.prune();
        }
    }

    fn prune(&mut self) {
        let q = self.q;
        if self.keep == 0 || self.rows.len() <= self.keep {
            return;
        }
        self.rows
            .select_nth_unstable_by(self.keep - 1, |a, b| q.compare(&a.fields(), &b.fields()));
        self.rows.truncate(self.keep);
        self.bar = self.rows.last().cloned();
    }

    /// The ids of rows `offset..offset+limit` in order, and the number of rows offered.
    fn page(mut self) -> (Vec<AccountId>, usize) {
        self.prune();
        let q = self.q;
        self.rows
            .sort_by(|a, b| q.compare(&a.fields(), &b.fields()));
        let ids = self.rows.into_iter().skip(q.offset).map(|r| r.id).collect();
        (ids, self.total)
    }
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
    let prices = map.prices_for(&account).to_std();
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
    let mut snapshot = crate::margin::account_snapshot(&account, &*table, &shocked, levels.trigger)
        .map_err(|e| match e {
            // A shock moves the prices there are: a missing one is the account's state now,
            // as `GET /v1/accounts/{id}` reports it, not the query's fault.
            crate::margin::MarginError::MissingPrice(_) => {
                ApiError::AccountIncomplete(format!("account {id} cannot be valued now: {e}"))
            }
            e => unprocessable("margin_error", "shock", e.to_string()),
        })?;
    let (state, _) = transition(&AccountState::Healthy, snapshot.margin_ratio, &levels);
    // In warning or triggered at the moved prices: the deposit that would make it healthy.
    if state != AccountState::Healthy {
        snapshot.margin_call =
            crate::margin::call::margin_call(snapshot.maintenance_margin, snapshot.equity, &levels);
    }
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rust_decimal_macros::dec;

    use super::*;
    use crate::api::StateFilter;
    use crate::model::{Account, AccountUpdate};

    /// A map on the shipped presets with BTC at 50000 and 1-BTC-long accounts whose USDT
    /// cushions are given (MM = 0.4 % × 50000 = 200).
    fn book(accounts: &[(&str, &str)]) -> AccountMap {
        let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
        let instruments = match crate::sources::files::load_instruments(&presets) {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        };
        let map = AccountMap::new(instruments.into_values());
        for (id, usdt) in accounts {
            let account: Account = match serde_json::from_str(&format!(
                r#"{{"id":"{id}","collateral":{{"USDT":"{usdt}"}},"positions":[
                {{"instrument":"BTCUSDT-PERP","quantity":"1","entry_price":"50000"}}]}}"#
            )) {
                Ok(a) => a,
                Err(e) => panic!("{e}"),
            };
            if let Err(e) = map.apply_update(AccountUpdate::Replace { account }) {
                panic!("{e}");
            }
        }
        let mut out = Vec::new();
        for i in ["BTCUSDT-PERP", "BTC"] {
            if let Err(e) = map.apply_price(&InstrumentId::from(i), dec!(50000), &mut out) {
                panic!("{e}");
            }
        }
        map
    }

    fn query(states: StateFilter, filter: &str, offset: usize, limit: usize) -> AccountsPageQuery {
        AccountsPageQuery {
            sort: crate::api::AccountSort::Ratio,
            descending: true,
            filter: filter.into(),
            states,
            offset,
            limit,
        }
    }

    /// At scale (ignored; run in release, see BENCHMARKS.md): the first page of the whole book
    /// is exactly the map's own `riskiest`, a deep page and a filtered page are consistent with
    /// it, and the warning/triggered filter finds every at-risk account. Prints the times.
    #[test]
    #[ignore = "scale: N=1000000 cargo test --release --lib page_scale -- --ignored --nocapture"]
    fn page_scale() {
        let n: usize = std::env::var("N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let names: Vec<(String, String)> = (0..n)
            .map(|i| {
                (
                    format!("acct-{i:07}"),
                    format!("{}", 300 + (i * 7919) % 20000),
                )
            })
            .collect();
        let refs: Vec<(&str, &str)> = names
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let map = book(&refs);
        let states = DashMap::new();
        for i in (0..n).step_by(1000) {
            states.insert(
                AccountId::from(format!("acct-{i:07}").as_str()),
                AccountState::Triggered,
            );
        }
        let timed = |name: &str, q: &AccountsPageQuery| {
            let t = std::time::Instant::now();
            let out = page_ids(&map, &states, q);
            eprintln!(
                "{name}: {:?} ({} rows of {})",
                t.elapsed(),
                out.ids.len(),
                out.total
            );
            (out.ids, out.total)
        };
        let t = std::time::Instant::now();
        let riskiest: Vec<AccountId> = map.riskiest(50).into_iter().map(|r| r.id).collect();
        eprintln!("AccountMap::riskiest(50): {:?}", t.elapsed());
        let all = StateFilter::default();
        let (first, total) = timed("first page", &query(all, "", 0, 50));
        assert_eq!((first, total), (riskiest.clone(), n));
        let (deep, _) = timed("page at n/2", &query(all, "", n / 2, 50));
        assert_eq!(deep.len(), 50.min(n - n / 2));
        assert!(deep.iter().all(|id| !riskiest.contains(id)) || n < 100);
        let (filtered, matched) = timed("id filter", &query(all, "99", 0, 50));
        assert!(filtered.iter().all(|id| id.as_str().contains("99")));
        assert!(matched >= filtered.len());
        let at_risk = StateFilter {
            healthy: false,
            warning: true,
            triggered: true,
        };
        let (_, triggered) = timed("triggered only", &query(at_risk, "", 0, 1));
        assert_eq!(triggered, n.div_ceil(1000));
    }

    /// The whole book ranked by ratio and paged; a warning/triggered filter reads only the
    /// state map and still ranks; the id filter applies to both paths.
    #[test]
    fn pages_of_the_book() {
        let map = book(&[("a", "400"), ("b", "1000"), ("c", "10000"), ("d", "250")]);
        let states = DashMap::new();
        states.insert(AccountId::from("d"), AccountState::Triggered);
        states.insert(AccountId::from("b"), AccountState::Healthy);
        let all = StateFilter::default();
        let at_risk = StateFilter {
            healthy: false,
            warning: true,
            triggered: true,
        };
        let cases = [
            (query(all, "", 0, 10), vec!["d", "a", "b", "c"], 4),
            (query(all, "", 1, 2), vec!["a", "b"], 4),
            (query(all, "", 4, 2), vec![], 4),
            (query(at_risk, "", 0, 10), vec!["d"], 1),
            (query(at_risk, "x", 0, 10), vec![], 0),
            (
                query(
                    StateFilter {
                        healthy: true,
                        warning: false,
                        triggered: false,
                    },
                    "",
                    0,
                    10,
                ),
                vec!["a", "b", "c"],
                3,
            ),
        ];
        for (q, want, total) in cases {
            let page = page_ids(&map, &states, &q);
            let got: Vec<&str> = page.ids.iter().map(|i| i.as_str()).collect();
            assert_eq!((got, page.total), (want, total), "{q:?}");
            assert_eq!(page.incomplete.count, 0, "{q:?}");
        }
    }

    /// An account the map cannot value (it holds an instrument with no price) is on no page
    /// but counted and named, under the same id and state filters as the ranked rows; only
    /// the first `INCOMPLETE_LISTED` are named.
    #[test]
    fn incomplete_accounts_are_counted_and_named() {
        let map = book(&[("a", "400"), ("b", "1000")]);
        let n = crate::api::INCOMPLETE_LISTED + 5;
        for i in 0..n {
            let account: Account = serde_json::from_str(&format!(
                r#"{{"id":"eth-{i:02}","collateral":{{"USDT":"100"}},"positions":[
                {{"instrument":"ETHUSDT-PERP","quantity":"1","entry_price":"3000"}}]}}"#
            ))
            .unwrap_or_else(|e| panic!("{e}"));
            map.apply_update(AccountUpdate::Replace { account })
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let states = DashMap::new();
        states.insert(
            AccountId::from("eth-03"),
            AccountState::Warning { level: dec!(0.8) },
        );
        let all = StateFilter::default();
        let page = page_ids(&map, &states, &query(all, "", 0, 10));
        let got: Vec<&str> = page.ids.iter().map(|i| i.as_str()).collect();
        assert_eq!((got, page.total), (vec!["a", "b"], 2));
        assert_eq!(page.incomplete.count, n as u64);
        let named: Vec<&str> = page.incomplete.first.iter().map(|i| i.as_str()).collect();
        let want: Vec<String> = (0..crate::api::INCOMPLETE_LISTED)
            .map(|i| format!("eth-{i:02}"))
            .collect();
        assert_eq!(named, want);
        // The id filter and the state filters apply to them too.
        let page = page_ids(&map, &states, &query(all, "eth-1", 0, 10));
        assert_eq!((page.total, page.incomplete.count), (0, 10));
        let healthy_only = StateFilter {
            healthy: true,
            warning: false,
            triggered: false,
        };
        let page = page_ids(&map, &states, &query(healthy_only, "", 0, 10));
        assert_eq!(page.incomplete.count, n as u64 - 1);
        let at_risk = StateFilter {
            healthy: false,
            warning: true,
            triggered: true,
        };
        let page = page_ids(&map, &states, &query(at_risk, "", 0, 10));
        let named: Vec<&str> = page.incomplete.first.iter().map(|i| i.as_str()).collect();
        assert_eq!((page.total, named), (0, vec!["eth-03"]));
    }

    /// A uniform −10 % by hand; one underlying named by an instrument id; an asset the account
    /// does not hold is refused; an unknown account is a 404.
    #[test]
    fn what_if() {
        let map = book(&[("a", "10000")]);
        let levels = Thresholds::default();
        let id = AccountId::from("a");
        let q = |shock: Decimal, u: Option<&str>| StressQuery {
            shock,
            underlying: u.map(str::to_string),
        };
        let body = match stress(&map, &levels, &id, &q(dec!(-0.1), None)) {
            Ok(b) => b,
            Err(e) => panic!("{e:?}"),
        };
        // BTC at 45000: equity 10000 − 5000 = 5000; MM 0.4 % × 45000 = 180.
        assert_eq!(body.snapshot.equity, dec!(5000));
        assert_eq!(body.snapshot.maintenance_margin, dec!(180));
        assert_eq!(body.scenario, "all=-10%");
        assert_eq!(body.underlyings, vec!["BTC".to_string()]);
        assert_eq!(body.state, AccountState::Healthy);
        let by_instrument = match stress(&map, &levels, &id, &q(dec!(-0.1), Some("BTCUSDT-PERP"))) {
            Ok(b) => b,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(by_instrument.underlying.as_deref(), Some("BTC"));
        assert_eq!(by_instrument.snapshot, body.snapshot);
        let refused = stress(&map, &levels, &id, &q(dec!(-0.1), Some("ETH")));
        assert!(
            matches!(refused, Err(ApiError::BadRequest { .. })),
            "{refused:?}"
        );
        let unknown = stress(&map, &levels, &AccountId::from("zz"), &q(dec!(0), None));
        assert!(matches!(unknown, Err(ApiError::NotFound(_))), "{unknown:?}");
        // An account holding an instrument with no price cannot be valued, moved or not: 503
        // `account_incomplete` naming it, as its view answers.
        let account: Account = serde_json::from_str(
            r#"{"id":"eth","collateral":{"USDT":"100"},"positions":[
            {"instrument":"ETHUSDT-PERP","quantity":"1","entry_price":"3000"}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        map.apply_update(AccountUpdate::Replace { account })
            .unwrap_or_else(|e| panic!("{e}"));
        let unpriced = stress(&map, &levels, &AccountId::from("eth"), &q(dec!(-0.1), None));
        match unpriced {
            Err(ApiError::AccountIncomplete(m)) => {
                assert_eq!(
                    m,
                    "account eth cannot be valued now: no price for ETHUSDT-PERP"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
