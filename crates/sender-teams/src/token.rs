//! The bot's access token for the Bot Connector: the OAuth client-credentials grant against
//! Microsoft Entra ID (`login.microsoftonline.com/{tenant}/oauth2/v2.0/token`, tenant
//! `botframework.com` for a multi-tenant bot), kept until shortly before it expires.
//!
//! One request at a time: while a token is fetched, every sender waits for that one instead
//! of asking too.

use std::time::Duration;

use herald_runtime::config::Secret;
use sender_runtime::SendError;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A token is renewed this long before it expires (Microsoft's tokens live about an hour).
pub const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

pub struct Tokens {
    client: reqwest::Client,
    url: reqwest::Url,
    app_id: String,
    app_password: Secret<String>,
    scope: String,
    current: Mutex<Option<Token>>,
}

#[derive(Clone)]
struct Token {
    value: String,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct Granted {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct Refused {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl Tokens {
    pub fn new(
        client: reqwest::Client,
        url: reqwest::Url,
        app_id: String,
        app_password: Secret<String>,
        scope: String,
    ) -> Tokens {
        Tokens {
            client,
            url,
            app_id,
            app_password,
            scope,
            current: Mutex::new(None),
        }
    }

    /// A valid token: the cached one, or a new one.
    pub async fn get(&self) -> Result<String, SendError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.value.clone());
        }
        let token = self.fetch().await?;
        *current = Some(token.clone());
        Ok(token.value)
    }

    /// Drops the cached token if it is still `rejected` (the Bot Connector answered 401 to
    /// it), so the next call fetches a new one.
    pub async fn forget(&self, rejected: &str) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|t| t.value == rejected) {
            *current = None;
        }
    }

    async fn fetch(&self) -> Result<Token, SendError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.app_id.as_str()),
            ("client_secret", self.app_password.expose().as_str()),
            ("scope", self.scope.as_str()),
        ];
        let asked = Instant::now();
        let response = self
            .client
            .post(self.url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| crate::connector::transport_error("the token endpoint", &e))?;
        let status = response.status();
        if status.is_success() {
            let granted: Granted = response.json().await.map_err(|e| {
                SendError::provider_fault(
                    "provider_error",
                    format!("the token endpoint's answer cannot be read: {e}"),
                )
            })?;
            let lifetime = Duration::from_secs(granted.expires_in);
            tracing::debug!(expires_in = granted.expires_in, "got a Bot Connector token");
            return Ok(Token {
                value: granted.access_token,
                // A token that lives less than the margin is used once, then renewed.
                renew_at: asked + lifetime.saturating_sub(RENEW_BEFORE),
            });
        }
        let refused: Refused = response.json().await.unwrap_or_default();
        // The description names the app and the tenant, never the secret.
        let detail = format!(
            "the token endpoint answered {status}: {} {}",
            refused.error, refused.error_description
        );
        Err(match status.as_u16() {
            400 | 401 | 403 => SendError::unhealthy("provider_rejected_account", detail),
            429 => SendError::throttled(None, detail),
            _ => SendError::provider_fault("provider_error", detail),
        })
    }
}
