//! What senders and the router emit on the events exchange.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::address::Address;
use crate::channel::Channel;
use crate::failure::Failure;
use crate::states::RoomState;
use crate::values::{IdempotencyKey, Jid, TenantKey, UserId};
use crate::version::EnvelopeVersion;

/// The result of one attempt to deliver one job. A sender emits one per attempt; the router
/// turns them into delivery records (R15).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryEvent {
    pub version: EnvelopeVersion,
    pub delivery_id: Uuid,
    pub message_id: Uuid,
    pub tenant: TenantKey,
    pub channel: Channel,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub occurred_at: DateTime<Utc>,
    pub result: AttemptResult,
}

/// Several `delivered` events of one channel in one message (issue #16): a sender bundles
/// the successes that are ready together, so the broker carries, and the router takes, one
/// message for many. Routing key `delivery.<channel>.bundle`, AMQP `type`
/// `herald.delivery_event_bundle.v1`. Failures and retries are never bundled: they keep their
/// own routing keys (`delivery.<channel>.failed`, ...), for whoever watches those.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryEventBundle {
    pub version: EnvelopeVersion,
    pub events: Vec<DeliveryEvent>,
}

impl DeliveryEventBundle {
    /// The most events one bundle carries.
    pub const MAX_EVENTS: usize = 100;

    /// The events of one message read from the events exchange: a bundle's, or a lone
    /// event. For readers that take a sender's events as they come (tests, benchmarks); the
    /// router decodes a bundle's items one by one, so one bad item does not refuse the rest.
    pub fn events_of(body: &[u8]) -> Result<Vec<DeliveryEvent>, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_slice(body)?;
        if value.get("events").is_some() {
            Ok(serde_json::from_value::<DeliveryEventBundle>(value)?.events)
        } else {
            Ok(vec![serde_json::from_value(value)?])
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    tag = "status",
    rename_all = "snake_case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum AttemptResult {
    /// The provider accepted the message.
    Delivered {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider_message_id: Option<String>,
    },
    /// It failed for now and will be tried again at `retry_at`.
    RetryScheduled {
        failure: Failure,
        retry_at: DateTime<Utc>,
    },
    /// It failed for good: permanent, unhealthy beyond the maximum age, or retried until the
    /// maximum age.
    Failed { failure: Failure },
}

impl AttemptResult {
    /// The word used in routing keys and metrics.
    pub fn status(&self) -> &'static str {
        match self {
            AttemptResult::Delivered { .. } => "delivered",
            AttemptResult::RetryScheduled { .. } => "retry_scheduled",
            AttemptResult::Failed { .. } => "failed",
        }
    }

    pub fn is_final(&self) -> bool {
        !matches!(self, AttemptResult::RetryScheduled { .. })
    }
}

/// A chat bot saw `/start <link-code>` (R5): the chat becomes one of the user's addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContactLinkEvent {
    pub version: EnvelopeVersion,
    pub channel: Channel,
    /// The single-use code the API issued; it names the tenant and the user.
    pub link_code: String,
    pub address: Address,
    /// The name the chat shows (Telegram username, Discord tag), for the user's address list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// What else the bot learnt about the chat (Teams: the conversation reference's tenant,
    /// bot and user ids), stored with the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ChatReference>,
    pub occurred_at: DateTime<Utc>,
}

/// The parts of a Bot Framework conversation reference beyond the service URL and the
/// conversation id (which are the address): what a bot needs to open a new conversation with
/// the person, and what tells an operator whose chat it is. Each is as the activity carried
/// it, at most [`ChatReference::MAX_LEN`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatReference {
    /// The Microsoft Entra tenant of the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The bot's id in the conversation (`28:<app id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_id: Option<String>,
    /// The person's id in the conversation (`29:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The person's Entra object id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad_object_id: Option<String>,
    /// `personal`, `groupChat` or `channel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_type: Option<String>,
}

impl ChatReference {
    pub const MAX_LEN: usize = 256;

    /// The reference with overlong parts dropped, or `None` when nothing is left.
    pub fn bounded(mut self) -> Option<Self> {
        for part in [
            &mut self.tenant_id,
            &mut self.bot_id,
            &mut self.user_id,
            &mut self.aad_object_id,
            &mut self.conversation_type,
        ] {
            if part
                .as_ref()
                .is_some_and(|p| p.is_empty() || p.len() > Self::MAX_LEN)
            {
                *part = None;
            }
        }
        (self != Self::default()).then_some(self)
    }
}

/// A person wrote to a bot from a chat whose reference can move (Teams: the Bot Framework
/// may answer a conversation at a new service URL). The router points the addresses that
/// hold the same conversation at the reference the bot saw last, so proactive messages keep
/// reaching the person (R38). A bot publishes it when the reference is new to it, not for
/// every text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatSeenEvent {
    pub version: EnvelopeVersion,
    pub channel: Channel,
    /// The chat's reference as the bot saw it just now.
    pub chat: Address,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ChatReference>,
    pub seen_at: DateTime<Utc>,
}

