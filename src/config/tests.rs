//! Unit tests of the config: every problem at once, with file, line and field.

use super::*;
use crate::prices::CompositeMode;
use rust_decimal_macros::dec;

fn env(name: &str) -> Option<String> {
    match name {
        "HOOK_SECRET" => Some("s3cret-value".into()),
        "API_TOKEN" => Some("tok-value".into()),
        _ => None,
    }
}

fn ok(text: &str) -> Config {
    match parse(text, Path::new("/etc/liqwatch/l.toml"), &env) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, Path::new("/etc/liqwatch/l.toml"), &env) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.problems().to_vec(),
    }
}

fn keys(p: &[Problem]) -> Vec<(usize, &str)> {
    p.iter().map(|p| (p.line, p.key.as_str())).collect()
}

const MIN: &str = r#"
[engine]
instruments = ["presets.toml"]

[[feeds]]
venue = "binance-usdm"

[journal]
path = "journal.db"
"#;

/// A minimal file gets the documented defaults and paths resolve against the file's dir.
#[test]
fn minimal_defaults() {
    let c = ok(MIN);
    assert_eq!(
        c.engine.instruments,
        vec![PathBuf::from("/etc/liqwatch/presets.toml")]
    );
    assert_eq!(c.engine.thresholds, Thresholds::default());
    assert_eq!(c.engine.trigger_on_stale, StalePolicy::Fire);
    assert_eq!(c.journal.path, PathBuf::from("/etc/liqwatch/journal.db"));
    assert_eq!(c.journal.synchronous, Synchronous::Full);
    assert_eq!(c.api.bind.to_string(), DEFAULT_API_BIND);
    assert!(c.api.enabled && c.api.token.is_none());
    assert_eq!(c.feeds.len(), 1);
    assert_eq!(c.feeds[0].source, FeedSource::Venue(Venue::BinanceUsdm));
    assert_eq!(c.shutdown.grace, Duration::from_secs(10));
    assert_eq!(c.prices.composite, CompositeMode::Median);
    assert!(c.sinks.is_empty());
}

/// Problems in different sections are all reported, each with its line and key.
#[test]
fn every_problem_at_once() {
    let text = r#"
[engine]
instruments = ["presets.toml"]
colour = "red"

[[feeds]]
venue = "binance-usdm"

[[feeds]]
venue = "kraken"

[journal]
path = "j.db"

[[sinks]]
type = "webhook"
url = "https://example.com/hook"
secret_env = "MISSING_SECRET"

[api]
bind = "localhost"
"#;
    let p = problems(text);
    let k = keys(&p);
    assert!(k.contains(&(4, "engine.colour")), "{p:?}");
    assert!(k.contains(&(10, "feeds[1].venue")), "{p:?}");
    assert!(k.contains(&(18, "sinks[0].secret_env")), "{p:?}");
    assert!(k.contains(&(21, "api.bind")), "{p:?}");
    assert_eq!(p.len(), 4, "{p:?}");
    let colour = &p[0];
    assert!(colour.message.contains("unknown field"), "{colour:?}");
    assert!(p[1].message.contains("kraken"));
    assert!(p[2].message.contains("MISSING_SECRET"), "{:?}", p[2]);
}

/// Semantic problems inside one section are reported together.
#[test]
fn semantic_problems_in_one_section() {
    let text = r#"
[engine]
instruments = ["presets.toml"]
trigger = "abc"
warning_levels = ["0.9", "0.7"]
trigger_on_stale = "maybe"

[[feeds]]
venue = "okx"
stale_after = "soon"

[journal]
path = "j.db"
"#;
    let p = problems(text);
    let k = keys(&p);
    assert!(k.contains(&(4, "engine.trigger")), "{k:?}");
    assert!(k.contains(&(5, "engine.warning_levels")), "{k:?}");
    assert!(k.contains(&(6, "engine.trigger_on_stale")), "{k:?}");
    assert!(k.contains(&(10, "feeds[0].stale_after")), "{k:?}");
}

