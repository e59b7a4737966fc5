//! Rejected requests — every response with a 4xx status — counted and logged without letting a
//! client flood the log: each is counted in `liqwatch_api_rejected_requests_total{reason}`, the
//! first of a quiet period is logged at once, and the rest are logged as one aggregated line per
//! reason per interval ("N requests rejected (unauthorized) in the last 10 s; last path …").
//! The path is truncated to [`MAX_LOGGED_PATH`] bytes and written escaped (`{:?}`), so no client
//! can forge a log line or fill the disk the journal lives on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use parking_lot::Mutex;

/// Default interval of the aggregated lines.
pub const DEFAULT_REJECTED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Longest path prefix written to the log, in bytes.
pub const MAX_LOGGED_PATH: usize = 128;

/// The `reason` label of a rejected response, `None` for a status that is not a rejection.
pub fn rejection_reason(status: StatusCode) -> Option<&'static str> {
    Some(match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        _ if status.is_client_error() => "other",
        _ => return None,
    })
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Counts of one reason not yet logged.
struct Pending {
    count: u64,
    last_method: Method,
    last_path: String,
}

/// The rejected-request log of one router.
pub(super) struct RejectedLog {
    interval: Duration,
    /// Reasons with an open window (a flusher task is running for each).
    pending: Mutex<HashMap<&'static str, Pending>>,
}

impl RejectedLog {
    pub(super) fn new(interval: Duration) -> RejectedLog {
        RejectedLog {
            interval,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one rejected request and logs it (or adds it to the next aggregated line).
    pub(super) fn record(self: &Arc<Self>, reason: &'static str, method: &Method, path: &str) {
        metrics::counter!("liqwatch_api_rejected_requests_total", "reason" => reason).increment(1);
        let path = truncate(path, MAX_LOGGED_PATH);
        let mut pending = self.pending.lock();
        if let Some(p) = pending.get_mut(reason) {
            p.count += 1;
            p.last_method = method.clone();
            p.last_path.clear();
            p.last_path.push_str(path);
            return;
        }
        pending.insert(
            reason,
            Pending {
                count: 0,
                last_method: method.clone(),
                last_path: String::new(),
            },
        );
        drop(pending);
        emit(reason, 1, method, path, None);
        let this = Arc::clone(self);
        tokio::spawn(async move { this.flush(reason).await });
    }

    /// Every interval, logs what accumulated for `reason`; ends after a quiet interval.
    async fn flush(&self, reason: &'static str) {
        loop {
            tokio::time::sleep(self.interval).await;
            let mut pending = self.pending.lock();
            let Some(p) = pending.get_mut(reason) else {
                return;
            };
            if p.count == 0 {
                pending.remove(reason);
                return;
            }
            let count = std::mem::take(&mut p.count);
            let method = p.last_method.clone();
            let path = std::mem::take(&mut p.last_path);
            drop(pending);
            emit(reason, count, &method, &path, Some(self.interval));
        }
    }
}

fn emit(reason: &'static str, count: u64, method: &Method, path: &str, window: Option<Duration>) {
    let secs = window.map_or(0.0, |w| w.as_secs_f64());
    // Authentication failures are what an operator must see; the rest is client noise.
    let auth = matches!(reason, "unauthorized" | "forbidden");
    match (window, auth) {
        (None, true) => tracing::warn!(
            reason, count, method = %method, last_path = ?path,
            "API request rejected ({reason}); more are logged as one line per reason and interval"
        ),
        (None, false) => tracing::info!(
            reason, count, method = %method, last_path = ?path,
            "API request rejected ({reason}); more are logged as one line per reason and interval"
        ),
        (Some(_), true) => tracing::warn!(
            reason, count, method = %method, last_path = ?path,
            "{count} API requests rejected ({reason}) in the last {secs} s"
        ),
        (Some(_), false) => tracing::info!(
            reason, count, method = %method, last_path = ?path,
            "{count} API requests rejected ({reason}) in the last {secs} s"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each rejection status has its own low-cardinality reason; successes and server errors
    /// are not rejections.
    #[test]
    fn reasons() {
        let cases = [
            (200, None),
            (400, Some("bad_request")),
            (401, Some("unauthorized")),
            (403, Some("forbidden")),
            (404, Some("not_found")),
            (405, Some("method_not_allowed")),
            (413, Some("payload_too_large")),
            (415, Some("unsupported_media_type")),
            (422, Some("unprocessable")),
            (429, Some("other")),
            (503, None),
        ];
        for (code, want) in cases {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            assert_eq!(rejection_reason(status), want, "{code}");
        }
    }

    /// Truncation keeps at most `max` bytes and never splits a character.
    #[test]
    fn truncation() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("", 0), "");
    }
}
