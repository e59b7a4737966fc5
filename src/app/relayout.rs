//! Laying the account map out again as it changes: every minute, when a tenth of the accounts
//! has changed since the last layout ([`AccountMap::relayout_due`]), their slots are laid out
//! again in key order on the blocking pool — as at start, with one more copy of every slot
//! array for the pass's duration (~0.25 GB and ~0.4 s at 1M accounts). Each account is copied
//! and swapped under its own lock, so ticks and updates go on beside it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::AccountMap;

/// How often the task looks at how much of the book changed.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(60);

/// Runs until `stop`; a pass under way when it is cancelled finishes first (it is bounded).
/// Errs only if a pass panicked (a bug).
pub(super) async fn relayout_when_due(
    map: Arc<AccountMap>,
    every: Duration,
    stop: CancellationToken,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is now: the start has just laid the book out
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if !map.relayout_due() {
            continue;
        }
        let changed = map.changed_since_layout();
        let m = Arc::clone(&map);
        let started = std::time::Instant::now();
        let moved = tokio::task::spawn_blocking(move || m.relayout())
            .await
            .map_err(|e| format!("the account layout pass failed: {e}"))?;
        metrics::counter!("liqwatch_accounts_relayouts_total").increment(1);
        tracing::info!(
            accounts = moved,
            changed,
            took = ?started.elapsed(),
            "Account slots laid out again in key order (a tenth of the accounts changed since the last layout)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AccountUpdate;

    /// A book a tenth of which changed is laid out again by the task (its count of changed
    /// accounts goes back to 0, with every account as it was); one that changed less is left
    /// alone; cancelled, the task ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_book_is_laid_out_again_and_a_calm_one_is_not() {
        let m = Arc::new(AccountMap::new(crate::engine::map::tests::w3_instruments()));
        let accounts: Vec<_> = (0..20_000)
            .map(|i| crate::engine::map::tests::w3_account(&format!("a{i}")))
            .collect();
        for a in &accounts {
            m.apply_update(AccountUpdate::Replace { account: a.clone() })
                .unwrap();
        }
        m.relayout();
        // 1,000 changed (5 %): not due.
        for a in accounts.iter().take(1_000) {
            m.apply_update(AccountUpdate::Replace { account: a.clone() })
                .unwrap();
        }
        assert!(!m.relayout_due());
        let stop = CancellationToken::new();
        let task = tokio::spawn(relayout_when_due(
            Arc::clone(&m),
            Duration::from_millis(5),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(m.changed_since_layout(), 1_000, "laid out though not due");
        // 2,000 changed (10 %): due, and done.
        for a in accounts.iter().skip(1_000).take(1_000) {
            m.apply_update(AccountUpdate::Replace { account: a.clone() })
                .unwrap();
        }
        let before: Vec<_> = accounts
            .iter()
            .step_by(997)
            .map(|a| m.account(&a.id))
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while m.changed_since_layout() != 0 {
            assert!(std::time::Instant::now() < deadline, "not laid out again");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let after: Vec<_> = accounts
            .iter()
            .step_by(997)
            .map(|a| m.account(&a.id))
            .collect();
        assert_eq!(after, before);
        assert!(after.iter().all(Option::is_some));
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[test]
    fn a_layout_is_due_for_a_tenth_of_a_large_book() {
        use crate::engine::map::{RELAYOUT_MIN_ACCOUNTS, relayout_due};
        assert!(!relayout_due(0, 1_000_000));
        assert!(!relayout_due(99_999, 1_000_000));
        assert!(relayout_due(100_000, 1_000_000));
        assert!(relayout_due(usize::MAX, 1_000_000));
        assert!(!relayout_due(
            RELAYOUT_MIN_ACCOUNTS,
            RELAYOUT_MIN_ACCOUNTS - 1
        ));
        assert!(relayout_due(
            RELAYOUT_MIN_ACCOUNTS / 10 + 1,
            RELAYOUT_MIN_ACCOUNTS
        ));
    }
}
