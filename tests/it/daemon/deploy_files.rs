//! Keeps the deploy files honest: probes hit real API routes, stop timeouts cover the drain grace
//! period, the Kubernetes configs pass the daemon's config validation, and the systemd unit keeps its
//! hardening and passes `systemd-analyze verify`. The alert rules and the metrics table (docs/metrics.md)
//! are checked in `api::metrics_doc`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::tools;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Liveness and readiness probes point at routes the API serves.
#[test]
fn k8s_probes_hit_api_routes() {
    let sts = read("deploy/k8s/statefulset.yaml");
    let routes: BTreeSet<&str> = liqwatch::api::ROUTES.iter().map(|(_, p)| *p).collect();
    let paths: Vec<&str> = sts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("path: "))
        .collect();
    assert!(
        paths.contains(&"/healthz") && paths.contains(&"/readyz"),
        "{paths:?}"
    );
    for p in paths {
        assert!(routes.contains(p), "probe path {p} is not an API route");
    }
    assert!(sts.contains("livenessProbe:") && sts.contains("readinessProbe:"));
    assert!(
        sts.contains("volumeClaimTemplates:"),
        "the journal needs a persistent volume"
    );
}

/// The per-shard config files embedded in the ConfigMap.
fn configmap_configs() -> Vec<(String, String)> {
    let cm = read("deploy/k8s/configmap.yaml");
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in cm.lines() {
        if let Some(name) = line
            .strip_prefix("  ")
            .and_then(|l| l.strip_suffix(".toml: |"))
        {
            if let Some(c) = current.take() {
                out.push(c);
            }
            current = Some((format!("{name}.toml"), String::new()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line.strip_prefix("    ").unwrap_or(line));
            body.push('\n');
        }
    }
    out.extend(current);
    out
}

fn grace_of(config: &str) -> Duration {
    let v: toml::Value = toml::from_str(config).unwrap();
    let grace = v["shutdown"]["grace"].as_str().expect("[shutdown] grace");
    humantime::parse_duration(grace).unwrap()
}

/// systemd's TimeoutStopSec, Kubernetes' terminationGracePeriodSeconds and the Dockerfile's stop
/// timeout leave at least 10 s beyond the drain grace period of every shipped config.
#[test]
fn stop_timeouts_cover_the_drain_grace() {
    let unit = read("deploy/systemd/liqwatch.service");
    let stop: Duration = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .map(|v| humantime::parse_duration(v).unwrap())
        .expect("TimeoutStopSec");
    let sts = read("deploy/k8s/statefulset.yaml");
    let k8s = sts
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
        .map(|v| Duration::from_secs(v.parse().unwrap()))
        .expect("terminationGracePeriodSeconds");
    let docker = read("deploy/Dockerfile");
    let docker = docker
        .split("--stop-timeout ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(|v| Duration::from_secs(v.parse().unwrap()))
        .expect("--stop-timeout in the Dockerfile's run example");
    let mut graces: Vec<(String, Duration)> = configmap_configs()
        .iter()
        .map(|(name, text)| (name.clone(), grace_of(text)))
        .collect();
    if let Ok(example) = std::fs::read_to_string(root().join("deploy/liqwatch.example.toml")) {
        graces.push(("liqwatch.example.toml".into(), grace_of(&example)));
    }
    assert!(!graces.is_empty());
    for (name, grace) in graces {
        let need = grace + Duration::from_secs(10);
        assert!(
            stop >= need,
            "TimeoutStopSec {stop:?} < {name} grace {grace:?} + 10s"
        );
        assert!(
            k8s >= need,
            "terminationGracePeriodSeconds {k8s:?} < {name} grace {grace:?} + 10s"
        );
        assert!(
            docker >= need,
            "docker --stop-timeout {docker:?} < {name} grace {grace:?} + 10s"
        );
    }
}

/// Each shard's config in the ConfigMap passes the daemon's own config validation, binds the API
/// where the probes look, keeps its journal on the persistent volume and consumes its own
/// shard's NATS subject.
#[test]
fn configmap_has_one_valid_config_per_shard() {
    let configs = configmap_configs();
    let sts = read("deploy/k8s/statefulset.yaml");
    let replicas: usize = sts
        .lines()
        .find_map(|l| l.trim().strip_prefix("replicas: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        configs.len(),
        replicas,
        "one config per StatefulSet replica"
    );
    for (i, (name, text)) in configs.iter().enumerate() {
        assert_eq!(name, &format!("liqwatch-{i}.toml"));
        let path = PathBuf::from("/etc/liqwatch").join(name);
        let env = |var: &str| Some(format!("test-value-of-{var}"));
        if let Err(e) = liqwatch::config::parse(text, &path, &env) {
            panic!("{name} is not a valid liqwatch config:\n{e}");
        }
        let v: toml::Value = toml::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v["api"]["bind"].as_str(), Some("0.0.0.0:9477"), "{name}");
        assert!(
            v["journal"]["path"]
                .as_str()
                .unwrap()
                .starts_with("/var/lib/liqwatch/"),
            "{name}"
        );
        assert_eq!(
            v["accounts"]["nats"]["subject"].as_str(),
            Some(format!("liqwatch.accounts.shard-{i}.>").as_str()),
            "{name}"
        );
        assert_eq!(
            v["accounts"]["nats"]["durable"].as_str(),
            Some(format!("liqwatch-shard-{i}").as_str())
        );
        assert_eq!(
            v["accounts"]["nats"]["shard_index"].as_integer(),
            Some(i as i64),
            "{name}"
        );
        assert_eq!(
            v["accounts"]["nats"]["shard_count"].as_integer(),
            Some(replicas as i64),
            "{name}"
        );
        for (key, _) in v.as_table().unwrap() {
            assert!(
                !key.to_lowercase().contains("secret") && !key.to_lowercase().contains("password"),
                "{name}: secrets belong in the Secret"
            );
        }
    }
}

/// The unit keeps the hardening and restart policy docs/operations.md promises (docs/operations.md), and
/// `systemd-analyze verify` accepts it (pointed at the built binary).
#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit = read("deploy/systemd/liqwatch.service");
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=liqwatch",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "EnvironmentFile=/etc/liqwatch/liqwatch.env",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(directive), "unit lacks {directive:?}");
    }
    let systemd_analyze = tools::require("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_liqwatch");
    let patched = unit
        .replace("/usr/local/bin/liqwatch", bin)
        .replace("EnvironmentFile=/", "EnvironmentFile=-/");
    let path = dir.path().join("liqwatch.service");
    std::fs::write(&path, patched).unwrap();
    let out = std::process::Command::new(&systemd_analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    // Verify prints problems of this unit as "liqwatch.service:LINE: …".
    assert!(!stderr.contains("liqwatch.service:"), "{stderr}");
}

/// The shipped unit and image give mimalloc the same purge delay, and the operations guide
/// states that value (a cascade's consecutive steps reuse their pages; docs/operations.md).
#[test]
fn deploy_files_set_one_allocator_purge_delay() {
    let unit = read("deploy/systemd/liqwatch.service");
    let unit_delay = unit
        .lines()
        .find_map(|l| l.strip_prefix("Environment=MIMALLOC_PURGE_DELAY="))
        .expect("Environment=MIMALLOC_PURGE_DELAY= in the systemd unit");
    let docker = read("deploy/Dockerfile");
    let docker_delay = docker
        .lines()
        .find_map(|l| l.strip_prefix("ENV MIMALLOC_PURGE_DELAY="))
        .expect("ENV MIMALLOC_PURGE_DELAY= in the Dockerfile");
    assert_eq!(unit_delay, docker_delay, "unit and image disagree");
    let ms: i64 = unit_delay.parse().expect("milliseconds");
    assert!(
        ms >= 1000,
        "shorter than mimalloc's own default (1 s): {ms}"
    );
    let ops = read("docs/operations.md");
    assert!(
        ops.contains(&format!("`MIMALLOC_PURGE_DELAY={unit_delay}`")),
        "docs/operations.md does not state the shipped value {unit_delay}"
    );
}
