//! Unit tests of the price board: composite, staleness clocks, sanity holds.

use super::*;
use rust_decimal_macros::dec;

fn tick(inst: &str, venue: Venue, price: Decimal) -> PriceTick {
    PriceTick {
        instrument: InstrumentId::from(inst),
        venue,
        price,
        index: None,
        exchange_ts: None,
        received_ts: 1_000,
    }
}

fn board(mode: CompositeMode) -> PriceBoard {
    PriceBoard::new(PriceBoardConfig {
        composite: mode,
        stale_after: Duration::from_secs(10),
        spike_fraction: dec!(0.1),
        ..PriceBoardConfig::default()
    })
}

const B: Venue = Venue::BinanceUsdm;
const Y: Venue = Venue::BybitLinear;
const O: Venue = Venue::Okx;

/// The median of fresh venues is the composite; an even count averages the middle two.
#[tokio::test(start_paused = true)]
async fn median_of_fresh_venues() {
    let b = board(CompositeMode::Median);
    let id = InstrumentId::from("BTCUSDT-PERP");
    b.publish(tick("BTCUSDT-PERP", B, dec!(100)));
    b.publish(tick("BTCUSDT-PERP", Y, dec!(102)));
    let c = b.composite(&id).unwrap();
    assert_eq!(c.price, dec!(101));
    assert_eq!(c.source, "median(binance-usdm,bybit-linear)");
    b.publish(tick("BTCUSDT-PERP", O, dec!(101.5)));
    assert_eq!(b.composite(&id).unwrap().price, dec!(101.5));
    // Binance goes stale (per-venue clock): only the two others count.
    tokio::time::advance(Duration::from_secs(6)).await;
    b.publish(tick("BTCUSDT-PERP", Y, dec!(103)));
    b.publish(tick("BTCUSDT-PERP", O, dec!(104)));
    tokio::time::advance(Duration::from_secs(5)).await;
    let c = b.composite(&id).unwrap();
    assert_eq!(c.price, dec!(103.5));
    assert_eq!(c.source, "median(bybit-linear,okx)");
    assert!(!c.stale);
    assert_eq!(c.age_ms, 5_000);
}

/// Venue mode uses the chosen venue while fresh and falls back to the others' median.
#[tokio::test(start_paused = true)]
async fn chosen_venue_with_fallback() {
    let b = board(CompositeMode::Venue(Y));
    let id = InstrumentId::from("X");
    b.publish(tick("X", B, dec!(100)));
    b.publish(tick("X", Y, dec!(101)));
    assert_eq!(b.composite(&id).unwrap().price, dec!(101));
    assert_eq!(b.composite(&id).unwrap().source, "bybit-linear");
    tokio::time::advance(Duration::from_secs(8)).await;
    b.publish(tick("X", B, dec!(100.5)));
    tokio::time::advance(Duration::from_secs(3)).await;
    let c = b.composite(&id).unwrap();
    assert_eq!((c.price, c.source.as_str()), (dec!(100.5), "binance-usdm"));
}

/// Zero and negative prices are rejected; the last good price stays.
#[tokio::test(start_paused = true)]
async fn non_positive_rejected() {
    let b = board(CompositeMode::Median);
    let id = InstrumentId::from("X");
    assert_eq!(b.publish(tick("X", B, dec!(100))), PublishOutcome::Accepted);
    assert_eq!(b.publish(tick("X", B, dec!(0))), PublishOutcome::Rejected);
    assert_eq!(b.publish(tick("X", B, dec!(0))), PublishOutcome::Rejected);
    assert_eq!(b.publish(tick("X", B, dec!(-5))), PublishOutcome::Rejected);
    assert_eq!(b.composite(&id).unwrap().price, dec!(100));
}

/// A jump beyond the fraction is held; a second tick near it confirms; a blip is discarded.
#[tokio::test(start_paused = true)]
async fn spike_held_until_second_tick() {
    let b = board(CompositeMode::Median);
    let id = InstrumentId::from("X");
    b.publish(tick("X", B, dec!(100)));
    assert_eq!(b.publish(tick("X", B, dec!(150))), PublishOutcome::Held);
    assert_eq!(b.composite(&id).unwrap().price, dec!(100));
    assert_eq!(b.status()[0].sources[0].held_price, Some(dec!(150)));
    // Blip back to normal: accepted, held discarded.
    assert_eq!(b.publish(tick("X", B, dec!(101))), PublishOutcome::Accepted);
    assert_eq!(b.status()[0].sources[0].held_price, None);
    assert_eq!(b.publish(tick("X", B, dec!(150))), PublishOutcome::Held);
    assert_eq!(
        b.publish(tick("X", B, dec!(149))),
        PublishOutcome::Confirmed
    );
    assert_eq!(b.composite(&id).unwrap().price, dec!(149));
    // Exactly at the fraction is not a jump.
    assert_eq!(
        b.publish(tick("X", B, dec!(163.9))),
        PublishOutcome::Accepted
    );
}

