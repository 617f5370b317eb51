//! The sliding-window estimate every limit uses (the one Cloudflare describes for its rate
//! limiting): a key's count in the current minute plus its count in the minute before,
//! weighted by how much of that minute still lies within the last 60 s. Two numbers per key,
//! and counts that simply add up, which is what lets replicas share them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where in time a check happens: the minute (Unix time in whole minutes, the same on every
/// replica) and how far into it, from 0 to 1.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub minute: i64,
    pub fraction: f64,
}

impl Now {
    pub fn from_clock() -> Now {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Now::at(since_epoch)
    }

    pub fn at(seconds: f64) -> Now {
        let minute = (seconds / 60.0).floor();
        Now {
            minute: minute as i64,
            fraction: (seconds - minute * 60.0) / 60.0,
        }
    }
}

/// One key's counts: `current` in `minute`, `previous` in the minute before it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub minute: i64,
    pub previous: u64,
    pub current: u64,
}

impl Window {
    /// Moves the window to `now.minute`: the current count becomes the previous one when the
    /// minutes are neighbours, and is forgotten when more time went by.
    pub fn roll(&mut self, now: Now) {
        // A check that read the clock just before another one moved the window on (or a
        // clock stepped back) leaves the window as it is rather than wiping it.
        if now.minute <= self.minute {
            return;
        }
        self.previous = if now.minute == self.minute + 1 {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.minute = now.minute;
    }

    /// Requests counted in the last 60 s, estimated.
    pub fn estimate(&self, now: Now) -> f64 {
        self.previous as f64 * (1.0 - now.fraction) + self.current as f64
    }

    /// Whether `n` more fit under `limit`, or how long until they do. A request bigger than
    /// the whole limit fits only into a window that is empty: otherwise it could never pass.
    /// Expects the window rolled to `now`.
    pub fn admits(&self, now: Now, n: u64, limit: u64) -> Result<(), Duration> {
        let estimate = self.estimate(now);
        if estimate + n as f64 <= limit as f64 || (n > limit && estimate < 1.0) {
            return Ok(());
        }
        Err(self.wait(now, n, limit))
    }

    fn wait(&self, now: Now, n: u64, limit: u64) -> Duration {
        let (previous, current, n, limit) = (
            self.previous as f64,
            self.current as f64,
            n as f64,
            limit as f64,
        );
        let seconds = if n > limit && current <= 0.0 && previous > 0.0 {
            // Bigger than the limit: it needs the window empty, which happens within this
            // minute once the previous one has all but slid out.
            let fraction = 1.0 - 1.0 / previous;
            (fraction - now.fraction) * 60.0
        } else if current + n <= limit && previous > 0.0 {
            // Fits within this minute, once enough of the previous one has slid out.
            let fraction = 1.0 - (limit - n - current) / previous;
            (fraction - now.fraction) * 60.0
        } else {
            // Next minute, this minute's count becomes the one that slides out.
            let fraction = if n > limit || current <= 0.0 {
                1.0
            } else {
                1.0 - (limit - n) / current
            };
            (1.0 - now.fraction) * 60.0 + fraction * 60.0
        };
        Duration::from_secs_f64(seconds.clamp(0.0, 120.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: i64, second: f64) -> Now {
        Now::at(minute as f64 * 60.0 + second)
    }

    #[test]
    fn counts_in_this_minute_are_limited() {
        let now = at(100, 10.0);
        let mut window = Window::default();
        window.roll(now);
        for _ in 0..3 {
            assert!(window.admits(now, 1, 3).is_ok());
            window.current += 1;
        }
        let wait = window.admits(now, 1, 3).unwrap_err();
        // 50 s to the next minute, then a third of it until 2 of 3 have slid out.
        assert!((69..=71).contains(&wait.as_secs()), "{wait:?}");
    }

    #[test]
    fn the_previous_minute_slides_out() {
        let mut window = Window {
            minute: 99,
            previous: 0,
            current: 60,
        };
        let early = at(100, 6.0);
        window.roll(early);
        assert_eq!(window.previous, 60);
        // 54 of the 60 still count 10% into the minute.
        let wait = window.admits(early, 10, 60).unwrap_err();
        // 10 more fit once a sixth of the minute has gone by (54 -> 50): at 10 s, 4 s away.
        assert!((3..=4).contains(&wait.as_secs()), "{wait:?}");
        assert!(window.admits(at(100, 10.5), 10, 60).is_ok());
        window.roll(at(102, 0.0));
        assert_eq!(
            (window.previous, window.current),
            (0, 0),
            "gone after two minutes"
        );
    }

    #[test]
    fn an_earlier_clock_reading_leaves_the_window_alone() {
        let mut window = Window {
            minute: 101,
            previous: 7,
            current: 3,
        };
        window.roll(at(100, 59.9));
        assert_eq!(
            (window.minute, window.previous, window.current),
            (101, 7, 3)
        );
    }

    #[test]
    fn a_request_bigger_than_the_limit_needs_an_empty_window() {
        let now = at(5, 30.0);
        let mut window = Window::default();
        window.roll(now);
        assert!(window.admits(now, 500, 100).is_ok());
        window.current += 500;
        let wait = window.admits(now, 1, 100).unwrap_err();
        assert!(wait.as_secs() >= 30, "{wait:?}");
    }
}
