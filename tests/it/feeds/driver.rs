//! OKX, Deribit and Hyperliquid through the generic driver over real loopback WebSockets, each
//! mock venue enforcing its keepalive demand: the driver keeps the connection alive, and after a
//! drop, an error close, a stall, an upgrade notice or a venue-side cut it reconnects,
//! resubscribes and keeps every good price; rejected subscriptions are named and left out; a
//! spike on one venue is held until a second venue confirms it; a socket alive but silent goes
//! stale and is restored without a reconnect.

use std::sync::Arc;
use std::time::Duration;

use liqwatch::feeds::deribit::DeribitFeed;
use liqwatch::feeds::hyperliquid::HyperliquidFeed;
use liqwatch::feeds::okx::OkxFeed;
use liqwatch::feeds::{Feed, FeedConfig, FeedRegistry, FeedStatusHandle, SymbolRoutes, run_feed};
use liqwatch::model::{EventKind, InstrumentId, PriceField, Venue};
use liqwatch::prices::{PriceBoard, PriceBoardConfig};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use crate::support::mock_venue::{
    ConnLog, MockConfig, MockVenue, Step, deribit_price, hyperliquid_price, okx_price,
};

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

    fn price(&self, inst: &str) -> Option<Decimal> {
        self.board
            .composite(&InstrumentId::from(inst))
            .map(|c| c.price)
    }

    /// Polls until the instrument's composite price is `want`.
    async fn wait_price(&self, inst: &str, want: &str) {
        let want: Decimal = want.parse().unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.price(inst) != Some(want) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{inst} never reached {want}; now {:?}; status {:?}",
                self.price(inst),
                self.status.snapshot(&self.board)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn routes(entries: &[(&str, &str, PriceField)]) -> SymbolRoutes {
    let mut r = SymbolRoutes::default();
    for (sym, inst, field) in entries {
        r.add(sym, InstrumentId::from(*inst), *field);
    }
    r
}

/// Fast reconnects; pings every 100 ms; a peer silent for 600 ms is dead.
fn fast_cfg(url: &str, routes: SymbolRoutes) -> FeedConfig {
    FeedConfig {
        url: Some(url.to_string()),
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        healthy_after: Duration::from_secs(60),
        first_data_timeout: Duration::from_secs(30),
        ping_interval: Some(Duration::from_millis(100)),
        dead_after: Some(Duration::from_millis(600)),
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

/// Waits until connection `n` (0-based) has received a subscription naming `needle`.
async fn wait_subscribed(mock: &MockVenue, n: usize, needle: &str) {
    mock.wait_for(
        &format!("connection {n} subscribing {needle}"),
        WAIT,
        |conns| {
            conns.get(n).is_some_and(|c| {
                c.texts
                    .iter()
                    .any(|t| t.contains("subscribe") && t.contains(needle))
            })
        },
    )
    .await;
}

/// Texts equal to `text` received on connection `n`.
fn count_texts(conns: &[ConnLog], n: usize, text: &str) -> usize {
    conns
        .get(n)
        .map_or(0, |c| c.texts.iter().filter(|t| *t == text).count())
}

// ------------------------------------------------------------------------------------------
// OKX
// ------------------------------------------------------------------------------------------

fn okx_routes() -> SymbolRoutes {
    routes(&[
        ("BTC-USDT-SWAP", "BTCUSDT-PERP", PriceField::Mark),
        ("BTC-USDT", "BTC", PriceField::Index),
    ])
}

/// OKX: the driver's text pings keep a connection open well past the venue's idle cut, and
/// every pushed mark and index price reaches the board exactly.
#[tokio::test]
async fn okx_pings_keep_the_connection_and_prices_flow() {
    let mock = MockVenue::start(
        MockConfig::okx().idle_cut(Duration::from_millis(300)),
        vec![],
    )
    .await;
    let run = start(
        Box::new(OkxFeed::new()),
        fast_cfg(&mock.url(""), okx_routes()),
    );
    wait_subscribed(&mock, 0, "BTC-USDT-SWAP").await;
    for p in ["84612.3", "84613.1", "84600.05"] {
        mock.send(Step::Send(okx_price("BTC-USDT-SWAP", p))).await;
        run.wait_price("BTCUSDT-PERP", p).await;
    }
    mock.send(Step::Send(okx_price("BTC-USDT", "84631.5")))
        .await;
    run.wait_price("BTC", "84631.5").await;
    // 10 pings at 100 ms span 3× the 300 ms idle cut: the connection is still the first one.
    mock.wait_for("10 pings", WAIT, |conns| {
        count_texts(conns, 0, "ping") >= 10
    })
    .await;
    assert_eq!(mock.connections(), 1);
    assert_eq!(mock.log(0).closed, None);
    run.stop().await;
}

/// OKX: a client pinging slower than the venue's idle cut is closed with 4004; the driver
/// reconnects, resubscribes and keeps every good price.
#[tokio::test]
async fn okx_idle_cut_reconnects_and_resubscribes() {
    let mock = MockVenue::start(
        MockConfig::okx().idle_cut(Duration::from_millis(200)),
        vec![],
    )
    .await;
    let mut cfg = fast_cfg(&mock.url(""), okx_routes());
    cfg.ping_interval = Some(Duration::from_secs(5));
    cfg.dead_after = Some(Duration::from_secs(10));
    let run = start(Box::new(OkxFeed::new()), cfg);
    wait_subscribed(&mock, 0, "BTC-USDT-SWAP").await;
    mock.send(Step::Send(okx_price("BTC-USDT-SWAP", "84000.1")))
        .await;
    run.wait_price("BTCUSDT-PERP", "84000.1").await;
    mock.wait_for("4004 cut", WAIT, |conns| {
        conns[0]
            .ended_by_server
            .as_deref()
            .is_some_and(|w| w.contains("4004"))
    })
    .await;
    wait_subscribed(&mock, 1, "BTC-USDT-SWAP").await;
    wait_subscribed(&mock, 1, "BTC-USDT\"").await;
    mock.send(Step::Send(okx_price("BTC-USDT-SWAP", "84000.2")))
        .await;
    run.wait_price("BTCUSDT-PERP", "84000.2").await;
    assert!(run.status.connections() >= 2);
    run.stop().await;
}

/// OKX: a rejected instrument (60018) is named in the status and left out of the next
/// connection; a mid-stream drop, garbage, truncated JSON and the 64008 notice lose no good price.
#[tokio::test]
async fn okx_rejection_drop_garbage_and_notice() {
    let mock = MockVenue::start(MockConfig::okx().unknown("NOPE-USDT-SWAP"), vec![]).await;
    let mut r = okx_routes();
    r.add(
        "NOPE-USDT-SWAP",
        InstrumentId::from("NOPE-PERP"),
        PriceField::Mark,
    );
    let run = start(Box::new(OkxFeed::new()), fast_cfg(&mock.url(""), r));
    wait_subscribed(&mock, 0, "NOPE-USDT-SWAP").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while run.status.rejected_symbols() != vec!["NOPE-USDT-SWAP".to_string()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            run.status.rejected_symbols()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The feed status the API serves (`GET /v1/feeds`) lists it too.
    assert_eq!(
        run.status.snapshot(&run.board).rejected_symbols,
        vec!["NOPE-USDT-SWAP".to_string()]
    );
    // OKX rejects one argument without touching the others: the connection is kept (only
    // Bybit opts into a rebuild), and prices keep flowing on it.
    mock.send(Step::Send(okx_price("BTC-USDT-SWAP", "1.5")))
        .await;
    run.wait_price("BTCUSDT-PERP", "1.5").await;
    assert_eq!(mock.connections(), 1);

    // Garbage and truncated JSON: counted, connection kept, next price arrives.
    let errors_before = run.status.parse_errors();
    mock.send(Step::Send("Bad Gateway".into())).await;
    mock.send(Step::Send(
        r#"{"arg":{"channel":"mark-price","instId":"BTC-USDT-SWAP"},"data":[{"markPx":"8"#.into(),
    ))
    .await;
    mock.send(Step::Send(okx_price("BTC-USDT-SWAP", "1.6")))
        .await;
    run.wait_price("BTCUSDT-PERP", "1.6").await;
    assert_eq!(run.status.parse_errors(), errors_before + 2);
    assert_eq!(mock.connections(), 1);

    // Drop without a close frame: reconnect, resubscribe, without the rejected symbol.
    mock.send(Step::Drop).await;
    wait_subscribed(&mock, 1, "BTC-USDT\"").await;
    assert!(
        mock.texts(1).iter().all(|t| !t.contains("NOPE")),
        "{:?}",
        mock.texts(1)
    );
    mock.send(Step::Send(okx_price("BTC-USDT-SWAP", "1.7")))
        .await;
    run.wait_price("BTCUSDT-PERP", "1.7").await;

    // 64008: reconnect at once, and prices continue on the new connection.
    mock.send(Step::Send(r#"{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service upgrade. Please reconnect.","connId":"a4d3ae55"}"#.into())).await;
    wait_subscribed(&mock, 2, "BTC-USDT\"").await;
    mock.send(Step::Send(okx_price("BTC-USDT-SWAP", "1.8")))
        .await;
    run.wait_price("BTCUSDT-PERP", "1.8").await;
    run.stop().await;
}

// ------------------------------------------------------------------------------------------
// Deribit
// ------------------------------------------------------------------------------------------

fn deribit_routes() -> SymbolRoutes {
    routes(&[
        ("BTC-PERPETUAL", "BTCUSD-PERP", PriceField::Mark),
        ("btc_usd", "BTC", PriceField::Index),
    ])
}

/// Deribit: the driver answers every `test_request` (the venue closes sockets that do not), so
/// the connection survives many of them; a silently dropped channel is named as rejected and
/// exponent-form prices arrive exactly.
#[tokio::test]
async fn deribit_answers_test_requests_and_names_dropped_channels() {
    let mock = MockVenue::start(MockConfig::deribit().unknown("NOPE-PERPETUAL"), vec![]).await;
    let mut r = deribit_routes();
    r.add(
        "NOPE-PERPETUAL",
        InstrumentId::from("NOPE-PERP"),
        PriceField::Mark,
    );
    let mut cfg = fast_cfg(&mock.url(""), r);
    cfg.dead_after = Some(Duration::from_secs(5));
    let run = start(Box::new(DeribitFeed::new()), cfg);
    wait_subscribed(&mock, 0, "ticker.BTC-PERPETUAL.100ms").await;
    assert!(mock.texts(0)[0].contains("public/set_heartbeat"));
    let deadline = tokio::time::Instant::now() + WAIT;
    while run.status.rejected_symbols() != vec!["NOPE-PERPETUAL".to_string()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            run.status.rejected_symbols()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Deribit drops the unknown channel silently and keeps the others: the connection is kept
    // and every test_request on it is answered.
    mock.wait_for("5 public/test answers", WAIT, |conns| {
        conns[0]
            .texts
            .iter()
            .filter(|t| t.contains("public/test"))
            .count()
            >= 5
    })
    .await;
    assert_eq!(mock.connections(), 1);
    mock.send(Step::Send(deribit_price("BTC-PERPETUAL", "8.677814e4")))
        .await;
    run.wait_price("BTCUSD-PERP", "86778.14").await;
    mock.send(Step::Send(deribit_price("btc_usd", "86744.11")))
        .await;
    run.wait_price("BTC", "86744.11").await;
    run.stop().await;
}

/// Deribit: a stalled socket (open, silent) is declared dead and replaced; a close with an
/// error code is reconnected; each new connection sets the heartbeat and resubscribes, and every
/// good price is kept.
#[tokio::test]
async fn deribit_stall_and_error_close_reconnect_and_resubscribe() {
    let mock = MockVenue::start(MockConfig::deribit(), vec![]).await;
    let run = start(
        Box::new(DeribitFeed::new()),
        fast_cfg(&mock.url(""), deribit_routes()),
    );
    wait_subscribed(&mock, 0, "ticker.BTC-PERPETUAL.100ms").await;
    mock.send(Step::Send(deribit_price("BTC-PERPETUAL", "60000.5")))
        .await;
    run.wait_price("BTCUSD-PERP", "60000.5").await;

    mock.send(Step::Freeze).await;
    wait_subscribed(&mock, 1, "ticker.BTC-PERPETUAL.100ms").await;
    assert!(mock.texts(1)[0].contains("public/set_heartbeat"));
    mock.send(Step::Send(deribit_price("BTC-PERPETUAL", "60001.5")))
        .await;
    run.wait_price("BTCUSD-PERP", "60001.5").await;

    mock.send(Step::Close(4000, "heartbeat close".into())).await;
    wait_subscribed(&mock, 2, "deribit_price_index.btc_usd").await;
    mock.send(Step::Send(deribit_price("BTC-PERPETUAL", "60002.5")))
        .await;
    run.wait_price("BTCUSD-PERP", "60002.5").await;
    assert!(
        run.status.last_error().is_some_and(|e| e.contains("4000")),
        "{:?}",
        run.status.last_error()
    );
    run.stop().await;
}

// ------------------------------------------------------------------------------------------
// Hyperliquid
// ------------------------------------------------------------------------------------------

/// Hyperliquid: pings keep the connection past the venue's idle cut; mark and oracle prices
/// arrive; the welcome text is not an error.
#[tokio::test]
async fn hyperliquid_pings_and_prices() {
    let mock = MockVenue::start(
        MockConfig::hyperliquid().idle_cut(Duration::from_millis(300)),
        vec![],
    )
    .await;
    let r = routes(&[
        ("BTC", "BTCUSD-PERP", PriceField::Mark),
        ("ETH", "ETHUSD-PERP", PriceField::Mark),
    ]);
    let run = start(Box::new(HyperliquidFeed::new()), fast_cfg(&mock.url(""), r));
    wait_subscribed(&mock, 0, "ETH").await;
    mock.send(Step::Send(hyperliquid_price("ETH", "2296.45")))
        .await;
    run.wait_price("ETHUSD-PERP", "2296.45").await;
    mock.wait_for("10 pings", WAIT, |conns| {
        count_texts(conns, 0, r#"{"method":"ping"}"#) >= 10
    })
    .await;
    assert_eq!(mock.connections(), 1);
    assert_eq!(run.status.parse_errors(), 0);
    run.stop().await;
}

/// Hyperliquid: an unknown coin makes the venue drop the socket; the driver reconnects, the
/// adapter identifies the coin, it is reported as rejected and left out, and the good coins
/// keep their prices.
#[tokio::test]
async fn hyperliquid_unknown_coin_is_isolated() {
    let mock = MockVenue::start(MockConfig::hyperliquid().unknown("NOPE"), vec![]).await;
    let r = routes(&[
        ("BTC", "BTCUSD-PERP", PriceField::Mark),
        ("NOPE", "NOPE-PERP", PriceField::Mark),
    ]);
    let run = start(Box::new(HyperliquidFeed::new()), fast_cfg(&mock.url(""), r));
    let deadline = tokio::time::Instant::now() + WAIT;
    while run.status.rejected_symbols() != vec!["NOPE".to_string()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "NOPE never rejected; connections {:#?}",
            mock.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The connection that reported the rejection is being rebuilt without NOPE: resend the
    // price until it lands on the connection that stays.
    let want: Decimal = "84148.0".parse().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    'sent: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "BTC never priced; connections {:#?}",
            mock.logs()
        );
        mock.send(Step::Send(hyperliquid_price("BTC", "84148.0")))
            .await;
        for _ in 0..20 {
            if run.price("BTCUSD-PERP") == Some(want) {
                break 'sent;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let newest = mock.connections() - 1;
    assert!(newest >= 2, "{newest}");
    assert!(
        mock.texts(newest).iter().all(|t| !t.contains("NOPE")),
        "{:?}",
        mock.texts(newest)
    );
    // Two strikes: the venue dropped connections 0 and 1 right at NOPE's subscription, and
    // NOPE was never sent again after that.
    for c in 0..=1 {
        let why = mock.log(c).ended_by_server;
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("unknown coin NOPE")),
            "connection {c}: {why:?}"
        );
    }
    for c in 2..=newest {
        assert!(mock.texts(c).iter().all(|t| !t.contains("NOPE")));
    }
    assert_eq!(run.status.snapshot(&run.board).venue, Venue::Hyperliquid);
    run.stop().await;
}

// ------------------------------------------------------------------------------------------
// Two venues, one board
// ------------------------------------------------------------------------------------------

/// A Deribit spike (beyond the 20 % limit) is held — the composite keeps the old price — until
/// Hyperliquid, pricing the same instrument, confirms it; then the composite is the median of
/// both venues.
#[tokio::test]
async fn spike_on_deribit_is_held_until_hyperliquid_confirms() {
    let deribit = MockVenue::start(MockConfig::deribit(), vec![]).await;
    let hl = MockVenue::start(MockConfig::hyperliquid(), vec![]).await;
    let board = Arc::new(PriceBoard::new(PriceBoardConfig::default()));
    let registry = FeedRegistry::new();
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for (feed, url, sym) in [
        (
            Box::new(DeribitFeed::new()) as Box<dyn Feed>,
            deribit.url(""),
            "BTC-PERPETUAL",
        ),
        (Box::new(HyperliquidFeed::new()), hl.url(""), "BTC"),
    ] {
        let cfg = fast_cfg(&url, routes(&[(sym, "BTC-PERP", PriceField::Mark)]));
        let status = registry.register(feed.venue(), &cfg.routes);
        tasks.push(tokio::spawn(run_feed(
            feed,
            cfg,
            board.clone(),
            status,
            cancel.child_token(),
        )));
    }
    let composite = || {
        board
            .composite(&InstrumentId::from("BTC-PERP"))
            .map(|c| c.price)
    };
    wait_subscribed(&deribit, 0, "ticker.BTC-PERPETUAL.100ms").await;
    wait_subscribed(&hl, 0, "BTC").await;
    deribit
        .send(Step::Send(deribit_price("BTC-PERPETUAL", "60000")))
        .await;
    hl.send(Step::Send(hyperliquid_price("BTC", "60000.0")))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let both_fresh = || {
        board.status().iter().any(|s| {
            s.instrument.as_str() == "BTC-PERP"
                && s.sources.len() == 2
                && s.sources.iter().all(|x| x.last_price.is_some())
        })
    };
    while !both_fresh() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            board.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(composite(), Some("60000".parse().unwrap()));

    // +50 % on Deribit: held, the composite does not move.
    deribit
        .send(Step::Send(deribit_price("BTC-PERPETUAL", "9e4")))
        .await;
    let held = || {
        board.status().iter().any(|s| {
            s.instrument.as_str() == "BTC-PERP"
                && s.sources.iter().any(|x| {
                    x.venue == Venue::Deribit && x.held_price == Some("90000".parse().unwrap())
                })
        })
    };
    while !held() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            board.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(composite(), Some("60000".parse().unwrap()));

    // Hyperliquid confirms: both accepted, composite = median(90000, 89000).
    hl.send(Step::Send(hyperliquid_price("BTC", "89000.0")))
        .await;
    while composite() != Some("89500".parse().unwrap()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            board.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(WAIT, t).await;
    }
}

/// Hyperliquid keeps the socket open and answers every ping but stops sending prices: the
/// connection is not replaced (transport is alive), yet the instrument goes stale (`feed_stale`)
/// and is restored (`feed_restored`) when prices return.
#[tokio::test]
async fn hyperliquid_alive_but_silent_goes_stale_then_restores() {
    let mock = MockVenue::start(MockConfig::hyperliquid(), vec![]).await;
    let board = Arc::new(PriceBoard::new(PriceBoardConfig {
        stale_after: Duration::from_millis(300),
        ..PriceBoardConfig::default()
    }));
    let registry = FeedRegistry::new();
    let cfg = fast_cfg(
        &mock.url(""),
        routes(&[("BTC", "BTCUSD-PERP", PriceField::Mark)]),
    );
    let status = registry.register(Venue::Hyperliquid, &cfg.routes);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_feed(
        Box::new(HyperliquidFeed::new()),
        cfg,
        board.clone(),
        status.clone(),
        cancel.clone(),
    ));
    let run = Running {
        board: board.clone(),
        status,
        cancel,
        task,
    };
    wait_subscribed(&mock, 0, "BTC").await;
    mock.send(Step::Send(hyperliquid_price("BTC", "84148.0")))
        .await;
    run.wait_price("BTCUSD-PERP", "84148.0").await;

    // Only pongs from now on: poll the board's staleness check until it reports feed_stale.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut kinds = Vec::new();
    while !kinds.contains(&EventKind::FeedStale) {
        assert!(tokio::time::Instant::now() < deadline, "never went stale");
        kinds.extend(
            board
                .check_staleness(tokio::time::Instant::now())
                .into_iter()
                .map(|t| t.kind),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(board.is_stale(&InstrumentId::from("BTCUSD-PERP")));
    // The transport stayed up the whole time (pings answered): still the first connection.
    assert_eq!(mock.connections(), 1);
    assert!(mock.texts(0).iter().any(|t| t.contains("ping")));

    mock.send(Step::Send(hyperliquid_price("BTC", "84150.0")))
        .await;
    run.wait_price("BTCUSD-PERP", "84150.0").await;
    let mut restored = Vec::new();
    while !restored.contains(&EventKind::FeedRestored) {
        assert!(tokio::time::Instant::now() < deadline, "never restored");
        restored.extend(
            board
                .check_staleness(tokio::time::Instant::now())
                .into_iter()
                .map(|t| t.kind),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!board.is_stale(&InstrumentId::from("BTCUSD-PERP")));
    assert_eq!(mock.connections(), 1);
    run.stop().await;
}
