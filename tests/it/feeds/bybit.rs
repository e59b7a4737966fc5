//! Bybit linear feed over a real loopback WebSocket: the client-ping demand, snapshot/delta
//! merge, rejected subscriptions naming the symbol, and state cleared on reconnect.

use std::sync::Arc;
use std::time::Duration;

use liqwatch::feeds::bybit::BybitLinear;
use liqwatch::feeds::{FeedConfig, FeedRegistry, FeedStatusHandle, SymbolRoutes, run_feed};
use liqwatch::model::{InstrumentId, PriceField, Venue};
use liqwatch::prices::{PriceBoard, PriceBoardConfig};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use tokio_util::sync::CancellationToken;

use crate::support::mock_venue::{Idle, MockConfig, MockVenue, Reply, Step, until};

const WAIT: Duration = Duration::from_secs(5);
const ACK: &str = r#"{"success":true,"ret_msg":"","conn_id":"c1","req_id":"","op":"subscribe"}"#;
const PONG: &str = r#"{"success":true,"ret_msg":"pong","conn_id":"c1","req_id":"","op":"ping"}"#;
const REJECT: &str = r#"{"success":false,"ret_msg":"error:handler not found,topic:tickers.NOPEUSDT","conn_id":"c1","req_id":"","op":"subscribe"}"#;

fn snapshot(sym: &str, mark: &str, index: &str, ts: i64) -> String {
    format!(
        r#"{{"topic":"tickers.{sym}","type":"snapshot","data":{{"symbol":"{sym}","lastPrice":"{mark}","markPrice":"{mark}","indexPrice":"{index}","fundingRate":"0.0001"}},"cs":1,"ts":{ts}}}"#
    )
}

fn delta(sym: &str, fields: &str, ts: i64) -> String {
    format!(
        r#"{{"topic":"tickers.{sym}","type":"delta","data":{{"symbol":"{sym}"{fields}}},"cs":2,"ts":{ts}}}"#
    )
}

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
    fn price(&self, inst: &str) -> Option<Decimal> {
        self.board
            .composite(&InstrumentId::from(inst))
            .map(|c| c.price)
    }
}

