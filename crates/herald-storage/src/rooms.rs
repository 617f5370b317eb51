//! Help-desk rooms (R31-R36): the XMPP bot's pool of multi-user-chat rooms, and every change
//! of each room with its time.
//!
//! Two writers, two clocks:
//! - the router stores what the bot reports ([`apply`]): a room created for the pool, the
//!   state after each join or leave, a person refused. Events of one room can arrive out of
//!   order and more than once; each is stored once (its `event_id`), and only the latest by
//!   the bot's time sets the room's state. A closed room never changes again.
//! - the API hands rooms out: a free room to a staff member ([`reserve`]), then the room whose
//!   staff member has waited longest to a client ([`assign_client`], R33). Each is one
//!   statement that picks with `FOR UPDATE SKIP LOCKED`, so concurrent requests never get the
//!   same room and never wait for each other.

use chrono::{DateTime, Utc};
use messaging_core::events::{RoomChange, RoomEvent};
use messaging_core::{RoomChangeKind, RoomState};
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::error::StoreError;
use crate::page::{Page, PageRequest};

/// One help-desk room as stored.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct Room {
    pub id: Uuid,
    /// The room's bare JID.
    pub room_jid: String,
    /// The bare JID of the bot that runs it.
    pub bot_jid: String,
    pub password: String,
    pub state: RoomState,
    /// `None` while in the pool.
    pub tenant_id: Option<Uuid>,
    pub staff_ref: Option<String>,
    pub client_ref: Option<String>,
    pub created_at: DateTime<Utc>,
    pub reserved_at: Option<DateTime<Utc>>,
    pub staff_waiting_since: Option<DateTime<Utc>>,
    pub client_assigned_at: Option<DateTime<Utc>>,
    pub state_changed_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// The support ticket the room was reserved to answer (R53), if any.
    pub ticket_id: Option<Uuid>,
}

/// The columns of [`Room`], for every query that returns rooms.
macro_rules! room_columns {
    () => {
        "id, room_jid, bot_jid, password, state, tenant_id, staff_ref, client_ref, created_at,
         reserved_at, staff_waiting_since, client_assigned_at, state_changed_at, closed_at,
         ticket_id"
    };
}

/// One entry of a room's history.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct RoomHistoryEntry {
    pub id: Uuid,
    pub kind: RoomChangeKind,
    /// The state this entry is about (`free` when created, `reserved`, or the bot's state);
    /// `None` for a client assigned and a person refused.
    pub state: Option<RoomState>,
    /// Who came in, left or was refused (their nickname), when the bot said.
    pub occupant: Option<String>,
    /// The bot's event it came from; `None` for the API's changes.
    pub event_id: Option<Uuid>,
    /// `false`: a state recorded but not applied (older than the room's latest, or the room
    /// was closed already).
    pub applied: bool,
    pub occurred_at: DateTime<Utc>,
}

/// What storing one bot event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new room in the pool.
    Created,
    /// The room's state changed.
    Changed,
    /// Recorded in the history, the room's state unchanged: a refusal, or a state older than
    /// the room's latest or for a closed room.
    Recorded,
    /// This event (or, for `Created`, this room) was stored before: nothing changed.
    Repeated,
    /// Nothing to store (`BotStarted`, which the router answers with the roster; something
    /// said in a room that answers no ticket).
    NotStored,
    /// What a staff member said in a ticket's room, stored as the ticket's reply: the caller
    /// sends it to the person's chat in the same transaction.
    Replied {
        tenant_id: Uuid,
        ticket_id: Uuid,
        reply_id: Uuid,
    },
}

/// Why a bot event cannot be stored (now).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A change of a room that is not created yet: its `Created` event is still on its way
    /// (a retry, another router replica). Try again later.
    #[error("no room {0} yet (its creation was not stored yet)")]
    RoomNotCreated(String),
    /// The bot reports only what it sees; `free` and `reserved` come from the pool and the
    /// API. A bug of the sender, never right later.
    #[error("the bot cannot report the state {0}; it is set by Herald, not seen in the room")]
    NotABotState(RoomState),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ApplyError {
    fn from(error: sqlx::Error) -> Self {
        ApplyError::Store(error.into())
    }
}

