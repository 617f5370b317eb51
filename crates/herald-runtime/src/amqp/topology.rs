//! Every exchange, queue and binding Herald uses, declared in one place. `docs/topology.md`
//! describes the same; change both together.
//!
//! ```text
//! producers ──► {p}.ingress (topic) ──#──► {p}.router.ingress ──► router
//! router ─────► {p}.send (direct) ──<channel>──► {p}.send.<channel> ──► sender
//! senders ────► {p}.events (topic) ──delivery.#, contact.#──► {p}.router.events ──► router
//! router ─────► {p}.events ──outcome.<tenant>──► producers' own queues
//!
//! retry:  consumer ──► {p}.delay (headers, herald-delay=<ms>) ──► {p}.delay.<ms>ms (TTL)
//!         ──expired──► {p}.retry (direct, routing key = work queue) ──► the work queue
//! dead:   consumer ──► {p}.dead (direct, routing key = work queue) ──► <work queue>.dead
//! paused: sender ··consumes only··► {p}.send.<channel>.standby (unbound, never a message)
//! ```
//!
//! Every service declares the whole topology on every (re)connect. Declarations are
//! idempotent, and declaring everything means no service depends on another having started
//! first: a job published before any sender ran still finds its queue.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
use messaging_core::channel::Channel as DeliveryChannel;
use messaging_core::topology::{Names, routing};

use crate::amqp::headers;
use crate::config::{AmqpConfig, QueueType};

/// A queue or exchange that exists with other arguments than this version declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub name: String,
    /// The broker's words: which argument differs and how.
    pub detail: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.detail)
    }
}

/// Declares on one channel, replacing it when the broker closes it over a mismatch.
struct Declarer<'c> {
    connection: &'c Connection,
    channel: Channel,
    drift: Vec<Drift>,
}

fn precondition_failed(error: &lapin::Error) -> Option<String> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) if e.get_id() == 406 => {
            Some(e.get_message().to_string())
        }
        _ => None,
    }
}

impl Declarer<'_> {
    async fn queue(&mut self, name: &str, args: FieldTable) -> lapin::Result<()> {
        let declared = self
            .channel
            .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
            .await;
        let Err(error) = declared else { return Ok(()) };
        let Some(detail) = precondition_failed(&error) else {
            return Err(error);
        };
        self.channel = self.connection.create_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(name.into(), passive, FieldTable::default())
            .await?;
        self.drift.push(Drift {
            name: name.to_owned(),
            detail,
        });
        Ok(())
    }

    async fn exchange(&mut self, name: &str, kind: ExchangeKind) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declared = self
            .channel
            .exchange_declare(name.into(), kind.clone(), durable, FieldTable::default())
            .await;
        let Err(error) = declared else { return Ok(()) };
        let Some(detail) = precondition_failed(&error) else {
            return Err(error);
        };
        self.channel = self.connection.create_channel().await?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        self.channel
            .exchange_declare(name.into(), kind, passive, FieldTable::default())
            .await?;
        self.drift.push(Drift {
            name: name.to_owned(),
            detail,
        });
        Ok(())
    }

    async fn bind(
        &mut self,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
    ) -> lapin::Result<()> {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                args,
            )
            .await
    }
}

#[derive(Debug, Clone)]
pub struct Topology {
    names: Names,
    /// Sorted, deduplicated, never empty.
    delays: Vec<Duration>,
    queue_type: QueueType,
    delivery_limit: u32,
}

