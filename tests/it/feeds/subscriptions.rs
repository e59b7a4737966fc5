//! Refused and unknown subscriptions (issue 12, item 1) over real loopback WebSockets: a
//! refused Binance batch (code 4) is split and retried per symbol with backoff on the live
//! connection until the symbol at fault delivers; an OKX symbol refused with an error event is
//! retried until it delivers, an unknown one is retried rarely and stays reported; a connection
//! on which nothing delivers is rebuilt; `/v1/feeds`' status fields say all of it.

use std::sync::Arc;
use std::time::Duration;

use liqwatch::feeds::binance::BinanceUsdm;
use liqwatch::feeds::okx::OkxFeed;
use liqwatch::feeds::{
    Feed, FeedConfig, FeedRegistry, FeedStatus, FeedStatusHandle, SymbolRoutes, run_feed,
};
use liqwatch::model::{InstrumentId, PriceField};
use liqwatch::prices::{PriceBoard, PriceBoardConfig};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use crate::support::mock_venue::{MockConfig, MockVenue, until};

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    board: Arc<PriceBoard>,
    status: Arc<FeedStatusHandle>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }

    fn snapshot(&self) -> FeedStatus {
        self.status.snapshot(&self.board)
    }

    fn subscribed(&self, symbol: &str) -> bool {
        self.snapshot()
            .instruments
            .iter()
            .any(|i| i.symbol == symbol && i.subscribed)
    }

    /// Polls until the instrument's composite price is `want`.
    async fn wait_price(&self, inst: &str, want: &str) {
        let want: Decimal = want.parse().unwrap();
        let ok = until(WAIT, || {
            self.board
                .composite(&InstrumentId::from(inst))
                .is_some_and(|c| c.price == want)
        })
        .await;
        assert!(ok, "{inst} never reached {want}; {:#?}", self.snapshot());
    }
}

fn routes(symbols: &[&str]) -> SymbolRoutes {
    let mut r = SymbolRoutes::default();
    for sym in symbols {
        r.add(
            sym,
            InstrumentId::from(format!("{sym}-I")),
            PriceField::Mark,
        );
    }
    r
}

/// Fast reconnects and retries; refusals retried from 20 ms up to 100 ms.
fn cfg(url: String, routes: SymbolRoutes) -> FeedConfig {
    FeedConfig {
        url: Some(url),
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        resubscribe_initial: Duration::from_millis(20),
        resubscribe_max: Duration::from_millis(100),
        ping_interval: Some(Duration::from_millis(100)),
        routes,
        ..FeedConfig::default()
    }
}

fn start(feed: Box<dyn Feed>, cfg: FeedConfig) -> Running {
    let board = Arc::new(PriceBoard::new(PriceBoardConfig::default()));
    let registry = FeedRegistry::new();
    let status = registry.register(feed.venue(), &cfg.routes);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_feed(
        feed,
        cfg,
        board.clone(),
        status.clone(),
        cancel.clone(),
    ));
    Running {
        board,
        status,
        cancel,
        task,
    }
}

