//! The fan-out router's queries (issue #4): finding or recording a request, the recipients
//! (users with their active addresses, a subscription's registrations page by page), the
//! templates, and the delivery rows with the mark that their send job is published.
//!
//! Exactly one job per (message, address) rests on two things here:
//! - `deliveries` is unique on (message, user, channel, address), and rows are inserted with
//!   `ON CONFLICT DO NOTHING`, so a request handled twice writes each row once;
//! - `job_published_at` is set only after the broker confirmed the job, so a request handled
//!   again after a crash publishes only the rows still unmarked.

use chrono::{DateTime, Utc};
use messaging_core::ingress::DeliveryMode;
use messaging_core::{AddressKind, Channel, FailureClass, MessageSource, MessageStatus};
use sqlx::{Acquire, FromRow, PgConnection, PgExecutor, Row};
use uuid::Uuid;

use crate::error::StoreError;
use crate::subscriptions::Subscription;

/// What the router needs to know about a stored message.
#[derive(Debug, Clone, FromRow)]
pub struct RouterMessage {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub status: MessageStatus,
    pub source: MessageSource,
    pub subscription_id: Option<Uuid>,
    pub error_code: Option<String>,
}

/// The message with this id, if the tenant has one (the API stores its messages before it
/// publishes them, with the message id as the AMQP `message_id`).
pub async fn message_in_tenant(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<RouterMessage>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, tenant_id, status, source, subscription_id, error_code
         FROM messages WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// A request the router received straight from a producer (no row yet).
pub struct NewRouterMessage<'a> {
    /// Derived from the AMQP `message_id` when there is one, so a redelivered request finds
    /// the row it created the first time.
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub idempotency_key: Option<&'a str>,
    pub source: MessageSource,
    pub subscription_id: Option<Uuid>,
    pub request: &'a serde_json::Value,
    pub reply_to: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
}

/// Stores the request, or returns the message stored before under the same id or the same
/// idempotency key (`false`: not new).
pub async fn insert_or_find_message(
    db: &mut PgConnection,
    new: NewRouterMessage<'_>,
) -> Result<(RouterMessage, bool), StoreError> {
    let inserted: Option<RouterMessage> = sqlx::query_as(
        "INSERT INTO messages (id, tenant_id, idempotency_key, source, subscription_id, request,
                               reply_to, correlation_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT DO NOTHING
         RETURNING id, tenant_id, status, source, subscription_id, error_code",
    )
    .bind(new.id)
    .bind(new.tenant_id)
    .bind(new.idempotency_key)
    .bind(new.source)
    .bind(new.subscription_id)
    .bind(new.request)
    .bind(new.reply_to)
    .bind(new.correlation_id)
    .fetch_optional(&mut *db)
    .await?;
    if let Some(message) = inserted {
        return Ok((message, true));
    }
    // The id wins over the key: a redelivery is the same request even if a later request
    // reused its key.
    let existing: Option<RouterMessage> = sqlx::query_as(
        "SELECT id, tenant_id, status, source, subscription_id, error_code FROM messages
         WHERE tenant_id = $1 AND (id = $2 OR ($3::text IS NOT NULL AND idempotency_key = $3))
         ORDER BY (id = $2) DESC LIMIT 1",
    )
    .bind(new.tenant_id)
    .bind(new.id)
    .bind(new.idempotency_key)
    .fetch_optional(&mut *db)
    .await?;
    // Neither: the id is another tenant's. Ids are derived per tenant, so only a producer
    // choosing ids to collide gets here; it is refused rather than merged.
    existing
        .map(|m| (m, false))
        .ok_or_else(|| StoreError::Conflict("messages_pkey".into()))
}

