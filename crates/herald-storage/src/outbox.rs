//! The outbox: messages accepted over HTTP wait here until the broker has confirmed them.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED`, so several API replicas relay without
//! publishing the same row twice at once; a row is marked published only after the broker's
//! confirm, so a crash in between publishes it again (the router drops the repeat by id).

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgExecutor};

use crate::error::StoreError;

/// The channel `NOTIFY` wakes the relay on, so it need not poll fast.
pub const NOTIFY_CHANNEL: &str = "herald_outbox";

#[derive(Debug, Clone, FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub payload: Vec<u8>,
    pub reply_to: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub async fn enqueue(
    tx: &mut PgConnection,
    exchange: &str,
    routing_key: &str,
    message_id: &str,
    payload: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (exchange, routing_key, message_id, payload) VALUES ($1, $2, $3, $4)",
    )
    .bind(exchange)
    .bind(routing_key)
    .bind(message_id)
    .bind(payload)
    .execute(&mut *tx)
    .await?;
    // Delivered at commit, so the relay never wakes for a row it cannot see yet.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Locks up to `limit` unpublished rows, oldest first, for this transaction.
pub async fn claim(tx: &mut PgConnection, limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, exchange, routing_key, message_id, payload, reply_to, created_at FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?)
}

pub async fn mark_published(tx: &mut PgConnection, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Rows waiting for the broker: the outbox backlog metric.
pub async fn backlog(db: impl PgExecutor<'_>) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(db)
            .await?,
    )
}
