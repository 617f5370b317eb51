//! The real RabbitMQ on loopback, shared by all tests, isolated by name prefix.

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};

/// `HERALD_TEST_AMQP_URL`, or the local broker with the default guest account.
pub fn amqp_url() -> String {
    std::env::var("HERALD_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A fresh prefix: every exchange and queue a test declares starts with it.
pub fn unique_prefix(test: &str) -> String {
    let short: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(24)
        .collect();
    format!(
        "t-{short}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A plain lapin connection for the test's own inspection, outside the code under test.
pub struct Inspector {
    connection: Connection,
    channel: Channel,
}

impl Inspector {
    pub async fn connect() -> Inspector {
        Self::connect_to(&amqp_url()).await
    }

    /// An inspector on another broker (a test's own node, say).
    pub async fn connect_to(url: &str) -> Inspector {
        let connection = Connection::connect(
            url,
            ConnectionProperties::default().with_connection_name("herald-test-inspector".into()),
        )
        .await
        .expect("the test broker must run on 127.0.0.1:5672 (see LOCAL_SERVICES / `just up`)");
        let channel = connection.create_channel().await.expect("channel");
        Inspector {
            connection,
            channel,
        }
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The broker's view of an existing queue, read without changing it (a passive declare).
    async fn passive_declare(&self, queue: &str) -> lapin::Result<lapin::Queue> {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
    }

    /// Messages ready in a queue (not counting unacked ones).
    pub async fn queue_len(&self, queue: &str) -> u32 {
        self.passive_declare(queue)
            .await
            .map(|q| q.message_count())
            .unwrap_or_else(|e| panic!("queue {queue} should exist: {e}"))
    }

    /// Consumers on a queue, as the broker counts them: how a test sees that a consumer
    /// started, paused or stopped without waiting for a guessed time.
    pub async fn consumer_count(&self, queue: &str) -> u32 {
        self.passive_declare(queue)
            .await
            .map(|q| q.consumer_count())
            .unwrap_or_else(|e| panic!("queue {queue} should exist: {e}"))
    }

    /// Polls `queue_len` until `done(len)` or `timeout` (the broker's counts lag a publish
    /// confirm a little); returns the last length seen, for the caller to assert on.
    pub async fn wait_queue_len(
        &self,
        queue: &str,
        timeout: Duration,
        done: impl Fn(u32) -> bool,
    ) -> u32 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let len = self.queue_len(queue).await;
            if done(len) || tokio::time::Instant::now() >= deadline {
                return len;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Takes one message from a queue (acking it), or `None` when it is empty.
    pub async fn get(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")?;
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        Some(message)
    }

    /// Waits up to `timeout` for a message to appear in `queue` and takes it.
    pub async fn wait_get(
        &self,
        queue: &str,
        timeout: Duration,
    ) -> Option<lapin::message::BasicGetMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(message) = self.get(queue).await {
                return Some(message);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A server-named queue, deleted with this connection, bound to `exchange` with `key`: how
    /// a test (or benchmark) reads what is published there.
    /// Binds `queue` to `exchange` with one more routing key.
    pub async fn bind(&self, queue: &str, exchange: &str, key: &str) {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the queue");
    }

    /// A queue of this name, deleted with this connection (a producer's reply queue).
    pub async fn named_temporary_queue(&self, name: &str) -> String {
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a named temporary queue")
            .name()
            .to_string()
    }

    pub async fn temporary_queue(&self, exchange: &str, key: &str) -> String {
        let queue = self
            .channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a temporary queue")
            .name()
            .to_string();
        self.channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the temporary queue");
        queue
    }

    /// Waits until `queue` has a consumer; `false` after `timeout`.
    pub async fn wait_for_consumer(&self, queue: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let declared = self.passive_declare(queue).await;
            if declared.is_ok_and(|q| q.consumer_count() > 0) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("rabbitmqctl failed: {0}")]
    Rabbitmqctl(String),
    #[error("no connection of this test was open (prefix {0})")]
    NothingToClose(String),
}

/// Has the broker close every connection whose client-given name starts with `prefix`: the same thing
/// `rabbitmqctl close_all_connections` does to clients, limited to one test. Returns how
/// many were closed.
pub async fn close_connections_with_prefix(prefix: &str) -> Result<usize, FaultError> {
    // RabbitMQ 3.10 shows the client-chosen name only inside client_properties, printed as
    // Erlang terms: `[..., {"connection_name","<name>"}]`.
    let pids = connections_with_prefix(prefix).await?;
    if pids.is_empty() {
        return Err(FaultError::NothingToClose(prefix.to_owned()));
    }
    for pid in &pids {
        rabbitmqctl(&[
            "close_connection",
            pid,
            "test: broker closes the connection",
        ])
        .await?;
    }
    Ok(pids.len())
}

/// The broker-side ids of the open connections whose client-given name starts with `prefix`.
pub async fn connections_with_prefix(prefix: &str) -> Result<Vec<String>, FaultError> {
    let listing = rabbitmqctl(&[
        "list_connections",
        "pid",
        "client_properties",
        "--no-table-headers",
        "-q",
    ])
    .await?;
    let wanted = format!("{{\"connection_name\",\"{prefix}");
    Ok(listing
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, properties)| properties.contains(&wanted))
        .map(|(pid, _)| pid.to_owned())
        .collect())
}

async fn rabbitmqctl(args: &[&str]) -> Result<String, FaultError> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .map_err(|e| FaultError::Rabbitmqctl(e.to_string()))?;
    if !output.status.success() {
        return Err(FaultError::Rabbitmqctl(
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
