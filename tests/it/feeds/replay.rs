//! Replay into the price board like a live feed: the demo recording through the Binance parser
//! ends at the recorded closes, a mixed OKX/Deribit/Hyperliquid recording is routed by the
//! instruments' sources (mark and index fields), bad lines are skipped, and the venues show up in
//! the feed registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use liqwatch::feeds::FeedRegistry;
use liqwatch::feeds::replay::{ReplayClock, ReplayOptions, ReplaySpeed, spawn_replay};
use liqwatch::model::{Instrument, InstrumentId, Venue};
use liqwatch::prices::{PriceBoard, PriceBoardConfig};
use liqwatch::sources::files::load_instruments;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use tokio_util::sync::CancellationToken;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn price(board: &PriceBoard, id: &str) -> Option<Decimal> {
    board.composite(&InstrumentId::from(id)).map(|c| c.price)
}

/// The demo recording, played as fast as possible through the Binance USD-M parser into the
/// board with the shipped presets, leaves every instrument at the recorded 16:00 close, with no
/// bad line and one tick per frame.
#[tokio::test]
async fn demo_recording_replays_into_the_board() {
    let instruments: Vec<Instrument> = load_instruments(&repo("feeds/presets.toml"))
        .unwrap()
        .into_values()
        .collect();
    let board = Arc::new(PriceBoard::new(PriceBoardConfig::default()));
    let registry = FeedRegistry::new();
    let opts = ReplayOptions {
        speed: ReplaySpeed::Max,
        clock: ReplayClock::Shifted,
    };
    let handle = spawn_replay(
        repo("feeds/replay/crash-2021-05-19.jsonl"),
        opts,
        &instruments,
        board.clone(),
        &registry,
        CancellationToken::new(),
    );
    // Registered before the task runs, like a live feed.
    assert!(registry.get(Venue::BinanceUsdm).is_some());
    let stats = handle.await.unwrap().unwrap();
    assert_eq!(stats.lines, 2304);
    assert_eq!(stats.frames, 2304);
    assert_eq!(stats.ticks, 2304);
    assert_eq!(stats.bad_lines + stats.bad_frames + stats.no_adapter, 0);
    assert_eq!(stats.first_ms, Some(1_621_382_400_000));
    assert_eq!(price(&board, "BTCUSDT-PERP"), Some(dec!(37318.52)));
    assert_eq!(price(&board, "ETHUSDT-PERP"), Some(dec!(2742.61)));
    assert_eq!(price(&board, "SOLUSDT-PERP"), Some(dec!(46.324)));
    // Collateral priced from the same frames' index field.
    assert_eq!(price(&board, "BTC"), Some(dec!(37318.52)));
    let status = registry
        .snapshot(&board)
        .into_iter()
        .find(|s| s.venue == Venue::BinanceUsdm)
        .unwrap();
    let btc = status
        .instruments
        .iter()
        .find(|i| i.instrument.as_str() == "BTCUSDT-PERP")
        .unwrap();
    assert_eq!(btc.last_price, Some(dec!(37318.52)));
    // Played to its end: the feed says when.
    assert!(
        status.replay_finished_ms.is_some_and(|t| t > 0),
        "{status:?}"
    );
}

fn inst(json: &str) -> Instrument {
    serde_json::from_str(json).unwrap()
}

fn line(venue: &str, ms: i64, frame: &str) -> String {
    serde_json::json!({"venue": venue, "received_ms": ms, "frame": frame}).to_string()
}

