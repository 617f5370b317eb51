//! How database errors are classified for the caller: a server that goes away under a query
//! is a passing outage (503 and try again), not a bug (500).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use herald_storage::StoreError;
use sqlx::PgPool;

/// 57P01 is what every session gets when the server shuts down or crashes under it
/// ("terminating connection due to ..."); the session terminated here gets the same.
#[sqlx::test(migrations = "../../migrations")]
async fn a_session_the_server_terminates_is_an_outage(pool: PgPool) {
    let mut connection = pool.acquire().await.unwrap();
    let error = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(&mut *connection)
        .await
        .expect_err("the server ends the session");
    match StoreError::from(error) {
        StoreError::Unavailable(_) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_unique_violation_is_still_a_conflict(pool: PgPool) {
    sqlx::query("INSERT INTO tenants (id, key, name) VALUES (gen_random_uuid(), 't', 'T')")
        .execute(&pool)
        .await
        .unwrap();
    let error =
        sqlx::query("INSERT INTO tenants (id, key, name) VALUES (gen_random_uuid(), 't', 'T')")
            .execute(&pool)
            .await
            .unwrap_err();
    assert!(matches!(StoreError::from(error), StoreError::Conflict(_)));
}
