//! The HTTP API's backend over the real components ([`crate::api::ApiBackend`] and
//! [`crate::sources::AccountWriter`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use tokio::sync::{mpsc, oneshot};

use super::runner::EngineRequest;
use crate::api::{
    self, AccountsPage, AccountsPageQuery, ApiBackend, ApiError, BackendError, EventsSince,
    HistoryPoint, HistoryStore, ReadinessCheck, StressBody, StressQuery,
};
use crate::engine::AccountMap;
use crate::feeds::FeedRegistry;
use crate::journal::{Journal, Since};
use crate::model::{
    AccountId, AccountState, AccountUpdate, InstrumentId, InstrumentKind, PriceUsed, Thresholds,
    now_ms,
};
use crate::prices::PriceBoard;
use crate::sinks::JournalEntry;
use crate::sources::{AccountWriter, Applied, ApplyError, UpdateKey, UpdateOrigin};

/// The API's view of the running daemon: reads go straight to the shared map, board, registry
/// and journal; account updates go to the engine runner and are answered once persisted.
pub(crate) struct Backend {
    pub map: Arc<AccountMap>,
    pub board: Arc<PriceBoard>,
    pub registry: Arc<FeedRegistry>,
    pub journal: Arc<Journal>,
    pub states: Arc<DashMap<AccountId, AccountState>>,
    pub sinks: super::sinkset::SinkSet,
    pub engine: mpsc::Sender<EngineRequest>,
    pub kinds: HashMap<InstrumentId, InstrumentKind>,
    /// The configured trigger level (changes on a SIGHUP reload).
    pub default_trigger: Arc<parking_lot::RwLock<Decimal>>,
    /// The daemon's levels, for accounts without their own (changes on a SIGHUP reload).
    pub default_levels: Arc<parking_lot::RwLock<Thresholds>>,
    /// `[risk]`, when configured.
    pub risk: Option<Arc<super::risk::RiskSettings>>,
    /// The scheduled recompute's results (empty without `[risk]`).
    pub risk_store: Arc<crate::risk::store::RiskStore>,
    /// Accounts changed since the last recompute (`None` without `[risk]`).
    pub risk_changes: Option<Arc<super::risk_task::RiskChanges>>,
    /// The risk page's bounded per-account history.
    pub history: Arc<HistoryStore>,
    /// The instrument sources' refresh state, for `/readyz`.
    pub instruments: crate::instruments::source::InstrumentHealth,
    /// When `liqwatch_accounts_incomplete` was last counted (a scan of the book: at most once
    /// per [`GAUGE_SCAN_EVERY`], however often `/metrics` is scraped).
    pub gauges_at: parking_lot::Mutex<Option<std::time::Instant>>,
}

/// The shortest time between two scans of the book for the computed gauges.
pub(crate) const GAUGE_SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Backend {
    fn view(&self, id: &AccountId) -> Option<api::AccountView> {
        // The state first: the engine sets it after valuing the account at the step's prices,
        // so the snapshot read next is at those prices or newer. Read the other way round, a
        // step landing between the two reads would pair its state with the step before's
        // figures (a warning shown beside a healthy ratio, and no margin call).
        let state = self
            .states
            .get(id)
            .map(|s| s.clone())
            .unwrap_or(AccountState::Healthy);
        let trigger = self.map.trigger_for(id, *self.default_trigger.read());
        let mut snapshot = self.map.snapshot(id, trigger).ok()?;
        let account = self.map.account(id)?;
        let rates = crate::engine::monitor::funding::rates_for(&account, &*self.board, now_ms());
        crate::engine::monitor::funding::attach(&mut snapshot, &*self.map.instruments(), &rates);
        let mut prices: Vec<PriceUsed> = Vec::new();
        let ids = account
            .positions
            .iter()
            .map(|p| &p.instrument)
            .chain(account.collateral.keys());
        for inst in ids {
            if prices.iter().any(|p| &p.instrument == inst) {
                continue;
            }
            if let Some(c) = self.board.composite(inst) {
                prices.push(c.price_used(inst));
            }
        }
        let stale_prices = prices.iter().any(|p| p.stale);
        let as_of_ms = now_ms();
        self.history
            .record(id, HistoryPoint::of(&snapshot, as_of_ms));
        let levels = self
            .map
            .read(id, |v| v.thresholds().cloned())
            .flatten()
            .unwrap_or_else(|| self.default_levels.read().clone());
        if state != AccountState::Healthy {
            snapshot.margin_call = crate::margin::call::margin_call(
                snapshot.maintenance_margin,
                snapshot.equity,
                &levels,
            );
        }
        Some(api::AccountView {
            account_id: id.clone(),
            state,
            snapshot,
            prices,
            stale_prices,
            as_of_ms,
            levels: Some(levels),
            last_event: self.history.last_event(id),
        })
    }
}

