//! The send-queue watchdog against the real PostgreSQL and RabbitMQ: jobs nothing consumes are
//! reported failed (unhealthy, no_sender) and the message completes (R4 c); a sender that is
//! up but paused (a consumer on the standby queue) keeps its jobs queued.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use fanout_router::outcome::Outcomes;
use fanout_router::tracking::TrackingHandler;
use fanout_router::watchdog::{QueueReport, SendQueueWatchdog};
use herald_runtime::amqp::delivery_events::Events;
use herald_runtime::amqp::{Broker, Handler, Outcome, Publisher};
use herald_storage::tracking::RemovalPolicy;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use messaging_core::Channel;
use messaging_core::events::{AttemptResult, DeliveryEvent};
use messaging_core::failure::FailureClass;
use serde_json::json;
use sqlx::PgPool;
use support::{Harness, context};

fn watchdog(h: &Harness, no_sender_after: Duration) -> SendQueueWatchdog {
    let broker = Broker::new(h.amqp.clone(), "test-router");
    SendQueueWatchdog::new(
        broker.clone(),
        h.names.clone(),
        h.pool.clone(),
        Events::new(Publisher::new(broker, "watchdog-events"), &h.names),
        Duration::from_secs(10),
        Some(no_sender_after),
    )
}

/// One direct message to Ann, who has the given Telegram chats; its jobs wait in the queue.
async fn telegram_jobs(h: &Harness, chats: &[&str]) {
    let ann = h.user("ann", None, None, "all").await;
    for chat in chats {
        h.address(ann, "telegram", chat).await;
    }
    let body = json!({
        "version": 1, "kind": "notify", "tenant": "acme", "idempotencyKey": "m-1",
        "to": {"users": ["ann"]}, "content": {"direct": {"body": "Hello"}}
    });
    assert_eq!(h.handle(&body, None).await, Outcome::Ack);
    let queue = h.names.send_queue(Channel::Telegram);
    // One request's jobs for one channel travel as one bundle (issue #16).
    assert_eq!(h.inspector.queue_len(&queue).await, 1);
}

/// A queue that receives every delivery event published under the test's prefix.
async fn delivery_events(h: &Harness) -> String {
    h.inspector
        .temporary_queue(&h.names.events_exchange(), "delivery.#")
        .await
}

/// The next delivery event on `queue`, within 5 s.
async fn next_event(h: &Harness, queue: &str) -> DeliveryEvent {
    let published = h
        .inspector
        .wait_get(queue, Duration::from_secs(5))
        .await
        .expect("a delivery event");
    serde_json::from_slice(&published.delivery.data).expect("a delivery event")
}

/// `n` looks a second apart: the first starts the clock, every later one is past the
/// watchdog's 1 ms limit.
async fn ticks(dog: &mut SendQueueWatchdog, n: u64) -> Vec<Vec<QueueReport>> {
    let start = Instant::now();
    let mut all = Vec::new();
    for later in 0..n {
        let reports = dog
            .tick_at(start + Duration::from_secs(later))
            .await
            .expect("tick");
        all.push(reports);
    }
    all
}

fn telegram(reports: &[QueueReport]) -> &QueueReport {
    reports
        .iter()
        .find(|r| r.channel == Channel::Telegram)
        .expect("a report for telegram")
}

