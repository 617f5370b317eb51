//! JSON Schemas of every wire type, written to `docs/schemas/` (a test keeps them current).

use schemars::{JsonSchema, Schema, generate::SchemaSettings};

use crate::events::{
    ChatAnswer, ChatSeenEvent, ContactLinkEvent, DeliveryEvent, DeliveryEventBundle,
    MessageOutcome, RoomEvent, RoomRoster, SupportRequestEvent, TicketRoom,
};
use crate::ingress::{EventTrigger, LegacyMessage, NotifyRequest};
use crate::job::{SendJob, SendJobBundle};

fn schema_for<T: JsonSchema>(kind: Option<&str>) -> Schema {
    let mut schema = SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<T>();
    // `kind` is read by the ingress decoder before the typed struct sees the message, so it
    // is not a field of the struct; producers must still send it.
    if let Some(kind) = kind {
        if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
            props.insert("kind".into(), serde_json::json!({ "const": kind }));
        }
        if let Some(required) = schema.get_mut("required").and_then(|r| r.as_array_mut()) {
            required.insert(0, "kind".into());
        }
    }
    schema
}

/// `(file name, schema)` for every payload on Herald's queues.
pub fn all() -> Vec<(&'static str, Schema)> {
    vec![
        (
            "notify-request.v1.json",
            schema_for::<NotifyRequest>(Some("notify")),
        ),
        (
            "event-trigger.v1.json",
            schema_for::<EventTrigger>(Some("event")),
        ),
        ("legacy-message.json", schema_for::<LegacyMessage>(None)),
        ("send-job.v1.json", schema_for::<SendJob>(None)),
        ("send-job-bundle.v1.json", schema_for::<SendJobBundle>(None)),
        ("delivery-event.v1.json", schema_for::<DeliveryEvent>(None)),
        (
            "delivery-event-bundle.v1.json",
            schema_for::<DeliveryEventBundle>(None),
        ),
        (
            "contact-link-event.v1.json",
            schema_for::<ContactLinkEvent>(None),
        ),
        (
            "support-request-event.v1.json",
            schema_for::<SupportRequestEvent>(None),
        ),
        ("chat-answer.v1.json", schema_for::<ChatAnswer>(None)),
        ("chat-seen-event.v1.json", schema_for::<ChatSeenEvent>(None)),
        ("room-event.v1.json", schema_for::<RoomEvent>(None)),
        ("room-roster.v1.json", schema_for::<RoomRoster>(None)),
        ("ticket-room.v1.json", schema_for::<TicketRoom>(None)),
        (
            "message-outcome.v1.json",
            schema_for::<MessageOutcome>(None),
        ),
    ]
}

/// Pretty JSON with a trailing newline, the way the files are committed.
pub fn render(schema: &Schema) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}
