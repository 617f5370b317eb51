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
    /// Country calling codes SMS may go to; `None`: the API's default list.
    pub sms_country_codes: Option<Vec<String>>,
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

/// A page of tenants, oldest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    page: crate::page::PageRequest,
) -> Result<crate::page::Page<Tenant>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT * FROM tenants WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
    )
    .bind(page.after)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(crate::page::Page::from_rows(rows, page, |t: &Tenant| t.id))
}

/// Sets the country calling codes SMS may go to in this tenant (`None`: the default list).
pub async fn set_sms_country_codes(
    db: impl PgExecutor<'_>,
    id: Uuid,
    codes: Option<&[String]>,
) -> Result<Tenant, StoreError> {
    Ok(sqlx::query_as(
        "UPDATE tenants SET sms_country_codes = $2, updated_at = now() WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(codes)
    .fetch_one(db)
    .await?)
}
