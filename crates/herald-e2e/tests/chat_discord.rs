//! A person on Discord, every part real but Discord itself (a fake REST server that serenity
//! talks to, and signed interactions posted to the sender's endpoint as Discord would): a
//! link code from the API used with `/link`, the DM answer, a direct message delivered as a
//! DM, and a user who stops accepting DMs, which makes the address unreachable (R5, R6).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use herald_runtime::config::Secret;
use herald_storage::PgPool;
use herald_testkit::discord_interactions::{InteractionClient, Place};
use herald_testkit::fake_discord::{DiscordMessage, FakeDiscord, Fault};
use sender_discord::{DiscordConfig, DiscordSender, DiscordSettings};
use serde_json::{Value, json};
use support::{System, eventually};

const TOKEN: &str = "e2e-discord-token";
const APPLICATION: u64 = 900_000_000_000_000_001;
const ANN: u64 = 700_000_000_000_000_001;

async fn dm(fake: &FakeDiscord, user: u64, needle: &str) -> DiscordMessage {
    eventually(&format!("{needle:?} in the DM of {user}"), || {
        fake.sent()
            .into_iter()
            .find(|m| m.recipient_id == Some(user) && m.content.contains(needle))
    })
    .await
}

fn discord_address(user: &Value) -> Option<&Value> {
    user["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["channel"] == "discord" && a["address"].as_str() == Some(&*ANN.to_string()))
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_discord_user_links_with_a_slash_command_and_receives_direct_messages(pool: PgPool) {
    let mut system = System::start(pool, "e2e_discord").await;
    let fake = FakeDiscord::start(TOKEN, APPLICATION).await;
    let interactions = InteractionClient::new(APPLICATION);
    fake.set_verify_key(&interactions.public_key_hex());
    let config = DiscordConfig {
        discord: DiscordSettings {
            bot_token: Secret::new(TOKEN.into()),
            application_id: Some(APPLICATION.to_string()),
            public_key: Some(interactions.public_key_hex()),
            api_proxy: Some(fake.proxy_url()),
            ..DiscordSettings::default()
        },
    };
    let addr = system
        .run("e2e-sender-discord", |service| {
            Box::pin(async move {
                sender_runtime::run::start_chat::<DiscordSender>(
                    service,
                    sender_runtime::testing::quick_config(),
                    config,
                )
                .await
                .unwrap()
            })
        })
        .await;
    let endpoint = format!("http://{addr}/discord/interactions");

    // A code from the API, used with /link in a server channel: an ephemeral "I'll answer in
    // a DM", then the DM that says it worked.
    let (status, issued) = system
        .call(
            "POST",
            "/api/messaging/users/ann/link-codes",
            Some(json!({"channel": "discord"})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let code = issued["code"].as_str().unwrap();
    let place = Place::Guild {
        guild_id: 1,
        channel_id: 2,
    };
    let reply = interactions
        .post(&endpoint, &interactions.link(code, ANN, place))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["data"]["flags"], 64, "ephemeral: {}", reply.text);
    dm(&fake, ANN, "linked").await;
    let ann = system
        .wait_for("/api/messaging/users/ann", |u| discord_address(u).is_some())
        .await;
    assert_eq!(discord_address(&ann).unwrap()["verified"], true);

    // A direct message arrives as a DM.
    let (status, accepted) = system
        .call(
            "POST",
            "/api/messaging/messages",
            Some(json!({"to": {"users": ["ann"]}, "content": {"direct": {"body": "Build 1234 passed"}}})),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    dm(&fake, ANN, "Build 1234 passed").await;

    // Ann closes her DMs (50007): the next message fails for good and the address is
    // unreachable until she links again.
    fake.set_user_fault(ANN, Some(Fault::CannotMessageUser));
    let (_, accepted) = system
        .call(
            "POST",
            "/api/messaging/messages",
            Some(json!({"to": {"users": ["ann"]}, "content": {"direct": {"body": "Build 1235 failed"}}})),
        )
        .await;
    let id = accepted["messageId"].as_str().unwrap();
    let message = system
        .wait_for(&format!("/api/messaging/messages/{id}"), |m| {
            m["status"] == "completed"
        })
        .await;
    assert_eq!(
        message["deliveries"][0]["failure"]["class"], "permanent",
        "{message}"
    );
    system
        .wait_for("/api/messaging/users/ann", |u| {
            discord_address(u).is_some_and(|a| a["state"] == "unreachable")
        })
        .await;

    system.finish().await;
}
