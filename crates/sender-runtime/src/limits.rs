//! Rate limits (R7): never flood a person, never exceed what a provider allows.
//!
//! Two kinds of bucket: one for the provider account (Telegram about 30/s per bot, Discord 50/s)
//! and one per recipient (Telegram 1/s per chat, an SMS number a few per minute). A provider's
//! 429 with retry-after stops the whole account until it has passed.
//!
//! The account bucket is waited for in place: while it is empty nothing could be sent anyway,
//! so holding the job is the right backpressure. A recipient whose bucket is empty is
//! deferred through a delay queue instead, so one busy chat never blocks everyone else.
//!
//! The recipient's token is taken after the account wait, right before the send: taken
//! before it, two jobs for one chat that waited different times for the account could reach
//! the provider closer together than the spacing. A job first only looks at its recipient's
//! bucket ([`Limiter::recipient_wait`]), so a job that will be deferred takes no account token.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
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
    recipients: Mutex<Recipients>,
    /// A provider's retry-after for the whole account.
    blocked_until: Mutex<Option<Instant>>,
}

/// The account's spacing 1% wider than its rate: sends leaving evenly spaced at exactly the
/// provider's rate would now and then reach it, with network jitter, two inside one of its
/// windows (a 429; `just bench-senders` measures against fakes counting sliding windows).
fn with_margin(interval: Duration) -> Duration {
    interval.mul_f64(1.01)
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limiter {
    pub fn new(limits: RateLimits) -> Self {
        let per_second = limits.account_per_second.max(1);
        let account = Quota::with_period(with_margin(Duration::from_secs(1) / per_second))
            .unwrap_or_else(|| Quota::per_second(nonzero(per_second)))
            .allow_burst(nonzero(limits.account_burst));
        Limiter {
            account: RateLimiter::direct(account),
            // No margin here: a deferred job comes back through a delay queue, whose level
            // is at least the wait (1 s for 1 s) and comes late by the broker's own delay,
            // while a wider wait would round up to the next level (5 s).
            recipients: Mutex::new(Recipients::new(
                limits.recipient_interval.max(Duration::from_millis(1)),
                limits.recipient_burst.max(1),
            )),
            blocked_until: Mutex::new(None),
        }
    }

    fn recipients(&self) -> std::sync::MutexGuard<'_, Recipients> {
        self.recipients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long until this recipient may get a message, if it may not now. Takes nothing.
    pub fn recipient_wait(&self, key: &str) -> Option<Duration> {
        self.recipients().wait(key, Instant::now())
    }

    /// `Ok` with a token taken for this recipient, or how long until it has one.
    pub fn recipient(&self, key: &str) -> Result<(), Duration> {
        self.recipients().take(key, Instant::now())
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
        self.recipients().forget_idle(Instant::now());
    }
}

/// One bucket per recipient, as GCRA: each recipient's "theoretical arrival time" (when its
/// bucket is full again); a message conforms while that is at most `burst - 1` intervals
/// ahead of now, and pushes it one interval further. Ours rather than governor's keyed
/// limiter, which can only take a token, not look whether there is one.
struct Recipients {
    interval: Duration,
    /// How far ahead of now a recipient's arrival time may be: `(burst - 1) * interval`.
    tolerance: Duration,
    full_at: HashMap<String, Instant>,
}

impl Recipients {
    fn new(interval: Duration, burst: u32) -> Recipients {
        Recipients {
            interval,
            tolerance: interval.saturating_mul(burst.saturating_sub(1)),
            full_at: HashMap::new(),
        }
    }

    fn wait(&self, key: &str, now: Instant) -> Option<Duration> {
        let full_at = self.full_at.get(key).copied()?.max(now);
        let wait = (full_at - now).saturating_sub(self.tolerance);
        (!wait.is_zero()).then_some(wait)
    }

    fn take(&mut self, key: &str, now: Instant) -> Result<(), Duration> {
        if let Some(wait) = self.wait(key, now) {
            return Err(wait);
        }
        let full_at = self.full_at.get(key).copied().unwrap_or(now).max(now);
        self.full_at.insert(key.to_owned(), full_at + self.interval);
        Ok(())
    }

    fn forget_idle(&mut self, now: Instant) {
        self.full_at.retain(|_, full_at| *full_at > now);
        self.full_at.shrink_to_fit();
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

    #[test]
    fn looking_at_a_recipient_takes_nothing() {
        let limiter = Limiter::new(limits());
        assert_eq!(limiter.recipient_wait("chat-1"), None);
        assert_eq!(limiter.recipient_wait("chat-1"), None);
        assert!(limiter.recipient("chat-1").is_ok());
        let wait = limiter.recipient_wait("chat-1").unwrap();
        assert!(wait > Duration::from_millis(900), "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_per_interval_and_idle_recipients_are_forgotten() {
        let limiter = Limiter::new(RateLimits {
            recipient_burst: 3,
            ..limits()
        });
        for _ in 0..3 {
            assert!(limiter.recipient("chat-1").is_ok());
        }
        assert_eq!(limiter.recipient("chat-1"), Err(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.recipient("chat-1").is_ok());
        assert!(limiter.recipient("chat-1").is_err());
        limiter.forget_idle_recipients();
        assert_eq!(limiter.recipients().full_at.len(), 1, "not idle yet");
        tokio::time::advance(Duration::from_secs(4)).await;
        limiter.forget_idle_recipients();
        assert!(limiter.recipients().full_at.is_empty());
        for _ in 0..3 {
            assert!(limiter.recipient("chat-1").is_ok(), "a full burst again");
        }
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
