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
//! 4. The Bot Framework may move a conversation to another service URL, and then posts its
//!    activities with the new one. A conversation seen at a service URL this replica has not
//!    seen it at goes to the router as a [`ChatSeenEvent`], which points the stored addresses
//!    of that conversation at the new URL (R38), so proactive messages keep arriving.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::Utc;
use herald_jwks::{KeyError, KeySet};
use jsonwebtoken::{Algorithm, Validation};
use messaging_core::events::{ChatReference, ChatSeenEvent};
use messaging_core::topology::routing;
use messaging_core::values::TeamsChat;
use messaging_core::{Address, Channel, EnvelopeVersion};
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
    seen: Arc<SeenChats>,
}

pub fn router(bot: Arc<TeamsSender>, inbox: Inbox) -> Router {
    Router::new()
        .route(PATH, post(activity))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(Endpoint {
            bot,
            inbox,
            seen: Arc::default(),
        })
}

/// The service URL this replica last reported for each conversation, so that the router
/// hears of a conversation once per URL rather than once per text. Bounded: past
/// [`SeenChats::MAX`] conversations it starts over, which only costs a few events again.
#[derive(Default)]
pub struct SeenChats {
    urls: Mutex<HashMap<String, String>>,
}

impl SeenChats {
    pub const MAX: usize = 10_000;

    /// Whether `chat` is news: its conversation not seen yet, or seen at another URL.
    pub fn is_news(&self, chat: &TeamsChat) -> bool {
        let urls = self.urls.lock().unwrap_or_else(|e| e.into_inner());
        urls.get(chat.conversation_id()).map(String::as_str) != Some(chat.service_url())
    }

    /// Notes that the router was told of `chat`.
    pub fn told(&self, chat: &TeamsChat) {
        let mut urls = self.urls.lock().unwrap_or_else(|e| e.into_inner());
        if urls.len() >= Self::MAX && !urls.contains_key(chat.conversation_id()) {
            urls.clear();
        }
        urls.insert(
            chat.conversation_id().to_owned(),
            chat.service_url().to_owned(),
        );
    }
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
    /// The bot, in this conversation.
    pub recipient: Option<Account>,
    #[serde(default)]
    pub channel_data: Option<ChannelData>,
    #[serde(default)]
    pub text: Option<String>,
    /// `add` or `remove`, for an `installationUpdate`.
    #[serde(default)]
    pub action: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: String,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub conversation_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub aad_object_id: Option<String>,
}

/// Teams' own part of an activity: the tenant, when the conversation does not name it.
#[derive(Debug, Deserialize)]
pub struct ChannelData {
    #[serde(default)]
    pub tenant: Option<TenantInfo>,
}

#[derive(Debug, Deserialize)]
pub struct TenantInfo {
    #[serde(default)]
    pub id: Option<String>,
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
                reference: reference_of(&activity),
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
    if activity.action.as_deref() != Some("remove") {
        tell_if_moved(&endpoint, &chat, reference_of(&activity)).await;
    }
    if let Some(text) = said
        && let Err(error) = endpoint.bot.answer(&Address::Teams(chat), &text).await
    {
        tracing::warn!(error = %error.failure().message, "could not answer in Teams");
    }
    (StatusCode::OK, String::new())
}

/// Tells the router where a conversation is now, when this replica has not told it yet. A
/// service URL Herald would not send to is not reported: the addresses keep the old one.
async fn tell_if_moved(endpoint: &Endpoint, chat: &TeamsChat, reference: Option<ChatReference>) {
    if !endpoint.seen.is_news(chat) || endpoint.bot.hosts.activities_url(chat).is_err() {
        return;
    }
    let event = ChatSeenEvent {
        version: EnvelopeVersion,
        channel: Channel::Teams,
        chat: Address::Teams(chat.clone()),
        reference,
        seen_at: Utc::now(),
    };
    let key = routing::chat_seen(Channel::Teams);
    match endpoint
        .inbox
        .publish(&key, &event, "herald.chat_seen.v1")
        .await
    {
        Ok(()) => endpoint.seen.told(chat),
        // The next activity from the conversation tries again.
        Err(error) => tracing::warn!(%error, "could not tell the router where a chat is"),
    }
}

/// The conversation reference an activity carries, as an address.
pub fn chat_of(activity: &Activity) -> Option<TeamsChat> {
    let conversation = activity.conversation.as_ref()?;
    TeamsChat::new(&activity.service_url, &conversation.id).ok()
}

/// The rest of the conversation reference: what opening a new conversation with the person
/// would take, and whose chat it is.
pub fn reference_of(activity: &Activity) -> Option<ChatReference> {
    let conversation = activity.conversation.as_ref();
    let from = activity.from.as_ref();
    ChatReference {
        tenant_id: conversation.and_then(|c| c.tenant_id.clone()).or_else(|| {
            activity
                .channel_data
                .as_ref()
                .and_then(|d| d.tenant.as_ref())
                .and_then(|t| t.id.clone())
        }),
        bot_id: activity.recipient.as_ref().and_then(|r| r.id.clone()),
        user_id: from.and_then(|f| f.id.clone()),
        aad_object_id: from.and_then(|f| f.aad_object_id.clone()),
        conversation_type: conversation.and_then(|c| c.conversation_type.clone()),
    }
    .bounded()
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
    fn a_conversation_is_news_once_per_service_url() {
        let seen = SeenChats::default();
        let at = |url| TeamsChat::new(url, "a:1chat").unwrap();
        assert!(seen.is_news(&at("https://smba.example/emea/")));
        seen.told(&at("https://smba.example/emea/"));
        assert!(!seen.is_news(&at("https://smba.example/emea/")));
        assert!(seen.is_news(&at("https://smba.example/amer/")));
        seen.told(&at("https://smba.example/amer/"));
        assert!(!seen.is_news(&at("https://smba.example/amer/")));
    }

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
