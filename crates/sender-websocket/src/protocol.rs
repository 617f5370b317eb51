//! The frames between Herald and a client (JSON text frames), and between replicas.
//!
//! Client to Herald:
//! - `{"type": "hello", "token": "...", "addresses": ["support-bot/42", ...]}`: first, within
//!   `hello_timeout_ms`; the token from `POST /websocket/tokens`, the addresses within its
//!   namespaces.
//! - `{"type": "ack", "deliveryId": "..."}`: the message was taken.
//! - `{"type": "refuse", "deliveryId": "...", "class": "temporary" | "permanent", "reason": "..."}`.
//!
//! Herald to client:
//! - `{"type": "ready", "addresses": [...], "heartbeatSecs": 20}` after a good hello.
//! - `{"type": "message", "deliveryId", "address", "tenant", "content": {"subject", "text",
//!   "html"}, "createdAt"}`: acknowledge or refuse it within `ack_timeout_ms`. The same
//!   delivery id may come again (a retry after a lost ack): drop the repeat.
//! - `{"type": "error", "code", "message"}` before Herald closes the connection (4401 for a
//!   bad token, 4403 for an address outside the token, 4400 for a frame it cannot read,
//!   4408 for a client too slow to read its messages).

use chrono::{DateTime, Utc};
use messaging_core::job::RenderedContent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClientFrame {
    #[serde(rename_all = "camelCase")]
    Hello {
        token: String,
        addresses: Vec<String>,
    },
    #[serde(rename_all = "camelCase")]
    Ack { delivery_id: Uuid },
    #[serde(rename_all = "camelCase")]
    Refuse {
        delivery_id: Uuid,
        class: RefusalClass,
        #[serde(default)]
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusalClass {
    Temporary,
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerFrame {
    #[serde(rename_all = "camelCase")]
    Ready {
        addresses: Vec<String>,
        heartbeat_secs: u64,
    },
    #[serde(rename_all = "camelCase")]
    Message(Delivery),
    #[serde(rename_all = "camelCase")]
    Error { code: String, message: String },
}

/// One message for one address: what the replica that took the job sends the replicas
/// holding a connection for it, and what they send their clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub delivery_id: Uuid,
    pub tenant: String,
    pub address: String,
    pub content: RenderedContent,
    pub created_at: DateTime<Utc>,
}

/// What a holding replica answers the replica that took the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Answer {
    Delivered,
    Refused {
        class: RefusalClass,
        reason: String,
    },
    /// The connection went away, or never acknowledged in time.
    NoAck,
    /// No connection for the address here (any more).
    NoConnection,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_read_as_documented() {
        let hello: ClientFrame = serde_json::from_str(
            r#"{"type": "hello", "token": "t", "addresses": ["support-bot/42"]}"#,
        )
        .unwrap();
        assert!(matches!(hello, ClientFrame::Hello { .. }));
        let id = Uuid::now_v7();
        let refuse: ClientFrame = serde_json::from_value(serde_json::json!({
            "type": "refuse", "deliveryId": id, "class": "permanent", "reason": "no such user"
        }))
        .unwrap();
        assert_eq!(
            refuse,
            ClientFrame::Refuse {
                delivery_id: id,
                class: RefusalClass::Permanent,
                reason: "no such user".into()
            }
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type": "nonsense"}"#).is_err());
    }
}
