//! The Discord channel: direct messages from a bot through Discord's REST API (serenity's
//! `Http`, no gateway), and the bot's slash commands `/link` and `/support` over an
//! interactions endpoint (R5, R53).
//!
//! # Layout
//!
//! - this file: the `discord.*` settings, [`DiscordSender`] and its [`ChannelSender`] and
//!   [`ChatChannel`] implementations: opening and caching DM channels, sending the parts of a
//!   message, the request limiter.
//! - [`text`]: a job as Discord messages: the subject as a bold first line, markdown escaped,
//!   split at 2000 characters.
//! - [`errors`]: Discord's answers mapped to exactly one kind of failure.
//! - [`interactions`]: `POST /discord/interactions`: signature check, PING, the commands.
//! - [`commands`]: the slash commands, registered once at start.
//!
//! # Addresses
//!
//! `Address::Discord(id)` is a user: the bot opens the DM channel (`POST /users/@me/channels`)
//! and sends there. Herald has no address form for a guild channel, so only users are
//! reached. The user must share a server with the bot (or have installed it), and have run
//! `/link` (R5).
//!
//! # Errors
//!
//! | Discord's answer | kind | code |
//! |---|---|---|
//! | 200 | delivered, with the (first) message's id as provider id | — |
//! | 50007 Cannot send messages to this user (DMs closed, bot blocked, no common server) | permanent: the router marks the address unreachable (R6) | `cannot_message_user` |
//! | 10013 Unknown User (opening the DM) | permanent | `unknown_user` |
//! | 10003 Unknown Channel (a cached DM channel is dropped from the cache and opened once more first) | permanent | `unknown_channel` |
//! | 50001 Missing Access, 50013 Missing Permissions | permanent | `missing_access`, `missing_permissions` |
//! | 429 | throttled for `retry_after` (float seconds in the body) when it can be read, else 1 s ([`errors::DEFAULT_RETRY_AFTER`]); the whole bot when `global` or unknown, only this job for a route's bucket | `rate_limited` |
//! | 401 (the token is wrong or revoked) | unhealthy | `provider_rejected_account` |
//! | 5xx | provider fault | `provider_error` |
//! | any other 4xx (50035 invalid form body, ...) | permanent | `rejected` |
//! | no answer within `request_timeout_ms` | provider fault | `timeout` |
//! | the connection failed or dropped | provider fault | `transport` |
//! | any other status, or an answer that cannot be read | provider fault | `provider_error` |
//!
//! Discord's error codes are checked before the status, except for 429 and 401.
//!
//! With `api_proxy` set (tests, or a proxy that rate-limits for several processes) serenity's
//! ratelimiter must be off (it sends its requests without the proxy), so a 429 comes back as
//! an error whose body serenity did not keep: its wait is the 1 s default. In production
//! serenity's ratelimiter stays on: it follows Discord's per-route buckets from the
//! `x-ratelimit-*` headers, and on a 429 it sleeps for `retry-after` and retries by itself,
//! within our `request_timeout_ms`.
//!
//! # Rate limits (R7)
//!
//! Discord allows a bot 50 requests/s in all. A job costs one request per part, plus one to
//! open the DM channel the first time. Every request takes a token from this sender's own
//! bucket of `requests_per_second` (default 50), which holds the total; the runtime's
//! account bucket lets jobs go as fast (50/s), since a job takes at least one request. A
//! person gets one message a second: 5 in any 5 s, the bucket Discord's headers show for a
//! DM channel. No bucket allows a burst on top of its rate, so no second (no 5 s for one
//! person) ever holds more than Discord counts: `just bench-senders` measures that against a
//! fake counting sliding windows.
//!
//! # Long messages and retries
//!
//! A text over 2000 characters goes as several messages, in order. Each message that
//! Discord accepted is remembered per delivery id (in memory, bounded) until the last one is
//! sent; a retry of the same delivery in this process starts after the last part that was
//! delivered, so no part is sent twice. After a restart of the sender a retry starts again
//! from the first part (at least once).
//!
//! # DM channel cache
//!
//! User id -> DM channel id, at most `dm_cache_size` entries. When it is full it is
//! cleared (simpler than LRU, and an entry costs only one `POST /users/@me/channels` to
//! learn again: Discord returns the same channel for the same user).

pub mod commands;
pub mod errors;
pub mod interactions;
pub mod text;

