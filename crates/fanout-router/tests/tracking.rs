//! Delivery events into delivery records and address states, outcomes for producers, and
//! contact links, against the real PostgreSQL and RabbitMQ.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use fanout_router::outcome::Outcomes;
use fanout_router::tracking::TrackingHandler;
use herald_runtime::amqp::{Handler, Outcome};
use herald_storage::link_codes;
use herald_storage::tracking::RemovalPolicy;
use messaging_core::Channel;
use messaging_core::events::MessageOutcome;
use messaging_core::job::SendJob;
use serde_json::{Value, json};
use sqlx::PgPool;
use support::{Harness, context};
use uuid::Uuid;

/// The key link codes are hashed with, as the API and the router share it.
const LINK_KEY: &[u8] = b"test-verification-code-secret";

fn tracker(h: &Harness, policy: RemovalPolicy) -> TrackingHandler {
    TrackingHandler::new(
        h.pool.clone(),
        Outcomes::new(h.pool.clone(), h.publisher.clone(), h.names.clone()),
        policy,
        Duration::from_secs(1),
    )
    .with_link_key(LINK_KEY)
}

const LENIENT: RemovalPolicy = RemovalPolicy {
    after: chrono::Duration::days(7),
    failures: 5,
};

async fn event(t: &TrackingHandler, body: Value) -> Outcome {
    event_with_id(t, body, None).await
}

async fn event_with_id(t: &TrackingHandler, body: Value, message_id: Option<&str>) -> Outcome {
    let bytes = serde_json::to_vec(&body).unwrap();
    match t.decode(&bytes) {
        Ok(message) => t.handle(message, &context(message_id)).await,
        Err(rejection) => Outcome::DeadLetter(rejection),
    }
}

