//! People, by the tenant's own id for them (R1).

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;

#[derive(Debug, Clone, FromRow)]
pub struct User {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub external_id: String,
    pub locale: Option<String>,
    pub preferred_channel: Option<String>,
    pub delivery_mode: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The user with this external id, created on first mention: a person can subscribe before
/// anyone registered them explicitly.
pub async fn ensure(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    external_id: &str,
) -> Result<User, StoreError> {
    Ok(sqlx::query_as(
        "INSERT INTO users (id, tenant_id, external_id) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, external_id) DO UPDATE SET external_id = EXCLUDED.external_id
         RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(external_id)
    .fetch_one(db)
    .await?)
}

pub async fn by_external_id(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    external_id: &str,
) -> Result<User, StoreError> {
    Ok(
        sqlx::query_as("SELECT * FROM users WHERE tenant_id = $1 AND external_id = $2")
            .bind(tenant_id)
            .bind(external_id)
            .fetch_one(db)
            .await?,
    )
}