/// A held spike is confirmed by a second venue reporting a nearby price.
#[tokio::test(start_paused = true)]
async fn spike_confirmed_by_second_venue() {
    let b = board(CompositeMode::Median);
    let id = InstrumentId::from("X");
    b.publish(tick("X", B, dec!(100)));
    b.publish(tick("X", Y, dec!(100)));
    assert_eq!(b.publish(tick("X", B, dec!(70))), PublishOutcome::Held);
    assert_eq!(b.publish(tick("X", Y, dec!(71))), PublishOutcome::Confirmed);
    let st = &b.status()[0];
    assert_eq!(st.sources[0].last_price, Some(dec!(70)));
    assert_eq!(st.sources[1].last_price, Some(dec!(71)));
    assert_eq!(b.composite(&id).unwrap().price, dec!(70.5));
}

/// Stale after `stale_after` with no price, restored when a price returns, each reported once.
#[tokio::test(start_paused = true)]
async fn stale_and_restored_once() {
    let b = board(CompositeMode::Median);
    let id = InstrumentId::from("X");
    b.track(&id, &[B]);
    assert!(b.check_staleness(Instant::now()).is_empty());
    tokio::time::advance(Duration::from_secs(11)).await;
    let t = b.check_staleness(Instant::now());
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].kind, EventKind::FeedStale);
    assert_eq!(t[0].info.last_price, None);
    assert!(b.check_staleness(Instant::now()).is_empty());
    b.publish(tick("X", B, dec!(100)));
    let t = b.check_staleness(Instant::now());
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].kind, EventKind::FeedRestored);
    assert_eq!(t[0].seq, 2);
    assert_eq!(t[0].info.last_price, Some(dec!(100)));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(b.check_staleness(Instant::now()).is_empty());
    tokio::time::advance(Duration::from_millis(1)).await;
    let t = b.check_staleness(Instant::now());
    assert_eq!(t[0].kind, EventKind::FeedStale);
    assert_eq!(t[0].info.age_ms, Some(10_001));
    let ev = t[0].to_event(5);
    assert_eq!(ev.kind, EventKind::FeedStale);
    assert!(ev.stale_prices);
    assert!(b.composite(&id).unwrap().stale);
}

/// The engine drains only changed instruments, latest value wins, and unchanged prices
/// do not wake it.
#[tokio::test(start_paused = true)]
async fn changed_is_latest_value_wins() {
    let b = board(CompositeMode::Median);
    for p in [dec!(100), dec!(101), dec!(102)] {
        b.publish(tick("X", B, p));
    }
    b.publish(tick("Y", B, dec!(5)));
    let mut got = b.changed().await;
    got.sort_by(|a, c| a.0.cmp(&c.0));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1.price, dec!(102));
    assert_eq!(got[1].1.price, dec!(5));
    b.publish(tick("X", B, dec!(102)));
    assert!(b.take_changed().is_empty());
}

/// Ticks going back in exchange time are dropped.
#[tokio::test(start_paused = true)]
async fn out_of_order_dropped() {
    let b = board(CompositeMode::Median);
    let mut t = tick("X", B, dec!(100));
    t.exchange_ts = Some(10);
    b.publish(t.clone());
    t.exchange_ts = Some(9);
    t.price = dec!(101);
    assert_eq!(b.publish(t), PublishOutcome::OutOfOrder);
    assert_eq!(
        b.composite(&InstrumentId::from("X")).unwrap().price,
        dec!(100)
    );
}