use std::hash::{Hash, Hasher};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ed25519_dalek::VerifyingKey;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_runtime::config::Secret;
use messaging_core::job::SendJob;
use messaging_core::{Address, Channel};
use sender_runtime::bounded::Bounded;
use sender_runtime::limits::RateLimits;
use sender_runtime::{BuildError, Built, ChannelSender, ChatChannel, Inbound, Receipt, SendError};
use serde::Deserialize;
use serenity::builder::{CreateAllowedMentions, CreateMessage};
use serenity::http::{Http, HttpBuilder};
use serenity::model::channel::Nonce;
use serenity::model::id::{ApplicationId, ChannelId, UserId};

use crate::errors::{ApiError, UNKNOWN_CHANNEL, api_error, send_error, timed_out};

/// `discord.*` (`HERALD_DISCORD__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordSettings {
    /// The bot's token (Developer Portal, Bot).
    pub bot_token: Secret<String>,
    /// The application's id (Developer Portal, General Information); needed for the
    /// commands route.
    #[serde(deserialize_with = "herald_runtime::config::lenient_string")]
    pub application_id: Option<String>,
    /// The application's public key (64 hex digits), to verify interactions.
    #[serde(deserialize_with = "herald_runtime::config::lenient_string")]
    pub public_key: Option<String>,
    /// A base URL that serves `/api/v10/...` instead of discord.com (tests, or an HTTP proxy
    /// that rate-limits for several processes). Turns serenity's ratelimiter off.
    pub api_proxy: Option<String>,
    /// One request to Discord may take this long.
    pub request_timeout_ms: u64,
    /// DM channels remembered, by user.
    pub dm_cache_size: usize,
    /// Requests per second to Discord, whatever they are for (Discord: 50 per bot).
    pub requests_per_second: u32,
}

impl Default for DiscordSettings {
    fn default() -> Self {
        DiscordSettings {
            bot_token: Secret::default(),
            application_id: None,
            public_key: None,
            api_proxy: None,
            request_timeout_ms: 10_000,
            dm_cache_size: 10_000,
            requests_per_second: 50,
        }
    }
}

/// What the runtime loads. No `deny_unknown_fields` here: this struct sees every section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DiscordConfig {
    pub discord: DiscordSettings,
}

pub struct DiscordSender {
    http: Http,
    public_key: VerifyingKey,
    request_timeout: Duration,
    /// Discord's global limit, counted per request (a job makes one or more).
    requests: DefaultDirectRateLimiter,
    dm_channels: Bounded<u64, u64>,
    /// Parts already delivered, per delivery (or answer) not yet complete.
    progress: Bounded<String, Progress>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    parts_sent: usize,
    first_message_id: Option<u64>,
}

/// A request that failed: the kind of failure, and Discord's answer when there was one.
struct Failed {
    api: Option<ApiError>,
    error: SendError,
}

impl ChannelSender for DiscordSender {
    const CHANNEL: Channel = Channel::Discord;
    type Config = DiscordConfig;

    fn default_limits() -> RateLimits {
        RateLimits {
            // A job takes one request, or two when it opens the DM first: the sender's own
            // request bucket (50/s) holds the total, so jobs may go as fast as requests.
            account_per_second: 50,
            // No bursts: evenly spaced, any second (any 5 s for one person) holds at most
            // what Discord allows; a burst on top of the full rate would put more in.
            account_burst: 1,
            // One a second to a person: 5 in any 5 s, Discord's bucket for a DM channel.
            recipient_interval: Duration::from_secs(1),
            recipient_burst: 1,
            recipient_windows: Vec::new(),
        }
    }

    async fn build(config: DiscordConfig) -> Result<Built<Self>, BuildError> {
        let settings = config.discord;
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let token = settings.bot_token.expose().trim().to_owned();
        let application_id = set(&settings.application_id);
        let public_key = set(&settings.public_key);
        let mut missing = Vec::new();
        if token.is_empty() {
            missing.push("HERALD_DISCORD__BOT_TOKEN");
        }
        if application_id.is_none() {
            missing.push("HERALD_DISCORD__APPLICATION_ID");
        }
        if public_key.is_none() {
            missing.push("HERALD_DISCORD__PUBLIC_KEY");
        }
        let (Some(application_id), Some(public_key), false) =
            (application_id, public_key, token.is_empty())
        else {
            return Ok(Built::NotConfigured(format!("set {}", missing.join(", "))));
        };
        let invalid = |reason: String| BuildError {
            channel: Channel::Discord,
            reason,
        };
        let application_id = application_id
            .parse::<NonZeroU64>()
            .map(ApplicationId::from)
            .map_err(|_| {
                invalid(format!(
                    "HERALD_DISCORD__APPLICATION_ID {application_id:?} is not a Discord id"
                ))
            })?;
        let public_key = parse_public_key(&public_key).map_err(invalid)?;
        let requests_per_second =
            NonZeroU32::new(settings.requests_per_second).ok_or_else(|| {
                invalid("HERALD_DISCORD__REQUESTS_PER_SECOND must be at least 1".into())
            })?;

        let mut builder = HttpBuilder::new(&token).application_id(application_id);
        if let Some(proxy) = set(&settings.api_proxy) {
            if !proxy.starts_with("http://") && !proxy.starts_with("https://") {
                return Err(invalid(format!(
                    "HERALD_DISCORD__API_PROXY {proxy:?} is not an http(s) URL"
                )));
            }
            // serenity's ratelimiter sends without the proxy: it must be off, and our own
            // request bucket and the runtime's limits are what holds the rate then.
            builder = builder.proxy(proxy).ratelimiter_disabled(true);
        }
        Ok(Built::Ready(DiscordSender {
            http: builder.build(),
            public_key,
            request_timeout: Duration::from_millis(settings.request_timeout_ms.max(1)),
            requests: RateLimiter::direct(request_quota(requests_per_second)),
            dm_channels: Bounded::new(settings.dm_cache_size),
            progress: Bounded::new(10_000),
        }))
    }

