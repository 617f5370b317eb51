//! The per-recipient send job a sender consumes.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::address::Address;
use crate::channel::Channel;
use crate::values::{TenantKey, UserId};
use crate::version::EnvelopeVersion;

/// One message to one address. The router writes a delivery row and then publishes exactly
/// one job per (message, address); `delivery_id` is the idempotency key senders use so a
/// redelivered job is not sent twice (R44).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendJob {
    pub version: EnvelopeVersion,
    pub delivery_id: Uuid,
    pub message_id: Uuid,
    pub tenant: TenantKey,
    pub to: Address,
    /// The person this address belongs to, when it is a person's (not a legacy default
    /// destination or a room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    pub content: RenderedContent,
    pub created_at: DateTime<Utc>,
    /// Past this time the sender gives up with a temporary failure instead of sending late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl SendJob {
    pub fn channel(&self) -> Channel {
        self.to.channel()
    }
}

/// Text ready for one channel, rendered from direct content or the subscription's templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenderedContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}
