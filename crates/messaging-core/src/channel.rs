//! Delivery channels.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A delivery channel. Each has one sender service and one send queue.
///
/// Adding a channel (R42) adds a variant here, a sender crate, and configuration; the
/// router and the runtime handle every variant the same way.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Telegram,
    Discord,
    Xmpp,
    Email,
    Sms,
    /// Microsoft Teams, through the Bot Framework (R38).
    Teams,
    /// Programs of the tenant's own that stay connected over WebSocket (R39).
    Websocket,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Channel::Telegram,
        Channel::Discord,
        Channel::Xmpp,
        Channel::Email,
        Channel::Sms,
        Channel::Teams,
        Channel::Websocket,
    ];

    /// The lowercase name used in JSON, queue names and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Telegram => "telegram",
            Channel::Discord => "discord",
            Channel::Xmpp => "xmpp",
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Teams => "teams",
            Channel::Websocket => "websocket",
        }
    }

    /// Chat channels reach a person only after the person wrote to the bot (R5): their
    /// addresses are linked with a code, not typed in.
    pub fn is_chat(self) -> bool {
        matches!(
            self,
            Channel::Telegram | Channel::Discord | Channel::Xmpp | Channel::Teams
        )
    }

    /// The code the legacy `{"sender": ...}` format uses (R41).
    pub fn legacy_code(self) -> &'static str {
        match self {
            Channel::Telegram => "TG",
            Channel::Discord => "DISCORD",
            Channel::Xmpp => "XMPP",
            Channel::Email => "EMAIL",
            Channel::Sms => "SMS",
            Channel::Teams => "TEAMS",
            Channel::Websocket => "WEBSOCKET",
        }
    }

    /// Parses a legacy sender code. Case-insensitive, because old producers were not consistent.
    pub fn from_legacy_code(code: &str) -> Result<Channel, UnknownChannel> {
        Channel::ALL
            .into_iter()
            .find(|c| c.legacy_code().eq_ignore_ascii_case(code.trim()))
            .ok_or_else(|| UnknownChannel(code.to_owned()))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no channel. The message lists the known ones, from [`Channel::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownChannel(pub String);

impl fmt::Display for UnknownChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Channel::ALL.iter().map(|c| c.as_str()).collect();
        let codes: Vec<&str> = Channel::ALL.iter().map(|c| c.legacy_code()).collect();
        write!(
            f,
            "unknown channel {:?}; known channels: {} (legacy codes {})",
            self.0,
            names.join(", "),
            codes.join(", ")
        )
    }
}

impl std::error::Error for UnknownChannel {}

impl FromStr for Channel {
    type Err = UnknownChannel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownChannel(s.to_owned()))
    }
}

crate::sqlx_text!(Channel);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_codes_round_trip_for_every_channel() {
        for channel in Channel::ALL {
            assert_eq!(
                Channel::from_legacy_code(channel.legacy_code()),
                Ok(channel)
            );
        }
        assert_eq!(Channel::from_legacy_code("tg"), Ok(Channel::Telegram));
    }

    #[test]
    fn unknown_legacy_code_names_the_known_ones() {
        let err = Channel::from_legacy_code("FAX").unwrap_err();
        assert!(err.to_string().contains("FAX"));
        assert!(err.to_string().contains("TG"));
    }

    #[test]
    fn names_parse_back() {
        for channel in Channel::ALL {
            assert_eq!(channel.as_str().parse::<Channel>(), Ok(channel));
            assert_eq!(
                serde_json::to_value(channel).unwrap(),
                serde_json::json!(channel.as_str())
            );
        }
    }
}
