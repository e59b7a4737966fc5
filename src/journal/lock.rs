//! One daemon per journal. Two `liqwatch run` on one journal (a manual run beside the systemd
//! service, two pods on one volume) would both number events from the same last seq — the
//! second one's commits then fail forever, its events held in memory — and both would deliver
//! from the same sink cursors, so receivers would get events twice. The daemon therefore holds
//! an exclusive advisory lock on `<journal>.lock` for as long as it runs; a second one stops at
//! start with exit 2, naming the holder. The lock is the operating system's (`flock`): it goes
//! with the process, a kill -9 included, so a stale lock file never blocks a restart.
//!
//! Readers take no lock: `liqwatch journal status | dead-letters | events` read beside a running
//! daemon.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::JournalError;

/// Held by a running daemon; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct JournalLock {
    _file: File,
    path: PathBuf,
}

impl JournalLock {
    /// The lock file of the journal at `journal`: `<journal>.lock` beside it.
    pub fn path_for(journal: &Path) -> PathBuf {
        let mut p = journal.as_os_str().to_owned();
        p.push(".lock");
        PathBuf::from(p)
    }

    /// Takes the lock of the journal at `journal`, creating its lock file if needed, and
    /// writes this process's id into it. [`JournalError::InUse`] when another process holds it.
    pub fn acquire(journal: &Path) -> Result<JournalLock, JournalError> {
        let path = Self::path_for(journal);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(JournalError::InUse {
                    path: journal.to_path_buf(),
                    holder: holder_text(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the next one's error message.
        let me = format!(
            "liqwatch pid {} since {}",
            std::process::id(),
            crate::model::format_rfc3339_ms(crate::model::now_ms())
        );
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(me.as_bytes()))
            .and_then(|()| file.flush())
            .map_err(io)?;
        Ok(JournalLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who holds the lock of the journal at `journal` now (`liqwatch pid 1234 since …`), or
    /// `None` when no daemon runs on it. Creates nothing and takes the lock for no longer
    /// than the check: a shared lock that succeeds means nobody holds the exclusive one.
    pub fn holder(journal: &Path) -> Option<String> {
        let mut file = File::open(Self::path_for(journal)).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(TryLockError::WouldBlock) => Some(holder_text(&mut file)),
            Err(TryLockError::Error(_)) => None,
        }
    }
}

/// What the holder wrote into its lock file (`liqwatch pid 1234 since …`).
fn holder_text(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    match text.trim() {
        "" => "another process".to_string(),
        t => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second holder is refused with the first one's pid while the first lives; once it is
    /// dropped the lock can be taken again.
    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal.sqlite");
        let first = JournalLock::acquire(&journal).unwrap();
        assert_eq!(first.path(), dir.path().join("journal.sqlite.lock"));
        let err = JournalLock::acquire(&journal).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, JournalError::InUse { .. }), "{text}");
        assert!(
            text.contains(&format!("liqwatch pid {}", std::process::id())),
            "{text}"
        );
        assert!(JournalLock::holder(&journal).is_some_and(|h| {
            h.starts_with(&format!("liqwatch pid {} since ", std::process::id()))
        }),);
        drop(first);
        assert_eq!(JournalLock::holder(&journal), None);
        let again = JournalLock::acquire(&journal).unwrap();
        drop(again);
        // No lock file at all: nobody holds it, and checking creates none.
        let other = dir.path().join("other.sqlite");
        assert_eq!(JournalLock::holder(&other), None);
        assert!(!JournalLock::path_for(&other).exists());
    }

    /// A missing directory is an I/O error naming the lock file, not a panic.
    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = JournalLock::acquire(&dir.path().join("no/journal.sqlite")).unwrap_err();
        assert!(matches!(err, JournalError::Io { .. }), "{err}");
        assert!(err.to_string().contains("journal.sqlite.lock"), "{err}");
    }
}
