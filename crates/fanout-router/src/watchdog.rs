//! The send-queue watchdog (R4 c): a channel whose send queue nothing consumes fails its jobs
//! as `unhealthy` / `no_sender` instead of leaving them, and their producers, waiting forever.
//!
//! Every `router.sender_check_ms` it passive-declares each channel's send queue and its
//! standby queue and exports their consumers and the ready jobs as gauges. A sender whose
//! circuit breaker paused it consumes the standby queue instead of the send queue: it is
//! alive and its jobs wait for the provider (up to the sender's maximum age), so it counts as
//! a consumer. A send queue that has had no consumer on either queue for
//! `router.no_sender_after_ms` (no sender runs, or none is configured) is drained: each job
//! gets a failed delivery event (with a confirm, through the same [`Events`] the senders use)
//! and is acked only after that. The router's own tracking consumer then records the failure
//! and, when nothing else of the message is pending, publishes its outcome; a sender that
//! starts later never sends a job that was already reported failed.
//!
//! Each tick also records what it saw in `channel_health`, where the API finds why a
//! delivery is still pending (its channel's senders are all paused, or none runs).
//!
//! The time without a consumer is remembered per replica, in memory: a replica that starts
//! waits the whole period before it drains anything. Several replicas draining at once is
//! harmless: each job reaches one of them, and tracking drops a repeated event for a delivery
//! that is already final.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald_runtime::amqp::delivery_events::Events;
use herald_runtime::amqp::{Broker, PublishError};
use herald_storage::PgPool;
use herald_storage::channel_health::{self, ChannelLook};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel as AmqpChannel, Connection};
use messaging_core::Channel;
use messaging_core::events::AttemptResult;
use messaging_core::failure::Failure;
use messaging_core::job::{SendJob, SendJobBundle};
use messaging_core::topology::Names;
use tokio_util::sync::CancellationToken;

/// Jobs withdrawn from one queue per tick (a bundle's all together, so up to 99 more): bounds
/// a tick's length, so the other channels' gauges (and shutdown) do not wait for a backlog of
/// millions.
const DRAIN_CAP: usize = 1000;

/// Jobs withdrawn between two looks at the queues' consumers: a sender that starts (or
/// pauses) during a drain takes over after about this many (a bundle is taken whole).
const RECHECK_EVERY: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("delivery event not published: {0}")]
    Publish(#[from] PublishError),
}

/// What one tick saw of one channel's send queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueReport {
    pub channel: Channel,
    /// Consumers of the send queue: senders taking jobs.
    pub consumers: u32,
    /// Consumers of the standby queue: senders that are up but paused by their breaker.
    pub standby_consumers: u32,
    /// Ready jobs when the tick looked, before any drain.
    pub messages: u32,
    /// Jobs reported failed and acked.
    pub withdrawn: usize,
    /// Jobs that were not send jobs at all, handed to the queue's dead-letter queue.
    pub dead_lettered: usize,
}

pub struct SendQueueWatchdog {
    broker: Broker,
    names: Names,
    /// For the attempt number of each withdrawn job's event.
    pool: PgPool,
    events: Events,
    every: Duration,
    /// `None`: only the gauges, never a drain.
    no_sender_after: Option<Duration>,
    /// The watchdog's own connection, so a drain never competes with the consumers' channels;
    /// `None` after an error, and opened again on the next tick. The channel is replaced
    /// when the broker closes it (a missing standby queue does).
    amqp: Option<(Connection, AmqpChannel)>,
    /// Per channel, since when neither its send queue nor its standby queue has had a
    /// consumer (as this replica saw it).
    idle_since: HashMap<Channel, Instant>,
    /// A drain stops between two jobs when shutdown begins.
    shutdown: CancellationToken,
}

impl SendQueueWatchdog {
    pub fn new(
        broker: Broker,
        names: Names,
        pool: PgPool,
        events: Events,
        every: Duration,
        no_sender_after: Option<Duration>,
    ) -> Self {
        SendQueueWatchdog {
            broker,
            names,
            pool,
            events,
            every,
            no_sender_after,
            amqp: None,
            idle_since: HashMap::new(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Ticks until shutdown. A broker or database outage is logged and tried again on the
    /// next tick; it never ends the task. The first tick waits one period, so the consumers
    /// have declared the topology before the watchdog looks at it.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.shutdown = shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.every) => {}
            }
            if let Err(error) = self.tick().await {
                tracing::warn!(%error, "send-queue watchdog: check failed; trying again on the next tick");
            }
        }
        self.disconnect().await;
        self.events.close().await;
    }

    /// One look at every channel's send queue, now.
    pub async fn tick(&mut self) -> Result<Vec<QueueReport>, WatchdogError> {
        self.tick_at(Instant::now()).await
    }

    /// One look at every channel's send queue, as if it were `now`: tests move the clock
    /// instead of waiting. Any error drops the connection; the next tick opens a new one.
    pub async fn tick_at(&mut self, now: Instant) -> Result<Vec<QueueReport>, WatchdogError> {
        let result = self.check_all(now).await;
        if result.is_err() {
            self.disconnect().await;
        }
        result
    }

