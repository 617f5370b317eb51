//! R53: staff list, read, answer and close the support tickets the bots open, and choose who
//! hears of new ones. A reply reaches the person's chat through the outbox, written in the
//! same transaction as the reply.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use herald_storage::addresses::{self, NewAddress};
use herald_storage::support::{self as tickets, NewTicket};
use herald_storage::verification::Proof;
use herald_storage::{PgPool, tenants, users};
use messaging_core::events::{Answer, ChatAnswer};
use messaging_core::{Address, AddressKind, Channel};
use serde_json::{Value, json};
use support::TestApp;
use uuid::Uuid;

const TICKETS: &str = "/api/messaging/support/tickets";
const SETTINGS: &str = "/api/messaging/support/settings";

fn ticket_path(id: Uuid) -> String {
    format!("{TICKETS}/{id}")
}

fn replies_path(id: Uuid) -> String {
    format!("{TICKETS}/{id}/replies")
}

fn close_path(id: Uuid) -> String {
    format!("{TICKETS}/{id}/close")
}

/// Opens a ticket the way the router does: `person` of `tenant` linked Telegram chat `chat`
/// (a verified, active address), then wrote `/support <text>` from it.
async fn open_ticket(app: &TestApp, tenant: &str, person: &str, chat: i64, text: &str) -> Uuid {
    let pool = &app.pool;
    let tenant_id = tenants::by_key(pool, tenant).await.unwrap().id;
    let user = users::ensure(pool, tenant_id, person).await.unwrap();
    let value = chat.to_string();
    let (address, _) = addresses::add(
        pool,
        NewAddress {
            tenant_id,
            user_id: user.id,
            kind: AddressKind::Telegram,
            value: &value,
            display_name: None,
        },
    )
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    herald_storage::verification::mark_verified(&mut tx, address.id, Proof::Link, "test")
        .await
        .unwrap();
    let linked = tickets::linked_chat(&mut *tx, AddressKind::Telegram, &value)
        .await
        .unwrap()
        .expect("the chat is linked");
    let (id, new) = tickets::open(
        &mut tx,
        NewTicket {
            request_id: Uuid::now_v7(),
            chat: &linked,
            channel: Channel::Telegram,
            chat_kind: AddressKind::Telegram,
            chat_value: &value,
            display_name: Some("@bea"),
            body: text,
        },
    )
    .await
    .unwrap();
    assert!(new);
    tx.commit().await.unwrap();
    id
}

