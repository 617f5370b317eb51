//! The outbox: messages accepted over HTTP wait here until the broker has confirmed them.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED`, so several API replicas relay without
//! publishing the same row twice at once; a row is marked published only after the broker's
//! confirm, so a crash in between publishes it again (the router drops the repeat by id).
//!
//! A row the broker refuses for good (nothing routes it) is counted with [`record_refusal`]
//! and given up after a limit: `failed_at` takes it out of [`claim`], so it cannot hold up
//! the rows behind it, and its message is marked failed.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;

/// The channel `NOTIFY` wakes the relay on, so it need not poll fast.
pub const NOTIFY_CHANNEL: &str = "herald_outbox";

#[derive(Debug, Clone, FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub payload: Vec<u8>,
    pub reply_to: Option<String>,
    /// The AMQP `type` of the payload.
    pub kind: String,
    pub created_at: DateTime<Utc>,
}

pub async fn enqueue(
    tx: &mut PgConnection,
    exchange: &str,
    routing_key: &str,
    message_id: &str,
    payload: &[u8],
) -> Result<(), StoreError> {
    enqueue_kind(tx, NOTIFY_KIND, exchange, routing_key, message_id, payload).await
}

/// The AMQP `type` of a notify request.
pub const NOTIFY_KIND: &str = "herald.notify.v1";

/// One row for [`enqueue_many`].
pub struct NewRow<'a> {
    pub kind: &'a str,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub message_id: String,
    pub payload: Vec<u8>,
}

/// [`enqueue_kind`] for many rows: one insert and one notification.
pub async fn enqueue_many(tx: &mut PgConnection, rows: &[NewRow<'_>]) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO outbox (exchange, routing_key, message_id, payload, kind)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])",
    )
    .bind(rows.iter().map(|r| r.exchange).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.routing_key).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.message_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.payload.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.kind).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    // Delivered at commit, so the relay never wakes for a row it cannot see yet.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// [`enqueue`] for a payload whose AMQP `type` is `kind` (a send job, say).
pub async fn enqueue_kind(
    tx: &mut PgConnection,
    kind: &str,
    exchange: &str,
    routing_key: &str,
    message_id: &str,
    payload: &[u8],
) -> Result<(), StoreError> {
    enqueue_many(
        tx,
        &[NewRow {
            kind,
            exchange,
            routing_key,
            message_id: message_id.to_owned(),
            payload: payload.to_vec(),
        }],
    )
    .await
}

/// Claims up to `limit` unpublished rows, oldest first, for `lease`: other relays skip them
/// until it ends. One statement, so no transaction stays open while they are published.
/// Rows given up, waiting for a retry, or claimed by another relay are not claimed.
pub async fn claim(
    db: impl PgExecutor<'_>,
    limit: i64,
    lease: std::time::Duration,
) -> Result<Vec<OutboxRow>, StoreError> {
    let mut rows: Vec<OutboxRow> = sqlx::query_as(
        // The locked rows are picked in a materialized CTE and joined, not with
        // `id IN (SELECT ... FOR UPDATE SKIP LOCKED)`: there, a row another relay updated
        // since the statement's snapshot (its claim or its mark) sent the UPDATE into
        // EvalPlanQual, which runs the sort-and-lock subquery again for that row. With two
        // relays on a backlog of thousands of rows (the API's and the router's, under load)
        // one claim ran for minutes, and the other relay's mark waited on it.
        "WITH picked AS MATERIALIZED (
             SELECT id FROM outbox
             WHERE published_at IS NULL AND failed_at IS NULL
               AND (retry_at IS NULL OR retry_at <= now())
               AND (claimed_until IS NULL OR claimed_until < now())
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         UPDATE outbox o SET claimed_until = now() + make_interval(secs => $2)
         FROM picked WHERE o.id = picked.id
         RETURNING o.id, o.exchange, o.routing_key, o.message_id, o.payload, o.reply_to, o.kind,
                   o.created_at",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(db)
    .await?;
    rows.sort_unstable_by_key(|r| r.id);
    Ok(rows)
}

/// Gives claimed rows back (the broker is away): the next pass, of any relay, takes them.
pub async fn release(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE outbox SET claimed_until = NULL WHERE id = ANY($1) AND published_at IS NULL",
    )
    .bind(ids)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn mark_published(db: impl PgExecutor<'_>, ids: &[i64]) -> Result<(), StoreError> {
    // A send job the API queued carries a verification code: once the broker has it, the
    // database keeps no plain copy.
    sqlx::query(
        "UPDATE outbox SET published_at = now(), claimed_until = NULL,
             payload = CASE WHEN kind = 'herald.send_job.v1' THEN ''::bytea ELSE payload END
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes rows published before `keep` ago, at most `limit` of them: the outbox is a queue,
/// not a history (the messages table is). Returns how many went.
pub async fn delete_published(
    db: impl PgExecutor<'_>,
    keep: std::time::Duration,
    limit: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox
             WHERE published_at < now() - make_interval(secs => $1)
             LIMIT $2)",
    )
    .bind(keep.as_secs_f64())
    .bind(limit)
    .execute(db)
    .await?
    .rows_affected())
}

