//! Scheduled triggers (R14) against the real PostgreSQL: once per due time, whatever the
//! number of routers.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use fanout_router::scheduler::Scheduler;
use herald_runtime::amqp::Outcome;
use serde_json::Value;
use sqlx::PgPool;
use support::Harness;
use uuid::Uuid;

async fn schedule(h: &Harness, subscription: Uuid, cron: &str, due: DateTime<Utc>) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO schedules (id, tenant_id, subscription_id, cron, time_zone, event_parameters, next_run_at)
         VALUES ($1, $2, $3, $4, 'Europe/Berlin', '{\"room\": \"blue\"}', $5)",
    )
    .bind(id)
    .bind(h.tenant_id)
    .bind(subscription)
    .bind(cron)
    .bind(due)
    .execute(&h.pool)
    .await
    .unwrap();
    id
}

#[sqlx::test(migrations = "../../migrations")]
async fn two_routers_fire_a_due_schedule_once_and_move_it_to_its_next_run(pool: PgPool) {
    let h = Harness::new(pool.clone(), "scheduler_once").await;
    let standup = h.subscription("standup", "en").await;
    // Due a minute ago; the next 09:30 Berlin time comes after.
    let due = Utc::now() - chrono::Duration::minutes(1);
    let id = schedule(&h, standup, "30 9 * * *", due).await;

    let a = Scheduler::new(pool.clone(), h.names.clone(), Duration::from_secs(1));
    let b = Scheduler::new(pool.clone(), h.names.clone(), Duration::from_secs(1));
    let (fired_a, fired_b) = tokio::join!(a.tick(), b.tick());
    assert_eq!(
        fired_a.unwrap() + fired_b.unwrap(),
        1,
        "exactly one router fired it"
    );
    // And again: nothing is due any more.
    assert_eq!(a.tick().await.unwrap() + b.tick().await.unwrap(), 0);

    let messages = h.messages().await;
    assert_eq!(messages.len(), 1);
    let (message_id, status, _, source) = &messages[0];
    assert_eq!((status.as_str(), source.as_str()), ("accepted", "schedule"));
    let (request, outbox): (Value, i64) = sqlx::query_as(
        "SELECT m.request, (SELECT count(*) FROM outbox o WHERE o.message_id = m.id::text)
         FROM messages m WHERE m.id = $1",
    )
    .bind(message_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(outbox, 1, "the message goes out through the outbox");
    assert_eq!(request["to"]["subscription"], "standup");
    assert_eq!(request["content"]["template"]["data"]["room"], "blue");

    let (next, last): (DateTime<Utc>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT next_run_at, last_run_at FROM schedules WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(next > Utc::now());
    let local = next.with_timezone(&chrono_tz::Europe::Berlin);
    assert_eq!(local.format("%H:%M").to_string(), "09:30");
    assert_eq!(last.map(|l| l.timestamp()), Some(due.timestamp()));

    // The message the schedule stored is fanned out like any API message, under its own id.
    let body: Value = sqlx::query_scalar("SELECT request FROM messages WHERE id = $1")
        .bind(message_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let outcome = h.handle(&body, Some(&message_id.to_string())).await;
    assert_eq!(outcome, Outcome::Ack);
    assert_eq!(h.messages().await[0].2.as_deref(), Some("no_template"));
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn missed_runs_fire_once_and_a_disabled_subscription_skips_its_runs(pool: PgPool) {
    let h = Harness::new(pool.clone(), "scheduler_missed").await;
    let hourly = h.subscription("hourly", "en").await;
    let paused = h.subscription("paused", "en").await;
    sqlx::query("UPDATE subscriptions SET enabled = false WHERE id = $1")
        .bind(paused)
        .execute(&pool)
        .await
        .unwrap();
    // A router that was down for three days: 72 hourly runs were missed.
    let three_days_ago = Utc::now() - chrono::Duration::days(3);
    schedule(&h, hourly, "0 * * * *", three_days_ago).await;
    schedule(&h, paused, "0 * * * *", three_days_ago).await;

    let s = Scheduler::new(pool.clone(), h.names.clone(), Duration::from_secs(1));
    assert_eq!(s.tick().await.unwrap(), 2);
    assert_eq!(s.tick().await.unwrap(), 0, "one catch-up run, not 72");
    let messages = h.messages().await;
    assert_eq!(
        messages.len(),
        1,
        "the paused subscription's run is skipped"
    );
    let nexts: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT next_run_at FROM schedules ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(nexts.iter().all(|n| *n > Utc::now()));
    h.finish().await;
}

/// A schedule's (next_run_at, last_run_at, enabled).
async fn run(pool: &PgPool, id: Uuid) -> (DateTime<Utc>, Option<DateTime<Utc>>, bool) {
    sqlx::query_as("SELECT next_run_at, last_run_at, enabled FROM schedules WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_schedule_that_cannot_fire_is_moved_on_without_holding_up_the_others(pool: PgPool) {
    let h = Harness::new(pool.clone(), "scheduler_poison").await;
    let legacy = h.subscription("legacy", "en").await;
    let standup = h.subscription("standup", "en").await;
    // A key from before the rule it breaks: `SubscriptionKey::parse` refuses it, so firing
    // fails with `StoreError::Invalid`. The constraint goes only in this test's own database.
    sqlx::query("ALTER TABLE subscriptions DROP CONSTRAINT subscriptions_key_check")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE subscriptions SET key = 'legacy-key' WHERE id = $1")
        .bind(legacy)
        .execute(&pool)
        .await
        .unwrap();
    // The poison one is due first, so it is claimed first on every tick.
    let poison_due = Utc::now() - chrono::Duration::minutes(2);
    let poison = schedule(&h, legacy, "0 * * * *", poison_due).await;
    let good = schedule(
        &h,
        standup,
        "0 * * * *",
        Utc::now() - chrono::Duration::minutes(1),
    )
    .await;

    let s = Scheduler::new(pool.clone(), h.names.clone(), Duration::from_secs(1));
    assert_eq!(s.tick().await.unwrap(), 2, "both claimed, the tick commits");
    let (message_id, status, _, source) = h.message().await;
    assert_eq!((status.as_str(), source.as_str()), ("accepted", "schedule"));
    let request: Value = sqlx::query_scalar("SELECT request FROM messages WHERE id = $1")
        .bind(message_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        request["to"]["subscription"], "standup",
        "the good one fired"
    );

    for id in [poison, good] {
        let (next, last, enabled) = run(&pool, id).await;
        assert!(next > Utc::now(), "{id} moved to its next run");
        assert!(enabled, "{id} gets a fresh chance at its next run");
        assert!(last.is_some());
    }
    assert_eq!(
        run(&pool, poison).await.1.map(|l| l.timestamp()),
        Some(poison_due.timestamp()),
        "the skipped run counts as run"
    );

    assert_eq!(
        s.tick().await.unwrap(),
        0,
        "the poison schedule is not claimed again"
    );
    assert_eq!(h.messages().await.len(), 1);
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_run_the_database_refuses_half_way_is_rolled_back_alone(pool: PgPool) {
    let h = Harness::new(pool.clone(), "scheduler_refused").await;
    let cursed = h.subscription("cursed", "en").await;
    let standup = h.subscription("standup", "en").await;
    // A rule this test's database enforces on the outbox row, written after the message row:
    // the failed run must take its message row with it, and leave the transaction usable.
    sqlx::query(
        "ALTER TABLE outbox ADD CONSTRAINT no_cursed
         CHECK (convert_from(payload, 'UTF8')::jsonb #>> '{to,subscription}' <> 'cursed')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let poison = schedule(
        &h,
        cursed,
        "0 * * * *",
        Utc::now() - chrono::Duration::minutes(2),
    )
    .await;
    schedule(
        &h,
        standup,
        "0 * * * *",
        Utc::now() - chrono::Duration::minutes(1),
    )
    .await;

    let s = Scheduler::new(pool.clone(), h.names.clone(), Duration::from_secs(1));
    assert_eq!(s.tick().await.unwrap(), 2);
    let (message_id, ..) = h.message().await;
    let subscription: String =
        sqlx::query_scalar("SELECT request #>> '{to,subscription}' FROM messages WHERE id = $1")
            .bind(message_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        subscription, "standup",
        "only the good run's message is kept"
    );
    let (next, ..) = run(&pool, poison).await;
    assert!(next > Utc::now());
    assert_eq!(s.tick().await.unwrap(), 0);
    h.finish().await;
}