    async fn check_all(&mut self, now: Instant) -> Result<Vec<QueueReport>, WatchdogError> {
        let mut reports = Vec::with_capacity(Channel::ALL.len());
        for kind in Channel::ALL {
            let look = self.look(kind).await?;
            let label = kind.as_str();
            metrics::gauge!("herald_send_queue_consumers", "channel" => label)
                .set(f64::from(look.consumers));
            metrics::gauge!("herald_send_queue_standby_consumers", "channel" => label)
                .set(f64::from(look.standby_consumers));
            metrics::gauge!("herald_send_queue_messages", "channel" => label)
                .set(f64::from(look.messages));
            let mut report = QueueReport {
                channel: kind,
                consumers: look.consumers,
                standby_consumers: look.standby_consumers,
                messages: look.messages,
                withdrawn: 0,
                dead_lettered: 0,
            };
            if look.has_sender() {
                self.idle_since.remove(&kind);
            } else {
                let since = *self.idle_since.entry(kind).or_insert(now);
                let idle = now.saturating_duration_since(since);
                if let Some(limit) = self.no_sender_after
                    && idle >= limit
                    && look.messages > 0
                {
                    self.drain(kind, idle, &mut report).await?;
                }
            }
            reports.push(report);
        }
        // For the API (R4 c): a producer asking about a pending delivery learns that its
        // channel's senders are paused or gone. A database outage does not stop the watch.
        let looks: Vec<ChannelLook> = reports
            .iter()
            .map(|r| ChannelLook {
                channel: r.channel,
                senders: r.consumers,
                paused: r.standby_consumers,
                waiting: r.messages,
            })
            .collect();
        if let Err(error) = channel_health::record(&self.pool, &looks).await {
            tracing::warn!(%error, "send-queue watchdog: cannot record the channels' health");
        }
        Ok(reports)
    }

    /// The watchdog's channel, (re)opened as needed.
    async fn channel(&mut self) -> Result<AmqpChannel, lapin::Error> {
        if let Some((connection, channel)) = &mut self.amqp
            && connection.status().connected()
        {
            if !channel.status().connected() {
                *channel = connection.create_channel().await?;
            }
            return Ok(channel.clone());
        }
        self.disconnect().await;
        let connection = self.broker.connect("watchdog").await?;
        let channel = connection.create_channel().await?;
        self.amqp = Some((connection, channel.clone()));
        Ok(channel)
    }

    /// One look at a channel's send queue and standby queue.
    async fn look(&mut self, kind: Channel) -> Result<Look, lapin::Error> {
        // The standby queue first: a missing one costs the channel, and the send queue's
        // look then gets a fresh one.
        let standby = self.names.standby_queue(kind);
        let standby_consumers = match declare_passive(&self.channel().await?, &standby).await {
            Ok((consumers, _)) => consumers,
            Err(error) if is_not_found(&error) => {
                // Declared by an older topology, before standby queues: no sender there can
                // be paused on one. The broker closed the channel over the 404, which
                // lapin may not have noticed yet, so replace it now.
                tracing::debug!(queue = %standby, "no standby queue; counted as no paused sender");
                if let Some((connection, channel)) = &mut self.amqp {
                    *channel = connection.create_channel().await?;
                }
                0
            }
            Err(error) => return Err(error),
        };
        let (consumers, messages) =
            declare_passive(&self.channel().await?, &self.names.send_queue(kind)).await?;
        Ok(Look {
            consumers,
            standby_consumers,
            messages,
        })
    }

    /// Withdraws up to [`DRAIN_CAP`] jobs, each reported failed before it is acked.
    async fn drain(
        &mut self,
        kind: Channel,
        idle: Duration,
        report: &mut QueueReport,
    ) -> Result<(), WatchdogError> {
        let failure = Failure::unhealthy(
            "no_sender",
            format!(
                "no {kind} sender has consumed the send queue for {} s (none is running, or none is configured); the job was withdrawn",
                idle.as_secs()
            ),
        );
        let result = self.withdraw(kind, &failure, report).await;
        if report.withdrawn + report.dead_lettered > 0 {
            tracing::warn!(channel = %kind, withdrawn = report.withdrawn, dead_lettered = report.dead_lettered, idle_secs = idle.as_secs(), "no sender consumes the send queue; jobs withdrawn and reported failed (unhealthy, no_sender)");
            metrics::counter!("herald_router_jobs_withdrawn_total", "channel" => kind.as_str())
                .increment(report.withdrawn as u64);
        }
        result
    }

