//! `/api-keys`: admins create keys (shown once), list them, and revoke them (R19).
//!
//! A tenant admin manages its tenant's keys (roles `tenant_admin` and `user`). A global admin
//! manages a tenant's keys with the `Herald-Tenant` header, or the global admin keys without.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::api_keys::{self, NewKey};
use herald_storage::page::Page;
use messaging_core::values::UserId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::check_text;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, not_found_as};
use crate::json::{ApiJson, ApiPath, ApiQuery};
use crate::startup::AppState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = crate::schema::RoleName)]
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The first characters, to tell keys apart.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<api_keys::ApiKey> for KeyView {
    fn from(k: api_keys::ApiKey) -> Self {
        KeyView {
            id: k.id,
            name: k.name,
            role: k.role,
            user_id: k.user_id,
            prefix: k.prefix,
            created_at: k.created_at,
            created_by: k.created_by,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: KeyView,
    /// The key itself. It is shown only in this response; only its hash is stored.
    pub api_key: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewKeyRequest {
    #[schema(value_type = crate::schema::LabelText)]
    pub name: String,
    #[schema(value_type = crate::schema::RoleName)]
    pub role: Role,
    /// For role `user` only, and required there.
    #[serde(default)]
    #[schema(value_type = Option<crate::schema::UserIdText>)]
    pub user_id: Option<String>,
}

/// The tenant whose keys this caller manages: `Some(id)`, or `None` for the global keys.
fn scope(caller: &Caller) -> Result<Option<Uuid>, ApiError> {
    caller.require_admin()?;
    Ok(caller.tenant.as_ref().map(|t| t.id))
}

#[utoipa::path(post, path = "/api-keys", tag = "admin", request_body = NewKeyRequest, responses((status = 201, description = "The key, shown only in this response", body = CreatedKey)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let tenant_id = scope(&caller)?;
    check_text("name", &body.name, 200)?;
    match (tenant_id, body.role) {
        (None, Role::GlobalAdmin) | (Some(_), Role::TenantAdmin | Role::User) => {}
        (None, _) => {
            return Err(ApiError::invalid(
                "role",
                "keys outside a tenant are global_admin keys; name a tenant with Herald-Tenant for others",
            ));
        }
        (Some(_), Role::GlobalAdmin) => {
            return Err(ApiError::invalid(
                "role",
                "global_admin keys belong to no tenant; create them without Herald-Tenant",
            ));
        }
    }
    let user_id = match (body.role, &body.user_id) {
        (Role::User, Some(id)) => {
            Some(UserId::parse(id).map_err(|e| ApiError::invalid("userId", e.to_string()))?)
        }
        (Role::User, None) => {
            return Err(ApiError::invalid(
                "userId",
                "a user's key needs the user's id",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "userId",
                "only keys of role user have a user id",
            ));
        }
        (_, None) => None,
    };
    let (key, plain) = api_keys::create(
        &state.pool,
        NewKey {
            tenant_id,
            role: body.role,
            user_id: user_id.as_ref().map(|u| u.as_str()),
            name: body.name.trim(),
            created_by: &caller.actor,
        },
    )
    .await?;
    tracing::info!(key_id = %key.id, role = %key.role, actor = %caller.actor, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            key: key.into(),
            api_key: plain,
        }),
    ))
}

#[utoipa::path(get, path = "/api-keys", tag = "admin", params(super::Paging), responses((status = 200, body = Page<KeyView>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(paging): ApiQuery<super::Paging>,
) -> Result<Json<Page<KeyView>>, ApiError> {
    let tenant_id = scope(&caller)?;
    Ok(Json(
        api_keys::list(&state.pool, tenant_id, paging.request()?)
            .await?
            .map(Into::into),
    ))
}

#[utoipa::path(delete, path = "/api-keys/{id}", tag = "admin", params(("id" = Uuid, Path)), responses((status = 204, description = "Revoked")))]
async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let tenant_id = scope(&caller)?;
    api_keys::revoke(&state.pool, tenant_id, id)
        .await
        .map_err(not_found_as("API key"))?;
    tracing::info!(key_id = %id, actor = %caller.actor, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}
