//! Starts a real `nats-server -js` for a test: on a random loopback port with a temporary store,
//! killed when dropped. Falls back to `LIQWATCH_NATS_URL`; without either it returns `None` with
//! a printed skip reason, except that `LIQWATCH_REQUIRE_NATS=1` (set by CI) makes it panic.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running JetStream server (owned, or external via `LIQWATCH_NATS_URL`).
pub struct NatsServer {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    child: Option<Child>,
    _store: Option<tempfile::TempDir>,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
}

/// Starts (or finds) a JetStream server, or explains why the test is skipped.
pub fn start(test: &str) -> Option<NatsServer> {
    if on_path("nats-server") {
        return Some(spawn());
    }
    if let Ok(url) = std::env::var("LIQWATCH_NATS_URL") {
        return Some(NatsServer {
            url,
            child: None,
            _store: None,
        });
    }
    let reason = format!(
        "{test}: SKIPPED: nats-server is not on PATH and LIQWATCH_NATS_URL is not set (apt-get install nats-server)"
    );
    if std::env::var("LIQWATCH_REQUIRE_NATS").as_deref() == Ok("1") {
        panic!("{reason}; LIQWATCH_REQUIRE_NATS=1 forbids skipping");
    }
    eprintln!("{reason}");
    None
}

fn spawn() -> NatsServer {
    let store = tempfile::tempdir().unwrap();
    let mut child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
        .arg(store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning nats-server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Drain the log for the whole life of the server so it never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut port = None;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                port = rest.trim().rsplit(':').next().map(str::to_string);
            }
            if line.contains("Server is ready") {
                if let Some(p) = port.take() {
                    let _ = tx.send(p);
                }
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("nats-server did not become ready");
    NatsServer {
        url: format!("nats://127.0.0.1:{port}"),
        child: Some(child),
        _store: Some(store),
    }
}
