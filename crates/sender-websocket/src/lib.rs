//! The WebSocket channel (R39): programs of the tenant's own (chat bots, a CRM) stay connected
//! to Herald, register for addresses, and receive the messages for them, acknowledging or
//! refusing each one, so the producer's outcome is as precise as for any other channel.
//!
//! # Layout
//!
//! - this file: the `websocket.*` settings, [`WebsocketSender`] and its [`ChannelSender`]
//!   (the replica that took a job hands it to the replicas holding a connection, and waits
//!   for their answer) and [`ServingChannel`] implementations.
//! - [`protocol`]: the frames, client to Herald and Herald to client.
//! - [`socket`]: `GET /ws`: hello with a token, heartbeats, answers.
//! - [`hub`]: this replica's connections by address, with a bounded queue each.
//! - [`link`]: the replica's own queue, bound per address, through which jobs reach the
//!   replica holding the connection (see [`link`] and docs/architecture.md).
//!
//! # Addresses and tokens
//!
//! `Address::Websocket(key)` is `namespace/id` (`support-bot/42`), added through the API like
//! any address. A client connects with a token from `POST /websocket/tokens`, which names the
//! tenant and the namespaces it may receive for; it registers any addresses in them. Several
//! connections for one address, on any replicas, all receive each message (R2).
//!
//! # Outcomes
//!
//! | what happened | kind | code |
//! |---|---|---|
//! | a client acknowledged | delivered | — |
//! | every client refused, one as permanent | permanent | `refused` |
//! | every client refused, as temporary | temporary, retried | `refused` |
//! | no connection for the address anywhere | temporary, retried (class a) | `no_connection` |
//! | no answer within `ack_timeout_ms` (or the connection went) | temporary, retried | `no_ack` |
//!
//! A retry sends the message again to whichever connection is live then: what a client did
//! not acknowledge comes again after it reconnects. The delivery id is the same, so a client
//! drops a repeat (an ack lost on the way).

pub mod hub;
pub mod link;
pub mod protocol;
pub mod socket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use herald_runtime::amqp::{Message, PublishError, Publisher, headers};
use herald_runtime::config::Secret;
use lapin::types::FieldTable;
use messaging_core::job::SendJob;
use messaging_core::values::WsKey;
use messaging_core::{Address, Channel};
use sender_runtime::limits::RateLimits;
use sender_runtime::{
    BuildError, Built, ChannelSender, Receipt, SendError, Serving, ServingChannel,
};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hub::{ClientAnswer, Hub};
use crate::protocol::{Answer, Delivery, RefusalClass, ServerFrame};

/// `websocket.*` (`HERALD_WEBSOCKET__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebsocketSettings {
    /// What client tokens are signed with: the API's `websocket.token_secret` too.
    pub token_secret: Secret<String>,
    /// Read by the API (the longest lifetime of a token); accepted here so that one
    /// `websocket` section serves both.
    pub token_max_ttl_secs: u64,
    /// How long a client has to acknowledge a message.
    pub ack_timeout_ms: u64,
    /// How long a client has to say hello after connecting.
    pub hello_timeout_ms: u64,
    /// Messages waiting for one connection before it counts as too slow and is closed.
    pub queue_per_connection: usize,
    pub heartbeat_secs: u64,
    /// How long the broker keeps a replica's queue after the replica lost its connection.
    pub replica_queue_expires_ms: u64,
}

impl Default for WebsocketSettings {
    fn default() -> Self {
        WebsocketSettings {
            token_secret: Secret::default(),
            token_max_ttl_secs: 30 * 24 * 3600,
            ack_timeout_ms: 10_000,
            hello_timeout_ms: 10_000,
            queue_per_connection: 256,
            heartbeat_secs: 20,
            replica_queue_expires_ms: 60_000,
        }
    }
}

/// What the runtime loads. No `deny_unknown_fields` here: this struct sees every section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WebsocketConfig {
    pub websocket: WebsocketSettings,
}

/// The exchange and this replica's queue.
pub struct Names {
    pub exchange: String,
    pub queue: String,
}

