//! Liveness, readiness and metrics over HTTP.
//!
//! Readiness is the sum of two kinds of information: components that report their own state
//! as it changes (a consumer that lost its broker connection, a sender whose circuit breaker
//! opened) and checks that run on each request (a database ping).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A check run on every `/readyz` request, such as a database ping.
pub trait ReadinessCheck: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// The service's readiness registry. Cheap to clone; all clones share state.
#[derive(Clone, Default)]
pub struct Health {
    components: Arc<Mutex<BTreeMap<String, ComponentState>>>,
    checks: Arc<Mutex<Vec<Arc<dyn ReadinessCheck>>>>,
    /// Components reported in `/readyz` that do not make the service unready: the service
    /// keeps doing its job without them (the API accepts work into its outbox while the
    /// broker is down).
    advisory: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ComponentState {
    pub ready: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ready: bool,
    pub components: BTreeMap<String, ComponentState>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a component's state. Components start not ready until they say otherwise.
    pub fn set(&self, component: &str, ready: bool, detail: impl Into<String>) {
        let state = ComponentState {
            ready,
            detail: detail.into(),
        };
        let mut components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        if components.get(component) != Some(&state) {
            components.insert(component.to_owned(), state);
        }
    }

    pub fn remove(&self, component: &str) {
        self.components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(component);
    }

    /// Reports `component` without letting it gate readiness.
    pub fn mark_advisory(&self, component: &str) {
        self.advisory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(component.to_owned());
    }

    pub fn add_check(&self, check: Arc<dyn ReadinessCheck>) {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(check);
    }

    pub async fn report(&self) -> Report {
        let mut components = self
            .components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for check in checks {
            let state = match check.check().await {
                Ok(()) => ComponentState {
                    ready: true,
                    detail: "ok".into(),
                },
                Err(detail) => ComponentState {
                    ready: false,
                    detail,
                },
            };
            components.insert(check.name().to_owned(), state);
        }
        let advisory = self
            .advisory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Report {
            ready: components
                .iter()
                .all(|(name, c)| c.ready || advisory.contains(name)),
            components,
        }
    }
}

#[derive(Clone)]
struct HttpState {
    health: Health,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// `/healthz`, `/readyz` and `/metrics`, to merge into a service's own router or serve alone.
pub fn router(health: Health) -> Router {
    let state = HttpState {
        health,
        metrics: crate::telemetry::metrics(),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// For a public port when an admin address serves the rest: `/healthz`, and `/readyz` that
/// says ready or not ready only (issue #17: component details name hosts and errors).
pub fn public_router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    let ready = health.report().await.ready;
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, Json(serde_json::json!({ "ready": ready })))
                }
            }),
        )
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let report = state.health.report().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Serves `app` until `shutdown` is cancelled.
///
/// Every accepted connection gets `TCP_NODELAY`: a WebSocket frame or a short answer written
/// after another small write would otherwise wait for the peer's delayed ACK (up to 40 ms on
/// Linux) under Nagle's algorithm; the WebSocket benchmark's p99 showed such stalls.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
    });
    // The peer's address reaches handlers as `ConnectInfo` (the API limits failed logins per
    // client address).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing;
    impl ReadinessCheck for Failing {
        fn name(&self) -> &str {
            "database"
        }
        fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            Box::pin(async { Err("connection refused".to_owned()) })
        }
    }

    #[tokio::test]
    async fn ready_only_when_every_component_and_check_is() {
        let health = Health::new();
        health.set("broker", false, "connecting");
        assert!(!health.report().await.ready);
        health.set("broker", true, "connected");
        assert!(health.report().await.ready);
        health.add_check(Arc::new(Failing));
        let report = health.report().await;
        assert!(!report.ready);
        assert_eq!(report.components["database"].detail, "connection refused");
    }

    #[tokio::test]
    async fn an_advisory_component_is_reported_but_does_not_gate_readiness() {
        let health = Health::new();
        health.mark_advisory("amqp:broker");
        health.set("amqp:broker", false, "connection lost");
        let report = health.report().await;
        assert!(report.ready);
        assert!(
            !report.components["amqp:broker"].ready,
            "still shown as it is"
        );
    }
}
