//! The runtime tests' harness: a topology under a fresh prefix on the real broker, and a
//! handler that records what it saw and reports each message as it finishes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_runtime::amqp::{
    Broker, Consumer, ConsumerSettings, Context, Handler, Message, Outcome, Publisher, Rejection,
    Topology, decode_json,
};
use herald_runtime::config::{AmqpConfig, Secret};
use herald_runtime::health::Health;
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub struct Harness {
    pub prefix: String,
    pub config: AmqpConfig,
    pub topology: Topology,
    pub broker: Broker,
    pub health: Health,
    pub inspector: Inspector,
}

impl Harness {
    pub async fn new(test: &str) -> Harness {
        Self::on(&amqp_url(), test).await
    }

    /// A harness on the broker at `url` (a test's own node).
    pub async fn on(url: &str, test: &str) -> Harness {
        herald_runtime::install_crypto_provider();
        let prefix = unique_prefix(test);
        let config = AmqpConfig {
            url: Secret::new(url.to_owned()),
            prefix: prefix.clone(),
            delays_ms: vec![200, 500],
            max_attempts: 5,
            reconnect_max_ms: 1_000,
            publish_timeout_ms: 30_000,
            ..AmqpConfig::default()
        };
        let topology = Topology::from_config(&config);
        let inspector = Inspector::connect_to(url).await;
        topology
            .declare(inspector.connection())
            .await
            .expect("declare topology");
        Harness {
            broker: Broker::new(config.clone(), "test"),
            prefix,
            config,
            topology,
            health: Health::new(),
            inspector,
        }
    }

    /// The queue tests consume from: any work queue will do.
    pub fn queue(&self) -> String {
        self.topology
            .names()
            .send_queue(messaging_core::Channel::Email)
    }

    pub fn dead_queue(&self) -> String {
        self.topology.names().dead_letter_queue(&self.queue())
    }

    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.broker.clone(), "producer")
    }

    /// A message straight to the test queue (through the default exchange).
    pub fn message<'a>(&self, body: &'a [u8]) -> Message<'a> {
        Message::new("", self.queue(), body)
    }

    pub fn settings(&self) -> ConsumerSettings {
        ConsumerSettings::from_config(self.queue(), &self.config)
    }

    pub fn consumer(&self, handler: Recording, settings: ConsumerSettings) -> Consumer<Recording> {
        Consumer::new(
            self.broker.clone(),
            self.topology.clone(),
            settings,
            handler,
            self.health.clone(),
        )
    }

    pub async fn cleanup(self) {
        self.topology
            .delete(self.inspector.channel())
            .await
            .expect("delete topology");
        self.inspector.close().await;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Numbered {
    pub n: u32,
}

pub fn numbered(n: u32) -> Vec<u8> {
    serde_json::to_vec(&Numbered { n }).unwrap()
}

pub type Decide = dyn Fn(&Numbered, &Context) -> Outcome + Send + Sync;

/// Records every handled message (n -> times handled) and reports `(n, attempt)` on a channel
/// after handling, so tests wait for events instead of sleeping.
pub struct Recording {
    pub seen: Arc<Mutex<HashMap<u32, u32>>>,
    pub started: Arc<Mutex<u32>>,
    events: mpsc::UnboundedSender<(u32, u32)>,
    decide: Arc<Decide>,
    work: Duration,
}

impl Recording {
    pub fn new(
        decide: impl Fn(&Numbered, &Context) -> Outcome + Send + Sync + 'static,
    ) -> (Recording, mpsc::UnboundedReceiver<(u32, u32)>) {
        let (events, rx) = mpsc::unbounded_channel();
        (
            Recording {
                seen: Arc::default(),
                started: Arc::default(),
                events,
                decide: Arc::new(decide),
                work: Duration::ZERO,
            },
            rx,
        )
    }

    pub fn acking() -> (Recording, mpsc::UnboundedReceiver<(u32, u32)>) {
        Self::new(|_, _| Outcome::Ack)
    }

    /// Each message takes this long to handle.
    pub fn with_work(mut self, work: Duration) -> Self {
        self.work = work;
        self
    }
}

impl Handler for Recording {
    type Message = Numbered;

    fn decode(&self, body: &[u8]) -> Result<Numbered, Rejection> {
        decode_json(body)
    }

    async fn handle(&self, message: Numbered, ctx: &Context) -> Outcome {
        *self.started.lock().unwrap() += 1;
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        let outcome = (self.decide)(&message, ctx);
        if outcome == Outcome::Ack {
            *self.seen.lock().unwrap().entry(message.n).or_default() += 1;
        }
        let _ = self.events.send((message.n, ctx.attempt));
        outcome
    }
}

/// Receives until `done` says so, or panics after `timeout` naming what was still missing.
pub async fn wait_until(
    rx: &mut mpsc::UnboundedReceiver<(u32, u32)>,
    timeout: Duration,
    mut done: impl FnMut((u32, u32)) -> bool,
) {
    tokio::time::timeout(timeout, async {
        while let Some(event) = rx.recv().await {
            if done(event) {
                return;
            }
        }
        panic!("handler channel closed");
    })
    .await
    .expect("timed out waiting for the handler");
}
