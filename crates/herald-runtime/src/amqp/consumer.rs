//! The consumer runner: every service's message loop.
//!
//! A [`Handler`] decodes a body and returns an [`Outcome`]; the runner does the rest:
//!
//! - per-consumer prefetch (quorum queues refuse global QoS) and at most `concurrency`
//!   messages in work at once;
//! - the ack only after the handler finished, sent with the channel's other finished
//!   deliveries as one `multiple` ack where it can ([`crate::amqp::acks`]); a retry is republished to a delay queue (with a
//!   confirm) before the original is acked, a dead letter likewise to the dead-letter queue,
//!   so no outcome can lose the message;
//! - bodies that do not decode, are too large, or whose handler panics are dead-lettered
//!   with the reason in headers; the loop goes on;
//! - a dropped connection is re-established with backoff and the topology declared again;
//! - on shutdown: cancel the consumer, let in-flight handlers finish and ack, then close.
//!   Messages prefetched but not started go back to the queue when the channel closes.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use futures::{FutureExt, StreamExt};
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::amqp::acks::{self, Acks};
use crate::amqp::backoff::Backoff;
use crate::amqp::connection::Broker;
use crate::amqp::headers;
use crate::amqp::publisher::{Message, Publisher};
use crate::amqp::topology::Topology;
use crate::amqp::trace::TraceContext;
use crate::health::Health;

/// Why a message is refused for good. `code` is one stable word for tools and metrics
/// (`malformed`, `oversized`, `invalid`, `retries_exhausted`, ...); `reason` is for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: String,
    pub reason: String,
}

impl Rejection {
    pub fn new(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection {
            code: code.into(),
            reason: reason.into(),
        }
    }
}

/// What a handler decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The work is done; ack.
    Ack,
    /// Try again after `after` (at least); `reason` travels with the message.
    Retry { after: Duration, reason: String },
    /// Never try again; dead-letter with this reason.
    DeadLetter(Rejection),
    /// Not now, and not a failure: handle it again after `after` without counting an attempt
    /// (a per-recipient rate limit, say). The message waits in a delay queue, not in a
    /// consumer slot, so other messages go ahead.
    Defer { after: Duration },
    /// A message carrying several items (a bundle of send jobs) is done, except for these
    /// items: each goes on alone with its own outcome (retried, deferred or dead-lettered as
    /// a message of its own, with the bundle's headers), and then the bundle is acked. An
    /// empty list is an ack.
    Split(Vec<Part>),
}

/// One item of a [`Outcome::Split`] message that goes on alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The item's own body.
    pub body: Vec<u8>,
    /// The `message_id` it goes on with (the bundle's own otherwise).
    pub message_id: Option<String>,
    /// Its AMQP `type` (the bundle's otherwise).
    pub kind: Option<String>,
    /// Retry, Defer or DeadLetter; Ack (or a nested Split) means the part is done.
    pub outcome: Outcome,
}

/// Who published a message, as far as the broker vouches for it (issue #17). RabbitMQ checks
/// the `user_id` property against the publishing connection's user; a message Herald
/// republished (a retry) keeps its first publisher in Herald's own headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// No `user_id`: nobody vouched (a broker left open, as on loopback).
    Anonymous,
    /// One of Herald's services, for itself.
    Service(String),
    /// A broker user outside Herald.
    Producer(String),
}

impl Origin {
    /// From a delivery's `user_id` and headers: Herald's headers count only on a message a
    /// service user published.
    pub fn of(
        user_id: Option<&str>,
        table: &FieldTable,
        service_users: &std::collections::BTreeSet<String>,
    ) -> Origin {
        let Some(user) = user_id.filter(|u| !u.is_empty()) else {
            return Origin::Anonymous;
        };
        if !service_users.contains(user) {
            return Origin::Producer(user.to_owned());
        }
        match headers::get_str(Some(table), headers::ORIGIN).as_deref() {
            None | Some("service") => Origin::Service(user.to_owned()),
            Some("producer") => match headers::get_str(Some(table), headers::PRODUCER) {
                Some(producer) if !producer.is_empty() => Origin::Producer(producer),
                _ => Origin::Anonymous,
            },
            Some(_) => Origin::Anonymous,
        }
    }

    /// For messages only Herald itself publishes (send jobs, chat answers, room commands): a
    /// dead letter when a broker user outside Herald published one. A message without
    /// `user_id` passes: the broker vouches for nobody, as on a broker left open.
    pub fn refuse_unless_herald(&self) -> Option<Outcome> {
        match self {
            Origin::Producer(user) => {
                metrics::counter!("herald_untrusted_messages_total").increment(1);
                tracing::warn!(%user, "message from a broker user outside Herald refused");
                Some(Outcome::DeadLetter(Rejection::new(
                    "untrusted_publisher",
                    format!(
                        "broker user {user:?} is not one of Herald's service users (amqp.service_users); only they publish this"
                    ),
                )))
            }
            Origin::Service(_) | Origin::Anonymous => None,
        }
    }

