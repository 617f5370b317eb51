//! One router per resource, merged here under `/api/messaging`.

use axum::Router;
use serde::Deserialize;

use crate::error::ApiError;
use crate::startup::AppState;
use herald_storage::page::PageRequest;

pub mod api_keys;
pub mod deliveries;
pub mod messages;
pub mod registrations;
pub mod subscriptions;
pub mod tenants;
pub mod users;

pub fn router(state: AppState) -> Router<AppState> {
    // R18: the per-caller limit covers the subscription and registration routes, and the
    // user and address routes that go with registrations.
    let limited = Router::new()
        .merge(subscriptions::router())
        .merge(registrations::router())
        .merge(users::router())
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            crate::limits::per_caller,
        ));
    Router::new().nest(
        "/api/messaging",
        Router::new()
            .merge(limited)
            .merge(tenants::router())
            .merge(api_keys::router())
            .merge(messages::router())
            .merge(deliveries::router()),
    )
}

/// `?limit=&cursor=` on every list.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Paging {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

impl Paging {
    pub fn request(&self) -> Result<PageRequest, ApiError> {
        PageRequest::new(self.limit, self.cursor.as_deref())
            .map_err(|(field, e)| ApiError::invalid(field, e))
    }
}

/// Text a person chose (labels, names): not blank, not too long.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}