/// Records why a request could not be fanned out (`unknown_subscription`, `no_template`,
/// `retries_exhausted`, ...): `GET /messages/{id}` shows it to the producer (R4, R13). Only an
/// accepted message changes. Returns its status afterwards.
///
/// Deliveries an earlier, interrupted pass wrote but never published fail with the reason and
/// `class`. When that pass published some jobs (marked, or known to a sender: a job confirmed
/// but not marked before a crash may have been attempted already), the message is not failed
/// as a whole: those jobs will be delivered and reported, so it goes on as a fan-out that
/// ended there (`fanned_out`, or `completed` when nothing is pending), with the reason kept
/// as its error.
pub async fn fail_message(
    db: &mut PgConnection,
    id: Uuid,
    class: FailureClass,
    code: &str,
    message: &str,
) -> Result<MessageStatus, StoreError> {
    let mut tx = db.begin().await?;
    let status: Option<MessageStatus> =
        sqlx::query_scalar("SELECT status FROM messages WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(status) = status else {
        return Err(StoreError::NotFound);
    };
    if status != MessageStatus::Accepted {
        tx.commit().await?;
        return Ok(status);
    }
    // Rows an interrupted pass wrote but never published would otherwise stay pending.
    sqlx::query(
        "UPDATE deliveries SET status = 'failed', failure_class = $4,
             failure_code = $2, failure_message = $3, updated_at = now()
         WHERE message_id = $1 AND status = 'pending' AND job_published_at IS NULL
           AND attempts = 0",
    )
    .bind(id)
    .bind(code)
    .bind(message)
    .bind(class)
    .execute(&mut *tx)
    .await?;
    let status: MessageStatus = sqlx::query_scalar(
        "UPDATE messages SET error_code = $2, error_message = $3,
             status = CASE WHEN NOT d.published THEN 'failed'
                           WHEN d.pending THEN 'fanned_out' ELSE 'completed' END,
             completed_at = CASE WHEN d.published AND d.pending THEN NULL ELSE now() END
         FROM (SELECT EXISTS (SELECT 1 FROM deliveries
                              WHERE message_id = $1
                                AND (job_published_at IS NOT NULL OR attempts > 0))
                          AS published,
                      EXISTS (SELECT 1 FROM deliveries
                              WHERE message_id = $1 AND status = 'pending') AS pending) d
         WHERE id = $1
         RETURNING status",
    )
    .bind(id)
    .bind(code)
    .bind(message)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(status)
}

/// A fan-out pass's exclusive hold on its message: a session advisory lock, on a connection
/// of its own for as long as the pass runs.
///
/// Two copies of one request can be in work at once (a relay that published a row twice, a
/// producer that retried before the first copy was acked, two router replicas). Without the
/// lease both would fan out, and a refusal or the sweep at the end of one could fail rows the other
/// is about to publish. A session lock, not a transaction, because a pass to 100,000
/// recipients commits batch by batch; and a router that dies mid-pass loses its connection,
/// which releases the lock, so the redelivered request can take over.
pub struct FanoutLease {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: i64,
}

/// The lease on `message_id`, or `None` while another pass holds it.
pub async fn try_lease(
    pool: &sqlx::PgPool,
    message_id: Uuid,
) -> Result<Option<FanoutLease>, StoreError> {
    let mut conn = pool.acquire().await?;
    let (high, low) = message_id.as_u64_pair();
    // Advisory locks take one bigint; two messages that share one merely wait for each other.
    let key = (high ^ low) as i64;
    // The session idles while the pass works on other connections: keepalives (server side,
    // for this session) let the server notice within about a minute that a router host died,
    // and free the lock, instead of after the operating system's two hours.
    let locked: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock($1)
                FROM (SELECT set_config('tcp_keepalives_idle', '30', false),
                             set_config('tcp_keepalives_interval', '10', false),
                             set_config('tcp_keepalives_count', '3', false)) k",
    )
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    Ok(locked.then_some(FanoutLease {
        conn: Some(conn),
        key,
    }))
}

impl FanoutLease {
    /// Gives the lease back and the connection to the pool.
    pub async fn release(mut self) -> Result<(), StoreError> {
        if let Some(mut conn) = self.conn.take() {
            let result = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut *conn)
                .await;
            if result.is_err() {
                // The lock may still be held: this connection must not serve anyone else.
                conn.close_on_drop();
            }
            result?;
        }
        Ok(())
    }
}

