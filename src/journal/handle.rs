//! [`JournalHandle`]: the journal's async face. Every call runs the synchronous core on tokio's
//! blocking pool, so async tasks never block on SQLite.

use super::*;

/// Async-friendly handle: runs journal calls on tokio's blocking pool.
#[derive(Clone, Debug)]
pub struct JournalHandle(pub Arc<Journal>);

impl JournalHandle {
    /// Wraps a shared journal.
    pub fn new(journal: Arc<Journal>) -> Self {
        Self(journal)
    }

    /// The shared journal (for the cheap, non-blocking calls such as `last_seq`).
    pub fn journal(&self) -> &Arc<Journal> {
        &self.0
    }

    /// Runs `f` on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
    {
        let j = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || f(&j))
            .await
            .map_err(|e| JournalError::Task(e.to_string()))?
    }

    /// [`Journal::append`] off the async threads.
    pub async fn append(
        &self,
        events: Vec<RiskEvent>,
        monitor_states: Vec<(AccountId, String)>,
    ) -> Result<Vec<u64>, JournalError> {
        self.run(move |j| j.append(&events, &monitor_states)).await
    }

    /// [`Journal::read_after`] off the async threads.
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, JournalError> {
        self.run(move |j| j.read_after(after, limit)).await
    }

    /// [`Journal::events_since`] off the async threads.
    pub async fn events_since(
        &self,
        since: Since,
        limit: usize,
    ) -> Result<Vec<JournalEntry>, JournalError> {
        self.run(move |j| j.events_since(since, limit)).await
    }

    /// [`Journal::advance`] off the async threads.
    pub async fn advance(&self, sink: String, seq: u64) -> Result<(), JournalError> {
        self.run(move |j| j.advance(&sink, seq)).await
    }

    /// [`Journal::dead_letter`] off the async threads.
    pub async fn dead_letter(
        &self,
        sink: String,
        seq: u64,
        reason: String,
    ) -> Result<(), JournalError> {
        self.run(move |j| j.dead_letter(&sink, seq, &reason)).await
    }

    /// [`Journal::upsert_accounts`] off the async threads.
    pub async fn upsert_accounts(
        &self,
        accounts: Vec<(AccountId, String)>,
    ) -> Result<(), JournalError> {
        self.run(move |j| j.upsert_accounts(&accounts)).await
    }

    /// [`Journal::delete_account`] off the async threads.
    pub async fn delete_account(&self, account: AccountId) -> Result<bool, JournalError> {
        self.run(move |j| j.delete_account(&account)).await
    }
}
