//! The HTTP API's backend over the real components ([`crate::api::ApiBackend`] and
//! [`crate::sources::AccountWriter`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use tokio::sync::{mpsc, oneshot, watch};

use super::runner::EngineRequest;
use crate::api::{self, ApiBackend, BackendError, EventsSince, ReadinessCheck};
use crate::engine::AccountMap;
use crate::feeds::FeedRegistry;
use crate::journal::{Journal, Since};
use crate::model::{
    AccountId, AccountState, AccountUpdate, InstrumentId, InstrumentKind, PriceUsed, now_ms,
};
use crate::prices::PriceBoard;
use crate::sinks::{JournalEntry, SinkHealth};
use crate::sources::{AccountWriter, Applied, ApplyError, UpdateOrigin};

/// The API's view of the running daemon: reads go straight to the shared map, board, registry
/// and journal; account updates go to the engine runner and are answered once persisted.
pub(crate) struct Backend {
    pub map: Arc<AccountMap>,
    pub board: Arc<PriceBoard>,
    pub registry: Arc<FeedRegistry>,
    pub journal: Arc<Journal>,
    pub states: Arc<DashMap<AccountId, AccountState>>,
    pub sinks: Vec<watch::Receiver<SinkHealth>>,
    pub engine: mpsc::Sender<EngineRequest>,
    pub kinds: HashMap<InstrumentId, InstrumentKind>,
    pub default_trigger: Decimal,
}

impl Backend {
    fn view(&self, id: &AccountId) -> Option<api::AccountView> {
        let trigger = self.map.trigger_for(id, self.default_trigger);
        let snapshot = self.map.snapshot(id, trigger).ok()?;
        let account = self.map.account(id)?;
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
        Some(api::AccountView {
            account_id: id.clone(),
            state: self
                .states
                .get(id)
                .map(|s| s.clone())
                .unwrap_or(AccountState::Healthy),
            snapshot,
            prices,
            stale_prices,
            as_of_ms: now_ms(),
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
    ) -> BoxFuture<'_, Result<Applied, ApplyError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let req = EngineRequest::Update {
                update,
                origin,
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
        })
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
        let stuck: Vec<String> = self
            .sinks
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
                format!("{} sink(s) delivering", self.sinks.len())
            } else {
                stuck.join("; ")
            },
        });
        let failing = self.journal.is_write_failing();
        out.push(ReadinessCheck {
            name: "journal".into(),
            ok: !failing,
            detail: if failing {
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
        self.view(id)
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