/// A recording mixing OKX, Deribit and Hyperliquid frames (data, acks, pongs, test requests,
/// a garbage frame, a bad line) routes each price to its instrument and field.
#[tokio::test]
async fn mixed_venue_recording_routes_mark_and_index() {
    let instruments = vec![
        inst(
            r#"{"id":"BTCUSDT-PERP","kind":"linear_perpetual","underlying":"BTC","sources":[{"venue":"okx","symbol":"BTC-USDT-SWAP"}]}"#,
        ),
        inst(
            r#"{"id":"BTC","kind":"collateral","underlying":"BTC","sources":[{"venue":"okx","symbol":"BTC-USDT","field":"index"},{"venue":"deribit","symbol":"btc_usd","field":"index"}]}"#,
        ),
        inst(
            r#"{"id":"BTC_USDC-PERP","kind":"linear_perpetual","underlying":"BTC","sources":[{"venue":"deribit","symbol":"BTC_USDC-PERPETUAL"}]}"#,
        ),
        inst(
            r#"{"id":"ETHUSD-HL","kind":"linear_perpetual","underlying":"ETH","sources":[{"venue":"hyperliquid","symbol":"ETH"}]}"#,
        ),
    ];
    let lines = [
        line(
            "okx",
            1_000,
            r#"{"id":"lw1","event":"subscribe","arg":{"channel":"mark-price","instId":"BTC-USDT-SWAP"},"connId":"a"}"#,
        ),
        line(
            "okx",
            1_010,
            r#"{"arg":{"channel":"mark-price","instId":"BTC-USDT-SWAP"},"data":[{"instType":"SWAP","instId":"BTC-USDT-SWAP","markPx":"84612.3","ts":"1005"}]}"#,
        ),
        line(
            "okx",
            1_020,
            r#"{"arg":{"channel":"index-tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","idxPx":"84631.5","ts":"1015"}]}"#,
        ),
        line("okx", 1_030, "pong"),
        line(
            "deribit",
            1_040,
            r#"{"params":{"type":"test_request"},"method":"heartbeat","jsonrpc":"2.0"}"#,
        ),
        line(
            "deribit",
            1_050,
            r#"{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.BTC_USDC-PERPETUAL.100ms","data":{"timestamp":1045,"index_price":86744.11,"mark_price":8.677814e4}}}"#,
        ),
        "{\"venue\":\"deribit\",\"received_ms\":1055,\"frame\":".to_string(),
        line(
            "deribit",
            1_060,
            r#"{"jsonrpc":"2.0","method":"subscription","params":{"channel":"deribit_price_index.btc_usd","data":{"timestamp":1055,"price":84640.25,"index_name":"btc_usd"}}}"#,
        ),
        line("hyperliquid", 1_070, "Websocket connection established."),
        line(
            "hyperliquid",
            1_080,
            r#"{"channel":"activeAssetCtx","data":{"coin":"ETH","ctx":{"oraclePx":"2297.0","markPx":"2296.45"}}}"#,
        ),
        line("hyperliquid", 1_090, "garbage"),
        line(
            "hyperliquid",
            1_100,
            r#"{"channel":"activeAssetCtx","data":{"coin":"SOL","ctx":{"oraclePx":"1","markPx":"1"}}}"#,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let board = Arc::new(PriceBoard::new(PriceBoardConfig::default()));
    let registry = FeedRegistry::new();
    let opts = ReplayOptions {
        speed: ReplaySpeed::Max,
        clock: ReplayClock::Recorded,
    };
    let stats = spawn_replay(
        path,
        opts,
        &instruments,
        board.clone(),
        &registry,
        CancellationToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(price(&board, "BTCUSDT-PERP"), Some(dec!(84612.3)));
    assert_eq!(price(&board, "BTC_USDC-PERP"), Some(dec!(86778.14)));
    assert_eq!(price(&board, "ETHUSD-HL"), Some(dec!(2296.45)));
    // BTC collateral from two index sources: the median of OKX and Deribit.
    assert_eq!(price(&board, "BTC"), Some(dec!(84635.875)));
    assert_eq!(stats.bad_lines, 1);
    assert_eq!(stats.bad_frames, 1);
    // Ticks: OKX mark + index, Deribit ticker + index, HL ETH + SOL (SOL has no route).
    assert_eq!(stats.ticks, 6);
    let mut venues: Vec<Venue> = registry
        .snapshot(&board)
        .into_iter()
        .map(|s| s.venue)
        .collect();
    venues.sort();
    assert_eq!(venues, vec![Venue::Okx, Venue::Deribit, Venue::Hyperliquid]);
}

/// A real-time replay stops promptly when cancelled, reporting that it was cancelled.
#[tokio::test(start_paused = true)]
async fn cancelled_replay_reports_it() {
    let instruments = vec![inst(
        r#"{"id":"BTCUSDT-PERP","kind":"linear_perpetual","underlying":"BTC","sources":[{"venue":"okx","symbol":"BTC-USDT-SWAP"}]}"#,
    )];
    let frame = |px: &str| {
        format!(
            r#"{{"arg":{{"channel":"mark-price","instId":"BTC-USDT-SWAP"}},"data":[{{"instId":"BTC-USDT-SWAP","markPx":"{px}","ts":"1"}}]}}"#
        )
    };
    let lines = [
        line("okx", 0, &frame("100")),
        line("okx", 3_600_000, &frame("101")),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let board = Arc::new(PriceBoard::new(PriceBoardConfig::default()));
    let registry = FeedRegistry::new();
    let cancel = CancellationToken::new();
    let handle = spawn_replay(
        path,
        ReplayOptions::default(),
        &instruments,
        board.clone(),
        &registry,
        cancel.clone(),
    );
    // Poll (paused time advances only while everything waits) until the first price is in.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while price(&board, "BTCUSDT-PERP").is_none() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    cancel.cancel();
    let stats = handle.await.unwrap().unwrap();
    assert!(stats.cancelled);
    assert_eq!(stats.ticks, 1);
    assert_eq!(price(&board, "BTCUSDT-PERP"), Some(dec!(100)));
    // Stopped, not finished: the feed does not say it played to its end.
    let status = registry.snapshot(&board);
    assert!(
        status
            .iter()
            .all(|f| f.replay && f.replay_finished_ms.is_none()),
        "{status:?}"
    );
}