/// Limits: the venue limit applies per source, the instrument override wins over it.
#[tokio::test(start_paused = true)]
async fn limit_precedence() {
    let mut cfg = PriceBoardConfig {
        stale_after: Duration::from_secs(10),
        ..PriceBoardConfig::default()
    };
    cfg.venue_stale_after
        .insert(O, humantime_serde::Serde::from(Duration::from_secs(60)));
    cfg.instrument_stale_after.insert(
        InstrumentId::from("FAST"),
        humantime_serde::Serde::from(Duration::from_secs(2)),
    );
    let b = PriceBoard::new(cfg);
    b.publish(tick("X", O, dec!(1)));
    b.publish(tick("FAST", O, dec!(1)));
    tokio::time::advance(Duration::from_secs(30)).await;
    let t = b.check_staleness(Instant::now());
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].info.instrument, InstrumentId::from("FAST"));
    assert_eq!(t[0].info.stale_after_ms, 2_000);
    assert!(!b.composite(&InstrumentId::from("X")).unwrap().stale);
    tokio::time::advance(Duration::from_secs(31)).await;
    let t = b.check_staleness(Instant::now());
    assert_eq!(t[0].info.instrument, InstrumentId::from("X"));
    assert_eq!(t[0].info.stale_after_ms, 60_000);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

    /// Over any sequence of ticks: non-positive prices are always rejected, the composite is
    /// always positive and lies within the accepted prices of the venues, and a lone spike
    /// from one venue never moves the composite by itself.
    #[test]
    fn board_invariants(ticks in proptest::collection::vec((0usize..3, -2i64..400), 1..60)) {
        let b = board(CompositeMode::Median);
        let venues = [B, Y, O];
        let id = InstrumentId::from("X");
        let mut last_accepted: [Option<Decimal>; 3] = [None; 3];
        for (v, p) in ticks {
            let price = Decimal::new(p, 0);
            let before = b.composite(&id).map(|c| c.price);
            let out = b.publish(tick("X", venues[v], price));
            if p <= 0 {
                proptest::prop_assert_eq!(out, PublishOutcome::Rejected);
            }
            if out == PublishOutcome::Held {
                proptest::prop_assert_eq!(b.composite(&id).map(|c| c.price), before);
            }
            for s in b.status().iter().flat_map(|st| st.sources.iter()) {
                let k = venues.iter().position(|x| *x == s.venue).unwrap();
                last_accepted[k] = s.last_price;
            }
            if let Some(c) = b.composite(&id) {
                proptest::prop_assert!(c.price > Decimal::ZERO);
                let acc: Vec<Decimal> = last_accepted.iter().flatten().copied().collect();
                let lo = acc.iter().min().copied().unwrap();
                let hi = acc.iter().max().copied().unwrap();
                proptest::prop_assert!(c.price >= lo && c.price <= hi);
            }
        }
    }
}

/// Config parses from TOML with durations, venue names and string decimals.
#[test]
fn config_from_toml() {
    let c: PriceBoardConfig = toml::from_str(
        r#"
composite = "okx"
stale_after = "15s"
spike_fraction = "0.05"
instrument_stale_after = { "BTCUSDT-PERP" = "5s" }
venue_stale_after = { okx = "20s" }
"#,
    )
    .unwrap();
    assert_eq!(c.composite, CompositeMode::Venue(Venue::Okx));
    assert_eq!(c.stale_after, Duration::from_secs(15));
    assert_eq!(c.spike_fraction, dec!(0.05));
    assert_eq!(
        *c.instrument_stale_after[&InstrumentId::from("BTCUSDT-PERP")],
        Duration::from_secs(5)
    );
    assert!(toml::from_str::<PriceBoardConfig>("composite = \"nyse\"").is_err());
    assert!(toml::from_str::<PriceBoardConfig>("stal_after = \"1s\"").is_err());
}

fn spike_board(cfg: PriceBoardConfig) -> PriceBoard {
    PriceBoard::new(PriceBoardConfig {
        stale_after: Duration::from_secs(600),
        spike_fraction: dec!(0.2),
        ..cfg
    })
}

/// Issue 12 item 4: the instrument's spike fraction wins over the venue's, which wins over the
/// global one: a −51 % wick is accepted at once where the band is wide, held where it is not.
#[tokio::test(start_paused = true)]
async fn spike_fraction_precedence() {
    let mut cfg = PriceBoardConfig::default();
    cfg.instrument_spike_fraction
        .insert(InstrumentId::from("ALT"), Fraction(dec!(0.8)));
    cfg.instrument_spike_fraction
        .insert(InstrumentId::from("ALT2"), Fraction(dec!(0.8)));
    cfg.venue_spike_fraction.insert(O, Fraction(dec!(0.6)));
    cfg.venue_spike_fraction.insert(Y, Fraction(dec!(0.3)));
    let b = spike_board(cfg);
    for (inst, venue, want) in [
        // Instrument 0.8 beats OKX's 0.6 and Bybit's 0.3.
        ("ALT", O, PublishOutcome::Accepted),
        ("ALT2", Y, PublishOutcome::Accepted),
        // OKX's 0.6 beats the global 0.2.
        ("BTC", O, PublishOutcome::Accepted),
        // Bybit's 0.3 and the global 0.2 hold it.
        ("ETH", Y, PublishOutcome::Held),
        ("SOL", B, PublishOutcome::Held),
    ] {
        assert_eq!(
            b.publish(tick(inst, venue, dec!(100))),
            PublishOutcome::Accepted
        );
        assert_eq!(
            b.publish(tick(inst, venue, dec!(49))),
            want,
            "{inst} {venue}"
        );
    }
}

