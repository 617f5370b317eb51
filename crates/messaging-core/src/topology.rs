//! Names of every exchange, queue and routing key, derived from one prefix.
//!
//! The declarations (with their arguments) live in the runtime crate; the names live here so
//! producers and tools can compute them without the runtime. `docs/topology.md` describes both.

use crate::channel::Channel;

/// All names under one prefix. Tests use a random prefix each, so they never collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: impl Into<String>) -> Self {
        Names {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// What a tenant's reply queues must start with (`{p}.reply.<tenant>.`): the router
    /// answers `reply_to` only there, through the default exchange, so a producer can name
    /// neither Herald's own queues nor another tenant's.
    pub fn reply_queue_prefix(&self, tenant: &str) -> String {
        format!("{}.reply.{tenant}.", self.prefix)
    }

    /// Whether `queue` is one of `tenant`'s reply queues ([`Names::reply_queue_prefix`]).
    pub fn is_reply_queue_of(&self, tenant: &str, queue: &str) -> bool {
        queue
            .strip_prefix(&self.reply_queue_prefix(tenant))
            .is_some_and(|rest| !rest.is_empty())
    }

    /// Topic exchange producers publish to (any routing key).
    pub fn ingress_exchange(&self) -> String {
        format!("{}.ingress", self.prefix)
    }

    /// The router's queue for producer messages, bound to the ingress exchange with `#`.
    pub fn ingress_queue(&self) -> String {
        format!("{}.router.ingress", self.prefix)
    }

    /// Direct exchange for send jobs; the routing key is the channel name.
    pub fn send_exchange(&self) -> String {
        format!("{}.send", self.prefix)
    }

    /// One queue per channel; each sender deployment consumes its own and scales on its length.
    pub fn send_queue(&self, channel: Channel) -> String {
        format!("{}.send.{}", self.prefix, channel.as_str())
    }

    /// Beside each send queue, a queue that never holds a message: a sender whose circuit
    /// breaker paused it consumes this one instead, so the router's watchdog can tell a live
    /// but paused sender (its jobs wait) from no sender at all (its jobs are failed).
    pub fn standby_queue(&self, channel: Channel) -> String {
        format!("{}.standby", self.send_queue(channel))
    }

    /// Topic exchange for delivery events, contact links and outcomes.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The router's queue for delivery events and contact links.
    pub fn router_events_queue(&self) -> String {
        format!("{}.router.events", self.prefix)
    }

    /// Headers exchange in front of the delay queues; a message's `herald-delay` header picks
    /// the queue, its routing key (the target queue's name) survives the wait.
    pub fn delay_exchange(&self) -> String {
        format!("{}.delay", self.prefix)
    }

    pub fn delay_queue(&self, delay_ms: u64) -> String {
        format!("{}.delay.{}ms", self.prefix, delay_ms)
    }

    /// Direct exchange that expired delayed messages return through, routed by target queue name.
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }

    /// Direct exchange for dead letters, routed by the name of the queue they died in.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn dead_letter_queue(&self, work_queue: &str) -> String {
        format!("{work_queue}.dead")
    }

    /// A chat channel's answers (what its bot tells people after the router handled what they
    /// wrote), bound to the events exchange with `answer.<channel>`; any replica of the
    /// channel's sender answers.
    pub fn answers_queue(&self, channel: Channel) -> String {
        format!("{}.answers.{}", self.prefix, channel.as_str())
    }

    /// The XMPP bot's own: its roster after a (re)start (`roster.xmpp` on the events
    /// exchange), so the room pool can rejoin its rooms.
    pub fn rooms_queue(&self) -> String {
        format!("{}.rooms.xmpp", self.prefix)
    }

    /// Every work queue: the ones consumers read and that have delays and dead letters. The
    /// standby queues are not among them: they hold nothing, so they need neither.
    pub fn work_queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.ingress_queue(),
            self.router_events_queue(),
            self.rooms_queue(),
        ];
        queues.extend(Channel::ALL.iter().map(|c| self.send_queue(*c)));
        queues.extend(
            Channel::ALL
                .iter()
                .filter(|c| c.is_chat())
                .map(|c| self.answers_queue(*c)),
        );
        queues
    }
}

/// Routing keys on the events exchange.
pub mod routing {
    use crate::channel::Channel;

    /// `delivery.<channel>.<status>`, status being `delivered`, `retry_scheduled` or `failed`.
    pub fn delivery_event(channel: Channel, status: &str) -> String {
        format!("delivery.{}.{status}", channel.as_str())
    }

    /// `delivery.<channel>.bundle`: several `delivered` events in one message
    /// ([`crate::events::DeliveryEventBundle`]).
    pub fn delivery_event_bundle(channel: Channel) -> String {
        format!("delivery.{}.bundle", channel.as_str())
    }

    /// `contact.<channel>`: a chat bot linked a chat to a user (R5).
    pub fn contact_link(channel: Channel) -> String {
        format!("contact.{}", channel.as_str())
    }

    /// `contact.seen.<channel>`: a person wrote from a chat whose reference can move (R38).
    pub fn chat_seen(channel: Channel) -> String {
        format!("contact.seen.{}", channel.as_str())
    }

    /// `outcome.<tenant>`: a message is complete (R4). Producers bind their own queue to it.
    pub fn outcome(tenant: &str) -> String {
        format!("outcome.{tenant}")
    }

    /// `support.<channel>`: a person asked a bot for help (R53).
    pub fn support_request(channel: Channel) -> String {
        format!("support.{}", channel.as_str())
    }

    /// `room.xmpp`: the XMPP bot reports a help-desk room's change (R31-R36).
    pub const ROOM: &str = "room.xmpp";

    /// `roster.xmpp`: the router tells a (re)started XMPP bot its open rooms.
    pub const ROSTER: &str = "roster.xmpp";

    /// `ticket.xmpp`: the API tells the XMPP bot that a room was reserved to answer a support
    /// ticket (R53).
    pub const TICKET: &str = "ticket.xmpp";

    /// `answer.<channel>`: what a chat channel's bot tells a person.
    pub fn answer(channel: Channel) -> String {
        format!("answer.{}", channel.as_str())
    }

    /// Patterns the router's events queue is bound with.
    pub const ROUTER_EVENT_BINDINGS: [&str; 4] = ["delivery.#", "contact.#", "support.#", "room.#"];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_carries_the_prefix() {
        let names = Names::new("t1234");
        let all = [
            names.ingress_exchange(),
            names.send_exchange(),
            names.events_exchange(),
            names.delay_exchange(),
            names.retry_exchange(),
            names.dead_letter_exchange(),
            names.delay_queue(1000),
            names.standby_queue(Channel::Email),
        ];
        for name in all.iter().chain(names.work_queues().iter()) {
            assert!(name.starts_with("t1234."), "{name}");
        }
        assert_eq!(names.send_queue(Channel::Sms), "t1234.send.sms");
        assert_eq!(names.standby_queue(Channel::Sms), "t1234.send.sms.standby");
        let chats = Channel::ALL.iter().filter(|c| c.is_chat()).count();
        assert_eq!(names.work_queues().len(), 3 + Channel::ALL.len() + chats);
        assert_eq!(names.rooms_queue(), "t1234.rooms.xmpp");
        assert_eq!(
            names.answers_queue(Channel::Telegram),
            "t1234.answers.telegram"
        );
    }
}