pub struct WebsocketSender {
    settings: WebsocketSettings,
    hub: Hub,
    /// Set when [`ServingChannel::serve`] starts: the names under the prefix, the publisher.
    names_cell: OnceLock<Names>,
    publisher: OnceLock<Publisher>,
    commands: mpsc::Sender<link::Command>,
    commands_rx: Mutex<Option<mpsc::Receiver<link::Command>>>,
    /// Jobs this replica sent on, waiting for the holder's answer.
    pending: Mutex<HashMap<Uuid, oneshot::Sender<Answer>>>,
    shutdown: CancellationToken,
}

/// The routing key of an address: the tenant's and the address, so a client never receives
/// another tenant's messages.
pub fn routing_key(tenant: &str, key: &WsKey) -> String {
    format!("{tenant}/{key}")
}

impl ChannelSender for WebsocketSender {
    const CHANNEL: Channel = Channel::Websocket;
    type Config = WebsocketConfig;

    fn default_limits() -> RateLimits {
        RateLimits {
            // Our own clients: no provider to protect. The per-connection queue and the
            // acknowledgements hold the pace.
            account_per_second: 10_000,
            account_burst: 10_000,
            recipient_interval: Duration::from_millis(1),
            recipient_burst: 1_000,
            recipient_windows: Vec::new(),
        }
    }

    async fn build(config: WebsocketConfig) -> Result<Built<Self>, BuildError> {
        let settings = config.websocket;
        if settings.token_secret.expose().is_empty() {
            return Ok(Built::NotConfigured(
                "set HERALD_WEBSOCKET__TOKEN_SECRET (the API's too)".into(),
            ));
        }
        let (commands, commands_rx) = mpsc::channel(1024);
        Ok(Built::Ready(WebsocketSender {
            settings,
            hub: Hub::default(),
            names_cell: OnceLock::new(),
            publisher: OnceLock::new(),
            commands,
            commands_rx: Mutex::new(Some(commands_rx)),
            pending: Mutex::default(),
            shutdown: CancellationToken::new(),
        }))
    }

    async fn send(&self, job: &SendJob) -> Result<Receipt, SendError> {
        let Address::Websocket(key) = &job.to else {
            return Err(SendError::permanent(
                "invalid_address",
                "not a WebSocket address",
            ));
        };
        let (Some(names), Some(publisher)) = (self.names_cell.get(), self.publisher.get()) else {
            return Err(SendError::retry(
                "starting",
                "the replica is not connected yet",
            ));
        };
        let delivery = Delivery {
            delivery_id: job.delivery_id,
            tenant: job.tenant.as_str().to_owned(),
            address: key.to_string(),
            content: job.content.clone(),
            created_at: job.created_at,
        };
        let body = serde_json::to_vec(&delivery).unwrap_or_default();
        let (tx, answer) = oneshot::channel();
        self.pending().insert(job.delivery_id, tx);
        let mut kind = FieldTable::default();
        headers::set_str(&mut kind, link::KIND_HEADER, link::DELIVER);
        let message = Message::new(
            names.exchange.as_str(),
            routing_key(job.tenant.as_str(), key),
            &body,
        )
        .message_id(format!("ws/{}", job.delivery_id))
        .correlation_id(job.delivery_id.to_string())
        .reply_to(names.queue.as_str())
        .headers(kind);
        let published = publisher.publish(&message).await;
        if let Err(error) = published {
            self.pending().remove(&job.delivery_id);
            return Err(match error {
                PublishError::Unroutable { .. } => {
                    SendError::retry("no_connection", format!("no client is connected for {key}"))
                }
                other => {
                    SendError::retry("broker", format!("could not hand the message on: {other}"))
                }
            });
        }
        // The holder waits `ack_timeout_ms` for its clients; a little more for its answer.
        let wait = Duration::from_millis(self.settings.ack_timeout_ms) + Duration::from_secs(2);
        let answer = tokio::time::timeout(wait, answer).await;
        self.pending().remove(&job.delivery_id);
        match answer {
            Ok(Ok(Answer::Delivered)) => Ok(Receipt {
                provider_message_id: None,
            }),
            Ok(Ok(Answer::Refused {
                class: RefusalClass::Permanent,
                reason,
            })) => Err(SendError::permanent(
                "refused",
                format!("the client refused: {reason}"),
            )),
            Ok(Ok(Answer::Refused {
                class: RefusalClass::Temporary,
                reason,
            })) => Err(SendError::retry(
                "refused",
                format!("the client refused for now: {reason}"),
            )),
            Ok(Ok(Answer::NoConnection)) => Err(SendError::retry(
                "no_connection",
                format!("no client is connected for {key}"),
            )),
            Ok(Ok(Answer::NoAck)) | Ok(Err(_)) | Err(_) => Err(SendError::retry(
                "no_ack",
                format!(
                    "no client acknowledged within {} ms",
                    self.settings.ack_timeout_ms
                ),
            )),
        }
    }
}

