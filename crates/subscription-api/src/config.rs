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
    pub verification: VerificationConfig,
}

/// `verification.*`: how addresses are proven before Herald sends them anything but the
/// proof itself (issue #17).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerificationConfig {
    /// The key codes are hashed with (HMAC-SHA-256), the same on every API replica. Empty: a
    /// random key per process, said in the log: codes then fail after a restart and on
    /// another replica.
    pub code_secret: Secret<String>,
    /// Where people reach this API from outside, for the link mailed to an email address
    /// (`https://herald.example.org`).
    pub public_url: String,
    /// How long a six-digit code (SMS, XMPP) can be confirmed, in seconds.
    pub code_ttl_secs: u32,
    /// How long a mailed link can be opened, in seconds.
    pub link_ttl_secs: u32,
    /// Wrong codes before a code is void.
    pub attempts: i32,
    /// Verification messages to one address in 24 hours, whoever asks.
    pub per_address_per_day: i64,
    /// Verification messages one tenant sends in an hour.
    pub per_tenant_per_hour: i64,
}

impl Default for VerificationConfig {
    fn default() -> Self {
        VerificationConfig {
            code_secret: Secret::default(),
            public_url: "http://127.0.0.1:8080".into(),
            code_ttl_secs: 15 * 60,
            link_ttl_secs: 24 * 3600,
            attempts: 5,
            per_address_per_day: 5,
            per_tenant_per_hour: 200,
        }
    }
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
    /// Requests per minute one caller (an API key, or a token's subject) makes to the
    /// subscription and registration routes (R18), counted after authentication over every
    /// replica.
    pub caller_per_minute: u32,
    /// Triggers per minute of one subscription (R18).
    pub trigger_per_minute: u32,
    /// Direct messages and triggers one tenant sends per minute, over every replica (0: no
    /// limit).
    pub tenant_messages_per_minute: u32,
    /// Recipients one tenant reaches per minute: the people a direct message names, the
    /// enabled registrations of a triggered subscription (0: no limit). A single request
    /// bigger than the whole minute goes through when the tenant has sent nothing for a
    /// minute, and the tenant then waits.
    pub tenant_recipients_per_minute: u32,
    /// Failed authentications per minute from one client address (IPv6: one /64) before
    /// every request from it gets 429 for a while, without being looked at. Counted per
    /// replica, before anything is looked up.
    pub ip_failures_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` names the client (`10.0.0.0/8, 192.0.2.7`). A request
    /// from anyone else is attributed to its own address, whatever it sends.
    pub trusted_proxies: String,
    /// How often each replica adds its counts to the shared ones and reads the others'
    /// (milliseconds). Between two syncs, N replicas may together let through up to N times
    /// what one of them counts.
    pub limits_sync_ms: u64,
    /// How long a link code (R5) can be redeemed, in seconds.
    pub link_code_ttl_secs: u32,
    /// Addresses one person may have on one channel.
    pub addresses_per_channel: i64,
    /// Registrations one person may have, over all subscriptions.
    pub registrations_per_user: i64,
    /// Country calling codes SMS may go to (`41,49,1`), for tenants without their own list.
    /// Empty: no SMS addresses until a list is set (toll fraud sends to expensive ranges).
    pub sms_country_codes: String,
}

impl LimitsConfig {
    /// [`LimitsConfig::sms_country_codes`] as a list.
    pub fn sms_country_codes(&self) -> Result<Vec<String>, String> {
        parse_country_codes(&self.sms_country_codes)
    }

    /// [`LimitsConfig::trusted_proxies`] as networks (a bare address is a /32 or /128).
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("api.trusted_proxies: `{p}` is not an address or network"))
            })
            .collect()
    }

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
            tenant_messages_per_minute: 60_000,
            tenant_recipients_per_minute: 600_000,
            ip_failures_per_minute: 60,
            trusted_proxies: String::new(),
            limits_sync_ms: 250,
            link_code_ttl_secs: 15 * 60,
            addresses_per_channel: 5,
            registrations_per_user: 200,
            sms_country_codes: String::new(),
        }
    }
}

/// `41, 49,1` -> `["41", "49", "1"]`; a code is one to three digits (ITU-T E.164).
pub fn parse_country_codes(raw: &str) -> Result<Vec<String>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let c = c.strip_prefix('+').unwrap_or(c);
            if (1..=3).contains(&c.len())
                && c.bytes().all(|b| b.is_ascii_digit())
                && !c.starts_with('0')
            {
                Ok(c.to_owned())
            } else {
                Err(format!(
                    "`{c}` is not a country calling code (1 to 3 digits, like 41)"
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes_parse() {
        assert_eq!(
            parse_country_codes(" 41, +49,1 ,").unwrap(),
            ["41", "49", "1"]
        );
        assert!(parse_country_codes("").unwrap().is_empty());
        assert!(parse_country_codes("4100").is_err());
        assert!(parse_country_codes("0").is_err());
        assert!(parse_country_codes("x1").is_err());
    }

    #[test]
    fn trusted_proxies_parse() {
        let config = LimitsConfig {
            trusted_proxies: " 10.0.0.0/8, 192.0.2.7 ,::1,".into(),
            ..LimitsConfig::default()
        };
        let nets = config.trusted_proxies().unwrap();
        assert_eq!(nets.len(), 3);
        assert!(nets[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(nets[1].prefix_len(), 32);
        let bad = LimitsConfig {
            trusted_proxies: "proxy.local".into(),
            ..LimitsConfig::default()
        };
        assert!(bad.trusted_proxies().is_err());
    }
}
