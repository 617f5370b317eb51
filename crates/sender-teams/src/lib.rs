//! The Microsoft Teams channel (R38): proactive messages from a Bot Framework bot through the
//! Bot Connector REST API (reqwest; no SDK exists for Rust), and the bot's messaging
//! endpoint, where people link their chat with a code and open support tickets (R5, R53).
//!
//! # Layout
//!
//! - this file: the `teams.*` settings, [`TeamsSender`] and its [`ChannelSender`] and
//!   [`ChatChannel`] implementations: sending the parts of a message, the request limiter.
//! - [`token`]: the client-credentials token, cached until shortly before it expires.
//! - [`connector`]: the activities URL (only to trusted hosts), the Bot Connector's answers
//!   mapped to exactly one kind of failure.
//! - [`endpoint`]: `POST /api/messages`: the Bot Framework's JWT, the conversation
//!   reference, the texts for the runtime's inbox.
//! - [`text`]: a job as HTML messages.
//!
//! # Addresses
//!
//! `Address::Teams(chat)` is a conversation reference the bot captured from an activity: the
//! Bot Connector's service URL and the conversation id (a personal chat with the bot, a
//! group chat, or a channel). A person links it by writing `link CODE` to the bot; the router
//! stores it like any chat address. Herald sends its token only to service URLs on
//! `service_hosts` (Teams' own by default), and the API refuses a Teams address typed in.
//! When the bot can no longer write there (blocked, removed), the address becomes
//! unreachable (R6) and the person links again, which captures a fresh reference.
//!
//! # Errors
//!
//! | Bot Connector answer | kind | code |
//! |---|---|---|
//! | 200, 201 | delivered, with the (first) activity's id as provider id | — |
//! | 403 `ConversationBlockedByUser`, `BotNotInConversationRoster`, `BotDisabledByAdmin`, `ForbiddenOperationException` | permanent: the address becomes unreachable (R6) | `conversation_unreachable` |
//! | 404 (`ConversationNotFound`) | permanent: unreachable | `conversation_not_found` |
//! | 429 (`Throttled`) | throttled, the whole bot, for `Retry-After` (else the backoff) | `rate_limited` |
//! | 401 | the token is renewed and the request sent once more; a second 401: unhealthy | `provider_rejected_account` |
//! | 403 with another code | unhealthy | `provider_rejected_account` |
//! | 413 | permanent for this message | `too_large` |
//! | 412, 500, 502, 503, 504, other 5xx | provider fault, retried with backoff | `provider_error` |
//! | any other 4xx | permanent | `rejected` |
//! | a service URL not on `service_hosts` | permanent | `untrusted_service_url` |
//! | the token endpoint refuses the app (400, 401, 403) | unhealthy | `provider_rejected_account` |
//! | no answer within `request_timeout_ms` | provider fault | `timeout` |
//! | the connection failed or dropped | provider fault | `provider_unreachable`, `transport` |
//!
//! # Rate limits (R7)
//!
//! The Bot Connector allows a bot, per conversation, 7 messages a second, 8 in 2 s, 60 in
//! 30 s and 1,800 an hour; the runtime holds each conversation to all four windows
//! ([`RateLimits::recipient_windows`]), deferring a job whose conversation is full rather
//! than holding it. The whole app gets `requests_per_second` (30) requests, counted per
//! request by this sender's own bucket, since a long text takes several.
//!
//! # Long messages and retries
//!
//! A text over [`text::MAX_PART`] characters goes as several messages, in order. The parts
//! the Bot Connector accepted are remembered per delivery (in memory, bounded), so a retry in
//! this process starts after the last one delivered.

pub mod connector;
pub mod endpoint;
pub mod text;
pub mod token;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_jwks::{KeySet, Source};
use herald_runtime::config::Secret;
use messaging_core::job::SendJob;
use messaging_core::{Address, Channel};
use sender_runtime::bounded::Bounded;
use sender_runtime::limits::{RateLimits, Window};
use sender_runtime::{BuildError, Built, ChannelSender, ChatChannel, Inbound, Receipt, SendError};
use serde::Deserialize;

use crate::connector::{ErrorBody, ServiceHosts, classify, message_activity, transport_error};
use crate::endpoint::TokenRules;
use crate::token::Tokens;

