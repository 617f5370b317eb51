//! Delivery records (R15): filters, pagination, and who may read which (R16). The router
//! writes deliveries; here they are inserted as it will, next to a message accepted by the API.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use support::{SUBSCRIPTIONS, TestApp};
use uuid::Uuid;

struct Fixture {
    app: TestApp,
    admin: String,
    ann: String,
    message_id: String,
    bobs_delivery: Uuid,
    anns_delivery: Uuid,
}

async fn fixture(pool: PgPool) -> Fixture {
    let (app, admin) = TestApp::with_acme(pool.clone()).await;
    let ann = app.user_key("acme", "ann").await;
    app.post(
        SUBSCRIPTIONS,
        &admin,
        json!({"subscriptionId": "orders", "label": "Orders"}),
    )
    .await
    .expect(StatusCode::CREATED);
    for (user, channel, address) in [
        ("ann", "email", "ann@example.org"),
        ("ann", "telegram", "42"),
        ("bob", "sms", "+41791234567"),
    ] {
        app.prove("acme", user, channel, address).await;
        app.subscribe(
            &admin,
            "orders",
            json!({"channel": channel, "address": address, "userId": user}),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    let accepted = app
        .post(
            "/api/messaging/trigger/orders",
            &admin,
            json!({"eventParameters": {"order": 1}}),
        )
        .await;
    let message_id = accepted.expect_str(StatusCode::ACCEPTED, "messageId");

    let mut ids = Vec::new();
    for (user, channel, address, status, class) in [
        ("ann", "email", "ann@example.org", "sent", None),
        ("ann", "telegram", "42", "pending", None),
        ("bob", "sms", "+41791234567", "failed", Some("permanent")),
    ] {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO deliveries (id, tenant_id, message_id, subscription_id, user_id, channel, address, status, failure_class, failure_code, failure_message, attempts)
             SELECT $1, m.tenant_id, m.id, m.subscription_id, u.id, $3, $4, $5, $6::text,
                    CASE WHEN $6::text IS NULL THEN NULL ELSE 'opted_out' END,
                    CASE WHEN $6::text IS NULL THEN NULL ELSE 'the recipient opted out' END, 1
             FROM messages m JOIN users u ON u.tenant_id = m.tenant_id AND u.external_id = $2
             WHERE m.id = $7",
        )
        .bind(id)
        .bind(user)
        .bind(channel)
        .bind(address)
        .bind(status)
        .bind(class)
        .bind(Uuid::parse_str(&message_id).unwrap())
        .execute(&pool)
        .await
        .unwrap();
        ids.push(id);
    }
    Fixture {
        app,
        admin,
        ann,
        message_id,
        anns_delivery: ids[0],
        bobs_delivery: ids[2],
    }
}

fn count(body: &serde_json::Value) -> usize {
    body["items"].as_array().unwrap().len()
}

#[sqlx::test(migrations = "../../migrations")]
async fn admins_filter_and_page_the_tenants_deliveries(pool: PgPool) {
    let f = fixture(pool).await;
    let list = |query: &str| {
        let path = format!("/api/messaging/deliveries{query}");
        let f = &f;
        async move { f.app.get(&path, &f.admin).await }
    };
    assert_eq!(count(list("").await.expect(StatusCode::OK)), 3);
    let failed = list("?status=failed").await;
    let failed = failed.expect(StatusCode::OK);
    assert_eq!(count(failed), 1);
    assert_eq!(failed["items"][0]["failure"]["class"], "permanent");
    assert_eq!(failed["items"][0]["failure"]["code"], "opted_out");
    assert_eq!(failed["items"][0]["subscriptionId"], "orders");
    assert_eq!(count(list("?userId=ann").await.expect(StatusCode::OK)), 2);
    assert_eq!(count(list("?channel=sms").await.expect(StatusCode::OK)), 1);
    assert_eq!(
        count(list("?subscriptionId=orders").await.expect(StatusCode::OK)),
        3
    );
    assert_eq!(
        count(list("?subscriptionId=unknown").await.expect(StatusCode::OK)),
        0
    );
    assert_eq!(
        count(
            list("?from=2999-01-01T00:00:00Z")
                .await
                .expect(StatusCode::OK)
        ),
        0
    );
    let first = list("?limit=2").await;
    let first = first.expect(StatusCode::OK).clone();
    assert_eq!(count(&first), 2);
    let cursor = first["nextCursor"].as_str().unwrap();
    let rest = list(&format!("?limit=2&cursor={cursor}")).await;
    let rest = rest.expect(StatusCode::OK);
    assert_eq!(count(rest), 1);
    assert!(rest["nextCursor"].is_null());
    list("?status=lost")
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("status"));
    list("?channel=fax")
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("channel"));

    let message = f
        .app
        .get(
            &format!("/api/messaging/messages/{}", f.message_id),
            &f.admin,
        )
        .await;
    assert_eq!(
        message.expect(StatusCode::OK)["deliveries"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_user_reads_only_their_own_deliveries(pool: PgPool) {
    let f = fixture(pool).await;
    let mine = f.app.get("/api/messaging/deliveries", &f.ann).await;
    let mine = mine.expect(StatusCode::OK);
    assert_eq!(count(mine), 2);
    assert!(
        mine["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["userId"] == "ann")
    );
    f.app
        .get("/api/messaging/deliveries?userId=bob", &f.ann)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    f.app
        .get(
            &format!("/api/messaging/deliveries/{}", f.bobs_delivery),
            &f.ann,
        )
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
    f.app
        .get(
            &format!("/api/messaging/deliveries/{}", f.anns_delivery),
            &f.ann,
        )
        .await
        .expect(StatusCode::OK);
}

#[sqlx::test(migrations = "../../migrations")]
async fn another_tenant_sees_none_of_them(pool: PgPool) {
    let f = fixture(pool).await;
    let other = f.app.tenant_with_admin("globex").await;
    let listed = f.app.get("/api/messaging/deliveries", &other).await;
    assert_eq!(count(listed.expect(StatusCode::OK)), 0);
    f.app
        .get(
            &format!("/api/messaging/deliveries/{}", f.anns_delivery),
            &other,
        )
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}