    async fn send(&self, job: &SendJob) -> Result<Receipt, SendError> {
        let Address::Discord(id) = &job.to else {
            return Err(SendError::permanent(
                "invalid_address",
                "not a Discord user id",
            ));
        };
        let user = user_id(id.0)?;
        let parts = text::render(job.content.subject.as_deref(), &job.content.text);
        let first = self
            .deliver(user, &parts, format!("job:{}", job.delivery_id))
            .await?;
        Ok(Receipt {
            provider_message_id: first.map(|id| id.to_string()),
        })
    }

    async fn probe(&self) -> Result<(), String> {
        match self.call(self.http.get_current_user()).await {
            Ok(_) => Ok(()),
            Err(failed) => Err(failed.error.failure().message.clone()),
        }
    }
}

impl ChatChannel for DiscordSender {
    async fn listen(bot: Arc<Self>, inbound: Inbound) {
        commands::register_until_done(&bot, &inbound).await;
        inbound.shutdown.cancelled().await;
    }

    fn routes(bot: Arc<Self>, inbound: Inbound) -> Router {
        interactions::router(bot.public_key, inbound.inbox)
    }

    async fn answer(&self, chat: &Address, text: &str) -> Result<(), SendError> {
        let Address::Discord(id) = chat else {
            return Err(SendError::permanent(
                "invalid_address",
                "not a Discord user id",
            ));
        };
        let user = user_id(id.0)?;
        let parts = text::render(None, text);
        let mut hasher = std::hash::DefaultHasher::new();
        text.hash(&mut hasher);
        self.deliver(user, &parts, format!("answer:{user}:{:x}", hasher.finish()))
            .await?;
        Ok(())
    }
}

impl DiscordSender {
    /// One request: after a token from the request bucket, bounded by the request timeout.
    async fn call<T>(
        &self,
        request: impl std::future::Future<Output = serenity::Result<T>>,
    ) -> Result<T, Failed> {
        self.requests.until_ready().await;
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Failed {
                api: api_error(&error),
                error: send_error(&error),
            }),
            Err(_) => Err(Failed {
                api: None,
                error: timed_out(self.request_timeout),
            }),
        }
    }

    /// The user's DM channel, and whether it came from the cache.
    async fn dm_channel(&self, user: UserId) -> Result<(ChannelId, bool), SendError> {
        if let Some(channel) = self.dm_channels.get(&user.get()) {
            return Ok((ChannelId::new(channel), true));
        }
        let channel = self
            .call(user.create_dm_channel(&self.http))
            .await
            .map_err(|f| f.error)?;
        self.dm_channels.insert(user.get(), channel.id.get());
        Ok((channel.id, false))
    }

    /// Sends `parts` to the user's DM, from the first part not yet delivered under `key`.
    /// Returns the first message's id.
    async fn deliver(
        &self,
        user: UserId,
        parts: &[String],
        key: String,
    ) -> Result<Option<u64>, SendError> {
        if parts.is_empty() {
            return Err(SendError::permanent(
                "empty_message",
                "the message has no text to send",
            ));
        }
        let (mut channel, mut cached) = self.dm_channel(user).await?;
        let mut progress = self.progress.get(&key).unwrap_or_default();
        while let Some(part) = parts.get(progress.parts_sent) {
            let message = CreateMessage::new()
                .content(part.as_str())
                // Texts are not allowed to ping anyone (`@everyone` in a text shows, silently).
                .allowed_mentions(CreateAllowedMentions::new())
                // Discord drops a message whose nonce the bot used in the last few minutes
                // and answers with the first one: a job redelivered after a crash, or to
                // another replica, does not reach the person twice.
                .nonce(Nonce::String(nonce_of(&key, progress.parts_sent)))
                .enforce_nonce(true);
            match self.call(channel.send_message(&self.http, message)).await {
                Ok(sent) => {
                    progress.parts_sent += 1;
                    progress.first_message_id.get_or_insert(sent.id.get());
                    self.progress.insert(key.clone(), progress);
                }
                Err(failed) if is_unknown_channel(&failed) => {
                    // A DM channel we remembered may be gone: forget it, and open it again
                    // once before believing Discord.
                    self.dm_channels.remove(&user.get());
                    if !cached {
                        return Err(failed.error);
                    }
                    (channel, cached) = self.dm_channel(user).await?;
                }
                Err(failed) => return Err(failed.error),
            }
        }
        self.progress.remove(&key);
        Ok(progress.first_message_id)
    }
}

