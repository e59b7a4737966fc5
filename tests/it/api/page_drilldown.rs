//! The risk page's drill-down parts that live in the journal or behind `[risk]`, in a real
//! headless Chromium against the real `liqwatch` binary (issue 14): the riskiest table sorted by
//! shock distance (an order the ratio does not give), VaR/ES/P(liquidation) and component ES
//! equal to `GET /v1/accounts/{id}/risk`, the event list served from the journal
//! (`GET /v1/accounts/{id}/events`, paged), the drill-down on a phone, and the history chart
//! and last event surviving a kill -9 and restart. Saves `page-risk.png` (and to `$LIQWATCH_PAGE_SCREENSHOTS` when set).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::Locator;
use parking_lot::Mutex;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::support::browser::Browser;
use crate::support::daemon_env::{
    Daemon, MockBinance, binance_config, get_ok, http_client, poll_until, poll_until_json,
};

const TOKEN: &str = "drilldown-test-token";
const DEADLINE: Duration = Duration::from_secs(30);

/// The shared Binance daemon config with a `[risk]` section over the shipped 2021-05-19 episode.
fn write_config(dir: &Path, venue_url: &str) -> PathBuf {
    let cfg = binance_config(dir, venue_url, "DRILLDOWN_TOKEN");
    let text = std::fs::read_to_string(&cfg).unwrap()
        + "\n[risk]\nhistory = [\"episode:crash-2021-05-19\"]\nhorizon = \"1h\"\nalpha = \"0.99\"\n";
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn ids(body: &Value) -> Vec<String> {
    body["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account_id"].as_str().unwrap().to_string())
        .collect()
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
}

