//! The Telegram sender and bot against the real broker and the fake Bot API: delivery, HTML,
//! long texts, every error mapping end to end, rate limits, the bot's commands and answers,
//! polling conflicts, webhook mode, and an unconfigured sender.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chrono::Utc;
use herald_runtime::config::Secret;
use herald_testkit::fake_telegram::{FakeTelegram, Fault, SECRET_TOKEN_HEADER};
use messaging_core::events::{Answer, AttemptResult, ChatAnswer, DeliveryEvent};
use messaging_core::failure::FailureClass;
use messaging_core::values::ChatId;
use messaging_core::{Address, Channel, EnvelopeVersion};
use sender_runtime::chat::help_text;
use sender_runtime::config::SenderConfig;
use sender_runtime::testing::{SenderHarness, quick_config};
use sender_telegram::{Mode, TelegramConfig, TelegramSender, TelegramSettings};
use serde_json::json;
use uuid::Uuid;

const TOKEN: &str = "123456:AAH-fake-token";
const WAIT: Duration = Duration::from_secs(20);

fn telegram_config(fake: &FakeTelegram) -> TelegramConfig {
    TelegramConfig {
        telegram: TelegramSettings {
            bot_token: Secret::new(TOKEN.into()),
            api_url: fake.api_url(),
            poll_timeout_secs: 1,
            ..TelegramSettings::default()
        },
    }
}

fn chat(id: i64) -> Address {
    Address::Telegram(ChatId(id))
}

async fn start(test: &str, config: SenderConfig) -> (FakeTelegram, SenderHarness) {
    let fake = FakeTelegram::start(TOKEN).await;
    let h = SenderHarness::start_chat::<TelegramSender>(test, config, telegram_config(&fake)).await;
    (fake, h)
}

fn failure(event: &DeliveryEvent) -> &messaging_core::failure::Failure {
    match &event.result {
        AttemptResult::Failed { failure } | AttemptResult::RetryScheduled { failure, .. } => {
            failure
        }
        other => panic!("no failure in {other:?}"),
    }
}

