//! Venue-side subscription behaviour for the mock venues: refusing a symbol's subscription a
//! set number of times ([`MockConfig::refuse`]), publishing prices only for what a connection
//! has subscribed ([`MockVenue::set_price`]), and the Binance protocol hook
//! ([`MockConfig::binance`]) built on them. The OKX hook (in `mock_venue`) uses them too.
//!
//! ```ignore
//! let venue = MockVenue::start(MockConfig::binance().refuse("XRPUSDT", 4), vec![]).await;
//! venue.set_price("BTCUSDT", "60000.5"); // pushed every 50 ms to connections subscribed to it
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::mock_venue::{Act, MockConfig, MockVenue, Protocol};

/// How often subscribed prices are pushed.
pub const PRICE_EVERY: Duration = Duration::from_millis(50);

/// State shared by every connection of one mock venue (clones share it).
#[derive(Clone, Debug, Default)]
pub struct VenueSubs {
    /// Symbol → how many more subscribe requests naming it are refused.
    refuse: Arc<Mutex<HashMap<String, usize>>>,
    /// Symbol → the price pushed to connections subscribed to it.
    prices: Arc<Mutex<HashMap<String, String>>>,
    /// Every subscribe request seen, by symbol (all connections).
    requests: Arc<Mutex<HashMap<String, usize>>>,
}

impl VenueSubs {
    /// Whether a request for `symbols` is refused now; a refusal uses up one refusal of each
    /// refused symbol it names.
    pub fn take_refusal(&self, symbols: &[String]) -> bool {
        {
            let mut req = self.requests.lock();
            for s in symbols {
                *req.entry(s.clone()).or_default() += 1;
            }
        }
        let mut refuse = self.refuse.lock();
        let mut refused = false;
        for s in symbols {
            if let Some(n) = refuse.get_mut(s)
                && *n > 0
            {
                *n -= 1;
                refused = true;
            }
        }
        refused
    }

    /// The price set for `symbol`, if any.
    pub fn price(&self, symbol: &str) -> Option<String> {
        self.prices.lock().get(symbol).cloned()
    }
}

impl MockConfig {
    /// Binance USD-M: acks `SUBSCRIBE` (unknown symbols too, as Binance does), refuses a request
    /// naming a [refused](MockConfig::refuse) symbol with code 4 "Too many subscriptions", and
    /// pushes the [set prices](MockVenue::set_price) of subscribed symbols every 50 ms as
    /// combined-stream `markPriceUpdate` frames.
    pub fn binance() -> MockConfig {
        MockConfig {
            protocol: Some(|cfg| {
                Box::new(Binance {
                    subs: cfg.subs.clone(),
                    subscribed: BTreeSet::new(),
                })
            }),
            server_ping: Some((Duration::from_millis(50), Duration::from_millis(400))),
            ..MockConfig::default()
        }
    }

    /// Refuses the next `times` subscribe requests naming `symbol` (whatever else they name).
    pub fn refuse(self, symbol: &str, times: usize) -> MockConfig {
        self.subs.refuse.lock().insert(symbol.to_string(), times);
        self
    }
}

impl MockVenue {
    /// Sets the price pushed every 50 ms to the connections subscribed to `symbol`.
    pub fn set_price(&self, symbol: &str, price: &str) {
        self.config()
            .subs
            .prices
            .lock()
            .insert(symbol.to_string(), price.to_string());
    }

    /// Subscribe requests naming `symbol` so far, over every connection.
    pub fn subscribe_requests(&self, symbol: &str) -> usize {
        self.config()
            .subs
            .requests
            .lock()
            .get(symbol)
            .copied()
            .unwrap_or(0)
    }

    /// Sets how many more subscribe requests naming `symbol` are refused (0: none).
    pub fn set_refusals(&self, symbol: &str, times: usize) {
        self.config()
            .subs
            .refuse
            .lock()
            .insert(symbol.to_string(), times);
    }

    /// Refusals of `symbol` still to come.
    pub fn refusals_left(&self, symbol: &str) -> usize {
        self.config()
            .subs
            .refuse
            .lock()
            .get(symbol)
            .copied()
            .unwrap_or(0)
    }
}

struct Binance {
    subs: VenueSubs,
    subscribed: BTreeSet<String>,
}

impl Protocol for Binance {
    fn on_text(&mut self, text: &str) -> Vec<Act> {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return vec![Act::Send(
                r#"{"error":{"code":3,"msg":"Invalid JSON: expected value at line 1 column 1"},"id":null}"#.into(),
            )];
        };
        let id = v["id"].clone();
        if v["method"].as_str() != Some("SUBSCRIBE") {
            return vec![Act::Send(
                serde_json::json!({"error":{"code":2,"msg":"Invalid request: unknown method"},"id":id}).to_string(),
            )];
        }
        let symbols: Vec<String> = v["params"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.as_str())
            .map(|s| s.split('@').next().unwrap_or_default().to_ascii_uppercase())
            .collect();
        if self.subs.take_refusal(&symbols) {
            return vec![Act::Send(
                serde_json::json!({"error":{"code":4,"msg":"Too many subscriptions"},"id":id})
                    .to_string(),
            )];
        }
        self.subscribed.extend(symbols);
        vec![Act::Send(
            serde_json::json!({"result": null, "id": id}).to_string(),
        )]
    }

    fn timer(&self) -> Option<Duration> {
        Some(PRICE_EVERY)
    }

    fn on_timer(&mut self) -> Vec<Act> {
        self.subscribed
            .iter()
            .filter_map(|s| self.subs.price(s).map(|p| Act::Send(binance_price(s, &p))))
            .collect()
    }
}

/// A combined-stream Binance `markPriceUpdate` frame (mark and index at `price`).
pub fn binance_price(symbol: &str, price: &str) -> String {
    let e = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        r#"{{"stream":"{}@markPrice@1s","data":{{"e":"markPriceUpdate","E":{e},"s":"{symbol}","p":"{price}","i":"{price}","r":"0.0001","T":1788940800000}}}}"#,
        symbol.to_ascii_lowercase()
    )
}