impl ServingChannel for WebsocketSender {
    fn routes(sender: Arc<Self>) -> Router {
        socket::router(sender)
    }

    async fn serve(sender: Arc<Self>, serving: Serving) {
        let prefix = serving.topology.names().prefix().to_owned();
        let _ = sender.names_cell.set(Names {
            exchange: format!("{prefix}.ws"),
            queue: format!("{prefix}.ws.replica.{}", Uuid::now_v7().simple()),
        });
        let _ = sender
            .publisher
            .set(Publisher::new(serving.broker.clone(), "websocket"));
        let Some(commands) = sender
            .commands_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let shutdown = serving.shutdown.clone();
        let stop = sender.shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stop.cancel();
        });
        link::run(sender.clone(), serving, commands).await;
        if let Some(publisher) = sender.publisher.get() {
            publisher.close().await;
        }
    }
}

impl WebsocketSender {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<Answer>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `key` to this replica's queue; waits (a while) for the broker.
    async fn bind(&self, key: String) {
        let (done, bound) = oneshot::channel();
        if self
            .commands
            .send(link::Command::Bind(key, done))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(10), bound).await;
        }
    }

    async fn unbind(&self, key: String) {
        let _ = self.commands.send(link::Command::Unbind(key)).await;
    }

    /// The holder's part: push the message to every local connection for its address, and
    /// answer the replica that took the job.
    async fn hold(&self, delivery: Delivery, reply_to: String) {
        let id = delivery.delivery_id;
        let answer = match WsKey::parse(&delivery.address) {
            Err(_) => Answer::NoConnection,
            Ok(key) => {
                let routing = routing_key(&delivery.tenant, &key);
                let mut answers = self.hub.wait(id);
                let took = self.hub.push(&routing, &ServerFrame::Message(delivery));
                let answer = if took == 0 {
                    Answer::NoConnection
                } else {
                    self.collect(&mut answers, took).await
                };
                self.hub.unwait(id);
                answer
            }
        };
        let Some(publisher) = self.publisher.get() else {
            return;
        };
        let body = serde_json::to_vec(&answer).unwrap_or_default();
        let mut kind = FieldTable::default();
        headers::set_str(&mut kind, link::KIND_HEADER, link::ANSWER);
        let message = Message::new("", reply_to, &body)
            .correlation_id(id.to_string())
            .headers(kind);
        if let Err(error) = publisher.publish(&message).await {
            // The replica that asked is gone: its job times out there and is retried.
            tracing::debug!(%error, "could not answer for a WebSocket delivery");
        }
    }

    /// The first ack; else, once every connection that took the message refused, the
    /// refusal (permanent if any was); else no ack in time.
    async fn collect(
        &self,
        answers: &mut mpsc::UnboundedReceiver<(hub::ConnId, ClientAnswer)>,
        took: usize,
    ) -> Answer {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.settings.ack_timeout_ms);
        let mut refused: HashMap<hub::ConnId, (RefusalClass, String)> = HashMap::new();
        loop {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some((_, ClientAnswer::Ack))) => return Answer::Delivered,
                Ok(Some((conn, ClientAnswer::Refuse { class, reason }))) => {
                    refused.insert(conn, (class, reason));
                    if refused.len() >= took {
                        let permanent = refused
                            .values()
                            .find(|(c, _)| *c == RefusalClass::Permanent);
                        let (class, reason) = permanent
                            .or_else(|| refused.values().next())
                            .cloned()
                            .unwrap_or((RefusalClass::Temporary, String::new()));
                        return Answer::Refused { class, reason };
                    }
                }
                Ok(None) | Err(_) => return Answer::NoAck,
            }
        }
    }

    /// A holder's answer to a job this replica sent on.
    fn answered(&self, delivery: Uuid, answer: Answer) {
        if let Some(waiting) = self.pending().remove(&delivery) {
            let _ = waiting.send(answer);
        }
    }

    /// Connections this replica holds now.
    pub fn connections(&self) -> usize {
        self.hub.connections()
    }
}
