//! Herald's path under one fresh prefix, in this process: the real fan-out router
//! (`fanout_router::start`), a no-op SMS sender on the real sender runtime, a producer, and
//! a listener for outcomes (`outcome.<tenant>` on the events exchange).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use herald_runtime::amqp::{Broker, Message, Publisher, Topology};
use herald_runtime::config::{AmqpConfig, BaseConfig, LogConfig, Secret};
use herald_runtime::service::Service;
use herald_storage::PgPool;
use herald_storage::db::DatabaseConfig;
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use messaging_core::Channel;
use messaging_core::events::MessageOutcome;
use messaging_core::job::SendJob;
use messaging_core::topology::{Names, routing};
use sender_runtime::config::SenderConfig;
use sender_runtime::limits::RateLimits;
use sender_runtime::{BuildError, Built, ChannelSender, Receipt, SendError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::db::TENANT;

/// The "provider" of the benchmark: accepts every job at once, so the sender runtime emits
/// a real `delivered` event for it and nothing but Herald is measured. It notes when each
/// message's first job reached it (the latency runs measure publish -> sender, issue #16).
pub struct NoopSender {
    arrivals: Arrivals,
}

/// When the first job of each message reached the no-op sender.
#[derive(Clone, Default)]
pub struct Arrivals(Arc<Mutex<HashMap<Uuid, Arrived>>>);

/// A message's first job at the sender.
#[derive(Clone, Copy)]
pub struct Arrived {
    pub at: Instant,
    /// The job's `createdAt`: when the router began the fan-out (a group's start).
    pub fan_out_began: chrono::DateTime<chrono::Utc>,
}

impl Arrivals {
    fn note(&self, job: &SendJob) {
        let arrived = Arrived {
            at: Instant::now(),
            fan_out_began: job.created_at,
        };
        if let Ok(mut seen) = self.0.lock() {
            seen.entry(job.message_id).or_insert(arrived);
        }
    }

    /// When the first job of `message_id` reached the sender.
    pub fn of(&self, message_id: Uuid) -> Option<Arrived> {
        self.0.lock().ok()?.get(&message_id).copied()
    }

    pub fn clear(&self) {
        if let Ok(mut seen) = self.0.lock() {
            seen.clear();
        }
    }
}

/// The no-op sender's "configuration": where it notes arrivals.
#[derive(Default, serde::Deserialize)]
pub struct NoopConfig {
    #[serde(skip)]
    arrivals: Arrivals,
}

impl ChannelSender for NoopSender {
    const CHANNEL: Channel = Channel::Sms;
    type Config = NoopConfig;

    fn default_limits() -> RateLimits {
        // Rate limits are policy; this measures capacity.
        RateLimits {
            account_per_second: 1_000_000,
            account_burst: 1_000_000,
            recipient_interval: Duration::from_millis(1),
            recipient_burst: 1_000_000,
            recipient_windows: Vec::new(),
        }
    }

    async fn build(config: NoopConfig) -> Result<Built<Self>, BuildError> {
        Ok(Built::Ready(NoopSender {
            arrivals: config.arrivals,
        }))
    }

    async fn send(&self, job: &SendJob) -> Result<Receipt, SendError> {
        self.arrivals.note(job);
        Ok(Receipt::default())
    }
}

/// An outcome as the listener saw it.
pub struct Arrival {
    /// The request's idempotency key (`tp-17`, `lat-3`, ...).
    pub key: String,
    pub message_id: Uuid,
    pub at: Instant,
    /// Delivered to its one recipient, with no failure.
    pub delivered: bool,
}

/// A section's defaults with what the environment sets under `prefix` (`HERALD_ROUTER__`,
/// `HERALD_AMQP__`), as the services read it: lets a run try other settings without a build.
fn overrides<T: serde::de::DeserializeOwned>(prefix: &str) -> anyhow::Result<T> {
    figment::Figment::new()
        .merge(figment::providers::Env::prefixed(prefix).split("__"))
        .extract()
        .with_context(|| format!("the {prefix}* settings"))
}

/// Settings of a run of the system.
pub struct Settings {
    /// The router's `database.max_connections`.
    pub db_connections: u32,
    /// The router's `router.batch_size`; `None`, its default.
    pub batch_size: Option<usize>,
    /// The router's `router.group_max` (0: every request and event alone); `None`, its
    /// default.
    pub group_max: Option<usize>,
}

/// A running service: its stop token and task.
struct Running {
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn stop(self, what: &str) -> anyhow::Result<()> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .with_context(|| format!("{what} stops within 60 s"))???;
        Ok(())
    }
}

