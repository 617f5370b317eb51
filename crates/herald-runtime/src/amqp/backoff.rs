//! Exponential backoff with jitter, for reconnects and publish retries.

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
}
