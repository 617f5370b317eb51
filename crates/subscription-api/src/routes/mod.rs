//! One router per resource, merged here under `/api/messaging`. Routes are registered through
//! utoipa-axum, so each one is in the OpenAPI document by construction.

use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::startup::AppState;
use herald_storage::page::PageRequest;

pub mod api_keys;
pub mod broker_producers;
pub mod bulk;
pub mod deliveries;
pub mod event_bindings;
pub mod help_desk;
pub mod messages;
pub mod registrations;
pub mod schedules;
pub mod subscriptions;
pub mod support;
pub mod templates;
pub mod tenants;
pub mod users;
pub mod verification;
pub mod websocket;

/// Where every route lives.
pub const BASE: &str = "/api/messaging";

/// R18: the per-caller limit covers the subscription and registration routes, and the
/// routes that go with them (templates, users and their addresses), and the support desk
/// (tickets, replies, settings), which staff tools call as they please.
fn limited() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(subscriptions::router())
        .merge(templates::router())
        .merge(registrations::router())
        .merge(users::router())
        .merge(bulk::router())
        .merge(verification::router())
        .merge(support::router())
        .merge(websocket::router())
}

/// Not limited per caller: the tenant's web application hands out help-desk rooms for all its
/// staff and clients with one key, so a per-caller bucket would throttle the whole desk.
fn unlimited() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(help_desk::router())
        .merge(tenants::router())
        .merge(broker_producers::router())
        .merge(api_keys::router())
        .merge(messages::router())
        .merge(deliveries::router())
        .merge(schedules::router())
        .merge(event_bindings::router())
        .merge(verification::public_router())
}

/// The routes with their rate-limit layer, for serving.
pub fn router(state: AppState) -> OpenApiRouter<AppState> {
    let limited = limited().route_layer(axum::middleware::from_fn_with_state(
        state,
        crate::limits::per_caller,
    ));
    OpenApiRouter::new().nest(BASE, limited.merge(unlimited()))
}

/// The routes' OpenAPI paths, without building anything that serves.
pub fn documented() -> utoipa::openapi::OpenApi {
    OpenApiRouter::<AppState>::new()
        .nest(BASE, limited().merge(unlimited()))
        .into_openapi()
}

/// `?limit=&cursor=` on every list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    #[param(value_type = Option<crate::schema::CursorText>)]
    pub cursor: Option<String>,
}

impl Paging {
    pub fn request(&self) -> Result<PageRequest, ApiError> {
        PageRequest::new(self.limit, self.cursor.as_deref())
            .map_err(|(field, e)| ApiError::invalid(field, e))
    }
}

/// Text a person chose (labels, names): not blank, no control characters, not too long.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// Text a person writes to another (a staff reply): like [`check_text`], but over several
/// lines, so newline and tab are allowed; other control characters are not (a chat would
/// show them as garbage, or not at all).
pub fn check_message(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters other than newline and tab",
        ));
    }
    if value.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}
