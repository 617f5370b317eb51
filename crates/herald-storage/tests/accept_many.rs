//! `messages::accept_many`, the API's group commit, against the real PostgreSQL: each message
//! gets its own answer in order, a key used before (or earlier in the same group) returns
//! the first message, and only new messages get an outbox row.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use herald_storage::messages::{self, NewMessage};
use herald_storage::tenants;
use messaging_core::MessageSource;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn new<'a>(
    tenant_id: Uuid,
    key: Option<&'a str>,
    request: &'a serde_json::Value,
) -> NewMessage<'a> {
    NewMessage {
        tenant_id,
        idempotency_key: key,
        source: MessageSource::Api,
        subscription_id: None,
        request,
        exchange: "t.ingress",
        routing_key: "api",
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_group_answers_each_message_in_order_and_repeats_return_the_first(pool: PgPool) {
    let acme = tenants::create(&pool, "acme", "Acme").await.unwrap();
    let other = tenants::create(&pool, "other", "Other").await.unwrap();
    let before = json!({"n": 0});
    let mut tx = pool.begin().await.unwrap();
    let (earlier, _) = messages::accept(&mut tx, new(acme.id, Some("k-0"), &before))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let requests: Vec<serde_json::Value> = (1..=6).map(|n| json!({ "n": n })).collect();
    let group = vec![
        new(acme.id, Some("k-1"), &requests[0]),
        // Used before this group: the earlier message comes back.
        new(acme.id, Some("k-0"), &requests[1]),
        new(acme.id, None, &requests[2]),
        // The same key as the first of this group: the first comes back.
        new(acme.id, Some("k-1"), &requests[3]),
        // The same key in another tenant is another message.
        new(other.id, Some("k-1"), &requests[4]),
        new(acme.id, None, &requests[5]),
    ];
    let mut tx = pool.begin().await.unwrap();
    let stored = messages::accept_many(&mut tx, &group).await.unwrap();
    tx.commit().await.unwrap();

    let fresh: Vec<bool> = stored.iter().map(|(_, new)| *new).collect();
    assert_eq!(fresh, [true, false, true, false, true, true]);
    assert_eq!(stored[0].0.request, requests[0]);
    assert_eq!(stored[1].0.id, earlier.id);
    assert_eq!(stored[1].0.request, before);
    assert_eq!(stored[3].0.id, stored[0].0.id);
    assert_ne!(stored[4].0.id, stored[0].0.id);
    assert_eq!(stored[4].0.tenant_id, other.id);
    assert_eq!(stored[5].0.request, requests[5]);

    assert_eq!(count(&pool, "SELECT count(*) FROM messages").await, 5);
    // One outbox row per new message, published in the group's order.
    let outbox: Vec<String> = sqlx::query_scalar("SELECT message_id FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut expected = vec![earlier.id.to_string()];
    expected.extend(
        stored
            .iter()
            .filter(|(_, new)| *new)
            .map(|(m, _)| m.id.to_string()),
    );
    assert_eq!(outbox, expected);
}
