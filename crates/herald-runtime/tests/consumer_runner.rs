//! The consumer runner and publisher against the real RabbitMQ: every message arrives, retries
//! come back after their delay, bad messages are dead-lettered with their reason, connections
//! recover, and shutdown loses nothing.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use herald_runtime::amqp::headers;
use herald_runtime::amqp::{Message, Outcome, PublishError, Rejection};
use herald_testkit::broker::{close_connections_with_prefix, connections_with_prefix};
use support::{Harness, Recording, numbered, wait_until};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_arrive_exactly_once() {
    let h = Harness::new("ten_thousand").await;
    let (handler, mut rx) = Recording::acking();
    let seen = handler.seen.clone();
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(h.consumer(handler, h.settings()).run(stop.clone()));

    const TOTAL: u32 = 10_000;
    let publisher = h.publisher();
    let bodies: Vec<Vec<u8>> = (0..TOTAL).map(numbered).collect();
    for chunk in bodies.chunks(500) {
        let batch: Vec<Message> = chunk.iter().map(|b| h.message(b)).collect();
        publisher.publish_batch(&batch).await.expect("publish");
    }

    let mut distinct = HashSet::new();
    wait_until(&mut rx, Duration::from_secs(120), |(n, _)| {
        distinct.insert(n);
        distinct.len() == TOTAL as usize
    })
    .await;
    stop.cancel();
    consumer.await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), TOTAL as usize, "every message arrived");
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        twice.is_empty(),
        "messages handled more than once: {twice:?}"
    );
    assert_eq!(h.inspector.queue_len(&h.queue()).await, 0);
    assert_eq!(h.inspector.queue_len(&h.dead_queue()).await, 0);
    publisher.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_failure_comes_back_after_its_delay_and_then_succeeds() {
    let h = Harness::new("retry").await;
    let (handler, mut rx) = Recording::new(|_, ctx| {
        if ctx.attempt == 1 {
            Outcome::Retry {
                after: Duration::from_millis(400),
                reason: "provider busy".into(),
            }
        } else {
            assert_eq!(ctx.last_error.as_deref(), Some("provider busy"));
            Outcome::Ack
        }
    });
    let seen = handler.seen.clone();
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(h.consumer(handler, h.settings()).run(stop.clone()));
    let publisher = h.publisher();
    publisher.publish(&h.message(&numbered(1))).await.unwrap();

    let mut first_at = None;
    let mut retried_after = None;
    wait_until(&mut rx, Duration::from_secs(20), |(_, attempt)| {
        match attempt {
            1 => first_at = Some(Instant::now()),
            _ => retried_after = first_at.map(|t| t.elapsed()),
        }
        attempt == 2
    })
    .await;
    stop.cancel();
    consumer.await.unwrap();

    let waited = retried_after.expect("second attempt seen");
    assert!(
        waited >= Duration::from_millis(400),
        "retried after only {waited:?}"
    );
    assert_eq!(seen.lock().unwrap().get(&1), Some(&1));
    assert_eq!(h.inspector.queue_len(&h.dead_queue()).await, 0);
    publisher.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_longer_than_the_largest_delay_level_waits_the_whole_time() {
    let h = Harness::new("long_retry").await;
    // The largest level is 500 ms; asking for 1.3 s chains through it.
    let (handler, mut rx) = Recording::new(|_, ctx| {
        if ctx.attempt == 1 {
            Outcome::Retry {
                after: Duration::from_millis(1_300),
                reason: "retry-after 1.3s".into(),
            }
        } else {
            Outcome::Ack
        }
    });
    let started = handler.started.clone();
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(h.consumer(handler, h.settings()).run(stop.clone()));
    let publisher = h.publisher();
    publisher.publish(&h.message(&numbered(7))).await.unwrap();

    let mut first_at = None;
    let mut waited = None;
    wait_until(&mut rx, Duration::from_secs(20), |(_, attempt)| {
        if attempt == 1 {
            first_at = Some(Instant::now());
        } else {
            waited = first_at.map(|t| t.elapsed());
        }
        attempt == 2
    })
    .await;
    stop.cancel();
    consumer.await.unwrap();
    let waited = waited.unwrap();
    assert!(
        waited >= Duration::from_millis(1_300),
        "handled again after only {waited:?}"
    );
    assert_eq!(
        *started.lock().unwrap(),
        2,
        "the handler is not called while the message waits"
    );
    publisher.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_lands_in_the_dead_letter_queue_with_its_reason() {
    let h = Harness::new("permanent").await;
    let (handler, mut rx) = Recording::new(|_, _| {
        Outcome::DeadLetter(Rejection::new("blocked", "the user blocked the bot"))
    });
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(h.consumer(handler, h.settings()).run(stop.clone()));
    let publisher = h.publisher();
    publisher
        .publish(&h.message(&numbered(3)).message_id("m-3"))
        .await
        .unwrap();
    wait_until(&mut rx, Duration::from_secs(10), |_| true).await;

    let dead = h
        .inspector
        .wait_get(&h.dead_queue(), Duration::from_secs(10))
        .await
        .expect("a dead letter");
    let table = dead.delivery.properties.headers().clone();
    assert_eq!(
        headers::get_str(table.as_ref(), headers::REASON).as_deref(),
        Some("the user blocked the bot")
    );
    assert_eq!(
        headers::get_str(table.as_ref(), headers::REASON_CODE).as_deref(),
        Some("blocked")
    );
    assert_eq!(
        headers::get_str(table.as_ref(), headers::SOURCE_QUEUE),
        Some(h.queue())
    );
    assert_eq!(
        dead.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m-3"),
        "properties survive"
    );
    assert_eq!(
        dead.delivery.data,
        numbered(3),
        "the body is kept as it was"
    );
    stop.cancel();
    consumer.await.unwrap();
    publisher.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_dead_lettered_once_the_attempts_run_out() {
    let h = Harness::new("exhausted").await;
    let (handler, mut rx) = Recording::new(|_, _| Outcome::Retry {
        after: Duration::from_millis(100),
        reason: "still down".into(),
    });
    let mut settings = h.settings();
    settings.max_attempts = 3;
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(h.consumer(handler, settings).run(stop.clone()));
    let publisher = h.publisher();
    publisher.publish(&h.message(&numbered(4))).await.unwrap();
    wait_until(&mut rx, Duration::from_secs(20), |(_, attempt)| {
        attempt == 3
    })
    .await;

    let dead = h
        .inspector
        .wait_get(&h.dead_queue(), Duration::from_secs(10))
        .await
        .expect("a dead letter");
    let table = dead.delivery.properties.headers().clone();
    assert_eq!(
        headers::get_str(table.as_ref(), headers::REASON_CODE).as_deref(),
        Some("retries_exhausted")
    );
    assert!(
        headers::get_str(table.as_ref(), headers::REASON)
            .unwrap()
            .contains("still down")
    );
    assert_eq!(headers::get_u64(table.as_ref(), headers::ATTEMPT), Some(3));
    stop.cancel();
    consumer.await.unwrap();
    publisher.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_dead_lettered_and_the_consumer_goes_on() {
    let h = Harness::new("malformed").await;
    let (handler, mut rx) = Recording::acking();
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(h.consumer(handler, h.settings()).run(stop.clone()));
    let publisher = h.publisher();
    let oversized = vec![b' '; messaging_core::MAX_MESSAGE_BYTES + 1];
    for body in [
        &b"{not json"[..],
        br#"{"n": "seven"}"#,
        &oversized,
        &numbered(8),
    ] {
        publisher.publish(&h.message(body)).await.unwrap();
    }
    wait_until(&mut rx, Duration::from_secs(10), |(n, _)| n == 8).await;

    let mut codes = Vec::new();
    for _ in 0..3 {
        let dead = h
            .inspector
            .wait_get(&h.dead_queue(), Duration::from_secs(10))
            .await
            .expect("a dead letter");
        let table = dead.delivery.properties.headers().clone();
        let code = headers::get_str(table.as_ref(), headers::REASON_CODE).unwrap();
        let reason = headers::get_str(table.as_ref(), headers::REASON).unwrap();
        assert!(!reason.is_empty());
        codes.push(code);
    }
    codes.sort();
    assert_eq!(codes, ["invalid", "malformed", "oversized"]);
    stop.cancel();
    consumer.await.unwrap();
    publisher.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_dead_letters_the_message_and_the_consumer_survives() {
    let h = Harness::new("panic").await;
    let (handler, mut rx) = Recording::new(|m, _| {
        if m.n == 13 {
            panic!("unlucky number");
        }
        Outcome::Ack
    });
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(h.consumer(handler, h.settings()).run(stop.clone()));
    let publisher = h.publisher();
    publisher.publish(&h.message(&numbered(13))).await.unwrap();
    publisher.publish(&h.message(&numbered(14))).await.unwrap();
    wait_until(&mut rx, Duration::from_secs(10), |(n, _)| n == 14).await;
    let dead = h
        .inspector
        .wait_get(&h.dead_queue(), Duration::from_secs(10))
        .await
        .expect("a dead letter");
    let table = dead.delivery.properties.headers().clone();
    assert_eq!(
        headers::get_str(table.as_ref(), headers::REASON_CODE).as_deref(),
        Some("handler_panic")
    );
    assert!(
        headers::get_str(table.as_ref(), headers::REASON)
            .unwrap()
            .contains("unlucky number")
    );
    stop.cancel();
    consumer.await.unwrap();
    publisher.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_message_is_an_error_not_a_silent_drop() {
    let h = Harness::new("unroutable").await;
    let publisher = h.publisher();
    let body = numbered(1);
    let err = publisher
        .publish(&Message::new(
            h.topology.names().send_exchange(),
            "fax",
            &body,
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Unroutable { .. }), "{err}");
    assert!(err.to_string().contains("fax"));
    // An outcome nobody binds: dropped by the broker, not returned (with its body) to us.
    publisher
        .publish(
            &Message::new(
                h.topology.names().events_exchange(),
                "outcome.nobody",
                &body,
            )
            .unroutable_is_fine(),
        )
        .await
        .expect("confirmed, not returned");
    publisher.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_and_publisher_recover_when_the_broker_closes_their_connections() {
    let h = Harness::new("reconnect").await;
    let (handler, mut rx) = Recording::acking();
    let seen = handler.seen.clone();
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(h.consumer(handler, h.settings()).run(stop.clone()));

    // The producer publishes until told how far to go: told only after the close, so the
    // close always lands while it is publishing, however long `rabbitmqctl` takes on a busy
    // machine (a fixed pace once finished before the close in CI).
    const OPEN: u32 = u32::MAX;
    let last = Arc::new(AtomicU32::new(OPEN));
    let sent = Arc::new(AtomicU32::new(0));
    let publisher = h.publisher();
    let producer = {
        let publisher = publisher.clone();
        let queue = h.queue();
        let last = last.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut start = 0u32;
            while start < last.load(Ordering::SeqCst) {
                let bodies: Vec<Vec<u8>> = (start..start + 50).map(numbered).collect();
                let batch: Vec<Message> = bodies
                    .iter()
                    .map(|b| Message::new("", queue.clone(), b))
                    .collect();
                publisher
                    .publish_batch(&batch)
                    .await
                    .expect("publish survives the reconnect");
                start += 50;
                sent.store(start, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            start
        })
    };

    // Let both sides get going, then have the broker close every connection of this test.
    let mut distinct = HashSet::new();
    wait_until(&mut rx, Duration::from_secs(30), |(n, _)| {
        distinct.insert(n);
        distinct.len() >= 300
    })
    .await;
    let closed = close_connections_with_prefix(&h.prefix)
        .await
        .expect("close connections");
    assert!(
        closed >= 2,
        "publisher and consumer connections were open, closed {closed}"
    );
    assert!(!producer.is_finished(), "the producer is still publishing");
    // 1,000 more after the close, published across the reconnect.
    last.store(sent.load(Ordering::SeqCst) + 1_000, Ordering::SeqCst);
    let total = producer.await.unwrap();
    let before_close = distinct.len();
    assert!(before_close < total as usize);

    wait_until(&mut rx, Duration::from_secs(120), |(n, _)| {
        distinct.insert(n);
        distinct.len() == total as usize
    })
    .await;
    let reconnected = connections_with_prefix(&h.prefix).await.unwrap();
    assert!(
        reconnected.len() >= 2,
        "publisher and consumer connected again: {reconnected:?}"
    );
    stop.cancel();
    consumer.await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let missing: Vec<u32> = (0..total).filter(|n| !seen.contains_key(n)).collect();
    assert!(missing.is_empty(), "lost messages: {missing:?}");
    assert_eq!(
        h.inspector.queue_len(&h.queue()).await,
        0,
        "nothing left behind"
    );
    publisher.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_messages_in_flight_finishes_them_and_returns_the_rest() {
    let h = Harness::new("shutdown").await;
    let (handler, mut rx) = Recording::acking();
    let handler = handler.with_work(Duration::from_millis(50));
    let seen = handler.seen.clone();
    let started = handler.started.clone();
    let mut settings = h.settings();
    settings.prefetch = 20;
    settings.concurrency = 8;
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(h.consumer(handler, settings).run(stop.clone()));

    const TOTAL: u32 = 200;
    let publisher = h.publisher();
    let bodies: Vec<Vec<u8>> = (0..TOTAL).map(numbered).collect();
    let batch: Vec<Message> = bodies.iter().map(|b| h.message(b)).collect();
    publisher.publish_batch(&batch).await.unwrap();

    let mut handled = 0;
    wait_until(&mut rx, Duration::from_secs(30), |_| {
        handled += 1;
        handled >= 30
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("drains promptly")
        .unwrap();

    let done = seen.lock().unwrap().len() as u32;
    assert_eq!(
        *started.lock().unwrap(),
        done,
        "every handler that started also finished"
    );
    assert!(
        done < TOTAL,
        "shutdown stopped the consumer early ({done} handled)"
    );
    // Unacked messages return to the queue as soon as the channel closes.
    let left = h
        .inspector
        .wait_queue_len(&h.queue(), Duration::from_secs(5), |left| {
            done + left == TOTAL
        })
        .await;
    assert_eq!(
        done + left,
        TOTAL,
        "{done} handled + {left} waiting must be all {TOTAL}"
    );
    publisher.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_with_other_arguments_is_used_and_reported_not_fatal() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    // An older version made this dead-letter queue a plain classic queue.
    let h = Harness::new("drift").await;
    h.topology.delete(h.inspector.channel()).await.unwrap();
    let stale = h.dead_queue();
    h.inspector
        .channel()
        .queue_declare(
            stale.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let drift = h
        .topology
        .declare(h.inspector.connection())
        .await
        .expect("declaring still succeeds");
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].name, stale);
    assert!(
        drift[0].detail.contains("inequivalent arg"),
        "{}",
        drift[0].detail
    );
    // Everything after the stale queue was declared too, and the runtime works on it.
    let (handler, mut rx) =
        Recording::new(|_, _| Outcome::DeadLetter(Rejection::new("blocked", "gone")));
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(h.consumer(handler, h.settings()).run(stop.clone()));
    let publisher = h.publisher();
    publisher.publish(&h.message(&numbered(1))).await.unwrap();
    wait_until(&mut rx, Duration::from_secs(10), |_| true).await;
    assert!(
        h.inspector
            .wait_get(&stale, Duration::from_secs(10))
            .await
            .is_some(),
        "the stale queue still gets dead letters"
    );
    stop.cancel();
    consumer.await.unwrap();
    publisher.close().await;
    h.cleanup().await;
}

/// Waits until the work queue and the standby queue have these many consumers.
async fn wait_for_consumers(h: &Harness, standby: &str, work: u32, standing_by: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = (
            h.inspector.consumer_count(&h.queue()).await,
            h.inspector.consumer_count(standby).await,
        );
        if now == (work, standing_by) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "(work, standby) consumers are {now:?}, expected {:?}",
            (work, standing_by)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn standby_queue(h: &Harness) -> String {
    h.topology
        .names()
        .standby_queue(messaging_core::Channel::Email)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consumer_holds_the_standby_queue_instead_of_its_work_queue() {
    let h = Harness::new("standby").await;
    let standby = standby_queue(&h);
    let (handler, mut rx) = Recording::acking();
    let mut settings = h.settings();
    settings.standby_queue = Some(standby.clone());
    let (gate, pause) = tokio::sync::watch::channel(None);
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(
        h.consumer(handler, settings)
            .with_pause(pause)
            .run(stop.clone()),
    );
    wait_for_consumers(&h, &standby, 1, 0).await;

    gate.send_replace(Some("provider down".to_owned()));
    wait_for_consumers(&h, &standby, 0, 1).await;
    // Paused means paused: with no consumer on the work queue nothing can take a job, so one
    // published now is counted there by the broker and the handler never sees it.
    let publisher = h.publisher();
    publisher.publish(&h.message(&numbered(1))).await.unwrap();
    let queued = h
        .inspector
        .wait_queue_len(&h.queue(), Duration::from_secs(10), |queued| queued == 1)
        .await;
    assert_eq!(queued, 1, "the job waits in the work queue");
    assert_eq!(
        h.inspector.consumer_count(&h.queue()).await,
        0,
        "still paused"
    );
    assert!(
        rx.try_recv().is_err(),
        "the handler saw nothing while paused"
    );

    gate.send_replace(None);
    wait_for_consumers(&h, &standby, 1, 0).await;
    wait_until(&mut rx, Duration::from_secs(10), |(n, _)| n == 1).await;

    stop.cancel();
    consumer.await.unwrap();
    publisher.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consumer_holds_the_standby_queue_again_after_its_connection_drops() {
    let h = Harness::new("standby_reconnect").await;
    let standby = standby_queue(&h);
    let (handler, _rx) = Recording::acking();
    let mut settings = h.settings();
    settings.standby_queue = Some(standby.clone());
    let (gate, pause) = tokio::sync::watch::channel(Some("provider down".to_owned()));
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(
        h.consumer(handler, settings)
            .with_pause(pause)
            .run(stop.clone()),
    );
    wait_for_consumers(&h, &standby, 0, 1).await;

    // A pause can outlast a broker restart; the watchdog must not see the sender vanish.
    let standby_connection = format!("{}/test/{}/standby", h.prefix, h.queue());
    let before = connections_with_prefix(&standby_connection).await.unwrap();
    assert_eq!(before.len(), 1, "{before:?}");
    let closed = close_connections_with_prefix(&standby_connection)
        .await
        .expect("close the standby connection");
    assert_eq!(closed, 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = connections_with_prefix(&standby_connection).await.unwrap();
        if now.len() == 1 && now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new standby connection: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_consumers(&h, &standby, 0, 1).await;

    // Shutdown while paused lets go of the standby queue too.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("stops promptly while paused")
        .unwrap();
    wait_for_consumers(&h, &standby, 0, 0).await;
    drop(gate);
    h.cleanup().await;
}

/// A connection asks for the configured frame size (RabbitMQ's own 128 KiB cost 8 MiB of
/// lapin's buffers per connection), and a `frame_max` in the URL wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_use_the_configured_frame_size() {
    let config = herald_runtime::config::AmqpConfig {
        url: herald_runtime::config::Secret::new(herald_testkit::broker::amqp_url()),
        prefix: herald_testkit::broker::unique_prefix("frame_max"),
        ..Default::default()
    };
    let broker = herald_runtime::amqp::Broker::new(config.clone(), "test");
    let connection = broker.connect("probe").await.unwrap();
    assert_eq!(connection.configuration().frame_max(), 16_384);
    connection.close(200, "done".into()).await.unwrap();

    let url = herald_testkit::broker::amqp_url();
    let separator = if url.contains('?') { '&' } else { '?' };
    let config = herald_runtime::config::AmqpConfig {
        url: herald_runtime::config::Secret::new(format!("{url}{separator}frame_max=8192")),
        ..config
    };
    let broker = herald_runtime::amqp::Broker::new(config, "test");
    let connection = broker.connect("probe").await.unwrap();
    assert_eq!(connection.configuration().frame_max(), 8_192);
    connection.close(200, "done".into()).await.unwrap();
}

/// A producer may set Herald's own `herald-not-before`: a time far in the future would make
/// the message cycle through the delay queues for good. Past `amqp.max_defer_secs` it is a
/// dead letter, and the handler never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_before_too_far_ahead_is_a_dead_letter() {
    let h = Harness::new("not_before_far").await;
    let (handler, _rx) = Recording::acking();
    let started = handler.started.clone();
    let stop = CancellationToken::new();
    let mut settings = h.settings();
    settings.max_defer = Duration::from_secs(3600);
    let consumer = tokio::spawn(h.consumer(handler, settings).run(stop.clone()));
    let publisher = h.publisher();
    let mut table = lapin::types::FieldTable::default();
    headers::set_u64(
        &mut table,
        headers::NOT_BEFORE,
        headers::now_millis() + 10 * 365 * 24 * 3600 * 1000,
    );
    publisher
        .publish(&h.message(&numbered(1)).headers(table))
        .await
        .unwrap();
    let dead = h
        .inspector
        .wait_get(&h.dead_queue(), Duration::from_secs(10))
        .await
        .expect("a dead letter");
    let table = dead.delivery.properties.headers().clone();
    assert_eq!(
        headers::get_str(table.as_ref(), headers::REASON_CODE).as_deref(),
        Some("not_before_too_far")
    );
    assert_eq!(*started.lock().unwrap(), 0, "never handled");
    stop.cancel();
    consumer.await.unwrap();
    publisher.close().await;
    h.cleanup().await;
}

/// Every wait counts: a message a handler only ever defers is dead-lettered after
/// `amqp.max_deferrals` waits, with the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_only_ever_waits_is_dead_lettered_in_the_end() {
    let h = Harness::new("deferrals").await;
    let (handler, mut rx) = Recording::new(|_, _| Outcome::Defer {
        after: Duration::from_millis(10),
    });
    let stop = CancellationToken::new();
    let mut settings = h.settings();
    settings.max_deferrals = 3;
    let consumer = tokio::spawn(h.consumer(handler, settings).run(stop.clone()));
    let publisher = h.publisher();
    publisher.publish(&h.message(&numbered(2))).await.unwrap();
    let dead = h
        .inspector
        .wait_get(&h.dead_queue(), Duration::from_secs(20))
        .await
        .expect("a dead letter");
    let table = dead.delivery.properties.headers().clone();
    assert_eq!(
        headers::get_str(table.as_ref(), headers::REASON_CODE).as_deref(),
        Some("too_many_deferrals")
    );
    assert_eq!(
        headers::get_u64(table.as_ref(), headers::DEFERRALS),
        Some(3)
    );
    let mut handled = 0;
    while rx.try_recv().is_ok() {
        handled += 1;
    }
    assert_eq!(
        handled, 4,
        "deferred three times, the fourth defer is the dead letter"
    );
    stop.cancel();
    consumer.await.unwrap();
    publisher.close().await;
    h.cleanup().await;
}

/// Acks go in runs (`multiple`) below the lowest message still in work. A slow message must
/// not hold back the acks of those after it: the prefetch window would fill with finished
/// messages the broker counts as unacked, and the consumer would stall until the slow one is
/// done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_message_does_not_hold_back_the_acks_of_the_others() {
    struct SlowFirst {
        events: tokio::sync::mpsc::UnboundedSender<u32>,
    }
    impl herald_runtime::amqp::Handler for SlowFirst {
        type Message = support::Numbered;
        fn decode(&self, body: &[u8]) -> Result<support::Numbered, Rejection> {
            herald_runtime::amqp::decode_json(body)
        }
        async fn handle(
            &self,
            message: support::Numbered,
            _: &herald_runtime::amqp::Context,
        ) -> Outcome {
            if message.n == 0 {
                tokio::time::sleep(Duration::from_secs(6)).await;
            }
            let _ = self.events.send(message.n);
            Outcome::Ack
        }
    }

    let h = Harness::new("slow_first").await;
    let (events, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let mut settings = h.settings();
    settings.prefetch = 10;
    settings.concurrency = 10;
    let stop = CancellationToken::new();
    let consumer = herald_runtime::amqp::Consumer::new(
        h.broker.clone(),
        h.topology.clone(),
        settings,
        SlowFirst { events },
        h.health.clone(),
    );
    let consumer = tokio::spawn(consumer.run(stop.clone()));

    const TOTAL: u32 = 200;
    let publisher = h.publisher();
    let bodies: Vec<Vec<u8>> = (0..TOTAL).map(numbered).collect();
    let batch: Vec<Message> = bodies.iter().map(|b| h.message(b)).collect();
    publisher.publish_batch(&batch).await.unwrap();

    // Everything but the slow one, well before it is done: their acks were not held for it.
    let mut others = HashSet::new();
    tokio::time::timeout(Duration::from_secs(4), async {
        while others.len() < TOTAL as usize - 1 {
            let n = handled.recv().await.expect("handler alive");
            assert!(others.insert(n), "{n} handled twice");
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "only {} of the others handled while one was slow",
            others.len()
        )
    });
    assert!(!others.contains(&0));
    let slow = tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .expect("the slow one ends");
    assert_eq!(slow, Some(0));
    // All acked, none delivered again.
    let left = h
        .inspector
        .wait_queue_len(&h.queue(), Duration::from_secs(10), |left| left == 0)
        .await;
    assert_eq!(left, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(handled.try_recv().is_err(), "nothing comes twice");
    stop.cancel();
    consumer.await.unwrap();
    publisher.close().await;
    h.cleanup().await;
}
