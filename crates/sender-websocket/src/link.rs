//! The replica's own queue: how a job reaches the replica that holds the connection.
//!
//! Each replica declares `{p}.ws.replica.<id>` (not durable, with `x-expires`: it outlives a
//! reconnect, and the broker deletes it once its replica is gone) and binds it on the direct
//! exchange `{p}.ws` with `<tenant>/<address>` for every address one of its connections
//! registered. The replica that takes a job from `{p}.send.websocket` publishes the message
//! there (`mandatory`: unroutable means no client is connected anywhere), with `reply_to` its
//! own queue; the holders push it to their clients and answer there. After a reconnect the
//! replica binds every key again.

use std::time::Duration;

use futures::StreamExt;
use herald_runtime::amqp::headers;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};
use sender_runtime::Serving;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::WebsocketSender;
use crate::protocol::{Answer, Delivery};

/// The readiness component.
pub const COMPONENT: &str = "replica:websocket";
/// Which frame a message on the replica queue carries.
pub const KIND_HEADER: &str = "herald-ws-kind";
pub const DELIVER: &str = "deliver";
pub const ANSWER: &str = "answer";

pub enum Command {
    /// Bind a key; answered once the broker confirmed it.
    Bind(String, oneshot::Sender<()>),
    Unbind(String),
}

/// Runs the replica's queue until shutdown, reconnecting as needed.
pub async fn run(
    sender: Arc<WebsocketSender>,
    serving: Serving,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut wait = Duration::from_millis(100);
    loop {
        serving.health.set(COMPONENT, false, "connecting");
        let health = serving.health.clone();
        let Some(connection) = serving
            .broker
            .connect_until_cancelled("websocket-replica", &serving.shutdown, |e| {
                health.set(COMPONENT, false, format!("cannot connect: {e}"));
            })
            .await
        else {
            break;
        };
        let result = session(&sender, &serving, &connection, &mut commands).await;
        let _ = connection.close(200, "stopping".into()).await;
        match result {
            Ok(()) => break,
            Err(error) => {
                serving
                    .health
                    .set(COMPONENT, false, format!("connection lost: {error}"));
                tracing::warn!(%error, "the WebSocket replica lost its queue; reconnecting");
            }
        }
        tokio::select! {
            _ = serving.shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(serving.broker.config().reconnect_max());
    }
    serving.health.remove(COMPONENT);
}

async fn session(
    sender: &Arc<WebsocketSender>,
    serving: &Serving,
    connection: &Connection,
    commands: &mut mpsc::Receiver<Command>,
) -> Result<(), lapin::Error> {
    let Some(names) = sender.names_cell.get() else {
        return Ok(());
    };
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            names.exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(
            i64::try_from(sender.settings.replica_queue_expires_ms).unwrap_or(i64::MAX),
        ),
    );
    channel
        .queue_declare(
            names.queue.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await?;
    for key in sender.hub.keys() {
        bind(&channel, names, &key).await?;
    }
    let mut consumer = channel
        .basic_consume(
            names.queue.as_str().into(),
            "websocket-replica".into(),
            // Nothing here is worth redelivering: a lost message or answer is a job that
            // times out and is retried.
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    serving.health.set(COMPONENT, true, "consuming");
    loop {
        tokio::select! {
            _ = serving.shutdown.cancelled() => return Ok(()),
            command = commands.recv() => match command {
                Some(Command::Bind(key, done)) => {
                    bind(&channel, names, &key).await?;
                    let _ = done.send(());
                }
                Some(Command::Unbind(key)) => {
                    channel
                        .queue_unbind(
                            names.queue.as_str().into(),
                            names.exchange.as_str().into(),
                            key.as_str().into(),
                            FieldTable::default(),
                        )
                        .await?;
                }
                None => return Ok(()),
            },
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => handle(sender, delivery),
                Some(Err(error)) => return Err(error),
                None => return Err(lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                    lapin::ConnectionState::Closed,
                ))),
            },
        }
    }
}

async fn bind(
    channel: &lapin::Channel,
    names: &crate::Names,
    key: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            names.queue.as_str().into(),
            names.exchange.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

fn handle(sender: &Arc<WebsocketSender>, delivery: lapin::message::Delivery) {
    let properties = &delivery.properties;
    let kind = headers::get_str(properties.headers().as_ref(), KIND_HEADER);
    match kind.as_deref() {
        Some(DELIVER) => {
            let Ok(message) = serde_json::from_slice::<Delivery>(&delivery.data) else {
                tracing::warn!("an unreadable message on the replica queue");
                return;
            };
            let Some(reply_to) = properties.reply_to().as_ref().map(|r| r.to_string()) else {
                return;
            };
            let sender = sender.clone();
            tokio::spawn(async move { sender.hold(message, reply_to).await });
        }
        Some(ANSWER) => {
            let id = properties
                .correlation_id()
                .as_ref()
                .and_then(|c| uuid::Uuid::parse_str(c.as_str()).ok());
            match (id, serde_json::from_slice::<Answer>(&delivery.data)) {
                (Some(id), Ok(answer)) => sender.answered(id, answer),
                _ => tracing::warn!("an unreadable answer on the replica queue"),
            }
        }
        _ => tracing::warn!("a message of no known kind on the replica queue"),
    }
}
