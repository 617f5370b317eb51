//! Request rate limits (R18, issue #17). Over a limit: 429 with `Retry-After`.
//!
//! - Before authentication, per client address: failed authentications ([`clients`]), and
//!   a negative cache of unknown API keys ([`UnknownKeys`]), so made-up credentials cost
//!   neither a fresh bucket nor a database lookup each.
//! - After it, per principal (the tenant and the API key or token subject): the
//!   subscription and registration routes (R18). Per subscription: triggers (R18). Per
//!   tenant: direct messages and triggers, and the recipients they reach.
//!
//! The limits after authentication hold for every API replica together ([`shared`]); the
//! ones before it are per replica, so a client's made-up credentials never reach the
//! database at all.

mod clients;
mod shared;
mod window;

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_storage::PgPool;
use uuid::Uuid;

pub use clients::Client;

use crate::auth::Caller;
use crate::config::LimitsConfig;
use crate::error::ApiError;
use crate::startup::AppState;

pub struct RateLimits {
    caller_per_minute: u64,
    trigger_per_minute: u64,
    tenant_messages_per_minute: u64,
    tenant_recipients_per_minute: u64,
    trusted_proxies: Vec<ipnet::IpNet>,
    shared: shared::SharedCounts,
    failures: clients::Failures,
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

impl RateLimits {
    /// Limits shared through `pool` with the other replicas, synced every
    /// [`LimitsConfig::limits_sync_ms`] in the background while they are in use; without a
    /// pool, this process's own.
    pub fn new(config: &LimitsConfig, pool: Option<PgPool>) -> Result<Arc<RateLimits>, String> {
        let limits = Arc::new(RateLimits {
            caller_per_minute: u64::from(config.caller_per_minute),
            trigger_per_minute: u64::from(config.trigger_per_minute),
            tenant_messages_per_minute: u64::from(config.tenant_messages_per_minute),
            tenant_recipients_per_minute: u64::from(config.tenant_recipients_per_minute),
            trusted_proxies: config.trusted_proxies()?,
            shared: shared::SharedCounts::new(pool.clone()),
            failures: clients::Failures::new(config.ip_failures_per_minute),
            unknown_keys: UnknownKeys {
                hasher: std::hash::RandomState::new(),
                seen: Default::default(),
            },
        });
        if pool.is_some() {
            let interval = Duration::from_millis(config.limits_sync_ms.max(10));
            sync_every(Arc::downgrade(&limits), interval);
        }
        Ok(limits)
    }

    /// Adds this replica's counts to the shared ones and reads the others' now (the
    /// background sync does it every few hundred milliseconds anyway).
    pub async fn sync_now(&self) {
        self.shared.sync().await;
    }

    /// Whether this API key was looked up and not found a moment ago.
    pub fn known_unknown_key(&self, token: &str) -> bool {
        self.unknown_keys.contains(token)
    }

    /// Remembers an API key the database does not know.
    pub fn note_unknown_key(&self, token: &str) {
        self.unknown_keys.note(token);
    }

    /// The request's client, as the failure limit counts it.
    pub fn client(&self, parts: &Parts) -> Option<Client> {
        Client::of_request(parts, &self.trusted_proxies)
    }

    /// The 429 for a client that failed to authenticate too often lately.
    pub fn refuse_failing(&self, client: Option<Client>) -> Result<(), ApiError> {
        match client.and_then(|c| self.failures.blocked(c)) {
            Some(wait) => Err(too_many(wait, "failed authentications from this address")),
            None => Ok(()),
        }
    }

    pub fn note_failure(&self, client: Option<Client>) {
        if let Some(client) = client {
            self.failures.note(client);
        }
    }

    /// One request of an authenticated caller to the subscription and registration routes.
    pub fn caller(&self, caller: &Caller) -> Result<(), ApiError> {
        let key = match (&caller.tenant, caller.is_global_admin()) {
            // A global admin is one caller whichever tenant it names.
            (Some(tenant), false) => format!("caller:{}:{}", tenant.id, caller.actor),
            _ => format!("caller:*:{}", caller.actor),
        };
        self.shared
            .check(&[(&key, 1, self.caller_per_minute)])
            .map_err(|wait| too_many(wait, "requests from this caller"))
    }

    /// One trigger of a subscription reaching `recipients` registrations: the subscription's
    /// limit and the tenant's.
    pub fn trigger(
        &self,
        tenant: Uuid,
        subscription: &str,
        recipients: u64,
    ) -> Result<(), ApiError> {
        let trigger = format!("trigger:{tenant}:{subscription}");
        let (messages, reached) = tenant_keys(tenant);
        self.shared
            .check(&[
                (&trigger, 1, self.trigger_per_minute),
                (&messages, 1, self.tenant_messages_per_minute),
                (&reached, recipients, self.tenant_recipients_per_minute),
            ])
            .map_err(|wait| {
                too_many(
                    wait,
                    "triggers of this subscription or messages of this tenant",
                )
            })
    }

    /// One direct message of a tenant to `recipients` people.
    pub fn message(&self, tenant: Uuid, recipients: u64) -> Result<(), ApiError> {
        let (messages, reached) = tenant_keys(tenant);
        self.shared
            .check(&[
                (&messages, 1, self.tenant_messages_per_minute),
                (&reached, recipients, self.tenant_recipients_per_minute),
            ])
            .map_err(|wait| too_many(wait, "messages or recipients of this tenant"))
    }
}

fn tenant_keys(tenant: Uuid) -> (String, String) {
    (
        format!("tenant-messages:{tenant}"),
        format!("tenant-recipients:{tenant}"),
    )
}

fn sync_every(limits: Weak<RateLimits>, interval: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(limits) = limits.upgrade() else {
                return;
            };
            limits.shared.sync().await;
        }
    });
}

fn too_many(wait: Duration, what: &str) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    ApiError {
        retry_after: Some(seconds),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            format!("too many {what}; try again in {seconds} s"),
        )
    }
}

/// Middleware for the subscription and registration routes: authenticates the caller (the
/// handler then finds it in the request's extensions) and counts the request against the
/// caller's limit.
pub async fn per_caller(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => caller,
        Err(error) => return error.into_response(),
    };
    if let Err(error) = state.limits.caller(&caller) {
        return error.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
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
        let limits = RateLimits::new(&LimitsConfig::default(), None).unwrap();
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
