//! Connecting to the broker, with names that say who is connected and backoff on failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::amqp::backoff::Backoff;
use crate::config::AmqpConfig;

/// How to reach the broker: one node, or several of a cluster. Cheap to clone; clones share
/// which node was reached last, so a service's connections go to the same node.
#[derive(Clone)]
pub struct Broker {
    config: Arc<AmqpConfig>,
    service: Arc<str>,
    /// The node to try first: the one last reached.
    current: Arc<AtomicUsize>,
}

impl Broker {
    pub fn new(config: AmqpConfig, service: &str) -> Self {
        Broker {
            config: Arc::new(config),
            service: service.into(),
            current: Arc::default(),
        }
    }

    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// One attempt on each node at most, the one last reached first. The connection is
    /// named `<prefix>/<service>/<role>` so operators (and tests) can tell connections apart
    /// in `rabbitmqctl list_connections user_provided_name`.
    pub async fn connect(&self, role: &str) -> lapin::Result<Connection> {
        let invalid = |e: String| {
            lapin::Error::from(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        };
        let nodes = self.config.node_uris().map_err(invalid)?;
        let name = format!("{}/{}/{}", self.config.prefix, self.service, role);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let first = self.current.load(Ordering::Relaxed) % nodes.len();
        let mut last_error = None;
        for i in 0..nodes.len() {
            let index = (first + i) % nodes.len();
            let mut uri = nodes[index].clone();
            // A `frame_max` in the URL wins; otherwise the configured one (see `AmqpConfig`).
            if uri.query.frame_max.is_none() {
                uri.query.frame_max = self.config.frame_max();
            }
            let node = format!("{}:{}", uri.authority.host, uri.authority.port);
            let attempt = tokio::time::timeout(
                self.config.connect_timeout(),
                Connection::connect_uri(uri, properties.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer from {node} within the connect timeout"),
                )))
            });
            match attempt {
                Ok(connection) => {
                    if self.current.swap(index, Ordering::Relaxed) != index {
                        tracing::info!(role, node, "connected to another broker node");
                    }
                    return Ok(connection);
                }
                Err(error) => {
                    if nodes.len() > 1 {
                        tracing::warn!(role, node, %error, "broker node not reachable; trying the next");
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| invalid("no broker node configured".into())))
    }

    /// Keeps trying with backoff until connected; `None` when cancelled first.
    pub async fn connect_until_cancelled(
        &self,
        role: &str,
        cancel: &CancellationToken,
        mut on_failure: impl FnMut(&lapin::Error),
    ) -> Option<Connection> {
        let mut backoff = Backoff::new(
            std::time::Duration::from_millis(100),
            self.config.reconnect_max(),
        );
        loop {
            if cancel.is_cancelled() {
                return None;
            }
            match self.connect(role).await {
                Ok(connection) => return Some(connection),
                Err(error) => {
                    on_failure(&error);
                    let wait = backoff.next_delay();
                    tracing::warn!(role, url = %self.config.redacted_url(), %error, retry_in_ms = wait.as_millis() as u64, "cannot connect to the broker");
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}
