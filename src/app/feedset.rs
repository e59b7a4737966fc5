//! The running venue feeds, each with its own stop token (a child of the sources' shared one),
//! so a SIGHUP reload can add, remove or restart one `[[feeds]]` venue entry while the others
//! keep pricing. Replay entries are not here: they play a file once and need a restart.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, FeedEntry, FeedSource};
use crate::feeds::{self, FeedRegistry, FeedStatusHandle};
use crate::model::Instrument;
use crate::prices::PriceBoard;
use crate::runtime::tasks::Tasks;

/// One running venue feed.
struct LiveFeed {
    /// The `[[feeds]]` entry it runs, as text.
    entry: String,
    /// Its name for logs (`binance-usdm`).
    name: String,
    /// Stops this feed alone.
    stop: CancellationToken,
    /// Its status in `/v1/feeds` (removed when it stops).
    status: Arc<FeedStatusHandle>,
}

/// What the feeds need to start: shared by the wiring and the reloader.
#[derive(Clone)]
pub(crate) struct FeedSet {
    live: Arc<parking_lot::Mutex<Vec<LiveFeed>>>,
    board: Arc<PriceBoard>,
    registry: Arc<FeedRegistry>,
    tasks: Tasks,
    parent: CancellationToken,
}

/// What identifies an entry's settings.
fn entry_text(entry: &FeedEntry) -> String {
    format!("{entry:?}")
}

/// The instruments an entry prices (all, or those it lists).
pub(super) fn wanted(entry: &FeedEntry, instruments: &[Instrument]) -> Vec<Instrument> {
    if entry.instruments.is_empty() {
        instruments.to_vec()
    } else {
        instruments
            .iter()
            .filter(|i| entry.instruments.iter().any(|w| w == i.id.as_str()))
            .cloned()
            .collect()
    }
}

impl FeedSet {
    /// An empty set whose feeds run under children of `parent`.
    pub fn new(
        board: Arc<PriceBoard>,
        registry: Arc<FeedRegistry>,
        tasks: Tasks,
        parent: CancellationToken,
    ) -> FeedSet {
        FeedSet {
            live: Arc::default(),
            board,
            registry,
            tasks,
            parent,
        }
    }

    /// Starts the venue feed of `entry` (a replay entry is ignored: see [`super::spawn::feeds`]).
    pub fn start(&self, entry: &FeedEntry, instruments: &[Instrument]) -> Result<(), String> {
        let FeedSource::Venue(venue) = &entry.source else {
            return Ok(());
        };
        let feed = feeds::feed_for(*venue).map_err(|e| e.to_string())?;
        let fcfg = entry
            .driver
            .clone()
            .with_instruments(*venue, &wanted(entry, instruments));
        if fcfg.routes.symbols().is_empty() {
            tracing::warn!(%venue, "No instrument is priced by this venue: the feed is not started");
            return Ok(());
        }
        let status = self.registry.register(*venue, &fcfg.routes);
        // Tracked now (the driver tracks them again), so the start-up report of unserved held
        // instruments sees what this feed will price.
        for (_, inst, _) in fcfg.routes.iter() {
            self.board.track(inst, &[*venue]);
        }
        let stop = self.parent.child_token();
        let (board, cancel, handle) = (Arc::clone(&self.board), stop.clone(), status.clone());
        self.tasks.spawn(format!("feed {venue}"), async move {
            feeds::run_feed(feed, fcfg, board, handle, cancel).await;
            Ok::<(), String>(())
        });
        self.live.lock().push(LiveFeed {
            entry: entry_text(entry),
            name: entry.name(),
            stop,
            status,
        });
        Ok(())
    }

    /// Applies `new`'s venue entries: stops the feeds whose entry is gone or changed (their
    /// status leaves `/v1/feeds`), starts the new and changed ones. Returns what changed
    /// (`None` when nothing did). A feed that cannot start is reported; the others still run.
    pub fn reload(&self, new: &Config, instruments: &[Instrument]) -> Option<String> {
        let wanted: Vec<(&FeedEntry, String)> = new
            .feeds
            .iter()
            .filter(|e| matches!(e.source, FeedSource::Venue(_)))
            .map(|e| (e, entry_text(e)))
            .collect();
        let mut stopped = Vec::new();
        {
            let mut live = self.live.lock();
            live.retain(|f| {
                let keep = wanted.iter().any(|(_, t)| *t == f.entry);
                if !keep {
                    f.stop.cancel();
                    self.registry.unregister(&f.status);
                    stopped.push(f.name.clone());
                }
                keep
            });
        }
        let mut started = Vec::new();
        let mut failed = Vec::new();
        for (entry, text) in &wanted {
            let running = self.live.lock().iter().any(|f| f.entry == *text);
            if running {
                continue;
            }
            match self.start(entry, instruments) {
                Ok(()) => started.push(entry.name()),
                Err(e) => failed.push(format!("{}: {e}", entry.name())),
            }
        }
        if stopped.is_empty() && started.is_empty() && failed.is_empty() {
            return None;
        }
        if !failed.is_empty() {
            tracing::error!(?failed, "Feeds that could not start on reload");
        }
        Some(format!(
            "feeds: started {started:?}, stopped {stopped:?}{}",
            if failed.is_empty() {
                String::new()
            } else {
                format!(", failed {failed:?}")
            }
        ))
    }
}