    /// Writes this origin into the headers of a republished copy.
    fn stamp(&self, table: &mut FieldTable) {
        let (origin, producer) = match self {
            Origin::Anonymous => ("anonymous", ""),
            Origin::Service(_) => ("service", ""),
            Origin::Producer(user) => ("producer", user.as_str()),
        };
        headers::set_str(table, headers::ORIGIN, origin);
        headers::set_str(table, headers::PRODUCER, producer);
    }
}

/// What the runner knows about a message besides its body.
#[derive(Debug, Clone)]
pub struct Context {
    /// Who published it (issue #17).
    pub origin: Origin,
    pub queue: Arc<str>,
    pub message_id: Option<String>,
    pub routing_key: String,
    pub redelivered: bool,
    /// 1 on the first attempt, counting retries through the delay queues.
    pub attempt: u32,
    /// The attempt after which a retry becomes a dead letter (`retries_exhausted`): a handler
    /// that keeps state for the message records the give-up there before the runner
    /// dead-letters it.
    pub max_attempts: u32,
    pub first_attempt_at: DateTime<Utc>,
    /// Why the previous attempt asked for a retry.
    pub last_error: Option<String>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    pub headers: FieldTable,
    pub trace: TraceContext,
}

impl Context {
    /// A retry asked for now would be dead-lettered instead.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// A service's message handling. The runner owns everything else.
pub trait Handler: Send + Sync + 'static {
    type Message: Send + 'static;

    /// Turns a body into a message. An error dead-letters it with that reason; most
    /// handlers call [`decode_json`].
    fn decode(&self, body: &[u8]) -> Result<Self::Message, Rejection>;

    fn handle(&self, message: Self::Message, ctx: &Context)
    -> impl Future<Output = Outcome> + Send;
}

/// Decodes a JSON body, naming the field and position of any error.
pub fn decode_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "malformed"
        } else {
            "invalid"
        };
        Rejection::new(code, e.to_string())
    })
}

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub queue: String,
    pub prefetch: u16,
    pub concurrency: usize,
    pub max_attempts: u32,
    /// Waits without being handled before a dead letter (`too_many_deferrals`).
    pub max_deferrals: u32,
    /// The longest wait a message's `herald-not-before` may ask for (`not_before_too_far`).
    pub max_defer: Duration,
    /// Larger bodies are dead-lettered unread (`oversized`).
    pub max_body_bytes: usize,
    /// Consumed while the pause gate holds the consumer, so the broker shows a consumer
    /// somewhere exactly while this process is alive but paused: the router's watchdog fails
    /// the jobs of a channel nobody consumes, and must leave a paused sender's jobs waiting.
    /// The consumer goes with this process's connection if the process dies.
    pub standby_queue: Option<String>,
    /// How long in-flight handlers may finish after the connection is lost or on shutdown;
    /// then they are given up (their messages are redelivered).
    pub drain_deadline: Duration,
    /// The longest one handler may take; past it the message is retried.
    pub handler_timeout: Duration,
    /// Herald's broker users: their messages are Herald's own ([`Origin`]).
    pub service_users: Arc<std::collections::BTreeSet<String>>,
}

impl ConsumerSettings {
    pub fn from_config(queue: impl Into<String>, config: &crate::config::AmqpConfig) -> Self {
        ConsumerSettings {
            queue: queue.into(),
            prefetch: config.prefetch.max(1),
            concurrency: config.concurrency.max(1),
            max_attempts: config.max_attempts.max(1),
            max_deferrals: config.max_deferrals.max(1),
            max_defer: Duration::from_secs(config.max_defer_secs),
            max_body_bytes: messaging_core::MAX_MESSAGE_BYTES,
            standby_queue: None,
            drain_deadline: Duration::from_millis(config.drain_deadline_ms),
            handler_timeout: Duration::from_millis(config.handler_timeout_ms.max(1)),
            service_users: Arc::new(config.service_users()),
        }
    }
}

/// `Some(reason)` pauses a consumer: it stops taking messages (they wait in the queue) until
/// the value is `None` again. A sender's circuit breaker holds the sending side.
pub type PauseGate = watch::Receiver<Option<String>>;

pub struct Consumer<H: Handler> {
    broker: Broker,
    topology: Topology,
    settings: ConsumerSettings,
    handler: Arc<H>,
    health: Health,
    pause: Option<PauseGate>,
}

/// Why one connection's consuming ended.
enum Stop {
    Shutdown,
    Paused,
    Lost(String),
}

