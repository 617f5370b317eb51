//! Registrations: a person subscribed on one channel address (R12).

use chrono::{DateTime, Utc};
use messaging_core::Channel;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::{StoreError, expect_row};
use crate::page::{Page, PageRequest};

/// A registration with the keys people know it by (subscription key, user's external id).
#[derive(Debug, Clone, FromRow)]
pub struct Registration {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub subscription_id: Uuid,
    pub subscription_key: String,
    pub user_id: Uuid,
    pub user_external_id: String,
    pub channel: Channel,
    pub address: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The registration columns with the keys people know them by, followed by `$tail`. A macro,
/// because sqlx takes `&'static str` and `concat!` joins only literals.
macro_rules! select {
    ($tail:literal) => {
        concat!(
            "SELECT r.id, r.tenant_id, r.subscription_id, s.key AS subscription_key, r.user_id,
                u.external_id AS user_external_id, r.channel, r.address, r.enabled, r.created_at, r.updated_at
             FROM registrations r
             JOIN subscriptions s ON s.id = r.subscription_id
             JOIN users u ON u.id = r.user_id",
            $tail
        )
    };
}

/// Subscribes; subscribing again with the same address re-enables the registration and
/// returns it (`true` when it was created now).
pub async fn subscribe(
    db: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    subscription_id: Uuid,
    user_id: Uuid,
    channel: Channel,
    address: &str,
) -> Result<(Registration, bool), StoreError> {
    let (id, created): (Uuid, bool) = sqlx::query_as(
        "INSERT INTO registrations (id, tenant_id, subscription_id, user_id, channel, address)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (subscription_id, user_id, channel, address)
         DO UPDATE SET enabled = true, updated_at = now()
         RETURNING id, (xmax = 0) AS created",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(subscription_id)
    .bind(user_id)
    .bind(channel)
    .bind(address)
    .fetch_one(&mut *db)
    .await?;
    Ok((by_id(&mut *db, tenant_id, id).await?, created))
}

/// How many registrations the person has (the per-person cap counts them).
pub async fn count_for_user(db: impl PgExecutor<'_>, user_id: Uuid) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM registrations WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(db)
            .await?,
    )
}

/// How many enabled registrations a subscription has: the people a trigger reaches, as the
/// API's per-tenant recipient limit counts them.
pub async fn count_enabled(
    db: impl PgExecutor<'_>,
    subscription_id: Uuid,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM registrations WHERE subscription_id = $1 AND enabled",
    )
    .bind(subscription_id)
    .fetch_one(db)
    .await?)
}

/// The registration of this person to this subscription on this address, if there is one.
pub async fn find(
    db: impl PgExecutor<'_>,
    subscription_id: Uuid,
    user_id: Uuid,
    channel: Channel,
    address: &str,
) -> Result<Option<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM registrations
         WHERE subscription_id = $1 AND user_id = $2 AND channel = $3 AND address = $4",
    )
    .bind(subscription_id)
    .bind(user_id)
    .bind(channel)
    .bind(address)
    .fetch_optional(db)
    .await?)
}

pub async fn by_id(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Registration, StoreError> {
    Ok(
        sqlx::query_as(select!(" WHERE r.tenant_id = $1 AND r.id = $2"))
            .bind(tenant_id)
            .bind(id)
            .fetch_one(db)
            .await?,
    )
}

/// Filters for listing; `None` means any.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    pub subscription_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
}

pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    filter: Filter,
    page: PageRequest,
) -> Result<Page<Registration>, StoreError> {
    let rows = sqlx::query_as(select!(
        " WHERE r.tenant_id = $1
            AND ($2::uuid IS NULL OR r.subscription_id = $2)
            AND ($3::uuid IS NULL OR r.user_id = $3)
            AND ($4::uuid IS NULL OR r.id > $4)
          ORDER BY r.id LIMIT $5"
    ))
    .bind(tenant_id)
    .bind(filter.subscription_id)
    .bind(filter.user_id)
    .bind(page.after)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(Page::from_rows(rows, page, |r: &Registration| r.id))
}

pub async fn set_enabled(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
    enabled: bool,
) -> Result<(), StoreError> {
    expect_row(sqlx::query("UPDATE registrations SET enabled = $3, updated_at = now() WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id)
        .bind(id)
        .bind(enabled)
        .execute(db)
        .await?)
}

pub async fn delete(db: impl PgExecutor<'_>, tenant_id: Uuid, id: Uuid) -> Result<(), StoreError> {
    expect_row(
        sqlx::query("DELETE FROM registrations WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .execute(db)
            .await?,
    )
}

/// Removes a person's registrations to a subscription: all of them, or only those on one
/// channel (and address). Returns how many were removed.
pub async fn unsubscribe(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    subscription_id: Uuid,
    user_id: Uuid,
    channel: Option<Channel>,
    address: Option<&str>,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM registrations WHERE subscription_id = $1 AND user_id = $2
           AND ($3::text IS NULL OR channel = $3) AND ($4::text IS NULL OR address = $4)
           AND tenant_id = $5",
    )
    .bind(subscription_id)
    .bind(user_id)
    .bind(channel)
    .bind(address)
    .bind(tenant_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// One enabled registration with what the router needs of its person.
#[derive(Debug, Clone, FromRow)]
pub struct RegistrationRecipient {
    pub id: Uuid,
    pub user_id: Uuid,
    pub external_id: String,
    pub locale: Option<String>,
    pub channel: Channel,
    pub address: String,
    /// The person's proven address row it names: delivery results reach it (R3, R6).
    pub address_id: Uuid,
    /// The address's kind (an XMPP registration may name a room).
    pub address_kind: messaging_core::AddressKind,
}

/// The next page of a subscription's enabled registrations after `after`, in id order
/// (keyset pagination on the `registrations_fanout` index), so a fan-out to 100k people
/// holds one page in memory. `channels`: only these channels; `None`, all.
pub async fn enabled_page(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    subscription_id: Uuid,
    after: Uuid,
    limit: i64,
    channels: Option<&[Channel]>,
) -> Result<Vec<RegistrationRecipient>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT r.id, r.user_id, u.external_id, u.locale, r.channel, r.address, a.id AS address_id,
                a.kind AS address_kind
         FROM registrations r JOIN users u ON u.id = r.user_id
         -- Only to the person's own addresses, proven (issue #17) and in service: one found
         -- unreachable or removed (R3, R6) gets nothing until it is proven again.
         JOIN LATERAL (SELECT a.id, a.kind FROM addresses a
                       WHERE a.user_id = r.user_id AND a.channel = r.channel AND a.value = r.address
                         AND a.verified AND a.state = 'active'
                       LIMIT 1) a ON true
         WHERE r.subscription_id = $1 AND r.enabled AND r.id > $2 AND r.tenant_id = $3
           AND ($4::text[] IS NULL OR r.channel = ANY($4))
         ORDER BY r.id LIMIT $5",
    )
    .bind(subscription_id)
    .bind(after)
    .bind(tenant_id)
    .bind(channels)
    .bind(limit)
    .fetch_all(db)
    .await?)
}
