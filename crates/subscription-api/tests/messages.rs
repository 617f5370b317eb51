//! Triggers and direct messages: stored with their outbox row, relayed to the real broker
//! with confirms, and kept through a broker outage.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use herald_runtime::amqp::{Broker, Publisher, Topology};
use herald_runtime::config::{AmqpConfig, Secret};
use herald_storage::relay::OutboxRelay;
use herald_testkit::broker::{Inspector, amqp_url};
use messaging_core::ingress::{Content, Ingress, Recipients};
use serde_json::json;
use sqlx::PgPool;
use support::{SUBSCRIPTIONS, TestApp};

async fn setup(pool: PgPool) -> (TestApp, String) {
    let (app, admin) = TestApp::with_acme(pool).await;
    app.post(
        SUBSCRIPTIONS,
        &admin,
        json!({"subscriptionId": "orders", "label": "Orders"}),
    )
    .await
    .expect(StatusCode::CREATED);
    (app, admin)
}

fn amqp(app: &TestApp, url: &str) -> AmqpConfig {
    AmqpConfig {
        url: Secret::new(url.to_owned()),
        prefix: app.names.prefix().to_owned(),
        publish_timeout_ms: 500,
        reconnect_max_ms: 200,
        ..AmqpConfig::default()
    }
}