pub struct System {
    pub names: Names,
    /// The settings every service of the run shares (the broker's prefix included).
    base: BaseConfig,
    topology: Topology,
    pub inspector: Inspector,
    pub producer: Publisher,
    router: Option<Running>,
    sender: Option<Running>,
    router_pool: PgPool,
    outcomes: mpsc::UnboundedReceiver<Arrival>,
    listener: Connection,
    /// When each message's first job reached the no-op sender.
    pub at_sender: Arrivals,
}

impl System {
    pub async fn start(database_url: &str, settings: &Settings) -> anyhow::Result<System> {
        let amqp = AmqpConfig {
            url: Secret::new(amqp_url()),
            prefix: unique_prefix("bench-e2e"),
            ..overrides::<AmqpConfig>("HERALD_AMQP__")?
        };
        let base = BaseConfig {
            amqp: amqp.clone(),
            log: LogConfig {
                filter: "warn".into(),
                ..LogConfig::default()
            },
            ..BaseConfig::default()
        };
        // Warnings (retries, refused requests) show on stderr; RUST_LOG overrides.
        herald_runtime::telemetry::init_tracing(&base.log);
        let topology = Topology::from_config(&amqp);
        let names = topology.names().clone();
        let inspector = Inspector::connect().await;
        topology
            .declare(inspector.connection())
            .await
            .context("declare the topology")?;

        // Outcomes, on a connection of their own.
        let listener = Connection::connect(
            &amqp_url(),
            ConnectionProperties::default().with_connection_name("bench-e2e-outcomes".into()),
        )
        .await
        .context("connect the outcome listener")?;
        let (tx, outcomes) = mpsc::unbounded_channel();
        listen(&listener, &names, tx).await?;

        let config = fanout_router::config::Config {
            base: base.clone(),
            router: {
                let mut router =
                    overrides::<fanout_router::config::RouterConfig>("HERALD_ROUTER__")?;
                if let Some(size) = settings.batch_size {
                    router.batch_size = size;
                }
                if let Some(max) = settings.group_max {
                    router.group_max = max;
                }
                router
            },
            database: DatabaseConfig {
                url: Secret::new(database_url.to_owned()),
                max_connections: settings.db_connections,
                ..DatabaseConfig::default()
            },
            verification: Default::default(),
        };
        let router_pool = herald_storage::db::pool(&config.database)?;
        let (router_service, router_stop) = service("bench-router", base.clone()).await?;
        let work = fanout_router::start(&router_service, &config, router_pool.clone())
            .context("start the router")?;
        let router = Running {
            stop: router_stop,
            task: tokio::spawn(router_service.run(axum::Router::new(), work)),
        };

        let (sender_service, sender_stop) = service("bench-sender-noop", base.clone()).await?;
        let sender_config = SenderConfig {
            account_per_second: Some(1_000_000),
            account_burst: Some(1_000_000),
            recipient_interval_ms: Some(1),
            recipient_burst: Some(1_000_000),
            ..SenderConfig::default()
        };
        let at_sender = Arrivals::default();
        let noop = NoopConfig {
            arrivals: at_sender.clone(),
        };
        let work = sender_runtime::run::start::<NoopSender>(&sender_service, sender_config, noop)
            .await
            .context("start the no-op sender")?;
        let sender = Running {
            stop: sender_stop,
            task: tokio::spawn(sender_service.run(axum::Router::new(), work)),
        };

        let producer = Publisher::new(Broker::new(amqp.clone(), "bench-producer"), "producer");
        let system = System {
            names,
            base: base.clone(),
            topology,
            inspector,
            producer,
            router: Some(router),
            sender: Some(sender),
            router_pool,
            outcomes,
            listener,
            at_sender,
        };
        for queue in [
            system.names.ingress_queue(),
            system.names.router_events_queue(),
            system.names.send_queue(Channel::Sms),
        ] {
            if !system
                .inspector
                .wait_for_consumer(&queue, Duration::from_secs(60))
                .await
            {
                let _ = system.stop().await;
                anyhow::bail!(
                    "nobody consumes {queue} after 60 s (did the router's migrations fail?)"
                );
            }
        }
        Ok(system)
    }