/// Stores one bot event in `tx` (the caller commits). Idempotent: a redelivered event changes
/// nothing and answers [`Applied::Repeated`].
pub async fn apply(tx: &mut PgConnection, event: &RoomEvent) -> Result<Applied, ApplyError> {
    let room = event.room.bare();
    match &event.change {
        RoomChange::Created { password } => {
            let id = Uuid::now_v7();
            let inserted: Option<Uuid> = sqlx::query_scalar(
                "INSERT INTO help_desk_rooms (id, room_jid, bot_jid, password, state, created_at,
                                              state_changed_at, last_event_at)
                 VALUES ($1, $2, $3, $4, 'free', $5, $5, $5)
                 ON CONFLICT (room_jid) DO NOTHING
                 RETURNING id",
            )
            .bind(id)
            .bind(room)
            .bind(event.bot.bare())
            .bind(password)
            .bind(event.occurred_at)
            .fetch_optional(&mut *tx)
            .await?;
            // Room names are unique: a room seen before is this event again (or the bot
            // saying it again), and the first creation stands.
            if inserted.is_none() {
                return Ok(Applied::Repeated);
            }
            record(
                tx,
                id,
                RoomChangeKind::Created,
                Some(RoomState::Free),
                None,
                event,
                true,
            )
            .await?;
            Ok(Applied::Created)
        }
        RoomChange::State { state, occupant } => {
            if matches!(state, RoomState::Free | RoomState::Reserved) {
                return Err(ApplyError::NotABotState(*state));
            }
            let (id, current, last_event_at) = lock(tx, room).await?;
            let applies = !current.is_final() && event.occurred_at >= last_event_at;
            let recorded = record(
                tx,
                id,
                RoomChangeKind::State,
                Some(*state),
                occupant.as_deref(),
                event,
                applies,
            )
            .await?;
            if !recorded {
                return Ok(Applied::Repeated);
            }
            // The wait began when the staff member came in, even if that event is overtaken
            // by a later one: the earliest such time is the FIFO key of R33.
            sqlx::query(
                "UPDATE help_desk_rooms SET
                     state = CASE WHEN $3 THEN $2 ELSE state END,
                     state_changed_at = CASE WHEN $3 THEN $4 ELSE state_changed_at END,
                     last_event_at = CASE WHEN $3 THEN $4 ELSE last_event_at END,
                     closed_at = CASE WHEN $3 AND $2 = 'closed' THEN $4 ELSE closed_at END,
                     staff_waiting_since = CASE WHEN $2 = 'staff_waiting'
                         THEN least(staff_waiting_since, $4) ELSE staff_waiting_since END
                 WHERE id = $1",
            )
            .bind(id)
            .bind(*state)
            .bind(applies)
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await?;
            Ok(if applies {
                Applied::Changed
            } else {
                Applied::Recorded
            })
        }
        RoomChange::Refused { occupant } => {
            let (id, _, _) = lock(tx, room).await?;
            let recorded = record(
                tx,
                id,
                RoomChangeKind::Refused,
                None,
                Some(occupant),
                event,
                true,
            )
            .await?;
            Ok(if recorded {
                Applied::Recorded
            } else {
                Applied::Repeated
            })
        }
        RoomChange::Said { occupant, text } => {
            let ticket: Option<(Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
                "SELECT tenant_id, ticket_id FROM help_desk_rooms WHERE room_jid = $1",
            )
            .bind(room)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(ticket) = ticket else {
                return Err(ApplyError::RoomNotCreated(room.to_owned()));
            };
            let (Some(tenant_id), Some(ticket_id)) = ticket else {
                return Ok(Applied::NotStored);
            };
            let author = format!("room:{room}/{occupant}");
            let reply = crate::support::reply_from_room(
                tx,
                tenant_id,
                ticket_id,
                text,
                &author,
                event.event_id,
            )
            .await?;
            Ok(match reply {
                Some(reply) => Applied::Replied {
                    tenant_id,
                    ticket_id,
                    reply_id: reply.id,
                },
                None => Applied::Repeated,
            })
        }
        RoomChange::BotStarted => Ok(Applied::NotStored),
    }
}

/// The room by JID, locked until the caller's transaction ends: one room's events are applied
/// one after the other. (id, state, the time of the latest applied bot event).
async fn lock(
    tx: &mut PgConnection,
    room: &str,
) -> Result<(Uuid, RoomState, DateTime<Utc>), ApplyError> {
    sqlx::query_as(
        "SELECT id, state, last_event_at FROM help_desk_rooms WHERE room_jid = $1 FOR UPDATE",
    )
    .bind(room)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApplyError::RoomNotCreated(room.to_owned()))
}

/// A history entry for a bot event; `false` when the event was stored before.
async fn record(
    tx: &mut PgConnection,
    room_id: Uuid,
    kind: RoomChangeKind,
    state: Option<RoomState>,
    occupant: Option<&str>,
    event: &RoomEvent,
    applied: bool,
) -> Result<bool, ApplyError> {
    let done = sqlx::query(
        "INSERT INTO help_desk_room_changes (id, room_id, kind, state, occupant, event_id, applied,
                                             occurred_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(room_id)
    .bind(kind)
    .bind(state)
    .bind(occupant)
    .bind(event.event_id)
    .bind(applied)
    .bind(event.occurred_at)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One room of a restarted bot's roster.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct RosterEntry {
    pub room_jid: String,
    pub password: String,
    pub state: RoomState,
    /// The nickname of the first person in (the staff member), from the room's
    /// `staff_waiting` change; `None` before anyone came in.
    pub staff: Option<String>,
    /// The support ticket the room answers: the bot relays what staff write there.
    pub ticket_id: Option<Uuid>,
}

/// The bot's rooms that are not closed, oldest first: what it rejoins after a restart.
pub async fn roster(
    db: impl PgExecutor<'_>,
    bot_jid: &str,
) -> Result<Vec<RosterEntry>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT r.room_jid, r.password, r.state,
                (SELECT c.occupant FROM help_desk_room_changes c
                  WHERE c.room_id = r.id AND c.kind = 'state' AND c.state = 'staff_waiting'
                  ORDER BY c.occurred_at LIMIT 1) AS staff,
                r.ticket_id
           FROM help_desk_rooms r
          WHERE r.bot_jid = $1 AND r.state <> 'closed' ORDER BY r.created_at, r.id",
    )
    .bind(bot_jid)
    .fetch_all(db)
    .await?)
}

