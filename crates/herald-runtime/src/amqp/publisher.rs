//! Publishing with confirms.
//!
//! Every message is persistent and `mandatory` (unless the caller says that nobody may be
//! bound, [`Message::unroutable_is_fine`]); the broker confirms each one. A message the
//! broker cannot route comes back as [`PublishError::Unroutable`], never silently dropped.
//! Confirms are pipelined: [`Publisher::publish_batch`] sends a whole batch before waiting,
//! and concurrent callers share one channel, so many confirms are in flight at once.
//!
//! When the connection drops, the publisher reconnects with backoff and sends again whatever
//! was not confirmed, until `publish_timeout`. A message may therefore reach the broker twice
//! (the confirm was lost, not the message); consumers drop repeats by message id.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use crate::amqp::backoff::Backoff;
use crate::amqp::connection::Broker;
use crate::amqp::headers;
use crate::amqp::trace::TraceContext;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub exchange: String,
    pub routing_key: String,
    pub body: &'a [u8],
    pub properties: BasicProperties,
    /// Published `mandatory` (the default): unroutable comes back as an error.
    pub mandatory: bool,
}

impl<'a> Message<'a> {
    /// A JSON message. The publisher adds persistence, a timestamp and the trace context.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: &'a [u8],
    ) -> Self {
        Message {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body,
            properties: BasicProperties::default().with_content_type("application/json".into()),
            mandatory: true,
        }
    }

    /// For a message nobody may be bound to (an outcome on `outcome.<tenant>`): published
    /// without `mandatory`, so the broker drops it instead of returning it, body and all,
    /// on every publish.
    pub fn unroutable_is_fine(mut self) -> Self {
        self.mandatory = false;
        self
    }

    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.properties = self
            .properties
            .with_message_id(ShortString::from(id.into()));
        self
    }

    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.properties = self
            .properties
            .with_correlation_id(ShortString::from(id.into()));
        self
    }

    pub fn reply_to(mut self, queue: impl Into<String>) -> Self {
        self.properties = self
            .properties
            .with_reply_to(ShortString::from(queue.into()));
        self
    }

    /// The AMQP `type` property: what the body is (`herald.send_job.v1`).
    pub fn kind(mut self, kind: &str) -> Self {
        self.properties = self.properties.with_type(kind.into());
        self
    }

    pub fn headers(mut self, headers: FieldTable) -> Self {
        self.properties = self.properties.with_headers(headers);
        self
    }

    pub fn with_properties(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// No queue is bound for this routing key. Retrying will not help.
    #[error("unroutable: exchange {exchange:?} routes nothing for key {routing_key:?} ({reply})")]
    Unroutable {
        exchange: String,
        routing_key: String,
        reply: String,
    },
    /// The broker could not be reached, or refused the message, for the whole timeout.
    #[error("broker unavailable for {waited:?}: {last_error}")]
    Unavailable {
        waited: Duration,
        last_error: String,
    },
}

/// A publisher with its own connection. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    broker: Broker,
    role: String,
    live: RwLock<Option<Arc<Live>>>,
    /// One reconnect at a time; the others wait and then use its connection.
    connecting: Mutex<()>,
    generation: AtomicU64,
    /// The connection's broker user, set as every message's `user_id`.
    user_id: ShortString,
}

