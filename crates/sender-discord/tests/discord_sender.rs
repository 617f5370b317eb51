//! The Discord sender and bot against the real broker, the fake Discord REST API, and a
//! client that posts signed interactions as Discord does.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_runtime::config::Secret;
use herald_testkit::discord_interactions::{InteractionClient, Place, Signing};
use herald_testkit::fake_discord::{Endpoint, FakeDiscord, Fault};
use messaging_core::events::{Answer, AttemptResult, ChatAnswer, DeliveryEvent};
use messaging_core::failure::{Failure, FailureClass};
use messaging_core::values::DiscordId;
use messaging_core::{Address, Channel, EnvelopeVersion};
use sender_discord::{DiscordConfig, DiscordSender, DiscordSettings};
use sender_runtime::testing::{SenderHarness, quick_config};
use sender_runtime::{Built, ChannelSender};
use serde_json::json;

const TOKEN: &str = "MTA5ODc2NTQzMjEwMDAwMDAwMQ.fake.token";
const APP: u64 = 1_098_765_432_100_000_001;
const WAIT: Duration = Duration::from_secs(20);

struct Bot {
    fake: FakeDiscord,
    discord: InteractionClient,
    h: SenderHarness,
}

impl Bot {
    async fn start(test: &str) -> Bot {
        let fake = FakeDiscord::start(TOKEN, APP).await;
        Self::start_with(test, fake).await
    }

    async fn start_with(test: &str, fake: FakeDiscord) -> Bot {
        let discord = InteractionClient::new(APP);
        fake.set_verify_key(&discord.public_key_hex());
        let config = config(&fake, &discord);
        let h = SenderHarness::start_chat::<DiscordSender>(test, quick_config(), config).await;
        Bot { fake, discord, h }
    }

    /// Another replica of the sender, on the same bot and Discord: its caches start empty.
    async fn another_replica(&self) -> DiscordSender {
        match DiscordSender::build(config(&self.fake, &self.discord)).await {
            Ok(Built::Ready(sender)) => sender,
            _ => panic!("a second sender"),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/discord/interactions", self.h.http_addr())
    }

    /// Requests to open a DM channel.
    fn dm_opens(&self) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/users/@me/channels")
            .count()
    }
}

fn config(fake: &FakeDiscord, discord: &InteractionClient) -> DiscordConfig {
    DiscordConfig {
        discord: DiscordSettings {
            bot_token: Secret::new(TOKEN.into()),
            application_id: Some(APP.to_string()),
            public_key: Some(discord.public_key_hex()),
            api_proxy: Some(fake.proxy_url()),
            request_timeout_ms: 2_000,
            ..DiscordSettings::default()
        },
    }
}

fn user(id: u64) -> Address {
    Address::Discord(DiscordId(id))
}

fn failure(event: &DeliveryEvent) -> &Failure {
    match &event.result {
        AttemptResult::Failed { failure } | AttemptResult::RetryScheduled { failure, .. } => {
            failure
        }
        AttemptResult::Delivered { .. } => panic!("delivered: {event:?}"),
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

// ----- sending -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_delivered_as_dms_opened_once_per_user() {
    let bot = Bot::start("discord_delivered").await;
    let mut job = bot.h.job(user(42), "Your parcel *left* the depot");
    job.content.subject = Some("Order 17".into());
    bot.h.publish(&job).await;
    let event = bot.h.next_event(WAIT).await.expect("an event");
    assert_eq!(event.delivery_id, job.delivery_id);
    let AttemptResult::Delivered {
        provider_message_id,
    } = &event.result
    else {
        panic!("{event:?}")
    };
    let sent = bot.fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].recipient_id, Some(42));
    assert_eq!(
        provider_message_id.as_deref(),
        Some(sent[0].message_id.to_string().as_str())
    );
    assert_eq!(
        sent[0].content,
        "**Order 17**\nYour parcel \\*left\\* the depot"
    );
    assert_eq!(
        sent[0].body["allowed_mentions"]["parse"],
        json!([]),
        "texts ping nobody"
    );

    bot.h.publish(&bot.h.job(user(42), "second")).await;
    let event = bot.h.next_event(WAIT).await.expect("an event");
    assert_eq!(event.result.status(), "delivered");
    assert_eq!(bot.fake.sent().len(), 2);
    assert_eq!(bot.dm_opens(), 1, "the DM channel is cached");
    bot.h.stop().await;
}

