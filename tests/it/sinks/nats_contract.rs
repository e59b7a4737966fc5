//! The shared sink contract (`support::sink_contract`) run against the NATS sink and a
//! real `nats-server -js` (stopped to fail, restarted on the same store to heal), through the
//! real journal and driver.

use std::time::Duration;

use liqwatch::model::{InstrumentId, PriceUsed, RiskEvent};
use liqwatch::sinks::Sink;
use liqwatch::sinks::nats::{NatsConfig, NatsSink, StreamConfig};
use uuid::Uuid;

use crate::support::nats_server::NatsServer;
use crate::support::sink_contract::{SinkFixture, contract_tests};

struct NatsFixture {
    server: NatsServer,
    prefix: String,
    stream: String,
}

impl NatsFixture {
    async fn start() -> Self {
        let server = NatsServer::start().await;
        let tag = Uuid::now_v7().simple().to_string();
        NatsFixture {
            server,
            prefix: format!("lwcontract{tag}"),
            stream: format!("LWCONTRACT_{tag}"),
        }
    }
}

impl SinkFixture for NatsFixture {
    async fn make_sink(&mut self, name: &str) -> Box<dyn Sink> {
        let mut cfg = NatsConfig::new(self.server.url.clone());
        cfg.subject = format!("{}.{{kind}}", self.prefix);
        cfg.timeout = Duration::from_millis(500);
        cfg.stream = Some(StreamConfig {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            duplicate_window: Duration::from_secs(120),
            create: true,
        });
        Box::new(NatsSink::new(name, cfg.resolve(&|_| None).unwrap()))
    }

    async fn received(&mut self) -> Vec<Uuid> {
        let Ok(Ok(client)) = tokio::time::timeout(
            Duration::from_secs(2),
            async_nats::connect(&self.server.url),
        )
        .await
        else {
            return Vec::new();
        };
        let js = async_nats::jetstream::new(client);
        let Ok(mut stream) = js.get_stream(&self.stream).await else {
            return Vec::new();
        };
        let n = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
        let mut out = Vec::new();
        for seq in 1..=n {
            let m = stream.get_raw_message(seq).await.unwrap();
            let id = m.headers.get("Nats-Msg-Id").unwrap().as_str();
            out.push(id.parse().unwrap());
        }
        out
    }

    async fn fail(&mut self) {
        self.server.stop();
    }

    async fn heal(&mut self) {
        self.server.restart().await;
    }

    /// Bloats the event past the server's 1 MiB max_payload: a permanent publish error.
    fn poison(&mut self, event: &mut RiskEvent) {
        for i in 0..9000 {
            event.prices.push(PriceUsed {
                instrument: InstrumentId::from(format!("PADDING{i}USDT-PERP")),
                price: "1.2345".parse().unwrap(),
                source: "binance-usdm".into(),
                received_ts: 0,
                age_ms: 0,
                stale: false,
            });
        }
    }
}

contract_tests!(nats, NatsFixture::start().await);
