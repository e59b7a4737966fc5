//! An in-memory [`ApiBackend`] for API and ingest tests: accounts in a map, a journal in a vector
//! feeding a real broadcast channel, scripted readiness and feed status, and failure injection.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use liqwatch::api::{
    AccountView, ApiBackend, BackendError, EventsSince, FeedStatus, InstrumentFeedStatus,
    ReadinessCheck,
};
use liqwatch::model::{
    Account, AccountId, AccountState, AccountUpdate, EventKind, InstrumentId, InstrumentKind,
    MarginRatio, RiskEvent, RiskSnapshot, ShockDistance, Venue,
};
use liqwatch::sinks::JournalEntry;
use liqwatch::sources::{AccountWriter, Applied, ApplyError, UpdateKey, UpdateOrigin};
use rust_decimal::Decimal;
use tokio::sync::broadcast;

/// The in-memory backend.
pub struct MemBackend {
    pub accounts: Mutex<BTreeMap<AccountId, Account>>,
    pub views: Mutex<BTreeMap<AccountId, AccountView>>,
    pub applied: Mutex<Vec<(AccountUpdate, UpdateOrigin)>>,
    pub seen_nats: Mutex<Vec<u64>>,
    /// The update id each `apply` call carried (as the sender gave it), in call order.
    pub keys: Mutex<Vec<Option<String>>>,
    pub fail_next: Mutex<Vec<ApplyError>>,
    pub readiness: Mutex<Vec<ReadinessCheck>>,
    pub journal: Mutex<Vec<JournalEntry>>,
    pub events_tx: broadcast::Sender<Arc<JournalEntry>>,
}

impl MemBackend {
    /// A backend whose live-event channel holds `capacity` entries.
    pub fn new(capacity: usize) -> Arc<MemBackend> {
        let (events_tx, _) = broadcast::channel(capacity);
        Arc::new(MemBackend {
            accounts: Mutex::default(),
            views: Mutex::default(),
            applied: Mutex::default(),
            seen_nats: Mutex::default(),
            keys: Mutex::default(),
            fail_next: Mutex::default(),
            readiness: Mutex::new(vec![
                ReadinessCheck {
                    name: "feeds".into(),
                    ok: true,
                    detail: "2 venues subscribed and fresh".into(),
                },
                ReadinessCheck {
                    name: "accounts".into(),
                    ok: true,
                    detail: "3 accounts loaded".into(),
                },
            ]),
            journal: Mutex::default(),
            events_tx,
        })
    }

    /// Journals an event for `account` and sends it live, like the daemon after commit.
    pub fn publish(&self, kind: EventKind, account: &str) -> JournalEntry {
        let mut journal = self.journal.lock().unwrap();
        let seq = journal.len() as u64 + 1;
        let time_ms = 1_621_428_000_000 + seq as i64 * 1000;
        let event = RiskEvent {
            event_id: RiskEvent::new_id(),
            kind,
            time: liqwatch::model::format_rfc3339_ms(time_ms),
            time_ms,
            account_id: Some(AccountId::from(account)),
            seq,
            level: Some(Decimal::new(8, 1)),
            crossed_levels: vec![Decimal::new(8, 1)],
            level_type: None,
            previous_state: Some(AccountState::Healthy),
            state: Some(AccountState::Warning {
                level: Decimal::new(8, 1),
            }),
            snapshot: None,
            prices: vec![],
            stale_prices: false,
            instrument_change: None,
            feed: None,
            risk: None,
        };
        let json = serde_json::to_string(&event).unwrap();
        let entry = JournalEntry { seq, event, json };
        journal.push(entry.clone());
        let _ = self.events_tx.send(Arc::new(entry.clone()));
        entry
    }

    /// Sets the view of an account with the given margin ratio.
    pub fn set_view(&self, id: &str, ratio: Decimal) {
        self.views
            .lock()
            .unwrap()
            .insert(AccountId::from(id), view(id, ratio));
    }
}

/// A view with the given margin ratio (equity 1000, MM = ratio × 1000).
pub fn view(id: &str, ratio: Decimal) -> AccountView {
    let equity = Decimal::new(1000, 0);
    let mm = ratio * equity;
    AccountView {
        account_id: AccountId::from(id),
        state: if ratio >= Decimal::ONE {
            AccountState::Triggered
        } else if ratio >= Decimal::new(8, 1) {
            AccountState::Warning {
                level: Decimal::new(8, 1),
            }
        } else {
            AccountState::Healthy
        },
        snapshot: RiskSnapshot {
            equity,
            maintenance_margin: mm,
            margin_ratio: MarginRatio::compute(mm, equity),
            free_margin: equity - mm,
            shock_distance: ShockDistance::default(),
            liquidation_penalty: Decimal::ZERO,
            positions: vec![],
            collateral: vec![],
            liquidation_cost: None,
            funding: None,
            margin_call: None,
        },
        prices: vec![],
        stale_prices: false,
        as_of_ms: 1_621_428_000_000,
        levels: None,
        last_event: None,
    }
}

