//! What the router writes when senders report attempts (R15), what that means for the address
//! (R3, R6), and when a message is complete (R4).
//!
//! Every event's transaction locks the message row first, then the delivery, then the
//! address: one lock order everywhere, so concurrent events cannot deadlock, and the last two
//! events of a message cannot both miss that the message is complete.

use chrono::{DateTime, Utc};
use messaging_core::{AddressState, Channel, DeliveryStatus, FailureClass, MessageStatus};
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;

/// When a failing address is removed (R3): after failures spanning at least `after`, and at
/// least `failures` of them. Both must hold, so a burst of retries in one minute does not
/// remove an address, nor does one failure a month.
#[derive(Debug, Clone, Copy)]
pub struct RemovalPolicy {
    pub after: chrono::Duration,
    pub failures: i32,
}

/// One attempt, as a sender reported it.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub delivery_id: Uuid,
    pub tenant_key: &'a str,
    pub attempt: i32,
    pub occurred_at: DateTime<Utc>,
    pub result: AttemptOutcome<'a>,
}

#[derive(Debug, Clone)]
pub enum AttemptOutcome<'a> {
    Delivered,
    RetryScheduled {
        failure: FailureRef<'a>,
        retry_at: DateTime<Utc>,
    },
    Failed {
        failure: FailureRef<'a>,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct FailureRef<'a> {
    pub class: FailureClass,
    pub code: &'a str,
    pub message: &'a str,
}

/// What recording an attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// No delivery with this id in this tenant.
    Unknown,
    /// The delivery moved past this attempt already (a duplicate, or an event overtaken by a
    /// later one): nothing changed.
    Stale { message_id: Uuid },
    Applied {
        message_id: Uuid,
        /// The address's new state and why, when this attempt changed it.
        address_change: Option<(AddressState, String)>,
    },
}

#[derive(FromRow)]
struct DeliveryState {
    message_id: Uuid,
    tenant_id: Uuid,
    address_id: Option<Uuid>,
}

/// Records one attempt in `tx` and applies its consequences to the address.
pub async fn record(
    tx: &mut PgConnection,
    attempt: &Attempt<'_>,
    policy: RemovalPolicy,
) -> Result<Recorded, StoreError> {
    // The delivery's message, locked: every event of a message, and the end of its fan-out,
    // take this lock first, so whoever completes the message sees every delivery's last
    // state. One statement finds and locks it (the subquery also checks the tenant). NO KEY
    // UPDATE: events still queue behind each other and behind the end of the fan-out (FOR
    // UPDATE), but not behind the fan-out's own inserts, whose foreign-key checks share the
    // key.
    let message_id: Option<Uuid> = sqlx::query_scalar(
        "SELECT m.id FROM messages m
         WHERE m.id = (SELECT d.message_id FROM deliveries d JOIN tenants t ON t.id = d.tenant_id
                       WHERE d.id = $1 AND t.key = $2)
         FOR NO KEY UPDATE",
    )
    .bind(attempt.delivery_id)
    .bind(attempt.tenant_key)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(message_id) = message_id else {
        return Ok(Recorded::Unknown);
    };
    let (status, failure, retry_at, sent_at) = match &attempt.result {
        AttemptOutcome::Delivered => (DeliveryStatus::Sent, None, None, Some(attempt.occurred_at)),
        AttemptOutcome::RetryScheduled { failure, retry_at } => (
            DeliveryStatus::Pending,
            Some(*failure),
            Some(*retry_at),
            None,
        ),
        AttemptOutcome::Failed { failure } => (DeliveryStatus::Failed, Some(*failure), None, None),
    };
    // Final is final; among pending states only a later attempt counts (a repeated event
    // must not count its failure twice towards removal). Under the message lock, so the
    // condition cannot change between the check and the write.
    let row: Option<DeliveryState> = sqlx::query_as(
        "UPDATE deliveries SET status = $2, attempts = $3, failure_class = $4, failure_code = $5,
             failure_message = $6, next_retry_at = $7, sent_at = coalesce($8, sent_at),
             updated_at = now()
         WHERE id = $1 AND status = 'pending' AND attempts < $3
         RETURNING message_id, tenant_id, address_id",
    )
    .bind(attempt.delivery_id)
    .bind(status)
    .bind(attempt.attempt)
    .bind(failure.map(|f| f.class))
    .bind(failure.map(|f| f.code))
    .bind(failure.map(|f| f.message))
    .bind(retry_at)
    .bind(sent_at)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(Recorded::Stale { message_id });
    };

    let address_change = match row.address_id {
        Some(address_id) => {
            address_effect(tx, row.tenant_id, address_id, attempt, failure, policy).await?
        }
        None => None,
    };
    debug_assert_eq!(row.message_id, message_id);
    Ok(Recorded::Applied {
        message_id,
        address_change,
    })
}

