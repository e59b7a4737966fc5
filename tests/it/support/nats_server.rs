//! A real `nats-server -js` for tests.
//!
//! [`NatsServer::start`] runs `nats-server -js -a 127.0.0.1 -p <free port> -sd <tempdir>` and
//! waits until JetStream answers; [`NatsServer::stop`] kills it and [`NatsServer::restart`]
//! starts it again on the same port and store. Without `nats-server` (Debian package
//! `nats-server`) the test fails, saying so.

use std::path::PathBuf;
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

impl NatsServer {
    /// Starts a local server on a free port with a fresh store and waits until it is ready;
    /// panics when `nats-server` is not installed.
    pub async fn start() -> NatsServer {
        let bin = tools::require("nats-server", "nats-server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            bin,
            store: tempfile::tempdir().unwrap(),
            child: None,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        wait_ready(&self.url, Duration::from_secs(15)).await;
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

    /// Starts the server again on the same port and store and waits until it is ready.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}
