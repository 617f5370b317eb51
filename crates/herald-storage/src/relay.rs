//! The outbox relay: publishes messages accepted over HTTP (and fired by schedules) to the
//! ingress exchange, with publisher confirms, and marks them published only after the broker
//! confirmed them. So `202 Accepted` holds through a broker outage: the rows wait and go out
//! when it is back. The API and the router both run one; rows are claimed with
//! `SKIP LOCKED`, so any number of relays share the work without publishing a row twice.
//!
//! A row the broker will never take (no queue bound for its routing key, or no such
//! exchange) must not hold up the rows behind it: when a batch is refused, its rows are
//! published one by one, the ones the broker takes are marked published, and each refused
//! one is counted and, after [`REFUSALS`], given up (see [`outbox::record_refusal`]). A broker
//! outage counts nothing: the rows wait for the broker, however long it takes.

use std::collections::HashMap;
use std::time::Duration;

use crate::outbox::OutboxRow;
use crate::{PgPool, StoreError, outbox};
use herald_runtime::amqp::{Message, PublishError, Publisher};
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

/// Rows claimed and published per pass: big enough to pipeline confirms.
const BATCH: i64 = 200;
/// Published rows are deleted after this long.
const KEEP_PUBLISHED: Duration = Duration::from_secs(24 * 3600);
/// Published rows deleted per pass, at most: a backlog of millions goes in small steps.
const DELETE_BATCH: i64 = 5_000;
/// How often a relay deletes old published rows.
const CLEANUP_EVERY: Duration = Duration::from_secs(300);
/// The relay looks anyway this often, in case a notification was missed.
const POLL: Duration = Duration::from_secs(1);
/// Refusals before a row is given up. More than one, so that a binding missing for a moment
/// (a topology being redeclared) does not lose a message at once; a refused row waits 15 s,
/// doubling, before it is tried again (`outbox.retry_at`), so the five span about 4 minutes.
pub const REFUSALS: i32 = 5;
/// lapin's text for an error the broker closes a channel with, over what was published on it:
/// no such exchange (404), access refused (403), a message over the size limit (406). It says
/// nothing about the connection: an outage brings I/O errors and connection-level ("hard")
/// errors, never this.
const CHANNEL_ERROR: &str = "AMQP soft error: ";
/// lapin's text for a publish on a channel the broker has just closed. In a batch, the rows
/// after the one that closed it fail with this, and their error hides the broker's reply.
const CHANNEL_CLOSED: &str = "invalid channel state";

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
        let mut cleaned = std::time::Instant::now();
        loop {
            if cleaned.elapsed() >= CLEANUP_EVERY {
                cleaned = std::time::Instant::now();
                match outbox::delete_published(&self.pool, KEEP_PUBLISHED, DELETE_BATCH).await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::debug!(deleted, "old published outbox rows deleted"),
                    Err(error) => tracing::warn!(%error, "cannot delete old outbox rows"),
                }
            }
            let result = self.relay_once().await;
            // After every pass, published or not: during a broker outage this is the number
            // that grows.
            if let Ok(waiting) = outbox::backlog(&self.pool).await {
                metrics::gauge!("herald_outbox_backlog").set(waiting as f64);
            }
            if let Ok(failed) = outbox::failed(&self.pool).await {
                metrics::gauge!("herald_outbox_failed").set(failed as f64);
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
                notified = async {
                    match listener.as_mut() {
                        Some(listener) => listener.recv().await,
                        None => std::future::pending().await,
                    }
                }, if listener.is_some() && failures == 0 => {
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

    /// Publishes one batch; returns how many rows it published. No transaction is open
    /// while the broker is waited for: the rows are claimed for a while (longer than any
    /// publish can take), published, and then marked.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let rows = outbox::claim(&self.pool, BATCH, self.lease()).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let messages: Vec<Message> = rows.iter().map(message).collect();
        let (published, outage) = match self.publisher.publish_batch(&messages).await {
            Ok(()) => (rows.iter().map(|r| r.id).collect(), None),
            // The rows before the refused one may have been confirmed already and go out
            // again now; the router drops repeats by message id.
            Err(error) if batch_refused(&error) => self.one_by_one(&rows).await?,
            Err(error) => {
                // Given back, so that the next pass (of any relay) takes them at once.
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let _ = outbox::release(&self.pool, &ids).await;
                return Err(error.into());
            }
        };
        // Marked even when the broker went away half-way: what it confirmed is not sent
        // again; what it did not stays claimed until the lease ends.
        outbox::mark_published(&self.pool, &published).await?;
        match outage {
            Some(error) => Err(error.into()),
            None => Ok(published.len()),
        }
    }

    /// How long a claim lasts: a batch, then the same rows one by one, each may take the
    /// publish timeout; a claim that outlived its relay only delays its rows.
    fn lease(&self) -> Duration {
        self.publisher.publish_timeout() * 3 + Duration::from_secs(30)
    }

    /// Publishes each row on its own, after the broker refused their batch: one message at a
    /// time, the broker's answer is about that message. Returns the ids it took, and the
    /// outage that stopped the pass early, if one did (nothing is counted for it).
    async fn one_by_one(
        &self,
        rows: &[OutboxRow],
    ) -> Result<(Vec<i64>, Option<PublishError>), StoreError> {
        // The broker answers a publish to a missing exchange by closing the channel, which
        // the publisher retries until its publish timeout. One such wait per exchange and
        // pass is enough: its other rows are refused for the same reason.
        let mut missing: HashMap<&str, String> = HashMap::new();
        let mut published = Vec::with_capacity(rows.len());
        for row in rows {
            let reason = match missing.get(row.exchange.as_str()) {
                Some(reason) => reason.clone(),
                None => match self.publisher.publish(&message(row)).await {
                    Ok(()) => {
                        published.push(row.id);
                        continue;
                    }
                    Err(error) => match refusal(&error) {
                        Some(reason) => {
                            if reason.contains("NOT_FOUND - no exchange") {
                                missing.insert(&row.exchange, reason.clone());
                            }
                            reason
                        }
                        None => return Ok((published, Some(error))),
                    },
                },
            };
            let mut tx = self.pool.begin().await?;
            let refusal = outbox::record_refusal(&mut tx, row, &reason, REFUSALS).await?;
            tx.commit().await?;
            if refusal.given_up {
                tracing::error!(
                    outbox_id = row.id, message_id = %row.message_id, exchange = %row.exchange,
                    routing_key = %row.routing_key, attempts = refusal.attempts, error = %reason,
                    "the broker refuses this message for good; given up and marked failed"
                );
            } else {
                tracing::error!(
                    outbox_id = row.id, message_id = %row.message_id, exchange = %row.exchange,
                    routing_key = %row.routing_key, attempts = refusal.attempts, error = %reason,
                    "the broker refuses this message; it is tried again"
                );
            }
        }
        Ok((published, None))
    }
}

