//! Request metrics for `/metrics`: requests by route and status, and a latency histogram.
//!
//! The route label is the matched route template (`/api/messaging/subscriptions/{subscription_id}`),
//! never the raw path: ids in labels would make one time series per object.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Counts and times one request.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        // Unmatched paths share one label, so a scanner cannot create series at will.
        .unwrap_or_else(|| "unmatched".to_owned());
    // Any token is a valid HTTP method: a fixed set keeps a client from creating series.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("herald_api_requests_total", &labels).increment(1);
    metrics::histogram!("herald_api_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
