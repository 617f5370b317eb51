//! `/tenants`: global admins only (R10, R16).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::tenants;
use messaging_core::values::TenantKey;
use serde::{Deserialize, Serialize};

use super::check_text;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::startup::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    pub tenant: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<tenants::Tenant> for TenantView {
    fn from(t: tenants::Tenant) -> Self {
        TenantView {
            tenant: t.key,
            name: t.name,
            created_at: t.created_at,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTenant {
    #[schema(value_type = crate::schema::TenantKeyText)]
    pub tenant: String,
    #[schema(value_type = crate::schema::LabelText)]
    pub name: String,
}

#[utoipa::path(post, path = "/tenants", tag = "admin", request_body = NewTenant, responses((status = 201, body = TenantView)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewTenant>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    caller.require_global_admin()?;
    let key =
        TenantKey::parse(&body.tenant).map_err(|e| ApiError::invalid("tenant", e.to_string()))?;
    check_text("name", &body.name, 200)?;
    let tenant = tenants::create(&state.pool, key.as_str(), body.name.trim()).await?;
    Ok((StatusCode::CREATED, Json(tenant.into())))
}

#[utoipa::path(get, path = "/tenants", tag = "admin", responses((status = 200, body = Vec<TenantView>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TenantView>>, ApiError> {
    caller.require_global_admin()?;
    Ok(Json(
        tenants::list(&state.pool)
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}
