//! Help-desk rooms against the real PostgreSQL: the bot's events stored once and in order of
//! the bot's time, the pool handed out oldest first, and clients given the longest-waiting
//! staff member's room, also under concurrent requests (R31-R36).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_storage::page::PageRequest;
use herald_storage::rooms::{self, Applied, ApplyError, Room};
use herald_storage::{StoreError, support, tenants};
use messaging_core::events::{RoomChange, RoomEvent};
use messaging_core::values::Jid;
use messaging_core::{EnvelopeVersion, RoomChangeKind, RoomState};
use sqlx::PgPool;
use uuid::Uuid;

const BOT: &str = "herald@example.org";

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

fn room_jid(name: &str) -> String {
    format!("{name}@conference.example.org")
}

/// An event of `room` at `at` (seconds after a fixed start, so tests can order them).
fn event(room: &str, change: RoomChange, at: i64) -> RoomEvent {
    RoomEvent {
        version: EnvelopeVersion,
        event_id: Uuid::now_v7(),
        bot: jid(BOT),
        room: jid(&room_jid(room)),
        change,
        occurred_at: start() + chrono::Duration::seconds(at),
    }
}

/// When this test process began, to the microsecond PostgreSQL keeps. The bot's times are
/// counted from here; the API's reservations happen a little later, at the database's `now()`,
/// and before the bot's events at 10 s and after.
fn start() -> DateTime<Utc> {
    static START: std::sync::OnceLock<DateTime<Utc>> = std::sync::OnceLock::new();
    *START.get_or_init(|| DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap())
}

fn created(room: &str, at: i64) -> RoomEvent {
    event(
        room,
        RoomChange::Created {
            password: format!("secret-{room}"),
        },
        at,
    )
}

fn state(room: &str, state: RoomState, occupant: &str, at: i64) -> RoomEvent {
    event(
        room,
        RoomChange::State {
            state,
            occupant: Some(occupant.to_owned()),
        },
        at,
    )
}

async fn apply(pool: &PgPool, event: &RoomEvent) -> Result<Applied, ApplyError> {
    let mut tx = pool.begin().await.unwrap();
    let applied = rooms::apply(&mut tx, event).await?;
    tx.commit().await.unwrap();
    Ok(applied)
}

async fn room(pool: &PgPool, name: &str) -> Room {
    let id: Uuid = sqlx::query_scalar("SELECT id FROM help_desk_rooms WHERE room_jid = $1")
        .bind(room_jid(name))
        .fetch_one(pool)
        .await
        .unwrap();
    let tenant: Option<Uuid> =
        sqlx::query_scalar("SELECT tenant_id FROM help_desk_rooms WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    match tenant {
        Some(tenant) => rooms::by_id(pool, tenant, id).await.unwrap(),
        // A room in the pool is nobody's: read it as the bot's roster would not (it has no
        // tenant), straight from the table.
        None => sqlx::query_as(
            "SELECT id, room_jid, bot_jid, password, state, tenant_id, staff_ref, client_ref,
                    created_at, reserved_at, staff_waiting_since, client_assigned_at,
                    state_changed_at, closed_at, ticket_id
             FROM help_desk_rooms WHERE id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap(),
    }
}

/// The history as (kind, state, occupant, applied).
async fn history(
    pool: &PgPool,
    tenant: Uuid,
    room: &Room,
) -> Vec<(RoomChangeKind, Option<RoomState>, Option<String>, bool)> {
    rooms::history(pool, tenant, room.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.state, e.occupant, e.applied))
        .collect()
}

async fn tenant(pool: &PgPool, key: &str) -> Uuid {
    tenants::create(pool, key, key).await.unwrap().id
}

