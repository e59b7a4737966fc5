//! `[instruments]`: `[[instruments.sources]]`, the venues' own REST responses as an instrument
//! source (files read at start-up, URLs refreshed while running). The validated type is the
//! component's own, [`InstrumentSourceConfig`].

use std::time::Duration;

use clap::ValueEnum as _;
use serde::Deserialize;

use super::diagnostics::{Cx, P};
use crate::instruments::ImportVenue;
use crate::instruments::refresh::RefreshUrl;
use crate::instruments::source::{DEFAULT_EVERY, DEFAULT_TIMEOUT, InstrumentSourceConfig};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstruments {
    sources: Option<Vec<RawInstrumentSource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstrumentSource {
    venue: String,
    files: Option<Vec<String>>,
    urls: Option<Vec<String>>,
    post_body: Option<String>,
    instruments: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    every: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
}

impl Cx<'_, '_> {
    pub(super) fn instruments(&mut self, raw: RawInstruments) -> Vec<InstrumentSourceConfig> {
        let mut out = Vec::new();
        for (i, s) in raw.sources.unwrap_or_default().into_iter().enumerate() {
            let at = |k: &'static str| [P::K("instruments"), P::K("sources"), P::I(i), P::K(k)];
            let venue = match ImportVenue::from_str(&s.venue, false) {
                Ok(v) if v.has_reader() => Some(v),
                Ok(v) => {
                    let why = crate::instruments::import(v, &[])
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    self.problem(
                        &at("venue"),
                        format!("no importer for this venue yet ({why})"),
                    );
                    None
                }
                Err(_) => {
                    let names: Vec<String> = ImportVenue::value_variants()
                        .iter()
                        .map(|v| v.as_str().to_string())
                        .collect();
                    self.problem(
                        &at("venue"),
                        format!("{:?}: expected one of {}", s.venue, names.join(", ")),
                    );
                    None
                }
            };
            let files: Vec<_> = s
                .files
                .unwrap_or_default()
                .iter()
                .map(|f| self.path(f))
                .collect();
            if files.is_empty() {
                self.problem(
                    &at("files"),
                    "required: the venue's responses to start from (e.g. [\"feeds/binance-usdm/rest/leverage_tiers.json\"]); urls only refresh them",
                );
            }
            let mut urls = Vec::new();
            for (j, u) in s.urls.unwrap_or_default().into_iter().enumerate() {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    self.problem(
                        &[
                            P::K("instruments"),
                            P::K("sources"),
                            P::I(i),
                            P::K("urls"),
                            P::I(j),
                        ],
                        format!("{u:?}: expected an http:// or https:// URL"),
                    );
                }
                urls.push(RefreshUrl {
                    url: u,
                    post_json: s.post_body.clone(),
                });
            }
            if let Some(b) = &s.post_body
                && serde_json::from_str::<serde::de::IgnoredAny>(b).is_err()
            {
                self.problem(
                    &at("post_body"),
                    format!("{b:?} is not JSON (e.g. '{{\"type\":\"meta\"}}')"),
                );
            }
            let every = s.every.unwrap_or(DEFAULT_EVERY);
            if every < Duration::from_millis(100) {
                self.problem(&at("every"), "must be at least 100ms");
            }
            let timeout = s.timeout.unwrap_or(DEFAULT_TIMEOUT);
            if timeout.is_zero() {
                self.problem(&at("timeout"), "must be above 0");
            }
            let max_age = s.max_age.unwrap_or(every.saturating_mul(3));
            if max_age < every {
                self.problem(
                    &at("max_age"),
                    "must be at least `every` (the terms in force are that old between two refreshes)",
                );
            }
            if let Some(venue) = venue {
                out.push(InstrumentSourceConfig {
                    venue,
                    files,
                    urls,
                    only: s
                        .instruments
                        .unwrap_or_default()
                        .into_iter()
                        .map(Into::into)
                        .collect(),
                    every,
                    timeout,
                    max_age,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