/// The nonce of part `part` of the message sent under `key` (`job:<delivery id>`): the same
/// for every attempt and every replica, at most 25 characters as Discord allows. A hash, not
/// the id itself, because a delivery id with its part number is longer than that.
fn nonce_of(key: &str, part: usize) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{key}#{part}").as_bytes());
    hex::encode(&digest[..12])
}

fn is_unknown_channel(failed: &Failed) -> bool {
    failed
        .api
        .as_ref()
        .is_some_and(|a| a.code == UNKNOWN_CHANNEL)
}

/// The request bucket: no second may hold more than `per_second` requests (Discord counts a
/// sliding second, as far as anyone can tell). A bucket with no burst loses every late
/// wake-up of the timer (91% of 50/s measured, with jobs waiting); a burst of two absorbs
/// that, and a rate 1.1 under the limit keeps any second at `floor(rate) + 2` requests, at
/// most the limit. Limits below 50 keep no burst and run 1% under.
fn request_quota(per_second: NonZeroU32) -> Quota {
    let limit = f64::from(per_second.get());
    let (rate, burst) = if limit >= 50.0 {
        (limit - 1.1, 2)
    } else {
        (limit / 1.01, 1)
    };
    Quota::with_period(Duration::from_secs_f64(1.0 / rate))
        .unwrap_or_else(|| Quota::per_second(per_second))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

fn user_id(id: u64) -> Result<UserId, SendError> {
    NonZeroU64::new(id)
        .map(UserId::from)
        .ok_or_else(|| SendError::permanent("invalid_address", "Discord user id 0"))
}

/// The application's public key from its 64 hex digits.
pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            "HERALD_DISCORD__PUBLIC_KEY must be the application's public key: 64 hex digits"
                .to_owned()
        })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| format!("HERALD_DISCORD__PUBLIC_KEY is not an ed25519 public key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_second_of_the_request_bucket_holds_more_than_the_limit() {
        for limit in [1, 5, 10, 50, 1000] {
            let quota = request_quota(NonZeroU32::new(limit).unwrap());
            let period = quota.replenish_interval().as_secs_f64();
            let burst = quota.burst_size().get();
            // At most floor(1 s / period) + burst cells conform in any second.
            let worst = (1.0 / period).floor() as u32 + burst;
            assert!(worst <= limit, "{limit}: {worst}");
            assert!(1.0 / period >= 0.95 * f64::from(limit), "{limit}: too slow");
        }
    }

    #[test]
    fn the_cache_is_cleared_when_full() {
        let cache = Bounded::new(2);
        cache.insert(1u64, 10u64);
        cache.insert(2, 20);
        cache.insert(2, 21);
        assert_eq!(
            cache.get(&1),
            Some(10),
            "replacing an entry keeps the others"
        );
        cache.insert(3, 30);
        assert_eq!(
            (cache.get(&1), cache.get(&2), cache.get(&3)),
            (None, None, Some(30))
        );
    }

    #[tokio::test]
    async fn missing_settings_are_named() {
        let Ok(Built::NotConfigured(what)) = DiscordSender::build(DiscordConfig::default()).await
        else {
            panic!("not configured");
        };
        assert_eq!(
            what,
            "set HERALD_DISCORD__BOT_TOKEN, HERALD_DISCORD__APPLICATION_ID, HERALD_DISCORD__PUBLIC_KEY"
        );
    }

    #[tokio::test]
    async fn a_bad_public_key_stops_the_sender() {
        let config = DiscordConfig {
            discord: DiscordSettings {
                bot_token: Secret::new("t".into()),
                application_id: Some("123".into()),
                public_key: Some("abc".into()),
                ..DiscordSettings::default()
            },
        };
        let Err(error) = DiscordSender::build(config).await else {
            panic!("a build error");
        };
        assert!(error.reason.contains("64 hex digits"), "{error}");
    }
}
