//! Counting, Jepsen-style: what the producers were told was accepted against what reached
//! the provider, and how often.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use herald_testkit::fake_sms::FakeSms;
use tokio::time::Instant;

use crate::load::{Ledger, key_of};

#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Messages Herald said it took (a publisher confirm, a `202`).
    pub accepted: usize,
    /// Accepted messages that reached the provider at least once.
    pub delivered: usize,
    /// Accepted messages that never reached it.
    pub lost: usize,
    /// Arrivals beyond the first of a message.
    pub duplicated: usize,
    /// Messages that arrived although the producer was never told they were accepted (a
    /// request whose answer was lost): allowed, and counted.
    pub unexpected: usize,
    /// A few lost keys, to look for in the logs.
    pub lost_examples: Vec<String>,
}

/// Counts the provider's records of this run's keys (`<prefix>-…`) against the ledger.
pub fn tally(ledger: &Ledger, sms: &FakeSms, prefix: &str) -> Tally {
    let accepted = ledger.accepted();
    let arrivals = arrivals(sms, prefix);
    let delivered = accepted
        .iter()
        .filter(|k| arrivals.contains_key(*k))
        .count();
    let mut lost_examples: Vec<String> = accepted
        .iter()
        .filter(|k| !arrivals.contains_key(*k))
        .take(5)
        .cloned()
        .collect();
    lost_examples.sort();
    Tally {
        accepted: accepted.len(),
        delivered,
        lost: accepted.len() - delivered,
        duplicated: arrivals.values().map(|n| n - 1).sum(),
        unexpected: arrivals.keys().filter(|k| !accepted.contains(*k)).count(),
        lost_examples,
    }
}

/// How often each key of this run reached the provider.
fn arrivals(sms: &FakeSms, prefix: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let own = format!("{prefix}-");
    for sms in sms.received() {
        if let Some(key) = key_of(&sms.body).filter(|k| k.starts_with(&own)) {
            *counts.entry(key.to_owned()).or_default() += 1;
        }
    }
    counts
}

/// Waits until every accepted message of the run reached the provider (then 10 s more, for
/// late repeats: the suite's longest retry delay is 5 s), or nothing new arrived for
/// `quiet`, or `max` passed.
pub async fn settle(ledger: &Ledger, sms: &FakeSms, prefix: &str, quiet: Duration, max: Duration) {
    let started = Instant::now();
    let mut last_len = sms.received_len();
    let mut last_change = Instant::now();
    loop {
        let accepted: HashSet<String> = ledger.accepted();
        let arrived = arrivals(sms, prefix);
        if accepted.iter().all(|k| arrived.contains_key(k)) {
            tokio::time::sleep(Duration::from_secs(10)).await;
            return;
        }
        let len = sms.received_len();
        if len != last_len {
            last_len = len;
            last_change = Instant::now();
        }
        if last_change.elapsed() > quiet || started.elapsed() > max {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The provider's arrivals over time, sampled four times a second, to tell how soon after a
/// fault delivery is back at full speed.
pub struct Sampler {
    samples: std::sync::Arc<std::sync::Mutex<Vec<(Instant, usize)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(sms: std::sync::Arc<FakeSms>) -> Sampler {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = {
            let samples = samples.clone();
            tokio::spawn(async move {
                loop {
                    let len = sms.received_len();
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Instant::now(), len));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        Sampler { samples, task }
    }

    /// Arrivals a second between two instants (from the first sample at or after `from`, to
    /// the last at or before `to`); `None` with less than 3 s of samples between them.
    pub fn rate_between(&self, from: Instant, to: Instant) -> Option<f64> {
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (a, n) = *samples.iter().find(|(s, _)| *s >= from)?;
        let (b, m) = *samples.iter().rev().find(|(s, _)| *s <= to)?;
        let span = b.checked_duration_since(a)?;
        (span >= Duration::from_secs(3)).then(|| (m - n) as f64 / span.as_secs_f64())
    }

    /// What "back to speed" means after a fault at `fault`: 90% of the offered rate, or of the
    /// rate the provider got in the 10 s before the fault when that was lower (the stack's own
    /// limit on this machine, which a recovery cannot beat). Without 3 s of arrivals before
    /// the fault to measure, or with a rate below half the offered one (the stack was not
    /// keeping up to begin with), the offered rate is the measure.
    pub fn full_speed(&self, fault: Instant, offered: u32) -> f64 {
        let offered = f64::from(offered);
        let before = self
            .rate_between(fault - Duration::from_secs(10), fault)
            .filter(|r| *r >= offered / 2.0)
            .unwrap_or(offered);
        0.9 * offered.min(before)
    }

    /// The time from `healed` until the first full second after it in which the provider got
    /// at least `rate` messages; `None` if that never happened.
    pub fn back_to_speed(&self, healed: Instant, rate: f64) -> Option<Duration> {
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let after: Vec<&(Instant, usize)> = samples.iter().filter(|(t, _)| *t >= healed).collect();
        for (i, (start, count)) in after.iter().enumerate() {
            let (end, later) = after[i..]
                .iter()
                .find(|(t, _)| t.duration_since(*start) >= Duration::from_secs(1))?;
            let secs = end.duration_since(*start).as_secs_f64();
            if (later - count) as f64 / secs >= rate {
                return Some(end.duration_since(healed));
            }
        }
        None
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until every accepted message of the run reached the provider; `false` after `max`.
pub async fn all_arrived(ledger: &Ledger, sms: &FakeSms, prefix: &str, max: Duration) -> bool {
    let deadline = Instant::now() + max;
    loop {
        let arrived = arrivals(sms, prefix);
        if ledger.accepted().iter().all(|k| arrived.contains_key(k)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