fn message(row: &OutboxRow) -> Message<'_> {
    Message::new(&row.exchange, &row.routing_key, &row.payload)
        .message_id(&row.message_id)
        .kind(&row.kind)
}

/// Whether a batch failed over something in it rather than an outage: then its rows are
/// worth publishing one by one.
///
/// The publisher has no variant for a channel the broker closed (a missing exchange, 404): it
/// takes it for a broken connection, retries until its publish timeout, and reports
/// `Unavailable` with the last error as text. That text is the only way to tell; in a batch
/// of more than a few rows it is usually [`CHANNEL_CLOSED`] rather than the broker's reply.
/// Taking an outage for this costs one more publish timeout in `one_by_one`, where the first
/// row fails as an outage and nothing is counted.
fn batch_refused(error: &PublishError) -> bool {
    match error {
        PublishError::Unroutable { .. } => true,
        PublishError::Unavailable { last_error, .. } => {
            last_error.contains(CHANNEL_ERROR) || last_error.contains(CHANNEL_CLOSED)
        }
    }
}

/// Why the broker will refuse this one message again, or `None` when it may take it later (an
/// outage, a broker blocking publishers). Published alone, a message that closes the channel
/// leaves the broker's reply as the last error (see [`batch_refused`]).
fn refusal(error: &PublishError) -> Option<String> {
    match error {
        PublishError::Unroutable { .. } => Some(error.to_string()),
        PublishError::Unavailable { last_error, .. } => last_error
            .split_once(CHANNEL_ERROR)
            .map(|(_, reply)| format!("the broker closed the channel: {reply}")),
    }
}
