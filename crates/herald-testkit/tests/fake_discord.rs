//! serenity's `Http`, the client the Discord sender uses, pointed at the fake REST API. These
//! tests pin down what the sender will see for each answer, so its error mapping can rely on
//! them.

// Helpers outside #[test] functions unwrap too: a broken fixture fails the test on the spot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use herald_testkit::discord_interactions::InteractionClient;
use herald_testkit::fake_discord::{BOT_USERNAME, Endpoint, FakeDiscord, Fault};
use serde_json::json;
use serenity::builder::{CreateCommand, CreateCommandOption, CreateMessage};
use serenity::http::{Http, HttpBuilder, HttpError};
use serenity::model::application::{Command, CommandOptionType};
use serenity::model::id::{ApplicationId, ChannelId, UserId};

const TOKEN: &str = "MTA5ODc2NTQzMjEwMDAwMDAwMQ.fake.token";
const APP: u64 = 1_098_765_432_100_000_001;

/// serenity as the sender will build it for tests: the proxy only takes effect with the
/// ratelimiter off (see the fake's module docs).
fn http(fake: &FakeDiscord) -> Http {
    // serenity's reqwest brings rustls without choosing a crypto provider for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    HttpBuilder::new(TOKEN)
        .proxy(fake.proxy_url())
        .ratelimiter_disabled(true)
        .application_id(ApplicationId::new(APP))
        .build()
}

/// The status and Discord error code of an unsuccessful request.
fn discord_error(error: &serenity::Error) -> Option<(u16, isize)> {
    match error {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => {
            Some((response.status_code.as_u16(), response.error.code))
        }
        _ => None,
    }
}

#[tokio::test]
async fn opening_a_dm_twice_gives_the_same_channel() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let http = http(&fake);
    let first = UserId::new(42).create_dm_channel(&http).await.unwrap();
    let second = http
        .create_private_channel(&json!({"recipient_id": "42"}))
        .await
        .unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(first.recipient.id, UserId::new(42));
    assert_eq!(fake.dm_channel_of(42), Some(first.id.get()));

    let request = &fake.requests()[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/users/@me/channels");
    assert_eq!(
        request.authorization.as_deref(),
        Some(format!("Bot {TOKEN}").as_str())
    );
    assert_eq!(
        request.body,
        json!({"recipient_id": "42"}),
        "serenity sends ids as strings"
    );
}

#[tokio::test]
async fn a_dm_is_sent_and_recorded_with_its_recipient_and_time() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let http = http(&fake);
    let channel = UserId::new(42).create_dm_channel(&http).await.unwrap();
    let before = Instant::now();
    let message = channel
        .id
        .send_message(&http, CreateMessage::new().content("**Order** shipped"))
        .await
        .unwrap();
    assert_eq!(message.content, "**Order** shipped");
    assert_eq!(message.channel_id, channel.id);
    assert!(message.author.bot);
    assert_eq!(message.author.name, BOT_USERNAME);

    let sent = fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].recipient_id, Some(42));
    assert_eq!(sent[0].channel_id, channel.id.get());
    assert_eq!(sent[0].message_id, message.id.get());
    assert!(sent[0].at >= before && sent[0].at <= Instant::now());
}

#[tokio::test]
async fn a_user_who_refuses_dms_gives_50007_on_the_send_not_on_opening() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let http = http(&fake);
    fake.set_user_fault(43, Some(Fault::CannotMessageUser));
    let channel = UserId::new(43).create_dm_channel(&http).await.unwrap();
    let error = channel
        .id
        .send_message(&http, CreateMessage::new().content("hi"))
        .await
        .unwrap_err();
    assert_eq!(discord_error(&error), Some((403, 50007)), "{error:?}");
    assert_eq!(error.to_string(), "Cannot send messages to this user");
    assert!(fake.sent().is_empty());
}

#[tokio::test]
async fn an_unknown_user_gives_10013_on_opening_the_dm() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    fake.set_user_fault(44, Some(Fault::UnknownUser));
    let error = UserId::new(44)
        .create_dm_channel(&http(&fake))
        .await
        .unwrap_err();
    assert_eq!(discord_error(&error), Some((404, 10013)), "{error:?}");
}

#[tokio::test]
async fn an_unknown_channel_gives_10003() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let error = ChannelId::new(999)
        .send_message(&http(&fake), CreateMessage::new().content("hi"))
        .await
        .unwrap_err();
    assert_eq!(discord_error(&error), Some((404, 10003)), "{error:?}");
}

#[tokio::test]
async fn a_text_channel_added_to_the_fake_takes_messages() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    fake.add_text_channel(5);
    ChannelId::new(5)
        .send_message(&http(&fake), CreateMessage::new().content("ticket #1"))
        .await
        .unwrap();
    assert_eq!(fake.sent()[0].recipient_id, None);
}

#[tokio::test]
async fn an_empty_message_gives_50006() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let http = http(&fake);
    let channel = UserId::new(42).create_dm_channel(&http).await.unwrap();
    let error = channel
        .id
        .send_message(&http, CreateMessage::new().content(" "))
        .await
        .unwrap_err();
    assert_eq!(discord_error(&error), Some((400, 50006)), "{error:?}");
}