/// Returns once the connection or the channel of `live` is no longer open (looked at every
/// 100 ms).
async fn connection_lost(live: &Live) {
    while live.connection.status().connected() && live.channel.status().connected() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one round of sending found.
struct Sent {
    /// Indices not confirmed (nacked, or lost with the connection), to send again.
    unconfirmed: Vec<usize>,
    /// The connection or channel error, when one happened: the connection is replaced.
    broken: Option<String>,
}

struct Live {
    connection: Connection,
    channel: Channel,
    generation: u64,
}

impl Publisher {
    /// Connects lazily, on the first publish. A publisher does not report to `/readyz`: an
    /// idle one cannot know its connection's state, and the service's broker watch already
    /// says whether the broker is reachable; failed publishes are errors for the caller.
    pub fn new(broker: Broker, role: &str) -> Self {
        Publisher {
            inner: Arc::new(Inner {
                user_id: ShortString::from(broker.config().username()),
                broker,
                role: role.to_owned(),
                live: RwLock::new(None),
                connecting: Mutex::new(()),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// How long a publish keeps trying before it reports the broker unavailable.
    pub fn publish_timeout(&self) -> std::time::Duration {
        self.inner.broker.config().publish_timeout()
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(&self, message: &Message<'_>) -> Result<(), PublishError> {
        self.publish_batch(std::slice::from_ref(message)).await
    }

    /// Publishes all messages, then waits for all confirms. Returns once every message is
    /// confirmed, or with the first unroutable one, or when the timeout passes.
    pub async fn publish_batch(&self, messages: &[Message<'_>]) -> Result<(), PublishError> {
        let started = Instant::now();
        let deadline = started + self.inner.broker.config().publish_timeout();
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        let mut backoff = Backoff::new(
            Duration::from_millis(50),
            self.inner.broker.config().reconnect_max(),
        );
        let mut last_error = String::new();
        let mut nacks = 0u32;
        // Trace context and timestamp are fixed once, so a resend is the same message.
        let user = self.inner.user_id.clone();
        let prepared: Vec<BasicProperties> = messages
            .iter()
            .map(|m| finalize_properties(m, &user))
            .collect();
        // Connecting and waiting for confirms are bounded by the deadline too: a broker that
        // blocks publishers (a memory or disk alarm) keeps the connection up but confirms
        // nothing, and callers (consumer slots, the outbox relay's transaction) must not wait
        // for the whole alarm.
        let unavailable = |last_error: String| PublishError::Unavailable {
            waited: started.elapsed(),
            last_error,
        };
        loop {
            match tokio::time::timeout_at(deadline, self.live()).await {
                Err(_) => {
                    return Err(unavailable(format!(
                        "could not connect within the publish timeout; last error: {last_error}"
                    )));
                }
                Ok(Err(error)) => last_error = error.to_string(),
                Ok(Ok(live)) => {
                    // The send races the connection's status: a publish or a confirm that
                    // was in flight when the connection died is not always ended by the AMQP
                    // client, and would otherwise hold this call (and the caller's slot)
                    // until the publish timeout (seen in `just chaos` scenario 10, where a
                    // producer waited the whole 120 s after its node was killed).
                    let sent = tokio::time::timeout_at(deadline, async {
                        tokio::select! {
                            sent = self.send(&live, messages, &prepared, &pending) => Some(sent),
                            () = connection_lost(&live) => None,
                        }
                    })
                    .await;
                    let sent = match sent {
                        Ok(Some(sent)) => sent?,
                        Ok(None) => Sent {
                            unconfirmed: pending.clone(),
                            broken: Some("the connection was lost while publishing".into()),
                        },
                        Err(_) => {
                            self.discard(live.generation).await;
                            return Err(unavailable("no confirm within the publish timeout (is the broker blocking publishers?)".into()));
                        }
                    };
                    pending = sent.unconfirmed;
                    if pending.is_empty() {
                        return Ok(());
                    }
                    match sent.broken {
                        Some(error) => {
                            last_error = error;
                            nacks = 0;
                            self.discard(live.generation).await;
                        }
                        None => {
                            // A nack is first retried on the same connection, which other
                            // publishers are using too: a queue at its limit refuses on any.
                            // But a channel that published to a quorum queue while its leader
                            // moved to another node can keep refusing after a new leader was
                            // elected (seen in `just chaos` scenario 10, RabbitMQ 3.10), while
                            // a new connection is taken at once. So a third refusal in a row
                            // replaces the connection.
                            nacks += 1;
                            last_error = "the broker refused messages (nack)".into();
                            if nacks.is_multiple_of(3) {
                                tracing::warn!(role = %self.inner.role, "the broker keeps refusing messages on this connection; reconnecting");
                                self.discard(live.generation).await;
                            }
                        }
                    }
                }
            }
            let wait = backoff.next_delay();
            if Instant::now() + wait > deadline {
                return Err(PublishError::Unavailable {
                    waited: started.elapsed(),
                    last_error,
                });
            }
            tracing::warn!(role = %self.inner.role, pending = pending.len(), error = %last_error, retry_in_ms = wait.as_millis() as u64, "publish failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends the pending messages on one channel and collects their confirms.
    async fn send(
        &self,
        live: &Live,
        messages: &[Message<'_>],
        prepared: &[BasicProperties],
        pending: &[usize],
    ) -> Result<Sent, PublishError> {
        let mut confirms = Vec::with_capacity(pending.len());
        let mut failed = Vec::new();
        let mut error = None;
        for &i in pending {
            if error.is_some() {
                failed.push(i);
                continue;
            }
            let message = &messages[i];
            let options = BasicPublishOptions {
                mandatory: message.mandatory,
                immediate: false,
            };
            match live
                .channel
                .basic_publish(
                    message.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    options,
                    message.body,
                    prepared[i].clone(),
                )
                .await
            {
                Ok(confirm) => confirms.push((i, confirm)),
                Err(e) => {
                    error = Some(e.to_string());
                    failed.push(i);
                }
            }
        }
        let results = join_all(
            confirms
                .into_iter()
                .map(|(i, confirm)| async move { (i, confirm.await) }),
        )
        .await;
        for (i, result) in results {
            match result {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {}
                Ok(Confirmation::Ack(Some(returned))) => {
                    return Err(PublishError::Unroutable {
                        exchange: messages[i].exchange.clone(),
                        routing_key: messages[i].routing_key.clone(),
                        reply: returned.reply_text.to_string(),
                    });
                }
                Ok(Confirmation::Nack(_)) => {
                    // The broker could not take it (a queue at its limit, a node going down).
                    failed.push(i);
                }
                Err(e) => {
                    failed.push(i);
                    error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        failed.sort_unstable();
        Ok(Sent {
            unconfirmed: failed,
            broken: error,
        })
    }

    /// The current channel, connecting when there is none.
    async fn live(&self) -> lapin::Result<Arc<Live>> {
        if let Some(live) = self.inner.live.read().await.as_ref()
            && live.connection.status().connected()
        {
            return Ok(live.clone());
        }
        let _connecting = self.inner.connecting.lock().await;
        // Someone else may have reconnected while this task waited.
        if let Some(live) = self.inner.live.read().await.as_ref()
            && live.connection.status().connected()
        {
            return Ok(live.clone());
        }
        let result = async {
            let connection = self.inner.broker.connect(&self.inner.role).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>((connection, channel))
        }
        .await;
        match result {
            Ok((connection, channel)) => {
                let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
                let live = Arc::new(Live {
                    connection,
                    channel,
                    generation,
                });
                *self.inner.live.write().await = Some(live.clone());
                tracing::debug!(role = %self.inner.role, generation, "publisher connected");
                Ok(live)
            }
            Err(error) => Err(error),
        }
    }

    /// Forgets a broken connection, unless a newer one already replaced it. It is closed
    /// outside the lock and for at most a second: a connection that still looks healthy waits
    /// for the broker's close-ok, which must not hold up the other publishers.
    async fn discard(&self, generation: u64) {
        let old = {
            let mut live = self.inner.live.write().await;
            if live.as_ref().is_some_and(|l| l.generation == generation) {
                live.take()
            } else {
                None
            }
        };
        if let Some(old) = old {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                old.connection.close(320, "publisher reconnecting".into()),
            )
            .await;
        }
    }

    /// Closes the connection. Publishing afterwards reconnects.
    pub async fn close(&self) {
        if let Some(live) = self.inner.live.write().await.take() {
            let _ = live.channel.close(200, "shutdown".into()).await;
            let _ = live.connection.close(200, "shutdown".into()).await;
        }
    }
}

/// Persistent delivery, a timestamp, and the trace context, unless the caller set them.
/// Persistent, timestamped, traced, and signed with this connection's broker user: RabbitMQ
/// refuses a `user_id` other than the connection's, so consumers can trust it (issue #17). A
/// copied message's `user_id` (a retry republished) is replaced; its first publisher travels
/// in Herald's own headers ([`crate::amqp::Origin`]).
fn finalize_properties(message: &Message<'_>, user_id: &ShortString) -> BasicProperties {
    let mut properties = message
        .properties
        .clone()
        .with_delivery_mode(2)
        .with_user_id(user_id.clone());
    if properties.timestamp().is_none() {
        properties = properties.with_timestamp(headers::now_millis() / 1000);
    }
    let mut table = properties.headers().clone().unwrap_or_default();
    if !table.contains_key(headers::TRACEPARENT) {
        headers::set_str(
            &mut table,
            headers::TRACEPARENT,
            TraceContext::for_outgoing().traceparent(),
        );
    }
    properties.with_headers(table)
}
