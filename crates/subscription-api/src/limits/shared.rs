//! Limits that hold for the API as a whole, not per replica (issue #17). Each replica
//! decides locally, from the counts it last read plus what it let through since, and every
//! [`SharedCounts::sync`] adds its new counts to the table `rate_windows` and reads back the
//! sum over all replicas. A request never waits for the database; between two syncs N
//! replicas may let through up to N times one replica's share, which the sync interval
//! bounds.
//!
//! When the database cannot be reached, each replica goes on with what it knows (its own
//! counts, and the others' as last read) and adds its counts once the database is back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use herald_storage::PgPool;
use herald_storage::rate_windows;

use super::window::{Now, Window};

/// Keys are made from authenticated identities, so their number follows the callers a
/// deployment has; past this many, keys unused this minute are dropped first.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Default)]
struct Entry {
    /// Counts as last read from the shared table (this replica's own included), rolled to
    /// the current minute.
    window: Window,
    /// Let through here and not yet added to the shared table.
    pending: u64,
    /// Being added by a sync right now.
    adding: u64,
    /// The minute this key was last checked.
    used: i64,
}

impl Entry {
    /// The shared counts plus this replica's unsent ones.
    fn window(&self) -> Window {
        Window {
            current: self.window.current + self.pending + self.adding,
            ..self.window
        }
    }

    /// Rolls to `now`. Counts of the minute that ends and not yet added stay owed to it.
    fn roll(&mut self, key: &str, now: Now, owed: &mut Vec<(String, i64, i64)>) {
        if now.minute <= self.window.minute {
            return;
        }
        if self.pending > 0 {
            owed.push((key.to_owned(), self.window.minute, self.pending as i64));
        }
        // This replica's unsent counts belong to the minute that ends too.
        self.window.current += self.pending + self.adding;
        self.pending = 0;
        self.adding = 0;
        self.window.roll(now);
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Counts of past minutes still to be added.
    owed: Vec<(String, i64, i64)>,
    /// The minute the table was last cleared of old counts.
    cleared: i64,
    /// Whether the last sync failed (to log an outage once, and its end).
    failing: bool,
}

pub struct SharedCounts {
    pool: Option<PgPool>,
    state: Mutex<State>,
}

/// Makes room under [`MAX_KEYS`]: the keys used longest ago go, down to nine tenths, their
/// unsent counts kept owed so nothing counted is lost.
fn forget_least_used(
    entries: &mut HashMap<String, Entry>,
    owed: &mut Vec<(String, i64, i64)>,
    now: Now,
) {
    let mut by_use: Vec<(i64, String)> = entries
        .iter()
        .map(|(key, entry)| (entry.used, key.clone()))
        .collect();
    by_use.sort_unstable();
    let excess = entries.len().saturating_sub(MAX_KEYS * 9 / 10);
    for (_, key) in by_use.into_iter().take(excess) {
        if let Some(entry) = entries.remove(&key)
            && entry.pending > 0
        {
            owed.push((key, entry.window.minute, entry.pending as i64));
        }
    }
    tracing::warn!(
        keys = entries.len(),
        minute = now.minute,
        "many rate-limit keys in use; the least used were forgotten"
    );
}

/// One check of several limits, all or nothing: `(key, n, limit)`.
pub type Check<'a> = (&'a str, u64, u64);

