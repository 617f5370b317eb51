//! Accepted requests (R1, R14) and their life: accepted, fanned out, completed or failed.
//!
//! The API writes a message and its outbox row in one transaction, so an accepted message is
//! never lost between the database and the broker. The router finds the API's row (or records
//! a producer's request), fails a request it cannot fan out, and ends each fan-out.

use chrono::{DateTime, Utc};
use messaging_core::{MessageSource, MessageStatus};
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;
use crate::outbox;
use messaging_core::FailureClass;
use sqlx::Acquire;

#[derive(Debug, Clone, FromRow)]
pub struct Message {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub idempotency_key: Option<String>,
    pub source: MessageSource,
    pub subscription_id: Option<Uuid>,
    pub request: serde_json::Value,
    pub status: MessageStatus,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

pub struct NewMessage<'a> {
    pub tenant_id: Uuid,
    pub idempotency_key: Option<&'a str>,
    pub source: MessageSource,
    pub subscription_id: Option<Uuid>,
    /// The request as the router will read it (a versioned notify request).
    pub request: &'a serde_json::Value,
    /// Where the outbox relay publishes it.
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

/// Accepts a message: stores it with its outbox row, or, when the tenant used this
/// idempotency key before, returns the first message instead (`false`: not new).
pub async fn accept(
    tx: &mut PgConnection,
    new: NewMessage<'_>,
) -> Result<(Message, bool), StoreError> {
    let inserted: Option<Message> = sqlx::query_as(
        "INSERT INTO messages (id, tenant_id, idempotency_key, source, subscription_id, request)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
         RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(new.tenant_id)
    .bind(new.idempotency_key)
    .bind(new.source)
    .bind(new.subscription_id)
    .bind(new.request)
    .fetch_optional(&mut *tx)
    .await?;
    match inserted {
        Some(message) => {
            let payload = serde_json::to_vec(new.request).unwrap_or_default();
            outbox::enqueue(
                &mut *tx,
                new.exchange,
                new.routing_key,
                &message.id.to_string(),
                &payload,
            )
            .await?;
            Ok((message, true))
        }
        None => {
            let key = new.idempotency_key.unwrap_or_default();
            let first = sqlx::query_as(
                "SELECT * FROM messages WHERE tenant_id = $1 AND idempotency_key = $2",
            )
            .bind(new.tenant_id)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            Ok((first, false))
        }
    }
}

/// [`accept`] for many messages in one transaction, as the API's group commit hands them
/// over: one multi-row insert, one for the outbox rows, one `NOTIFY`. Each answer is in the
/// order of `news`. Two messages with the same tenant and key in one call store the first;
/// the second gets it back, as if it came after.
pub async fn accept_many(
    tx: &mut PgConnection,
    news: &[NewMessage<'_>],
) -> Result<Vec<(Message, bool)>, StoreError> {
    let ids: Vec<Uuid> = news.iter().map(|_| Uuid::now_v7()).collect();
    // Written in (tenant, key) order, so two groups in work at once take the keys' index
    // entries in the same order and cannot deadlock; stable, so the first of a repeated key
    // stays first.
    let mut order: Vec<usize> = (0..news.len()).collect();
    order.sort_by_key(|&i| (news[i].tenant_id, news[i].idempotency_key));
    let inserted: Vec<Message> = sqlx::query_as(
        "INSERT INTO messages (id, tenant_id, idempotency_key, source, subscription_id, request)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::jsonb[])
         ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
         RETURNING *",
    )
    .bind(order.iter().map(|&i| ids[i]).collect::<Vec<_>>())
    .bind(order.iter().map(|&i| news[i].tenant_id).collect::<Vec<_>>())
    .bind(order.iter().map(|&i| news[i].idempotency_key).collect::<Vec<_>>())
    .bind(order.iter().map(|&i| news[i].source.as_str()).collect::<Vec<_>>())
    .bind(order.iter().map(|&i| news[i].subscription_id).collect::<Vec<_>>())
    .bind(order.iter().map(|&i| news[i].request).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let mut inserted: std::collections::HashMap<Uuid, Message> =
        inserted.into_iter().map(|m| (m.id, m)).collect();
    let fresh: Vec<usize> = (0..news.len())
        .filter(|i| inserted.contains_key(&ids[*i]))
        .collect();
    if !fresh.is_empty() {
        let rows: Vec<outbox::NewRow<'_>> = fresh
            .iter()
            .map(|&i| outbox::NewRow {
                kind: outbox::NOTIFY_KIND,
                exchange: news[i].exchange,
                routing_key: news[i].routing_key,
                message_id: ids[i].to_string(),
                payload: serde_json::to_vec(news[i].request).unwrap_or_default(),
            })
            .collect();
        outbox::enqueue_many(&mut *tx, &rows).await?;
    }
    // The others used a key the tenant used before (or earlier in this call).
    let repeated: Vec<usize> = (0..news.len())
        .filter(|i| !inserted.contains_key(&ids[*i]))
        .collect();
    let mut first: std::collections::HashMap<(Uuid, String), Message> =
        std::collections::HashMap::new();
    if !repeated.is_empty() {
        let found: Vec<Message> = sqlx::query_as(
            "SELECT m.* FROM messages m
             JOIN UNNEST($1::uuid[], $2::text[]) AS k(tenant_id, idempotency_key)
               ON m.tenant_id = k.tenant_id AND m.idempotency_key = k.idempotency_key",
        )
        .bind(
            repeated
                .iter()
                .map(|&i| news[i].tenant_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            repeated
                .iter()
                .map(|&i| news[i].idempotency_key.unwrap_or_default())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        for m in found {
            if let Some(key) = m.idempotency_key.clone() {
                first.insert((m.tenant_id, key), m);
            }
        }
    }
    news.iter()
        .zip(&ids)
        .map(|(new, id)| match inserted.remove(id) {
            Some(message) => Ok((message, true)),
            None => first
                .get(&(
                    new.tenant_id,
                    new.idempotency_key.unwrap_or_default().to_owned(),
                ))
                .cloned()
                .map(|m| (m, false))
                .ok_or(StoreError::NotFound),
        })
        .collect()
}

pub async fn by_id(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Message, StoreError> {
    Ok(
        sqlx::query_as("SELECT * FROM messages WHERE tenant_id = $1 AND id = $2")
            .bind(tenant_id)
            .bind(id)
            .fetch_one(db)
            .await?,
    )
}

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
pub async fn insert_or_find(
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

/// Stores many new requests in one statement (issue #16: the router's grouped fan-out);
/// returns the rows that are new, as (id, tenant id). A request whose id or idempotency key
/// is taken already (another copy of it, a repeat, or a clash) is left out, for the caller
/// to handle alone with [`insert_or_find`]. The rows go in in the order of their ids, so two
/// such statements with rows in common wait for each other rather than deadlock.
pub async fn insert_new(
    db: &mut PgConnection,
    new: &[NewRouterMessage<'_>],
) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
    let mut sorted: Vec<&NewRouterMessage> = new.iter().collect();
    sorted.sort_by_key(|m| m.id);
    let new = sorted;
    let ids: Vec<Uuid> = new.iter().map(|m| m.id).collect();
    let tenants: Vec<Uuid> = new.iter().map(|m| m.tenant_id).collect();
    let keys: Vec<Option<&str>> = new.iter().map(|m| m.idempotency_key).collect();
    let sources: Vec<&str> = new.iter().map(|m| m.source.as_str()).collect();
    let subscriptions: Vec<Option<Uuid>> = new.iter().map(|m| m.subscription_id).collect();
    let requests: Vec<String> = new.iter().map(|m| m.request.to_string()).collect();
    let reply_tos: Vec<Option<&str>> = new.iter().map(|m| m.reply_to).collect();
    let correlations: Vec<Option<&str>> = new.iter().map(|m| m.correlation_id).collect();
    Ok(sqlx::query_as(
        "INSERT INTO messages (id, tenant_id, idempotency_key, source, subscription_id, request,
                               reply_to, correlation_id)
         SELECT n.id, n.tenant_id, n.idempotency_key, n.source, n.subscription_id,
                n.request::jsonb, n.reply_to, n.correlation_id
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::text[],
                     $7::text[], $8::text[])
              AS n(id, tenant_id, idempotency_key, source, subscription_id, request, reply_to,
                   correlation_id)
         ON CONFLICT DO NOTHING
         RETURNING id, tenant_id",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&keys)
    .bind(&sources)
    .bind(&subscriptions)
    .bind(&requests)
    .bind(&reply_tos)
    .bind(&correlations)
    .fetch_all(&mut *db)
    .await?)
}

/// Of the messages named (id, tenant), those a grouped fan-out may take over: the tenant's,
/// still `accepted`, and without a delivery row, as the API stores a message before the
/// router sees it. Call it holding their leases, so no other pass writes rows meanwhile. A
/// message with rows was begun by an earlier pass and is resumed alone.
pub async fn not_begun(
    db: &mut PgConnection,
    messages: &[(Uuid, Uuid)],
) -> Result<Vec<Uuid>, StoreError> {
    let ids: Vec<Uuid> = messages.iter().map(|(id, _)| *id).collect();
    let tenants: Vec<Uuid> = messages.iter().map(|(_, tenant)| *tenant).collect();
    // The ids on the table itself (`m.id = ANY`), so the plan starts from the primary key
    // whatever the statistics say (see `complete_all_if_done`).
    Ok(sqlx::query_scalar(
        "SELECT m.id FROM messages m
         JOIN unnest($1::uuid[], $2::uuid[]) AS x(id, tenant_id)
           ON x.id = m.id AND x.tenant_id = m.tenant_id
         WHERE m.id = ANY($1) AND m.status = 'accepted'
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id)",
    )
    .bind(&ids)
    .bind(&tenants)
    .fetch_all(&mut *db)
    .await?)
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
pub async fn fail(
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
/// Ends the fan-outs of many messages, none of them swept ([`finish_fanout`] for each, in one
/// statement, taking the message rows in the order of their ids so that two such calls cannot
/// deadlock). Returns each message's status; a message deleted meanwhile is left out.
pub async fn finish_fanouts(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    started: DateTime<Utc>,
) -> Result<Vec<(Uuid, MessageStatus)>, StoreError> {
    let mut sorted = ids.to_vec();
    sorted.sort();
    let rows: Vec<(Uuid, Option<MessageStatus>)> = sqlx::query_as(
        "SELECT m.id, f.status
         FROM unnest($1::uuid[]) WITH ORDINALITY AS m(id, n)
         CROSS JOIN LATERAL herald_finish_fanout(m.id, $2, false) f
         ORDER BY m.n",
    )
    .bind(&sorted)
    .bind(started)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, status)| Some((id, status?)))
        .collect())
}

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
