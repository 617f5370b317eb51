//! A person's addresses (R2, R3, R5, R6): one per chat, mailbox or number.

use chrono::{DateTime, Utc};
use messaging_core::{AddressKind, AddressState, Channel};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::{StoreError, expect_row};

#[derive(Debug, Clone, FromRow)]
pub struct AddressRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub channel: Channel,
    pub kind: AddressKind,
    pub value: String,
    pub display_name: Option<String>,
    pub verified: bool,
    /// How it was proven: `code`, `link`, `import`, `tenant` or `migration`.
    pub verified_how: Option<String>,
    pub verified_at: Option<DateTime<Utc>>,
    pub state: AddressState,
    pub state_reason: Option<String>,
    pub state_changed_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub failure_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub struct NewAddress<'a> {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub kind: AddressKind,
    pub value: &'a str,
    pub display_name: Option<&'a str>,
}

/// Adds an address, unproven; adding one the person has already returns it (`false`: not
/// new) as it is. Adding it again proves nothing: an address that was removed or found
/// unreachable stays so until it is proven again ([`crate::verification`]).
pub async fn add(
    db: impl PgExecutor<'_>,
    new: NewAddress<'_>,
) -> Result<(AddressRow, bool), StoreError> {
    #[derive(FromRow)]
    struct Added {
        #[sqlx(flatten)]
        address: AddressRow,
        created: bool,
    }
    let added: Added = sqlx::query_as(
        "INSERT INTO addresses (id, tenant_id, user_id, channel, kind, value, display_name)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (user_id, kind, value) DO UPDATE
             SET display_name = coalesce(EXCLUDED.display_name, addresses.display_name), updated_at = now()
         RETURNING id, user_id, channel, kind, value, display_name, verified, verified_how, verified_at, state, state_reason,
                   state_changed_at, last_success_at, failure_count, created_at, updated_at,
                   (xmax = 0) AS created",
    )
    .bind(Uuid::now_v7())
    .bind(new.tenant_id)
    .bind(new.user_id)
    .bind(new.kind.channel())
    .bind(new.kind)
    .bind(new.value)
    .bind(new.display_name)
    .fetch_one(db)
    .await?;
    Ok((added.address, added.created))
}

/// Every address of a person, removed ones included (they are history), oldest first.
pub async fn for_user(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    user_id: Uuid,
) -> Result<Vec<AddressRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, user_id, channel, kind, value, display_name, verified, verified_how, verified_at, state,
                state_reason, state_changed_at, last_success_at, failure_count, created_at, updated_at
         FROM addresses WHERE tenant_id = $1 AND user_id = $2 ORDER BY id",
    )
    .bind(tenant_id)
    .bind(user_id)
    .fetch_all(db)
    .await?)
}

pub async fn delete(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    user_id: Uuid,
    id: Uuid,
) -> Result<(), StoreError> {
    expect_row(
        sqlx::query("DELETE FROM addresses WHERE tenant_id = $1 AND user_id = $2 AND id = $3")
            .bind(tenant_id)
            .bind(user_id)
            .bind(id)
            .execute(db)
            .await?,
    )
}

/// One of the person's addresses.
pub async fn by_id(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    user_id: Uuid,
    id: Uuid,
) -> Result<AddressRow, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, user_id, channel, kind, value, display_name, verified, verified_how, verified_at, state,
                state_reason, state_changed_at, last_success_at, failure_count, created_at, updated_at
         FROM addresses WHERE tenant_id = $1 AND user_id = $2 AND id = $3",
    )
    .bind(tenant_id)
    .bind(user_id)
    .bind(id)
    .fetch_one(db)
    .await?)
}

/// The person's address with this channel and value, if they have it.
pub async fn by_value(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    channel: Channel,
    value: &str,
) -> Result<Option<AddressRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, user_id, channel, kind, value, display_name, verified, verified_how, verified_at, state,
                state_reason, state_changed_at, last_success_at, failure_count, created_at, updated_at
         FROM addresses WHERE user_id = $1 AND channel = $2 AND value = $3
         ORDER BY verified DESC, id LIMIT 1",
    )
    .bind(user_id)
    .bind(channel)
    .bind(value)
    .fetch_optional(db)
    .await?)
}

