//! Telegram's answers, as teloxide reports them, mapped to exactly one kind of failure. The
//! table is in the crate's documentation ([`crate`]).
//!
//! teloxide keeps Telegram's `description`, not the HTTP status: a description it knows
//! becomes an [`ApiError`] variant, any other one `ApiError::Unknown(description)`. Some of
//! Telegram's current wordings differ from what teloxide 0.17 matches (`bot was kicked from
//! the group chat`, `bot can't initiate conversation with a user` arrive as `Unknown`), so
//! the unknown descriptions are read by their prefix too. A 5xx answer arrives as `Unknown`
//! with the status's reason (`Bad Gateway`), or as `InvalidJson` when a proxy answers HTML.

use sender_runtime::SendError;
use teloxide::{ApiError, RequestError};

/// Maps one failed Bot API request to exactly one kind of failure.
pub fn classify(error: &RequestError) -> SendError {
    let detail = format!("Telegram answered: {error}");
    match error {
        RequestError::RetryAfter(after) => SendError::throttled(Some(after.duration()), detail),
        RequestError::MigrateToChatId(new_id) => SendError::permanent(
            "chat_migrated",
            format!(
                "the group became the supergroup {new_id}: link the chat again ({detail})",
                new_id = new_id.0
            ),
        ),
        RequestError::Api(api) => classify_api(api, detail),
        RequestError::InvalidJson { .. } => SendError::provider_fault("invalid_response", detail),
        RequestError::Network(network) if network.is_timeout() => {
            SendError::provider_fault("timeout", detail)
        }
        RequestError::Network(network) if network.is_connect() => {
            SendError::provider_fault("provider_unreachable", detail)
        }
        RequestError::Network(_) | RequestError::Io(_) => {
            SendError::provider_fault("transport", detail)
        }
    }
}

fn classify_api(api: &ApiError, detail: String) -> SendError {
    match api {
        ApiError::BotBlocked => SendError::permanent("blocked", detail),
        ApiError::UserDeactivated | ApiError::GroupDeactivated => {
            SendError::permanent("deactivated", detail)
        }
        ApiError::BotKicked
        | ApiError::BotKickedFromSupergroup
        | ApiError::BotKickedFromChannel => SendError::permanent("kicked", detail),
        ApiError::ChatNotFound | ApiError::UserNotFound => {
            SendError::permanent("chat_not_found", detail)
        }
        // Seen for people who did start the bot, and gone a moment later: not a reason to
        // mark their address unreachable (R6).
        ApiError::CantInitiateConversation => SendError::retry("cannot_initiate", detail),
        ApiError::CantTalkWithBots => SendError::permanent("invalid_address", detail),
        ApiError::InvalidToken => SendError::unhealthy("invalid_token", detail),
        ApiError::Unknown(description) => classify_description(description, detail),
        // Every other known error is a `Bad Request` about this message (too long, entities
        // that do not parse, ...): sending it again would fail the same way.
        _ => SendError::permanent("rejected", detail),
    }
}