    /// Publishes requests (idempotency key, body) in batches with confirms.
    pub async fn publish(&self, requests: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        let exchange = self.names.ingress_exchange();
        let batch: Vec<Message> = requests
            .iter()
            .map(|(_, body)| {
                Message::new(&exchange, "bench", body).message_id(uuid::Uuid::now_v7().to_string())
            })
            .collect();
        self.producer
            .publish_batch(&batch)
            .await
            .context("publish requests")
    }

    /// The settings of the run, for another service on the same prefix.
    pub fn base(&self) -> &BaseConfig {
        &self.base
    }

    /// The next outcome, or `None` at `deadline`.
    pub async fn next_outcome(&mut self, deadline: tokio::time::Instant) -> Option<Arrival> {
        tokio::time::timeout_at(deadline, self.outcomes.recv())
            .await
            .ok()
            .flatten()
    }

    /// Forgets outcomes not yet read (a previous run's stragglers).
    pub fn drain_outcomes(&mut self) {
        while self.outcomes.try_recv().is_ok() {}
    }

    /// Stops the sender, so send jobs stay in their queue (the fan-out run counts them there).
    pub async fn stop_sender(&mut self) -> anyhow::Result<()> {
        if let Some(sender) = self.sender.take() {
            sender.stop("the no-op sender").await?;
        }
        Ok(())
    }

    /// Stops everything and deletes the topology; the first error is returned after all.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let mut result = self.stop_sender().await;
        if let Some(router) = self.router.take() {
            let stopped = router.stop("the router").await;
            result = result.and(stopped);
        }
        self.router_pool.close().await;
        self.producer.close().await;
        let _ = self.listener.close(200, "done".into()).await;
        let deleted = self
            .topology
            .delete(self.inspector.channel())
            .await
            .context("delete the topology");
        self.inspector.close().await;
        result.and(deleted)
    }
}

/// A service of the run on a free port of loopback, and the token that stops it.
pub async fn service(
    name: &'static str,
    base: BaseConfig,
) -> std::io::Result<(Service, CancellationToken)> {
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok((
        Service::with_parts(name, base, listener, stop.clone()),
        stop,
    ))
}

/// Binds a server-named queue to `outcome.<tenant>` and forwards every outcome.
async fn listen(
    connection: &Connection,
    names: &Names,
    tx: mpsc::UnboundedSender<Arrival>,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .name()
        .to_string();
    channel
        .queue_bind(
            queue.as_str().into(),
            names.events_exchange().as_str().into(),
            routing::outcome(TENANT).as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench-e2e-outcomes".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let at = Instant::now();
            let Ok(outcome) = serde_json::from_slice::<MessageOutcome>(&delivery.data) else {
                eprintln!("bench-e2e: an outcome that does not decode");
                continue;
            };
            let Some(key) = outcome.idempotency_key.as_ref() else {
                continue;
            };
            let arrival = Arrival {
                key: key.as_str().to_owned(),
                message_id: outcome.message_id,
                at,
                delivered: outcome.delivered == 1 && outcome.failed == 0 && outcome.error.is_none(),
            };
            if tx.send(arrival).is_err() {
                break;
            }
        }
    });
    Ok(())
}
