//! Rate limits (R18, issue #17): per principal after authentication, per client address
//! before it (failures only), per subscription and per tenant on the sending routes, and
//! shared by every replica.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use sqlx::PgPool;
use subscription_api::config::LimitsConfig;
use support::{JWT_SECRET, REGISTRATIONS, SUBSCRIPTIONS, TestApp};

fn limits() -> LimitsConfig {
    LimitsConfig {
        max_body_bytes: 16 * 1024,
        caller_per_minute: 3,
        trigger_per_minute: 2,
        ..LimitsConfig::default()
    }
}

fn token(sub: &str, role: &str, tenant: &str, lifetime: i64) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": sub, "role": role, "tenant": tenant, "exp": chrono::Utc::now().timestamp() + lifetime}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_caller_over_the_rate_limit_gets_429_with_retry_after(pool: PgPool) {
    let app = TestApp::with_limits(pool, limits()).await;
    let admin = app.tenant_with_admin("acme").await;
    let other = app.tenant_admin("acme").await;
    app.create_subscription(&admin, "orders").await;
    app.get(SUBSCRIPTIONS, &admin).await.expect(StatusCode::OK);
    app.get(REGISTRATIONS, &admin).await.expect(StatusCode::OK);
    let limited = app.get(SUBSCRIPTIONS, &admin).await;
    limited.expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
    let wait = limited.retry_after.expect("Retry-After");
    assert!(
        (1..=80).contains(&wait),
        "3 a minute: one more fits within 80 s (to the next minute, then a third of it): {wait}"
    );
    app.get(SUBSCRIPTIONS, &other).await.expect(StatusCode::OK);

    // Triggers are limited per subscription, whoever triggers.
    let trigger = "/api/messaging/trigger/orders";
    for key in [&admin, &other] {
        app.post(trigger, key, json!({}))
            .await
            .expect(StatusCode::ACCEPTED);
    }
    app.post(trigger, &other, json!({}))
        .await
        .expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn tokens_of_one_subject_share_one_limit(pool: PgPool) {
    let app = TestApp::with_limits(pool, limits()).await;
    app.tenant("acme").await;
    // A fresh token per request (a new expiry each) is the same caller.
    let statuses: Vec<u16> = statuses_of(
        &app,
        (0..4)
            .map(|n| token("ops", "tenant_admin", "acme", 60 + n))
            .collect(),
    )
    .await;
    assert_eq!(statuses, [200, 200, 200, 429]);
    // Another subject of the same tenant is another caller.
    app.get(SUBSCRIPTIONS, &token("billing", "tenant_admin", "acme", 60))
        .await
        .expect(StatusCode::OK);
}

async fn statuses_of(app: &TestApp, credentials: Vec<String>) -> Vec<u16> {
    let mut statuses = Vec::new();
    for credential in credentials {
        statuses.push(app.get(SUBSCRIPTIONS, &credential).await.status.as_u16());
    }
    statuses
}

