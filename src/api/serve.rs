//! Serving the router on a TCP listener with limits ([`ServeLimits`]): a header-read timeout, an
//! idle keep-alive timeout and a cap on concurrent connections below the process's file
//! descriptor budget, so that idle or half-open clients can neither hold the daemon's
//! descriptors (which the journal and the sinks need) nor starve `/healthz`.
//!
//! One accept loop over hyper's HTTP/1 connection builder (axum's own `serve` has none of these
//! knobs). Per connection, a watchdog reads three facts kept by the connection itself: bytes
//! read (a wrapper around the socket), requests started (the service) and responses finished
//! (a wrapper around the response body). From them:
//!
//! - **header-read timeout**: once the first byte of a request arrives on a connection with no
//!   request in progress, its head must be complete within `header_read_timeout`, else the
//!   connection is closed (slow-loris clients, half-sent headers);
//! - **idle timeout**: a connection with no request in progress and no byte received for
//!   `idle_timeout` (since it was accepted, or since its last response ended) is closed;
//! - **connection cap**: at most `max_connections` are served at once. A connection beyond the
//!   cap is accepted and closed at once, with a best-effort `503` and `Retry-After: 1`, so the
//!   kernel backlog never fills with clients that hang: the client learns immediately, and
//!   `/healthz` works again as soon as a slot frees.
//!
//! Each closed or refused connection is counted in `liqwatch_api_connections_closed_total{reason}`
//! (`over_limit`, `header_timeout`, `idle_timeout`); `liqwatch_api_connections_open` is the
//! number served now. On shutdown the loop stops accepting, idle connections close, and
//! in-flight requests finish (SSE streams end with the [`super::ApiState`] shutdown token).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use futures::future::BoxFuture;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Default time a client has to send a complete request head once it has started one.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may sit with no request in progress and nothing received.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default cap on concurrent connections (lowered to the descriptor budget at start).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// File descriptors kept free for everything but API connections (journal, WAL, sinks, feeds,
/// NATS, logs, the runtime's own).
pub const FD_RESERVE: u64 = 128;

/// The connection limits of [`serve_on_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// A started request head must be complete within this time.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and nothing received for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections served at once; more are closed at accept.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ServeLimits {
    /// Lowers `max_connections` to the descriptor budget: the soft `RLIMIT_NOFILE`
    /// (`open_files`, see [`open_files_soft_limit`]) minus [`FD_RESERVE`], at least 1. Returns
    /// the limits and, when lowered, a sentence saying so (for a warning at start).
    pub fn within_fd_budget(mut self, open_files: Option<u64>) -> (ServeLimits, Option<String>) {
        let Some(soft) = open_files else {
            return (self, None);
        };
        let budget = usize::try_from(soft.saturating_sub(FD_RESERVE).max(1)).unwrap_or(usize::MAX);
        if self.max_connections <= budget {
            return (self, None);
        }
        let note = format!(
            "api.max_connections {} is above the file descriptor budget: the open-files limit is {soft} and {FD_RESERVE} are kept for the journal, sinks and feeds; serving at most {budget} connections (raise `ulimit -n` / LimitNOFILE to allow more)",
            self.max_connections
        );
        self.max_connections = budget;
        (self, Some(note))
    }
}

/// The soft limit on open files of this process (`Max open files` in `/proc/self/limits`);
/// `None` when unlimited or unknown (not Linux).
pub fn open_files_soft_limit() -> Option<u64> {
    parse_open_files_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// The soft `Max open files` of a `/proc/<pid>/limits` text.
pub fn parse_open_files_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Binds `addr` and serves `router` with the default [`ServeLimits`] until `shutdown` is
/// cancelled, then finishes in-flight requests (SSE streams end when the [`super::ApiState`]
/// shutdown token fires: pass the same token).
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve_on(listener, router, shutdown).await
}

/// Like [`serve`] on an already bound listener (tests bind `127.0.0.1:0`).
pub async fn serve_on(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_on_with(listener, router, ServeLimits::default(), shutdown).await
}

/// Serves `router` on `listener` under `limits` until `shutdown` is cancelled: then stops
/// accepting, closes idle connections, lets in-flight requests finish, and returns when every
/// connection has closed.
pub async fn serve_on_with(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            max_connections = limits.max_connections,
            header_read_timeout = ?limits.header_read_timeout,
            idle_timeout = ?limits.idle_timeout,
            "HTTP API listening"
        );
    }
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    // The watchdog below owns both timeouts; hyper's own header timer would also cut idle
    // keep-alive connections at the header timeout.
    builder.header_read_timeout(None).keep_alive(true);
    let mut refused = RateLimitedWarn::new(Duration::from_secs(10));
    let mut accept_errors = RateLimitedWarn::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning, and say so rarely.
                accept_errors.warn(|n| {
                    tracing::warn!(%error, errors = n, "HTTP API cannot accept connections; retrying")
                });
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refuse(stream);
            refused.warn(|n| {
                tracing::warn!(
                    refused = n,
                    max_connections = limits.max_connections,
                    "HTTP API at its connection limit: new connections are closed"
                )
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            router.clone(),
            builder.clone(),
            limits,
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Says "HTTP/1.1 503" to a connection over the cap (best effort, never waits) and closes it.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n",
    );
    closed("over_limit");
}

