//! `sender.*`: the settings every sender shares. Channel settings live in their own sections.

use std::time::Duration;

use serde::Deserialize;

use crate::limits::{RateLimits, Window};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SenderConfig {
    /// A delivery still failing this long after its first attempt fails for good as
    /// temporary ("retried and gave up", R4 a).
    pub max_age_secs: u64,
    /// First retry delay; it doubles per attempt, with jitter, up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// One send may take this long before it counts as a provider timeout.
    pub send_timeout_ms: u64,
    /// Consecutive provider faults that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How often an open breaker probes the provider.
    pub breaker_probe_ms: u64,
    /// Delivery ids remembered as sent, to drop redelivered jobs.
    pub recent_capacity: usize,
    /// Overrides of the channel's default rate limits.
    pub account_per_second: Option<u32>,
    pub account_burst: Option<u32>,
    pub recipient_interval_ms: Option<u64>,
    pub recipient_burst: Option<u32>,
    /// The recipient's sliding windows, `COUNT/SECONDS` comma-separated, or `none`.
    #[serde(deserialize_with = "herald_runtime::config::lenient_string")]
    pub recipient_windows: Option<String>,
    /// Issue #18: replicas share the account's limit (each takes an equal part), counted as
    /// the consumers of the channel's queues. Off: each replica has the whole limit.
    pub share_account: bool,
    /// Issue #16: `delivered` events ready at the same time go to the router as one bundle
    /// (`delivery.<channel>.bundle`). Off: one message per event, for a consumer of the events
    /// exchange that reads only single events.
    pub bundle_events: bool,
    /// How often the replicas are counted (milliseconds).
    pub replica_check_ms: u64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            max_age_secs: 24 * 3600,
            retry_base_ms: 5_000,
            retry_max_ms: 3_600_000,
            send_timeout_ms: 30_000,
            breaker_threshold: 5,
            breaker_probe_ms: 10_000,
            recent_capacity: 100_000,
            account_per_second: None,
            account_burst: None,
            recipient_interval_ms: None,
            recipient_burst: None,
            recipient_windows: None,
            share_account: true,
            bundle_events: true,
            replica_check_ms: 2_000,
        }
    }
}

impl SenderConfig {
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_secs)
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }

    pub fn replica_check(&self) -> Duration {
        Duration::from_millis(self.replica_check_ms.max(100))
    }

    pub fn breaker_probe(&self) -> Duration {
        Duration::from_millis(self.breaker_probe_ms)
    }

    /// The channel's defaults with the operator's overrides.
    pub fn limits(&self, defaults: RateLimits) -> Result<RateLimits, String> {
        let recipient_windows = match self.recipient_windows.as_deref().map(str::trim) {
            None | Some("") => defaults.recipient_windows,
            Some(list) => Window::parse_list(list)
                .map_err(|e| format!("HERALD_SENDER__RECIPIENT_WINDOWS: {e}"))?,
        };
        Ok(RateLimits {
            account_per_second: self
                .account_per_second
                .unwrap_or(defaults.account_per_second),
            account_burst: self.account_burst.unwrap_or(defaults.account_burst),
            recipient_interval: self
                .recipient_interval_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.recipient_interval),
            recipient_burst: self.recipient_burst.unwrap_or(defaults.recipient_burst),
            recipient_windows,
        })
    }
}
