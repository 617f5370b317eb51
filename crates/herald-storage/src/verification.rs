//! Proving addresses (issue #17): Herald sends nothing but a verification message to an
//! address until someone proved it is theirs. A code (six digits for SMS and XMPP, a long
//! token in a link for email) goes to the address through its channel's sender; whoever
//! types it back, or opens the link, controls the address.
//!
//! Codes are stored as keyed hashes only ([`secret::keyed_hash`]), one live code per address;
//! each allows a few attempts and expires. Every send is recorded, and the caps per address
//! per day and per tenant per hour are counted from those records under a per-tenant lock, so
//! concurrent requests cannot slip past a cap together.

use chrono::{DateTime, Utc};
use messaging_core::{AddressState, Channel};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::error::StoreError;
use crate::secret;

/// How an address was proven (`addresses.verified_how`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The person confirmed a code or link sent to it.
    Code,
    /// A chat bot captured it when the person wrote (R5).
    Link,
    /// A tenant admin vouched for it.
    Import,
    /// A WebSocket key in the tenant's own client namespace.
    Tenant,
}

impl Proof {
    pub fn as_str(self) -> &'static str {
        match self {
            Proof::Code => "code",
            Proof::Link => "link",
            Proof::Import => "import",
            Proof::Tenant => "tenant",
        }
    }
}

/// Verification messages allowed, counted over the sends recorded.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// To one address (channel and value) in 24 hours, whoever asks.
    pub per_address_per_day: i64,
    /// By one tenant in an hour.
    pub per_tenant_per_hour: i64,
}

/// A cap that stops a verification message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capped {
    /// `address` or `tenant`.
    pub scope: &'static str,
    pub limit: i64,
    /// When the oldest counted send leaves the window.
    pub retry_after_secs: i64,
}

/// Checks the caps for one more verification message to `channel`/`value`. Takes a
/// per-tenant transaction lock, held until `tx` ends, so that check and [`record_send`] are
/// one step for concurrent requests.
pub async fn check_caps(
    tx: &mut PgConnection,
    tenant_id: Uuid,
    channel: Channel,
    value: &str,
    caps: Caps,
) -> Result<Option<Capped>, StoreError> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('herald.verification:' || $1::text, 0))",
    )
    .bind(tenant_id)
    .execute(&mut *tx)
    .await?;
    #[derive(FromRow)]
    struct Window {
        sent: i64,
        retry_after_secs: Option<f64>,
    }
    let address: Window = sqlx::query_as(
        "SELECT count(*) AS sent,
                extract(epoch FROM min(sent_at) + interval '1 day' - now())::float8 AS retry_after_secs
         FROM verification_sends
         WHERE channel = $1 AND value = $2 AND sent_at > now() - interval '1 day'",
    )
    .bind(channel)
    .bind(value)
    .fetch_one(&mut *tx)
    .await?;
    if address.sent >= caps.per_address_per_day {
        return Ok(Some(Capped {
            scope: "address",
            limit: caps.per_address_per_day,
            retry_after_secs: retry_after(address.retry_after_secs),
        }));
    }
    let tenant: Window = sqlx::query_as(
        "SELECT count(*) AS sent,
                extract(epoch FROM min(sent_at) + interval '1 hour' - now())::float8 AS retry_after_secs
         FROM verification_sends
         WHERE tenant_id = $1 AND sent_at > now() - interval '1 hour'",
    )
    .bind(tenant_id)
    .fetch_one(&mut *tx)
    .await?;
    if tenant.sent >= caps.per_tenant_per_hour {
        return Ok(Some(Capped {
            scope: "tenant",
            limit: caps.per_tenant_per_hour,
            retry_after_secs: retry_after(tenant.retry_after_secs),
        }));
    }
    Ok(None)
}

fn retry_after(secs: Option<f64>) -> i64 {
    secs.map_or(1, |s| (s.ceil() as i64).max(1))
}

