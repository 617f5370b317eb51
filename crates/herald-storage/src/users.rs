//! People, by the tenant's own id for them (R1).

use chrono::{DateTime, Utc};
use messaging_core::Channel;
use messaging_core::ingress::DeliveryMode;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::{StoreError, expect_row};
use crate::page::{Page, PageRequest};
use messaging_core::AddressKind;
use sqlx::PgConnection;

#[derive(Debug, Clone, FromRow)]
pub struct User {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub external_id: String,
    pub locale: Option<String>,
    pub preferred_channel: Option<Channel>,
    pub delivery_mode: DeliveryMode,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The user with this external id, created on first mention: a person can subscribe before
/// anyone registered them explicitly.
pub async fn ensure(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    external_id: &str,
) -> Result<User, StoreError> {
    Ok(sqlx::query_as(
        "INSERT INTO users (id, tenant_id, external_id) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, external_id) DO UPDATE SET external_id = EXCLUDED.external_id
         RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(external_id)
    .fetch_one(db)
    .await?)
}

pub async fn by_external_id(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    external_id: &str,
) -> Result<User, StoreError> {
    Ok(
        sqlx::query_as("SELECT * FROM users WHERE tenant_id = $1 AND external_id = $2")
            .bind(tenant_id)
            .bind(external_id)
            .fetch_one(db)
            .await?,
    )
}

pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    page: PageRequest,
) -> Result<Page<User>, StoreError> {
    let rows = sqlx::query_as("SELECT * FROM users WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3")
        .bind(tenant_id)
        .bind(page.after)
        .bind(page.fetch_limit())
        .fetch_all(db)
        .await?;
    Ok(Page::from_rows(rows, page, |u: &User| u.id))
}

pub struct Settings<'a> {
    pub locale: Option<&'a str>,
    pub preferred_channel: Option<Channel>,
    pub delivery_mode: DeliveryMode,
}

/// Creates the person or replaces their settings (R2: all channels or the preferred one).
pub async fn put(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    external_id: &str,
    settings: Settings<'_>,
) -> Result<User, StoreError> {
    Ok(sqlx::query_as(
        "INSERT INTO users (id, tenant_id, external_id, locale, preferred_channel, delivery_mode)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, external_id) DO UPDATE
             SET locale = EXCLUDED.locale, preferred_channel = EXCLUDED.preferred_channel,
                 delivery_mode = EXCLUDED.delivery_mode, updated_at = now()
         RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(external_id)
    .bind(settings.locale)
    .bind(settings.preferred_channel)
    .bind(settings.delivery_mode)
    .fetch_one(db)
    .await?)
}

/// Removes the person with their addresses and registrations (the tenant's "forget me").
pub async fn delete(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    external_id: &str,
) -> Result<(), StoreError> {
    expect_row(
        sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND external_id = $2")
            .bind(tenant_id)
            .bind(external_id)
            .execute(db)
            .await?,
    )
}

/// A person named in a request, with the settings that choose their addresses (R2).
#[derive(Debug, Clone)]
pub struct UserRecipient {
    pub id: Uuid,
    pub external_id: String,
    pub locale: Option<String>,
    pub preferred_channel: Option<Channel>,
    pub delivery_mode: DeliveryMode,
    /// Active addresses only, oldest first.
    pub addresses: Vec<ActiveAddress>,
}

#[derive(Debug, Clone)]
pub struct ActiveAddress {
    pub id: Uuid,
    pub kind: AddressKind,
    pub value: String,
}

impl ActiveAddress {
    pub fn channel(&self) -> Channel {
        self.kind.channel()
    }
}

/// The named people with their active addresses. People not known yet are created (as the
/// API does on first subscribe): the delivery row that says they have no address must name
/// them, and it refers to the user row.
pub async fn with_active_addresses(
    db: &mut PgConnection,
    tenant_id: Uuid,
    external_ids: &[String],
) -> Result<Vec<UserRecipient>, StoreError> {
    let named: Vec<(Uuid, &str)> = external_ids
        .iter()
        .map(|id| (tenant_id, id.as_str()))
        .collect();
    Ok(with_active_addresses_in(db, &named)
        .await?
        .into_iter()
        .map(|(_, person)| person)
        .collect())
}

/// [`with_active_addresses`] for people of several tenants at once (the router's grouped
/// fan-out): `(tenant id, external id)` pairs in, each person with their tenant out, in the
/// order of their ids.
pub async fn with_active_addresses_in(
    db: &mut PgConnection,
    named: &[(Uuid, &str)],
) -> Result<Vec<(Uuid, UserRecipient)>, StoreError> {
    // Sorted and without repeats: two inserts with people in common then take their rows in
    // one order and wait for each other rather than deadlock.
    let mut named = named.to_vec();
    named.sort_unstable();
    named.dedup();
    let tenant_ids: Vec<Uuid> = named.iter().map(|(t, _)| *t).collect();
    let external_ids: Vec<&str> = named.iter().map(|(_, e)| *e).collect();
    let ids: Vec<Uuid> = named.iter().map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO users (id, tenant_id, external_id)
         SELECT n.id, n.tenant_id, n.external_id
         FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS n(id, tenant_id, external_id)
         ON CONFLICT (tenant_id, external_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&tenant_ids)
    .bind(&external_ids)
    .execute(&mut *db)
    .await?;

    #[derive(FromRow)]
    struct Row {
        tenant_id: Uuid,
        user_id: Uuid,
        external_id: String,
        locale: Option<String>,
        preferred_channel: Option<Channel>,
        delivery_mode: DeliveryMode,
        address_id: Option<Uuid>,
        kind: Option<AddressKind>,
        value: Option<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT u.tenant_id, u.id AS user_id, u.external_id, u.locale, u.preferred_channel,
                u.delivery_mode, a.id AS address_id, a.kind, a.value
         FROM (SELECT DISTINCT tenant_id, external_id
               FROM unnest($1::uuid[], $2::text[]) AS n(tenant_id, external_id)) n
         JOIN users u ON u.tenant_id = n.tenant_id AND u.external_id = n.external_id
         LEFT JOIN addresses a ON a.user_id = u.id AND a.state = 'active' AND a.verified
         ORDER BY u.id, a.id",
    )
    .bind(&tenant_ids)
    .bind(&external_ids)
    .fetch_all(&mut *db)
    .await?;

    let mut users: Vec<(Uuid, UserRecipient)> = Vec::new();
    for row in rows {
        if users.last().is_none_or(|(_, u)| u.id != row.user_id) {
            users.push((
                row.tenant_id,
                UserRecipient {
                    id: row.user_id,
                    external_id: row.external_id,
                    locale: row.locale,
                    preferred_channel: row.preferred_channel,
                    delivery_mode: row.delivery_mode,
                    addresses: Vec::new(),
                },
            ));
        }
        if let (Some(id), Some(kind), Some(value), Some((_, user))) =
            (row.address_id, row.kind, row.value, users.last_mut())
        {
            user.addresses.push(ActiveAddress { id, kind, value });
        }
    }
    Ok(users)
}