fn classify_description(description: &str, detail: String) -> SendError {
    let d = description.to_ascii_lowercase();
    if d.starts_with("forbidden: bot was kicked") {
        SendError::permanent("kicked", detail)
    } else if d.starts_with("forbidden: bot was blocked") {
        SendError::permanent("blocked", detail)
    } else if d.starts_with("forbidden: user is deactivated") {
        SendError::permanent("deactivated", detail)
    } else if d.starts_with("forbidden: bot can't initiate conversation") {
        SendError::retry("cannot_initiate", detail)
    } else if d.starts_with("forbidden: bot can't send messages to the user") {
        SendError::retry("cannot_send_to_user", detail)
    } else if d.starts_with("forbidden: bot can't send messages to bots") {
        SendError::permanent("invalid_address", detail)
    } else if d.starts_with("forbidden") {
        // Not a member of the chat (any more), no right to post there.
        SendError::permanent("forbidden", detail)
    } else if d.starts_with("bad request: chat not found") {
        SendError::permanent("chat_not_found", detail)
    } else if d.starts_with("bad request") {
        SendError::permanent("rejected", detail)
    } else if d.starts_with("unauthorized") {
        SendError::unhealthy("invalid_token", detail)
    } else if d.starts_with("too many requests") {
        // A 429 without `retry_after`: the backoff decides.
        SendError::throttled(None, detail)
    } else {
        // `Internal Server Error`, `Bad Gateway`, `Conflict: ...` and whatever Telegram says
        // next: its side, retried and counted by the circuit breaker.
        SendError::provider_fault("provider_error", detail)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use messaging_core::failure::FailureClass;
    use teloxide::types::{ChatId, Seconds};

    /// (kind, code, class): kind is `throttled`, `retry`, `provider_fault`, `permanent` or
    /// `unhealthy`.
    fn kind(error: RequestError) -> (&'static str, String, FailureClass) {
        match classify(&error) {
            SendError::Retry(r) => (
                if r.throttles_account {
                    "throttled"
                } else if r.provider_fault {
                    "provider_fault"
                } else {
                    "retry"
                },
                r.failure.code,
                r.failure.class,
            ),
            SendError::Permanent(f) => ("permanent", f.code, f.class),
            SendError::Unhealthy(f) => ("unhealthy", f.code, f.class),
        }
    }

    fn api(error: ApiError) -> (&'static str, String) {
        let (kind, code, _) = kind(RequestError::Api(error));
        (kind, code)
    }

    fn unknown(description: &str) -> (&'static str, String) {
        api(ApiError::Unknown(description.into()))
    }

    fn is(kind: &'static str, code: &str) -> (&'static str, String) {
        (kind, code.to_owned())
    }

    #[test]
    fn telegram_answers_map_to_one_kind_each() {
        // 403 blocked, deactivated, kicked (group, supergroup, channel), 400 chat not found.
        assert_eq!(api(ApiError::BotBlocked), is("permanent", "blocked"));
        assert_eq!(
            api(ApiError::UserDeactivated),
            is("permanent", "deactivated")
        );
        assert_eq!(
            unknown("Forbidden: bot was kicked from the group chat"),
            is("permanent", "kicked")
        );
        assert_eq!(
            api(ApiError::BotKickedFromSupergroup),
            is("permanent", "kicked")
        );
        assert_eq!(
            api(ApiError::BotKickedFromChannel),
            is("permanent", "kicked")
        );
        assert_eq!(
            api(ApiError::ChatNotFound),
            is("permanent", "chat_not_found")
        );
        // 403 seen transiently: retried, the address stays.
        assert_eq!(
            unknown("Forbidden: bot can't send messages to the user"),
            is("retry", "cannot_send_to_user")
        );
        assert_eq!(
            unknown("Forbidden: bot can't initiate conversation with a user"),
            is("retry", "cannot_initiate")
        );
        assert_eq!(
            api(ApiError::CantInitiateConversation),
            is("retry", "cannot_initiate")
        );
        // Other 403s and 400s about this chat or message.
        assert_eq!(
            unknown("Forbidden: bot is not a member of the channel chat"),
            is("permanent", "forbidden")
        );
        assert_eq!(
            api(ApiError::CantParseEntities(
                "Bad Request: can't parse entities".into()
            )),
            is("permanent", "rejected")
        );
        assert_eq!(
            unknown("Bad Request: some new complaint"),
            is("permanent", "rejected")
        );
        // 401: our token.
        assert_eq!(
            api(ApiError::InvalidToken),
            is("unhealthy", "invalid_token")
        );
        // 5xx with Telegram's envelope.
        assert_eq!(
            unknown("Bad Gateway"),
            is("provider_fault", "provider_error")
        );
        assert_eq!(
            unknown("Internal Server Error"),
            is("provider_fault", "provider_error")
        );
    }

    #[test]
    fn a_429_throttles_the_whole_bot_for_its_retry_after() {
        let SendError::Retry(retry) = classify(&RequestError::RetryAfter(Seconds::from_seconds(7)))
        else {
            panic!("not a retry")
        };
        assert!(retry.throttles_account);
        assert_eq!(retry.after, Some(Duration::from_secs(7)));
        assert_eq!(retry.failure.code, "rate_limited");
    }

    #[test]
    fn a_migrated_group_is_permanent_and_names_the_new_chat() {
        let SendError::Permanent(failure) =
            classify(&RequestError::MigrateToChatId(ChatId(-1_001_234_567_890)))
        else {
            panic!("not permanent")
        };
        assert_eq!(failure.code, "chat_migrated");
        assert!(
            failure.message.contains("-1001234567890"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn an_answer_that_is_not_json_is_a_provider_fault() {
        let source = serde_json::from_str::<serde_json::Value>("<html>").unwrap_err();
        let error = RequestError::InvalidJson {
            source: std::sync::Arc::new(source),
            raw: "<html>".into(),
        };
        assert_eq!(
            kind(error),
            (
                "provider_fault",
                "invalid_response".to_owned(),
                FailureClass::Temporary
            )
        );
    }

    #[tokio::test]
    async fn a_connection_that_cannot_be_made_is_a_provider_fault() {
        herald_runtime::install_crypto_provider();
        // Port 1 on loopback: nothing listens there.
        let bot = teloxide::Bot::new("1:x").set_api_url("http://127.0.0.1:1/".parse().unwrap());
        let error = teloxide::requests::Requester::get_me(&bot)
            .await
            .unwrap_err();
        assert_eq!(
            kind(error),
            (
                "provider_fault",
                "provider_unreachable".to_owned(),
                FailureClass::Temporary
            )
        );
    }
}