impl Topology {
    pub fn from_config(config: &AmqpConfig) -> Self {
        let mut delays: Vec<Duration> = config
            .delays_ms
            .iter()
            .filter(|ms| **ms > 0)
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        delays.sort();
        delays.dedup();
        if delays.is_empty() {
            delays.push(Duration::from_secs(1));
        }
        Topology {
            names: Names::new(config.prefix.clone()),
            delays,
            queue_type: config.queue_type,
            delivery_limit: config.delivery_limit,
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }

    /// The delay level a retry asking for `wanted` waits in: the smallest at least as long,
    /// or the largest (the consumer chains the rest through the `herald-not-before` header).
    pub fn delay_level_for(&self, wanted: Duration) -> Duration {
        self.delays
            .iter()
            .copied()
            .find(|level| *level >= wanted)
            .unwrap_or_else(|| *self.delays.last().unwrap_or(&Duration::from_secs(1)))
    }

    /// Declares everything. Safe to call on every connect.
    ///
    /// A queue or exchange that exists with other arguments (declared by an older Herald, or
    /// changed by hand) is not an error: RabbitMQ cannot change arguments in place, and
    /// refusing to start would stop every service at an upgrade. It is used as it is, and
    /// returned as a [`Drift`] for the caller to report; an operator migrates it with a
    /// policy or by recreating the queue when it is empty.
    pub async fn declare(&self, connection: &Connection) -> lapin::Result<Vec<Drift>> {
        let mut d = Declarer {
            channel: connection.create_channel().await?,
            connection,
            drift: Vec::new(),
        };
        let n = &self.names;
        for (name, kind) in [
            (n.ingress_exchange(), ExchangeKind::Topic),
            (n.send_exchange(), ExchangeKind::Direct),
            (n.events_exchange(), ExchangeKind::Topic),
            (n.delay_exchange(), ExchangeKind::Headers),
            (n.retry_exchange(), ExchangeKind::Direct),
            (n.dead_letter_exchange(), ExchangeKind::Direct),
        ] {
            d.exchange(&name, kind).await?;
        }

        for queue in n.work_queues() {
            // The dead-letter queue first, so the work queue's dead-letter target exists.
            let dead = n.dead_letter_queue(&queue);
            d.queue(&dead, self.dead_queue_args()).await?;
            d.bind(
                &dead,
                &n.dead_letter_exchange(),
                &queue,
                FieldTable::default(),
            )
            .await?;

            d.queue(&queue, self.work_queue_args(&queue)).await?;
            // Expired delayed messages come back through the retry exchange by queue name.
            d.bind(&queue, &n.retry_exchange(), &queue, FieldTable::default())
                .await?;
        }

        d.bind(
            &n.ingress_queue(),
            &n.ingress_exchange(),
            "#",
            FieldTable::default(),
        )
        .await?;
        for delivery_channel in DeliveryChannel::ALL {
            d.bind(
                &n.send_queue(delivery_channel),
                &n.send_exchange(),
                delivery_channel.as_str(),
                FieldTable::default(),
            )
            .await?;
        }
        // Unbound: nothing is ever routed there. A paused sender only consumes it, to be seen.
        for delivery_channel in DeliveryChannel::ALL {
            d.queue(
                &n.standby_queue(delivery_channel),
                self.standby_queue_args(),
            )
            .await?;
        }
        for chat in DeliveryChannel::ALL.into_iter().filter(|c| c.is_chat()) {
            d.bind(
                &n.answers_queue(chat),
                &n.events_exchange(),
                &routing::answer(chat),
                FieldTable::default(),
            )
            .await?;
        }
        for key in [routing::ROSTER, routing::TICKET] {
            d.bind(
                &n.rooms_queue(),
                &n.events_exchange(),
                key,
                FieldTable::default(),
            )
            .await?;
        }
        for pattern in routing::ROUTER_EVENT_BINDINGS {
            d.bind(
                &n.router_events_queue(),
                &n.events_exchange(),
                pattern,
                FieldTable::default(),
            )
            .await?;
        }

        for delay in &self.delays {
            let ms = delay.as_millis() as u64;
            let queue = n.delay_queue(ms);
            d.queue(&queue, self.delay_queue_args(ms)).await?;
            let mut match_args = FieldTable::default();
            match_args.insert("x-match".into(), AMQPValue::LongString("all".into()));
            headers::set_str(&mut match_args, headers::DELAY, ms.to_string());
            d.bind(&queue, &n.delay_exchange(), "", match_args).await?;
        }
        let _ = d.channel.close(200, "declared".into()).await;
        Ok(d.drift)
    }

    /// Deletes every queue and exchange under the prefix. For tests and for tearing down a
    /// staging prefix; never called by services.
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        let n = &self.names;
        let mut queues = Vec::new();
        for queue in n.work_queues() {
            queues.push(n.dead_letter_queue(&queue));
            queues.push(queue);
        }
        queues.extend(DeliveryChannel::ALL.iter().map(|c| n.standby_queue(*c)));
        queues.extend(
            self.delays
                .iter()
                .map(|d| n.delay_queue(d.as_millis() as u64)),
        );
        for queue in queues {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            n.ingress_exchange(),
            n.send_exchange(),
            n.events_exchange(),
            n.delay_exchange(),
            n.retry_exchange(),
            n.dead_letter_exchange(),
        ] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    fn base_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        let kind = match self.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        // Quorum queues replicate through Raft and survive a node loss; classic is the
        // fallback for brokers that lack them.
        args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        args
    }

