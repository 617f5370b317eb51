//! Event bindings (R14): an event type such as `audit.login` fires every subscription bound
//! to it in the tenant.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::{StoreError, expect_row};
use crate::page::{Page, PageRequest};
use crate::subscriptions::Subscription;

#[derive(Debug, Clone, FromRow)]
pub struct EventBinding {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub event_type: String,
    pub subscription_id: Uuid,
    pub subscription_key: String,
    pub created_at: DateTime<Utc>,
}

pub async fn create(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    event_type: &str,
    subscription_id: Uuid,
) -> Result<EventBinding, StoreError> {
    Ok(sqlx::query_as(
        "WITH b AS (
            INSERT INTO event_bindings (id, tenant_id, event_type, subscription_id)
            VALUES ($1, $2, $3, $4) RETURNING *)
         SELECT b.*, sub.key AS subscription_key FROM b JOIN subscriptions sub ON sub.id = b.subscription_id",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(event_type)
    .bind(subscription_id)
    .fetch_one(db)
    .await?)
}

/// The tenant's bindings, optionally only those of one event type.
pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    event_type: Option<&str>,
    page: PageRequest,
) -> Result<Page<EventBinding>, StoreError> {
    let rows = sqlx::query_as(
        "SELECT b.*, sub.key AS subscription_key
         FROM event_bindings b JOIN subscriptions sub ON sub.id = b.subscription_id
         WHERE b.tenant_id = $1 AND ($2::text IS NULL OR b.event_type = $2)
         AND ($3::uuid IS NULL OR b.id > $3) ORDER BY b.id LIMIT $4",
    )
    .bind(tenant_id)
    .bind(event_type)
    .bind(page.after)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(Page::from_rows(rows, page, |b: &EventBinding| b.id))
}

pub async fn by_id(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<EventBinding, StoreError> {
    Ok(sqlx::query_as(
        "SELECT b.*, sub.key AS subscription_key
         FROM event_bindings b JOIN subscriptions sub ON sub.id = b.subscription_id
         WHERE b.tenant_id = $1 AND b.id = $2",
    )
    .bind(tenant_id)
    .bind(id)
    .fetch_one(db)
    .await?)
}

pub async fn delete(db: impl PgExecutor<'_>, tenant_id: Uuid, id: Uuid) -> Result<(), StoreError> {
    expect_row(
        sqlx::query("DELETE FROM event_bindings WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(db)
            .await?,
    )
}

/// The subscriptions an event type fires in a tenant (R14).
pub async fn subscriptions_for_event(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    event_type: &str,
) -> Result<Vec<Subscription>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT s.* FROM event_bindings b JOIN subscriptions s ON s.id = b.subscription_id
         WHERE b.tenant_id = $1 AND b.event_type = $2 AND s.tenant_id = $1
         ORDER BY s.key",
    )
    .bind(tenant_id)
    .bind(event_type)
    .fetch_all(db)
    .await?)
}
