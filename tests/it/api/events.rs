//! The API over a real SQLite journal: `/v1/events` history by sequence and by time, and the
//! live SSE stream fed by `api::forward_journal` from journal commits, over real TCP.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use liqwatch::api::{
    self, AccountView, ApiBackend, ApiState, BackendError, EventsSince, FeedStatus, ReadinessCheck,
};
use liqwatch::journal::{Journal, JournalHandle, Since};
use liqwatch::model::{
    AccountId, AccountState, AccountUpdate, EventKind, InstrumentId, InstrumentKind, RiskEvent,
};
use liqwatch::sinks::JournalEntry;
use liqwatch::sources::{AccountWriter, Applied, ApplyError, UpdateKey, UpdateOrigin};
use rust_decimal::Decimal;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::support::api_backend::MemBackend;

const DEADLINE: Duration = Duration::from_secs(20);

/// MemBackend for everything but events, which come from the real journal.
struct JournalBackend {
    mem: Arc<MemBackend>,
    journal: JournalHandle,
}

impl AccountWriter for JournalBackend {
    fn instrument_kind(&self, id: &InstrumentId) -> Option<InstrumentKind> {
        self.mem.instrument_kind(id)
    }
    fn apply(
        &self,
        update: AccountUpdate,
        origin: UpdateOrigin,
        key: Option<UpdateKey>,
    ) -> BoxFuture<'_, Result<Applied, ApplyError>> {
        self.mem.apply(update, origin, key)
    }
}

impl ApiBackend for JournalBackend {
    fn readiness(&self) -> Vec<ReadinessCheck> {
        self.mem.readiness()
    }
    fn account(&self, id: &AccountId) -> Option<AccountView> {
        self.mem.account(id)
    }
    fn riskiest(&self, limit: usize) -> BoxFuture<'_, Result<Vec<AccountView>, BackendError>> {
        self.mem.riskiest(limit)
    }
    fn feeds(&self) -> Vec<FeedStatus> {
        self.mem.feeds()
    }
    fn events(
        &self,
        since: EventsSince,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalEntry>, BackendError>> {
        let since = match since {
            EventsSince::Seq(s) => Since::Seq(s),
            EventsSince::Time(t) => Since::TimeMs(t),
        };
        Box::pin(async move {
            self.journal
                .events_since(since, limit)
                .await
                .map_err(|e| BackendError(e.to_string()))
        })
    }
}

fn event(kind: EventKind, account: &str, time_ms: i64) -> RiskEvent {
    RiskEvent {
        event_id: RiskEvent::new_id(),
        kind,
        time: liqwatch::model::format_rfc3339_ms(time_ms),
        time_ms,
        account_id: Some(AccountId::from(account)),
        seq: 1,
        level: Some(Decimal::ONE),
        crossed_levels: vec![Decimal::ONE],
        level_type: None,
        previous_state: Some(AccountState::Healthy),
        state: Some(AccountState::Triggered),
        snapshot: None,
        prices: vec![],
        stale_prices: false,
        instrument_change: None,
        feed: None,
        risk: None,
    }
}

async fn next_frame(resp: &mut reqwest::Response, buf: &mut String) -> (String, String, Value) {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let raw: String = buf.drain(..end + 2).collect();
            let (mut id, mut ev, mut data) = (String::new(), String::new(), String::new());
            for line in raw.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().into();
                } else if let Some(v) = line.strip_prefix("event:") {
                    ev = v.trim().into();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !data.is_empty() {
                return (id, ev, serde_json::from_str(&data).unwrap());
            }
            continue;
        }
        let chunk = tokio::time::timeout(DEADLINE, resp.chunk())
            .await
            .expect("no SSE data before the deadline")
            .unwrap()
            .expect("stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

/// History comes from the journal (by seq and by time), and events committed while a client
/// streams reach it live through `forward_journal`, after the replayed history, exactly once.
#[tokio::test]
async fn history_and_live_stream_from_a_real_journal() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::create(dir.path().join("journal.db")).unwrap());
    let handle = JournalHandle::new(journal.clone());
    let t0 = 1_621_428_000_000;
    journal
        .append(
            &[
                event(EventKind::LiquidationWarning, "a", t0),
                event(EventKind::LiquidationWarning, "b", t0 + 60_000),
            ],
            &[],
        )
        .unwrap();

    let mem = MemBackend::new(16);
    let (events_tx, _) = broadcast::channel(64);
    let cancel = CancellationToken::new();
    let backend = Arc::new(JournalBackend {
        mem,
        journal: handle.clone(),
    });
    let state = ApiState::new(backend, events_tx.clone()).with_shutdown(cancel.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(api::serve_on(listener, api::router(state), cancel.clone()));
    let forwarder = tokio::spawn(api::forward_journal(handle, events_tx, cancel.clone()));

    let client = reqwest::Client::new();
    let page: Value = client
        .get(format!(
            "http://{addr}/v1/events?since=2021-05-19T12:41:00Z"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["events"][0]["seq"], 2);
    assert_eq!(page["events"][0]["event"]["account_id"], "b");

    let mut resp = client
        .get(format!("http://{addr}/v1/events/stream?since=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut buf = String::new();
    let (id, _, data) = next_frame(&mut resp, &mut buf).await;
    assert_eq!((id.as_str(), data["account_id"].as_str()), ("1", Some("a")));
    let (id, _, _) = next_frame(&mut resp, &mut buf).await;
    assert_eq!(id, "2");

    journal
        .append(
            &[event(EventKind::LiquidationTrigger, "c", t0 + 120_000)],
            &[],
        )
        .unwrap();
    let (id, kind, data) = next_frame(&mut resp, &mut buf).await;
    assert_eq!(id, "3");
    assert_eq!(kind, "liquidation_trigger");
    assert_eq!(data["account_id"], "c");

    cancel.cancel();
    tokio::time::timeout(DEADLINE, forwarder)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(DEADLINE, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
