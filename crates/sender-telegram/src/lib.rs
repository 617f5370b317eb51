//! The Telegram channel: a sender on the shared runtime, and the bot people link their chats
//! with (R5, R6, R7, R53). It talks to the Bot API with teloxide.
//!
//! # Layout
//!
//! - this file: the `telegram.*` settings, [`TelegramSender`] (`sendMessage` for jobs, `getMe`
//!   for the breaker's probe) and its rate limits.
//! - [`text`]: a job's content as Telegram HTML, escaped and split into messages that fit.
//! - [`errors`]: every Telegram answer mapped to one kind of failure (the table below).
//! - [`bot`]: the bot side: long polling or the webhook, what people write handed to the
//!   runtime's inbox, and answers said back.
//!
//! # Sending
//!
//! A job becomes one or more `sendMessage` calls in HTML parse mode. The text is escaped
//! (`<`, `>`, `&`); a subject becomes a bold first line. `content.html` is ignored: Telegram
//! reads only a small subset of HTML, and the router's rendered text says the same thing.
//! A text over 4096 UTF-16 code units is split at line breaks, else at spaces, and the parts
//! go in order, one second apart (Telegram's pace for one chat). The delivery's provider id is
//! the message id, or the ids of all parts joined by commas.
//!
//! When a later part fails, the parts already sent are remembered by delivery id, and the
//! retry sends only the rest. That memory is in this process only (the last 10,000
//! deliveries with parts outstanding): a retry that reaches another replica, or comes after a
//! restart, sends the earlier parts again.
//!
//! # Telegram's answers
//!
//! | answer (teloxide) | kind | code |
//! |---|---|---|
//! | 200 | delivered, the message id as provider id | — |
//! | 403 `bot was blocked by the user` | permanent: the router marks the address unreachable (R6) | `blocked` |
//! | 403 `user is deactivated`, 400 `group is deactivated` | permanent | `deactivated` |
//! | 403 `bot was kicked from the group chat` / `supergroup chat` / `channel chat` | permanent | `kicked` |
//! | 400 `chat not found`, `user not found` | permanent | `chat_not_found` |
//! | 400 with `migrate_to_chat_id` (a group became a supergroup) | permanent: the chat must be linked again | `chat_migrated` |
//! | 403 `bot can't send messages to the user` | retry (seen transiently, so the address stays) | `cannot_send_to_user` |
//! | 403 `bot can't initiate conversation with a user` | retry (as above) | `cannot_initiate` |
//! | 403 `bot can't send messages to bots` | permanent | `invalid_address` |
//! | any other 403 (not a member, no right to post) | permanent | `forbidden` |
//! | any other 400 (message too long, entities that do not parse, ...) | permanent | `rejected` |
//! | 429 with `retry_after` | throttled: nothing goes out through the bot until it has passed | `rate_limited` |
//! | 401 `Unauthorized` (the token) | unhealthy: retried, counted by the breaker | `invalid_token` |
//! | 5xx (teloxide waits 10 s first), any other description | provider fault: retried, counted by the breaker | `provider_error` |
//! | an answer that is not JSON (a proxy's error page) | provider fault | `invalid_response` |
//! | timeout | provider fault | `timeout` |
//! | connection refused | provider fault | `provider_unreachable` |
//! | other transport errors (a dropped connection) | provider fault | `transport` |
//! | an address that is not a Telegram chat, a job with no text | permanent | `invalid_address`, `empty_message` |
//!
//! # Rate limits (R7)
//!
//! The runtime's buckets ([`TelegramSender::default_limits`]): 30 messages a second per bot
//! (1,000 with `telegram.allow_paid_broadcast`), and one a second per chat. Telegram also
//! allows only 20 messages a minute in one group; the runtime has a single per-recipient
//! rule, so this sender keeps a second bucket for chats with negative ids (groups,
//! supergroups, channels): one message every 3 s (`telegram.group_per_minute`). A job for a
//! group whose bucket is empty is retried after the wait (a `retry_scheduled` event with code
//! `group_rate_limited`), so a busy group never holds a consumer slot. Further parts of a
//! long text wait in place for their chat's pace, and count against the chat's buckets only.