    /// Work queues: where consumers read.
    fn work_queue_args(&self, queue: &str) -> FieldTable {
        let mut args = self.base_args();
        // Messages the broker itself dead-letters (over the delivery limit) go to this
        // queue's own dead-letter queue, like the ones the runtime rejects.
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.names.dead_letter_exchange().into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.into()),
        );
        if self.queue_type == QueueType::Quorum {
            // A message redelivered this often (its consumer died each time it held it) is a
            // poison message: dead-letter it instead of crash-looping the service.
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(i32::try_from(self.delivery_limit).unwrap_or(i32::MAX)),
            );
            self.at_least_once_dead_lettering(&mut args);
        }
        args
    }

    /// Dead-letter queues: kept until an operator looks. Nothing consumes them, but tools
    /// peek (read and return), and RabbitMQ 4 gives quorum queues a default delivery limit of
    /// 20 after which a message without a dead-letter target is dropped. An explicit, very high
    /// limit keeps dead letters however often they are looked at.
    fn dead_queue_args(&self) -> FieldTable {
        let mut args = self.base_args();
        if self.queue_type == QueueType::Quorum {
            args.insert("x-delivery-limit".into(), AMQPValue::LongInt(i32::MAX));
        }
        args
    }

    /// Delay queues: no consumers; each message waits `ms` and then returns, through the
    /// retry exchange, to the work queue named by its routing key.
    fn delay_queue_args(&self, ms: u64) -> FieldTable {
        let mut args = self.base_args();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(i64::try_from(ms).unwrap_or(i64::MAX)),
        );
        // No x-dead-letter-routing-key: the message keeps its own, the target queue's name.
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.names.retry_exchange().into()),
        );
        if self.queue_type == QueueType::Quorum {
            self.at_least_once_dead_lettering(&mut args);
        }
        args
    }

    /// Standby queues: a consumer count, never a message. Of `queue_type` like the others:
    /// a classic durable queue lives on one node of a cluster, and while that node is down
    /// every declare of the queue fails with `NOT_FOUND` ("home node ... is down"), so no
    /// service could declare its topology on the nodes that are left (issue #18, found by
    /// `just chaos` scenario 10). An empty quorum queue costs a small Raft group per channel.
    fn standby_queue_args(&self) -> FieldTable {
        let mut args = self.base_args();
        // Should anything ever be published there by mistake, it is dropped at once instead
        // of piling up where nobody reads (the consumers take no messages, see consumer.rs).
        args.insert("x-max-length".into(), AMQPValue::LongInt(0));
        args
    }

    /// The default (at-most-once) dead-lettering of quorum queues can drop a message if the
    /// target is briefly unavailable; at-least-once keeps it until the target confirms.
    /// RabbitMQ requires `reject-publish` overflow for it.
    fn at_least_once_dead_lettering(&self, args: &mut FieldTable) {
        args.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString("at-least-once".into()),
        );
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(delays: Vec<u64>) -> Topology {
        Topology::from_config(&AmqpConfig {
            delays_ms: delays,
            ..AmqpConfig::default()
        })
    }

    #[test]
    fn retries_wait_in_the_smallest_level_that_is_long_enough() {
        let t = topology(vec![5_000, 1_000, 30_000, 1_000]);
        assert_eq!(t.delays().len(), 3);
        assert_eq!(t.delay_level_for(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            t.delay_level_for(Duration::from_millis(1_500)),
            Duration::from_secs(5)
        );
        assert_eq!(
            t.delay_level_for(Duration::from_secs(3_600)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn an_empty_delay_list_still_has_one_level() {
        assert_eq!(topology(vec![]).delays(), &[Duration::from_secs(1)]);
    }
}