impl AccountWriter for Backend {
    fn instrument_kind(&self, id: &InstrumentId) -> Option<InstrumentKind> {
        self.kinds.get(id).copied()
    }

    fn apply(
        &self,
        update: AccountUpdate,
        origin: UpdateOrigin,
        key: Option<UpdateKey>,
    ) -> BoxFuture<'_, Result<Applied, ApplyError>> {
        Box::pin(async move {
            let id = update.account_id().clone();
            let r = self.apply_inner(update, origin, key).await;
            if r.is_ok()
                && let Some(c) = &self.risk_changes
            {
                c.changed(&id);
            }
            r
        })
    }
}

impl Backend {
    async fn apply_inner(
        &self,
        update: AccountUpdate,
        origin: UpdateOrigin,
        key: Option<UpdateKey>,
    ) -> Result<Applied, ApplyError> {
        {
            let (reply, rx) = oneshot::channel();
            let req = EngineRequest::Update {
                update,
                origin,
                key,
                reply,
            };
            match tokio::time::timeout(Duration::from_secs(10), self.engine.send(req)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ApplyError::Unavailable("shutting down".into())),
                Err(_) => return Err(ApplyError::Unavailable("engine busy".into())),
            }
            match tokio::time::timeout(Duration::from_secs(30), rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(ApplyError::Unavailable("shutting down".into())),
                Err(_) => Err(ApplyError::Unavailable(
                    "engine did not answer in 30 s".into(),
                )),
            }
        }
    }
}

/// The first few problems and how many more, so one bad venue with hundreds of symbols does
/// not make a `/readyz` body of megabytes.
fn summarise(problems: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = problems
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        s.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    s
}

impl ApiBackend for Backend {
    fn readiness(&self) -> Vec<ReadinessCheck> {
        let mut out = Vec::new();
        let (feeds, mut problems) = self.registry.readiness(&self.board);
        for id in self.board.unserved() {
            problems.push(format!("{id} is held (or watched) but no feed prices it"));
        }
        if feeds == 0 {
            problems.push("no feed is running: no instrument is priced".to_string());
        }
        out.push(ReadinessCheck {
            name: "feeds".into(),
            ok: problems.is_empty(),
            detail: if problems.is_empty() {
                format!("{feeds} feed(s) serving a fresh price for every instrument")
            } else {
                summarise(&problems)
            },
        });
        // Accounts are loaded before the API starts; what can fail later is the engine task
        // that applies their updates.
        let engine_up = !self.engine.is_closed();
        out.push(ReadinessCheck {
            name: "accounts".into(),
            ok: engine_up,
            detail: if engine_up {
                format!("{} accounts loaded; engine running", self.map.len())
            } else {
                format!(
                    "{} accounts loaded; engine stopped: updates cannot be applied",
                    self.map.len()
                )
            },
        });
        let healths = self.sinks.healths();
        let stuck: Vec<String> = healths
            .iter()
            .map(|h| h.borrow().clone())
            .filter(|h| !h.is_healthy())
            .map(|h| {
                format!(
                    "{} stuck ({} behind): {}",
                    h.sink,
                    h.lag,
                    h.last_error.unwrap_or_default()
                )
            })
            .collect();
        out.push(ReadinessCheck {
            name: "sinks".into(),
            ok: stuck.is_empty(),
            detail: if stuck.is_empty() {
                format!("{} sink(s) delivering", healths.len())
            } else {
                stuck.join("; ")
            },
        });
        // Instrument sources (only when configured): the terms in force and their refreshes.
        if let Some((ok, detail)) = self.instruments.readiness(crate::model::now_ms()) {
            out.push(ReadinessCheck {
                name: "instruments".into(),
                ok,
                detail,
            });
        }
        let failing = self.journal.is_write_failing();
        out.push(ReadinessCheck {
            name: "journal".into(),
            ok: !failing,
            detail: if failing && self.journal.over_buffer_limit() {
                format!(
                    "writes failing (disk full?), {} events held in memory, the limit ([journal] max_buffered_events = {}): the engine has stopped taking prices until the journal writes again; nothing is dropped",
                    self.journal.buffered(),
                    self.journal.buffer_limit()
                )
            } else if failing {
                format!(
                    "writes failing, {} events held in memory",
                    self.journal.buffered()
                )
            } else {
                "writable".into()
            },
        });
        out
    }