/// A room of `tenant` whose staff member came in at `at`.
async fn waiting_room(pool: &PgPool, tenant: Uuid, name: &str, at: i64) -> Room {
    apply(pool, &created(name, at - 10)).await.unwrap();
    let reserved = rooms::reserve(pool, tenant, &format!("staff-{name}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reserved.room_jid, room_jid(name), "the pool held one room");
    apply(pool, &state(name, RoomState::StaffWaiting, "staff", at))
        .await
        .unwrap();
    room(pool, name).await
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_created_room_joins_the_pool_once(pool: PgPool) {
    let first = created("r1", 0);
    assert_eq!(apply(&pool, &first).await.unwrap(), Applied::Created);
    // The same event again, and the bot saying it again under another id.
    assert_eq!(apply(&pool, &first).await.unwrap(), Applied::Repeated);
    assert_eq!(
        apply(&pool, &created("r1", 5)).await.unwrap(),
        Applied::Repeated
    );
    let r1 = room(&pool, "r1").await;
    assert_eq!(r1.state, RoomState::Free);
    assert_eq!(r1.password, "secret-r1");
    assert_eq!(r1.bot_jid, BOT);
    assert_eq!((r1.tenant_id, r1.created_at), (None, start()));
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM help_desk_room_changes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(entries, 1);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_room_walks_through_every_state_and_keeps_its_history(pool: PgPool) {
    let acme = tenant(&pool, "acme").await;
    apply(&pool, &created("r1", 0)).await.unwrap();
    let reserved = rooms::reserve(&pool, acme, "staff-anna")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reserved.state, RoomState::Reserved);
    assert_eq!(reserved.tenant_id, Some(acme));
    assert_eq!(reserved.staff_ref.as_deref(), Some("staff-anna"));
    assert!(reserved.reserved_at.is_some());

    let steps = [
        (RoomState::StaffWaiting, "anna", 10),
        (RoomState::Chatting, "carl", 20),
        (RoomState::ClientLeft, "carl", 30),
        (RoomState::Chatting, "carl", 40),
        (RoomState::StaffLeft, "anna", 50),
        (RoomState::Closed, "carl", 60),
    ];
    for (s, who, at) in steps {
        assert_eq!(
            apply(&pool, &state("r1", s, who, at)).await.unwrap(),
            Applied::Changed,
            "{s}"
        );
        assert_eq!(room(&pool, "r1").await.state, s);
    }
    let r1 = room(&pool, "r1").await;
    let at = |s: i64| Some(start() + chrono::Duration::seconds(s));
    assert_eq!(r1.staff_waiting_since, at(10));
    assert_eq!(r1.closed_at, at(60));
    assert_eq!(Some(r1.state_changed_at), at(60));

    let mut expected = vec![
        (RoomChangeKind::Created, Some(RoomState::Free), None, true),
        (
            RoomChangeKind::Reserved,
            Some(RoomState::Reserved),
            None,
            true,
        ),
    ];
    expected.extend(
        steps.map(|(s, who, _)| (RoomChangeKind::State, Some(s), Some(who.to_owned()), true)),
    );
    assert_eq!(history(&pool, acme, &r1).await, expected);
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_older_state_is_recorded_but_does_not_overwrite_a_newer_one(pool: PgPool) {
    let acme = tenant(&pool, "acme").await;
    apply(&pool, &created("r1", 0)).await.unwrap();
    rooms::reserve(&pool, acme, "staff-anna").await.unwrap();
    // The client's arrival overtook the staff member's.
    assert_eq!(
        apply(&pool, &state("r1", RoomState::Chatting, "carl", 20))
            .await
            .unwrap(),
        Applied::Changed
    );
    assert_eq!(
        apply(&pool, &state("r1", RoomState::StaffWaiting, "anna", 10))
            .await
            .unwrap(),
        Applied::Recorded
    );
    let r1 = room(&pool, "r1").await;
    assert_eq!(r1.state, RoomState::Chatting);
    assert_eq!(r1.state_changed_at, start() + chrono::Duration::seconds(20));
    // When the staff member came in is still known.
    assert_eq!(
        r1.staff_waiting_since,
        Some(start() + chrono::Duration::seconds(10))
    );
    let states: Vec<(Option<RoomState>, bool)> = history(&pool, acme, &r1)
        .await
        .into_iter()
        .filter(|(kind, ..)| *kind == RoomChangeKind::State)
        .map(|(_, s, _, applied)| (s, applied))
        .collect();
    assert_eq!(
        states,
        [
            (Some(RoomState::StaffWaiting), false),
            (Some(RoomState::Chatting), true)
        ]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_closed_room_never_changes_again(pool: PgPool) {
    apply(&pool, &created("r1", 0)).await.unwrap();
    // A room lost while still in the pool.
    apply(&pool, &state("r1", RoomState::Closed, "herald", 10))
        .await
        .unwrap();
    assert_eq!(
        apply(&pool, &state("r1", RoomState::StaffWaiting, "anna", 20))
            .await
            .unwrap(),
        Applied::Recorded
    );
    let r1 = room(&pool, "r1").await;
    assert_eq!(r1.state, RoomState::Closed);
    assert_eq!(r1.closed_at, Some(start() + chrono::Duration::seconds(10)));
    // Closed rooms are never handed out.
    let acme = tenant(&pool, "acme").await;
    assert_eq!(
        rooms::reserve(&pool, acme, "staff-anna").await.unwrap(),
        None
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_redelivered_event_is_stored_once(pool: PgPool) {
    let acme = tenant(&pool, "acme").await;
    apply(&pool, &created("r1", 0)).await.unwrap();
    rooms::reserve(&pool, acme, "staff-anna").await.unwrap();
    let waiting = state("r1", RoomState::StaffWaiting, "anna", 10);
    let refused = event(
        "r1",
        RoomChange::Refused {
            occupant: "mallory".into(),
        },
        15,
    );
    assert_eq!(apply(&pool, &waiting).await.unwrap(), Applied::Changed);
    assert_eq!(apply(&pool, &refused).await.unwrap(), Applied::Recorded);
    assert_eq!(apply(&pool, &waiting).await.unwrap(), Applied::Repeated);
    assert_eq!(apply(&pool, &refused).await.unwrap(), Applied::Repeated);
    let r1 = room(&pool, "r1").await;
    assert_eq!(r1.state, RoomState::StaffWaiting);
    let kinds: Vec<RoomChangeKind> = history(&pool, acme, &r1)
        .await
        .into_iter()
        .map(|(kind, ..)| kind)
        .collect();
    assert_eq!(
        kinds,
        [
            RoomChangeKind::Created,
            RoomChangeKind::Reserved,
            RoomChangeKind::State,
            RoomChangeKind::Refused
        ]
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_change_of_a_room_not_created_yet_waits_for_its_creation(pool: PgPool) {
    let early = state("r1", RoomState::Closed, "herald", 10);
    assert!(matches!(
        apply(&pool, &early).await,
        Err(ApplyError::RoomNotCreated(room)) if room == room_jid("r1")
    ));
    let refused = event(
        "r1",
        RoomChange::Refused {
            occupant: "mallory".into(),
        },
        5,
    );
    assert!(matches!(
        apply(&pool, &refused).await,
        Err(ApplyError::RoomNotCreated(_))
    ));
    // Nothing was stored meanwhile; once the room exists the same events go through.
    apply(&pool, &created("r1", 0)).await.unwrap();
    assert_eq!(apply(&pool, &refused).await.unwrap(), Applied::Recorded);
    assert_eq!(apply(&pool, &early).await.unwrap(), Applied::Changed);
    assert_eq!(room(&pool, "r1").await.state, RoomState::Closed);
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_bot_cannot_report_free_or_reserved(pool: PgPool) {
    apply(&pool, &created("r1", 0)).await.unwrap();
    for s in [RoomState::Free, RoomState::Reserved] {
        assert!(matches!(
            apply(&pool, &state("r1", s, "anna", 10)).await,
            Err(ApplyError::NotABotState(got)) if got == s
        ));
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_roster_lists_the_bots_rooms_that_are_not_closed(pool: PgPool) {
    let acme = tenant(&pool, "acme").await;
    apply(&pool, &created("r1", 0)).await.unwrap();
    apply(&pool, &created("r2", 1)).await.unwrap();
    apply(&pool, &created("r3", 2)).await.unwrap();
    let mut other = created("r4", 3);
    other.bot = jid("other-bot@example.org/resource");
    apply(&pool, &other).await.unwrap();
    rooms::reserve(&pool, acme, "staff-anna").await.unwrap();
    apply(&pool, &state("r1", RoomState::StaffWaiting, "anna", 10))
        .await
        .unwrap();
    apply(&pool, &state("r3", RoomState::Closed, "herald", 10))
        .await
        .unwrap();

    let roster: Vec<(String, String, RoomState)> = rooms::roster(&pool, BOT)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.room_jid, r.password, r.state))
        .collect();
    assert_eq!(
        roster,
        [
            (room_jid("r1"), "secret-r1".into(), RoomState::StaffWaiting),
            (room_jid("r2"), "secret-r2".into(), RoomState::Free),
        ]
    );
    // Stored by bare JID: a bot asks with its bare JID, whatever its resource.
    assert_eq!(
        rooms::roster(&pool, "other-bot@example.org")
            .await
            .unwrap()
            .len(),
        1
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn reserving_takes_the_oldest_free_room_until_the_pool_is_empty(pool: PgPool) {
    let acme = tenant(&pool, "acme").await;
    let globex = tenant(&pool, "globex").await;
    apply(&pool, &created("young", 20)).await.unwrap();
    apply(&pool, &created("old", 10)).await.unwrap();
    let first = rooms::reserve(&pool, acme, "staff-anna")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.room_jid, room_jid("old"));
    // The pool is shared by every tenant.
    let second = rooms::reserve(&pool, globex, "staff-gus")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.room_jid, room_jid("young"));
    assert_eq!(second.tenant_id, Some(globex));
    assert_eq!(
        rooms::reserve(&pool, acme, "staff-bob").await.unwrap(),
        None
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_client_gets_the_tenants_longest_waiting_staff_member(pool: PgPool) {
    let acme = tenant(&pool, "acme").await;
    let globex = tenant(&pool, "globex").await;
    // Globex's staff member waits longest, but is not acme's.
    let _g = waiting_room(&pool, globex, "g1", 10).await;
    let late = waiting_room(&pool, acme, "late", 40).await;
    let early = waiting_room(&pool, acme, "early", 20).await;
    // Reserved, nobody in yet: not waiting.
    apply(&pool, &created("idle", 0)).await.unwrap();
    rooms::reserve(&pool, acme, "staff-idle").await.unwrap();

    let first = rooms::assign_client(&pool, acme, "client-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, early.id);
    assert_eq!(first.client_ref.as_deref(), Some("client-1"));
    assert!(first.client_assigned_at.is_some());
    // Still staff_waiting until the client comes in, but taken.
    assert_eq!(first.state, RoomState::StaffWaiting);
    let second = rooms::assign_client(&pool, acme, "client-2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.id, late.id);
    assert_eq!(
        rooms::assign_client(&pool, acme, "client-3").await.unwrap(),
        None
    );
    let kinds: Vec<RoomChangeKind> = history(&pool, acme, &first)
        .await
        .into_iter()
        .map(|(kind, ..)| kind)
        .collect();
    // (Recorded at the database's now(), which sorts before this test's bot times.)
    assert!(kinds.contains(&RoomChangeKind::ClientAssigned), "{kinds:?}");
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_clients_get_different_rooms_without_waiting(pool: PgPool) {
    let acme = tenant(&pool, "acme").await;
    let first = waiting_room(&pool, acme, "first", 10).await;
    let second = waiting_room(&pool, acme, "second", 20).await;

    // One request holds the longest-waiting room (its transaction is still open)...
    let mut held = pool.begin().await.unwrap();
    let taken = rooms::assign_client(&mut *held, acme, "client-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.id, first.id);
    // ...and the next one gets the next room at once, instead of waiting for it.
    let next = tokio::time::timeout(
        Duration::from_secs(5),
        rooms::assign_client(&pool, acme, "client-2"),
    )
    .await
    .expect("a held room is skipped, not waited for")
    .unwrap()
    .unwrap();
    assert_eq!(next.id, second.id);
    held.commit().await.unwrap();

    // Many at once: each room goes to one client.
    for n in 0..6 {
        waiting_room(&pool, acme, &format!("many{n}"), 100 + n).await;
    }
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let pool = pool.clone();
            tokio::spawn(async move {
                rooms::assign_client(&pool, acme, &format!("c{n}"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut got = Vec::new();
    for task in tasks {
        if let Some(room) = task.await.unwrap() {
            got.push(room.id);
        }
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 6, "six rooms, six clients, no room twice");
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_tenant_lists_and_reads_only_its_own_rooms(pool: PgPool) {
    let acme = tenant(&pool, "acme").await;
    let globex = tenant(&pool, "globex").await;
    let r1 = waiting_room(&pool, acme, "r1", 10).await;
    let r2 = waiting_room(&pool, acme, "r2", 20).await;
    let g1 = waiting_room(&pool, globex, "g1", 30).await;
    apply(&pool, &state("r2", RoomState::Closed, "anna", 40))
        .await
        .unwrap();

    let page = |limit, after| PageRequest { limit, after };
    let all = rooms::list(&pool, acme, None, page(50, None))
        .await
        .unwrap();
    let ids: Vec<Uuid> = all.items.iter().map(|r| r.id).collect();
    assert_eq!(ids, [r1.id, r2.id]);
    let closed = rooms::list(&pool, acme, Some(RoomState::Closed), page(50, None))
        .await
        .unwrap();
    assert_eq!(closed.items.len(), 1);
    assert_eq!(closed.items[0].id, r2.id);
    let first_page = rooms::list(&pool, acme, None, page(1, None)).await.unwrap();
    assert_eq!(first_page.items[0].id, r1.id);
    let cursor: Uuid = first_page.next_cursor.unwrap().parse().unwrap();
    let second_page = rooms::list(&pool, acme, None, page(1, Some(cursor)))
        .await
        .unwrap();
    assert_eq!(second_page.items[0].id, r2.id);
    assert_eq!(second_page.next_cursor, None);

    assert!(matches!(
        rooms::by_id(&pool, acme, g1.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(rooms::history(&pool, acme, g1.id).await.unwrap().is_empty());
    assert!(
        !rooms::history(&pool, globex, g1.id)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A support ticket of `tenant` from a Telegram chat, as the router opens it.
async fn ticket(pool: &PgPool, tenant: Uuid) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO support_tickets (id, tenant_id, request_id, channel, chat_kind, chat, body)
         VALUES ($1, $2, $3, 'telegram', 'telegram', '4242', 'My order never came.')",
    )
    .bind(id)
    .bind(tenant)
    .bind(Uuid::now_v7())
    .execute(pool)
    .await
    .unwrap();
    id
}

fn said(room: &str, occupant: &str, text: &str, at: i64) -> RoomEvent {
    event(
        room,
        RoomChange::Said {
            occupant: occupant.to_owned(),
            text: text.to_owned(),
        },
        at,
    )
}

#[sqlx::test(migrations = "../../migrations")]
async fn what_staff_say_in_a_tickets_room_is_its_reply_once(pool: PgPool) {
    let acme = tenant(&pool, "acme").await;
    let ticket = ticket(&pool, acme).await;
    apply(&pool, &created("t1", 0)).await.unwrap();
    let reserved = rooms::reserve_for_ticket(&pool, acme, "staff-anna", ticket)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reserved.ticket_id, Some(ticket));
    assert_eq!(reserved.state, RoomState::Reserved);
    apply(&pool, &state("t1", RoomState::StaffWaiting, "Anna", 10))
        .await
        .unwrap();
    // The person is on Telegram: a ticket's room is never a client's.
    assert!(
        rooms::assign_client(&pool, acme, "client-cleo")
            .await
            .unwrap()
            .is_none()
    );

    let words = said("t1", "Anna", "Your parcel left today.", 11);
    let Applied::Replied {
        tenant_id,
        ticket_id,
        reply_id,
    } = apply(&pool, &words).await.unwrap()
    else {
        panic!("not stored as a reply")
    };
    assert_eq!((tenant_id, ticket_id), (acme, ticket));
    assert_eq!(apply(&pool, &words).await.unwrap(), Applied::Repeated);

    let replies = support::replies(&pool, acme, ticket).await.unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].id, reply_id);
    assert_eq!(replies[0].body, "Your parcel left today.");
    assert_eq!(replies[0].author, "room:t1@conference.example.org/Anna");
    let state: String = sqlx::query_scalar("SELECT state FROM support_tickets WHERE id = $1")
        .bind(ticket)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "answered");
}

#[sqlx::test(migrations = "../../migrations")]
async fn words_in_a_room_without_a_ticket_are_not_stored(pool: PgPool) {
    let acme = tenant(&pool, "acme").await;
    apply(&pool, &created("plain", 0)).await.unwrap();
    rooms::reserve(&pool, acme, "staff-anna").await.unwrap();
    assert_eq!(
        apply(&pool, &said("plain", "Anna", "hello", 11))
            .await
            .unwrap(),
        Applied::NotStored
    );
    // Nor in a room still in the pool.
    apply(&pool, &created("free", 0)).await.unwrap();
    assert_eq!(
        apply(&pool, &said("free", "Someone", "hello", 11))
            .await
            .unwrap(),
        Applied::NotStored
    );
    let replies: i64 = sqlx::query_scalar("SELECT count(*) FROM support_replies")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(replies, 0);
    assert!(matches!(
        apply(&pool, &said("unknown", "Anna", "hello", 11)).await,
        Err(ApplyError::RoomNotCreated(_))
    ));
}
