//! What producers publish to the ingress exchange (R40, R41, R14).
//!
//! Three shapes are accepted:
//! - a versioned `notify` request: notify users (R1) or a subscription's registrations (R14);
//! - a versioned `event`: something happened (`audit.login`); subscriptions bound to the event
//!   type fire (R14);
//! - the legacy `{"title", "body", "sender"}` format (R41), sent to the channel's configured
//!   default destination.
//!
//! [`Ingress::decode`] tells them apart and explains exactly what is wrong with anything else;
//! that explanation becomes the dead-letter reason (R43).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::MAX_MESSAGE_BYTES;
use crate::channel::Channel;
use crate::values::{IdempotencyKey, InvalidValue, Locale, SubscriptionKey, TenantKey, UserId};
use crate::version::EnvelopeVersion;

/// Most user ids one request may name; larger audiences belong in a subscription.
pub const MAX_USERS_PER_REQUEST: usize = 1000;

/// A request to notify people, version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifyRequest {
    pub version: EnvelopeVersion,
    pub tenant: TenantKey,
    /// Repeats of the same key within the tenant are dropped (R44). Strongly recommended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    pub to: Recipients,
    pub content: Content,
    /// Deliver only on these channels. Absent: every channel the recipient has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<Channel>>,
    /// All of a user's addresses, or only the preferred one (R2). Absent: the user's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<DeliveryMode>,
    /// After this time nothing is sent any more; pending deliveries fail as temporary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Who is to be notified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Recipients {
    /// The tenant's own ids for people (R1).
    Users(Vec<UserId>),
    /// Everyone registered to this subscription (R12, R14).
    Subscription(SubscriptionKey),
}

/// What to say: ready text, or data for the subscription's templates (R13).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Content {
    Direct(DirectContent),
    Template(TemplateContent),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectContent {
    /// Used by channels that have one (email); chat channels put it in bold above the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub body: String,
    /// HTML alternative for email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateContent {
    /// Whose templates to render. Defaults to the subscription being notified; required when
    /// notifying users directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<SubscriptionKey>,
    /// The values the templates see.
    #[serde(default)]
    pub data: Map<String, Value>,
    /// Overrides each recipient's own locale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<Locale>,
}

/// R2: deliver on all of a user's addresses, or only on the preferred channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    All,
    Preferred,
}

impl DeliveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::All => "all",
            DeliveryMode::Preferred => "preferred",
        }
    }
}

impl std::str::FromStr for DeliveryMode {
    type Err = crate::text_enum::UnknownWord;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(DeliveryMode::All),
            "preferred" => Ok(DeliveryMode::Preferred),
            _ => Err(crate::text_enum::UnknownWord {
                what: "delivery mode",
                value: s.to_owned(),
                expected: "all preferred",
            }),
        }
    }
}

crate::sqlx_text!(DeliveryMode);

/// Something happened in another system; subscriptions bound to its type fire (R14).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTrigger {
    pub version: EnvelopeVersion,
    pub tenant: TenantKey,
    pub event_type: EventType,
    /// Template data for every subscription the event fires.
    #[serde(default)]
    pub data: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
}

/// An event type: dot-separated lowercase words (`audit.login`), at most 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EventType(String);

impl EventType {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.split('.').all(|word| {
                !word.is_empty()
                    && word.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
                    })
            });
        if ok {
            Ok(EventType(s.to_owned()))
        } else {
            Err(InvalidValue {
                kind: "event type",
                reason: format!("{s:?} must be dot-separated lowercase words, like audit.login"),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Cow::<'de, str>::deserialize(d)?;
        EventType::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for EventType {
    fn schema_name() -> Cow<'static, str> {
        "EventType".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Dot-separated lowercase words, like audit.login.",
            "pattern": "^[a-z0-9_-]+(\\.[a-z0-9_-]+)*$",
            "maxLength": 128
        })
    }
}

/// The earlier, simpler format (R41): `{"title": ..., "body": ..., "sender": "TG"}`.
///
/// Unknown fields are ignored here on purpose: these producers predate Herald's envelope and
/// cannot all be changed; being strict would only turn their messages into dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LegacyMessage {
    #[serde(default)]
    pub title: Option<String>,
    pub body: String,
    #[serde(
        deserialize_with = "legacy_channel",
        serialize_with = "legacy_channel_out"
    )]
    #[schemars(schema_with = "legacy_channel_schema")]
    pub sender: Channel,
}

fn legacy_channel<'de, D: Deserializer<'de>>(d: D) -> Result<Channel, D::Error> {
    let raw = Cow::<'de, str>::deserialize(d)?;
    Channel::from_legacy_code(&raw).map_err(serde::de::Error::custom)
}

