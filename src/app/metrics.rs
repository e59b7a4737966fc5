//! Registers every metric series whose labels are known at start at zero (issue 11 item 1).
//!
//! A labelled series the recorder has never seen is absent from `/metrics`, and Prometheus'
//! `increase()`/`rate()` need a sample before the first increment: without these zeros the
//! alert rules in `deploy/prometheus/alerts.yml` miss the first trigger, dead letter or journal
//! failure after every start. Registering a series never changes its value (counters get
//! `+0`, gauges and histograms only a handle), so calling this after tasks started is safe.
//!
//! What is registered, by family (the types come from [`telemetry::catalog`]):
//! - every family without labels;
//! - `kind` of `liqwatch_monitor_events_total` ([`EventKind::ALL`]) and of the account update
//!   counters; `kind` of the input file counters;
//! - per instrument: the account map's and the price board's per-instrument counters;
//! - per configured venue (a live feed, or every venue a replay may price): every
//!   `liqwatch_feed_*` counter and `liqwatch_feed_connected` (0 until connected) for live
//!   feeds, the `liqwatch_replay_*` counters for replays, and the price board's venue counters;
//! - per sink: every `liqwatch_sink_*` family, `kind` of the failures, and the `webhook_*` or
//!   `nats_*` families of that sink type;
//! - the API's and the account ingest's reasons and outcomes, when those sources run.

use std::collections::BTreeSet;

use metrics::Label;

use crate::config::{Config, FeedSource};
use crate::model::{EventKind, Instrument, Venue};
use crate::runtime::telemetry::{self, MetricDoc, MetricType};

/// Account update kinds counted by `liqwatch_accounts_{updates,rejected}_total`.
const UPDATE_KINDS: [&str; 4] = ["replace", "fill", "collateral", "remove"];
/// `liqwatch_engine_step_seconds{phase}`: the phases of [`crate::engine::StepTimes`].
pub(super) const STEP_PHASES: [&str; 3] = ["value", "evaluate", "reband"];
/// Delivery outcomes of the webhook and NATS request counters.
const OUTCOMES: [&str; 3] = ["ok", "retriable", "permanent"];
/// `liqwatch_ingest_updates_total{outcome}`.
const INGEST_OUTCOMES: [&str; 8] = [
    "applied",
    "duplicate",
    "malformed",
    "invalid",
    "rejected",
    "retry",
    "wrong_shard",
    "unauthorized",
];
/// `liqwatch_api_rejected_requests_total{reason}`.
const API_REJECTED: [&str; 9] = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    "unprocessable",
    "other",
];
/// `liqwatch_api_connections_closed_total{reason}`.
const API_CLOSED: [&str; 3] = ["over_limit", "header_timeout", "idle_timeout"];
/// `liqwatch_replay_bad_lines_total{reason}`.
const REPLAY_BAD_LINES: [&str; 4] = ["shape", "unknown_venue", "back_in_time", "no_adapter"];

/// The series of one daemon start, registered at zero by [`Zeros::register`].
struct Zeros {
    catalog: Vec<MetricDoc>,
}

impl Zeros {
    fn kind(&self, name: &str) -> Option<MetricType> {
        self.catalog.iter().find(|m| m.name == name).map(|m| m.kind)
    }

    /// Registers `name{labels}` with the recorder (a counter `+0`; gauges and histograms only
    /// created). `labels` must be in the order the emitting code writes them: the recorder keys
    /// a series by its ordered labels, so another order would be a second series. A name
    /// missing from the catalog is skipped (the unit test proves none is).
    fn zero(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        let labels: Vec<Label> = labels
            .iter()
            .map(|(k, v)| Label::new(*k, v.to_string()))
            .collect();
        match self.kind(name) {
            Some(MetricType::Counter) => metrics::counter!(name, labels).increment(0),
            Some(MetricType::Gauge) => drop(metrics::gauge!(name, labels)),
            Some(MetricType::Histogram) => drop(metrics::histogram!(name, labels)),
            None => {}
        }
    }

    /// Every family named `prefix…` whose only label is `label`, at `label = value`.
    fn each_with(&self, prefix: &str, label: &'static str, value: &str) {
        for m in &self.catalog {
            if m.name.starts_with(prefix) && m.labels == [label] {
                self.zero(m.name, &[(label, value)]);
            }
        }
    }
}