/// The stream lists of every `SUBSCRIBE` sent on connection `n`.
fn binance_requests(venue: &MockVenue, n: usize) -> Vec<Vec<String>> {
    venue
        .texts(n)
        .iter()
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .filter(|v| v["method"] == "SUBSCRIBE")
        .map(|v| {
            v["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// Issue 12, item 1: Binance refuses the batch with code 4 while it names XRPUSDT. The driver
/// splits the batch, BTC and ETH subscribe on their own and deliver on the same connection,
/// XRPUSDT alone is retried with backoff and reported as rejected (`subscribed: false`); once
/// the venue accepts it, its prices flow, it leaves `rejected_symbols` and is subscribed.
#[tokio::test]
async fn binance_refused_batch_is_split_and_retried_per_symbol() {
    let venue = MockVenue::start(MockConfig::binance().refuse("XRPUSDT", 1_000_000), vec![]).await;
    for (s, p) in [
        ("BTCUSDT", "60000.5"),
        ("ETHUSDT", "3000.25"),
        ("XRPUSDT", "0.5"),
    ] {
        venue.set_price(s, p);
    }
    let run = start(
        Box::new(BinanceUsdm::new()),
        cfg(
            venue.url("market/stream"),
            routes(&["BTCUSDT", "ETHUSDT", "XRPUSDT"]),
        ),
    );
    run.wait_price("BTCUSDT-I", "60000.5").await;
    run.wait_price("ETHUSDT-I", "3000.25").await;
    // XRPUSDT keeps being retried alone on the live connection.
    assert!(until(WAIT, || venue.subscribe_requests("XRPUSDT") >= 6).await);
    let alone = vec!["xrpusdt@markPrice@1s".to_string()];
    let reqs = binance_requests(&venue, 0);
    assert_eq!(reqs[0].len(), 3, "{reqs:?}");
    assert!(
        reqs.iter().filter(|r| **r == alone).count() >= 3,
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|r| *r == vec!["ethusdt@markPrice@1s".to_string()]),
        "{reqs:?}"
    );
    let s = run.snapshot();
    assert_eq!(s.rejected_symbols, vec!["XRPUSDT".to_string()]);
    assert!(s.unconfirmed_symbols.is_empty(), "{s:?}");
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("Too many subscriptions")),
        "{s:?}"
    );
    assert!(run.subscribed("BTCUSDT") && run.subscribed("ETHUSDT"));
    assert!(!run.subscribed("XRPUSDT"));
    assert!(s.connected && s.connected_since.is_some() && s.last_frame.is_some());
    assert!(s.frames > 0);
    assert_eq!((s.parse_errors, s.unknown_symbols, s.reconnects), (0, 0, 0));

    // The venue relents: the next retry is accepted and XRPUSDT delivers.
    venue.set_refusals("XRPUSDT", 0);
    run.wait_price("XRPUSDT-I", "0.5").await;
    assert!(until(WAIT, || run.snapshot().rejected_symbols.is_empty()).await);
    assert!(run.subscribed("XRPUSDT"));
    assert_eq!(venue.connections(), 1);
    run.stop().await;
}

/// Issue 12, item 1: the one batch refused (code 4) a few times: retried until every symbol
/// delivers — the socket never stays open with nothing subscribed.
#[tokio::test]
async fn binance_refused_only_batch_recovers() {
    let venue = MockVenue::start(
        MockConfig::binance()
            .refuse("BTCUSDT", 3)
            .refuse("ETHUSDT", 3),
        vec![],
    )
    .await;
    venue.set_price("BTCUSDT", "61000");
    venue.set_price("ETHUSDT", "3100");
    let run = start(
        Box::new(BinanceUsdm::new()),
        cfg(venue.url("market/stream"), routes(&["BTCUSDT", "ETHUSDT"])),
    );
    run.wait_price("BTCUSDT-I", "61000").await;
    run.wait_price("ETHUSDT-I", "3100").await;
    assert_eq!(venue.refusals_left("BTCUSDT"), 0);
    assert!(until(WAIT, || run.snapshot().rejected_symbols.is_empty()).await);
    assert!(run.subscribed("BTCUSDT") && run.subscribed("ETHUSDT"));
    run.stop().await;
}

/// Issue 12, item 1: a connection on which no symbol delivers a price within
/// `first_data_timeout` (here Binance acks an unknown symbol and stays silent) is rebuilt, and
/// the symbol is listed as unconfirmed, not subscribed.
#[tokio::test]
async fn connection_with_nothing_subscribed_is_rebuilt() {
    let venue = MockVenue::start(MockConfig::binance(), vec![]).await;
    let run = start(
        Box::new(BinanceUsdm::new()),
        FeedConfig {
            first_data_timeout: Duration::from_millis(200),
            ..cfg(venue.url("market/stream"), routes(&["NOPEUSDT"]))
        },
    );
    assert!(until(WAIT, || run.snapshot().reconnects >= 2).await);
    assert!(until(WAIT, || !run.snapshot().unconfirmed_symbols.is_empty()).await);
    let s = run.snapshot();
    assert_eq!(s.unconfirmed_symbols, vec!["NOPEUSDT".to_string()]);
    assert!(!run.subscribed("NOPEUSDT"));
    assert!(
        s.last_error.as_deref().is_some_and(
            |e| e.contains("nothing subscribed") || e.contains("no data for NOPEUSDT")
        ),
        "{s:?}"
    );
    run.stop().await;
}

/// Issue 12, item 1: OKX answers one symbol's subscription with an error event (60014,
/// requests too frequent) three times: it is retried on the live connection until it
/// delivers. An unknown symbol (60018) is reported and retried only every `unknown_retry`,
/// also on the live connection, without disturbing the others.
#[tokio::test]
async fn okx_refused_symbol_retried_unknown_symbol_reported() {
    let venue = MockVenue::start(
        MockConfig::okx()
            .refuse("ETH-USDT-SWAP", 3)
            .unknown("NOPE-USDT-SWAP"),
        vec![],
    )
    .await;
    venue.set_price("BTC-USDT-SWAP", "84000.1");
    venue.set_price("ETH-USDT-SWAP", "3000.2");
    let run = start(
        Box::new(OkxFeed::new()),
        FeedConfig {
            unknown_retry: Duration::from_millis(300),
            ..cfg(
                venue.url(""),
                routes(&["BTC-USDT-SWAP", "ETH-USDT-SWAP", "NOPE-USDT-SWAP"]),
            )
        },
    );
    run.wait_price("BTC-USDT-SWAP-I", "84000.1").await;
    run.wait_price("ETH-USDT-SWAP-I", "3000.2").await;
    assert_eq!(venue.refusals_left("ETH-USDT-SWAP"), 0);
    assert!(venue.subscribe_requests("ETH-USDT-SWAP") >= 4);
    // The unknown symbol is tried again, rarely, on the same connection.
    assert!(until(WAIT, || venue.subscribe_requests("NOPE-USDT-SWAP") >= 3).await);
    assert_eq!(venue.connections(), 1);
    let s = run.snapshot();
    assert_eq!(s.rejected_symbols, vec!["NOPE-USDT-SWAP".to_string()]);
    assert!(run.subscribed("BTC-USDT-SWAP") && run.subscribed("ETH-USDT-SWAP"));
    assert!(!run.subscribed("NOPE-USDT-SWAP"));
    assert_eq!(s.parse_errors, 0);
    run.stop().await;
}