/// The outbox rows written so far: (exchange, routing key, message id, payload).
async fn outbox(pool: &PgPool) -> Vec<(String, String, String, Value)> {
    let rows: Vec<(String, String, String, Vec<u8>)> =
        sqlx::query_as("SELECT exchange, routing_key, message_id, payload FROM outbox ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(e, k, id, p)| (e, k, id, serde_json::from_slice(&p).unwrap()))
        .collect()
}

/// The chat answers in the outbox: (answer id, kind, chat value).
async fn answers(pool: &PgPool) -> Vec<(String, String, Value)> {
    outbox(pool)
        .await
        .into_iter()
        .filter(|(_, key, _, _)| key.starts_with("answer."))
        .map(|(_, _, id, body)| {
            (
                id,
                body["answer"]["kind"].as_str().unwrap().to_owned(),
                body["chat"]["value"].clone(),
            )
        })
        .collect()
}

fn delivered(job: &SendJob, attempt: u32) -> Value {
    json!({
        "version": 1, "deliveryId": job.delivery_id, "messageId": job.message_id,
        "tenant": "acme", "channel": job.channel(), "attempt": attempt,
        "occurredAt": Utc::now(), "result": {"status": "delivered"}
    })
}

fn failed(job: &SendJob, attempt: u32, class: &str, code: &str, retry: bool) -> Value {
    let failure = json!({"class": class, "code": code, "message": format!("{code} happened")});
    let result = if retry {
        json!({"status": "retry_scheduled", "failure": failure, "retryAt": Utc::now() + chrono::Duration::seconds(30)})
    } else {
        json!({"status": "failed", "failure": failure})
    };
    json!({
        "version": 1, "deliveryId": job.delivery_id, "messageId": job.message_id,
        "tenant": "acme", "channel": job.channel(), "attempt": attempt,
        "occurredAt": Utc::now(), "result": result
    })
}

/// Ann with an email, an SMS number and a Telegram chat, and one direct message to her.
async fn three_jobs(h: &Harness) -> (Uuid, Vec<SendJob>) {
    let ann = h.user("ann", None, None, "all").await;
    h.address(ann, "email", "ann@example.org").await;
    h.address(ann, "sms", "+41791234567").await;
    h.address(ann, "telegram", "4242").await;
    let body = json!({
        "version": 1, "kind": "notify", "tenant": "acme", "idempotencyKey": "m-1",
        "to": {"users": ["ann"]}, "content": {"direct": {"body": "Hello"}}
    });
    assert_eq!(h.handle(&body, None).await, Outcome::Ack);
    let jobs = h.all_jobs().await;
    assert_eq!(jobs.len(), 3);
    (jobs[0].message_id, jobs)
}

fn job(jobs: &[SendJob], channel: Channel) -> &SendJob {
    jobs.iter().find(|j| j.channel() == channel).unwrap()
}

async fn delivery(pool: &PgPool, id: Uuid) -> (String, i32, Option<String>, Option<String>) {
    sqlx::query_as(
        "SELECT status, attempts, failure_class, failure_code FROM deliveries WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn address_state(pool: &PgPool, value: &str) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT state, failure_count, state_reason FROM addresses WHERE value = $1")
        .bind(value)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn events_track_each_delivery_and_the_last_one_publishes_the_outcome(pool: PgPool) {
    let h = Harness::new(pool.clone(), "tracking_outcome").await;
    let t = tracker(&h, LENIENT);
    let (message_id, jobs) = three_jobs(&h).await;
    let outcomes = h
        .inspector
        .temporary_queue(&h.names.events_exchange(), "outcome.acme")
        .await;
    let reply = h
        .inspector
        .named_temporary_queue(&format!("{}orders", h.names.reply_queue_prefix("acme")))
        .await;
    sqlx::query("UPDATE messages SET reply_to = $2, correlation_id = 'corr-7' WHERE id = $1")
        .bind(message_id)
        .bind(&reply)
        .execute(&pool)
        .await
        .unwrap();
    let (email, sms, telegram) = (
        job(&jobs, Channel::Email),
        job(&jobs, Channel::Sms),
        job(&jobs, Channel::Telegram),
    );

    assert_eq!(event(&t, delivered(email, 1)).await, Outcome::Ack);
    assert_eq!(
        event(&t, failed(sms, 1, "temporary", "provider_busy", true)).await,
        Outcome::Ack
    );
    assert_eq!(delivery(&pool, email.delivery_id).await.0, "sent");
    let (status, attempts, class, _) = delivery(&pool, sms.delivery_id).await;
    assert_eq!(
        (status.as_str(), attempts, class.as_deref()),
        ("pending", 1, Some("temporary"))
    );
    // Not final yet: no outcome.
    assert!(h.inspector.get(&outcomes).await.is_none());

    assert_eq!(
        event(&t, failed(sms, 2, "temporary", "provider_busy", false)).await,
        Outcome::Ack
    );
    assert_eq!(
        event(&t, failed(telegram, 1, "permanent", "blocked", false)).await,
        Outcome::Ack
    );

    let status: String = sqlx::query_scalar("SELECT status FROM messages WHERE id = $1")
        .bind(message_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "completed");

    let published = h
        .inspector
        .wait_get(&outcomes, Duration::from_secs(5))
        .await
        .expect("an outcome");
    let outcome: MessageOutcome = serde_json::from_slice(&published.delivery.data).unwrap();
    assert_eq!(outcome.message_id, message_id);
    assert_eq!((outcome.delivered, outcome.failed), (1, 2));
    assert_eq!(outcome.recipients.len(), 3);
    let value = serde_json::to_value(&outcome).unwrap();
    let classes: Vec<&str> = value["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["result"]["failure"]["class"].as_str())
        .collect();
    assert!(
        classes.contains(&"temporary") && classes.contains(&"permanent"),
        "{value}"
    );

    // The producer's reply_to gets the same, with its correlation id.
    let replied = h
        .inspector
        .wait_get(&reply, Duration::from_secs(5))
        .await
        .expect("a reply");
    assert_eq!(
        replied
            .delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("corr-7")
    );

    // R6: the blocked chat is unreachable, and that is recorded; the mailbox's streak is clear.
    let (state, _, reason) = address_state(&pool, "4242").await;
    assert_eq!(state, "unreachable");
    assert!(reason.unwrap().contains("blocked"));
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM address_state_changes WHERE state = 'unreachable'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1);
    assert_eq!(address_state(&pool, "+41791234567").await.1, 2);
    assert_eq!(address_state(&pool, "ann@example.org").await.1, 0);

    // A repeated final event changes nothing and publishes no second outcome.
    assert_eq!(
        event(&t, failed(telegram, 1, "permanent", "blocked", false)).await,
        Outcome::Ack
    );
    // A late retry event cannot undo a final state.
    assert_eq!(
        event(&t, failed(email, 1, "temporary", "late", true)).await,
        Outcome::Ack
    );
    assert_eq!(delivery(&pool, email.delivery_id).await.0, "sent");
    assert!(
        h.inspector
            .wait_get(&outcomes, Duration::from_millis(300))
            .await
            .is_none()
    );
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_address_failing_longer_than_the_period_is_removed_and_a_success_resets_the_streak(
    pool: PgPool,
) {
    let h = Harness::new(pool.clone(), "tracking_removal").await;
    let t = tracker(
        &h,
        RemovalPolicy {
            after: chrono::Duration::hours(1),
            failures: 3,
        },
    );
    let (_, jobs) = three_jobs(&h).await;
    let (email, sms) = (job(&jobs, Channel::Email), job(&jobs, Channel::Sms));

    // Two failures, the first two hours ago: the period is over but the count is not.
    sqlx::query("UPDATE addresses SET failure_count = 1, failure_streak_started_at = now() - interval '2 hours' WHERE value = '+41791234567'")
        .execute(&pool)
        .await
        .unwrap();
    event(&t, failed(sms, 1, "temporary", "no_signal", true)).await;
    assert_eq!(address_state(&pool, "+41791234567").await.0, "active");
    // The third failure fulfils both: removed, with the time and the reason recorded (R3).
    event(&t, failed(sms, 2, "temporary", "no_signal", false)).await;
    let (state, count, reason) = address_state(&pool, "+41791234567").await;
    assert_eq!((state.as_str(), count), ("removed", 3));
    let reason = reason.unwrap();
    assert!(
        reason.contains("3 failed attempts") && reason.contains("no_signal"),
        "{reason}"
    );
    let (changed_state, changed_reason): (String, String) =
        sqlx::query_as("SELECT state, reason FROM address_state_changes ORDER BY id DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (changed_state.as_str(), changed_reason),
        ("removed", reason)
    );

    // Many failures within the period do not remove; a success clears the streak.
    for attempt in 1..=4 {
        event(&t, failed(email, attempt, "temporary", "greylisted", true)).await;
    }
    assert_eq!(
        address_state(&pool, "ann@example.org").await,
        ("active".into(), 4, None)
    );
    event(&t, delivered(email, 5)).await;
    assert_eq!(address_state(&pool, "ann@example.org").await.1, 0);
    // An unhealthy provider says nothing about the address.
    let telegram = job(&jobs, Channel::Telegram);
    event(&t, failed(telegram, 1, "unhealthy", "provider_down", false)).await;
    assert_eq!(
        address_state(&pool, "4242").await,
        ("active".into(), 0, None)
    );
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_events_are_dead_lettered_with_their_reason(pool: PgPool) {
    let h = Harness::new(pool.clone(), "tracking_bad").await;
    let t = tracker(&h, LENIENT);
    let (_, jobs) = three_jobs(&h).await;

    let mut unknown = delivered(&jobs[0], 1);
    unknown["deliveryId"] = json!(Uuid::now_v7());
    let Outcome::DeadLetter(r) = event(&t, unknown).await else {
        panic!("not dead-lettered")
    };
    assert_eq!(r.code, "unknown_delivery");

    // Another tenant's key does not reach acme's delivery.
    let mut foreign = delivered(&jobs[0], 1);
    foreign["tenant"] = json!("globex");
    let Outcome::DeadLetter(r) = event(&t, foreign).await else {
        panic!("not dead-lettered")
    };
    assert_eq!(r.code, "unknown_delivery");
    assert_eq!(delivery(&pool, jobs[0].delivery_id).await.0, "pending");

    let Outcome::DeadLetter(r) = event(&t, json!({"hello": "world"})).await else {
        panic!()
    };
    assert_eq!(r.code, "unknown_event");
    let mut wrong = delivered(&jobs[0], 1);
    wrong["attempt"] = json!("one");
    let Outcome::DeadLetter(r) = event(&t, wrong).await else {
        panic!()
    };
    assert_eq!(r.code, "invalid");
    assert!(t.decode(b"{not json").is_err());
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_contact_link_makes_the_chat_a_verified_address_once(pool: PgPool) {
    let h = Harness::new(pool.clone(), "tracking_contact").await;
    let t = tracker(&h, LENIENT);
    let bea = h.user("bea", None, None, "all").await;
    let mut conn = pool.acquire().await.unwrap();
    let issued = link_codes::issue(
        &mut conn,
        LINK_KEY,
        h.tenant_id,
        bea,
        Some(messaging_core::Channel::Telegram),
        chrono::Duration::minutes(15),
    )
    .await
    .unwrap();
    drop(conn);
    let link = |code: &str| {
        json!({
            "version": 1, "channel": "telegram", "linkCode": code,
            "address": {"kind": "telegram", "value": 777001}, "displayName": "@bea", "occurredAt": Utc::now()
        })
    };
    assert_eq!(event(&t, link(&issued.code)).await, Outcome::Ack);
    let (verified, display): (bool, Option<String>) = sqlx::query_as(
        "SELECT verified, display_name FROM addresses WHERE user_id = $1 AND channel = 'telegram'",
    )
    .bind(bea)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(verified);
    assert_eq!(display.as_deref(), Some("@bea"));

    // Used codes and made-up codes link nothing and do not clog the queue.
    assert_eq!(event(&t, link(&issued.code)).await, Outcome::Ack);
    assert_eq!(event(&t, link("ZZZZZZZZ")).await, Outcome::Ack);
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM addresses WHERE channel = 'telegram'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(count, 1);
    h.finish().await;
}

/// A message stored as the API stores one, to be given a state by the test.
async fn api_message(h: &Harness) -> herald_storage::messages::Message {
    let (message, _) = herald_storage::messages::accept(
        &mut h.pool.acquire().await.unwrap(),
        herald_storage::messages::NewMessage {
            tenant_id: h.tenant_id,
            idempotency_key: None,
            source: messaging_core::MessageSource::Api,
            subscription_id: None,
            request: &json!({}),
            exchange: "nowhere",
            routing_key: "api",
        },
    )
    .await
    .unwrap();
    message
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_outcome_nobody_published_goes_out_with_the_sweep(pool: PgPool) {
    let h = Harness::new(pool.clone(), "outcome_sweep").await;
    let outcomes = Outcomes::new(h.pool.clone(), h.publisher.clone(), h.names.clone());
    let queue = h
        .inspector
        .temporary_queue(&h.names.events_exchange(), "outcome.acme")
        .await;
    // A message the outbox relay gave up: failed, its outcome never published.
    let message = api_message(&h).await;
    sqlx::query(
        "UPDATE messages SET status = 'failed', error_code = 'unroutable',
             error_message = 'no queue', completed_at = now() - interval '1 minute'
         WHERE id = $1",
    )
    .bind(message.id)
    .execute(&pool)
    .await
    .unwrap();

    // Too recent for this look: the usual path gets its chance first.
    let earlier = Utc::now() - chrono::Duration::minutes(5);
    assert_eq!(outcomes.sweep_once(earlier).await.unwrap(), 0);
    assert_eq!(outcomes.sweep_once(Utc::now()).await.unwrap(), 1);
    assert_eq!(outcomes.sweep_once(Utc::now()).await.unwrap(), 0, "once");
    let published = h
        .inspector
        .wait_get(&queue, Duration::from_secs(5))
        .await
        .expect("the outcome");
    let outcome: MessageOutcome = serde_json::from_slice(&published.delivery.data).unwrap();
    assert_eq!(outcome.message_id, message.id);
    let error = outcome.error.expect("the message's error");
    assert_eq!(
        (error.class.as_str(), error.code.as_str()),
        ("unhealthy", "unroutable")
    );
    h.finish().await;
}

/// #16 review: outcomes are published for several messages at once; a reply that the
/// broker refuses keeps only its own message's outcome for later.
#[sqlx::test(migrations = "../../migrations")]
async fn a_reply_the_broker_refuses_holds_back_only_its_own_outcome(pool: PgPool) {
    let h = Harness::new(pool.clone(), "outcome_reply_refused").await;
    let outcomes = Outcomes::new(h.pool.clone(), h.publisher.clone(), h.names.clone());
    let prefix = h.names.reply_queue_prefix("acme");
    // A reply queue that is full for good: the broker nacks what is published to it.
    let full = format!("{prefix}full");
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(0),
    );
    arguments.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    h.inspector
        .channel()
        .queue_declare(
            full.as_str().into(),
            lapin::options::QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    let fine = h
        .inspector
        .named_temporary_queue(&format!("{prefix}fine"))
        .await;
    let mut ids = Vec::new();
    for reply_to in [&full, &fine] {
        let message = api_message(&h).await;
        sqlx::query(
            "UPDATE messages SET status = 'completed', completed_at = now(), reply_to = $2
             WHERE id = $1",
        )
        .bind(message.id)
        .bind(reply_to)
        .execute(&pool)
        .await
        .unwrap();
        ids.push(message.id);
    }

    assert_eq!(outcomes.publish_due(&ids).await.unwrap(), 1);
    let published: Vec<(Uuid, bool)> = sqlx::query_as(
        "SELECT id, outcome_published_at IS NOT NULL FROM messages WHERE id = ANY($1) ORDER BY id",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await
    .unwrap();
    let published: HashMap<Uuid, bool> = published.into_iter().collect();
    assert!(
        !published[&ids[0]],
        "the refused reply's outcome waits for the sweep"
    );
    assert!(published[&ids[1]], "the other one is done");
    assert!(
        h.inspector
            .wait_get(&fine, Duration::from_secs(5))
            .await
            .is_some(),
        "the other reply arrived"
    );
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_sweep_leaves_outcomes_older_than_a_day_alone(pool: PgPool) {
    let h = Harness::new(pool.clone(), "outcome_sweep_old").await;
    let outcomes = Outcomes::new(h.pool.clone(), h.publisher.clone(), h.names.clone());
    // Finished two days ago and never answered (say, before outcomes existed).
    sqlx::query(
        "INSERT INTO messages (id, tenant_id, source, request, status, completed_at)
         VALUES ($1, $2, 'api', '{}', 'completed', now() - interval '2 days')",
    )
    .bind(Uuid::now_v7())
    .bind(h.tenant_id)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(outcomes.sweep_once(Utc::now()).await.unwrap(), 0);
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_contact_link_is_answered_through_the_outbox_and_a_repeat_answers_the_same(pool: PgPool) {
    let h = Harness::new(pool.clone(), "tracking_contact_answer").await;
    let t = tracker(&h, LENIENT);
    let bea = h.user("bea", None, None, "all").await;
    let mut conn = pool.acquire().await.unwrap();
    let issued = link_codes::issue(
        &mut conn,
        LINK_KEY,
        h.tenant_id,
        bea,
        None,
        chrono::Duration::minutes(15),
    )
    .await
    .unwrap();
    drop(conn);
    let link = |code: &str, chat: i64| {
        json!({
            "version": 1, "channel": "telegram", "linkCode": code,
            "address": {"kind": "telegram", "value": chat}, "occurredAt": Utc::now()
        })
    };
    assert_eq!(
        event_with_id(&t, link(&issued.code, 555), Some("ev-1")).await,
        Outcome::Ack
    );
    // The same event again (a router that died before its ack): the chat redeemed this code
    // already, so it is told "linked" again, under the same answer id.
    assert_eq!(
        event_with_id(&t, link(&issued.code, 555), Some("ev-1")).await,
        Outcome::Ack
    );
    // Another chat with the used code, and a made-up code: "invalid".
    assert_eq!(
        event_with_id(&t, link(&issued.code, 556), Some("ev-2")).await,
        Outcome::Ack
    );
    assert_eq!(
        event_with_id(&t, link("ZZZZ2345", 557), Some("ev-3")).await,
        Outcome::Ack
    );
    let said = answers(&pool).await;
    let kinds: Vec<(&str, Value)> = said
        .iter()
        .map(|(_, k, c)| (k.as_str(), c.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("linked", json!(555)),
            ("linked", json!(555)),
            ("invalid_code", json!(556)),
            ("invalid_code", json!(557)),
        ]
    );
    assert_eq!(said[0].0, said[1].0, "a repeat answers with the same id");
    let outbox = outbox(&pool).await;
    assert!(outbox.iter().all(
        |(exchange, key, _, _)| exchange == &h.names.events_exchange() && key == "answer.telegram"
    ));
    let linked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM addresses WHERE user_id = $1 AND verified AND value = '555'",
    )
    .bind(bea)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(linked, 1);
    h.finish().await;
}

fn support_request(request_id: Uuid, chat: i64, text: &str) -> Value {
    json!({
        "version": 1, "requestId": request_id, "channel": "telegram",
        "chat": {"kind": "telegram", "value": chat}, "supportText": text,
        "displayName": "@bea", "occurredAt": Utc::now()
    })
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_support_request_opens_one_ticket_tells_the_staff_and_answers(pool: PgPool) {
    let h = Harness::new(pool.clone(), "tracking_support").await;
    let t = tracker(&h, LENIENT);
    let bea = h.user("bea", None, None, "all").await;
    h.address(bea, "telegram", "4242").await;
    let staff = h.subscription("support_staff", "en").await;
    herald_storage::support::set_staff_subscription(&pool, h.tenant_id, Some(staff))
        .await
        .unwrap();

    let request = Uuid::now_v7();
    let body = support_request(request, 4242, "my parcel is late");
    assert_eq!(event(&t, body.clone()).await, Outcome::Ack);
    // Redelivered: nothing new.
    assert_eq!(event(&t, body).await, Outcome::Ack);

    type TicketRow = (Uuid, String, String, Option<Uuid>, Option<Uuid>);
    let tickets: Vec<TicketRow> = sqlx::query_as(
        "SELECT id, state, body, user_id, message_id FROM support_tickets WHERE tenant_id = $1",
    )
    .bind(h.tenant_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(tickets.len(), 1);
    let (ticket_id, state, text, user, message_id) = tickets[0].clone();
    assert_eq!(
        (state.as_str(), text.as_str(), user),
        ("open", "my parcel is late", Some(bea))
    );
    // The staff's message: stored, subscription support_staff, on its way to the router.
    let message_id = message_id.expect("the staff were told");
    let (source, subscription): (String, Option<Uuid>) =
        sqlx::query_as("SELECT source, subscription_id FROM messages WHERE id = $1")
            .bind(message_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((source.as_str(), subscription), ("event", Some(staff)));
    let outbox = outbox(&pool).await;
    let to_router: Vec<&Value> = outbox
        .iter()
        .filter(|(exchange, _, _, _)| exchange == &h.names.ingress_exchange())
        .map(|(_, _, _, body)| body)
        .collect();
    assert_eq!(to_router.len(), 1);
    assert_eq!(to_router[0]["to"], json!({"subscription": "support_staff"}));
    assert_eq!(
        to_router[0]["content"]["template"]["data"]["text"],
        json!("my parcel is late")
    );
    assert_eq!(
        to_router[0]["content"]["template"]["data"]["ticketId"],
        json!(ticket_id)
    );
    // And the person is told, once.
    let said = answers(&pool).await;
    assert_eq!(said.len(), 1);
    assert_eq!(
        (said[0].1.as_str(), &said[0].2),
        ("ticket_opened", &json!(4242))
    );
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_support_request_from_a_chat_linked_to_nobody_is_told_to_link_first(pool: PgPool) {
    let h = Harness::new(pool.clone(), "tracking_support_unlinked").await;
    let t = tracker(&h, LENIENT);
    // An address typed in but never proven is not a link.
    let bea = h.user("bea", None, None, "all").await;
    h.unproven_address(bea, "telegram", "4242").await;
    assert_eq!(
        event(&t, support_request(Uuid::now_v7(), 4242, "hello")).await,
        Outcome::Ack
    );
    let tickets: i64 = sqlx::query_scalar("SELECT count(*) FROM support_tickets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tickets, 0);
    let said = answers(&pool).await;
    assert_eq!(said.len(), 1);
    assert_eq!(said[0].1, "not_linked");
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_teams_chat_seen_at_a_new_service_url_moves_its_addresses_there(pool: PgPool) {
    let h = Harness::new(pool.clone(), "tracking_chat_seen").await;
    let t = tracker(&h, LENIENT);
    let old = "https://smba.example/emea/ a:1chat";
    let new = "https://smba.example/amer/ a:1chat";
    let bea = h.user("bea", None, None, "all").await;
    let bea_chat = h.address(bea, "teams", old).await;
    // Cid linked the chat again at its new place: the old address would double every message.
    let cid = h.user("cid", None, None, "all").await;
    let cid_old = h.address(cid, "teams", old).await;
    let cid_new = h.address(cid, "teams", new).await;
    // Unreachable stays unreachable (R6): the person links again.
    let dan = h.user("dan", None, None, "all").await;
    let dan_chat = h.address(dan, "teams", old).await;
    sqlx::query("UPDATE addresses SET state = 'unreachable' WHERE id = $1")
        .bind(dan_chat)
        .execute(&pool)
        .await
        .unwrap();
    let other_chat = h
        .address(bea, "teams", "https://smba.example/emea/ a:1other")
        .await;
    // Bea asked for help from the chat: staff replies must follow it too.
    let ticket = |state: &'static str| {
        let pool = pool.clone();
        let tenant_id = h.tenant_id;
        async move {
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO support_tickets (id, tenant_id, request_id, user_id, channel, chat_kind, chat, body, state)
                 VALUES ($1, $2, $1, $3, 'teams', 'teams', $4, 'help', $5)",
            )
            .bind(id)
            .bind(tenant_id)
            .bind(bea)
            .bind(old)
            .bind(state)
            .execute(&pool)
            .await
            .unwrap();
            id
        }
    };
    let (open_ticket, closed_ticket) = (ticket("open").await, ticket("closed").await);

    let seen = |chat: &str| {
        json!({
            "version": 1, "channel": "teams",
            "chat": {"kind": "teams", "value": chat}, "seenAt": Utc::now(),
            "reference": {"tenantId": "tenant-1", "userId": "29:1bea"}
        })
    };
    assert_eq!(event(&t, seen(new)).await, Outcome::Ack);
    let state = |id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, String)>(
                "SELECT value, state FROM addresses WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(state(bea_chat).await, (new.to_owned(), "active".to_owned()));
    assert_eq!(state(cid_old).await, (old.to_owned(), "removed".to_owned()));
    assert_eq!(state(cid_new).await, (new.to_owned(), "active".to_owned()));
    assert_eq!(
        state(dan_chat).await,
        (old.to_owned(), "unreachable".to_owned())
    );
    assert_eq!(
        state(other_chat).await.0,
        "https://smba.example/emea/ a:1other"
    );
    let reference: Option<Value> =
        sqlx::query_scalar("SELECT chat_reference FROM addresses WHERE id = $1")
            .bind(bea_chat)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        reference,
        Some(json!({"tenantId": "tenant-1", "userId": "29:1bea"}))
    );
    let chat_of = |id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT chat FROM support_tickets WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(chat_of(open_ticket).await, new);
    assert_eq!(
        chat_of(closed_ticket).await,
        old,
        "a closed ticket is history"
    );
    let history: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT address_id, state, reason FROM address_state_changes ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history.contains(&(
        bea_chat,
        "active".to_owned(),
        format!("moved: from {old} to {new}")
    )));
    assert!(
        history
            .iter()
            .any(|(id, state, _)| *id == cid_old && state == "removed")
    );

    // Seen again, or seen by a second replica: nothing more changes.
    assert_eq!(event(&t, seen(new)).await, Outcome::Ack);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM address_state_changes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 2);

    // Only Teams conversations move.
    let telegram = json!({
        "version": 1, "channel": "telegram",
        "chat": {"kind": "telegram", "value": 777001}, "seenAt": Utc::now()
    });
    let Outcome::DeadLetter(r) = event(&t, telegram).await else {
        panic!("a Telegram chat cannot move");
    };
    assert_eq!(r.code, "invalid");
    h.finish().await;
}

/// Issue #16: delivery events that wait together are recorded as one group: each delivery
/// once, every message completed, every outcome published once; an unknown delivery in the
/// group is dead-lettered alone, a repeated event changes nothing.
#[sqlx::test(migrations = "../../migrations")]
async fn delivery_events_waiting_together_are_recorded_as_a_group(pool: PgPool) {
    const MESSAGES: usize = 20;
    let h = Harness::new(pool.clone(), "tracking_grouped").await;
    let t = tracker(&h, LENIENT).with_grouping(herald_runtime::batching::BatchSettings {
        max: 128,
        linger: Duration::from_millis(200),
        parallel: 1,
        name: "test",
    });
    let ann = h.user("ann", None, None, "all").await;
    h.address(ann, "email", "ann@example.org").await;
    h.address(ann, "sms", "+41791234567").await;
    h.address(ann, "telegram", "4242").await;
    for i in 0..MESSAGES {
        let body = json!({
            "version": 1, "kind": "notify", "tenant": "acme", "idempotencyKey": format!("m-{i}"),
            "to": {"users": ["ann"]}, "content": {"direct": {"body": "Hello"}}
        });
        assert_eq!(h.handle(&body, None).await, Outcome::Ack);
    }
    let jobs = h.all_jobs().await;
    assert_eq!(jobs.len(), 3 * MESSAGES);
    let outcomes = h
        .inspector
        .temporary_queue(&h.names.events_exchange(), "outcome.acme")
        .await;

    let blocked = jobs
        .iter()
        .find(|j| j.channel() == Channel::Telegram)
        .unwrap();
    let mut events: Vec<Value> = jobs
        .iter()
        .map(|j| {
            if j.delivery_id == blocked.delivery_id {
                failed(j, 1, "permanent", "blocked", false)
            } else {
                delivered(j, 1)
            }
        })
        .collect();
    // A repeat (the sender reported twice): not of the blocked delivery, whose attempt 1
    // would then have two different results.
    let repeated = jobs
        .iter()
        .find(|j| j.delivery_id != blocked.delivery_id)
        .unwrap();
    events.push(delivered(repeated, 1));
    let mut stranger = jobs[0].clone();
    stranger.delivery_id = Uuid::now_v7();
    events.push(delivered(&stranger, 1));
    let answers = futures::future::join_all(events.into_iter().map(|e| event(&t, e))).await;
    let (unknown, rest): (Vec<_>, Vec<_>) = answers
        .into_iter()
        .partition(|a| matches!(a, Outcome::DeadLetter(r) if r.code == "unknown_delivery"));
    assert_eq!(unknown.len(), 1);
    assert!(rest.iter().all(|a| *a == Outcome::Ack), "{rest:?}");

    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        [
            ("failed".to_owned(), 1),
            ("sent".to_owned(), 3 * MESSAGES as i64 - 1)
        ]
    );
    let (completed, completions): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'completed'), count(DISTINCT completed_at)
         FROM messages",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(completed, MESSAGES as i64);
    // Completed together: one statement's time per group.
    assert!(completions <= 2, "{completions} completion times");
    assert_eq!(address_state(&pool, "4242").await.0, "unreachable");
    assert_eq!(outcomes_once(&h, &outcomes).await, MESSAGES);
    h.finish().await;
}

/// The outcomes on `queue` until it stays empty; each message's must come once. Returns
/// how many messages had one.
async fn outcomes_once(h: &Harness, queue: &str) -> usize {
    let mut published = HashSet::new();
    while let Some(outcome) = h
        .inspector
        .wait_get(queue, Duration::from_millis(500))
        .await
    {
        let outcome: MessageOutcome = serde_json::from_slice(&outcome.delivery.data).unwrap();
        assert!(
            published.insert(outcome.message_id),
            "one outcome per message"
        );
    }
    published.len()
}

/// Issue #16: a sender's bundle of `delivered` events is recorded as if each had come alone
/// (grouped here), and acked; an event the router refuses for good and an item that is no
/// event are split out, published alone on the events exchange, where the consumer
/// dead-letters each with its own reason, and they hold nothing else back.
#[sqlx::test(migrations = "../../migrations")]
async fn a_bundle_of_delivered_events_is_recorded_and_what_is_refused_is_split_out(pool: PgPool) {
    const MESSAGES: usize = 6;
    let h = Harness::new(pool.clone(), "tracking_bundle").await;
    let t = tracker(&h, LENIENT).with_grouping(herald_runtime::batching::BatchSettings {
        max: 128,
        linger: Duration::from_millis(50),
        parallel: 1,
        name: "test",
    });
    let ann = h.user("ann", None, None, "all").await;
    h.address(ann, "sms", "+41791234567").await;
    for i in 0..MESSAGES {
        let body = json!({
            "version": 1, "kind": "notify", "tenant": "acme", "idempotencyKey": format!("b-{i}"),
            "to": {"users": ["ann"]}, "content": {"direct": {"body": "Hello"}}
        });
        assert_eq!(h.handle(&body, None).await, Outcome::Ack);
    }
    let jobs = h.all_jobs().await;
    assert_eq!(jobs.len(), MESSAGES);
    let outcomes = h
        .inspector
        .temporary_queue(&h.names.events_exchange(), "outcome.acme")
        .await;
    let split = h
        .inspector
        .temporary_queue(&h.names.events_exchange(), "delivery.#")
        .await;

    let mut items: Vec<Value> = jobs.iter().map(|j| delivered(j, 1)).collect();
    let mut stranger = jobs[0].clone();
    stranger.delivery_id = Uuid::now_v7();
    items.push(delivered(&stranger, 1));
    items.push(json!({"deliveryId": "not-a-uuid"}));
    let bundle = json!({"version": 1, "events": items});
    assert_eq!(event(&t, bundle.clone()).await, Outcome::Ack);

    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'sent'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sent, MESSAGES as i64);
    assert_eq!(outcomes_once(&h, &outcomes).await, MESSAGES);

    // The two refused items, each alone, and each refused alone with its reason.
    let mut reasons = Vec::new();
    while let Some(item) = h
        .inspector
        .wait_get(&split, Duration::from_millis(500))
        .await
    {
        let body: Value = serde_json::from_slice(&item.delivery.data).unwrap();
        assert!(body.get("events").is_none(), "split out alone: {body}");
        match event(&t, body).await {
            Outcome::DeadLetter(r) => reasons.push(r.code),
            other => panic!("a refused item comes back refused, not {other:?}"),
        }
    }
    reasons.sort();
    assert_eq!(reasons, ["invalid", "unknown_delivery"]);

    // The same bundle again (the sender's confirm was lost): nothing changes, no outcome
    // twice; its refused items are split out again, to be dead-lettered again.
    assert_eq!(event(&t, bundle).await, Outcome::Ack);
    assert!(
        h.inspector
            .wait_get(&outcomes, Duration::from_millis(300))
            .await
            .is_none()
    );
    h.finish().await;
}