/// Every outbox row: exchange, routing key, message id and the payload as JSON.
async fn outbox(pool: &PgPool) -> Vec<(String, String, String, Value)> {
    let rows: Vec<(String, String, String, Vec<u8>)> =
        sqlx::query_as("SELECT exchange, routing_key, message_id, payload FROM outbox ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(e, r, m, p)| (e, r, m, serde_json::from_slice(&p).unwrap()))
        .collect()
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|t| t["ticketId"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test(migrations = "../../migrations")]
async fn tickets_are_listed_by_state_and_paged(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let first = open_ticket(&app, "acme", "bea", 4242, "my parcel is late").await;
    let second = open_ticket(&app, "acme", "carl", 4343, "wrong address").await;
    let third = open_ticket(&app, "acme", "dora", 4444, "how do I unsubscribe?").await;
    app.post(&replies_path(second), &admin, json!({"text": "Fixed it."}))
        .await
        .expect(StatusCode::CREATED);
    app.post(&close_path(third), &admin, json!({}))
        .await
        .expect(StatusCode::NO_CONTENT);

    let all = app.get(TICKETS, &admin).await;
    assert_eq!(
        ids(all.items()),
        [first, second, third].map(|id| id.to_string())
    );
    assert_eq!(all.body["nextCursor"], Value::Null);
    let one = &all.items()[0];
    assert_eq!(one["ticket"], messaging_core::events::short_id(&first));
    assert_eq!(one["state"], "open");
    assert_eq!(one["channel"], "telegram");
    assert_eq!(one["userId"], "bea");
    assert_eq!(one["displayName"], "@bea");
    assert_eq!(one["text"], "my parcel is late");
    assert_eq!(one["messageId"], Value::Null);
    assert_eq!(one["closedAt"], Value::Null);
    assert!(one.get("replies").is_none(), "a list shows no replies");

    for (state, expected) in [("open", first), ("answered", second), ("closed", third)] {
        let page = app.get(&format!("{TICKETS}?state={state}"), &admin).await;
        assert_eq!(ids(page.items()), [expected.to_string()], "state {state}");
        assert_eq!(page.items()[0]["state"], state);
    }

    let page = app.get(&format!("{TICKETS}?limit=2"), &admin).await;
    assert_eq!(ids(page.items()), [first, second].map(|id| id.to_string()));
    let cursor = page.body["nextCursor"].as_str().unwrap().to_owned();
    let rest = app
        .get(&format!("{TICKETS}?limit=2&cursor={cursor}"), &admin)
        .await;
    assert_eq!(ids(rest.items()), [third.to_string()]);
    assert_eq!(rest.body["nextCursor"], Value::Null);

    app.get(&format!("{TICKETS}?state=pending"), &admin)
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("state"));
    app.get(&format!("{TICKETS}?limit=0"), &admin)
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("limit"));
    app.get(&format!("{TICKETS}?colour=red"), &admin)
        .await
        .expect_problem(StatusCode::BAD_REQUEST, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_ticket_is_read_with_its_replies_oldest_first(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let id = open_ticket(&app, "acme", "bea", 4242, "my parcel is late").await;

    let fresh = app.get(&ticket_path(id), &admin).await;
    let body = fresh.expect(StatusCode::OK);
    assert_eq!(body["ticketId"], id.to_string());
    assert_eq!(body["state"], "open");
    assert_eq!(body["replies"], json!([]));

    for text in [
        "Looking into it.",
        "It left the depot today.\nTrack it here.",
    ] {
        app.post(&replies_path(id), &admin, json!({"text": text}))
            .await
            .expect(StatusCode::CREATED);
    }
    let read = app.get(&ticket_path(id), &admin).await;
    let body = read.expect(StatusCode::OK);
    assert_eq!(body["state"], "answered");
    let replies = body["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0]["text"], "Looking into it.");
    assert_eq!(
        replies[1]["text"],
        "It left the depot today.\nTrack it here."
    );
    for reply in replies {
        assert!(reply["replyId"].as_str().is_some());
        assert!(reply["createdAt"].as_str().is_some());
        assert!(reply["author"].as_str().unwrap().starts_with("api-key:"));
    }

    app.get(&ticket_path(Uuid::now_v7()), &admin)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
    app.get(&format!("{TICKETS}/not-a-uuid"), &admin)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_reply_is_recorded_and_goes_to_the_chat_through_the_outbox(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let id = open_ticket(&app, "acme", "bea", 4242, "my parcel is late").await;
    assert!(outbox(&app.pool).await.is_empty());

    let answered = app
        .post(
            &replies_path(id),
            &admin,
            json!({"text": "It left the depot today.\n\tTrack it here."}),
        )
        .await;
    let reply = answered.expect(StatusCode::CREATED).clone();
    assert_eq!(reply["text"], "It left the depot today.\n\tTrack it here.");
    assert!(reply["author"].as_str().unwrap().starts_with("api-key:"));
    let reply_id = reply["replyId"].as_str().unwrap().to_owned();

    let ticket = app.get(&ticket_path(id), &admin).await;
    assert_eq!(ticket.expect(StatusCode::OK)["state"], "answered");

    // Exactly one answer, to the bots' routing key, named by the reply's id.
    let rows = outbox(&app.pool).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (exchange, routing_key, message_id, payload) = &rows[0];
    assert_eq!(exchange, &app.names.events_exchange());
    assert_eq!(routing_key, "answer.telegram");
    assert_eq!(message_id, &reply_id);
    assert_eq!(payload["answer"]["kind"], "support_reply");
    assert_eq!(payload["chat"], json!({"kind": "telegram", "value": 4242}));
    // And it is a chat answer the bots' runtime decodes.
    let answer: ChatAnswer = serde_json::from_value(payload.clone()).unwrap();
    assert_eq!(answer.answer_id.to_string(), reply_id);
    assert_eq!(answer.channel, Channel::Telegram);
    assert_eq!(
        answer.chat,
        Address::from_kind(AddressKind::Telegram, "4242").unwrap()
    );
    assert_eq!(
        answer.answer,
        Answer::SupportReply {
            ticket_id: id,
            text: "It left the depot today.\n\tTrack it here.".into(),
        }
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_path_r53_names_replies_the_same_way(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let id = open_ticket(&app, "acme", "bea", 4242, "my parcel is late").await;
    let path = format!("/api/messaging/support/{id}/replies");
    let reply = app
        .post(&path, &admin, json!({"text": "On its way."}))
        .await;
    assert_eq!(reply.expect(StatusCode::CREATED)["text"], "On its way.");
    let rows = outbox(&app.pool).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, "answer.telegram");
    assert_eq!(rows[0].3["answer"]["ticketId"], id.to_string());
    app.post(
        &format!("/api/messaging/support/{}/replies", Uuid::now_v7()),
        &admin,
        json!({"text": "Hello?"}),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn closing_records_who_closed_and_closing_again_keeps_the_first(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let id = open_ticket(&app, "acme", "bea", 4242, "my parcel is late").await;
    app.post(&close_path(id), &admin, json!({}))
        .await
        .expect(StatusCode::NO_CONTENT);
    let closed = app.get(&ticket_path(id), &admin).await.body;
    assert_eq!(closed["state"], "closed");
    assert!(closed["closedBy"].as_str().unwrap().starts_with("api-key:"));
    assert!(closed["closedAt"].as_str().is_some());

    // Another admin closing again: 204, and the first closing stays on record.
    let other_admin = app.tenant_admin("acme").await;
    app.call("POST", &close_path(id), Some(&other_admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    let again = app.get(&ticket_path(id), &admin).await.body;
    assert_eq!(again["closedBy"], closed["closedBy"]);
    assert_eq!(again["closedAt"], closed["closedAt"]);

    // A late reply still reaches the person; the ticket stays closed.
    app.post(
        &replies_path(id),
        &admin,
        json!({"text": "One more thing."}),
    )
    .await
    .expect(StatusCode::CREATED);
    assert_eq!(
        app.get(&ticket_path(id), &admin).await.body["state"],
        "closed"
    );
    assert_eq!(outbox(&app.pool).await.len(), 1);

    app.post(&close_path(Uuid::now_v7()), &admin, json!({}))
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn users_get_403_and_other_tenants_get_404(pool: PgPool) {
    let (app, _) = TestApp::with_acme(pool).await;
    let id = open_ticket(&app, "acme", "bea", 4242, "my parcel is late").await;
    let bea = app.user_key("acme", "bea").await;
    let foreign = app.tenant_with_admin("other").await;
    let reply = json!({"text": "Hello from elsewhere"});

    // A person may not read even the ticket they opened: it is the staff's desk.
    app.get(TICKETS, &bea)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.get(&ticket_path(id), &bea)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.post(&replies_path(id), &bea, reply.clone())
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.post(&close_path(id), &bea, json!({}))
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.get(SETTINGS, &bea)
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    app.put(SETTINGS, &bea, json!({"subscriptionId": null}))
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);

    // Another tenant's admin does not learn that the ticket exists.
    assert!(app.get(TICKETS, &foreign).await.items().is_empty());
    app.get(&ticket_path(id), &foreign)
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
    app.post(&replies_path(id), &foreign, reply.clone())
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);
    app.post(
        &format!("/api/messaging/support/{id}/replies"),
        &foreign,
        reply,
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND, None);
    app.post(&close_path(id), &foreign, json!({}))
        .await
        .expect_problem(StatusCode::NOT_FOUND, None);

    // Nothing was sent, nothing changed.
    assert!(outbox(&app.pool).await.is_empty());
    let admin = app.tenant_admin("acme").await;
    assert_eq!(
        app.get(&ticket_path(id), &admin).await.body["state"],
        "open"
    );

    // A global admin works in the tenant it names.
    let global = app.global_admin().await;
    let listed = app
        .call_with(
            "GET",
            TICKETS,
            Some(&global),
            &[("herald-tenant", "acme")],
            None,
        )
        .await;
    assert_eq!(ids(listed.items()), [id.to_string()]);
    app.get(TICKETS, &global)
        .await
        .expect_problem(StatusCode::BAD_REQUEST, None);
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_staff_subscription_is_chosen_read_and_cleared(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let none = app.get(SETTINGS, &admin).await;
    assert_eq!(
        none.expect(StatusCode::OK),
        &json!({"subscriptionId": null})
    );

    app.create_subscription(&admin, "support_staff").await;
    let set = app
        .put(SETTINGS, &admin, json!({"subscriptionId": "support_staff"}))
        .await;
    assert_eq!(
        set.expect(StatusCode::OK),
        &json!({"subscriptionId": "support_staff"})
    );
    let read = app.get(SETTINGS, &admin).await;
    assert_eq!(
        read.expect(StatusCode::OK),
        &json!({"subscriptionId": "support_staff"})
    );
    // The router reads the same setting.
    let acme = tenants::by_key(&app.pool, "acme").await.unwrap().id;
    let staff = tickets::staff_subscription(&app.pool, acme).await.unwrap();
    assert_eq!(staff.unwrap().key, "support_staff");

    // Unknown, malformed or another tenant's subscription: 422, and nothing changes.
    let foreign = app.tenant_with_admin("other").await;
    app.create_subscription(&foreign, "their_staff").await;
    for id in ["no_such_subscription", "not-an-id", "their_staff"] {
        app.put(SETTINGS, &admin, json!({"subscriptionId": id}))
            .await
            .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("subscriptionId"));
    }
    // Leaving the field out is not clearing it.
    app.put(SETTINGS, &admin, json!({}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);
    assert_eq!(
        app.get(SETTINGS, &admin).await.body,
        json!({"subscriptionId": "support_staff"})
    );

    let cleared = app
        .put(SETTINGS, &admin, json!({"subscriptionId": null}))
        .await;
    assert_eq!(
        cleared.expect(StatusCode::OK),
        &json!({"subscriptionId": null})
    );
    assert_eq!(
        app.get(SETTINGS, &admin).await.body,
        json!({"subscriptionId": null})
    );
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_system_subscription_is_chosen_by_the_global_admin_only(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let global = app.global_admin().await;
    let created = app
        .call_with(
            "POST",
            support::SUBSCRIPTIONS,
            Some(&global),
            &[("herald-tenant", "acme")],
            Some(json!({"subscriptionId": "ops_desk", "label": "Ops", "system": true}).to_string()),
        )
        .await;
    created.expect(StatusCode::CREATED);
    app.put(SETTINGS, &admin, json!({"subscriptionId": "ops_desk"}))
        .await
        .expect_problem(StatusCode::FORBIDDEN, None);
    let chosen = app
        .call_with(
            "PUT",
            SETTINGS,
            Some(&global),
            &[("herald-tenant", "acme")],
            Some(json!({"subscriptionId": "ops_desk"}).to_string()),
        )
        .await;
    assert_eq!(chosen.expect(StatusCode::OK)["subscriptionId"], "ops_desk");
}

#[sqlx::test(migrations = "../../migrations")]
async fn bad_replies_are_refused_and_send_nothing(pool: PgPool) {
    let (app, admin) = TestApp::with_acme(pool).await;
    let id = open_ticket(&app, "acme", "bea", 4242, "my parcel is late").await;
    let too_long = "a".repeat(4001);
    for text in [
        "",
        "   ",
        "\n\t",
        too_long.as_str(),
        "ring \u{7} the bell",
        "a\rb",
    ] {
        app.post(&replies_path(id), &admin, json!({"text": text}))
            .await
            .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, Some("text"));
    }
    for body in [
        json!({}),
        json!({"text": "hi", "cc": "x"}),
        json!({"text": 7}),
    ] {
        app.post(&replies_path(id), &admin, body)
            .await
            .expect_problem(StatusCode::UNPROCESSABLE_ENTITY, None);
    }
    assert!(outbox(&app.pool).await.is_empty());
    assert_eq!(
        app.get(&ticket_path(id), &admin).await.body["state"],
        "open"
    );

    // The limits themselves: 4000 characters (not bytes), lines and tabs.
    let longest = format!("é\t{}\n", "ü".repeat(3997));
    assert_eq!(longest.chars().count(), 4000);
    app.post(&replies_path(id), &admin, json!({"text": longest}))
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(outbox(&app.pool).await.len(), 1);
}
