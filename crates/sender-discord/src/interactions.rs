//! `POST /discord/interactions`: Discord's Interactions Endpoint URL (R5, R53).
//!
//! 1. The signature: `X-Signature-Ed25519` over `X-Signature-Timestamp` + the raw body,
//!    against the application's public key, before anything is parsed. Missing or bad: 401.
//!    Discord tests the endpoint with bad signatures when it is saved, and now and then
//!    after, and drops an endpoint that accepts them.
//! 2. PING (type 1): `{"type": 1}`.
//! 3. APPLICATION_COMMAND (type 2): `/link code:<code>` and `/support text:<text>`, from a DM
//!    (`user`) or a guild (`member.user`), become the text `/link CODE` or `/support TEXT`
//!    from `Address::Discord(user id)` for the runtime's [`Inbox`]. Any other command gets
//!    the help text.
//!
//! Discord waits 3 s for the answer, which is always a message only the user sees
//! (type 4, flags 64): what the inbox says now, "Got it..." when the request went to the
//! router (whose answer comes later as a DM), or "busy" when it could not be handed on. The
//! inbox publishes with confirms; if the broker has not confirmed within [`ANSWER_WITHIN`]
//! the person is told to try again, while the publish goes on in the background (so it may
//! still arrive: a second `/link` with the same code then only gets "already used").

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ed25519_dalek::{Signature, VerifyingKey};
use messaging_core::Address;
use messaging_core::values::DiscordId;
use sender_runtime::chat::help_text;
use sender_runtime::{Inbox, Incoming, Reply};
use serde::Deserialize;
use serde_json::json;

pub const PATH: &str = "/discord/interactions";
pub const SIGNATURE_HEADER: &str = "x-signature-ed25519";
pub const TIMESTAMP_HEADER: &str = "x-signature-timestamp";

/// How long the endpoint waits for the inbox, inside Discord's 3 s.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(2_500);

pub const LATER: &str = "Got it: I'll answer you in a direct message.";
pub const BUSY: &str = "Herald is busy, please try again in a minute.";

#[derive(Clone)]
struct Endpoint {
    public_key: VerifyingKey,
    inbox: Inbox,
}

pub fn router(public_key: VerifyingKey, inbox: Inbox) -> Router {
    Router::new()
        .route(PATH, post(interaction))
        .with_state(Endpoint { public_key, inbox })
}

/// Whether Discord signed this body: ed25519 over the timestamp followed by the raw body.
pub fn verify(public_key: &VerifyingKey, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (header(SIGNATURE_HEADER), header(TIMESTAMP_HEADER))
    else {
        return false;
    };
    let Some(signature) = hex::decode(signature.trim())
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
    else {
        return false;
    };
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    public_key
        .verify_strict(&message, &Signature::from_bytes(&signature))
        .is_ok()
}

/// The parts of an interaction this bot reads; everything else is ignored.
#[derive(Debug, Deserialize)]
struct Interaction {
    #[serde(rename = "type")]
    kind: u8,
    data: Option<CommandData>,
    /// Set when the command was used in a DM.
    user: Option<User>,
    /// Set when the command was used in a guild.
    member: Option<Member>,
}

#[derive(Debug, Deserialize)]
struct CommandData {
    name: String,
    #[serde(default)]
    options: Vec<CommandOption>,
}

#[derive(Debug, Deserialize)]
struct CommandOption {
    name: String,
    value: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Member {
    user: Option<User>,
}

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    username: Option<String>,
}

const PING: u8 = 1;
const APPLICATION_COMMAND: u8 = 2;

async fn interaction(
    State(endpoint): State<Endpoint>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !verify(&endpoint.public_key, &headers, &body) {
        return (StatusCode::UNAUTHORIZED, "invalid request signature").into_response();
    }
    let interaction: Interaction = match serde_json::from_slice(&body) {
        Ok(interaction) => interaction,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not an interaction: {error}"),
            )
                .into_response();
        }
    };
    match interaction.kind {
        PING => axum::Json(json!({"type": 1})).into_response(),
        APPLICATION_COMMAND => {
            let text = command(&endpoint.inbox, interaction).await;
            ephemeral(&text)
        }
        other => (
            StatusCode::BAD_REQUEST,
            format!("interaction type {other} is not handled"),
        )
            .into_response(),
    }
}

