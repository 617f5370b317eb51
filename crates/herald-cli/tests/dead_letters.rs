//! `herald dead-letters` against the real broker: every dead letter once, in order, also
//! the large and the deeply nested ones, with the count, and all still in the queue after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use herald_cli::dead_letters::peek;
use herald_runtime::amqp::{Broker, Message, Publisher, Topology, headers};
use herald_runtime::config::{AmqpConfig, Secret};
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use lapin::types::{AMQPValue, FieldTable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dead_letter_is_shown_once_and_stays() {
    let config = AmqpConfig {
        url: Secret::new(amqp_url()),
        prefix: unique_prefix("cli_dead_letters"),
        ..AmqpConfig::default()
    };
    let topology = Topology::from_config(&config);
    let inspector = Inspector::connect().await;
    topology.declare(inspector.connection()).await.unwrap();
    let names = topology.names().clone();
    let work = names.ingress_queue();
    let dead = names.dead_letter_queue(&work);

    // 13 dead letters as the runtime leaves them, among them a large one and a deeply
    // nested one (the two an operator most needs to see).
    let broker = Broker::new(config.clone(), "test");
    let publisher = Publisher::new(broker.clone(), "test");
    let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let large = format!("{{\"text\": \"{}\"}}", "x".repeat(300_000));
    for i in 0..13 {
        let body = match i {
            5 => large.clone(),
            9 => nested.clone(),
            _ => format!("{{\"n\": {i}}}"),
        };
        let mut table = FieldTable::default();
        table.insert(
            headers::REASON_CODE.into(),
            AMQPValue::LongString("invalid".into()),
        );
        table.insert(
            headers::REASON.into(),
            AMQPValue::LongString(format!("letter {i}").into()),
        );
        let message = Message::new(names.dead_letter_exchange(), &work, body.as_bytes())
            .message_id(format!("letter-{i}"))
            .headers(table);
        publisher.publish(&message).await.unwrap();
    }
    publisher.close().await;

    for _ in 0..3 {
        let all = peek(&broker, &dead, 0).await.unwrap();
        assert_eq!(all.total, 13);
        let ids: Vec<String> = all
            .letters
            .iter()
            .map(|l| l.message_id.clone().unwrap())
            .collect();
        let expected: Vec<String> = (0..13).map(|i| format!("letter-{i}")).collect();
        assert_eq!(ids, expected);
        assert_eq!(all.letters[5].body.len(), large.len());
        assert_eq!(all.letters[9].body, nested.as_bytes());
        assert_eq!(all.letters[3].reason.as_deref(), Some("letter 3"));
        assert_eq!(all.letters[3].code.as_deref(), Some("invalid"));
        // The broker returns them as the look's connection closes.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while inspector.queue_len(&dead).await != 13 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "looking took something out"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let first = peek(&broker, &dead, 5).await.unwrap();
    assert_eq!(first.total, 13);
    assert_eq!(first.letters.len(), 5);
    assert_eq!(first.letters[4].message_id.as_deref(), Some("letter-4"));

    let empty = peek(
        &broker,
        &names.dead_letter_queue(&names.router_events_queue()),
        0,
    )
    .await
    .unwrap();
    assert_eq!((empty.total, empty.letters.len()), (0, 0));
    assert!(peek(&broker, "no-such-queue-here.dead", 0).await.is_err());

    topology.delete(inspector.channel()).await.unwrap();
    inspector.close().await;
}