/// `teams.*` (`HERALD_TEAMS__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeamsSettings {
    /// The bot's Microsoft app id (Azure Bot resource, Configuration).
    #[serde(deserialize_with = "herald_runtime::config::lenient_string")]
    pub app_id: Option<String>,
    /// The app's client secret.
    pub app_password: Secret<String>,
    /// The tenant whose token endpoint issues the bot's tokens: `botframework.com` for a
    /// multi-tenant bot, the tenant id for a single-tenant one.
    pub tenant: String,
    /// The token endpoint; empty: `https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token`.
    #[serde(deserialize_with = "herald_runtime::config::lenient_string")]
    pub token_url: Option<String>,
    pub scope: String,
    /// Where the Bot Framework publishes the keys that sign its requests to the bot.
    pub openid_metadata_url: String,
    /// The issuer of those requests' tokens.
    pub issuer: String,
    /// The hosts Herald sends its token to, comma-separated (`.example.org` allows
    /// subdomains).
    pub service_hosts: String,
    /// One request to the Bot Connector (or the token endpoint) may take this long.
    pub request_timeout_ms: u64,
    /// Requests per second to the Bot Connector, per app and tenant.
    pub requests_per_second: u32,
    /// The shortest time between two fetches of the Bot Framework's keys.
    pub keys_refresh_secs: u64,
}

impl Default for TeamsSettings {
    fn default() -> Self {
        TeamsSettings {
            app_id: None,
            app_password: Secret::default(),
            tenant: "botframework.com".into(),
            token_url: None,
            scope: "https://api.botframework.com/.default".into(),
            openid_metadata_url:
                "https://login.botframework.com/v1/.well-known/openidconfiguration".into(),
            issuer: "https://api.botframework.com".into(),
            service_hosts: connector::DEFAULT_SERVICE_HOSTS.into(),
            request_timeout_ms: 10_000,
            requests_per_second: 30,
            keys_refresh_secs: 60,
        }
    }
}

/// What the runtime loads. No `deny_unknown_fields` here: this struct sees every section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TeamsConfig {
    pub teams: TeamsSettings,
}

pub struct TeamsSender {
    http: reqwest::Client,
    tokens: Tokens,
    hosts: ServiceHosts,
    /// The app's limit, counted per request (a job makes one or more).
    requests: DefaultDirectRateLimiter,
    token_rules: TokenRules,
    /// Parts already delivered, per delivery (or answer) not yet complete.
    progress: Bounded<String, Progress>,
}

/// Deliveries whose progress is remembered; past this the map starts over (a retry then
/// sends from the first part: at least once).
const PROGRESS_CAPACITY: usize = 10_000;

#[derive(Debug, Clone, Default)]
struct Progress {
    parts_sent: usize,
    first_id: Option<String>,
}

impl ChannelSender for TeamsSender {
    const CHANNEL: Channel = Channel::Teams;
    type Config = TeamsConfig;

    fn default_limits() -> RateLimits {
        RateLimits {
            // A job takes at least one request; the sender's own bucket holds the total.
            account_per_second: 30,
            account_burst: 1,
            // The windows below hold a conversation; this only spaces a burst of 7.
            recipient_interval: Duration::from_millis(1),
            recipient_burst: 7,
            recipient_windows: vec![
                Window::new(7, Duration::from_secs(1)),
                Window::new(8, Duration::from_secs(2)),
                Window::new(60, Duration::from_secs(30)),
                Window::new(1800, Duration::from_secs(3600)),
            ],
        }
    }

    async fn build(config: TeamsConfig) -> Result<Built<Self>, BuildError> {
        let settings = config.teams;
        let app_id = settings
            .app_id
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        let Some(app_id) = app_id.filter(|_| !settings.app_password.expose().is_empty()) else {
            return Ok(Built::NotConfigured(
                "set HERALD_TEAMS__APP_ID and HERALD_TEAMS__APP_PASSWORD".into(),
            ));
        };
        let invalid = |reason: String| BuildError {
            channel: Channel::Teams,
            reason,
        };
        let tenant = settings.tenant.trim();
        if tenant.is_empty() || tenant.contains(['/', '?', '#']) {
            return Err(invalid(format!(
                "HERALD_TEAMS__TENANT {tenant:?} is not a tenant (botframework.com or a tenant id)"
            )));
        }
        let token_url = settings
            .token_url
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token")
            });
        let token_url = herald_jwks::parse_url(&token_url)
            .map_err(|e| invalid(format!("HERALD_TEAMS__TOKEN_URL: {e}")))?;
        let metadata = herald_jwks::parse_url(&settings.openid_metadata_url)
            .map_err(|e| invalid(format!("HERALD_TEAMS__OPENID_METADATA_URL: {e}")))?;
        let keys = KeySet::new(
            Source::OpenIdMetadata(metadata),
            Duration::from_secs(settings.keys_refresh_secs),
        )
        .map_err(|e| invalid(e.to_string()))?;
        let per_second = NonZeroU32::new(settings.requests_per_second).ok_or_else(|| {
            invalid("HERALD_TEAMS__REQUESTS_PER_SECOND must be at least 1".into())
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms.max(1)))
            .build()
            .map_err(|e| invalid(format!("HTTP client: {e}")))?;
        let tokens = Tokens::new(
            http.clone(),
            token_url,
            app_id.clone(),
            settings.app_password,
            settings.scope,
        );
        Ok(Built::Ready(TeamsSender {
            http,
            tokens,
            hosts: ServiceHosts::parse(&settings.service_hosts),
            requests: RateLimiter::direct(request_quota(per_second)),
            token_rules: TokenRules {
                keys,
                issuer: settings.issuer.trim().to_owned(),
                app_id,
            },
            progress: Bounded::new(PROGRESS_CAPACITY),
        }))
    }

    async fn send(&self, job: &SendJob) -> Result<Receipt, SendError> {
        let parts = text::render(job.content.subject.as_deref(), &job.content.text);
        let first = self
            .deliver(&job.to, &parts, format!("job:{}", job.delivery_id))
            .await?;
        Ok(Receipt {
            provider_message_id: first,
        })
    }

    /// While the breaker is open: whether the app still gets a token.
    async fn probe(&self) -> Result<(), String> {
        self.tokens
            .get()
            .await
            .map(|_| ())
            .map_err(|e| e.failure().message.clone())
    }
}