/// A float where a decimal string is expected is rejected with a hint to quote it.
#[test]
fn floats_rejected_with_hint() {
    let text = MIN.replace("[journal]", "[prices]\nspike_fraction = 0.2\n\n[journal]");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "prices.spike_fraction");
    assert!(p[0].message.contains("decimal strings"), "{}", p[0].message);
}

/// Syntax errors name the line.
#[test]
fn syntax_error_line() {
    let p = problems("[engine]\ninstruments = [\"a\"\n\n[journal]\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].line >= 2, "{p:?}");
    assert!(p[0].message.starts_with("TOML syntax"));
}

/// Unknown top-level sections and missing required keys are reported.
#[test]
fn unknown_section_and_required() {
    let p = problems("[engines]\nx = 1\n");
    let k: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert!(k.contains(&"engines"), "{k:?}");
    assert!(k.contains(&"engine.instruments"), "{k:?}");
    assert!(k.contains(&"journal.path"), "{k:?}");
    assert!(p.iter().any(|p| p.message.contains("no [[feeds]]")));
}

/// Secrets are read from the environment and never printed.
#[test]
fn secrets_from_env_redacted() {
    let text = format!(
        "{MIN}\n[api]\ntoken_env = \"API_TOKEN\"\n\n[[sinks]]\ntype = \"webhook\"\nname = \"desk\"\nurl = \"http://127.0.0.1:1/h\"\nsecret_env = \"HOOK_SECRET\"\n"
    );
    let c = ok(&text);
    assert_eq!(c.api.token.as_ref().map(|t| t.expose()), Some("tok-value"));
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("tok-value") && !dbg.contains("s3cret-value"),
        "{dbg}"
    );
    match c.sinks[0].settings_as::<crate::sinks::webhook::WebhookSettings>() {
        Some(s) => {
            assert_eq!(s.secret.as_ref().map(|s| s.expose()), Some("s3cret-value"))
        }
        None => panic!("{:?}", c.sinks[0]),
    }
}

/// A chat webhook's `page_url` reaches its settings from the config file, and a bad one is a
/// problem at the sink.
#[test]
fn webhook_page_url_from_the_file() {
    let sink = |url: &str| {
        format!(
            "{MIN}\n[[sinks]]\ntype = \"webhook\"\nname = \"chat\"\nurl = \"http://127.0.0.1:1/h\"\nformat = \"slack\"\npage_url = \"{url}\"\n"
        )
    };
    let c = ok(&sink("https://risk.example.com/"));
    match c.sinks[0].settings_as::<crate::sinks::webhook::WebhookSettings>() {
        Some(s) => assert_eq!(
            s.account_link("acct-1").as_deref(),
            Some("https://risk.example.com/#account=acct-1")
        ),
        None => panic!("{:?}", c.sinks[0]),
    }
    let p = problems(&sink("https://risk.example.com/#top"));
    assert!(
        p.iter()
            .any(|p| p.key.starts_with("sinks[0]") && p.message.contains("page_url")),
        "{p:?}"
    );
}

/// Sink entries: component keys go to the sink's own config, filters parse, duplicate
/// names, unknown keys and unknown types are rejected.
#[test]
fn sink_validation() {
    let good = format!(
        "{MIN}\n[[sinks]]\ntype = \"jsonl\"\nname = \"archive\"\npath = \"events.jsonl\"\nkeep = 3\nfilter = {{ kinds = [\"liquidation_trigger\"], min_severity = \"critical\" }}\n"
    );
    let c = ok(&good);
    assert_eq!(c.sinks[0].type_name, "jsonl");
    match c.sinks[0].settings_as::<crate::sinks::jsonl::JsonlSinkConfig>() {
        Some(j) => {
            assert_eq!(j.path, PathBuf::from("/etc/liqwatch/events.jsonl"));
            assert_eq!(j.keep, 3);
        }
        None => panic!("{:?}", c.sinks[0]),
    }
    assert_eq!(c.sinks[0].filter.kinds.len(), 1);
    let bad = format!(
        "{MIN}\n[[sinks]]\ntype = \"stdout\"\nurl = \"x\"\n\n[[sinks]]\ntype = \"stdout\"\n\n[[sinks]]\ntype = \"carrier-pigeon\"\n"
    );
    let p = problems(&bad);
    let k: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert!(k.contains(&"sinks[0].url"), "{p:?}");
    assert!(k.contains(&"sinks[1].name"), "{p:?}");
    assert!(k.contains(&"sinks[2].type"), "{p:?}");
    let unknown = p.iter().find(|p| p.key == "sinks[2].type");
    assert!(
        unknown.is_some_and(|p| p.message.contains("stdout, jsonl, webhook, nats")),
        "the registered types are listed: {p:?}"
    );
}

