//! The venue table — the one list of venues — on its own, so that both the types (`model`,
//! which generates the `Venue` enum from it) and the adapters (`feeds`, which generates
//! `feed_for`) can read it without importing each other. Adding a venue: one file in
//! `src/feeds/` and one row here (see "Adding a venue" in `src/feeds/mod.rs`).
//!
//! The adapter paths in the rows (`binance::BinanceUsdm`) are resolved where the table is
//! expanded with them, in `crate::feeds`; `model` drops them.

/// The venue table: one row per venue — its docs, the [`Venue`] variant, its config/wire name
/// and, when an adapter is written, `=> module::Adapter` (constructed with `Adapter::new()`).
/// A venue without an adapter (Bybit inverse) is listed without one, and [`feed_for`] answers
/// [`FeedError::NoAdapter`] for it. The order is [`Venue::ALL`]'s order.
///
/// Invoked as `venues!(generator)`: it hands the rows to `generator!`, a `macro_rules!` of the
/// invoking module (`crate::model` builds the enum, `crate::feeds` the adapter lookup).
macro_rules! venues {
    ($generator:ident) => {
        $generator! {
            /// Binance USD-M futures (`fstream.binance.com/market`).
            BinanceUsdm "binance-usdm" => binance::BinanceUsdm;
            /// Bybit v5 public linear.
            BybitLinear "bybit-linear" => bybit::BybitLinear;
            /// Bybit v5 public inverse (no adapter yet).
            BybitInverse "bybit-inverse";
            /// OKX v5 public.
            Okx "okx" => okx::OkxFeed;
            /// Deribit JSON-RPC v2.
            Deribit "deribit" => deribit::DeribitFeed;
            /// Hyperliquid.
            Hyperliquid "hyperliquid" => hyperliquid::HyperliquidFeed;
        }
    };
}
pub(crate) use venues;
