//! People and their addresses (R1, R2, R16): a user manages their own, admins anyone's.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use support::TestApp;

async fn setup(pool: PgPool) -> (TestApp, String, String) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let ann = app.user_key("acme", "ann").await;
    (app, admin, ann)
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_user_manages_their_own_settings_and_addresses(pool: PgPool) {
    let (app, _, ann) = setup(pool).await;
    let settings = app
        .put(
            "/api/messaging/users/ann",
            &ann,
            json!({"locale": "de_ch", "preferredChannel": "email", "deliveryMode": "preferred"}),
        )
        .await;
    let body = settings.expect(StatusCode::OK);
    assert_eq!(
        (body["locale"].as_str(), body["deliveryMode"].as_str()),
        (Some("de-CH"), Some("preferred"))
    );

    let email =
        json!({"channel": "email", "address": "Ann@Example.ORG", "displayName": "Ann at work"});
    let first = app
        .post("/api/messaging/users/ann/addresses", &ann, email.clone())
        .await;
    let first = first.expect(StatusCode::CREATED).clone();
    assert_eq!(
        (first["address"].as_str(), first["state"].as_str()),
        (Some("Ann@example.org"), Some("active"))
    );
    let again = app
        .post("/api/messaging/users/ann/addresses", &ann, email)
        .await;
    assert_eq!(
        again.expect(StatusCode::OK)["addressId"],
        first["addressId"]
    );
    let room = app
        .post(
            "/api/messaging/users/ann/addresses",
            &ann,
            json!({"channel": "xmpp", "address": "support@conference.localhost", "room": true}),
        )
        .await;
    assert_eq!(room.expect(StatusCode::CREATED)["kind"], "xmpp_room");

    let read = app.get("/api/messaging/users/ann", &ann).await;
    assert_eq!(
        read.expect(StatusCode::OK)["addresses"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let id = first["addressId"].as_str().unwrap();
    app.delete(&format!("/api/messaging/users/ann/addresses/{id}"), &ann)
        .await
        .expect(StatusCode::NO_CONTENT);
    let read = app.get("/api/messaging/users/ann", &ann).await;
    assert_eq!(
        read.expect(StatusCode::OK)["addresses"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_user_cannot_read_or_change_other_people(pool: PgPool) {
    let (app, admin, ann) = setup(pool).await;
    app.post(
        "/api/messaging/users/bob/addresses",
        &admin,
        json!({"channel": "sms", "address": "+41791234567"}),
    )
    .await
    .expect(StatusCode::CREATED);
    for (method, path, body) in [
        ("GET", "/api/messaging/users/bob", None),
        ("PUT", "/api/messaging/users/bob", Some(json!({}))),
        (
            "POST",
            "/api/messaging/users/bob/addresses",
            Some(json!({"channel": "email", "address": "eve@example.org"})),
        ),
        ("DELETE", "/api/messaging/users/ann", None),
        ("GET", "/api/messaging/users", None),
    ] {
        let response = app.call(method, path, Some(&ann), body).await;
        assert_eq!(
            response.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            response.body
        );
    }
    let bob = app.get("/api/messaging/users/bob", &admin).await;
    assert_eq!(
        bob.expect(StatusCode::OK)["addresses"][0]["address"],
        "+41791234567"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn admins_list_and_forget_people_and_other_tenants_see_nothing(pool: PgPool) {
    let (app, admin, _) = setup(pool).await;
    for person in ["ann", "bob"] {
        app.put(&format!("/api/messaging/users/{person}"), &admin, json!({}))
            .await
            .expect(StatusCode::OK);
    }
    let listed = app.get("/api/messaging/users?limit=1", &admin).await;
    let listed = listed.expect(StatusCode::OK);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(listed["nextCursor"].is_string());

    let other = app.tenant_with_admin("globex").await;
    app.get("/api/messaging/users/ann", &other)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
    app.delete("/api/messaging/users/ann", &other)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);

    app.delete_for_good("/api/messaging/users/ann", &admin)
        .await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn settings_and_addresses_are_validated(pool: PgPool) {
    let (app, admin, _) = setup(pool).await;
    let put = |body| app.put("/api/messaging/users/ann", &admin, body);
    put(json!({"deliveryMode": "preferred"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("preferredChannel"));
    put(json!({"locale": "klingon!"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("locale"));
    put(json!({"preferredChannel": "fax"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("preferredChannel"));
    let add = |body| app.post("/api/messaging/users/ann/addresses", &admin, body);
    add(json!({"channel": "email", "address": "nope"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("address"));
    add(json!({"channel": "email", "address": "ann@example.org", "room": true}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("room"));
    add(json!({"channel": "telegram", "address": "0"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("address"));
    // A Teams address names the host Herald would hand its bot token to: only the bot
    // captures one.
    add(json!({"channel": "teams", "address": "https://evil.example/ a:1x"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("channel"));
}
