//! The Bot Connector REST API: `POST {serviceUrl}/v3/conversations/{id}/activities`, and its
//! answers mapped to exactly one kind of failure (the table in the crate's documentation).

use std::net::IpAddr;
use std::time::Duration;

use axum::http::HeaderMap;
use messaging_core::values::TeamsChat;
use sender_runtime::{RetryLater, SendError};
use serde::Deserialize;
use serde_json::json;

/// Where a Bot Connector may be: the service URLs Teams sends (`smba.trafficmanager.net` and
/// the government clouds' hosts). A service URL comes from an activity the Bot Framework
/// signed, but Herald hands its token to that host, so it is checked on every send too.
pub const DEFAULT_SERVICE_HOSTS: &str = "smba.trafficmanager.net,smba.infra.gcc.teams.microsoft.com,smba.infra.gov.teams.microsoft.us,smba.infra.dod.teams.microsoft.us";

/// The hosts Herald sends its token to.
#[derive(Debug, Clone)]
pub struct ServiceHosts(Vec<String>);

impl ServiceHosts {
    /// From a comma-separated list; an entry `.example.org` also allows its subdomains.
    pub fn parse(list: &str) -> ServiceHosts {
        ServiceHosts(
            list.split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        )
    }

    /// The activities URL of this conversation, if its service URL is one Herald trusts:
    /// https on a listed host, or http on a listed loopback address (tests, a local proxy).
    pub fn activities_url(&self, chat: &TeamsChat) -> Result<reqwest::Url, String> {
        let mut url = reqwest::Url::parse(chat.service_url())
            .map_err(|e| format!("the service URL cannot be read: {e}"))?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let listed = self.0.iter().any(|allowed| {
            host == *allowed
                || (allowed.starts_with('.') && host.ends_with(allowed.as_str()))
                || host.trim_matches(['[', ']']) == allowed.trim_matches(['[', ']'])
        });
        if !listed {
            return Err(format!(
                "the service URL's host {host:?} is not in HERALD_TEAMS__SERVICE_HOSTS"
            ));
        }
        let loopback = host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err("the service URL must be https".into());
        }
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!(
            "{base}/v3/conversations/{}/activities",
            encode_component(chat.conversation_id())
        ));
        url.set_query(None);
        url.set_fragment(None);
        Ok(url)
    }
}

