//! Commands other than the daemon itself (`liqwatch run` lives in [`crate::app`]): the demo,
//! `stress`, `risk`, and `check-config`.

pub mod backtest; // `liqwatch backtest`: replay through the engine in recorded time, report + charts
pub mod check; // `liqwatch check-config`: validate a config and the files it names
pub mod demo; // `liqwatch demo`: replayed crash, sample accounts, readable event lines
pub mod instruments; // `liqwatch instruments import`: venue REST responses → presets TOML
pub mod journal; // `liqwatch journal status | dead-letters | events`: the journal, read-only
pub mod risk; // `liqwatch risk`: historical VaR, ES, P(liquidation), component ES
pub mod stress; // `liqwatch stress`: scenario shocks over accounts from files
pub mod stress_funding; // `liqwatch stress --funding`: next funding payment and ratio after it

/// What to do when an input left at its default is missing. The defaults (`feeds/presets.toml`,
/// `feeds/sample/…`) are paths of the source checkout, relative to the working directory, so a
/// packaged binary run elsewhere meets "cannot read" on a file the user never named. For each
/// `(flag, path)` still at such a default (relative, under `feeds/`) and absent, one line saying
/// so and naming the flag; `None` when every default is there (the error is then about
/// something else).
pub(crate) fn missing_default_hint(inputs: &[(&str, &std::path::Path)]) -> Option<String> {
    let missing: Vec<String> = inputs
        .iter()
        .filter(|(_, p)| p.is_relative() && p.starts_with("feeds") && !p.exists())
        .map(|(flag, p)| format!("{flag} (default {})", p.display()))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "hint: the defaults are paths in the source checkout, relative to the working \
             directory; run from the checkout or name the files: {} (the Docker image keeps \
             them under /usr/share/liqwatch/feeds)",
            missing.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// A missing default names its flag; a present default, an absolute path or a path the user
    /// chose outside `feeds/` gives no hint.
    #[test]
    fn missing_default_hint_names_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("feeds/presets.toml");
        assert_eq!(
            super::missing_default_hint(&[("--instruments", &absent)]),
            None
        );
        assert_eq!(
            super::missing_default_hint(&[("--accounts", Path::new("mine/accounts.json"))]),
            None
        );
        // The crate root is the tests' working directory: its feeds/ exist.
        assert_eq!(
            super::missing_default_hint(&[("--instruments", Path::new("feeds/presets.toml"))]),
            None
        );
        let hint = super::missing_default_hint(&[
            ("--instruments", Path::new("feeds/presets.toml")),
            ("--prices", Path::new("feeds/no-such-file.toml")),
        ])
        .unwrap();
        assert!(
            hint.contains("--prices (default feeds/no-such-file.toml)")
                && !hint.contains("--instruments"),
            "{hint}"
        );
    }
}