/// A person wrote `/support <text>` to a bot (R53): the router opens a ticket for the tenant
/// the chat is linked in, and tells the tenant's staff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SupportRequestEvent {
    pub version: EnvelopeVersion,
    /// Unique per request: a redelivered event opens no second ticket.
    pub request_id: Uuid,
    pub channel: Channel,
    /// The chat it came from: where the answer and the staff's replies go.
    pub chat: Address,
    /// What the person wrote, at most [`SupportRequestEvent::MAX_TEXT`] characters.
    pub support_text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

impl SupportRequestEvent {
    /// Longer requests are cut by the bot: a ticket is a request for help, not a document.
    pub const MAX_TEXT: usize = 4_000;
}

/// What a bot tells a person in their chat once the router has handled what they wrote. Not
/// a delivery (it belongs to no tenant's message), so it carries its own id instead of a
/// delivery id; the bot's runtime turns it into words ([`ChatAnswer::text`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatAnswer {
    pub version: EnvelopeVersion,
    pub answer_id: Uuid,
    pub channel: Channel,
    pub chat: Address,
    pub answer: Answer,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Answer {
    /// The link code was good: this chat now receives the person's messages (R5).
    Linked,
    /// The code is unknown, used or expired; nothing changed.
    InvalidCode,
    /// A support request became a ticket (R53).
    TicketOpened { ticket_id: Uuid },
    /// A support request from a chat that is linked to nobody: there is no tenant to send it to.
    NotLinked,
    /// A staff member answered a ticket.
    SupportReply { ticket_id: Uuid, text: String },
}

impl ChatAnswer {
    /// An answer to say in `chat` now; the channel is the chat's own, so the two cannot
    /// disagree.
    pub fn new(answer_id: Uuid, chat: Address, answer: Answer) -> ChatAnswer {
        ChatAnswer {
            version: EnvelopeVersion,
            answer_id,
            channel: chat.channel(),
            chat,
            answer,
            created_at: Utc::now(),
        }
    }

    /// The words the bot sends.
    pub fn text(&self) -> String {
        match &self.answer {
            Answer::Linked => {
                "This chat is now linked: you will get your notifications here.".to_owned()
            }
            Answer::InvalidCode => {
                "That link code is unknown, already used or expired. Ask for a new one and try again."
                    .to_owned()
            }
            Answer::TicketOpened { ticket_id } => format!(
                "Thanks, your request reached the support team (ticket {}). Their answer will come here.",
                short_id(ticket_id)
            ),
            Answer::NotLinked => "Link this chat first (send the link code you were given), then ask again.".to_owned(),
            Answer::SupportReply { ticket_id, text } => {
                format!("Support (ticket {}):\n{text}", short_id(ticket_id))
            }
        }
    }
}

/// The last eight hex digits of an id: enough for a person to quote, and what the API's
/// ticket list shows.
pub fn short_id(id: &Uuid) -> String {
    let simple = id.simple().to_string();
    simple[simple.len() - 8..].to_owned()
}

/// What a producer learns when every delivery of its message is final (R4): published on the
/// events exchange and, when the request set `reply_to`, sent there with its `correlation_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageOutcome {
    pub version: EnvelopeVersion,
    pub message_id: Uuid,
    pub tenant: TenantKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    pub completed_at: DateTime<Utc>,
    pub delivered: u32,
    pub failed: u32,
    /// Why the message as a whole failed before reaching anyone (`no_template`,
    /// `unknown_subscription`, ...). Absent when it was fanned out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    /// Every recipient and channel, up to the first 1,000; `delivered` and `failed` count all.
    pub recipients: Vec<RecipientOutcome>,
}

