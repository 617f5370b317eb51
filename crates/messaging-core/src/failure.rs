//! Failure classes (R4): what a producer needs to decide what to do about a failed delivery.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a delivery did not (yet) succeed, in the three classes R4 asks producers to tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// (a) The recipient is temporarily unreachable: Herald retries, or retried and gave up
    /// after the maximum age.
    Temporary,
    /// (b) The recipient is permanently unreachable: blocked the bot, account deleted, address
    /// invalid, or no address at all. Retrying will not help.
    Permanent,
    /// (c) Herald or the provider is unhealthy: the provider is down, credentials are wrong,
    /// or nothing consumes the channel's queue.
    Unhealthy,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Temporary => "temporary",
            FailureClass::Permanent => "permanent",
            FailureClass::Unhealthy => "unhealthy",
        }
    }
}

impl std::str::FromStr for FailureClass {
    type Err = crate::text_enum::UnknownWord;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            FailureClass::Temporary,
            FailureClass::Permanent,
            FailureClass::Unhealthy,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| crate::text_enum::UnknownWord {
            what: "failure class",
            value: s.to_owned(),
            expected: "temporary permanent unhealthy",
        })
    }
}

crate::sqlx_text!(FailureClass);

impl std::fmt::Display for FailureClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure's class plus a machine-readable code and a human-readable explanation.
///
/// `code` is an open set of snake_case words (`no_address`, `no_template`, `blocked`,
/// `invalid_address`, `max_age_exceeded`, `provider_unavailable`, ...), so producers can
/// branch on it without parsing `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failure {
    pub class: FailureClass,
    pub code: String,
    pub message: String,
}

impl Failure {
    pub fn new(class: FailureClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Failure {
            class,
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn temporary(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(FailureClass::Temporary, code, message)
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(FailureClass::Permanent, code, message)
    }

    pub fn unhealthy(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(FailureClass::Unhealthy, code, message)
    }
}