    async fn withdraw(
        &mut self,
        kind: Channel,
        failure: &Failure,
        report: &mut QueueReport,
    ) -> Result<(), WatchdogError> {
        let queue = self.names.send_queue(kind);
        // Jobs, not messages: a bundle holds up to 100.
        let (mut taken, mut since_look) = (0, 0);
        while taken < DRAIN_CAP {
            if self.shutdown.is_cancelled() {
                return Ok(());
            }
            if since_look >= RECHECK_EVERY {
                since_look = 0;
                if self.look(kind).await?.has_sender() {
                    tracing::info!(channel = %kind, "a sender started consuming, or is up and paused; drain stopped");
                    return Ok(());
                }
            }
            // Each job is acked before the next is taken, so a channel replaced by a look
            // holds nothing unacked.
            let channel = self.channel().await?;
            let Some(message) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                return Ok(());
            };
            let delivery = message.delivery;
            // A lone job or a bundle of them (issue #16). A bundle's items that are not jobs
            // (none the router writes) are kept for a person with the message: its jobs are
            // reported first, and then it is dead-lettered.
            let (jobs, unreadable) = match SendJobBundle::jobs_of(&delivery.data) {
                Ok(jobs) => (jobs, 0),
                Err(error) => match SendJobBundle::items_of(&delivery.data) {
                    Some(items) => {
                        let (jobs, bad): (Vec<_>, Vec<_>) =
                            items.into_iter().partition(Result::is_ok);
                        (jobs.into_iter().flatten().collect(), bad.len())
                    }
                    None => {
                        // As a sender would: the queue's dead-letter queue keeps it for a
                        // person to look at; it can never be delivered or reported.
                        tracing::warn!(channel = %kind, %error, "undecodable send job; dead-lettered");
                        delivery.acker.nack(nack(false)).await?;
                        report.dead_lettered += 1;
                        taken += 1;
                        since_look += 1;
                        continue;
                    }
                },
            };
            taken += jobs.len().max(1);
            since_look += jobs.len().max(1);
            // The attempt the sender would have made next, by the header its retries carry:
            // tracking may not have recorded the sender's last event yet.
            let queued_attempt = herald_runtime::amqp::headers::get_u64(
                delivery.properties.headers().as_ref(),
                herald_runtime::amqp::headers::ATTEMPT,
            )
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(1);
            let mut attempts = Vec::with_capacity(jobs.len());
            for job in &jobs {
                match next_attempt(&self.pool, job).await {
                    Ok(attempt) => attempts.push(attempt.max(queued_attempt)),
                    Err(error) => {
                        delivery.acker.nack(nack(true)).await?;
                        return Err(error.into());
                    }
                }
            }
            let result = AttemptResult::Failed {
                failure: failure.clone(),
            };
            let emitted = futures::future::join_all(
                jobs.iter()
                    .zip(attempts)
                    .map(|(job, attempt)| self.events.emit(job, attempt, result.clone())),
            )
            .await;
            if let Some(Err(error)) = emitted.into_iter().find(Result::is_err) {
                // Unreported, so not withdrawn: the jobs stay for a sender or the next tick
                // (a bundle's jobs reported already are recorded once).
                delivery.acker.nack(nack(true)).await?;
                return Err(error.into());
            }
            report.withdrawn += jobs.len();
            if unreadable > 0 {
                tracing::warn!(channel = %kind, unreadable, reported = jobs.len(), "a bundle with items that are not send jobs; its jobs reported, the bundle dead-lettered");
                delivery.acker.nack(nack(false)).await?;
                report.dead_lettered += unreadable;
            } else {
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
        }
        Ok(())
    }

    async fn disconnect(&mut self) {
        if let Some((connection, _)) = self.amqp.take() {
            let _ = connection.close(200, "watchdog stopping".into()).await;
        }
    }
}

/// What one look saw of a channel's queues.
struct Look {
    consumers: u32,
    standby_consumers: u32,
    messages: u32,
}

impl Look {
    /// A sender consumes the send queue, or is up and paused by its breaker: either way the
    /// jobs are not abandoned.
    fn has_sender(&self) -> bool {
        self.consumers > 0 || self.standby_consumers > 0
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404)
}

/// The queue's consumers and ready messages. The consumers declare the topology; the
/// watchdog only looks, and never creates a queue with the wrong arguments.
async fn declare_passive(channel: &AmqpChannel, queue: &str) -> Result<(u32, u32), lapin::Error> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((declared.consumer_count(), declared.message_count()))
}

/// One past the attempts tracking has recorded: tracking ignores an event whose attempt it
/// has already seen (a repeat), so the withdrawal must count as a new attempt. No row (a job
/// whose delivery is gone) gets 1; tracking then ignores the event as unknown.
async fn next_attempt(pool: &PgPool, job: &SendJob) -> Result<u32, sqlx::Error> {
    let attempts: Option<i32> = sqlx::query_scalar("SELECT attempts FROM deliveries WHERE id = $1")
        .bind(job.delivery_id)
        .fetch_optional(pool)
        .await?;
    Ok(u32::try_from(attempts.unwrap_or(0)).unwrap_or(0) + 1)
}

fn nack(requeue: bool) -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue,
    }
}
