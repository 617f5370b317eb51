//! Link codes (R5): a person asks the API for a code and sends it to a chat bot; the bot's
//! sender redeems it and that chat becomes one of the person's addresses. Codes are stored
//! as keyed hashes (HMAC-SHA-256 under `verification.code_secret`, which the API that issues
//! and the router that redeems share), single-use and short-lived.

use chrono::{DateTime, Utc};
use messaging_core::Channel;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;
use crate::secret;

/// A code just issued: the plain code exists only in this value, never in the database.
#[derive(Debug, Clone)]
pub struct IssuedCode {
    pub code: String,
    pub channel: Option<Channel>,
    pub expires_at: DateTime<Utc>,
}

/// Who a redeemed code links.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Redeemed {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub channel: Option<Channel>,
}

/// Issues a code for `user_id`, optionally only for one channel. Expired codes of the same
/// user are cleared on the way, so the table holds only what can still be used.
pub async fn issue(
    db: &mut sqlx::PgConnection,
    key: &[u8],
    tenant_id: Uuid,
    user_id: Uuid,
    channel: Option<Channel>,
    ttl: chrono::Duration,
) -> Result<IssuedCode, StoreError> {
    sqlx::query(
        "DELETE FROM link_codes WHERE user_id = $1 AND (expires_at < now() OR used_at IS NOT NULL)",
    )
    .bind(user_id)
    .execute(&mut *db)
    .await?;
    let code = secret::new_link_code();
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO link_codes (code_hash, tenant_id, user_id, channel, expires_at)
         VALUES ($1, $2, $3, $4, now() + $5) RETURNING expires_at",
    )
    .bind(secret::keyed_hash(key, &code))
    .bind(tenant_id)
    .bind(user_id)
    .bind(channel)
    .bind(ttl)
    .fetch_one(&mut *db)
    .await?;
    Ok(IssuedCode {
        code,
        channel,
        expires_at,
    })
}

/// Redeems a code for `channel`: at most once, before it expires, and only on the channel it
/// was issued for (when it names one). `None` for unknown, used, expired or wrong-channel
/// codes alike, so a guesser learns nothing.
pub async fn redeem(
    db: impl PgExecutor<'_>,
    key: &[u8],
    code: &str,
    channel: Channel,
) -> Result<Option<Redeemed>, StoreError> {
    redeem_by(db, key, code, channel, "").await
}

/// [`redeem`] by a chat (`by`, the chat's `<kind>:<value>`): the same chat redeeming the same
/// code again (the same event handled twice) gets the same answer rather than "used".
pub async fn redeem_by(
    db: impl PgExecutor<'_>,
    key: &[u8],
    code: &str,
    channel: Channel,
    by: &str,
) -> Result<Option<Redeemed>, StoreError> {
    let normalized = code.trim().to_ascii_uppercase();
    Ok(sqlx::query_as(
        "UPDATE link_codes SET used_at = coalesce(used_at, now()), used_by = coalesce(used_by, $3)
         WHERE code_hash = $1 AND (channel IS NULL OR channel = $2)
           AND ((used_at IS NULL AND expires_at > now()) OR (used_by = $3 AND $3 <> ''))
         RETURNING tenant_id, user_id, channel",
    )
    .bind(secret::keyed_hash(key, &normalized))
    .bind(channel)
    .bind(by)
    .fetch_optional(db)
    .await?)
}