/// Shared by the tasks working on one connection's messages.
struct Worker<H: Handler> {
    handler: Arc<H>,
    topology: Topology,
    settings: ConsumerSettings,
    queue: Arc<str>,
    republisher: Publisher,
}

impl<H: Handler> Consumer<H> {
    pub fn new(
        broker: Broker,
        topology: Topology,
        settings: ConsumerSettings,
        handler: H,
        health: Health,
    ) -> Self {
        Consumer {
            broker,
            topology,
            settings,
            handler: Arc::new(handler),
            health,
            pause: None,
        }
    }

    /// Stops consuming whenever the gate says so, and resumes when it clears.
    pub fn with_pause(mut self, gate: PauseGate) -> Self {
        self.pause = Some(gate);
        self
    }

    fn component(&self) -> String {
        format!("amqp:consumer:{}", self.settings.queue)
    }

    /// Consumes until `shutdown` is cancelled, reconnecting whenever the connection drops.
    /// Returns after in-flight messages are finished and the connection is closed.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let queue: Arc<str> = self.settings.queue.as_str().into();
        let worker = Arc::new(Worker {
            handler: self.handler.clone(),
            topology: self.topology.clone(),
            settings: self.settings.clone(),
            queue: queue.clone(),
            republisher: Publisher::new(self.broker.clone(), &format!("{queue}/republish")),
        });
        let component = self.component();
        self.health.set(&component, false, "connecting");
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            self.broker.config().reconnect_max(),
        );
        loop {
            if let Some(mut gate) = self.pause.clone() {
                let reason = gate.borrow().clone();
                if let Some(reason) = reason {
                    self.health
                        .set(&component, false, format!("paused: {reason}"));
                    tracing::warn!(queue = %queue, %reason, "consumer paused; messages wait in the queue");
                    if let Paused::Shutdown = self.stand_by(&mut gate, &shutdown).await {
                        break;
                    }
                    tracing::info!(queue = %queue, "consumer resumes");
                }
            }
            let health = self.health.clone();
            let component_ref = component.clone();
            let Some(connection) = self
                .broker
                .connect_until_cancelled(&queue, &shutdown, |e| {
                    health.set(&component_ref, false, format!("cannot connect: {e}"));
                })
                .await
            else {
                break;
            };
            let started = Instant::now();
            let stop = self.consume_on(&connection, &worker, &shutdown).await;
            // A connection to a broker that died may never answer the close.
            let _ = tokio::time::timeout(
                TEARDOWN_TIMEOUT,
                connection.close(200, "consumer stopping".into()),
            )
            .await;
            match stop {
                Stop::Shutdown => {
                    tracing::info!(queue = %queue, "consumer stopped");
                    break;
                }
                Stop::Paused => continue,
                Stop::Lost(error) => {
                    self.health.set(
                        &component,
                        false,
                        format!("connection lost: {error}; reconnecting"),
                    );
                    tracing::warn!(queue = %queue, %error, "consumer lost its connection; reconnecting");
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
            // A connection that lived a while earns a fresh start of the backoff.
            if started.elapsed() > Duration::from_secs(30) {
                backoff.reset();
            }
            let wait = backoff.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        worker.republisher.close().await;
        self.health.remove(&component);
    }

    /// Waits until the gate opens (or shutdown), holding a consumer on the standby queue if
    /// there is one. A standby connection that fails or drops is tried again with backoff:
    /// a pause can outlast a broker restart, and while no standby consumer is up the watchdog
    /// takes this sender for absent.
    async fn stand_by(&self, gate: &mut PauseGate, shutdown: &CancellationToken) -> Paused {
        let Some(standby) = self.settings.standby_queue.as_deref() else {
            return wait_paused(gate, shutdown, std::future::pending()).await;
        };
        let role = format!("{}/standby", self.settings.queue);
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            self.broker.config().reconnect_max(),
        );
        loop {
            let retry = match self.hold_standby(&role, standby).await {
                Ok((connection, mut consumer)) => {
                    backoff.reset();
                    tracing::info!(queue = %standby, "paused; holding a consumer on the standby queue");
                    let paused = wait_paused(gate, shutdown, async {
                        // No message ever arrives; the stream ends (or errs) when the
                        // connection or the consumer is lost.
                        while let Some(Ok(_)) = consumer.next().await {}
                    })
                    .await;
                    let _ = connection.close(200, "standby over".into()).await;
                    if !matches!(paused, Paused::Lost) {
                        return paused;
                    }
                    let wait = backoff.next_delay();
                    tracing::warn!(queue = %standby, retry_in_ms = wait.as_millis() as u64, "lost the standby consumer while paused");
                    wait
                }
                Err(error) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(queue = %standby, %error, retry_in_ms = wait.as_millis() as u64, "cannot consume the standby queue while paused; until it can, the router may take this sender for absent");
                    wait
                }
            };
            let paused = wait_paused(gate, shutdown, tokio::time::sleep(retry)).await;
            if !matches!(paused, Paused::Lost) {
                return paused;
            }
        }
    }

    /// Connects, declares the topology (the standby queue may have been deleted, or the
    /// broker's topology may come from a Herald before standby queues) and consumes the
    /// standby queue without acks: nothing is ever delivered there to ack.
    async fn hold_standby(
        &self,
        role: &str,
        standby: &str,
    ) -> lapin::Result<(Connection, lapin::Consumer)> {
        let connection = self.broker.connect(role).await?;
        let consumer = async {
            self.topology.declare(&connection).await?;
            let channel = connection.create_channel().await?;
            channel
                .basic_consume(
                    standby.into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
        }
        .await;
        match consumer {
            Ok(consumer) => Ok((connection, consumer)),
            Err(error) => {
                let _ = connection.close(200, "standby failed".into()).await;
                Err(error)
            }
        }
    }

    /// One connection's life: declare, consume, drain.
    async fn consume_on(
        &mut self,
        connection: &Connection,
        worker: &Arc<Worker<H>>,
        shutdown: &CancellationToken,
    ) -> Stop {
        self.consume_on_inner(connection, worker, shutdown)
            .await
            .unwrap_or_else(|e| Stop::Lost(e.to_string()))
    }

    async fn consume_on_inner(
        &mut self,
        connection: &Connection,
        worker: &Arc<Worker<H>>,
        shutdown: &CancellationToken,
    ) -> lapin::Result<Stop> {
        // The broker watch reports drift in /readyz; here it is only worth a line in the log.
        for drift in self.topology.declare(connection).await? {
            tracing::warn!(%drift, "queue or exchange differs from this version's declaration; using it as it is");
        }

        let channel = connection.create_channel().await?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions { global: false })
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.settings.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let tag = consumer.tag();
        self.health.set(&self.component(), true, "consuming");
        tracing::info!(queue = %self.settings.queue, prefetch = self.settings.prefetch, concurrency = self.settings.concurrency, "consuming");

        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut in_flight = JoinSet::new();
        let (acks, acking) = Acks::start(acks::HOLD);
        let mut pause = self.pause.clone();
        // The connection's own report of its death: while every slot is taken the consumer
        // stream is not polled, and a broker killed outright may never end it.
        let mut events = connection.events_listener();
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Stop::Shutdown,
                _ = paused(&mut pause) => break Stop::Paused,
                event = events.next() => match event {
                    Some(lapin::Event::Error(error)) => break Stop::Lost(error.to_string()),
                    Some(_) => {}
                    None => break Stop::Lost("the connection ended".to_owned()),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                // A delivery only with a free slot: a full house still notices shutdown, a
                // pause and a lost connection while it waits.
                next = consumer.next(), if permits.available_permits() > 0 => match next {
                    Some(Ok(delivery)) => {
                        // Only this loop takes permits, and one is free.
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            break Stop::Lost("the in-flight limit was closed".to_owned());
                        };
                        let worker = worker.clone();
                        acks.taken(delivery.delivery_tag);
                        let acks = acks.clone();
                        in_flight.spawn(async move {
                            worker.process(delivery, &acks).await;
                            drop(permit);
                        });
                    }
                    Some(Err(error)) => break Stop::Lost(error.to_string()),
                    None => break Stop::Lost("the broker cancelled the consumer or closed the channel".to_owned()),
                },
            }
        };
        match &result {
            // Stop deliveries first, then finish what is in hand. Prefetched messages go back
            // to the queue when the channel closes.
            Stop::Shutdown | Stop::Paused => {
                let _ = tokio::time::timeout(
                    TEARDOWN_TIMEOUT,
                    channel.basic_cancel(tag.clone(), BasicCancelOptions::default()),
                )
                .await;
            }
            // Say so at once: draining may take up to the deadline, and until the consumer is
            // back nothing is taken from the queue.
            Stop::Lost(error) => self.health.set(
                &self.component(),
                false,
                format!("connection lost: {error}; finishing in-flight messages"),
            ),
        }
        self.drain(&mut in_flight).await;
        // The handlers are done or given up: the last acks go before the channel closes.
        drop(acks);
        let _ = tokio::time::timeout(TEARDOWN_TIMEOUT, acking).await;
        let _ = tokio::time::timeout(
            TEARDOWN_TIMEOUT,
            channel.close(200, "consumer stopping".into()),
        )
        .await;
        Ok(result)
    }

    /// Lets in-flight handlers finish, up to the drain deadline; the rest are given up. Their
    /// messages were not acked, so the broker delivers them again (to this consumer when it
    /// is back, or to another replica), and handlers are idempotent.
    async fn drain(&self, in_flight: &mut JoinSet<()>) {
        let draining = in_flight.len();
        if draining == 0 {
            return;
        }
        tracing::info!(queue = %self.settings.queue, draining, deadline_ms = self.settings.drain_deadline.as_millis() as u64, "finishing in-flight messages");
        let finished = tokio::time::timeout(self.settings.drain_deadline, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            let abandoned = in_flight.len();
            in_flight.abort_all();
            while in_flight.join_next().await.is_some() {}
            metrics::counter!("herald_consumer_abandoned_total", "queue" => self.settings.queue.clone())
                .increment(abandoned as u64);
            tracing::warn!(queue = %self.settings.queue, abandoned, "in-flight messages did not finish by the drain deadline; given up, the broker delivers them again");
        }
    }
}

