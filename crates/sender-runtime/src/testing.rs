//! A harness that runs one sender, as its binary would, against the real RabbitMQ under a
//! fresh prefix, and lets a test publish jobs and read the delivery events.

// Only tests use this module: a broken fixture should fail the test on the spot, with the line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use chrono::Utc;
use herald_runtime::amqp::{Message, Publisher};
use herald_runtime::config::{AmqpConfig, BaseConfig, Secret};
use herald_runtime::service::Service;
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use herald_testkit::http;
use lapin::options::BasicGetOptions;
use messaging_core::events::{DeliveryEvent, DeliveryEventBundle};
use messaging_core::job::{RenderedContent, SendJob};
use messaging_core::topology::Names;
use messaging_core::values::TenantKey;
use messaging_core::{Address, EnvelopeVersion};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::chat::ChatChannel;
use crate::config::SenderConfig;
use crate::sender::ChannelSender;

/// Sender settings that keep tests quick: short retries, a quick breaker, no rate limits.
pub fn quick_config() -> SenderConfig {
    SenderConfig {
        retry_base_ms: 100,
        retry_max_ms: 400,
        send_timeout_ms: 5_000,
        breaker_threshold: 3,
        breaker_probe_ms: 200,
        account_per_second: Some(10_000),
        account_burst: Some(10_000),
        recipient_interval_ms: Some(1),
        recipient_burst: Some(10_000),
        recipient_windows: Some("none".into()),
        ..SenderConfig::default()
    }
}

pub struct SenderHarness {
    pub names: Names,
    pub inspector: Inspector,
    publisher: Publisher,
    events_queue: String,
    /// Events of a bundle read but not yet handed out.
    bundled: std::sync::Mutex<std::collections::VecDeque<DeliveryEvent>>,
    health_addr: SocketAddr,
    shutdown: CancellationToken,
    running: JoinHandle<std::io::Result<()>>,
    topology: herald_runtime::amqp::Topology,
    channel: messaging_core::Channel,
    /// Bound to `contact.#` and `support.#`: what a chat sender's bot published.
    inbound_queue: String,
    /// Bound to `room.#`: the XMPP bot's room events.
    room_queue: String,
    /// The configuration the service started with, for another replica.
    base: BaseConfig,
}

impl SenderHarness {
    pub async fn start<S: ChannelSender>(
        test: &str,
        config: SenderConfig,
        channel_config: S::Config,
    ) -> SenderHarness {
        Self::start_with(test, S::CHANNEL, |service| {
            Box::pin(async move {
                let work = crate::run::start::<S>(service, config, channel_config)
                    .await
                    .expect("sender builds");
                (Router::new(), work)
            })
        })
        .await
    }

    /// [`SenderHarness::start`] for a chat channel: its bot listens too, its inbound routes
    /// are served on [`SenderHarness::http_addr`], and it answers from the answers queue.
    pub async fn start_chat<S: ChatChannel>(
        test: &str,
        config: SenderConfig,
        channel_config: S::Config,
    ) -> SenderHarness {
        Self::start_with(test, S::CHANNEL, |service| {
            Box::pin(async move {
                crate::run::start_chat::<S>(service, config, channel_config)
                    .await
                    .expect("sender builds")
            })
        })
        .await
    }

    /// A [`crate::ServingChannel`] (the WebSocket channel), as its binary runs it.
    pub async fn start_serving<S: crate::ServingChannel>(
        test: &str,
        config: SenderConfig,
        channel_config: S::Config,
    ) -> SenderHarness {
        Self::start_with(test, S::CHANNEL, |service| {
            Box::pin(async move {
                crate::run::start_serving::<S>(service, config, channel_config)
                    .await
                    .expect("sender builds")
            })
        })
        .await
    }

    /// One more replica of a [`crate::ServingChannel`] under this harness's prefix: another
    /// process, as far as the broker can tell (its own connections and HTTP address).
    pub async fn start_serving_replica<S: crate::ServingChannel>(
        &self,
        config: SenderConfig,
        channel_config: S::Config,
    ) -> Replica {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let shutdown = CancellationToken::new();
        let service = Service::with_parts(
            "test-replica",
            self.base.clone(),
            listener,
            shutdown.clone(),
        );
        let addr = service.local_addr().expect("addr");
        let (routes, work) = crate::run::start_serving::<S>(&service, config, channel_config)
            .await
            .expect("replica builds");
        let running = tokio::spawn(service.run(routes, work));
        Replica {
            addr,
            shutdown,
            running,
        }
    }

