//! What a channel implements.

use std::future::Future;
use std::time::Duration;

use messaging_core::Channel;
use messaging_core::failure::Failure;
use messaging_core::job::SendJob;
use serde::de::DeserializeOwned;

use crate::limits::RateLimits;

/// A channel's sending side. Implement this in a small crate; `main` calls
/// [`crate::run_sender`] with the type.
pub trait ChannelSender: Sized + Send + Sync + 'static {
    const CHANNEL: Channel;

    /// The channel's own settings, loaded from `HERALD_*` like the rest (its fields are its
    /// sections: `smtp`, `sms`, ...).
    type Config: DeserializeOwned + Send;

    /// Limits that fit the provider when the operator sets none (R7).
    fn default_limits() -> RateLimits;

    /// Builds the sender, or says it is not configured (no credentials): then the service
    /// starts, says so in its log and `/readyz`, and leaves its queue untouched.
    fn build(config: Self::Config) -> impl Future<Output = Result<Built<Self>, BuildError>> + Send;

    /// Sends one job. Called at most once at a time per job, after rate limits.
    fn send(&self, job: &SendJob) -> impl Future<Output = Result<Receipt, SendError>> + Send;

    /// Asks the provider whether it is back, while the circuit breaker is open. The default
    /// says yes, and the next real send decides.
    fn probe(&self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

pub enum Built<S> {
    Ready(S),
    /// What is missing, in words an operator acts on ("set HERALD_SMTP__HOST").
    NotConfigured(String),
}

/// The configuration is present but wrong (an unparsable address, say): the service stops.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the {channel} sender: {reason}")]
pub struct BuildError {
    pub channel: Channel,
    pub reason: String,
}

/// The provider accepted the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id for the message (SMTP queue id, Twilio SID, Telegram message id).
    pub provider_message_id: Option<String>,
}

/// Why a send did not succeed. Exactly one kind, so the runtime knows what to do.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// Temporary: try again later.
    Retry(RetryLater),
    /// This message can never be delivered to this address (invalid number, unknown mailbox,
    /// blocked bot). Reported as class (b); the address may be marked unreachable.
    Permanent(Failure),
    /// The provider or our account with it is broken (down, credentials rejected). Retried,
    /// reported as class (c), and counted by the circuit breaker.
    Unhealthy(Failure),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryLater {
    pub failure: Failure,
    /// The provider's own retry-after, obeyed exactly when given.
    pub after: Option<Duration>,
    /// The provider throttled the whole account (a 429), not only this recipient: nothing is
    /// sent through the account until `after` has passed.
    pub throttles_account: bool,
    /// The provider misbehaved (5xx, timeout): repeated, it opens the circuit breaker.
    pub provider_fault: bool,
}

impl SendError {
    pub fn retry(code: &str, message: impl Into<String>) -> SendError {
        SendError::Retry(RetryLater {
            failure: Failure::temporary(code, message),
            after: None,
            throttles_account: false,
            provider_fault: false,
        })
    }

    /// A provider-side failure worth retrying (5xx, timeout), counted by the breaker.
    pub fn provider_fault(code: &str, message: impl Into<String>) -> SendError {
        SendError::Retry(RetryLater {
            failure: Failure::temporary(code, message),
            after: None,
            throttles_account: false,
            provider_fault: true,
        })
    }

    /// The account is throttled (429); `after` is the provider's retry-after.
    pub fn throttled(after: Option<Duration>, message: impl Into<String>) -> SendError {
        SendError::Retry(RetryLater {
            failure: Failure::temporary("rate_limited", message),
            after,
            throttles_account: true,
            provider_fault: false,
        })
    }

    pub fn permanent(code: &str, message: impl Into<String>) -> SendError {
        SendError::Permanent(Failure::permanent(code, message))
    }

    pub fn unhealthy(code: &str, message: impl Into<String>) -> SendError {
        SendError::Unhealthy(Failure::unhealthy(code, message))
    }

    pub fn failure(&self) -> &Failure {
        match self {
            SendError::Retry(r) => &r.failure,
            SendError::Permanent(f) | SendError::Unhealthy(f) => f,
        }
    }
}
