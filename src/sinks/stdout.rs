//! `stdout` sink: one line per event, flushed per batch. `json` (default): the event JSON
//! exactly as journaled. `text`: one readable line (time, kind, account, ratio, level,
//! equity, maintenance margin, seq, event id).
//!
//! Option `max_line_bytes`: a longer line is dead-lettered instead of written (log shippers
//! such as Docker's `json-file` driver split lines over 16 KiB, which would break a
//! line-per-event consumer).

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{JournalEntry, Sink, SinkError};
use crate::model::RiskEvent;

/// Line format of the stdout sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// The event JSON as journaled.
    #[default]
    Json,
    /// One readable line.
    Text,
}

/// One readable line for `event` (no newline).
pub fn text_line(event: &RiskEvent) -> String {
    use std::fmt::Write as _;
    let mut line = format!("{} {}", event.time, event.kind);
    if let Some(a) = &event.account_id {
        let _ = write!(line, " account={a}");
    }
    if let Some(snap) = &event.snapshot {
        let _ = write!(
            line,
            " ratio={} equity={} mm={}",
            snap.margin_ratio, snap.equity, snap.maintenance_margin
        );
    }
    if let Some(level) = &event.level {
        let _ = write!(line, " level={level}");
    }
    if let Some(r) = &event.risk {
        let lt = event.level_type.map(|t| t.as_str()).unwrap_or("-");
        let _ = write!(
            line,
            " level_type={lt} p_liquidation={} es={} var={}",
            r.p_liquidation, r.es, r.var
        );
    } else if let Some(t) = event
        .level_type
        .filter(|t| *t != crate::model::LevelType::MarginRatio)
    {
        // Levels other than the ratio's say which (`level_type=shock_distance`).
        let _ = write!(line, " level_type={}", t.as_str());
    }
    if let Some(feed) = &event.feed {
        let _ = write!(line, " instrument={}", feed.instrument);
        if let Some(age) = feed.age_ms {
            let _ = write!(line, " age_ms={age}");
        }
    }
    if event.stale_prices {
        line.push_str(" STALE_PRICES");
    }
    let _ = write!(line, " seq={} event_id={}", event.seq, event.event_id);
    line
}

/// Settings of a stdout sink.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// `json` (default) or `text`.
    #[serde(default)]
    pub format: LineFormat,
    /// Longest line (bytes, without the newline) written; longer events are dead-lettered.
    #[serde(default)]
    pub max_line_bytes: Option<usize>,
}

impl super::SinkConfig for StdoutSinkConfig {
    const TYPE: &'static str = "stdout";
    type Settings = StdoutSinkConfig;

    fn into_settings(self, _cx: &super::SinkContext<'_>) -> Result<Self, Vec<String>> {
        Ok(self)
    }
}

impl super::SinkSettings for StdoutSinkConfig {
    fn build(&self, name: &str) -> Result<Box<dyn Sink>, super::SinkBuildError> {
        Ok(Box::new(StdoutSink::new(name, self)))
    }
}

/// Writes each event as one JSON line to stdout (or any injected writer).
pub struct StdoutSink {
    name: String,
    out: Box<dyn AsyncWrite + Send + Unpin>,
    max_line_bytes: Option<usize>,
    format: LineFormat,
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
            format: config.format,
            buf: Vec::new(),
        }
    }

    async fn write_lines(&mut self, batch: &[JournalEntry]) -> (usize, Option<SinkError>) {
        self.buf.clear();
        let mut count = 0;
        let mut rejected = None;
        for e in batch {
            let text;
            let line = match self.format {
                LineFormat::Json => e.json.as_str(),
                LineFormat::Text => {
                    text = text_line(&e.event);
                    text.as_str()
                }
            };
            if let Some(max) = self.max_line_bytes.filter(|max| line.len() > *max) {
                rejected = Some(SinkError::Permanent {
                    reason: format!(
                        "event line is {} bytes, over max_line_bytes = {max}",
                        line.len()
                    ),
                });
                break;
            }
            self.buf.extend_from_slice(line.as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The text format is one readable line with the numbers a person needs.
    #[tokio::test]
    async fn text_format_line() {
        let event: RiskEvent = serde_json::from_value(serde_json::json!({
            "event_id": "01890a5d-ac96-774b-bcce-b302099a8057",
            "kind": "liquidation_trigger",
            "time": "2021-05-19T12:50:00.000Z",
            "time_ms": 1621428600000i64,
            "account_id": "acct-7",
            "seq": 3,
            "level": "1.0",
            "previous_state": null,
            "state": null,
            "snapshot": null,
            "stale_prices": true,
            "feed": null
        }))
        .unwrap();
        let json = serde_json::to_string(&event).unwrap();
        let (w, mut r) = tokio::io::duplex(4096);
        let config = StdoutSinkConfig {
            format: LineFormat::Text,
            max_line_bytes: None,
        };
        let mut sink = StdoutSink::with_writer("text", &config, w);
        let entry = JournalEntry {
            seq: 1,
            event,
            json,
        };
        let (n, err) = sink.deliver(std::slice::from_ref(&entry)).await;
        assert_eq!((n, err), (1, None));
        drop(sink);
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut r, &mut out)
            .await
            .unwrap();
        assert_eq!(
            out,
            "2021-05-19T12:50:00.000Z liquidation_trigger account=acct-7 level=1.0 STALE_PRICES seq=3 event_id=01890a5d-ac96-774b-bcce-b302099a8057\n"
        );
    }

    /// A distance event says which level it is about; a ratio event's line is unchanged.
    #[test]
    fn text_line_names_distance_levels() {
        let mut event: RiskEvent = serde_json::from_value(serde_json::json!({
            "event_id": "01890a5d-ac96-774b-bcce-b302099a8057",
            "kind": "liquidation_warning",
            "time": "2024-08-05T00:15:00.000Z",
            "time_ms": 1722816900000i64,
            "account_id": "desk-1",
            "seq": 1,
            "level": "0.1",
            "level_type": "shock_distance",
            "previous_state": null,
            "state": null,
            "snapshot": null,
            "stale_prices": false,
            "feed": null
        }))
        .unwrap();
        assert_eq!(
            text_line(&event),
            "2024-08-05T00:15:00.000Z liquidation_warning account=desk-1 level=0.1 level_type=shock_distance seq=1 event_id=01890a5d-ac96-774b-bcce-b302099a8057"
        );
        event.level_type = Some(crate::model::LevelType::MarginRatio);
        assert!(!text_line(&event).contains("level_type"));
    }
}
