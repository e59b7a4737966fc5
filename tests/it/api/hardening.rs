//! Issue 11, items 2, 3 and 10, over real sockets: the header-read and idle timeouts and the
//! connection cap of the API server; rejected requests counted and logged aggregated (no log
//! flood, no forged lines), account ids limited, `bearer` in any case; and readiness checks that
//! fail — a replay-only daemon is not ready until every instrument it serves has a price.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use liqwatch::api::{self, ApiState, ServeLimits};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::api_backend::MemBackend;
use crate::support::daemon_env::{Daemon, binance_mark_line, get_ok, http_client};

const TOKEN: &str = "hardening-token";
/// Upper bound for anything to happen; a hang fails the test instead of blocking CI.
const DEADLINE: Duration = Duration::from_secs(20);

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(limits: ServeLimits, state: impl FnOnce(ApiState) -> ApiState) -> Server {
    let backend = MemBackend::new(16);
    let shutdown = CancellationToken::new();
    let state = state(
        ApiState::new(backend.clone(), backend.events_tx.clone())
            .with_token(TOKEN)
            .with_shutdown(shutdown.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(api::serve_on_with(
        listener,
        api::router(state),
        limits,
        shutdown.clone(),
    ));
    Server {
        addr,
        shutdown,
        task,
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n";
const HEALTHZ_CLOSE: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n";

/// Reads one `/healthz` response (it ends with the JSON body) from a kept-alive connection.
async fn read_healthz(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&buf).ends_with("{\"status\":\"ok\"}") {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a /healthz response");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Waits until the server closes `stream` (EOF or reset); fails after the deadline.
async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection");
    got
}

fn limits(header: u64, idle: u64, max: usize) -> ServeLimits {
    ServeLimits {
        header_read_timeout: Duration::from_millis(header),
        idle_timeout: Duration::from_millis(idle),
        max_connections: max,
    }
}

/// Issue 11 item 2: a client that sends half a request head is closed after the header-read
/// timeout (it used to hold its socket forever), while the idle timeout is far away.
#[tokio::test]
async fn half_sent_head_is_closed_after_header_read_timeout() {
    let server = start(limits(300, 60_000, 16), |s| s).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\nx-slow: ")
        .await
        .unwrap();
    let got = closed_by_server(&mut stream).await;
    assert!(
        got.is_empty() || !got.starts_with(b"HTTP/1.1 200"),
        "{got:?}"
    );
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

/// Issue 11 item 2: a kept-alive connection with nothing in flight is closed after the idle
/// timeout; one that never sends anything too.
#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let server = start(limits(60_000, 300, 16), |s| s).await;
    let mut used = TcpStream::connect(server.addr).await.unwrap();
    used.write_all(HEALTHZ).await.unwrap();
    let response = read_healthz(&mut used).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(closed_by_server(&mut used).await.is_empty());
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_by_server(&mut silent).await.is_empty());
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
}

/// Issue 11 item 2: with `max_connections` held, a further connection is refused (503 or a
/// close), and `/healthz` on a fresh connection works again once one is released. Shutdown
/// still finishes with connections open.
#[tokio::test]
async fn connections_past_the_cap_are_refused_until_one_frees() {
    let server = start(limits(30_000, 30_000, 2), |s| s).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(HEALTHZ).await.unwrap();
        read_healthz(&mut s).await;
        held.push(s);
    }
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let _ = extra.write_all(HEALTHZ).await;
    let got = closed_by_server(&mut extra).await;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    drop(held.pop());
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        if s.write_all(HEALTHZ_CLOSE).await.is_ok() {
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < end,
            "/healthz never answered after a connection was released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Graceful shutdown with a kept-alive connection still open: it is closed, serve returns.
    server.shutdown.cancel();
    tokio::time::timeout(DEADLINE, server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
    assert!(closed_by_server(&mut held[0]).await.is_empty());
}

/// Captures formatted log lines.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    /// The lines about rejected requests, and the sum of their `count` fields.
    fn rejected(&self) -> (usize, u64) {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("rejected")).collect();
        let sum = lines
            .iter()
            .filter_map(|l| {
                let rest = &l[l.find("count=")? + "count=".len()..];
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        (lines.len(), sum)
    }
}

/// Issue 11 item 3: 2,000 rejected requests (401, 404, 405, 400 with a forged-line id) are all
/// counted in `liqwatch_api_rejected_requests_total{reason}`, yet the log gets a bounded
/// number of aggregated lines whose counts add up to 2,000, and no line break from a client
/// reaches the log.
#[test]
fn rejected_requests_are_counted_and_logged_aggregated() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let interval = Duration::from_millis(500);
    let _log = tracing::subscriber::set_default(subscriber);
    let elapsed = metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let server = start(limits(10_000, 10_000, 64), |s| {
                s.with_rejected_log_interval(interval)
            })
            .await;
            let mut client = TcpStream::connect(server.addr).await.unwrap();
            let requests: [&[u8]; 4] = [
                b"PUT /v1/accounts/a HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n",
                b"GET /nope%0AFAKE%20ERROR%20line HTTP/1.1\r\nhost: t\r\n\r\n",
                b"PATCH /healthz HTTP/1.1\r\nhost: t\r\nauthorization: Bearer hardening-token\r\n\r\n",
                b"GET /v1/accounts/a%0AFAKE HTTP/1.1\r\nhost: t\r\n\r\n",
            ];
            let started = tokio::time::Instant::now();
            let mut buf = vec![0u8; 64 * 1024];
            for i in 0..2000 {
                client.write_all(requests[i % 4]).await.unwrap();
                // Each answer is one small JSON body; read until its end.
                let mut got = Vec::new();
                while !got.ends_with(b"}}") {
                    let n = client.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed after {i} requests");
                    got.extend_from_slice(&buf[..n]);
                }
            }
            let elapsed = started.elapsed();
            // The aggregated lines come at the end of each interval: wait for the last.
            let end = tokio::time::Instant::now() + DEADLINE;
            while lines.rejected().1 < 2000 {
                assert!(tokio::time::Instant::now() < end, "{:?}", lines.rejected());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            server.shutdown.cancel();
            drop(client);
            server.task.await.unwrap().unwrap();
            elapsed
        })
    });
    let metrics = handle.render();
    let counted = |reason: &str| -> u64 {
        let key = format!("liqwatch_api_rejected_requests_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {metrics}"))
    };
    for reason in [
        "unauthorized",
        "not_found",
        "method_not_allowed",
        "bad_request",
    ] {
        assert_eq!(counted(reason), 500, "{reason}: {metrics}");
    }
    let (n_lines, sum) = lines.rejected();
    assert_eq!(sum, 2000);
    // Per reason: the first line at once, then at most one per interval (+1 for the last).
    let bound = 4 * (elapsed.as_millis() / interval.as_millis() + 2) as usize;
    assert!(n_lines <= bound, "{n_lines} lines > {bound}");
    let text = String::from_utf8_lossy(&lines.0.lock().unwrap()).into_owned();
    assert!(
        !text.lines().any(|l| l.starts_with("FAKE")),
        "a client forged a log line:\n{text}"
    );
}

