//! Several relays claiming and marking one outbox at once (the API's and the router's do,
//! in every deployment), against the real PostgreSQL: every row is claimed by exactly one of
//! them and published once, and the claims keep up with a backlog of thousands of rows
//! instead of one claim re-running its subquery for every row another relay touched.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use herald_storage::outbox::{self, NewRow};
use sqlx::PgPool;

const ROWS: usize = 6_000;
const RELAYS: usize = 3;

#[sqlx::test(migrations = "../../migrations")]
async fn relays_claiming_at_once_publish_every_row_once(pool: PgPool) {
    // The statistics say "empty", as on a young database whose outbox filled after the
    // last ANALYZE: the plan must not depend on them.
    sqlx::query("ANALYZE outbox").execute(&pool).await.unwrap();
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(1_000) {
        let rows: Vec<NewRow<'_>> = chunk
            .iter()
            .map(|i| NewRow {
                kind: outbox::NOTIFY_KIND,
                exchange: "t.ingress",
                routing_key: "api",
                message_id: format!("m-{i}"),
                payload: vec![b'x'; 600],
            })
            .collect();
        let mut tx = pool.begin().await.unwrap();
        outbox::enqueue_many(&mut tx, &rows).await.unwrap();
        tx.commit().await.unwrap();
    }

    let relays = (0..RELAYS).map(|_| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut claimed = Vec::new();
            loop {
                let rows = outbox::claim(&pool, 200, Duration::from_secs(300))
                    .await
                    .unwrap();
                if rows.is_empty() {
                    return claimed;
                }
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                outbox::mark_published(&pool, &ids).await.unwrap();
                claimed.extend(ids);
            }
        })
    });
    let mut seen = HashSet::new();
    let mut total = 0;
    for relay in relays {
        let claimed = tokio::time::timeout(Duration::from_secs(120), relay)
            .await
            .expect("the relays drain the outbox")
            .unwrap();
        total += claimed.len();
        seen.extend(claimed);
    }
    assert_eq!(total, ROWS, "no row claimed twice");
    assert_eq!(seen.len(), ROWS, "every row claimed");
    assert_eq!(outbox::backlog(&pool).await.unwrap(), 0);
}