fn start(url: String, routes: SymbolRoutes, ping: Duration) -> Running {
    let cfg = FeedConfig {
        url: Some(url),
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ping_interval: Some(ping),
        routes,
        ..FeedConfig::default()
    };
    let board = Arc::new(PriceBoard::new(PriceBoardConfig::default()));
    let registry = FeedRegistry::new();
    let status = registry.register(Venue::BybitLinear, &cfg.routes);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_feed(
        Box::new(BybitLinear::new()),
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

fn bybit_cfg() -> MockConfig {
    MockConfig {
        replies: vec![
            Reply::new(r#""op":"ping""#, [PONG]),
            Reply::new("NOPEUSDT", [REJECT]),
            Reply::new(r#""op":"subscribe""#, [ACK]),
        ],
        idle: Some(Idle::text(r#""op":"ping""#, Duration::from_millis(300))),
        ..MockConfig::default()
    }
}

fn btc_routes() -> SymbolRoutes {
    let mut r = SymbolRoutes::default();
    r.add(
        "BTCUSDT",
        InstrumentId::from("BTCUSDT-PERP"),
        PriceField::Mark,
    );
    r.add("BTCUSDT", InstrumentId::from("BTC"), PriceField::Index);
    r
}

/// A client that pings every 100 ms keeps its connection past several 300 ms windows.
#[tokio::test]
async fn pinging_client_is_kept() {
    let venue = MockVenue::start(bybit_cfg(), vec![]).await;
    let run = start(
        venue.url("v5/public/linear"),
        btc_routes(),
        Duration::from_millis(100),
    );
    assert!(
        until(WAIT, || {
            venue
                .texts(0)
                .iter()
                .filter(|t| t.contains(r#""op":"ping""#))
                .count()
                >= 8
        })
        .await
    );
    assert_eq!(venue.connections(), 1);
    assert_eq!(venue.log(0).ended_by_server, None);
    run.stop().await;
}

/// A client that does not ping in time is dropped by the venue, as Bybit does; the driver
/// reconnects.
#[tokio::test]
async fn silent_client_is_dropped_and_reconnects() {
    let venue = MockVenue::start(bybit_cfg(), vec![]).await;
    let run = start(
        venue.url("v5/public/linear"),
        btc_routes(),
        Duration::from_secs(20),
    );
    assert!(until(WAIT, || venue.connections() >= 2).await);
    assert_eq!(
        venue.log(0).ended_by_server.as_deref(),
        Some("client did not ping")
    );
    run.stop().await;
}

/// Snapshot then deltas over the socket: a delta without `markPrice` keeps the mark, a delta
/// with one changes it, `""` index is ignored; mark and index route to different instruments.
#[tokio::test]
async fn snapshot_and_deltas_merge() {
    let venue = MockVenue::start(bybit_cfg(), vec![]).await;
    let run = start(
        venue.url("v5/public/linear"),
        btc_routes(),
        Duration::from_millis(100),
    );
    assert!(
        until(WAIT, || venue
            .texts(0)
            .iter()
            .any(|t| t.contains("tickers.BTCUSDT")))
        .await
    );
    venue.push(delta("BTCUSDT", r#","markPrice":"1""#, 1));
    venue.push(snapshot("BTCUSDT", "79114.20", "79139.09", 2));
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(79114.20))).await);
    assert_eq!(run.price("BTC"), Some(dec!(79139.09)));
    venue.push(delta("BTCUSDT", r#","bid1Price":"79114.50""#, 3));
    venue.push(delta(
        "BTCUSDT",
        r#","markPrice":"79120.55","indexPrice":"""#,
        4,
    ));
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(79120.55))).await);
    assert_eq!(run.price("BTC"), Some(dec!(79139.09)));
    assert_eq!(run.status.parse_errors(), 0);
    run.stop().await;
}

/// A rejected topic is a clear error naming the symbol; the connection is rebuilt at once
/// without it, and the new connection starts from clean state (a delta before its snapshot is
/// dropped even though the old connection had one).
#[tokio::test]
async fn rejected_symbol_is_named_and_left_out() {
    let mut cfg = bybit_cfg();
    cfg.replies.retain(|r| r.when != "NOPEUSDT");
    let venue = MockVenue::start(
        cfg,
        vec![
            vec![
                Step::AwaitText("tickers.NOPEUSDT".into()),
                Step::Send(snapshot("BTCUSDT", "99", "99", 1)),
                Step::Pause(Duration::from_millis(50)),
                Step::Send(REJECT.into()),
            ],
            vec![
                Step::AwaitText("tickers.BTCUSDT".into()),
                Step::Send(delta("BTCUSDT", r#","markPrice":"101""#, 2)),
                // A frame behind it (unrouted symbol) marks that the delta was read.
                Step::Send(snapshot("ETHUSDT", "3000", "3000", 2)),
            ],
        ],
    )
    .await;
    let mut routes = btc_routes();
    routes.add(
        "NOPEUSDT",
        InstrumentId::from("NOPE-PERP"),
        PriceField::Mark,
    );
    let run = start(
        venue.url("v5/public/linear"),
        routes,
        Duration::from_millis(100),
    );
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(99))).await);
    assert!(until(WAIT, || !run.status.rejected_symbols().is_empty()).await);
    assert_eq!(run.status.rejected_symbols(), vec!["NOPEUSDT".to_string()]);
    assert!(
        run.status
            .last_error()
            .is_some_and(|e| e.contains("NOPEUSDT") && e.contains("handler not found"))
    );
    assert!(until(WAIT, || venue.connections() >= 2).await);
    // The second connection is counted when accepted; its subscribe arrives a moment later.
    assert!(
        until(WAIT, || venue
            .texts(1)
            .iter()
            .any(|t| t.contains("subscribe")))
        .await
    );
    let sub = venue
        .texts(1)
        .into_iter()
        .find(|t| t.contains("subscribe"))
        .unwrap();
    assert_eq!(
        sub,
        r#"{"args":["tickers.BTCUSDT"],"op":"subscribe","req_id":"sub-1"}"#
    );
    assert!(until(WAIT, || run.status.unknown_symbols() >= 1).await);
    assert_eq!(
        run.price("BTCUSDT-PERP"),
        Some(dec!(99)),
        "delta before snapshot applied"
    );
    venue.push(snapshot("BTCUSDT", "100", "100", 3));
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(100))).await);
    assert_eq!(venue.connections(), 2, "one rebuild, no storm");
    run.stop().await;
}
