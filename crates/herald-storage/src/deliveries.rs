//! Delivery records (R15): one per message and address, written by the router, with the mark
//! that their send job is published.
//!
//! Exactly one job per (message, address) rests on two things here:
//! - `deliveries` is unique on (message, user, channel, address), and rows are inserted with
//!   `ON CONFLICT DO NOTHING`, so a request handled twice writes each row once;
//! - `job_published_at` is set only after the broker confirmed the job, so a request handled
//!   again after a crash publishes only the rows still unmarked.

use chrono::{DateTime, Utc};
use messaging_core::{Channel, DeliveryStatus, FailureClass};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;
use crate::page::{Page, PageRequest};
use sqlx::Row;

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

/// One page of a message's deliveries, in id order: a broadcast has a delivery per
/// recipient, and a request must not read them all (issue #17).
pub async fn for_message_page(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    message_id: Uuid,
    page: crate::page::PageRequest,
) -> Result<crate::page::Page<Delivery>, StoreError> {
    let rows = sqlx::query_as(select!(
        " WHERE d.tenant_id = $1 AND d.message_id = $2 AND ($3::uuid IS NULL OR d.id > $3)
          ORDER BY d.id LIMIT $4"
    ))
    .bind(tenant_id)
    .bind(message_id)
    .bind(page.after)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(crate::page::Page::from_rows(rows, page, |d: &Delivery| {
        d.id
    }))
}

/// A message's deliveries counted by status: (total, sent, failed); the rest are pending.
pub async fn counts_for_message(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    message_id: Uuid,
) -> Result<(i64, i64, i64), StoreError> {
    Ok(sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'sent'),
                count(*) FILTER (WHERE status = 'failed')
         FROM deliveries WHERE tenant_id = $1 AND message_id = $2",
    )
    .bind(tenant_id)
    .bind(message_id)
    .fetch_one(db)
    .await?)
}

/// A delivery row to write. Without `failure` it is pending and gets a send job; with one it
/// is failed from the start (no address, template error, invalid address), so the producer
/// learns why per recipient (R4) and nothing is published.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub address_id: Option<Uuid>,
    pub channel: Option<Channel>,
    pub address: Option<String>,
    pub failure: Option<DeliveryFailure>,
}

#[derive(Debug, Clone)]
pub struct DeliveryFailure {
    pub class: FailureClass,
    pub code: String,
    pub message: String,
}

/// Writes one batch of delivery rows in one statement. Rows that exist already (the request
/// is handled again) are left as they are. Returns how many were new, and the new pending
/// ones: on a message's first pass exactly the rows whose jobs are to be published, so that
/// pass needs no [`unpublished`] query per batch.
pub async fn insert_batch(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    message_id: Uuid,
    subscription_id: Option<Uuid>,
    rows: &[NewDelivery],
) -> Result<(u64, Vec<UnpublishedDelivery>), StoreError> {
    let (new, pending) = insert_for_messages(
        db,
        &[MessageDeliveries {
            tenant_id,
            message_id,
            subscription_id,
            rows,
        }],
    )
    .await?;
    Ok((new, pending.into_iter().map(|(_, d)| d).collect()))
}

/// One message's share of [`insert_for_messages`].
pub struct MessageDeliveries<'a> {
    pub tenant_id: Uuid,
    pub message_id: Uuid,
    pub subscription_id: Option<Uuid>,
    pub rows: &'a [NewDelivery],
}

/// [`insert_batch`] for the rows of several messages in one statement (the router's grouped
/// fan-out). The new pending rows come back with their message's id.
pub async fn insert_for_messages(
    db: impl PgExecutor<'_>,
    batch: &[MessageDeliveries<'_>],
) -> Result<(u64, Vec<(Uuid, UnpublishedDelivery)>), StoreError> {
    let len: usize = batch.iter().map(|m| m.rows.len()).sum();
    let mut tenant_ids = Vec::with_capacity(len);
    let mut message_ids = Vec::with_capacity(len);
    let mut subscription_ids = Vec::with_capacity(len);
    let mut ids = Vec::with_capacity(len);
    let mut user_ids = Vec::with_capacity(len);
    let mut address_ids = Vec::with_capacity(len);
    let mut channels = Vec::with_capacity(len);
    let mut addresses = Vec::with_capacity(len);
    let mut classes = Vec::with_capacity(len);
    let mut codes = Vec::with_capacity(len);
    let mut messages = Vec::with_capacity(len);
    for message in batch {
        for row in message.rows {
            tenant_ids.push(message.tenant_id);
            message_ids.push(message.message_id);
            subscription_ids.push(message.subscription_id);
            ids.push(row.id);
            user_ids.push(row.user_id);
            address_ids.push(row.address_id);
            channels.push(row.channel);
            addresses.push(row.address.as_deref());
            classes.push(row.failure.as_ref().map(|f| f.class));
            codes.push(row.failure.as_ref().map(|f| f.code.as_str()));
            messages.push(row.failure.as_ref().map(|f| f.message.as_str()));
        }
    }
    if ids.is_empty() {
        return Ok((0, Vec::new()));
    }
    let done = sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, message_id, subscription_id, user_id, address_id,
                                 channel, address, status, failure_class, failure_code,
                                 failure_message)
         SELECT d.id, d.tenant_id, d.message_id, d.subscription_id, d.user_id, d.address_id,
                d.channel, d.address,
                CASE WHEN d.failure_code IS NULL THEN 'pending' ELSE 'failed' END,
                d.failure_class, d.failure_code, d.failure_message
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::uuid[],
                     $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
              AS d(tenant_id, message_id, subscription_id, id, user_id, address_id, channel,
                   address, failure_class, failure_code, failure_message)
         ON CONFLICT DO NOTHING
         RETURNING message_id, id, user_id, channel, address, status = 'pending' AS pending",
    )
    .bind(&tenant_ids)
    .bind(&message_ids)
    .bind(&subscription_ids)
    .bind(&ids)
    .bind(&user_ids)
    .bind(&address_ids)
    .bind(&channels)
    .bind(&addresses)
    .bind(&classes)
    .bind(&codes)
    .bind(&messages)
    .fetch_all(db)
    .await?;
    let new = done.len() as u64;
    let pending = done
        .into_iter()
        .filter_map(|row| {
            let pending: bool = row.get("pending");
            let delivery = UnpublishedDelivery {
                id: row.get("id"),
                user_id: row.get("user_id"),
                channel: row.get::<Option<Channel>, _>("channel")?,
                address: row.get::<Option<String>, _>("address")?,
            };
            pending.then(|| (row.get::<Uuid, _>("message_id"), delivery))
        })
        .collect();
    Ok((new, pending))
}

