//! teloxide, the client the Telegram sender uses, pointed at the fake Bot API. These tests pin
//! down what the sender will see for each answer, so its error mapping can rely on them.

// Helpers outside #[test] functions unwrap too: a broken fixture fails the test on the spot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use herald_testkit::fake_telegram::{
    BOT_USERNAME, FakeTelegram, Fault, SECRET_TOKEN_HEADER, TelegramRequest,
};
use teloxide::prelude::*;
use teloxide::types::{BotCommand, ParseMode, UpdateKind};
use teloxide::{ApiError, RequestError};
use tokio::sync::mpsc;

const TOKEN: &str = "123456:AAH-fake-token";

fn bot(fake: &FakeTelegram) -> Bot {
    // teloxide's reqwest brings rustls without choosing a crypto provider for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Bot::new(fake.token()).set_api_url(fake.api_url().parse().unwrap())
}

/// A bot whose HTTP client gives up after `timeout` (teloxide's default is 17 s).
fn impatient_bot(fake: &FakeTelegram, timeout: Duration) -> Bot {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = teloxide::net::default_reqwest_settings()
        .timeout(timeout)
        .build()
        .unwrap();
    Bot::with_client(fake.token(), client).set_api_url(fake.api_url().parse().unwrap())
}

/// Waits until a request of `method` is in flight (received, not yet answered).
async fn until_waiting(fake: &FakeTelegram, method: &str) {
    let waiting = |requests: Vec<TelegramRequest>| requests.iter().any(|r| r.status.is_none());
    for _ in 0..500 {
        if waiting(fake.requests_of(method)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {method} request arrived");
}

#[tokio::test]
async fn get_me_returns_a_bot_teloxide_parses() {
    let fake = FakeTelegram::start(TOKEN).await;
    let me = bot(&fake).get_me().await.unwrap();
    assert_eq!(me.id, UserId(123_456));
    assert!(me.is_bot);
    assert_eq!(me.username(), BOT_USERNAME);
    assert_eq!(
        fake.requests()[0].method,
        "GetMe",
        "teloxide spells methods in PascalCase"
    );
}

#[tokio::test]
async fn send_message_with_html_is_recorded_with_its_parse_mode_and_time() {
    let fake = FakeTelegram::start(TOKEN).await;
    let before = Instant::now();
    let message = bot(&fake)
        .send_message(ChatId(42), "<b>Order</b> shipped")
        .parse_mode(ParseMode::Html)
        .await
        .unwrap();
    assert_eq!(message.chat.id, ChatId(42));
    assert_eq!(message.text(), Some("<b>Order</b> shipped"));
    assert_eq!(message.from.as_ref().map(|u| u.id), Some(UserId(123_456)));

    let sent = fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].chat_id, 42);
    assert_eq!(sent[0].text, "<b>Order</b> shipped");
    assert_eq!(sent[0].parse_mode.as_deref(), Some("HTML"));
    assert_eq!(sent[0].message_id, message.id.0 as i64);
    assert!(sent[0].at >= before && sent[0].at <= Instant::now());
}

#[tokio::test]
async fn an_injected_message_is_returned_by_get_updates_until_an_offset_confirms_it() {
    let fake = FakeTelegram::start(TOKEN).await;
    let bot = bot(&fake);
    let update_id = fake.inject_message(777, 777, "/start LINK-CODE");

    let updates = bot.get_updates().await.unwrap();
    assert_eq!(updates.len(), 1);
    assert_eq!(i64::from(updates[0].id.0), update_id);
    let UpdateKind::Message(message) = &updates[0].kind else {
        panic!("not parsed as a message: {:?}", updates[0].kind);
    };
    assert_eq!(message.text(), Some("/start LINK-CODE"));
    assert_eq!(message.chat.id, ChatId(777));
    assert!(message.chat.is_private());
    assert_eq!(message.from.as_ref().map(|u| u.id), Some(UserId(777)));

    // Without an offset the update comes again; the next offset confirms it.
    assert_eq!(bot.get_updates().await.unwrap().len(), 1);
    let after = bot
        .get_updates()
        .offset(updates[0].id.as_offset())
        .await
        .unwrap();
    assert!(after.is_empty());
    assert_eq!(fake.pending_updates(), 0);
}

