//! `stdout` sink: one JSON object per line (the event exactly as journaled), flushed per batch.
//!
//! Config (`[[sinks]] type = "stdout"`): `max_line_bytes` (optional). An event whose line is
//! longer is dead-lettered instead of written: log shippers such as Docker's `json-file`
//! driver split lines over 16 KiB, which would break a line-per-event consumer.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{JournalEntry, Sink, SinkError};

/// Settings of a stdout sink.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// Longest line (bytes, without the newline) written; longer events are dead-lettered.
    #[serde(default)]
    pub max_line_bytes: Option<usize>,
}

/// Writes each event as one JSON line to stdout (or any injected writer).
pub struct StdoutSink {
    name: String,
    out: Box<dyn AsyncWrite + Send + Unpin>,
    max_line_bytes: Option<usize>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for StdoutSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdoutSink")
            .field("name", &self.name)
            .field("max_line_bytes", &self.max_line_bytes)
            .finish()
    }
}

impl StdoutSink {
    /// A sink writing to the process's stdout.
    pub fn new(name: impl Into<String>, config: &StdoutSinkConfig) -> Self {
        Self::with_writer(name, config, tokio::io::stdout())
    }

    /// A sink writing to `out` (tests, or any other byte stream).
    pub fn with_writer(
        name: impl Into<String>,
        config: &StdoutSinkConfig,
        out: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            out: Box::new(out),
            max_line_bytes: config.max_line_bytes,
            buf: Vec::new(),
        }
    }

    async fn write_lines(&mut self, batch: &[JournalEntry]) -> (usize, Option<SinkError>) {
        self.buf.clear();
        let mut count = 0;
        let mut rejected = None;
        for e in batch {
            if let Some(max) = self.max_line_bytes
                && e.json.len() > max
            {
                rejected = Some(SinkError::Permanent {
                    reason: format!(
                        "event line is {} bytes, over max_line_bytes = {max}",
                        e.json.len()
                    ),
                });
                break;
            }
            self.buf.extend_from_slice(e.json.as_bytes());
            self.buf.push(b'\n');
            count += 1;
        }
        if !self.buf.is_empty() {
            let written = async {
                self.out.write_all(&self.buf).await?;
                self.out.flush().await
            }
            .await;
            if let Err(e) = written {
                return (
                    0,
                    Some(SinkError::Retriable {
                        reason: format!("write to {} failed: {e}", self.name),
                        retry_after: None,
                    }),
                );
            }
        }
        (count, rejected)
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a [JournalEntry],
    ) -> BoxFuture<'a, (usize, Option<SinkError>)> {
        Box::pin(self.write_lines(batch))
    }
}
