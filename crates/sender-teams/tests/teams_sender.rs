//! The Teams sender and bot against the real broker and the fake Bot Framework
//! (`herald_testkit::fake_teams`): linking through the messaging endpoint, sending, every
//! error answer of the Bot Connector, the token's life, and the JWT check.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_runtime::config::Secret;
use herald_testkit::fake_teams::{FakeTeams, Fault, Signed};
use messaging_core::events::{Answer, AttemptResult, ChatAnswer, ChatSeenEvent, DeliveryEvent};
use messaging_core::failure::FailureClass;
use messaging_core::values::TeamsChat;
use messaging_core::{Address, Channel, EnvelopeVersion};
use sender_runtime::testing::{SenderHarness, quick_config};
use sender_teams::{TeamsConfig, TeamsSender, TeamsSettings};

const APP_ID: &str = "8e1c2f9a-0000-4000-8000-00000000b07";
const APP_PASSWORD: &str = "fake-client-secret";
const WAIT: Duration = Duration::from_secs(20);

struct Bot {
    fake: FakeTeams,
    h: SenderHarness,
}

fn config(fake: &FakeTeams) -> TeamsConfig {
    TeamsConfig {
        teams: TeamsSettings {
            app_id: Some(APP_ID.into()),
            app_password: Secret::new(APP_PASSWORD.into()),
            token_url: Some(fake.token_url("botframework.com")),
            openid_metadata_url: fake.openid_metadata_url(),
            service_hosts: "127.0.0.1".into(),
            request_timeout_ms: 2_000,
            ..TeamsSettings::default()
        },
    }
}

impl Bot {
    async fn start(test: &str) -> Bot {
        let fake = FakeTeams::start(APP_ID, APP_PASSWORD).await;
        let h = SenderHarness::start_chat::<TeamsSender>(test, quick_config(), config(&fake)).await;
        Bot { fake, h }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/api/messages", self.h.http_addr())
    }

    fn chat(&self, conversation_id: &str) -> Address {
        Address::Teams(TeamsChat::new(&self.fake.service_url(), conversation_id).unwrap())
    }

    /// Waits until the fake has received `n` activities.
    async fn received(&self, n: usize) -> Vec<herald_testkit::fake_teams::ReceivedActivity> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let received = self.fake.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} activities",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn until_final(h: &SenderHarness) -> Vec<DeliveryEvent> {
    h.events_until(WAIT, |e| e.last().is_some_and(|e| e.result.is_final()))
        .await
}

fn statuses(events: &[DeliveryEvent]) -> Vec<(u32, &'static str)> {
    events
        .iter()
        .map(|e| (e.attempt, e.result.status()))
        .collect()
}

fn failure(event: &DeliveryEvent) -> (String, FailureClass) {
    match &event.result {
        AttemptResult::Failed { failure } => (failure.code.clone(), failure.class),
        other => panic!("a failure expected, got {other:?}"),
    }
}

