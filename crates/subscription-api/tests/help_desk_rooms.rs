//! R31-R36: the web application asks for a free help-desk room for a staff member, and for
//! the room whose staff member has waited longest for a client; admins list the rooms and
//! read each one's history. The bot's events are stored as the router stores them.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::PgPool;
use herald_storage::rooms;
use messaging_core::events::{RoomChange, RoomEvent};
use messaging_core::values::Jid;
use messaging_core::{EnvelopeVersion, RoomState};
use serde_json::{Value, json};
use support::TestApp;
use uuid::Uuid;

const ROOMS: &str = "/api/messaging/help-desk/rooms";
const STAFF: &str = "/api/messaging/help-desk/rooms/staff";
const CLIENT: &str = "/api/messaging/help-desk/rooms/client";

fn room_path(id: &str) -> String {
    format!("{ROOMS}/{id}")
}

fn jid_of(name: &str) -> String {
    format!("{name}@conference.example.org")
}

/// What the XMPP bot reports, stored as the router stores it.
async fn bot(pool: &PgPool, name: &str, change: RoomChange, occurred_at: DateTime<Utc>) {
    let event = RoomEvent {
        version: EnvelopeVersion,
        event_id: Uuid::now_v7(),
        bot: Jid::parse("herald@example.org").unwrap(),
        room: Jid::parse(&jid_of(name)).unwrap(),
        change,
        occurred_at,
    };
    let mut tx = pool.begin().await.unwrap();
    rooms::apply(&mut tx, &event).await.unwrap();
    tx.commit().await.unwrap();
}

/// A free room in the pool, created `ago` seconds ago.
async fn pool_room(pool: &PgPool, name: &str, ago: i64) {
    bot(
        pool,
        name,
        RoomChange::Created {
            password: format!("pw-{name}"),
        },
        Utc::now() - chrono::Duration::seconds(ago),
    )
    .await;
}

/// The bot saw someone come in or leave, `after` seconds from now (the person joins after
/// getting the room).
async fn seen(pool: &PgPool, jid: &str, state: RoomState, who: &str, after: i64) {
    let name = jid.split('@').next().unwrap();
    bot(
        pool,
        name,
        RoomChange::State {
            state,
            occupant: Some(who.to_owned()),
        },
        Utc::now() + chrono::Duration::seconds(after),
    )
    .await;
}

/// Reserves a room for `staff` and returns its body.
async fn reserve(app: &TestApp, admin: &str, staff: &str) -> Value {
    app.post(STAFF, admin, json!({"staff": staff}))
        .await
        .expect(StatusCode::CREATED)
        .clone()
}

fn text(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {value}"))
        .to_owned()
}

#[sqlx::test(migrations = "../../migrations")]
async fn staff_get_free_rooms_and_clients_the_longest_waiting_staff_member(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool.clone()).await;
    pool_room(&pool, "older", 60).await;
    pool_room(&pool, "newer", 30).await;

    let anna = reserve(&app, &admin, "staff-anna").await;
    assert_eq!(anna["state"], "reserved");
    assert_eq!(anna["jid"], jid_of("older"), "the oldest free room first");
    assert_eq!(anna["password"], "pw-older");
    assert_eq!(anna["staff"], "staff-anna");
    assert_eq!(anna["client"], Value::Null);
    assert!(anna["reservedAt"].is_string());
    let bob = reserve(&app, &admin, "staff-bob").await;
    assert_eq!(bob["jid"], jid_of("newer"));

    // Bob comes in first, so he has waited longest.
    seen(&pool, &text(&bob, "jid"), RoomState::StaffWaiting, "bob", 1).await;
    seen(
        &pool,
        &text(&anna, "jid"),
        RoomState::StaffWaiting,
        "anna",
        2,
    )
    .await;

    let first = app
        .post(CLIENT, &admin, json!({"client": "client-carl"}))
        .await
        .expect(StatusCode::OK)
        .clone();
    assert_eq!(first["id"], bob["id"]);
    assert_eq!(first["jid"], bob["jid"]);
    assert_eq!(first["password"], "pw-newer");
    assert_eq!(first["state"], "staff_waiting");
    assert_eq!(first["client"], "client-carl");
    assert!(first["staffWaitingSince"].is_string());
    let second = app
        .post(CLIENT, &admin, json!({"client": "client-dora"}))
        .await
        .expect(StatusCode::OK)
        .clone();
    assert_eq!(second["id"], anna["id"]);

    // Both are taken: the next client hears that nobody waits.
    let none = app
        .post(CLIENT, &admin, json!({"client": "client-emil"}))
        .await;
    none.expect_problem(StatusCode::CONFLICT, None);
    assert_eq!(none.body["type"], "tag:herald,2026:no-staff-available");
    assert_eq!(none.body["title"], "No staff available");
}