/// How many addresses the person has on `channel` (the per-channel cap counts them).
pub async fn count_on_channel(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    channel: Channel,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM addresses WHERE user_id = $1 AND channel = $2")
            .bind(user_id)
            .bind(channel)
            .fetch_one(db)
            .await?,
    )
}

/// Why [`follow_moved_chat`] removes an address whose person holds the new reference too.
const SUPERSEDED: &str = "superseded: the chat was linked again at its new place";

/// What [`follow_moved_chat`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Addresses now holding the new reference.
    pub followed: u64,
    /// Addresses given up because their person already holds the new reference (they linked
    /// the chat again at its new place), so the chat does not get every message twice.
    pub superseded: u64,
    /// Open support tickets whose replies now go to the new reference.
    pub tickets: u64,
}

/// Stores what else a bot knows of the chat behind an address (Teams' conversation
/// reference; see `migrations/0015_teams_chat_moves.sql`).
pub async fn set_chat_reference(
    db: impl PgExecutor<'_>,
    address_id: Uuid,
    reference: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE addresses SET chat_reference = $2 WHERE id = $1")
        .bind(address_id)
        .bind(reference)
        .execute(db)
        .await?;
    Ok(())
}

/// A Teams conversation answered at a new service URL (R38): every active address that
/// holds the same conversation id at another service URL takes `new_value`, in every tenant
/// the chat is linked in. The change is written to the address's history. Staff replies to
/// the chat's tickets that are not closed go there too. Call it in a transaction.
pub async fn follow_moved_chat(
    tx: &mut sqlx::PgConnection,
    kind: AddressKind,
    conversation_id: &str,
    new_value: &str,
    reference: Option<&serde_json::Value>,
) -> Result<Moved, StoreError> {
    #[derive(FromRow)]
    struct Stale {
        id: Uuid,
        tenant_id: Uuid,
        value: String,
        taken: bool,
    }
    // The expression and the kind match the partial index of migration 0015.
    let stale: Vec<Stale> = sqlx::query_as(
        "SELECT a.id, a.tenant_id, a.value,
                EXISTS (SELECT 1 FROM addresses b
                        WHERE b.user_id = a.user_id AND b.kind = a.kind AND b.value = $3) AS taken
         FROM addresses a
         WHERE a.kind = $1 AND split_part(a.value, ' ', 2) = $2 AND a.value <> $3
           AND a.state = 'active'
         ORDER BY a.id
         FOR UPDATE",
    )
    .bind(kind)
    .bind(conversation_id)
    .bind(new_value)
    .fetch_all(&mut *tx)
    .await?;
    let mut moved = Moved::default();
    for address in stale {
        let (state, reason) = if address.taken {
            sqlx::query(
                "UPDATE addresses SET state = 'removed', state_reason = $2, state_changed_at = now(),
                        updated_at = now()
                 WHERE id = $1",
            )
            .bind(address.id)
            .bind(SUPERSEDED)
            .execute(&mut *tx)
            .await?;
            moved.superseded += 1;
            (AddressState::Removed, SUPERSEDED.to_owned())
        } else {
            sqlx::query(
                "UPDATE addresses SET value = $2, chat_reference = coalesce($3, chat_reference),
                        updated_at = now()
                 WHERE id = $1",
            )
            .bind(address.id)
            .bind(new_value)
            .bind(reference)
            .execute(&mut *tx)
            .await?;
            moved.followed += 1;
            (
                AddressState::Active,
                format!("moved: from {} to {new_value}", address.value),
            )
        };
        sqlx::query(
            "INSERT INTO address_state_changes (address_id, tenant_id, state, reason) VALUES ($1, $2, $3, $4)",
        )
        .bind(address.id)
        .bind(address.tenant_id)
        .bind(state)
        .bind(&reason)
        .execute(&mut *tx)
        .await?;
    }
    moved.tickets = sqlx::query(
        "UPDATE support_tickets SET chat = $3, updated_at = now()
         WHERE chat_kind = $1 AND state <> 'closed' AND split_part(chat, ' ', 2) = $2 AND chat <> $3",
    )
    .bind(kind)
    .bind(conversation_id)
    .bind(new_value)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(moved)
}
