//! `/metrics`: requests by route template and status, and their latency.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use herald_storage::PgPool;
use support::TestApp;

#[sqlx::test(migrations = "../../migrations")]
async fn requests_are_counted_by_route_template_and_status(pool: PgPool) {
    let metrics = herald_runtime::telemetry::metrics();
    let (app, admin) = TestApp::with_acme(pool).await;
    app.get("/api/messaging/subscriptions/metered", &admin)
        .await
        .expect(StatusCode::NOT_FOUND);
    app.call("GET", "/api/messaging/subscriptions", None, None)
        .await
        .expect(StatusCode::UNAUTHORIZED);
    app.call("GET", "/no/such/thing/4711", None, None).await;
    // Any token is a method; each must not make a series of its own.
    app.call("BREW4711", "/api/messaging/subscriptions", None, None)
        .await;

    let text = metrics.render();
    let line = |route: &str, status: &str| {
        text.lines().any(|l| {
            l.starts_with("herald_api_requests_total")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("status=\"{status}\""))
        })
    };
    // The template, not the id: one series per route, whatever the ids.
    assert!(
        line("/api/messaging/subscriptions/{subscription_id}", "404"),
        "{text}"
    );
    assert!(line("/api/messaging/subscriptions", "401"), "{text}");
    assert!(line("unmatched", "404"), "{text}");
    assert!(!text.contains("metered") && !text.contains("4711"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("herald_api_requests_total") && l.contains("method=\"other\"")),
        "{text}"
    );
    assert!(text.contains("herald_api_request_duration_seconds_bucket"));
}
