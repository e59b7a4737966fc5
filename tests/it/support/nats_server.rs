//! A real `nats-server -js` for tests.
//!
//! [`NatsServer::start`] runs `nats-server -js -a 127.0.0.1 -p -1 --ports_file_dir <dir> -sd
//! <tempdir>`: the server picks a free port itself and writes it to its ports file, so no other
//! test can take the port between choosing and binding it. It then waits until JetStream
//! answers. [`NatsServer::stop`] kills it and [`NatsServer::restart`] starts it again on the
//! port it reported and the same store (a restart must come back where clients reconnect).
//! Without `nats-server` (Debian package `nats-server`) the test fails, saying so.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::tools;

/// A NATS server for one test.
pub struct NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    bin: PathBuf,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until a JetStream request succeeds at `url`, or panics after `within`.
pub async fn wait_ready(url: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let ok = async {
            let c = tokio::time::timeout(Duration::from_secs(1), async_nats::connect(url))
                .await
                .ok()?
                .ok()?;
            // A raw `$JS.API.INFO` request: works with any server version (the typed account
            // query fails to parse older servers' replies).
            let reply = tokio::time::timeout(
                Duration::from_secs(1),
                c.request("$JS.API.INFO", bytes::Bytes::new()),
            )
            .await
            .ok()?
            .ok()?;
            let text = String::from_utf8_lossy(&reply.payload).into_owned();
            (text.contains("account_info_response") && !text.contains("\"error\"")).then_some(())
        }
        .await;
        if ok.is_some() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nats-server at {url} not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `nats-server -js -a 127.0.0.1 -p <port> -sd <store>` with extra arguments.
fn spawn(bin: &Path, port: &str, store: &Path, extra: &[&OsStr]) -> Child {
    Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", port, "-sd"])
        .arg(store)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nats-server")
}

/// Starts `nats-server -js` on a port it picks itself (`-p -1`) and returns the child and that
/// port, read from the ports file it writes into `ports_dir` once it listens. Panics if the
/// server exits or writes no ports file within `within`.
pub async fn spawn_on_free_port(
    bin: &Path,
    store: &Path,
    ports_dir: &Path,
    within: Duration,
) -> (Child, u16) {
    std::fs::create_dir_all(ports_dir).unwrap();
    let mut child = spawn(
        bin,
        "-1",
        store,
        &[OsStr::new("--ports_file_dir"), ports_dir.as_os_str()],
    );
    // `<executable name>_<pid>.ports`: `{"nats":["nats://127.0.0.1:PORT"], …}`.
    let file = ports_dir.join(format!(
        "{}_{}.ports",
        bin.file_name().unwrap().to_string_lossy(),
        child.id()
    ));
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let port = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| {
                let url = v["nats"][0].as_str()?.to_string();
                url.rsplit(':').next()?.parse::<u16>().ok()
            });
        if let Some(port) = port {
            return (child, port);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "nats-server exited ({status}) before writing {}",
                file.display()
            );
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "nats-server wrote no ports file {} within {within:?}",
                file.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl NatsServer {
    /// Starts a local server on a port it picks, with a fresh store, and waits until it is
    /// ready; panics when `nats-server` is not installed.
    pub async fn start() -> NatsServer {
        let bin = tools::require("nats-server", "nats-server");
        let store = tempfile::tempdir().unwrap();
        let (child, port) = spawn_on_free_port(
            &bin,
            store.path(),
            &store.path().join("ports"),
            Duration::from_secs(15),
        )
        .await;
        let s = NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            bin,
            store,
            child: Some(child),
        };
        wait_ready(&s.url, Duration::from_secs(15)).await;
        s
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server (the store stays).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the port it reported at the first start and the same store,
    /// and waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(
            &self.bin,
            &self.port.to_string(),
            self.store.path(),
            &[],
        ));
        wait_ready(&self.url, Duration::from_secs(15)).await;
    }
}
