//! The SMS sender against the real broker and the fake Twilio-compatible provider: every
//! outcome path, the circuit breaker, rate limits, and duplicate suppression.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use herald_runtime::amqp::headers;
use herald_runtime::config::Secret;
use herald_testkit::fake_sms::{FakeSms, Fault};
use messaging_core::events::{AttemptResult, DeliveryEvent};
use messaging_core::failure::FailureClass;
use messaging_core::values::E164;
use messaging_core::{Address, Channel};
use sender_runtime::config::SenderConfig;
use sender_runtime::testing::{SenderHarness, quick_config};
use sender_sms::{SmsConfig, SmsSender, SmsSettings};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "test-token";

fn sms_config(fake: &FakeSms) -> SmsConfig {
    SmsConfig {
        sms: SmsSettings {
            base_url: fake.base_url(),
            account_sid: SID.into(),
            auth_token: Secret::new(TOKEN.into()),
            from: Some("+15005550006".into()),
            timeout_ms: 2_000,
            ..SmsSettings::default()
        },
    }
}

fn number(n: u32) -> Address {
    Address::Sms(E164::parse(&format!("+4179{n:07}")).unwrap())
}

async fn start(test: &str, config: SenderConfig) -> (FakeSms, SenderHarness) {
    let fake = FakeSms::start(SID, TOKEN).await;
    let harness = SenderHarness::start::<SmsSender>(test, config, sms_config(&fake)).await;
    (fake, harness)
}

fn failed(event: &DeliveryEvent) -> Option<&messaging_core::failure::Failure> {
    match &event.result {
        AttemptResult::Failed { failure } => Some(failure),
        _ => None,
    }
}

const WAIT: Duration = Duration::from_secs(20);

