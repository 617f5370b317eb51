//! Scheduled triggers (R14): each due schedule fires its subscription once per due time, with
//! any number of router replicas.
//!
//! A tick claims due schedules with `FOR UPDATE SKIP LOCKED`, and in the same transaction
//! stores the message with its outbox row and moves the schedule to its next run. Either all
//! of that commits or none of it: a crash re-fires nothing and misses nothing, and a replica
//! never sees a schedule another replica holds. The message's idempotency key names the
//! schedule and the due time, a second guard against firing one due time twice.
//!
//! After an outage, a schedule that missed several due times fires once (for the latest),
//! not once per missed time: a backlog of identical reminders helps nobody.
//!
//! Each schedule fires inside a savepoint. One that cannot fire because of its own data (a key
//! that no longer parses, a row the database refuses) is rolled back alone, logged, and still
//! moved to its next run: otherwise the whole batch would roll back and the same schedule would
//! be claimed first again on every tick, and nothing behind it would ever fire. An outage still
//! fails the whole tick, which is retried.

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_storage::messages::{self, NewMessage};
use herald_storage::schedules::{self, DueSchedule};
use herald_storage::{PgPool, StoreError};
use messaging_core::ingress::{Content, Ingress, NotifyRequest, Recipients, TemplateContent};
use messaging_core::schedule::CronSchedule;
use messaging_core::topology::Names;
use messaging_core::values::{IdempotencyKey, SubscriptionKey, TenantKey};
use messaging_core::{EnvelopeVersion, MessageSource};
use serde_json::Value;
use sqlx::{Acquire, Postgres, Transaction};
use tokio_util::sync::CancellationToken;

/// Schedules fired per transaction.
const BATCH: i64 = 100;

pub struct Scheduler {
    pool: PgPool,
    names: Names,
    /// The longest sleep between looks: picks up schedules created or changed meanwhile.
    poll: Duration,
}

impl Scheduler {
    pub fn new(pool: PgPool, names: Names, poll: Duration) -> Self {
        Scheduler { pool, names, poll }
    }

    /// Fires due schedules until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let wait = match self.tick().await {
                Ok(fired) => {
                    failures = 0;
                    if fired as i64 == BATCH {
                        Duration::ZERO
                    } else {
                        self.until_next_due().await
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, failures, "scheduler cannot reach the database");
                    self.poll * failures.min(10)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn until_next_due(&self) -> Duration {
        match schedules::next_due(&self.pool).await {
            Ok(Some(due)) => (due - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(self.poll),
            _ => self.poll,
        }
    }

    /// One transaction: claim due schedules, fire each, move each on. Returns how many.
    pub async fn tick(&self) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let due = schedules::claim_due(&mut tx, BATCH).await?;
        let now = Utc::now();
        for schedule in &due {
            let next = match CronSchedule::parse(&schedule.cron, &schedule.time_zone) {
                Ok(cron) => {
                    self.fire_alone(&mut tx, schedule).await?;
                    match cron.next_after(now.max(schedule.next_run_at)) {
                        Ok(next) => Some(next),
                        Err(error) => {
                            tracing::warn!(schedule_id = %schedule.id, %error, "schedule has no future run; disabled");
                            None
                        }
                    }
                }
                // The API validates expressions; one that no longer parses (a time zone
                // dropped from the database, say) is disabled rather than retried forever.
                Err(error) => {
                    tracing::error!(schedule_id = %schedule.id, %error, "schedule cannot be read; disabled");
                    None
                }
            };
            schedules::advance(&mut tx, schedule.id, schedule.next_run_at, next).await?;
        }
        tx.commit().await?;
        Ok(due.len())
    }

    /// Fires one schedule in a savepoint of the tick's transaction. An error the same data
    /// would cause again is the schedule's own: its run is rolled back and skipped, and the
    /// tick goes on. Any other error fails the tick.
    async fn fire_alone(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        schedule: &DueSchedule,
    ) -> Result<(), StoreError> {
        let mut savepoint = tx.begin().await?;
        match self.fire(&mut savepoint, schedule).await {
            Ok(()) => savepoint.commit().await?,
            Err(
                error @ (StoreError::Invalid(_) | StoreError::Conflict(_) | StoreError::NotFound),
            ) => {
                savepoint.rollback().await?;
                tracing::error!(
                    schedule_id = %schedule.id, due = %schedule.next_run_at, %error,
                    "schedule cannot fire; run skipped"
                );
                metrics::counter!("herald_router_schedule_runs_total", "result" => "error")
                    .increment(1);
            }
            Err(error) => return Err(error),
        }
        Ok(())
    }

    async fn fire(
        &self,
        tx: &mut sqlx::PgConnection,
        schedule: &DueSchedule,
    ) -> Result<(), StoreError> {
        if !schedule.subscription_enabled {
            tracing::info!(schedule_id = %schedule.id, subscription = %schedule.subscription_key, "subscription disabled; run skipped");
            metrics::counter!("herald_router_schedule_runs_total", "result" => "skipped")
                .increment(1);
            return Ok(());
        }
        let (Ok(tenant), Ok(subscription)) = (
            TenantKey::parse(&schedule.tenant_key),
            SubscriptionKey::parse(&schedule.subscription_key),
        ) else {
            return Err(StoreError::Invalid("tenant or subscription key".into()));
        };
        let key = idempotency_key(schedule.id, schedule.next_run_at);
        let request = NotifyRequest {
            version: EnvelopeVersion,
            tenant,
            idempotency_key: IdempotencyKey::parse(&key).ok(),
            to: Recipients::Subscription(subscription),
            content: Content::Template(TemplateContent {
                subscription: None,
                data: match &schedule.event_parameters {
                    Value::Object(map) => map.clone(),
                    _ => Default::default(),
                },
                locale: None,
            }),
            channels: None,
            mode: None,
            expires_at: None,
        };
        let encoded: Value =
            serde_json::from_slice(&Ingress::Notify(request).encode()).unwrap_or_default();
        let (message, new) = messages::accept(
            &mut *tx,
            NewMessage {
                tenant_id: schedule.tenant_id,
                idempotency_key: Some(&key),
                source: MessageSource::Schedule,
                subscription_id: Some(schedule.subscription_id),
                request: &encoded,
                exchange: &self.names.ingress_exchange(),
                routing_key: "schedule",
            },
        )
        .await?;
        metrics::counter!("herald_router_schedule_runs_total", "result" => if new { "fired" } else { "repeat" })
            .increment(1);
        tracing::info!(schedule_id = %schedule.id, message_id = %message.id, due = %schedule.next_run_at, "schedule fired");
        Ok(())
    }
}

/// One key per schedule and due time.
fn idempotency_key(schedule: uuid::Uuid, due: DateTime<Utc>) -> String {
    format!("schedule:{schedule}:{}", due.timestamp())
}