impl Drop for FanoutLease {
    /// A pass that ended without `release` (an error path, a cancelled task) closes its
    /// connection rather than return it to the pool still holding the lock.
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

/// Ends a fan-out: `fanned_out` while deliveries are pending, `completed` when none are (every
/// recipient failed already, or the senders were quicker than this). Returns the status and
/// how many abandoned rows it failed.
///
/// The message row is locked first, so this and whoever completes messages from delivery
/// events (which must lock it too) see each other's work, and a message whose last delivery
/// finished during the fan-out is not left at `fanned_out`.
///
/// With `sweep` (a pass that found rows of an earlier, interrupted one), pending rows written
/// before `started` that this pass did not publish fail as `recipient_changed`: their address
/// or registration went away meanwhile, and nobody would ever publish them.
///
/// One round trip: `herald_finish_fanout` (migration 0005) does it in the database.
pub async fn finish_fanout(
    db: impl PgExecutor<'_>,
    id: Uuid,
    started: DateTime<Utc>,
    sweep: bool,
) -> Result<(MessageStatus, i32), StoreError> {
    let (status, abandoned): (Option<MessageStatus>, i32) =
        sqlx::query_as("SELECT status, abandoned FROM herald_finish_fanout($1, $2, $3)")
            .bind(id)
            .bind(started)
            .bind(sweep)
            .fetch_one(db)
            .await?;
    // No status: the message was deleted (its tenant with it) during the fan-out.
    Ok((status.ok_or(StoreError::NotFound)?, abandoned))
}

/// The subscriptions an event type fires in a tenant (R14).
pub async fn subscriptions_for_event(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    event_type: &str,
) -> Result<Vec<Subscription>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT s.* FROM event_bindings b JOIN subscriptions s ON s.id = b.subscription_id
         WHERE b.tenant_id = $1 AND b.event_type = $2 AND s.tenant_id = $1
         ORDER BY s.key",
    )
    .bind(tenant_id)
    .bind(event_type)
    .fetch_all(db)
    .await?)
}

/// One template (R13). `channel` `None`: for any channel without its own.
#[derive(Debug, Clone, FromRow)]
pub struct TemplateRow {
    pub id: Uuid,
    pub channel: Option<Channel>,
    pub locale: String,
    pub subject: Option<String>,
    pub body: String,
    pub html: Option<String>,
}

/// All templates of a subscription. A handful per subscription (channels times locales), so
/// the router holds them in memory for one message.
pub async fn templates(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    subscription_id: Uuid,
) -> Result<Vec<TemplateRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, channel, locale, subject, body, html FROM templates
         WHERE tenant_id = $1 AND subscription_id = $2 ORDER BY id",
    )
    .bind(tenant_id)
    .bind(subscription_id)
    .fetch_all(db)
    .await?)
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
pub async fn users_for_fanout(
    db: &mut PgConnection,
    tenant_id: Uuid,
    external_ids: &[String],
) -> Result<Vec<UserRecipient>, StoreError> {
    let ids: Vec<Uuid> = external_ids.iter().map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO users (id, tenant_id, external_id)
         SELECT n.id, $1, n.external_id FROM unnest($2::uuid[], $3::text[]) AS n(id, external_id)
         ON CONFLICT (tenant_id, external_id) DO NOTHING",
    )
    .bind(tenant_id)
    .bind(&ids)
    .bind(external_ids)
    .execute(&mut *db)
    .await?;

    #[derive(FromRow)]
    struct Row {
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
        "SELECT u.id AS user_id, u.external_id, u.locale, u.preferred_channel, u.delivery_mode,
                a.id AS address_id, a.kind, a.value
         FROM users u
         LEFT JOIN addresses a ON a.user_id = u.id AND a.state = 'active'
         WHERE u.tenant_id = $1 AND u.external_id = ANY($2)
         ORDER BY u.id, a.id",
    )
    .bind(tenant_id)
    .bind(external_ids)
    .fetch_all(&mut *db)
    .await?;

    let mut users: Vec<UserRecipient> = Vec::new();
    for row in rows {
        if users.last().is_none_or(|u| u.id != row.user_id) {
            users.push(UserRecipient {
                id: row.user_id,
                external_id: row.external_id,
                locale: row.locale,
                preferred_channel: row.preferred_channel,
                delivery_mode: row.delivery_mode,
                addresses: Vec::new(),
            });
        }
        if let (Some(id), Some(kind), Some(value), Some(user)) =
            (row.address_id, row.kind, row.value, users.last_mut())
        {
            user.addresses.push(ActiveAddress { id, kind, value });
        }
    }
    Ok(users)
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
    /// The person's address row for it, when there is one: delivery results then reach the
    /// address (R3, R6).
    pub address_id: Option<Uuid>,
}

