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
//!
//! The account's limit is the provider's, for the account as a whole: with several replicas
//! of a sender, each takes an equal share of it ([`Limiter::set_replicas`]; `run.rs` counts
//! the replicas as the consumers of the channel's queues), so together they stay within it.
//!
//! A provider that counts a recipient in several windows at once (Teams: 7 a second, 8 in
//! 2 s, 60 in 30 s, 1,800 an hour per conversation) gets them as [`Window`]s on top of the
//! bucket: each is a sliding window, so a recipient may use each window's whole allowance
//! (60 in the first 30 s) and never more, which no single bucket can express.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    pub account_per_second: u32,
    pub account_burst: u32,
    /// Minimum spacing between messages to one recipient, once its burst is used.
    pub recipient_interval: Duration,
    pub recipient_burst: u32,
    /// Sliding windows a recipient must also stay within (none for most providers).
    pub recipient_windows: Vec<Window>,
}

/// At most `limit` messages to one recipient in any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u32,
    pub per: Duration,
}

impl Window {
    pub const fn new(limit: u32, per: Duration) -> Window {
        Window { limit, per }
    }

    /// `COUNT/SECONDS` pairs, comma-separated (`7/1,8/2,60/30,1800/3600`); `none` for no
    /// windows.
    pub fn parse_list(list: &str) -> Result<Vec<Window>, String> {
        if list.trim().eq_ignore_ascii_case("none") {
            return Ok(Vec::new());
        }
        list.split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(|w| {
                let bad = || format!("{w:?} is not COUNT/SECONDS (7/1, 1800/3600)");
                let (limit, secs) = w.split_once('/').ok_or_else(bad)?;
                let limit: u32 = limit.trim().parse().map_err(|_| bad())?;
                let secs: f64 = secs.trim().parse().map_err(|_| bad())?;
                if limit == 0 || !(secs > 0.0 && secs <= 86_400.0) {
                    return Err(bad());
                }
                Ok(Window::new(limit, Duration::from_secs_f64(secs)))
            })
            .collect()
    }
}

