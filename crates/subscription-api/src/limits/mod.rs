//! Request rate limits (R18): per caller on the subscription and registration routes, per
//! subscription on triggers. Over the limit: 429 with `Retry-After`.
//!
//! The buckets live in each replica's memory, so N replicas allow up to N times the rate.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::startup::AppState;

pub struct RateLimits {
    callers: DefaultKeyedRateLimiter<String>,
    triggers: DefaultKeyedRateLimiter<(Uuid, String)>,
    /// Checks since the idle buckets were last dropped.
    checks: AtomicU64,
    unknown_keys: UnknownKeys,
}

/// API keys the database did not know, remembered for [`UnknownKeys::TTL`] (issue #17): a
/// flood of made-up `hk_` keys costs one lookup per key and TTL, not one per request. Herald
/// makes every key, so a key unknown now does not become valid later (a revoked one stays
/// revoked). Bounded: past [`UnknownKeys::MAX`] keys the oldest half goes, which only costs
/// lookups again. Only a keyed hash of each key is kept, so neither the memory nor a heap
/// dump holds what was sent.
struct UnknownKeys {
    hasher: std::hash::RandomState,
    seen: std::sync::Mutex<std::collections::HashMap<u64, std::time::Instant>>,
}

impl UnknownKeys {
    const TTL: std::time::Duration = std::time::Duration::from_secs(300);
    const MAX: usize = 10_000;

    fn key(&self, token: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(token)
    }

    fn contains(&self, token: &str) -> bool {
        let key = self.key(token);
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&key).is_some_and(|at| at.elapsed() < Self::TTL)
    }

    fn note(&self, token: &str) {
        let key = self.key(token);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= Self::MAX {
            seen.retain(|_, at| at.elapsed() < Self::TTL);
            if seen.len() >= Self::MAX {
                let mut ages: Vec<std::time::Instant> = seen.values().copied().collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                seen.retain(|_, at| *at > cut);
            }
        }
        seen.insert(key, std::time::Instant::now());
    }
}

/// Every this many checks, buckets that are full again are dropped, so memory follows the
/// callers of the last minute rather than every credential ever sent.
const PRUNE_EVERY: u64 = 4096;

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN))
}

impl RateLimits {
    pub fn new(config: &LimitsConfig) -> Arc<RateLimits> {
        Arc::new(RateLimits {
            callers: RateLimiter::keyed(per_minute(config.caller_per_minute)),
            triggers: RateLimiter::keyed(per_minute(config.trigger_per_minute)),
            checks: AtomicU64::new(0),
            unknown_keys: UnknownKeys {
                hasher: std::hash::RandomState::new(),
                seen: Default::default(),
            },
        })
    }

    /// Whether this API key was looked up and not found a moment ago.
    pub fn known_unknown_key(&self, token: &str) -> bool {
        self.unknown_keys.contains(token)
    }

    /// Remembers an API key the database does not know.
    pub fn note_unknown_key(&self, token: &str) {
        self.unknown_keys.note(token);
    }

    fn forget_idle_now_and_then(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.callers.retain_recent();
            self.callers.shrink_to_fit();
            self.triggers.retain_recent();
            self.triggers.shrink_to_fit();
        }
    }

    /// One trigger of a subscription, or the 429 to answer.
    pub fn trigger(&self, tenant: Uuid, subscription: &str) -> Result<(), ApiError> {
        self.forget_idle_now_and_then();
        self.triggers
            .check_key(&(tenant, subscription.to_owned()))
            .map_err(|not_until| {
                too_many(
                    not_until.wait_time_from(DefaultClock::default().now()),
                    "triggers of this subscription",
                )
            })
    }
}

fn too_many(wait: std::time::Duration, what: &str) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError {
        retry_after: Some(seconds.max(1)),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            format!("too many {what}; try again in {seconds} s"),
        )
    }
}

/// Middleware for the subscription and registration routes. The key is a hash of the
/// credential, so it is per caller without a database lookup; requests without one are left
/// to authentication to refuse.
pub async fn per_caller(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(credential) = crate::auth::credential(request.headers()) {
        let key = hex::encode(&Sha256::digest(credential.as_bytes())[..16]);
        state.limits.forget_idle_now_and_then();
        if let Err(not_until) = state.limits.callers.check_key(&key) {
            return too_many(
                not_until.wait_time_from(DefaultClock::default().now()),
                "requests from this caller",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Adds `Retry-After` to a problem response (a 429, or an empty room pool's 503).
pub fn with_retry_after(mut response: Response, seconds: u64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_remembered_and_bounded() {
        let limits = RateLimits::new(&LimitsConfig::default());
        assert!(!limits.known_unknown_key("hk_made_up"));
        limits.note_unknown_key("hk_made_up");
        assert!(limits.known_unknown_key("hk_made_up"));
        assert!(!limits.known_unknown_key("hk_other"));
        for i in 0..UnknownKeys::MAX + 10 {
            limits.note_unknown_key(&format!("hk_{i}"));
        }
        let held = limits
            .unknown_keys
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        assert!(held <= UnknownKeys::MAX, "{held}");
        assert!(limits.known_unknown_key(&format!("hk_{}", UnknownKeys::MAX + 9)));
    }
}