#[sqlx::test(migrations = "../../migrations")]
async fn jobs_nothing_consumes_are_reported_failed_as_unhealthy_and_the_message_completes(
    pool: PgPool,
) {
    let h = Harness::new(pool.clone(), "watchdog_drain").await;
    let events = delivery_events(&h).await;
    telegram_jobs(&h, &["4242"]).await;
    let mut dog = watchdog(&h, Duration::from_millis(1));

    // The first look only starts the clock; a later one, past the limit, drains.
    let [first, second]: [Vec<QueueReport>; 2] = ticks(&mut dog, 2).await.try_into().unwrap();
    assert_eq!(telegram(&first).withdrawn, 0);
    assert_eq!(telegram(&first).consumers, 0);
    assert_eq!(telegram(&second).withdrawn, 1);
    let queue = h.names.send_queue(Channel::Telegram);
    assert_eq!(h.inspector.queue_len(&queue).await, 0);

    let published = h
        .inspector
        .wait_get(&events, Duration::from_secs(5))
        .await
        .expect("a delivery event");
    assert_eq!(
        published.delivery.routing_key.as_str(),
        "delivery.telegram.failed"
    );
    let event: DeliveryEvent = serde_json::from_slice(&published.delivery.data).unwrap();
    assert_eq!(event.attempt, 1);
    let AttemptResult::Failed { failure } = &event.result else {
        panic!("a failed attempt expected: {event:?}");
    };
    assert_eq!(failure.class, FailureClass::Unhealthy);
    assert_eq!(failure.code, "no_sender");

    // The router's tracking consumer records it as it would any sender's event.
    let tracker = TrackingHandler::new(
        pool.clone(),
        Outcomes::new(pool.clone(), h.publisher.clone(), h.names.clone()),
        RemovalPolicy {
            after: chrono::Duration::days(7),
            failures: 5,
        },
        Duration::from_secs(1),
    );
    let decoded = tracker.decode(&published.delivery.data).expect("decodes");
    assert_eq!(tracker.handle(decoded, &context(None)).await, Outcome::Ack);

    let (message_id, status, _, _) = h.message().await;
    assert_eq!(status, "completed");
    let deliveries = h.deliveries(message_id).await;
    assert_eq!(deliveries.len(), 1);
    let (_, _, _, status, class, code, _) = &deliveries[0];
    assert_eq!(
        (status.as_str(), class.as_deref(), code.as_deref()),
        ("failed", Some("unhealthy"), Some("no_sender"))
    );
    h.finish().await;
}

