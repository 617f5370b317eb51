//! Answers for producers (R4): when every delivery of a message is final, or the message
//! failed as a whole, publish its outcome on the events exchange (`outcome.<tenant>`) and,
//! when the request named `reply_to`, reply there with its `correlation_id`.
//!
//! The outcome is published after the transaction that finished the message and marked
//! published afterwards. A router that dies in between publishes it when the event comes
//! back, so a producer may see an outcome twice (its `messageId` tells), never not at all.

use herald_runtime::amqp::{Message, PublishError, Publisher};
use herald_storage::{PgPool, StoreError, tracking};
use messaging_core::events::{MessageOutcome, RecipientOutcome, RecipientResult};
use messaging_core::failure::Failure;
use messaging_core::topology::{Names, routing};
use messaging_core::values::{IdempotencyKey, TenantKey, UserId};
use messaging_core::{DeliveryStatus, EnvelopeVersion, FailureClass, MessageStatus};
use std::collections::HashMap;

use uuid::Uuid;

/// Recipients listed in one outcome; the counts cover all of them. A broadcast's outcome
/// is for the producer's bookkeeping, not a copy of the delivery table.
pub const MAX_LISTED_RECIPIENTS: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum OutcomeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot publish the outcome: {0}")]
    Publish(PublishError),
}

#[derive(Clone)]
pub struct Outcomes {
    pool: PgPool,
    publisher: Publisher,
    names: Names,
}