    async fn start_with(
        test: &str,
        channel: messaging_core::Channel,
        start: impl for<'s> FnOnce(
            &'s Service,
        ) -> futures::future::BoxFuture<
            's,
            (Router, futures::future::BoxFuture<'static, ()>),
        >,
    ) -> SenderHarness {
        herald_runtime::install_crypto_provider();
        let prefix = unique_prefix(test);
        let base = BaseConfig {
            amqp: AmqpConfig {
                url: Secret::new(amqp_url()),
                prefix: prefix.clone(),
                delays_ms: vec![100, 300, 1_000],
                prefetch: 16,
                concurrency: 8,
                reconnect_max_ms: 1_000,
                publish_timeout_ms: 20_000,
                ..AmqpConfig::default()
            },
            ..BaseConfig::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let shutdown = CancellationToken::new();
        let service = Service::with_parts("test-sender", base.clone(), listener, shutdown.clone());
        let health_addr = service.local_addr().expect("addr");
        let topology = service.topology.clone();
        let names = topology.names().clone();

        let inspector = Inspector::connect().await;
        topology
            .declare(inspector.connection())
            .await
            .expect("declare");
        let events_queue = inspector
            .temporary_queue(&names.events_exchange(), "delivery.#")
            .await;

        let inbound_queue = inspector
            .temporary_queue(&names.events_exchange(), "contact.#")
            .await;
        inspector
            .bind(&inbound_queue, &names.events_exchange(), "support.#")
            .await;

        let room_queue = inspector
            .temporary_queue(
                &names.events_exchange(),
                messaging_core::topology::routing::ROOM,
            )
            .await;

        let publisher = Publisher::new(service.broker.clone(), "test-producer");
        let (routes, work) = start(&service).await;
        let running = tokio::spawn(service.run(routes, work));
        SenderHarness {
            names,
            inspector,
            publisher,
            events_queue,
            bundled: Default::default(),
            health_addr,
            shutdown,
            running,
            topology,
            channel,
            inbound_queue,
            room_queue,
            base,
        }
    }

    /// The service's HTTP address: health endpoints, and a chat bot's inbound routes.
    pub fn http_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// The next contact-link or support-request event the bot published (as JSON), waiting
    /// up to `timeout`.
    pub async fn next_inbound(&self, timeout: Duration) -> Option<serde_json::Value> {
        self.next_body(&self.inbound_queue, timeout)
            .await
            .map(|body| serde_json::from_slice(&body).expect("json"))
    }

    /// The next room event the XMPP bot published, waiting up to `timeout`.
    pub async fn next_room_event(
        &self,
        timeout: Duration,
    ) -> Option<messaging_core::events::RoomEvent> {
        self.next_body(&self.room_queue, timeout)
            .await
            .map(|body| serde_json::from_slice(&body).expect("a room event"))
    }

    /// Publishes a roster as the router would, in answer to a bot's `BotStarted`.
    pub async fn publish_roster(&self, roster: &messaging_core::events::RoomRoster) {
        self.publish_event(messaging_core::topology::routing::ROSTER, roster)
            .await;
    }

    /// Publishes a ticket's room as the API would, when it reserved the room (R53).
    pub async fn publish_ticket_room(&self, ticket: &messaging_core::events::TicketRoom) {
        self.publish_event(messaging_core::topology::routing::TICKET, ticket)
            .await;
    }

    async fn publish_event(&self, routing_key: &str, payload: &impl serde::Serialize) {
        let body = serde_json::to_vec(payload).expect("serializable");
        let message = Message::new(self.names.events_exchange(), routing_key, &body);
        self.publisher
            .publish(&message)
            .await
            .unwrap_or_else(|e| panic!("publish on {routing_key}: {e}"));
    }

    /// The body of the next message in `queue` (taken off it), waiting up to `timeout`.
    async fn next_body(&self, queue: &str, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self
                .inspector
                .channel()
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            if let Some(message) = got {
                return Some(message.delivery.data);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes an answer as the router's outbox would: the bot should say it in `answer.chat`.
    pub async fn publish_answer(&self, answer: &messaging_core::events::ChatAnswer) {
        let body = serde_json::to_vec(answer).expect("serializable");
        let message = Message::new(
            self.names.events_exchange(),
            messaging_core::topology::routing::answer(answer.channel),
            &body,
        )
        .message_id(answer.answer_id.to_string());
        self.publisher
            .publish(&message)
            .await
            .expect("publish answer");
    }

    /// A job to `to` with this text, as the router would publish it.
    pub fn job(&self, to: Address, text: &str) -> SendJob {
        SendJob {
            version: EnvelopeVersion,
            delivery_id: uuid::Uuid::now_v7(),
            message_id: uuid::Uuid::now_v7(),
            tenant: TenantKey::parse("acme").expect("valid tenant"),
            to,
            user_id: None,
            content: RenderedContent {
                subject: None,
                text: text.to_owned(),
                html: None,
            },
            created_at: Utc::now(),
            expires_at: None,
        }
    }

    pub async fn publish(&self, job: &SendJob) {
        let body = serde_json::to_vec(job).expect("serializable");
        self.publish_raw(&body).await;
    }

    pub async fn publish_raw(&self, body: &[u8]) {
        let message = Message::new(self.names.send_exchange(), self.channel.as_str(), body);
        self.publisher.publish(&message).await.expect("publish job");
    }

    /// The next delivery event, waiting up to `timeout`; the events of a bundle
    /// (`delivery.<channel>.bundle`) one by one.
    pub async fn next_event(&self, timeout: Duration) -> Option<DeliveryEvent> {
        if let Some(event) = self.bundled.lock().expect("not poisoned").pop_front() {
            return Some(event);
        }
        let body = self.next_body(&self.events_queue, timeout).await?;
        let events =
            DeliveryEventBundle::events_of(&body).expect("a delivery event or a bundle of them");
        let mut bundled = self.bundled.lock().expect("not poisoned");
        bundled.extend(events);
        bundled.pop_front()
    }

    /// Events until `done` says the last one completes the set, or panics after `timeout`.
    pub async fn events_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[DeliveryEvent]) -> bool,
    ) -> Vec<DeliveryEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = Vec::new();
        while !done(&events) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(event) => events.push(event),
                None => panic!("timed out after {timeout:?}; events so far: {events:#?}"),
            }
        }
        events
    }

    pub async fn readyz(&self) -> (u16, String) {
        http::get(self.health_addr, "/readyz")
            .await
            .expect("readyz answers")
    }

    /// Polls `/readyz` until `done(status, body)`; `false` after `timeout`.
    pub async fn wait_readiness(
        &self,
        timeout: Duration,
        done: impl Fn(u16, &str) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (status, body) = self.readyz().await;
            if done(status, &body) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls the send queue's length until `done(len)` (the broker's counts lag a little);
    /// returns the last length seen.
    pub async fn wait_queued(&self, timeout: Duration, done: impl Fn(u32) -> bool) -> u32 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let queued = self.queued().await;
            if done(queued) || tokio::time::Instant::now() >= deadline {
                return queued;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Jobs waiting in the channel's send queue.
    pub async fn queued(&self) -> u32 {
        self.inspector
            .queue_len(&self.names.send_queue(self.channel))
            .await
    }

    pub fn dead_letter_queue(&self) -> String {
        self.names
            .dead_letter_queue(&self.names.send_queue(self.channel))
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.running)
            .await
            .expect("the sender stops")
            .expect("join")
            .expect("serve");
        self.publisher.close().await;
        self.topology
            .delete(self.inspector.channel())
            .await
            .expect("delete topology");
        self.inspector.close().await;
    }
}

/// Another replica started by [`SenderHarness::start_serving_replica`].
pub struct Replica {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    running: JoinHandle<std::io::Result<()>>,
}

impl Replica {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.running)
            .await
            .expect("the replica stops")
            .expect("join")
            .expect("serve");
    }
}