/// The next page of a subscription's enabled registrations after `after`, in id order
/// (keyset pagination on the `registrations_fanout` index), so a fan-out to 100k people
/// holds one page in memory. `channels`: only these channels; `None`, all.
pub async fn registrations_page(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    subscription_id: Uuid,
    after: Uuid,
    limit: i64,
    channels: Option<&[Channel]>,
) -> Result<Vec<RegistrationRecipient>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT r.id, r.user_id, u.external_id, u.locale, r.channel, r.address, a.id AS address_id
         FROM registrations r JOIN users u ON u.id = r.user_id
         LEFT JOIN addresses a ON a.user_id = r.user_id AND a.channel = r.channel AND a.value = r.address
         WHERE r.subscription_id = $1 AND r.enabled AND r.id > $2 AND r.tenant_id = $3
           AND ($4::text[] IS NULL OR r.channel = ANY($4))
           -- An address found unreachable or removed (R3, R6) gets nothing until it is
           -- linked or added again.
           AND (a.id IS NULL OR a.state = 'active')
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
pub async fn insert_deliveries(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    message_id: Uuid,
    subscription_id: Option<Uuid>,
    rows: &[NewDelivery],
) -> Result<(u64, Vec<UnpublishedDelivery>), StoreError> {
    let mut ids = Vec::with_capacity(rows.len());
    let mut user_ids = Vec::with_capacity(rows.len());
    let mut address_ids = Vec::with_capacity(rows.len());
    let mut channels = Vec::with_capacity(rows.len());
    let mut addresses = Vec::with_capacity(rows.len());
    let mut classes = Vec::with_capacity(rows.len());
    let mut codes = Vec::with_capacity(rows.len());
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        ids.push(row.id);
        user_ids.push(row.user_id);
        address_ids.push(row.address_id);
        channels.push(row.channel);
        addresses.push(row.address.as_deref());
        classes.push(row.failure.as_ref().map(|f| f.class));
        codes.push(row.failure.as_ref().map(|f| f.code.as_str()));
        messages.push(row.failure.as_ref().map(|f| f.message.as_str()));
    }
    let done = sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, message_id, subscription_id, user_id, address_id,
                                 channel, address, status, failure_class, failure_code,
                                 failure_message)
         SELECT d.id, $1, $2, $3, d.user_id, d.address_id, d.channel, d.address,
                CASE WHEN d.failure_code IS NULL THEN 'pending' ELSE 'failed' END,
                d.failure_class, d.failure_code, d.failure_message
         FROM unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::text[], $8::text[], $9::text[],
                     $10::text[], $11::text[])
              AS d(id, user_id, address_id, channel, address, failure_class, failure_code,
                   failure_message)
         ON CONFLICT DO NOTHING
         RETURNING id, user_id, channel, address, status = 'pending' AS pending",
    )
    .bind(tenant_id)
    .bind(message_id)
    .bind(subscription_id)
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
            Some(UnpublishedDelivery {
                id: row.get("id"),
                user_id: row.get("user_id"),
                channel: row.get::<Option<Channel>, _>("channel")?,
                address: row.get::<Option<String>, _>("address")?,
            })
            .filter(|_| pending)
        })
        .collect();
    Ok((new, pending))
}

/// Whether any delivery of the message exists: none at the start of a pass means no earlier
/// pass got as far as writing rows, so nothing written before needs finding again.
pub async fn has_deliveries(db: impl PgExecutor<'_>, message_id: Uuid) -> Result<bool, StoreError> {
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

/// Marks deliveries whose jobs the broker confirmed.
pub async fn mark_published(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<(), StoreError> {
    sqlx::query("UPDATE deliveries SET job_published_at = now() WHERE id = ANY($1)")
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
