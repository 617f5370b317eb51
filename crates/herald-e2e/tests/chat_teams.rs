//! A person on Microsoft Teams, every part real but the Bot Framework (a fake Bot Connector
//! that the sender's reqwest client talks to, and activities posted to the bot's messaging
//! endpoint with a JWT signed as the Bot Framework signs): a link code from the API written
//! to the bot, the answer in the conversation, a direct message delivered there, the
//! conversation moved by the Bot Framework to another service URL and followed there, and a
//! person who blocks the bot, which makes the address unreachable (R5, R6, R38).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use herald_runtime::config::Secret;
use herald_storage::PgPool;
use herald_testkit::fake_teams::{FakeTeams, Fault, ReceivedActivity, Signed};
use sender_teams::{TeamsConfig, TeamsSender, TeamsSettings};
use serde_json::{Value, json};
use support::{System, eventually};

const APP_ID: &str = "e2e-teams-app";
const APP_PASSWORD: &str = "e2e-teams-secret";
const CONVERSATION: &str = "a:1e2e-ann-personal";

async fn said(fake: &FakeTeams, needle: &str) -> ReceivedActivity {
    eventually(&format!("{needle:?} in the conversation"), || {
        fake.received()
            .into_iter()
            .find(|a| a.conversation_id == CONVERSATION && a.text().contains(needle))
    })
    .await
}

fn teams_address(user: &Value) -> Option<&Value> {
    user["addresses"].as_array()?.iter().find(|a| {
        a["channel"] == "teams"
            && a["address"]
                .as_str()
                .is_some_and(|v| v.ends_with(CONVERSATION))
    })
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_teams_user_links_by_writing_to_the_bot_and_receives_direct_messages(pool: PgPool) {
    let mut system = System::start(pool, "e2e_teams").await;
    let fake = FakeTeams::start(APP_ID, APP_PASSWORD).await;
    let config = TeamsConfig {
        teams: TeamsSettings {
            app_id: Some(APP_ID.into()),
            app_password: Secret::new(APP_PASSWORD.into()),
            token_url: Some(fake.token_url("botframework.com")),
            openid_metadata_url: fake.openid_metadata_url(),
            service_hosts: "127.0.0.1".into(),
            ..TeamsSettings::default()
        },
    };
    let addr = system
        .run("e2e-sender-teams", |service| {
            Box::pin(async move {
                sender_runtime::run::start_chat::<TeamsSender>(
                    service,
                    sender_runtime::testing::quick_config(),
                    config,
                )
                .await
                .unwrap()
            })
        })
        .await;
    let endpoint = format!("http://{addr}/api/messages");

    // A code from the API, written to the bot in Teams: the answer says it worked.
    let (status, issued) = system
        .call(
            "POST",
            "/api/messaging/users/ann/link-codes",
            Some(json!({"channel": "teams"})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let code = issued["code"].as_str().unwrap();
    let activity = fake.message(CONVERSATION, &format!("link {code}"));
    let (status, body) = fake
        .post_activity(&endpoint, &activity, Signed::Properly)
        .await;
    assert_eq!(status, 200, "{body}");
    said(&fake, "linked").await;
    let ann = system
        .wait_for("/api/messaging/users/ann", |u| teams_address(u).is_some())
        .await;
    assert_eq!(teams_address(&ann).unwrap()["verified"], true);
    // The rest of the conversation reference is stored with it.
    let reference: Option<Value> = sqlx::query_scalar(
        "SELECT chat_reference FROM addresses WHERE channel = 'teams' AND value LIKE '%' || $1",
    )
    .bind(CONVERSATION)
    .fetch_one(&system.pool)
    .await
    .unwrap();
    let reference = reference.expect("a stored reference");
    assert_eq!(
        reference["aadObjectId"],
        "00000000-0000-0000-0000-00000000a11e"
    );
    assert_eq!(reference["tenantId"], "tenant-1");

    // A direct message arrives in the conversation.
    let (status, accepted) = system
        .call(
            "POST",
            "/api/messaging/messages",
            Some(json!({"to": {"users": ["ann"]}, "content": {"direct": {"body": "Build 1234 passed"}}})),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let delivered = said(&fake, "Build 1234 passed").await;
    assert_eq!(delivered.region, None);

    // The Bot Framework moves the conversation: Ann's next activity comes with another
    // service URL. The stored address follows, and the next message goes there.
    let moved_url = format!("{}amer/", fake.service_url());
    let mut hello = fake.message(CONVERSATION, "hello");
    hello["serviceUrl"] = moved_url.clone().into();
    let (status, body) = fake
        .post_activity(&endpoint, &hello, Signed::Properly)
        .await;
    assert_eq!(status, 200, "{body}");
    system
        .wait_for("/api/messaging/users/ann", |u| {
            teams_address(u).is_some_and(|a| a["address"] == format!("{moved_url} {CONVERSATION}"))
        })
        .await;
    let (status, accepted) = system
        .call(
            "POST",
            "/api/messaging/messages",
            Some(json!({"to": {"users": ["ann"]}, "content": {"direct": {"body": "Build 1236 passed"}}})),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let delivered = said(&fake, "Build 1236 passed").await;
    assert_eq!(delivered.region.as_deref(), Some("amer"));

    // Ann blocks the bot (403 ConversationBlockedByUser): the next message fails for good and
    // the address is unreachable until she links again.
    fake.fail_conversation(
        CONVERSATION,
        Some(Fault::error(403, "ConversationBlockedByUser")),
    );
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
            teams_address(u).is_some_and(|a| a["state"] == "unreachable")
        })
        .await;

    system.finish().await;
}