/// One verification message about to be queued.
pub struct NewCode<'a> {
    pub tenant_id: Uuid,
    pub address_id: Uuid,
    pub channel: Channel,
    pub value: &'a str,
    /// The keyed hash of the code ([`secret::keyed_hash`]).
    pub code_hash: &'a [u8],
    /// A link token (looked up by hash, without a login), not a short code.
    pub link: bool,
    pub ttl: chrono::Duration,
    /// Who asked for it, for the record.
    pub actor: &'a str,
}

/// Stores the address's code, replacing any earlier one (only the newest code counts), and
/// records the send. Returns when the code expires.
pub async fn store_code(
    tx: &mut PgConnection,
    new: NewCode<'_>,
) -> Result<DateTime<Utc>, StoreError> {
    sqlx::query("DELETE FROM verification_sends WHERE sent_at < now() - interval '2 days'")
        .execute(&mut *tx)
        .await?;
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO address_verifications (address_id, tenant_id, code_hash, link, expires_at)
         VALUES ($1, $2, $3, $4, now() + $5)
         ON CONFLICT (address_id) DO UPDATE
             SET code_hash = EXCLUDED.code_hash, link = EXCLUDED.link, attempts = 0,
                 expires_at = EXCLUDED.expires_at, created_at = now()
         RETURNING expires_at",
    )
    .bind(new.address_id)
    .bind(new.tenant_id)
    .bind(new.code_hash)
    .bind(new.link)
    .bind(new.ttl)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO verification_sends (tenant_id, address_id, channel, value, actor)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(new.tenant_id)
    .bind(new.address_id)
    .bind(new.channel)
    .bind(new.value)
    .bind(new.actor)
    .execute(&mut *tx)
    .await?;
    Ok(expires_at)
}

/// Why a code did not prove its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No live code: none was sent, it was used, voided after too many attempts, or replaced.
    NoCode,
    Expired,
    /// Wrong; `attempts_left` more before the code is void.
    Wrong {
        attempts_left: i32,
    },
}

/// What a confirmation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmed {
    Proven { address_id: Uuid, tenant_id: Uuid },
    Refused(Refused),
}

#[derive(FromRow)]
struct Live {
    address_id: Uuid,
    tenant_id: Uuid,
    code_hash: Vec<u8>,
    attempts: i32,
    expired: bool,
}

