//! Exponential backoff with jitter: for reconnects and publish retries ([`Backoff`]), and for
//! the delay before a message's next attempt ([`retry_delay`]).

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next wait: uniformly random between half and all of `base * 2^attempt`, capped at
    /// `max` ("equal jitter"). The random half spreads the reconnects of many replicas after a
    /// broker restart; the fixed half keeps each from retrying too soon.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let millis = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `base * 2^(attempt-1)` capped at `max`, then a random 80-100% of it, so deliveries that
/// failed together do not all come back in the same instant.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    let millis = ceiling.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(millis * 4 / 5..=millis.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = backoff.next_delay();
        assert!(first <= Duration::from_millis(100));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= Duration::from_secs(2));
        }
        assert!(backoff.next_delay() >= Duration::from_secs(1));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn delays_double_with_jitter_up_to_the_cap() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(3600);
        let first = retry_delay(1, base, max);
        assert!(
            first >= Duration::from_secs(4) && first <= base,
            "{first:?}"
        );
        let third = retry_delay(3, base, max);
        assert!(
            third >= Duration::from_secs(16) && third <= Duration::from_secs(20),
            "{third:?}"
        );
        assert!(retry_delay(40, base, max) <= max);
    }
}