    fn account(&self, id: &AccountId) -> Option<api::AccountView> {
        let view = self.view(id)?;
        self.history.watch(id, view.as_of_ms);
        Some(view)
    }

    fn refresh_gauges(&self) {
        // Held across the scan: concurrent scrapes wait for it rather than scan again.
        let mut at = self.gauges_at.lock();
        if at.is_some_and(|t| t.elapsed() < GAUGE_SCAN_EVERY) {
            return;
        }
        metrics::gauge!("liqwatch_accounts_incomplete").set(self.map.count_incomplete() as f64);
        *at = Some(std::time::Instant::now());
    }

    fn account_incomplete(&self, id: &AccountId) -> Option<String> {
        let trigger = self.map.trigger_for(id, *self.default_trigger.read());
        match self.map.snapshot(id, trigger) {
            Err(crate::engine::AccountError::Margin { source, .. }) => Some(source.to_string()),
            _ => None,
        }
    }

    fn accounts_page(
        &self,
        query: AccountsPageQuery,
    ) -> BoxFuture<'_, Result<AccountsPage, BackendError>> {
        Box::pin(async move {
            let (map, states) = (Arc::clone(&self.map), Arc::clone(&self.states));
            let trigger = *self.default_trigger.read();
            let page = tokio::task::spawn_blocking(move || {
                if query.sort == api::AccountSort::Distance {
                    super::distance_sort::distance_page_ids(&map, &states, &query, trigger)
                } else {
                    super::risk_queries::page_ids(&map, &states, &query)
                }
            })
            .await
            .map_err(|e| BackendError(e.to_string()))?;
            let accounts = page.ids.iter().filter_map(|id| self.view(id)).collect();
            let incomplete = api::Incomplete {
                count: page.incomplete.count,
                accounts: page
                    .incomplete
                    .first
                    .into_iter()
                    .map(|account_id| api::IncompleteAccount {
                        // Priced again since the ranking: say so rather than invent a reason.
                        reason: self
                            .account_incomplete(&account_id)
                            .unwrap_or_else(|| "valued again since the listing was ranked".into()),
                        account_id,
                    })
                    .collect(),
            };
            Ok(AccountsPage {
                accounts,
                total: page.total,
                incomplete,
            })
        })
    }

    fn stress(&self, id: &AccountId, query: &StressQuery) -> Result<StressBody, ApiError> {
        super::risk_queries::stress(&self.map, &self.default_levels.read(), id, query)
    }

    fn history(&self, id: &AccountId) -> Option<Vec<HistoryPoint>> {
        self.map.key_of(id)?;
        self.history.watch(id, now_ms());
        Some(self.history.points(id))
    }

    fn account_events(
        &self,
        id: &AccountId,
        before_seq: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalEntry>, BackendError>> {
        let (j, id) = (Arc::clone(&self.journal), id.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || j.account_events(&id, before_seq, limit))
                .await
                .map_err(|e| BackendError(e.to_string()))?
                .map_err(|e| BackendError(e.to_string()))
        })
    }

    fn risk(&self, id: &AccountId) -> Result<crate::risk::store::StoredRisk, api::ApiError> {
        use super::risk::{RiskAnswerError, account_risk};
        let Some(s) = &self.risk else {
            return Err(api::risk_not_configured());
        };
        if self.map.key_of(id).is_none() {
            return Err(api::ApiError::NotFound(format!("account {id} not found")));
        }
        // The scheduled result when there is one; else computed now, as before the schedule.
        let changed = self.risk_changes.as_ref().is_some_and(|c| c.pending(id));
        if let Some(stored) = self.risk_store.get(id).filter(|_| !changed) {
            return Ok((*stored).clone());
        }
        let trigger = self.map.trigger_for(id, *self.default_trigger.read());
        let at = now_ms();
        account_risk(s, &self.map, id, trigger)
            .map(|r| crate::risk::store::StoredRisk::new(r, at, "on_demand"))
            .map_err(|e| match e {
                RiskAnswerError::Unknown => {
                    api::ApiError::NotFound(format!("account {id} not found"))
                }
                RiskAnswerError::Failed(message) => api::ApiError::Unprocessable {
                    code: "risk_unavailable",
                    field: None,
                    message,
                    details: Vec::new(),
                },
            })
    }

    fn risk_riskiest(
        &self,
        by: crate::risk::store::RiskRank,
        offset: usize,
        limit: usize,
    ) -> Result<api::riskiest::RiskiestBody, api::ApiError> {
        if self.risk.is_none() {
            return Err(api::risk_not_configured());
        }
        let (total, page) = self.risk_store.rank(by, offset, limit);
        Ok(api::riskiest::RiskiestBody {
            by: by.as_str().to_string(),
            accounts: page
                .iter()
                .map(|s| api::riskiest::RiskiestRow::of(s))
                .collect(),
            total: total as u64,
            offset: offset as u64,
        })
    }

    fn riskiest(&self, limit: usize) -> BoxFuture<'_, Result<Vec<api::AccountView>, BackendError>> {
        Box::pin(async move {
            let map = Arc::clone(&self.map);
            let rows = tokio::task::spawn_blocking(move || map.riskiest(limit))
                .await
                .map_err(|e| BackendError(e.to_string()))?;
            Ok(rows.iter().filter_map(|r| self.view(&r.id)).collect())
        })
    }

    fn feeds(&self) -> Vec<api::FeedStatus> {
        self.registry.snapshot(&self.board)
    }

    fn redeliver_dead_letters(&self, name: &str) -> BoxFuture<'_, Result<u64, api::ApiError>> {
        let name = name.to_string();
        Box::pin(async move {
            if !self.sinks.healths().iter().any(|h| h.borrow().sink == name) {
                return Err(api::ApiError::NotFound(format!("no sink named {name:?}")));
            }
            let (n, journal) = (name.clone(), Arc::clone(&self.journal));
            let held = tokio::task::spawn_blocking(move || journal.dead_letters(&n))
                .await
                .map_err(|e| api::ApiError::Internal(e.to_string()))?
                .map_err(|e| api::ApiError::Internal(e.to_string()))?
                .len() as u64;
            self.sinks.redeliver_dead_letters(&name);
            Ok(held)
        })
    }

    fn sinks(&self) -> Vec<crate::sinks::SinkHealth> {
        let mut all: Vec<crate::sinks::SinkHealth> = self
            .sinks
            .healths()
            .iter()
            .map(|h| h.borrow().clone())
            .collect();
        all.sort_by(|a, b| a.sink.cmp(&b.sink));
        all
    }

    fn events(
        &self,
        since: EventsSince,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalEntry>, BackendError>> {
        Box::pin(async move {
            let j = Arc::clone(&self.journal);
            let since = match since {
                EventsSince::Seq(s) => Since::Seq(s),
                EventsSince::Time(t) => Since::TimeMs(t),
            };
            tokio::task::spawn_blocking(move || j.events_since(since, limit))
                .await
                .map_err(|e| BackendError(e.to_string()))?
                .map_err(|e| BackendError(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    //! Each readiness check of the real [`Backend`] failing, seen through the real router's
    //! `/readyz` (issue 11 item 10: checks that can fail, tested failing).

    use std::str::FromStr;

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::feeds::SymbolRoutes;
    use crate::model::{Instrument, PriceField, PriceTick, Venue};
    use crate::prices::PriceBoardConfig;
    use crate::sinks::{SinkHealth, SinkState};
    use tokio::sync::watch;

    fn instrument() -> Instrument {
        match serde_json::from_str(
            r#"{"id":"BTCUSDT-PERP","kind":"linear_perpetual","underlying":"BTC",
                "sources":[{"venue":"binance-usdm","symbol":"BTCUSDT"}]}"#,
        ) {
            Ok(i) => i,
            Err(e) => panic!("{e}"),
        }
    }

    struct Fixture {
        backend: Arc<Backend>,
        engine_rx: mpsc::Receiver<EngineRequest>,
        sink_tx: watch::Sender<SinkHealth>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let journal =
            Journal::create(dir.path().join("journal.sqlite")).unwrap_or_else(|e| panic!("{e}"));
        let board = Arc::new(PriceBoard::new(PriceBoardConfig::default()));
        let registry = Arc::new(FeedRegistry::new());
        let inst = instrument();
        let mut routes = SymbolRoutes::default();
        routes.add("BTCUSDT", inst.id.clone(), PriceField::Mark);
        board.track(&inst.id, &[Venue::BinanceUsdm]);
        registry.register_replay(Venue::BinanceUsdm, &routes);
        let health = SinkHealth {
            sink: "archive".into(),
            state: SinkState::Idle,
            cursor: 0,
            last_seq: 0,
            lag: 0,
            delivered: 0,
            filtered: 0,
            retries: 0,
            dead_letters: 0,
            consecutive_failures: 0,
            last_error: None,
            failing_since_ms: None,
            last_delivery_ms: None,
            last_dead_letter_ms: None,
        };
        let (sink_tx, sink_rx) = watch::channel(health);
        let (engine_tx, engine_rx) = mpsc::channel(4);
        let backend = Arc::new(Backend {
            map: Arc::new(AccountMap::new([inst])),
            board,
            registry,
            journal: Arc::new(journal),
            states: Arc::new(DashMap::new()),
            sinks: super::super::sinkset::SinkSet::with_health("archive", sink_rx),
            engine: engine_tx,
            kinds: HashMap::new(),
            default_trigger: Arc::new(parking_lot::RwLock::new(Decimal::ONE)),
            default_levels: Arc::default(),
            risk: None,
            risk_store: Arc::default(),
            risk_changes: None,
            history: Arc::default(),
            instruments: Default::default(),
            gauges_at: Default::default(),
        });
        Fixture {
            backend,
            engine_rx,
            sink_tx,
            _dir: dir,
        }
    }

    async fn readyz(backend: &Arc<Backend>) -> (u16, serde_json::Value) {
        get(backend, "/readyz").await
    }

    fn failing(body: &serde_json::Value) -> Vec<String> {
        body["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["ok"] == false)
            .map(|c| format!("{}: {}", c["name"], c["detail"]))
            .collect()
    }

    async fn get(backend: &Arc<Backend>, uri: &str) -> (u16, serde_json::Value) {
        let (events, _) = tokio::sync::broadcast::channel(4);
        let router = api::router(api::ApiState::new(backend.clone(), events));
        let request = Request::get(uri)
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let response = router.oneshot(request).await.unwrap_or_else(|e| match e {});
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        (status, body)
    }

    /// The computed gauges scan the book at most once per `GAUGE_SCAN_EVERY`, however often
    /// `/metrics` is scraped: a second scrape at once leaves the last scan's time alone.
    #[tokio::test]
    async fn the_gauge_scan_is_throttled() {
        let f = fixture();
        assert!(f.backend.gauges_at.lock().is_none());
        f.backend.refresh_gauges();
        let first = *f.backend.gauges_at.lock();
        assert!(first.is_some());
        std::thread::sleep(std::time::Duration::from_millis(5));
        f.backend.refresh_gauges();
        assert_eq!(
            *f.backend.gauges_at.lock(),
            first,
            "scanned again within the interval"
        );
        // Once the interval has passed, the next scrape scans again.
        *f.backend.gauges_at.lock() = first.and_then(|t| t.checked_sub(GAUGE_SCAN_EVERY));
        f.backend.refresh_gauges();
        let again = *f.backend.gauges_at.lock();
        assert!(
            again.is_some_and(|t| Some(t) > first),
            "{again:?} {first:?}"
        );
    }

    /// An account the daemon cannot value (its instrument has no price yet) is not "not
    /// found": its view answers 503 `account_incomplete` saying why, and the listing counts and
    /// names it although no page can rank it. An unknown account stays a 404.
    #[tokio::test]
    async fn an_account_that_cannot_be_valued_is_reported_not_hidden() {
        let f = fixture();
        let account: crate::model::Account = serde_json::from_str(
            r#"{"id":"unpriced","collateral":{},"positions":[
                {"instrument":"BTCUSDT-PERP","quantity":"1","entry_price":"50000"}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        f.backend
            .map
            .apply_update(crate::model::AccountUpdate::Replace { account })
            .unwrap_or_else(|e| panic!("{e}"));

        let (status, body) = get(&f.backend, "/v1/accounts/unpriced").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "account_incomplete", "{body}");
        assert_eq!(
            body["error"]["message"],
            "account unpriced cannot be valued now: no price for BTCUSDT-PERP",
            "{body}"
        );
        let (status, body) = get(&f.backend, "/v1/accounts/nobody").await;
        assert_eq!((status, &body["error"]["code"]), (404, &"not_found".into()));

        let (status, body) = get(&f.backend, "/v1/accounts").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["total"], 0, "{body}");
        assert_eq!(
            body["incomplete"],
            serde_json::json!({"count": 1, "accounts": [
                {"account_id": "unpriced", "reason": "no price for BTCUSDT-PERP"}
            ]}),
            "{body}"
        );
    }

    /// Not ready until the replayed instrument has a price; then ready; then each of "engine
    /// stopped" and "sink stuck" makes `/readyz` answer 503 naming that check alone.
    #[tokio::test]
    async fn each_readiness_check_can_fail() {
        let mut f = fixture();

        let (status, body) = readyz(&f.backend).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(failing(&body).len(), 1, "{body}");
        assert!(
            failing(&body)[0]
                .contains("replay binance-usdm BTCUSDT (BTCUSDT-PERP) has no price yet"),
            "{body}"
        );

        f.backend.board.publish(PriceTick {
            instrument: "BTCUSDT-PERP".into(),
            venue: Venue::BinanceUsdm,
            price: Decimal::from_str("42000").unwrap_or_default(),
            index: None,
            exchange_ts: None,
            received_ts: now_ms(),
        });
        let (status, body) = readyz(&f.backend).await;
        assert_eq!(status, 200, "{body}");

        f.sink_tx.send_modify(|h| {
            h.state = SinkState::Stuck;
            h.lag = 7;
            h.last_error = Some("connection refused".into());
        });
        let (status, body) = readyz(&f.backend).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            failing(&body),
            vec![r#""sinks": "archive stuck (7 behind): connection refused""#.to_string()],
            "{body}"
        );
        f.sink_tx.send_modify(|h| h.state = SinkState::Idle);

        f.engine_rx.close();
        drop(f.engine_rx);
        let (status, body) = readyz(&f.backend).await;
        assert_eq!(status, 503, "{body}");
        let failed = failing(&body);
        assert_eq!(failed.len(), 1, "{body}");
        assert!(failed[0].contains("engine stopped"), "{body}");
    }
}