/// Waits until the fake has accepted `count` messages.
async fn sent_at_least(
    fake: &FakeTelegram,
    count: usize,
) -> Vec<herald_testkit::fake_telegram::SentMessage> {
    let deadline = Instant::now() + WAIT;
    loop {
        let sent = fake.sent();
        if sent.len() >= count {
            return sent;
        }
        assert!(
            Instant::now() < deadline,
            "only {} messages sent: {sent:#?}",
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_delivered_with_the_message_id_as_provider_id() {
    let (fake, h) = start("tg_delivered", quick_config()).await;
    let job = h.job(chat(42), "Your order shipped");
    h.publish(&job).await;
    let event = h.next_event(WAIT).await.expect("an event");
    assert_eq!(event.delivery_id, job.delivery_id);
    let AttemptResult::Delivered {
        provider_message_id,
    } = &event.result
    else {
        panic!("{event:?}")
    };
    let sent = fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].chat_id, 42);
    assert_eq!(sent[0].text, "Your order shipped");
    assert_eq!(sent[0].parse_mode.as_deref(), Some("HTML"));
    assert_eq!(
        provider_message_id.as_deref(),
        Some(sent[0].message_id.to_string().as_str())
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_is_escaped_and_the_subject_is_a_bold_first_line() {
    let (fake, h) = start("tg_html", quick_config()).await;
    let mut job = h.job(chat(43), "if a < b && b > c then <script>");
    job.content.subject = Some("Q&A <today>".into());
    job.content.html = Some("<p>ignored</p>".into());
    h.publish(&job).await;
    assert_eq!(
        h.next_event(WAIT).await.unwrap().result.status(),
        "delivered"
    );
    assert_eq!(
        fake.sent()[0].text,
        "<b>Q&amp;A &lt;today&gt;</b>\nif a &lt; b &amp;&amp; b &gt; c then &lt;script&gt;"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5000_character_text_arrives_as_two_messages_in_order() {
    let (fake, h) = start("tg_long", quick_config()).await;
    let text: String = (0..1_000)
        .map(|i| format!("w{:03} ", i % 1000))
        .collect::<String>();
    let text = text[..5_000].trim_end().to_owned();
    h.publish(&h.job(chat(44), &text)).await;
    let event = h.next_event(WAIT).await.unwrap();
    let AttemptResult::Delivered {
        provider_message_id,
    } = &event.result
    else {
        panic!("{event:?}")
    };
    let sent = fake.sent();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|m| m.text.chars().count() <= 4096));
    assert_eq!(format!("{} {}", sent[0].text, sent[1].text), text);
    assert!(
        sent[0].text.starts_with("w000 ")
            && sent[1].text.ends_with(text.rsplit(' ').next().unwrap())
    );
    assert_eq!(
        provider_message_id.as_deref(),
        Some(format!("{},{}", sent[0].message_id, sent[1].message_id).as_str())
    );
    assert!(
        sent[1].at.duration_since(sent[0].at) >= Duration::from_millis(950),
        "the parts go at one chat's pace"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_failed_second_part_sends_only_the_rest() {
    let (fake, h) = start("tg_parts_retry", quick_config()).await;
    // The first part goes through; the second finds the connection dropped.
    fake.fail_next_for_chat(45, [Fault::Slow(Duration::ZERO), Fault::Drop]);
    let text = format!("{}\n{}", "a".repeat(4_000), "b".repeat(1_000));
    h.publish(&h.job(chat(45), &text)).await;
    let events = h
        .events_until(WAIT, |e| e.last().is_some_and(|e| e.result.is_final()))
        .await;
    let statuses: Vec<_> = events.iter().map(|e| e.result.status()).collect();
    assert_eq!(statuses, ["retry_scheduled", "delivered"]);
    assert_eq!(failure(&events[0]).code, "transport");
    let texts: Vec<_> = fake.sent().into_iter().map(|m| m.text).collect();
    assert_eq!(
        texts,
        ["a".repeat(4_000), "b".repeat(1_000)],
        "part one once"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_bot_fails_permanently_and_is_not_retried() {
    let (fake, h) = start("tg_blocked", quick_config()).await;
    fake.set_chat_fault(46, Some(Fault::BotBlocked));
    h.publish(&h.job(chat(46), "hello")).await;
    let event = h.next_event(WAIT).await.unwrap();
    assert_eq!(event.result.status(), "failed");
    let failure = failure(&event);
    assert_eq!(failure.class, FailureClass::Permanent);
    assert_eq!(failure.code, "blocked");
    assert!(
        h.next_event(Duration::from_millis(800)).await.is_none(),
        "no second attempt"
    );
    assert_eq!(fake.requests_of("sendMessage").len(), 1);
    h.stop().await;
}

/// One job per row of the error table, side by side: the first answer's kind, class and code,
/// and, for the temporary ones, delivery on the next attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_telegram_error_maps_to_its_outcome_end_to_end() {
    let (fake, h) = start("tg_mapping", quick_config()).await;
    let unauthorized = Fault::Api {
        error_code: 401,
        description: "Unauthorized".into(),
    };
    // (chat, fault, first status, class, code, delivered afterwards)
    let cases = [
        (
            101,
            Fault::BotBlocked,
            "failed",
            FailureClass::Permanent,
            "blocked",
            false,
        ),
        (
            102,
            Fault::UserDeactivated,
            "failed",
            FailureClass::Permanent,
            "deactivated",
            false,
        ),
        (
            -103,
            Fault::KickedFromGroup,
            "failed",
            FailureClass::Permanent,
            "kicked",
            false,
        ),
        (
            -1_000_000_000_104,
            Fault::KickedFromSupergroup,
            "failed",
            FailureClass::Permanent,
            "kicked",
            false,
        ),
        (
            105,
            Fault::ChatNotFound,
            "failed",
            FailureClass::Permanent,
            "chat_not_found",
            false,
        ),
        (
            106,
            Fault::CantSendToUser,
            "retry_scheduled",
            FailureClass::Temporary,
            "cannot_send_to_user",
            true,
        ),
        (
            107,
            Fault::CantInitiateConversation,
            "retry_scheduled",
            FailureClass::Temporary,
            "cannot_initiate",
            true,
        ),
        (
            108,
            unauthorized,
            "retry_scheduled",
            FailureClass::Unhealthy,
            "invalid_token",
            true,
        ),
        (
            109,
            Fault::Drop,
            "retry_scheduled",
            FailureClass::Temporary,
            "transport",
            true,
        ),
    ];
    let mut jobs = Vec::new();
    for (chat_id, fault, ..) in &cases {
        fake.fail_next_for_chat(*chat_id, [fault.clone()]);
        let job = h.job(chat(*chat_id), "hello");
        h.publish(&job).await;
        jobs.push(job.delivery_id);
    }
    let finals = cases.len();
    let events = h
        .events_until(Duration::from_secs(40), |e| {
            e.iter().filter(|e| e.result.is_final()).count() == finals
        })
        .await;
    for ((chat_id, fault, status, class, code, delivered), delivery) in cases.iter().zip(&jobs) {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.delivery_id == *delivery)
            .collect();
        let first = mine
            .first()
            .unwrap_or_else(|| panic!("no event for {fault:?}"));
        assert_eq!(first.result.status(), *status, "{fault:?}");
        let failure = failure(first);
        assert_eq!(
            (failure.class, failure.code.as_str()),
            (*class, *code),
            "{fault:?}: {failure:?}"
        );
        if *delivered {
            assert_eq!(
                mine.last().unwrap().result.status(),
                "delivered",
                "{fault:?}"
            );
            assert!(
                fake.sent().iter().any(|m| m.chat_id == *chat_id),
                "{fault:?}"
            );
        } else {
            assert_eq!(mine.len(), 1, "{fault:?} is not retried");
        }
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_stops_the_whole_bot_for_its_retry_after() {
    let (fake, h) = start("tg_429", quick_config()).await;
    fake.fail_next([Fault::TooManyRequests {
        retry_after_secs: 2,
    }]);
    h.publish(&h.job(chat(51), "one")).await;
    let event = h.next_event(WAIT).await.unwrap();
    let AttemptResult::RetryScheduled { failure, retry_at } = &event.result else {
        panic!("{event:?}")
    };
    assert_eq!(failure.code, "rate_limited");
    let waited = (*retry_at - event.occurred_at).to_std().unwrap();
    assert!(waited >= Duration::from_millis(1_900), "{waited:?}");
    // Another chat's job waits too: the limit is the bot's.
    h.publish(&h.job(chat(52), "two")).await;
    h.events_until(WAIT, |e| {
        e.iter()
            .filter(|e| e.result.status() == "delivered")
            .count()
            == 2
    })
    .await;
    let times: Vec<Instant> = fake
        .requests_of("sendMessage")
        .iter()
        .map(|r| r.at)
        .collect();
    assert_eq!(times.len(), 3, "the 429, then one request per job");
    let quiet = times[1].duration_since(times[0]);
    assert!(
        quiet >= Duration::from_millis(1_900),
        "no request during the retry-after: {quiet:?}"
    );
    assert_eq!(fake.sent().len(), 2);
    h.stop().await;
}

/// teloxide waits 10 s after any 5xx before it returns, so the send timeout is raised here and
/// both kinds of 5xx run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_then_delivered() {
    let config = SenderConfig {
        send_timeout_ms: 15_000,
        ..quick_config()
    };
    let (fake, h) = start("tg_5xx", config).await;
    fake.fail_next_for_chat(53, [Fault::Status(502)]);
    fake.fail_next_for_chat(54, [Fault::ProxyErrorPage(502)]);
    let json_error = h.job(chat(53), "hello");
    let html_error = h.job(chat(54), "hello");
    h.publish(&json_error).await;
    h.publish(&html_error).await;
    let events = h
        .events_until(Duration::from_secs(40), |e| {
            e.iter().filter(|e| e.result.is_final()).count() == 2
        })
        .await;
    for (job, code) in [
        (&json_error, "provider_error"),
        (&html_error, "invalid_response"),
    ] {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.delivery_id == job.delivery_id)
            .collect();
        let statuses: Vec<_> = mine.iter().map(|e| e.result.status()).collect();
        assert_eq!(statuses, ["retry_scheduled", "delivered"], "{code}");
        let failure = failure(mine[0]);
        assert_eq!(
            (failure.class, failure.code.as_str()),
            (FailureClass::Temporary, code)
        );
    }
    assert_eq!(fake.sent().len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_limits_two_jobs_to_one_chat_arrive_a_second_apart() {
    let config = SenderConfig {
        account_per_second: None,
        account_burst: None,
        recipient_interval_ms: None,
        recipient_burst: None,
        ..quick_config()
    };
    let (fake, h) = start("tg_chat_limit", config).await;
    h.publish(&h.job(chat(61), "one")).await;
    h.publish(&h.job(chat(61), "two")).await;
    h.publish(&h.job(chat(62), "other chat")).await;
    let sent = sent_at_least(&fake, 3).await;
    let to_61: Vec<_> = sent.iter().filter(|m| m.chat_id == 61).collect();
    let gap = to_61[1].at.duration_since(to_61[0].at);
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
    let other = sent.iter().find(|m| m.chat_id == 62).unwrap();
    assert!(
        other.at.duration_since(to_61[0].at) < Duration::from_millis(900),
        "another chat does not wait for it"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_gets_at_most_one_message_every_three_seconds() {
    let (fake, h) = start("tg_group_limit", quick_config()).await;
    let first = h.job(chat(-71), "one");
    let second = h.job(chat(-71), "two");
    h.publish(&first).await;
    h.publish(&second).await;
    let events = h
        .events_until(WAIT, |e| {
            e.iter()
                .filter(|e| e.result.status() == "delivered")
                .count()
                == 2
        })
        .await;
    assert!(
        events
            .iter()
            .any(|e| e.result.status() == "retry_scheduled"
                && failure(e).code == "group_rate_limited")
    );
    let sent = fake.sent();
    let gap = sent[1].at.duration_since(sent[0].at);
    assert!(gap >= Duration::from_millis(2_900), "{gap:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_with_a_code_publishes_a_contact_link_and_support_a_request() {
    let (fake, h) = start("tg_bot_link", quick_config()).await;
    fake.inject_message(777, 777, "/start K7QX2MPA");
    let link = h.next_inbound(WAIT).await.expect("a contact-link event");
    assert_eq!(link["linkCode"], "K7QX2MPA");
    assert_eq!(link["channel"], "telegram");
    assert_eq!(link["address"], serde_json::to_value(chat(777)).unwrap());
    assert_eq!(link["address"]["kind"], "telegram");
    assert_eq!(link["displayName"], "@user777");

    fake.inject_message(778, 778, "/support help me");
    let support = h.next_inbound(WAIT).await.expect("a support request");
    assert_eq!(support["supportText"], "help me");
    assert_eq!(support["chat"], serde_json::to_value(chat(778)).unwrap());
    assert_eq!(support["displayName"], "@user778");

    // Blocking and non-text updates are read and confirmed, and produce nothing.
    fake.inject_bot_blocked(779);
    fake.inject_update(json!({"callback_query": {"id": "1"}}));
    let deadline = Instant::now() + WAIT;
    while fake.pending_updates() > 0 {
        assert!(Instant::now() < deadline, "updates left unconfirmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.next_inbound(Duration::from_millis(300)).await.is_none());
    assert!(
        fake.sent().is_empty(),
        "nothing is said before the router answers"
    );
    let commands: Vec<_> = fake
        .commands()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(commands, ["start", "link", "support", "help"]);
    let (status, body) = h.readyz().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("bot:telegram"), "{body}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_gets_the_help_text_at_once_and_answers_are_said_in_the_chat() {
    let (fake, h) = start("tg_bot_help", quick_config()).await;
    fake.inject_message(780, 780, "hello <there>");
    let sent = sent_at_least(&fake, 1).await;
    assert_eq!(sent[0].chat_id, 780);
    assert_eq!(sent[0].text, help_text());
    assert!(h.next_inbound(Duration::from_millis(200)).await.is_none());

    let answer = ChatAnswer {
        version: EnvelopeVersion,
        answer_id: Uuid::now_v7(),
        channel: Channel::Telegram,
        chat: chat(781),
        answer: Answer::Linked,
        created_at: Utc::now(),
    };
    h.publish_answer(&answer).await;
    let sent = sent_at_least(&fake, 2).await;
    assert_eq!(sent[1].chat_id, 781);
    assert_eq!(sent[1].text, answer.text());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_set_elsewhere_makes_the_bot_not_ready_until_it_is_gone() {
    let (fake, h) = start("tg_conflict", quick_config()).await;
    assert!(
        h.wait_readiness(WAIT, |status, _| status == 200).await,
        "ready while polling"
    );
    // Someone sets a webhook for the same token: every poll now answers 409.
    let set = format!("/bot{TOKEN}/setWebhook?url=http%3A%2F%2F127.0.0.1%3A1%2Fhook");
    assert_eq!(
        herald_testkit::http::get(fake.addr(), &set)
            .await
            .unwrap()
            .0,
        200
    );
    assert!(
        h.wait_readiness(WAIT, |status, body| status == 503
            && body.contains("conflict"))
            .await,
        "{:?}",
        h.readyz().await
    );
    let delete = format!("/bot{TOKEN}/deleteWebhook");
    assert_eq!(
        herald_testkit::http::get(fake.addr(), &delete)
            .await
            .unwrap()
            .0,
        200
    );
    assert!(
        h.wait_readiness(Duration::from_secs(30), |status, _| status == 200)
            .await,
        "ready again once polling works"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_webhook_mode_the_webhook_is_registered_and_checks_its_secret() {
    let fake = FakeTelegram::start(TOKEN).await;
    let mut config = telegram_config(&fake);
    config.telegram.mode = Mode::Webhook;
    config.telegram.webhook_url = "https://bot.example.org/telegram/webhook".into();
    config.telegram.webhook_secret = Secret::new("s3cret-Token_1".into());
    let h = SenderHarness::start_chat::<TelegramSender>("tg_webhook", quick_config(), config).await;
    assert!(
        h.wait_readiness(WAIT, |status, _| status == 200).await,
        "{:?}",
        h.readyz().await
    );
    assert_eq!(
        fake.webhook().expect("a webhook"),
        herald_testkit::fake_telegram::Webhook {
            url: "https://bot.example.org/telegram/webhook".into(),
            secret_token: Some("s3cret-Token_1".into()),
        }
    );
    assert!(fake.requests_of("getUpdates").is_empty(), "no polling");

    let update = json!({
        "update_id": 900_000_001,
        "message": {
            "message_id": 5,
            "from": {"id": 31, "is_bot": false, "first_name": "Ann", "username": "ann"},
            "chat": {"id": 31, "type": "private", "first_name": "Ann", "username": "ann"},
            "date": 1_700_000_000,
            "text": "/start K7QX2MPA",
            "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
        }
    });
    let body = serde_json::to_vec(&update).unwrap();
    let url = format!("http://{}/telegram/webhook", h.http_addr());
    let post = |secret: Option<&'static str>| {
        let url = url.clone();
        let body = body.clone();
        async move {
            let headers: Vec<(&str, &str)> = secret
                .map(|s| (SECRET_TOKEN_HEADER, s))
                .into_iter()
                .collect();
            herald_testkit::http::post_json(&url, &headers, &body)
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(post(Some("wrong")).await, 401);
    assert_eq!(post(None).await, 401);
    assert!(h.next_inbound(Duration::from_millis(300)).await.is_none());
    assert_eq!(post(Some("s3cret-Token_1")).await, 200);
    let link = h.next_inbound(WAIT).await.expect("a contact-link event");
    assert_eq!(link["linkCode"], "K7QX2MPA");
    assert_eq!(link["address"], serde_json::to_value(chat(31)).unwrap());
    assert_eq!(link["displayName"], "@ann");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_sender_says_so_and_leaves_its_queue_alone() {
    let fake = FakeTelegram::start(TOKEN).await;
    let mut config = telegram_config(&fake);
    config.telegram.bot_token = Secret::default();
    let h = SenderHarness::start_chat::<TelegramSender>("tg_unconfigured", quick_config(), config)
        .await;
    let (status, body) = h.readyz().await;
    assert_eq!(status, 503);
    assert!(
        body.contains("not configured") && body.contains("HERALD_TELEGRAM__BOT_TOKEN"),
        "{body}"
    );
    h.publish(&h.job(chat(90), "waits")).await;
    assert_eq!(h.wait_queued(WAIT, |queued| queued == 1).await, 1);
    let queue = h.names.send_queue(Channel::Telegram);
    assert_eq!(h.inspector.consumer_count(&queue).await, 0);
    assert!(fake.requests().is_empty(), "nothing asked of Telegram");
    h.stop().await;
}
