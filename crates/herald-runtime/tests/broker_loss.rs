//! Issue #18: a consumer whose broker is killed (SIGKILL, not a clean close) says so in its
//! readiness at once, gives up on handlers that cannot finish, and consumes again when the
//! broker is back, losing nothing. Against a RabbitMQ node of this test's own, never the
//! shared one.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use herald_runtime::amqp::{Consumer, Context, Handler, Message, Outcome, Rejection, decode_json};
use herald_testkit::rabbit_node::RabbitNode;
use support::{Harness, Numbered, numbered};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The first `stuck` messages it gets never finish (a handler hung on something that died
/// with the broker); every later one is acked and reported.
struct Stuck {
    stuck: u32,
    started: Arc<AtomicU32>,
    done: mpsc::UnboundedSender<u32>,
}

impl Stuck {
    /// The handler, its count of handlings started, and the numbers it finished.
    fn new(stuck: u32) -> (Stuck, Arc<AtomicU32>, mpsc::UnboundedReceiver<u32>) {
        let (done, finished) = mpsc::unbounded_channel();
        let started = Arc::new(AtomicU32::new(0));
        let handler = Stuck {
            stuck,
            started: started.clone(),
            done,
        };
        (handler, started, finished)
    }
}

/// Waits until `n` handlings have started.
async fn started_at_least(started: &AtomicU32, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while started.load(Ordering::SeqCst) < n {
        assert!(tokio::time::Instant::now() < deadline, "{n} in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Handler for Stuck {
    type Message = Numbered;

    fn decode(&self, body: &[u8]) -> Result<Numbered, Rejection> {
        decode_json(body)
    }

    async fn handle(&self, message: Numbered, _: &Context) -> Outcome {
        if self.started.fetch_add(1, Ordering::SeqCst) < self.stuck {
            std::future::pending::<()>().await;
        }
        let _ = self.done.send(message.n);
        Outcome::Ack
    }
}

/// Runs a consumer until the returned token is cancelled.
fn run<H: Handler>(consumer: Consumer<H>) -> (tokio::task::JoinHandle<()>, CancellationToken) {
    let stop = CancellationToken::new();
    (tokio::spawn(consumer.run(stop.clone())), stop)
}

async fn consumer_state(h: &Harness, queue: &str) -> Option<(bool, String)> {
    h.health
        .report()
        .await
        .components
        .get(&format!("amqp:consumer:{queue}"))
        .map(|c| (c.ready, c.detail.clone()))
}

async fn wait_state(h: &Harness, queue: &str, ready: bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((now, detail)) = consumer_state(h, queue).await
            && now == ready
        {
            return detail;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the consumer never became ready={ready}: {:?}",
            consumer_state(h, queue).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_comes_back_after_its_broker_is_killed_and_says_so_meanwhile() {
    let node = tokio::task::spawn_blocking(|| RabbitNode::start("consumer_back"))
        .await
        .unwrap();
    let h = Harness::on(&node.url(), "broker_killed").await;
    let (handler, started, mut finished) = Stuck::new(3);
    let mut settings = h.settings();
    settings.prefetch = 3;
    settings.concurrency = 3;
    settings.drain_deadline = Duration::from_secs(1);
    let queue = settings.queue.clone();
    let (consumer, stop) = run(Consumer::new(
        h.broker.clone(),
        h.topology.clone(),
        settings,
        handler,
        h.health.clone(),
    ));
    wait_state(&h, &queue, true).await;

    // Three messages, each stuck in its handler.
    let publisher = h.publisher();
    let first: Vec<Vec<u8>> = (0..3).map(numbered).collect();
    let batch: Vec<Message> = first.iter().map(|b| h.message(b)).collect();
    publisher.publish_batch(&batch).await.unwrap();
    started_at_least(&started, 3).await;

    // The broker dies. Readiness says so while the handlers are still stuck.
    let node = tokio::task::spawn_blocking(move || {
        node.kill();
        node
    })
    .await
    .unwrap();
    let detail = wait_state(&h, &queue, false).await;
    assert!(!detail.contains("consuming"), "{detail}");

    // Back: the consumer consumes again. The three stuck messages were never acked, so the
    // broker delivers them again; with ten more, every one is handled.
    let node = tokio::task::spawn_blocking(move || {
        node.restart();
        node
    })
    .await
    .unwrap();
    let more: Vec<Vec<u8>> = (3..13).map(numbered).collect();
    let batch: Vec<Message> = more.iter().map(|b| h.message(b)).collect();
    publisher.publish_batch(&batch).await.unwrap();
    let mut seen = HashSet::new();
    tokio::time::timeout(Duration::from_secs(90), async {
        while seen.len() < 13 {
            seen.insert(finished.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("handled after the restart: {seen:?}"));
    wait_state(&h, &queue, true).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("the consumer stops in time")
        .unwrap();
    publisher.close().await;
    drop(node);
}

/// Issue #18: a handler that never finishes holds its slot only until the handler timeout;
/// its message is then retried like any temporary failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_never_finishes_is_timed_out_and_its_message_retried() {
    let h = Harness::new("handler_timeout").await;
    let (handler, started, mut finished) = Stuck::new(1);
    let mut settings = h.settings();
    settings.handler_timeout = Duration::from_millis(300);
    let (consumer, stop) = run(Consumer::new(
        h.broker.clone(),
        h.topology.clone(),
        settings,
        handler,
        h.health.clone(),
    ));
    let publisher = h.publisher();
    let body = numbered(7);
    publisher.publish(&h.message(&body)).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(30), finished.recv())
        .await
        .expect("handled on its retry")
        .unwrap();
    assert_eq!(n, 7);
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "the stuck attempt, then the retry"
    );
    stop.cancel();
    consumer.await.unwrap();
    publisher.close().await;
    h.cleanup().await;
}

/// Issue #18: shutdown waits for in-flight handlers only until the drain deadline; a message
/// whose handler did not finish stays in the queue for the next consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_a_stuck_handler_at_the_drain_deadline_and_keeps_its_message() {
    let h = Harness::new("drain_deadline").await;
    let (handler, started, _finished) = Stuck::new(1);
    let mut settings = h.settings();
    settings.drain_deadline = Duration::from_millis(500);
    let (consumer, stop) = run(Consumer::new(
        h.broker.clone(),
        h.topology.clone(),
        settings,
        handler,
        h.health.clone(),
    ));
    let publisher = h.publisher();
    let body = numbered(1);
    publisher.publish(&h.message(&body)).await.unwrap();
    started_at_least(&started, 1).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), consumer)
        .await
        .expect("shutdown does not wait for the stuck handler")
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.inspector.queue_len(&h.queue()).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the message is back in its queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publisher.close().await;
    h.cleanup().await;
}

/// Issue #18: a retry that cannot be republished (here: its delay exchange is gone) keeps the
/// message in hand and tries again, instead of returning it to the queue, which counted
/// toward the quorum queue's delivery limit and handled it again each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_cannot_be_republished_stays_in_hand_until_it_can() {
    let h = Harness::new("republish_held").await;
    let (handler, mut rx) = support::Recording::new(|_, ctx| {
        if ctx.attempt == 1 {
            Outcome::Retry {
                after: Duration::from_millis(100),
                reason: "try again".into(),
            }
        } else {
            Outcome::Ack
        }
    });
    // Publishes give up quickly, so several republish attempts fail while the exchange is
    // gone.
    let mut config = h.config.clone();
    config.publish_timeout_ms = 300;
    let broker = herald_runtime::amqp::Broker::new(config, "test");
    let (consumer, stop) = run(Consumer::new(
        broker,
        h.topology.clone(),
        h.settings(),
        handler,
        h.health.clone(),
    ));
    // Consuming first: the consumer declares the topology when it connects.
    wait_state(&h, &h.queue(), true).await;
    let delay = h.topology.names().delay_exchange();
    h.inspector
        .channel()
        .exchange_delete(
            delay.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    let publisher = h.publisher();
    let body = numbered(5);
    publisher.publish(&h.message(&body)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, (5, 1));
    // Several republish attempts fail meanwhile; the message is neither returned to the
    // queue nor handled again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = rx.try_recv();
    assert!(
        again.is_err(),
        "handled only once while the exchange is gone: {again:?}"
    );
    assert_eq!(
        h.inspector.queue_len(&h.queue()).await,
        0,
        "not back in the queue"
    );

    // The exchange is back: the retry goes out and comes back as attempt 2.
    h.topology.declare(h.inspector.connection()).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second, (5, 2));
    stop.cancel();
    consumer.await.unwrap();
    publisher.close().await;
    h.cleanup().await;
}

/// Issue #18: with several nodes configured, a service whose node dies goes on on another
/// one within seconds instead of waiting for its own to come back. Two nodes of the test's
/// own that are not clustered: what is shown is the switch (the consumer declares its
/// topology on the node it reaches); a cluster's quorum queues would also keep what the dead
/// node held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_goes_on_on_another_node_when_its_node_dies() {
    let (a, b) =
        tokio::task::spawn_blocking(|| (RabbitNode::start("node_a"), RabbitNode::start("node_b")))
            .await
            .unwrap();
    let mut h = Harness::on(&a.url(), "other_node").await;
    h.config.nodes = format!("127.0.0.1:{}", b.port());
    h.config.connect_timeout_ms = 2_000;
    h.broker = herald_runtime::amqp::Broker::new(h.config.clone(), "test");
    let (handler, _, mut finished) = Stuck::new(0);
    let settings = h.settings();
    let queue = settings.queue.clone();
    let (consumer, stop) = run(Consumer::new(
        h.broker.clone(),
        h.topology.clone(),
        settings,
        handler,
        h.health.clone(),
    ));
    wait_state(&h, &queue, true).await;
    let publisher = h.publisher();
    let bodies: Vec<Vec<u8>> = (0..5).map(numbered).collect();
    let batch: Vec<Message> = bodies.iter().map(|b| h.message(b)).collect();
    publisher.publish_batch(&batch).await.unwrap();
    receive(5, &mut finished).await;

    // Node A dies for good. The consumer is on B within seconds, and so is the publisher.
    let a = tokio::task::spawn_blocking(move || {
        a.kill();
        a
    })
    .await
    .unwrap();
    let started = tokio::time::Instant::now();
    let on_b = herald_testkit::broker::Inspector::connect_to(&b.url()).await;
    assert!(
        consumed_on(on_b.connection(), &queue, Duration::from_secs(30)).await,
        "a consumer on node B within 30 s"
    );
    let switched_in = started.elapsed();
    println!("consuming on the other node {switched_in:?} after the kill");
    wait_state(&h, &queue, true).await;
    let bodies: Vec<Vec<u8>> = (5..10).map(numbered).collect();
    let batch: Vec<Message> = bodies.iter().map(|b| h.message(b)).collect();
    publisher.publish_batch(&batch).await.unwrap();
    receive(5, &mut finished).await;

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("the consumer stops in time")
        .unwrap();
    publisher.close().await;
    on_b.close().await;
    drop((a, b));
}

/// Whether `queue` has a consumer on this connection's node within `timeout`. A fresh
/// channel per look: a passive declare of a queue not there yet closes its channel.
async fn consumed_on(connection: &lapin::Connection, queue: &str, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(channel) = connection.create_channel().await {
            let declared = channel
                .queue_declare(
                    queue.into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await;
            if declared.is_ok_and(|q| q.consumer_count() > 0) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits until `n` different numbers were handled.
async fn receive(n: usize, finished: &mut mpsc::UnboundedReceiver<u32>) {
    let mut seen = HashSet::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while seen.len() < n {
            seen.insert(finished.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} handled"));
}
