//! The closed sets of words Herald stores: address kinds and states, message and delivery
//! statuses, where a message came from, and the access roles.
//!
//! Each is a [`text_enum!`](crate::text_enum!): the database column is `text` with a `CHECK`
//! (or, for channels and address kinds, a domain) that lists the same words, and a test in
//! `herald-storage` compares the two lists, so the Rust enum and the SQL cannot drift apart.

use crate::channel::Channel;
use crate::text_enum;

text_enum! {
    /// What an address is: the channel, and for XMPP whether it is a person or a room.
    pub enum AddressKind("address kind") {
        Telegram = "telegram",
        Discord = "discord",
        Xmpp = "xmpp",
        /// A multi-user-chat room's bare JID (R37).
        XmppRoom = "xmpp_room",
        Email = "email",
        Sms = "sms",
        Teams = "teams",
        Websocket = "websocket",
    }
}

impl AddressKind {
    /// The channel that delivers to this kind of address.
    pub fn channel(self) -> Channel {
        match self {
            AddressKind::Telegram => Channel::Telegram,
            AddressKind::Discord => Channel::Discord,
            AddressKind::Xmpp | AddressKind::XmppRoom => Channel::Xmpp,
            AddressKind::Email => Channel::Email,
            AddressKind::Sms => Channel::Sms,
            AddressKind::Teams => Channel::Teams,
            AddressKind::Websocket => Channel::Websocket,
        }
    }

    /// The kind an address given only with its channel has (a registration names a channel,
    /// not a kind): the channel's person address.
    pub fn of_channel(channel: Channel) -> AddressKind {
        match channel {
            Channel::Telegram => AddressKind::Telegram,
            Channel::Discord => AddressKind::Discord,
            Channel::Xmpp => AddressKind::Xmpp,
            Channel::Email => AddressKind::Email,
            Channel::Sms => AddressKind::Sms,
            Channel::Teams => AddressKind::Teams,
            Channel::Websocket => AddressKind::Websocket,
        }
    }
}

text_enum! {
    /// Whether Herald still delivers to an address (R3, R6).
    pub enum AddressState("address state") {
        Active = "active",
        /// A provider said it is gone for good (R6): linked or added again, it is used again.
        Unreachable = "unreachable",
        /// It failed for longer than the configured period (R3).
        Removed = "removed",
    }
}

text_enum! {
    /// Where an accepted message is in its life.
    pub enum MessageStatus("message status") {
        /// Stored; not fanned out yet.
        Accepted = "accepted",
        /// Every delivery is written and its job published; some are still pending.
        FannedOut = "fanned_out",
        /// Every delivery ended (sent or failed).
        Completed = "completed",
        /// Refused before any job went out (unknown subscription, no template, ...).
        Failed = "failed",
    }
}

text_enum! {
    /// How a message reached Herald (R14).
    pub enum MessageSource("message source") {
        Api = "api",
        Amqp = "amqp",
        Legacy = "legacy",
        Schedule = "schedule",
        Event = "event",
        /// A code or link Herald sent to prove an address (issue #17).
        Verification = "verification",
    }
}

text_enum! {
    /// One delivery's status (R15).
    pub enum DeliveryStatus("delivery status") {
        Pending = "pending",
        Sent = "sent",
        Failed = "failed",
    }
}

text_enum! {
    /// Who may do what (R16).
    pub enum Role("role") {
        /// Everything, in every tenant.
        GlobalAdmin = "global_admin",
        /// Everything in the own tenant but system subscriptions.
        TenantAdmin = "tenant_admin",
        /// The own registrations, addresses and deliveries.
        User = "user",
    }
}

text_enum! {
    /// Where a support ticket is (R53).
    pub enum TicketState("ticket state") {
        /// Nobody answered yet.
        Open = "open",
        /// Staff replied at least once.
        Answered = "answered",
        Closed = "closed",
    }
}

text_enum! {
    /// Where a help-desk room is (R31-R36). Who is staff and who is client follows from the
    /// order of arrival: the API hands a room to a staff member first (R32), so the first
    /// person in is staff and the second the client.
    pub enum RoomState("room state") {
        /// In the pool: created and configured by the bot, not handed out.
        Free = "free",
        /// Handed to a staff member by the API; nobody has joined yet.
        Reserved = "reserved",
        /// The first person (the staff member) is in, waiting for a client (R32).
        StaffWaiting = "staff_waiting",
        /// A second person (the client) joined (R34).
        Chatting = "chatting",
        /// The staff member left; the client is still in.
        StaffLeft = "staff_left",
        /// The client left; the staff member is still in.
        ClientLeft = "client_left",
        /// The last person left (or the room was lost): the bot left and destroyed it. Final;
        /// the row stays as history (R36).
        Closed = "closed",
    }
}

impl RoomState {
    /// A closed room never changes again.
    pub fn is_final(self) -> bool {
        self == RoomState::Closed
    }
}

text_enum! {
    /// What one entry of a help-desk room's history records (R36).
    pub enum RoomChangeKind("room change kind") {
        /// The bot created the room for the pool (state `free`).
        Created = "created",
        /// The API handed it to a staff member (state `reserved`).
        Reserved = "reserved",
        /// The API gave it to a client (R33); the state does not change.
        ClientAssigned = "client_assigned",
        /// The bot reported a state after someone came in or left.
        State = "state",
        /// The bot refused (kicked) a third person; the state does not change.
        Refused = "refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_has_its_person_address_kind() {
        for &channel in Channel::ALL.iter() {
            assert_eq!(AddressKind::of_channel(channel).channel(), channel);
        }
        for &kind in AddressKind::ALL {
            assert!(Channel::ALL.contains(&kind.channel()));
            // The database checks a kind against its channel by this naming rule
            // (`addresses_kind_fits_channel`, migration 0006).
            let (kind, channel) = (kind.as_str(), kind.channel().as_str());
            assert!(
                kind == channel || kind.starts_with(&format!("{channel}_")),
                "address kind {kind} must be named after its channel {channel}"
            );
        }
    }

    #[test]
    fn words_parse_back_and_serialize_as_themselves() {
        for &status in MessageStatus::ALL {
            assert_eq!(status.as_str().parse::<MessageStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        let err = "fannedout".parse::<MessageStatus>().unwrap_err();
        assert!(err.to_string().contains("fanned_out"), "{err}");
    }
}