/// What [`record_refusal`] did with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Refusals so far, this one included.
    pub attempts: i32,
    /// The limit is reached: the row is given up and its message marked failed.
    pub given_up: bool,
}

/// Counts one refusal of a claimed row that the broker will not take (nothing routes it, or
/// it closes the channel over it: no such exchange).
/// At `limit` refusals the row is given up, and its message, if it still waits for the
/// router, is marked failed with `error_code = 'unroutable'`: the tenant sees why it never
/// went out instead of a message stuck in `accepted`.
///
/// Only for refusals that repeat; a broker outage must not count, or a long one would give up
/// every row that waits it out.
pub async fn record_refusal(
    tx: &mut PgConnection,
    row: &OutboxRow,
    reason: &str,
    limit: i32,
) -> Result<Refusal, StoreError> {
    let (attempts, given_up): (i32, bool) = sqlx::query_as(
        "UPDATE outbox SET attempts = attempts + 1, last_error = $2, claimed_until = NULL,
             failed_at = CASE WHEN attempts + 1 >= $3 THEN now() END,
             retry_at = now() + interval '15 seconds' * power(2, attempts)
         WHERE id = $1
         RETURNING attempts, failed_at IS NOT NULL",
    )
    .bind(row.id)
    .bind(reason)
    .bind(limit)
    .fetch_one(&mut *tx)
    .await?;
    // Rows written by hand or by an older producer may carry another kind of id; the row is
    // given up all the same, there is just no message to mark.
    if given_up && let Ok(message_id) = Uuid::parse_str(&row.message_id) {
        sqlx::query(
            "UPDATE messages SET status = 'failed', error_code = 'unroutable',
                 error_message = $2, completed_at = now()
             WHERE id = $1 AND status = 'accepted'",
        )
        .bind(message_id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
    }
    Ok(Refusal { attempts, given_up })
}

/// Rows waiting for the broker: the outbox backlog metric. Given-up rows wait for nobody.
pub async fn backlog(db: impl PgExecutor<'_>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND failed_at IS NULL",
    )
    .fetch_one(db)
    .await?)
}

/// Rows given up because the broker refused them: the `herald_outbox_failed` gauge. Not zero
/// means the topology is missing a binding or an exchange, and messages were lost to it.
pub async fn failed(db: impl PgExecutor<'_>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND failed_at IS NOT NULL",
    )
    .fetch_one(db)
    .await?)
}

/// Puts a chat answer (R5, R53) in the outbox: it goes to `answer.<channel>` on the events
/// exchange once the transaction that decided it commits.
pub async fn enqueue_chat_answer(
    tx: &mut PgConnection,
    events_exchange: &str,
    answer: &messaging_core::events::ChatAnswer,
) -> Result<(), StoreError> {
    let payload = serde_json::to_vec(answer).map_err(|e| StoreError::Invalid(e.to_string()))?;
    enqueue(
        tx,
        events_exchange,
        &messaging_core::topology::routing::answer(answer.channel),
        &answer.answer_id.to_string(),
        &payload,
    )
    .await
}
