//! Who is calling (R16, R19).
//!
//! Credentials, in `Authorization: Bearer …` (or `X-Api-Key`):
//! - an API key (`hk_…`), looked up by its hash;
//! - a JWT (HS256 with the configured secret, RS256 with the configured public key, or a key
//!   of the identity provider's JWKS, see [`crate::jwt`]) with claims `sub`, `role`
//!   (`global_admin` | `tenant_admin` | `user`), `tenant` (the tenant's key; absent for
//!   global admins) and `user_id` (for users).
//!
//! A global admin names the tenant to act in with the `Herald-Tenant` header.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use herald_storage::{StoreError, api_keys, tenants};
use uuid::Uuid;

use crate::error::ApiError;
pub use crate::jwt::{JwtKeys, KeyError};
use crate::startup::AppState;

pub const TENANT_HEADER: &str = "herald-tenant";

pub use messaging_core::Role;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRef {
    pub id: Uuid,
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub role: Role,
    /// The tenant this request acts in; `None` only for a global admin without the header.
    pub tenant: Option<TenantRef>,
    /// The tenant's id for the calling person (role user).
    pub user_id: Option<String>,
    /// Who to record as creator or modifier: `api-key:<id>` or `jwt:<sub>`.
    pub actor: String,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        matches!(self.role, Role::GlobalAdmin | Role::TenantAdmin)
    }

    pub fn is_global_admin(&self) -> bool {
        self.role == Role::GlobalAdmin
    }

    /// The tenant in scope, which every tenant-owned route needs.
    pub fn tenant(&self) -> Result<&TenantRef, ApiError> {
        self.tenant.as_ref().ok_or_else(|| {
            ApiError::bad_request(
                "a global admin names the tenant to act in with the Herald-Tenant header",
            )
        })
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs an admin role"))
        }
    }

    pub fn require_global_admin(&self) -> Result<(), ApiError> {
        if self.is_global_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs the global admin role"))
        }
    }
}

/// The credential a request presents, exactly as authentication reads it (the rate limiter
/// keys on the same value, so no header trick gives a caller a fresh bucket).
pub fn credential(headers: &axum::http::HeaderMap) -> Option<&str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| header("x-api-key"))
        .map(str::trim)
}

/// A request with both an `Authorization` and an `X-Api-Key` that differ: which of them
/// counts would be a guess (a proxy may add one, a client another), so neither does.
pub fn conflicting_credentials(headers: &axum::http::HeaderMap) -> bool {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().trim())
    };
    match (header("authorization"), header("x-api-key")) {
        (Some(authorization), Some(key)) => {
            let bearer = authorization
                .strip_prefix("Bearer ")
                .or_else(|| authorization.strip_prefix("bearer "))
                .map(str::trim);
            bearer != Some(key)
        }
        _ => false,
    }
}

fn unavailable_or(error: StoreError, otherwise: ApiError) -> ApiError {
    match error {
        StoreError::NotFound => otherwise,
        other => other.into(),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// Authenticates once per request: the rate-limit middleware may have done it already.
    /// A client that failed too often lately is refused before anything is looked at, and
    /// every failure counts toward that.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let client = state.limits.client(parts);
        state.limits.refuse_failing(client)?;
        match authenticate(parts, state).await {
            Ok(caller) => {
                parts.extensions.insert(caller.clone());
                Ok(caller)
            }
            Err(error) => {
                if error.status == axum::http::StatusCode::UNAUTHORIZED {
                    state.limits.note_failure(client);
                }
                Err(error)
            }
        }
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    if conflicting_credentials(&parts.headers) {
        return Err(ApiError::unauthorized(
            "Authorization and X-Api-Key name different credentials: send one",
        ));
    }
    let token = credential(&parts.headers).ok_or_else(|| {
        ApiError::unauthorized("send an API key or a token: Authorization: Bearer …")
    })?;
    let mut caller = if token.starts_with("hk_") {
        let unknown = || ApiError::unauthorized("unknown or revoked API key");
        if state.limits.known_unknown_key(token) {
            return Err(unknown());
        }
        let owner = match api_keys::authenticate(&state.pool, token).await {
            Ok(owner) => owner,
            Err(StoreError::NotFound) => {
                state.limits.note_unknown_key(token);
                return Err(unknown());
            }
            Err(other) => return Err(other.into()),
        };
        let role = owner.role;
        Caller {
            role,
            tenant: owner
                .tenant_id
                .zip(owner.tenant_key)
                .map(|(id, key)| TenantRef { id, key }),
            user_id: owner.user_id,
            actor: format!("api-key:{}", owner.id),
        }
    } else {
        let claims = state.jwt.decode(token).await?;
        let tenant = match (&claims.tenant, claims.role) {
            (_, Role::GlobalAdmin) => None,
            (Some(key), _) => {
                let tenant = tenants::by_key(&state.pool, key).await.map_err(|e| {
                    unavailable_or(
                        e,
                        ApiError::unauthorized("the token names an unknown tenant"),
                    )
                })?;
                Some(TenantRef {
                    id: tenant.id,
                    key: tenant.key,
                })
            }
            (None, _) => return Err(ApiError::unauthorized("the token has no tenant claim")),
        };
        if claims.role == Role::User && claims.user_id.is_none() {
            return Err(ApiError::unauthorized(
                "a user's token needs a user_id claim",
            ));
        }
        Caller {
            role: claims.role,
            tenant,
            user_id: claims.user_id,
            actor: format!("jwt:{}", claims.sub),
        }
    };
    if caller.role == Role::GlobalAdmin
        && let Some(key) = parts
            .headers
            .get(TENANT_HEADER)
            .and_then(|v| v.to_str().ok())
    {
        let tenant = tenants::by_key(&state.pool, key.trim())
            .await
            .map_err(|e| unavailable_or(e, ApiError::not_found("tenant")))?;
        caller.tenant = Some(TenantRef {
            id: tenant.id,
            key: tenant.key,
        });
    }
    Ok(caller)
}
