//! Delivery records (R15): one per message and address, written by the router.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;

#[derive(Debug, Clone, FromRow)]
pub struct Delivery {
    pub id: Uuid,
    pub message_id: Uuid,
    pub user_external_id: Option<String>,
    pub channel: Option<String>,
    pub address: Option<String>,
    pub status: String,
    pub failure_class: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn for_message(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    message_id: Uuid,
) -> Result<Vec<Delivery>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT d.id, d.message_id, u.external_id AS user_external_id, d.channel, d.address, d.status,
                d.failure_class, d.failure_code, d.failure_message, d.attempts, d.sent_at, d.created_at, d.updated_at
         FROM deliveries d LEFT JOIN users u ON u.id = d.user_id
         WHERE d.tenant_id = $1 AND d.message_id = $2 ORDER BY d.id",
    )
    .bind(tenant_id)
    .bind(message_id)
    .fetch_all(db)
    .await?)
}
