//! The outbox relay: publishes messages accepted over HTTP (and fired by schedules) to the
//! ingress exchange, with publisher confirms, and marks them published only after the broker
//! confirmed them. So `202 Accepted` holds through a broker outage: the rows wait and go out
//! when it is back. The API and the router both run one; rows are claimed with
//! `SKIP LOCKED`, so any number of relays share the work without publishing a row twice.

use std::time::Duration;

use crate::{PgPool, StoreError, outbox};
use herald_runtime::amqp::{Message, Publisher};
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

/// Rows published per transaction: big enough to pipeline confirms, small enough to keep the
/// row locks short.
const BATCH: i64 = 200;
/// The relay looks anyway this often, in case a notification was missed.
const POLL: Duration = Duration::from_secs(1);

pub struct OutboxRelay {
    pool: PgPool,
    publisher: Publisher,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("broker: {0}")]
    Publish(#[from] herald_runtime::amqp::PublishError),
}

impl OutboxRelay {
    pub fn new(pool: PgPool, publisher: Publisher) -> Self {
        OutboxRelay { pool, publisher }
    }

    /// Relays until shutdown; what is claimed when shutdown comes is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut listener: Option<PgListener> = None;
        let mut failures = 0u32;
        loop {
            let result = self.relay_once().await;
            // After every pass, published or not: during a broker outage this is the number
            // that grows.
            if let Ok(waiting) = outbox::backlog(&self.pool).await {
                metrics::gauge!("herald_outbox_backlog").set(waiting as f64);
            }
            match result {
                Ok(0) => failures = 0,
                Ok(published) => {
                    failures = 0;
                    tracing::debug!(published, "outbox relayed");
                    // More may wait; but a long backlog must not hold up a shutdown.
                    if shutdown.is_cancelled() {
                        break;
                    }
                    continue;
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, "outbox relay failed; the messages stay in the outbox");
                }
            }
            if listener.is_none() {
                listener = self.listen().await;
            }
            let wait = if failures == 0 {
                POLL
            } else {
                Duration::from_millis(250 * 2u64.pow(failures.min(5)))
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                notified = async { listener.as_mut().expect("checked").recv().await }, if listener.is_some() && failures == 0 => {
                    if notified.is_err() {
                        listener = None;
                    }
                }
            }
        }
        self.publisher.close().await;
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(outbox::NOTIFY_CHANNEL).await.ok()?;
        Some(listener)
    }

    /// Publishes one batch; returns how many rows it published.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let rows = outbox::claim(&mut tx, BATCH).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let messages: Vec<Message> = rows
            .iter()
            .map(|row| {
                Message::new(&row.exchange, &row.routing_key, &row.payload)
                    .message_id(&row.message_id)
                    .kind("herald.notify.v1")
            })
            .collect();
        self.publisher.publish_batch(&messages).await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        outbox::mark_published(&mut tx, &ids).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(rows.len())
    }
}
