//! The broker baseline (`just bench-broker`).
//!
//! Moves N messages producer -> queue -> consumer -> ack, twice per round: once through
//! Herald's runtime (`Publisher::publish_batch`, `Consumer` with a handler that decodes the
//! job) and once through a plain lapin loop with the same settings (confirm window, prefetch,
//! quorum queue, persistent messages, decode, ack per message). Rounds alternate so machine
//! noise hits both alike; the medians and their ratio are printed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use herald_bench::{payload, stats};
use herald_runtime::amqp::{
    Broker, Consumer, ConsumerSettings, Context, Handler, Message, Outcome, Publisher, Rejection,
    Topology, decode_json,
};
use herald_runtime::config::{AmqpConfig, Secret};
use herald_runtime::health::Health;
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use messaging_core::job::SendJob;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Messages per run.
    #[arg(long, default_value_t = 30_000)]
    messages: u64,
    /// Rounds (each runs both the runtime and the plain loop).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Messages published before waiting for their confirms (both sides).
    #[arg(long, default_value_t = 500)]
    window: usize,
    /// Consumer prefetch (both sides).
    #[arg(long, default_value_t = 200)]
    prefetch: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_runtime::install_crypto_provider();
    let args = Args::parse();
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..args.messages).map(payload::send_job).collect());
    println!(
        "bench-broker: {} messages of {} bytes, confirm window {}, prefetch {}, quorum queue, {} rounds",
        args.messages,
        bodies[0].len(),
        args.window,
        args.prefetch,
        args.rounds
    );
    let (mut plain, mut herald) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let p = run_plain(&args, &bodies).await.context("plain lapin run")?;
        let h = run_herald(&args, &bodies)
            .await
            .context("herald runtime run")?;
        println!("  round {round}: plain lapin {p:>8.0} msg/s   herald runtime {h:>8.0} msg/s");
        plain.push(p);
        herald.push(h);
    }
    let (plain, herald) = (stats::median(plain), stats::median(herald));
    println!("plain lapin (baseline): {plain:.0} msg/s");
    println!("herald runtime:         {herald:.0} msg/s");
    println!("ratio herald/plain:     {:.2}", herald / plain);
    Ok(())
}

fn config(prefix: &str, args: &Args) -> AmqpConfig {
    AmqpConfig {
        url: Secret::new(amqp_url()),
        prefix: prefix.to_owned(),
        prefetch: args.prefetch,
        concurrency: args.prefetch as usize,
        ..AmqpConfig::default()
    }
}

/// Declares a topology under a fresh prefix; returns it with the queue both sides use.
async fn setup(
    name: &str,
    args: &Args,
) -> anyhow::Result<(Inspector, AmqpConfig, Topology, String)> {
    let config = config(&unique_prefix(name), args);
    let topology = Topology::from_config(&config);
    let inspector = Inspector::connect().await;
    topology.declare(inspector.connection()).await?;
    let queue = topology.names().send_queue(messaging_core::Channel::Email);
    Ok((inspector, config, topology, queue))
}

struct Counting {
    done: Arc<AtomicU64>,
    target: u64,
    finished: Arc<Notify>,
}

impl Handler for Counting {
    type Message = SendJob;

    fn decode(&self, body: &[u8]) -> Result<SendJob, Rejection> {
        decode_json(body)
    }

    async fn handle(&self, job: SendJob, _: &Context) -> Outcome {
        std::hint::black_box(job);
        if self.done.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            self.finished.notify_one();
        }
        Outcome::Ack
    }
}

async fn run_herald(args: &Args, bodies: &Arc<Vec<Vec<u8>>>) -> anyhow::Result<f64> {
    let (inspector, config, topology, queue) = setup("bench-herald", args).await?;
    let broker = Broker::new(config.clone(), "bench");
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(Notify::new());
    let handler = Counting {
        done: done.clone(),
        target: args.messages,
        finished: finished.clone(),
    };
    let stop = CancellationToken::new();
    let consumer = Consumer::new(
        broker.clone(),
        topology.clone(),
        ConsumerSettings::from_config(&queue, &config),
        handler,
        Health::new(),
    );
    let consumer = tokio::spawn(consumer.run(stop.clone()));
    let publisher = Publisher::new(broker, "bench");
    // Connect both before the clock starts.
    publisher
        .publish(&Message::new("", "bench-warmup-unrouted", b"{}"))
        .await
        .ok();
    // Neither side's clock includes connecting.
    inspector
        .wait_for_consumer(&queue, Duration::from_secs(10))
        .await;

    let started = Instant::now();
    let producer = {
        let (publisher, bodies, queue, window) = (
            publisher.clone(),
            bodies.clone(),
            queue.clone(),
            args.window,
        );
        tokio::spawn(async move {
            for chunk in bodies.chunks(window) {
                let batch: Vec<Message> = chunk
                    .iter()
                    .map(|b| Message::new("", queue.clone(), b))
                    .collect();
                publisher.publish_batch(&batch).await?;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::timeout(Duration::from_secs(600), finished.notified())
        .await
        .context("consumer finished in time")?;
    let elapsed = started.elapsed();
    producer.await??;
    stop.cancel();
    consumer.await?;
    publisher.close().await;
    topology.delete(inspector.channel()).await?;
    inspector.close().await;
    Ok(stats::rate(args.messages, elapsed))
}

async fn run_plain(args: &Args, bodies: &Arc<Vec<Vec<u8>>>) -> anyhow::Result<f64> {
    let settings = herald_bench::baseline::Settings {
        messages: args.messages,
        rounds: 1,
        window: args.window,
        prefetch: args.prefetch,
    };
    herald_bench::baseline::run_plain(&settings, bodies).await
}
