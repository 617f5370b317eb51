//! Issue #17, part 2: the global admin binds broker users to tenants; the router holds each
//! one to its tenant (crates/fanout-router/tests/producers.rs).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::PgPool;
use support::TestApp;

#[sqlx::test(migrations = "../../migrations")]
async fn a_broker_user_is_bound_to_one_tenant(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool).await;
    app.tenant("other").await;
    let global = app.global_admin().await;
    let shop = "/api/messaging/tenants/acme/broker-producers/shop%40acme";
    let bound = app.put(shop, &global, json!(null)).await;
    assert_eq!(bound.expect(StatusCode::CREATED)["username"], "shop@acme");
    assert!(
        bound.body["createdBy"]
            .as_str()
            .unwrap()
            .starts_with("api-key:")
    );
    app.put(shop, &global, json!(null))
        .await
        .expect(StatusCode::OK);
    // One tenant per user: binding it to another is a conflict.
    app.put(
        "/api/messaging/tenants/other/broker-producers/shop%40acme",
        &global,
        json!(null),
    )
    .await
    .expect_problem(StatusCode::CONFLICT, None);
    // Tenant admins cannot bind (a binding acts for the whole tenant).
    app.put(
        "/api/messaging/tenants/acme/broker-producers/mine",
        &admin,
        json!(null),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN, None);
    let listed = app
        .get("/api/messaging/tenants/acme/broker-producers", &global)
        .await;
    assert_eq!(listed.expect(StatusCode::OK).as_array().unwrap().len(), 1);
    app.put(
        "/api/messaging/tenants/acme/broker-producers/a%07b",
        &global,
        json!(null),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("username"));
    app.put(
        "/api/messaging/tenants/nope/broker-producers/x",
        &global,
        json!(null),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    app.delete(shop, &global)
        .await
        .expect(StatusCode::NO_CONTENT);
    app.delete(shop, &global)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}
