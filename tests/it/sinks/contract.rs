//! The shared sink contract run against the stdout sink (with an injected writer) and the
//! jsonl sink (a real file in a temp dir, rotating often). The webhook sink runs it in
//! `sinks::webhook_contract`.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use liqwatch::model::{InstrumentId, PriceUsed, RiskEvent};
use liqwatch::sinks::Sink;
use liqwatch::sinks::jsonl::{JsonlSink, JsonlSinkConfig, rotated_path};
use liqwatch::sinks::stdout::{StdoutSink, StdoutSinkConfig};
use parking_lot::Mutex;
use tokio::io::AsyncWrite;
use uuid::Uuid;

use crate::support::sink_contract::{SinkFixture, contract_tests};

/// Makes an event's JSON line far longer than 16 KiB.
fn bloat(event: &mut RiskEvent) {
    for i in 0..400 {
        event.prices.push(PriceUsed {
            instrument: InstrumentId::from(format!("PADDING{i}USDT-PERP")),
            price: "1.2345".parse().unwrap(),
            source: "binance-usdm".into(),
            received_ts: 0,
            age_ms: 0,
            stale: false,
        });
    }
}

fn ids_of_lines(text: &str) -> Vec<Uuid> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("line is not one JSON object ({e}): {l:?}"));
            v["event_id"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

/// An in-memory stdout that can be made to fail.
#[derive(Clone, Default)]
struct FlakyOut {
    buf: Arc<Mutex<Vec<u8>>>,
    failing: Arc<AtomicBool>,
}

impl AsyncWrite for FlakyOut {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        if self.failing.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "reader gone",
            )));
        }
        self.buf.lock().extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct StdoutFixture {
    out: FlakyOut,
}

impl SinkFixture for StdoutFixture {
    async fn make_sink(&mut self, name: &str) -> Box<dyn Sink> {
        let config = StdoutSinkConfig {
            max_line_bytes: Some(16 * 1024),
            ..StdoutSinkConfig::default()
        };
        Box::new(StdoutSink::with_writer(name, &config, self.out.clone()))
    }
    async fn received(&mut self) -> Vec<Uuid> {
        let text = String::from_utf8(self.out.buf.lock().clone()).unwrap();
        ids_of_lines(&text)
    }
    async fn fail(&mut self) {
        self.out.failing.store(true, Ordering::SeqCst);
    }
    async fn heal(&mut self) {
        self.out.failing.store(false, Ordering::SeqCst);
    }
    fn poison(&mut self, event: &mut RiskEvent) {
        bloat(event);
    }
}

contract_tests!(
    stdout,
    StdoutFixture {
        out: FlakyOut::default()
    }
);

struct JsonlFixture {
    dir: tempfile::TempDir,
}

impl JsonlFixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        JsonlFixture { dir }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("out").join("events.jsonl")
    }
}

impl SinkFixture for JsonlFixture {
    async fn make_sink(&mut self, name: &str) -> Box<dyn Sink> {
        let config = JsonlSinkConfig {
            path: self.path(),
            rotate_bytes: 8 * 1024,
            keep: 1000,
            max_line_bytes: Some(16 * 1024),
        };
        Box::new(JsonlSink::new(name, config))
    }
    async fn received(&mut self) -> Vec<Uuid> {
        // The sink rotates while we read: `events.jsonl.1` may be renamed to `.2` between
        // finding it and opening it, or read twice under two names. A read counts only if
        // the files' names pointed at the same inodes before and after it (no rotation in
        // between); otherwise it is retried.
        let path = self.path();
        loop {
            let before = file_inodes(&path);
            let Some(text) = read_rotated(&path, before.len()) else {
                continue;
            };
            if file_inodes(&path) == before {
                return ids_of_lines(&text);
            }
        }
    }
    async fn fail(&mut self) {
        // The file's directory disappears: every append fails (the sink never creates
        // directories) until it is renamed back, atomically.
        std::fs::rename(self.dir.path().join("out"), self.dir.path().join("held")).unwrap();
    }
    async fn heal(&mut self) {
        std::fs::rename(self.dir.path().join("held"), self.dir.path().join("out")).unwrap();
    }
    fn poison(&mut self, event: &mut RiskEvent) {
        bloat(event);
    }
}

contract_tests!(jsonl, JsonlFixture::new());

/// The inode behind `path.N`, `path.N-1`, …, `path.1`, then `path` itself (0 if absent),
/// stopping at the first missing rotated name.
fn file_inodes(path: &Path) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut inodes = Vec::new();
    let mut n = 1;
    while let Ok(meta) = std::fs::metadata(rotated_path(path, n)) {
        inodes.push(meta.ino());
        n += 1;
    }
    inodes.reverse();
    inodes.push(std::fs::metadata(path).map_or(0, |m| m.ino()));
    inodes
}

/// The rotated files oldest first, then the complete lines of the current one; `None` if a
/// rotated file vanished under us.
fn read_rotated(path: &Path, names: usize) -> Option<String> {
    let mut text = String::new();
    for n in (1..names).rev() {
        text.push_str(&std::fs::read_to_string(rotated_path(path, n)).ok()?);
    }
    // The sink may be appending right now: only complete lines (ending in a newline) have
    // been delivered; a half-written last line is not a malformed one.
    let current = std::fs::read_to_string(path).unwrap_or_default();
    text.push_str(current.rfind('\n').map_or("", |i| &current[..=i]));
    Some(text)
}