/// A conversation id in a path, encoded as the Bot Framework's own SDKs do
/// (`encodeURIComponent`): channel thread ids hold `;` and `=` (`19:...@thread.tacv2;messageid=7`).
pub fn encode_component(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        match byte {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => out.push(byte as char),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// The message activity for one part of a text, already HTML (`textFormat: xml`).
pub fn message_activity(html: &str) -> serde_json::Value {
    json!({"type": "message", "textFormat": "xml", "text": html})
}

/// The Bot Connector's error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: ErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// A 403 whose code says the bot cannot reach this conversation any more: the person must
/// link again (R6).
const UNREACHABLE: [&str; 4] = [
    "ConversationBlockedByUser",
    "BotNotInConversationRoster",
    "BotDisabledByAdmin",
    "ForbiddenOperationException",
];

/// Without a `Retry-After` the runtime's backoff applies; Teams usually sends one.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// One Bot Connector answer that is not a success, as exactly one kind of failure. A 401 is
/// handled before this (the token is renewed once); one that reaches here stays a 401.
pub fn classify(status: u16, headers: &HeaderMap, body: &ErrorBody) -> SendError {
    let code = body.error.code.as_str();
    let detail = format!(
        "the Bot Connector answered {status} {code}: {}",
        body.error.message
    );
    match status {
        403 if UNREACHABLE.contains(&code) => {
            SendError::permanent("conversation_unreachable", detail)
        }
        404 => SendError::permanent("conversation_not_found", detail),
        429 => SendError::throttled(retry_after(headers), detail),
        401 | 403 => SendError::unhealthy("provider_rejected_account", detail),
        413 => SendError::permanent("too_large", detail),
        412 | 500..=599 => SendError::provider_fault("provider_error", detail),
        400..=499 => SendError::permanent("rejected", detail),
        _ => SendError::provider_fault("provider_error", detail),
    }
}

/// A request that got no answer.
pub fn transport_error(what: &str, error: &reqwest::Error) -> SendError {
    if error.is_timeout() {
        SendError::provider_fault("timeout", format!("{what} did not answer in time"))
    } else if error.is_connect() {
        SendError::provider_fault(
            "provider_unreachable",
            format!("cannot connect to {what}: {error}"),
        )
    } else {
        SendError::provider_fault(
            "transport",
            format!("the connection to {what} failed: {error}"),
        )
    }
}

/// For tests and logs: the kind of a `SendError`.
pub fn kind(error: &SendError) -> (&str, &'static str) {
    match error {
        SendError::Retry(RetryLater {
            throttles_account: true,
            failure,
            ..
        }) => (failure.code.as_str(), "throttled"),
        SendError::Retry(RetryLater { failure, .. }) => (failure.code.as_str(), "retry"),
        SendError::Permanent(failure) => (failure.code.as_str(), "permanent"),
        SendError::Unhealthy(failure) => (failure.code.as_str(), "unhealthy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: "m".into(),
            },
        }
    }

    fn classified(status: u16, code: &str) -> (String, &'static str) {
        let error = classify(status, &HeaderMap::new(), &body(code));
        let (code, kind) = kind(&error);
        (code.to_owned(), kind)
    }

    #[test]
    fn bot_connector_answers_map_to_one_kind_each() {
        for code in UNREACHABLE {
            assert_eq!(
                classified(403, code),
                ("conversation_unreachable".into(), "permanent")
            );
        }
        assert_eq!(
            classified(404, "ConversationNotFound"),
            ("conversation_not_found".into(), "permanent")
        );
        assert_eq!(
            classified(429, "Throttled"),
            ("rate_limited".into(), "throttled")
        );
        for status in [412, 500, 502, 503, 504] {
            assert_eq!(
                classified(status, ""),
                ("provider_error".into(), "retry"),
                "{status}"
            );
        }
        assert_eq!(
            classified(413, "MessageSizeTooBig"),
            ("too_large".into(), "permanent")
        );
        assert_eq!(
            classified(401, ""),
            ("provider_rejected_account".into(), "unhealthy")
        );
        assert_eq!(
            classified(403, "SomethingElse"),
            ("provider_rejected_account".into(), "unhealthy")
        );
        assert_eq!(
            classified(400, "BadArgument"),
            ("rejected".into(), "permanent")
        );
    }

    #[test]
    fn a_429_waits_for_its_retry_after() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        let SendError::Retry(retry) = classify(429, &headers, &body("Throttled")) else {
            panic!("a retry");
        };
        assert_eq!(retry.after, Some(Duration::from_secs(2)));
        assert!(retry.throttles_account);
    }

    #[test]
    fn only_listed_hosts_get_the_token() {
        let hosts = ServiceHosts::parse(DEFAULT_SERVICE_HOSTS);
        let chat = |url: &str| TeamsChat::new(url, "a:1B2c;messageid=7").unwrap();
        let url = hosts
            .activities_url(&chat("https://smba.trafficmanager.net/emea/"))
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://smba.trafficmanager.net/emea/v3/conversations/a%3A1B2c%3Bmessageid%3D7/activities"
        );
        assert!(
            hosts
                .activities_url(&chat("https://evil.example/"))
                .is_err()
        );
        assert!(
            hosts
                .activities_url(&chat("http://smba.trafficmanager.net/"))
                .is_err(),
            "https only"
        );
        let local = ServiceHosts::parse("127.0.0.1");
        assert!(
            local
                .activities_url(&chat("http://127.0.0.1:3978/"))
                .is_ok()
        );
        let wildcard = ServiceHosts::parse(".example.org");
        assert!(
            wildcard
                .activities_url(&chat("https://a.example.org/x"))
                .is_ok()
        );
        assert!(
            wildcard
                .activities_url(&chat("https://aexample.org/x"))
                .is_err()
        );
    }
}
