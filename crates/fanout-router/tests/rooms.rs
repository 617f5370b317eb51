//! The XMPP bot's help-desk room events through the real broker into the router and the
//! database, and the roster a restarted bot gets back (R31-R36).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use fanout_router::config::{Config, RouterConfig};
use fanout_router::outcome::Outcomes;
use fanout_router::tracking::TrackingHandler;
use herald_runtime::amqp::{Broker, Handler, Message, Outcome, Publisher, Topology};
use herald_runtime::config::BaseConfig;
use herald_runtime::service::Service;
use herald_storage::db::DatabaseConfig;
use herald_storage::tracking::RemovalPolicy;
use herald_storage::{rooms, tenants};
use herald_testkit::broker::Inspector;
use messaging_core::events::{Answer, ChatAnswer, RoomChange, RoomEvent, RoomRoster};
use messaging_core::topology::{Names, routing};
use messaging_core::values::Jid;
use messaging_core::{Channel, EnvelopeVersion, RoomState};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BOT: &str = "herald@example.org";

/// The router as its binary runs it, and a producer standing in for the bot.
struct Running {
    names: Names,
    topology: Topology,
    inspector: Inspector,
    bot: Publisher,
    shutdown: CancellationToken,
    router: JoinHandle<Result<(), std::io::Error>>,
}

