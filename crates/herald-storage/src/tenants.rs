//! Tenants (R10).

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;

#[derive(Debug, Clone, FromRow)]
pub struct Tenant {
    pub id: Uuid,
    pub key: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn create(db: impl PgExecutor<'_>, key: &str, name: &str) -> Result<Tenant, StoreError> {
    Ok(
        sqlx::query_as("INSERT INTO tenants (id, key, name) VALUES ($1, $2, $3) RETURNING *")
            .bind(Uuid::now_v7())
            .bind(key)
            .bind(name)
            .fetch_one(db)
            .await?,
    )
}

pub async fn by_key(db: impl PgExecutor<'_>, key: &str) -> Result<Tenant, StoreError> {
    Ok(sqlx::query_as("SELECT * FROM tenants WHERE key = $1")
        .bind(key)
        .fetch_one(db)
        .await?)
}

pub async fn by_id(db: impl PgExecutor<'_>, id: Uuid) -> Result<Tenant, StoreError> {
    Ok(sqlx::query_as("SELECT * FROM tenants WHERE id = $1")
        .bind(id)
        .fetch_one(db)
        .await?)
}

pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<Tenant>, StoreError> {
    Ok(sqlx::query_as("SELECT * FROM tenants ORDER BY key")
        .fetch_all(db)
        .await?)
}