pub mod bot;
pub mod errors;
pub mod text;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use herald_runtime::config::Secret;
use messaging_core::failure::Failure;
use messaging_core::job::SendJob;
use messaging_core::{Address, Channel};
use sender_runtime::limits::RateLimits;
use sender_runtime::{BuildError, Built, ChannelSender, Receipt, RetryLater, SendError};
use serde::{Deserialize, Deserializer};
use teloxide::payloads::SendMessageSetters;
use teloxide::prelude::Requester;
use teloxide::types::{ChatId as TgChatId, ParseMode};
use uuid::Uuid;

pub use errors::classify;

/// teloxide's HTTP client gives up after 17 s; a long poll must end before that.
pub const CLIENT_TIMEOUT_SECS: u32 = 17;

/// How the bot receives what people write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `getUpdates` long polling: nothing to expose; one poller per bot token.
    #[default]
    Polling,
    /// Telegram POSTs updates to `webhook_url`, which must reach this service's
    /// `/telegram/webhook` (through a TLS-terminating proxy).
    Webhook,
}

/// `telegram.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelegramSettings {
    /// From BotFather (`123456:ABC...`). Empty: the sender is not configured.
    #[serde(deserialize_with = "secret_string")]
    pub bot_token: Secret<String>,
    /// The Bot API root. Telegram's by default; tests point it at a fake, operators at a
    /// self-hosted Bot API server.
    pub api_url: String,
    pub mode: Mode,
    /// Webhook mode: the public HTTPS URL Telegram POSTs to.
    pub webhook_url: String,
    /// Webhook mode: Telegram sends it in `X-Telegram-Bot-Api-Secret-Token`; requests without
    /// it are refused. 1-256 characters `A-Z a-z 0-9 _ -`.
    #[serde(deserialize_with = "secret_string")]
    pub webhook_secret: Secret<String>,
    /// Polling mode: how long one `getUpdates` waits for news. Below teloxide's 17 s timeout.
    pub poll_timeout_secs: u32,
    /// Send with `allow_paid_broadcast`: up to 1,000 messages a second, paid in Telegram
    /// Stars per message. Raises the default account limit to match.
    pub allow_paid_broadcast: bool,
    /// Messages a minute to one group (negative chat ids). 0 turns the group bucket off.
    pub group_per_minute: u32,
}

impl Default for TelegramSettings {
    fn default() -> Self {
        TelegramSettings {
            bot_token: Secret::default(),
            api_url: "https://api.telegram.org".into(),
            mode: Mode::Polling,
            webhook_url: String::new(),
            webhook_secret: Secret::default(),
            poll_timeout_secs: 10,
            allow_paid_broadcast: false,
            group_per_minute: 20,
        }
    }
}

/// What the runtime loads. Its field is the `telegram` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TelegramConfig {
    pub telegram: TelegramSettings,
}

/// A secret that may look like a number in an environment variable (`HERALD_TELEGRAM__
/// WEBHOOK_SECRET=12345` reads as an integer).
fn secret_string<'de, D: Deserializer<'de>>(d: D) -> Result<Secret<String>, D::Error> {
    herald_runtime::config::lenient_string(d).map(|s| Secret::new(s.unwrap_or_default()))
}

pub struct TelegramSender {
    bot: teloxide::Bot,
    mode: Mode,
    /// Webhook mode: where Telegram should POST, and what it must send along.
    webhook_url: Option<url::Url>,
    webhook_secret: Secret<String>,
    poll_timeout_secs: u32,
    allow_paid_broadcast: bool,
    /// One bucket per group chat (20 a minute); `None` when turned off.
    groups: Option<DefaultKeyedRateLimiter<i64>>,
    /// Parts already sent of deliveries that failed half-way.
    progress: Progress,
}

impl ChannelSender for TelegramSender {
    const CHANNEL: Channel = Channel::Telegram;
    type Config = TelegramConfig;

