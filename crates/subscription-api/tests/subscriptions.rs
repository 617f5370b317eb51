//! Subscriptions, registrations, tenants and API keys through the real router and database.

mod support;

use axum::http::StatusCode;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use sqlx::PgPool;
use support::{JWT_SECRET, TestApp};

async fn app_with_acme(pool: PgPool) -> (TestApp, String) {
    let app = TestApp::new(pool).await;
    app.tenant("acme").await;
    let admin = app.key(Some("acme"), "tenant_admin", None).await;
    (app, admin)
}

fn new_subscription(id: &str) -> serde_json::Value {
    json!({"subscriptionId": id, "label": "Order updates", "description": "When an order changes"})
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_tenant_admin_creates_reads_changes_and_deletes_a_subscription(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    let created = app
        .call(
            "POST",
            "/api/messaging/subscriptions",
            Some(&admin),
            Some(new_subscription("order_updates")),
        )
        .await;
    let body = created.expect(StatusCode::CREATED);
    assert_eq!(body["subscriptionId"], "order_updates");
    assert_eq!(body["system"], false);
    assert_eq!(body["enabled"], true);
    assert!(body["createdBy"].as_str().unwrap().starts_with("api-key:"));

    let list = app
        .call("GET", "/api/messaging/subscriptions", Some(&admin), None)
        .await;
    assert_eq!(
        list.expect(StatusCode::OK)["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.call(
        "GET",
        "/api/messaging/subscriptions/order_updates",
        Some(&admin),
        None,
    )
    .await
    .expect(StatusCode::OK);

    let changed = app
        .call(
            "PUT",
            "/api/messaging/subscriptions/order_updates",
            Some(&admin),
            Some(json!({"label": "Orders", "enabled": false})),
        )
        .await;
    let body = changed.expect(StatusCode::OK);
    assert_eq!(
        (body["label"].as_str(), body["enabled"].as_bool()),
        (Some("Orders"), Some(false))
    );
    assert!(body["modifiedAt"].as_str() >= body["createdAt"].as_str());

    app.call(
        "DELETE",
        "/api/messaging/subscriptions/order_updates",
        Some(&admin),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.call(
        "GET",
        "/api/messaging/subscriptions/order_updates",
        Some(&admin),
        None,
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn subscription_ids_must_be_letters_and_underscores_and_unique(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    for bad in ["order-updates", "order updates", "orders2", ""] {
        app.call(
            "POST",
            "/api/messaging/subscriptions",
            Some(&admin),
            Some(new_subscription(bad)),
        )
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("subscriptionId"));
    }
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&admin),
        Some(new_subscription("orders")),
    )
    .await
    .expect(StatusCode::CREATED);
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&admin),
        Some(new_subscription("orders")),
    )
    .await
    .expect_problem(StatusCode::CONFLICT, Some("subscriptionId"));
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&admin),
        Some(json!({"subscriptionId": "x", "label": "  "})),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("label"));
}

