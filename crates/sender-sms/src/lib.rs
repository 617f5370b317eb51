//! The SMS channel: Twilio's Messages API, or any provider that speaks it.
//!
//! `POST {base_url}/2010-04-01/Accounts/{sid}/Messages.json` with basic auth and the form
//! fields `To`, `From` (or `MessagingServiceSid`) and `Body`. Provider answers map to exactly
//! one kind of failure:
//!
//! | answer | kind |
//! |---|---|
//! | 201 | delivered (to the provider) |
//! | 400 with an error about the recipient (21211 invalid number, 21610 opted out, 21614 not a mobile, ...) | permanent |
//! | 400 about our sending number or service (21606, 21212, 21659), 401, 403, 404 | unhealthy (configuration) |
//! | 429 | retry after its `Retry-After`, for the whole account |
//! | 5xx, timeouts, dropped connections | retry, counted by the circuit breaker |
//! | connection refused | unhealthy |

use std::time::Duration;

use herald_runtime::config::Secret;
use messaging_core::job::SendJob;
use messaging_core::values::E164;
use messaging_core::{Address, Channel};
use sender_runtime::limits::RateLimits;
use sender_runtime::{BuildError, Built, ChannelSender, Receipt, SendError};
use serde::Deserialize;

/// `sms.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsSettings {
    /// The provider's API root. Twilio's by default; tests point it at a fake.
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: Secret<String>,
    /// The sending number (E.164). Either this or `messaging_service_sid`. In an environment
    /// variable, quote it inside the value (`'"+15005550006"'`), or the `+` is lost.
    #[serde(deserialize_with = "herald_runtime::config::lenient_string")]
    pub from: Option<String>,
    /// A Twilio Messaging Service, which picks the sending number itself.
    pub messaging_service_sid: Option<String>,
    pub timeout_ms: u64,
}

