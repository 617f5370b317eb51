//! Retention (issue #18): finished messages and their deliveries go after the configured
//! time; messages in work and recent ones stay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use fanout_router::retention::{Deleted, Retention};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn tenant(pool: &PgPool, key: &str) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO tenants (id, key, name) VALUES ($1, $2, $2)")
        .bind(id)
        .bind(key)
        .execute(pool)
        .await
        .unwrap();
    id
}

/// A message `age_days` old in `status` (finished as long ago, when finished), with
/// `deliveries` delivery rows.
async fn message(
    pool: &PgPool,
    tenant: Uuid,
    status: &str,
    age_days: i32,
    deliveries: i32,
) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO messages (id, tenant_id, source, request, status, created_at, completed_at)
         VALUES ($1, $2, 'api', '{}', $3, now() - make_interval(days => $4),
                 CASE WHEN $3 IN ('completed', 'failed') THEN now() - make_interval(days => $4) END)",
    )
    .bind(id)
    .bind(tenant)
    .bind(status)
    .bind(age_days)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, message_id, address, status)
         SELECT gen_random_uuid(), $1, $2, 'address-' || n, 'sent' FROM generate_series(1, $3) AS n",
    )
    .bind(tenant)
    .bind(id)
    .bind(deliveries)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn exists(pool: &PgPool, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn deliveries_of(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE message_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn finished_messages_older_than_the_setting_go_with_their_deliveries(pool: PgPool) {
    let acme = tenant(&pool, "acme").await;
    let beta = tenant(&pool, "beta").await;
    // 12,000 deliveries: more than one statement's worth.
    let big_old = message(&pool, acme, "completed", 40, 12_000).await;
    let old_failed = message(&pool, beta, "failed", 31, 0).await;
    let recent = message(&pool, acme, "completed", 5, 3).await;
    let old_in_work = message(&pool, acme, "fanned_out", 90, 2).await;
    let old_accepted = message(&pool, beta, "accepted", 90, 0).await;
    // 600 old small ones: more than one step's worth of messages.
    for _ in 0..600 {
        message(&pool, beta, "completed", 45, 1).await;
    }

    let retention = Retention::new(
        pool.clone(),
        Some(chrono::Duration::days(30)),
        Duration::from_secs(3600),
    )
    .expect("a keep period");
    let deleted = retention.pass(&CancellationToken::new()).await.unwrap();
    assert_eq!(
        deleted,
        Deleted {
            messages: 602,
            deliveries: 12_600
        }
    );
    assert!(!exists(&pool, big_old).await && !exists(&pool, old_failed).await);
    assert_eq!(deliveries_of(&pool, big_old).await, 0);
    for kept in [recent, old_in_work, old_accepted] {
        assert!(exists(&pool, kept).await);
    }
    assert_eq!(deliveries_of(&pool, recent).await, 3);
    assert_eq!(deliveries_of(&pool, old_in_work).await, 2);

    // A second pass finds nothing.
    let again = retention.pass(&CancellationToken::new()).await.unwrap();
    assert_eq!(again, Deleted::default());
}

#[test]
fn zero_days_keeps_everything() {
    let config = fanout_router::config::RouterConfig {
        keep_finished_days: 0,
        ..Default::default()
    };
    assert_eq!(config.keep_finished(), None);
    assert_eq!(
        fanout_router::config::RouterConfig::default().keep_finished(),
        Some(chrono::Duration::days(30))
    );
}