#[sqlx::test(migrations = "../../migrations")]
async fn failed_authentications_from_one_address_are_refused_before_any_lookup(pool: PgPool) {
    let app = TestApp::with_limits(
        pool,
        LimitsConfig {
            ip_failures_per_minute: 3,
            caller_per_minute: 100,
            ..limits()
        },
    )
    .await;
    let admin = app.tenant_with_admin("acme").await;
    // Made-up keys, a garbage token, two credentials that differ: each a failure.
    let mut statuses = Vec::new();
    for junk in ["hk_made_up_1", "hk_made_up_2", "not-a-token"] {
        statuses.push(app.get(SUBSCRIPTIONS, junk).await.status.as_u16());
    }
    let bearer = format!("Bearer {admin}");
    let conflicting = app
        .call_with(
            "GET",
            SUBSCRIPTIONS,
            None,
            &[("authorization", &bearer), ("x-api-key", "hk_other")],
            None,
        )
        .await;
    statuses.push(conflicting.status.as_u16());
    assert_eq!(statuses, [401, 401, 401, 429]);
    // Now even a valid key from that address waits: a guesser cannot slip one in.
    let refused = app.get(SUBSCRIPTIONS, &admin).await;
    refused.expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
    assert!(refused.retry_after.is_some());
    // Another address is not affected, and nothing was counted against the key itself.
    let mut elsewhere = app;
    elsewhere.peer = ([198, 51, 100, 7], 40_000).into();
    elsewhere
        .get(SUBSCRIPTIONS, &admin)
        .await
        .expect(StatusCode::OK);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_forwarded_for_header_counts_only_from_a_trusted_proxy(pool: PgPool) {
    let app = TestApp::with_limits(
        pool,
        LimitsConfig {
            ip_failures_per_minute: 2,
            trusted_proxies: "192.0.2.10".into(),
            ..limits()
        },
    )
    .await;
    let admin = app.tenant_with_admin("acme").await;
    let from = |client: &'static str| {
        let app = &app;
        async move {
            app.call_with(
                "GET",
                SUBSCRIPTIONS,
                Some("hk_made_up"),
                &[("x-forwarded-for", client)],
                None,
            )
            .await
            .status
            .as_u16()
        }
    };
    // The proxy (the test's peer) forwards two clients: each has its own failures.
    assert_eq!(
        [
            from("203.0.113.1").await,
            from("203.0.113.1").await,
            from("203.0.113.1").await
        ],
        [401, 401, 429]
    );
    assert_eq!(from("203.0.113.2").await, 401);
    // The proxy's own requests are not blocked by its clients' failures.
    app.get(SUBSCRIPTIONS, &admin).await.expect(StatusCode::OK);
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_limit_holds_for_all_replicas_together(pool: PgPool) {
    let one = TestApp::with_limits(
        pool.clone(),
        LimitsConfig {
            caller_per_minute: 4,
            ..limits()
        },
    )
    .await;
    let two = TestApp::with_limits(
        pool,
        LimitsConfig {
            caller_per_minute: 4,
            ..limits()
        },
    )
    .await;
    let admin = one.tenant_with_admin("acme").await;
    for _ in 0..2 {
        one.get(SUBSCRIPTIONS, &admin).await.expect(StatusCode::OK);
    }
    one.limits.sync_now().await;
    two.limits.sync_now().await;
    for _ in 0..2 {
        two.get(SUBSCRIPTIONS, &admin).await.expect(StatusCode::OK);
    }
    two.limits.sync_now().await;
    one.limits.sync_now().await;
    // Four in all: each replica alone would let two more through.
    for app in [&one, &two] {
        app.get(SUBSCRIPTIONS, &admin)
            .await
            .expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn direct_messages_and_triggers_are_limited_per_tenant(pool: PgPool) {
    let app = TestApp::with_limits(
        pool,
        LimitsConfig {
            caller_per_minute: 100,
            trigger_per_minute: 100,
            tenant_messages_per_minute: 4,
            tenant_recipients_per_minute: 5,
            ..limits()
        },
    )
    .await;
    let acme = app.tenant_with_admin("acme").await;
    let beta = app.tenant_with_admin("beta").await;
    let gamma = app.tenant_with_admin("gamma").await;
    let send = |key: &str, users: &[&str]| {
        let body = json!({"to": {"users": users}, "content": {"direct": {"body": "hello"}}});
        let key = key.to_owned();
        let app = &app;
        async move { app.post("/api/messaging/messages", &key, body).await }
    };
    let trigger = |key: &str, subscription: &str| {
        let path = format!("/api/messaging/trigger/{subscription}");
        let key = key.to_owned();
        let app = &app;
        async move { app.post(&path, &key, json!({})).await }
    };

    // Recipients: the people named, and a triggered subscription's registrations.
    app.create_subscription(&acme, "orders").await;
    for user in ["ann", "bob"] {
        let address = format!("{user}@example.org");
        app.prove("acme", user, "email", &address).await;
        app.new_registration(
            &acme,
            "orders",
            json!({"userId": user, "channel": "email", "address": address}),
        )
        .await;
    }
    send(&acme, &["ann", "bob"])
        .await
        .expect(StatusCode::ACCEPTED);
    trigger(&acme, "orders").await.expect(StatusCode::ACCEPTED);
    // Two more would make 6 of 5.
    let over = trigger(&acme, "orders").await;
    over.expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
    assert!(over.retry_after.is_some());
    send(&acme, &["ann"]).await.expect(StatusCode::ACCEPTED);
    send(&acme, &["ann"])
        .await
        .expect_problem(StatusCode::TOO_MANY_REQUESTS, None);

    // One request bigger than the whole minute, into an empty one, passes; then the tenant
    // waits. Another tenant is not affected by either.
    send(&beta, &["a", "b", "c", "d", "e", "f"])
        .await
        .expect(StatusCode::ACCEPTED);
    send(&beta, &["a"])
        .await
        .expect_problem(StatusCode::TOO_MANY_REQUESTS, None);

    // Messages: four a minute, even when they reach nobody.
    app.create_subscription(&gamma, "news").await;
    for _ in 0..4 {
        trigger(&gamma, "news").await.expect(StatusCode::ACCEPTED);
    }
    trigger(&gamma, "news")
        .await
        .expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
}