/// A disabled feed is dropped; replay feeds take a file and a speed; a venue feed's
/// stale_after becomes the board's per-venue limit; driver knobs reach the driver config.
#[test]
fn feeds_replay_disabled_and_knobs() {
    let text = MIN.replace(
        "venue = \"binance-usdm\"",
        "venue = \"binance-usdm\"\nenabled = false\n\n[[feeds]]\nvenue = \"replay\"\nfile = \"r.jsonl\"\nspeed = \"60\"\n\n[[feeds]]\nvenue = \"okx\"\nurl = \"ws://127.0.0.1:9/ws\"\nstale_after = \"3s\"\nbackoff_max = \"2s\"",
    );
    let c = ok(&text);
    assert_eq!(c.feeds.len(), 2);
    assert_eq!(
        c.feeds[0].source,
        FeedSource::Replay {
            file: PathBuf::from("/etc/liqwatch/r.jsonl"),
            speed: ReplaySpeed::Factor(60.0)
        }
    );
    assert_eq!(
        c.feeds[1].driver.url.as_deref(),
        Some("ws://127.0.0.1:9/ws")
    );
    assert_eq!(c.feeds[1].driver.backoff_max, Duration::from_secs(2));
    assert_eq!(
        c.prices.venue_stale_after.get(&Venue::Okx).map(|d| **d),
        Some(Duration::from_secs(3))
    );
}

/// A replay's `stale_after` becomes the limit of every venue it may play (its recording's venues
/// are only known from the file), unless a live feed or `[prices] venue_stale_after` sets that
/// venue; with two replays the shorter wins. Without it nothing changes.
#[test]
fn replay_stale_after_applies_to_the_venues_it_plays() {
    let text = MIN.replace(
        "venue = \"binance-usdm\"",
        "venue = \"binance-usdm\"\nenabled = false\n\n[[feeds]]\nvenue = \"replay\"\nfile = \"r.jsonl\"\nstale_after = \"90s\"\n\n[[feeds]]\nvenue = \"replay\"\nfile = \"s.jsonl\"\nstale_after = \"60s\"\n\n[[feeds]]\nvenue = \"okx\"\nstale_after = \"3s\"",
    ) + "\n[prices]\nvenue_stale_after = { deribit = \"7s\" }\n";
    let c = ok(&text);
    let limit = |v: Venue| c.prices.venue_stale_after.get(&v).map(|d| **d);
    assert_eq!(limit(Venue::BinanceUsdm), Some(Duration::from_secs(60)));
    assert_eq!(limit(Venue::Hyperliquid), Some(Duration::from_secs(60)));
    assert_eq!(limit(Venue::Okx), Some(Duration::from_secs(3)));
    assert_eq!(limit(Venue::Deribit), Some(Duration::from_secs(7)));
    let plain = ok(&MIN.replace(
        "venue = \"binance-usdm\"",
        "venue = \"binance-usdm\"\nenabled = false\n\n[[feeds]]\nvenue = \"replay\"\nfile = \"r.jsonl\"",
    ));
    assert!(plain.prices.venue_stale_after.is_empty());
}