/// The longest a consumer waits for the broker to answer a cancel or a close while it tears
/// a connection down: a broker that died never answers.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How a wait while paused ended.
enum Paused {
    Shutdown,
    /// The gate opened, or its sender is gone (nothing can pause the consumer any more).
    Resumed,
    /// What the wait held on to ended first (the standby consumer, a retry's sleep).
    Lost,
}

/// Waits for the gate to open, shutdown, or `until`, whichever comes first.
async fn wait_paused(
    gate: &mut PauseGate,
    shutdown: &CancellationToken,
    until: impl Future<Output = ()>,
) -> Paused {
    tokio::select! {
        _ = shutdown.cancelled() => Paused::Shutdown,
        _ = gate.wait_for(Option::is_none) => Paused::Resumed,
        _ = until => Paused::Lost,
    }
}

/// Resolves when the gate says pause; never when there is no gate (or its sender is gone).
async fn paused(gate: &mut Option<PauseGate>) {
    match gate {
        Some(gate) => {
            if gate.wait_for(Option::is_some).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

impl<H: Handler> Worker<H> {
    async fn process(&self, delivery: Delivery, acks: &Acks) {
        let props = &delivery.properties;
        let table = props.headers().clone().unwrap_or_default();
        let trace = headers::get_str(Some(&table), headers::TRACEPARENT)
            .and_then(|t| TraceContext::parse(&t))
            .map_or_else(TraceContext::new_root, |parent| parent.child());
        let attempt = headers::get_u64(Some(&table), headers::ATTEMPT)
            .map_or(1, |a| u32::try_from(a).unwrap_or(u32::MAX).max(1));
        let first_attempt_at = headers::get_u64(Some(&table), headers::FIRST_ATTEMPT_AT)
            .and_then(|ms| Utc.timestamp_millis_opt(i64::try_from(ms).ok()?).single())
            .unwrap_or_else(Utc::now);
        let origin = Origin::of(
            props.user_id().as_ref().map(|u| u.as_str()),
            &table,
            &self.settings.service_users,
        );
        let ctx = Context {
            origin,
            queue: self.queue.clone(),
            // A message without an id gets one here, and keeps it through retries (see
            // `delay`): handlers that key their work on it see the same id on every attempt.
            message_id: Some(
                props
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            ),
            routing_key: delivery.routing_key.to_string(),
            redelivered: delivery.redelivered,
            attempt,
            max_attempts: self.settings.max_attempts,
            first_attempt_at,
            last_error: headers::get_str(Some(&table), headers::LAST_ERROR),
            reply_to: props.reply_to().as_ref().map(|s| s.to_string()),
            correlation_id: props.correlation_id().as_ref().map(|s| s.to_string()),
            headers: table,
            trace,
        };
        let span = tracing::info_span!(
            "message",
            queue = %self.queue,
            message_id = ctx.message_id.as_deref().unwrap_or(""),
            trace_id = %trace.trace_id_hex(),
            attempt,
            outcome = tracing::field::Empty,
        );
        trace
            .scope(self.process_in_span(delivery, ctx, acks).instrument(span))
            .await;
    }

    async fn process_in_span(&self, delivery: Delivery, ctx: Context, acks: &Acks) {
        let started = Instant::now();
        let decision = match self.decide(&delivery, &ctx).await {
            // A retry past the last attempt is a dead letter, and is counted as one.
            Decision::Handled(Outcome::Retry { reason, .. })
                if ctx.attempt >= self.settings.max_attempts =>
            {
                Decision::Handled(Outcome::DeadLetter(Rejection::new(
                    "retries_exhausted",
                    format!(
                        "gave up after {} attempts; last error: {reason}",
                        ctx.attempt
                    ),
                )))
            }
            // Every wait counts: a message that only ever waits is dead-lettered in the end.
            Decision::Handled(Outcome::Defer { .. }) | Decision::NotYet(_)
                if deferrals(&ctx) >= self.settings.max_deferrals =>
            {
                Decision::Handled(Outcome::DeadLetter(Rejection::new(
                    "too_many_deferrals",
                    format!("waited {} times without being handled", deferrals(&ctx)),
                )))
            }
            other => other,
        };
        let label = match &decision {
            Decision::Handled(Outcome::Ack) => "ack",
            Decision::Handled(Outcome::Split(parts)) if parts.is_empty() => "ack",
            Decision::Handled(Outcome::Split(_)) => "split",
            Decision::Handled(Outcome::Retry { .. }) => "retry",
            Decision::Handled(Outcome::DeadLetter(_)) => "dead_letter",
            Decision::Handled(Outcome::Defer { .. }) | Decision::NotYet(_) => "deferred",
        };
        tracing::Span::current().record("outcome", label);
        // A retry or dead letter that cannot be republished keeps the message in hand and tries
        // again: returning it to the queue (a nack) would count toward the quorum queue's
        // delivery limit, so a broker refusing publishes for a while would end up
        // dead-lettering healthy messages. A lost connection or shutdown ends the wait (the
        // drain deadline); the broker then delivers the message again.
        match &decision {
            // Each part is republished once: a failure retries that part, not those before.
            Decision::Handled(Outcome::Split(parts)) => {
                for part in parts {
                    let mut part_ctx = ctx.clone();
                    if let Some(id) = &part.message_id {
                        part_ctx.message_id = Some(id.clone());
                    }
                    let outcome = Decision::Handled(self.limit(part.outcome.clone(), &ctx));
                    let item = Item {
                        body: &part.body,
                        kind: part.kind.as_deref(),
                    };
                    self.settle_until_done(&delivery, item, &part_ctx, &outcome)
                        .await;
                }
            }
            decision => {
                let item = Item {
                    body: &delivery.data,
                    kind: None,
                };
                self.settle_until_done(&delivery, item, &ctx, decision)
                    .await;
            }
        }
        // Acked with the channel's other done deliveries (`acks`); a failed ack means the
        // channel is gone, and the broker redelivers (the repeat is dropped by its id).
        acks.done(delivery.delivery_tag, delivery.acker);
        metrics::counter!("herald_messages_total", "queue" => self.queue.to_string(), "outcome" => label).increment(1);
        metrics::histogram!("herald_message_seconds", "queue" => self.queue.to_string())
            .record(started.elapsed().as_secs_f64());
    }

    /// [`Self::settle`] until it is done.
    async fn settle_until_done(
        &self,
        delivery: &Delivery,
        item: Item<'_>,
        ctx: &Context,
        decision: &Decision,
    ) {
        let mut backoff = Backoff::new(REPUBLISH_PAUSE, REPUBLISH_PAUSE_MAX);
        while let Err(error) = self.settle(delivery, item, ctx, decision).await {
            let wait = backoff.next_delay();
            metrics::counter!("herald_republish_failures_total", "queue" => self.queue.to_string())
                .increment(1);
            tracing::error!(%error, retry_in_ms = wait.as_millis() as u64, "could not republish for retry or dead letter; keeping the message and trying again");
            tokio::time::sleep(wait).await;
        }
    }

    /// A part's outcome under the same limits as a whole message's: a retry past the last
    /// attempt, or one wait too many, is a dead letter.
    fn limit(&self, outcome: Outcome, ctx: &Context) -> Outcome {
        match outcome {
            Outcome::Retry { reason, .. } if ctx.attempt >= self.settings.max_attempts => {
                Outcome::DeadLetter(Rejection::new(
                    "retries_exhausted",
                    format!(
                        "gave up after {} attempts; last error: {reason}",
                        ctx.attempt
                    ),
                ))
            }
            Outcome::Defer { .. } if deferrals(ctx) >= self.settings.max_deferrals => {
                Outcome::DeadLetter(Rejection::new(
                    "too_many_deferrals",
                    format!("waited {} times without being handled", deferrals(ctx)),
                ))
            }
            other => other,
        }
    }

    /// Publishes what the decision needs before the ack: the retry or deferral to its delay
    /// queue, the dead letter to its queue; nothing for an ack.
    async fn settle(
        &self,
        delivery: &Delivery,
        item: Item<'_>,
        ctx: &Context,
        decision: &Decision,
    ) -> Result<(), crate::amqp::PublishError> {
        match decision {
            // A split's parts are settled one by one by the caller; a part is never split.
            Decision::Handled(Outcome::Ack | Outcome::Split(_)) => Ok(()),
            Decision::Handled(Outcome::Retry { after, reason }) => {
                self.delay(
                    delivery,
                    item,
                    ctx,
                    *after,
                    ctx.attempt + 1,
                    Some(reason),
                    false,
                )
                .await
            }
            Decision::Handled(Outcome::DeadLetter(rejection)) => {
                self.dead_letter(delivery, item, ctx, rejection).await
            }
            Decision::Handled(Outcome::Defer { after }) | Decision::NotYet(after) => {
                self.delay(
                    delivery,
                    item,
                    ctx,
                    *after,
                    ctx.attempt,
                    ctx.last_error.as_deref(),
                    true,
                )
                .await
            }
        }
    }

    async fn decide(&self, delivery: &Delivery, ctx: &Context) -> Decision {
        if let Some(not_before) = headers::get_u64(Some(&ctx.headers), headers::NOT_BEFORE) {
            let now = headers::now_millis();
            // A few milliseconds early is TTL granularity, not a reason to wait again.
            if not_before > now + 10 {
                let wait = Duration::from_millis(not_before - now);
                if wait > self.settings.max_defer {
                    return Decision::Handled(Outcome::DeadLetter(Rejection::new(
                        "not_before_too_far",
                        format!(
                            "{} asks to wait {} s, the limit is {} s",
                            headers::NOT_BEFORE,
                            wait.as_secs(),
                            self.settings.max_defer.as_secs()
                        ),
                    )));
                }
                return Decision::NotYet(wait);
            }
        }
        if delivery.data.len() > self.settings.max_body_bytes {
            return Decision::Handled(Outcome::DeadLetter(Rejection::new(
                "oversized",
                format!(
                    "{} bytes, the limit is {} bytes",
                    delivery.data.len(),
                    self.settings.max_body_bytes
                ),
            )));
        }
        let message = match self.handler.decode(&delivery.data) {
            Ok(message) => message,
            Err(rejection) => {
                tracing::warn!(code = %rejection.code, reason = %rejection.reason, "undecodable message");
                return Decision::Handled(Outcome::DeadLetter(rejection));
            }
        };
        let handled = tokio::time::timeout(
            self.settings.handler_timeout,
            AssertUnwindSafe(self.handler.handle(message, ctx)).catch_unwind(),
        )
        .await;
        let Ok(handled) = handled else {
            let limit = self.settings.handler_timeout.as_secs_f64();
            tracing::warn!(
                timeout_s = limit,
                "handler timed out; the message is retried"
            );
            metrics::counter!("herald_handler_timeouts_total", "queue" => self.queue.to_string())
                .increment(1);
            return Decision::Handled(Outcome::Retry {
                after: Duration::from_secs(1),
                reason: format!("the handler took longer than {limit} s"),
            });
        };
        match handled {
            Ok(outcome) => Decision::Handled(outcome),
            Err(panic) => {
                let what = panic_message(panic.as_ref());
                tracing::error!(panic = %what, "handler panicked; dead-lettering the message");
                Decision::Handled(Outcome::DeadLetter(Rejection::new("handler_panic", what)))
            }
        }
    }

    /// Republishes to the delay queue that fits `after`; the broker returns it to this
    /// queue when it expires.
    #[allow(clippy::too_many_arguments)]
    async fn delay(
        &self,
        delivery: &Delivery,
        item: Item<'_>,
        ctx: &Context,
        after: Duration,
        attempt: u32,
        last_error: Option<&str>,
        deferral: bool,
    ) -> Result<(), crate::amqp::PublishError> {
        let level = self.topology.delay_level_for(after);
        let mut table = ctx.headers.clone();
        ctx.origin.stamp(&mut table);
        if deferral {
            headers::set_u64(
                &mut table,
                headers::DEFERRALS,
                u64::from(deferrals(ctx)) + 1,
            );
        }
        headers::set_u64(&mut table, headers::ATTEMPT, u64::from(attempt));
        headers::set_u64(
            &mut table,
            headers::FIRST_ATTEMPT_AT,
            u64::try_from(ctx.first_attempt_at.timestamp_millis()).unwrap_or_default(),
        );
        headers::set_u64(
            &mut table,
            headers::NOT_BEFORE,
            headers::now_millis() + after.as_millis() as u64,
        );
        headers::set_str(
            &mut table,
            headers::DELAY,
            (level.as_millis() as u64).to_string(),
        );
        if let Some(error) = last_error {
            headers::set_str(&mut table, headers::LAST_ERROR, truncate(error, 1024));
        }
        let message = Message::new(
            self.topology.names().delay_exchange(),
            self.queue.to_string(),
            item.body,
        )
        .with_properties(item.properties(delivery).with_headers(table));
        let message = match &ctx.message_id {
            Some(id) => message.message_id(id.clone()),
            None => message,
        };
        self.republisher.publish(&message).await?;
        tracing::debug!(
            attempt,
            delay_ms = after.as_millis() as u64,
            level_ms = level.as_millis() as u64,
            "scheduled a retry"
        );
        Ok(())
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        item: Item<'_>,
        ctx: &Context,
        rejection: &Rejection,
    ) -> Result<(), crate::amqp::PublishError> {
        let mut table = ctx.headers.clone();
        ctx.origin.stamp(&mut table);
        headers::set_str(
            &mut table,
            headers::REASON,
            truncate(&rejection.reason, 4096),
        );
        headers::set_str(&mut table, headers::REASON_CODE, rejection.code.as_str());
        headers::set_str(&mut table, headers::SOURCE_QUEUE, self.queue.to_string());
        headers::set_u64(&mut table, headers::DEAD_AT, headers::now_millis());
        headers::set_u64(&mut table, headers::ATTEMPT, u64::from(ctx.attempt));
        let message = Message::new(
            self.topology.names().dead_letter_exchange(),
            self.queue.to_string(),
            item.body,
        )
        .with_properties(item.properties(delivery).with_headers(table));
        let message = match &ctx.message_id {
            Some(id) => message.message_id(id.clone()),
            None => message,
        };
        self.republisher.publish(&message).await?;
        tracing::warn!(code = %rejection.code, reason = %rejection.reason, "dead-lettered");
        Ok(())
    }
}

/// What a caught panic said, for the dead letter's reason.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The first and the longest wait before a retry or dead letter that could not be published
/// is published again (each attempt already tried for the publish timeout).
const REPUBLISH_PAUSE: Duration = Duration::from_secs(1);
const REPUBLISH_PAUSE_MAX: Duration = Duration::from_secs(30);

/// How many times the message waited so far (its `herald-deferrals`).
fn deferrals(ctx: &Context) -> u32 {
    headers::get_u64(Some(&ctx.headers), headers::DEFERRALS)
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// What a retry or dead letter republishes: the delivery's body, or a part of it.
#[derive(Clone, Copy)]
struct Item<'a> {
    body: &'a [u8],
    /// A part's own AMQP `type`; `None`, the delivery's.
    kind: Option<&'a str>,
}

impl Item<'_> {
    fn properties(&self, delivery: &Delivery) -> lapin::BasicProperties {
        let properties = delivery.properties.clone();
        match self.kind {
            Some(kind) => properties.with_type(kind.into()),
            None => properties,
        }
    }
}

enum Decision {
    Handled(Outcome),
    /// The message came back from a delay level shorter than its wait; wait the rest.
    NotYet(Duration),
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> std::collections::BTreeSet<String> {
        ["herald".to_owned(), "herald-api".to_owned()].into()
    }

    fn stamped(origin: &Origin) -> FieldTable {
        let mut table = FieldTable::default();
        origin.stamp(&mut table);
        table
    }

    #[test]
    fn the_origin_is_the_brokers_user_and_herald_headers_count_only_from_herald() {
        let none = FieldTable::default();
        assert_eq!(Origin::of(None, &none, &services()), Origin::Anonymous);
        assert_eq!(Origin::of(Some(""), &none, &services()), Origin::Anonymous);
        assert_eq!(
            Origin::of(Some("herald"), &none, &services()),
            Origin::Service("herald".into())
        );
        assert_eq!(
            Origin::of(Some("shop"), &none, &services()),
            Origin::Producer("shop".into())
        );
        // A retry Herald republished keeps its first publisher, whatever it was.
        for first in [
            Origin::Producer("shop".into()),
            Origin::Anonymous,
            Origin::Service("herald-api".into()),
        ] {
            let table = stamped(&first);
            let again = Origin::of(Some("herald"), &table, &services());
            match first {
                Origin::Service(_) => assert_eq!(again, Origin::Service("herald".into())),
                other => assert_eq!(again, other),
            }
        }
        // A producer's own copy of Herald's headers counts for nothing.
        let posing = stamped(&Origin::Service("herald".into()));
        assert_eq!(
            Origin::of(Some("shop"), &posing, &services()),
            Origin::Producer("shop".into())
        );
        let posing = stamped(&Origin::Producer("victim".into()));
        assert_eq!(
            Origin::of(Some("shop"), &posing, &services()),
            Origin::Producer("shop".into())
        );
        assert_eq!(Origin::of(None, &posing, &services()), Origin::Anonymous);
    }

    #[test]
    fn only_herald_publishes_what_only_herald_may() {
        assert!(
            Origin::Service("herald".into())
                .refuse_unless_herald()
                .is_none()
        );
        assert!(Origin::Anonymous.refuse_unless_herald().is_none());
        let Some(Outcome::DeadLetter(rejection)) =
            Origin::Producer("shop".into()).refuse_unless_herald()
        else {
            panic!("a producer's job is refused");
        };
        assert_eq!(rejection.code, "untrusted_publisher");
    }
}
