//! Tokens for the tenant's own WebSocket clients (R39): the API issues them, `sender-websocket`
//! checks them. HS256 with a secret both are given (`HERALD_WEBSOCKET__TOKEN_SECRET`): the
//! sender never asks the database who a client is.
//!
//! A token names one tenant and the address namespaces its client may receive for
//! (`support-bot` receives for `support-bot/42`), and expires.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub const ISSUER: &str = "herald";
pub const AUDIENCE: &str = "herald-websocket";

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsClaims {
    pub iss: String,
    pub aud: String,
    /// The tenant's key.
    pub tenant: String,
    /// The namespaces the client may receive for.
    pub ns: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    /// The token's id, for logs.
    pub jti: String,
}

impl WsClaims {
    /// Whether the token lets its client receive for `namespace`.
    pub fn allows(&self, namespace: &str) -> bool {
        self.ns.iter().any(|n| n == namespace)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsTokenError {
    #[error("no token secret is configured")]
    NoSecret,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Signs `claims` (issuer and audience are set here).
pub fn issue(secret: &str, mut claims: WsClaims) -> Result<String, WsTokenError> {
    if secret.is_empty() {
        return Err(WsTokenError::NoSecret);
    }
    claims.iss = ISSUER.into();
    claims.aud = AUDIENCE.into();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| WsTokenError::Invalid(e.to_string()))
}

/// The claims of a token this secret signed, in date, for Herald's WebSocket channel.
pub fn check(secret: &str, token: &str) -> Result<WsClaims, WsTokenError> {
    if secret.is_empty() {
        return Err(WsTokenError::NoSecret);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.leeway = 30;
    jsonwebtoken::decode::<WsClaims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map(|data| data.claims)
    .map_err(|e| WsTokenError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_in: i64) -> WsClaims {
        let now = 1_900_000_000;
        WsClaims {
            iss: String::new(),
            aud: String::new(),
            tenant: "acme".into(),
            ns: vec!["support-bot".into()],
            iat: now,
            exp: now + exp_in,
            jti: "t1".into(),
        }
    }

    #[test]
    fn a_token_checks_with_its_secret_only() {
        let mut fresh = claims(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        fresh.iat = now;
        fresh.exp = now + 600;
        let token = issue("s3cret", fresh.clone()).unwrap();
        let back = check("s3cret", &token).unwrap();
        assert_eq!(back.tenant, "acme");
        assert!(back.allows("support-bot") && !back.allows("other"));
        assert!(check("another", &token).is_err());
        assert_eq!(check("", &token), Err(WsTokenError::NoSecret));
        let mut expired = fresh;
        expired.exp = now - 3600;
        let old = issue("s3cret", expired).unwrap();
        assert!(check("s3cret", &old).is_err());
        assert_eq!(issue("", claims(60)), Err(WsTokenError::NoSecret));
    }
}