impl Outcomes {
    pub fn new(pool: PgPool, publisher: Publisher, names: Names) -> Self {
        Outcomes {
            pool,
            publisher,
            names,
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The publisher (with confirms) for what the router tells others on the events exchange.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Publishes every due outcome nobody published: a message finished more than a while
    /// ago whose outcome publish failed for good, or one finished outside the router (the
    /// outbox relay giving up a request). Runs until shutdown, every `every`.
    pub async fn sweep(
        self,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            // Older than one sweep: the usual path publishes an outcome within milliseconds of
            // finishing the message, and must not race this one.
            let before = chrono::Utc::now()
                - chrono::Duration::from_std(every).unwrap_or(chrono::Duration::seconds(30));
            if let Err(error) = self.sweep_once(before).await {
                tracing::warn!(%error, "cannot publish late outcomes");
            }
        }
    }

    /// One look: publishes the outcomes of messages finished before `before` and still
    /// unpublished, up to 100. Returns how many it published.
    pub async fn sweep_once(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, OutcomeError> {
        let mut published = 0;
        for message_id in tracking::unpublished_outcomes(&self.pool, before, 100).await? {
            if self.publish_if_due(message_id).await? {
                tracing::info!(%message_id, "late outcome published");
                published += 1;
            }
        }
        Ok(published)
    }

    /// Publishes the outcome of `message_id` when it is final and not yet published.
    /// `true` when this call published it.
    pub async fn publish_if_due(&self, message_id: Uuid) -> Result<bool, OutcomeError> {
        Ok(self.publish_due(&[message_id]).await? > 0)
    }

    /// [`Outcomes::publish_if_due`] for many messages: one query finds the due ones, one
    /// reads their deliveries, one publish with confirms sends the outcomes, one statement
    /// marks them. Returns how many this call published.
    pub async fn publish_due(&self, message_ids: &[Uuid]) -> Result<usize, OutcomeError> {
        if message_ids.is_empty() {
            return Ok(0);
        }
        let pending = tracking::pending_outcomes(&self.pool, message_ids).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = pending.iter().map(|p| p.id).collect();
        let mut rows: HashMap<Uuid, Vec<tracking::OutcomeRecipient>> = HashMap::new();
        for (message_id, row) in
            tracking::outcome_recipients_of(&self.pool, &ids, MAX_LISTED_RECIPIENTS).await?
        {
            rows.entry(message_id).or_default().push(row);
        }
        let mut built = Vec::with_capacity(pending.len());
        for p in &pending {
            let outcome = self
                .build(p, rows.remove(&p.id).unwrap_or_default())
                .await?;
            let body = serde_json::to_vec(&outcome).unwrap_or_default();
            built.push((p, outcome, body));
        }
        let exchange = self.names.events_exchange();
        // Nobody binding outcomes of a tenant is fine: nothing to tell on the exchange.
        let events: Vec<Message> = built
            .iter()
            .map(|(p, _, body)| {
                Message::new(&exchange, routing::outcome(&p.tenant_key), body)
                    .message_id(format!("outcome/{}", p.id))
                    .unroutable_is_fine()
            })
            .collect();
        self.publisher
            .publish_batch(&events)
            .await
            .map_err(OutcomeError::Publish)?;
        // One reply that cannot go out keeps only its own message's outcome unmarked (the
        // sweep tries it again); the others are done, and their events are not sent twice.
        let mut done = Vec::with_capacity(built.len());
        let mut failed = None;
        for (p, outcome, body) in &built {
            match self.reply(p, body).await {
                Ok(()) => done.push((p, outcome)),
                Err(error) => {
                    tracing::warn!(message_id = %p.id, %error, "cannot reply with the outcome; it is tried again later");
                    failed.get_or_insert(error);
                }
            }
        }
        if done.is_empty()
            && let Some(error) = failed
        {
            return Err(error);
        }
        let done_ids: Vec<Uuid> = done.iter().map(|(p, _)| p.id).collect();
        tracking::mark_outcomes_published(&self.pool, &done_ids).await?;
        for (p, outcome) in &done {
            metrics::counter!("herald_router_outcomes_total", "status" => p.status.as_str())
                .increment(1);
            tracing::info!(message_id = %p.id, delivered = outcome.delivered, failed = outcome.failed, "outcome published");
        }
        Ok(done.len())
    }

    /// The reply to the request's `reply_to`, when it named one.
    async fn reply(
        &self,
        pending: &tracking::PendingOutcome,
        body: &[u8],
    ) -> Result<(), OutcomeError> {
        let Some(reply_to) = pending
            .reply_to
            .as_deref()
            .filter(|r| !r.is_empty())
            // Checked at ingress too; a row stored before that check is held to it here.
            .filter(|r| self.names.is_reply_queue_of(&pending.tenant_key, r))
        else {
            return Ok(());
        };
        // The default exchange routes by queue name, as RPC replies do.
        let mut reply =
            Message::new("", reply_to, body).message_id(format!("outcome/{}", pending.id));
        if let Some(correlation) = &pending.correlation_id {
            reply = reply.correlation_id(correlation.clone());
        }
        match self.publisher.publish(&reply).await {
            Ok(()) => Ok(()),
            Err(PublishError::Unroutable { .. }) => {
                tracing::warn!(message_id = %pending.id, reply_to, "the reply queue does not exist (any more); outcome not replied");
                Ok(())
            }
            Err(e) => Err(OutcomeError::Publish(e)),
        }
    }

    /// The outcome from the message and its first deliveries (`rows`, at most
    /// [`MAX_LISTED_RECIPIENTS`]).
    async fn build(
        &self,
        pending: &tracking::PendingOutcome,
        rows: Vec<tracking::OutcomeRecipient>,
    ) -> Result<MessageOutcome, OutcomeError> {
        // A message to people lists all its deliveries; only a broadcast needs counting.
        let (sent, failed) = if (rows.len() as i64) < MAX_LISTED_RECIPIENTS {
            let count =
                |status: DeliveryStatus| rows.iter().filter(|r| r.status == status).count() as i64;
            (count(DeliveryStatus::Sent), count(DeliveryStatus::Failed))
        } else {
            tracking::outcome_counts(&self.pool, pending.id).await?
        };
        let completed_at = pending.completed_at.unwrap_or_else(chrono::Utc::now);
        let recipients = rows
            .into_iter()
            .filter(|r| r.status != DeliveryStatus::Pending)
            .map(|r| RecipientOutcome {
                user_id: r
                    .user_external_id
                    .as_deref()
                    .and_then(|u| UserId::parse(u).ok()),
                channel: r.channel,
                delivery_id: Some(r.delivery_id),
                attempts: u32::try_from(r.attempts).unwrap_or(0),
                result: if r.status == DeliveryStatus::Sent {
                    RecipientResult::Delivered {
                        delivered_at: r.sent_at.unwrap_or(completed_at),
                    }
                } else {
                    RecipientResult::Failed {
                        failure: Failure::new(
                            // A failed row always has its class; a pending one has none.
                            r.failure_class.unwrap_or(FailureClass::Temporary),
                            r.failure_code.unwrap_or_else(|| "failed".into()),
                            r.failure_message.unwrap_or_default(),
                        ),
                    }
                },
            })
            .collect();
        // The message failed as a whole. No template, an unknown subscription, ...: nothing a
        // retry of the same request would change (R4 b). The router or the broker gave up on
        // it: the service was unhealthy (R4 c), and the same request may well go through later.
        let error = (pending.status == MessageStatus::Failed).then(|| {
            let code = pending
                .error_code
                .clone()
                .unwrap_or_else(|| "failed".into());
            let message = pending.error_message.clone().unwrap_or_default();
            match code.as_str() {
                "retries_exhausted" | "unroutable" => Failure::unhealthy(code, message),
                _ => Failure::permanent(code, message),
            }
        });
        Ok(MessageOutcome {
            version: EnvelopeVersion,
            message_id: pending.id,
            tenant: TenantKey::parse(&pending.tenant_key)
                .map_err(|e| StoreError::Invalid(e.to_string()))?,
            idempotency_key: pending
                .idempotency_key
                .as_deref()
                .and_then(|k| IdempotencyKey::parse(k).ok()),
            completed_at,
            delivered: u32::try_from(sent).unwrap_or(u32::MAX),
            failed: u32::try_from(failed).unwrap_or(u32::MAX),
            error,
            recipients,
        })
    }
}