#[sqlx::test(migrations = "../../migrations")]
async fn an_empty_pool_answers_503_with_retry_after(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool.clone()).await;
    let empty = app
        .post(STAFF, &admin, json!({"staff": "staff-anna"}))
        .await;
    empty.expect_problem(StatusCode::SERVICE_UNAVAILABLE, None);
    assert_eq!(empty.body["type"], "tag:herald,2026:no-free-room");
    assert_eq!(empty.body["title"], "No free room");
    assert_eq!(empty.retry_after, Some(5));
    // The bot refills the pool: the same request now gets a room.
    pool_room(&pool, "refill", 1).await;
    reserve(&app, &admin, "staff-anna").await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_client_hears_no_staff_available_until_a_staff_member_is_in(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool.clone()).await;
    app.post(CLIENT, &admin, json!({"client": "client-carl"}))
        .await
        .expect_problem(StatusCode::CONFLICT, None);
    // Reserved, but the staff member has not come in yet.
    pool_room(&pool, "r1", 10).await;
    let anna = reserve(&app, &admin, "staff-anna").await;
    app.post(CLIENT, &admin, json!({"client": "client-carl"}))
        .await
        .expect_problem(StatusCode::CONFLICT, None);
    // Another tenant's waiting staff member is not this tenant's.
    let other = app.tenant_with_admin("globex").await;
    pool_room(&pool, "g1", 5).await;
    let gus = reserve(&app, &other, "staff-gus").await;
    seen(&pool, &text(&gus, "jid"), RoomState::StaffWaiting, "gus", 1).await;
    app.post(CLIENT, &admin, json!({"client": "client-carl"}))
        .await
        .expect_problem(StatusCode::CONFLICT, None);
    seen(
        &pool,
        &text(&anna, "jid"),
        RoomState::StaffWaiting,
        "anna",
        2,
    )
    .await;
    let room = app
        .post(CLIENT, &admin, json!({"client": "client-carl"}))
        .await
        .expect(StatusCode::OK)
        .clone();
    assert_eq!(room["id"], anna["id"]);
}

