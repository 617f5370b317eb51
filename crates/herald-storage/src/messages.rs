//! Accepted requests (R1, R14). A message and its outbox row are written in one transaction,
//! so an accepted message is never lost between the database and the broker.

use chrono::{DateTime, Utc};
use messaging_core::{MessageSource, MessageStatus};
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;
use crate::outbox;

#[derive(Debug, Clone, FromRow)]
pub struct Message {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub idempotency_key: Option<String>,
    pub source: MessageSource,
    pub subscription_id: Option<Uuid>,
    pub request: serde_json::Value,
    pub status: MessageStatus,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

pub struct NewMessage<'a> {
    pub tenant_id: Uuid,
    pub idempotency_key: Option<&'a str>,
    pub source: MessageSource,
    pub subscription_id: Option<Uuid>,
    /// The request as the router will read it (a versioned notify request).
    pub request: &'a serde_json::Value,
    /// Where the outbox relay publishes it.
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

/// Accepts a message: stores it with its outbox row, or, when the tenant used this
/// idempotency key before, returns the first message instead (`false`: not new).
pub async fn accept(
    tx: &mut PgConnection,
    new: NewMessage<'_>,
) -> Result<(Message, bool), StoreError> {
    let inserted: Option<Message> = sqlx::query_as(
        "INSERT INTO messages (id, tenant_id, idempotency_key, source, subscription_id, request)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
         RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(new.tenant_id)
    .bind(new.idempotency_key)
    .bind(new.source)
    .bind(new.subscription_id)
    .bind(new.request)
    .fetch_optional(&mut *tx)
    .await?;
    match inserted {
        Some(message) => {
            let payload = serde_json::to_vec(new.request).unwrap_or_default();
            outbox::enqueue(
                &mut *tx,
                new.exchange,
                new.routing_key,
                &message.id.to_string(),
                &payload,
            )
            .await?;
            Ok((message, true))
        }
        None => {
            let key = new.idempotency_key.unwrap_or_default();
            let first = sqlx::query_as(
                "SELECT * FROM messages WHERE tenant_id = $1 AND idempotency_key = $2",
            )
            .bind(new.tenant_id)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            Ok((first, false))
        }
    }
}

pub async fn by_id(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Message, StoreError> {
    Ok(
        sqlx::query_as("SELECT * FROM messages WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .fetch_one(db)
            .await?,
    )
}