impl SharedCounts {
    /// Counts shared through `pool`, or (without one) kept in this process only.
    pub fn new(pool: Option<PgPool>) -> SharedCounts {
        SharedCounts {
            pool,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets the request through every limit and counts it, or says how long until it would
    /// fit (the longest wait of the limits it does not fit). A limit of 0 is no limit.
    pub fn check(&self, checks: &[Check<'_>]) -> Result<(), Duration> {
        self.check_at(Now::from_clock(), checks)
    }

    fn check_at(&self, now: Now, checks: &[Check<'_>]) -> Result<(), Duration> {
        let mut state = self.state();
        let State { entries, owed, .. } = &mut *state;
        if entries.len() >= MAX_KEYS {
            forget_least_used(entries, owed, now);
        }
        let mut wait = None;
        for &(key, n, limit) in checks {
            if limit == 0 {
                continue;
            }
            let entry = entries.entry(key.to_owned()).or_default();
            entry.roll(key, now, owed);
            entry.used = now.minute;
            if let Err(w) = entry.window().admits(now, n, limit) {
                wait = Some(wait.map_or(w, |v: Duration| v.max(w)));
            }
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        for &(key, n, limit) in checks {
            if limit > 0
                && let Some(entry) = entries.get_mut(key)
            {
                entry.pending += n;
            }
        }
        Ok(())
    }

    /// Adds this replica's new counts to the shared ones and reads back every replica's for
    /// the keys in use. Without a pool there is nothing to do.
    pub async fn sync(&self) {
        let Some(pool) = &self.pool else { return };
        let now = Now::from_clock();
        let (adds, keys, clear) = {
            let mut state = self.state();
            let State {
                entries,
                owed,
                cleared,
                ..
            } = &mut *state;
            entries.retain(|_, e| e.used >= now.minute - 1 || e.pending + e.adding > 0);
            // Counts of minutes no limit reads any more are not worth sending (during a long
            // outage they would pile up).
            owed.retain(|(_, minute, _)| *minute >= now.minute - 1);
            let mut adds = std::mem::take(owed);
            let mut keys = Vec::with_capacity(entries.len());
            for (key, entry) in entries.iter_mut() {
                entry.roll(key, now, &mut adds);
                if entry.pending > 0 {
                    adds.push((key.clone(), now.minute, entry.pending as i64));
                    entry.adding += entry.pending;
                    entry.pending = 0;
                }
                keys.push(key.clone());
            }
            let clear = *cleared != now.minute;
            (adds, keys, clear)
        };
        let added = rate_windows::add(pool, &adds).await;
        // Once added, the counts are sent, whatever happens to the reading.
        let result = match added {
            Ok(()) => rate_windows::read(pool, &keys, now.minute)
                .await
                .map_err(|e| (e, false)),
            Err(e) => Err((e, true)),
        };
        if result.is_ok()
            && clear
            && let Err(error) = rate_windows::forget_before(pool, now.minute).await
        {
            tracing::debug!(%error, "cannot delete old rate-limit counts; next minute then");
        }
        let mut state = self.state();
        match result {
            Ok(counts) => {
                let mut read: HashMap<&str, (u64, u64)> = HashMap::with_capacity(keys.len());
                for count in &counts {
                    let slot = read.entry(count.key.as_str()).or_default();
                    if count.minute == now.minute {
                        slot.1 = count.count.max(0) as u64;
                    } else {
                        slot.0 = count.count.max(0) as u64;
                    }
                }
                let State {
                    entries,
                    cleared,
                    failing,
                    ..
                } = &mut *state;
                for (key, minute, n) in &adds {
                    if *minute == now.minute
                        && let Some(entry) = entries.get_mut(key)
                    {
                        entry.adding = entry.adding.saturating_sub(*n as u64);
                    }
                }
                for key in &keys {
                    let Some(entry) = entries.get_mut(key) else {
                        continue;
                    };
                    // The minute turned while the database answered: these counts are old.
                    if entry.window.minute != now.minute {
                        continue;
                    }
                    let (previous, current) = read.get(key.as_str()).copied().unwrap_or_default();
                    entry.window.previous = previous;
                    entry.window.current = current;
                }
                if clear {
                    *cleared = now.minute;
                }
                if *failing {
                    tracing::info!("rate-limit counts are shared again");
                    *failing = false;
                }
            }
            Err((error, unsent)) => {
                // Keep unsent counts for the next sync; decide meanwhile from what is known
                // here.
                let State {
                    entries,
                    owed,
                    failing,
                    ..
                } = &mut *state;
                for (key, minute, n) in adds {
                    match entries.get_mut(&key) {
                        Some(entry) if minute == now.minute && entry.window.minute == minute => {
                            entry.adding = entry.adding.saturating_sub(n as u64);
                            if unsent {
                                entry.pending += n as u64;
                            } else {
                                // Sent, but not read back: count it here until the next read.
                                entry.window.current += n as u64;
                            }
                        }
                        _ if unsent => owed.push((key, minute, n)),
                        _ => {}
                    }
                }
                if !*failing {
                    tracing::warn!(%error, "cannot share rate-limit counts; each replica limits on its own until the database answers");
                    *failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_of_a_check_must_fit_and_only_then_all_count() {
        let counts = SharedCounts::new(None);
        let now = Now::at(6000.0);
        assert!(counts.check_at(now, &[("a", 1, 2), ("b", 5, 10)]).is_ok());
        assert!(counts.check_at(now, &[("a", 1, 2), ("b", 5, 10)]).is_ok());
        // `b` is full: `a` must not be counted either.
        assert!(counts.check_at(now, &[("a", 1, 3), ("b", 5, 10)]).is_err());
        assert!(counts.check_at(now, &[("a", 1, 3)]).is_ok());
        assert!(counts.check_at(now, &[("a", 1, 3)]).is_err());
        assert!(
            counts.check_at(now, &[("c", 1, 0)]).is_ok(),
            "0 is no limit"
        );
    }

    #[test]
    fn unsent_counts_of_an_ended_minute_are_owed_to_it() {
        let counts = SharedCounts::new(None);
        counts.check_at(Now::at(6000.0), &[("a", 4, 10)]).unwrap();
        counts.check_at(Now::at(6065.0), &[("a", 1, 10)]).unwrap();
        let state = counts.state();
        assert_eq!(state.owed, [("a".to_owned(), 100, 4)]);
        let entry = &state.entries["a"];
        assert_eq!((entry.window.previous, entry.pending), (4, 1));
    }
}
