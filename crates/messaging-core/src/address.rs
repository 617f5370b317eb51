//! A typed destination on one channel.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::states::AddressKind;
use crate::values::{ChatId, DiscordId, E164, Email, InvalidValue, Jid, TeamsChat, WsKey};

/// Where one delivery goes. The variant fixes the channel, so an email address can never be
/// handed to the SMS sender.
///
/// JSON: `{"kind": "email", "value": "ann@example.org"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(
    tag = "kind",
    content = "value",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Address {
    /// A Telegram chat the user opened with the bot (R5).
    Telegram(ChatId),
    /// A Discord user; the sender opens (and caches) the DM channel.
    Discord(DiscordId),
    /// A person's JID.
    Xmpp(Jid),
    /// A multi-user-chat room's bare JID (R37).
    XmppRoom(Jid),
    Email(Email),
    Sms(E164),
    /// A Teams conversation with the bot, captured from the Bot Framework (R38).
    Teams(TeamsChat),
    /// A key the tenant's own WebSocket clients register for (R39).
    Websocket(WsKey),
}

impl Address {
    pub fn channel(&self) -> Channel {
        match self {
            Address::Telegram(_) => Channel::Telegram,
            Address::Discord(_) => Channel::Discord,
            Address::Xmpp(_) | Address::XmppRoom(_) => Channel::Xmpp,
            Address::Email(_) => Channel::Email,
            Address::Sms(_) => Channel::Sms,
            Address::Teams(_) => Channel::Teams,
            Address::Websocket(_) => Channel::Websocket,
        }
    }

    /// Parses an address given as text for a channel, as the REST API and the legacy default
    /// destinations receive it. XMPP room addresses are told apart by the caller.
    pub fn parse(channel: Channel, raw: &str) -> Result<Address, InvalidValue> {
        Ok(match channel {
            Channel::Telegram => Address::Telegram(ChatId::parse(raw)?),
            Channel::Discord => Address::Discord(DiscordId::parse(raw)?),
            Channel::Xmpp => Address::Xmpp(Jid::parse(raw)?),
            Channel::Email => Address::Email(Email::parse(raw)?),
            Channel::Sms => Address::Sms(E164::parse(raw)?),
            Channel::Teams => Address::Teams(TeamsChat::parse(raw)?),
            Channel::Websocket => Address::Websocket(WsKey::parse(raw)?),
        })
    }

    /// Parses an address as stored: its kind and its text.
    pub fn from_kind(kind: AddressKind, raw: &str) -> Result<Address, InvalidValue> {
        Ok(match kind {
            AddressKind::XmppRoom => Address::XmppRoom(Jid::parse(raw)?),
            other => Address::parse(other.channel(), raw)?,
        })
    }

    /// The kind as stored and serialized (`telegram`, …, `xmpp_room`, `email`, `sms`).
    pub fn kind(&self) -> AddressKind {
        match self {
            Address::Telegram(_) => AddressKind::Telegram,
            Address::Discord(_) => AddressKind::Discord,
            Address::Xmpp(_) => AddressKind::Xmpp,
            Address::XmppRoom(_) => AddressKind::XmppRoom,
            Address::Email(_) => AddressKind::Email,
            Address::Sms(_) => AddressKind::Sms,
            Address::Teams(_) => AddressKind::Teams,
            Address::Websocket(_) => AddressKind::Websocket,
        }
    }

    /// The address as text, the way it is stored and shown.
    pub fn value(&self) -> String {
        match self {
            Address::Telegram(id) => id.to_string(),
            Address::Discord(id) => id.to_string(),
            Address::Xmpp(jid) | Address::XmppRoom(jid) => jid.to_string(),
            Address::Email(email) => email.to_string(),
            Address::Sms(number) => number.to_string(),
            Address::Teams(chat) => chat.to_string(),
            Address::Websocket(key) => key.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_serialize_with_kind_and_value() {
        let address = Address::parse(Channel::Email, "ann@example.org").unwrap();
        assert_eq!(
            serde_json::to_value(&address).unwrap(),
            json!({"kind": "email", "value": "ann@example.org"})
        );
        let back: Address =
            serde_json::from_value(json!({"kind": "telegram", "value": 42})).unwrap();
        assert_eq!(back.channel(), Channel::Telegram);
    }

    #[test]
    fn a_value_of_the_wrong_shape_for_its_kind_is_rejected() {
        let err =
            serde_json::from_value::<Address>(json!({"kind": "sms", "value": "ann@example.org"}))
                .unwrap_err()
                .to_string();
        assert!(err.contains("phone number"), "{err}");
    }
}
