//! The one reconnect/retry delay policy: jittered exponential backoff. Feeds, sinks, the NATS
//! clients and the journal's retry loop all use [`Backoff`].

use std::time::Duration;

/// Jittered exponential backoff ("full jitter" over an exponentially growing cap).
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The next delay: uniform in [cap/2, cap] where cap doubles each attempt up to `max`;
    /// a receiver's `retry_after` wins when longer (capped at `max`... unless longer is asked,
    /// which is honoured up to 10 minutes).
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let cap = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        let jitter_ms = u64::try_from((cap - half).as_millis()).unwrap_or(0);
        let jitter = if jitter_ms > 0 {
            Duration::from_millis(rand::random_range(0..=jitter_ms))
        } else {
            Duration::ZERO
        };
        let d = half + jitter;
        match retry_after {
            Some(ra) => d.max(ra.min(Duration::from_secs(600))),
            None => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff grows, stays jittered within [cap/2, cap], and honours a longer Retry-After.
    #[test]
    fn backoff_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d0 = b.next_delay(None);
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
        for _ in 0..10 {
            let d = b.next_delay(None);
            assert!(d <= Duration::from_secs(1));
        }
        let d = b.next_delay(None);
        assert!(d >= Duration::from_millis(500));
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        b.reset();
        assert!(b.next_delay(None) <= Duration::from_millis(100));
    }
}
