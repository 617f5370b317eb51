//! Broker users bound to tenants (issue #17): the only tenant a producer's requests may
//! name. RabbitMQ vouches for the user (the `user_id` property must be the connection's
//! user); this table says which tenant that user speaks for.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::{StoreError, expect_row};

#[derive(Debug, Clone, FromRow)]
pub struct Producer {
    pub username: String,
    pub tenant_id: Uuid,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// Binds `username` to the tenant; binding it again to the same tenant returns it as it is
/// (`false`: not new). A user bound to another tenant is a conflict: unbind it there first.
pub async fn bind(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    username: &str,
    actor: &str,
) -> Result<(Producer, bool), StoreError> {
    #[derive(FromRow)]
    struct Bound {
        #[sqlx(flatten)]
        producer: Producer,
        created: bool,
    }
    let bound: Option<Bound> = sqlx::query_as(
        "INSERT INTO broker_producers (username, tenant_id, created_by) VALUES ($1, $2, $3)
         ON CONFLICT (username) DO UPDATE SET username = EXCLUDED.username
             WHERE broker_producers.tenant_id = EXCLUDED.tenant_id
         RETURNING username, tenant_id, created_by, created_at, (xmax = 0) AS created",
    )
    .bind(username)
    .bind(tenant_id)
    .bind(actor)
    .fetch_optional(db)
    .await?;
    bound
        .map(|b| (b.producer, b.created))
        .ok_or_else(|| StoreError::Conflict("broker_producers_pkey".into()))
}

pub async fn unbind(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    username: &str,
) -> Result<(), StoreError> {
    expect_row(
        sqlx::query("DELETE FROM broker_producers WHERE tenant_id = $1 AND username = $2")
            .bind(tenant_id)
            .bind(username)
            .execute(db)
            .await?,
    )
}

/// The tenant's producers, by name.
pub async fn list(db: impl PgExecutor<'_>, tenant_id: Uuid) -> Result<Vec<Producer>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT username, tenant_id, created_by, created_at FROM broker_producers
         WHERE tenant_id = $1 ORDER BY username LIMIT 1000",
    )
    .bind(tenant_id)
    .fetch_all(db)
    .await?)
}

/// The tenant `username` publishes for, if it is bound.
pub async fn tenant_of(
    db: impl PgExecutor<'_>,
    username: &str,
) -> Result<Option<Uuid>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT tenant_id FROM broker_producers WHERE username = $1")
            .bind(username)
            .fetch_optional(db)
            .await?,
    )
}