/// A replay's speed is a factor, not money: a TOML integer is taken as well as a string; a
/// negative integer, a boolean or a float is a problem at the key.
#[test]
fn replay_speed_takes_numbers_and_strings() {
    for (raw, want) in [
        ("600", ReplaySpeed::Factor(600.0)),
        ("\"600\"", ReplaySpeed::Factor(600.0)),
        ("\"2.5\"", ReplaySpeed::Factor(2.5)),
        ("\"max\"", ReplaySpeed::Max),
        ("0", ReplaySpeed::Max),
    ] {
        let text = MIN.replace(
            "venue = \"binance-usdm\"",
            &format!("venue = \"replay\"\nfile = \"r.jsonl\"\nspeed = {raw}"),
        );
        let c = ok(&text);
        match &c.feeds[0].source {
            FeedSource::Replay { speed, .. } => assert_eq!(*speed, want, "{raw}"),
            other => panic!("{raw}: {other:?}"),
        }
    }
    // A TOML float is refused everywhere (money must not pass through binary floating point).
    for raw in ["-3", "true", "2.5"] {
        let text = MIN.replace(
            "venue = \"binance-usdm\"",
            &format!("venue = \"replay\"\nfile = \"r.jsonl\"\nspeed = {raw}"),
        );
        let p = problems(&text);
        assert!(p.iter().any(|p| p.key.ends_with("speed")), "{raw}: {p:?}");
    }
}

/// Shorthands: filter keys at the top of a sink, and `stream = "NAME"` for NATS.
#[test]
fn sink_shorthands() {
    let text = format!(
        "{MIN}\n[[sinks]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nstream = \"EV\"\nmin_severity = \"warning\"\n"
    );
    let c = ok(&text);
    assert_eq!(
        c.sinks[0].filter.min_severity,
        crate::sinks::Severity::Warning
    );
    match c.sinks[0].settings_as::<crate::sinks::nats::NatsSettings>() {
        Some(n) => assert_eq!(n.stream.as_ref().map(|s| s.name.as_str()), Some("EV")),
        None => panic!("{:?}", c.sinks[0]),
    }
}

/// A sink type's keys are its serde type's fields, so validation messages find their key.
#[test]
fn sink_fields_come_from_serde() {
    let fields = struct_fields::<crate::sinks::webhook::WebhookConfig>();
    assert!(
        fields.contains(&"secret_env") && fields.contains(&"batch_max"),
        "{fields:?}"
    );
    assert_eq!(
        struct_fields::<RawSink>(),
        [
            "type",
            "name",
            "filter",
            "delivery",
            "kinds",
            "min_severity",
            "accounts"
        ]
    );
    let text = format!(
        "{MIN}\n[[sinks]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/h\"\nmax_batch_time = \"0s\"\n"
    );
    let p = problems(&text);
    assert_eq!(keys(&p), vec![(14, "sinks[0].max_batch_time")], "{p:?}");
}

/// Levels parse exactly and bad levels are refused with the monitor's own rule.
#[test]
fn levels() {
    let c = ok(&MIN.replace(
        "instruments = [\"presets.toml\"]",
        "instruments = [\"presets.toml\"]\nwarning_levels = [\"0.3\", \"0.6\"]\nhysteresis = \"0.2\"\ntrigger_on_stale = \"hold\"",
    ));
    assert_eq!(
        c.engine.thresholds.warning_levels,
        vec![dec!(0.3), dec!(0.6)]
    );
    assert_eq!(c.engine.thresholds.hysteresis, dec!(0.2));
    assert_eq!(c.engine.trigger_on_stale, StalePolicy::Hold);
    let p = problems(&MIN.replace(
        "instruments = [\"presets.toml\"]",
        "instruments = [\"presets.toml\"]\nwarning_levels = [\"1.2\"]",
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].line, 4);
}

