//! A real headless Chromium for page tests, driven over WebDriver: Debian's `chromedriver`
//! (package `chromium-driver`) started on a free loopback port, a fresh profile directory, and a
//! `fantoccini` client. Missing programs fail the test (`tools::require`), they never skip it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use super::tools;

/// Chromium flags for a quiet, reproducible headless run (no network of its own).
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
];

/// A running chromedriver with one browser session. The driver is killed on drop; call
/// [`Browser::close`] first to end the session cleanly.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
    /// The driver's log.
    pub log: PathBuf,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (1280×800), or panics saying what
    /// is missing.
    pub async fn start(log_dir: &Path) -> Browser {
        let driver_bin = tools::require("chromedriver", "chromium-driver");
        let wrapper = tools::require("chromium", "chromium");
        // Debian's /usr/bin/chromium is a shell launcher; hand chromedriver the real binary.
        let real = Path::new("/usr/lib/chromium/chromium");
        let chromium = if real.is_file() {
            real.to_path_buf()
        } else {
            wrapper
        };
        let profile = tempfile::tempdir().unwrap();
        let log = log_dir.join("chromedriver.log");
        let port = free_port();
        // Its own process group: Chromium's processes join it, so dropping the driver kills
        // them too, also when a test panics before it can close the session.
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_bin.display()));
        let url = format!("http://127.0.0.1:{port}");
        let http = super::daemon_env::http_client();
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match http.get(format!("{url}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(
                Instant::now() < end,
                "chromedriver did not become ready on port {port}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": args,
            }
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot open a Chromium session: {e}; chromedriver log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Browser {
            client,
            driver,
            log,
            _profile: profile,
        }
    }

    /// Runs `body` (a function body: `return …;`) in the page and returns its value.
    pub async fn js(&self, body: &str) -> Value {
        self.client
            .execute(body, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{body}"))
    }

    /// Polls `body` until it returns something other than `null`/`false`, or panics after
    /// `deadline` naming `what` and showing the last value.
    pub async fn wait_js(&self, what: &str, deadline: Duration, body: &str) -> Value {
        let end = Instant::now() + deadline;
        loop {
            let v = self.js(body).await;
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "timed out after {deadline:?} waiting for {what}; page text:\n{}",
                self.js("return document.body.innerText;").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element `css` selects, as a user would (WebDriver), retrying until
    /// `deadline` while the element is missing or was replaced between finding and clicking it
    /// (the page re-renders its table on every refresh: a row found just before a refresh is
    /// stale by the click).
    pub async fn click(&self, css: &str, deadline: Duration) {
        self.on_element(css, "click", deadline, async |e| {
            e.click().await.map(|_| ())
        })
        .await;
    }

    /// Types `keys` into the element `css` selects, as a user would (WebDriver focuses it
    /// first), retrying like [`Browser::click`].
    pub async fn press(&self, css: &str, keys: &str, deadline: Duration) {
        self.on_element(css, "type into", deadline, async |e| {
            e.send_keys(keys).await
        })
        .await;
    }

    /// Finds the element `css` selects and runs `action` on it, finding it again until
    /// `deadline` while it is missing or goes stale before the action lands.
    async fn on_element(
        &self,
        css: &str,
        what: &str,
        deadline: Duration,
        action: impl AsyncFn(fantoccini::elements::Element) -> Result<(), fantoccini::error::CmdError>,
    ) {
        let end = Instant::now() + deadline;
        loop {
            let outcome = match self.client.find(fantoccini::Locator::Css(css)).await {
                Ok(element) => action(element).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => return,
                Err(e) => assert!(
                    Instant::now() < end,
                    "could not {what} {css} within {deadline:?}: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG screenshot of the viewport to `path` and returns its bytes.
    pub async fn screenshot(&self, path: &Path) -> Vec<u8> {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        std::fs::write(path, &png).unwrap();
        png
    }

    /// Ends the session (closes Chromium).
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group (chromedriver and the Chromium it started), then the driver itself.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
