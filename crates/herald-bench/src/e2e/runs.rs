//! The measured runs: throughput, latency at a fraction of it, and one fan-out.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use herald_runtime::amqp::Message;
use messaging_core::ingress::{Content, DirectContent, Ingress, NotifyRequest, Recipients};
use messaging_core::values::{IdempotencyKey, SubscriptionKey, TenantKey, UserId};
use messaging_core::{Channel, EnvelopeVersion};
use tokio::task::JoinSet;

use super::db::{BenchDb, TENANT};
use super::system::System;

/// Requests published per confirm window by the throughput producer.
const WINDOW: usize = 200;

/// A notify request to one user (by SMS), as a producer publishes it.
pub fn request(key: &str, to: Recipients) -> anyhow::Result<Vec<u8>> {
    let notify = NotifyRequest {
        version: EnvelopeVersion,
        tenant: TenantKey::parse(TENANT)?,
        idempotency_key: Some(IdempotencyKey::parse(key)?),
        to,
        content: Content::Direct(DirectContent {
            subject: None,
            body: "Your order 12345 has shipped and should arrive within two days.".into(),
            html: None,
        }),
        channels: Some(vec![Channel::Sms]),
        mode: None,
        expires_at: None,
    };
    Ok(Ingress::Notify(notify).encode())
}

/// Requests `<prefix>-<i>` for i in 0..n, to users cycling through `u1..=u<users>`.
fn requests(prefix: &str, n: u64, users: u64) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    (0..n)
        .map(|i| {
            let key = format!("{prefix}-{i}");
            let user = UserId::parse(&format!("u{}", i % users.max(1) + 1))?;
            let body = request(&key, Recipients::Users(vec![user]))?;
            Ok((key, body))
        })
        .collect()
}

/// The index of `<prefix>-<i>`.
fn index(key: &str, prefix: &str) -> Option<usize> {
    key.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok()
}

