//! `POST /websocket/tokens`: a token for the tenant's own WebSocket client, which
//! `sender-websocket` checks with the same secret (R39).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use herald_jwks::ws_token;
use herald_storage::PgPool;
use serde_json::json;
use support::{TestApp, WS_TOKEN_SECRET};

#[sqlx::test(migrations = "../../migrations")]
async fn an_admin_gets_a_token_for_the_tenants_namespaces(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let response = app
        .post(
            "/api/messaging/websocket/tokens",
            &admin,
            json!({"namespaces": ["support-bot", "crm"], "ttlSecs": 3600}),
        )
        .await;
    let body = response.expect(StatusCode::CREATED);
    let token = body["token"].as_str().unwrap();
    let claims = ws_token::check(WS_TOKEN_SECRET, token).unwrap();
    assert_eq!(claims.tenant, "acme");
    assert_eq!(claims.ns, ["support-bot", "crm"]);
    assert!(claims.exp - claims.iat == 3600, "{claims:?}");
    assert!(ws_token::check("another-secret", token).is_err());
}

#[sqlx::test(migrations = "../../migrations")]
async fn namespaces_and_lifetimes_are_checked(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let post = |body| app.post("/api/messaging/websocket/tokens", &admin, body);
    for (body, field) in [
        (json!({"namespaces": []}), "namespaces"),
        (json!({"namespaces": ["Support Bot"]}), "namespaces"),
        (json!({"namespaces": ["a/b"]}), "namespaces"),
        (json!({"namespaces": ["ok"], "ttlSecs": 5}), "ttlSecs"),
        (
            json!({"namespaces": ["ok"], "ttlSecs": 999_999_999}),
            "ttlSecs",
        ),
    ] {
        post(body)
            .await
            .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
}
