//! `/websocket/tokens`: a tenant admin issues a token for one of the tenant's own programs
//! that receive messages over WebSocket (R39). The token names the tenant and the address
//! namespaces the program may receive for (`support-bot` receives for `support-bot/42`), and
//! expires; `sender-websocket` checks it with the same secret
//! (`HERALD_WEBSOCKET__TOKEN_SECRET`). Shown once, not stored: a leaked token is replaced by
//! changing the secret, or waited out.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_jwks::ws_token::{self, WsClaims};
use messaging_core::values::WsKey;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::startup::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(issue))
}

/// At most this many namespaces in one token.
pub const MAX_NAMESPACES: usize = 20;
/// A day, when the request names no lifetime.
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;
pub const MIN_TTL_SECS: u64 = 60;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    /// The address namespaces the client may receive for, 1 to 20.
    #[schema(min_items = 1, max_items = 20, value_type = Vec<crate::schema::WsNamespaceText>)]
    pub namespaces: Vec<String>,
    /// Seconds the token is valid (default a day): 60 up to `websocket.token_max_ttl_secs`,
    /// which is 30 days unless the operator set it lower.
    // Read as a number: JSON has no integers apart, and `3600.0` is a whole number too.
    #[schema(value_type = Option<u64>, minimum = 60, maximum = 2_592_000)]
    pub ttl_secs: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    /// Send it as the `token` of the client's `hello` frame. Shown once.
    pub token: String,
    pub namespaces: Vec<String>,
    pub expires_at: DateTime<Utc>,
}

/// A token for a WebSocket client of the tenant (admins only).
#[utoipa::path(
    post,
    path = "/websocket/tokens",
    tag = "websocket",
    request_body = TokenRequest,
    responses(
        (status = 201, body = TokenView),
        (status = 503, description = "No token secret is configured (HERALD_WEBSOCKET__TOKEN_SECRET)"),
    ),
)]
async fn issue(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<(StatusCode, Json<TokenView>), ApiError> {
    caller.require_admin()?;
    let tenant = caller.tenant()?;
    if body.namespaces.is_empty() || body.namespaces.len() > MAX_NAMESPACES {
        return Err(ApiError::invalid(
            "namespaces",
            format!("name 1 to {MAX_NAMESPACES} namespaces"),
        ));
    }
    let mut namespaces = Vec::with_capacity(body.namespaces.len());
    for namespace in &body.namespaces {
        // A namespace is what an address has before its `/`.
        let valid = WsKey::parse(&format!("{namespace}/x"))
            .is_ok_and(|key| key.namespace() == namespace.as_str());
        if !valid {
            return Err(ApiError::invalid(
                "namespaces",
                format!("{namespace:?} is not a namespace: 1 to 63 of a-z, 0-9, '-' and '_'"),
            ));
        }
        namespaces.push(namespace.clone());
    }
    let max = state.websocket.token_max_ttl_secs.max(MIN_TTL_SECS);
    let ttl = match body.ttl_secs {
        None => DEFAULT_TTL_SECS.min(max),
        Some(secs) if secs.fract() == 0.0 && secs >= 0.0 && secs <= max as f64 => secs as u64,
        Some(_) => u64::MAX,
    };
    if !(MIN_TTL_SECS..=max).contains(&ttl) {
        return Err(ApiError::invalid(
            "ttlSecs",
            format!("between {MIN_TTL_SECS} and {max} seconds"),
        ));
    }
    let now = Utc::now();
    let expires_at = now + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX));
    let claims = WsClaims {
        iss: String::new(),
        aud: String::new(),
        tenant: tenant.key.clone(),
        ns: namespaces.clone(),
        iat: now.timestamp(),
        exp: expires_at.timestamp(),
        jti: uuid::Uuid::now_v7().to_string(),
    };
    let token =
        ws_token::issue(state.websocket.token_secret.expose(), claims).map_err(|e| match e {
            ws_token::WsTokenError::NoSecret => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service unavailable",
                "WebSocket tokens are not configured: set HERALD_WEBSOCKET__TOKEN_SECRET",
            ),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                other.to_string(),
            ),
        })?;
    tracing::info!(tenant = %tenant.key, namespaces = ?namespaces, actor = %caller.actor, "issued a WebSocket token");
    Ok((
        StatusCode::CREATED,
        Json(TokenView {
            token,
            namespaces,
            expires_at,
        }),
    ))
}
