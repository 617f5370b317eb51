//! The API's settings besides `amqp`, `http` and `log` (which every service reads).

use herald_runtime::config::Secret;
use herald_storage::db::DatabaseConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub api: LimitsConfig,
    pub websocket: WebsocketTokenConfig,
}

/// `websocket.*`, the part the API reads: the secret it signs WebSocket client tokens with
/// (the same `sender-websocket` checks them with). No `deny_unknown_fields`: the sender's
/// own settings share the section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WebsocketTokenConfig {
    /// Empty: `POST /websocket/tokens` answers 503.
    pub token_secret: Secret<String>,
    /// The longest lifetime a token may be given.
    pub token_max_ttl_secs: u64,
}

impl Default for WebsocketTokenConfig {
    fn default() -> Self {
        WebsocketTokenConfig {
            token_secret: Secret::default(),
            token_max_ttl_secs: 30 * 24 * 3600,
        }
    }
}

/// `auth.*`: how JWT bearer tokens are checked. API keys need no settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens. Empty: HS256 tokens are refused.
    pub jwt_hs256_secret: Secret<String>,
    /// PEM public key for RS256 tokens (an identity provider's). Empty: refused.
    pub jwt_rs256_public_key: String,
    /// An identity provider's JWKS (`https://idp.example.org/realms/x/protocol/openid-connect/certs`):
    /// tokens naming one of its key ids are checked with that key. Empty: none.
    pub jwt_jwks_url: String,
    /// The shortest time between two fetches of the JWKS: a token naming an unknown key id
    /// fetches it again (the provider rotated its keys), but not more often than this.
    pub jwt_jwks_refresh_secs: u64,
    /// Expected `iss`, when set; tokens without `iss` are then refused.
    pub jwt_issuer: Option<String>,
    /// Expected `aud`, when set; tokens without `aud` are then refused.
    pub jwt_audience: Option<String>,
    /// Seconds of clock difference allowed on `exp` and `nbf`.
    pub jwt_leeway_secs: u64,
    /// The claim that must be `true` in a token with the role `global_admin`. Unset: no
    /// token is a global admin (global admins use API keys).
    pub jwt_global_admin_claim: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_hs256_secret: Secret::default(),
            jwt_rs256_public_key: String::new(),
            jwt_jwks_url: String::new(),
            jwt_jwks_refresh_secs: 30,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 30,
            jwt_global_admin_claim: None,
        }
    }
}

/// `api.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Requests per minute one credential (an API key, or one token) makes to the
    /// subscription and registration routes (R18). Keyed by a hash of the credential as
    /// sent, before authentication, so refused credentials are limited too.
    pub caller_per_minute: u32,
    /// Triggers per minute of one subscription (R18).
    pub trigger_per_minute: u32,
    /// How long a link code (R5) can be redeemed, in seconds.
    pub link_code_ttl_secs: u32,
}

impl LimitsConfig {
    pub fn link_code_ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::from(self.link_code_ttl_secs))
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 256 * 1024,
            caller_per_minute: 60,
            trigger_per_minute: 60,
            link_code_ttl_secs: 15 * 60,
        }
    }
}
