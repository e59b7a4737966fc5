//! Feed benchmarks: frames parsed per second per venue, price-board publishes per second, and
//! end-to-end frames per second over a real loopback WebSocket into the price board (with a
//! plain tokio-tungstenite read+parse loop as the baseline).
//!
//! Run: `cargo bench --bench feeds` (or `-- parse` / `-- e2e` for one group).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use liqwatch::feeds::binance::BinanceUsdm;
use liqwatch::feeds::bybit::BybitLinear;
use liqwatch::feeds::deribit::DeribitFeed;
use liqwatch::feeds::hyperliquid::HyperliquidFeed;
use liqwatch::feeds::okx::OkxFeed;
use liqwatch::feeds::{Feed, FeedConfig, FeedRegistry, SymbolRoutes, VenueTick, run_feed};
use liqwatch::model::{InstrumentId, PriceField, PriceTick, Venue};
use liqwatch::prices::{PriceBoard, PriceBoardConfig};
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

/// The daemon's allocator (`src/main.rs`), so what is timed here is what runs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BINANCE_ONE: &str = r#"{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1788936948001,"s":"BTCUSDT","p":"79107.36658171","ap":"79107.36658171","P":"79176.63756423","i":"79139.09565217","r":"0.00008359","T":1788940800000,"st":1}}"#;
const BYBIT_DELTA: &str = r#"{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT","markPrice":"79120.55","indexPrice":"79139.09","bid1Price":"79114.50","bid1Size":"1.496"},"cs":793092205004,"ts":1787590405983}"#;
const BYBIT_SNAPSHOT: &str = r#"{"topic":"tickers.BTCUSDT","type":"snapshot","data":{"symbol":"BTCUSDT","tickDirection":"PlusTick","lastPrice":"17216.00","markPrice":"17217.33","indexPrice":"17227.36","nextFundingTime":"1673280000000","fundingRate":"-0.000212","bid1Price":"17215.50","bid1Size":"84.489","ask1Price":"17216.00","ask1Size":"83.020","fundingIntervalHour":"8"},"cs":24987956059,"ts":1673272861686}"#;

const OKX_MARK: &str = r#"{"arg":{"channel":"mark-price","instId":"BTC-USDT-SWAP"},"data":[{"instType":"SWAP","instId":"BTC-USDT-SWAP","markPx":"84612.3","ts":"1740830316879"}]}"#;
const OKX_INDEX: &str = r#"{"arg":{"channel":"index-tickers","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT","idxPx":"84631.5","open24h":"80469.1","high24h":"86556.5","low24h":"80079.3","sodUtc0":"84343.8","sodUtc8":"84008.9","ts":"1740830316879"}]}"#;
const DERIBIT_TICKER: &str = r#"{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.BTC_USDC-PERPETUAL.100ms","data":{"timestamp":1790133840887,"state":"open","index_price":86744.11,"instrument_name":"BTC_USDC-PERPETUAL","last_price":86773.6,"mark_price":86778.14,"current_funding":1.423e-4,"funding_8h":5.149e-5,"best_ask_price":86778.0,"best_bid_price":86775.9}}}"#;
const DERIBIT_INDEX: &str = r#"{"jsonrpc":"2.0","method":"subscription","params":{"channel":"deribit_price_index.btc_usd","data":{"timestamp":1535098298227,"price":6521.17,"index_name":"btc_usd"}}}"#;
const HL_CTX: &str = r#"{"channel":"activeAssetCtx","data":{"coin":"BTC","ctx":{"funding":"0.0000018952","openInterest":"36585.31848","prevDayPx":"86627.0","dayNtlVlm":"4161029539.6949653625","premium":"-0.0006413454","oraclePx":"84198.0","markPx":"84148.0","midPx":"84143.5","impactPxs":["84143.0","84144.0"],"dayBaseVlm":"49116.08533"}}}"#;
const HL_MIDS: &str = r#"{"channel":"allMids","data":{"mids":{"@142":"80907.5","BTC":"80868.5","ETH":"2296.45","PURR/USDC":"0.067131"}}}"#;

fn binance_array(n: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"e":"markPriceUpdate","E":1788936948001,"s":"S{i}USDT","p":"{i}.36658171","ap":"{i}.36658171","P":"{i}.63756423","i":"{i}.09565217","r":"0.00008359","T":1788940800000,"st":1}}"#))
        .collect();
    format!(
        r#"{{"stream":"!markPrice@arr@1s","data":[{}]}}"#,
        items.join(",")
    )
}

