//! `POST /api/messages`: the bot's messaging endpoint, where the Bot Framework posts what
//! people do in Teams.
//!
//! 1. The token: `Authorization: Bearer <JWT>`, signed with a key from the Bot Framework's
//!    OpenID metadata (its JWKS, fetched when a token names a key not seen yet), issuer
//!    `https://api.botframework.com`, audience the bot's app id, in date (5 minutes of clock
//!    leeway, as the Bot Framework's own SDKs allow), the key endorsed for the activity's
//!    channel, and the token's `serviceUrl` claim equal to the activity's. Anything else:
//!    401, before the activity is read.
//! 2. A `message` or an `installationUpdate` (the bot added to a chat) from Teams: the
//!    conversation reference (service URL and conversation id) is the chat's address. The
//!    text, with the bot's `<at>` mention taken out, goes to the runtime's [`Inbox`]:
//!    `link CODE` links this conversation to the person who asked for the code,
//!    `support TEXT` opens a ticket, anything else gets the help text. An installation gets
//!    the help text.
//! 3. The answer is always 200 once the token checked out; what the bot says goes to the
//!    conversation through the Bot Connector, like any answer.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use herald_jwks::{KeyError, KeySet};
use jsonwebtoken::{Algorithm, Validation};
use messaging_core::Address;
use messaging_core::values::TeamsChat;
use sender_runtime::chat::help_text;
use sender_runtime::{ChatChannel, Inbox, Incoming, Reply};
use serde::Deserialize;

use crate::TeamsSender;

pub const PATH: &str = "/api/messages";

/// The channel id of Teams in an activity; other Bot Framework channels are not Teams.
pub const TEAMS_CHANNEL: &str = "msteams";

/// Clock leeway for the token's times.
pub const LEEWAY: Duration = Duration::from_secs(5 * 60);

/// The largest activity read (Teams' own messages are below 100 KB).
pub const MAX_BODY: usize = 256 * 1024;

pub const BUSY: &str = "Herald is busy, please try again in a minute.";

/// How the endpoint checks tokens.
pub struct TokenRules {
    pub keys: KeySet,
    pub issuer: String,
    pub app_id: String,
}

#[derive(Clone)]
struct Endpoint {
    bot: Arc<TeamsSender>,
    inbox: Inbox,
}

pub fn router(bot: Arc<TeamsSender>, inbox: Inbox) -> Router {
    Router::new()
        .route(PATH, post(activity))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(Endpoint { bot, inbox })
}

/// The parts of an activity the bot reads; everything else is ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub service_url: String,
    #[serde(default)]
    pub channel_id: String,
    pub conversation: Option<Conversation>,
    pub from: Option<Account>,
    #[serde(default)]
    pub text: Option<String>,
    /// `add` or `remove`, for an `installationUpdate`.
    #[serde(default)]
    pub action: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Conversation {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct Account {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Claims {
    #[serde(default)]
    service_url: Option<String>,
}

/// Why a request's token was refused (the 401's body), or why none could be checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Unauthorized(String),
    /// The Bot Framework's keys cannot be fetched now: 503, the Bot Framework retries.
    KeysUnavailable,
}

impl TokenRules {
    /// Whether the Bot Framework signed this request for this activity.
    pub async fn check(&self, headers: &HeaderMap, activity: &Activity) -> Result<(), Refused> {
        let unauthorized = |why: &str| Refused::Unauthorized(why.to_owned());
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("no bearer token"))?
            .trim();
        let header = jsonwebtoken::decode_header(token).map_err(|_| unauthorized("not a JWT"))?;
        if header.alg != Algorithm::RS256 {
            return Err(unauthorized("the Bot Framework signs with RS256"));
        }
        let kid = header
            .kid
            .ok_or_else(|| unauthorized("the token names no key"))?;
        let key = self.keys.key(&kid).await.map_err(|e| match e {
            KeyError::Unknown(_) => unauthorized("the token's key is not the Bot Framework's"),
            KeyError::Unavailable(_) => Refused::KeysUnavailable,
        })?;
        if !key.endorsements.is_empty() && !key.endorsements.contains(&activity.channel_id) {
            return Err(unauthorized("the key is not endorsed for this channel"));
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.app_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|e| Refused::Unauthorized(format!("invalid token: {e}")))?
            .claims;
        if claims.service_url.as_deref() != Some(activity.service_url.as_str()) {
            return Err(unauthorized("the token's serviceUrl is not the activity's"));
        }
        Ok(())
    }
}

async fn activity(
    State(endpoint): State<Endpoint>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    // Read the activity only as far as the token check needs (its service URL and channel);
    // nothing in it is acted on before the token checked out.
    let Ok(activity) = serde_json::from_slice::<Activity>(&body) else {
        return (StatusCode::BAD_REQUEST, "not an activity".into());
    };
    match endpoint.bot.token_rules.check(&headers, &activity).await {
        Ok(()) => {}
        Err(Refused::Unauthorized(why)) => {
            tracing::info!(%why, "refused a request to the messaging endpoint");
            return (StatusCode::UNAUTHORIZED, why);
        }
        Err(Refused::KeysUnavailable) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the Bot Framework's keys cannot be fetched now".into(),
            );
        }
    }
    if activity.channel_id != TEAMS_CHANNEL {
        return (StatusCode::OK, String::new());
    }
    let Some(chat) = chat_of(&activity) else {
        return (
            StatusCode::BAD_REQUEST,
            "no conversation to answer in".into(),
        );
    };
    let said = match activity.kind.as_str() {
        "message" => {
            let text = without_mentions(activity.text.as_deref().unwrap_or_default());
            let incoming = Incoming {
                chat: Address::Teams(chat.clone()),
                text,
                display_name: activity.from.as_ref().and_then(|f| f.name.clone()),
            };
            match endpoint.inbox.receive(incoming).await {
                Ok(Reply::Later) => None,
                Ok(Reply::Now(text)) => Some(text),
                Err(error) => {
                    tracing::warn!(%error, "could not hand a message to the router");
                    Some(BUSY.to_owned())
                }
            }
        }
        "installationUpdate" if activity.action.as_deref() != Some("remove") => Some(help_text()),
        _ => None,
    };
    if let Some(text) = said
        && let Err(error) = endpoint.bot.answer(&Address::Teams(chat), &text).await
    {
        tracing::warn!(error = %error.failure().message, "could not answer in Teams");
    }
    (StatusCode::OK, String::new())
}

/// The conversation reference an activity carries, as an address.
pub fn chat_of(activity: &Activity) -> Option<TeamsChat> {
    let conversation = activity.conversation.as_ref()?;
    TeamsChat::new(&activity.service_url, &conversation.id).ok()
}

/// The text without `<at>...</at>` mentions: in a channel or group chat people address the
/// bot as `@Herald link CODE`, which Teams sends as `<at>Herald</at> link CODE`.
pub fn without_mentions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<at>") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</at>") {
            Some(end) => rest = &rest[start + end + "</at>".len()..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_of_the_bot_are_taken_out() {
        assert_eq!(
            without_mentions("<at>Herald</at> link K7QX2MPA"),
            "link K7QX2MPA"
        );
        assert_eq!(without_mentions("link K7QX2MPA"), "link K7QX2MPA");
        assert_eq!(
            without_mentions("  <at>Herald</at>  support <at>x</at>help "),
            "support help"
        );
        assert_eq!(without_mentions("a <at>unclosed"), "a <at>unclosed");
    }
}