/// Issue #18: a job sent, then redelivered (the sender died before its ack) to a replica
/// that never saw it. Discord's enforced nonce, derived from the delivery id, makes the
/// second send answer with the first message instead of a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_redelivered_to_another_replica_reaches_the_person_once() {
    let bot = Bot::start("discord_nonce").await;
    let text = format!("{}\n{}", "a".repeat(1500), "b".repeat(1500));
    let job = bot.h.job(user(42), &text);
    bot.h.publish(&job).await;
    let event = bot.h.next_event(WAIT).await.expect("an event");
    let AttemptResult::Delivered {
        provider_message_id: first,
    } = &event.result
    else {
        panic!("{event:?}")
    };
    let sent = bot.fake.sent();
    assert_eq!(sent.len(), 2, "two parts");
    let nonces: Vec<&str> = sent
        .iter()
        .map(|m| m.body["nonce"].as_str().unwrap())
        .collect();
    assert!(nonces.iter().all(|n| n.len() <= 25) && nonces[0] != nonces[1]);
    assert!(sent.iter().all(|m| m.body["enforce_nonce"] == json!(true)));

    let other = bot.another_replica().await;
    let receipt = other
        .send(&job)
        .await
        .expect("answered with the first message");
    assert_eq!(receipt.provider_message_id.as_ref(), first.as_ref());
    assert_eq!(bot.fake.sent().len(), 2, "nothing new reached the person");
    // Another job's text is a new message, of course.
    let second = bot.h.job(user(42), "another");
    other.send(&second).await.expect("sent");
    assert_eq!(bot.fake.sent().len(), 3);
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_text_arrives_as_several_messages_in_order() {
    let bot = Bot::start("discord_long").await;
    let words: Vec<String> = (0..500).map(|i| format!("w{i:03}")).collect();
    let text = words.join(" "); // 2,499 characters
    bot.h.publish(&bot.h.job(user(42), &text)).await;
    let event = bot.h.next_event(WAIT).await.expect("an event");
    assert_eq!(event.result.status(), "delivered");
    let sent = bot.fake.sent();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|m| m.content.chars().count() <= 2000));
    let AttemptResult::Delivered {
        provider_message_id,
    } = &event.result
    else {
        panic!()
    };
    assert_eq!(
        provider_message_id.as_deref(),
        Some(sent[0].message_id.to_string().as_str()),
        "the first part's id"
    );
    assert_eq!(format!("{} {}", sent[0].content, sent[1].content), text);
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_does_not_send_parts_already_delivered() {
    let bot = Bot::start("discord_long_retry").await;
    let text = format!("{}\n{}", "a".repeat(1500), "b".repeat(1500));
    // The first part goes through; the second gets a 502.
    bot.fake
        .fail_next([Fault::Slow(Duration::ZERO), Fault::Status(502)]);
    bot.h.publish(&bot.h.job(user(42), &text)).await;
    let events = until_final(&bot.h).await;
    assert_eq!(
        statuses(&events),
        [(1, "retry_scheduled"), (2, "delivered")]
    );
    let contents: Vec<String> = bot.fake.sent().into_iter().map(|m| m.content).collect();
    assert_eq!(contents, ["a".repeat(1500), "b".repeat(1500)]);
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_refuses_dms_fails_permanently() {
    let bot = Bot::start("discord_50007").await;
    bot.fake.set_user_fault(43, Some(Fault::CannotMessageUser));
    bot.h.publish(&bot.h.job(user(43), "hi")).await;
    let event = bot.h.next_event(WAIT).await.expect("an event");
    assert_eq!((event.attempt, event.result.status()), (1, "failed"));
    let failure = failure(&event);
    assert_eq!(failure.class, FailureClass::Permanent);
    assert_eq!(failure.code, "cannot_message_user");
    assert!(failure.message.contains("50007"), "{failure:?}");
    assert!(
        bot.h.next_event(Duration::from_millis(500)).await.is_none(),
        "not retried"
    );
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_fails_permanently() {
    let bot = Bot::start("discord_10013").await;
    bot.fake.set_user_fault(44, Some(Fault::UnknownUser));
    bot.h.publish(&bot.h.job(user(44), "hi")).await;
    let event = bot.h.next_event(WAIT).await.expect("an event");
    assert_eq!((event.attempt, event.result.status()), (1, "failed"));
    assert_eq!(failure(&event).class, FailureClass::Permanent);
    assert_eq!(failure(&event).code, "unknown_user");
    assert!(bot.fake.sent().is_empty());
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_cached_channel_is_opened_again_once_then_fails_permanently() {
    let bot = Bot::start("discord_10003").await;
    bot.h.publish(&bot.h.job(user(45), "first")).await;
    assert_eq!(
        bot.h.next_event(WAIT).await.unwrap().result.status(),
        "delivered"
    );
    bot.fake.set_user_fault(45, Some(Fault::UnknownChannel));
    bot.h.publish(&bot.h.job(user(45), "second")).await;
    let event = bot.h.next_event(WAIT).await.expect("an event");
    assert_eq!((event.attempt, event.result.status()), (1, "failed"));
    assert_eq!(failure(&event).code, "unknown_channel");
    assert_eq!(
        bot.dm_opens(),
        2,
        "the cached channel was forgotten and opened again"
    );
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_waited_for_and_then_delivered() {
    let bot = Bot::start("discord_429").await;
    bot.fake.fail_next([Fault::TooManyRequests {
        retry_after: 2.5,
        global: false,
    }]);
    bot.h.publish(&bot.h.job(user(46), "hi")).await;
    let events = until_final(&bot.h).await;
    assert_eq!(
        statuses(&events),
        [(1, "retry_scheduled"), (2, "delivered")]
    );
    let AttemptResult::RetryScheduled { failure, retry_at } = &events[0].result else {
        panic!()
    };
    assert_eq!(failure.code, "rate_limited");
    let waited = (*retry_at - events[0].occurred_at).to_std().unwrap();
    // Through the proxy serenity does not keep the 429's body: the 1 s default applies.
    assert!(waited >= Duration::from_millis(900), "{waited:?}");

    let requests = bot.fake.requests();
    let sends: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/messages"))
        .collect();
    assert_eq!(sends.len(), 2, "the 429, then the retry");
    assert_eq!(sends[0].status, Some(429));
    let quiet = sends[1].at.duration_since(sends[0].at);
    assert!(
        quiet >= Duration::from_millis(900),
        "nothing sent during the wait: {quiet:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.at > sends[0].at && r.at < sends[1].at),
        "no other request during the wait either"
    );
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_is_retried_and_then_delivered() {
    let bot = Bot::start("discord_5xx").await;
    bot.fake.fail_next([Fault::Status(502), Fault::Drop]);
    bot.h.publish(&bot.h.job(user(47), "hi")).await;
    let events = until_final(&bot.h).await;
    assert_eq!(
        statuses(&events),
        [
            (1, "retry_scheduled"),
            (2, "retry_scheduled"),
            (3, "delivered")
        ]
    );
    assert_eq!(failure(&events[0]).code, "provider_error");
    assert_eq!(failure(&events[0]).class, FailureClass::Temporary);
    assert_eq!(failure(&events[1]).code, "transport");
    assert_eq!(bot.fake.sent().len(), 1);
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfigured_sender_says_so_and_leaves_its_queue_alone() {
    let h = SenderHarness::start_chat::<DiscordSender>(
        "discord_unconfigured",
        quick_config(),
        DiscordConfig::default(),
    )
    .await;
    let (status, body) = h.readyz().await;
    assert_eq!(status, 503);
    assert!(
        body.contains("not configured") && body.contains("HERALD_DISCORD__BOT_TOKEN"),
        "{body}"
    );
    h.publish(&h.job(user(48), "waits")).await;
    let queued = h.wait_queued(WAIT, |queued| queued == 1).await;
    assert_eq!(queued, 1, "the job waits for a configured sender");
    let queue = h.names.send_queue(Channel::Discord);
    assert_eq!(h.inspector.consumer_count(&queue).await, 0);
    h.stop().await;
}

// ----- the bot -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slash_commands_are_registered_at_start_and_retried_on_failure() {
    let fake = FakeDiscord::start(TOKEN, APP).await;
    fake.fail_next_on(Endpoint::OverwriteCommands, [Fault::Status(500)]);
    let bot = Bot::start_with("discord_commands", fake).await;
    let ready = bot
        .h
        .wait_readiness(WAIT, |status, body| {
            status == 200 && body.contains("slash commands registered")
        })
        .await;
    assert!(ready, "{:?}", bot.h.readyz().await);
    let overwrites = bot.fake.command_overwrites();
    assert_eq!(overwrites.len(), 1);
    assert_eq!(overwrites[0].guild_id, None);
    let puts = bot
        .fake
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path == format!("/applications/{APP}/commands"))
        .count();
    assert_eq!(puts, 2, "the 500, then the overwrite");
    let commands = &overwrites[0].commands;
    assert_eq!(commands[0]["name"], "link");
    assert_eq!(commands[0]["options"][0]["name"], "code");
    assert_eq!(commands[0]["options"][0]["type"], 3);
    assert_eq!(commands[0]["options"][0]["required"], true);
    assert_eq!(commands[1]["name"], "support");
    assert_eq!(commands[1]["options"][0]["name"], "text");
    assert_eq!(commands[1]["options"][0]["required"], true);
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_is_answered_with_a_pong() {
    let bot = Bot::start("discord_ping").await;
    let reply = bot
        .discord
        .post(&bot.url(), &bot.discord.ping())
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body, json!({"type": 1}));
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactions_without_a_valid_signature_are_refused() {
    let bot = Bot::start("discord_signatures").await;
    let link = bot
        .discord
        .link("ABCD2345", 50, Place::Dm { channel_id: 77 });
    for signing in [Signing::WrongKey, Signing::TamperedBody, Signing::Missing] {
        for interaction in [&bot.discord.ping(), &link] {
            let reply = bot
                .discord
                .post_signed(&bot.url(), interaction, signing)
                .await
                .unwrap();
            assert_eq!(reply.status, 401, "{signing:?}: {}", reply.text);
        }
    }
    assert!(
        bot.h
            .next_inbound(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing reached the router"
    );
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_from_a_dm_or_a_guild_becomes_a_contact_link_event() {
    let bot = Bot::start("discord_link").await;
    let places = [
        (51, Place::Dm { channel_id: 77 }),
        (
            52,
            Place::Guild {
                guild_id: 900,
                channel_id: 901,
            },
        ),
    ];
    for (user_id, place) in places {
        let link = bot.discord.link("ABCD2345", user_id, place);
        let reply = bot.discord.post(&bot.url(), &link).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.body["type"], 4);
        assert_eq!(reply.body["data"]["flags"], 64, "only the user sees it");
        assert_eq!(
            reply.body["data"]["content"],
            "Got it: I'll answer you in a direct message."
        );
        let event = bot
            .h
            .next_inbound(WAIT)
            .await
            .expect("a contact-link event");
        assert_eq!(event["linkCode"], "ABCD2345");
        assert_eq!(event["channel"], "discord");
        assert_eq!(
            event["address"],
            json!({"kind": "discord", "value": user_id.to_string()})
        );
        assert_eq!(event["displayName"], format!("user{user_id}"));
    }
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_becomes_a_support_request_event() {
    let bot = Bot::start("discord_support").await;
    let support = bot
        .discord
        .support("My parcel is late", 53, Place::Dm { channel_id: 78 });
    let reply = bot.discord.post(&bot.url(), &support).await.unwrap();
    assert_eq!(reply.body["type"], 4);
    assert_eq!(reply.body["data"]["flags"], 64);
    let event = bot.h.next_inbound(WAIT).await.expect("a support request");
    assert_eq!(event["supportText"], "My parcel is late");
    assert_eq!(event["chat"], json!({"kind": "discord", "value": "53"}));
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_the_bot_does_not_know_get_the_help_text() {
    let bot = Bot::start("discord_help").await;
    let dance = bot
        .discord
        .command("dance", &[], 54, Place::Dm { channel_id: 79 });
    let reply = bot.discord.post(&bot.url(), &dance).await.unwrap();
    assert_eq!(reply.body["type"], 4);
    assert_eq!(reply.body["data"]["flags"], 64);
    assert_eq!(
        reply.body["data"]["content"],
        sender_runtime::chat::help_text()
    );
    // A malformed code is answered at once too, without the router.
    let typo = bot.discord.link("ab", 54, Place::Dm { channel_id: 79 });
    let reply = bot.discord.post(&bot.url(), &typo).await.unwrap();
    assert!(
        reply.body["data"]["content"]
            .as_str()
            .unwrap()
            .contains("does not look like a link code"),
        "{}",
        reply.text
    );
    assert!(
        bot.h
            .next_inbound(Duration::from_millis(300))
            .await
            .is_none()
    );
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routers_answer_is_sent_as_a_dm() {
    let bot = Bot::start("discord_answer").await;
    let answer = ChatAnswer {
        version: EnvelopeVersion,
        answer_id: uuid::Uuid::now_v7(),
        channel: Channel::Discord,
        chat: user(55),
        answer: Answer::Linked,
        created_at: chrono::Utc::now(),
    };
    bot.h.publish_answer(&answer).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while bot.fake.sent().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no DM");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let sent = bot.fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].recipient_id, Some(55));
    assert_eq!(sent[0].content, answer.text());
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_an_answer_in_time_is_a_provider_fault() {
    let bot = Bot::start("discord_timeout").await;
    bot.h.publish(&bot.h.job(user(56), "warm-up")).await;
    assert_eq!(
        bot.h.next_event(WAIT).await.unwrap().result.status(),
        "delivered"
    );
    // Longer than `request_timeout_ms` (2 s).
    bot.fake.fail_next([Fault::Slow(Duration::from_secs(3))]);
    bot.h.publish(&bot.h.job(user(56), "slow")).await;
    let events = until_final(&bot.h).await;
    assert_eq!(
        statuses(&events),
        [(1, "retry_scheduled"), (2, "delivered")]
    );
    assert_eq!(failure(&events[0]).code, "timeout");
    bot.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_opens_the_breaker_and_the_probe_closes_it() {
    let bot = Bot::start("discord_breaker").await;
    let registered = bot.h.wait_readiness(WAIT, |status, _| status == 200).await;
    assert!(registered, "{:?}", bot.h.readyz().await);
    bot.fake.set_outage(Some(Fault::Status(503)));
    let jobs: Vec<_> = (60..66)
        .map(|n| bot.h.job(user(n), "during an outage"))
        .collect();
    for job in &jobs {
        bot.h.publish(job).await;
    }
    // Every first attempt failed, so none is in flight when the outage ends: only the probe
    // can close the breaker (an attempt that got through would close it by succeeding).
    bot.h
        .events_until(WAIT, |e| {
            e.iter()
                .filter(|e| e.result.status() == "retry_scheduled")
                .count()
                >= jobs.len()
        })
        .await;
    let open = bot
        .h
        .wait_readiness(WAIT, |status, body| {
            status == 503 && body.contains("breaker open")
        })
        .await;
    assert!(open, "readiness reports the open breaker");
    bot.fake.set_outage(None);
    bot.h
        .events_until(Duration::from_secs(60), |e| {
            e.iter()
                .filter(|e| e.result.status() == "delivered")
                .count()
                == jobs.len()
        })
        .await;
    assert_eq!(bot.fake.sent().len(), jobs.len(), "each delivered once");
    assert!(
        bot.fake
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path == "/users/@me"),
        "the breaker probed GET /users/@me"
    );
    assert_eq!(bot.h.readyz().await.0, 200, "ready again");
    bot.h.stop().await;
}
