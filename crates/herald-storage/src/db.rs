//! The connection pool, migrations and the readiness check.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use herald_runtime::config::Secret;
use herald_runtime::health::ReadinessCheck;
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// `database.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:5432/herald`. A secret: it may hold the password.
    pub url: Secret<String>,
    pub max_connections: u32,
    /// How long a request waits for a connection before it answers "database unavailable".
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/herald".into()),
            max_connections: 10,
            acquire_timeout_ms: 3_000,
        }
    }
}

/// A pool that connects on first use, so a service starts (and reports not ready) while the
/// database is down, and recovers by itself when it is back.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let options = config.url.expose().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections.max(1))
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .connect_lazy_with(options))
}

/// Applies the embedded migrations. Safe to run from several replicas: sqlx takes an
/// advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../../migrations").run(pool).await
}

/// `/readyz`: can we run a query right now?
pub struct DatabaseCheck(pub PgPool);

impl ReadinessCheck for DatabaseCheck {
    fn name(&self) -> &str {
        "database"
    }

    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&self.0)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}
