//! The shared sink contract (`support::sink_contract`) run against the webhook sink and
//! a real signing-verifying HTTP receiver on 127.0.0.1, through the real journal and driver.

use std::time::Duration;

use liqwatch::model::RiskEvent;
use liqwatch::sinks::Sink;
use liqwatch::sinks::webhook::{Secret, WebhookConfig, WebhookSink};
use uuid::Uuid;

use crate::support::sink_contract::{SinkFixture, contract_tests};
use crate::support::webhook_receiver::Receiver;

const SECRET: &[u8] = b"contract-secret";

struct WebhookFixture {
    rx: Receiver,
    concurrency: usize,
}

impl WebhookFixture {
    async fn start(concurrency: usize) -> Self {
        WebhookFixture {
            rx: Receiver::start(Some(SECRET)).await,
            concurrency,
        }
    }
}

impl SinkFixture for WebhookFixture {
    async fn make_sink(&mut self, name: &str) -> Box<dyn Sink> {
        let mut cfg = WebhookConfig::generic(self.rx.url.clone());
        cfg.timeout = Duration::from_secs(5);
        cfg.concurrency = self.concurrency;
        let mut settings = cfg.resolve(&|_| None).unwrap();
        settings.secret = Some(Secret::new(String::from_utf8_lossy(SECRET)));
        Box::new(WebhookSink::new(name, settings).unwrap())
    }

    async fn received(&mut self) -> Vec<Uuid> {
        self.rx
            .accepted()
            .iter()
            .map(|r| r.json()["event_id"].as_str().unwrap().parse().unwrap())
            .collect()
    }

    async fn fail(&mut self) {
        self.rx.set_failing(true);
    }

    async fn heal(&mut self) {
        self.rx.set_failing(false);
    }

    fn poison(&mut self, event: &mut RiskEvent) {
        self.rx.poison(&event.event_id.to_string());
    }
}

contract_tests!(webhook_sequential, WebhookFixture::start(1).await);
