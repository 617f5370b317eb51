//! Cron-like schedules that trigger a subscription (R14). The API writes them with their first
//! run; the router's scheduler claims due rows with `FOR UPDATE SKIP LOCKED`.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::{StoreError, expect_row};
use crate::page::{Page, PageRequest};

#[derive(Debug, Clone, FromRow)]
pub struct Schedule {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub subscription_id: Uuid,
    /// The subscription's key, joined in for display.
    pub subscription_key: String,
    pub cron: String,
    pub time_zone: String,
    pub event_parameters: serde_json::Value,
    pub enabled: bool,
    pub next_run_at: DateTime<Utc>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub struct ScheduleFields<'a> {
    pub cron: &'a str,
    pub time_zone: &'a str,
    pub event_parameters: &'a serde_json::Value,
    pub enabled: bool,
    pub next_run_at: DateTime<Utc>,
}

const SELECT: &str = "SELECT s.*, sub.key AS subscription_key
     FROM schedules s JOIN subscriptions sub ON sub.id = s.subscription_id";

pub async fn create(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    subscription_id: Uuid,
    fields: ScheduleFields<'_>,
) -> Result<Schedule, StoreError> {
    Ok(sqlx::query_as(
        "WITH s AS (
            INSERT INTO schedules (id, tenant_id, subscription_id, cron, time_zone, event_parameters, enabled, next_run_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *)
         SELECT s.*, sub.key AS subscription_key FROM s JOIN subscriptions sub ON sub.id = s.subscription_id",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(subscription_id)
    .bind(fields.cron)
    .bind(fields.time_zone)
    .bind(fields.event_parameters)
    .bind(fields.enabled)
    .bind(fields.next_run_at)
    .fetch_one(db)
    .await?)
}

pub async fn by_id(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Schedule, StoreError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE s.tenant_id = $1 AND s.id = $2"
    )))
    .bind(tenant_id)
    .bind(id)
    .fetch_one(db)
    .await?)
}

/// The tenant's schedules, optionally of one subscription.
pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    subscription_id: Option<Uuid>,
    page: PageRequest,
) -> Result<Page<Schedule>, StoreError> {
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE s.tenant_id = $1 AND ($2::uuid IS NULL OR s.subscription_id = $2)
         AND ($3::uuid IS NULL OR s.id > $3) ORDER BY s.id LIMIT $4"
    )))
    .bind(tenant_id)
    .bind(subscription_id)
    .bind(page.after)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(Page::from_rows(rows, page, |s: &Schedule| s.id))
}

pub async fn update(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
    fields: ScheduleFields<'_>,
) -> Result<Schedule, StoreError> {
    Ok(sqlx::query_as(
        "WITH s AS (
            UPDATE schedules SET cron = $3, time_zone = $4, event_parameters = $5, enabled = $6,
                next_run_at = $7, updated_at = now()
            WHERE tenant_id = $1 AND id = $2 RETURNING *)
         SELECT s.*, sub.key AS subscription_key FROM s JOIN subscriptions sub ON sub.id = s.subscription_id",
    )
    .bind(tenant_id)
    .bind(id)
    .bind(fields.cron)
    .bind(fields.time_zone)
    .bind(fields.event_parameters)
    .bind(fields.enabled)
    .bind(fields.next_run_at)
    .fetch_one(db)
    .await?)
}

pub async fn delete(db: impl PgExecutor<'_>, tenant_id: Uuid, id: Uuid) -> Result<(), StoreError> {
    expect_row(
        sqlx::query("DELETE FROM schedules WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(db)
            .await?,
    )
}

/// A schedule whose time has come, with what firing it needs.
#[derive(Debug, Clone, FromRow)]
pub struct DueSchedule {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub tenant_key: String,
    pub subscription_id: Uuid,
    pub subscription_key: String,
    pub subscription_enabled: bool,
    pub cron: String,
    pub time_zone: String,
    pub event_parameters: serde_json::Value,
    pub next_run_at: DateTime<Utc>,
}

/// Locks up to `limit` due schedules for the caller's transaction. `SKIP LOCKED`: another
/// router replica's transaction holds the ones it claimed, and this one takes the others, so
/// each due time fires in exactly one replica.
pub async fn claim_due(
    tx: &mut sqlx::PgConnection,
    limit: i64,
) -> Result<Vec<DueSchedule>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT s.id, s.tenant_id, t.key AS tenant_key, s.subscription_id,
                sub.key AS subscription_key, sub.enabled AS subscription_enabled,
                s.cron, s.time_zone, s.event_parameters, s.next_run_at
         FROM schedules s
         JOIN subscriptions sub ON sub.id = s.subscription_id
         JOIN tenants t ON t.id = s.tenant_id
         WHERE s.enabled AND s.next_run_at <= now()
         ORDER BY s.next_run_at
         LIMIT $1
         FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?)
}

/// After firing (or skipping) the run due at `ran_for`: the next one, or disabled when the
/// expression can no longer be read (`next` is `None`).
pub async fn advance(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    ran_for: DateTime<Utc>,
    next: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE schedules SET last_run_at = $2, next_run_at = coalesce($3, next_run_at),
             enabled = enabled AND $3 IS NOT NULL, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(ran_for)
    .bind(next)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// When the earliest enabled schedule is due, to sleep until then.
pub async fn next_due(db: impl PgExecutor<'_>) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT min(next_run_at) FROM schedules WHERE enabled")
            .fetch_one(db)
            .await?,
    )
}
