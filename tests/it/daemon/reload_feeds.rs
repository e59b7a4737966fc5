//! Issue 11 item 8, feeds: SIGHUP moves a venue feed to a new `url` live — the old connection
//! closes, the new one subscribes and prices, `/v1/feeds` lists the venue once, and the
//! engine reacts to the new feed's prices — without a restart.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::support::daemon_env::{
    Daemon, MockBinance, binance_config, get_ok, http_client, poll_until, put_one_btc_long,
};

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_moves_a_feed_to_a_new_url() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (MockBinance::start().await, MockBinance::start().await);
    let cfg = binance_config(dir.path(), &a.url, "API_TOKEN");
    Daemon::init_journal(env!("CARGO_BIN_EXE_liqwatch"), &cfg, &[]);
    let mut daemon = Daemon::start(
        env!("CARGO_BIN_EXE_liqwatch"),
        &cfg,
        &[("API_TOKEN", "t")],
        dir.path().join("daemon.log"),
    );
    let api = format!("http://{}", daemon.api_addr(DEADLINE).await);
    let client = http_client();
    poll_until("the daemon to subscribe at A", DEADLINE, || {
        (a.subscribes.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    a.push_mark("BTCUSDT", "50000");
    // 1 BTC long from 50,000 with 400 USDT: ratio 0.5 at 50,000, healthy.
    assert_eq!(put_one_btc_long(&client, &api, "t", "a").await, 200);
    poll_until("the account to be valued healthy", DEADLINE, || {
        let v = futures::executor::block_on(get_ok(&client, format!("{api}/v1/accounts/a")));
        (v["state"] == json!({"state":"healthy"})).then_some(())
    })
    .await;

    // Move the feed to B.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&a.url, &b.url);
    std::fs::write(&cfg, text).unwrap();
    super::reload::hup(&daemon);
    poll_until("the daemon to subscribe at B", DEADLINE, || {
        (b.subscribes.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    poll_until("the connection to A to close", DEADLINE, || {
        (a.connected.load(Ordering::SeqCst) == 0).then_some(())
    })
    .await;
    assert!(
        daemon.log_text().contains("feeds: started"),
        "{}",
        daemon.log_text()
    );

    // B's price moves the account: at 49,800 equity 200 against MM 199.2 — a warning.
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        b.push_mark("BTCUSDT", "49800");
        let v = get_ok(&client, format!("{api}/v1/accounts/a")).await;
        if v["state"]["state"] == "warning" {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "{v}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The venue is listed once: the old feed's status left with it.
    let feeds = get_ok(&client, format!("{api}/v1/feeds")).await;
    let list = feeds
        .as_array()
        .or_else(|| feeds["feeds"].as_array())
        .cloned()
        .unwrap_or_default();
    let binance = list.iter().filter(|f| f["venue"] == "binance-usdm").count();
    assert_eq!(binance, 1, "{feeds}");
    assert_eq!(daemon.terminate(DEADLINE), Some(0), "{}", daemon.log_text());
}