/// Locks the messages of these deliveries (each named with its tenant's key), in the order
/// of their ids, for a group of events recorded in one transaction (issue #16): the same
/// lock [`record`] takes first, taken for the whole group at once, so two groups take their
/// locks in one order and cannot wait for each other. Returns each known delivery's message;
/// a delivery that is not the tenant's is left out.
pub async fn lock_messages_of(
    tx: &mut PgConnection,
    deliveries: &[(Uuid, &str)],
) -> Result<std::collections::HashMap<Uuid, Uuid>, StoreError> {
    let ids: Vec<Uuid> = deliveries.iter().map(|(id, _)| *id).collect();
    let keys: Vec<&str> = deliveries.iter().map(|(_, key)| *key).collect();
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT d.id, m.id
         FROM unnest($1::uuid[], $2::text[]) AS e(delivery_id, tenant_key)
         JOIN deliveries d ON d.id = e.delivery_id
         JOIN tenants t ON t.id = d.tenant_id AND t.key = e.tenant_key
         JOIN messages m ON m.id = d.message_id
         WHERE d.id = ANY($1)
         ORDER BY m.id
         FOR NO KEY UPDATE OF m",
    )
    .bind(&ids)
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    // The deliveries too, in the order of their ids (as `deliveries::mark_published` takes
    // them): the group's later statements then take no delivery lock out of that order,
    // whatever order its events come in.
    let known: Vec<Uuid> = rows.iter().map(|(delivery, _)| *delivery).collect();
    sqlx::query("SELECT 1 FROM deliveries WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(&known)
        .execute(&mut *tx)
        .await?;
    Ok(rows.into_iter().collect())
}

