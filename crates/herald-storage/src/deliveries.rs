//! Delivery records (R15): one per message and address, written by the router.

use chrono::{DateTime, Utc};
use messaging_core::{Channel, DeliveryStatus, FailureClass};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;
use crate::page::{Page, PageRequest};

#[derive(Debug, Clone, FromRow)]
pub struct Delivery {
    pub id: Uuid,
    pub message_id: Uuid,
    pub subscription_key: Option<String>,
    pub user_external_id: Option<String>,
    pub channel: Option<Channel>,
    pub address: Option<String>,
    pub status: DeliveryStatus,
    pub failure_class: Option<FailureClass>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The delivery columns with the user's external id and the subscription's key, followed by
/// `$tail` (a macro: sqlx takes `&'static str`, and `concat!` joins only literals).
macro_rules! select {
    ($tail:literal) => {
        concat!(
            "SELECT d.id, d.message_id, s.key AS subscription_key, u.external_id AS user_external_id,
                    d.channel, d.address, d.status, d.failure_class, d.failure_code, d.failure_message,
                    d.attempts, d.sent_at, d.created_at, d.updated_at
             FROM deliveries d
             LEFT JOIN users u ON u.id = d.user_id
             LEFT JOIN subscriptions s ON s.id = d.subscription_id",
            $tail
        )
    };
}

/// Filters for listing (R15); `None` means any.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub subscription_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub channel: Option<Channel>,
    pub status: Option<DeliveryStatus>,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    filter: &Filter,
    page: PageRequest,
) -> Result<Page<Delivery>, StoreError> {
    let rows = sqlx::query_as(select!(
        " WHERE d.tenant_id = $1
            AND ($2::uuid IS NULL OR d.subscription_id = $2)
            AND ($3::uuid IS NULL OR d.user_id = $3)
            AND ($4::text IS NULL OR d.channel = $4)
            AND ($5::text IS NULL OR d.status = $5)
            AND ($6::timestamptz IS NULL OR d.created_at >= $6)
            AND ($7::timestamptz IS NULL OR d.created_at < $7)
            AND ($8::uuid IS NULL OR d.id > $8)
          ORDER BY d.id LIMIT $9"
    ))
    .bind(tenant_id)
    .bind(filter.subscription_id)
    .bind(filter.user_id)
    .bind(filter.channel)
    .bind(filter.status)
    .bind(filter.from)
    .bind(filter.until)
    .bind(page.after)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(Page::from_rows(rows, page, |d: &Delivery| d.id))
}

pub async fn by_id(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Delivery, StoreError> {
    Ok(
        sqlx::query_as(select!(" WHERE d.tenant_id = $1 AND d.id = $2"))
            .bind(tenant_id)
            .bind(id)
            .fetch_one(db)
            .await?,
    )
}

pub async fn for_message(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    message_id: Uuid,
) -> Result<Vec<Delivery>, StoreError> {
    Ok(sqlx::query_as(select!(
        " WHERE d.tenant_id = $1 AND d.message_id = $2 ORDER BY d.id"
    ))
    .bind(tenant_id)
    .bind(message_id)
    .fetch_all(db)
    .await?)
}
