//! A fan-out pass's exclusive hold on its message (a session advisory lock).

use sqlx::FromRow;
use uuid::Uuid;

use crate::error::StoreError;
use crate::messages::RouterMessage;

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
    message_id: Uuid,
}

/// Whether a lease is still held, asked before each chunk of jobs goes out (issue #18). The
/// lease's session idles on a side connection while the pass works on others; if that
/// connection drops (a network cut, the server ending the session), the lock is gone, a
/// redelivered copy of the request may take it, and a pass that went on publishing would
/// send jobs twice. A check per chunk narrows that to the chunk in flight when the lock
/// went.
///
/// It asks on a connection of its own (the lease's is busy only between chunks, but is
/// owned by the lease): the server's lock table says whether the lease's session still
/// holds the lock.
#[derive(Clone)]
pub struct LeaseCheck {
    pool: sqlx::PgPool,
    key: i64,
    /// The server process of the lease's session.
    holder: i32,
}

impl LeaseCheck {
    /// `Ok` while the lease's session holds the lock; [`StoreError::Unavailable`] (so the
    /// request is tried again later) once it does not.
    pub async fn still_held(&self) -> Result<(), StoreError> {
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_locks
                  WHERE locktype = 'advisory' AND granted AND pid = $1
                    AND ((classid::bigint << 32) | objid::bigint) = $2
                    AND objsubid = 1)",
        )
        .bind(self.holder)
        .bind(self.key)
        .fetch_one(&self.pool)
        .await?;
        if held {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "the fan-out lease was lost (its database session ended); the request is tried again"
                    .into(),
            ))
        }
    }
}

/// The advisory lock key of a message's lease. Advisory locks take one bigint; two messages
/// that share one merely wait for each other.
fn key_of(message_id: Uuid) -> i64 {
    let (high, low) = message_id.as_u64_pair();
    (high ^ low) as i64
}

/// Takes the leases of many messages on `conn` at once, for a grouped fan-out that works on
/// them all on that connection; returns the ids it holds now (a lease another pass holds is
/// left out). The session locks outlive transactions on `conn`: give them back with
/// [`unlock_many`], or close the connection (`close_on_drop`), which frees them too.
pub async fn try_lock_many(
    conn: &mut sqlx::PgConnection,
    message_ids: &[Uuid],
) -> Result<Vec<Uuid>, StoreError> {
    let keys: Vec<i64> = message_ids.iter().map(|id| key_of(*id)).collect();
    // The keepalives: see `try_lease`.
    Ok(sqlx::query_scalar(
        "SELECT l.id FROM unnest($1::uuid[], $2::bigint[]) AS l(id, key),
                (SELECT set_config('tcp_keepalives_idle', '30', false),
                        set_config('tcp_keepalives_interval', '10', false),
                        set_config('tcp_keepalives_count', '3', false)) k
         WHERE pg_try_advisory_lock(l.key)",
    )
    .bind(message_ids)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?)
}

/// Gives back leases [`try_lock_many`] took on `conn`.
pub async fn unlock_many(
    conn: &mut sqlx::PgConnection,
    message_ids: &[Uuid],
) -> Result<(), StoreError> {
    let keys: Vec<i64> = message_ids.iter().map(|id| key_of(*id)).collect();
    sqlx::query("SELECT count(pg_advisory_unlock(k)) FROM unnest($1::bigint[]) AS k")
        .bind(&keys)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The lease on `message_id` with its [`LeaseCheck`], or `None` while another pass holds it.
pub async fn try_lease(
    pool: &sqlx::PgPool,
    message_id: Uuid,
) -> Result<Option<(FanoutLease, LeaseCheck)>, StoreError> {
    let mut conn = pool.acquire().await?;
    let key = key_of(message_id);
    // The session idles while the pass works on other connections: keepalives (server side,
    // for this session) let the server notice within about a minute that a router host died,
    // and free the lock, instead of after the operating system's two hours.
    let (locked, holder): (bool, i32) = sqlx::query_as(
        "SELECT pg_try_advisory_lock($1), pg_backend_pid()
                FROM (SELECT set_config('tcp_keepalives_idle', '30', false),
                             set_config('tcp_keepalives_interval', '10', false),
                             set_config('tcp_keepalives_count', '3', false)) k",
    )
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    Ok(locked.then_some((
        FanoutLease {
            conn: Some(conn),
            key,
            message_id,
        },
        LeaseCheck {
            pool: pool.clone(),
            key,
            holder,
        },
    )))
}

/// The leased message as the pass starts: read after the lock is taken (a statement of its own,
/// so its snapshot sees whatever the pass that held the lease before committed), on the
/// lease's own connection.
#[derive(Debug, Clone, FromRow)]
pub struct LeasedMessage {
    #[sqlx(flatten)]
    pub message: RouterMessage,
    /// Some delivery rows exist: an earlier pass got as far as writing rows, so this one must
    /// find them again rather than take its inserts as the whole story.
    pub has_deliveries: bool,
}

impl FanoutLease {
    /// The message under this lease, `None` when it is gone (deleted with its tenant).
    pub async fn message(&mut self, tenant_id: Uuid) -> Result<Option<LeasedMessage>, StoreError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::Invalid("the lease was released".into()));
        };
        Ok(sqlx::query_as(
            "SELECT m.id, m.tenant_id, m.status, m.source, m.subscription_id, m.error_code,
                    EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id) AS has_deliveries
             FROM messages m WHERE m.tenant_id = $1 AND m.id = $2",
        )
        .bind(tenant_id)
        .bind(self.message_id)
        .fetch_optional(&mut **conn)
        .await?)
    }

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
