//! `GET /v1/accounts?sort=distance`: the accounts closest to their trigger under a uniform move
//! of every non-stable price, at a cost that does not grow with the book.
//!
//! The shock distance is not cached per account (the engine keeps equity, MM and ratio; the
//! distance needs a search over each account's positions), so ranking a million accounts by it
//! on every refresh would cost seconds. Instead the listing takes the [`DISTANCE_SORT_DEPTH`]
//! riskiest accounts by margin ratio (the same cheap scan as `sort=ratio`), computes their
//! exact shock distance, and ranks those: 0 for a triggered account, else
//! `|shock_distance.nearest|`, unreachable last. Rows past the depth follow in ratio order.
//! For accounts whose positions share one maintenance rate the two orders agree; an account
//! with a low ratio but a high maintenance rate can be nearer its trigger than its ratio says,
//! and is ranked by distance only while it is among the riskiest by ratio.

use dashmap::DashMap;
use rust_decimal::Decimal;

use crate::api::{AccountSort, AccountsPageQuery, compare_distance, distance_rank};
use crate::engine::AccountMap;
use crate::model::{AccountId, AccountState};

/// How many of the riskiest accounts by ratio are ranked by their exact shock distance.
pub(super) const DISTANCE_SORT_DEPTH: usize = 1_000;

/// The ids of one page in distance order, and how many accounts matched in all.
pub(super) fn distance_page_ids(
    map: &AccountMap,
    states: &DashMap<AccountId, AccountState>,
    q: &AccountsPageQuery,
    default_trigger: Decimal,
) -> super::risk_queries::PageIds {
    let by_ratio = AccountsPageQuery {
        sort: AccountSort::Ratio,
        descending: true,
        offset: 0,
        limit: DISTANCE_SORT_DEPTH.max(q.offset.saturating_add(q.limit)),
        ..q.clone()
    };
    let super::risk_queries::PageIds {
        ids,
        total,
        incomplete,
    } = super::risk_queries::page_ids(map, states, &by_ratio);
    let split = ids.len().min(DISTANCE_SORT_DEPTH);
    let (head, tail) = ids.split_at(split);
    let mut ranked: Vec<(Option<Decimal>, &AccountId)> = head
        .iter()
        .map(|id| {
            let state = states
                .get(id)
                .map(|s| s.clone())
                .unwrap_or(AccountState::Healthy);
            let trigger = map.trigger_for(id, default_trigger);
            let nearest = map
                .snapshot(id, trigger)
                .ok()
                .and_then(|s| s.shock_distance.nearest);
            (distance_rank(&state, nearest), id)
        })
        .collect();
    ranked.sort_by(|a, b| compare_distance(a.0, b.0, q.descending).then_with(|| a.1.cmp(b.1)));
    let page = ranked
        .into_iter()
        .map(|(_, id)| id)
        .chain(tail.iter())
        .skip(q.offset)
        .take(q.limit)
        .cloned()
        .collect();
    super::risk_queries::PageIds {
        ids: page,
        total,
        incomplete,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rust_decimal_macros::dec;

    use super::*;
    use crate::api::StateFilter;
    use crate::model::{Account, AccountUpdate, InstrumentId};

    /// Long 1 BTC at 50000 with `usdt` of cushion, or short when `qty` is negative.
    fn book(accounts: &[(&str, &str, &str)]) -> AccountMap {
        let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("feeds/presets.toml");
        let instruments =
            crate::sources::files::load_instruments(&presets).unwrap_or_else(|e| panic!("{e}"));
        let map = AccountMap::new(instruments.into_values());
        for (id, usdt, qty) in accounts {
            let account: Account = serde_json::from_str(&format!(
                r#"{{"id":"{id}","collateral":{{"USDT":"{usdt}"}},"positions":[
                {{"instrument":"BTCUSDT-PERP","quantity":"{qty}","entry_price":"50000"}}]}}"#
            ))
            .unwrap_or_else(|e| panic!("{e}"));
            map.apply_update(AccountUpdate::Replace { account })
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let mut out = Vec::new();
        for i in ["BTCUSDT-PERP", "BTC"] {
            map.apply_price(&InstrumentId::from(i), dec!(50000), &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        map
    }

    fn query(descending: bool, offset: usize, limit: usize) -> AccountsPageQuery {
        AccountsPageQuery {
            sort: AccountSort::Distance,
            descending,
            filter: String::new(),
            states: StateFilter::default(),
            offset,
            limit,
        }
    }

    /// Closest first (a triggered account at 0, before every healthy one), the reverse with
    /// asc, paging over the ranked rows, and each row's distance equal to its snapshot's.
    #[test]
    fn ranks_by_distance() {
        // Cushions 2000, 600, 5000 → distances about −3.6 %, −0.8 %, −9.6 %; "t" is marked
        // triggered in the state map though its cushion is large.
        let map = book(&[
            ("a", "2000", "1"),
            ("b", "600", "1"),
            ("c", "5000", "1"),
            ("t", "9000", "1"),
        ]);
        let states = DashMap::new();
        states.insert(AccountId::from("t"), AccountState::Triggered);
        let names = |v: Vec<AccountId>| v.iter().map(|i| i.as_str().to_owned()).collect::<Vec<_>>();
        let page = distance_page_ids(&map, &states, &query(true, 0, 10), dec!(1));
        let (ids, total) = (page.ids, page.total);
        assert_eq!(
            (names(ids), total),
            (vec!["t".into(), "b".into(), "a".into(), "c".into()], 4)
        );
        let ids = distance_page_ids(&map, &states, &query(false, 0, 10), dec!(1)).ids;
        assert_eq!(names(ids), vec!["c", "a", "b", "t"]);
        let ids = distance_page_ids(&map, &states, &query(true, 1, 2), dec!(1)).ids;
        assert_eq!(names(ids), vec!["b", "a"]);
        let d = |id: &str| {
            map.snapshot(&AccountId::from(id), dec!(1))
                .ok()
                .and_then(|s| s.shock_distance.nearest)
                .map(|x| x.abs())
        };
        assert!(
            d("b") < d("a") && d("a") < d("c"),
            "{:?} {:?} {:?}",
            d("b"),
            d("a"),
            d("c")
        );
    }
}
