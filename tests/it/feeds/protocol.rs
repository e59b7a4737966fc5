//! Protocol checks of the OKX, Deribit and Hyperliquid adapters against loopback mock venues,
//! with a minimal client (no driver): the adapters' subscribe, ping and reply messages are what
//! the venues expect, their acks and rejections parse, and a client that ignores a venue's
//! keepalive demand is cut off the way the real venue does it.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use liqwatch::feeds::deribit::DeribitFeed;
use liqwatch::feeds::hyperliquid::HyperliquidFeed;
use liqwatch::feeds::okx::OkxFeed;
use liqwatch::feeds::{Feed, Frame};
use rust_decimal::Decimal;
use tokio_tungstenite::tungstenite::Message;

use crate::support::mock_venue::{
    MockConfig, MockVenue, Step, deribit_price, hyperliquid_price, okx_price,
};

/// What the minimal client saw: parsed frames, ticks (symbol, mark, index) and how it ended.
#[derive(Debug, Default)]
struct Seen {
    frames: Vec<Frame>,
    ticks: Vec<(String, Option<Decimal>, Option<Decimal>)>,
    close: Option<String>,
}

/// Connects, subscribes, then reads for `read_for`, answering `Frame::Reply` and sending the
/// adapter's client ping when `ping` is set. Stops after `stop_after` ticks.
async fn run_client(
    feed: &mut dyn Feed,
    url: &str,
    symbols: &[&str],
    ping: bool,
    stop_after: usize,
    read_for: Duration,
) -> Seen {
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .unwrap()
    .unwrap();
    feed.reset();
    let syms: Vec<String> = symbols.iter().map(|s| s.to_string()).collect();
    for m in feed.subscribe_messages(&syms) {
        ws.send(Message::text(m)).await.unwrap();
    }
    let hb = feed.heartbeat();
    let ping_every = hb
        .client_ping
        .clone()
        .map_or(Duration::from_secs(3600), |(d, _)| d);
    let mut pinger = tokio::time::interval(ping_every);
    pinger.tick().await;
    let deadline = tokio::time::sleep(read_for);
    tokio::pin!(deadline);
    let mut seen = Seen::default();
    loop {
        tokio::select! {
            () = &mut deadline => break,
            _ = pinger.tick(), if ping => {
                if let Some((_, text)) = &hb.client_ping {
                    ws.send(Message::text(text.clone())).await.unwrap();
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let mut out = Vec::new();
                    let frame = feed.parse(t.as_str(), &mut out).unwrap();
                    for tick in &out {
                        seen.ticks.push((tick.symbol.to_string(), tick.mark, tick.index));
                    }
                    if let Frame::Reply(r) = &frame {
                        ws.send(Message::text(r.clone())).await.unwrap();
                    }
                    seen.frames.push(frame);
                    if seen.ticks.len() >= stop_after {
                        break;
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    seen.close = Some(c.map_or("no frame".into(), |c| format!("{} {}", u16::from(c.code), c.reason)));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    seen.close = Some(format!("error: {e}"));
                    break;
                }
                None => {
                    seen.close = Some("eof".into());
                    break;
                }
            }
        }
    }
    seen
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// OKX: per-argument acks, a 60018 rejection naming the instrument, text ping/pong, and prices.
#[tokio::test]
async fn okx_subscribe_reject_ping_and_prices() {
    let mock = MockVenue::start(MockConfig::okx().unknown("NOPE-USDT-SWAP"), vec![]).await;
    let url = mock.url("");
    let client = tokio::spawn(async move {
        let mut feed = OkxFeed::new().with_ping_interval(Duration::from_millis(100));
        run_client(
            &mut feed,
            &url,
            &["BTC-USDT-SWAP", "NOPE-USDT-SWAP", "BTC-USDT"],
            true,
            2,
            Duration::from_secs(10),
        )
        .await
    });
    mock.wait_for("subscribe and a ping", Duration::from_secs(5), |conns| {
        // Three price subscriptions, two funding-rate ones (the swaps) and a ping.
        conns
            .first()
            .is_some_and(|c| c.texts.len() >= 6 && c.texts.iter().any(|t| t == "ping"))
    })
    .await;
    mock.send(Step::Send(okx_price("BTC-USDT-SWAP", "84612.3")))
        .await;
    mock.send(Step::Send(okx_price("BTC-USDT", "84631.5")))
        .await;
    let seen = client.await.unwrap();
    assert!(seen.frames.contains(&Frame::SubscribeAck {
        symbols: vec!["BTC-USDT-SWAP".into()]
    }));
    assert!(seen.frames.contains(&Frame::SubscribeAck {
        symbols: vec!["BTC-USDT".into()]
    }));
    assert!(seen.frames.iter().any(|f| matches!(f,
        Frame::SubscribeRejected { symbol: Some(s), reason } if s == "NOPE-USDT-SWAP" && reason.starts_with("okx 60018"))));
    assert!(seen.frames.contains(&Frame::Pong));
    assert_eq!(
        seen.ticks,
        vec![
            ("BTC-USDT-SWAP".into(), Some(d("84612.3")), None),
            ("BTC-USDT".into(), None, Some(d("84631.5"))),
        ]
    );
    assert!(mock.texts(0).iter().any(|t| t == "ping"));
}

/// OKX: a client that never pings is closed with 4004 once the idle cut passes.
#[tokio::test]
async fn okx_closes_a_client_that_does_not_ping() {
    let mock = MockVenue::start(
        MockConfig::okx().idle_cut(Duration::from_millis(300)),
        vec![],
    )
    .await;
    let mut feed = OkxFeed::new();
    let seen = run_client(
        &mut feed,
        &mock.url(""),
        &["BTC-USDT-SWAP"],
        false,
        usize::MAX,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(seen.close.as_deref(), Some("4004 No data received in 30s."));
}

/// Deribit: heartbeat set up, unknown channel named in the rejection, `test_request` answered
/// (the socket stays open across several of them), exponent-form prices exact.
#[tokio::test]
async fn deribit_subset_ack_test_request_and_prices() {
    let mock = MockVenue::start(MockConfig::deribit().unknown("NOPE-PERPETUAL"), vec![]).await;
    let url = mock.url("");
    let client = tokio::spawn(async move {
        let mut feed = DeribitFeed::new();
        run_client(
            &mut feed,
            &url,
            &["BTC-PERPETUAL", "NOPE-PERPETUAL", "btc_usd"],
            false,
            2,
            Duration::from_secs(10),
        )
        .await
    });
    // Three test_requests answered with public/test (300 ms apart) prove the heartbeat works.
    mock.wait_for(
        "three public/test answers",
        Duration::from_secs(5),
        |conns| {
            conns
                .first()
                .is_some_and(|c| c.texts.iter().filter(|t| t.contains("public/test")).count() >= 3)
        },
    )
    .await;
    mock.send(Step::Send(deribit_price("BTC-PERPETUAL", "8.677814e4")))
        .await;
    mock.send(Step::Send(deribit_price("btc_usd", "86744.11")))
        .await;
    let seen = client.await.unwrap();
    assert!(seen.close.is_none(), "closed: {:?}", seen.close);
    assert!(seen.frames.iter().any(|f| matches!(f,
        Frame::SubscribeRejected { symbol: Some(s), .. } if s == "NOPE-PERPETUAL")));
    assert!(seen.frames.contains(&Frame::Pong));
    assert_eq!(
        seen.ticks,
        vec![
            (
                "BTC-PERPETUAL".into(),
                Some(d("86778.14")),
                Some(d("86778.14"))
            ),
            ("btc_usd".into(), None, Some(d("86744.11"))),
        ]
    );
    let first = &mock.texts(0)[0];
    assert!(first.contains("public/set_heartbeat"), "{first}");
}

/// Deribit: a client that does not answer `test_request` is closed with 4000 `heartbeat close`.
#[tokio::test]
async fn deribit_closes_a_client_that_ignores_test_request() {
    let mock = MockVenue::start(MockConfig::deribit(), vec![]).await;
    let url = mock.url("");
    // A client that parses but never sends the Reply.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut feed = DeribitFeed::new();
    for m in feed.subscribe_messages(&["BTC-PERPETUAL".into()]) {
        ws.send(Message::text(m)).await.unwrap();
    }
    let mut replies_ignored = 0;
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(msg) = ws.next().await {
            match msg.unwrap() {
                Message::Text(t) => {
                    let mut out = Vec::new();
                    if let Ok(Frame::Reply(_)) = feed.parse(t.as_str(), &mut out) {
                        replies_ignored += 1;
                    }
                }
                Message::Close(c) => return c.map(|c| (u16::from(c.code), c.reason.to_string())),
                _ => {}
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(replies_ignored, 1);
    assert_eq!(close, Some((4000, "heartbeat close".to_string())));
}

/// Hyperliquid: the welcome text is ignored, acks name the coin, ping/pong, prices exact.
#[tokio::test]
async fn hyperliquid_welcome_ack_ping_and_prices() {
    let mock = MockVenue::start(MockConfig::hyperliquid(), vec![]).await;
    let url = mock.url("");
    let client = tokio::spawn(async move {
        let mut feed = HyperliquidFeed::new().with_ping_interval(Duration::from_millis(100));
        run_client(
            &mut feed,
            &url,
            &["BTC", "ETH"],
            true,
            1,
            Duration::from_secs(10),
        )
        .await
    });
    mock.wait_for("a ping", Duration::from_secs(5), |conns| {
        conns
            .first()
            .is_some_and(|c| c.texts.iter().any(|t| t == r#"{"method":"ping"}"#))
    })
    .await;
    mock.send(Step::Send(hyperliquid_price("ETH", "2296.45")))
        .await;
    let seen = client.await.unwrap();
    assert_eq!(seen.frames[0], Frame::Ignore, "welcome text first");
    assert!(seen.frames.contains(&Frame::SubscribeAck {
        symbols: vec!["BTC".into()]
    }));
    assert!(seen.frames.contains(&Frame::Pong));
    assert_eq!(
        seen.ticks,
        vec![("ETH".into(), Some(d("2296.45")), Some(d("2296.45")))]
    );
}

/// Hyperliquid: subscribing an unknown coin gets the socket dropped with no close frame.
#[tokio::test]
async fn hyperliquid_drops_the_socket_on_an_unknown_coin() {
    let mock = MockVenue::start(MockConfig::hyperliquid().unknown("NOPE"), vec![]).await;
    let mut feed = HyperliquidFeed::new();
    let seen = run_client(
        &mut feed,
        &mock.url(""),
        &["BTC", "NOPE"],
        true,
        usize::MAX,
        Duration::from_secs(10),
    )
    .await;
    let close = seen.close.unwrap();
    assert!(
        close.starts_with("error:") || close == "eof",
        "expected an abrupt drop, got {close}"
    );
    mock.wait_for("server drop", Duration::from_secs(5), |conns| {
        conns.first().is_some_and(|c| {
            c.closed.is_some()
                && c.ended_by_server
                    .as_deref()
                    .is_some_and(|w| w.contains("unknown coin NOPE"))
        })
    })
    .await;
}