/// Registers at zero every series of the daemon's start whose labels are known now (see the
/// module docs). `sinks` are every running sink: the configured ones (whose type is in `cfg`)
/// and the demo's extra ones.
pub(super) fn register_zeros(cfg: &Config, instruments: &[Instrument], sinks: &[String]) {
    let z = Zeros {
        catalog: telemetry::catalog(),
    };
    for m in z.catalog.iter().filter(|m| m.labels.is_empty()) {
        z.zero(m.name, &[]);
    }
    for k in EventKind::ALL {
        z.zero("liqwatch_monitor_events_total", &[("kind", k.as_str())]);
    }
    for k in UPDATE_KINDS {
        z.zero("liqwatch_accounts_updates_total", &[("kind", k)]);
        z.zero("liqwatch_accounts_rejected_total", &[("kind", k)]);
    }
    for phase in STEP_PHASES {
        z.zero("liqwatch_engine_step_seconds", &[("phase", phase)]);
    }
    for k in ["instruments", "accounts", "prices"] {
        z.zero("liqwatch_inputs_rejected_total", &[("kind", k)]);
    }
    z.zero("liqwatch_inputs_warnings_total", &[("kind", "instruments")]);
    for inst in instruments {
        let id = inst.id.to_string();
        z.each_with("liqwatch_accounts_", "instrument", &id);
        z.each_with("liqwatch_prices_feed_", "instrument", &id);
    }

    // Venues: live feeds by name; a replay may price every venue of the instruments.
    let priced: BTreeSet<Venue> = instruments
        .iter()
        .flat_map(|i| i.sources.iter().map(|s| s.venue))
        .collect();
    let mut venues = BTreeSet::new();
    for entry in &cfg.feeds {
        match &entry.source {
            FeedSource::Venue(v) if priced.contains(v) => {
                venues.insert(*v);
                z.each_with("liqwatch_feed_", "venue", v.as_str());
            }
            FeedSource::Venue(_) => {}
            FeedSource::Replay { .. } => {
                for v in &priced {
                    venues.insert(*v);
                    z.each_with("liqwatch_replay_", "venue", v.as_str());
                }
                for r in REPLAY_BAD_LINES {
                    z.zero("liqwatch_replay_bad_lines_total", &[("reason", r)]);
                }
            }
        }
    }
    for v in &venues {
        let venue = v.as_str();
        z.zero(
            "liqwatch_prices_rejected_total",
            &[("venue", venue), ("reason", "non_positive")],
        );
        for inst in instruments
            .iter()
            .filter(|i| i.sources.iter().any(|s| s.venue == *v))
        {
            let id = inst.id.to_string();
            for name in [
                "liqwatch_prices_spikes_held_total",
                "liqwatch_prices_spikes_confirmed_total",
            ] {
                z.zero(name, &[("venue", venue), ("instrument", &id)]);
            }
        }
    }

    for sink in sinks {
        let sink = sink.as_str();
        let type_name = cfg
            .sinks
            .iter()
            .find(|e| e.name == sink)
            .map(|e| e.type_name);
        z.each_with("liqwatch_sink_", "sink", sink);
        for k in ["retriable", "permanent"] {
            z.zero(
                "liqwatch_sink_failures_total",
                &[("sink", sink), ("kind", k)],
            );
        }
        let (prefix, outcomes) = match type_name {
            Some("webhook") => ("liqwatch_webhook_", "liqwatch_webhook_requests_total"),
            Some("nats") => ("liqwatch_nats_", "liqwatch_nats_publish_total"),
            _ => continue,
        };
        z.each_with(prefix, "sink", sink);
        for o in OUTCOMES {
            z.zero(outcomes, &[("sink", sink), ("outcome", o)]);
        }
    }

    let mut sources = Vec::new();
    if cfg.api.enabled {
        sources.push("http");
        for r in API_REJECTED {
            z.zero("liqwatch_api_rejected_requests_total", &[("reason", r)]);
        }
        for r in API_CLOSED {
            z.zero("liqwatch_api_connections_closed_total", &[("reason", r)]);
        }
    }
    if cfg.accounts.nats.is_some() {
        sources.push("nats");
    }
    for o in ["success", "failure"] {
        z.zero("liqwatch_config_reloads_total", &[("outcome", o)]);
    }
    for source in sources {
        for o in INGEST_OUTCOMES {
            z.zero(
                "liqwatch_ingest_updates_total",
                &[("source", source), ("outcome", o)],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family this module names is in the catalog with the labels it registers.
    #[test]
    fn named_families_are_in_the_catalog() {
        let cat = telemetry::catalog();
        let labels = |name: &str| -> Vec<&str> {
            cat.iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} is not in docs/metrics.md"))
                .labels
                .clone()
        };
        for (name, want) in [
            ("liqwatch_monitor_events_total", &["kind"][..]),
            ("liqwatch_accounts_updates_total", &["kind"]),
            ("liqwatch_accounts_rejected_total", &["kind"]),
            ("liqwatch_inputs_rejected_total", &["kind"]),
            ("liqwatch_inputs_warnings_total", &["kind"]),
            ("liqwatch_prices_rejected_total", &["reason", "venue"]),
            (
                "liqwatch_prices_spikes_held_total",
                &["instrument", "venue"],
            ),
            (
                "liqwatch_prices_spikes_confirmed_total",
                &["instrument", "venue"],
            ),
            ("liqwatch_sink_failures_total", &["kind", "sink"]),
            ("liqwatch_webhook_requests_total", &["outcome", "sink"]),
            ("liqwatch_nats_publish_total", &["outcome", "sink"]),
            ("liqwatch_api_rejected_requests_total", &["reason"]),
            ("liqwatch_api_connections_closed_total", &["reason"]),
            ("liqwatch_replay_bad_lines_total", &["reason"]),
            ("liqwatch_ingest_updates_total", &["outcome", "source"]),
            ("liqwatch_config_reloads_total", &["outcome"]),
        ] {
            assert_eq!(labels(name), want, "{name}");
        }
    }
}
