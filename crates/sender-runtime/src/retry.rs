//! Delays between attempts of one delivery.

use std::time::Duration;

use rand::Rng;

/// `base * 2^(attempt-1)` capped at `max`, then a random 80-100% of it, so deliveries that
/// failed together do not all come back in the same instant.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    let millis = ceiling.as_millis() as u64;
    Duration::from_millis(rand::rng().random_range(millis * 4 / 5..=millis.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_cap() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(3600);
        let first = backoff(1, base, max);
        assert!(
            first >= Duration::from_secs(4) && first <= base,
            "{first:?}"
        );
        let third = backoff(3, base, max);
        assert!(
            third >= Duration::from_secs(16) && third <= Duration::from_secs(20),
            "{third:?}"
        );
        assert!(backoff(40, base, max) <= max);
    }
}