fn legacy_channel_out<S: serde::Serializer>(channel: &Channel, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(channel.legacy_code())
}

fn legacy_channel_schema(_: &mut SchemaGenerator) -> Schema {
    let codes: Vec<&str> = Channel::ALL.iter().map(|c| c.legacy_code()).collect();
    json_schema!({
        "description": "Legacy channel code (matched without regard to case).",
        "type": "string",
        "enum": codes
    })
}

/// A decoded ingress message.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingress {
    Notify(NotifyRequest),
    Event(EventTrigger),
    Legacy(LegacyMessage),
}

/// Why an ingress message was refused. The text is the dead-letter reason a producer reads.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("oversized: {size} bytes, the limit is {max} bytes")]
    Oversized { size: usize, max: usize },
    #[error("malformed JSON: {0}")]
    Malformed(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error(
        "unknown message shape: expected a versioned envelope (with \"version\" and \"kind\") or the legacy format (with \"body\" and \"sender\")"
    )]
    UnknownShape,
    #[error("unknown kind {0:?}: expected \"notify\" or \"event\"")]
    UnknownKind(String),
    #[error("invalid {kind} message: {error}")]
    Invalid { kind: &'static str, error: String },
}

impl DecodeError {
    /// A short, stable word for metrics and the dead-letter header.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::Malformed(_) | DecodeError::NotAnObject => "malformed",
            DecodeError::UnknownShape | DecodeError::UnknownKind(_) => "unknown_shape",
            DecodeError::Invalid { .. } => "invalid",
        }
    }
}

impl Ingress {
    /// Decodes a message body, with a reason a producer can act on when it is refused.
    pub fn decode(bytes: &[u8]) -> Result<Ingress, DecodeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::Oversized {
                size: bytes.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let object = value.as_object().ok_or(DecodeError::NotAnObject)?;
        if object.contains_key("version") {
            let kind = object
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return match kind {
                "notify" => typed("notify", strip_kind(value)).map(Ingress::Notify),
                "event" => typed("event", strip_kind(value)).map(Ingress::Event),
                "" => Err(DecodeError::Invalid {
                    kind: "versioned",
                    error: "missing \"kind\" (\"notify\" or \"event\")".into(),
                }),
                other => Err(DecodeError::UnknownKind(other.to_owned())),
            };
        }
        if object.contains_key("sender") {
            return typed("legacy", value).map(Ingress::Legacy);
        }
        Err(DecodeError::UnknownShape)
    }

