//! Binance USD-M feed over a real loopback WebSocket: subscribe/ack, server pings, every price
//! delivered, faults (drop, close with error, dead peer, garbage), ack-then-silence, rotation,
//! staleness with an open socket, and spike holding.

use std::sync::Arc;
use std::time::Duration;

use liqwatch::feeds::binance::BinanceUsdm;
use liqwatch::feeds::{FeedConfig, FeedRegistry, FeedStatusHandle, SymbolRoutes, run_feed};
use liqwatch::model::{EventKind, InstrumentId, PriceField, Venue};
use liqwatch::prices::{PriceBoard, PriceBoardConfig};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::mock_venue::{MockConfig, MockVenue, Reply, Step, until};

const WAIT: Duration = Duration::from_secs(5);
const ACK: &str = r#"{"result":null,"id":{id}}"#;

fn obj(sym: &str, p: &str, e: i64) -> String {
    format!(
        r#"{{"e":"markPriceUpdate","E":{e},"s":"{sym}","p":"{p}","ap":"{p}","P":"{p}","i":"{p}","r":"0.0001","T":1788940800000,"st":1}}"#
    )
}

fn mark(sym: &str, p: &str, e: i64) -> String {
    format!(
        r#"{{"stream":"{}@markPrice@1s","data":{}}}"#,
        sym.to_lowercase(),
        obj(sym, p, e)
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

fn routes(symbols: &[(&str, &str)]) -> SymbolRoutes {
    let mut r = SymbolRoutes::default();
    for (sym, inst) in symbols {
        r.add(sym, InstrumentId::from(*inst), PriceField::Mark);
    }
    r
}

fn fast_cfg(url: String, routes: SymbolRoutes) -> FeedConfig {
    FeedConfig {
        url: Some(url),
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        healthy_after: Duration::from_secs(60),
        first_data_timeout: Duration::from_secs(30),
        routes,
        ..FeedConfig::default()
    }
}

fn start(cfg: FeedConfig, board_cfg: PriceBoardConfig) -> Running {
    let board = Arc::new(PriceBoard::new(board_cfg));
    let registry = FeedRegistry::new();
    let status = registry.register(Venue::BinanceUsdm, &cfg.routes);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_feed(
        Box::new(BinanceUsdm::new()),
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

fn binance_mock_cfg() -> MockConfig {
    MockConfig {
        replies: vec![Reply::new("SUBSCRIBE", [ACK])],
        server_ping: Some((Duration::from_millis(50), Duration::from_millis(400))),
        ..MockConfig::default()
    }
}

/// Subscribes on the `/market/stream` path, answers server pings, and every pushed price
/// reaches the board in order (latest wins, none lost).
#[tokio::test]
async fn subscribes_pongs_and_delivers_every_price() {
    let venue = MockVenue::start(binance_mock_cfg(), vec![]).await;
    let run = start(
        fast_cfg(
            venue.url("market/stream"),
            routes(&[("BTCUSDT", "BTCUSDT-PERP"), ("ETHUSDT", "ETHUSDT-PERP")]),
        ),
        PriceBoardConfig::default(),
    );
    assert!(
        until(WAIT, || venue
            .texts(0)
            .iter()
            .any(|t| t.contains("SUBSCRIBE")))
        .await
    );
    assert_eq!(
        venue.texts(0)[0],
        r#"{"id":1,"method":"SUBSCRIBE","params":["btcusdt@markPrice@1s","ethusdt@markPrice@1s"]}"#
    );
    let prices = ["60000.10", "60001.20", "60002.30", "60003.40", "60004.50"];
    for (n, p) in prices.iter().enumerate() {
        venue.push(mark("BTCUSDT", p, 1_000 + n as i64));
        let want: Decimal = p.parse().unwrap();
        assert!(
            until(WAIT, || run.price("BTCUSDT-PERP") == Some(want)).await,
            "price {p} never arrived"
        );
    }
    venue.push(format!(
        r#"{{"stream":"!markPrice@arr@1s","data":[{},{}]}}"#,
        obj("ETHUSDT", "3000.5", 2_000),
        obj("XRPUSDT", "1.5", 2_000)
    ));
    assert!(until(WAIT, || run.price("ETHUSDT-PERP") == Some(dec!(3000.5))).await);
    // Server pings were answered: several pongs and still one connection.
    assert!(until(WAIT, || venue.log(0).pongs >= 3).await);
    assert_eq!(venue.connections(), 1);
    assert!(run.status.is_connected());
    assert_eq!(run.status.unknown_symbols(), 1);
    run.stop().await;
}

/// A connection dropped mid-stream is reconnected within the backoff bound and resubscribed,
/// and prices flow again.
#[tokio::test]
async fn drop_mid_stream_reconnects_and_resubscribes() {
    let venue = MockVenue::start(
        binance_mock_cfg(),
        vec![vec![
            Step::AwaitText("SUBSCRIBE".into()),
            Step::Send(mark("BTCUSDT", "100", 1)),
            Step::Pause(Duration::from_millis(50)),
            Step::Drop,
        ]],
    )
    .await;
    let cfg = fast_cfg(
        venue.url("market/stream"),
        routes(&[("BTCUSDT", "BTCUSDT-PERP")]),
    );
    let bound = cfg.backoff_max;
    let run = start(cfg, PriceBoardConfig::default());
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(100))).await);
    assert!(until(WAIT, || venue.connections() == 2).await);
    let (closed, reopened) = (venue.log(0).closed.unwrap(), venue.log(1).opened.unwrap());
    // Generous slack over the configured bound for scheduling on a shared machine.
    assert!(
        reopened.duration_since(closed) <= bound + Duration::from_secs(2),
        "reconnect took {:?}",
        reopened.duration_since(closed)
    );
    assert!(
        until(WAIT, || venue
            .texts(1)
            .iter()
            .any(|t| t.contains("btcusdt@markPrice@1s")))
        .await
    );
    venue.push(mark("BTCUSDT", "101", 2));
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(101))).await);
    assert_eq!(run.status.snapshot(&run.board).reconnects, 1);
    run.stop().await;
}