fn parse_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("binance-usdm/markPrice", |b| {
        let mut f = BinanceUsdm::new();
        let mut out: Vec<VenueTick<'_>> = Vec::with_capacity(8);
        b.iter(|| {
            out.clear();
            black_box(f.parse(black_box(BINANCE_ONE), &mut out).unwrap());
            black_box(out.len());
        })
    });
    let arr = binance_array(200);
    g.throughput(Throughput::Elements(200));
    g.bench_function("binance-usdm/markPrice@arr(200 entries)", |b| {
        let mut f = BinanceUsdm::new();
        let mut out: Vec<VenueTick<'_>> = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            black_box(f.parse(black_box(&arr), &mut out).unwrap());
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("bybit-linear/tickers delta", |b| {
        let mut f = BybitLinear::new();
        let mut out: Vec<VenueTick<'_>> = Vec::with_capacity(8);
        f.parse(BYBIT_SNAPSHOT, &mut out).unwrap();
        b.iter(|| {
            out.clear();
            black_box(f.parse(black_box(BYBIT_DELTA), &mut out).unwrap());
        })
    });
    g.bench_function("bybit-linear/tickers snapshot", |b| {
        let mut f = BybitLinear::new();
        let mut out: Vec<VenueTick<'_>> = Vec::with_capacity(8);
        b.iter(|| {
            out.clear();
            black_box(f.parse(black_box(BYBIT_SNAPSHOT), &mut out).unwrap());
        })
    });
    // OKX, Deribit (JSON numbers, exponent forms) and Hyperliquid.
    let more: [(&str, Box<dyn Feed>, &str, u64); 6] = [
        ("okx/mark-price", Box::new(OkxFeed::new()), OKX_MARK, 1),
        ("okx/index-tickers", Box::new(OkxFeed::new()), OKX_INDEX, 1),
        (
            "deribit/ticker",
            Box::new(DeribitFeed::new()),
            DERIBIT_TICKER,
            1,
        ),
        (
            "deribit/price-index",
            Box::new(DeribitFeed::new()),
            DERIBIT_INDEX,
            1,
        ),
        (
            "hyperliquid/activeAssetCtx",
            Box::new(HyperliquidFeed::new()),
            HL_CTX,
            1,
        ),
        (
            "hyperliquid/allMids(4 coins)",
            Box::new(HyperliquidFeed::new()),
            HL_MIDS,
            4,
        ),
    ];
    for (name, mut f, frame, n) in more {
        g.throughput(Throughput::Elements(n));
        let mut out: Vec<VenueTick<'_>> = Vec::with_capacity(8);
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                black_box(f.parse(black_box(frame), &mut out).unwrap());
                black_box(out.len());
            })
        });
    }
    g.finish();
}

fn board_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("board");
    g.throughput(Throughput::Elements(1));
    let board = PriceBoard::new(PriceBoardConfig::default());
    let inst = InstrumentId::from("BTCUSDT-PERP");
    let prices: Vec<Decimal> = (0..1000).map(|i| Decimal::new(6_000_000 + i, 2)).collect();
    let mut i = 0usize;
    g.bench_function("publish (changing price)", |b| {
        b.iter(|| {
            i = (i + 1) % prices.len();
            black_box(board.publish(PriceTick {
                instrument: inst.clone(),
                venue: Venue::BinanceUsdm,
                price: prices[i],
                index: None,
                exchange_ts: None,
                received_ts: 1,
            }));
            if i == 0 {
                black_box(board.take_changed());
            }
        })
    });
    g.finish();
}

/// Distinct mark-price frames (prices within the spike fraction) and a sentinel.
fn frames(distinct: usize) -> (Vec<String>, String, Decimal) {
    let f = (0..distinct)
        .map(|i| {
            format!(
                r#"{{"stream":"btcusdt@markPrice@1s","data":{{"e":"markPriceUpdate","E":{},"s":"BTCUSDT","p":"60{:03}.{:08}","ap":"60000.1","P":"60000.2","i":"60000.3","r":"0.0001","T":1788940800000,"st":1}}}}"#,
                1788936948001u64 + i as u64,
                i % 1000,
                i
            )
        })
        .collect();
    let sentinel = r#"{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1799999999999,"s":"BTCUSDT","p":"61234.56789","i":"61234.5"}}"#.to_string();
    (f, sentinel, "61234.56789".parse().unwrap())
}