impl Default for SmsSettings {
    fn default() -> Self {
        SmsSettings {
            base_url: "https://api.twilio.com".into(),
            account_sid: String::new(),
            auth_token: Secret::default(),
            from: None,
            messaging_service_sid: None,
            timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SmsConfig {
    pub sms: SmsSettings,
}

#[derive(Debug, Clone)]
enum Origin {
    Number(E164),
    Service(String),
}

pub struct SmsSender {
    client: reqwest::Client,
    messages_url: String,
    account_url: String,
    account_sid: String,
    auth_token: Secret<String>,
    origin: Origin,
}

/// Twilio errors that are about the recipient: sending to this number will never work.
const RECIPIENT_ERRORS: &[u32] = &[
    21211, 21214, 21217, 21401, 21407, 21408, 21421, 21610, 21612, 21614,
];
/// Twilio errors that are about our own sending setup: every message would fail alike.
const ACCOUNT_ERRORS: &[u32] = &[20003, 20404, 21212, 21606, 21659, 21660, 21661];

impl ChannelSender for SmsSender {
    const CHANNEL: Channel = Channel::Sms;
    type Config = SmsConfig;

    fn default_limits() -> RateLimits {
        RateLimits {
            // A Messaging Service queues at the provider; a single long-code number is
            // slower, and operators lower this for it (HERALD_SENDER__ACCOUNT_PER_SECOND).
            account_per_second: 10,
            account_burst: 10,
            // Never more than a few texts to one phone in a row, then one per 5 s.
            recipient_interval: Duration::from_secs(5),
            recipient_burst: 3,
            recipient_windows: Vec::new(),
        }
    }

    async fn build(config: SmsConfig) -> Result<Built<Self>, BuildError> {
        let settings = config.sms;
        if settings.account_sid.is_empty() || settings.auth_token.expose().is_empty() {
            return Ok(Built::NotConfigured(
                "set HERALD_SMS__ACCOUNT_SID and HERALD_SMS__AUTH_TOKEN".into(),
            ));
        }
        let invalid = |reason: String| BuildError {
            channel: Channel::Sms,
            reason,
        };
        // Compose and Kubernetes pass an unset variable as an empty string: that means unset.
        let from = settings
            .from
            .as_deref()
            .map(str::trim)
            .filter(|f| !f.is_empty());
        let origin = match (from, &settings.messaging_service_sid) {
            (_, Some(service)) if !service.is_empty() => Origin::Service(service.clone()),
            (Some(from), _) => Origin::Number(E164::parse(from).map_err(|e| {
                invalid(format!(
                    "HERALD_SMS__FROM {from:?}: {e} (in an environment variable, quote the number inside the value: '\"+15005550006\"')"
                ))
            })?),
            _ => {
                return Ok(Built::NotConfigured(
                    "set HERALD_SMS__FROM or HERALD_SMS__MESSAGING_SERVICE_SID".into(),
                ));
            }
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build()
            .map_err(|e| invalid(format!("HTTP client: {e}")))?;
        let base = settings.base_url.trim_end_matches('/');
        Ok(Built::Ready(SmsSender {
            client,
            messages_url: format!(
                "{base}/2010-04-01/Accounts/{}/Messages.json",
                settings.account_sid
            ),
            account_url: format!("{base}/2010-04-01/Accounts/{}.json", settings.account_sid),
            account_sid: settings.account_sid,
            auth_token: settings.auth_token,
            origin,
        }))
    }

    async fn send(&self, job: &SendJob) -> Result<Receipt, SendError> {
        let Address::Sms(to) = &job.to else {
            return Err(SendError::permanent(
                "invalid_address",
                "not a phone number",
            ));
        };
        let body = match &job.content.subject {
            Some(subject) if !subject.is_empty() => format!("{subject}\n{}", job.content.text),
            _ => job.content.text.clone(),
        };
        let mut form = vec![("To", to.as_str()), ("Body", body.as_str())];
        match &self.origin {
            Origin::Number(number) => form.push(("From", number.as_str())),
            Origin::Service(sid) => form.push(("MessagingServiceSid", sid.as_str())),
        }
        let response = self
            .client
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .form(&form)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if status.is_success() {
            let sid = body.get("sid").and_then(|s| s.as_str()).map(str::to_owned);
            return Ok(Receipt {
                provider_message_id: sid,
            });
        }
        Err(classify(status.as_u16(), &body, retry_after))
    }

    async fn probe(&self) -> Result<(), String> {
        let response = self
            .client
            .get(&self.account_url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("account lookup answered {}", response.status()))
        }
    }
}

/// Maps a provider error answer to exactly one kind of failure.
fn classify(status: u16, body: &serde_json::Value, retry_after: Option<Duration>) -> SendError {
    let code = body.get("code").and_then(|c| c.as_u64()).map(|c| c as u32);
    let text = body
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("no message");
    let detail = match code {
        Some(code) => format!("provider answered {status}, error {code}: {text}"),
        None => format!("provider answered {status}: {text}"),
    };
    match (status, code) {
        (429, _) => SendError::throttled(retry_after, detail),
        (_, Some(code)) if RECIPIENT_ERRORS.contains(&code) => {
            let kind = if code == 21610 {
                "opted_out"
            } else {
                "invalid_address"
            };
            SendError::permanent(kind, detail)
        }
        (_, Some(code)) if ACCOUNT_ERRORS.contains(&code) => {
            SendError::unhealthy("provider_rejected_account", detail)
        }
        (401 | 403 | 404, _) => SendError::unhealthy("provider_rejected_account", detail),
        (500..=599, _) => SendError::provider_fault("provider_error", detail),
        (400..=499, _) => SendError::permanent("rejected", detail),
        _ => SendError::provider_fault("provider_error", detail),
    }
}

fn transport_error(error: reqwest::Error) -> SendError {
    if error.is_connect() {
        SendError::unhealthy(
            "provider_unreachable",
            format!("cannot connect to the provider: {error}"),
        )
    } else if error.is_timeout() {
        SendError::provider_fault(
            "timeout",
            format!("the provider did not answer in time: {error}"),
        )
    } else {
        SendError::provider_fault(
            "transport",
            format!("the connection to the provider failed: {error}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messaging_core::failure::FailureClass;
    use serde_json::json;

    #[test]
    fn provider_answers_map_to_one_kind_each() {
        let class = |status, body: serde_json::Value| match classify(status, &body, None) {
            SendError::Retry(r) => (
                if r.throttles_account {
                    "throttled"
                } else {
                    "retry"
                },
                r.failure.class,
            ),
            SendError::Permanent(f) => ("permanent", f.class),
            SendError::Unhealthy(f) => ("unhealthy", f.class),
        };
        assert_eq!(
            class(400, json!({"code": 21211})),
            ("permanent", FailureClass::Permanent)
        );
        assert_eq!(
            class(400, json!({"code": 21610})),
            ("permanent", FailureClass::Permanent)
        );
        assert_eq!(
            class(400, json!({"code": 21606})),
            ("unhealthy", FailureClass::Unhealthy)
        );
        assert_eq!(
            class(401, json!({"code": 20003})),
            ("unhealthy", FailureClass::Unhealthy)
        );
        assert_eq!(
            class(429, json!({})),
            ("throttled", FailureClass::Temporary)
        );
        assert_eq!(class(503, json!({})), ("retry", FailureClass::Temporary));
        assert_eq!(
            class(400, json!({"code": 12345})),
            ("permanent", FailureClass::Permanent)
        );
    }

    #[test]
    fn a_number_read_from_the_environment_is_not_a_type_error() {
        let settings: SmsSettings =
            serde_json::from_value(json!({"from": 15005550006u64})).unwrap();
        assert_eq!(settings.from.as_deref(), Some("15005550006"));
        let settings: SmsSettings =
            serde_json::from_value(json!({"from": "+15005550006"})).unwrap();
        assert_eq!(settings.from.as_deref(), Some("+15005550006"));
    }

    #[test]
    fn opt_outs_are_named_as_such() {
        let SendError::Permanent(failure) = classify(
            400,
            &json!({"code": 21610, "message": "unsubscribed"}),
            None,
        ) else {
            panic!()
        };
        assert_eq!(failure.code, "opted_out");
        assert!(failure.message.contains("21610"));
    }
}
