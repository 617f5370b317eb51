//! The start-up sequence every service shares (zero2prod's `Application::build`, split so
//! tests can pass their own listener and shutdown token).

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::amqp::{Broker, Topology};
use crate::config::BaseConfig;
use crate::health::{self, Health};

/// A service's shared parts. Build it, add the service's own work, then [`Service::run`].
pub struct Service {
    pub name: &'static str,
    pub config: BaseConfig,
    pub broker: Broker,
    pub topology: Topology,
    pub health: Health,
    pub shutdown: CancellationToken,
    listener: TcpListener,
    /// `http.admin_addr`: `/metrics` and the detailed `/readyz`, when `addr` is public.
    admin_listener: Option<TcpListener>,
}

impl Service {
    /// For binaries: installs the crypto provider, logging and metrics, binds `http.addr`,
    /// and cancels `shutdown` on SIGINT/SIGTERM.
    pub async fn build(name: &'static str, config: BaseConfig) -> std::io::Result<Self> {
        crate::install_crypto_provider();
        crate::telemetry::init_tracing(&config.log);
        let listener = TcpListener::bind(config.http.addr).await?;
        let admin = match config.http.admin_addr {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let shutdown = crate::shutdown::on_signal();
        tracing::info!(
            service = name,
            http = %listener.local_addr()?,
            admin = ?config.http.admin_addr,
            amqp = %config.amqp.redacted_url(),
            prefix = %config.amqp.prefix,
            "starting"
        );
        let mut service = Self::with_parts(name, config, listener, shutdown);
        service.admin_listener = admin;
        Ok(service)
    }

    /// For tests: serve `/metrics` and the detailed `/readyz` on this listener instead.
    pub fn with_admin_listener(mut self, listener: TcpListener) -> Self {
        self.admin_listener = Some(listener);
        self
    }

    /// The admin address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// For tests: a listener on port 0 and a token the test cancels.
    pub fn with_parts(
        name: &'static str,
        config: BaseConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Self {
        crate::install_crypto_provider();
        let _ = crate::telemetry::metrics();
        let broker = Broker::new(config.amqp.clone(), name);
        let topology = Topology::from_config(&config.amqp);
        Service {
            name,
            config,
            broker,
            topology,
            health: Health::new(),
            shutdown,
            listener,
            admin_listener: None,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `/healthz`, `/readyz`, `/metrics` (merged with `app`) and runs `work` and a
    /// broker watch until shutdown. Returns when the work has finished draining.
    pub async fn run<W>(self, app: Router, work: W) -> std::io::Result<()>
    where
        W: Future<Output = ()> + Send + 'static,
    {
        // Not ready until the broker watch has connected; registered before the server starts
        // so that `/readyz` never answers 200 with nothing checked.
        self.health.set(BROKER_COMPONENT, false, "connecting");
        let (router, admin) = match self.admin_listener {
            Some(admin) => {
                let full = health::router(self.health.clone());
                (
                    app.merge(health::public_router(self.health.clone())),
                    Some(tokio::spawn(health::serve(
                        admin,
                        full,
                        self.shutdown.clone(),
                    ))),
                )
            }
            None => (app.merge(health::router(self.health.clone())), None),
        };
        let server = tokio::spawn(health::serve(self.listener, router, self.shutdown.clone()));
        let watch = tokio::spawn(watch_broker(
            self.broker.clone(),
            self.topology.clone(),
            self.health.clone(),
            self.shutdown.clone(),
        ));
        work.await;
        // Work ends on its own only when shutdown was asked; make sure everything else stops.
        self.shutdown.cancel();
        let _ = watch.await;
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        let served = server.await.unwrap_or(Ok(()));
        tracing::info!(service = self.name, "stopped");
        served
    }
}

/// The readiness component the broker watch reports.
pub const BROKER_COMPONENT: &str = "amqp:broker";

/// Holds one connection to report the broker in `/readyz`, and declares the topology on each
/// connect, so every queue exists as soon as any service is up.
pub async fn watch_broker(
    broker: Broker,
    topology: Topology,
    health: Health,
    shutdown: CancellationToken,
) {
    const COMPONENT: &str = BROKER_COMPONENT;
    health.set(COMPONENT, false, "connecting");
    loop {
        let h = health.clone();
        let Some(connection) = broker
            .connect_until_cancelled("watch", &shutdown, |e| {
                h.set(COMPONENT, false, format!("cannot connect: {e}"))
            })
            .await
        else {
            break;
        };
        match topology.declare(&connection).await {
            Ok(drift) => {
                // Still ready: the existing queues work. The operator learns what differs.
                let detail = if drift.is_empty() {
                    "connected".to_owned()
                } else {
                    for d in &drift {
                        tracing::warn!(drift = %d, "queue or exchange differs from this version's declaration; using it as it is");
                    }
                    let names: Vec<&str> = drift.iter().map(|d| d.name.as_str()).collect();
                    format!(
                        "connected; declared with other arguments: {}",
                        names.join(", ")
                    )
                };
                health.set(COMPONENT, true, detail);
                let mut events = connection.events_listener();
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = async {
                        while let Some(event) = events.next().await {
                            if let lapin::Event::Error(error) = event {
                                health.set(COMPONENT, false, format!("connection lost: {error}"));
                                tracing::warn!(%error, "broker connection lost");
                                break;
                            }
                        }
                    } => {}
                }
            }
            Err(error) => {
                health.set(
                    COMPONENT,
                    false,
                    format!("cannot declare topology: {error}"),
                );
                tracing::error!(%error, "cannot declare the topology");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                }
            }
        }
        let _ = connection.close(200, "stopping".into()).await;
        if shutdown.is_cancelled() {
            break;
        }
    }
    health.remove(COMPONENT);
}

/// The whole `main` of a service that so far only joins the system: loads `BaseConfig` (with
/// its own default health address), declares the topology, reports the broker in `/readyz`,
/// and waits for SIGTERM. It consumes nothing, so its queue is left for a later version.
pub async fn run_idle(
    name: &'static str,
    default_http_addr: &str,
    note: &str,
) -> Result<(), IdleError> {
    let config: BaseConfig = crate::config::load(&[("http.addr", default_http_addr)])?;
    let service = Service::build(name, config).await?;
    tracing::warn!(service = name, "{note}");
    let shutdown = service.shutdown.clone();
    service
        .run(Router::new(), async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum IdleError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot serve health endpoints: {0}")]
    Io(#[from] std::io::Error),
}
