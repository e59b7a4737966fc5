//! Issue 11 item 7: a full disk must not hold events in unbounded memory. The real engine
//! runner over a real SQLite journal whose writes fail with SQLite's own "database or disk is
//! full" (`Journal::simulate_disk_full` caps the file at its size): past
//! `[journal] max_buffered_events` the runner stops taking prices, readiness says why, the
//! held events stay flat, and once the journal writes again every event is committed in order.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use dashmap::DashMap;
use rust_decimal::Decimal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backend::Backend;
use super::runner::{Runner, StateCounts};
use crate::api::ApiBackend;
use crate::engine::{AccountMap, Engine, EngineConfig, MonitorConfig};
use crate::feeds::FeedRegistry;
use crate::journal::{Journal, UpdateIdWindow};
use crate::model::{Account, AccountUpdate, InstrumentId, PriceTick, Venue, now_ms};
use crate::prices::{PriceBoard, PriceBoardConfig};

const LIMIT: usize = 3;

/// A tick at `price`, each one a millisecond after the last (the board ignores a tick that is
/// not newer than the one it holds).
fn tick(price: &str) -> PriceTick {
    static CLOCK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let at = CLOCK
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        .max(0)
        + now_ms();
    PriceTick {
        instrument: InstrumentId::from("BTCUSDT-PERP"),
        venue: Venue::BinanceUsdm,
        price: Decimal::from_str(price).unwrap_or_else(|e| panic!("{e}")),
        index: None,
        exchange_ts: None,
        received_ts: at,
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Past the limit the runner takes no more prices (held events stay at the limit however many
/// prices arrive), `/readyz`'s journal check says why, and after the disk frees every held
/// event is committed with contiguous per-account sequence numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_stops_prices_at_the_limit_issue_11_item_7() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let journal =
        Arc::new(Journal::create(dir.path().join("j.sqlite")).unwrap_or_else(|e| panic!("{e}")));
    journal.set_buffer_limit(LIMIT);
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
    let instruments =
        crate::sources::files::load_instruments(&presets).unwrap_or_else(|e| panic!("{e}"));
    let map = Arc::new(AccountMap::new(instruments.values().cloned()));
    // 1 BTC long from 50,000 on 5,200 USDT: healthy at 50,000, past the 0.8 warning at 45,000.
    let account: Account = serde_json::from_str(
        r#"{"id":"a","collateral":{"USDT":"5200"},
            "positions":[{"instrument":"BTCUSDT-PERP","quantity":"1","entry_price":"50000"}]}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    map.apply_update(AccountUpdate::Replace { account })
        .unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::new(
        Arc::clone(&map),
        EngineConfig {
            monitor: MonitorConfig::default(),
            distance_index: true,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let board = Arc::new(PriceBoard::new(PriceBoardConfig::default()));
    board.track(&InstrumentId::from("BTCUSDT-PERP"), &[Venue::BinanceUsdm]);
    let states = Arc::new(DashMap::new());
    let runner = Runner {
        engine,
        board: Arc::clone(&board),
        journal: Arc::clone(&journal),
        states: Arc::clone(&states),
        events: Arc::new(AtomicU64::new(0)),
        update_ids: UpdateIdWindow::default(),
        state_counts: StateCounts::default(),
        paused: false,
        settlements: None,
        funding_sources: Default::default(),
    };
    let (engine_tx, engine_rx) = mpsc::channel(4);
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(engine_rx, stop.clone()));

    // Healthy journal: each crossing is committed.
    board.publish(tick("45000"));
    until("the warning", || journal.last_seq() >= 1).await;
    board.publish(tick("50000"));
    until("the recovery", || journal.last_seq() >= 2).await;

    // Disk full: crossings pile up in memory until the limit.
    journal
        .simulate_disk_full(true)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut low = true;
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while !journal.over_buffer_limit() {
        assert!(
            std::time::Instant::now() < end,
            "the limit was never reached: {} held, {} committed",
            journal.buffered(),
            journal.last_seq()
        );
        // Wait for this crossing to be held (or committed, while pages still have room).
        let before = (journal.buffered(), journal.last_seq());
        board.publish(tick(if low { "45000" } else { "50000" }));
        low = !low;
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while (journal.buffered(), journal.last_seq()) == before && std::time::Instant::now() < end
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let held = journal.buffered();
    assert_eq!(
        held, LIMIT,
        "one event per burst: the runner stops at the limit"
    );
    assert!(journal.is_write_failing());

    // Paused: hundreds more crossings arrive; none is evaluated, memory stays where it is.
    for _ in 0..200 {
        board.publish(tick(if low { "45000" } else { "50000" }));
        low = !low;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(journal.buffered(), held);
    let backend = Backend {
        map: Arc::clone(&map),
        board: Arc::clone(&board),
        registry: Arc::new(FeedRegistry::new()),
        journal: Arc::clone(&journal),
        states,
        sinks: super::sinkset::SinkSet::default(),
        engine: engine_tx.clone(),
        kinds: HashMap::new(),
        default_trigger: Arc::new(parking_lot::RwLock::new(Decimal::ONE)),
        default_levels: Arc::default(),
        risk: None,
        risk_store: Arc::default(),
        risk_changes: None,
        history: Arc::default(),
        instruments: Default::default(),
        gauges_at: Default::default(),
    };
    let check = backend
        .readiness()
        .into_iter()
        .find(|c| c.name == "journal")
        .unwrap_or_else(|| panic!("no journal check"));
    assert!(!check.ok);
    assert!(
        check.detail.contains("stopped taking prices") && check.detail.contains("3 events"),
        "{}",
        check.detail
    );

    // Space again: the backlog commits, the runner resumes with the latest price.
    journal
        .simulate_disk_full(false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(journal.retry_pending().ok(), Some(held));
    let last_low = !low; // the price published last
    let committed_before = journal.last_seq();
    until("the runner to take the latest price", || {
        let entries = journal.read_after(0, 1000).unwrap_or_default();
        let warning = entries
            .last()
            .is_some_and(|e| e.event.kind.as_str() == "liquidation_warning");
        entries.len() as u64 >= committed_before && warning == last_low
    })
    .await;
    let entries = journal
        .read_after(0, 1000)
        .unwrap_or_else(|e| panic!("{e}"));
    let seqs: Vec<u64> = entries.iter().map(|e| e.event.seq).collect();
    let want: Vec<u64> = (1..=entries.len() as u64).collect();
    assert_eq!(seqs, want, "every event kept, in order");
    stop.cancel();
    drop(engine_tx);
    task.await.unwrap_or_else(|e| panic!("{e}"));
}
