//! Help-desk rooms (R31-R36), the router's part: the XMPP bot reports its rooms on
//! `room.xmpp` and never touches the database, so the router stores what it reports, and
//! answers a restarted bot with its rooms (the roster on `roster.xmpp`).
//!
//! ```text
//! bot ──RoomEvent──► {p}.events "room.xmpp" ──► {p}.router.events ──► help_desk_rooms (+ history)
//! bot ──BotStarted─► (the same way)             ──► roster query ──► {p}.events "roster.xmpp" ──► bot
//! bot ──Said───────► (the same way)             ──► support_replies + outbox "answer.<channel>" ──► person's bot
//! ```
//!
//! `Said` comes only from a room reserved for a support ticket (R53): what a staff member
//! writes there is the ticket's reply, sent to the person's chat as a reply through the API
//! would be.
//!
//! Each event is stored once (its `eventId`) in one transaction; a change of a room whose
//! creation is not stored yet waits in a delay queue until it is. The roster is published
//! with a confirm before the `BotStarted` event is acked.

use herald_runtime::amqp::{Message, Outcome, PublishError, Publisher, Rejection};
use herald_storage::rooms::{self, Applied, ApplyError};
use herald_storage::{PgPool, StoreError, outbox, support};
use messaging_core::events::{Answer, ChatAnswer, RoomChange, RoomEvent, RoomRoster, RosterRoom};
use messaging_core::topology::{Names, routing};
use messaging_core::values::Jid;
use messaging_core::{Address, EnvelopeVersion};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::RetryPolicy;

/// Stores the bot's room events and answers its `BotStarted`.
#[derive(Clone)]
pub struct Rooms {
    pool: PgPool,
    /// For the rosters, with confirms (the router's events publisher).
    publisher: Publisher,
    names: Names,
    retry: RetryPolicy,
}

impl Rooms {
    pub fn new(pool: PgPool, publisher: Publisher, names: Names, retry: RetryPolicy) -> Self {
        Rooms {
            pool,
            publisher,
            names,
            retry,
        }
    }

    fn retry(&self, why: impl std::fmt::Display) -> Outcome {
        Outcome::Retry {
            after: self.retry.base,
            reason: why.to_string(),
        }
    }

    pub async fn handle(&self, event: &RoomEvent) -> Outcome {
        if matches!(event.change, RoomChange::BotStarted) {
            return self.answer_roster(event).await;
        }
        let change = change_name(&event.change);
        let stored = async {
            let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
            let applied = rooms::apply(&mut tx, event).await?;
            if let (
                Applied::Replied {
                    tenant_id,
                    ticket_id,
                    reply_id,
                },
                RoomChange::Said { text, .. },
            ) = (applied, &event.change)
            {
                self.answer_ticket(&mut tx, tenant_id, ticket_id, reply_id, text)
                    .await?;
            }
            tx.commit().await.map_err(StoreError::from)?;
            Ok::<_, ApplyError>(applied)
        };
        match stored.await {
            Ok(applied) => {
                let result = match applied {
                    Applied::Created => "created",
                    Applied::Changed => "changed",
                    Applied::Recorded => "recorded",
                    Applied::Repeated => "repeated",
                    Applied::NotStored => "not_stored",
                    Applied::Replied { .. } => "replied",
                };
                metrics::counter!("herald_router_room_events_total", "change" => change, "result" => result)
                    .increment(1);
                match applied {
                    Applied::Recorded if matches!(event.change, RoomChange::State { .. }) => {
                        tracing::info!(room = %event.room, "room state recorded, not applied: the room is closed or has a later state");
                    }
                    Applied::Created | Applied::Changed => {
                        tracing::info!(room = %event.room, result, "room event stored");
                    }
                    Applied::Replied {
                        ticket_id,
                        reply_id,
                        ..
                    } => {
                        tracing::info!(room = %event.room, %ticket_id, %reply_id, "support ticket answered in its room");
                    }
                    Applied::NotStored if matches!(event.change, RoomChange::Said { .. }) => {
                        // The bot relays ticket rooms only; its roster was older than the
                        // reservation, or the ticket was deleted.
                        tracing::warn!(room = %event.room, "something said in a room that answers no ticket; dropped");
                    }
                    _ => {}
                }
                Outcome::Ack
            }
            Err(ApplyError::RoomNotCreated(room)) => {
                // Its `Created` is on its way (a retry, another replica): try after it.
                metrics::counter!("herald_router_room_events_total", "change" => change, "result" => "not_created_yet")
                    .increment(1);
                self.retry(format!(
                    "no room {room} yet; its creation was not stored yet"
                ))
            }
            Err(ApplyError::NotABotState(state)) => Outcome::DeadLetter(Rejection::new(
                "invalid",
                format!(
                    "a room event cannot set the state {state}: the bot reports only what it sees (staff_waiting, chatting, staff_left, client_left, closed)"
                ),
            )),
            Err(ApplyError::Store(StoreError::Invalid(rule))) => {
                Outcome::DeadLetter(Rejection::new(
                    "invalid",
                    format!("the event breaks a rule of the data model ({rule})"),
                ))
            }
            Err(ApplyError::Store(other)) => self.retry(other),
        }
    }

