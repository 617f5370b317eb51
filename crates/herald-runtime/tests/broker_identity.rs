//! Issue #17, part 2: who published a message, as the broker vouches for it. RabbitMQ refuses
//! a `user_id` that is not the publishing connection's user; Herald's publishers set it;
//! a retry Herald republishes keeps its first producer, and a producer cannot pass itself off
//! as Herald with Herald's own headers. Against a RabbitMQ node of this test's own, with a
//! second broker user.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use herald_runtime::amqp::{
    Broker, Consumer, Context, Handler, Origin, Outcome, Publisher, Rejection, decode_json, headers,
};
use herald_testkit::rabbit_node::RabbitNode;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::{Harness, Numbered, numbered};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Reports each delivery's origin; defers a message once when its number is odd.
struct Origins {
    seen: mpsc::UnboundedSender<(u32, u32, Origin)>,
}

impl Handler for Origins {
    type Message = Numbered;

    fn decode(&self, body: &[u8]) -> Result<Numbered, Rejection> {
        decode_json(body)
    }

    async fn handle(&self, message: Numbered, ctx: &Context) -> Outcome {
        let deferrals = headers::get_u64(Some(&ctx.headers), headers::DEFERRALS).unwrap_or(0);
        let _ = self
            .seen
            .send((message.n, deferrals as u32, ctx.origin.clone()));
        if message.n % 2 == 1 && deferrals == 0 {
            Outcome::Defer {
                after: Duration::from_millis(100),
            }
        } else {
            Outcome::Ack
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_is_the_brokers_word_and_survives_a_retry() {
    let node = tokio::task::spawn_blocking(|| RabbitNode::start("identity"))
        .await
        .unwrap();
    let shop_url = node.add_user("shop-a", "shop-a-pw");
    let h = Harness::on(&node.url(), "identity").await;
    let (seen, mut origins) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(
        Consumer::new(
            h.broker.clone(),
            h.topology.clone(),
            h.settings(),
            Origins { seen },
            h.health.clone(),
        )
        .run(stop.clone()),
    );

    // Herald's own publisher (the consumer's user, `guest`): a service.
    let body = numbered(0);
    h.publisher().publish(&h.message(&body)).await.unwrap();
    // The producer through Herald's publisher code, which signs with its own user.
    let mut shop_config = h.config.clone();
    shop_config.url = herald_runtime::config::Secret::new(shop_url.clone());
    let shop = Publisher::new(Broker::new(shop_config, "shop"), "producer");
    let body = numbered(1);
    shop.publish(&h.message(&body)).await.unwrap();

    // A producer's raw lapin: Herald's headers claiming a service origin count for nothing,
    // and a message without user_id vouches for nobody.
    let raw = Connection::connect(&shop_url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = raw.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut forged = FieldTable::default();
    headers::set_str(&mut forged, headers::ORIGIN, "service");
    for (n, user) in [(2u32, Some("shop-a")), (4, None)] {
        let mut properties = BasicProperties::default().with_headers(forged.clone());
        if let Some(user) = user {
            properties = properties.with_user_id(user.into());
        }
        channel
            .basic_publish(
                "".into(),
                h.queue().as_str().into(),
                BasicPublishOptions::default(),
                &numbered(n),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Posing as another user: the broker refuses the message and closes the channel.
    let posing = channel
        .basic_publish(
            "".into(),
            h.queue().as_str().into(),
            BasicPublishOptions::default(),
            &numbered(6),
            BasicProperties::default().with_user_id("guest".into()),
        )
        .await;
    let refused = match posing {
        Err(_) => true,
        Ok(confirm) => confirm.await.is_err(),
    };
    assert!(
        refused,
        "RabbitMQ refuses a user_id that is not the connection's user"
    );

    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        // 0, 1 twice (deferred once), 2, 4.
        while got.len() < 5 {
            got.push(origins.recv().await.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("deliveries: {got:?}"));
    got.sort_by_key(|(n, deferrals, _)| (*n, *deferrals));
    assert_eq!(
        got,
        [
            (0, 0, Origin::Service("guest".into())),
            (1, 0, Origin::Producer("shop-a".into())),
            // Republished by the consumer (user `guest`), still the producer's.
            (1, 1, Origin::Producer("shop-a".into())),
            (2, 0, Origin::Producer("shop-a".into())),
            (4, 0, Origin::Anonymous),
        ]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), origins.recv())
            .await
            .is_err(),
        "the message posing as guest never arrived"
    );
    stop.cancel();
    consumer.await.unwrap();
    shop.close().await;
    let _ = raw.close(200, "done".into()).await;
    drop(node);
}
