//! Discord's answers, as serenity reports them, mapped to exactly one kind of failure (the
//! table is in the crate docs).

use std::time::Duration;

use messaging_core::failure::Failure;
use sender_runtime::{RetryLater, SendError};
use serenity::http::HttpError;

/// Cannot send messages to this user: DMs closed, bot blocked, or no server in common.
pub const CANNOT_MESSAGE_USER: isize = 50007;
pub const UNKNOWN_USER: isize = 10013;
pub const UNKNOWN_CHANNEL: isize = 10003;
pub const MISSING_ACCESS: isize = 50001;
pub const MISSING_PERMISSIONS: isize = 50013;

/// The wait after a 429 whose `retry_after` cannot be read. serenity (0.12) does not keep
/// the body of an error it cannot decode as `{code, message}`, and Discord's 429 body has no
/// `code`: so with the ratelimiter off (`api_proxy`) every 429 arrives without its wait. A
/// second is Discord's usual per-route wait; the runtime's backoff follows if it is not enough.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// An unsuccessful answer from Discord, as far as it can be read.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    /// Discord's JSON error code; `-1` when serenity could not decode the body, `0` for
    /// errors without one (5xx, 401).
    pub code: isize,
    pub message: String,
    /// A 429's `retry_after` (float seconds in the body), when it could be read.
    pub retry_after: Option<f64>,
    /// A 429's `global` flag, when it could be read. Unknown counts as global: throttling
    /// the whole bot for a second is cheaper than a second 429.
    pub global: Option<bool>,
}

impl ApiError {
    fn from_serenity(response: &serenity::http::ErrorResponse) -> ApiError {
        ApiError {
            status: response.status_code.as_u16(),
            code: response.error.code,
            message: response.error.message.clone(),
            retry_after: None,
            global: None,
        }
    }
}

/// Maps an unsuccessful answer to exactly one kind of failure.
pub fn classify(error: &ApiError) -> SendError {
    let detail = format!(
        "Discord answered {}, code {}: {}",
        error.status, error.code, error.message
    );
    match (error.status, error.code) {
        (429, _) => {
            let after = error
                .retry_after
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs_f64);
            if error.global == Some(false) {
                // A per-route bucket (this DM channel): only this job waits.
                SendError::Retry(RetryLater {
                    failure: Failure::temporary("rate_limited", detail),
                    after: Some(after),
                    throttles_account: false,
                    provider_fault: false,
                })
            } else {
                SendError::throttled(Some(after), detail)
            }
        }
        (_, CANNOT_MESSAGE_USER) => SendError::permanent("cannot_message_user", detail),
        (_, UNKNOWN_USER) => SendError::permanent("unknown_user", detail),
        (_, UNKNOWN_CHANNEL) => SendError::permanent("unknown_channel", detail),
        (_, MISSING_ACCESS) => SendError::permanent("missing_access", detail),
        (_, MISSING_PERMISSIONS) => SendError::permanent("missing_permissions", detail),
        (401, _) => SendError::unhealthy("provider_rejected_account", detail),
        (500..=599, _) => SendError::provider_fault("provider_error", detail),
        (400..=499, _) => SendError::permanent("rejected", detail),
        _ => SendError::provider_fault("provider_error", detail),
    }
}

/// The Discord error behind a serenity error, if it is an answer from Discord.
pub fn api_error(error: &serenity::Error) -> Option<ApiError> {
    match error {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => {
            Some(ApiError::from_serenity(response))
        }
        _ => None,
    }
}

/// Maps any serenity error: Discord's answers by [`classify`], everything else (the
/// connection, a response that cannot be read) as a provider fault.
pub fn send_error(error: &serenity::Error) -> SendError {
    if let Some(api) = api_error(error) {
        return classify(&api);
    }
    match error {
        serenity::Error::Http(HttpError::Request(e)) if e.is_timeout() => {
            SendError::provider_fault("timeout", format!("Discord did not answer in time: {e}"))
        }
        serenity::Error::Http(HttpError::Request(e)) => SendError::provider_fault(
            "transport",
            format!("the connection to Discord failed: {e}"),
        ),
        other => SendError::provider_fault(
            "provider_error",
            format!("unexpected answer from Discord: {other}"),
        ),
    }
}

/// Our own bound on one request (serenity has none).
pub fn timed_out(timeout: Duration) -> SendError {
    SendError::provider_fault(
        "timeout",
        format!("Discord did not answer within {timeout:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use messaging_core::failure::FailureClass;

    fn api(status: u16, code: isize) -> ApiError {
        ApiError {
            status,
            code,
            message: "m".into(),
            retry_after: None,
            global: None,
        }
    }

    /// (kind, class, code) of the failure, where kind tells the retry flavours apart.
    fn kind(error: SendError) -> (&'static str, FailureClass, String) {
        match error {
            SendError::Retry(r) => {
                let kind = match (r.throttles_account, r.provider_fault) {
                    (true, _) => "throttled",
                    (false, true) => "provider_fault",
                    (false, false) => "retry",
                };
                (kind, r.failure.class, r.failure.code)
            }
            SendError::Permanent(f) => ("permanent", f.class, f.code),
            SendError::Unhealthy(f) => ("unhealthy", f.class, f.code),
        }
    }

    #[test]
    fn discord_answers_map_to_one_kind_each() {
        use FailureClass::*;
        let rows: [(ApiError, (&str, FailureClass, &str)); 10] = [
            (
                api(403, 50007),
                ("permanent", Permanent, "cannot_message_user"),
            ),
            (api(404, 10013), ("permanent", Permanent, "unknown_user")),
            (api(404, 10003), ("permanent", Permanent, "unknown_channel")),
            (api(403, 50001), ("permanent", Permanent, "missing_access")),
            (
                api(403, 50013),
                ("permanent", Permanent, "missing_permissions"),
            ),
            (api(429, -1), ("throttled", Temporary, "rate_limited")),
            (
                api(401, 0),
                ("unhealthy", Unhealthy, "provider_rejected_account"),
            ),
            (api(502, 0), ("provider_fault", Temporary, "provider_error")),
            (api(400, 50035), ("permanent", Permanent, "rejected")),
            (api(302, 0), ("provider_fault", Temporary, "provider_error")),
        ];
        for (error, (want_kind, want_class, want_code)) in rows {
            let (kind, class, code) = kind(classify(&error));
            assert_eq!(
                (kind, class, code.as_str()),
                (want_kind, want_class, want_code),
                "{error:?}"
            );
        }
    }

    #[test]
    fn a_429_waits_for_its_retry_after_or_the_default() {
        let SendError::Retry(r) = classify(&api(429, -1)) else {
            panic!()
        };
        assert_eq!(r.after, Some(DEFAULT_RETRY_AFTER));
        assert!(r.throttles_account, "an unknown scope counts as global");

        let read = ApiError {
            retry_after: Some(2.5),
            global: Some(true),
            ..api(429, 0)
        };
        let SendError::Retry(r) = classify(&read) else {
            panic!()
        };
        assert_eq!(r.after, Some(Duration::from_millis(2500)));
        assert!(r.throttles_account);

        let route = ApiError {
            retry_after: Some(0.3),
            global: Some(false),
            ..api(429, 0)
        };
        let SendError::Retry(r) = classify(&route) else {
            panic!()
        };
        assert_eq!(r.after, Some(Duration::from_millis(300)));
        assert!(!r.throttles_account, "a route's bucket holds only this job");
    }
}