/// How many messages of `queue` the consumer runner settled with `outcome` ("ack", "retry",
/// "dead_letter", "deferred"), read from the process's metrics. The runner counts a message
/// only after settling it with the broker, so the count is a fact a test can wait on.
fn settled(queue: &str, outcome: &str) -> u64 {
    let queue = format!("queue=\"{queue}\"");
    let outcome = format!("outcome=\"{outcome}\"");
    herald_runtime::telemetry::metrics()
        .render()
        .lines()
        .filter(|line| line.starts_with("herald_messages_total{"))
        .filter(|line| line.contains(&queue) && line.contains(&outcome))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until the runner has settled `count` messages of `queue` with `outcome`, or panics
/// after `timeout`.
async fn wait_settled(queue: &str, outcome: &str, count: u64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while settled(queue, outcome) < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queue}: {} of {count} messages settled with {outcome} after {timeout:?}",
            settled(queue, outcome)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_delivered_and_reported_with_the_provider_id() {
    let (fake, h) = start("sms_delivered", quick_config()).await;
    let job = h.job(number(1), "Your code is 1234");
    h.publish(&job).await;
    let event = h.next_event(WAIT).await.expect("an event");
    assert_eq!(event.delivery_id, job.delivery_id);
    assert_eq!(event.attempt, 1);
    let AttemptResult::Delivered {
        provider_message_id,
    } = &event.result
    else {
        panic!("{event:?}")
    };
    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        provider_message_id.as_deref(),
        Some(received[0].sid.as_str())
    );
    assert_eq!(received[0].to, "+41790000001");
    assert_eq!(received[0].from.as_deref(), Some("+15005550006"));
    assert_eq!(received[0].body, "Your code is 1234");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_error_is_retried_and_then_delivered() {
    let (fake, h) = start("sms_retried", quick_config()).await;
    fake.fail_next([Fault::Status(500), Fault::Drop]);
    let job = h.job(number(2), "hello");
    h.publish(&job).await;
    let events = h
        .events_until(WAIT, |e| e.last().is_some_and(|e| e.result.is_final()))
        .await;
    let statuses: Vec<_> = events
        .iter()
        .map(|e| (e.attempt, e.result.status()))
        .collect();
    assert_eq!(
        statuses,
        [
            (1, "retry_scheduled"),
            (2, "retry_scheduled"),
            (3, "delivered")
        ]
    );
    let AttemptResult::RetryScheduled { failure, .. } = &events[0].result else {
        panic!()
    };
    assert_eq!(failure.class, FailureClass::Temporary);
    assert_eq!(fake.received().len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_stops_the_whole_account_for_its_retry_after() {
    let (fake, h) = start("sms_429", quick_config()).await;
    fake.fail_next([Fault::TooManyRequests {
        retry_after_secs: 2,
    }]);
    let first = h.job(number(3), "one");
    h.publish(&first).await;
    // The first answer is the 429; only then does a second job arrive.
    let event = h.next_event(WAIT).await.unwrap();
    let AttemptResult::RetryScheduled { failure, retry_at } = &event.result else {
        panic!("{event:?}")
    };
    assert_eq!(failure.code, "rate_limited");
    let waited = (*retry_at - event.occurred_at).to_std().unwrap();
    assert!(
        waited >= Duration::from_millis(1_900),
        "retry-after obeyed for the job: {waited:?}"
    );
    h.publish(&h.job(number(4), "two")).await;
    h.events_until(WAIT, |e| {
        e.iter()
            .filter(|e| e.result.status() == "delivered")
            .count()
            == 2
    })
    .await;

    let times = fake.request_times();
    assert_eq!(times.len(), 3, "the 429, then one request per job");
    let quiet = times[1].duration_since(times[0]);
    assert!(
        quiet >= Duration::from_millis(1_900),
        "no request during the retry-after: {quiet:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_number_fails_permanently_with_the_providers_reason() {
    let (fake, h) = start("sms_permanent", quick_config()).await;
    fake.reject_number(
        "+41790000005",
        21211,
        "The 'To' number is not a valid phone number.",
    );
    h.publish(&h.job(number(5), "hello")).await;
    let event = h.next_event(WAIT).await.unwrap();
    let failure = failed(&event).expect("failed");
    assert_eq!(failure.class, FailureClass::Permanent);
    assert_eq!(failure.code, "invalid_address");
    assert!(failure.message.contains("21211"), "{}", failure.message);
    // Once the job is acked, nothing is left that could be retried.
    let queue = h.names.send_queue(Channel::Sms);
    wait_settled(&queue, "ack", 1, WAIT).await;
    assert_eq!(settled(&queue, "retry"), 0, "not retried");
    assert!(
        h.next_event(Duration::ZERO).await.is_none(),
        "no second attempt"
    );
    assert_eq!(fake.request_times().len(), 1, "the provider was asked once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_keeps_failing_gives_up_at_the_maximum_age() {
    let config = SenderConfig {
        max_age_secs: 2,
        // Keep the breaker out of this test: it is about giving up, not pausing.
        breaker_threshold: 1_000,
        ..quick_config()
    };
    let (fake, h) = start("sms_max_age", config).await;
    fake.set_outage(Some(Fault::Status(503)));
    h.publish(&h.job(number(6), "hello")).await;
    let events = h
        .events_until(Duration::from_secs(30), |e| {
            e.last().is_some_and(|e| e.result.is_final())
        })
        .await;
    let last = events.last().unwrap();
    let failure = failed(last).expect("failed at the end");
    assert_eq!(
        failure.class,
        FailureClass::Temporary,
        "retried and gave up is class (a)"
    );
    assert_eq!(failure.code, "max_age_exceeded");
    assert!(
        events.len() >= 3,
        "it was retried before giving up: {}",
        events.len()
    );
    assert!(fake.received().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_provider_opens_the_breaker_and_nothing_is_lost_when_it_returns() {
    let (fake, h) = start("sms_breaker", quick_config()).await;
    fake.set_outage(Some(Fault::Status(503)));
    let jobs: Vec<_> = (10..20)
        .map(|n| h.job(number(n), "during an outage"))
        .collect();
    for job in &jobs {
        h.publish(job).await;
    }
    // Three provider faults open the breaker: readiness says so and jobs wait in the queue.
    let open = h
        .wait_readiness(WAIT, |status, body| {
            status == 503 && body.contains("breaker open")
        })
        .await;
    assert!(open, "readiness reports the open breaker");
    let waiting = h.wait_queued(WAIT, |queued| queued > 0).await;
    assert!(
        waiting > 0,
        "jobs wait in the queue while the breaker is open"
    );
    // The paused sender shows itself on the standby queue, so the router's watchdog leaves
    // the waiting jobs alone.
    let standby = h.names.standby_queue(Channel::Sms);
    assert!(
        h.inspector.wait_for_consumer(&standby, WAIT).await,
        "the paused sender consumes the standby queue"
    );

    fake.set_outage(None);
    let events = h
        .events_until(Duration::from_secs(60), |e| {
            e.iter()
                .filter(|e| e.result.status() == "delivered")
                .count()
                == jobs.len()
        })
        .await;
    let unhealthy = events.iter().filter(|e| matches!(&e.result, AttemptResult::RetryScheduled { failure, .. } if failure.code == "provider_error")).count();
    assert!(
        unhealthy >= 3,
        "the failed attempts were reported: {unhealthy}"
    );
    let delivered: HashSet<_> = fake.received().iter().map(|m| m.to.clone()).collect();
    assert_eq!(
        fake.received().len(),
        jobs.len(),
        "each delivered exactly once"
    );
    assert_eq!(delivered.len(), jobs.len());
    assert_eq!(h.readyz().await.0, 200, "ready again");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_rate_limit_is_obeyed() {
    let config = SenderConfig {
        account_per_second: Some(5),
        account_burst: Some(1),
        ..quick_config()
    };
    let (fake, h) = start("sms_account_rate", config).await;
    for n in 30..42 {
        h.publish(&h.job(number(n), "rate")).await;
    }
    h.events_until(WAIT, |e| e.len() == 12).await;
    let mut times = fake.request_times();
    times.sort();
    let worst = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        worst <= 6,
        "at most 5/s (+1 for the window edge), saw {worst} in one second"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recipient_is_never_flooded() {
    let config = SenderConfig {
        recipient_interval_ms: Some(600),
        recipient_burst: Some(1),
        ..quick_config()
    };
    let (fake, h) = start("sms_recipient_rate", config).await;
    for text in ["one", "two", "three"] {
        h.publish(&h.job(number(50), text)).await;
    }
    h.publish(&h.job(number(51), "someone else")).await;
    h.events_until(WAIT, |e| e.len() == 4).await;
    let mut to_50: Vec<_> = fake
        .received()
        .into_iter()
        .filter(|m| m.to == "+41790000050")
        .map(|m| m.at)
        .collect();
    to_50.sort();
    assert_eq!(to_50.len(), 3);
    for pair in to_50.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(550),
            "messages to one person are spaced: {gap:?}"
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_job_is_not_sent_twice() {
    let (fake, h) = start("sms_duplicate", quick_config()).await;
    let job = h.job(number(60), "once");
    h.publish(&job).await;
    h.publish(&job).await;
    let events = h.events_until(WAIT, |e| e.len() == 2).await;
    assert!(
        events
            .iter()
            .all(|e| e.result.status() == "delivered" && e.delivery_id == job.delivery_id)
    );
    assert_eq!(fake.received().len(), 1, "the provider saw it once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_job_is_dead_lettered_with_its_reason() {
    let (_fake, h) = start("sms_malformed", quick_config()).await;
    h.publish_raw(br#"{"version": 1, "deliveryId": "not-a-uuid"}"#)
        .await;
    let dead = h
        .inspector
        .wait_get(&h.dead_letter_queue(), WAIT)
        .await
        .expect("dead letter");
    let table = dead.delivery.properties.headers().clone();
    assert_eq!(
        headers::get_str(table.as_ref(), headers::REASON_CODE).as_deref(),
        Some("invalid")
    );
    // A job for an invalid number cannot even be decoded: numbers are checked before sending.
    let mut bad = serde_json::to_value(h.job(number(61), "x")).unwrap();
    bad["to"]["value"] = "12345".into();
    h.publish_raw(&serde_json::to_vec(&bad).unwrap()).await;
    let dead = h
        .inspector
        .wait_get(&h.dead_letter_queue(), WAIT)
        .await
        .expect("dead letter");
    let table = dead.delivery.properties.headers().clone();
    assert!(
        headers::get_str(table.as_ref(), headers::REASON)
            .unwrap()
            .contains("phone number")
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfigured_sender_says_so_and_leaves_its_queue_alone() {
    let h =
        SenderHarness::start::<SmsSender>("sms_unconfigured", quick_config(), SmsConfig::default())
            .await;
    let (status, body) = h.readyz().await;
    assert_eq!(status, 503);
    assert!(
        body.contains("not configured") && body.contains("HERALD_SMS__ACCOUNT_SID"),
        "{body}"
    );
    // Readiness says the sender has decided not to consume, so a job published now waits.
    h.publish(&h.job(number(70), "waits")).await;
    let queued = h.wait_queued(WAIT, |queued| queued == 1).await;
    assert_eq!(queued, 1, "the job waits for a configured sender");
    let queue = h.names.send_queue(Channel::Sms);
    assert_eq!(
        h.inspector.consumer_count(&queue).await,
        0,
        "an unconfigured sender consumes nothing"
    );
    // Nor does it stand by: to the router's watchdog it is no sender at all.
    let standby = h.names.standby_queue(Channel::Sms);
    assert_eq!(
        h.inspector.consumer_count(&standby).await,
        0,
        "an unconfigured sender does not stand by"
    );
    h.stop().await;
}

/// Issue #16: the router sends a fan-out's jobs in bundles. Each job of a bundle is handled
/// as if it had come alone: sent once, its event published; one that must wait (the
/// recipient's limit) or cannot be read goes on alone, and the bundle itself is settled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_of_a_bundle_is_sent_and_one_that_must_wait_goes_on_alone() {
    use messaging_core::job::SendJobBundle;
    let config = SenderConfig {
        recipient_interval_ms: Some(600),
        recipient_burst: Some(1),
        ..quick_config()
    };
    let (fake, h) = start("sms_bundle", config).await;
    let sent_before = h.job(number(74), "sent before");
    h.publish(&sent_before).await;
    assert_eq!(
        h.next_event(WAIT).await.unwrap().delivery_id,
        sent_before.delivery_id
    );

    let first = h.job(number(70), "first to 70");
    let second = h.job(number(70), "second to 70");
    let others = [h.job(number(71), "to 71"), h.job(number(72), "to 72")];
    let mut unreadable = serde_json::to_value(h.job(number(73), "x")).unwrap();
    unreadable["to"]["value"] = "12345".into();
    let unreadable = serde_json::to_vec(&unreadable).unwrap();
    let items: Vec<Vec<u8>> = [&first, &second, &others[0], &others[1], &sent_before]
        .iter()
        .map(|job| serde_json::to_vec(job).unwrap())
        .chain([unreadable.clone()])
        .collect();
    h.publish_raw(&SendJobBundle::encode(items.iter().map(Vec::as_slice)))
        .await;

    // Five events: four sends (one of them after its wait) and the repeat of the one sent
    // before, which the provider does not see again.
    let events = h.events_until(WAIT, |e| e.len() == 5).await;
    assert!(
        events.iter().all(|e| e.result.status() == "delivered"),
        "{events:?}"
    );
    let reported: HashSet<_> = events.iter().map(|e| e.delivery_id).collect();
    let expected: HashSet<_> = [&first, &second, &others[0], &others[1], &sent_before]
        .iter()
        .map(|job| job.delivery_id)
        .collect();
    assert_eq!(reported, expected);
    let received = fake.received();
    let to: Vec<&str> = received.iter().map(|m| m.to.as_str()).collect();
    assert_eq!(received.len(), 5, "{to:?}");
    let mut to_70: Vec<_> = received
        .iter()
        .filter(|m| m.to == "+41790000070")
        .map(|m| m.at)
        .collect();
    to_70.sort();
    assert_eq!(to_70.len(), 2);
    assert!(to_70[1].duration_since(to_70[0]) >= Duration::from_millis(550));

    // The unreadable job is dead-lettered alone, as a job, with its reason.
    let dead = h
        .inspector
        .wait_get(&h.dead_letter_queue(), WAIT)
        .await
        .expect("dead letter");
    assert_eq!(dead.delivery.data, unreadable);
    assert_eq!(
        dead.delivery.properties.kind().as_ref().map(|k| k.as_str()),
        Some("herald.send_job.v1")
    );
    let table = dead.delivery.properties.headers().clone();
    assert!(
        headers::get_str(table.as_ref(), headers::REASON)
            .unwrap()
            .contains("phone number")
    );
    let queue = h.names.send_queue(Channel::Sms);
    // The bundle split once; the job that waited came back alone and was acked.
    wait_settled(&queue, "split", 1, WAIT).await;
    wait_settled(&queue, "ack", 2, WAIT).await;
    assert_eq!(settled(&queue, "split"), 1);
    assert_eq!(h.queued().await, 0);
    assert!(
        h.inspector.get(&h.dead_letter_queue()).await.is_none(),
        "nothing else dead-lettered"
    );
    h.stop().await;
}

/// A bundle is one message to the consumer runner, timed as one: its jobs that find no send
/// slot within 10 s (here the 8 slots are held by slow sends) go back to the queue alone and
/// are sent from there, instead of the whole bundle running into the handler timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundles_job_that_waits_too_long_for_a_slot_goes_back_alone() {
    use messaging_core::job::SendJobBundle;
    let config = SenderConfig {
        send_timeout_ms: 20_000,
        ..quick_config()
    };
    let fake = FakeSms::start(SID, TOKEN).await;
    let mut slow_provider = sms_config(&fake);
    slow_provider.sms.timeout_ms = 20_000;
    let h = SenderHarness::start::<SmsSender>("sms_bundle_slots", config, slow_provider).await;
    // The harness runs 8 sends at once: the first 8 take 11 s.
    fake.fail_next(vec![Fault::Slow(Duration::from_secs(11)); 8]);
    let jobs: Vec<_> = (0..10).map(|i| h.job(number(80 + i), "slow")).collect();
    let items: Vec<Vec<u8>> = jobs
        .iter()
        .map(|j| serde_json::to_vec(j).unwrap())
        .collect();
    h.publish_raw(&SendJobBundle::encode(items.iter().map(Vec::as_slice)))
        .await;

    let events = h
        .events_until(Duration::from_secs(40), |e| e.len() == 10)
        .await;
    assert!(
        events.iter().all(|e| e.result.status() == "delivered"),
        "{events:?}"
    );
    let reported: HashSet<_> = events.iter().map(|e| e.delivery_id).collect();
    assert_eq!(reported.len(), 10);
    assert_eq!(fake.received().len(), 10, "each job sent once");
    let queue = h.names.send_queue(Channel::Sms);
    // The bundle split (its two last jobs deferred), and those two were acked alone.
    wait_settled(&queue, "split", 1, WAIT).await;
    wait_settled(&queue, "ack", 2, WAIT).await;
    assert_eq!(h.queued().await, 0);
    h.stop().await;
}
