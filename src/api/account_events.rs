//! `GET /v1/accounts/{id}/events?limit=&before_seq=`: one account's journaled events, newest
//! first, paged backwards by journal sequence — the drill-down's event list. Served from the
//! journal (an index on the account, schema v3), so it reaches back past the page's own
//! stream and past restarts, and costs the same whatever the journal's size.

use super::*;

/// Query of `GET /v1/accounts/{id}/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AccountEventsQuery {
    limit: Option<usize>,
    before_seq: Option<u64>,
}

/// Body of `GET /v1/accounts/{id}/events`.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccountEventsBody {
    /// The account.
    pub account_id: AccountId,
    /// Its events, newest first, exactly as journaled.
    pub events: Vec<EventEntry>,
    /// Pass as `before_seq` for the next (older) page; `null` when this page is the last.
    pub next_before_seq: Option<u64>,
}

pub(super) async fn account_events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<AccountEventsQuery>, QueryRejection>,
) -> Result<axum::Json<AccountEventsBody>, ApiError> {
    let id = path_account_id(&id)?;
    let Query(q) = query.map_err(query_error)?;
    let limit = check_limit(q.limit)?;
    let entries = state
        .backend
        .account_events(&id, q.before_seq, limit)
        .await?;
    let next_before_seq = if entries.len() >= limit {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    let events = event_entries(&entries)?;
    Ok(axum::Json(AccountEventsBody {
        account_id: id,
        events,
        next_before_seq,
    }))
}

/// The default [`ApiBackend::account_events`]: reads the whole event history through
/// [`ApiBackend::events`] and keeps the account's (for small in-memory backends; the daemon
/// asks its journal's index).
pub(super) async fn scan_account_events<B: ApiBackend + ?Sized>(
    backend: &B,
    id: &AccountId,
    before_seq: Option<u64>,
    limit: usize,
) -> Result<Vec<JournalEntry>, BackendError> {
    let mut out: VecDeque<JournalEntry> = VecDeque::new();
    let mut since = 0;
    loop {
        let page = backend.events(EventsSince::Seq(since), MAX_LIMIT).await?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        for e in page {
            if before_seq.is_some_and(|b| e.seq >= b) {
                break;
            }
            if e.event.account_id.as_ref() == Some(id) {
                out.push_front(e);
                out.truncate(limit);
            }
        }
        if last <= since || before_seq.is_some_and(|b| last >= b) {
            break;
        }
        since = last;
    }
    Ok(out.into())
}
