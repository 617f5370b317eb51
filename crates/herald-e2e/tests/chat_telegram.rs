//! A person on Telegram, every part real but Telegram itself (a fake Bot API server that the
//! real teloxide client talks to): a link code from the API sent to the bot, the chat linked
//! by the router, a direct message delivered there, a support request that reaches the staff
//! on their own chat and the staff's reply back in the person's chat, and a blocked bot that
//! makes the address unreachable and the outcome permanent (R4 b, R5, R6, R53).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use herald_runtime::config::Secret;
use herald_storage::PgPool;
use herald_testkit::fake_telegram::{FakeTelegram, Fault, SentMessage};
use sender_telegram::{TelegramConfig, TelegramSender, TelegramSettings};
use serde_json::{Value, json};
use support::{System, eventually};

const TOKEN: &str = "123456:e2e-token";
const ANN_CHAT: i64 = 7001;
const STAFF_CHAT: i64 = 7002;

/// The first message the fake got in `chat` whose text contains `needle`.
async fn said(fake: &FakeTelegram, chat: i64, needle: &str) -> SentMessage {
    eventually(&format!("{needle:?} in chat {chat}"), || {
        fake.sent()
            .into_iter()
            .find(|m| m.chat_id == chat && m.text.contains(needle))
    })
    .await
}

/// Links `chat` to `person` the way a person does: a code from the API, `/start CODE` to the
/// bot, and the bot's "linked" answer.
async fn link(system: &System, fake: &FakeTelegram, person: &str, chat: i64) {
    let (status, issued) = system
        .call(
            "POST",
            &format!("/api/messaging/users/{person}/link-codes"),
            Some(json!({"channel": "telegram"})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let code = issued["code"].as_str().unwrap();
    fake.inject_message(chat, chat, &format!("/start {code}"));
    said(fake, chat, "linked").await;
}

fn address_of(user: &Value, chat: i64) -> Option<&Value> {
    user["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["channel"] == "telegram" && a["address"].as_str() == Some(&*chat.to_string()))
}

async fn direct_message(system: &System, person: &str, body: &str) -> String {
    let (status, accepted) = system
        .call(
            "POST",
            "/api/messaging/messages",
            Some(json!({"to": {"users": [person]}, "content": {"direct": {"body": body}}})),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    accepted["messageId"].as_str().unwrap().to_owned()
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_telegram_user_links_receives_asks_for_help_and_blocks_the_bot(pool: PgPool) {
    let mut system = System::start(pool, "e2e_telegram").await;
    let fake = FakeTelegram::start(TOKEN).await;
    let config = TelegramConfig {
        telegram: TelegramSettings {
            bot_token: Secret::new(TOKEN.into()),
            api_url: fake.api_url(),
            poll_timeout_secs: 1,
            ..TelegramSettings::default()
        },
    };
    system
        .run("e2e-sender-telegram", |service| {
            Box::pin(async move {
                sender_runtime::run::start_chat::<TelegramSender>(
                    service,
                    sender_runtime::testing::quick_config(),
                    config,
                )
                .await
                .unwrap()
            })
        })
        .await;

    // Linking (R5): the chat becomes Ann's verified address.
    link(&system, &fake, "ann", ANN_CHAT).await;
    let ann = system
        .wait_for("/api/messaging/users/ann", |u| {
            address_of(u, ANN_CHAT).is_some()
        })
        .await;
    let address = address_of(&ann, ANN_CHAT).unwrap();
    assert_eq!(
        (&address["verified"], &address["state"]),
        (&json!(true), &json!("active"))
    );

    // A direct message reaches the chat, and the message completes as sent.
    let id = direct_message(&system, "ann", "Your parcel <42> ships today").await;
    let delivered = said(&fake, ANN_CHAT, "Your parcel").await;
    assert_eq!(delivered.text, "Your parcel &lt;42&gt; ships today");
    let message = system
        .wait_for(&format!("/api/messaging/messages/{id}"), |m| {
            m["status"] == "completed"
        })
        .await;
    assert_eq!(message["deliveries"][0]["status"], "sent", "{message}");

    // Support (R53): the staff member Bea gets the ticket on her own Telegram chat...
    link(&system, &fake, "bea", STAFF_CHAT).await;
    for (method, path, body) in [
        (
            "POST",
            "/api/messaging/subscriptions",
            json!({"subscriptionId": "support_staff", "label": "Support staff"}),
        ),
        (
            "PUT",
            "/api/messaging/subscriptions/support_staff/templates/default/en",
            json!({"body": "New ticket {{ ticket }} from {{ userId }}: {{ text }}"}),
        ),
        (
            "POST",
            "/api/messaging/subscriptions/support_staff/subscribe",
            json!({"userId": "bea", "channel": "telegram", "address": STAFF_CHAT.to_string()}),
        ),
        (
            "PUT",
            "/api/messaging/support/settings",
            json!({"subscriptionId": "support_staff"}),
        ),
    ] {
        let (status, answer) = system.call(method, path, Some(body)).await;
        assert!((200..300).contains(&status), "{method} {path}: {answer}");
    }
    fake.inject_message(ANN_CHAT, ANN_CHAT, "/support my parcel is late");
    said(&fake, ANN_CHAT, "reached the support team").await;
    let staff = said(&fake, STAFF_CHAT, "New ticket").await;
    assert!(
        staff.text.contains("from ann: my parcel is late"),
        "{}",
        staff.text
    );

    // ...and her reply through the API comes back to Ann's chat.
    let (status, tickets) = system
        .call("GET", "/api/messaging/support/tickets", None)
        .await;
    assert_eq!(status, 200, "{tickets}");
    let ticket_id = tickets["items"][0]["ticketId"].as_str().unwrap().to_owned();
    let (status, reply) = system
        .call(
            "POST",
            &format!("/api/messaging/support/tickets/{ticket_id}/replies"),
            Some(json!({"text": "It leaves the depot tomorrow."})),
        )
        .await;
    assert_eq!(status, 201, "{reply}");
    said(&fake, ANN_CHAT, "It leaves the depot tomorrow.").await;

    // Ann blocks the bot (R6): the next message fails for good, class (b), and the address
    // is unreachable until she links again.
    fake.set_chat_fault(ANN_CHAT, Some(Fault::BotBlocked));
    let id = direct_message(&system, "ann", "Are you there?").await;
    let message = system
        .wait_for(&format!("/api/messaging/messages/{id}"), |m| {
            m["status"] == "completed"
        })
        .await;
    let delivery = &message["deliveries"][0];
    assert_eq!(delivery["status"], "failed", "{message}");
    assert_eq!(delivery["failure"]["class"], "permanent", "{message}");
    let ann = system
        .wait_for("/api/messaging/users/ann", |u| {
            address_of(u, ANN_CHAT).is_some_and(|a| a["state"] == "unreachable")
        })
        .await;
    assert!(address_of(&ann, ANN_CHAT).is_some());

    system.finish().await;
}
