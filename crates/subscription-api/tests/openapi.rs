//! The OpenAPI document: served, complete, and the committed copy is current.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use herald_storage::PgPool;
use support::TestApp;

fn generated() -> String {
    let doc = subscription_api::openapi::document(subscription_api::routes::documented());
    let mut text = serde_json::to_string_pretty(&doc).unwrap();
    text.push('\n');
    text
}

#[test]
fn committed_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let fresh = generated();
    if std::env::var_os("HERALD_UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == fresh,
        "docs/openapi.json is stale: run `just openapi` and commit it"
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_document_is_served_and_names_every_r17_route(pool: PgPool) {
    let app = TestApp::new(pool).await;
    // Public, like any API description: it holds no tenant data.
    let response = app.call("GET", "/api/openapi.json", None, None).await;
    let doc = response.expect(StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in [
        ("get", "/subscriptions"),
        ("post", "/subscriptions"),
        ("get", "/subscriptions/{subscription_id}"),
        ("put", "/subscriptions/{subscription_id}"),
        ("delete", "/subscriptions/{subscription_id}"),
        ("get", "/subscriptions/{subscription_id}/registrations"),
        ("post", "/subscriptions/{subscription_id}/subscribe"),
        ("delete", "/subscriptions/{subscription_id}/unsubscribe"),
        ("get", "/registrations"),
        ("put", "/registrations/{registration_id}"),
        ("delete", "/registrations/{registration_id}"),
        ("post", "/trigger/{subscription_id}"),
        ("get", "/deliveries"),
        ("get", "/deliveries/{delivery_id}"),
    ] {
        let full = format!("/api/messaging{path}");
        assert!(
            paths.get(&full).and_then(|p| p.get(method)).is_some(),
            "{method} {full} is not documented"
        );
    }
    // Errors are documented as problem documents, and both credentials as schemes.
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert!(doc["components"]["securitySchemes"]["apiKey"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    let viewer = app.call("GET", "/api/docs", None, None).await;
    assert_eq!(viewer.status, StatusCode::OK);
}
