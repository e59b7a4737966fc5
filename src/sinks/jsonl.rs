//! `jsonl` sink: appends each event as one JSON line to a file, fsyncs once per batch, rotates
//! by size and keeps N rotated files (`events.jsonl.1` is the newest rotated one).
//!
//! Config (`[[sinks]] type = "jsonl"`): `path`, `rotate_bytes` (default 100 MiB), `keep`
//! (default 5), `max_line_bytes` (optional; longer events are dead-lettered).
//!
//! The file is opened for each batch, so an operator can fix a broken path (permissions, a
//! full disk) without a restart. A batch that fails is cut back off the file, so a retry never
//! leaves half a line behind; a line torn by a crash is closed with a newline on next open.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{JournalEntry, Sink, SinkError};

fn default_rotate_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_keep() -> usize {
    5
}

/// Settings of a jsonl sink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    /// The file to append to (its directory must exist).
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// How many rotated files to keep (`path.1` … `path.N`); older ones are deleted.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Longest line (bytes, without the newline); longer events are dead-lettered.
    #[serde(default)]
    pub max_line_bytes: Option<usize>,
}

impl JsonlSinkConfig {
    /// A config for `path` with default rotation.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            rotate_bytes: default_rotate_bytes(),
            keep: default_keep(),
            max_line_bytes: None,
        }
    }
}

impl super::SinkConfig for JsonlSinkConfig {
    const TYPE: &'static str = "jsonl";
    type Settings = JsonlSinkConfig;

    /// Resolves `path` against the config file's directory.
    fn into_settings(mut self, cx: &super::SinkContext<'_>) -> Result<Self, Vec<String>> {
        self.path = cx.path(&self.path);
        Ok(self)
    }
}

impl super::SinkSettings for JsonlSinkConfig {
    fn build(&self, name: &str) -> Result<Box<dyn Sink>, super::SinkBuildError> {
        Ok(Box::new(JsonlSink::new(name, self.clone())))
    }
}

/// Appends events to a JSON-lines file.
#[derive(Debug)]
pub struct JsonlSink {
    name: String,
    config: JsonlSinkConfig,
}

impl JsonlSink {
    /// A sink appending to `config.path`.
    pub fn new(name: impl Into<String>, config: JsonlSinkConfig) -> Self {
        Self {
            name: name.into(),
            config,
        }
    }
}

/// The name of rotated file `n` (`events.jsonl.3`).
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_for_append(path: &Path) -> std::io::Result<(File, u64)> {
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let mut size = f.metadata()?.len();
    if size > 0 {
        // Close a line torn by a crash so the next event starts on its own line.
        f.seek(SeekFrom::Start(size - 1))?;
        let mut last = [0u8; 1];
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            f.write_all(b"\n")?;
            size += 1;
        }
    }
    Ok((f, size))
}

fn sync_dir(path: &Path) {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(Ok(d)) = dir.map(File::open) {
        let _ = d.sync_all();
    }
}

fn rotate(config: &JsonlSinkConfig) -> std::io::Result<()> {
    let path = &config.path;
    if config.keep == 0 {
        std::fs::remove_file(path)?;
    } else {
        let _ = std::fs::remove_file(rotated_path(path, config.keep));
        for n in (1..config.keep).rev() {
            let from = rotated_path(path, n);
            if from.exists() {
                std::fs::rename(&from, rotated_path(path, n + 1))?;
            }
        }
        std::fs::rename(path, rotated_path(path, 1))?;
    }
    sync_dir(path);
    tracing::info!(path = %path.display(), keep = config.keep, "jsonl sink rotated its file");
    Ok(())
}

