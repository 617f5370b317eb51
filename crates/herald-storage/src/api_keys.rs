//! API keys (R19): random, shown once, stored hashed, revocable.

use chrono::{DateTime, Utc};
use messaging_core::Role;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::{StoreError, expect_row};
use crate::secret;

#[derive(Debug, Clone, FromRow)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub role: Role,
    pub user_id: Option<String>,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The key a request presented, with its tenant's key for convenience.
#[derive(Debug, Clone, FromRow)]
pub struct KeyOwner {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    pub tenant_key: Option<String>,
    pub role: Role,
    pub user_id: Option<String>,
}

pub struct NewKey<'a> {
    pub tenant_id: Option<Uuid>,
    pub role: Role,
    pub user_id: Option<&'a str>,
    pub name: &'a str,
    pub created_by: &'a str,
}

/// Creates a key and returns it with its plain text, which exists only in this return value.
pub async fn create(
    db: impl PgExecutor<'_>,
    new: NewKey<'_>,
) -> Result<(ApiKey, String), StoreError> {
    let plain = secret::new_api_key();
    let key = sqlx::query_as(
        "INSERT INTO api_keys (id, tenant_id, role, user_id, name, prefix, hash, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, tenant_id, role, user_id, name, prefix, created_at, created_by, last_used_at, revoked_at",
    )
    .bind(Uuid::now_v7())
    .bind(new.tenant_id)
    .bind(new.role)
    .bind(new.user_id)
    .bind(new.name)
    .bind(secret::display_prefix(&plain))
    .bind(secret::hash(&plain))
    .bind(new.created_by)
    .fetch_one(db)
    .await?;
    Ok((key, plain))
}

/// The owner of an unrevoked key. `NotFound` for unknown or revoked keys. Marks the key used,
/// at most once a minute, so authentication is not a write on every request.
pub async fn authenticate(db: impl PgExecutor<'_>, plain: &str) -> Result<KeyOwner, StoreError> {
    Ok(sqlx::query_as(
        "WITH found AS (
             SELECT id, tenant_id, role, user_id, last_used_at FROM api_keys
             WHERE hash = $1 AND revoked_at IS NULL
         ), touched AS (
             UPDATE api_keys SET last_used_at = now()
             WHERE id IN (SELECT id FROM found
                          WHERE last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
         )
         SELECT f.id, f.tenant_id, t.key AS tenant_key, f.role, f.user_id
         FROM found f LEFT JOIN tenants t ON t.id = f.tenant_id",
    )
    .bind(secret::hash(plain))
    .fetch_one(db)
    .await?)
}

/// A page of the keys of this tenant (`None`: the global admins' keys), oldest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: Option<Uuid>,
    page: crate::page::PageRequest,
) -> Result<crate::page::Page<ApiKey>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT id, tenant_id, role, user_id, name, prefix, created_at, created_by, last_used_at, revoked_at
         FROM api_keys WHERE tenant_id IS NOT DISTINCT FROM $1 AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3",
    )
    .bind(tenant_id)
    .bind(page.after)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(crate::page::Page::from_rows(rows, page, |k: &ApiKey| k.id))
}

/// Revokes a key of this tenant (`None`: the global admins' keys).
pub async fn revoke(
    db: impl PgExecutor<'_>,
    tenant_id: Option<Uuid>,
    id: Uuid,
) -> Result<(), StoreError> {
    expect_row(
        sqlx::query(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
         WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2",
        )
        .bind(id)
        .bind(tenant_id)
        .execute(db)
        .await?,
    )
}