#[sqlx::test(migrations = "../../migrations")]
async fn only_the_global_admin_creates_or_changes_system_subscriptions(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    let global = app.key(None, "global_admin", None).await;
    let mut system = new_subscription("security_alerts");
    system["system"] = json!(true);
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&admin),
        Some(system.clone()),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    let created = app
        .call_with(
            "POST",
            "/api/messaging/subscriptions",
            Some(&global),
            &[("herald-tenant", "acme")],
            Some(system.to_string()),
        )
        .await;
    assert_eq!(created.expect(StatusCode::CREATED)["system"], true);

    app.call(
        "GET",
        "/api/messaging/subscriptions/security_alerts",
        Some(&admin),
        None,
    )
    .await
    .expect(StatusCode::OK);
    app.call(
        "PUT",
        "/api/messaging/subscriptions/security_alerts",
        Some(&admin),
        Some(json!({"label": "x"})),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    app.call(
        "DELETE",
        "/api/messaging/subscriptions/security_alerts",
        Some(&admin),
        None,
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    app.call_with(
        "DELETE",
        "/api/messaging/subscriptions/security_alerts",
        Some(&global),
        &[("herald-tenant", "acme")],
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    // A global admin must say which tenant it acts in.
    app.call("GET", "/api/messaging/subscriptions", Some(&global), None)
        .await
        .expect_problem(StatusCode::BAD_REQUEST, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn users_read_subscriptions_but_do_not_change_them(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    let user = app.key(Some("acme"), "user", Some("u-1")).await;
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&admin),
        Some(new_subscription("orders")),
    )
    .await
    .expect(StatusCode::CREATED);
    app.call("GET", "/api/messaging/subscriptions", Some(&user), None)
        .await
        .expect(StatusCode::OK);
    app.call(
        "GET",
        "/api/messaging/subscriptions/orders",
        Some(&user),
        None,
    )
    .await
    .expect(StatusCode::OK);
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&user),
        Some(new_subscription("mine")),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    app.call(
        "PUT",
        "/api/messaging/subscriptions/orders",
        Some(&user),
        Some(json!({"label": "x"})),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    app.call(
        "DELETE",
        "/api/messaging/subscriptions/orders",
        Some(&user),
        None,
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn another_tenants_subscriptions_and_registrations_are_not_found(pool: PgPool) {
    let (app, acme_admin) = app_with_acme(pool).await;
    app.tenant("globex").await;
    let globex_admin = app.key(Some("globex"), "tenant_admin", None).await;
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&acme_admin),
        Some(new_subscription("orders")),
    )
    .await
    .expect(StatusCode::CREATED);
    let registration = app
        .call(
            "POST",
            "/api/messaging/subscriptions/orders/subscribe",
            Some(&acme_admin),
            Some(json!({"channel": "email", "address": "ann@example.org", "userId": "u-1"})),
        )
        .await;
    let registration_id = registration.expect(StatusCode::CREATED)["registrationId"]
        .as_str()
        .unwrap()
        .to_owned();

    for (method, path, body) in [
        (
            "GET",
            "/api/messaging/subscriptions/orders".to_owned(),
            None,
        ),
        (
            "PUT",
            "/api/messaging/subscriptions/orders".to_owned(),
            Some(json!({"label": "stolen"})),
        ),
        (
            "DELETE",
            "/api/messaging/subscriptions/orders".to_owned(),
            None,
        ),
        (
            "GET",
            "/api/messaging/subscriptions/orders/registrations".to_owned(),
            None,
        ),
        (
            "POST",
            "/api/messaging/subscriptions/orders/subscribe".to_owned(),
            Some(json!({"channel": "email", "address": "x@example.org", "userId": "u-9"})),
        ),
        (
            "DELETE",
            "/api/messaging/subscriptions/orders/unsubscribe?userId=u-1".to_owned(),
            None,
        ),
        (
            "PUT",
            format!("/api/messaging/registrations/{registration_id}"),
            Some(json!({"enabled": false})),
        ),
        (
            "DELETE",
            format!("/api/messaging/registrations/{registration_id}"),
            None,
        ),
    ] {
        let response = app.call(method, &path, Some(&globex_admin), body).await;
        assert_eq!(
            response.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            response.body
        );
    }
    let listed = app
        .call(
            "GET",
            "/api/messaging/registrations",
            Some(&globex_admin),
            None,
        )
        .await;
    assert!(
        listed.expect(StatusCode::OK)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Nothing changed for acme.
    let mine = app
        .call(
            "GET",
            "/api/messaging/subscriptions/orders",
            Some(&acme_admin),
            None,
        )
        .await;
    assert_eq!(mine.expect(StatusCode::OK)["label"], "Order updates");
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_user_subscribes_pauses_and_unsubscribes_themselves(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    let user = app.key(Some("acme"), "user", Some("u-1")).await;
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&admin),
        Some(new_subscription("orders")),
    )
    .await
    .expect(StatusCode::CREATED);

    let body = json!({"channel": "email", "address": "Ann@Example.ORG"});
    let first = app
        .call(
            "POST",
            "/api/messaging/subscriptions/orders/subscribe",
            Some(&user),
            Some(body.clone()),
        )
        .await;
    let registration = first.expect(StatusCode::CREATED).clone();
    assert_eq!(
        registration["address"], "Ann@example.org",
        "addresses are normalised"
    );
    assert_eq!(registration["userId"], "u-1");
    let again = app
        .call(
            "POST",
            "/api/messaging/subscriptions/orders/subscribe",
            Some(&user),
            Some(body),
        )
        .await;
    assert_eq!(
        again.expect(StatusCode::OK)["registrationId"],
        registration["registrationId"]
    );

    let id = registration["registrationId"].as_str().unwrap();
    let paused = app
        .call(
            "PUT",
            &format!("/api/messaging/registrations/{id}"),
            Some(&user),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(paused.expect(StatusCode::OK)["enabled"], false);
    let mine = app
        .call("GET", "/api/messaging/registrations", Some(&user), None)
        .await;
    assert_eq!(
        mine.expect(StatusCode::OK)["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    app.call(
        "DELETE",
        "/api/messaging/subscriptions/orders/unsubscribe?channel=email",
        Some(&user),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    let mine = app
        .call("GET", "/api/messaging/registrations", Some(&user), None)
        .await;
    assert!(
        mine.expect(StatusCode::OK)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    app.call(
        "DELETE",
        "/api/messaging/subscriptions/orders/unsubscribe",
        Some(&user),
        None,
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_user_never_sees_or_touches_other_peoples_registrations(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    let ann = app.key(Some("acme"), "user", Some("ann")).await;
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&admin),
        Some(new_subscription("orders")),
    )
    .await
    .expect(StatusCode::CREATED);
    let bobs = app
        .call(
            "POST",
            "/api/messaging/subscriptions/orders/subscribe",
            Some(&admin),
            Some(json!({"channel": "sms", "address": "+41 79 123 45 67", "userId": "bob"})),
        )
        .await;
    let bobs_id = bobs.expect(StatusCode::CREATED)["registrationId"]
        .as_str()
        .unwrap()
        .to_owned();

    app.call(
        "PUT",
        &format!("/api/messaging/registrations/{bobs_id}"),
        Some(&ann),
        Some(json!({"enabled": false})),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    app.call(
        "DELETE",
        &format!("/api/messaging/registrations/{bobs_id}"),
        Some(&ann),
        None,
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    app.call(
        "POST",
        "/api/messaging/subscriptions/orders/subscribe",
        Some(&ann),
        Some(json!({"channel": "sms", "address": "+41791234567", "userId": "bob"})),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    let seen = app
        .call(
            "GET",
            "/api/messaging/subscriptions/orders/registrations",
            Some(&ann),
            None,
        )
        .await;
    assert!(
        seen.expect(StatusCode::OK)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    app.call(
        "GET",
        "/api/messaging/registrations?userId=bob",
        Some(&ann),
        None,
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    let all = app
        .call(
            "GET",
            "/api/messaging/subscriptions/orders/registrations",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        all.expect(StatusCode::OK)["items"][0]["address"],
        "+41791234567"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn subscribing_checks_the_channel_and_the_address(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&admin),
        Some(new_subscription("orders")),
    )
    .await
    .expect(StatusCode::CREATED);
    let subscribe = |body| {
        app.call(
            "POST",
            "/api/messaging/subscriptions/orders/subscribe",
            Some(&admin),
            Some(body),
        )
    };
    subscribe(json!({"channel": "fax", "address": "123", "userId": "u"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("channel"));
    subscribe(json!({"channel": "email", "address": "not-an-email", "userId": "u"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("address"));
    subscribe(json!({"channel": "sms", "address": "0791234567", "userId": "u"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("address"));
    subscribe(json!({"channel": "telegram", "address": "12345"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("userId"));
    subscribe(json!({"channel": "telegram", "address": "-100123", "userId": "u"}))
        .await
        .expect(StatusCode::CREATED);
}

#[sqlx::test(migrations = "../../migrations")]
async fn missing_unknown_and_revoked_credentials_are_refused(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    app.call("GET", "/api/messaging/subscriptions", None, None)
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, None);
    app.call(
        "GET",
        "/api/messaging/subscriptions",
        Some("hk_unknown"),
        None,
    )
    .await
    .expect_problem(StatusCode::UNAUTHORIZED, None);
    app.call(
        "GET",
        "/api/messaging/subscriptions",
        Some("not.a.jwt"),
        None,
    )
    .await
    .expect_problem(StatusCode::UNAUTHORIZED, None);

    let created = app
        .call(
            "POST",
            "/api/messaging/api-keys",
            Some(&admin),
            Some(json!({"name": "ci", "role": "user", "userId": "ci-bot"})),
        )
        .await;
    let body = created.expect(StatusCode::CREATED).clone();
    let plain = body["apiKey"].as_str().unwrap().to_owned();
    assert!(plain.starts_with("hk_"));
    app.call("GET", "/api/messaging/registrations", Some(&plain), None)
        .await
        .expect(StatusCode::OK);
    let listed = app
        .call("GET", "/api/messaging/api-keys", Some(&admin), None)
        .await;
    let listed = listed.expect(StatusCode::OK).to_string();
    assert!(!listed.contains(&plain), "the key is shown only once");
    let id = body["id"].as_str().unwrap();
    app.call(
        "DELETE",
        &format!("/api/messaging/api-keys/{id}"),
        Some(&admin),
        None,
    )
    .await
    .expect(StatusCode::NO_CONTENT);
    app.call("GET", "/api/messaging/registrations", Some(&plain), None)
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn jwt_bearer_tokens_carry_role_tenant_and_user(pool: PgPool) {
    let (app, _) = app_with_acme(pool).await;
    let token = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let exp = chrono::Utc::now().timestamp() + 600;
    let admin =
        token(json!({"sub": "alice", "role": "tenant_admin", "tenant": "acme", "exp": exp}));
    let created = app
        .call(
            "POST",
            "/api/messaging/subscriptions",
            Some(&admin),
            Some(new_subscription("orders")),
        )
        .await;
    assert_eq!(
        created.expect(StatusCode::CREATED)["createdBy"],
        "jwt:alice"
    );

    let user = token(
        json!({"sub": "bob", "role": "user", "tenant": "acme", "user_id": "bob", "exp": exp}),
    );
    app.call(
        "POST",
        "/api/messaging/subscriptions/orders/subscribe",
        Some(&user),
        Some(json!({"channel": "email", "address": "bob@example.org"})),
    )
    .await
    .expect(StatusCode::CREATED);
    let expired =
        token(json!({"sub": "alice", "role": "tenant_admin", "tenant": "acme", "exp": 1000}));
    app.call("GET", "/api/messaging/subscriptions", Some(&expired), None)
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, None);
    let other_tenant =
        token(json!({"sub": "eve", "role": "tenant_admin", "tenant": "nope", "exp": exp}));
    app.call(
        "GET",
        "/api/messaging/subscriptions",
        Some(&other_tenant),
        None,
    )
    .await
    .expect_problem(StatusCode::UNAUTHORIZED, None);
    let forged = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "eve", "role": "global_admin", "exp": exp}),
        &EncodingKey::from_secret(b"wrong"),
    )
    .unwrap();
    app.call("GET", "/api/messaging/tenants", Some(&forged), None)
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn malformed_bodies_get_problem_documents(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    let post = |body: &str, headers: &'static [(&'static str, &'static str)]| {
        app.call_with(
            "POST",
            "/api/messaging/subscriptions",
            Some(&admin),
            headers,
            Some(body.to_owned()),
        )
    };
    post("{not json", &[])
        .await
        .expect_problem(StatusCode::BAD_REQUEST, None);
    let unknown = post(
        r#"{"subscriptionId": "a", "label": "b", "colour": "red"}"#,
        &[],
    )
    .await;
    unknown.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);
    assert!(unknown.body["detail"].as_str().unwrap().contains("colour"));
    let wrong_type = post(
        r#"{"subscriptionId": "a", "label": "b", "enabled": "yes"}"#,
        &[],
    )
    .await;
    wrong_type.expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);
    post(
        r#"{"subscriptionId": "a", "label": "b"}"#,
        &[("content-type", "text/plain")],
    )
    .await
    .expect_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, None);
    let huge = format!(
        r#"{{"subscriptionId": "a", "label": "{}"}}"#,
        "x".repeat(20_000)
    );
    post(&huge, &[])
        .await
        .expect_problem(StatusCode::PAYLOAD_TOO_LARGE, None);
    app.call("GET", "/api/messaging/nothing-here", Some(&admin), None)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn lists_page_with_a_cursor(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    for id in ["a", "b", "c", "d", "e"] {
        app.call(
            "POST",
            "/api/messaging/subscriptions",
            Some(&admin),
            Some(new_subscription(id)),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut path = "/api/messaging/subscriptions?limit=2".to_owned();
    loop {
        let page = app.call("GET", &path, Some(&admin), None).await;
        let body = page.expect(StatusCode::OK).clone();
        seen.extend(
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["subscriptionId"].as_str().unwrap().to_owned()),
        );
        match body["nextCursor"].as_str() {
            Some(cursor) => path = format!("/api/messaging/subscriptions?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    app.call(
        "GET",
        "/api/messaging/subscriptions?limit=0",
        Some(&admin),
        None,
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("limit"));
    app.call(
        "GET",
        "/api/messaging/subscriptions?cursor=garbage",
        Some(&admin),
        None,
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("cursor"));
}

#[sqlx::test(migrations = "../../migrations")]
async fn only_the_global_admin_manages_tenants(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    let global = app.key(None, "global_admin", None).await;
    app.call(
        "POST",
        "/api/messaging/tenants",
        Some(&admin),
        Some(json!({"tenant": "globex", "name": "Globex"})),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    app.call(
        "POST",
        "/api/messaging/tenants",
        Some(&global),
        Some(json!({"tenant": "Globex!", "name": "Globex"})),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("tenant"));
    app.call(
        "POST",
        "/api/messaging/tenants",
        Some(&global),
        Some(json!({"tenant": "globex", "name": "Globex"})),
    )
    .await
    .expect(StatusCode::CREATED);
    app.call(
        "POST",
        "/api/messaging/tenants",
        Some(&global),
        Some(json!({"tenant": "globex", "name": "Again"})),
    )
    .await
    .expect_problem(StatusCode::CONFLICT, None);
    let tenants = app
        .call("GET", "/api/messaging/tenants", Some(&global), None)
        .await;
    assert_eq!(tenants.expect(StatusCode::OK).as_array().unwrap().len(), 2);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_database_outage_answers_503_saying_so(pool: PgPool) {
    let (app, admin) = app_with_acme(pool.clone()).await;
    pool.close().await;
    let response = app
        .call("GET", "/api/messaging/subscriptions", Some(&admin), None)
        .await;
    response.expect_problem(StatusCode::SERVICE_UNAVAILABLE, None);
    assert!(
        response.body["title"]
            .as_str()
            .unwrap()
            .contains("Database")
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_caller_over_the_rate_limit_gets_429_with_retry_after(pool: PgPool) {
    use subscription_api::config::LimitsConfig;
    let app = TestApp::with_limits(
        pool,
        LimitsConfig {
            max_body_bytes: 16 * 1024,
            caller_per_minute: 3,
            trigger_per_minute: 2,
            ..LimitsConfig::default()
        },
    )
    .await;
    app.tenant("acme").await;
    let admin = app.key(Some("acme"), "tenant_admin", None).await;
    let other = app.key(Some("acme"), "tenant_admin", None).await;
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&admin),
        Some(new_subscription("orders")),
    )
    .await
    .expect(StatusCode::CREATED);
    app.call("GET", "/api/messaging/subscriptions", Some(&admin), None)
        .await
        .expect(StatusCode::OK);
    app.call("GET", "/api/messaging/registrations", Some(&admin), None)
        .await
        .expect(StatusCode::OK);
    let limited = app
        .call_with(
            "GET",
            "/api/messaging/subscriptions",
            Some(&admin),
            &[],
            None,
        )
        .await;
    limited.expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
    let wait = limited.retry_after.expect("Retry-After");
    assert!(
        (1..=20).contains(&wait),
        "one token of 3/min comes back within 20 s: {wait}"
    );
    app.call("GET", "/api/messaging/subscriptions", Some(&other), None)
        .await
        .expect(StatusCode::OK);

    // Triggers are limited per subscription, whoever triggers.
    for key in [&admin, &other] {
        app.call(
            "POST",
            "/api/messaging/trigger/orders",
            Some(key),
            Some(json!({})),
        )
        .await
        .expect(StatusCode::ACCEPTED);
    }
    app.call(
        "POST",
        "/api/messaging/trigger/orders",
        Some(&other),
        Some(json!({})),
    )
    .await
    .expect_problem(StatusCode::TOO_MANY_REQUESTS, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_queries_paths_and_methods_get_problem_documents_too(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    app.call(
        "GET",
        "/api/messaging/subscriptions?limit=many",
        Some(&admin),
        None,
    )
    .await
    .expect_problem(StatusCode::BAD_REQUEST, None);
    app.call(
        "GET",
        "/api/messaging/registrations?colour=red",
        Some(&admin),
        None,
    )
    .await
    .expect_problem(StatusCode::BAD_REQUEST, None);
    app.call(
        "DELETE",
        "/api/messaging/registrations/not-a-uuid",
        Some(&admin),
        None,
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    app.call("PATCH", "/api/messaging/subscriptions", Some(&admin), None)
        .await
        .expect_problem(StatusCode::METHOD_NOT_ALLOWED, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn relabelling_a_disabled_subscription_keeps_it_disabled(pool: PgPool) {
    let (app, admin) = app_with_acme(pool).await;
    let mut body = new_subscription("orders");
    body["enabled"] = json!(false);
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&admin),
        Some(body),
    )
    .await
    .expect(StatusCode::CREATED);
    let changed = app
        .call(
            "PUT",
            "/api/messaging/subscriptions/orders",
            Some(&admin),
            Some(json!({"label": "Orders"})),
        )
        .await;
    let changed = changed.expect(StatusCode::OK);
    assert_eq!(changed["enabled"], false);
    assert_eq!(changed["description"], "When an order changes");
}

#[test]
fn empty_issuer_and_audience_settings_mean_unset() {
    use herald_runtime::config::Secret;
    use subscription_api::auth::JwtKeys;
    use subscription_api::config::AuthConfig;
    let keys = JwtKeys::from_config(&AuthConfig {
        jwt_hs256_secret: Secret::new(JWT_SECRET.into()),
        jwt_issuer: Some(String::new()),
        jwt_audience: Some("  ".into()),
        ..AuthConfig::default()
    })
    .unwrap();
    let token = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": "a", "role": "global_admin", "exp": chrono::Utc::now().timestamp() + 60}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    assert!(
        keys.accepts(&token),
        "a token without iss/aud is accepted when they are not configured"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn header_tricks_do_not_give_a_caller_a_fresh_rate_limit(pool: PgPool) {
    use subscription_api::config::LimitsConfig;
    let app = TestApp::with_limits(
        pool,
        LimitsConfig {
            max_body_bytes: 16 * 1024,
            caller_per_minute: 3,
            trigger_per_minute: 3,
            ..LimitsConfig::default()
        },
    )
    .await;
    app.tenant("acme").await;
    let admin = app.key(Some("acme"), "tenant_admin", None).await;
    let mut statuses = Vec::new();
    for n in 0..5 {
        let junk = format!("junk{n}");
        let response = app
            .call_with(
                "GET",
                "/api/messaging/subscriptions",
                None,
                &[("authorization", &junk), ("x-api-key", &admin)],
                None,
            )
            .await;
        statuses.push(response.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429],
        "one key, one bucket, whatever else is sent"
    );
}