/// A minimal loopback WebSocket server for throughput runs: real handshake, waits for the
/// client's first text (the subscription), then writes pre-encoded unmasked text frames
/// straight to the TCP socket, so the server costs next to nothing.
async fn raw_server(frames: Arc<Vec<u8>>, repeat: usize, tail: Arc<Vec<u8>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let _sub = ws.next().await;
        use tokio::io::AsyncWriteExt;
        let tcp = ws.get_mut();
        for _ in 0..repeat {
            if tcp.write_all(&frames).await.is_err() {
                return;
            }
        }
        let _ = tcp.write_all(&tail).await;
        let _ = tcp.flush().await;
        // Keep the socket open until the client goes away.
        let mut buf = [0u8; 1024];
        use tokio::io::AsyncReadExt;
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    format!("ws://{addr}/market/stream")
}

/// Encodes server→client text frames (unmasked).
fn encode(texts: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in texts {
        out.push(0x81);
        let n = t.len();
        if n < 126 {
            out.push(n as u8);
        } else if n <= 0xffff {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        out.extend_from_slice(t.as_bytes());
    }
    out
}

const E2E_FRAMES: usize = 200_000;

/// CPU time (user + system) of this whole process, from `/proc/self/stat` (10 ms ticks).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

struct E2e {
    body: Arc<Vec<u8>>,
    tail: Arc<Vec<u8>>,
    repeat: usize,
    sentinel: Decimal,
}

impl E2e {
    fn new() -> E2e {
        let (distinct, sentinel, sentinel_price) = frames(1000);
        E2e {
            body: Arc::new(encode(&distinct)),
            tail: Arc::new(encode(&[r#"{"result":null,"id":1}"#.to_string(), sentinel])),
            repeat: E2E_FRAMES / distinct.len(),
            sentinel: sentinel_price,
        }
    }

    /// The full feed path: driver + Binance adapter + routing + price board.
    async fn driver(&self) {
        let url = raw_server(self.body.clone(), self.repeat, self.tail.clone()).await;
        let mut routes = SymbolRoutes::default();
        routes.add(
            "BTCUSDT",
            InstrumentId::from("BTCUSDT-PERP"),
            PriceField::Mark,
        );
        let cfg = FeedConfig {
            url: Some(url),
            routes,
            ..FeedConfig::default()
        };
        let board = Arc::new(PriceBoard::new(PriceBoardConfig::default()));
        let reg = FeedRegistry::new();
        let status = reg.register(Venue::BinanceUsdm, &cfg.routes);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_feed(
            Box::new(BinanceUsdm::new()),
            cfg,
            board.clone(),
            status,
            cancel.clone(),
        ));
        let id = InstrumentId::from("BTCUSDT-PERP");
        // The engine side: drain changes as they come, stop at the sentinel price.
        'outer: loop {
            for (_, c) in board.changed().await {
                if c.price == self.sentinel {
                    break 'outer;
                }
            }
        }
        assert_eq!(board.composite(&id).unwrap().price, self.sentinel);
        cancel.cancel();
        let _ = task.await;
    }

    /// The baseline: a plain tokio-tungstenite client reading and parsing each frame.
    async fn baseline(&self) {
        let url = raw_server(self.body.clone(), self.repeat, self.tail.clone()).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        use futures::SinkExt;
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"method":"SUBSCRIBE","params":["btcusdt@markPrice@1s"],"id":1}"#,
        ))
        .await
        .unwrap();
        let mut f = BinanceUsdm::new();
        while let Some(Ok(m)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                let mut out = Vec::with_capacity(4);
                let _ = f.parse(t.as_str(), &mut out);
                if out.first().and_then(|t| t.mark) == Some(self.sentinel) {
                    break;
                }
            }
        }
    }
}

fn e2e_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let e2e = E2e::new();
    for (group, cpu) in [("e2e", false), ("e2e_cpu", true)] {
        let mut g = c.benchmark_group(group);
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(10));
        g.throughput(Throughput::Elements(E2E_FRAMES as u64));
        // Wall clock (`e2e`), or CPU time of the whole process incl. the server (`e2e_cpu`):
        // frames per CPU-second, less sensitive to other load on a shared machine.
        let clock = move || if cpu { process_cpu() } else { Duration::ZERO };
        g.bench_function("binance-usdm loopback ws -> driver -> price board", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let (t0, c0) = (Instant::now(), clock());
                    for _ in 0..iters {
                        e2e.driver().await;
                    }
                    if cpu { clock() - c0 } else { t0.elapsed() }
                })
            })
        });
        g.bench_function("baseline: plain tokio-tungstenite read + parse", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let (t0, c0) = (Instant::now(), clock());
                    for _ in 0..iters {
                        e2e.baseline().await;
                    }
                    if cpu { clock() - c0 } else { t0.elapsed() }
                })
            })
        });
        g.finish();
    }
}

criterion_group!(benches, parse_bench, board_bench, e2e_bench);
criterion_main!(benches);
