//! Connecting to the broker, with names that say who is connected and backoff on failure.

use std::sync::Arc;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use crate::amqp::backoff::Backoff;
use crate::config::AmqpConfig;

/// How to reach the broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    config: Arc<AmqpConfig>,
    service: Arc<str>,
}

impl Broker {
    pub fn new(config: AmqpConfig, service: &str) -> Self {
        Broker {
            config: Arc::new(config),
            service: service.into(),
        }
    }

    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// One attempt. The connection is named `<prefix>/<service>/<role>` so operators (and
    /// tests) can tell connections apart in `rabbitmqctl list_connections user_provided_name`.
    pub async fn connect(&self, role: &str) -> lapin::Result<Connection> {
        let name = format!("{}/{}/{}", self.config.prefix, self.service, role);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let mut uri: AMQPUri = self.config.url.expose().parse().map_err(|e: String| {
            lapin::Error::from(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        // A `frame_max` in the URL wins; otherwise the configured one (see `AmqpConfig`).
        if uri.query.frame_max.is_none() {
            uri.query.frame_max = self.config.frame_max();
        }
        Connection::connect_uri(uri, properties).await
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