/// `[api]` connection limits: humantime durations and a count, defaults when absent; zero
/// timeouts and a zero cap are reported together, each on its own key (issue 11 item 2).
#[test]
fn api_connection_limits() {
    assert_eq!(ok(MIN).api.limits, crate::api::ServeLimits::default());
    let c = ok(&format!(
        "{MIN}\n[api]\nheader_read_timeout = \"2s\"\nidle_timeout = \"90s\"\nmax_connections = 100\n"
    ));
    assert_eq!(c.api.limits.header_read_timeout, Duration::from_secs(2));
    assert_eq!(c.api.limits.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.api.limits.max_connections, 100);
    let p = problems(&format!(
        "{MIN}\n[api]\nheader_read_timeout = \"0s\"\nidle_timeout = \"0s\"\nmax_connections = 0\n"
    ));
    let mut k: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    k.sort();
    assert_eq!(
        k,
        [
            "api.header_read_timeout",
            "api.idle_timeout",
            "api.max_connections"
        ],
        "{p:?}"
    );
}

/// Issue 11 item 9: every mistake in one `[[sinks]]` table is reported in one pass — a common
/// key, an unknown key of its type and its type's own check — and a key reported once is not
/// reported again as missing.
#[test]
fn every_mistake_in_a_sink_table_at_once() {
    let p = problems(&format!(
        "{MIN}\n[[sinks]]\ntype = \"webhook\"\nkinds = [\"no_such_kind\"]\nurl = \"ftp://x.example/h\"\nbogus = 1\n"
    ));
    assert_eq!(p.len(), 3, "{p:?}");
    for (line, key) in [
        (13, "sinks[0].kinds"),
        (14, "sinks[0].url"),
        (15, "sinks[0].bogus"),
    ] {
        assert!(
            p.iter().any(|p| p.line == line && p.key.starts_with(key)),
            "{key} on line {line}: {p:?}"
        );
    }

    // A required key of the wrong type is reported once, not again as missing.
    let p = problems(&format!(
        "{MIN}\n[[sinks]]\ntype = \"jsonl\"\npath = 5\nkeep = \"x\"\n"
    ));
    assert_eq!(p.len(), 2, "{p:?}");
}

/// Without the environment every named variable reads as the placeholder, which passes the
/// checks of a secret and of a URL; a name that is not a variable name is still a problem.
#[test]
fn no_env_placeholder_passes_every_env_check() {
    let text = format!(
        "{MIN}\n[api]\ntoken_env = \"UNSET_A\"\n\n[[sinks]]\ntype = \"webhook\"\nurl_env = \"UNSET_B\"\nsecret_env = \"UNSET_C\"\n\n[[sinks]]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nstream = \"EV\"\ntoken_env = \"UNSET_D\"\n"
    );
    let placeholder = |_: &str| Some(NO_ENV_PLACEHOLDER.to_string());
    if let Err(e) = parse(&text, Path::new("/etc/liqwatch/l.toml"), &placeholder) {
        panic!("{e}");
    }
    let bad = text.replace("UNSET_A", "not a name");
    assert!(parse(&bad, Path::new("/etc/liqwatch/l.toml"), &placeholder).is_err());
}

