//! Deleting finished messages and their deliveries once they are older than the operator
//! keeps them (issue #18): the history would otherwise grow with every notification ever
//! sent. Work is found per tenant through `messages_by_tenant` (tenant, created_at), so no
//! index is added to the hot path, and deleted in small steps, so no statement holds many
//! locks for long: a message's deliveries first, a few thousand at a time, then the message.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::StoreError;

/// Every tenant's id, for a pass over all of them.
pub async fn tenant_ids(db: impl PgExecutor<'_>) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar("SELECT id FROM tenants ORDER BY id")
        .fetch_all(db)
        .await?)
}

/// Up to `limit` of the tenant's messages created before `cutoff` that finished before it
/// (completed, or failed before any job went out). A message still in work is never chosen,
/// however old.
pub async fn finished_before(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM messages
          WHERE tenant_id = $1 AND created_at < $2
            AND status IN ('completed', 'failed')
            AND (completed_at IS NULL OR completed_at < $2)
          ORDER BY created_at
          LIMIT $3",
    )
    .bind(tenant_id)
    .bind(cutoff)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Deletes up to `limit` deliveries of these messages; how many went.
pub async fn delete_deliveries_of(
    db: impl PgExecutor<'_>,
    message_ids: &[Uuid],
    limit: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM deliveries WHERE id IN (
             SELECT id FROM deliveries WHERE message_id = ANY($1) LIMIT $2)",
    )
    .bind(message_ids)
    .bind(limit)
    .execute(db)
    .await?
    .rows_affected())
}

/// Deletes these messages (with whatever deliveries are left), if they are still finished.
pub async fn delete_messages(
    db: impl PgExecutor<'_>,
    message_ids: &[Uuid],
) -> Result<u64, StoreError> {
    Ok(
        sqlx::query(
            "DELETE FROM messages WHERE id = ANY($1) AND status IN ('completed', 'failed')",
        )
        .bind(message_ids)
        .execute(db)
        .await?
        .rows_affected(),
    )
}
