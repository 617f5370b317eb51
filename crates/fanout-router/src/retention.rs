//! Deletes finished messages and their deliveries once they are older than
//! `router.keep_finished_days` (issue #18), so the history does not grow with every
//! notification ever sent. A message still in work is kept however old it is.
//!
//! Every replica runs a pass now and then; two passes at once only find each other's rows
//! gone. A pass goes tenant by tenant, a few hundred messages at a time, and their
//! deliveries a few thousand at a time, so no statement holds many locks for long and the
//! fan-out never waits behind it. What is deleted is gone from `GET /messages/{id}` and
//! `GET /deliveries`, and a request repeating an idempotency key of a deleted message is a
//! new message.

use std::time::Duration;

use chrono::Utc;
use herald_storage::retention;
use herald_storage::{PgPool, StoreError};
use tokio_util::sync::CancellationToken;

/// Messages chosen per step.
const MESSAGES_PER_STEP: i64 = 500;
/// Deliveries deleted per statement.
const DELIVERIES_PER_STEP: i64 = 5_000;
/// The first pass waits this long after the start, so a restarting fleet does not begin
/// with it.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(60);

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub messages: u64,
    pub deliveries: u64,
}

pub struct Retention {
    pool: PgPool,
    keep: chrono::Duration,
    every: Duration,
}

impl Retention {
    /// `None` when everything is kept.
    pub fn new(pool: PgPool, keep: Option<chrono::Duration>, every: Duration) -> Option<Self> {
        keep.map(|keep| Retention { pool, keep, every })
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut wait = FIRST_PASS_AFTER.min(self.every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = self.every;
            match self.pass(&shutdown).await {
                Ok(deleted) if deleted == Deleted::default() => {}
                Ok(deleted) => tracing::info!(
                    messages = deleted.messages,
                    deliveries = deleted.deliveries,
                    keep_days = self.keep.num_days(),
                    "old finished messages deleted"
                ),
                Err(error) => {
                    tracing::warn!(%error, "cannot delete old finished messages; trying again at the next pass")
                }
            }
        }
    }

    /// One pass over every tenant; stops early at shutdown.
    pub async fn pass(&self, shutdown: &CancellationToken) -> Result<Deleted, StoreError> {
        let cutoff = Utc::now() - self.keep;
        let mut deleted = Deleted::default();
        for tenant in retention::tenant_ids(&self.pool).await? {
            loop {
                if shutdown.is_cancelled() {
                    return Ok(deleted);
                }
                let ids = retention::finished_before(&self.pool, tenant, cutoff, MESSAGES_PER_STEP)
                    .await?;
                if ids.is_empty() {
                    break;
                }
                loop {
                    let n = retention::delete_deliveries_of(&self.pool, &ids, DELIVERIES_PER_STEP)
                        .await?;
                    deleted.deliveries += n;
                    metrics::counter!("herald_retention_deleted_total", "table" => "deliveries")
                        .increment(n);
                    if n < DELIVERIES_PER_STEP as u64 {
                        break;
                    }
                }
                let n = retention::delete_messages(&self.pool, &ids).await?;
                deleted.messages += n;
                metrics::counter!("herald_retention_deleted_total", "table" => "messages")
                    .increment(n);
                if (ids.len() as i64) < MESSAGES_PER_STEP {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}