/// Issue #16: a bundle of jobs is withdrawn as its jobs, each reported failed.
#[sqlx::test(migrations = "../../migrations")]
async fn a_bundle_nothing_consumes_is_withdrawn_job_by_job(pool: PgPool) {
    let h = Harness::new(pool.clone(), "watchdog_bundle").await;
    let events = delivery_events(&h).await;
    telegram_jobs(&h, &["4242", "4343", "4444"]).await;
    let mut dog = watchdog(&h, Duration::from_millis(1));
    let [_, second]: [Vec<QueueReport>; 2] = ticks(&mut dog, 2).await.try_into().unwrap();
    assert_eq!(telegram(&second).withdrawn, 3);
    let queue = h.names.send_queue(Channel::Telegram);
    assert_eq!(h.inspector.queue_len(&queue).await, 0);
    let (message_id, _, _, _) = h.message().await;
    let deliveries: std::collections::HashSet<uuid::Uuid> = h
        .deliveries(message_id)
        .await
        .into_iter()
        .map(|d| d.0)
        .collect();
    let mut reported = std::collections::HashSet::new();
    for _ in 0..3 {
        let event = next_event(&h, &events).await;
        assert_eq!(event.result.status(), "failed");
        reported.insert(event.delivery_id);
    }
    assert_eq!(reported, deliveries, "each job of the bundle reported once");
    assert!(h.inspector.get(&events).await.is_none());
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_queue_with_a_consumer_is_not_drained(pool: PgPool) {
    let h = Harness::new(pool, "watchdog_consumed").await;
    let events = delivery_events(&h).await;
    telegram_jobs(&h, &["4242"]).await;
    let again = json!({
        "version": 1, "kind": "notify", "tenant": "acme", "idempotencyKey": "m-2",
        "to": {"users": ["ann"]}, "content": {"direct": {"body": "Hello again"}}
    });
    assert_eq!(h.handle(&again, None).await, Outcome::Ack);
    // A sender that holds one job at a time: the other stays ready in the queue.
    let queue = h.names.send_queue(Channel::Telegram);
    let sender = h.inspector.connection().create_channel().await.unwrap();
    sender
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let _consumer = sender
        .basic_consume(
            queue.as_str().into(),
            "test-sender".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut dog = watchdog(&h, Duration::from_millis(1));

    for reports in ticks(&mut dog, 3).await {
        assert_eq!(telegram(&reports).consumers, 1);
        assert_eq!(telegram(&reports).withdrawn, 0);
    }
    assert_eq!(h.inspector.queue_len(&queue).await, 1);
    assert!(h.inspector.get(&events).await.is_none());
    let _ = sender.close(200, "done".into()).await;
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_sender_paused_on_the_standby_queue_keeps_its_jobs_queued(pool: PgPool) {
    let h = Harness::new(pool, "watchdog_paused").await;
    let events = delivery_events(&h).await;
    telegram_jobs(&h, &["4242"]).await;
    // What a sender whose breaker is open holds: no consumer on the send queue, one on the
    // standby queue.
    let paused = h.inspector.connection().create_channel().await.unwrap();
    let _standby = paused
        .basic_consume(
            h.names.standby_queue(Channel::Telegram).as_str().into(),
            "test-paused-sender".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut dog = watchdog(&h, Duration::from_millis(1));

    for reports in ticks(&mut dog, 3).await {
        let report = telegram(&reports);
        assert_eq!((report.consumers, report.standby_consumers), (0, 1));
        assert_eq!(report.withdrawn, 0);
    }
    let queue = h.names.send_queue(Channel::Telegram);
    assert_eq!(h.inspector.queue_len(&queue).await, 1);
    assert!(h.inspector.get(&events).await.is_none());
    // What the API tells a producer about the waiting job (issue #18): the channel stalls
    // because its provider does.
    let health = herald_storage::channel_health::current(&h.pool, 60)
        .await
        .unwrap();
    let tg = health
        .iter()
        .find(|c| c.channel == Channel::Telegram)
        .unwrap();
    assert_eq!((tg.senders, tg.paused, tg.waiting), (0, 1, 1));
    assert_eq!(tg.stalled().unwrap().code, "provider_unavailable");
    assert_eq!(
        health.len(),
        Channel::ALL.len(),
        "every channel is recorded"
    );
    let _ = paused.close(200, "done".into()).await;
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_topology_without_standby_queues_counts_as_no_paused_sender(pool: PgPool) {
    let h = Harness::new(pool, "watchdog_no_standby").await;
    telegram_jobs(&h, &["4242"]).await;
    // As declared by a Herald from before standby queues.
    for kind in Channel::ALL {
        h.inspector
            .channel()
            .queue_delete(
                h.names.standby_queue(kind).as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .unwrap();
    }
    let mut dog = watchdog(&h, Duration::from_millis(1));

    let [first, second]: [Vec<QueueReport>; 2] = ticks(&mut dog, 2).await.try_into().unwrap();
    // Every channel was looked at: each 404 cost only a channel, not the tick.
    assert_eq!(first.len(), Channel::ALL.len());
    assert_eq!(telegram(&first).standby_consumers, 0);
    assert_eq!(telegram(&second).withdrawn, 1);
    let queue = h.names.send_queue(Channel::Telegram);
    assert_eq!(h.inspector.queue_len(&queue).await, 0);
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_undecodable_job_goes_to_the_dead_letter_queue_without_an_event(pool: PgPool) {
    let h = Harness::new(pool, "watchdog_poison").await;
    let events = delivery_events(&h).await;
    h.inspector
        .channel()
        .basic_publish(
            h.names.send_exchange().as_str().into(),
            "telegram".into(),
            BasicPublishOptions::default(),
            b"not a job",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let queue = h.names.send_queue(Channel::Telegram);
    let mut dog = watchdog(&h, Duration::from_millis(1));

    let reports = ticks(&mut dog, 2).await.remove(1);
    assert_eq!(
        (
            telegram(&reports).withdrawn,
            telegram(&reports).dead_lettered
        ),
        (0, 1)
    );
    assert_eq!(h.inspector.queue_len(&queue).await, 0);
    let dead = h.names.dead_letter_queue(&queue);
    assert!(
        h.inspector
            .wait_get(&dead, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert!(h.inspector.get(&events).await.is_none());
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_withdrawn_retry_is_reported_as_the_attempt_its_sender_would_have_made(pool: PgPool) {
    let h = Harness::new(pool.clone(), "watchdog_retry").await;
    let events = delivery_events(&h).await;
    telegram_jobs(&h, &["4242"]).await;
    // The job comes back from a sender's delay queue for its third attempt, and tracking has
    // not recorded the sender's earlier events yet (the row still says 0 attempts).
    let queue = h.names.send_queue(Channel::Telegram);
    let job = h.inspector.get(&queue).await.expect("the job");
    let mut headers = FieldTable::default();
    herald_runtime::amqp::headers::set_u64(&mut headers, herald_runtime::amqp::headers::ATTEMPT, 3);
    h.inspector
        .channel()
        .basic_publish(
            h.names.send_exchange().as_str().into(),
            "telegram".into(),
            BasicPublishOptions::default(),
            &job.delivery.data,
            BasicProperties::default().with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let mut dog = watchdog(&h, Duration::from_millis(1));
    let drained = ticks(&mut dog, 2).await.remove(1);
    assert_eq!(telegram(&drained).withdrawn, 1);
    let event = next_event(&h, &events).await;
    // Not 1 (the recorded attempts plus one): tracking would take that for a repeat of the
    // sender's first attempt and drop the withdrawal.
    assert_eq!(event.attempt, 3);
    h.finish().await;
}