/// [`record`] for many `Delivered` attempts at once, in `tx`, with their messages locked
/// already ([`lock_messages_of`], which gave `owners`): one statement records the deliveries,
/// one ends their addresses' failure streaks. Each delivery at most once in `attempts`.
/// Returns each attempt's record, in order.
pub async fn record_delivered(
    tx: &mut PgConnection,
    attempts: &[Attempt<'_>],
    owners: &std::collections::HashMap<Uuid, Uuid>,
) -> Result<Vec<Recorded>, StoreError> {
    let ids: Vec<Uuid> = attempts.iter().map(|a| a.delivery_id).collect();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.attempt).collect();
    let times: Vec<DateTime<Utc>> = attempts.iter().map(|a| a.occurred_at).collect();
    // Final is final; among pending states only a later attempt counts, as in `record`. The
    // rows are locked in the order of their ids first (see `deliveries::mark_published`).
    // The rows are found by their key alone, and their state checked once they are locked
    // (nobody else can change it then): a condition on the status lets the planner pick the
    // `deliveries_pending` index, which a young database's statistics call tiny, and scan
    // all of it for each group, over a second a statement at 12,000 pending rows in
    // bench-e2e; the same would happen to anyone with a backlog after a provider outage.
    let applied: Vec<(Uuid, Option<Uuid>, DateTime<Utc>)> = sqlx::query_as(
        "WITH e AS (SELECT * FROM unnest($1::uuid[], $2::int[], $3::timestamptz[])
                    AS e(id, attempt, occurred_at)),
              locked AS (SELECT d.id, d.status, d.attempts FROM deliveries d
                         WHERE d.id = ANY($1)
                         ORDER BY d.id
                         FOR NO KEY UPDATE OF d),
              due AS (SELECT l.id, e.attempt, e.occurred_at
                      FROM locked l JOIN e ON e.id = l.id
                      WHERE l.status = 'pending' AND l.attempts < e.attempt)
         UPDATE deliveries d SET status = 'sent', attempts = due.attempt, failure_class = NULL,
             failure_code = NULL, failure_message = NULL, next_retry_at = NULL,
             sent_at = due.occurred_at, updated_at = now()
         FROM due
         WHERE d.id = ANY($1) AND d.id = due.id
         RETURNING d.id, d.address_id, due.occurred_at",
    )
    .bind(&ids)
    .bind(&numbers)
    .bind(&times)
    .fetch_all(&mut *tx)
    .await?;
    let successes: Vec<(Uuid, DateTime<Utc>)> = applied
        .iter()
        .filter_map(|(_, address, at)| Some(((*address)?, *at)))
        .collect();
    if !successes.is_empty() {
        let (addresses, at): (Vec<Uuid>, Vec<DateTime<Utc>>) = successes.into_iter().unzip();
        // The success rule of `address_effect`; the rows locked in the order of their ids
        // first, so two groups cannot wait for each other here either.
        sqlx::query(
            "WITH s AS (SELECT address_id, max(at) AS at
                        FROM unnest($1::uuid[], $2::timestamptz[]) AS s(address_id, at)
                        GROUP BY address_id),
                  due AS (SELECT a.id, s.at FROM addresses a JOIN s ON s.address_id = a.id
                          WHERE a.id = ANY($1)
                            AND (a.failure_count <> 0 OR a.failure_streak_started_at IS NOT NULL
                             OR a.last_success_at IS NULL
                             OR a.last_success_at < s.at - interval '1 minute')
                          ORDER BY a.id
                          FOR NO KEY UPDATE OF a)
             UPDATE addresses a SET last_success_at = greatest(a.last_success_at, due.at),
                 failure_count = 0, failure_streak_started_at = NULL, updated_at = now()
             FROM due WHERE a.id = ANY($1) AND a.id = due.id",
        )
        .bind(&addresses)
        .bind(&at)
        .execute(&mut *tx)
        .await?;
    }
    let applied: std::collections::HashSet<Uuid> =
        applied.into_iter().map(|(id, _, _)| id).collect();
    Ok(attempts
        .iter()
        .map(|a| match owners.get(&a.delivery_id) {
            None => Recorded::Unknown,
            Some(&message_id) if applied.contains(&a.delivery_id) => Recorded::Applied {
                message_id,
                address_change: None,
            },
            Some(&message_id) => Recorded::Stale { message_id },
        })
        .collect())
}