/// With the ratelimiter off (the only way to use the proxy), serenity neither waits nor
/// retries: the 429 comes back at once. Discord's 429 body has no `code`, so serenity's
/// `DiscordJsonError` fails to decode it and reports code -1; `retry_after` and the headers
/// are not kept in the error. (With the ratelimiter on, against discord.com, serenity sleeps
/// for `retry-after` and retries by itself, with no limit on the number of retries.)
#[tokio::test]
async fn a_429_comes_back_at_once_as_an_unsuccessful_request() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let http = http(&fake);
    let channel = UserId::new(42).create_dm_channel(&http).await.unwrap();
    for global in [false, true] {
        fake.fail_next([Fault::TooManyRequests {
            retry_after: 2.5,
            global,
        }]);
        let started = Instant::now();
        let error = channel
            .id
            .send_message(&http, CreateMessage::new().content("hi"))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "not waited for");
        assert_eq!(discord_error(&error), Some((429, -1)), "{error:?}");
    }
    assert_eq!(fake.too_many_requests_answered(), 2);
    assert_eq!(fake.requests().len(), 3, "no retries");
    assert!(fake.sent().is_empty());
}

#[tokio::test]
async fn a_server_error_is_an_unsuccessful_request_with_its_status() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let http = http(&fake);
    fake.fail_next_on(Endpoint::OpenDm, [Fault::Status(502)]);
    let error = UserId::new(42).create_dm_channel(&http).await.unwrap_err();
    assert_eq!(discord_error(&error), Some((502, 0)), "{error:?}");
    UserId::new(42).create_dm_channel(&http).await.unwrap();
}

#[tokio::test]
async fn a_slow_answer_is_delivered_late() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let http = http(&fake);
    let channel = UserId::new(42).create_dm_channel(&http).await.unwrap();
    fake.fail_next([Fault::Slow(Duration::from_millis(300))]);
    let started = Instant::now();
    channel
        .id
        .send_message(&http, CreateMessage::new().content("hi"))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_dropped_connection_is_a_request_error() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let http = http(&fake);
    let channel = UserId::new(42).create_dm_channel(&http).await.unwrap();
    fake.fail_next([Fault::Drop]);
    let error = channel
        .id
        .send_message(&http, CreateMessage::new().content("hi"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, serenity::Error::Http(HttpError::Request(_))),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_outage_fails_every_request_until_it_ends() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let http = http(&fake);
    fake.set_outage(Some(Fault::Status(503)));
    let error = http.get_current_user().await.unwrap_err();
    assert_eq!(discord_error(&error), Some((503, 0)), "{error:?}");
    fake.set_outage(None);
    let me = http.get_current_user().await.unwrap();
    assert_eq!(me.id, UserId::new(APP));
    assert!(me.bot);
}

#[tokio::test]
async fn the_wrong_token_is_401() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let stranger = HttpBuilder::new("other.token")
        .proxy(fake.proxy_url())
        .ratelimiter_disabled(true)
        .build();
    let error = stranger.get_current_user().await.unwrap_err();
    assert_eq!(discord_error(&error), Some((401, 0)), "{error:?}");
}

#[tokio::test]
async fn the_application_reports_the_interaction_clients_public_key() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let discord = InteractionClient::new(APP);
    fake.set_verify_key(&discord.public_key_hex());
    let app = http(&fake).get_current_application_info().await.unwrap();
    assert_eq!(app.id, ApplicationId::new(APP));
    assert_eq!(app.verify_key, discord.public_key_hex());
}

#[tokio::test]
async fn a_bulk_overwrite_of_commands_is_recorded_and_keeps_ids_by_name() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    let http = http(&fake);
    let commands = || {
        vec![
            CreateCommand::new("link")
                .description("Link this Discord account to Herald")
                .add_option(
                    CreateCommandOption::new(CommandOptionType::String, "code", "Your link code")
                        .required(true),
                ),
            CreateCommand::new("support")
                .description("Ask the help desk")
                .add_option(
                    CreateCommandOption::new(CommandOptionType::String, "text", "Your question")
                        .required(true),
                ),
        ]
    };
    let first = Command::set_global_commands(&http, commands())
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].name, "link");
    assert_eq!(first[0].application_id, ApplicationId::new(APP));
    assert_eq!(first[0].options[0].name, "code");
    assert!(first[0].options[0].required);

    let second = Command::set_global_commands(&http, commands())
        .await
        .unwrap();
    assert_eq!(
        first[0].id, second[0].id,
        "Discord keeps a command's id by name"
    );

    let overwrites = fake.command_overwrites();
    assert_eq!(overwrites.len(), 2);
    assert_eq!(overwrites[0].guild_id, None);
    assert_eq!(fake.commands()[1]["name"], "support");
    assert_eq!(
        fake.requests()[0].path,
        format!("/applications/{APP}/commands")
    );
    assert_eq!(fake.requests()[0].method, "PUT");
}