async fn put(client: &reqwest::Client, url: String, auth: &str, id: &str) -> reqwest::Response {
    client
        .put(url)
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "id": id, "positions": [] }).to_string())
        .send()
        .await
        .unwrap()
}

/// Issue 11 item 3: the `Bearer` scheme is matched case-insensitively (RFC 7235); the token
/// itself still has to match exactly.
#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let server = start(ServeLimits::default(), |s| s).await;
    let client = http_client();
    let url = format!("http://{}/v1/accounts/a", server.addr);
    for auth in [
        format!("Bearer {TOKEN}"),
        format!("bearer {TOKEN}"),
        format!("BEARER  {TOKEN}"),
    ] {
        let r = put(&client, url.clone(), &auth, "a").await;
        assert_eq!(r.status(), 200, "{auth}");
    }
    for auth in [
        format!("Bearer {}", TOKEN.to_uppercase()),
        format!("Basic {TOKEN}"),
        format!("Bearer{TOKEN}"),
        "Bearer ".to_string(),
    ] {
        let r = put(&client, url.clone(), &auth, "a").await;
        assert_eq!(r.status(), 401, "{auth}");
    }
    server.shutdown.cancel();
}

/// Issue 11 item 3: an account id over 256 bytes or with a control character is refused with
/// 400 `invalid_account_id`, in the path of every account route; 256 bytes pass.
#[tokio::test]
async fn long_or_control_character_ids_are_refused() {
    let server = start(ServeLimits::default(), |s| s).await;
    let client = http_client();
    let base = format!("http://{}/v1/accounts", server.addr);
    let auth = format!("Bearer {TOKEN}");
    let long = "x".repeat(300);
    for id in [long.as_str(), "a%0Ab", "a%1B%5B31m", "a%00"] {
        let checks = [
            put(&client, format!("{base}/{id}"), &auth, id).await,
            client.get(format!("{base}/{id}")).send().await.unwrap(),
            client
                .delete(format!("{base}/{id}"))
                .header("authorization", &auth)
                .send()
                .await
                .unwrap(),
            client
                .post(format!("{base}/{id}/fills"))
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .body(r#"{"instrument":"BTCUSDT-PERP","quantity":"1","price":"1"}"#)
                .send()
                .await
                .unwrap(),
        ];
        for r in checks {
            assert_eq!(r.status(), 400, "{id}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "invalid_account_id", "{body}");
        }
    }
    let ok = "y".repeat(256);
    let r = put(&client, format!("{base}/{ok}"), &auth, &ok).await;
    assert_eq!(r.status(), 200);
    server.shutdown.cancel();
}

// ---------------------------------------------------------------------------------------------
// Readiness of the real daemon (item 10)
// ---------------------------------------------------------------------------------------------

const INSTRUMENTS: &str = r#"
[[instrument]]
id = "USDT"
kind = "collateral"
underlying = "USDT"
stable = true
collateral_ratio = "1"

[[instrument]]
id = "BTCUSDT-PERP"
kind = "linear_perpetual"
underlying = "BTC"
contract_size = "1"
# OKX also prices it, but the recordings here hold Binance lines only: the replay must not
# wait for (or list) a venue its recording cannot price.
sources = [
    { venue = "binance-usdm", symbol = "BTCUSDT", field = "mark" },
    { venue = "okx", symbol = "BTC-USDT-SWAP", field = "mark" },
]
tiers = [{ notional_floor = "0", notional_cap = "1000000000", mmr = "0.004", cum = "0" }]

[[instrument]]
id = "ETHUSDT-PERP"
kind = "linear_perpetual"
underlying = "ETH"
contract_size = "1"
sources = [{ venue = "binance-usdm", symbol = "ETHUSDT", field = "mark" }]
tiers = [{ notional_floor = "0", notional_cap = "1000000000", mmr = "0.004", cum = "0" }]
"#;

/// A replay-only daemon: BTC is priced at once, ETH only `eth_after_ms` later (recorded time).
async fn replay_daemon(dir: &Path, eth_after_ms: i64, speed: &str) -> (Daemon, String) {
    std::fs::write(dir.join("instruments.toml"), INSTRUMENTS).unwrap();
    let t0 = 1_621_382_400_000;
    let recording = [
        binance_mark_line("BTCUSDT", t0, "42849.78"),
        binance_mark_line("ETHUSDT", t0 + eth_after_ms, "3375.08"),
    ]
    .join("\n");
    std::fs::write(dir.join("recording.jsonl"), recording + "\n").unwrap();
    let cfg = format!(
        r#"
[engine]
instruments = ["instruments.toml"]

[[feeds]]
venue = "replay"
file = "recording.jsonl"
speed = "{speed}"

[prices]
composite = "binance-usdm"
stale_after = "1h"
# No account holds them: watched explicitly, so readiness waits for their prices (issue 12
# item 5 watches only held or listed instruments).
watch = ["BTCUSDT-PERP", "ETHUSDT-PERP"]

[journal]
path = "journal.sqlite"

[api]
bind = "127.0.0.1:0"

[shutdown]
grace = "3s"
"#
    );
    let path = dir.join("liqwatch.toml");
    std::fs::write(&path, cfg).unwrap();
    Daemon::init_journal(env!("CARGO_BIN_EXE_liqwatch"), &path, &[]);
    let mut daemon = Daemon::start(
        env!("CARGO_BIN_EXE_liqwatch"),
        &path,
        &[],
        dir.join("daemon.log"),
    );
    // Port 0: the daemon binds a free port and logs it.
    let addr = daemon.api_addr(DEADLINE).await;
    (daemon, format!("http://{addr}"))
}

/// Polls `/readyz` until `f` accepts (status, body).
async fn wait_readyz(
    client: &reqwest::Client,
    api: &str,
    what: &str,
    daemon: &Daemon,
    f: impl Fn(u16, &Value) -> bool,
) -> Value {
    let end = std::time::Instant::now() + DEADLINE;
    let mut last = None;
    loop {
        if let Ok(r) = client.get(format!("{api}/readyz")).send().await {
            let status = r.status().as_u16();
            if let Ok(body) = r.json::<Value>().await {
                if f(status, &body) {
                    return body;
                }
                last = Some((status, body));
            }
        }
        assert!(
            std::time::Instant::now() < end,
            "{what}: last /readyz {last:?}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 11 item 10: a replay-only daemon is not ready (503) while an instrument its replay
/// serves has no price yet, and the detail names it; it becomes ready once every instrument is
/// priced (it used to report ready with "0 feed(s) connected and fresh", then never ready
/// because a replay has no connection). A venue that also prices an instrument but has no
/// line in the recording is neither waited for nor listed (it used to keep the daemon
/// unready for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_daemon_is_ready_only_when_every_instrument_is_priced() {
    let client = http_client();

    // ETH's first price comes an hour later: not ready, naming ETH and only ETH.
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, api) = replay_daemon(dir.path(), 3_600_000, "1").await;
    let body = wait_readyz(&client, &api, "ETH unpriced", &daemon, |status, body| {
        let reasons = body["reasons"].to_string();
        status == 503 && reasons.contains("ETHUSDT") && !reasons.contains("BTCUSDT")
    })
    .await;
    let feeds = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "feeds")
        .unwrap()
        .clone();
    assert_eq!(feeds["ok"], false, "{body}");
    assert!(
        feeds["detail"]
            .as_str()
            .unwrap()
            .contains("ETHUSDT (ETHUSDT-PERP) has no price yet"),
        "{body}"
    );
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());

    // Both priced at once: ready, every check ok.
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, api) = replay_daemon(dir.path(), 100, "max").await;
    let body = wait_readyz(&client, &api, "all priced", &daemon, |status, _| {
        status == 200
    })
    .await;
    assert_eq!(body["ready"], true, "{body}");
    // The replay routes only the venue its recording holds, and says which it left out.
    let feeds = get_ok(&client, format!("{api}/v1/feeds")).await;
    let venues: Vec<&str> = feeds["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["venue"].as_str())
        .collect();
    assert_eq!(venues, ["binance-usdm"], "{feeds}");
    assert_eq!(feeds["feeds"][0]["replay"], true, "{feeds}");
    // The recording's two frames are counted as played; a replay has no connection.
    let f = &feeds["feeds"][0];
    assert_eq!(f["frames"], 2, "{feeds}");
    assert!(f["last_frame"].as_i64().is_some(), "{feeds}");
    assert_eq!(
        (f["connected"].clone(), f["reconnects"].clone()),
        (json!(false), json!(0))
    );
    let log = daemon.log_text();
    assert!(
        log.contains("no line in the recording are not tracked") && log.contains("absent=okx"),
        "{log}"
    );
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
}
