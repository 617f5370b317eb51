//! Reading a dead-letter queue without taking anything out of it.
//!
//! The queue's length is read first; then a consumer with that many credits (prefetch) takes
//! that many messages unacked, each exactly once, and closing the channel returns them all
//! to the queue. `basic.get` in a loop showed some dead letters twice and never reached
//! others on a quorum queue (13 dead letters: 11-13 repeated 7-9), so it is not used. The
//! dead-letter queues allow an effectively unlimited number of redeliveries
//! (`Topology::dead_queue_args`), so looking never loses a message.

use std::time::Duration;

use futures::StreamExt;
use herald_runtime::amqp::{Broker, headers};
use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

/// One dead letter as stored, with what Herald's headers say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Herald's reason code (`invalid`, `retries_exhausted`, ...), `None` when the broker
    /// dead-lettered it itself (delivery limit, expiry: see `x-death`).
    pub code: Option<String>,
    pub reason: Option<String>,
    /// When it was dead-lettered (ms since the epoch), as the runtime recorded it.
    pub dead_at_ms: Option<u64>,
    pub source_queue: Option<String>,
    pub attempts: u64,
    pub message_id: Option<String>,
    pub body: Vec<u8>,
}

/// What a look at a dead-letter queue found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peek {
    /// How many dead letters the queue held when the look began.
    pub total: usize,
    /// The first `limit` of them, oldest first, each once.
    pub letters: Vec<DeadLetter>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    #[error("cannot reach the broker: {0}")]
    Connect(lapin::Error),
    #[error("no queue {queue}: {error}")]
    NoQueue { queue: String, error: lapin::Error },
    #[error("reading {queue}: {error}")]
    Read { queue: String, error: lapin::Error },
    #[error(
        "{queue} held {total} dead letters when the look began, but only {got} arrived (another consumer took some?)"
    )]
    Short {
        queue: String,
        total: usize,
        got: usize,
    },
}

/// How long to wait for the next of the counted messages before giving up.
const WAIT: Duration = Duration::from_secs(10);

/// Reads up to `limit` dead letters of `queue` (0: all), leaving every one in the queue.
pub async fn peek(broker: &Broker, queue: &str, limit: usize) -> Result<Peek, PeekError> {
    let connection = broker
        .connect("dead-letters")
        .await
        .map_err(PeekError::Connect)?;
    let result = read(&connection, queue, limit).await;
    // Closing returns every unacked message to the queue, in its order.
    let _ = connection.close(200, "peek done".into()).await;
    result
}

async fn read(
    connection: &lapin::Connection,
    queue: &str,
    limit: usize,
) -> Result<Peek, PeekError> {
    let read_error = |error| PeekError::Read {
        queue: queue.to_owned(),
        error,
    };
    let channel = connection.create_channel().await.map_err(read_error)?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|error| PeekError::NoQueue {
            queue: queue.to_owned(),
            error,
        })?;
    let total = declared.message_count() as usize;
    let wanted = if limit == 0 { total } else { total.min(limit) };
    let mut letters = Vec::with_capacity(wanted);
    if wanted == 0 {
        return Ok(Peek { total, letters });
    }
    // No more in flight than wanted: the broker hands this consumer exactly those.
    let credits = u16::try_from(wanted).unwrap_or(u16::MAX);
    channel
        .basic_qos(credits, BasicQosOptions::default())
        .await
        .map_err(read_error)?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "herald-dead-letters".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(read_error)?;
    while letters.len() < wanted {
        let next = tokio::time::timeout(WAIT, consumer.next()).await;
        let delivery = match next {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(error))) => return Err(read_error(error)),
            Ok(None) | Err(_) => {
                return Err(PeekError::Short {
                    queue: queue.to_owned(),
                    total: wanted,
                    got: letters.len(),
                });
            }
        };
        letters.push(letter(&delivery));
    }
    Ok(Peek { total, letters })
}

fn letter(delivery: &lapin::message::Delivery) -> DeadLetter {
    let table = delivery.properties.headers().clone();
    let h = table.as_ref();
    DeadLetter {
        code: headers::get_str(h, headers::REASON_CODE),
        reason: headers::get_str(h, headers::REASON),
        dead_at_ms: headers::get_u64(h, headers::DEAD_AT),
        source_queue: headers::get_str(h, headers::SOURCE_QUEUE),
        attempts: headers::get_u64(h, headers::ATTEMPT).unwrap_or(1),
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        body: delivery.data.clone(),
    }
}
