//! A real `nats-server -js` for tests.
//!
//! With `nats-server` on `PATH`: starts `nats-server -js -a 127.0.0.1 -p <free port> -sd <tempdir>`
//! and waits until JetStream answers; [`NatsServer::stop`] kills it and [`NatsServer::restart`]
//! starts it again on the same port and store. Otherwise uses `LIQWATCH_NATS_URL` (which cannot
//! be restarted). With neither, [`NatsServer::start`] prints why and returns `None` — unless
//! `LIQWATCH_REQUIRE_NATS=1` (CI), where it panics so the suite fails instead of skipping.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A NATS server for one test.
pub struct NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    store: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
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
    /// Starts a local server, or uses `LIQWATCH_NATS_URL`, or returns `None` with a reason
    /// printed (panics instead when `LIQWATCH_REQUIRE_NATS=1`).
    pub async fn start() -> Option<NatsServer> {
        if on_path("nats-server") {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut s = NatsServer {
                url: format!("nats://127.0.0.1:{port}"),
                port,
                store: Some(tempfile::tempdir().unwrap()),
                child: None,
            };
            s.spawn().await;
            return Some(s);
        }
        if let Ok(url) = std::env::var("LIQWATCH_NATS_URL") {
            wait_ready(&url, Duration::from_secs(10)).await;
            return Some(NatsServer {
                url,
                port: 0,
                store: None,
                child: None,
            });
        }
        let reason = "SKIPPED: no nats-server on PATH and LIQWATCH_NATS_URL is not set \
                      (install nats-server or point LIQWATCH_NATS_URL at a JetStream server)";
        if std::env::var("LIQWATCH_REQUIRE_NATS").as_deref() == Ok("1") {
            panic!("LIQWATCH_REQUIRE_NATS=1 but {reason}");
        }
        eprintln!("{reason}");
        None
    }

    /// True when this harness owns the server process (so it can stop and restart it).
    pub fn can_restart(&self) -> bool {
        self.store.is_some()
    }

    async fn spawn(&mut self) {
        let store = self.store.as_ref().unwrap().path().to_path_buf();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&store)
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
        assert!(self.can_restart(), "cannot stop an external server");
        self.kill();
    }

    /// Starts the server again on the same port and store and waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(self.can_restart(), "cannot restart an external server");
        self.kill();
        self.spawn().await;
    }
}
