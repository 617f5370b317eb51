//! The help-desk room pool against the tests' Prosody and the real broker. The test plays
//! the router's part (it answers `BotStarted` with a roster and reads the room events);
//! the router's own part is tested in fanout-router, the whole in herald-e2e.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use herald_testkit::prosody::Prosody;
use messaging_core::events::{RoomChange, RoomEvent, RoomRoster, RosterRoom, TicketRoom};
use messaging_core::values::Jid;
use messaging_core::{Channel, EnvelopeVersion, RoomState};
use sender_runtime::testing::{SenderHarness, quick_config};
use sender_xmpp::{XmppConfig, XmppSender};
use support::{Person, WAIT, bot_config};
use tokio_xmpp::jid::BareJid;

fn pool_config(mut config: XmppConfig, prosody: &Prosody, target: usize, max: usize) -> XmppConfig {
    config.xmpp.muc_service = prosody.muc_domain.clone();
    config.xmpp.pool_target = target;
    config.xmpp.pool_max = max;
    // Rooms of parallel tests never mix.
    config.xmpp.room_prefix = format!("hd-{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    config
}

async fn next_event(h: &SenderHarness) -> RoomEvent {
    h.next_room_event(WAIT).await.expect("a room event in time")
}

/// Waits for the bot's `BotStarted` and answers it with these rooms.
async fn answer_roster(h: &SenderHarness, rooms: Vec<RosterRoom>) -> RoomEvent {
    let started = next_event(h).await;
    assert_eq!(started.change, RoomChange::BotStarted, "{started:?}");
    h.publish_roster(&RoomRoster {
        version: EnvelopeVersion,
        bot: started.bot.clone(),
        in_reply_to: started.event_id,
        rooms,
        created_at: Utc::now(),
    })
    .await;
    started
}

/// The next `n` rooms the pool created: room -> password.
async fn created(h: &SenderHarness, n: usize) -> Vec<(BareJid, String)> {
    let mut rooms = Vec::new();
    while rooms.len() < n {
        let event = next_event(h).await;
        match event.change {
            RoomChange::Created { password } => {
                rooms.push((BareJid::from_str(event.room.as_str()).unwrap(), password));
            }
            other => panic!("a new room expected, got {other:?}"),
        }
    }
    rooms
}

async fn state(h: &SenderHarness) -> (BareJid, RoomState, Option<String>) {
    let event = next_event(h).await;
    match event.change {
        RoomChange::State { state, occupant } => (
            BareJid::from_str(event.room.as_str()).unwrap(),
            state,
            occupant,
        ),
        other => panic!("a state expected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_fills_and_a_room_goes_through_every_state_to_destroyed() {
    let _turn = support::ONE_AT_A_TIME.lock().await;
    let prosody = Prosody::local();
    let (config, _bot) = bot_config(&prosody).await;
    let config = pool_config(config, &prosody, 2, 3);
    let h = SenderHarness::start_chat::<XmppSender>("xmpp_pool", quick_config(), config).await;
    answer_roster(&h, vec![]).await;

    // The pool fills to its target.
    let rooms = created(&h, 2).await;
    let (room, password) = rooms[0].clone();
    assert_ne!(rooms[0].0, rooms[1].0);
    assert!(password.len() >= 20, "a long random password");
    let ready = h
        .wait_readiness(WAIT, |_, body| body.contains("2 free of 2 wanted"))
        .await;
    assert!(ready, "{:?}", h.readyz().await);

    let mut staff = Person::online(&prosody, "staff").await;
    let mut client = Person::online(&prosody, "client").await;
    let mut intruder = Person::online(&prosody, "eve").await;

    // A password is needed.
    assert!(staff.room_exists(&room).await);

    // First in: the staff member.
    staff.join_room(&room, "Sam (staff)", &password).await;
    assert_eq!(
        state(&h).await,
        (
            room.clone(),
            RoomState::StaffWaiting,
            Some("Sam (staff)".into())
        )
    );
    // The room is no longer free: the pool makes one more (3 = the maximum).
    let more = created(&h, 1).await;
    assert!(more[0].0 != rooms[0].0 && more[0].0 != rooms[1].0);

    // Second in: the client.
    client.join_room(&room, "Cleo", &password).await;
    assert_eq!(
        state(&h).await,
        (room.clone(), RoomState::Chatting, Some("Cleo".into()))
    );

    // A third person is kicked and recorded; the state stays.
    intruder.join_room(&room, "Eve", &password).await;
    let refused = next_event(&h).await;
    assert_eq!(
        refused.change,
        RoomChange::Refused {
            occupant: "Eve".into()
        }
    );
    let statuses = intruder.removed_from(&room).await;
    assert!(
        statuses.contains(&tokio_xmpp::parsers::muc::user::Status::Kicked),
        "{statuses:?}"
    );

    // The client leaves, then the staff member: closed, and the room is destroyed.
    client.leave_room(&room, "Cleo").await;
    assert_eq!(
        state(&h).await,
        (room.clone(), RoomState::ClientLeft, Some("Cleo".into()))
    );
    staff.leave_room(&room, "Sam (staff)").await;
    assert_eq!(
        state(&h).await,
        (room.clone(), RoomState::Closed, Some("Sam (staff)".into()))
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while staff.room_exists(&room).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the room still exists"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two free rooms are left: the target, so nothing new.
    assert!(
        h.next_room_event(Duration::from_millis(800))
            .await
            .is_none()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_never_holds_more_than_its_maximum() {
    let _turn = support::ONE_AT_A_TIME.lock().await;
    let prosody = Prosody::local();
    let (config, _bot) = bot_config(&prosody).await;
    let config = pool_config(config, &prosody, 2, 2);
    let h = SenderHarness::start_chat::<XmppSender>("xmpp_pool_max", quick_config(), config).await;
    answer_roster(&h, vec![]).await;
    let rooms = created(&h, 2).await;
    let mut staff = Person::online(&prosody, "staff").await;
    for (room, password) in &rooms {
        staff.join_room(room, "Sam", password).await;
        let (_, got, _) = state(&h).await;
        assert_eq!(got, RoomState::StaffWaiting);
    }
    // No room is free, but two is the maximum.
    assert!(
        h.next_room_event(Duration::from_millis(1500))
            .await
            .is_none()
    );
    let ready = h
        .wait_readiness(WAIT, |_, body| {
            body.contains("0 free of 2 wanted, 2 rooms of at most 2")
        })
        .await;
    assert!(ready, "{:?}", h.readyz().await);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_bot_rejoins_its_rooms_and_reconciles() {
    let _turn = support::ONE_AT_A_TIME.lock().await;
    let prosody = Prosody::local();
    let (config, _bot) = bot_config(&prosody).await;
    let config = pool_config(config, &prosody, 1, 3);
    let h = SenderHarness::start_chat::<XmppSender>("xmpp_pool_r1", quick_config(), config.clone())
        .await;
    answer_roster(&h, vec![]).await;
    let (chat, password) = created(&h, 1).await.remove(0);
    let mut staff = Person::online(&prosody, "staff").await;
    let mut client = Person::online(&prosody, "client").await;
    staff.join_room(&chat, "Sam", &password).await;
    assert_eq!(state(&h).await.1, RoomState::StaffWaiting);
    let (free, free_password) = created(&h, 1).await.remove(0);
    client.join_room(&chat, "Cleo", &password).await;
    assert_eq!(state(&h).await.1, RoomState::Chatting);

    // The bot goes away mid-chat; meanwhile the client leaves. The free room, empty once the
    // bot left, is gone with it.
    h.stop().await;
    client.leave_room(&chat, "Cleo").await;

    let h = SenderHarness::start_chat::<XmppSender>("xmpp_pool_r2", quick_config(), config).await;
    let roster = |room: &BareJid, password: &str, state, staff: Option<&str>| RosterRoom {
        room: Jid::parse(&room.to_string()).unwrap(),
        password: password.to_owned(),
        state,
        staff: staff.map(str::to_owned),
        ticket_id: None,
    };
    answer_roster(
        &h,
        vec![
            roster(&chat, &password, RoomState::Chatting, Some("Sam")),
            roster(&free, &free_password, RoomState::Free, None),
        ],
    )
    .await;

    let mut changes: HashMap<BareJid, Vec<RoomChange>> = HashMap::new();
    let mut new_rooms = 0;
    while changes.get(&chat).is_none_or(|c| c.is_empty())
        || changes.get(&free).is_none_or(|c| c.is_empty())
        || new_rooms == 0
    {
        let event = next_event(&h).await;
        let room = BareJid::from_str(event.room.as_str()).unwrap();
        if matches!(event.change, RoomChange::Created { .. }) {
            new_rooms += 1;
        }
        changes.entry(room).or_default().push(event.change);
    }
    assert_eq!(
        changes[&chat],
        [RoomChange::State {
            state: RoomState::ClientLeft,
            occupant: Some("Sam".into())
        }],
        "the client left while the bot was away"
    );
    assert_eq!(
        changes[&free],
        [RoomChange::State {
            state: RoomState::Closed,
            occupant: None
        }],
        "the free room did not survive the bot's absence"
    );
    assert_eq!(new_rooms, 1, "the pool refills to its target of one");

    // The bot is back in the chat room as its owner: the last one leaving closes it.
    staff.leave_room(&chat, "Sam").await;
    loop {
        let (room, got, _) = state(&h).await;
        if room == chat {
            assert_eq!(got, RoomState::Closed);
            break;
        }
    }
    h.stop().await;
}

/// R53: a room reserved to answer a support ticket. The bot posts the ticket when the staff
/// member comes in (the room keeps no history) and reports what they write there; the bot's
/// own words and what is said in other rooms are not relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_answer_a_support_ticket_in_its_room() {
    let _turn = support::ONE_AT_A_TIME.lock().await;
    let prosody = Prosody::local();
    let (config, _bot) = bot_config(&prosody).await;
    let config = pool_config(config, &prosody, 2, 4);
    let h =
        SenderHarness::start_chat::<XmppSender>("xmpp_pool_ticket", quick_config(), config).await;
    let started = answer_roster(&h, vec![]).await;
    let rooms = created(&h, 2).await;
    let (room, password) = rooms[0].clone();
    let (plain, plain_password) = rooms[1].clone();

    let ticket_id = uuid::Uuid::now_v7();
    let ticket = TicketRoom {
        version: EnvelopeVersion,
        bot: started.bot.clone(),
        room: Jid::parse(&room.to_string()).unwrap(),
        ticket_id,
        channel: Channel::Telegram,
        display_name: Some("Cleo".into()),
        text: "My order never came.".into(),
        created_at: Utc::now(),
    };
    h.publish_ticket_room(&ticket).await;
    // Reserved: no longer free, so the pool makes another room.
    created(&h, 1).await;
    // A redelivery changes nothing.
    h.publish_ticket_room(&ticket).await;

    let mut staff = Person::online(&prosody, "staff").await;
    staff.join_room(&room, "Sam", &password).await;
    assert_eq!(
        state(&h).await,
        (room.clone(), RoomState::StaffWaiting, Some("Sam".into()))
    );
    let (posted, body) = staff
        .next_body(tokio_xmpp::parsers::message::MessageType::Groupchat)
        .await;
    assert_eq!(posted.from.unwrap().to_bare(), room);
    assert!(body.contains("Cleo on telegram"), "{body}");
    assert!(body.contains("My order never came."), "{body}");
    assert!(body.contains(&ticket_id.to_string()), "{body}");

    staff
        .send(
            tokio_xmpp::parsers::message::Message::groupchat(tokio_xmpp::jid::Jid::from(
                room.clone(),
            ))
            .with_body(Default::default(), "Your parcel left today.".into()),
        )
        .await;
    let said = next_event(&h).await;
    assert_eq!(said.room.as_str(), room.to_string());
    assert_eq!(
        said.change,
        RoomChange::Said {
            occupant: "Sam".into(),
            text: "Your parcel left today.".into()
        }
    );
    // Nothing else: the ticket was posted once, the bot's own post was not relayed.
    assert!(
        h.next_room_event(Duration::from_millis(800))
            .await
            .is_none()
    );

    // What is said in a room that answers no ticket stays there.
    staff.join_room(&plain, "Sam", &plain_password).await;
    assert_eq!(state(&h).await.1, RoomState::StaffWaiting);
    created(&h, 1).await; // the pool refills (4 rooms: the maximum)
    staff
        .send(
            tokio_xmpp::parsers::message::Message::groupchat(tokio_xmpp::jid::Jid::from(
                plain.clone(),
            ))
            .with_body(Default::default(), "private words".into()),
        )
        .await;
    assert!(
        h.next_room_event(Duration::from_millis(800))
            .await
            .is_none()
    );
    h.stop().await;
}
