//! Support tickets (R53): what people ask a chat bot's staff, and the staff's replies.
//!
//! The router opens tickets (it owns the bots' events); the API lists, answers and closes
//! them. An answer to the person is a chat answer in the outbox, written in the same
//! transaction as what caused it, so it goes out exactly when the change is committed.

use chrono::{DateTime, Utc};
use messaging_core::{AddressKind, Channel, TicketState};
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::{StoreError, expect_row};
use crate::page::{Page, PageRequest};
use crate::subscriptions::Subscription;

/// The person a chat is linked to, found by the chat's address.
#[derive(Debug, Clone, FromRow)]
pub struct LinkedChat {
    pub tenant_id: Uuid,
    pub tenant_key: String,
    pub user_id: Uuid,
    pub user_external_id: String,
    pub address_id: Uuid,
}

/// Who this chat belongs to: a verified, active address of that kind and value. A chat linked
/// in several tenants (one bot serving them all) belongs to the one it was linked in last.
pub async fn linked_chat(
    db: impl PgExecutor<'_>,
    kind: AddressKind,
    value: &str,
) -> Result<Option<LinkedChat>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT a.tenant_id, t.key AS tenant_key, a.user_id, u.external_id AS user_external_id,
                a.id AS address_id
         FROM addresses a JOIN tenants t ON t.id = a.tenant_id JOIN users u ON u.id = a.user_id
         WHERE a.kind = $1 AND a.value = $2 AND a.verified AND a.state = 'active'
         ORDER BY a.updated_at DESC, a.id DESC LIMIT 1",
    )
    .bind(kind)
    .bind(value)
    .fetch_optional(db)
    .await?)
}

#[derive(Debug, Clone, FromRow)]
pub struct Ticket {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: Option<Uuid>,
    /// The tenant's id for the person, while the person exists.
    pub user_external_id: Option<String>,
    pub channel: Channel,
    pub chat_kind: AddressKind,
    pub chat: String,
    pub display_name: Option<String>,
    pub body: String,
    pub state: TicketState,
    pub message_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
}

/// The ticket columns with the person's external id, followed by `$tail` (sqlx takes
/// `&'static str`, and `concat!` joins only literals).
macro_rules! select {
    ($tail:literal) => {
        concat!(
            "SELECT s.id, s.tenant_id, s.user_id, u.external_id AS user_external_id, s.channel,
                    s.chat_kind, s.chat, s.display_name, s.body, s.state, s.message_id,
                    s.created_at, s.updated_at, s.closed_at, s.closed_by
             FROM support_tickets s LEFT JOIN users u ON u.id = s.user_id",
            $tail
        )
    };
}

pub struct NewTicket<'a> {
    pub request_id: Uuid,
    pub chat: &'a LinkedChat,
    pub channel: Channel,
    pub chat_kind: AddressKind,
    pub chat_value: &'a str,
    pub display_name: Option<&'a str>,
    pub body: &'a str,
}

/// Opens a ticket; a request seen before returns its ticket (`false`: not new).
pub async fn open(tx: &mut PgConnection, new: NewTicket<'_>) -> Result<(Uuid, bool), StoreError> {
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO support_tickets (id, tenant_id, request_id, user_id, address_id, channel,
                                      chat_kind, chat, display_name, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (request_id) DO NOTHING
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(new.chat.tenant_id)
    .bind(new.request_id)
    .bind(new.chat.user_id)
    .bind(new.chat.address_id)
    .bind(new.channel)
    .bind(new.chat_kind)
    .bind(new.chat_value)
    .bind(new.display_name)
    .bind(new.body)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = inserted {
        return Ok((id, true));
    }
    let id = sqlx::query_scalar("SELECT id FROM support_tickets WHERE request_id = $1")
        .bind(new.request_id)
        .fetch_one(&mut *tx)
        .await?;
    Ok((id, false))
}

/// Records the message that told the staff about a ticket.
pub async fn set_message(
    db: impl PgExecutor<'_>,
    ticket_id: Uuid,
    message_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE support_tickets SET message_id = $2 WHERE id = $1")
        .bind(ticket_id)
        .bind(message_id)
        .execute(db)
        .await?;
    Ok(())
}

/// The subscription that tells the tenant's staff about new tickets, if the tenant chose one.
pub async fn staff_subscription(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
) -> Result<Option<Subscription>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT s.* FROM tenants t JOIN subscriptions s ON s.id = t.support_subscription_id
         WHERE t.id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(db)
    .await?)
}

