//! Templates (R13), schedules and event bindings (R14), and link codes (R5).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::{PgPool, link_codes, tenants};
use messaging_core::Channel;
use serde_json::json;
use support::{SUBSCRIPTIONS, TestApp};

/// An app with tenant `acme`, its admin, a user `u1`, and subscription `alerts`.
async fn setup(pool: PgPool) -> (TestApp, String, String) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let user = app.user_key("acme", "u1").await;
    app.post(
        SUBSCRIPTIONS,
        &admin,
        json!({"subscriptionId": "alerts", "label": "Alerts", "fallbackLocale": "en"}),
    )
    .await
    .expect(StatusCode::CREATED);
    (app, admin, user)
}

const T: &str = "/api/messaging/subscriptions/alerts/templates";

#[sqlx::test(migrations = "../../migrations")]
async fn templates_are_put_per_channel_and_locale_and_replaced(pool: PgPool) {
    let (app, admin, _) = setup(pool).await;
    let created = app
        .put(
            &format!("{T}/default/en"),
            &admin,
            json!({"subject": "Alert: {{ title }}", "body": "{{ title }} happened"}),
        )
        .await;
    let body = created.expect(StatusCode::CREATED);
    assert_eq!(body["channel"], "default");
    assert_eq!(body["subject"], "Alert: {{ title }}");

    app.put(
        &format!("{T}/email/de"),
        &admin,
        json!({"subject": "Alarm", "body": "Es ist {{ title }} passiert", "html": "<b>{{ title }}</b>"}),
    )
    .await
    .expect(StatusCode::CREATED);

    // A second PUT replaces: 200, and still two templates.
    let replaced = app
        .put(
            &format!("{T}/default/en"),
            &admin,
            json!({"body": "now: {{ title }}"}),
        )
        .await;
    assert_eq!(replaced.expect(StatusCode::OK)["body"], "now: {{ title }}");
    let list = app.get(T, &admin).await;
    let list = list.expect(StatusCode::OK).as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["channel"], "default");
    assert_eq!(list[1]["channel"], "email");
    assert_eq!(list[1]["locale"], "de");

    let one = app.get(&format!("{T}/email/de"), &admin).await;
    assert_eq!(one.expect(StatusCode::OK)["html"], "<b>{{ title }}</b>");

    app.delete_for_good(&format!("{T}/email/de"), &admin).await;
    app.delete(&format!("{T}/email/de"), &admin)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_templates_are_refused_at_write_time(pool: PgPool) {
    let (app, admin, user) = setup(pool).await;
    let put = |path: String, body: serde_json::Value| {
        let app = &app;
        let admin = admin.clone();
        async move { app.put(&path, &admin, body).await }
    };
    put(format!("{T}/email/en"), json!({"body": "{{ unclosed"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("body"));
    put(
        format!("{T}/email/en"),
        json!({"subject": "{% if %}", "body": "ok"}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("subject"));
    put(format!("{T}/email/en"), json!({"body": "  "}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("body"));
    put(format!("{T}/pigeon/en"), json!({"body": "x"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("channel"));
    put(format!("{T}/email/123"), json!({"body": "x"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("locale"));
    put(format!("{T}/email/en"), json!({"body": "x", "extra": 1}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);
    put(
        "/api/messaging/subscriptions/nope/templates/email/en".into(),
        json!({"body": "x"}),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    // People do not manage (or read) templates.
    app.put(&format!("{T}/email/en"), &user, json!({"body": "x"}))
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.get(T, &user)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn schedules_compute_their_next_run_in_their_zone(pool: PgPool) {
    let (app, admin, user) = setup(pool).await;
    let created = app
        .post(
            "/api/messaging/schedules",
            &admin,
            json!({
                "subscriptionId": "alerts",
                "cron": "30 9 * * MON-FRI",
                "timeZone": "Europe/Berlin",
                "eventParameters": {"title": "stand-up"}
            }),
        )
        .await;
    let body = created.expect(StatusCode::CREATED).clone();
    assert_eq!(body["subscriptionId"], "alerts");
    assert_eq!(body["enabled"], true);
    assert_eq!(body["eventParameters"]["title"], "stand-up");
    assert!(!body["description"].as_str().unwrap().is_empty());
    let next: DateTime<Utc> = body["nextRunAt"].as_str().unwrap().parse().unwrap();
    assert!(next > Utc::now());
    let local = next.with_timezone(&chrono_tz::Europe::Berlin);
    assert_eq!(local.format("%H:%M").to_string(), "09:30");

    let id = body["scheduleId"].as_str().unwrap();
    let path = format!("/api/messaging/schedules/{id}");
    let changed = app
        .put(
            &path,
            &admin,
            json!({"cron": "0 7 * * *", "timeZone": "UTC"}),
        )
        .await;
    let changed = changed.expect(StatusCode::OK);
    let next: DateTime<Utc> = changed["nextRunAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(next.format("%H:%M").to_string(), "07:00");
    assert_eq!(changed["eventParameters"]["title"], "stand-up");

    let list = app
        .get("/api/messaging/schedules?subscriptionId=alerts", &admin)
        .await;
    assert_eq!(list.items().len(), 1);

    // Users do not schedule triggers (R16: only admins trigger).
    app.get(&path, &user)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.delete_for_good(&path, &admin).await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_schedules_name_the_field(pool: PgPool) {
    let (app, admin, _) = setup(pool).await;
    for (body, field) in [
        (
            json!({"subscriptionId": "alerts", "cron": "0 9 * *"}),
            "cron",
        ),
        (
            json!({"subscriptionId": "alerts", "cron": "* * * * * *"}),
            "cron",
        ),
        (
            json!({"subscriptionId": "alerts", "cron": "0 25 * * *"}),
            "cron",
        ),
        (
            json!({"subscriptionId": "alerts", "cron": "0 9 * * *", "timeZone": "Mars/Base"}),
            "timeZone",
        ),
    ] {
        app.post("/api/messaging/schedules", &admin, body)
            .await
            .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
    app.post(
        "/api/messaging/schedules",
        &admin,
        json!({"subscriptionId": "nope", "cron": "0 9 * * *"}),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    // A malformed id is no such schedule.
    app.get("/api/messaging/schedules/not-a-uuid", &admin)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn event_bindings_bind_an_event_type_once(pool: PgPool) {
    let (app, admin, user) = setup(pool).await;
    let bind = json!({"eventType": "audit.login", "subscriptionId": "alerts"});
    let created = app
        .post("/api/messaging/event-bindings", &admin, bind.clone())
        .await;
    let id = created.expect_str(StatusCode::CREATED, "bindingId");
    app.post("/api/messaging/event-bindings", &admin, bind)
        .await
        .expect_problem(StatusCode::CONFLICT, Some("subscriptionId"));
    app.post(
        "/api/messaging/event-bindings",
        &admin,
        json!({"eventType": "Audit Login", "subscriptionId": "alerts"}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("eventType"));

    let list = app
        .get(
            "/api/messaging/event-bindings?eventType=audit.login",
            &admin,
        )
        .await;
    let items = list.expect(StatusCode::OK)["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(items[0]["subscriptionId"], "alerts");
    let none = app
        .get(
            "/api/messaging/event-bindings?eventType=audit.logout",
            &admin,
        )
        .await;
    assert!(none.items().is_empty());

    app.get("/api/messaging/event-bindings", &user)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    let path = format!("/api/messaging/event-bindings/{id}");
    app.delete(&path, &admin)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.delete(&path, &admin)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn link_codes_are_single_use_short_lived_and_channel_bound(pool: PgPool) {
    let (app, admin, user) = setup(pool.clone()).await;
    // A person asks for their own code.
    let issued = app
        .post(
            "/api/messaging/users/u1/link-codes",
            &user,
            json!({"channel": "telegram"}),
        )
        .await;
    let body = issued.expect(StatusCode::CREATED).clone();
    let code = body["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 26, "130 bits");
    assert!(body["instructions"].as_str().unwrap().contains(&code));
    let expires: DateTime<Utc> = body["expiresAt"].as_str().unwrap().parse().unwrap();
    let ttl = expires - Utc::now();
    assert!(ttl > chrono::Duration::minutes(14) && ttl <= chrono::Duration::minutes(15));

    // Only the code's hash is stored.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM link_codes WHERE code_hash = $1")
        .bind(code.as_bytes())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    // A keyed hash: under another key (a router with another secret) the code is unknown.
    let key = support::CODE_SECRET.as_bytes();
    assert!(
        link_codes::redeem(&pool, b"another key", &code, Channel::Telegram)
            .await
            .unwrap()
            .is_none()
    );

    // Wrong channel: refused, and the code stays usable.
    assert!(
        link_codes::redeem(&pool, key, &code, Channel::Discord)
            .await
            .unwrap()
            .is_none()
    );
    let acme = tenants::by_key(&pool, "acme").await.unwrap();
    let redeemed = link_codes::redeem(&pool, key, &code.to_lowercase(), Channel::Telegram)
        .await
        .unwrap()
        .expect("first redemption works");
    assert_eq!(redeemed.tenant_id, acme.id);
    assert_eq!(redeemed.channel, Some(Channel::Telegram));
    // Single use.
    assert!(
        link_codes::redeem(&pool, key, &code, Channel::Telegram)
            .await
            .unwrap()
            .is_none()
    );

    // Expired codes do not redeem.
    let late = app
        .post("/api/messaging/users/u1/link-codes", &admin, json!({}))
        .await;
    let late = late.expect_str(StatusCode::CREATED, "code");
    sqlx::query("UPDATE link_codes SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        link_codes::redeem(&pool, key, &late, Channel::Discord)
            .await
            .unwrap()
            .is_none()
    );

    // A person cannot get codes for someone else; email is not a chat.
    app.post("/api/messaging/users/u2/link-codes", &user, json!({}))
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.post(
        "/api/messaging/users/u1/link-codes",
        &user,
        json!({"channel": "email"}),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("channel"));
}