/// One recipient's result on one channel. A user with no address at all has one entry with no
/// channel and a permanent `no_address` failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecipientOutcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<Uuid>,
    pub attempts: u32,
    pub result: RecipientResult,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    tag = "status",
    rename_all = "snake_case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum RecipientResult {
    Delivered { delivered_at: DateTime<Utc> },
    Failed { failure: Failure },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureClass;
    use serde_json::json;

    #[test]
    fn attempt_results_are_tagged_by_status() {
        let result = AttemptResult::Failed {
            failure: Failure::permanent("blocked", "the user blocked the bot"),
        };
        assert_eq!(
            serde_json::to_value(&result).unwrap(),
            json!({"status": "failed", "failure": {"class": "permanent", "code": "blocked", "message": "the user blocked the bot"}})
        );
        assert!(result.is_final());
        let retry: AttemptResult = serde_json::from_value(json!({
            "status": "retry_scheduled", "retryAt": "2026-01-01T00:00:00Z",
            "failure": {"class": "temporary", "code": "rate_limited", "message": "429"}
        }))
        .unwrap();
        assert!(!retry.is_final());
        let AttemptResult::RetryScheduled { failure, .. } = retry else {
            panic!()
        };
        assert_eq!(failure.class, FailureClass::Temporary);
    }

    #[test]
    fn a_lone_event_and_a_bundle_both_read_as_their_events() {
        let event = json!({
            "version": 1, "deliveryId": Uuid::nil(), "messageId": Uuid::nil(),
            "tenant": "acme", "channel": "sms", "attempt": 1,
            "occurredAt": "2026-01-01T00:00:00Z", "result": {"status": "delivered"}
        });
        let lone = DeliveryEventBundle::events_of(event.to_string().as_bytes()).unwrap();
        assert_eq!(lone.len(), 1);
        let bundle = json!({"version": 1, "events": [event, event]});
        let both = DeliveryEventBundle::events_of(bundle.to_string().as_bytes()).unwrap();
        assert_eq!(both, vec![lone[0].clone(), lone[0].clone()]);
        assert!(DeliveryEventBundle::events_of(b"{\"events\": 1}").is_err());
        assert!(DeliveryEventBundle::events_of(b"not json").is_err());
    }
}

/// What the XMPP bot reports about one of its help-desk rooms (R31-R36), on routing key
/// `room.xmpp`. The router stores the room and every change with its time; the bot never
/// touches the database. Events of one room may arrive out of order (several router
/// replicas): the router keeps the latest state by `occurred_at` and the whole history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoomEvent {
    pub version: EnvelopeVersion,
    /// Unique per event: a redelivered event is stored once.
    pub event_id: Uuid,
    /// The bot's bare JID: rooms belong to the bot that made them, and a restarted bot asks
    /// for its rooms by it ([`RoomChange::BotStarted`]).
    pub bot: Jid,
    /// The room's bare JID (`name@muc-service`); the bot's own JID for `BotStarted`.
    pub room: Jid,
    pub change: RoomChange,
    pub occurred_at: DateTime<Utc>,
}

/// What happened in or to a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum RoomChange {
    /// Created and configured, the bot inside as owner: a free room for the pool (R31). The
    /// password is what the web application gives the people it sends in.
    Created { password: String },
    /// The room's state after someone came in or left (`occupant` is their nickname), as the
    /// bot saw it.
    State {
        state: RoomState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        occupant: Option<String>,
    },
    /// A person beyond staff and client tried to come in and was kicked: recorded, the state
    /// does not change.
    Refused { occupant: String },
    /// The bot (re)started and asks for its rooms that are not closed: the router answers
    /// with a [`RoomRoster`].
    BotStarted,
    /// A staff member wrote in a room reserved to answer a support ticket ([`TicketRoom`]):
    /// the router stores it as the ticket's reply and sends it to the person's chat (R53).
    /// Only rooms of a ticket are relayed; what is said in other rooms never leaves them.
    Said {
        /// The writer's nickname in the room.
        occupant: String,
        text: String,
    },
}

impl RoomEvent {
    pub fn new(bot: Jid, room: Jid, change: RoomChange) -> RoomEvent {
        RoomEvent {
            version: EnvelopeVersion,
            event_id: Uuid::now_v7(),
            bot,
            room,
            change,
            occurred_at: Utc::now(),
        }
    }
}

/// The router's answer to [`RoomChange::BotStarted`], on routing key `roster.xmpp`: the
/// bot's rooms that are not closed, with what it needs to rejoin them and reconcile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoomRoster {
    pub version: EnvelopeVersion,
    /// The bot asking; other bots ignore this roster.
    pub bot: Jid,
    /// The `BotStarted` event this answers: a bot that asked again ignores older answers.
    pub in_reply_to: Uuid,
    pub rooms: Vec<RosterRoom>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RosterRoom {
    pub room: Jid,
    pub password: String,
    pub state: RoomState,
    /// The staff member's nickname (the first person in), once someone came in: after a
    /// restart the bot tells by it who of two left while it was away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff: Option<String>,
    /// The support ticket the room answers, if any: the bot relays what staff write in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<Uuid>,
}

/// To the XMPP bot, on routing key `ticket.xmpp`: a room of its pool was reserved for a staff
/// member to answer a support ticket (R53). The bot posts the ticket into the room and from
/// then on reports what is written there as [`RoomChange::Said`], which the router turns
/// into the ticket's replies. Sent again (a redelivery) it changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TicketRoom {
    pub version: EnvelopeVersion,
    /// The bot that owns the room; other bots ignore this.
    pub bot: Jid,
    pub room: Jid,
    pub ticket_id: Uuid,
    /// The channel the person wrote on (`telegram`, `discord`, ...).
    pub channel: Channel,
    /// The person's name as their chat showed it, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// What the person wrote.
    pub text: String,
    pub created_at: DateTime<Utc>,
}