#[sqlx::test(migrations = "../../migrations")]
async fn concurrent_clients_each_get_their_own_room(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool.clone()).await;
    pool_room(&pool, "r1", 20).await;
    pool_room(&pool, "r2", 10).await;
    let first = reserve(&app, &admin, "staff-anna").await;
    let second = reserve(&app, &admin, "staff-bob").await;
    seen(
        &pool,
        &text(&first, "jid"),
        RoomState::StaffWaiting,
        "anna",
        1,
    )
    .await;
    seen(
        &pool,
        &text(&second, "jid"),
        RoomState::StaffWaiting,
        "bob",
        2,
    )
    .await;

    let (a, b) = tokio::join!(
        app.post(CLIENT, &admin, json!({"client": "client-carl"})),
        app.post(CLIENT, &admin, json!({"client": "client-dora"})),
    );
    let got: BTreeSet<String> = [a, b]
        .iter()
        .map(|r| text(r.expect(StatusCode::OK), "id"))
        .collect();
    let waiting: BTreeSet<String> = [text(&first, "id"), text(&second, "id")].into();
    assert_eq!(got, waiting, "each client got another room");
    // Each room names the one client it went to.
    let mut clients = BTreeSet::new();
    for id in &waiting {
        let room = app.get(&room_path(id), &admin).await;
        clients.insert(text(room.expect(StatusCode::OK), "client"));
    }
    assert_eq!(
        clients,
        ["client-carl".to_owned(), "client-dora".to_owned()].into()
    );
    // A third, later client: the longest-waiting rooms are both taken.
    app.post(CLIENT, &admin, json!({"client": "client-emil"}))
        .await
        .expect_problem(StatusCode::CONFLICT, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn admins_list_rooms_and_read_each_ones_history(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool.clone()).await;
    pool_room(&pool, "r1", 30).await;
    pool_room(&pool, "r2", 20).await;
    pool_room(&pool, "spare", 10).await;
    let r1 = reserve(&app, &admin, "staff-anna").await;
    let r2 = reserve(&app, &admin, "staff-bob").await;
    let jid1 = text(&r1, "jid");
    // Now, between the reservation and the client's request.
    seen(&pool, &jid1, RoomState::StaffWaiting, "anna", 0).await;
    app.post(CLIENT, &admin, json!({"client": "client-carl"}))
        .await
        .expect(StatusCode::OK);
    seen(&pool, &jid1, RoomState::Chatting, "carl", 2).await;
    bot(
        &pool,
        "r1",
        RoomChange::Refused {
            occupant: "mallory".into(),
        },
        Utc::now() + chrono::Duration::seconds(3),
    )
    .await;
    seen(&pool, &jid1, RoomState::ClientLeft, "carl", 4).await;
    seen(&pool, &jid1, RoomState::Closed, "anna", 5).await;

    // Every room of the tenant, current and closed; not the pool's free ones.
    let all = app.get(ROOMS, &admin).await;
    let ids: Vec<&Value> = all.items().iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, [&r1["id"], &r2["id"]]);
    let closed = app.get(&format!("{ROOMS}?state=closed"), &admin).await;
    let closed = closed.items();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["id"], r1["id"]);
    assert_eq!(
        closed[0]["password"],
        Value::Null,
        "no password once closed"
    );
    assert!(closed[0]["closedAt"].is_string());
    let reserved = app.get(&format!("{ROOMS}?state=reserved"), &admin).await;
    assert_eq!(reserved.items()[0]["password"], "pw-r2");
    let paged = app.get(&format!("{ROOMS}?limit=1"), &admin).await;
    let cursor = text(paged.expect(StatusCode::OK), "nextCursor");
    let next = app
        .get(&format!("{ROOMS}?limit=1&cursor={cursor}"), &admin)
        .await;
    assert_eq!(next.items()[0]["id"], r2["id"]);
    app.get(&format!("{ROOMS}?state=lost"), &admin)
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("state"));

    let one = app.get(&room_path(&text(&r1, "id")), &admin).await;
    let one = one.expect(StatusCode::OK);
    assert_eq!(one["state"], "closed");
    assert_eq!(one["staff"], "staff-anna");
    assert_eq!(one["client"], "client-carl");
    let history: Vec<(String, Value, Value, bool)> = one["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["at"].is_string());
            (
                text(e, "kind"),
                e["state"].clone(),
                e["occupant"].clone(),
                e["applied"].as_bool().unwrap(),
            )
        })
        .collect();
    let entry =
        |kind: &str, state: Value, occupant: Value| (kind.to_owned(), state, occupant, true);
    assert_eq!(
        history,
        [
            entry("created", json!("free"), Value::Null),
            entry("reserved", json!("reserved"), Value::Null),
            entry("state", json!("staff_waiting"), json!("anna")),
            entry("client_assigned", Value::Null, Value::Null),
            entry("state", json!("chatting"), json!("carl")),
            entry("refused", Value::Null, json!("mallory")),
            entry("state", json!("client_left"), json!("carl")),
            entry("state", json!("closed"), json!("anna")),
        ]
    );
    // The list shows no history.
    assert!(all.items()[0].get("history").is_none());

    // Another tenant's admin sees none of it.
    let other = app.tenant_with_admin("globex").await;
    assert!(app.get(ROOMS, &other).await.items().is_empty());
    app.get(&room_path(&text(&r1, "id")), &other)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
    app.get(&room_path(&Uuid::now_v7().to_string()), &admin)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
    app.get(&room_path("not-a-room"), &admin)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn only_admins_hand_out_rooms_and_ids_are_checked(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool.clone()).await;
    pool_room(&pool, "r1", 10).await;
    let user = app.user_key("acme", "carl").await;
    app.post(STAFF, &user, json!({"staff": "carl"}))
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.post(CLIENT, &user, json!({"client": "carl"}))
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.get(ROOMS, &user)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);

    app.post(STAFF, &admin, json!({"staff": "  "}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("staff"));
    app.post(CLIENT, &admin, json!({"client": "x".repeat(256)}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("client"));
    app.post(STAFF, &admin, json!({"staff": "anna", "room": "r1"}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);
    app.post(STAFF, &admin, json!({}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);

    // A global admin acts in the tenant it names.
    let global = app.global_admin().await;
    let room = app
        .call_with(
            "POST",
            STAFF,
            Some(&global),
            &[("herald-tenant", "acme")],
            Some(json!({"staff": "anna"}).to_string()),
        )
        .await;
    assert_eq!(room.expect(StatusCode::CREATED)["jid"], jid_of("r1"));
    app.get(&room_path(&text(&room.body, "id")), &admin)
        .await
        .expect(StatusCode::OK);
}

/// A support ticket of `tenant` from a Telegram chat, as the router opens it.
async fn ticket(pool: &PgPool, tenant: &str) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO support_tickets (id, tenant_id, request_id, channel, chat_kind, chat,
                                      display_name, body)
         SELECT $1, id, $2, 'telegram', 'telegram', '4242', 'Cleo', 'My order never came.'
           FROM tenants WHERE key = $3",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .bind(tenant)
    .execute(pool)
    .await
    .unwrap();
    id
}

fn ticket_room(ticket: Uuid) -> String {
    format!("/api/messaging/support/tickets/{ticket}/room")
}

/// R53: a staff member gets a room to answer a ticket in; the bot is told in the same
/// transaction (the outbox), and the room is never handed to a client.
#[sqlx::test(migrations = "../../migrations")]
async fn staff_get_a_room_to_answer_a_ticket_in(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool.clone()).await;
    let ticket = ticket(&pool, "acme").await;
    app.post(&ticket_room(ticket), &admin, json!({"staff": "staff-anna"}))
        .await
        .expect_problem(StatusCode::SERVICE_UNAVAILABLE, None);

    pool_room(&pool, "t1", 10).await;
    let room = app
        .post(&ticket_room(ticket), &admin, json!({"staff": "staff-anna"}))
        .await
        .expect(StatusCode::CREATED)
        .clone();
    assert_eq!(room["jid"], jid_of("t1"));
    assert_eq!(room["password"], "pw-t1");
    assert_eq!(room["state"], "reserved");
    assert_eq!(room["ticketId"], ticket.to_string());

    let (routing_key, message_id, payload): (String, String, Vec<u8>) = sqlx::query_as(
        "SELECT routing_key, message_id, payload FROM outbox WHERE routing_key = 'ticket.xmpp'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(routing_key, "ticket.xmpp");
    assert_eq!(message_id, format!("ticket-room/{}/{ticket}", jid_of("t1")));
    let command: messaging_core::events::TicketRoom = serde_json::from_slice(&payload).unwrap();
    assert_eq!(command.ticket_id, ticket);
    assert_eq!(command.room.as_str(), jid_of("t1"));
    assert_eq!(command.bot.as_str(), "herald@example.org");
    assert_eq!(command.text, "My order never came.");
    assert_eq!(command.display_name.as_deref(), Some("Cleo"));

    // The staff member is in; still no client gets that room.
    seen(&pool, &jid_of("t1"), RoomState::StaffWaiting, "anna", 1).await;
    app.post(CLIENT, &admin, json!({"client": "client-carl"}))
        .await
        .expect_problem(StatusCode::CONFLICT, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_ticket_room_is_for_admins_and_the_tickets_own_tenant(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool.clone()).await;
    pool_room(&pool, "t1", 10).await;
    let other = app.tenant_with_admin("globex").await;
    let theirs = ticket(&pool, "globex").await;
    let ours = ticket(&pool, "acme").await;
    app.post(&ticket_room(theirs), &admin, json!({"staff": "anna"}))
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
    app.post(
        &ticket_room(Uuid::now_v7()),
        &admin,
        json!({"staff": "anna"}),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    app.post(
        "/api/messaging/support/tickets/not-a-uuid/room",
        &admin,
        json!({"staff": "anna"}),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    let user = app.user_key("acme", "carl").await;
    app.post(&ticket_room(ours), &user, json!({"staff": "carl"}))
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    // Nothing was reserved by the refused requests.
    app.post(&ticket_room(theirs), &other, json!({"staff": "gus"}))
        .await
        .expect(StatusCode::CREATED);
}