/// R3 and R6: a success resets the failure streak; a permanent failure marks the address
/// unreachable; temporary failures count towards removal. An unhealthy provider says nothing
/// about the address and changes nothing.
async fn address_effect(
    tx: &mut PgConnection,
    tenant_id: Uuid,
    address_id: Uuid,
    attempt: &Attempt<'_>,
    failure: Option<FailureRef<'_>>,
    policy: RemovalPolicy,
) -> Result<Option<(AddressState, String)>, StoreError> {
    let Some(failure) = failure else {
        // Most successes find the address without a streak and a success of a moment ago:
        // writing it again would be a new row version (and its WAL) per delivery for nothing,
        // so `last_success_at` is only moved when it is a minute old (issue #16).
        sqlx::query(
            "UPDATE addresses SET last_success_at = greatest(last_success_at, $2),
                 failure_count = 0, failure_streak_started_at = NULL, updated_at = now()
             WHERE id = $1
               AND (failure_count <> 0 OR failure_streak_started_at IS NOT NULL
                    OR last_success_at IS NULL OR last_success_at < $2 - interval '1 minute')",
        )
        .bind(address_id)
        .bind(attempt.occurred_at)
        .execute(&mut *tx)
        .await?;
        return Ok(None);
    };
    match failure.class {
        FailureClass::Permanent => {
            let reason = format!("{}: {}", failure.code, failure.message);
            change_state(
                tx,
                tenant_id,
                address_id,
                AddressState::Unreachable,
                &reason,
            )
            .await
        }
        FailureClass::Temporary => {
            let (count, since, state): (i32, DateTime<Utc>, AddressState) = sqlx::query_as(
                "UPDATE addresses SET failure_count = failure_count + 1,
                     failure_streak_started_at = coalesce(failure_streak_started_at, $2),
                     updated_at = now()
                 WHERE id = $1
                 RETURNING failure_count, failure_streak_started_at, state",
            )
            .bind(address_id)
            .bind(attempt.occurred_at)
            .fetch_one(&mut *tx)
            .await?;
            let span = attempt.occurred_at - since;
            if state == AddressState::Active && count >= policy.failures && span >= policy.after {
                let reason = format!(
                    "unreachable since {} ({count} failed attempts, the last: {}: {})",
                    since.to_rfc3339(),
                    failure.code,
                    failure.message
                );
                change_state(tx, tenant_id, address_id, AddressState::Removed, &reason).await
            } else {
                Ok(None)
            }
        }
        FailureClass::Unhealthy => Ok(None),
    }
}

/// Moves an active address to `state` and records why (R3 asks that removals are recorded).
async fn change_state(
    tx: &mut PgConnection,
    tenant_id: Uuid,
    address_id: Uuid,
    state: AddressState,
    reason: &str,
) -> Result<Option<(AddressState, String)>, StoreError> {
    let changed = sqlx::query(
        "UPDATE addresses SET state = $2, state_reason = $3, state_changed_at = now(), updated_at = now()
         WHERE id = $1 AND state = 'active'",
    )
    .bind(address_id)
    .bind(state)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    if changed.rows_affected() == 0 {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO address_state_changes (address_id, tenant_id, state, reason) VALUES ($1, $2, $3, $4)",
    )
    .bind(address_id)
    .bind(tenant_id)
    .bind(state)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(Some((state, reason.to_owned())))
}

/// Marks a fanned-out message completed when none of its deliveries is pending any more.
/// Call it with the message row locked (as [`record`] does), or race with other events.
pub async fn complete_if_done(
    db: impl PgExecutor<'_>,
    message_id: Uuid,
) -> Result<bool, StoreError> {
    Ok(!complete_all_if_done(db, &[message_id]).await?.is_empty())
}

/// [`complete_if_done`] for many messages in one statement (the router's grouped events);
/// returns those it completed. The same rule: call it with the message rows locked.
///
/// Each message is asked for one pending delivery, in a lateral subquery with `LIMIT 1`,
/// rather than with a correlated `NOT EXISTS`: on a young database (no statistics yet) the
/// planner turned that into an anti-join that scanned the whole `deliveries_pending` index
/// for every message (340 ms a statement at 12,000 pending rows in bench-e2e, 0.35 ms this
/// way). The limit matters as much: collecting every pending row of the messages took 151
/// ms for a group holding one broadcast with 200,000 pending deliveries, against 0.67 ms.
pub async fn complete_all_if_done(
    db: impl PgExecutor<'_>,
    message_ids: &[Uuid],
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE messages m SET status = 'completed', completed_at = now()
         WHERE m.id = ANY($1) AND m.status = 'fanned_out'
           AND m.id <> ALL (ARRAY(
                 SELECT x.id FROM unnest($1::uuid[]) AS x(id)
                 CROSS JOIN LATERAL (SELECT 1 FROM deliveries d
                                     WHERE d.message_id = x.id AND d.status = 'pending'
                                     LIMIT 1) p))
         RETURNING m.id",
    )
    .bind(message_ids)
    .fetch_all(db)
    .await?)
}

