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

/// Issue #18 (R4 c while it happens): a pending delivery on a channel whose senders are all
/// paused by their breakers, or gone, says so with class `unhealthy`, from the router's last
/// look at the channel; a fresh look that finds a sender taking jobs, or a stale one, says
/// nothing. Sent and failed deliveries keep their outcome.
#[sqlx::test(migrations = "../../migrations")]
async fn a_pending_delivery_says_why_while_its_channel_stalls(pool: PgPool) {
    use herald_storage::channel_health::{self, ChannelLook};
    use messaging_core::Channel;
    let f = fixture(pool.clone()).await;
    let message = format!("/api/messaging/messages/{}", f.message_id);
    let look = |senders, paused| {
        vec![
            ChannelLook {
                channel: Channel::Telegram,
                senders,
                paused,
                waiting: 1,
            },
            ChannelLook {
                channel: Channel::Email,
                senders: 0,
                paused: 1,
                waiting: 0,
            },
        ]
    };
    let telegram = |body: &serde_json::Value| {
        body["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["channel"] == "telegram")
            .unwrap()
            .clone()
    };

    channel_health::record(&pool, &look(0, 1)).await.unwrap();
    let read = f.app.get(&message, &f.admin).await;
    let body = read.expect(StatusCode::OK);
    let pending = telegram(body);
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["failure"]["class"], "unhealthy");
    assert_eq!(pending["failure"]["code"], "provider_unavailable");
    for d in body["deliveries"].as_array().unwrap() {
        match d["channel"].as_str().unwrap() {
            "email" => assert!(d.get("failure").is_none(), "a sent delivery: {d}"),
            "sms" => assert_eq!(d["failure"]["class"], "permanent", "its own: {d}"),
            _ => {}
        }
    }
    // The person reading their own deliveries learns the same.
    let own = f
        .app
        .get("/api/messaging/deliveries?channel=telegram", &f.ann)
        .await;
    assert_eq!(
        own.expect(StatusCode::OK)["items"][0]["failure"]["code"],
        "provider_unavailable"
    );

    channel_health::record(&pool, &look(0, 0)).await.unwrap();
    let read = f.app.get(&message, &f.admin).await;
    assert_eq!(
        telegram(read.expect(StatusCode::OK))["failure"]["code"],
        "no_sender_running"
    );

    channel_health::record(&pool, &look(1, 0)).await.unwrap();
    let read = f.app.get(&message, &f.admin).await;
    assert!(
        telegram(read.expect(StatusCode::OK))
            .get("failure")
            .is_none()
    );

    channel_health::record(&pool, &look(0, 1)).await.unwrap();
    sqlx::query("UPDATE channel_health SET checked_at = now() - interval '5 minutes'")
        .execute(&pool)
        .await
        .unwrap();
    let read = f.app.get(&message, &f.admin).await;
    assert!(
        telegram(read.expect(StatusCode::OK))
            .get("failure")
            .is_none(),
        "a look no router has renewed says nothing about now"
    );
}
