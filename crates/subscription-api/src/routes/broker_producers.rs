//! `/tenants/{tenant}/broker-producers` (issue #17): which broker users publish requests for
//! a tenant. RabbitMQ vouches for the user of each message (its `user_id` must be the
//! connection's user); the router holds that user to the tenant bound here. Global admins
//! only: a binding lets a broker account act for the whole tenant.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::producers::{self, Producer};
use herald_storage::tenants;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{ApiError, not_found_as};
use crate::json::ApiPath;
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(bind, unbind))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProducerView {
    /// The broker user, as RabbitMQ knows it.
    pub username: String,
    pub tenant: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

fn view(p: Producer, tenant: &str) -> ProducerView {
    ProducerView {
        username: p.username,
        tenant: tenant.to_owned(),
        created_by: p.created_by,
        created_at: p.created_at,
    }
}

/// A broker user name: 1 to 255 characters without control characters.
fn username(raw: &str) -> Result<&str, ApiError> {
    if raw.is_empty() || raw.chars().count() > 255 || raw.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "username",
            "a broker user name is 1 to 255 characters without control characters",
        ));
    }
    Ok(raw)
}

async fn tenant(state: &AppState, key: &str) -> Result<tenants::Tenant, ApiError> {
    tenants::by_key(&state.pool, key)
        .await
        .map_err(not_found_as("tenant"))
}

#[utoipa::path(get, path = "/tenants/{tenant}/broker-producers", tag = "admin", params(("tenant" = crate::schema::TenantKeyText, Path)), responses((status = 200, body = Vec<ProducerView>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<Vec<ProducerView>>, ApiError> {
    caller.require_global_admin()?;
    let tenant = tenant(&state, &key).await?;
    let bound = producers::list(&state.pool, tenant.id).await?;
    Ok(Json(
        bound.into_iter().map(|p| view(p, &tenant.key)).collect(),
    ))
}

/// Binds a broker user to the tenant: its requests may name only this tenant.
#[utoipa::path(put, path = "/tenants/{tenant}/broker-producers/{username}", tag = "admin", params(("tenant" = crate::schema::TenantKeyText, Path), ("username" = crate::schema::BrokerUserText, Path)), responses((status = 201, body = ProducerView), (status = 200, description = "Bound already", body = ProducerView), (status = 409, description = "Bound to another tenant")))]
async fn bind(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((key, raw)): ApiPath<(String, String)>,
) -> Result<(StatusCode, Json<ProducerView>), ApiError> {
    caller.require_global_admin()?;
    let user = username(&raw)?;
    let tenant = tenant(&state, &key).await?;
    let (bound, created) = producers::bind(&state.pool, tenant.id, user, &caller.actor).await?;
    if created {
        tracing::info!(tenant = %tenant.key, username = %user, actor = %caller.actor, "broker producer bound to a tenant");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(bound, &tenant.key))))
}

#[utoipa::path(delete, path = "/tenants/{tenant}/broker-producers/{username}", tag = "admin", params(("tenant" = crate::schema::TenantKeyText, Path), ("username" = crate::schema::BrokerUserText, Path)), responses((status = 204, description = "Unbound")))]
async fn unbind(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((key, raw)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_global_admin()?;
    let user = username(&raw)?;
    let tenant = tenant(&state, &key).await?;
    producers::unbind(&state.pool, tenant.id, user)
        .await
        .map_err(not_found_as("broker producer"))?;
    tracing::info!(tenant = %tenant.key, username = %user, actor = %caller.actor, "broker producer unbound");
    Ok(StatusCode::NO_CONTENT)
}