#[tokio::test]
async fn a_long_poll_answers_as_soon_as_a_message_is_injected() {
    let fake = FakeTelegram::start(TOKEN).await;
    let bot = bot(&fake);
    let started = Instant::now();
    let poll = tokio::spawn({
        let bot = bot.clone();
        async move {
            bot.get_updates()
                .timeout(10)
                .allowed_updates(vec![teloxide::types::AllowedUpdate::Message])
                .await
        }
    });
    until_waiting(&fake, "getUpdates").await;
    fake.inject_message(5, 5, "hello");
    let updates = poll.await.unwrap().unwrap();
    assert_eq!(updates.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_long_poll_without_updates_answers_empty_after_its_timeout() {
    let fake = FakeTelegram::start(TOKEN).await;
    let started = Instant::now();
    let updates = bot(&fake).get_updates().timeout(1).await.unwrap();
    assert!(updates.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_second_poller_terminates_the_first_with_a_conflict() {
    let fake = FakeTelegram::start(TOKEN).await;
    let bot = bot(&fake);
    let first = tokio::spawn({
        let bot = bot.clone();
        async move { bot.get_updates().timeout(10).await }
    });
    until_waiting(&fake, "getUpdates").await;
    let second = bot.get_updates().await.unwrap();
    assert!(second.is_empty());
    let error = first.await.unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            RequestError::Api(ApiError::TerminatedByOtherGetUpdates)
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_429_surfaces_as_teloxide_retry_after_with_the_seconds() {
    let fake = FakeTelegram::start(TOKEN).await;
    fake.fail_next([Fault::TooManyRequests {
        retry_after_secs: 7,
    }]);
    let error = bot(&fake).send_message(ChatId(1), "hi").await.unwrap_err();
    let RequestError::RetryAfter(seconds) = error else {
        panic!("not RetryAfter: {error:?}");
    };
    assert_eq!(seconds.seconds(), 7);
    assert_eq!(fake.too_many_requests_answered(), 1);
    assert!(fake.sent().is_empty());
    assert_eq!(fake.requests_of("sendMessage")[0].status, Some(429));
}

/// The table the Telegram sender's error mapping follows. Telegram's own words for some
/// errors differ from the strings teloxide 0.17 matches, and those arrive as `Unknown`.
#[tokio::test]
async fn each_chat_fault_maps_to_its_teloxide_error() {
    let fake = FakeTelegram::start(TOKEN).await;
    let bot = bot(&fake);
    let cases: Vec<(Fault, ApiError)> = vec![
        (Fault::BotBlocked, ApiError::BotBlocked),
        (Fault::UserDeactivated, ApiError::UserDeactivated),
        (
            Fault::KickedFromGroup,
            ApiError::Unknown("Forbidden: bot was kicked from the group chat".into()),
        ),
        (
            Fault::KickedFromSupergroup,
            ApiError::BotKickedFromSupergroup,
        ),
        (
            Fault::CantInitiateConversation,
            ApiError::Unknown("Forbidden: bot can't initiate conversation with a user".into()),
        ),
        (
            Fault::CantSendToUser,
            ApiError::Unknown("Forbidden: bot can't send messages to the user".into()),
        ),
        (Fault::ChatNotFound, ApiError::ChatNotFound),
    ];
    for (chat, (fault, expected)) in (100..).zip(cases) {
        fake.set_chat_fault(chat, Some(fault.clone()));
        let error = bot.send_message(ChatId(chat), "hi").await.unwrap_err();
        assert!(
            matches!(&error, RequestError::Api(api) if *api == expected),
            "{fault:?} gave {error:?}, expected {expected:?}"
        );
        // Persistent: the same chat fails again; other chats are untouched.
        assert!(bot.send_message(ChatId(chat), "again").await.is_err());
    }
    bot.send_message(ChatId(1), "fine").await.unwrap();
    assert_eq!(fake.sent().len(), 1);
}

#[tokio::test]
async fn queued_chat_faults_are_used_once_each_in_order() {
    let fake = FakeTelegram::start(TOKEN).await;
    let bot = bot(&fake);
    fake.fail_next_for_chat(
        9,
        [
            Fault::TooManyRequests {
                retry_after_secs: 1,
            },
            Fault::ChatNotFound,
        ],
    );
    assert!(matches!(
        bot.send_message(ChatId(9), "1").await,
        Err(RequestError::RetryAfter(_))
    ));
    assert!(matches!(
        bot.send_message(ChatId(9), "2").await,
        Err(RequestError::Api(ApiError::ChatNotFound))
    ));
    bot.send_message(ChatId(9), "3").await.unwrap();
    assert_eq!(fake.sent()[0].text, "3");
}

#[tokio::test]
async fn the_wrong_token_is_teloxide_invalid_token() {
    let fake = FakeTelegram::start(TOKEN).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let stranger = Bot::new("999:wrong").set_api_url(fake.api_url().parse().unwrap());
    let error = stranger.get_me().await.unwrap_err();
    assert!(
        matches!(error, RequestError::Api(ApiError::InvalidToken)),
        "{error:?}"
    );
    assert_eq!(fake.requests()[0].status, Some(401));
}

/// teloxide sleeps 10 s after any 5xx before it returns the error (`DELAY_ON_SERVER_ERROR`
/// in teloxide-core), so both cases run at once.
#[tokio::test]
async fn server_errors_come_back_after_teloxides_ten_second_pause() {
    let fake = FakeTelegram::start(TOKEN).await;
    let bot = bot(&fake);
    fake.set_chat_fault(1, Some(Fault::Status(502)));
    fake.set_chat_fault(2, Some(Fault::ProxyErrorPage(502)));
    let started = Instant::now();
    let (json_error, html_error) = tokio::join!(
        bot.send_message(ChatId(1), "a").into_future(),
        bot.send_message(ChatId(2), "b").into_future()
    );
    assert!(started.elapsed() >= Duration::from_secs(10));
    let json_error = json_error.unwrap_err();
    assert!(
        matches!(&json_error, RequestError::Api(ApiError::Unknown(d)) if d == "Bad Gateway"),
        "{json_error:?}"
    );
    let html_error = html_error.unwrap_err();
    assert!(
        matches!(html_error, RequestError::InvalidJson { .. }),
        "{html_error:?}"
    );
}

#[tokio::test]
async fn a_slow_answer_past_the_client_timeout_is_a_network_timeout() {
    let fake = FakeTelegram::start(TOKEN).await;
    fake.fail_next([Fault::Slow(Duration::from_secs(2))]);
    let error = impatient_bot(&fake, Duration::from_millis(300))
        .send_message(ChatId(1), "hi")
        .await
        .unwrap_err();
    let RequestError::Network(network) = &error else {
        panic!("not a network error: {error:?}");
    };
    assert!(network.is_timeout(), "{network:?}");
}

#[tokio::test]
async fn a_slow_answer_within_the_timeout_is_delivered_late() {
    let fake = FakeTelegram::start(TOKEN).await;
    fake.fail_next([Fault::Slow(Duration::from_millis(300))]);
    let started = Instant::now();
    bot(&fake).send_message(ChatId(1), "hi").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(fake.sent().len(), 1);
}

#[tokio::test]
async fn a_dropped_connection_is_a_network_error() {
    let fake = FakeTelegram::start(TOKEN).await;
    fake.fail_next([Fault::Drop]);
    let error = bot(&fake).send_message(ChatId(1), "hi").await.unwrap_err();
    assert!(matches!(error, RequestError::Network(_)), "{error:?}");
    assert_eq!(fake.requests_of("sendMessage")[0].status, None);
}

#[tokio::test]
async fn an_outage_fails_every_method() {
    let fake = FakeTelegram::start(TOKEN).await;
    let bot = bot(&fake);
    fake.set_outage(Some(Fault::Api {
        error_code: 401,
        description: "Unauthorized".into(),
    }));
    assert!(matches!(
        bot.get_me().await,
        Err(RequestError::Api(ApiError::InvalidToken))
    ));
    fake.set_outage(None);
    bot.get_me().await.unwrap();
}

#[tokio::test]
async fn while_a_webhook_is_set_get_updates_conflicts_and_updates_are_posted_to_it() {
    let fake = FakeTelegram::start(TOKEN).await;
    let bot = bot(&fake);

    // A webhook receiver that reports the secret header and the update.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Option<String>, String)>();
    let receiver = axum::Router::new().route(
        "/telegram/webhook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let secret = headers
                    .get(SECRET_TOKEN_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let _ = tx.send((secret, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/telegram/webhook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    bot.set_webhook(url.parse().unwrap())
        .secret_token("s3cret-Token_1".to_owned())
        .await
        .unwrap();
    let info = bot.get_webhook_info().await.unwrap();
    assert_eq!(info.url.map(|u| u.to_string()), Some(url.clone()));

    let error = bot.get_updates().await.unwrap_err();
    assert!(
        matches!(&error, RequestError::Api(ApiError::Unknown(d)) if d.starts_with("Conflict: can't use getUpdates method while webhook is active")),
        "{error:?}"
    );

    let update_id = fake.inject_message(31, 31, "/support help");
    let (secret, body) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(secret.as_deref(), Some("s3cret-Token_1"));
    // What arrives is an update teloxide parses. From the raw text only: teloxide's
    // `UpdateKind` reads borrowed keys, so `serde_json::from_value` yields `UpdateKind::Error`.
    let parsed: teloxide::types::Update = serde_json::from_str(&body).unwrap();
    assert_eq!(i64::from(parsed.id.0), update_id);
    assert!(
        matches!(parsed.kind, UpdateKind::Message(_)),
        "{:?}",
        parsed.kind
    );

    let webhook = fake.webhook().unwrap();
    assert_eq!(webhook.secret_token.as_deref(), Some("s3cret-Token_1"));
    // The fake records the delivery once the receiver's answer is back.
    for _ in 0..500 {
        if !fake.webhook_deliveries().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.webhook_deliveries()[0].outcome, Ok(200));
    assert_eq!(
        bot.get_webhook_info().await.unwrap().pending_update_count,
        0
    );

    bot.delete_webhook().await.unwrap();
    assert!(fake.webhook().is_none());
    assert!(
        bot.get_updates().await.unwrap().is_empty(),
        "delivered updates are confirmed"
    );
}

#[tokio::test]
async fn a_user_blocking_the_bot_arrives_as_a_my_chat_member_update() {
    let fake = FakeTelegram::start(TOKEN).await;
    fake.inject_bot_blocked(55);
    let updates = bot(&fake).get_updates().await.unwrap();
    let UpdateKind::MyChatMember(change) = &updates[0].kind else {
        panic!("not parsed as my_chat_member: {:?}", updates[0].kind);
    };
    assert_eq!(change.chat.id, ChatId(55));
    assert!(change.new_chat_member.is_banned());
}

#[tokio::test]
async fn set_my_commands_is_recorded() {
    let fake = FakeTelegram::start(TOKEN).await;
    bot(&fake)
        .set_my_commands(vec![BotCommand::new("link", "Link this chat to Herald")])
        .await
        .unwrap();
    assert_eq!(fake.commands()[0]["command"], "link");
}

#[tokio::test]
async fn query_and_form_parameters_are_read_like_json_ones() {
    let fake = FakeTelegram::start(TOKEN).await;
    let (status, body) = herald_testkit::http::get(
        fake.addr(),
        &format!("/bot{TOKEN}/sendmessage?chat_id=8&text=caf%C3%A9+ol%C3%A9&parse_mode=HTML"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let sent = fake.sent();
    assert_eq!(sent[0].chat_id, 8);
    assert_eq!(sent[0].text, "café olé");
}

#[tokio::test]
async fn an_unknown_method_is_not_found() {
    let fake = FakeTelegram::start(TOKEN).await;
    let (status, body) =
        herald_testkit::http::get(fake.addr(), &format!("/bot{TOKEN}/noSuchMethod"))
            .await
            .unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("\"Not Found\""));
}
