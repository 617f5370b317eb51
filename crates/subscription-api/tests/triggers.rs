//! Templates (R13), schedules and event bindings (R14), and link codes (R5).

mod support;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::{PgPool, link_codes, tenants};
use serde_json::json;
use support::TestApp;

/// An app with tenant `acme`, its admin, a user `u1`, and subscription `alerts`.
async fn setup(pool: PgPool) -> (TestApp, String, String) {
    let app = TestApp::new(pool).await;
    app.tenant("acme").await;
    let admin = app.key(Some("acme"), "tenant_admin", None).await;
    let user = app.key(Some("acme"), "user", Some("u1")).await;
    app.call(
        "POST",
        "/api/messaging/subscriptions",
        Some(&admin),
        Some(json!({"subscriptionId": "alerts", "label": "Alerts", "fallbackLocale": "en"})),
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
        .call(
            "PUT",
            &format!("{T}/default/en"),
            Some(&admin),
            Some(json!({"subject": "Alert: {{ title }}", "body": "{{ title }} happened"})),
        )
        .await;
    let body = created.expect(StatusCode::CREATED);
    assert_eq!(body["channel"], "default");
    assert_eq!(body["subject"], "Alert: {{ title }}");

    app.call(
        "PUT",
        &format!("{T}/email/de"),
        Some(&admin),
        Some(json!({"subject": "Alarm", "body": "Es ist {{ title }} passiert", "html": "<b>{{ title }}</b>"})),
    )
    .await
    .expect(StatusCode::CREATED);

    // A second PUT replaces: 200, and still two templates.
    let replaced = app
        .call(
            "PUT",
            &format!("{T}/default/en"),
            Some(&admin),
            Some(json!({"body": "now: {{ title }}"})),
        )
        .await;
    assert_eq!(replaced.expect(StatusCode::OK)["body"], "now: {{ title }}");
    let list = app.call("GET", T, Some(&admin), None).await;
    let list = list.expect(StatusCode::OK).as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["channel"], "default");
    assert_eq!(list[1]["channel"], "email");
    assert_eq!(list[1]["locale"], "de");

    let one = app
        .call("GET", &format!("{T}/email/de"), Some(&admin), None)
        .await;
    assert_eq!(one.expect(StatusCode::OK)["html"], "<b>{{ title }}</b>");

    app.call("DELETE", &format!("{T}/email/de"), Some(&admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call("GET", &format!("{T}/email/de"), Some(&admin), None)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
    app.call("DELETE", &format!("{T}/email/de"), Some(&admin), None)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_templates_are_refused_at_write_time(pool: PgPool) {
    let (app, admin, user) = setup(pool).await;
    let put = |path: String, body: serde_json::Value| {
        let app = &app;
        let admin = admin.clone();
        async move { app.call("PUT", &path, Some(&admin), Some(body)).await }
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
    app.call(
        "PUT",
        &format!("{T}/email/en"),
        Some(&user),
        Some(json!({"body": "x"})),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    app.call("GET", T, Some(&user), None)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn schedules_compute_their_next_run_in_their_zone(pool: PgPool) {
    let (app, admin, user) = setup(pool).await;
    let created = app
        .call(
            "POST",
            "/api/messaging/schedules",
            Some(&admin),
            Some(json!({
                "subscriptionId": "alerts",
                "cron": "30 9 * * MON-FRI",
                "timeZone": "Europe/Berlin",
                "eventParameters": {"title": "stand-up"}
            })),
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
        .call(
            "PUT",
            &path,
            Some(&admin),
            Some(json!({"cron": "0 7 * * *", "timeZone": "UTC"})),
        )
        .await;
    let changed = changed.expect(StatusCode::OK);
    let next: DateTime<Utc> = changed["nextRunAt"].as_str().unwrap().parse().unwrap();
    assert_eq!(next.format("%H:%M").to_string(), "07:00");
    assert_eq!(changed["eventParameters"]["title"], "stand-up");

    let list = app
        .call(
            "GET",
            "/api/messaging/schedules?subscriptionId=alerts",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        list.expect(StatusCode::OK)["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Users do not schedule triggers (R16: only admins trigger).
    app.call("GET", &path, Some(&user), None)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.call("DELETE", &path, Some(&admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call("GET", &path, Some(&admin), None)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
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
        app.call("POST", "/api/messaging/schedules", Some(&admin), Some(body))
            .await
            .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
    app.call(
        "POST",
        "/api/messaging/schedules",
        Some(&admin),
        Some(json!({"subscriptionId": "nope", "cron": "0 9 * * *"})),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    // A malformed id is no such schedule.
    app.call(
        "GET",
        "/api/messaging/schedules/not-a-uuid",
        Some(&admin),
        None,
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn event_bindings_bind_an_event_type_once(pool: PgPool) {
    let (app, admin, user) = setup(pool).await;
    let bind = json!({"eventType": "audit.login", "subscriptionId": "alerts"});
    let created = app
        .call(
            "POST",
            "/api/messaging/event-bindings",
            Some(&admin),
            Some(bind.clone()),
        )
        .await;
    let id = created.expect(StatusCode::CREATED)["bindingId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.call(
        "POST",
        "/api/messaging/event-bindings",
        Some(&admin),
        Some(bind),
    )
    .await
    .expect_problem(StatusCode::CONFLICT, Some("subscriptionId"));
    app.call(
        "POST",
        "/api/messaging/event-bindings",
        Some(&admin),
        Some(json!({"eventType": "Audit Login", "subscriptionId": "alerts"})),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("eventType"));

    let list = app
        .call(
            "GET",
            "/api/messaging/event-bindings?eventType=audit.login",
            Some(&admin),
            None,
        )
        .await;
    let items = list.expect(StatusCode::OK)["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(items[0]["subscriptionId"], "alerts");
    let none = app
        .call(
            "GET",
            "/api/messaging/event-bindings?eventType=audit.logout",
            Some(&admin),
            None,
        )
        .await;
    assert!(
        none.expect(StatusCode::OK)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    app.call("GET", "/api/messaging/event-bindings", Some(&user), None)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    let path = format!("/api/messaging/event-bindings/{id}");
    app.call("DELETE", &path, Some(&admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.call("DELETE", &path, Some(&admin), None)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn link_codes_are_single_use_short_lived_and_channel_bound(pool: PgPool) {
    let (app, admin, user) = setup(pool.clone()).await;
    // A person asks for their own code.
    let issued = app
        .call(
            "POST",
            "/api/messaging/users/u1/link-codes",
            Some(&user),
            Some(json!({"channel": "telegram"})),
        )
        .await;
    let body = issued.expect(StatusCode::CREATED).clone();
    let code = body["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 8);
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

    // Wrong channel: refused, and the code stays usable.
    assert!(
        link_codes::redeem(&pool, &code, "discord")
            .await
            .unwrap()
            .is_none()
    );
    let acme = tenants::by_key(&pool, "acme").await.unwrap();
    let redeemed = link_codes::redeem(&pool, &code.to_lowercase(), "telegram")
        .await
        .unwrap()
        .expect("first redemption works");
    assert_eq!(redeemed.tenant_id, acme.id);
    assert_eq!(redeemed.channel.as_deref(), Some("telegram"));
    // Single use.
    assert!(
        link_codes::redeem(&pool, &code, "telegram")
            .await
            .unwrap()
            .is_none()
    );

    // Expired codes do not redeem.
    let late = app
        .call(
            "POST",
            "/api/messaging/users/u1/link-codes",
            Some(&admin),
            Some(json!({})),
        )
        .await;
    let late = late.expect(StatusCode::CREATED)["code"]
        .as_str()
        .unwrap()
        .to_owned();
    sqlx::query("UPDATE link_codes SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        link_codes::redeem(&pool, &late, "discord")
            .await
            .unwrap()
            .is_none()
    );

    // A person cannot get codes for someone else; email is not a chat.
    app.call(
        "POST",
        "/api/messaging/users/u2/link-codes",
        Some(&user),
        Some(json!({})),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    app.call(
        "POST",
        "/api/messaging/users/u1/link-codes",
        Some(&user),
        Some(json!({"channel": "email"})),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("channel"));
}