/// A close frame with an error is reported in the status and followed by a reconnect.
#[tokio::test]
async fn close_with_error_reconnects() {
    let venue = MockVenue::start(
        binance_mock_cfg(),
        vec![vec![
            Step::AwaitText("SUBSCRIBE".into()),
            Step::Close(1008, "Too many requests".into()),
        ]],
    )
    .await;
    let run = start(
        fast_cfg(
            venue.url("market/stream"),
            routes(&[("BTCUSDT", "BTCUSDT-PERP")]),
        ),
        PriceBoardConfig::default(),
    );
    assert!(until(WAIT, || venue.connections() >= 2).await);
    assert!(
        until(WAIT, || run.status.last_error().is_some_and(|e| e
            .contains("1008")
            && e.contains("Too many requests")))
        .await,
        "{:?}",
        run.status.last_error()
    );
    run.stop().await;
}

/// A peer that stops answering entirely (no frames, no pongs) is declared dead after
/// `dead_after` and replaced.
#[tokio::test]
async fn dead_peer_is_replaced() {
    let venue = MockVenue::start(
        MockConfig {
            replies: vec![Reply::new("SUBSCRIBE", [ACK])],
            ..MockConfig::default()
        },
        vec![vec![
            Step::AwaitText("SUBSCRIBE".into()),
            Step::Send(mark("BTCUSDT", "100", 1)),
            Step::Freeze,
        ]],
    )
    .await;
    let mut cfg = fast_cfg(
        venue.url("market/stream"),
        routes(&[("BTCUSDT", "BTCUSDT-PERP")]),
    );
    cfg.dead_after = Some(Duration::from_millis(300));
    let run = start(cfg, PriceBoardConfig::default());
    assert!(until(WAIT, || venue.connections() >= 2).await);
    assert!(
        run.status
            .last_error()
            .is_some_and(|e| e.contains("dead peer"))
    );
    run.stop().await;
}

/// Garbage, truncated JSON and non-UTF-8 binary frames are counted and skipped; good prices
/// around them are kept and the connection stays up.
#[tokio::test]
async fn garbage_is_counted_and_good_prices_kept() {
    let venue = MockVenue::start(
        binance_mock_cfg(),
        vec![vec![
            Step::AwaitText("SUBSCRIBE".into()),
            Step::Send(mark("BTCUSDT", "100", 1)),
            Step::Send("garbage <html>".into()),
            Step::Send(r#"{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","s":"BTCUSDT","p":"1"#.into()),
            Step::SendBinary(vec![0xff, 0xfe, 0x00]),
            Step::Send(r#"{"e":"markPriceUpdate","E":3,"s":"BTCUSDT","p":"NaN"}"#.into()),
            Step::Send(mark("BTCUSDT", "101", 2)),
        ]],
    )
    .await;
    let run = start(
        fast_cfg(
            venue.url("market/stream"),
            routes(&[("BTCUSDT", "BTCUSDT-PERP")]),
        ),
        PriceBoardConfig::default(),
    );
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(101))).await);
    assert_eq!(run.status.parse_errors(), 4);
    assert_eq!(venue.connections(), 1);
    run.stop().await;
}