    /// R53: what staff said in a ticket's room goes to the person's chat like a reply through
    /// the API (the reply's id is the answer's: the bot drops a repeat).
    async fn answer_ticket(
        &self,
        tx: &mut PgConnection,
        tenant_id: Uuid,
        ticket_id: Uuid,
        reply_id: Uuid,
        text: &str,
    ) -> Result<(), StoreError> {
        let ticket = support::by_id(&mut *tx, tenant_id, ticket_id).await?;
        let chat = match Address::from_kind(ticket.chat_kind, &ticket.chat) {
            Ok(chat) => chat,
            Err(error) => {
                // Parsed when the bot reported it: a hand-edited row. The reply stays stored.
                tracing::error!(%ticket_id, %error, "a ticket's chat does not parse; the reply from its room is stored, not sent");
                return Ok(());
            }
        };
        let answer = ChatAnswer::new(
            reply_id,
            chat,
            Answer::SupportReply {
                ticket_id,
                text: text.to_owned(),
            },
        );
        outbox::enqueue_chat_answer(tx, &self.names.events_exchange(), &answer).await
    }

    /// The bot's rooms that are not closed, to the bot, with a confirm. A bot that listens on
    /// nothing yet (no queue bound to `roster.xmpp`) gets no roster: it binds its queue before
    /// it says it started, and asks again on its next start.
    async fn answer_roster(&self, event: &RoomEvent) -> Outcome {
        let bot = event.bot.bare();
        let rooms = match rooms::roster(&self.pool, bot).await {
            Ok(rooms) => rooms,
            Err(error) => return self.retry(error),
        };
        let mut listed = Vec::with_capacity(rooms.len());
        for room in rooms {
            // Stored from a parsed JID; one that no longer parses was edited by hand.
            match Jid::parse(&room.room_jid) {
                Ok(jid) => listed.push(RosterRoom {
                    room: jid,
                    password: room.password,
                    state: room.state,
                    staff: room.staff,
                    ticket_id: room.ticket_id,
                }),
                Err(error) => {
                    tracing::warn!(room = %room.room_jid, %error, "a stored room JID does not parse; left out of the roster");
                }
            }
        }
        let roster = RoomRoster {
            version: EnvelopeVersion,
            bot: event.bot.clone(),
            in_reply_to: event.event_id,
            rooms: listed,
            created_at: chrono::Utc::now(),
        };
        let body = match serde_json::to_vec(&roster) {
            Ok(body) => body,
            Err(error) => return self.retry(format!("cannot encode the roster: {error}")),
        };
        let message = Message::new(self.names.events_exchange(), routing::ROSTER, &body)
            .message_id(format!("roster/{}", event.event_id))
            .kind("herald.room_roster.v1");
        let rooms = roster.rooms.len();
        match self.publisher.publish(&message).await {
            Ok(()) => {
                metrics::counter!("herald_router_room_events_total", "change" => "bot_started", "result" => "roster")
                    .increment(1);
                tracing::info!(bot, rooms, "roster sent to the restarted bot");
                Outcome::Ack
            }
            Err(PublishError::Unroutable { .. }) => {
                metrics::counter!("herald_router_room_events_total", "change" => "bot_started", "result" => "nobody_listening")
                    .increment(1);
                tracing::warn!(
                    bot,
                    "no queue is bound to roster.xmpp; the bot gets no roster"
                );
                Outcome::Ack
            }
            Err(error) => self.retry(format!("cannot publish the roster: {error}")),
        }
    }
}

fn change_name(change: &RoomChange) -> &'static str {
    match change {
        RoomChange::Created { .. } => "created",
        RoomChange::State { .. } => "state",
        RoomChange::Refused { .. } => "refused",
        RoomChange::BotStarted => "bot_started",
        RoomChange::Said { .. } => "said",
    }
}