/// The history points of `account` in the journal file, oldest first (read-only, beside the
/// running daemon: WAL readers do not block it).
fn journal_points(journal: &Path, account: &str) -> Vec<i64> {
    let c =
        rusqlite::Connection::open_with_flags(journal, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut st = c
        .prepare("SELECT t_ms FROM history_points WHERE account_id = ?1 ORDER BY t_ms")
        .unwrap();
    st.query_map([account], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn open_row(browser: &Browser, account: &str) {
    browser
        .wait_js(
            "the row to open",
            DEADLINE,
            &format!(
                "return !!document.querySelector('#accounts-body tr[data-account=\"{account}\"]');"
            ),
        )
        .await;
    browser
        .click(
            &format!("#accounts-body tr[data-account='{account}']"),
            DEADLINE,
        )
        .await;
}

/// Distance sort on the page equals the API's and differs from the ratio order; the VaR panel
/// equals the risk endpoint; the event list is the journal's (paged); the chart keeps its
/// points across a kill -9 and restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drilldown_risk_events_and_history_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let venue = Arc::new(MockBinance::start().await);
    let cfg = write_config(dir.path(), &venue.url);
    let bin = env!("CARGO_BIN_EXE_liqwatch");
    let env = [("DRILLDOWN_TOKEN", TOKEN)];
    let (mut daemon, api) = Daemon::init_and_start_subscribed(
        bin,
        &cfg,
        &env,
        dir.path().join("daemon-1.log"),
        &venue,
        DEADLINE,
    )
    .await;
    let client = http_client();
    // BTC and ETH marks every 200 ms (the venue keeps them for the restarted daemon too).
    let btc = Arc::new(Mutex::new("50000".to_string()));
    {
        let (venue, btc) = (venue.clone(), btc.clone());
        tokio::spawn(async move {
            loop {
                let p = btc.lock().clone();
                venue.push_mark("BTCUSDT", &p);
                venue.push_mark("ETHUSDT", "3000");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    // hot: 1 BTC long on 400 USDT (ratio 0.5). pair: the same long with 420 USDT and 1 ETH
    // short: its MM is higher (ratio above hot's) but the short offsets part of a uniform
    // move, so a larger move reaches its trigger. calm: 10000 USDT.
    let btc_long = json!({"instrument":"BTCUSDT-PERP","quantity":"1","entry_price":"50000"});
    let eth_short = json!({"instrument":"ETHUSDT-PERP","quantity":"-1","entry_price":"3000"});
    for (id, usdt, positions) in [
        ("hot", "400", json!([btc_long])),
        ("pair", "420", json!([btc_long, eth_short])),
        ("calm", "10000", json!([btc_long])),
    ] {
        let body = json!({"id": id, "collateral": {"USDT": usdt}, "positions": positions});
        let r = client
            .put(format!("{api}/v1/accounts/{id}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let b = get_ok(&client, format!("{api}/v1/accounts?limit=10")).await;
        if b["total"] == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "accounts never priced: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The API: ratio order and distance order differ, and the distance order is the order of
    // |shock_distance.nearest| in the accounts' own snapshots.
    let by_ratio = get_ok(&client, format!("{api}/v1/accounts?limit=10")).await;
    assert_eq!(ids(&by_ratio), ["pair", "hot", "calm"], "{by_ratio}");
    let by_distance = get_ok(&client, format!("{api}/v1/accounts?sort=distance&limit=10")).await;
    assert_eq!(ids(&by_distance), ["hot", "pair", "calm"], "{by_distance}");
    let mut nearest: Vec<(Decimal, String)> = by_ratio["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                dec(&a["snapshot"]["shock_distance"]["nearest"]).abs(),
                a["account_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    nearest.sort();
    let want: Vec<String> = nearest.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids(&by_distance), want);
    let far_first = get_ok(
        &client,
        format!("{api}/v1/accounts?sort=distance&order=asc&limit=10"),
    )
    .await;
    assert_eq!(ids(&far_first), ["calm", "pair", "hot"]);

    // The page: a click on "Shock to trigger" sorts by distance on the server.
    let browser = Browser::start(dir.path()).await;
    browser.client.set_window_size(1280, 800).await.unwrap();
    browser.client.goto(&format!("{api}/")).await.unwrap();
    browser
        .wait_js(
            "rows in ratio order",
            DEADLINE,
            "return [...document.querySelectorAll('#accounts-body tr[data-account]')].map(x=>x.dataset.account).join()==='pair,hot,calm';",
        )
        .await;
    browser
        .client
        .find(Locator::Css("button.sort[data-sort='distance']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let sorted = browser
        .wait_js(
            "rows in distance order",
            DEADLINE,
            "const r=[...document.querySelectorAll('#accounts-body tr[data-account]')].map(x=>x.dataset.account);
             return r.join()==='hot,pair,calm' ? document.querySelector('button.sort[data-sort=\"distance\"]').closest('th').getAttribute('aria-sort') : null;",
        )
        .await;
    assert_eq!(sorted, "ascending", "closest first = distances ascending");
    // A move past +1,000 % (a hedged book's trigger at prices ×5,000) is not spelt out.
    let shown = browser
        .wait_js(
            "the page's percent format",
            DEADLINE,
            "return [pct('5358.6115'), pct('10'), pct('-0.1158'), pct('0.0123')];",
        )
        .await;
    assert_eq!(
        shown,
        json!(["> +1,000 %", "+1000.00 %", "-11.58 %", "+1.23 %"])
    );

    // VaR, ES, P(liquidation) and component ES on the drill-down equal the endpoint's.
    open_row(&browser, "hot").await;
    // The open account is in the address, to share or reload.
    browser
        .wait_js(
            "the account in the address",
            DEADLINE,
            "return location.hash==='#account=hot';",
        )
        .await;
    let shown = browser
        .wait_js(
            "the VaR panel",
            DEADLINE,
            "const d=document.querySelector('#risk-result');
             if (d.dataset.state!=='ready' || d.dataset.account!=='hot') return null;
             const x=(id)=>document.getElementById(id).dataset.exact;
             const comps={};
             for (const r of document.querySelectorAll('#risk-components tbody tr'))
               comps[r.dataset.kind+':'+r.dataset.instrument]=r.querySelector('td').dataset.exact;
             return {var:x('risk-var'), es:x('risk-es'), p:x('risk-pliq'), comps};",
        )
        .await;
    let risk = get_ok(&client, format!("{api}/v1/accounts/hot/risk")).await;
    assert_eq!(shown["var"], risk["var"], "{risk}");
    assert_eq!(shown["es"], risk["es"], "{risk}");
    assert_eq!(shown["p"], risk["p_liquidation"], "{risk}");
    let comps = risk["components"].as_array().unwrap();
    assert_eq!(
        comps.len(),
        2,
        "USDT collateral and the BTC position: {risk}"
    );
    for c in comps {
        let key = format!(
            "{}:{}",
            c["kind"].as_str().unwrap(),
            c["instrument"].as_str().unwrap()
        );
        assert_eq!(shown["comps"][&key], c["es"], "{key}: {shown} vs {risk}");
    }

    // On a phone the drill-down with its VaR table still does not scroll sideways.
    browser.client.set_window_size(390, 844).await.unwrap();
    let overflow = browser
        .wait_js(
            "the phone layout",
            DEADLINE,
            "return window.innerWidth < 500 ? {page: document.documentElement.scrollWidth, view: window.innerWidth} : null;",
        )
        .await;
    assert!(
        overflow["page"].as_u64() <= overflow["view"].as_u64(),
        "the drill-down scrolls sideways on a phone: {overflow}"
    );
    browser.client.set_window_size(1280, 800).await.unwrap();

    // A warning for hot and pair: the drill-down's list is the journal's, for hot only.
    *btc.lock() = "49840".to_string();
    let warned = poll_until_json(
        &client,
        format!("{api}/v1/accounts/hot/events"),
        DEADLINE,
        |b| {
            b["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["event"]["kind"] == "liquidation_warning")
        },
    )
    .await;
    let seqs: Vec<u64> = warned["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(
        warned["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["event"]["account_id"] == "hot"),
        "{warned}"
    );
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    let warning_seq = seqs[0];
    // Paging backwards: one per page, then an empty last page.
    let first = get_ok(&client, format!("{api}/v1/accounts/hot/events?limit=1")).await;
    assert_eq!(first["next_before_seq"], json!(warning_seq), "{first}");
    let rest = get_ok(
        &client,
        format!("{api}/v1/accounts/hot/events?limit=1&before_seq={warning_seq}"),
    )
    .await;
    assert_eq!(
        rest["events"].as_array().unwrap().len(),
        seqs.len() - 1,
        "{rest}"
    );
    let bad = client
        .get(format!("{api}/v1/accounts/hot/events?before=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let listed = browser
        .wait_js(
            "the warning in the drill-down's events",
            DEADLINE,
            &format!(
                "const s=[...document.querySelectorAll('#detail-events li[data-seq]')].map(x=>Number(x.dataset.seq));
                 return s.includes({warning_seq}) ? s : null;"
            ),
        )
        .await;
    assert_eq!(listed, json!(seqs));

    // History: wait for points in the journal file (hot's first, and the warning's), then
    // kill -9 and restart.
    let journal = dir.path().join("journal.sqlite");
    let stored = poll_until("two history points in the journal", DEADLINE, || {
        let p = journal_points(&journal, "hot");
        (p.len() >= 2).then_some(p)
    })
    .await;
    daemon.kill9();
    let killed_at = stored[stored.len() - 1];
    let mut daemon = Daemon::start(bin, &cfg, &env, dir.path().join("daemon-2.log"));
    let api = format!("http://{}", daemon.api_addr(DEADLINE).await);
    let restored = poll_until_json(
        &client,
        format!("{api}/v1/accounts/hot/history"),
        DEADLINE,
        |b| b["points"].as_array().is_some_and(|p| !p.is_empty()),
    )
    .await;
    let times: Vec<i64> = restored["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["t_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(
        times[0], stored[0],
        "the chart still starts where it did: {times:?} vs {stored:?}"
    );
    assert!(
        times.iter().filter(|t| **t <= killed_at).count() >= 2,
        "{times:?} vs {stored:?}"
    );
    // The accounts table's "last event" of hot is still the warning.
    let listed = poll_until_json(
        &client,
        format!("{api}/v1/accounts?limit=10"),
        DEADLINE,
        |b| b["total"] == 3,
    )
    .await;
    let hot = listed["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["account_id"] == "hot")
        .unwrap();
    assert_eq!(hot["last_event"]["seq"], json!(warning_seq), "{hot}");
    assert_eq!(hot["last_event"]["kind"], "liquidation_warning", "{hot}");
    // The page on the restarted daemon: the chart spans from the first stored point, and the
    // journal's events are still listed.
    // Opened by its link this time (`#account=hot`), not by a click.
    browser
        .client
        .goto(&format!("{api}/#account=hot"))
        .await
        .unwrap();
    browser
        .wait_js(
            "the chart from before the restart",
            DEADLINE,
            &format!(
                "const d=document.querySelector('#history-desc');
                 const t=new Date({first}).toISOString().replace('T',' ').replace(/\\.\\d+Z$/,'Z');
                 return !!d && d.textContent.includes('from '+t) && !!document.querySelector('#history-chart polyline.series-ratio');",
                first = stored[0]
            ),
        )
        .await;
    browser
        .wait_js(
            "the journaled warning after the restart",
            DEADLINE,
            &format!(
                "return !!document.querySelector('#detail-events li[data-seq=\"{warning_seq}\"]');"
            ),
        )
        .await;
    browser
        .js("window.scrollTo(0, document.querySelector('#detail').offsetTop + 40); return true;")
        .await;
    let png = browser.screenshot(&dir.path().join("page-risk.png")).await;
    if let Some(d) = std::env::var_os("LIQWATCH_PAGE_SCREENSHOTS") {
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(PathBuf::from(d).join("page-risk.png"), &png).unwrap();
    }
    browser.close().await;
    assert_eq!(daemon.terminate(Duration::from_secs(10)), Some(0));
}