/// A finished message whose outcome (R4) is not published yet.
#[derive(Debug, Clone, FromRow)]
pub struct PendingOutcome {
    pub id: Uuid,
    pub tenant_key: String,
    pub idempotency_key: Option<String>,
    pub status: MessageStatus,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// One delivery, as the outcome reports it.
#[derive(Debug, Clone, FromRow)]
pub struct OutcomeRecipient {
    pub delivery_id: Uuid,
    pub user_external_id: Option<String>,
    pub channel: Option<Channel>,
    pub status: DeliveryStatus,
    pub failure_class: Option<FailureClass>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
}

/// Of these messages, those that are final (`completed` or `failed`) with their outcome
/// unpublished.
pub async fn pending_outcomes(
    db: impl PgExecutor<'_>,
    message_ids: &[Uuid],
) -> Result<Vec<PendingOutcome>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT m.id, t.key AS tenant_key, m.idempotency_key, m.status, m.error_code,
                m.error_message, m.reply_to, m.correlation_id, m.completed_at
         FROM messages m JOIN tenants t ON t.id = m.tenant_id
         WHERE m.id = ANY($1) AND m.status IN ('completed', 'failed')
           AND m.outcome_published_at IS NULL
         ORDER BY m.id",
    )
    .bind(message_ids)
    .fetch_all(db)
    .await?)
}

/// The deliveries of these messages, for their outcomes, at most `limit` per message (by
/// delivery id). Outcomes are for messages to people, not for 100k-recipient broadcasts.
pub async fn outcome_recipients_of(
    db: impl PgExecutor<'_>,
    message_ids: &[Uuid],
    limit: i64,
) -> Result<Vec<(Uuid, OutcomeRecipient)>, StoreError> {
    #[derive(FromRow)]
    struct Row {
        message_id: Uuid,
        #[sqlx(flatten)]
        recipient: OutcomeRecipient,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT m.id AS message_id, d.id AS delivery_id, u.external_id AS user_external_id,
                d.channel, d.status, d.failure_class, d.failure_code, d.failure_message,
                d.attempts, d.sent_at
         FROM unnest($1::uuid[]) AS m(id)
         CROSS JOIN LATERAL (SELECT * FROM deliveries d WHERE d.message_id = m.id
                             ORDER BY d.id LIMIT $2) d
         LEFT JOIN users u ON u.id = d.user_id
         ORDER BY m.id, d.id",
    )
    .bind(message_ids)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.message_id, r.recipient))
        .collect())
}

/// Counts of a message's deliveries by final status: (sent, failed).
pub async fn outcome_counts(
    db: impl PgExecutor<'_>,
    message_id: Uuid,
) -> Result<(i64, i64), StoreError> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FILTER (WHERE status = 'failed')
         FROM deliveries WHERE message_id = $1",
    )
    .bind(message_id)
    .fetch_one(db)
    .await?)
}

/// Finished messages whose outcome is still unpublished, finished before `before` and less
/// than a day before it: those whose publish failed for good (the broker refused it through
/// every attempt) or that were finished where no outcome is published (the outbox relay
/// giving a message up). Older ones are left alone: an answer a day late helps no producer,
/// and messages finished before outcomes existed must not all be answered at once.
pub async fn unpublished_outcomes(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM messages
         WHERE status IN ('completed', 'failed') AND outcome_published_at IS NULL
           AND completed_at < $1 AND completed_at > $1 - interval '1 day'
         ORDER BY id LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

pub async fn mark_outcomes_published(
    db: impl PgExecutor<'_>,
    message_ids: &[Uuid],
) -> Result<(), StoreError> {
    sqlx::query("UPDATE messages SET outcome_published_at = now() WHERE id = ANY($1)")
        .bind(message_ids)
        .execute(db)
        .await?;
    Ok(())
}
