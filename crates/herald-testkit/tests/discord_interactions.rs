//! The interaction client against an endpoint that checks signatures the way Discord asks
//! (ed25519 over timestamp + raw body, checked before parsing) and parses with serenity.

// Helpers outside #[test] functions unwrap too: a broken fixture fails the test on the spot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use herald_testkit::discord_interactions::{
    InteractionClient, Place, SIGNATURE_HEADER, Signing, TIMESTAMP_HEADER,
};
use serde_json::json;
use serenity::model::application::{CommandDataOptionValue, Interaction};

const APP: u64 = 1_098_765_432_100_000_001;

fn verify(key: &VerifyingKey, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (header(SIGNATURE_HEADER), header(TIMESTAMP_HEADER))
    else {
        return false;
    };
    let Some(signature) = hex::decode(signature)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
    else {
        return false;
    };
    let mut message = timestamp.as_bytes().to_vec();
    message.extend_from_slice(body);
    key.verify(&message, &signature).is_ok()
}

/// A minimal interactions endpoint: 401 unless the signature verifies; PING -> PONG; a
/// command -> a message naming the command, its first option and the invoking user.
async fn endpoint(State(key): State<VerifyingKey>, headers: HeaderMap, body: Bytes) -> Response {
    if !verify(&key, &headers, &body) {
        return (StatusCode::UNAUTHORIZED, "invalid request signature").into_response();
    }
    match serde_json::from_slice::<Interaction>(&body) {
        Ok(Interaction::Ping(_)) => axum::Json(json!({"type": 1})).into_response(),
        Ok(Interaction::Command(command)) => {
            let option = match command.data.options.first().map(|o| &o.value) {
                Some(CommandDataOptionValue::String(value)) => value.clone(),
                other => format!("{other:?}"),
            };
            axum::Json(json!({"type": 4, "data": {
                "content": format!("{} {} {}", command.data.name, option, command.user.id),
                "guild": command.guild_id.map(|g| g.get()),
                "member": command.member.as_ref().map(|m| m.user.id.get()),
            }}))
            .into_response()
        }
        Ok(other) => (StatusCode::BAD_REQUEST, format!("unexpected {other:?}")).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    }
}

async fn start_endpoint(key: VerifyingKey) -> String {
    let app = axum::Router::new()
        .route("/discord/interactions", axum::routing::post(endpoint))
        .with_state(key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/discord/interactions",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[test]
fn the_signature_verifies_with_the_published_public_key() {
    let discord = InteractionClient::new(APP);
    let key_bytes: [u8; 32] = hex::decode(discord.public_key_hex())
        .unwrap()
        .try_into()
        .unwrap();
    let key = VerifyingKey::from_bytes(&key_bytes).unwrap();
    assert_eq!(key, discord.verifying_key());

    let body = br#"{"type":1}"#;
    let signature = hex::decode(discord.sign("1700000000", body)).unwrap();
    let signature = Signature::from_slice(&signature).unwrap();
    let mut message = b"1700000000".to_vec();
    message.extend_from_slice(body);
    key.verify_strict(&message, &signature).unwrap();

    message.push(b' ');
    assert!(key.verify_strict(&message, &signature).is_err());
}

#[tokio::test]
async fn a_ping_gets_a_pong() {
    let discord = InteractionClient::new(APP);
    let url = start_endpoint(discord.verifying_key()).await;
    let reply = discord.post(&url, &discord.ping()).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body, json!({"type": 1}));
}

#[tokio::test]
async fn link_from_a_dm_parses_in_serenity_with_the_user() {
    let discord = InteractionClient::new(APP);
    let url = start_endpoint(discord.verifying_key()).await;
    let link = discord.link("K7Q2-9XPM", 42, Place::Dm { channel_id: 77 });
    assert_eq!(
        link["data"]["options"][0],
        json!({"name": "code", "type": 3, "value": "K7Q2-9XPM"})
    );
    let reply = discord.post(&url, &link).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["data"]["content"], "link K7Q2-9XPM 42");
    assert_eq!(reply.body["data"]["guild"], json!(null));
}

#[tokio::test]
async fn support_from_a_guild_parses_in_serenity_with_the_member() {
    let discord = InteractionClient::new(APP);
    let url = start_endpoint(discord.verifying_key()).await;
    let support = discord.support(
        "My parcel is late",
        43,
        Place::Guild {
            guild_id: 9,
            channel_id: 78,
        },
    );
    assert!(
        support.get("user").is_none(),
        "a guild interaction has member.user only"
    );
    let reply = discord.post(&url, &support).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    // serenity copies member.user into `user` for guild interactions.
    assert_eq!(
        reply.body["data"]["content"],
        "support My parcel is late 43"
    );
    assert_eq!(reply.body["data"]["guild"], 9);
    assert_eq!(reply.body["data"]["member"], 43);
}

#[tokio::test]
async fn bad_or_missing_signatures_are_refused() {
    let discord = InteractionClient::new(APP);
    let url = start_endpoint(discord.verifying_key()).await;
    for signing in [Signing::WrongKey, Signing::TamperedBody, Signing::Missing] {
        let reply = discord
            .post_signed(&url, &discord.ping(), signing)
            .await
            .unwrap();
        assert_eq!(reply.status, 401, "{signing:?}");
        assert_eq!(reply.body, serde_json::Value::Null);
    }
}
