//! The bot side (R5, R53): what people write to the bot reaches the runtime's inbox, which
//! publishes link and support requests for the router; what the inbox answers at once is
//! said back in the chat.
//!
//! - **Polling** (default): `getUpdates` with an offset. An update is confirmed (the offset
//!   moves past it) only after the inbox took it: when the broker did not confirm the
//!   publish, the same update is fetched again after a pause, and nothing behind it is
//!   skipped. A 409 (a webhook is set for the bot, or another process polls with the same
//!   token) makes the service not ready (`bot:telegram`) until polling works again.
//! - **Webhook**: `listen` registers the webhook (with its secret token) and returns;
//!   [`routes`] serves `POST /telegram/webhook`. A request without the secret gets 401; an
//!   update the inbox could not take gets 503, so Telegram delivers it again.
//!
//! Only texts in private chats are read; other updates are ignored. A `my_chat_member`
//! update saying the bot was blocked or removed is logged: the next send to that chat fails
//! as `blocked` or `kicked`, and the router marks the address then (R6). The commands
//! (`/start`, `/link`, `/support`, `/help`) are registered with `setMyCommands` at start, on a
//! best-effort basis.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use messaging_core::values::ChatId;
use messaging_core::{Address, Channel};
use sender_runtime::chat::InboxError;
use sender_runtime::{ChatChannel, Inbound, Incoming, Reply, SendError};
use teloxide::payloads::{GetUpdatesSetters, SetWebhookSetters};
use teloxide::prelude::Requester;
use teloxide::types::{AllowedUpdate, BotCommand, Update, UpdateKind};
use teloxide::{ApiError, RequestError};

use crate::{Mode, TelegramSender};

/// The path Telegram POSTs updates to in webhook mode.
pub const WEBHOOK_PATH: &str = "/telegram/webhook";

/// The header Telegram sends the webhook's secret token in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Pauses between failed polls (or registrations) grow from this to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Failed polls in a row before the bot reports itself not ready for a fault that may pass
/// by itself (network, 5xx). A conflict or a rejected token says so at once.
const FAILURES_BEFORE_UNREADY: u32 = 3;

/// The bot's readiness component.
fn component() -> String {
    format!("bot:{}", Channel::Telegram)
}

/// The updates the bot asks for.
fn allowed_updates() -> Vec<AllowedUpdate> {
    vec![AllowedUpdate::Message, AllowedUpdate::MyChatMember]
}

impl ChatChannel for TelegramSender {
    async fn listen(bot: Arc<Self>, inbound: Inbound) {
        inbound
            .health
            .set(&component(), false, "connecting to Telegram");
        register_commands(&bot).await;
        match bot.mode {
            Mode::Polling => poll(&bot, &inbound).await,
            Mode::Webhook => register_webhook(&bot, &inbound).await,
        }
    }

    fn routes(bot: Arc<Self>, inbound: Inbound) -> Router {
        match bot.mode {
            Mode::Polling => Router::new(),
            Mode::Webhook => Router::new()
                .route(WEBHOOK_PATH, post(webhook))
                .with_state(WebhookState { bot, inbound }),
        }
    }

    async fn answer(&self, chat: &Address, text: &str) -> Result<(), SendError> {
        let Address::Telegram(ChatId(chat)) = chat else {
            return Err(SendError::permanent(
                "invalid_address",
                format!("{} is not a Telegram chat", chat.kind()),
            ));
        };
        self.say(*chat, text).await
    }
}

async fn register_commands(bot: &TelegramSender) {
    let commands = vec![
        BotCommand::new("start", "Link this chat: /start CODE"),
        BotCommand::new("link", "Link this chat with a code: /link CODE"),
        BotCommand::new("support", "Ask the support team: /support your question"),
        BotCommand::new("help", "What this bot does"),
    ];
    if let Err(error) = bot.bot.set_my_commands(commands).await {
        tracing::warn!(%error, "could not register the bot's commands; they work anyway");
    }
}

