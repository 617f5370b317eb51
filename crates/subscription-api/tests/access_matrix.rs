//! R16, R19: every route x every role x own or foreign tenant.
//!
//! The list of routes is checked against the OpenAPI document, which is generated from the
//! routes as they are registered: a new route without a row here fails this test.
//!
//! Each case gets fresh objects of its own (so a DELETE in one case cannot change another's
//! answer), all in tenant `acme`. The callers are: a global admin acting in `acme` (with the
//! `Herald-Tenant` header), acme's tenant admin, acme's user who owns the objects, the tenant
//! admin of another tenant using acme's ids, and nobody.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

use herald_storage::support as tickets;
use herald_storage::{PgPool, rooms, tenants};
use messaging_core::events::{RoomChange, RoomEvent};
use messaging_core::values::Jid;
use messaging_core::{AddressKind, Channel, RoomState};
use serde_json::{Value, json};
use support::TestApp;
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
enum Caller {
    Global,
    Admin,
    User,
    Foreign,
    Nobody,
}

const CALLERS: [Caller; 5] = [
    Caller::Global,
    Caller::Admin,
    Caller::User,
    Caller::Foreign,
    Caller::Nobody,
];

/// One route's expected statuses for Global, Admin, User (owner), Foreign; Nobody always 401.
/// `lists` marks collection routes: a foreign caller gets 200 but must not see acme's objects.
struct Row {
    method: &'static str,
    path: &'static str,
    body: Option<fn(&Fixture) -> Value>,
    expect: [u16; 4],
    lists: bool,
}

/// Objects of one case, with names unique to it.
struct Fixture {
    n: usize,
    subscription: String,
    user: String,
    address: Uuid,
    registration: Uuid,
    schedule: Uuid,
    binding: Uuid,
    message: Uuid,
    delivery: Uuid,
    api_key: Uuid,
    user_key: String,
    ticket: Uuid,
    room: Uuid,
}

impl Fixture {
    fn path(&self, template: &str) -> String {
        template
            .replace("{subscription_id}", &self.subscription)
            .replace("{user_id}", &self.user)
            .replace("{address_id}", &self.address.to_string())
            .replace("{registration_id}", &self.registration.to_string())
            .replace("{schedule_id}", &self.schedule.to_string())
            .replace("{binding_id}", &self.binding.to_string())
            .replace("{message_id}", &self.message.to_string())
            .replace("{delivery_id}", &self.delivery.to_string())
            .replace("{id}", &self.api_key.to_string())
            .replace("{ticket_id}", &self.ticket.to_string())
            .replace("{room_id}", &self.room.to_string())
            .replace("{tenant}", "acme")
            .replace("{username}", &format!("producer-{}", self.n))
            .replace("{channel}", "default")
            .replace("{locale}", "en")
    }
}

/// Letters only: subscription ids allow letters and `_`.
fn letters(mut n: usize) -> String {
    let mut out = String::new();
    loop {
        out.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            return out;
        }
    }
}