/// `[engine] after_trigger`: `keep_watching` by default, `mark_liquidated` when asked, and
/// anything else is a problem naming the key.
#[test]
fn after_trigger() {
    use crate::engine::AfterTrigger;
    assert_eq!(ok(MIN).engine.after_trigger, AfterTrigger::KeepWatching);
    let with = |v: &str| {
        MIN.replace(
            "instruments = [\"presets.toml\"]",
            &format!("instruments = [\"presets.toml\"]\nafter_trigger = \"{v}\""),
        )
    };
    assert_eq!(
        ok(&with("mark_liquidated")).engine.after_trigger,
        AfterTrigger::MarkLiquidated
    );
    let p = problems(&with("close"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(keys(&p)[0].1.ends_with("engine.after_trigger"), "{p:?}");
}

/// `[accounts] update_id_window` / `update_id_limit` default to 24 h / 100,000, are read, and a
/// window that would keep no id is refused naming its key.
#[test]
fn update_id_window_keys() {
    let c = ok(MIN);
    assert_eq!(
        c.accounts.update_ids,
        crate::journal::UpdateIdWindow::default()
    );
    let c = ok(&format!(
        "{MIN}\n[accounts]\nupdate_id_window = \"2h\"\nupdate_id_limit = 7\n"
    ));
    assert_eq!(c.accounts.update_ids.max_ids, 7);
    assert_eq!(c.accounts.update_ids.max_age, Duration::from_secs(2 * 3600));
    let p = problems(&format!(
        "{MIN}\n[accounts]\nupdate_id_window = \"0s\"\nupdate_id_limit = 0\n"
    ));
    let k: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        k,
        vec!["accounts.update_id_window", "accounts.update_id_limit"],
        "{p:?}"
    );
}

/// `[api] token_file` resolves against the config's directory and excludes `token_env`.
#[test]
fn api_token_file() {
    let c = ok(&format!("{MIN}\n[api]\ntoken_file = \"secrets/token\"\n"));
    assert_eq!(
        c.api.token_file.as_deref(),
        Some(Path::new("/etc/liqwatch/secrets/token"))
    );
    assert!(c.api.token.is_none());
    let p = problems(&format!(
        "{MIN}\n[api]\ntoken_env = \"API_TOKEN\"\ntoken_file = \"t\"\n"
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "api.token_file");
}

/// `[risk]`: absent means off; paths resolve against the file's directory, episodes stay as
/// named, defaults are 1d and 0.99; a bad horizon, alpha or an empty history are problems on
/// their keys.
#[test]
fn risk_section() {
    assert!(ok(MIN).risk.is_none());
    let c = ok(&format!(
        "{MIN}\n[risk]\nhistory = [\"h/BTC_USDT-5m.json\", \"episode:crash-2021-05-19\"]\n"
    ));
    let r = c.risk.unwrap();
    assert_eq!(
        r.history,
        [
            "/etc/liqwatch/h/BTC_USDT-5m.json",
            "episode:crash-2021-05-19"
        ]
    );
    assert_eq!(r.horizon, ("1d".to_string(), 86_400_000));
    assert_eq!(r.alpha, dec!(0.99));
    let p = problems(&format!(
        "{MIN}\n[risk]\nhistory = []\nhorizon = \"soon\"\nalpha = \"1.5\"\n"
    ));
    let k: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(k, ["risk.history", "risk.horizon", "risk.alpha"], "{p:?}");
}

/// Distance levels (issue 13): percentages or decimals, outermost first, with their own
/// hysteresis (1 % by default); a level out of (0, 1), a wrong order and an unreadable fraction
/// are each reported on their key.
#[test]
fn distance_levels() {
    let with = |lines: &str| {
        MIN.replace(
            "instruments = [\"presets.toml\"]",
            &format!("instruments = [\"presets.toml\"]\n{lines}"),
        )
    };
    let c = ok(&with("warn_within_shock = [\"10%\", \"0.05\"]"));
    assert_eq!(
        c.engine.thresholds.warn_within_shock,
        vec![dec!(0.1), dec!(0.05)]
    );
    assert_eq!(c.engine.thresholds.shock_hysteresis, dec!(0.01));
    let c = ok(&with(
        "warn_within_shock = [\"7.5 %\"]\nshock_hysteresis = \"0.5%\"",
    ));
    assert_eq!(c.engine.thresholds.warn_within_shock, vec![dec!(0.075)]);
    assert_eq!(c.engine.thresholds.shock_hysteresis, dec!(0.005));
    assert!(ok(MIN).engine.thresholds.warn_within_shock.is_empty());
    for (lines, key) in [
        (
            "warn_within_shock = [\"5%\", \"10%\"]",
            "engine.warn_within_shock",
        ),
        ("warn_within_shock = [\"100%\"]", "engine.warn_within_shock"),
        (
            "warn_within_shock = [\"ten\"]",
            "engine.warn_within_shock[0]",
        ),
        ("shock_hysteresis = \"-1%\"", "engine.shock_hysteresis"),
    ] {
        let p = problems(&with(lines));
        assert_eq!(p.len(), 1, "{lines}: {p:?}");
        assert_eq!(p[0].key, key, "{lines}: {p:?}");
        assert_eq!(p[0].line, 4, "{lines}: {p:?}");
    }
}

/// `[risk]` schedule keys (issue 13 part 3): `recorded` is kept as named, the defaults are 5m /
/// 5m / 30d / no levels / 1 %, levels parse from percentages, and bad values are problems on
/// their own keys.
#[test]
fn risk_schedule_keys() {
    let c = ok(&format!(
        "{MIN}\n[risk]\nhistory = [\"recorded\"]\nevery = \"1m\"\nwarn_p_liquidation = [\"20%\", \"5%\"]\nwarn_es_to_equity = [\"0.5\"]\n"
    ));
    let r = c.risk.unwrap();
    assert_eq!(r.history, ["recorded"]);
    assert_eq!(r.schedule.every, std::time::Duration::from_secs(60));
    assert_eq!(r.schedule.record_every, std::time::Duration::from_secs(300));
    assert_eq!(
        r.schedule.record_keep,
        std::time::Duration::from_secs(30 * 86_400)
    );
    assert_eq!(r.schedule.warn_p_liquidation, [dec!(0.05), dec!(0.2)]);
    assert_eq!(r.schedule.warn_es_to_equity, [dec!(0.5)]);
    assert_eq!(r.schedule.warn_hysteresis, dec!(0.01));
    let p = problems(&format!(
        "{MIN}\n[risk]\nhistory = [\"recorded\"]\nrecord_every = \"often\"\nwarn_es_to_equity = [\"-5%\"]\nwarn_p_liquidation = [\"150%\"]\n"
    ));
    let mut k: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    k.sort();
    assert_eq!(
        k,
        [
            "risk.record_every",
            "risk.warn_es_to_equity",
            "risk.warn_p_liquidation"
        ],
        "{p:?}"
    );
    let p = problems(&format!(
        "{MIN}\n[risk]\nhistory = [\"recorded\"]\nwarn_at = 1\n"
    ));
    assert!(!p.is_empty(), "unknown keys are errors");
}

/// Funding (issue 15 part 3): `warn_before_funding` and `apply_funding` (per source: `[accounts]`,
/// `[accounts.nats]`) are off by default,
/// read when given ("0s" is off), and a bad duration names its key.
#[test]
fn funding_keys() {
    let c = ok(MIN);
    assert_eq!(c.engine.warn_before_funding, None);
    assert!(!c.accounts.apply_funding);
    let text = MIN.replace(
        "instruments = [\"presets.toml\"]",
        "instruments = [\"presets.toml\"]\nwarn_before_funding = \"10m\"",
    ) + "\n[accounts]\napply_funding = true\n";
    let c = ok(&text);
    assert_eq!(c.engine.warn_before_funding, Some(Duration::from_secs(600)));
    assert!(c.accounts.apply_funding);
    assert!(
        !c.accounts.apply_funding_nats,
        "each source has its own switch"
    );
    let c = ok(&format!(
        "{MIN}\n[accounts.nats]\nurl = \"nats://127.0.0.1:4222\"\napply_funding = true\n"
    ));
    assert!(c.accounts.apply_funding_nats && !c.accounts.apply_funding);
    let off = MIN.replace(
        "instruments = [\"presets.toml\"]",
        "instruments = [\"presets.toml\"]\nwarn_before_funding = \"0s\"",
    );
    assert_eq!(ok(&off).engine.warn_before_funding, None);
    let bad = MIN.replace(
        "instruments = [\"presets.toml\"]",
        "instruments = [\"presets.toml\"]\nwarn_before_funding = \"soon\"",
    );
    let p = problems(&bad);
    assert!(
        p.iter()
            .any(|p| p.key.contains("warn_before_funding")
                || p.message.contains("warn_before_funding")),
        "{p:?}"
    );
}
