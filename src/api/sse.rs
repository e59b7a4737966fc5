//! The live event stream: `GET /v1/events/stream` (Server-Sent Events with resume by
//! `Last-Event-ID` / `since`), and [`forward_journal`], which feeds it from what the journal
//! committed — so clients see exactly what the sinks see.

use super::*;

/// Body of the `resync` SSE event sent to a client that fell behind the live stream; the stream
/// ends after it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResyncBody {
    /// Why (`lagged`).
    pub reason: String,
    /// How many live events this client missed.
    pub missed: u64,
    /// The last journal sequence this client received (0 = none).
    pub last_seq: u64,
    /// Where to fetch what was missed: `/v1/events?since=<last_seq>`.
    pub resync: String,
}

/// One open SSE client: counted in the gauge and against the cap until dropped.
struct SseClientGauge(Arc<std::sync::atomic::AtomicUsize>);

impl SseClientGauge {
    /// Takes a slot, or `None` when `max` clients are already connected.
    fn acquire(count: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!("liqwatch_api_sse_clients").increment(1.0);
        Some(SseClientGauge(count.clone()))
    }
}

impl Drop for SseClientGauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        metrics::gauge!("liqwatch_api_sse_clients").decrement(1.0);
    }
}

struct SseState {
    rx: broadcast::Receiver<Arc<JournalEntry>>,
    backend: Arc<dyn ApiBackend>,
    shutdown: CancellationToken,
    backlog: VecDeque<JournalEntry>,
    /// Next history page to fetch, while catching up from `since`.
    catch_up: Option<EventsSince>,
    last_seq: Option<u64>,
    done: bool,
    _gauge: SseClientGauge,
}

fn sse_event(entry: &JournalEntry) -> Event {
    Event::default()
        .id(entry.seq.to_string())
        .event(entry.event.kind.as_str())
        .data(entry.json.as_str())
}

const SSE_PAGE: usize = 500;

async fn next_sse(mut st: SseState) -> Option<(Result<Event, std::convert::Infallible>, SseState)> {
    if st.done {
        return None;
    }
    loop {
        if let Some(entry) = st.backlog.pop_front() {
            st.last_seq = Some(entry.seq);
            let ev = sse_event(&entry);
            return Some((Ok(ev), st));
        }
        if let Some(since) = st.catch_up {
            match st.backend.events(since, SSE_PAGE).await {
                Ok(page) => {
                    st.catch_up = match page.last() {
                        Some(last) if page.len() == SSE_PAGE => Some(EventsSince::Seq(last.seq)),
                        _ => None,
                    };
                    st.backlog.extend(page);
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "SSE history read failed; ending the stream");
                    st.done = true;
                    let ev = Event::default()
                        .event("error")
                        .data(format!("{{\"error\":{}}}", serde_json::Value::String(e.0)));
                    return Some((Ok(ev), st));
                }
            }
        }
        let received = tokio::select! {
            biased;
            _ = st.shutdown.cancelled() => return None,
            r = st.rx.recv() => r,
        };
        match received {
            Ok(entry) => {
                if st.last_seq.is_some_and(|last| entry.seq <= last) {
                    continue; // already sent from history
                }
                st.last_seq = Some(entry.seq);
                let ev = sse_event(&entry);
                return Some((Ok(ev), st));
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics::counter!("liqwatch_api_sse_lagged_total").increment(1);
                let last = st.last_seq.unwrap_or(0);
                warn!(missed, last_seq = last, "SSE client lagged; told to resync");
                st.done = true;
                let body = ResyncBody {
                    reason: "lagged".to_string(),
                    missed,
                    last_seq: last,
                    resync: format!("/v1/events?since={last}"),
                };
                let ev = Event::default()
                    .event("resync")
                    .data(serde_json::to_string(&body).unwrap_or_default());
                return Some((Ok(ev), st));
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

pub(super) async fn events_stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    if q.limit.is_some() {
        return Err(ApiError::BadRequest {
            code: "invalid_query",
            field: Some("limit".to_string()),
            message: "the stream takes no limit; use since= to replay history first".to_string(),
        });
    }
    // `Last-Event-ID` (sent by EventSource on reconnect) wins over `since`.
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let catch_up = match last_event_id.or(q.since) {
        Some(s) => Some(parse_since(&s)?),
        None => None,
    };
    let gauge =
        SseClientGauge::acquire(&state.sse_clients, state.max_sse_clients).ok_or_else(|| {
            ApiError::Unavailable(format!(
                "too many event-stream clients (at most {}); poll /v1/events?since= instead",
                state.max_sse_clients
            ))
        })?;
    // Subscribe before reading history so nothing committed in between is missed.
    let rx = state.events.subscribe();
    let st = SseState {
        rx,
        backend: state.backend.clone(),
        shutdown: state.shutdown.clone(),
        backlog: VecDeque::new(),
        catch_up,
        last_seq: match catch_up {
            Some(EventsSince::Seq(s)) => Some(s),
            _ => None,
        },
        done: false,
        _gauge: gauge,
    };
    let stream = futures::stream::unfold(st, next_sse);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Feeds the SSE broadcast from the journal: after each commit it reads the newly committed
/// entries (off the async threads) and sends them in journal order. While no client is
/// connected it reads nothing (clients catch up with `since=`). Returns when `cancel` fires or
/// the journal is dropped.
pub async fn forward_journal(
    journal: crate::journal::JournalHandle,
    events: broadcast::Sender<Arc<JournalEntry>>,
    cancel: CancellationToken,
) {
    const BATCH: usize = 1000;
    let mut committed = journal.journal().subscribe();
    let mut last = *committed.borrow_and_update();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            changed = committed.changed() => if changed.is_err() { break },
        }
        let target = *committed.borrow_and_update();
        while last < target {
            if events.receiver_count() == 0 {
                last = target;
                break;
            }
            match journal.read_after(last, BATCH).await {
                Ok(batch) if batch.is_empty() => {
                    last = target; // pruned under us: nothing left to send
                }
                Ok(batch) => {
                    for entry in batch {
                        last = entry.seq;
                        // An error only means every client has gone; keep the cursor moving.
                        let _ = events.send(Arc::new(entry));
                    }
                }
                Err(crate::journal::JournalError::CorruptRow { seq, reason }) => {
                    metrics::counter!("liqwatch_api_stream_skipped_total").increment(1);
                    warn!(seq, %reason, "unreadable journal row not streamed");
                    last = seq;
                }
                Err(error) => {
                    warn!(%error, after = last, "journal read for the live stream failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}