fn closed(reason: &'static str) {
    metrics::counter!("liqwatch_api_connections_closed_total", "reason" => reason).increment(1);
}

/// Logs the first occurrence at once and then at most once per interval, with the count.
struct RateLimitedWarn {
    every: Duration,
    last: Option<Instant>,
    count: u64,
}

impl RateLimitedWarn {
    fn new(every: Duration) -> Self {
        RateLimitedWarn {
            every,
            last: None,
            count: 0,
        }
    }

    fn warn(&mut self, log: impl FnOnce(u64)) {
        self.count += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= self.every)
        {
            log(self.count);
            self.count = 0;
            self.last = Some(now);
        }
    }
}

/// What the watchdog of one connection knows.
struct Phase {
    /// Requests whose response body has not finished.
    in_flight: usize,
    /// When the first byte of the next request head arrived (no request in flight).
    head_started: Option<Instant>,
    /// Since when nothing has been in flight (accept or end of the last response).
    idle_since: Instant,
}

struct ConnState {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            phase: Mutex::new(Phase {
                in_flight: 0,
                head_started: None,
                idle_since: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn bytes_read(&self) {
        let mut p = self.phase.lock();
        if p.in_flight == 0 && p.head_started.is_none() {
            p.head_started = Some(Instant::now());
            drop(p);
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        let mut p = self.phase.lock();
        p.in_flight += 1;
        p.head_started = None;
        drop(p);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    /// The next deadline and what closes the connection then; `None` while a request is in
    /// flight.
    fn deadline(&self, limits: &ServeLimits) -> Option<(Instant, &'static str)> {
        let p = self.phase.lock();
        if p.in_flight > 0 {
            None
        } else if let Some(t) = p.head_started {
            Some((t + limits.header_read_timeout, "header_timeout"))
        } else {
            Some((p.idle_since + limits.idle_timeout, "idle_timeout"))
        }
    }
}

/// One request in flight, until its response body is finished or dropped.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut p = self.0.phase.lock();
        p.in_flight = p.in_flight.saturating_sub(1);
        if p.in_flight == 0 {
            p.idle_since = Instant::now();
            p.head_started = None;
        }
        drop(p);
        self.0.changed.notify_one();
    }
}

/// The socket, reporting received bytes to the watchdog.
struct TrackedIo {
    io: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.bytes_read();
        }
        r
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A response body that keeps its request counted as in flight until it is finished.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The router as a hyper service that counts requests in flight.
#[derive(Clone)]
struct ConnService {
    router: Router,
    state: Arc<ConnState>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = hyper::Response<TrackedBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = self.state.request_started();
        let router = self.router.clone();
        Box::pin(async move {
            let response = router
                .oneshot(request.map(Body::new))
                .await
                .unwrap_or_else(|never| match never {});
            Ok(response.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        })
    }
}

/// Counts the open connections in `liqwatch_api_connections_open`.
struct OpenGauge;

impl OpenGauge {
    fn new() -> OpenGauge {
        metrics::gauge!("liqwatch_api_connections_open").increment(1.0);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("liqwatch_api_connections_open").decrement(1.0);
    }
}

async fn connection(
    stream: TcpStream,
    router: Router,
    builder: hyper::server::conn::http1::Builder,
    limits: ServeLimits,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _open = OpenGauge::new();
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(TrackedIo {
        io: stream,
        state: Arc::clone(&state),
    });
    let service = ConnService {
        router,
        state: Arc::clone(&state),
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = state.deadline(&limits);
        let changed = state.changed.notified();
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(error) = r {
                    tracing::trace!(%error, "HTTP connection ended with an error");
                }
                return;
            }
            _ = changed => {}
            _ = sleep_until(deadline) => {
                if let Some((at, reason)) = state.deadline(&limits)
                    && at <= Instant::now() {
                        // Nothing is in flight: dropping the connection closes the socket.
                        closed(reason);
                        tracing::debug!(reason, "HTTP connection closed");
                        return;
                    }
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                // Closes an idle connection now; an in-flight response finishes first.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<(Instant, &'static str)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft open-files limit is read from `/proc/<pid>/limits`; unlimited is `None`.
    #[test]
    fn open_files_limit_parsing() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), None);
        assert_eq!(parse_open_files_limit(""), None);
    }

    /// The connection cap is lowered to the descriptor budget (with a note), never to 0, and
    /// left alone when it fits or the limit is unknown.
    #[test]
    fn connection_cap_within_fd_budget() {
        let limits = |n| ServeLimits {
            max_connections: n,
            ..ServeLimits::default()
        };
        let cases: &[(usize, Option<u64>, usize, bool)] = &[
            (512, Some(1024), 512, false),
            (2000, Some(1024), 896, true),
            (2000, None, 2000, false),
            (10, Some(64), 1, true),
            (896, Some(1024), 896, false),
        ];
        for &(configured, soft, want, noted) in cases {
            let (got, note) = limits(configured).within_fd_budget(soft);
            assert_eq!(got.max_connections, want, "{configured} {soft:?}");
            assert_eq!(note.is_some(), noted, "{configured} {soft:?}");
        }
    }
}