/// Binance acks an unknown symbol and sends nothing: the driver reports it as unconfirmed
/// (naming it) without reconnecting, while the known symbol flows.
#[tokio::test]
async fn ack_then_silence_reports_unconfirmed_symbol() {
    let venue = MockVenue::start(
        binance_mock_cfg(),
        vec![vec![
            Step::AwaitText("SUBSCRIBE".into()),
            Step::Send(mark("BTCUSDT", "100", 1)),
        ]],
    )
    .await;
    let mut cfg = fast_cfg(
        venue.url("market/stream"),
        routes(&[("BTCUSDT", "BTCUSDT-PERP"), ("NOPEUSDT", "NOPE-PERP")]),
    );
    cfg.first_data_timeout = Duration::from_millis(300);
    let run = start(cfg, PriceBoardConfig::default());
    assert!(until(WAIT, || !run.status.unconfirmed_symbols().is_empty()).await);
    assert_eq!(
        run.status.unconfirmed_symbols(),
        vec!["NOPEUSDT".to_string()]
    );
    assert!(run.status.last_error().unwrap().contains("NOPEUSDT"));
    assert_eq!(run.price("BTCUSDT-PERP"), Some(dec!(100)));
    assert_eq!(venue.connections(), 1);
    run.stop().await;
}

/// Before the maximum connection age the driver opens a replacement, waits for its first
/// price, and only then closes the old connection (make-before-break: no gap in prices).
#[tokio::test]
async fn rotates_make_before_break() {
    let conn = |p: &str| {
        vec![
            Step::AwaitText("SUBSCRIBE".into()),
            Step::Send(mark("BTCUSDT", p, 1)),
        ]
    };
    let venue = MockVenue::start(binance_mock_cfg(), vec![conn("100"), conn("101")]).await;
    let mut cfg = fast_cfg(
        venue.url("market/stream"),
        routes(&[("BTCUSDT", "BTCUSDT-PERP")]),
    );
    cfg.max_connection_age = Some(Duration::from_millis(1000));
    let run = start(cfg, PriceBoardConfig::default());
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(100))).await);
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(101))).await);
    assert!(until(WAIT, || venue.log(0).closed.is_some()).await);
    let (old, new) = (venue.log(0), venue.log(1));
    assert!(
        new.opened.unwrap() < old.closed.unwrap(),
        "replacement must open before the old connection closes"
    );
    assert!(new.texts[0].contains("btcusdt@markPrice@1s"));
    assert_eq!(run.status.last_error(), None);
    run.stop().await;
}

/// When the replacement delivers no price, the driver still rotates at the maximum age by
/// reconnecting at once (no backoff, no error).
#[tokio::test]
async fn rotation_falls_back_to_reconnect() {
    let venue = MockVenue::start(binance_mock_cfg(), vec![]).await;
    let mut cfg = fast_cfg(
        venue.url("market/stream"),
        routes(&[("BTCUSDT", "BTCUSDT-PERP")]),
    );
    cfg.max_connection_age = Some(Duration::from_millis(300));
    cfg.backoff_initial = Duration::from_secs(30);
    cfg.backoff_max = Duration::from_secs(30);
    let run = start(cfg, PriceBoardConfig::default());
    // First connection, its silent replacement, then the reconnect at the maximum age: with
    // a 30 s backoff, a third connection within WAIT proves rotation skipped the backoff.
    assert!(until(WAIT, || venue.connections() >= 3).await);
    assert!(
        until(WAIT, || venue
            .texts(2)
            .iter()
            .any(|t| t.contains("SUBSCRIBE")))
        .await
    );
    venue.push(mark("BTCUSDT", "42", 1));
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(42))).await);
    assert_eq!(run.status.last_error(), None);
    run.stop().await;
}

/// An open socket that answers pings but sends no prices goes `feed_stale` (no reconnect),
/// and `feed_restored` when prices return.
#[tokio::test]
async fn stall_with_open_socket_goes_stale_then_restored() {
    let venue = MockVenue::start(
        binance_mock_cfg(),
        vec![vec![
            Step::AwaitText("SUBSCRIBE".into()),
            Step::Send(mark("BTCUSDT", "100", 1)),
        ]],
    )
    .await;
    let run = start(
        fast_cfg(
            venue.url("market/stream"),
            routes(&[("BTCUSDT", "BTCUSDT-PERP")]),
        ),
        PriceBoardConfig {
            stale_after: Duration::from_millis(300),
            ..PriceBoardConfig::default()
        },
    );
    let id = InstrumentId::from("BTCUSDT-PERP");
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(100))).await);
    let mut events = Vec::new();
    assert!(
        until(WAIT, || {
            events.extend(run.board.check_staleness(Instant::now()));
            !events.is_empty()
        })
        .await
    );
    assert_eq!(events[0].kind, EventKind::FeedStale);
    assert_eq!(events[0].info.last_price, Some(dec!(100)));
    assert!(run.board.composite(&id).unwrap().stale);
    // Pongs kept flowing; the quiet instrument caused no reconnect.
    assert!(venue.log(0).pongs >= 3);
    assert_eq!(venue.connections(), 1);
    venue.push(mark("BTCUSDT", "100.5", 2));
    events.clear();
    assert!(
        until(WAIT, || {
            events.extend(run.board.check_staleness(Instant::now()));
            !events.is_empty()
        })
        .await
    );
    assert_eq!(events[0].kind, EventKind::FeedRestored);
    assert!(!run.board.composite(&id).unwrap().stale);
    run.stop().await;
}

