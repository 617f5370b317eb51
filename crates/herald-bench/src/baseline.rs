//! The broker baseline every benchmark compares with, measured in the same run: a plain
//! lapin loop (publish with confirms in windows -> quorum queue -> consume -> decode -> ack
//! per message). `bench-broker` and `bench-e2e` both call [`run_plain`].

use std::time::{Duration, Instant};

use crate::{payload, stats};
use anyhow::Context as _;
use futures::StreamExt;
use futures::future::join_all;
use herald_runtime::amqp::Topology;
use herald_runtime::config::{AmqpConfig, Secret};
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use messaging_core::job::SendJob;

/// How the baseline runs (`bench-broker`'s flags: 30,000 messages, window 500, prefetch 200).
pub struct Settings {
    pub messages: u64,
    pub rounds: usize,
    pub window: usize,
    pub prefetch: u16,
}

/// The median plain-lapin rate over the rounds, in messages per second, and each round's.
pub async fn measure(settings: &Settings) -> anyhow::Result<(f64, Vec<f64>)> {
    let bodies: Vec<Vec<u8>> = (0..settings.messages).map(payload::send_job).collect();
    let mut rates = Vec::with_capacity(settings.rounds);
    for _ in 0..settings.rounds.max(1) {
        rates.push(run_plain(settings, &bodies).await?);
    }
    Ok((stats::median(rates.clone()), rates))
}

/// One round: the rate in messages per second.
pub async fn run_plain(settings: &Settings, bodies: &[Vec<u8>]) -> anyhow::Result<f64> {
    let config = AmqpConfig {
        url: Secret::new(amqp_url()),
        prefix: unique_prefix("bench-plain"),
        prefetch: settings.prefetch,
        concurrency: settings.prefetch as usize,
        ..AmqpConfig::default()
    };
    let topology = Topology::from_config(&config);
    let inspector = Inspector::connect().await;
    topology.declare(inspector.connection()).await?;
    let queue = topology.names().send_queue(messaging_core::Channel::Email);

    let url = amqp_url();
    let consumer_conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let consumer_channel = consumer_conn.create_channel().await?;
    consumer_channel
        .basic_qos(settings.prefetch, BasicQosOptions { global: false })
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher_conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let publisher_channel = publisher_conn.create_channel().await?;
    publisher_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // The clock does not include connecting.
    inspector
        .wait_for_consumer(&queue, Duration::from_secs(10))
        .await;

    let target = settings.messages;
    let started = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut done = 0;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery?;
            let job: SendJob = serde_json::from_slice(&delivery.data)?;
            std::hint::black_box(job);
            delivery.acker.ack(BasicAckOptions::default()).await?;
            done += 1;
            if done == target {
                break;
            }
        }
        anyhow::Ok(())
    });
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let options = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    for chunk in bodies.chunks(settings.window.max(1)) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for body in chunk {
            confirms.push(
                publisher_channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        options,
                        body,
                        properties.clone(),
                    )
                    .await?,
            );
        }
        for confirmation in join_all(confirms).await {
            anyhow::ensure!(confirmation?.is_ack(), "broker nacked a message");
        }
    }
    tokio::time::timeout(Duration::from_secs(600), consuming)
        .await
        .context("baseline consumer finished in time")???;
    let elapsed = started.elapsed();
    let _ = publisher_conn.close(200, "done".into()).await;
    let _ = consumer_conn.close(200, "done".into()).await;
    let _ = inspector
        .channel()
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    topology.delete(inspector.channel()).await?;
    inspector.close().await;
    Ok(stats::rate(settings.messages, elapsed))
}