    /// The JSON a producer would publish for this message.
    pub fn encode(&self) -> Vec<u8> {
        let value = match self {
            Ingress::Notify(r) => with_kind("notify", serde_json::to_value(r)),
            Ingress::Event(e) => with_kind("event", serde_json::to_value(e)),
            Ingress::Legacy(l) => serde_json::to_value(l).unwrap_or(Value::Null),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

fn typed<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    value: Value,
) -> Result<T, DecodeError> {
    serde_json::from_value(value).map_err(|e| DecodeError::Invalid {
        kind,
        error: e.to_string(),
    })
}

/// `kind` selects the struct; the structs themselves deny unknown fields, so it is removed first.
fn strip_kind(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.remove("kind");
    }
    value
}

fn with_kind(kind: &str, value: Result<Value, serde_json::Error>) -> Value {
    let mut value = value.unwrap_or(Value::Null);
    if let Some(object) = value.as_object_mut() {
        object.insert("kind".into(), Value::String(kind.into()));
    }
    value
}

impl NotifyRequest {
    /// Rules that span fields, which serde cannot express. The router checks these too,
    /// because producers on RabbitMQ skip the REST layer.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let invalid = |reason: &str| InvalidValue {
            kind: "notify request",
            reason: reason.to_owned(),
        };
        if let Recipients::Users(users) = &self.to {
            if users.is_empty() {
                return Err(invalid("\"to.users\" must name at least one user"));
            }
            if users.len() > MAX_USERS_PER_REQUEST {
                return Err(invalid(
                    "\"to.users\" names more than 1000 users; use a subscription",
                ));
            }
            if let Content::Template(TemplateContent {
                subscription: None, ..
            }) = &self.content
            {
                return Err(invalid(
                    "\"content.template.subscription\" is required when notifying users directly",
                ));
            }
        }
        if let Content::Direct(direct) = &self.content
            && direct.body.trim().is_empty()
        {
            return Err(invalid("\"content.direct.body\" must not be empty"));
        }
        if let Some(channels) = &self.channels
            && channels.is_empty()
        {
            return Err(invalid(
                "\"channels\" must not be empty; leave it out to use every channel",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(value: Value) -> Result<Ingress, DecodeError> {
        Ingress::decode(&serde_json::to_vec(&value).unwrap())
    }

    #[test]
    fn a_notify_request_to_users_decodes() {
        let ingress = decode(json!({
            "version": 1, "kind": "notify", "tenant": "acme", "idempotencyKey": "k1",
            "to": {"users": ["u-1", "u-2"]},
            "content": {"direct": {"subject": "Hi", "body": "Hello"}},
            "channels": ["email", "telegram"], "mode": "preferred"
        }))
        .unwrap();
        let Ingress::Notify(request) = ingress else {
            panic!("not a notify request")
        };
        assert_eq!(
            request.to,
            Recipients::Users(vec![
                UserId::parse("u-1").unwrap(),
                UserId::parse("u-2").unwrap()
            ])
        );
        assert_eq!(request.mode, Some(DeliveryMode::Preferred));
        request.validate().unwrap();
    }

    #[test]
    fn encode_and_decode_round_trip() {
        let original = decode(json!({
            "version": 1, "kind": "notify", "tenant": "acme",
            "to": {"subscription": "order_shipped"},
            "content": {"template": {"data": {"order": 7}, "locale": "de-CH"}}
        }))
        .unwrap();
        assert_eq!(Ingress::decode(&original.encode()).unwrap(), original);
        let event = decode(json!({"version": 1, "kind": "event", "tenant": "acme", "eventType": "audit.login", "data": {"user": "u1"}})).unwrap();
        assert_eq!(Ingress::decode(&event.encode()).unwrap(), event);
    }

    #[test]
    fn the_legacy_format_decodes_with_its_channel_code() {
        let ingress = decode(json!({"title": "Backup", "body": "done", "sender": "TG"})).unwrap();
        assert_eq!(
            ingress,
            Ingress::Legacy(LegacyMessage {
                title: Some("Backup".into()),
                body: "done".into(),
                sender: Channel::Telegram
            })
        );
        assert_eq!(Ingress::decode(&ingress.encode()).unwrap(), ingress);
    }

    #[test]
    fn unknown_fields_in_a_versioned_request_are_named() {
        let err = decode(json!({
            "version": 1, "kind": "notify", "tenant": "acme", "recipients": ["u1"],
            "to": {"users": ["u1"]}, "content": {"direct": {"body": "x"}}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("recipients"), "{err}");
    }

    #[test]
    fn every_kind_of_bad_input_gets_its_own_reason() {
        assert_eq!(
            Ingress::decode(b"{not json").unwrap_err().code(),
            "malformed"
        );
        assert_eq!(
            Ingress::decode(b"[1,2]").unwrap_err(),
            DecodeError::NotAnObject
        );
        assert_eq!(
            decode(json!({"hello": 1})).unwrap_err(),
            DecodeError::UnknownShape
        );
        assert_eq!(
            decode(json!({"version": 1, "kind": "shout"})).unwrap_err(),
            DecodeError::UnknownKind("shout".into())
        );
        let err = decode(json!({"version": 2, "kind": "notify", "tenant": "acme", "to": {"users": ["u"]}, "content": {"direct": {"body": "x"}}})).unwrap_err();
        assert!(
            err.to_string().contains("unsupported envelope version 2"),
            "{err}"
        );
        let err = decode(json!({"body": "x", "sender": "FAX"})).unwrap_err();
        assert!(err.to_string().contains("unknown channel \"FAX\""), "{err}");
        let err = decode(json!({"version": 1, "kind": "notify", "tenant": "acme", "to": {"users": "u1"}, "content": {"direct": {"body": "x"}}})).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(Ingress::decode(&huge).unwrap_err().code(), "oversized");
    }

    #[test]
    fn cross_field_rules_are_checked() {
        let Ingress::Notify(request) = decode(json!({
            "version": 1, "kind": "notify", "tenant": "acme",
            "to": {"users": ["u1"]}, "content": {"template": {"data": {}}}
        }))
        .unwrap() else {
            panic!()
        };
        assert!(
            request
                .validate()
                .unwrap_err()
                .to_string()
                .contains("content.template.subscription")
        );

        let Ingress::Notify(request) = decode(json!({
            "version": 1, "kind": "notify", "tenant": "acme",
            "to": {"users": []}, "content": {"direct": {"body": "x"}}
        }))
        .unwrap() else {
            panic!()
        };
        assert!(request.validate().is_err());
    }

    #[test]
    fn event_types_are_dotted_lowercase_words() {
        assert!(EventType::parse("audit.login").is_ok());
        for bad in ["", "Audit.Login", "audit..login", ".audit", "audit login"] {
            assert!(EventType::parse(bad).is_err(), "{bad:?}");
        }
    }
}
