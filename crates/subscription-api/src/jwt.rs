//! Checking JWT bearer tokens (R19): the keys, the claims, and an identity provider's JWKS.
//!
//! Keys: an HS256 secret and an RS256 public key from configuration (tests, simple setups),
//! and the keys of an identity provider's JWKS URL (Keycloak, Auth0, any OIDC provider),
//! fetched when a token names a key id (`kid`) not seen yet, at most once per
//! `auth.jwt_jwks_refresh_secs` (30 s by default), so random key ids cannot make the API
//! hammer the provider.
//!
//! Claims: `exp` and `sub` always; `iss` and `aud` whenever they are configured (a token
//! without them is refused, not waved through); `nbf` honoured; a configurable leeway for
//! clocks. The `global_admin` role never comes from a token unless configuration names the
//! claim that grants it and the token carries that claim as `true`.

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use herald_jwks::{KeyError as JwksError, KeySet, Source};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::auth::Role;
use crate::config::AuthConfig;
use crate::error::ApiError;

/// The claims Herald reads.
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    /// Every other claim: the configured global-admin claim is read from here.
    #[serde(flatten)]
    other: HashMap<String, serde_json::Value>,
}

/// Keys and rules for checking JWTs, built once at start.
pub struct JwtKeys {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    jwks: Option<KeySet>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
    global_admin_claim: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid auth.jwt_rs256_public_key: {0}")]
    Rs256(String),
    #[error("invalid auth.jwt_jwks_url {url:?}: {why}")]
    JwksUrl { url: String, why: String },
}

impl JwtKeys {
    pub fn from_config(config: &AuthConfig) -> Result<JwtKeys, KeyError> {
        let secret = config.jwt_hs256_secret.expose();
        let hs256 = (!secret.is_empty()).then(|| DecodingKey::from_secret(secret.as_bytes()));
        let rs256 = if config.jwt_rs256_public_key.trim().is_empty() {
            None
        } else {
            Some(
                DecodingKey::from_rsa_pem(config.jwt_rs256_public_key.as_bytes())
                    .map_err(|e| KeyError::Rs256(e.to_string()))?,
            )
        };
        let url = config.jwt_jwks_url.trim();
        let jwks = if url.is_empty() {
            None
        } else {
            let bad = |e: herald_jwks::UrlError| KeyError::JwksUrl {
                url: url.to_owned(),
                why: e.why,
            };
            let source = Source::Jwks(herald_jwks::parse_url(url).map_err(bad)?);
            let min_refresh = Duration::from_secs(config.jwt_jwks_refresh_secs);
            Some(KeySet::new(source, min_refresh).map_err(bad)?)
        };
        // Compose and Kubernetes pass unset variables as empty strings: empty means unset,
        // not "the issuer must be the empty string".
        let set = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Ok(JwtKeys {
            hs256,
            rs256,
            jwks,
            issuer: set(&config.jwt_issuer),
            audience: set(&config.jwt_audience),
            leeway_secs: config.jwt_leeway_secs,
            global_admin_claim: set(&config.jwt_global_admin_claim),
        })
    }

    /// Whether `token` would be accepted (signature, times, issuer, audience, role).
    pub async fn accepts(&self, token: &str) -> bool {
        self.decode(token).await.is_ok()
    }

    /// The token's claims, once its signature and every configured rule checked out.
    pub async fn decode(&self, token: &str) -> Result<Claims, ApiError> {
        let invalid =
            |e: jsonwebtoken::errors::Error| ApiError::unauthorized(format!("invalid token: {e}"));
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let (key, alg) = self.key_for(header.alg, header.kid.as_deref()).await?;
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(invalid)?
            .claims;
        if claims.role == Role::GlobalAdmin {
            let granted = self.global_admin_claim.as_ref().is_some_and(|claim| {
                claims.other.get(claim) == Some(&serde_json::Value::Bool(true))
            });
            if !granted {
                return Err(ApiError::unauthorized(match &self.global_admin_claim {
                    None => "this server takes the global_admin role from API keys only (auth.jwt_global_admin_claim is not set)".to_owned(),
                    Some(claim) => format!("a global_admin token needs the claim {claim:?}: true"),
                }));
            }
        }
        Ok(claims)
    }

    /// The key that checks a token with this algorithm and key id.
    async fn key_for(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<(DecodingKey, Algorithm), ApiError> {
        if let (Some(jwks), Some(kid)) = (&self.jwks, kid) {
            // A provider's keys are asymmetric: an HS256 token naming one of them is the
            // algorithm-confusion attack, never a real token.
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(ApiError::unauthorized(
                    "a token signed with a shared secret cannot name a key id of the identity provider",
                ));
            }
            let key = jwks.key(kid).await.map_err(|e| match e {
                JwksError::Unknown(_) => ApiError::unauthorized(e.to_string()),
                JwksError::Unavailable(_) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service unavailable",
                    "the identity provider's signing keys cannot be fetched; try again later",
                ),
            })?;
            if let Some(expected) = key.algorithm.filter(|expected| *expected != alg) {
                return Err(ApiError::unauthorized(format!(
                    "the key {kid:?} is for {expected:?}, the token says {alg:?}"
                )));
            }
            return Ok((key.decoding, alg));
        }
        let key = match alg {
            Algorithm::HS256 => self.hs256.clone(),
            Algorithm::RS256 => self.rs256.clone(),
            _ => None,
        };
        match key {
            Some(key) => Ok((key, alg)),
            None if self.jwks.is_some() => Err(ApiError::unauthorized(
                "the token names no key id (kid) of the identity provider",
            )),
            None => Err(ApiError::unauthorized(format!(
                "tokens signed with {alg:?} are not accepted here"
            ))),
        }
    }
}
