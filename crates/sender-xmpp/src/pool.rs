//! The pool of help-desk rooms (R31-R36), run by the XMPP sender's bot.
//!
//! The bot keeps `pool_target` free rooms and never more than `pool_max` in all. Each room
//! has a unique name and a random password; the bot creates it (a new room is locked until
//! its owner configures it), configures it through the `muc#owner` form (hidden, temporary,
//! password-protected, no invitations, real JIDs for moderators only, no history) and stays
//! in it as owner. It reports every room and every change as a [`RoomEvent`] (`room.xmpp`),
//! which the router stores; the bot never touches the database.
//!
//! It watches presence ([`crate::rooms::Room`]): first person in -> `staff_waiting`, second
//! -> `chatting`, one leaves -> `staff_left`/`client_left`, last leaves -> `closed`: the bot
//! destroys the room and the pool refills. A third person is kicked and recorded (servers
//! often cannot cap a room at three occupants, bot included).
//!
//! After a start, and after the stream was lost (rooms are left with it), the bot says
//! `BotStarted` and waits for the router's roster (`roster.xmpp` -> `{p}.rooms.xmpp`): it
//! rejoins each room with its password and reconciles who it finds with the stored state. A
//! room that no longer exists (a temporary room is gone once its last occupant, the bot
//! included, left) comes back from the join as newly created: the bot destroys it again and
//! reports it closed. No room is created before the roster is in, so the pool never
//! overfills.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use herald_runtime::amqp::{Context, Handler, Outcome, Rejection, decode_json};
use herald_runtime::health::Health;
use messaging_core::RoomState;
use messaging_core::events::{RoomChange, RoomEvent, RoomRoster, TicketRoom};
use messaging_core::topology::routing;
use messaging_core::values::Jid as CoreJid;
use rand::Rng;
use rand::distr::Alphanumeric;
use sender_runtime::chat::Inbox;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_xmpp::IqRequest;
use tokio_xmpp::jid::{BareJid, Jid};
use tokio_xmpp::parsers::delay::Delay;
use tokio_xmpp::parsers::message::Message;
use tokio_xmpp::parsers::muc::user::{MucUser, Status};
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use uuid::Uuid;

use crate::XmppSender;
use crate::rooms::{Effect, PEOPLE, Room};
use crate::session::Link;
use crate::stanzas;

/// `xmpp.pool_*`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// The multi-user chat service (`conference.example.org`).
    pub service: String,
    pub target: usize,
    pub max: usize,
    /// Room names start with it, so the bot's rooms are told apart from others.
    pub prefix: String,
}

impl PoolSettings {
    /// Whether a room belongs to the pool (by its name and service).
    pub fn owns(&self, room: &BareJid) -> bool {
        room.domain().as_str() == self.service
            && room
                .node()
                .is_some_and(|node| node.as_str().starts_with(&self.prefix))
    }

    fn new_room(&self) -> Option<BareJid> {
        let name = format!(
            "{}{}",
            self.prefix,
            &Uuid::new_v4().simple().to_string()[..16]
        );
        BareJid::from_str(&format!("{name}@{}", self.service)).ok()
    }
}

/// What the pool reacts to.
#[derive(Debug)]
pub enum PoolInput {
    Presence(Box<Presence>),
    Roster(Box<RoomRoster>),
    /// A room reserved to answer a support ticket (R53).
    Ticket(Box<TicketRoom>),
    /// A groupchat message in one of the pool's rooms.
    Said(Box<Message>),
    Link(Link),
}

/// What reaches the bot on its rooms queue (`roster.xmpp`, `ticket.xmpp`). Both types deny
/// unknown fields, so the shape tells them apart.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum PoolCommand {
    Roster(RoomRoster),
    Ticket(TicketRoom),
}

/// The longest reply a ticket stores (`support_replies.body`).
const MAX_REPLY_CHARS: usize = 4000;