/// A price spike is held (the board keeps the old price) until a second tick confirms it.
#[tokio::test]
async fn spike_held_until_confirmed() {
    let venue = MockVenue::start(binance_mock_cfg(), vec![]).await;
    let run = start(
        fast_cfg(
            venue.url("market/stream"),
            routes(&[("BTCUSDT", "BTCUSDT-PERP")]),
        ),
        PriceBoardConfig {
            spike_fraction: dec!(0.1),
            ..PriceBoardConfig::default()
        },
    );
    assert!(
        until(WAIT, || venue
            .texts(0)
            .iter()
            .any(|t| t.contains("SUBSCRIBE")))
        .await
    );
    venue.push(mark("BTCUSDT", "100", 1));
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(100))).await);
    venue.push(mark("BTCUSDT", "1000", 2));
    assert!(
        until(WAIT, || run.board.status()[0].sources[0].held_price
            == Some(dec!(1000)))
        .await
    );
    assert_eq!(run.price("BTCUSDT-PERP"), Some(dec!(100)));
    venue.push(mark("BTCUSDT", "1001", 3));
    assert!(until(WAIT, || run.price("BTCUSDT-PERP") == Some(dec!(1001))).await);
    run.stop().await;
}

/// The daemon's path (`app::spawn`): `FeedConfig::with_instruments` routes mark and index of one
/// Binance symbol to the two instruments whose sources name them, and no other venue gets a
/// route; `feed_for` + `run_feed` then price both and report them in the registry.
#[tokio::test]
async fn feed_routes_from_instrument_sources() {
    let venue = MockVenue::start(binance_mock_cfg(), vec![]).await;
    let instruments: Vec<liqwatch::model::Instrument> = serde_json::from_str(
        r#"[{"id":"BTCUSDT-PERP","kind":"linear_perpetual","underlying":"BTC",
             "sources":[{"venue":"binance-usdm","symbol":"BTCUSDT"}]},
            {"id":"BTC","kind":"collateral","underlying":"BTC",
             "sources":[{"venue":"binance-usdm","symbol":"BTCUSDT","field":"index"}]},
            {"id":"USDT","kind":"collateral","underlying":"USDT","stable":true}]"#,
    )
    .unwrap();
    // Only the venue the sources name gets routes (the daemon starts no feed without any).
    for other in Venue::ALL.into_iter().filter(|v| *v != Venue::BinanceUsdm) {
        let cfg = FeedConfig::default().with_instruments(other, &instruments);
        assert!(cfg.routes.symbols().is_empty(), "{other}");
    }
    let cfg = fast_cfg(venue.url("market/stream"), SymbolRoutes::default())
        .with_instruments(Venue::BinanceUsdm, &instruments);
    assert_eq!(cfg.routes.symbols(), ["BTCUSDT".to_string()]);
    let board = Arc::new(PriceBoard::new(PriceBoardConfig::default()));
    let registry = FeedRegistry::new();
    let cancel = CancellationToken::new();
    let status = registry.register(Venue::BinanceUsdm, &cfg.routes);
    let task = tokio::spawn(run_feed(
        liqwatch::feeds::feed_for(Venue::BinanceUsdm).unwrap(),
        cfg,
        board.clone(),
        status,
        cancel.clone(),
    ));
    assert!(
        until(WAIT, || venue
            .texts(0)
            .iter()
            .any(|t| t.contains("SUBSCRIBE")))
        .await
    );
    venue.push(
        r#"{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"60000.5","i":"60001.25"}}"#,
    );
    let price = |id: &str| board.composite(&InstrumentId::from(id)).map(|c| c.price);
    assert!(until(WAIT, || price("BTC") == Some(dec!(60001.25))).await);
    assert_eq!(price("BTCUSDT-PERP"), Some(dec!(60000.5)));
    let st = registry.snapshot(&board);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].instruments.len(), 2);
    assert_eq!(st[0].instruments[1].last_price, Some(dec!(60001.25)));
    assert!(!st[0].instruments[1].stale);
    cancel.cancel();
    task.await.unwrap();
}