/// Sends `n` requests one window at a time and waits for their outcomes: connects every
/// publisher and consumer on the path, and warms the database's caches.
pub async fn warm_up(system: &mut System, n: u64, users: u64) -> anyhow::Result<()> {
    system.drain_outcomes();
    let requests = requests("warm", n, users)?;
    for chunk in requests.chunks(WINDOW) {
        system.publish(chunk).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut seen = HashSet::new();
    while (seen.len() as u64) < n {
        let Some(arrival) = system.next_outcome(deadline).await else {
            bail!("warm-up: {} of {n} outcomes within 120 s", seen.len());
        };
        if index(&arrival.key, "warm").is_some() {
            anyhow::ensure!(arrival.delivered, "warm-up: {} not delivered", arrival.key);
            seen.insert(arrival.key);
        }
    }
    Ok(())
}

pub struct Throughput {
    pub notifications: u64,
    pub elapsed: Duration,
    pub rate: f64,
    pub failed: u64,
}

/// N requests published as fast as confirms allow; the clock runs from the first publish
/// to the last outcome.
pub async fn throughput(
    system: &mut System,
    n: u64,
    users: u64,
    timeout: Duration,
) -> anyhow::Result<Throughput> {
    system.drain_outcomes();
    let requests = requests("tp", n, users)?;
    let started = Instant::now();
    let producer = {
        let (publisher, exchange) = (system.producer.clone(), system.names.ingress_exchange());
        tokio::spawn(async move {
            for chunk in requests.chunks(WINDOW) {
                let batch: Vec<Message> = chunk
                    .iter()
                    .map(|(_, body)| {
                        Message::new(&exchange, "bench", body)
                            .message_id(uuid::Uuid::now_v7().to_string())
                    })
                    .collect();
                publisher.publish_batch(&batch).await?;
            }
            anyhow::Ok(Instant::now())
        })
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = HashSet::new();
    let (mut last, mut failed) = (started, 0);
    while (seen.len() as u64) < n {
        let Some(arrival) = system.next_outcome(deadline).await else {
            bail!(
                "throughput: {} of {n} outcomes within {timeout:?}",
                seen.len()
            );
        };
        if index(&arrival.key, "tp").is_some() && seen.insert(arrival.key) {
            last = arrival.at;
            failed += u64::from(!arrival.delivered);
        }
    }
    let published = producer.await?.context("throughput producer")?;
    let elapsed = last.duration_since(started);
    println!(
        "  throughput: {n} published in {:.2} s, last outcome after {:.2} s",
        published.duration_since(started).as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok(Throughput {
        notifications: n,
        elapsed,
        rate: herald_bench::stats::rate(n, elapsed),
        failed,
    })
}

pub struct Latency {
    pub offered_rate: f64,
    pub achieved_rate: f64,
    pub count: u64,
    /// From the publish to the job's arrival at the sender (what issue #16 sets targets for).
    pub to_sender: Percentiles,
    /// From the publish to the outcome's arrival at the producer: two hops more (the
    /// sender's event, the router's outcome).
    pub to_outcome: Percentiles,
    /// The way to the sender in two: from the publish to the start of the router's fan-out
    /// (the ingress queue, waiting for a group), and from there to the sender (the group's
    /// transaction, the job's publish and the send queue). By wall clock (the job's
    /// `createdAt`), so to the millisecond.
    pub to_router: Percentiles,
    pub router_to_sender: Percentiles,
    pub failed: u64,
}

/// When a latency run's request was published: by the clock for durations, and by the wall
/// clock, to compare with the job's `createdAt`.
type Published = (Instant, chrono::DateTime<chrono::Utc>);

pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Percentiles {
    fn of(mut samples: Vec<Duration>) -> Percentiles {
        samples.sort();
        Percentiles {
            p50: herald_bench::stats::percentile(&samples, 0.50),
            p99: herald_bench::stats::percentile(&samples, 0.99),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

/// `n` requests paced at `rate` per second (each published on its own, with its confirm);
/// latency runs from the moment its publish began to its job's arrival at the sender, and to
/// its outcome's arrival. `run` names the requests' keys (`lat<run>-<i>`), so each run's are
/// new.
pub async fn latency(
    system: &mut System,
    run: usize,
    rate: f64,
    n: u64,
    users: u64,
    timeout: Duration,
) -> anyhow::Result<Latency> {
    anyhow::ensure!(
        rate.is_finite() && rate > 0.0,
        "latency: no rate to pace at"
    );
    system.drain_outcomes();
    system.at_sender.clear();
    let prefix = format!("lat{run}");
    let requests = requests(&prefix, n, users)?;
    let sent: Arc<Vec<OnceLock<Published>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());
    let pacer = {
        let (publisher, exchange, sent) = (
            system.producer.clone(),
            system.names.ingress_exchange(),
            sent.clone(),
        );
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut publishes = JoinSet::new();
            let started = Instant::now();
            for (i, (_, body)) in requests.into_iter().enumerate() {
                ticks.tick().await;
                let _ = sent[i].set((Instant::now(), chrono::Utc::now()));
                let (publisher, exchange) = (publisher.clone(), exchange.clone());
                publishes.spawn(async move {
                    let message = Message::new(&exchange, "bench", &body)
                        .message_id(uuid::Uuid::now_v7().to_string());
                    publisher.publish(&message).await
                });
                // Collect finished publishes as we go, so errors surface early.
                while let Some(done) = publishes.try_join_next() {
                    done??;
                }
            }
            let offered = started.elapsed();
            while let Some(done) = publishes.join_next().await {
                done??;
            }
            anyhow::Ok(offered)
        })
    };
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs_f64(n as f64 / rate);
    let mut latencies = Vec::with_capacity(n as usize);
    let mut to_sender = Vec::with_capacity(n as usize);
    let mut to_router = Vec::with_capacity(n as usize);
    let mut router_to_sender = Vec::with_capacity(n as usize);
    let mut seen = HashSet::new();
    let mut failed = 0;
    while (seen.len() as u64) < n {
        let Some(arrival) = system.next_outcome(deadline).await else {
            bail!("latency: {} of {n} outcomes in time", seen.len());
        };
        let Some(i) = index(&arrival.key, &prefix) else {
            continue;
        };
        let Some((at, wall)) = sent.get(i).and_then(OnceLock::get) else {
            continue;
        };
        if seen.insert(i) {
            latencies.push(arrival.at.duration_since(*at));
            // A delivered outcome means its job reached the sender first.
            match system.at_sender.of(arrival.message_id) {
                Some(reached) => {
                    let total = reached.at.duration_since(*at);
                    let began = (reached.fan_out_began - *wall).to_std().unwrap_or_default();
                    to_sender.push(total);
                    to_router.push(began.min(total));
                    router_to_sender.push(total.saturating_sub(began));
                }
                None => anyhow::ensure!(
                    !arrival.delivered,
                    "latency: {} delivered, but its job never reached the sender",
                    arrival.key
                ),
            }
            failed += u64::from(!arrival.delivered);
        }
    }
    let offered = pacer.await?.context("latency producer")?;
    Ok(Latency {
        offered_rate: rate,
        achieved_rate: herald_bench::stats::rate(n, offered),
        count: n,
        to_sender: Percentiles::of(to_sender),
        to_outcome: Percentiles::of(latencies),
        to_router: Percentiles::of(to_router),
        router_to_sender: Percentiles::of(router_to_sender),
        failed,
    })
}

pub struct FanOut {
    pub registrations: u64,
    pub elapsed: Duration,
    pub rate: f64,
    /// This process's resident memory before the run and at its highest during it (the
    /// router runs in this process; see [`Watch`]).
    pub rss_before: u64,
    pub rss_peak: u64,
    /// The longest any transaction on the bench database was open during the run.
    pub longest_transaction: Duration,
}

/// One request to `subscription` (with `registrations` registrations), the sender stopped:
/// the clock runs from the publish until the router has ended the fan-out (every job
/// confirmed by the broker and marked). With `empty_after`
/// the queue is emptied afterwards, for the next run; the last run leaves its jobs to the
/// deletion of the topology (RabbitMQ 3.10's quorum log writer crashed once when a queue
/// was deleted right after a purge of a million messages).
pub async fn fan_out(
    system: &mut System,
    db: &BenchDb,
    subscription: &str,
    registrations: u64,
    empty_after: bool,
    timeout: Duration,
) -> anyhow::Result<FanOut> {
    system.stop_sender().await?;
    let queue = system.names.send_queue(Channel::Sms);
    let before = u64::from(system.inspector.queue_len(&queue).await);
    anyhow::ensure!(
        before == 0,
        "fan-out: {before} jobs already wait in {queue}"
    );
    let key = format!("fanout-{subscription}");
    let body = request(
        &key,
        Recipients::Subscription(SubscriptionKey::parse(subscription)?),
    )?;
    let watch = Watch::start(db);
    let rss_before = watch.rss_before;
    let started = Instant::now();
    system.publish(&[(key.clone(), body)]).await?;
    let mut reported = Instant::now();
    // The send queue holds bundles of jobs (issue #16), so its length says little: the clock
    // stops when the router has ended the fan-out, after the broker confirmed every job and
    // the router marked each published.
    loop {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM messages WHERE idempotency_key = $1")
                .bind(&key)
                .fetch_optional(&db.pool)
                .await?;
        if matches!(status.as_deref(), Some("fanned_out" | "completed")) {
            break;
        }
        if started.elapsed() > timeout {
            bail!("fan-out: not ended after {timeout:?} (message {status:?})");
        }
        if reported.elapsed() > Duration::from_secs(5) {
            // The queue's length, not a count of the rows: counting a million rows every few
            // seconds would load the database under measurement (and be the longest
            // transaction the run sees).
            let queued = system.inspector.queue_len(&queue).await;
            println!(
                "  fan-out: {queued} messages (jobs or bundles of up to 100) queued after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    // The router ends the fan-out (its last transaction) after the last publish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_peak, longest_transaction) = watch.stop().await;
    if empty_after {
        system
            .inspector
            .channel()
            .queue_purge(queue.as_str().into(), Default::default())
            .await
            .context("empty the send queue")?;
    }
    Ok(FanOut {
        registrations,
        elapsed,
        rate: herald_bench::stats::rate(registrations, elapsed),
        rss_before,
        rss_peak,
        longest_transaction,
    })
}

/// Samples, every 100 ms, this process's resident memory (`VmRSS`) and the age of the
/// oldest open transaction on the bench database (`pg_stat_activity.xact_start`), keeping
/// the highest of each (autovacuum's are not the router's, and are left out). The router runs in this process, so its memory is at most the
/// process's; the sampling can miss a peak or a transaction shorter than 100 ms, which is far
/// below the 2 s the transactions are held to.
struct Watch {
    rss_before: u64,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<(u64, Duration)>,
}

impl Watch {
    fn start(db: &BenchDb) -> Watch {
        let rss_before = rss().unwrap_or(0);
        let stop = tokio_util::sync::CancellationToken::new();
        let (pool, name, stopped) = (db.pool.clone(), db.name.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let (mut rss_peak, mut longest) = (rss_before, Duration::ZERO);
            loop {
                rss_peak = rss_peak.max(rss().unwrap_or(0));
                let oldest: Option<f64> = sqlx::query_scalar(
                    "SELECT max(extract(epoch FROM clock_timestamp() - xact_start))::float8
                     FROM pg_stat_activity
                     WHERE datname = $1 AND backend_type = 'client backend'
                       AND xact_start IS NOT NULL AND pid <> pg_backend_pid()",
                )
                .bind(&name)
                .fetch_one(&pool)
                .await
                .ok()
                .flatten();
                if let Some(secs) = oldest.filter(|s| s.is_finite() && *s > 0.0) {
                    longest = longest.max(Duration::from_secs_f64(secs));
                }
                tokio::select! {
                    _ = stopped.cancelled() => return (rss_peak, longest),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        Watch {
            rss_before,
            stop,
            task,
        }
    }

    async fn stop(self) -> (u64, Duration) {
        self.stop.cancel();
        self.task.await.unwrap_or((0, Duration::ZERO))
    }
}

/// This process's resident memory in bytes (`VmRSS` in `/proc/self/status`).
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