    fn default_limits() -> RateLimits {
        // The trait gives no settings here, so the section is read again from the same
        // sources; an unreadable one fails `build` anyway.
        let paid = herald_runtime::config::load::<TelegramConfig>(&[])
            .is_ok_and(|config| config.telegram.allow_paid_broadcast);
        let per_second = if paid { 1_000 } else { 30 };
        RateLimits {
            account_per_second: per_second,
            // No burst: evenly spaced, any second holds at most `per_second` messages. A burst
            // on top of the full rate puts more than that into one second (measured with
            // 3: a 429 every second from a fake counting as Telegram may).
            account_burst: 1,
            recipient_interval: Duration::from_secs(1),
            recipient_burst: 1,
            recipient_windows: Vec::new(),
        }
    }

    async fn build(config: TelegramConfig) -> Result<Built<Self>, BuildError> {
        let settings = config.telegram;
        let token = settings.bot_token.expose().trim().to_owned();
        if token.is_empty() {
            return Ok(Built::NotConfigured(
                "set HERALD_TELEGRAM__BOT_TOKEN".into(),
            ));
        }
        let invalid = |reason: String| BuildError {
            channel: Channel::Telegram,
            reason,
        };
        let api_url: url::Url = settings.api_url.trim().parse().map_err(|e| {
            invalid(format!(
                "HERALD_TELEGRAM__API_URL {:?}: {e}",
                settings.api_url
            ))
        })?;
        if settings.poll_timeout_secs >= CLIENT_TIMEOUT_SECS {
            return Err(invalid(format!(
                "HERALD_TELEGRAM__POLL_TIMEOUT_SECS must be below {CLIENT_TIMEOUT_SECS} (the client's timeout), not {}",
                settings.poll_timeout_secs
            )));
        }
        let (webhook_url, webhook_secret) = match settings.mode {
            Mode::Polling => (None, Secret::default()),
            Mode::Webhook => {
                let url = settings.webhook_url.trim();
                if url.is_empty() {
                    return Err(invalid(
                        "HERALD_TELEGRAM__MODE is webhook: set HERALD_TELEGRAM__WEBHOOK_URL".into(),
                    ));
                }
                let url: url::Url = url
                    .parse()
                    .map_err(|e| invalid(format!("HERALD_TELEGRAM__WEBHOOK_URL {url:?}: {e}")))?;
                let secret = settings.webhook_secret.expose().trim().to_owned();
                if !valid_secret(&secret) {
                    return Err(invalid(
                        "HERALD_TELEGRAM__MODE is webhook: set HERALD_TELEGRAM__WEBHOOK_SECRET \
                         (1-256 characters A-Z, a-z, 0-9, _ and -)"
                            .into(),
                    ));
                }
                (Some(url), Secret::new(secret))
            }
        };
        let client = teloxide::net::default_reqwest_settings()
            .build()
            .map_err(|e| invalid(format!("HTTP client: {e}")))?;
        let groups = NonZeroU32::new(settings.group_per_minute).map(|per_minute| {
            // Evenly spaced, no burst: at most `per_minute` in any minute.
            RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(NonZeroU32::MIN))
        });
        Ok(Built::Ready(TelegramSender {
            bot: teloxide::Bot::with_client(token, client).set_api_url(api_url),
            mode: settings.mode,
            webhook_url,
            webhook_secret,
            poll_timeout_secs: settings.poll_timeout_secs,
            allow_paid_broadcast: settings.allow_paid_broadcast,
            groups,
            progress: Progress::default(),
        }))
    }

    async fn send(&self, job: &SendJob) -> Result<Receipt, SendError> {
        let Address::Telegram(chat) = &job.to else {
            return Err(SendError::permanent(
                "invalid_address",
                format!("{} is not a Telegram chat", job.to.kind()),
            ));
        };
        let parts = text::render(job.content.subject.as_deref(), &job.content.text);
        if parts.is_empty() {
            return Err(SendError::permanent(
                "empty_message",
                "the message has no text to send",
            ));
        }
        let mut sent = self.progress.get(job.delivery_id);
        let resume_at = sent.len();
        for (index, part) in parts.iter().enumerate().skip(resume_at) {
            if index == resume_at {
                // The first part of this attempt: the runtime paced it for the chat; a group
                // also needs a token of its own bucket, or the job comes back after the wait.
                self.group_token(chat.0)?;
            } else {
                self.pace(chat.0).await;
            }
            let message = self
                .send_html(chat.0, part, self.allow_paid_broadcast)
                .await
                .map_err(|e| classify(&e))?;
            sent.push(message.id.0.to_string());
            if sent.len() < parts.len() {
                self.progress.remember(job.delivery_id, sent.clone());
            }
        }
        self.progress.forget(job.delivery_id);
        Ok(Receipt {
            provider_message_id: Some(sent.join(",")),
        })
    }

    async fn probe(&self) -> Result<(), String> {
        self.bot
            .get_me()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl TelegramSender {
    /// One `sendMessage` in HTML parse mode.
    async fn send_html(
        &self,
        chat: i64,
        html: &str,
        paid: bool,
    ) -> Result<teloxide::types::Message, teloxide::RequestError> {
        let request = self
            .bot
            .send_message(TgChatId(chat), html)
            .parse_mode(ParseMode::Html);
        if paid {
            request.allow_paid_broadcast(true).await
        } else {
            request.await
        }
    }

    /// Says `text` in `chat`, escaped, split like a job's text. For the bot's answers.
    pub(crate) async fn say(&self, chat: i64, text: &str) -> Result<(), SendError> {
        let parts = text::render(None, text);
        for (index, part) in parts.iter().enumerate() {
            if index > 0 {
                self.pace(chat).await;
            }
            self.send_html(chat, part, false)
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(())
    }

    /// A token from a group's bucket now, or how long until it has one, as a retry.
    fn group_token(&self, chat: i64) -> Result<(), SendError> {
        let Some(groups) = self.groups.as_ref().filter(|_| chat < 0) else {
            return Ok(());
        };
        if groups.len() > 10_000 {
            groups.retain_recent();
        }
        groups.check_key(&chat).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            SendError::Retry(RetryLater {
                failure: Failure::temporary(
                    "group_rate_limited",
                    format!("Telegram allows few messages a minute in a group; next in {wait:?}"),
                ),
                after: Some(wait),
                throttles_account: false,
                provider_fault: false,
            })
        })
    }

    /// Waits before another message to the same chat: a second, or a group's own pace.
    async fn pace(&self, chat: i64) {
        match self.groups.as_ref().filter(|_| chat < 0) {
            Some(groups) => {
                groups.until_key_ready(&chat).await;
            }
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Telegram's rule for a webhook's secret token.
fn valid_secret(secret: &str) -> bool {
    (1..=256).contains(&secret.len())
        && secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Message ids of the parts already sent, per delivery that failed half-way. Bounded: past
/// [`Progress::CAPACITY`] deliveries the oldest is forgotten (its retry would resend its
/// first parts).
#[derive(Default)]
struct Progress {
    sent: Mutex<SentParts>,
}

/// Message ids by delivery, and the deliveries in the order they were first remembered.
type SentParts = (HashMap<Uuid, Vec<String>>, VecDeque<Uuid>);

impl Progress {
    const CAPACITY: usize = 10_000;

    fn get(&self, delivery: Uuid) -> Vec<String> {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.0.get(&delivery).cloned().unwrap_or_default()
    }

    fn remember(&self, delivery: Uuid, ids: Vec<String>) {
        let mut guard = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *guard;
        if map.insert(delivery, ids).is_none() {
            order.push_back(delivery);
            while order.len() > Self::CAPACITY {
                if let Some(oldest) = order.pop_front() {
                    map.remove(&oldest);
                }
            }
        }
    }

    fn forget(&self, delivery: Uuid) {
        let mut guard = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *guard;
        if map.remove(&delivery).is_some() {
            order.retain(|d| *d != delivery);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(f: impl FnOnce(&mut TelegramSettings)) -> TelegramConfig {
        let mut telegram = TelegramSettings {
            bot_token: Secret::new("123:abc".into()),
            ..TelegramSettings::default()
        };
        f(&mut telegram);
        TelegramConfig { telegram }
    }

    async fn built(config: TelegramConfig) -> Result<Built<TelegramSender>, BuildError> {
        herald_runtime::install_crypto_provider();
        TelegramSender::build(config).await
    }

    #[tokio::test]
    async fn without_a_token_the_sender_says_what_to_set() {
        let Ok(Built::NotConfigured(what)) =
            built(settings(|s| s.bot_token = Secret::default())).await
        else {
            panic!("configured without a token")
        };
        assert_eq!(what, "set HERALD_TELEGRAM__BOT_TOKEN");
    }

    #[tokio::test]
    async fn wrong_settings_stop_the_sender_with_the_variable_named() {
        let cases: Vec<(TelegramConfig, &str)> = vec![
            (settings(|s| s.poll_timeout_secs = 17), "POLL_TIMEOUT_SECS"),
            (settings(|s| s.api_url = "not a url".into()), "API_URL"),
            (settings(|s| s.mode = Mode::Webhook), "WEBHOOK_URL"),
            (
                settings(|s| {
                    s.mode = Mode::Webhook;
                    s.webhook_url = "https://bot.example.org/telegram/webhook".into();
                }),
                "WEBHOOK_SECRET",
            ),
            (
                settings(|s| {
                    s.mode = Mode::Webhook;
                    s.webhook_url = "https://bot.example.org/telegram/webhook".into();
                    s.webhook_secret = Secret::new("has spaces".into());
                }),
                "WEBHOOK_SECRET",
            ),
        ];
        for (config, variable) in cases {
            match built(config).await {
                Err(error) => assert!(error.reason.contains(variable), "{error}"),
                Ok(_) => panic!("built without a valid {variable}"),
            }
        }
    }

    #[test]
    fn settings_read_from_the_environment_keep_numeric_secrets() {
        let settings: TelegramSettings =
            serde_json::from_value(serde_json::json!({"webhook_secret": 12345, "mode": "webhook"}))
                .unwrap();
        assert_eq!(settings.webhook_secret.expose(), "12345");
        assert_eq!(settings.mode, Mode::Webhook);
        assert!(
            serde_json::from_value::<TelegramSettings>(serde_json::json!({"bot_tokn": "x"}))
                .is_err(),
            "a misspelt key is refused"
        );
    }

    #[test]
    fn the_default_limits_are_telegrams() {
        let limits = TelegramSender::default_limits();
        assert_eq!(limits.account_per_second, 30);
        assert_eq!(limits.recipient_interval, Duration::from_secs(1));
        assert_eq!(limits.recipient_burst, 1);
    }

    #[tokio::test]
    async fn a_group_gets_one_message_every_three_seconds() {
        let Ok(Built::Ready(sender)) = built(settings(|_| {})).await else {
            panic!("not built")
        };
        assert!(sender.group_token(-42).is_ok());
        let Err(SendError::Retry(retry)) = sender.group_token(-42) else {
            panic!("a second message to the group went through at once")
        };
        let after = retry.after.unwrap();
        assert!(
            after > Duration::from_millis(2_900) && after <= Duration::from_secs(3),
            "{after:?}"
        );
        assert!(!retry.throttles_account && !retry.provider_fault);
        assert_eq!(retry.failure.code, "group_rate_limited");
        assert!(
            sender.group_token(-43).is_ok(),
            "other groups are not affected"
        );
        assert!(
            sender.group_token(42).is_ok() && sender.group_token(42).is_ok(),
            "private chats have only the runtime's bucket"
        );
    }

    #[test]
    fn progress_is_bounded_and_forgotten_when_done() {
        let progress = Progress::default();
        let first = Uuid::now_v7();
        progress.remember(first, vec!["1".into()]);
        progress.remember(first, vec!["1".into(), "2".into()]);
        assert_eq!(progress.get(first), ["1", "2"]);
        for _ in 0..Progress::CAPACITY {
            progress.remember(Uuid::now_v7(), vec!["x".into()]);
        }
        assert!(progress.get(first).is_empty(), "the oldest is forgotten");
        let last = Uuid::now_v7();
        progress.remember(last, vec!["9".into()]);
        progress.forget(last);
        assert!(progress.get(last).is_empty());
    }
}