impl Running {
    async fn start(pool: &PgPool, test: &str) -> Running {
        herald_runtime::install_crypto_provider();
        let amqp = support::amqp_config(test);
        let config = Config {
            base: BaseConfig {
                amqp: amqp.clone(),
                ..BaseConfig::default()
            },
            // A change that overtook its room's creation comes back after the shortest delay.
            router: RouterConfig {
                retry_after_ms: 100,
                retry_max_ms: 300,
                ..RouterConfig::default()
            },
            database: DatabaseConfig::default(),
            verification: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        let service = Service::with_parts(
            "test-router",
            config.base.clone(),
            listener,
            shutdown.clone(),
        );
        let names = service.topology.names().clone();
        let topology = service.topology.clone();
        let work = fanout_router::start(&service, &config, pool.clone()).expect("router starts");
        let router = tokio::spawn(service.run(axum::Router::new(), work));
        let inspector = Inspector::connect().await;
        // The router declares the same topology at the same moment; RabbitMQ 3.10 can answer
        // a declare racing another connection's creation of a classic queue with NOT_FOUND
        // ("home node ... is down or inaccessible"), once. Declared again, it is there.
        let mut tries = 0;
        while let Err(error) = topology.declare(inspector.connection()).await {
            tries += 1;
            assert!(tries < 5, "declare: {error:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            inspector
                .wait_for_consumer(&names.router_events_queue(), Duration::from_secs(20))
                .await,
            "the router consumes its events queue"
        );
        Running {
            names,
            topology,
            inspector,
            bot: Publisher::new(Broker::new(amqp, "test-bot"), "bot"),
            shutdown,
            router,
        }
    }

    /// Publishes as the bot does: on the events exchange, `room.xmpp`, confirmed.
    async fn publish(&self, event: &RoomEvent) {
        let body = serde_json::to_vec(event).unwrap();
        self.bot
            .publish(
                &Message::new(self.names.events_exchange(), routing::ROOM, &body)
                    .message_id(event.event_id.to_string()),
            )
            .await
            .unwrap();
    }

    async fn stop(self) {
        self.bot.close().await;
        self.shutdown.cancel();
        self.router.await.unwrap().unwrap();
        let _ = self.topology.delete(self.inspector.channel()).await;
        self.inspector.close().await;
    }
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
        + chrono::Duration::seconds(seconds)
}

fn event(room: &str, change: RoomChange, occurred_at: DateTime<Utc>) -> RoomEvent {
    RoomEvent {
        version: EnvelopeVersion,
        event_id: Uuid::now_v7(),
        bot: Jid::parse(BOT).unwrap(),
        room: Jid::parse(&format!("{room}@conference.example.org")).unwrap(),
        change,
        occurred_at,
    }
}

fn state(room: &str, state: RoomState, who: &str, occurred_at: DateTime<Utc>) -> RoomEvent {
    event(
        room,
        RoomChange::State {
            state,
            occupant: Some(who.to_owned()),
        },
        occurred_at,
    )
}

/// Waits until `probe` answers `want` (the router works through the broker, at its pace).
async fn eventually<T: PartialEq + std::fmt::Debug, F: Future<Output = T>>(
    mut probe: impl FnMut() -> F,
    want: T,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = probe().await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {got:?}, waiting for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn room_state(pool: &PgPool, room: &str) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM help_desk_rooms WHERE room_jid = $1")
        .bind(format!("{room}@conference.example.org"))
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// The room's history as (kind, state, applied), in time order.
async fn history(pool: &PgPool, room: &str) -> Vec<(String, Option<String>, bool)> {
    sqlx::query_as(
        "SELECT c.kind, c.state, c.applied FROM help_desk_room_changes c
         JOIN help_desk_rooms r ON r.id = c.room_id
         WHERE r.room_jid = $1 ORDER BY c.occurred_at, c.id",
    )
    .bind(format!("{room}@conference.example.org"))
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../../migrations")]
async fn room_events_through_the_broker_become_rooms_with_their_history(pool: PgPool) {
    let r = Running::start(&pool, "router_rooms").await;
    let acme = tenants::create(&pool, "acme", "Acme").await.unwrap().id;

    // A change that overtook its room's creation waits for it (through a delay queue).
    let closed_early = state("lost", RoomState::Closed, "herald", at(-50));
    r.publish(&closed_early).await;
    r.publish(&event(
        "lost",
        RoomChange::Created {
            password: "pw-lost".into(),
        },
        at(-60),
    ))
    .await;

    let created = event(
        "r1",
        RoomChange::Created {
            password: "pw-1".into(),
        },
        at(-30),
    );
    r.publish(&created).await;
    r.publish(&created).await;
    eventually(|| room_state(&pool, "r1"), Some("free".to_owned())).await;
    eventually(|| room_state(&pool, "lost"), Some("closed".to_owned())).await;
    // The lost room was closed in the pool: r1 is the only one to hand out.
    let reserved = rooms::reserve(&pool, acme, "staff-anna")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reserved.room_jid, "r1@conference.example.org");
    assert_eq!(reserved.state, RoomState::Reserved);

    // The client's arrival overtakes the staff member's, and one event comes twice.
    let waiting = state("r1", RoomState::StaffWaiting, "anna", at(10));
    let chatting = state("r1", RoomState::Chatting, "carl", at(20));
    r.publish(&chatting).await;
    eventually(|| room_state(&pool, "r1"), Some("chatting".to_owned())).await;
    r.publish(&waiting).await;
    r.publish(&chatting).await;
    r.publish(&event(
        "r1",
        RoomChange::Refused {
            occupant: "mallory".into(),
        },
        at(25),
    ))
    .await;
    eventually(
        || async { history(&pool, "r1").await.len() },
        5, // created, reserved, staff_waiting, chatting, refused
    )
    .await;
    assert_eq!(room_state(&pool, "r1").await.as_deref(), Some("chatting"));
    let entries = history(&pool, "r1").await;
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(
        entries[2..],
        [
            ("state".to_owned(), s("staff_waiting"), false),
            ("state".to_owned(), s("chatting"), true),
            ("refused".to_owned(), None, true),
        ]
    );
    assert_eq!(
        history(&pool, "lost").await,
        [
            ("created".to_owned(), s("free"), true),
            ("state".to_owned(), s("closed"), true),
        ]
    );

    // Nothing went to a dead letter.
    assert_eq!(
        r.inspector
            .queue_len(&r.names.dead_letter_queue(&r.names.router_events_queue()))
            .await,
        0
    );
    r.stop().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_restarted_bot_gets_its_open_rooms(pool: PgPool) {
    let r = Running::start(&pool, "router_roster").await;
    let rosters = r
        .inspector
        .temporary_queue(&r.names.events_exchange(), routing::ROSTER)
        .await;
    for (room, at_s) in [("r1", -30), ("r2", -20), ("r3", -10)] {
        r.publish(&event(
            room,
            RoomChange::Created {
                password: format!("pw-{room}"),
            },
            at(at_s),
        ))
        .await;
    }
    r.publish(&state("r3", RoomState::Closed, "herald", at(-5)))
        .await;
    eventually(|| room_state(&pool, "r3"), Some("closed".to_owned())).await;
    eventually(|| room_state(&pool, "r2"), Some("free".to_owned())).await;
    eventually(|| room_state(&pool, "r1"), Some("free".to_owned())).await;

    let started = event_of_bot(RoomChange::BotStarted);
    r.publish(&started).await;
    let message = r
        .inspector
        .wait_get(&rosters, Duration::from_secs(10))
        .await
        .expect("a roster");
    assert_eq!(
        message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some(format!("roster/{}", started.event_id).as_str())
    );
    let roster: RoomRoster = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(roster.in_reply_to, started.event_id);
    assert_eq!(roster.bot.as_str(), BOT);
    let rooms: Vec<(String, String, RoomState)> = roster
        .rooms
        .into_iter()
        .map(|room| (room.room.as_str().to_owned(), room.password, room.state))
        .collect();
    assert_eq!(
        rooms,
        [
            (
                "r1@conference.example.org".to_owned(),
                "pw-r1".to_owned(),
                RoomState::Free
            ),
            (
                "r2@conference.example.org".to_owned(),
                "pw-r2".to_owned(),
                RoomState::Free
            ),
        ]
    );
    r.stop().await;
}

/// A `BotStarted`: `room` is the bot's own JID.
fn event_of_bot(change: RoomChange) -> RoomEvent {
    RoomEvent {
        version: EnvelopeVersion,
        event_id: Uuid::now_v7(),
        bot: Jid::parse(BOT).unwrap(),
        room: Jid::parse(BOT).unwrap(),
        change,
        occurred_at: Utc::now(),
    }
}

fn tracker(h: &support::Harness) -> TrackingHandler {
    TrackingHandler::new(
        h.pool.clone(),
        Outcomes::new(h.pool.clone(), h.publisher.clone(), h.names.clone()),
        RemovalPolicy {
            after: chrono::Duration::days(7),
            failures: 5,
        },
        Duration::from_secs(1),
    )
}

/// One event through the handler, as the consumer runner passes it.
async fn handle(t: &TrackingHandler, event: &RoomEvent) -> Outcome {
    let bytes = serde_json::to_vec(event).unwrap();
    match t.decode(&bytes) {
        Ok(message) => t.handle(message, &support::context(None)).await,
        Err(rejection) => Outcome::DeadLetter(rejection),
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_change_before_its_room_is_retried_and_a_state_the_bot_cannot_see_is_refused(
    pool: PgPool,
) {
    let h = support::Harness::new(pool.clone(), "router_rooms_handler").await;
    let t = tracker(&h);
    let early = state("r1", RoomState::StaffWaiting, "anna", at(10));
    assert!(matches!(
        handle(&t, &early).await,
        Outcome::Retry { reason, .. } if reason.contains("r1@conference.example.org")
    ));
    let created = event(
        "r1",
        RoomChange::Created {
            password: "pw".into(),
        },
        at(0),
    );
    assert_eq!(handle(&t, &created).await, Outcome::Ack);
    assert_eq!(handle(&t, &early).await, Outcome::Ack);
    assert_eq!(
        room_state(&pool, "r1").await.as_deref(),
        Some("staff_waiting")
    );

    for word in [RoomState::Free, RoomState::Reserved] {
        match handle(&t, &state("r1", word, "anna", at(20))).await {
            Outcome::DeadLetter(rejection) => assert_eq!(rejection.code, "invalid"),
            other => panic!("{word}: {other:?}"),
        }
    }
    // A body that is not a room event at all names what it lacks.
    let rejection = t
        .decode(br#"{"version": 1, "room": "r1@conference.example.org"}"#)
        .unwrap_err();
    assert_eq!(rejection.code, "unknown_event");
    let rejection = t
        .decode(br#"{"version": 1, "room": "r1@conference.example.org", "change": {"type": "exploded"}}"#)
        .unwrap_err();
    assert_eq!(rejection.code, "invalid");
    h.finish().await;
}

/// R53: what a staff member writes in a ticket's room reaches the person's chat as the
/// ticket's reply, once; a restarted bot learns which of its rooms answer tickets.
#[sqlx::test(migrations = "../../migrations")]
async fn words_in_a_tickets_room_go_to_the_persons_chat(pool: PgPool) {
    let r = Running::start(&pool, "router_ticket_room").await;
    let answers = r
        .inspector
        .temporary_queue(
            &r.names.events_exchange(),
            &routing::answer(Channel::Telegram),
        )
        .await;
    let rosters = r
        .inspector
        .temporary_queue(&r.names.events_exchange(), routing::ROSTER)
        .await;
    let acme = tenants::create(&pool, "acme", "Acme").await.unwrap().id;
    let ticket = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO support_tickets (id, tenant_id, request_id, channel, chat_kind, chat, body)
         VALUES ($1, $2, $3, 'telegram', 'telegram', '4242', 'My order never came.')",
    )
    .bind(ticket)
    .bind(acme)
    .bind(Uuid::now_v7())
    .execute(&pool)
    .await
    .unwrap();
    r.publish(&event(
        "t1",
        RoomChange::Created {
            password: "pw".into(),
        },
        at(-10),
    ))
    .await;
    eventually(|| room_state(&pool, "t1"), Some("free".to_owned())).await;
    rooms::reserve_for_ticket(&pool, acme, "staff-anna", ticket)
        .await
        .unwrap()
        .unwrap();

    let words = event(
        "t1",
        RoomChange::Said {
            occupant: "Anna".into(),
            text: "Your parcel left today.".into(),
        },
        at(0),
    );
    // Twice, as a redelivery would: one reply, one answer.
    r.publish(&words).await;
    r.publish(&words).await;
    let message = r
        .inspector
        .wait_get(&answers, Duration::from_secs(10))
        .await
        .expect("an answer to the person's chat");
    let answer: ChatAnswer = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(answer.chat.value(), "4242");
    assert_eq!(answer.channel, Channel::Telegram);
    assert_eq!(
        answer.answer,
        Answer::SupportReply {
            ticket_id: ticket,
            text: "Your parcel left today.".into()
        }
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        r.inspector
            .wait_get(&answers, Duration::from_millis(200))
            .await
            .is_none(),
        "the repeat was answered again"
    );
    let replies: i64 =
        sqlx::query_scalar("SELECT count(*) FROM support_replies WHERE ticket_id = $1")
            .bind(ticket)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(replies, 1);

    let started = event_of_bot(RoomChange::BotStarted);
    r.publish(&started).await;
    let message = r
        .inspector
        .wait_get(&rosters, Duration::from_secs(10))
        .await
        .expect("a roster");
    let roster: RoomRoster = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(roster.rooms.len(), 1);
    assert_eq!(roster.rooms[0].ticket_id, Some(ticket));
    r.stop().await;
}