async fn fixture(app: &TestApp, acme: Uuid, n: usize) -> Fixture {
    let pool = &app.pool;
    let subscription = format!("sub_{}", letters(n));
    let user = format!("person-{n}");
    let sub_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO subscriptions (id, tenant_id, key, label, created_by, updated_by)
         VALUES ($1, $2, $3, 'Matrix', 'test', 'test')",
    )
    .bind(sub_id)
    .bind(acme)
    .bind(&subscription)
    .execute(pool)
    .await
    .unwrap();
    let user_id = Uuid::now_v7();
    sqlx::query("INSERT INTO users (id, tenant_id, external_id) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(acme)
        .bind(&user)
        .execute(pool)
        .await
        .unwrap();
    let address = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO addresses (id, tenant_id, user_id, channel, kind, value)
         VALUES ($1, $2, $3, 'email', 'email', $4)",
    )
    .bind(address)
    .bind(acme)
    .bind(user_id)
    .bind(format!("p{n}@example.com"))
    .execute(pool)
    .await
    .unwrap();
    let registration = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO registrations (id, tenant_id, subscription_id, user_id, channel, address)
         VALUES ($1, $2, $3, $4, 'email', $5)",
    )
    .bind(registration)
    .bind(acme)
    .bind(sub_id)
    .bind(user_id)
    .bind(format!("p{n}@example.com"))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO templates (id, tenant_id, subscription_id, channel, locale, body)
         VALUES ($1, $2, $3, NULL, 'en', 'hello')",
    )
    .bind(Uuid::now_v7())
    .bind(acme)
    .bind(sub_id)
    .execute(pool)
    .await
    .unwrap();
    let schedule = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO schedules (id, tenant_id, subscription_id, cron, next_run_at)
         VALUES ($1, $2, $3, '0 9 * * *', now() + interval '1 day')",
    )
    .bind(schedule)
    .bind(acme)
    .bind(sub_id)
    .execute(pool)
    .await
    .unwrap();
    let binding = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO event_bindings (id, tenant_id, event_type, subscription_id)
         VALUES ($1, $2, 'audit.login', $3)",
    )
    .bind(binding)
    .bind(acme)
    .bind(sub_id)
    .execute(pool)
    .await
    .unwrap();
    let message = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO messages (id, tenant_id, source, subscription_id, request)
         VALUES ($1, $2, 'api', $3, '{}')",
    )
    .bind(message)
    .bind(acme)
    .bind(sub_id)
    .execute(pool)
    .await
    .unwrap();
    let delivery = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO deliveries (id, tenant_id, message_id, subscription_id, user_id, address_id, channel, address)
         VALUES ($1, $2, $3, $4, $5, $6, 'email', $7)",
    )
    .bind(delivery)
    .bind(acme)
    .bind(message)
    .bind(sub_id)
    .bind(user_id)
    .bind(address)
    .bind(format!("p{n}@example.com"))
    .execute(pool)
    .await
    .unwrap();
    // A support ticket the person opened from a linked Telegram chat, as the router opens it.
    let chat = (100_000 + n).to_string();
    sqlx::query(
        "INSERT INTO addresses (id, tenant_id, user_id, channel, kind, value, verified)
         VALUES ($1, $2, $3, 'telegram', 'telegram', $4, true)",
    )
    .bind(Uuid::now_v7())
    .bind(acme)
    .bind(user_id)
    .bind(&chat)
    .execute(pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let linked = tickets::linked_chat(&mut *tx, AddressKind::Telegram, &chat)
        .await
        .unwrap()
        .unwrap();
    let (ticket, _) = tickets::open(
        &mut tx,
        tickets::NewTicket {
            request_id: Uuid::now_v7(),
            chat: &linked,
            channel: Channel::Telegram,
            chat_kind: AddressKind::Telegram,
            chat_value: &chat,
            display_name: None,
            body: "help",
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // Help-desk rooms: one free in the (shared) pool, and one reserved for the person as a
    // staff member, who came in and waits for a client.
    let bot_event = |room: &str, change| RoomEvent {
        version: messaging_core::EnvelopeVersion,
        event_id: Uuid::now_v7(),
        bot: Jid::parse("herald@example.org").unwrap(),
        room: Jid::parse(&format!("{room}@conference.example.org")).unwrap(),
        change,
        occurred_at: chrono::Utc::now(),
    };
    let mut tx = pool.begin().await.unwrap();
    for room in [format!("matrix-{n}-staff"), format!("matrix-{n}-free")] {
        let created = bot_event(
            &room,
            RoomChange::Created {
                password: "pw".into(),
            },
        );
        rooms::apply(&mut tx, &created).await.unwrap();
    }
    tx.commit().await.unwrap();
    let room = rooms::reserve(pool, acme, &user).await.unwrap().unwrap();
    let waiting = bot_event(
        room.room_jid.split('@').next().unwrap(),
        RoomChange::State {
            state: RoomState::StaffWaiting,
            occupant: Some(user.clone()),
        },
    );
    let mut tx = pool.begin().await.unwrap();
    rooms::apply(&mut tx, &waiting).await.unwrap();
    tx.commit().await.unwrap();
    herald_storage::producers::bind(pool, acme, &format!("producer-{n}"), "test")
        .await
        .unwrap();
    let user_key = app.user_key("acme", &user).await;
    let api_key: Uuid =
        sqlx::query_scalar("SELECT id FROM api_keys WHERE user_id = $1 AND tenant_id = $2")
            .bind(&user)
            .bind(acme)
            .fetch_one(pool)
            .await
            .unwrap();
    Fixture {
        n,
        subscription,
        user,
        address,
        registration,
        schedule,
        binding,
        message,
        delivery,
        api_key,
        user_key,
        ticket,
        room: room.id,
    }
}

/// The routes anyone may call: the link mailed to prove an address (its token is the
/// credential), with the answer to an unknown token.
const PUBLIC: [(&str, &str, u16); 2] = [
    ("GET", "/verify/{token}", 200),
    ("POST", "/verify/{token}", 404),
];

fn rows() -> Vec<Row> {
    const OWNER: [u16; 4] = [200, 200, 200, 404];
    const ADMIN_READ: [u16; 4] = [200, 200, 403, 404];
    const ADMIN_LIST: [u16; 4] = [200, 200, 403, 200];
    const EVERYONE_LIST: [u16; 4] = [200, 200, 200, 200];
    let row = |method, path, body, expect, lists| Row {
        method,
        path,
        body,
        expect,
        lists,
    };
    vec![
        row("GET", "/subscriptions", None, EVERYONE_LIST, true),
        row(
            "POST",
            "/subscriptions",
            Some(|f| json!({"subscriptionId": format!("new_{}", letters(f.n)), "label": "New"})),
            [201, 201, 403, 201],
            false,
        ),
        row(
            "GET",
            "/subscriptions/{subscription_id}",
            None,
            OWNER,
            false,
        ),
        row(
            "PUT",
            "/subscriptions/{subscription_id}",
            Some(|_| json!({"label": "Renamed"})),
            ADMIN_READ,
            false,
        ),
        row(
            "DELETE",
            "/subscriptions/{subscription_id}",
            None,
            [204, 204, 403, 404],
            false,
        ),
        row(
            "GET",
            "/subscriptions/{subscription_id}/registrations",
            None,
            OWNER,
            false,
        ),
        row(
            "POST",
            "/subscriptions/{subscription_id}/subscribe",
            // The person's linked (proven) Telegram chat.
            Some(
                |f| json!({"channel": "telegram", "address": (100_000 + f.n).to_string(), "userId": f.user}),
            ),
            [201, 201, 201, 404],
            false,
        ),
        row(
            "DELETE",
            "/subscriptions/{subscription_id}/unsubscribe?userId={user_id}",
            None,
            [204, 204, 204, 404],
            false,
        ),
        row("GET", "/registrations", None, EVERYONE_LIST, true),
        row(
            "PUT",
            "/registrations/{registration_id}",
            Some(|_| json!({"enabled": false})),
            OWNER,
            false,
        ),
        row(
            "DELETE",
            "/registrations/{registration_id}",
            None,
            [204, 204, 204, 404],
            false,
        ),
        row(
            "POST",
            "/trigger/{subscription_id}",
            Some(|_| json!({"eventParameters": {}})),
            [202, 202, 403, 404],
            false,
        ),
        row(
            "POST",
            "/messages",
            Some(|f| json!({"userIds": [f.user], "content": {"direct": {"body": "hi"}}})),
            [202, 202, 403, 202],
            false,
        ),
        row("GET", "/messages/{message_id}", None, ADMIN_READ, false),
        row("GET", "/deliveries", None, EVERYONE_LIST, true),
        row("GET", "/deliveries/{delivery_id}", None, OWNER, false),
        row("GET", "/tenants", None, [200, 403, 403, 403], false),
        // The fixture binds broker user producer-<n> to acme.
        row(
            "GET",
            "/tenants/{tenant}/broker-producers",
            None,
            [200, 403, 403, 403],
            false,
        ),
        row(
            "PUT",
            "/tenants/{tenant}/broker-producers/{username}",
            None,
            [200, 403, 403, 403],
            false,
        ),
        row(
            "DELETE",
            "/tenants/{tenant}/broker-producers/{username}",
            None,
            [204, 403, 403, 403],
            false,
        ),
        row(
            "GET",
            "/tenants/{tenant}/sms-country-codes",
            None,
            ADMIN_READ,
            false,
        ),
        row(
            "PUT",
            "/tenants/{tenant}/sms-country-codes",
            Some(|_| json!({"smsCountryCodes": ["41"]})),
            [200, 403, 403, 403],
            false,
        ),
        row(
            "POST",
            "/tenants",
            Some(|f| json!({"tenant": format!("t{}", f.n), "name": "T"})),
            [201, 403, 403, 403],
            false,
        ),
        // A token names the caller's own tenant: a foreign admin gets one for theirs.
        row(
            "POST",
            "/websocket/tokens",
            Some(|_| json!({"namespaces": ["support-bot"]})),
            [201, 201, 403, 201],
            false,
        ),
        row("GET", "/api-keys", None, ADMIN_LIST, true),
        row(
            "POST",
            "/api-keys",
            Some(|_| json!({"name": "ci", "role": "tenant_admin"})),
            [201, 201, 403, 201],
            false,
        ),
        row(
            "DELETE",
            "/api-keys/{id}",
            None,
            [204, 204, 403, 404],
            false,
        ),
        row("GET", "/users", None, ADMIN_LIST, true),
        // An import creates people in the caller's own tenant: a foreign admin's are theirs.
        row(
            "POST",
            "/user-imports",
            Some(|f| {
                json!({"users": [{"userId": format!("import-{}", f.n), "addresses": [
                    {"channel": "email", "address": format!("import{}@example.com", f.n), "verified": true}
                ]}]})
            }),
            [200, 200, 403, 200],
            false,
        ),
        row("GET", "/users/{user_id}", None, OWNER, false),
        // A user id names a person within the caller's tenant: another tenant's admin
        // creating "person-N" creates their own person, not acme's.
        row(
            "PUT",
            "/users/{user_id}",
            Some(|_| json!({"locale": "de"})),
            [200, 200, 200, 200],
            false,
        ),
        row(
            "DELETE",
            "/users/{user_id}",
            None,
            [204, 204, 403, 404],
            false,
        ),
        row(
            "POST",
            "/users/{user_id}/addresses",
            Some(|f| json!({"channel": "email", "address": format!("second{}@example.com", f.n)})),
            [201, 201, 201, 201],
            false,
        ),
        // The fixture's email address is unproven: a new code goes to it.
        row(
            "POST",
            "/users/{user_id}/addresses/{address_id}/verification",
            None,
            [202, 202, 202, 404],
            false,
        ),
        row(
            "POST",
            "/users/{user_id}/addresses/{address_id}/verify",
            Some(|_| json!({"code": "000000"})),
            [422, 422, 422, 404],
            false,
        ),
        row(
            "DELETE",
            "/users/{user_id}/addresses/{address_id}",
            None,
            [204, 204, 204, 404],
            false,
        ),
        row(
            "POST",
            "/users/{user_id}/link-codes",
            Some(|_| json!({"channel": "telegram"})),
            [201, 201, 201, 201],
            false,
        ),
        row(
            "GET",
            "/subscriptions/{subscription_id}/templates",
            None,
            ADMIN_READ,
            false,
        ),
        row(
            "GET",
            "/subscriptions/{subscription_id}/templates/{channel}/{locale}",
            None,
            ADMIN_READ,
            false,
        ),
        row(
            "PUT",
            "/subscriptions/{subscription_id}/templates/{channel}/{locale}",
            Some(|_| json!({"body": "changed {{ x }}"})),
            ADMIN_READ,
            false,
        ),
        row(
            "DELETE",
            "/subscriptions/{subscription_id}/templates/{channel}/{locale}",
            None,
            [204, 204, 403, 404],
            false,
        ),
        row("GET", "/schedules", None, ADMIN_LIST, true),
        row(
            "POST",
            "/schedules",
            Some(|f| json!({"subscriptionId": f.subscription, "cron": "@daily"})),
            [201, 201, 403, 404],
            false,
        ),
        row("GET", "/schedules/{schedule_id}", None, ADMIN_READ, false),
        row(
            "PUT",
            "/schedules/{schedule_id}",
            Some(|_| json!({"enabled": false})),
            ADMIN_READ,
            false,
        ),
        row(
            "DELETE",
            "/schedules/{schedule_id}",
            None,
            [204, 204, 403, 404],
            false,
        ),
        row("GET", "/event-bindings", None, ADMIN_LIST, true),
        row(
            "POST",
            "/event-bindings",
            Some(|f| json!({"eventType": "audit.logout", "subscriptionId": f.subscription})),
            [201, 201, 403, 404],
            false,
        ),
        row(
            "GET",
            "/event-bindings/{binding_id}",
            None,
            ADMIN_READ,
            false,
        ),
        row(
            "DELETE",
            "/event-bindings/{binding_id}",
            None,
            [204, 204, 403, 404],
            false,
        ),
        // The support desk is the staff's: admins only, tickets of the own tenant only.
        row("GET", "/support/tickets", None, ADMIN_LIST, true),
        row(
            "GET",
            "/support/tickets/{ticket_id}",
            None,
            ADMIN_READ,
            false,
        ),
        row(
            "POST",
            "/support/tickets/{ticket_id}/replies",
            Some(|_| json!({"text": "On its way."})),
            [201, 201, 403, 404],
            false,
        ),
        row(
            "POST",
            "/support/{ticket_id}/replies",
            Some(|_| json!({"text": "On its way."})),
            [201, 201, 403, 404],
            false,
        ),
        row(
            "POST",
            "/support/tickets/{ticket_id}/close",
            None,
            [204, 204, 403, 404],
            false,
        ),
        row("GET", "/support/settings", None, ADMIN_LIST, false),
        // The help desk is the tenant's backend's: admins only. The pool of free rooms is
        // shared by every tenant, so another tenant's admin gets a free room too, but no
        // client of theirs gets acme's waiting staff member.
        row("GET", "/help-desk/rooms", None, ADMIN_LIST, true),
        row("GET", "/help-desk/rooms/{room_id}", None, ADMIN_READ, false),
        row(
            "POST",
            "/help-desk/rooms/staff",
            Some(|f| json!({"staff": format!("staff-{}", f.n)})),
            [201, 201, 403, 201],
            false,
        ),
        // A room to answer a ticket in: the ticket must be the caller's tenant's.
        row(
            "POST",
            "/support/tickets/{ticket_id}/room",
            Some(|f| json!({"staff": format!("staff-{}", f.n)})),
            [201, 201, 403, 404],
            false,
        ),
        row(
            "POST",
            "/help-desk/rooms/client",
            Some(|f| json!({"client": format!("client-{}", f.n)})),
            [200, 200, 403, 409],
            false,
        ),
        // Another tenant's subscription id is unknown in the caller's tenant: 422.
        row(
            "PUT",
            "/support/settings",
            Some(|f| json!({"subscriptionId": f.subscription})),
            [200, 200, 403, 422],
            false,
        ),
    ]
}

#[sqlx::test(migrations = "../../migrations")]
async fn every_route_checks_role_and_tenant(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    app.tenant("acme").await;
    app.tenant("other").await;
    let acme = tenants::by_key(&pool, "acme").await.unwrap().id;
    let global = app.global_admin().await;
    let admin = app.tenant_admin("acme").await;
    let foreign = app.tenant_admin("other").await;

    let rows = rows();
    // Every documented route has a row (or is one of the public ones), and every row is a
    // documented route.
    let documented = documented_routes();
    let mut covered: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| {
            let path = r.path.split('?').next().unwrap_or(r.path);
            (r.method.to_owned(), path.to_owned())
        })
        .collect();
    for (method, path, status) in PUBLIC {
        covered.insert((method.to_owned(), path.to_owned()));
        // Nobody's answer: no credential needed, and an unknown token proves nothing.
        let path = format!("/api/messaging{}", path.replace("{token}", "unknown"));
        let response = app.call_with(method, &path, None, &[], None).await;
        assert_eq!(response.status.as_u16(), status, "{method} {path}");
    }
    assert_eq!(
        covered, documented,
        "the access matrix and the OpenAPI routes differ"
    );

    let mut n = 0;
    let mut failures = Vec::new();
    for row in &rows {
        for caller in CALLERS {
            n += 1;
            let f = fixture(&app, acme, n).await;
            let path = format!("/api/messaging{}", f.path(row.path));
            let (credential, headers): (Option<&str>, Vec<(&str, &str)>) = match caller {
                Caller::Global => (Some(&global), vec![("herald-tenant", "acme")]),
                Caller::Admin => (Some(&admin), vec![]),
                Caller::User => (Some(&f.user_key), vec![]),
                Caller::Foreign => (Some(&foreign), vec![]),
                Caller::Nobody => (None, vec![]),
            };
            let expected = match caller {
                Caller::Global => row.expect[0],
                Caller::Admin => row.expect[1],
                Caller::User => row.expect[2],
                Caller::Foreign => row.expect[3],
                Caller::Nobody => 401,
            };
            let body = row.body.map(|b| b(&f).to_string());
            let response = app
                .call_with(row.method, &path, credential, &headers, body)
                .await;
            if response.status.as_u16() != expected {
                failures.push(format!(
                    "{} {} as {caller:?}: expected {expected}, got {} {}",
                    row.method, row.path, response.status, response.body
                ));
                continue;
            }
            if !response.status.is_success() {
                assert_eq!(response.content_type, "application/problem+json");
            }
            // Another tenant's lists never show acme's objects.
            if row.lists && matches!(caller, Caller::Foreign) {
                let text = response.body.to_string();
                for marker in [&f.subscription, &f.user, &f.delivery.to_string()] {
                    if text.contains(marker.as_str()) {
                        failures.push(format!(
                            "{} {} leaks {marker} to another tenant",
                            row.method, row.path
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `(method, path)` of every operation in the OpenAPI document, relative to the base path.
fn documented_routes() -> BTreeSet<(String, String)> {
    let doc = serde_json::to_value(subscription_api::openapi::document(
        subscription_api::routes::documented(),
    ))
    .unwrap();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                let relative = path
                    .strip_prefix(subscription_api::routes::BASE)
                    .unwrap_or(path);
                out.insert((method.to_uppercase(), relative.to_owned()));
            }
        }
    }
    out
}
