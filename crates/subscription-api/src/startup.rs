//! Building the HTTP app and running the service.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use herald_runtime::amqp::Publisher;
use herald_runtime::config::BaseConfig;
use herald_runtime::health::Health;
use herald_runtime::service::Service;
use herald_storage::PgPool;
use herald_storage::db::{self, DatabaseCheck};
use messaging_core::topology::Names;
use tokio_util::sync::CancellationToken;
use utoipa_scalar::{Scalar, Servable};

use crate::auth::{JwtKeys, KeyError};
use crate::config::{ApiConfig, LimitsConfig};
use crate::error::ApiError;
use crate::limits::RateLimits;
use crate::routes;
use herald_storage::relay::OutboxRelay;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub jwt: Arc<JwtKeys>,
    /// Exchange and queue names under the configured prefix.
    pub names: Names,
    pub limits: Arc<RateLimits>,
    /// How long a link code (R5) stays redeemable.
    pub link_code_ttl: chrono::Duration,
    /// How WebSocket client tokens are signed (R39).
    pub websocket: Arc<crate::config::WebsocketTokenConfig>,
    /// How addresses are proven, and which may be added (issue #17).
    pub verifier: Arc<crate::verification::Verifier>,
    /// Stores accepted messages in groups (issue #16).
    pub accepts: crate::accepts::Accepts,
}

/// The API routes with their limits, the OpenAPI document and its viewer; `/healthz`,
/// `/readyz`, `/metrics` are added by the runtime.
pub fn app(state: AppState, limits: &LimitsConfig) -> Router {
    let (routes, paths) = routes::router(state.clone()).split_for_parts();
    let document = crate::openapi::document(paths);
    // The viewer loads its script from a CDN; the JSON document needs nothing outside.
    let viewer = Scalar::with_url("/api/docs", document.clone()).title("Herald API");
    let document = Arc::new(document);
    routes
        .route(
            "/api/openapi.json",
            get(move || async move { Json(document.clone()) }),
        )
        .merge(viewer)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "Not found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] herald_runtime::config::ConfigError),
    #[error(transparent)]
    Jwt(#[from] KeyError),
    #[error("invalid database.url: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot serve: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid settings: {0}")]
    Settings(String),
}

/// Loads the configuration and serves until SIGTERM.
pub async fn serve() -> Result<(), StartError> {
    let base: BaseConfig = herald_runtime::config::load(&[("http.addr", "127.0.0.1:8080")])?;
    let config: ApiConfig = herald_runtime::config::load(&[])?;
    let service = Service::build("subscription-api", base).await?;
    let pool = db::pool(&config.database)?;
    let state = AppState {
        pool: pool.clone(),
        jwt: Arc::new(JwtKeys::from_config(&config.auth)?),
        names: service.topology.names().clone(),
        limits: RateLimits::new(&config.api, Some(pool.clone())).map_err(StartError::Settings)?,
        link_code_ttl: config.api.link_code_ttl(),
        websocket: Arc::new(config.websocket.clone()),
        verifier: Arc::new(
            crate::verification::Verifier::from_config(&config.verification, &config.api)
                .map_err(StartError::Settings)?,
        ),
        accepts: crate::accepts::Accepts::spawn(pool.clone()),
    };
    service
        .health
        .add_check(Arc::new(DatabaseCheck(pool.clone())));
    // Accepting work does not need the broker: the outbox holds it until the broker is back,
    // so a broker outage must not take the API out of service.
    service
        .health
        .mark_advisory(herald_runtime::service::BROKER_COMPONENT);
    let migrations = tokio::spawn(migrate_until_done(
        pool.clone(),
        service.health.clone(),
        service.shutdown.clone(),
    ));
    let relay = OutboxRelay::new(pool, Publisher::new(service.broker.clone(), "outbox"));
    let relay = tokio::spawn(relay.run(service.shutdown.clone()));
    service
        .run(app(state, &config.api), async move {
            let _ = relay.await;
            let _ = migrations.await;
        })
        .await?;
    Ok(())
}

/// Runs the migrations, retrying while the database is unreachable, so the API starts (and
/// says it is not ready) during a database outage instead of crash-looping.
pub async fn migrate_until_done(pool: PgPool, health: Health, shutdown: CancellationToken) {
    const COMPONENT: &str = "database:migrations";
    health.set(COMPONENT, false, "pending");
    let mut wait = Duration::from_millis(200);
    loop {
        match db::migrate(&pool).await {
            Ok(()) => {
                health.set(COMPONENT, true, "applied");
                return;
            }
            Err(error) => {
                health.set(COMPONENT, false, format!("not applied yet: {error}"));
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "cannot apply migrations");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}