impl ChatChannel for TeamsSender {
    /// The bot only receives over HTTP: [`ChatChannel::routes`].
    async fn listen(_bot: Arc<Self>, inbound: Inbound) {
        inbound.shutdown.cancelled().await;
    }

    fn routes(bot: Arc<Self>, inbound: Inbound) -> Router {
        endpoint::router(bot, inbound.inbox)
    }

    async fn answer(&self, chat: &Address, text: &str) -> Result<(), SendError> {
        let parts = text::render(None, text);
        // Answers have no delivery id: the text and the chat name the progress.
        let key = format!("answer:{}:{}", chat.value(), text.len());
        self.deliver(chat, &parts, key).await?;
        Ok(())
    }
}

impl TeamsSender {
    /// Sends `parts` into the conversation, from the first part not yet delivered under
    /// `key`. Returns the first activity's id.
    async fn deliver(
        &self,
        to: &Address,
        parts: &[String],
        key: String,
    ) -> Result<Option<String>, SendError> {
        let Address::Teams(chat) = to else {
            return Err(SendError::permanent(
                "invalid_address",
                "not a Teams conversation",
            ));
        };
        let url = self
            .hosts
            .activities_url(chat)
            .map_err(|why| SendError::permanent("untrusted_service_url", why))?;
        if parts.is_empty() {
            return Err(SendError::permanent(
                "empty_message",
                "the message has no text to send",
            ));
        }
        let mut progress = self.progress.get(&key).unwrap_or_default();
        while let Some(part) = parts.get(progress.parts_sent) {
            let id = self.post(&url, part).await?;
            progress.parts_sent += 1;
            if progress.first_id.is_none() {
                progress.first_id = id;
            }
            self.progress.insert(key.clone(), progress.clone());
        }
        self.progress.remove(&key);
        Ok(progress.first_id)
    }

    /// One activity; a 401 renews the token and tries once more.
    async fn post(&self, url: &reqwest::Url, html: &str) -> Result<Option<String>, SendError> {
        let activity = message_activity(html);
        let mut renewed = false;
        loop {
            let token = self.tokens.get().await?;
            self.requests.until_ready().await;
            let response = self
                .http
                .post(url.clone())
                .bearer_auth(&token)
                .json(&activity)
                .send()
                .await
                .map_err(|e| transport_error("the Bot Connector", &e))?;
            let status = response.status();
            if status.is_success() {
                #[derive(Deserialize)]
                struct Sent {
                    id: Option<String>,
                }
                let sent = response.json::<Sent>().await.ok();
                return Ok(sent.and_then(|s| s.id));
            }
            if status.as_u16() == 401 && !renewed {
                self.tokens.forget(&token).await;
                renewed = true;
                continue;
            }
            let headers = response.headers().clone();
            let body: ErrorBody = response.json().await.unwrap_or_default();
            return Err(classify(status.as_u16(), &headers, &body));
        }
    }
}

/// The app's request bucket: evenly spaced, 1% under the limit so that network jitter never
/// puts one request too many into a second the Bot Connector counts.
fn request_quota(per_second: NonZeroU32) -> Quota {
    let rate = f64::from(per_second.get()) / 1.01;
    Quota::with_period(Duration::from_secs_f64(1.0 / rate))
        .unwrap_or_else(|| Quota::per_second(per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_credentials_it_says_not_configured() {
        let built = TeamsSender::build(TeamsConfig::default()).await.unwrap();
        let Built::NotConfigured(what) = built else {
            panic!("not configured expected");
        };
        assert!(what.contains("HERALD_TEAMS__APP_ID"), "{what}");
    }

    #[tokio::test]
    async fn a_tenant_that_is_not_one_is_refused() {
        let config = TeamsConfig {
            teams: TeamsSettings {
                app_id: Some("app".into()),
                app_password: Secret::new("pw".into()),
                tenant: "x/../y".into(),
                ..TeamsSettings::default()
            },
        };
        assert!(TeamsSender::build(config).await.is_err());
    }
}