/// CHANNEL_MESSAGE_WITH_SOURCE, only for the user who ran the command.
fn ephemeral(text: &str) -> Response {
    axum::Json(json!({
        "type": 4,
        "data": {"content": text, "flags": 64, "allowed_mentions": {"parse": []}},
    }))
    .into_response()
}

/// What to tell the person who ran the command.
async fn command(inbox: &Inbox, interaction: Interaction) -> String {
    let Some(user) = interaction
        .user
        .or_else(|| interaction.member.and_then(|m| m.user))
    else {
        return help_text();
    };
    let Ok(id) = DiscordId::parse(&user.id) else {
        return help_text();
    };
    let Some(text) = interaction.data.and_then(|data| command_text(&data)) else {
        return help_text();
    };
    let incoming = Incoming {
        chat: Address::Discord(id),
        text,
        display_name: user.username,
        reference: None,
    };
    let inbox = inbox.clone();
    // Spawned: if Discord's deadline passes, the publish still completes or fails whole.
    let receiving = tokio::spawn(async move { inbox.receive(incoming).await });
    match tokio::time::timeout(ANSWER_WITHIN, receiving).await {
        Ok(Ok(Ok(Reply::Now(text)))) => text,
        Ok(Ok(Ok(Reply::Later))) => LATER.to_owned(),
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "cannot hand a Discord command to the router");
            BUSY.to_owned()
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "the inbox task failed");
            BUSY.to_owned()
        }
        Err(_) => {
            tracing::warn!("the broker did not confirm within {ANSWER_WITHIN:?}");
            BUSY.to_owned()
        }
    }
}

/// `/link CODE` or `/support TEXT`, as the inbox reads texts; `None` for anything else.
fn command_text(data: &CommandData) -> Option<String> {
    let option = |name: &str| {
        data.options
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| o.value.as_ref()?.as_str())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    match data.name.as_str() {
        "link" => option("code").map(|code| format!("/link {code}")),
        "support" => option("text").map(|text| format!("/support {text}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signed(key: &SigningKey, timestamp: &str, body: &[u8]) -> HeaderMap {
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body);
        let mut headers = HeaderMap::new();
        let signature = hex::encode(key.sign(&message).to_bytes());
        headers.insert(SIGNATURE_HEADER, signature.parse().unwrap());
        headers.insert(TIMESTAMP_HEADER, timestamp.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_applications_signature_over_this_body_verifies() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key();
        let body = br#"{"type":1}"#;
        assert!(verify(&public, &signed(&key, "1700000000", body), body));
        assert!(
            !verify(&public, &signed(&key, "1700000000", body), b"{\"type\":2}"),
            "another body"
        );
        let mut other_time = signed(&key, "1700000000", body);
        other_time.insert(TIMESTAMP_HEADER, "1700000001".parse().unwrap());
        assert!(!verify(&public, &other_time, body), "another timestamp");
        let stranger = SigningKey::from_bytes(&[8; 32]);
        assert!(!verify(
            &public,
            &signed(&stranger, "1700000000", body),
            body
        ));
        assert!(!verify(&public, &HeaderMap::new(), body), "no headers");
        let mut garbage = signed(&key, "1700000000", body);
        garbage.insert(SIGNATURE_HEADER, "zz".parse().unwrap());
        assert!(!verify(&public, &garbage, body), "not hex");
    }

    #[test]
    fn commands_become_the_texts_the_inbox_reads() {
        let data = |name: &str, option: &str, value: &str| CommandData {
            name: name.into(),
            options: vec![CommandOption {
                name: option.into(),
                value: Some(json!(value)),
            }],
        };
        assert_eq!(
            command_text(&data("link", "code", " ABCD2345 ")).as_deref(),
            Some("/link ABCD2345")
        );
        assert_eq!(
            command_text(&data("support", "text", "it broke")).as_deref(),
            Some("/support it broke")
        );
        assert_eq!(command_text(&data("link", "code", "  ")), None);
        assert_eq!(command_text(&data("dance", "x", "y")), None);
    }
}
