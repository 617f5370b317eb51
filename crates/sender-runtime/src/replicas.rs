//! Issue #18: the provider account's limit holds for the account as a whole, however many
//! replicas of the sender run. Each replica counts the replicas as the consumers of the
//! channel's send queue and its standby queue (a replica holds one consumer on one of the
//! two, the standby one while its breaker is open) and takes an equal share of the account
//! ([`Limiter::set_replicas`]).
//!
//! The count is read every `sender.replica_check_ms`, so a change takes up to that long to
//! be seen by every replica. A replica that goes away leaves its share unused for up to two
//! counts (the safe side: a lower count must be seen twice). A replica that comes while others run would add its share before they give
//! up theirs, so it first counts the others, takes its share, and sends nothing for one
//! period, by which time they have seen its consumer.

use std::sync::Arc;
use std::time::Duration;

use herald_runtime::amqp::Broker;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use crate::limits::Limiter;

pub struct Replicas {
    broker: Broker,
    /// The send queue and its standby queue.
    queues: [String; 2],
    limiter: Arc<Limiter>,
    every: Duration,
    link: Option<(Connection, Channel)>,
}

impl Replicas {
    pub fn new(
        broker: Broker,
        queues: [String; 2],
        limiter: Arc<Limiter>,
        every: Duration,
    ) -> Self {
        Replicas {
            broker,
            queues,
            limiter,
            every,
            link: None,
        }
    }

    /// Before this replica consumes: the others' count, this one's share, and the hold when
    /// there are others. A broker that cannot be asked leaves the full account (one replica)
    /// until the next count.
    pub async fn join(&mut self) {
        let Ok(Ok(others)) = tokio::time::timeout(self.every, self.count()).await else {
            return;
        };
        if others > 0 {
            self.limiter.set_replicas(others + 1);
            self.limiter
                .block_account(self.every + Duration::from_millis(500));
            tracing::info!(
                replicas = others + 1,
                hold_ms = (self.every + Duration::from_millis(500)).as_millis() as u64,
                "other replicas send through this provider account: taking a share of its limit"
            );
        }
    }

    /// Counts again every period until shutdown. A larger count applies at once (a replica
    /// came: narrow this one's part now); a smaller one only when the next count agrees,
    /// because after a broker restart the replicas reconnect one by one, and a count taken
    /// while the others are still away would hand this one the whole account.
    pub async fn keep_counting(mut self, shutdown: CancellationToken) {
        let mut lower: Option<u32> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.every) => {}
            }
            // Bounded, and given up at shutdown: a connection that hangs must not hold up the
            // sender's stop.
            let counted = tokio::select! {
                _ = shutdown.cancelled() => break,
                counted = tokio::time::timeout(self.every, self.count()) => counted,
            };
            match counted {
                // This replica's own consumer is among them once it consumes; while it does
                // not (a reconnect), it sends nothing, and at least one part is its own.
                Ok(Ok(count)) => {
                    let replicas = count.max(1);
                    let current = self.limiter.replicas();
                    let apply =
                        replicas > current || (replicas < current && lower == Some(replicas));
                    lower = (replicas < current).then_some(replicas);
                    if apply {
                        tracing::info!(replicas, "replicas sharing the provider account changed");
                        self.limiter.set_replicas(replicas);
                        lower = None;
                    }
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "cannot count the replicas; keeping the last count");
                    self.link = None;
                }
                Err(_) => {
                    tracing::debug!("counting the replicas timed out; keeping the last count");
                    self.link = None;
                }
            }
        }
        if let Some((connection, _)) = self.link.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                connection.close(200, "shutdown".into()),
            )
            .await;
        }
    }

    /// Consumers of the two queues. A queue not declared yet counts 0 (and costs the
    /// channel, which the broker closes on a failed passive declare).
    async fn count(&mut self) -> lapin::Result<u32> {
        if self
            .link
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            let connection = self.broker.connect("replicas").await?;
            let channel = connection.create_channel().await?;
            self.link = Some((connection, channel));
        }
        let Some((connection, channel)) = &mut self.link else {
            return Ok(0);
        };
        let mut total = 0;
        for queue in &self.queues {
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(q) => total += q.consumer_count(),
                Err(error) if matches!(error.kind(), lapin::ErrorKind::ProtocolError(_)) => {
                    *channel = connection.create_channel().await?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(total)
    }
}
