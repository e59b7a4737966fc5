//! The running sink drivers, each with its own stop token (a child of the sinks' shared one),
//! so a SIGHUP reload can add, remove or restart one `[[sinks]]` entry while the others keep
//! delivering. Readiness reads their health from here; shutdown takes them all.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SinkEntry};
use crate::journal::Journal;
use crate::sinks::{self, DriverOptions, Sink, SinkHealth, SinkTask};

/// One running driver.
pub(crate) struct LiveSink {
    /// The driver.
    pub task: SinkTask,
    /// Stops this driver alone (it drains for its grace period first).
    pub stop: CancellationToken,
    /// The `[[sinks]]` entry it runs, as text (`None`: added by code, e.g. the demo's printer;
    /// a reload never touches it).
    pub entry: Option<String>,
}

/// The running drivers, shared by the wiring, the API's readiness and the reloader.
#[derive(Clone, Default)]
pub(crate) struct SinkSet(Arc<parking_lot::Mutex<Vec<LiveSink>>>);

/// What identifies an entry's settings (secrets print as the variable they came from).
pub(crate) fn entry_text(entry: &SinkEntry) -> String {
    format!("{entry:?}")
}

/// The driver options of a configured entry.
fn options(cfg: &Config, entry: &SinkEntry) -> DriverOptions {
    entry.delivery.clone().unwrap_or_else(|| DriverOptions {
        drain_grace: cfg.shutdown.grace,
        ..DriverOptions::default()
    })
}

impl SinkSet {
    /// Starts `sink` for `entry` (or, without one, with `options`) under a child of `parent`.
    pub fn start(
        &self,
        sink: Box<dyn Sink>,
        entry: Option<&SinkEntry>,
        cfg: &Config,
        journal: &Arc<Journal>,
        parent: &CancellationToken,
        filter: sinks::SinkFilter,
    ) {
        let stop = parent.child_token();
        let opts = match entry {
            Some(e) => options(cfg, e),
            None => DriverOptions {
                drain_grace: cfg.shutdown.grace,
                ..DriverOptions::default()
            },
        };
        let task = sinks::spawn_sink_with(sink, filter, Arc::clone(journal), opts, stop.clone());
        self.0.lock().push(LiveSink {
            task,
            stop,
            entry: entry.map(entry_text),
        });
    }

    /// A set holding one stand-in driver reporting `health` (readiness tests).
    #[cfg(test)]
    pub fn with_health(name: &str, health: watch::Receiver<SinkHealth>) -> SinkSet {
        let set = SinkSet::default();
        set.0.lock().push(LiveSink {
            task: SinkTask {
                name: name.to_string(),
                join: tokio::spawn(async {}),
                health,
                redeliver: Default::default(),
            },
            stop: CancellationToken::new(),
            entry: None,
        });
        set
    }

    /// Asks the driver of sink `name` to redeliver its dead letters; false when no sink of
    /// that name runs.
    pub fn redeliver_dead_letters(&self, name: &str) -> bool {
        let set = self.0.lock();
        let Some(s) = set.iter().find(|s| s.task.name == name) else {
            return false;
        };
        s.task.redeliver_dead_letters();
        true
    }

    /// Every driver's live health.
    pub fn healths(&self) -> Vec<watch::Receiver<SinkHealth>> {
        self.0
            .lock()
            .iter()
            .map(|s| s.task.health.clone())
            .collect()
    }

    /// How many drivers run.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// The drivers, for the metrics registration (name and health).
    pub fn names(&self) -> Vec<String> {
        self.0.lock().iter().map(|s| s.task.name.clone()).collect()
    }

    /// Takes every driver (shutdown).
    pub fn take_all(&self) -> Vec<SinkTask> {
        std::mem::take(&mut *self.0.lock())
            .into_iter()
            .map(|s| s.task)
            .collect()
    }

    /// Which configured entries of `new` differ from the running ones: (to stop, to start).
    /// An entry whose settings changed is in both (restarted on its cursor).
    pub fn plan(&self, new: &Config) -> (Vec<String>, Vec<String>) {
        let running = self.0.lock();
        let mut stop = Vec::new();
        for s in running.iter() {
            let Some(text) = &s.entry else { continue };
            let same = new
                .sinks
                .iter()
                .any(|e| e.name == s.task.name && entry_text(e) == *text);
            if !same {
                stop.push(s.task.name.clone());
            }
        }
        let start = new
            .sinks
            .iter()
            .filter(|e| {
                !running
                    .iter()
                    .any(|s| s.task.name == e.name && s.entry.as_deref() == Some(&entry_text(e)))
            })
            .map(|e| e.name.clone())
            .collect();
        (stop, start)
    }

    /// Stops the configured drivers named in `names` and waits for each to drain (at most
    /// `grace` + 1 s), so a restarted sink never runs twice on one cursor.
    pub async fn stop(&self, names: &[String], grace: Duration) {
        let stopping: Vec<LiveSink> = {
            let mut running = self.0.lock();
            let (go, keep): (Vec<LiveSink>, Vec<LiveSink>) = std::mem::take(&mut *running)
                .into_iter()
                .partition(|s| s.entry.is_some() && names.contains(&s.task.name));
            *running = keep;
            go
        };
        for s in stopping {
            s.stop.cancel();
            let mut join = s.task.join;
            if tokio::time::timeout(grace + Duration::from_secs(1), &mut join)
                .await
                .is_err()
            {
                join.abort();
                tracing::warn!(sink = %s.task.name, "Sink did not stop within its grace period on reload; aborted (it resumes from its cursor)");
            }
        }
    }
}