/// The readiness component of the pool.
pub const COMPONENT: &str = "pool:xmpp";

/// How long the bot waits for a roster before asking again.
const ASK_AGAIN: Duration = Duration::from_secs(15);

/// A room and where the bot is with it.
struct Slot {
    room: Room,
    phase: Phase,
    ticket: Option<Ticket>,
}

/// The support ticket a room answers (R53).
struct Ticket {
    id: Uuid,
    /// What the bot posts for the staff member, until it did. `None` after a restart: the
    /// roster names the ticket only, and it was posted before.
    intro: Option<String>,
}

enum Phase {
    /// The bot sent its join to create the room and waits for the server's answer.
    Creating,
    /// Rejoining a room from the roster: who is in, as the server lists them.
    Syncing(Vec<String>),
    Live,
}

pub struct Pool {
    bot: Arc<XmppSender>,
    settings: PoolSettings,
    inbox: Inbox,
    health: Health,
    bot_jid: CoreJid,
    rooms: HashMap<BareJid, Slot>,
    /// The `BotStarted` waiting for its roster, and when it was sent.
    asked: Option<(Uuid, Instant)>,
    synced: bool,
}

impl Pool {
    pub fn new(
        bot: Arc<XmppSender>,
        settings: PoolSettings,
        inbox: Inbox,
        health: Health,
    ) -> Option<Pool> {
        let bot_jid = CoreJid::parse(&bot.bot().to_string()).ok()?;
        Some(Pool {
            bot,
            settings,
            inbox,
            health,
            bot_jid,
            rooms: HashMap::new(),
            asked: None,
            synced: false,
        })
    }

