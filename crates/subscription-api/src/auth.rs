//! Who is calling (R16, R19).
//!
//! Credentials, in `Authorization: Bearer …` (or `X-Api-Key`):
//! - an API key (`hk_…`), looked up by its hash;
//! - a JWT (HS256 with the configured secret, or RS256 with the configured public key) with
//!   claims `sub`, `role` (`global_admin` | `tenant_admin` | `user`), `tenant` (the tenant's
//!   key; absent for global admins) and `user_id` (for users).
//!
//! A global admin names the tenant to act in with the `Herald-Tenant` header.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use herald_storage::{StoreError, api_keys, tenants};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use uuid::Uuid;

use crate::config::AuthConfig;
use crate::error::ApiError;
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

/// Keys for checking JWTs, built once at start.
pub struct JwtKeys {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid auth.jwt_rs256_public_key: {0}")]
pub struct KeyError(String);

impl JwtKeys {
    pub fn from_config(config: &AuthConfig) -> Result<JwtKeys, KeyError> {
        let secret = config.jwt_hs256_secret.expose();
        let hs256 = (!secret.is_empty()).then(|| DecodingKey::from_secret(secret.as_bytes()));
        let rs256 = if config.jwt_rs256_public_key.trim().is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_rsa_pem(config.jwt_rs256_public_key.as_bytes())
                    .map_err(|e| KeyError(e.to_string()))?,
            )
        };
        Ok(JwtKeys {
            hs256,
            rs256,
            // Compose and Kubernetes pass unset variables as empty strings: empty means unset,
            // not "the issuer must be the empty string".
            issuer: config.jwt_issuer.clone().filter(|i| !i.trim().is_empty()),
            audience: config.jwt_audience.clone().filter(|a| !a.trim().is_empty()),
        })
    }

    /// Whether `token` would be accepted (signature, expiry, issuer and audience).
    pub fn accepts(&self, token: &str) -> bool {
        self.decode(token).is_ok()
    }

    fn decode(&self, token: &str) -> Result<Claims, ApiError> {
        let invalid =
            |e: jsonwebtoken::errors::Error| ApiError::unauthorized(format!("invalid token: {e}"));
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::unauthorized(format!(
                "tokens signed with {:?} are not accepted here",
                header.alg
            ))
        })?;
        let mut validation = Validation::new(header.alg);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(invalid)?
            .claims)
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
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

fn unavailable_or(error: StoreError, otherwise: ApiError) -> ApiError {
    match error {
        StoreError::NotFound => otherwise,
        other => other.into(),
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let token = credential(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("send an API key or a token: Authorization: Bearer …")
        })?;
        let mut caller = if token.starts_with("hk_") {
            let owner = api_keys::authenticate(&state.pool, token)
                .await
                .map_err(|e| {
                    unavailable_or(e, ApiError::unauthorized("unknown or revoked API key"))
                })?;
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
            let claims = state.jwt.decode(token)?;
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
}
