//! Subscriptions (R11).

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::{StoreError, expect_row};
use crate::page::{Page, PageRequest};

#[derive(Debug, Clone, FromRow)]
pub struct Subscription {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub key: String,
    pub label: String,
    pub description: String,
    pub system: bool,
    pub enabled: bool,
    pub fallback_locale: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

pub struct NewSubscription<'a> {
    pub key: &'a str,
    pub label: &'a str,
    pub description: &'a str,
    pub system: bool,
    pub enabled: bool,
    pub fallback_locale: &'a str,
    pub actor: &'a str,
}

pub async fn create(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    new: NewSubscription<'_>,
) -> Result<Subscription, StoreError> {
    Ok(sqlx::query_as(
        "INSERT INTO subscriptions (id, tenant_id, key, label, description, system, enabled, fallback_locale, created_by, updated_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(new.key)
    .bind(new.label)
    .bind(new.description)
    .bind(new.system)
    .bind(new.enabled)
    .bind(new.fallback_locale)
    .bind(new.actor)
    .fetch_one(db)
    .await?)
}

pub async fn by_key(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    key: &str,
) -> Result<Subscription, StoreError> {
    Ok(
        sqlx::query_as("SELECT * FROM subscriptions WHERE tenant_id = $1 AND key = $2")
            .bind(tenant_id)
            .bind(key)
            .fetch_one(db)
            .await?,
    )
}

pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    page: PageRequest,
) -> Result<Page<Subscription>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT * FROM subscriptions WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3",
    )
    .bind(tenant_id)
    .bind(page.after)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(Page::from_rows(rows, page, |s: &Subscription| s.id))
}

pub struct SubscriptionUpdate<'a> {
    pub label: &'a str,
    pub description: &'a str,
    pub enabled: bool,
    pub fallback_locale: &'a str,
    pub actor: &'a str,
}

pub async fn update(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
    change: SubscriptionUpdate<'_>,
) -> Result<Subscription, StoreError> {
    Ok(sqlx::query_as(
        "UPDATE subscriptions SET label = $2, description = $3, enabled = $4, fallback_locale = $5,
             updated_by = $6, updated_at = now()
         WHERE id = $1 AND tenant_id = $7 RETURNING *",
    )
    .bind(id)
    .bind(change.label)
    .bind(change.description)
    .bind(change.enabled)
    .bind(change.fallback_locale)
    .bind(change.actor)
    .bind(tenant_id)
    .fetch_one(db)
    .await?)
}

pub async fn delete(db: impl PgExecutor<'_>, tenant_id: Uuid, id: Uuid) -> Result<(), StoreError> {
    expect_row(
        sqlx::query("DELETE FROM subscriptions WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant_id)
            .execute(db)
            .await?,
    )
}