pub struct Limiter {
    account: Account,
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

impl Limiter {
    pub fn new(limits: RateLimits) -> Self {
        let per_second = limits.account_per_second.max(1);
        Limiter {
            account: Account {
                interval: with_margin(Duration::from_secs(1) / per_second),
                burst: limits.account_burst.max(1),
                state: Mutex::new(AccountState {
                    replicas: 1,
                    full_at: Instant::now(),
                }),
            },
            // No margin here: a deferred job comes back through a delay queue, whose level
            // is at least the wait (1 s for 1 s) and comes late by the broker's own delay,
            // while a wider wait would round up to the next level (5 s).
            recipients: Mutex::new(Recipients::new(
                limits.recipient_interval.max(Duration::from_millis(1)),
                limits.recipient_burst.max(1),
                limits.recipient_windows,
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

    /// This many replicas of the sender share the account now: each takes `1/replicas` of
    /// its rate and burst. The burst part is at least one message, so with more replicas
    /// than the burst allows they may together send one message each at once.
    pub fn set_replicas(&self, replicas: u32) {
        self.account.lock().replicas = replicas.max(1);
    }

    pub fn replicas(&self) -> u32 {
        self.account.lock().replicas
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

/// The account's bucket, as GCRA (like [`Recipients`]): its "full again" time moves one
/// interval further with each send, and a send conforms while that time is at most
/// `burst - 1` intervals ahead. A share of `1/replicas` widens the interval and narrows the
/// burst; a change applies to the next send.
struct Account {
    interval: Duration,
    burst: u32,
    state: Mutex<AccountState>,
}

struct AccountState {
    replicas: u32,
    full_at: Instant,
}

impl Account {
    fn lock(&self) -> std::sync::MutexGuard<'_, AccountState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a token, or says when to look again.
    fn take(&self, now: Instant) -> Result<(), Instant> {
        let mut state = self.lock();
        let interval = self.interval * state.replicas;
        let burst = (self.burst / state.replicas).max(1);
        let full_at = state.full_at.max(now);
        let tolerance = interval * (burst - 1);
        if full_at.duration_since(now) <= tolerance {
            state.full_at = full_at + interval;
            Ok(())
        } else {
            Err(full_at - tolerance)
        }
    }

    async fn until_ready(&self) {
        loop {
            match self.take(Instant::now()) {
                Ok(()) => return,
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
    }
}

/// One bucket per recipient, as GCRA: each recipient's "theoretical arrival time" (when its
/// bucket is full again); a message conforms while that is at most `burst - 1` intervals
/// ahead of now, and pushes it one interval further. Ours rather than governor's keyed
/// limiter, which can only take a token, not look whether there is one. Then the windows,
/// if any, each with its log of what was sent.
struct Recipients {
    interval: Duration,
    /// How far ahead of now a recipient's arrival time may be: `(burst - 1) * interval`.
    tolerance: Duration,
    windows: Vec<Window>,
    by_key: HashMap<String, Recipient>,
}

struct Recipient {
    full_at: Instant,
    /// One per window, in the order of `Recipients::windows`.
    logs: Vec<Log>,
}

/// Windows up to this limit keep every send's time; larger ones count in slots.
const EXACT_UP_TO: u32 = 64;
/// Slots per window for the large ones: a window of an hour counts per minute.
const SLOTS: u32 = 60;

/// What one recipient was sent within one window.
enum Log {
    /// Each send's time: exact.
    Exact(VecDeque<Instant>),
    /// Sends per slot (slot start, count). A slot that overlaps the window at all counts
    /// whole, so the count is never below the truth: the limit can be undershot by a
    /// slot's worth, never exceeded.
    Slots(VecDeque<(Instant, u32)>),
}

impl Log {
    fn new(window: &Window) -> Log {
        if window.limit <= EXACT_UP_TO {
            Log::Exact(VecDeque::with_capacity(window.limit as usize))
        } else {
            Log::Slots(VecDeque::new())
        }
    }

    fn slot(window: &Window) -> Duration {
        (window.per / SLOTS).max(Duration::from_millis(1))
    }

    /// Drops what no longer counts.
    fn prune(&mut self, window: &Window, now: Instant) {
        match self {
            Log::Exact(times) => {
                while times.front().is_some_and(|t| *t + window.per <= now) {
                    times.pop_front();
                }
            }
            Log::Slots(slots) => {
                let slot = Log::slot(window);
                while slots
                    .front()
                    .is_some_and(|(start, _)| *start + slot + window.per <= now)
                {
                    slots.pop_front();
                }
            }
        }
    }

    /// How long until one more send fits, if it does not now.
    fn wait(&self, window: &Window, now: Instant) -> Option<Duration> {
        match self {
            Log::Exact(times) => {
                if (times.len() as u32) < window.limit {
                    return None;
                }
                // The send that leaves the window first makes room.
                let oldest = times.get(times.len() - window.limit as usize)?;
                Some((*oldest + window.per).saturating_duration_since(now))
            }
            Log::Slots(slots) => {
                let slot = Log::slot(window);
                let mut count: u32 = slots.iter().map(|(_, n)| n).sum();
                for (start, n) in slots {
                    if count < window.limit {
                        break;
                    }
                    count -= n;
                    if count < window.limit {
                        return Some((*start + slot + window.per).saturating_duration_since(now));
                    }
                }
                None
            }
        }
        .filter(|w| !w.is_zero())
    }

    fn record(&mut self, window: &Window, now: Instant) {
        match self {
            Log::Exact(times) => times.push_back(now),
            Log::Slots(slots) => {
                let slot = Log::slot(window);
                match slots.back_mut() {
                    Some((start, n)) if now < *start + slot => *n += 1,
                    _ => slots.push_back((now, 1)),
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Log::Exact(times) => times.is_empty(),
            Log::Slots(slots) => slots.is_empty(),
        }
    }
}

impl Recipients {
    fn new(interval: Duration, burst: u32, windows: Vec<Window>) -> Recipients {
        Recipients {
            interval,
            tolerance: interval.saturating_mul(burst.saturating_sub(1)),
            windows,
            by_key: HashMap::new(),
        }
    }

    fn wait(&mut self, key: &str, now: Instant) -> Option<Duration> {
        let recipient = self.by_key.get_mut(key)?;
        let full_at = recipient.full_at.max(now);
        let mut wait = (full_at - now).saturating_sub(self.tolerance);
        for (log, window) in recipient.logs.iter_mut().zip(&self.windows) {
            log.prune(window, now);
            if let Some(more) = log.wait(window, now) {
                wait = wait.max(more);
            }
        }
        (!wait.is_zero()).then_some(wait)
    }

    fn take(&mut self, key: &str, now: Instant) -> Result<(), Duration> {
        if let Some(wait) = self.wait(key, now) {
            return Err(wait);
        }
        let windows = &self.windows;
        let recipient = self
            .by_key
            .entry(key.to_owned())
            .or_insert_with(|| Recipient {
                full_at: now,
                logs: windows.iter().map(Log::new).collect(),
            });
        recipient.full_at = recipient.full_at.max(now) + self.interval;
        for (log, window) in recipient.logs.iter_mut().zip(windows) {
            log.record(window, now);
        }
        Ok(())
    }

    fn forget_idle(&mut self, now: Instant) {
        let windows = &self.windows;
        self.by_key.retain(|_, recipient| {
            for (log, window) in recipient.logs.iter_mut().zip(windows) {
                log.prune(window, now);
            }
            recipient.full_at > now || recipient.logs.iter().any(|log| !log.is_empty())
        });
        self.by_key.shrink_to_fit();
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
            recipient_windows: Vec::new(),
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
        assert_eq!(limiter.recipients().by_key.len(), 1, "not idle yet");
        tokio::time::advance(Duration::from_secs(4)).await;
        limiter.forget_idle_recipients();
        assert!(limiter.recipients().by_key.is_empty());
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

    /// Sends the account allows in `span` when sending whenever allowed.
    async fn account_sends_in(limiter: &Limiter, span: Duration) -> usize {
        let end = Instant::now() + span;
        let mut sent = 0;
        loop {
            limiter.account().await;
            if Instant::now() >= end {
                return sent;
            }
            sent += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_account_allows_its_burst_then_its_rate() {
        let limiter = Limiter::new(RateLimits {
            account_per_second: 100,
            account_burst: 10,
            ..limits()
        });
        let sent = account_sends_in(&limiter, Duration::from_secs(10)).await;
        // 10 at once, then one every 10.1 ms (the margin) for 10 s.
        assert!((1_000..=1_000 + 10).contains(&sent), "{sent}");
    }

    /// Issue #18: replicas share the account, so N of them together stay within it.
    #[tokio::test(start_paused = true)]
    async fn replicas_take_an_equal_share_of_the_account() {
        let rate = RateLimits {
            account_per_second: 100,
            account_burst: 10,
            ..limits()
        };
        let replicas: Vec<Limiter> = (0..4).map(|_| Limiter::new(rate.clone())).collect();
        for replica in &replicas {
            replica.set_replicas(4);
        }
        let counts = futures::future::join_all(
            replicas
                .iter()
                .map(|r| account_sends_in(r, Duration::from_secs(10))),
        )
        .await;
        let total: usize = counts.iter().sum();
        // 4 x (burst 2 + one every 40.4 ms) = 4 x 249.
        assert!(total <= 1_000 + 10, "{counts:?}");
        assert!(total >= 950, "each still uses its share: {counts:?}");
        assert_eq!(replicas[0].replicas(), 4);
        replicas[0].set_replicas(0);
        assert_eq!(replicas[0].replicas(), 1, "never less than itself");
    }

    /// Teams' windows: each one's whole allowance, never more, in any stretch of time.
    #[tokio::test(start_paused = true)]
    async fn sliding_windows_allow_each_allowance_and_never_more() {
        let windows = Window::parse_list("7/1,8/2,60/30,1800/3600").unwrap();
        let limiter = Limiter::new(RateLimits {
            recipient_interval: Duration::from_millis(1),
            recipient_burst: 100,
            recipient_windows: windows.clone(),
            ..limits()
        });
        let start = Instant::now();
        let mut sent = Vec::new();
        // Send whenever allowed, for 100 s.
        while Instant::now() < start + Duration::from_secs(100) {
            match limiter.recipient("conv") {
                Ok(()) => sent.push(Instant::now()),
                Err(wait) => tokio::time::advance(wait).await,
            }
        }
        for window in &windows {
            for (i, t) in sent.iter().enumerate() {
                let within = sent[i..]
                    .iter()
                    .take_while(|s| **s < *t + window.per)
                    .count();
                assert!(within as u32 <= window.limit, "{within} in {window:?}");
            }
        }
        assert_eq!(
            sent.iter()
                .filter(|t| **t < start + Duration::from_secs(1))
                .count(),
            7
        );
        assert_eq!(
            sent.iter()
                .filter(|t| **t < start + Duration::from_secs(30))
                .count(),
            60
        );
        // Each 30 s: 60, sent at 8 in 2 s within its first 15 s; the last 10 s: 40.
        assert_eq!(sent.len(), 60 + 60 + 60 + 40);
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_window_counts_in_slots_and_never_exceeds() {
        let window = Window::new(100, Duration::from_secs(60));
        let limiter = Limiter::new(RateLimits {
            recipient_interval: Duration::from_millis(100),
            recipient_burst: 1,
            recipient_windows: vec![window],
            ..limits()
        });
        let start = Instant::now();
        let mut sent = Vec::new();
        while Instant::now() < start + Duration::from_secs(300) {
            match limiter.recipient("conv") {
                Ok(()) => sent.push(Instant::now()),
                Err(wait) => tokio::time::advance(wait).await,
            }
        }
        for (i, t) in sent.iter().enumerate() {
            let within = sent[i..]
                .iter()
                .take_while(|s| **s < *t + window.per)
                .count();
            assert!(within <= 100, "{within} in a minute");
        }
        // At most one slot (1 s) of each minute is lost to counting in slots.
        assert!(sent.len() >= 5 * 98, "{}", sent.len());
        limiter.forget_idle_recipients();
        assert_eq!(limiter.recipients().by_key.len(), 1);
        tokio::time::advance(Duration::from_secs(62)).await;
        limiter.forget_idle_recipients();
        assert!(
            limiter.recipients().by_key.is_empty(),
            "forgotten once no window holds it"
        );
    }

    #[test]
    fn window_lists_parse_or_say_why_not() {
        assert_eq!(
            Window::parse_list("7/1, 1800/3600").unwrap(),
            [
                Window::new(7, Duration::from_secs(1)),
                Window::new(1800, Duration::from_secs(3600))
            ]
        );
        assert!(Window::parse_list("none").unwrap().is_empty());
        assert!(Window::parse_list("7").is_err());
        assert!(Window::parse_list("0/1").is_err());
        assert!(Window::parse_list("7/0").is_err());
    }
}