/// Checks `code_hash` against the address's live code. A wrong code counts an attempt (commit
/// `tx` either way: the count must stick); after `max_attempts` the code is void.
pub async fn confirm_code(
    tx: &mut PgConnection,
    tenant_id: Uuid,
    address_id: Uuid,
    code_hash: &[u8],
    max_attempts: i32,
) -> Result<Confirmed, StoreError> {
    let live: Option<Live> = sqlx::query_as(
        "SELECT address_id, tenant_id, code_hash, attempts, expires_at < now() AS expired
         FROM address_verifications WHERE tenant_id = $1 AND address_id = $2 FOR UPDATE",
    )
    .bind(tenant_id)
    .bind(address_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(live) = live else {
        return Ok(Confirmed::Refused(Refused::NoCode));
    };
    if live.expired {
        return Ok(Confirmed::Refused(Refused::Expired));
    }
    if live.attempts >= max_attempts {
        return Ok(Confirmed::Refused(Refused::NoCode));
    }
    if !secret::same_hash(&live.code_hash, code_hash) {
        let attempts: i32 = sqlx::query_scalar(
            "UPDATE address_verifications SET attempts = attempts + 1 WHERE address_id = $1
             RETURNING attempts",
        )
        .bind(address_id)
        .fetch_one(&mut *tx)
        .await?;
        return Ok(Confirmed::Refused(Refused::Wrong {
            attempts_left: (max_attempts - attempts).max(0),
        }));
    }
    prove(tx, &live).await
}

/// Confirms the link token whose keyed hash is `code_hash`, whichever address it was sent to.
pub async fn confirm_link(
    tx: &mut PgConnection,
    code_hash: &[u8],
) -> Result<Confirmed, StoreError> {
    let live: Option<Live> = sqlx::query_as(
        "SELECT address_id, tenant_id, code_hash, attempts, expires_at < now() AS expired
         FROM address_verifications WHERE link AND code_hash = $1 FOR UPDATE",
    )
    .bind(code_hash)
    .fetch_optional(&mut *tx)
    .await?;
    match live {
        None => Ok(Confirmed::Refused(Refused::NoCode)),
        Some(live) if live.expired => Ok(Confirmed::Refused(Refused::Expired)),
        Some(live) => prove(tx, &live).await,
    }
}

async fn prove(tx: &mut PgConnection, live: &Live) -> Result<Confirmed, StoreError> {
    sqlx::query("DELETE FROM address_verifications WHERE address_id = $1")
        .bind(live.address_id)
        .execute(&mut *tx)
        .await?;
    mark_verified(tx, live.address_id, Proof::Code, "the address's owner").await?;
    Ok(Confirmed::Proven {
        address_id: live.address_id,
        tenant_id: live.tenant_id,
    })
}

/// Marks an address proven: verified, and active again if a failure or removal had taken it
/// out of service (the proof shows it works), with the change recorded (R3).
pub async fn mark_verified(
    tx: &mut PgConnection,
    address_id: Uuid,
    how: Proof,
    by: &str,
) -> Result<(), StoreError> {
    let earlier: Option<AddressState> = sqlx::query_scalar(
        "UPDATE addresses a SET verified = true, verified_at = now(), verified_how = $2,
             verified_by = $3, state = 'active', state_reason = NULL, failure_count = 0,
             failure_streak_started_at = NULL,
             state_changed_at = CASE WHEN a.state <> 'active' THEN now() ELSE a.state_changed_at END,
             updated_at = now()
         FROM (SELECT state FROM addresses WHERE id = $1 FOR UPDATE) old
         WHERE a.id = $1
         RETURNING old.state",
    )
    .bind(address_id)
    .bind(how.as_str())
    .bind(by)
    .fetch_optional(&mut *tx)
    .await?;
    if earlier.is_some_and(|s| s != AddressState::Active) {
        sqlx::query(
            "INSERT INTO address_state_changes (address_id, tenant_id, state, reason)
             SELECT id, tenant_id, 'active', $2 FROM addresses WHERE id = $1",
        )
        .bind(address_id)
        .bind(format!("proven again ({})", how.as_str()))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// A verification message, queued: its message and delivery rows (tracked like any other)
/// and its send job in the outbox, all in `tx`.
pub struct QueuedMessage<'a> {
    pub tenant_id: Uuid,
    pub message_id: Uuid,
    pub delivery_id: Uuid,
    pub user_id: Uuid,
    pub address_id: Uuid,
    pub channel: Channel,
    pub value: &'a str,
    /// What `GET /messages/{id}` shows as the request: never the code.
    pub request: &'a serde_json::Value,
    /// The encoded send job, with the code.
    pub job: &'a [u8],
    pub job_kind: &'a str,
    pub exchange: &'a str,
}

pub async fn queue_message(tx: &mut PgConnection, m: QueuedMessage<'_>) -> Result<(), StoreError> {
    // No producer asked for it, so no outcome is owed on `outcome.<tenant>`: marked as
    // published from the start, the outcome machinery passes it by.
    sqlx::query(
        "INSERT INTO messages (id, tenant_id, source, request, status, outcome_published_at)
         VALUES ($1, $2, 'verification', $3, 'fanned_out', now())",
    )
    .bind(m.message_id)
    .bind(m.tenant_id)
    .bind(m.request)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, message_id, user_id, address_id, channel, address, job_published_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())",
    )
    .bind(m.delivery_id)
    .bind(m.tenant_id)
    .bind(m.message_id)
    .bind(m.user_id)
    .bind(m.address_id)
    .bind(m.channel)
    .bind(m.value)
    .execute(&mut *tx)
    .await?;
    crate::outbox::enqueue_kind(
        tx,
        m.job_kind,
        m.exchange,
        m.channel.as_str(),
        &m.delivery_id.to_string(),
        m.job,
    )
    .await
}