/// Chooses (or with `None` clears) the subscription that tells staff about new tickets.
pub async fn set_staff_subscription(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    subscription_id: Option<Uuid>,
) -> Result<(), StoreError> {
    expect_row(
        sqlx::query(
            "UPDATE tenants SET support_subscription_id = $2, updated_at = now() WHERE id = $1",
        )
        .bind(tenant_id)
        .bind(subscription_id)
        .execute(db)
        .await?,
    )
}

pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    state: Option<TicketState>,
    page: PageRequest,
) -> Result<Page<Ticket>, StoreError> {
    let rows = sqlx::query_as(select!(
        " WHERE s.tenant_id = $1 AND ($2::text IS NULL OR s.state = $2)
            AND ($3::uuid IS NULL OR s.id > $3)
          ORDER BY s.id LIMIT $4"
    ))
    .bind(tenant_id)
    .bind(state)
    .bind(page.after)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(Page::from_rows(rows, page, |t: &Ticket| t.id))
}

pub async fn by_id(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Ticket, StoreError> {
    Ok(
        sqlx::query_as(select!(" WHERE s.tenant_id = $1 AND s.id = $2"))
            .bind(tenant_id)
            .bind(id)
            .fetch_one(db)
            .await?,
    )
}

#[derive(Debug, Clone, FromRow)]
pub struct Reply {
    pub id: Uuid,
    pub ticket_id: Uuid,
    pub body: String,
    pub author: String,
    pub created_at: DateTime<Utc>,
}

/// Every reply to a ticket, oldest first. A conversation, not a table: no paging.
pub async fn replies(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    ticket_id: Uuid,
) -> Result<Vec<Reply>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, ticket_id, body, author, created_at FROM support_replies
         WHERE tenant_id = $1 AND ticket_id = $2 ORDER BY id",
    )
    .bind(tenant_id)
    .bind(ticket_id)
    .fetch_all(db)
    .await?)
}

/// Records a staff reply and marks the ticket answered (a closed one stays closed: the reply
/// still reaches the person). The caller puts the chat answer in the outbox in the same
/// transaction.
pub async fn reply(
    tx: &mut PgConnection,
    tenant_id: Uuid,
    ticket_id: Uuid,
    body: &str,
    author: &str,
) -> Result<Reply, StoreError> {
    record_reply(tx, tenant_id, ticket_id, body, author, None)
        .await?
        .ok_or(StoreError::NotFound)
}

/// A reply a staff member wrote in the ticket's help-desk room, from the bot's event: like
/// [`reply`], and `None` when that event was stored before (a redelivery).
pub async fn reply_from_room(
    tx: &mut PgConnection,
    tenant_id: Uuid,
    ticket_id: Uuid,
    body: &str,
    author: &str,
    event_id: Uuid,
) -> Result<Option<Reply>, StoreError> {
    record_reply(tx, tenant_id, ticket_id, body, author, Some(event_id)).await
}

async fn record_reply(
    tx: &mut PgConnection,
    tenant_id: Uuid,
    ticket_id: Uuid,
    body: &str,
    author: &str,
    event_id: Option<Uuid>,
) -> Result<Option<Reply>, StoreError> {
    let reply: Option<Reply> = sqlx::query_as(
        "INSERT INTO support_replies (id, ticket_id, tenant_id, body, author, event_id)
         SELECT $1, id, tenant_id, $4, $5, $6 FROM support_tickets
          WHERE tenant_id = $3 AND id = $2
         ON CONFLICT (event_id) DO NOTHING
         RETURNING id, ticket_id, body, author, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(ticket_id)
    .bind(tenant_id)
    .bind(body)
    .bind(author)
    .bind(event_id)
    .fetch_optional(&mut *tx)
    .await?;
    if reply.is_some() {
        sqlx::query(
            "UPDATE support_tickets SET state = CASE WHEN state = 'closed' THEN state ELSE 'answered' END,
                 updated_at = now()
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(ticket_id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(reply)
}

/// Closes a ticket (again is fine: the first closing is kept).
pub async fn close(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    ticket_id: Uuid,
    actor: &str,
) -> Result<(), StoreError> {
    expect_row(
        sqlx::query(
            "UPDATE support_tickets SET state = 'closed', closed_at = coalesce(closed_at, now()),
                 closed_by = coalesce(closed_by, $3), updated_at = now()
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(ticket_id)
        .bind(actor)
        .execute(db)
        .await?,
    )
}
