//! A burst into one room, in a test binary of its own that sorts last (cargo runs test
//! binaries one after another, by name): after such bursts the tests' Prosody was seen to
//! answer room joins of later tests too slowly (over 20 s) now and then, so nothing that
//! uses Prosody runs after it. A fresh Prosody (`kill` it, `scripts/prosody.sh`) is quick
//! again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::str::FromStr;

use herald_testkit::prosody::Prosody;
use messaging_core::events::AttemptResult;
use support::{Person, bot_config, final_event, room, start};
use tokio_xmpp::jid::BareJid;
use tokio_xmpp::parsers::message::MessageType;

/// Each message into a room comes back to the bot as an echo, so a burst of them is a burst
/// of reading and writing at once: the session once hung after some hundreds (it waited for
/// each write without reading, and the stream stops writing while its incoming queue is full).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_two_thousand_messages_into_one_room_all_arrive() {
    const MESSAGES: usize = 2_000;
    let prosody = Prosody::local();
    let (mut config, _bot) = bot_config(&prosody).await;
    // What is tested is the stream, not the wait for a bounce: a short one keeps it quick.
    config.xmpp.bounce_wait_ms = 20;
    let mut ann = Person::online(&prosody, "ann").await;
    let team = BareJid::from_str(&format!(
        "burst-{}@{}",
        uuid::Uuid::new_v4().simple(),
        prosody.muc_domain
    ))
    .unwrap();
    ann.create_room(&team, "ann").await;
    let h = start("xmpp_room_burst", config).await;

    // Ann reads all along, as a person's client does.
    let reading = tokio::spawn(async move {
        let mut bodies = std::collections::HashSet::new();
        while bodies.len() < MESSAGES {
            let (_, body) = ann.next_body(MessageType::Groupchat).await;
            bodies.insert(body);
        }
        bodies
    });
    let mut jobs = std::collections::HashSet::new();
    for i in 0..MESSAGES {
        let job = h.job(room(&team), &format!("burst {i}"));
        jobs.insert(job.delivery_id);
        h.publish(&job).await;
    }
    let mut delivered = 0;
    while delivered < MESSAGES {
        let event = final_event(&h).await;
        assert!(
            matches!(event.result, AttemptResult::Delivered { .. }),
            "{event:?}"
        );
        assert!(jobs.remove(&event.delivery_id), "one outcome per job");
        delivered += 1;
    }
    let bodies = reading.await.unwrap();
    assert_eq!(
        bodies.len(),
        MESSAGES,
        "every message reached the room once"
    );
    assert!(bodies.contains("burst 0") && bodies.contains("burst 1999"));
    h.stop().await;
}