/// Long polling until shutdown.
async fn poll(bot: &TelegramSender, inbound: &Inbound) {
    let mut offset: Option<i32> = None;
    let mut failures: u32 = 0;
    // The first poll answers at once, so readiness (and a conflict) shows without waiting
    // for the long-poll timeout.
    let mut timeout = 0;
    loop {
        let mut request = bot
            .bot
            .get_updates()
            .timeout(timeout)
            .allowed_updates(allowed_updates());
        if let Some(offset) = offset {
            request = request.offset(offset);
        }
        let result = tokio::select! {
            _ = inbound.shutdown.cancelled() => return,
            result = request => result,
        };
        timeout = bot.poll_timeout_secs;
        let pause = match result {
            Ok(updates) => {
                failures = 0;
                inbound
                    .health
                    .set(&component(), true, "polling for updates");
                let mut taken = None;
                for update in updates {
                    let id = update.id;
                    match handle(bot, inbound, update).await {
                        // `as_offset` is already the id after this one.
                        Ok(()) => offset = Some(id.as_offset()),
                        Err(error) => {
                            tracing::warn!(%error, update_id = id.0, "the inbox did not take an update; fetching it again shortly");
                            taken = Some(FIRST_PAUSE);
                            break;
                        }
                    }
                }
                taken
            }
            Err(RequestError::RetryAfter(after)) => Some(after.duration()),
            Err(error) => {
                failures += 1;
                let (unready_now, reason) = poll_failure(&error);
                tracing::warn!(%error, failures, "getUpdates failed");
                if unready_now || failures >= FAILURES_BEFORE_UNREADY {
                    inbound.health.set(&component(), false, reason);
                }
                Some(backoff(failures))
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = inbound.shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Whether a failed poll makes the bot not ready at once, and what readiness says.
fn poll_failure(error: &RequestError) -> (bool, String) {
    match error {
        RequestError::Api(ApiError::TerminatedByOtherGetUpdates) => (
            true,
            "conflict: another process polls with this bot token".to_owned(),
        ),
        RequestError::Api(ApiError::CantGetUpdates) => (
            true,
            "conflict: a webhook is set for this bot (deleteWebhook, or HERALD_TELEGRAM__MODE=webhook)".to_owned(),
        ),
        RequestError::Api(ApiError::Unknown(description)) if description.starts_with("Conflict") => {
            (true, format!("conflict: {description}"))
        }
        RequestError::Api(ApiError::InvalidToken) => {
            (true, "Telegram rejected the bot token".to_owned())
        }
        other => (false, format!("getUpdates failed: {other}")),
    }
}

fn backoff(failures: u32) -> Duration {
    FIRST_PAUSE
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(MAX_PAUSE)
}

/// Registers the webhook, retrying until Telegram takes it or the service stops.
async fn register_webhook(bot: &TelegramSender, inbound: &Inbound) {
    let Some(url) = bot.webhook_url.clone() else {
        return;
    };
    let mut failures = 0;
    loop {
        let request = bot
            .bot
            .set_webhook(url.clone())
            .secret_token(bot.webhook_secret.expose().clone())
            .allowed_updates(allowed_updates());
        let result = tokio::select! {
            _ = inbound.shutdown.cancelled() => return,
            result = request => result,
        };
        match result {
            Ok(_) => {
                tracing::info!(%url, "webhook registered");
                inbound
                    .health
                    .set(&component(), true, format!("webhook registered at {url}"));
                return;
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, %url, "setWebhook failed");
                inbound
                    .health
                    .set(&component(), false, format!("setWebhook failed: {error}"));
                let pause = match error {
                    RequestError::RetryAfter(after) => after.duration(),
                    _ => backoff(failures),
                };
                tokio::select! {
                    _ = inbound.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

#[derive(Clone)]
struct WebhookState {
    bot: Arc<TelegramSender>,
    inbound: Inbound,
}

async fn webhook(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let given = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !same(given, state.bot.webhook_secret.expose().as_bytes()) {
        return StatusCode::UNAUTHORIZED;
    }
    // From the text: teloxide's `Update` does not parse from a `serde_json::Value`.
    let update: Update = match std::str::from_utf8(&body)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(text).map_err(|e| e.to_string()))
    {
        Ok(update) => update,
        Err(error) => {
            tracing::warn!(%error, "the webhook received something that is not an update");
            return StatusCode::BAD_REQUEST;
        }
    };
    match handle(&state.bot, &state.inbound, update).await {
        Ok(()) => StatusCode::OK,
        // Telegram delivers it again later.
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Compares in time that does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One update. An error means the inbox did not take it: it must come again.
async fn handle(bot: &TelegramSender, inbound: &Inbound, update: Update) -> Result<(), InboxError> {
    match update.kind {
        UpdateKind::Message(message) => {
            let Some(text) = message.text() else {
                return Ok(());
            };
            if !message.chat.is_private() {
                return Ok(());
            }
            let chat = message.chat.id.0;
            let display_name = message
                .from
                .as_ref()
                .map(|user| match &user.username {
                    Some(username) => format!("@{username}"),
                    None => user.first_name.clone(),
                })
                .or_else(|| message.chat.username().map(|u| format!("@{u}")))
                .or_else(|| message.chat.first_name().map(str::to_owned));
            let Ok(address) = ChatId::parse(&chat.to_string()).map(Address::Telegram) else {
                return Ok(());
            };
            let incoming = Incoming {
                chat: address,
                text: text.to_owned(),
                display_name,
                reference: None,
            };
            if let Reply::Now(reply) = inbound.inbox.receive(incoming).await?
                && let Err(error) = bot.say(chat, &reply).await
            {
                tracing::warn!(chat, code = %error.failure().code, reason = %error.failure().message, "could not answer in the chat");
            }
            Ok(())
        }
        UpdateKind::MyChatMember(change) => {
            let member = &change.new_chat_member;
            if member.is_banned() || member.is_left() {
                tracing::info!(
                    chat = change.chat.id.0,
                    "the bot was blocked or removed in this chat; the next send to it reports so"
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_comparison_needs_every_byte() {
        assert!(same(b"s3cret", b"s3cret"));
        assert!(!same(b"s3cret", b"s3creT"));
        assert!(!same(b"s3cret", b"s3cre"));
        assert!(!same(b"", b"s3cret"));
    }

    #[test]
    fn failed_polls_back_off_up_to_thirty_seconds() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(50), MAX_PAUSE);
    }

    #[test]
    fn a_conflict_makes_the_bot_not_ready_at_once() {
        let (now, reason) = poll_failure(&RequestError::Api(ApiError::TerminatedByOtherGetUpdates));
        assert!(now && reason.contains("another process"));
        let (now, reason) = poll_failure(&RequestError::Api(ApiError::Unknown(
            "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first".into(),
        )));
        assert!(now && reason.contains("webhook"), "{reason}");
        let (now, _) = poll_failure(&RequestError::Api(ApiError::Unknown("Bad Gateway".into())));
        assert!(!now);
    }
}