impl AccountWriter for MemBackend {
    fn instrument_kind(&self, id: &InstrumentId) -> Option<InstrumentKind> {
        match id.as_str() {
            "BTCUSDT-PERP" | "ETHUSDT-PERP" | "SOLUSDT-PERP" => {
                Some(InstrumentKind::LinearPerpetual)
            }
            "USDT" | "BTC" | "ETH" => Some(InstrumentKind::Collateral),
            _ => None,
        }
    }

    fn apply(
        &self,
        update: AccountUpdate,
        origin: UpdateOrigin,
        key: Option<UpdateKey>,
    ) -> BoxFuture<'_, Result<Applied, ApplyError>> {
        Box::pin(async move {
            self.keys
                .lock()
                .unwrap()
                .push(key.map(|k| k.shown().to_string()));
            if let Some(e) = self.fail_next.lock().unwrap().pop() {
                return Err(e);
            }
            if let UpdateOrigin::Nats {
                stream_sequence, ..
            } = &origin
            {
                let mut seen = self.seen_nats.lock().unwrap();
                if seen.contains(stream_sequence) {
                    return Ok(Applied::Duplicate);
                }
                seen.push(*stream_sequence);
            }
            let mut accounts = self.accounts.lock().unwrap();
            let result = match &update {
                AccountUpdate::Replace { account } => {
                    let created = accounts
                        .insert(account.id.clone(), account.clone())
                        .is_none();
                    self.views
                        .lock()
                        .unwrap()
                        .insert(account.id.clone(), view(account.id.as_str(), Decimal::ZERO));
                    if created {
                        Applied::Created
                    } else {
                        Applied::Updated
                    }
                }
                AccountUpdate::Fill { account_id, .. }
                | AccountUpdate::Collateral { account_id, .. } => {
                    if !accounts.contains_key(account_id) {
                        return Err(ApplyError::NotFound(account_id.clone()));
                    }
                    Applied::Updated
                }
                AccountUpdate::Remove { account_id } => {
                    if accounts.remove(account_id).is_none() {
                        return Err(ApplyError::NotFound(account_id.clone()));
                    }
                    self.views.lock().unwrap().remove(account_id);
                    Applied::Removed
                }
            };
            self.applied.lock().unwrap().push((update, origin));
            Ok(result)
        })
    }
}

impl ApiBackend for MemBackend {
    fn readiness(&self) -> Vec<ReadinessCheck> {
        self.readiness.lock().unwrap().clone()
    }

    fn account(&self, id: &AccountId) -> Option<AccountView> {
        self.views.lock().unwrap().get(id).cloned()
    }

    fn riskiest(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AccountView>, BackendError>> {
        Box::pin(async move {
            let mut all: Vec<AccountView> = self.views.lock().unwrap().values().cloned().collect();
            all.sort_by_key(|v| std::cmp::Reverse(v.snapshot.margin_ratio));
            all.truncate(limit);
            Ok(all)
        })
    }

    fn feeds(&self) -> Vec<FeedStatus> {
        vec![FeedStatus {
            venue: Venue::BinanceUsdm,
            replay: false,
            replay_finished_ms: None,
            connected: true,
            connected_since: Some(1_621_427_000_000),
            last_frame: Some(1_621_428_000_000),
            frames: 4711,
            reconnects: 1,
            parse_errors: 0,
            unknown_symbols: 0,
            last_error: Some("closed by venue: 1001 going away".into()),
            rejected_symbols: vec!["NOPEUSDT".into()],
            unconfirmed_symbols: vec![],
            instruments: vec![InstrumentFeedStatus {
                instrument: InstrumentId::from("BTCUSDT-PERP"),
                symbol: "BTCUSDT".into(),
                subscribed: true,
                last_price: Some(Decimal::new(3_761_205, 2)),
                received_ts: Some(1_621_428_000_000),
                age_ms: Some(120),
                stale: false,
                held_price: None,
            }],
        }]
    }

    fn events(
        &self,
        since: EventsSince,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalEntry>, BackendError>> {
        Box::pin(async move {
            let journal = self.journal.lock().unwrap();
            Ok(journal
                .iter()
                .filter(|e| match since {
                    EventsSince::Seq(s) => e.seq > s,
                    EventsSince::Time(t) => e.event.time_ms >= t,
                })
                .take(limit)
                .cloned()
                .collect())
        })
    }
}
