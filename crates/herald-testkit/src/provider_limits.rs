//! Providers' published rate limits, as the fakes enforce them when asked to
//! (`FakeTelegram::enforce_limits`, `FakeDiscord::enforce_limits`).
//!
//! Providers do not say how they count "30 a second"; the strictest reading is a sliding
//! window: at most `limit` requests in any interval of length `window`. A sender that passes
//! a fake counting this way passes any fixed-window or token-bucket count of the same figure.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// At most `limit` hits in any `window`.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    limit: usize,
    window: Duration,
    /// The accepted hits still inside the window, oldest first.
    hits: VecDeque<Instant>,
}

impl SlidingWindow {
    pub fn new(limit: usize, window: Duration) -> SlidingWindow {
        SlidingWindow {
            limit: limit.max(1),
            window,
            hits: VecDeque::new(),
        }
    }

    /// Counts a hit at `now` if the window has room, else says how long until it has.
    pub fn hit(&mut self, now: Instant) -> Result<(), Duration> {
        while self
            .hits
            .front()
            .is_some_and(|oldest| now.duration_since(*oldest) >= self.window)
        {
            self.hits.pop_front();
        }
        if self.hits.len() < self.limit {
            self.hits.push_back(now);
            return Ok(());
        }
        let oldest = self.hits.front().copied().unwrap_or(now);
        Err(self.window.saturating_sub(now.duration_since(oldest)))
    }
}

/// One [`SlidingWindow`] per key (a chat, a channel).
#[derive(Debug, Clone)]
pub struct KeyedWindows<K> {
    limit: usize,
    window: Duration,
    windows: HashMap<K, SlidingWindow>,
}

impl<K: Eq + Hash> KeyedWindows<K> {
    pub fn new(limit: usize, window: Duration) -> KeyedWindows<K> {
        KeyedWindows {
            limit,
            window,
            windows: HashMap::new(),
        }
    }

    pub fn hit(&mut self, key: K, now: Instant) -> Result<(), Duration> {
        let (limit, window) = (self.limit, self.window);
        self.windows
            .entry(key)
            .or_insert_with(|| SlidingWindow::new(limit, window))
            .hit(now)
    }
}

/// A retry-after in whole seconds, at least one, as Telegram's `retry_after` and HTTP's
/// `Retry-After` carry it.
pub fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_takes_its_limit_then_refuses_until_the_oldest_leaves() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(3, Duration::from_secs(1));
        for ms in [0, 100, 200] {
            assert!(window.hit(start + Duration::from_millis(ms)).is_ok());
        }
        let wait = window.hit(start + Duration::from_millis(900)).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // A refused hit does not count.
        assert!(window.hit(start + Duration::from_millis(1000)).is_ok());
        assert!(window.hit(start + Duration::from_millis(1050)).is_err());
        assert!(window.hit(start + Duration::from_millis(1100)).is_ok());
    }

    #[test]
    fn keys_have_their_own_windows() {
        let now = Instant::now();
        let mut chats = KeyedWindows::new(1, Duration::from_secs(1));
        assert!(chats.hit(1, now).is_ok());
        assert!(chats.hit(2, now).is_ok());
        assert!(chats.hit(1, now + Duration::from_millis(999)).is_err());
        assert!(chats.hit(1, now + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(60)), 60);
    }
}