    pub async fn run(mut self, mut input: mpsc::Receiver<PoolInput>, shutdown: CancellationToken) {
        self.health
            .set(COMPONENT, false, "waiting for the XMPP session");
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        // The stream was lost since the roster came: the next `Online` asks again.
        let mut lost = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = input.recv() => match next {
                    None => break,
                    Some(PoolInput::Presence(presence)) => self.presence(*presence).await,
                    Some(PoolInput::Roster(roster)) => self.roster(*roster).await,
                    Some(PoolInput::Ticket(ticket)) => self.ticket(*ticket).await,
                    Some(PoolInput::Said(message)) => self.said(*message).await,
                    Some(PoolInput::Link(Link::Online(_))) if lost => {
                        // Rooms were left with the stream: ask for them again.
                        lost = false;
                        self.rooms.clear();
                        self.ask().await;
                    }
                    Some(PoolInput::Link(Link::Lost(_))) => {
                        lost = true;
                        self.synced = false;
                        self.asked = None;
                        self.health.set(COMPONENT, false, "the XMPP stream is down");
                    }
                    // The first connection: the tick asks.
                    Some(PoolInput::Link(_)) => {}
                },
                _ = tick.tick() => {
                    if !self.synced {
                        let stale = self.asked.is_none_or(|(_, at)| at.elapsed() >= ASK_AGAIN);
                        if stale && self.bot.session().online().await.is_ok() {
                            self.ask().await;
                        }
                    } else {
                        self.fill().await;
                    }
                }
            }
        }
    }

    /// Says `BotStarted`; the router answers with the roster.
    async fn ask(&mut self) {
        let event = RoomEvent::new(
            self.bot_jid.clone(),
            self.bot_jid.clone(),
            RoomChange::BotStarted,
        );
        let id = event.event_id;
        if self.publish(event).await {
            self.asked = Some((id, Instant::now()));
            self.health
                .set(COMPONENT, false, "waiting for the router's roster of rooms");
        }
    }

    async fn roster(&mut self, roster: RoomRoster) {
        if roster.bot.bare() != self.bot_jid.bare()
            || self.asked.map(|(id, _)| id) != Some(roster.in_reply_to)
        {
            return; // another bot's, or an answer to an older question
        }
        self.asked = None;
        self.rooms.clear();
        for entry in roster.rooms {
            let Ok(room) = BareJid::from_str(entry.room.bare()) else {
                continue;
            };
            self.rooms.insert(
                room.clone(),
                Slot {
                    room: Room::known(entry.password.clone(), entry.state, entry.staff),
                    phase: Phase::Syncing(Vec::new()),
                    ticket: entry.ticket_id.map(|id| Ticket { id, intro: None }),
                },
            );
            if let Err(error) = self.send_join(&room, Some(&entry.password)).await {
                tracing::warn!(%room, %error, "could not rejoin a room");
            }
        }
        self.synced = true;
        tracing::info!(
            rooms = self.rooms.len(),
            "roster in; rejoining the pool's rooms"
        );
        self.fill().await;
    }

    /// R53: the room now answers a ticket. The bot posts the ticket for the staff member once
    /// someone is in (the rooms keep no history, so a post into an empty room would be lost)
    /// and relays what is written there from then on.
    async fn ticket(&mut self, ticket: TicketRoom) {
        if ticket.bot.bare() != self.bot_jid.bare() {
            return;
        }
        let Ok(room) = BareJid::from_str(ticket.room.bare()) else {
            return;
        };
        let Some(slot) = self.rooms.get_mut(&room) else {
            tracing::warn!(%room, ticket_id = %ticket.ticket_id, "a ticket for a room the bot does not hold (closed meanwhile?); ignored");
            return;
        };
        if slot
            .ticket
            .as_ref()
            .is_some_and(|t| t.id == ticket.ticket_id)
        {
            return; // a redelivery
        }
        let from = ticket
            .display_name
            .as_deref()
            .map(|name| format!("{name} on {}", ticket.channel))
            .unwrap_or_else(|| format!("a person on {}", ticket.channel));
        slot.ticket = Some(Ticket {
            id: ticket.ticket_id,
            intro: Some(format!(
                "Support ticket {} from {from}:\n\n{}\n\nWhat you write in this room is sent to them as your answer.",
                ticket.ticket_id, ticket.text
            )),
        });
        // The API reserved it: no longer free for the pool, which refills.
        if slot.room.is_free() {
            slot.room.state = messaging_core::RoomState::Reserved;
        }
        tracing::info!(%room, ticket_id = %ticket.ticket_id, "room answers a support ticket");
        self.post_ticket(&room).await;
        self.fill().await;
    }

    /// Posts the ticket into its room once someone is in.
    async fn post_ticket(&mut self, room: &BareJid) {
        let Some(slot) = self.rooms.get_mut(room) else {
            return;
        };
        if slot.room.occupants().is_empty() || !matches!(slot.phase, Phase::Live) {
            return;
        }
        let Some(intro) = slot.ticket.as_mut().and_then(|t| t.intro.take()) else {
            return;
        };
        if let Err(error) = self
            .bot
            .session()
            .send(stanzas::groupchat(room.clone(), intro))
            .await
        {
            tracing::warn!(%room, %error, "could not post the ticket into its room");
        }
    }

    /// A groupchat message in a pool room: in a ticket's room, what a person (not the bot,
    /// whose own messages the room echoes) writes is the ticket's reply.
    async fn said(&mut self, message: Message) {
        let Some(from) = message.from.clone() else {
            return;
        };
        let room = from.to_bare();
        let Some(Slot {
            ticket: Some(_), ..
        }) = self.rooms.get(&room)
        else {
            return; // not a ticket's room: what is said there stays there
        };
        let Some(nick) = from.resource().map(|r| r.to_string()) else {
            return; // the room itself (its subject, status messages)
        };
        let delayed = message
            .payloads
            .iter()
            .any(|p| Delay::try_from(p.clone()).is_ok());
        if nick == self.bot.nickname() || delayed {
            return;
        }
        let Some((_, text)) = message.get_best_body_cloned(vec!["en"]) else {
            return; // chat states
        };
        let text = text.trim().to_owned();
        if text.is_empty() {
            return;
        }
        if text.chars().count() > MAX_REPLY_CHARS {
            let notice = format!(
                "{nick}, that message was not sent: an answer holds at most {MAX_REPLY_CHARS} characters. Please split it."
            );
            let _ = self
                .bot
                .session()
                .send(stanzas::groupchat(room.clone(), notice))
                .await;
            return;
        }
        self.report(
            &room,
            RoomChange::Said {
                occupant: nick,
                text,
            },
        )
        .await;
    }

    /// Creates rooms while fewer than `target` are free and fewer than `max` exist (R35).
    async fn fill(&mut self) {
        if !self.synced {
            return;
        }
        let free = self
            .rooms
            .values()
            .filter(|s| matches!(s.phase, Phase::Creating) || s.room.is_free())
            .count();
        let mut missing = self.settings.target.saturating_sub(free);
        while missing > 0 && self.rooms.len() < self.settings.max {
            let Some(room) = self.settings.new_room() else {
                return;
            };
            let password: String = rand::rng()
                .sample_iter(Alphanumeric)
                .take(24)
                .map(char::from)
                .collect();
            self.rooms.insert(
                room.clone(),
                Slot {
                    room: Room::free(password),
                    phase: Phase::Creating,
                    ticket: None,
                },
            );
            if let Err(error) = self.send_join(&room, None).await {
                tracing::warn!(%room, %error, "could not create a room");
                self.rooms.remove(&room);
                return;
            }
            missing -= 1;
        }
        self.report_health();
    }

    fn report_health(&self) {
        let free = self.rooms.values().filter(|s| s.room.is_free()).count();
        self.health.set(
            COMPONENT,
            true,
            format!(
                "{free} free of {} wanted, {} rooms of at most {}",
                self.settings.target,
                self.rooms.len(),
                self.settings.max
            ),
        );
    }

    async fn send_join(
        &self,
        room: &BareJid,
        password: Option<&str>,
    ) -> Result<(), crate::session::SessionError> {
        let occupant = room
            .with_resource_str(self.bot.nickname())
            .map_err(|e| crate::session::SessionError::Stream(e.to_string()))?;
        self.bot
            .session()
            .send(stanzas::join(occupant, password))
            .await
    }

    async fn presence(&mut self, presence: Presence) {
        let Some(from) = presence.from.clone() else {
            return;
        };
        let room = from.to_bare();
        if !self.rooms.contains_key(&room) {
            return;
        }
        let nick = from.resource().map(|r| r.to_string()).unwrap_or_default();
        let user = presence
            .payloads
            .iter()
            .find_map(|p| MucUser::try_from(p.clone()).ok());
        let statuses = user.map(|u| u.status).unwrap_or_default();
        let own = statuses.contains(&Status::SelfPresence) || nick == self.bot.nickname();
        match presence.type_ {
            PresenceType::Error => {
                // The join was refused (a wrong password, the service gone): the room is lost.
                tracing::warn!(%room, "the room refused the bot's join");
                self.close(&room, String::new(), false).await;
            }
            PresenceType::None if own => {
                let created = statuses.contains(&Status::RoomHasBeenCreated);
                self.own_join(&room, created).await;
            }
            PresenceType::None => {
                let effect = match self.rooms.get_mut(&room) {
                    Some(Slot {
                        phase: Phase::Syncing(present),
                        ..
                    }) => {
                        if !present.contains(&nick) {
                            present.push(nick);
                        }
                        None
                    }
                    Some(Slot {
                        room: state,
                        phase: Phase::Live,
                        ..
                    }) => state.joined(&nick),
                    _ => None,
                };
                self.apply(&room, effect).await;
            }
            PresenceType::Unavailable if own => {
                // Kicked, or the room destroyed by someone else: it is gone for the pool.
                self.close(&room, String::new(), false).await;
            }
            PresenceType::Unavailable => {
                let effect = match self.rooms.get_mut(&room) {
                    Some(Slot {
                        phase: Phase::Syncing(present),
                        ..
                    }) => {
                        present.retain(|n| *n != nick);
                        None
                    }
                    Some(Slot {
                        room: state,
                        phase: Phase::Live,
                        ..
                    }) => state.left(&nick),
                    _ => None,
                };
                self.apply(&room, effect).await;
            }
            _ => {}
        }
    }

    /// The server's answer to the bot's own join: a room made, or a room rejoined.
    async fn own_join(&mut self, room: &BareJid, created: bool) {
        let Some(slot) = self.rooms.get_mut(room) else {
            return;
        };
        match std::mem::replace(&mut slot.phase, Phase::Live) {
            Phase::Creating if created => {
                let password = slot.room.password.clone();
                match self.configure(room, &password).await {
                    Ok(()) => {
                        tracing::info!(%room, "room created for the pool");
                        self.report(room, RoomChange::Created { password }).await;
                        self.report_health();
                    }
                    Err(error) => {
                        tracing::warn!(%room, %error, "could not configure a new room; destroying it");
                        self.destroy(room).await;
                        self.rooms.remove(room);
                    }
                }
            }
            Phase::Creating => {
                // The name was taken: leave that room to whoever has it.
                tracing::warn!(%room, "a room of that name exists already; trying another name");
                self.leave(room).await;
                self.rooms.remove(room);
            }
            Phase::Syncing(_) if created => {
                // Gone while the bot was away; the join made a new, empty one.
                self.destroy(room).await;
                self.close(room, String::new(), false).await;
            }
            Phase::Syncing(present) => {
                let effects = slot.room.reconcile(present);
                for effect in effects {
                    self.apply(room, Some(effect)).await;
                }
                self.report_health();
            }
            Phase::Live => {}
        }
    }

    /// The room's configuration (XEP-0045 §10.1.3). `maxusers` is set to three (staff,
    /// client, bot) only where the server's form offers it; otherwise the bot refuses a third
    /// person itself.
    async fn configure(&self, room: &BareJid, password: &str) -> Result<(), String> {
        let session = self.bot.session();
        let to = Jid::from(room.clone());
        let form = session
            .iq(to.clone(), IqRequest::Get(stanzas::config_request()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| stanzas::condition_name(&e.defined_condition))?;
        let people = (PEOPLE + 1).to_string();
        let max_users = form.as_ref().and_then(|query| {
            let fields = stanzas::form_fields(query);
            let options = stanzas::field_options(query, "muc#roomconfig_maxusers");
            let offered = fields.iter().any(|f| f == "muc#roomconfig_maxusers");
            (offered && (options.is_empty() || options.contains(&people))).then_some(3)
        });
        session
            .iq(
                to,
                IqRequest::Set(stanzas::room_config(password, max_users)),
            )
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| stanzas::condition_name(&e.defined_condition))?;
        Ok(())
    }

    async fn apply(&mut self, room: &BareJid, effect: Option<Effect>) {
        match effect {
            None => {}
            Some(Effect::State(state, occupant)) => {
                tracing::info!(%room, %state, %occupant, "room state");
                self.report(
                    room,
                    RoomChange::State {
                        state,
                        occupant: Some(occupant).filter(|o| !o.is_empty()),
                    },
                )
                .await;
                self.post_ticket(room).await;
                self.fill().await;
            }
            Some(Effect::Refuse(occupant)) => {
                tracing::warn!(%room, %occupant, "a third person came in; kicking");
                let kicked = self
                    .bot
                    .session()
                    .iq(
                        Jid::from(room.clone()),
                        IqRequest::Set(stanzas::kick(
                            &occupant,
                            "This help-desk room is for one staff member and one client.",
                        )),
                    )
                    .await;
                if !matches!(kicked, Ok(Ok(_))) {
                    tracing::warn!(%room, %occupant, ?kicked, "the kick failed");
                }
                self.report(room, RoomChange::Refused { occupant }).await;
            }
            Some(Effect::Close(occupant)) => self.close(room, occupant, true).await,
        }
    }

    /// Reports the room closed, destroys it (if the bot is still in it) and refills.
    async fn close(&mut self, room: &BareJid, occupant: String, destroy: bool) {
        if self.rooms.remove(room).is_none() {
            return;
        }
        self.report(
            room,
            RoomChange::State {
                state: RoomState::Closed,
                occupant: Some(occupant).filter(|o| !o.is_empty()),
            },
        )
        .await;
        if destroy {
            self.destroy(room).await;
        }
        tracing::info!(%room, "room closed");
        self.fill().await;
    }

    async fn destroy(&self, room: &BareJid) {
        let destroyed = self
            .bot
            .session()
            .iq(
                Jid::from(room.clone()),
                IqRequest::Set(stanzas::destroy_room("The conversation is over.")),
            )
            .await;
        if !matches!(destroyed, Ok(Ok(_))) {
            tracing::warn!(%room, ?destroyed, "could not destroy a room");
        }
    }

    async fn leave(&self, room: &BareJid) {
        if let Ok(occupant) = room.with_resource_str(self.bot.nickname()) {
            let _ = self.bot.session().send(stanzas::leave(occupant)).await;
        }
    }

    async fn report(&self, room: &BareJid, change: RoomChange) {
        let Ok(room) = CoreJid::parse(&room.to_string()) else {
            return;
        };
        self.publish(RoomEvent::new(self.bot_jid.clone(), room, change))
            .await;
    }

    /// Publishes with a confirm, retrying while the broker is away: a room's events must
    /// reach the router, in order.
    async fn publish(&self, event: RoomEvent) -> bool {
        let mut wait = Duration::from_millis(200);
        for _ in 0..8 {
            match self
                .inbox
                .publish(routing::ROOM, &event, "herald.room_event.v1")
                .await
            {
                Ok(()) => return true,
                Err(error) => {
                    tracing::warn!(%error, room = %event.room, "could not publish a room event; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::error!(room = %event.room, change = ?event.change, "a room event could not be published; it is lost");
        false
    }
}

/// Hands the router's rosters and the API's ticket rooms to the pool.
pub struct RosterHandler {
    pub pool: mpsc::Sender<PoolInput>,
}

impl Handler for RosterHandler {
    type Message = PoolCommand;

    fn decode(&self, body: &[u8]) -> Result<PoolCommand, Rejection> {
        decode_json(body)
    }

    async fn handle(&self, command: PoolCommand, ctx: &Context) -> Outcome {
        // A forged roster or ticket room would hand rooms out or post into them.
        if let Some(refused) = ctx.origin.refuse_unless_herald() {
            return refused;
        }
        let input = match command {
            PoolCommand::Roster(roster) => PoolInput::Roster(Box::new(roster)),
            PoolCommand::Ticket(ticket) => PoolInput::Ticket(Box::new(ticket)),
        };
        match self.pool.send(input).await {
            Ok(()) => Outcome::Ack,
            // The pool is gone: the service is stopping. Another start asks again anyway.
            Err(_) => Outcome::Ack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_owns_its_rooms_by_service_and_prefix() {
        let settings = PoolSettings {
            service: "conference.example.org".into(),
            target: 2,
            max: 5,
            prefix: "helpdesk-".into(),
        };
        let room = settings.new_room().unwrap();
        assert!(settings.owns(&room), "{room}");
        assert_eq!(room.node().unwrap().as_str().len(), "helpdesk-".len() + 16);
        for other in [
            "team@conference.example.org",
            "helpdesk-1@conference.elsewhere.org",
            "helpdesk-1@example.org",
        ] {
            assert!(
                !settings.owns(&BareJid::from_str(other).unwrap()),
                "{other}"
            );
        }
    }
}