/// Writes `lines` (each without newline); returns how many went out before an error.
fn write_batch(config: &JsonlSinkConfig, lines: &[&str]) -> (usize, Option<std::io::Error>) {
    let (mut file, mut size) = match open_for_append(&config.path) {
        Ok(x) => x,
        Err(e) => return (0, Some(e)),
    };
    let mut start = size;
    let mut synced = 0;
    let mut pending = 0;
    let mut buf = Vec::new();
    for line in lines {
        let len = line.len() as u64 + 1;
        if size > 0 && size + len > config.rotate_bytes {
            // Finish what we have in this file, then rotate.
            let r = file
                .write_all(&buf)
                .and_then(|()| file.sync_data())
                .and_then(|()| rotate(config))
                .and_then(|()| open_for_append(&config.path));
            match r {
                Ok((f, s)) => {
                    synced += pending;
                    pending = 0;
                    buf.clear();
                    file = f;
                    size = s;
                    start = s;
                }
                Err(e) => {
                    let _ = file.set_len(start);
                    return (synced, Some(e));
                }
            }
        }
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        size += len;
        pending += 1;
    }
    match file.write_all(&buf).and_then(|()| file.sync_data()) {
        Ok(()) => (synced + pending, None),
        Err(e) => {
            // Cut the failed part off so a retry does not leave half a line behind.
            let _ = file.set_len(start);
            (synced, Some(e))
        }
    }
}

impl JsonlSink {
    async fn write(&mut self, batch: &[JournalEntry]) -> (usize, Option<SinkError>) {
        let mut lines: Vec<String> = Vec::with_capacity(batch.len());
        let mut rejected = None;
        for e in batch {
            if let Some(max) = self.config.max_line_bytes.filter(|max| e.json.len() > *max) {
                rejected = Some(SinkError::Permanent {
                    reason: format!(
                        "event line is {} bytes, over max_line_bytes = {max}",
                        e.json.len()
                    ),
                });
                break;
            }
            lines.push(e.json.clone());
        }
        if lines.is_empty() {
            return (0, rejected);
        }
        let config = self.config.clone();
        let result = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            write_batch(&config, &refs)
        })
        .await;
        match result {
            Ok((n, None)) => (n, rejected),
            Ok((n, Some(e))) => (
                n,
                Some(SinkError::Retriable {
                    reason: format!("append to {} failed: {e}", self.config.path.display()),
                    retry_after: None,
                }),
            ),
            Err(e) => (
                0,
                Some(SinkError::Retriable {
                    reason: format!("jsonl writer task failed: {e}"),
                    retry_after: None,
                }),
            ),
        }
    }
}

impl Sink for JsonlSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a [JournalEntry],
    ) -> BoxFuture<'a, (usize, Option<SinkError>)> {
        Box::pin(self.write(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Size rotation keeps exactly `keep` rotated files, newest as `.1`, and loses no line.
    #[test]
    fn rotates_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let config = JsonlSinkConfig {
            path: path.clone(),
            rotate_bytes: 40,
            keep: 2,
            max_line_bytes: None,
        };
        let lines: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i:010}}}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let (n, err) = write_batch(&config, &refs);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(n, 10);
        assert!(rotated_path(&path, 1).exists());
        assert!(rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists());
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let kept = format!(
            "{}{}{}",
            read(&rotated_path(&path, 2)),
            read(&rotated_path(&path, 1)),
            read(&path)
        );
        let got: Vec<&str> = kept.lines().collect();
        // Each file holds 2 lines of 17 bytes (newline included); the last 6 lines survive.
        assert_eq!(got, refs[4..].to_vec());
        for p in [&path, &rotated_path(&path, 1), &rotated_path(&path, 2)] {
            assert!(std::fs::metadata(p).unwrap().len() <= 40);
        }
    }

    /// A line torn by a crash is closed with a newline before the next batch is appended.
    #[test]
    fn torn_line_is_closed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let config = JsonlSinkConfig::new(&path);
        let (n, err) = write_batch(&config, &["{\"c\":3}"]);
        assert!(err.is_none());
        assert_eq!(n, 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":\n{\"c\":3}\n");
    }

    /// An unwritable path is a retriable error that reports no line written.
    #[test]
    fn directory_in_the_way_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::create_dir(&path).unwrap();
        let (n, err) = write_batch(&JsonlSinkConfig::new(&path), &["{}"]);
        assert_eq!(n, 0);
        assert!(err.is_some());
    }
}