/// R32: hands the oldest free room of the pool to the tenant's staff member; `None` when the
/// pool is empty. One statement: the pick skips rooms other requests hold, and the
/// reservation and its history entry commit together.
pub async fn reserve(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    staff_ref: &str,
) -> Result<Option<Room>, StoreError> {
    reserve_room(db, tenant_id, staff_ref, None).await
}

/// R53: like [`reserve`], for a staff member who answers a support ticket of the tenant in the
/// room. The caller checked that the ticket is the tenant's. The room is never handed to a
/// client ([`assign_client`]): the person stays on their own chat.
pub async fn reserve_for_ticket(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    staff_ref: &str,
    ticket_id: Uuid,
) -> Result<Option<Room>, StoreError> {
    reserve_room(db, tenant_id, staff_ref, Some(ticket_id)).await
}

async fn reserve_room(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    staff_ref: &str,
    ticket_id: Option<Uuid>,
) -> Result<Option<Room>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "WITH picked AS (
             SELECT id FROM help_desk_rooms WHERE state = 'free'
             ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED),
         reserved AS (
             UPDATE help_desk_rooms r SET state = 'reserved', tenant_id = $2, staff_ref = $3,
                 reserved_at = now(), state_changed_at = now(), ticket_id = $4
             FROM picked WHERE r.id = picked.id
             RETURNING r.*),
         history AS (
             INSERT INTO help_desk_room_changes (id, room_id, kind, state, occurred_at)
             SELECT $1, id, 'reserved', 'reserved', now() FROM reserved)
         SELECT ",
        room_columns!(),
        " FROM reserved"
    ))
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(staff_ref)
    .bind(ticket_id)
    .fetch_optional(db)
    .await?)
}

/// R33: gives the client the tenant's room whose staff member has waited longest
/// (`staff_waiting`, no client yet); `None` when no staff member waits. Concurrent requests
/// each get another room, the longest waits first: a room one request holds is skipped by
/// the others, not waited for.
pub async fn assign_client(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    client_ref: &str,
) -> Result<Option<Room>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "WITH picked AS (
             SELECT id FROM help_desk_rooms
             WHERE tenant_id = $2 AND state = 'staff_waiting' AND client_ref IS NULL
               AND ticket_id IS NULL
             ORDER BY staff_waiting_since, id LIMIT 1 FOR UPDATE SKIP LOCKED),
         assigned AS (
             UPDATE help_desk_rooms r SET client_ref = $3, client_assigned_at = now()
             FROM picked WHERE r.id = picked.id
             RETURNING r.*),
         history AS (
             INSERT INTO help_desk_room_changes (id, room_id, kind, occurred_at)
             SELECT $1, id, 'client_assigned', now() FROM assigned)
         SELECT ",
        room_columns!(),
        " FROM assigned"
    ))
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(client_ref)
    .fetch_optional(db)
    .await?)
}

/// The tenant's rooms, current and closed, optionally in one state, by id (creation order).
pub async fn list(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    state: Option<RoomState>,
    page: PageRequest,
) -> Result<Page<Room>, StoreError> {
    let rows = sqlx::query_as(concat!(
        "SELECT ",
        room_columns!(),
        " FROM help_desk_rooms
         WHERE tenant_id = $1 AND ($2::text IS NULL OR state = $2)
           AND ($3::uuid IS NULL OR id > $3)
         ORDER BY id LIMIT $4"
    ))
    .bind(tenant_id)
    .bind(state)
    .bind(page.after)
    .bind(page.fetch_limit())
    .fetch_all(db)
    .await?;
    Ok(Page::from_rows(rows, page, |r: &Room| r.id))
}

/// One room of the tenant.
pub async fn by_id(db: impl PgExecutor<'_>, tenant_id: Uuid, id: Uuid) -> Result<Room, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        room_columns!(),
        " FROM help_desk_rooms WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_one(db)
    .await?)
}

/// A room's history, in the order things happened. One short life (created, reserved, a
/// handful of states, and any refusals), not a table: no paging.
pub async fn history(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    room_id: Uuid,
) -> Result<Vec<RoomHistoryEntry>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT c.id, c.kind, c.state, c.occupant, c.event_id, c.applied, c.occurred_at
         FROM help_desk_room_changes c JOIN help_desk_rooms r ON r.id = c.room_id
         WHERE r.tenant_id = $1 AND c.room_id = $2
         ORDER BY c.occurred_at, c.id",
    )
    .bind(tenant_id)
    .bind(room_id)
    .fetch_all(db)
    .await?)
}
