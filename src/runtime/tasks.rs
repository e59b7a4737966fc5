//! Task ownership: every task of the daemon is spawned through [`Tasks`] into one tracker with a
//! tracing span, so shutdown can wait for all of them and name the ones that lag.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// Spawns every task of the daemon into one [`TaskTracker`], each inside a tracing span, and
/// remembers the names of those still running so a slow shutdown can name them.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    next: Arc<AtomicU64>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    /// An empty tracker.
    pub fn new() -> Self {
        Tasks {
            tracker: TaskTracker::new(),
            running: Arc::new(Mutex::new(BTreeMap::new())),
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Spawns `fut` as task `name`. An error it returns is logged at ERROR with the task name.
    pub fn spawn<F, E>(&self, name: impl Into<String>, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let name = name.into();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.running.lock().insert(id, name.clone());
        let running = Arc::clone(&self.running);
        let span = tracing::info_span!("task", name = %name);
        self.tracker.spawn(
            async move {
                let guard = Deregister { running, id };
                match fut.await {
                    Ok(()) => tracing::debug!("Task finished"),
                    Err(e) => tracing::error!(error = %e, "Task failed"),
                }
                drop(guard);
            }
            .instrument(span),
        )
    }

    /// Names of the tasks still running.
    pub fn running(&self) -> Vec<String> {
        self.running.lock().values().cloned().collect()
    }

    /// Closes the tracker and waits up to `grace` for every task. Returns the names of the
    /// tasks still running after it (empty = clean).
    pub async fn wait(&self, grace: Duration) -> Vec<String> {
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => Vec::new(),
            Err(_) => self.running(),
        }
    }
}

struct Deregister {
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
    }
}

/// Waits for `handles` up to `grace`; returns false on timeout.
pub async fn join_all(handles: Vec<tokio::task::JoinHandle<()>>, grace: Duration) -> bool {
    tokio::time::timeout(grace, futures::future::join_all(handles))
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    /// The tracker names tasks still running after the grace period and forgets finished ones.
    #[tokio::test(start_paused = true)]
    async fn tasks_name_laggards() {
        let tasks = Tasks::new();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tasks.spawn("quick", async { Ok::<(), String>(()) });
        tasks.spawn("stuck", async move {
            s.cancelled().await;
            Ok::<(), String>(())
        });
        let laggards = tasks.wait(Duration::from_secs(1)).await;
        assert_eq!(laggards, vec!["stuck".to_string()]);
        stop.cancel();
        assert!(tasks.wait(Duration::from_secs(1)).await.is_empty());
    }
}