async fn unpublished(pool: &PgPool) -> i64 {
    herald_storage::outbox::backlog(pool).await.unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_trigger_is_accepted_stored_and_relayed_to_the_ingress_exchange(pool: PgPool) {
    let (app, admin) = setup(pool.clone()).await;
    let config = amqp(&app, &amqp_url());
    let topology = Topology::from_config(&config);
    let inspector = Inspector::connect().await;
    topology.declare(inspector.connection()).await.unwrap();

    let response = app
        .post(
            "/api/messaging/trigger/orders",
            &admin,
            json!({"eventParameters": {"order": 42}, "locale": "de-CH"}),
        )
        .await;
    let message_id = response.expect_str(StatusCode::ACCEPTED, "messageId");
    assert_eq!(unpublished(&pool).await, 1);

    let relay = OutboxRelay::new(
        pool.clone(),
        Publisher::new(Broker::new(config.clone(), "test"), "outbox"),
    );
    assert_eq!(relay.relay_once().await.unwrap(), 1);
    assert_eq!(unpublished(&pool).await, 0);

    let got = inspector
        .wait_get(&app.names.ingress_queue(), Duration::from_secs(10))
        .await
        .expect("in the ingress queue");
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string()),
        Some(message_id.clone())
    );
    let Ingress::Notify(request) = Ingress::decode(&got.delivery.data).unwrap() else {
        panic!("not a notify request")
    };
    assert_eq!(request.tenant.as_str(), "acme");
    assert!(matches!(&request.to, Recipients::Subscription(s) if s.as_str() == "orders"));
    let Content::Template(template) = &request.content else {
        panic!("template content")
    };
    assert_eq!(template.data["order"], 42);
    assert_eq!(template.locale.as_ref().map(|l| l.as_str()), Some("de-CH"));

    let read = app
        .get(&format!("/api/messaging/messages/{message_id}"), &admin)
        .await;
    let body = read.expect(StatusCode::OK);
    assert_eq!(body["status"], "accepted");
    assert_eq!(
        body["deliveries"],
        json!([]),
        "no deliveries until the router fans it out"
    );
    topology.delete(inspector.channel()).await.unwrap();
    inspector.close().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_repeated_idempotency_key_returns_the_first_message(pool: PgPool) {
    let (app, admin) = setup(pool.clone()).await;
    let trigger = || {
        app.call_with(
            "POST",
            "/api/messaging/trigger/orders",
            Some(&admin),
            &[("idempotency-key", "order-42-shipped")],
            Some(json!({"eventParameters": {}}).to_string()),
        )
    };
    let first = trigger().await;
    let first = first.expect(StatusCode::ACCEPTED).clone();
    let second = trigger().await;
    let second = second.expect(StatusCode::ACCEPTED);
    assert_eq!(first["messageId"], second["messageId"]);
    assert_eq!(
        (first["repeated"].as_bool(), second["repeated"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(unpublished(&pool).await, 1, "one message, one outbox row");

    // The same key with other content is refused, not silently answered with the first.
    let other = app
        .call_with(
            "POST",
            "/api/messaging/trigger/orders",
            Some(&admin),
            &[("idempotency-key", "order-42-shipped")],
            Some(json!({"eventParameters": {"order": 43}}).to_string()),
        )
        .await;
    other.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("Idempotency-Key"));
    assert_eq!(unpublished(&pool).await, 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_message_accepted_while_the_broker_is_unreachable_is_published_once_it_is_back(
    pool: PgPool,
) {
    let (app, admin) = setup(pool.clone()).await;
    let response = app
        .post(
            "/api/messaging/messages",
            &admin,
            json!({"userIds": ["u-1"], "content": {"direct": {"body": "Hello"}}}),
        )
        .await;
    let message_id = response.expect_str(StatusCode::ACCEPTED, "messageId");

    // Nothing listens on port 1: the relay cannot publish, and the row stays.
    let down = OutboxRelay::new(
        pool.clone(),
        Publisher::new(
            Broker::new(amqp(&app, "amqp://guest:guest@127.0.0.1:1/%2f"), "test"),
            "outbox",
        ),
    );
    assert!(down.relay_once().await.is_err());
    assert_eq!(
        unpublished(&pool).await,
        1,
        "the accepted message waits in the outbox"
    );

    let config = amqp(&app, &amqp_url());
    let topology = Topology::from_config(&config);
    let inspector = Inspector::connect().await;
    topology.declare(inspector.connection()).await.unwrap();
    let up = OutboxRelay::new(
        pool.clone(),
        Publisher::new(Broker::new(config, "test"), "outbox"),
    );
    assert_eq!(up.relay_once().await.unwrap(), 1);
    let got = inspector
        .wait_get(&app.names.ingress_queue(), Duration::from_secs(10))
        .await
        .expect("published");
    assert_eq!(
        got.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string()),
        Some(message_id)
    );
    assert_eq!(unpublished(&pool).await, 0);
    topology.delete(inspector.channel()).await.unwrap();
    inspector.close().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn only_admins_trigger_and_bad_requests_are_refused(pool: PgPool) {
    let (app, admin) = setup(pool.clone()).await;
    let user = app.user_key("acme", "u-1").await;
    app.post(
        "/api/messaging/trigger/orders",
        &user,
        json!({"eventParameters": {}}),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    app.post(
        "/api/messaging/messages",
        &user,
        json!({"userIds": ["u-1"], "content": {"direct": {"body": "x"}}}),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    app.post(
        "/api/messaging/trigger/nothing",
        &admin,
        json!({"eventParameters": {}}),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    app.post(
        "/api/messaging/trigger/orders",
        &admin,
        json!({"eventParameters": [1, 2]}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);
    app.post(
        "/api/messaging/messages",
        &admin,
        json!({"userIds": [], "content": {"direct": {"body": "x"}}}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);
    app.post(
        "/api/messaging/messages",
        &admin,
        json!({"userIds": ["u"], "content": {"template": {"data": {}}}}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);
    app.call_with(
        "POST",
        "/api/messaging/trigger/orders",
        Some(&admin),
        &[("idempotency-key", "")],
        Some("{}".into()),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("Idempotency-Key"));
    assert_eq!(unpublished(&pool).await, 0, "nothing refused was stored");
    let other = app.tenant_with_admin("globex").await;
    let accepted = app
        .post("/api/messaging/trigger/orders", &admin, json!({}))
        .await;
    let id = accepted.expect_str(StatusCode::ACCEPTED, "messageId");
    app.get(&format!("/api/messaging/messages/{id}"), &other)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn system_and_disabled_subscriptions_are_not_triggered_by_a_tenant_admin(pool: PgPool) {
    let (app, admin) = setup(pool.clone()).await;
    let global = app.global_admin().await;
    let system =
        json!({"subscriptionId": "security", "label": "Security", "system": true}).to_string();
    app.call_with(
        "POST",
        SUBSCRIPTIONS,
        Some(&global),
        &[("herald-tenant", "acme")],
        Some(system),
    )
    .await
    .expect(StatusCode::CREATED);
    app.post("/api/messaging/trigger/security", &admin, json!({}))
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.call_with(
        "POST",
        "/api/messaging/trigger/security",
        Some(&global),
        &[("herald-tenant", "acme")],
        Some("{}".into()),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    // Nor borrowed through a direct message (issue #17): its templates are the global admin's.
    let borrowed = json!({
        "to": {"users": ["u-1"]},
        "content": {"template": {"subscription": "security", "data": {}}}
    });
    app.post("/api/messaging/messages", &admin, borrowed.clone())
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.call_with(
        "POST",
        "/api/messaging/messages",
        Some(&global),
        &[("herald-tenant", "acme")],
        Some(borrowed.to_string()),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    app.put(
        "/api/messaging/subscriptions/orders",
        &admin,
        json!({"label": "Orders", "enabled": false}),
    )
    .await
    .expect(StatusCode::OK);
    app.post("/api/messaging/trigger/orders", &admin, json!({}))
        .await
        .expect_problem(StatusCode::CONFLICT, None);
    assert_eq!(
        unpublished(&pool).await,
        2,
        "only the global admin's trigger and message were stored"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_direct_message_takes_the_envelope_shape_and_the_older_user_ids(pool: PgPool) {
    let (app, admin) = setup(pool.clone()).await;
    let body = json!({"direct": {"body": "Hello"}});
    // The envelope's shape, as producers publish it to the broker.
    let id = app
        .post(
            "/api/messaging/messages",
            &admin,
            json!({"to": {"users": ["u-1", "u-2"]}, "content": body}),
        )
        .await
        .expect_str(StatusCode::ACCEPTED, "messageId");
    let stored = app
        .get(&format!("/api/messaging/messages/{id}"), &admin)
        .await;
    let stored = stored.expect(StatusCode::OK);
    assert_eq!(stored["request"]["to"], json!({"users": ["u-1", "u-2"]}));
    // The older REST spelling stores the same request.
    let id = app
        .post(
            "/api/messaging/messages",
            &admin,
            json!({"userIds": ["u-1", "u-2"], "content": body}),
        )
        .await
        .expect_str(StatusCode::ACCEPTED, "messageId");
    let older = app
        .get(&format!("/api/messaging/messages/{id}"), &admin)
        .await;
    assert_eq!(
        older.expect(StatusCode::OK)["request"]["to"],
        stored["request"]["to"]
    );
    // Errors name the field the client sent.
    app.post(
        "/api/messaging/messages",
        &admin,
        json!({"to": {"users": []}, "content": body}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("to.users"));
    app.post(
        "/api/messaging/messages",
        &admin,
        json!({"to": {"users": ["bad\u{1}id"]}, "content": body}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("to.users"));
    app.post(
        "/api/messaging/messages",
        &admin,
        json!({"userIds": [""], "content": body}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("userIds"));
    app.post(
        "/api/messaging/messages",
        &admin,
        json!({"to": {"users": ["u-1"]}, "userIds": ["u-1"], "content": body}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("userIds"));
    // A body that is a JSON array is not read as the struct's fields in order.
    app.call_with(
        "POST",
        "/api/messaging/messages",
        Some(&admin),
        &[],
        Some("[null, null]".into()),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);
}

/// Issue #17: free-form data nests at most 32 levels deep.
#[sqlx::test(migrations = "../../migrations")]
async fn bodies_nested_deeper_than_32_levels_are_refused(pool: PgPool) {
    let (app, admin) = setup(pool).await;
    let nested = |levels: usize| {
        let mut value = json!(1);
        for _ in 0..levels {
            value = json!({ "a": value });
        }
        value
    };
    // The body is one level, eventParameters another.
    app.post(
        "/api/messaging/trigger/orders",
        &admin,
        json!({"eventParameters": nested(30)}),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    let deep = app
        .post(
            "/api/messaging/trigger/orders",
            &admin,
            json!({"eventParameters": nested(40)}),
        )
        .await;
    deep.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);
    assert!(deep.body["detail"].as_str().unwrap().contains("32 levels"));
}

/// Issue #17: a message's deliveries come a page at a time, with counts of all of them.
#[sqlx::test(migrations = "../../migrations")]
async fn a_messages_deliveries_are_paged_and_counted(pool: PgPool) {
    let (app, admin) = setup(pool.clone()).await;
    let id = app
        .post(
            "/api/messaging/messages",
            &admin,
            json!({"to": {"users": ["u-1"]}, "content": {"direct": {"body": "Hello"}}}),
        )
        .await
        .expect_str(StatusCode::ACCEPTED, "messageId");
    // Five deliveries, as a fan-out writes them: two sent, one failed, two pending.
    sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, message_id, channel, address, status)
         SELECT gen_random_uuid(), m.tenant_id, m.id, 'email', 'p' || g || '@example.org',
                (ARRAY['sent', 'sent', 'failed', 'pending', 'pending'])[g]
         FROM messages m, generate_series(1, 5) g WHERE m.id = $1::uuid",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    let path = format!("/api/messaging/messages/{id}");
    let first = app.get(&format!("{path}?limit=2"), &admin).await;
    let first = first.expect(StatusCode::OK).clone();
    assert_eq!(first["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(
        first["deliveryCounts"],
        json!({"total": 5, "sent": 2, "failed": 1, "pending": 2})
    );
    let mut seen: Vec<String> = first["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["address"].as_str().unwrap().to_owned())
        .collect();
    let mut cursor = first["deliveriesNextCursor"].as_str().unwrap().to_owned();
    loop {
        let page = app
            .get(&format!("{path}?limit=2&cursor={cursor}"), &admin)
            .await;
        let page = page.expect(StatusCode::OK).clone();
        seen.extend(
            page["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["address"].as_str().unwrap().to_owned()),
        );
        match page["deliveriesNextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5, "every delivery once: {seen:?}");
    app.get(&format!("{path}?limit=500"), &admin)
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("limit"));
}

/// Requests at once are stored in groups (issue #16): each still gets its own answer, a key
/// repeated in the same group gets the first message, and a request the database refuses
/// (a NUL character, which `jsonb` cannot hold) fails alone while its group is stored.
#[sqlx::test(migrations = "../../migrations")]
async fn requests_at_once_are_stored_together_each_with_its_own_answer(pool: PgPool) {
    let (app, admin) = setup(pool.clone()).await;
    let send = |key: String, body: &'static str| {
        let app = &app;
        let admin = &admin;
        async move {
            app.call_with(
                "POST",
                "/api/messaging/messages",
                Some(admin),
                &[("idempotency-key", key.as_str())],
                Some(
                    json!({"userIds": ["u-1"], "content": {"direct": {"body": body}}}).to_string(),
                ),
            )
            .await
        }
    };
    // 30 keys, the first 10 twice, and one poison request among them.
    let mut calls = Vec::new();
    for i in 0..30 {
        calls.push(send(format!("k-{i}"), "Hello"));
    }
    for i in 0..10 {
        calls.push(send(format!("k-{i}"), "Hello"));
    }
    calls.push(send("poison".into(), "a\u{0}b"));
    let responses = futures::future::join_all(calls).await;
    let (poison, responses) = responses.split_last().unwrap();
    assert!(
        !poison.status.is_success(),
        "a body jsonb cannot hold is refused: {}",
        poison.status
    );
    let mut ids = std::collections::HashMap::new();
    for (i, response) in responses.iter().enumerate() {
        let body = response.expect(StatusCode::ACCEPTED);
        let key = format!("k-{}", i % 30);
        let id = body["messageId"].as_str().unwrap().to_owned();
        let first = ids.entry(key.clone()).or_insert_with(|| id.clone());
        assert_eq!(*first, id, "{key}: one message");
    }
    let repeated = responses
        .iter()
        .filter(|r| r.body["repeated"].as_bool() == Some(true))
        .count();
    assert_eq!(
        repeated, 10,
        "each repeated key is answered as a repeat once"
    );
    assert_eq!(ids.len(), 30);
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(messages, 30);
    assert_eq!(unpublished(&pool).await, 30, "one outbox row per message");
}