/// Whether any delivery of the message exists: none at the start of a pass means no earlier
/// pass got as far as writing rows, so nothing written before needs finding again.
pub async fn exist_for(db: impl PgExecutor<'_>, message_id: Uuid) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM deliveries WHERE message_id = $1)")
            .bind(message_id)
            .fetch_one(db)
            .await?,
    )
}

/// A pending delivery whose job the broker has not confirmed yet.
#[derive(Debug, Clone, FromRow)]
pub struct UnpublishedDelivery {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub channel: Channel,
    pub address: String,
}

impl UnpublishedDelivery {
    pub fn key(self) -> DeliveryKey {
        DeliveryKey {
            user_id: self.user_id,
            channel: self.channel,
            address: self.address,
        }
    }
}

/// What makes a delivery unique within its message (the table's unique key): the recipient,
/// the channel and the normalised address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub user_id: Option<Uuid>,
    pub channel: Channel,
    pub address: String,
}

/// Of the deliveries keyed by (user, channel, address), those still pending without a
/// published job: the new rows of this batch, and rows an earlier, interrupted attempt wrote
/// but could not publish. Their ids are the stored ones, so a job sent again keeps its
/// delivery id and senders drop the repeat.
pub async fn unpublished(
    db: impl PgExecutor<'_>,
    message_id: Uuid,
    keys: &[DeliveryKey],
) -> Result<Vec<UnpublishedDelivery>, StoreError> {
    let user_ids: Vec<Option<Uuid>> = keys.iter().map(|k| k.user_id).collect();
    let channels: Vec<Channel> = keys.iter().map(|k| k.channel).collect();
    let addresses: Vec<&str> = keys.iter().map(|k| k.address.as_str()).collect();
    // Only a pass after an interrupted one asks: `deliveries_pending` finds the message's
    // pending rows, of which the join keeps this batch's.
    Ok(sqlx::query_as(
        "SELECT d.id, d.user_id, d.channel, d.address
         FROM deliveries d
         JOIN unnest($2::uuid[], $3::text[], $4::text[]) AS k(user_id, channel, address)
           ON d.user_id IS NOT DISTINCT FROM k.user_id AND d.channel = k.channel
              AND d.address = k.address
         WHERE d.message_id = $1 AND d.status = 'pending' AND d.job_published_at IS NULL",
    )
    .bind(message_id)
    .bind(&user_ids)
    .bind(&channels)
    .bind(&addresses)
    .fetch_all(db)
    .await?)
}

/// Marks deliveries whose jobs the broker confirmed. The rows are locked in the order of
/// their ids, as the router's grouped events take them: a sender can report a job before it
/// is marked, and two statements that lock many rows in different orders can deadlock.
pub async fn mark_published(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET job_published_at = now()
         WHERE id IN (SELECT id FROM deliveries WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE)",
    )
    .bind(ids)
    .execute(db)
    .await?;
    Ok(())
}

/// Fails deliveries that cannot be sent at all (a job larger than any queue accepts), so the
/// message can complete and its producer learns why (R4 b) instead of waiting forever.
pub async fn fail_unsendable(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    code: &str,
    message: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET status = 'failed', failure_class = 'permanent', failure_code = $2,
             failure_message = $3, updated_at = now()
         WHERE id = ANY($1) AND status = 'pending'",
    )
    .bind(ids)
    .bind(code)
    .bind(message)
    .execute(db)
    .await?;
    Ok(())
}
