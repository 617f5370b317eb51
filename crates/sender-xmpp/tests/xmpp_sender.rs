//! The XMPP sender and bot against the real broker and the tests' Prosody
//! (`scripts/prosody.sh`): a notification to a person's JID and into a room, the refusals
//! that make an address unreachable, what people write to the bot, readiness, and an
//! unconfigured sender.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::str::FromStr;
use std::time::Duration;

use herald_testkit::prosody::Prosody;
use messaging_core::events::{AttemptResult, DeliveryEvent};
use messaging_core::failure::FailureClass;
use sender_runtime::testing::{SenderHarness, quick_config};
use sender_xmpp::{XmppConfig, XmppSender};
use support::{Person, WAIT, bot_config, final_event, room, start, xmpp};
use tokio_xmpp::jid::BareJid;
use tokio_xmpp::parsers::message::MessageType;

fn failure_code(event: &DeliveryEvent) -> (&str, FailureClass) {
    match &event.result {
        AttemptResult::Failed { failure } => (failure.code.as_str(), failure.class),
        other => panic!("a failure expected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_reaches_the_persons_client() {
    let _turn = support::ONE_AT_A_TIME.lock().await;
    let prosody = Prosody::local();
    let (config, bot) = bot_config(&prosody).await;
    let mut ann = Person::online(&prosody, "ann").await;
    let h = start("xmpp_to_jid", config).await;

    let mut job = h.job(xmpp(&ann.account.jid), "Your order has shipped.");
    job.content.subject = Some("Order 7".into());
    h.publish(&job).await;

    let (message, body) = ann.next_body(MessageType::Chat).await;
    assert_eq!(body, "Order 7\n\nYour order has shipped.");
    // The delivery id as XEP-0359 origin-id: the same on a redelivered copy.
    let origin = message
        .payloads
        .iter()
        .find_map(|p| tokio_xmpp::parsers::stanza_id::OriginId::try_from(p.clone()).ok())
        .expect("an origin-id");
    assert_eq!(origin.id, job.delivery_id.to_string());
    assert_eq!(
        message.from.unwrap().to_bare().to_string(),
        bot.jid,
        "from the bot's account"
    );
    let event = final_event(&h).await;
    assert!(
        matches!(event.result, AttemptResult::Delivered { .. }),
        "{event:?}"
    );
    assert_eq!(event.delivery_id, job.delivery_id);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jid_nobody_has_ends_as_unreachable() {
    let _turn = support::ONE_AT_A_TIME.lock().await;
    let prosody = Prosody::local();
    let (config, _bot) = bot_config(&prosody).await;
    let h = start("xmpp_no_such_jid", config).await;

    let job = h.job(xmpp("nobody-ever-registered@localhost"), "Hello?");
    h.publish(&job).await;
    let event = final_event(&h).await;
    let (code, class) = failure_code(&event);
    assert_eq!(code, "unknown_recipient", "{event:?}");
    assert_eq!(class, FailureClass::Permanent);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_goes_into_a_room_the_bot_joins_first() {
    let _turn = support::ONE_AT_A_TIME.lock().await;
    let prosody = Prosody::local();
    let (config, _bot) = bot_config(&prosody).await;
    let mut ann = Person::online(&prosody, "ann").await;
    let team = BareJid::from_str(&format!(
        "team-{}@{}",
        uuid::Uuid::new_v4().simple(),
        prosody.muc_domain
    ))
    .unwrap();
    ann.create_room(&team, "ann").await;
    let h = start("xmpp_to_room", config).await;

    for text in ["Deploy started.", "Deploy finished."] {
        h.publish(&h.job(room(&team), text)).await;
        let (message, body) = ann.next_body(MessageType::Groupchat).await;
        assert_eq!(body, text);
        assert_eq!(
            message.from.unwrap().to_string(),
            format!("{team}/Herald"),
            "the bot speaks under its nickname"
        );
        let event = final_event(&h).await;
        assert!(
            matches!(event.result, AttemptResult::Delivered { .. }),
            "{event:?}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_does_not_exist_is_not_created_by_a_notification() {
    let _turn = support::ONE_AT_A_TIME.lock().await;
    let prosody = Prosody::local();
    let (config, _bot) = bot_config(&prosody).await;
    let h = start("xmpp_no_such_room", config).await;
    let ghost = BareJid::from_str(&format!(
        "ghost-{}@{}",
        uuid::Uuid::new_v4().simple(),
        prosody.muc_domain
    ))
    .unwrap();

    h.publish(&h.job(room(&ghost), "Anyone?")).await;
    let event = final_event(&h).await;
    let (code, class) = failure_code(&event);
    assert_eq!(code, "unknown_recipient", "{event:?}");
    assert_eq!(class, FailureClass::Permanent);

    // The room the join created is gone again: joining it now creates it anew (status 201).
    let mut ann = Person::online(&prosody, "ann").await;
    ann.create_room(&ghost, "ann").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_links_their_jid_by_writing_the_code_to_the_bot() {
    let _turn = support::ONE_AT_A_TIME.lock().await;
    let prosody = Prosody::local();
    let (config, bot) = bot_config(&prosody).await;
    let mut ann = Person::online(&prosody, "ann").await;
    let h = start("xmpp_link", config).await;

    ann.say(&bot.jid, "/start K7QX2MPA").await;
    let link = h.next_inbound(WAIT).await.expect("a contact-link event");
    assert_eq!(link["linkCode"], "K7QX2MPA");
    assert_eq!(
        link["address"],
        serde_json::to_value(xmpp(&ann.account.jid)).unwrap()
    );

    ann.say(&bot.jid, "/support my parcel is lost").await;
    let support = h.next_inbound(WAIT).await.expect("a support request");
    assert_eq!(support["supportText"], "my parcel is lost");

    ann.say(&bot.jid, "hello?").await;
    let (_, help) = ann.next_body(MessageType::Chat).await;
    assert!(help.contains("/start"), "the bot explains itself: {help}");
    assert!(h.next_inbound(Duration::from_millis(300)).await.is_none());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_keeps_it_not_ready_and_says_why() {
    let _turn = support::ONE_AT_A_TIME.lock().await;
    let prosody = Prosody::local();
    let (mut config, _bot) = bot_config(&prosody).await;
    config.xmpp.password = herald_runtime::config::Secret::new("wrong".into());
    let h = SenderHarness::start_chat::<XmppSender>("xmpp_bad_pw", quick_config(), config).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = h.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("bot:xmpp"), "{body}");
    assert!(!body.contains("wrong"), "the password never shows: {body}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_account_it_says_not_configured() {
    let _turn = support::ONE_AT_A_TIME.lock().await;
    let h = SenderHarness::start_chat::<XmppSender>(
        "xmpp_unconfigured",
        quick_config(),
        XmppConfig::default(),
    )
    .await;
    let (status, body) = h.readyz().await;
    assert_eq!(status, 503);
    assert!(
        body.contains("not configured") && body.contains("HERALD_XMPP__JID"),
        "{body}"
    );
    h.stop().await;
}