// ----- the bot's endpoint -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_links_their_chat_and_then_gets_notifications_there() {
    let bot = Bot::start("teams_link").await;
    let activity = bot
        .fake
        .message("a:1personal-chat", "<at>Herald</at> link K7QX2MPA");
    let (status, body) = bot
        .fake
        .post_activity(&bot.endpoint(), &activity, Signed::Properly)
        .await;
    assert_eq!(status, 200, "{body}");
    let link = bot
        .h
        .next_inbound(WAIT)
        .await
        .expect("a contact-link event");
    assert_eq!(link["linkCode"], "K7QX2MPA");
    let chat = bot.chat("a:1personal-chat");
    assert_eq!(link["address"], serde_json::to_value(&chat).unwrap());
    assert_eq!(link["displayName"], "Ann Example");
    // The rest of the conversation reference, stored with the address.
    assert_eq!(
        link["reference"],
        serde_json::json!({
            "tenantId": "tenant-1",
            "botId": format!("28:{APP_ID}"),
            "userId": "29:1person",
            "aadObjectId": "00000000-0000-0000-0000-00000000a11e",
            "conversationType": "personal",
        })
    );

    // The address the router stores is where the notification goes.
    let mut job = bot
        .h
        .job(chat, "Your order <7> has shipped & is on its way.");
    job.content.subject = Some("Order 7".into());
    bot.h.publish(&job).await;
    let events = until_final(&bot.h).await;
    let received = bot.received(1).await;
    assert_eq!(received[0].conversation_id, "a:1personal-chat");
    assert_eq!(
        received[0].text(),
        "<b>Order 7</b><br>Your order &lt;7&gt; has shipped &amp; is on its way."
    );
    assert_eq!(received[0].activity["textFormat"], "xml");
    match &events.last().unwrap().result {
        AttemptResult::Delivered {
            provider_message_id,
            ..
        } => {
            assert_eq!(
                provider_message_id.as_deref(),
                Some(received[0].id.as_str())
            );
        }
        other => panic!("delivered expected: {other:?}"),
    }
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_opens_a_ticket_and_anything_else_gets_the_help_text() {
    let bot = Bot::start("teams_support").await;
    let support = bot.fake.message("a:1c", "support my parcel is lost");
    assert_eq!(
        bot.fake
            .post_activity(&bot.endpoint(), &support, Signed::Properly)
            .await
            .0,
        200
    );
    let event = bot.h.next_inbound(WAIT).await.expect("a support request");
    assert_eq!(event["supportText"], "my parcel is lost");

    let hello = bot.fake.message("a:1c", "hello?");
    assert_eq!(
        bot.fake
            .post_activity(&bot.endpoint(), &hello, Signed::Properly)
            .await
            .0,
        200
    );
    let received = bot.received(1).await;
    assert!(
        received[0].text().contains("link"),
        "the help text: {}",
        received[0].text()
    );
    assert_eq!(received[0].conversation_id, "a:1c");

    // Added to a chat: the bot introduces itself there.
    let installed = bot.fake.installation("a:1new");
    assert_eq!(
        bot.fake
            .post_activity(&bot.endpoint(), &installed, Signed::Properly)
            .await
            .0,
        200
    );
    let received = bot.received(2).await;
    assert_eq!(received[1].conversation_id, "a:1new");
    // Nothing for the router to decide: the router only hears where the two chats are.
    let mut seen = Vec::new();
    while let Some(event) = bot.h.next_inbound(Duration::from_millis(300)).await {
        assert!(event.get("seenAt").is_some(), "only chats seen: {event}");
        seen.push(event["chat"]["value"].as_str().unwrap().to_owned());
    }
    let at = |id| bot.chat(id).value();
    assert_eq!(seen, [at("a:1c"), at("a:1new")]);
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_seen_at_a_new_service_url_is_reported_once() {
    let bot = Bot::start("teams_seen").await;
    let post = |activity: serde_json::Value| {
        let bot = &bot;
        async move {
            let (status, body) = bot
                .fake
                .post_activity(&bot.endpoint(), &activity, Signed::Properly)
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    let seen = || async {
        let event = bot.h.next_inbound(Duration::from_millis(500)).await?;
        Some(serde_json::from_value::<ChatSeenEvent>(event).unwrap())
    };
    post(bot.fake.message("a:1moving", "hello")).await;
    let first = seen().await.expect("the chat, new to this replica");
    assert_eq!(first.chat, bot.chat("a:1moving"));
    assert_eq!(first.channel, Channel::Teams);
    post(bot.fake.message("a:1moving", "hello again")).await;
    assert_eq!(seen().await, None, "the same place is not news");

    // The Bot Framework moved the conversation: the next activity comes with a new URL.
    let moved_url = format!("{}amer/", bot.fake.service_url());
    let mut moved = bot.fake.message("a:1moving", "still there?");
    moved["serviceUrl"] = moved_url.clone().into();
    post(moved).await;
    let event = seen().await.expect("the new place");
    assert_eq!(
        event.chat,
        Address::Teams(TeamsChat::new(&moved_url, "a:1moving").unwrap())
    );

    // A URL Herald would never send its token to is not reported.
    let mut elsewhere = bot.fake.message("a:1moving", "hi");
    elsewhere["serviceUrl"] = "https://smba.evil.example/".into();
    post(elsewhere).await;
    assert_eq!(seen().await, None);
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_not_signed_by_the_bot_framework_are_refused() {
    let bot = Bot::start("teams_jwt").await;
    for signed in [
        Signed::Unsigned,
        Signed::WrongIssuer,
        Signed::WrongAudience,
        Signed::Expired,
        Signed::UnknownKey,
        Signed::Forged,
        Signed::OtherServiceUrl,
    ] {
        let activity = bot.fake.message("a:1x", "link K7QX2MPA");
        let (status, body) = bot
            .fake
            .post_activity(&bot.endpoint(), &activity, signed)
            .await;
        assert_eq!(status, 401, "{signed:?}: {body}");
    }
    assert!(
        bot.h
            .next_inbound(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert!(bot.fake.received().is_empty(), "nothing answered");
    // The keys were fetched once, and once more for the unknown key id at most.
    assert!(bot.fake.key_fetches() <= 2, "{}", bot.fake.key_fetches());
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routers_answer_goes_to_the_conversation() {
    let bot = Bot::start("teams_answer").await;
    let chat = bot.chat("a:1answered");
    let answer = ChatAnswer {
        version: EnvelopeVersion,
        answer_id: uuid::Uuid::now_v7(),
        channel: Channel::Teams,
        chat,
        answer: Answer::Linked,
        created_at: chrono::Utc::now(),
    };
    bot.h.publish_answer(&answer).await;
    let received = bot.received(1).await;
    assert_eq!(received[0].conversation_id, "a:1answered");
    assert_eq!(
        received[0].text(),
        sender_teams::text::escape(&answer.text())
    );
    bot.h.stop().await;
}

// ----- sending -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_fetched_once_and_renewed_when_refused() {
    let bot = Bot::start("teams_token").await;
    for i in 0..3 {
        bot.h
            .publish(&bot.h.job(bot.chat("a:1t"), &format!("n{i}")))
            .await;
        until_final(&bot.h).await;
    }
    assert_eq!(bot.fake.token_requests(), 1, "cached");
    // The Bot Connector stops taking the token: one new token, the same job delivered.
    bot.fake.fail_next([Fault::RevokeTokens]);
    bot.h.publish(&bot.h.job(bot.chat("a:1t"), "after")).await;
    let events = until_final(&bot.h).await;
    assert_eq!(statuses(&events), [(1, "delivered")]);
    assert_eq!(bot.fake.token_requests(), 2);
    assert_eq!(bot.received(4).await.len(), 4);
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_the_bot_cannot_reach_fails_permanently() {
    let bot = Bot::start("teams_unreachable").await;
    let cases = [
        (
            Fault::error(403, "ConversationBlockedByUser"),
            "conversation_unreachable",
        ),
        (
            Fault::error(403, "BotNotInConversationRoster"),
            "conversation_unreachable",
        ),
        (
            Fault::error(403, "BotDisabledByAdmin"),
            "conversation_unreachable",
        ),
        (
            Fault::error(403, "ForbiddenOperationException"),
            "conversation_unreachable",
        ),
        (
            Fault::error(404, "ConversationNotFound"),
            "conversation_not_found",
        ),
        (Fault::error(413, "MessageSizeTooBig"), "too_large"),
    ];
    for (fault, code) in cases {
        bot.fake.fail_next([fault.clone()]);
        bot.h.publish(&bot.h.job(bot.chat("a:1gone"), "hi")).await;
        let events = until_final(&bot.h).await;
        assert_eq!(events.len(), 1, "not retried: {fault:?}");
        assert_eq!(
            failure(&events[0]),
            (code.to_owned(), FailureClass::Permanent),
            "{fault:?}"
        );
    }
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_answers_are_retried_and_then_delivered() {
    let bot = Bot::start("teams_retried").await;
    bot.fake.fail_next([
        Fault::error(412, "PreconditionFailed"),
        Fault::error(502, "BadGateway"),
        Fault::error(503, "ServiceUnavailable"),
        Fault::error(504, "GatewayTimeout"),
        Fault::Drop,
    ]);
    bot.h
        .publish(&bot.h.job(bot.chat("a:1r"), "eventually"))
        .await;
    let events = until_final(&bot.h).await;
    let last = statuses(&events).last().copied().unwrap();
    assert_eq!(last, (6, "delivered"), "{:?}", statuses(&events));
    assert!(
        events[..5]
            .iter()
            .all(|e| e.result.status() == "retry_scheduled")
    );
    assert_eq!(bot.fake.received().len(), 1, "sent once");

    // A 429 waits for its Retry-After.
    bot.fake.fail_next([Fault::Throttled {
        retry_after_secs: 1,
    }]);
    let started = std::time::Instant::now();
    bot.h
        .publish(&bot.h.job(bot.chat("a:1r"), "throttled"))
        .await;
    let events = until_final(&bot.h).await;
    assert_eq!(
        statuses(&events),
        [(1, "retry_scheduled"), (2, "delivered")]
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_url_not_on_the_list_never_gets_the_token() {
    let bot = Bot::start("teams_untrusted").await;
    let elsewhere = Address::Teams(TeamsChat::new("http://127.0.0.2:9/", "a:1x").unwrap());
    bot.h.publish(&bot.h.job(elsewhere, "hi")).await;
    let events = until_final(&bot.h).await;
    assert_eq!(
        failure(&events[0]),
        ("untrusted_service_url".into(), FailureClass::Permanent)
    );
    assert_eq!(bot.fake.token_requests(), 0, "no token was even fetched");
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_app_is_unhealthy_and_a_long_text_goes_in_parts() {
    let fake = FakeTeams::start(APP_ID, "another-secret").await;
    let h =
        SenderHarness::start_chat::<TeamsSender>("teams_refused", quick_config(), config(&fake))
            .await;
    let chat = Address::Teams(TeamsChat::new(&fake.service_url(), "a:1p").unwrap());
    h.publish(&h.job(chat.clone(), "hi")).await;
    let event = h.next_event(WAIT).await.unwrap();
    match &event.result {
        AttemptResult::RetryScheduled { failure, .. } => {
            assert_eq!(failure.code, "provider_rejected_account");
            assert_eq!(failure.class, FailureClass::Unhealthy);
            assert!(
                !failure.message.contains(APP_PASSWORD),
                "no secret in the event"
            );
        }
        other => panic!("a retry expected: {other:?}"),
    }
    h.stop().await;

    let bot = Bot::start("teams_parts").await;
    let paragraph = "word ".repeat(700); // 3,500 characters
    let text = [paragraph.trim_end(); 3].join("\n");
    bot.h.publish(&bot.h.job(bot.chat("a:1p"), &text)).await;
    until_final(&bot.h).await;
    let received = bot.received(3).await;
    assert_eq!(received.len(), 3, "one message per paragraph");
    assert!(received.iter().all(|r| r.text() == paragraph.trim_end()));
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_it_says_not_configured() {
    let h = SenderHarness::start_chat::<TeamsSender>(
        "teams_unconfigured",
        quick_config(),
        TeamsConfig::default(),
    )
    .await;
    let (status, body) = h.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("HERALD_TEAMS__APP_ID"), "{body}");
    h.stop().await;
}