/// Issue 12 item 4: with `spike_confirm_frames = 3` a held price needs two more ticks near it;
/// a tick elsewhere starts the count again; a tick back near the old price discards it.
#[tokio::test(start_paused = true)]
async fn held_price_accepted_after_n_frames() {
    let b = spike_board(PriceBoardConfig {
        spike_confirm_frames: 3,
        ..PriceBoardConfig::default()
    });
    let id = InstrumentId::from("X");
    let price = |b: &PriceBoard| b.composite(&id).unwrap().price;
    assert_eq!(b.publish(tick("X", B, dec!(100))), PublishOutcome::Accepted);
    assert_eq!(b.publish(tick("X", B, dec!(50))), PublishOutcome::Held);
    assert_eq!(b.publish(tick("X", B, dec!(51))), PublishOutcome::Held);
    assert_eq!(price(&b), dec!(100));
    assert_eq!(
        b.publish(tick("X", B, dec!(50.5))),
        PublishOutcome::Confirmed
    );
    assert_eq!(price(&b), dec!(50.5));
    // A new jump; one tick elsewhere restarts the count; back near the reference discards it.
    assert_eq!(b.publish(tick("X", B, dec!(200))), PublishOutcome::Held);
    assert_eq!(b.publish(tick("X", B, dec!(400))), PublishOutcome::Held);
    assert_eq!(b.publish(tick("X", B, dec!(400))), PublishOutcome::Held);
    assert_eq!(b.publish(tick("X", B, dec!(51))), PublishOutcome::Accepted);
    assert_eq!(b.publish(tick("X", B, dec!(400))), PublishOutcome::Held);
    assert_eq!(price(&b), dec!(51));
    // 1 frame: no holding at all.
    let b = spike_board(PriceBoardConfig {
        spike_confirm_frames: 1,
        ..PriceBoardConfig::default()
    });
    b.publish(tick("X", B, dec!(100)));
    assert_eq!(b.publish(tick("X", B, dec!(28))), PublishOutcome::Confirmed);
}

/// Issue 12 item 4: with `spike_confirm_after`, a held price the venue still quotes that long
/// after the jump is accepted even before the frame count is reached.
#[tokio::test(start_paused = true)]
async fn held_price_accepted_after_persisting() {
    let b = spike_board(PriceBoardConfig {
        spike_confirm_frames: 100,
        spike_confirm_after: Some(Duration::from_secs(5)),
        ..PriceBoardConfig::default()
    });
    b.publish(tick("X", B, dec!(100)));
    assert_eq!(b.publish(tick("X", B, dec!(30))), PublishOutcome::Held);
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(b.publish(tick("X", B, dec!(30))), PublishOutcome::Held);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(b.publish(tick("X", B, dec!(31))), PublishOutcome::Confirmed);
    assert_eq!(
        b.composite(&InstrumentId::from("X")).unwrap().price,
        dec!(31)
    );
}

/// The spike knobs parse from TOML as string decimals; bad values are reported.
#[test]
fn spike_config_from_toml() {
    let c: PriceBoardConfig = toml::from_str(
        r#"
instrument_spike_fraction = { "DOGEUSDT-PERP" = "0.8" }
venue_spike_fraction = { hyperliquid = "0.5" }
spike_confirm_frames = 3
spike_confirm_after = "10s"
"#,
    )
    .unwrap();
    assert_eq!(
        c.instrument_spike_fraction[&InstrumentId::from("DOGEUSDT-PERP")],
        Fraction(dec!(0.8))
    );
    assert_eq!(
        c.venue_spike_fraction[&Venue::Hyperliquid],
        Fraction(dec!(0.5))
    );
    assert_eq!(c.spike_confirm_after, Some(Duration::from_secs(10)));
    assert!(c.spike_problems().is_empty());
    let bad: PriceBoardConfig =
        toml::from_str("venue_spike_fraction = { okx = \"0\" }\nspike_confirm_frames = 0").unwrap();
    let keys: Vec<&str> = bad.spike_problems().iter().map(|p| p.0).collect();
    assert_eq!(keys, vec!["venue_spike_fraction", "spike_confirm_frames"]);
}
