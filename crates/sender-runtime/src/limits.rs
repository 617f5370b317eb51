//! Rate limits (R7): never flood a person, never exceed what a provider allows.
//!
//! Two token buckets: one for the provider account (Telegram about 30/s per bot, Discord 50/s)
//! and one per recipient (Telegram 1/s per chat, an SMS number a few per minute). A provider's
//! 429 with retry-after stops the whole account until it has passed.
//!
//! The account bucket is waited for in place: while it is empty nothing could be sent anyway,
//! so holding the job is the right backpressure. A recipient whose bucket is empty is
//! deferred through a delay queue instead, so one busy chat never blocks everyone else.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub account_per_second: u32,
    pub account_burst: u32,
    /// Minimum spacing between messages to one recipient, once its burst is used.
    pub recipient_interval: Duration,
    pub recipient_burst: u32,
}

pub struct Limiter {
    account: DefaultDirectRateLimiter,
    recipients: DefaultKeyedRateLimiter<String>,
    /// A provider's retry-after for the whole account.
    blocked_until: Mutex<Option<Instant>>,
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limiter {
    pub fn new(limits: RateLimits) -> Self {
        let account = Quota::per_second(nonzero(limits.account_per_second))
            .allow_burst(nonzero(limits.account_burst));
        let recipient = Quota::with_period(limits.recipient_interval.max(Duration::from_millis(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(nonzero(limits.recipient_burst));
        Limiter {
            account: RateLimiter::direct(account),
            recipients: RateLimiter::keyed(recipient),
            blocked_until: Mutex::new(None),
        }
    }

    /// `Ok` with a token taken for this recipient, or how long until it has one.
    pub fn recipient(&self, key: &str) -> Result<(), Duration> {
        self.recipients
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Waits until the account may send: after any provider retry-after, then for a token.
    pub async fn account(&self) {
        loop {
            let until = *self.blocked_until.lock().unwrap_or_else(|e| e.into_inner());
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        self.account.until_ready().await;
    }

    /// The provider said to wait (429 with retry-after) for the whole account.
    pub fn block_account(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut blocked = self.blocked_until.lock().unwrap_or_else(|e| e.into_inner());
        if blocked.is_none_or(|current| current < until) {
            *blocked = Some(until);
        }
    }

    /// Forgets recipients whose buckets are full again, so memory follows active recipients.
    pub fn forget_idle_recipients(&self) {
        self.recipients.retain_recent();
        self.recipients.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RateLimits {
        RateLimits {
            account_per_second: 1000,
            account_burst: 1000,
            recipient_interval: Duration::from_secs(1),
            recipient_burst: 1,
        }
    }

    #[test]
    fn a_recipient_gets_its_burst_then_must_wait() {
        let limiter = Limiter::new(limits());
        assert!(limiter.recipient("chat-1").is_ok());
        let wait = limiter.recipient("chat-1").unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            limiter.recipient("chat-2").is_ok(),
            "other recipients are not affected"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_account_waits_for_the_retry_after() {
        let limiter = Limiter::new(limits());
        limiter.block_account(Duration::from_secs(3));
        let started = Instant::now();
        limiter.account().await;
        assert!(started.elapsed() >= Duration::from_secs(3));
    }
}
