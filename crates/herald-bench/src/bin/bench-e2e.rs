//! The end-to-end benchmark (`just bench-e2e`, issue #4 item 8).
//!
//! In one process, against the real RabbitMQ and PostgreSQL:
//! 1. the broker baseline: `bench-broker`'s plain lapin loop (publish with confirms -> quorum
//!    queue -> consume -> ack), messages per second;
//! 2. Herald's path under a fresh prefix and a fresh database (`herald_bench_<random>`): the
//!    real fan-out router (`fanout_router::start`) and a no-op SMS sender on the real sender
//!    runtime, which reports every job `delivered` at once;
//! 3. throughput: N notify requests (one user each) published as fast as confirms allow;
//!    notifications/s = N / (first publish -> last outcome on `outcome.<tenant>`);
//! 4. latency at 10% and 50% of that rate: paced requests, from the publish to the job's
//!    arrival at the sender, p50/p99 (issue #16's targets at 50%: 10 ms and 25 ms), and to
//!    the outcome's arrival at the producer;
//! 5. the ratio: e2e rate / (baseline rate / broker hops), a notification taking 4 hops
//!    (producer -> ingress queue, router -> send queue, sender -> router's events queue,
//!    router -> outcome queue);
//! 6. REST ingress: the real subscription API (with its outbox relay) loaded by `wrk` with
//!    `POST /api/messaging/messages` for 10 s on 32 connections: accepted messages/s and
//!    p50/p99, every accepted message followed to its outcome;
//! 7. fan-out: one request to a subscription with 100,000 registrations, the sender stopped;
//!    jobs/s until the send queue holds them all; then one to 1,000,000 registrations, with
//!    the process's peak resident memory (the router runs in it) and the longest transaction
//!    the database saw.
//!
//! The database and the queues are removed at the end, also after a failed run.

#[path = "../e2e/mod.rs"]
mod e2e;

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use e2e::db::{BenchDb, STATS_DELAY, SUBSCRIPTION, SUBSCRIPTION_LARGE};
use e2e::rest::{self, Rest};
use e2e::runs::{self, FanOut, Latency, Throughput};
use e2e::system::{self, System};
use herald_bench::baseline;

/// Broker hops one notification takes on the measured path.
const HOPS: u32 = 4;
/// Throughput the ratio must reach: e2e rate / (baseline rate / hops).
const RATIO_TARGET: f64 = 0.5;
/// The longest a fan-out to every registration may take (issue #16).
const FANOUT_TARGET: Duration = Duration::from_secs(6);
/// The large fan-out's bounds (issue #16): the router's memory and the longest transaction.
const LARGE_RSS_TARGET: u64 = 200 * 1024 * 1024;
const LARGE_TRANSACTION_TARGET: Duration = Duration::from_secs(2);
/// Latency targets at half the measured throughput (issue #16): p50 and p99.
const LATENCY_TARGET_LOAD: f64 = 0.5;
const LATENCY_TARGET_P50: Duration = Duration::from_millis(10);
const LATENCY_TARGET_P99: Duration = Duration::from_millis(25);
/// The REST ingress's targets (issue #16): accepted messages/s and p99.
const REST_TARGET_RATE: f64 = 2_000.0;
const REST_TARGET_P99: Duration = Duration::from_millis(50);

#[derive(Parser)]
#[command(about = "Herald end to end: producer -> router -> no-op sender -> outcome")]
struct Args {
    /// Small numbers everywhere, for a smoke test (explicit flags still win).
    #[arg(long)]
    quick: bool,
    /// Notifications in the throughput run [default: 5000; quick: 200].
    #[arg(long, env = "HERALD_BENCH_NOTIFICATIONS")]
    notifications: Option<u64>,
    /// Registrations of the fan-out run's subscription [default: 100000; quick: 2000].
    #[arg(long, env = "HERALD_BENCH_REGISTRATIONS")]
    registrations: Option<u64>,
    /// Registrations of the large fan-out's subscription; 0 skips it
    /// [default: 1000000; quick: 5000].
    #[arg(long, env = "HERALD_BENCH_LARGE_REGISTRATIONS")]
    large_registrations: Option<u64>,
    /// Notifications in each latency run, paced at a fraction of the throughput
    /// [default: 1000; quick: 50].
    #[arg(long, env = "HERALD_BENCH_LATENCY_NOTIFICATIONS")]
    latency_notifications: Option<u64>,
    /// The latency runs' loads, as fractions of the measured throughput (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [0.1, 0.5])]
    latency_loads: Vec<f64>,
    /// Messages per baseline round [default: 30000 as bench-broker; quick: 2000].
    #[arg(long)]
    baseline_messages: Option<u64>,
    /// Baseline rounds; the median counts [default: 3; quick: 1].
    #[arg(long)]
    baseline_rounds: Option<usize>,
    /// Notifications sent before measuring, to connect everything [default: 100; quick: 20].
    #[arg(long)]
    warm_up: Option<u64>,
    /// Finished messages (one delivery each) in the database before the runs, as a running
    /// system has them [default: 100000; quick: 1000].
    #[arg(long)]
    history: Option<u64>,
    /// The router's `router.batch_size` [default: the router's].
    #[arg(long)]
    batch_size: Option<usize>,
    /// The router's `router.group_max`: 0 handles every request and event alone, as before
    /// issue #16 [default: the router's].
    #[arg(long)]
    group_max: Option<usize>,
    /// The router's database connections (`database.max_connections`).
    #[arg(long, default_value_t = 10)]
    db_connections: u32,
    /// Skip the fan-out run.
    #[arg(long)]
    no_fanout: bool,
    /// `wrk`'s connections in the REST run.
    #[arg(long, default_value_t = 32)]
    rest_connections: u32,
    /// Seconds of the REST run [default: 10; quick: 2].
    #[arg(long)]
    rest_secs: Option<u64>,
    /// Skip the REST run (it needs `wrk`, which `scripts/bench-tools.sh` installs).
    #[arg(long)]
    no_rest: bool,
    /// How long one run may take before the benchmark gives up.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// The PostgreSQL maintenance database; the bench database is created beside it.
    #[arg(
        long,
        env = "HERALD_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
}

struct Plan {
    notifications: u64,
    registrations: u64,
    /// 0: no large fan-out.
    large_registrations: u64,
    latency_notifications: u64,
    warm_up: u64,
    history: u64,
    rest: Duration,
    baseline: baseline::Settings,
    timeout: Duration,
}

impl Plan {
    fn from(args: &Args) -> Plan {
        let pick = |value: Option<u64>, full: u64, quick: u64| {
            value
                .unwrap_or(if args.quick { quick } else { full })
                .max(1)
        };
        Plan {
            notifications: pick(args.notifications, 5_000, 200),
            registrations: pick(args.registrations, 100_000, 2_000),
            large_registrations: args.large_registrations.unwrap_or(if args.quick {
                5_000
            } else {
                1_000_000
            }),
            latency_notifications: pick(args.latency_notifications, 1_000, 50),
            warm_up: pick(args.warm_up, 100, 20),
            history: pick(args.history, 100_000, 1_000),
            rest: Duration::from_secs(pick(args.rest_secs, 10, 2)),
            // bench-broker's settings.
            baseline: baseline::Settings {
                messages: pick(args.baseline_messages, 30_000, 2_000),
                rounds: args
                    .baseline_rounds
                    .unwrap_or(if args.quick { 1 } else { 3 })
                    .max(1),
                window: 500,
                prefetch: 200,
            },
            timeout: Duration::from_secs(args.timeout_secs.max(1)),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_runtime::install_crypto_provider();
    let args = Args::parse();
    anyhow::ensure!(
        args.latency_loads.iter().all(|l| *l > 0.0 && *l <= 1.0),
        "--latency-loads are fractions in (0, 1]"
    );
    let mut plan = Plan::from(&args);
    let build = if cfg!(debug_assertions) {
        "DEBUG build: a smoke test, not the benchmark (run `just bench-e2e` for release)"
    } else {
        "release build"
    };
    if args.no_fanout {
        plan.registrations = 0;
        plan.large_registrations = 0;
    }
    // Before minutes of other runs: a missing load generator fails the run at once.
    if !args.no_rest {
        e2e::rest::which_wrk()?;
    }
    println!(
        "bench-e2e: {} notifications, latency {} at each of {} load, fan-out to {} and {} registrations (0: skipped); {build}",
        plan.notifications,
        plan.latency_notifications,
        args.latency_loads
            .iter()
            .map(|l| format!("{:.0}%", l * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        plan.registrations,
        plan.large_registrations,
    );

    println!(
        "[1/6] broker baseline: plain lapin, {} messages x {} rounds, confirm window {}, prefetch {}",
        plan.baseline.messages, plan.baseline.rounds, plan.baseline.window, plan.baseline.prefetch
    );
    let (baseline, rounds) = baseline::measure(&plan.baseline)
        .await
        .context("broker baseline")?;
    for (i, rate) in rounds.iter().enumerate() {
        println!("  round {}: {rate:.0} msg/s", i + 1);
    }

    let users = plan
        .notifications
        .max(plan.latency_notifications)
        .max(plan.warm_up)
        .max(plan.registrations);
    let db = BenchDb::create(&args.database_url)
        .await
        .context("create the bench database")?;
    println!(
        "[2/6] database {}: seeding {users} users with one SMS address each, {} registrations, {} finished messages as history (the large fan-out's people later)",
        db.name, plan.registrations, plan.history
    );
    let result = async {
        db.seed(users, plan.registrations, plan.history)
            .await
            .context("seed the database")?;
        measure(&args, &plan, &db, users).await
    }
    .await;
    db.drop_database().await;
    report(baseline, &result?);
    Ok(())
}

/// What [`measure`] found; the baseline is measured before.
struct Measured {
    throughput: Throughput,
    /// PostgreSQL transactions per notification in the throughput run.
    transactions: f64,
    latencies: Vec<Latency>,
    rest: Option<Rest>,
    fan_out: Option<FanOut>,
    large_fan_out: Option<FanOut>,
}

/// Starts Herald's path, runs the measurements, and stops it again (also after an error).
async fn measure(args: &Args, plan: &Plan, db: &BenchDb, users: u64) -> anyhow::Result<Measured> {
    let settings = system::Settings {
        db_connections: args.db_connections,
        batch_size: args.batch_size,
        group_max: args.group_max,
    };
    let mut system = System::start(&db.url, &settings)
        .await
        .context("start the router and the no-op sender")?;
    println!(
        "  router and no-op sender consuming under prefix {}; warming up with {} notifications",
        system.names.prefix(),
        plan.warm_up
    );
    let result = async {
        runs::warm_up(&mut system, plan.warm_up, users)
            .await
            .context("warm-up")?;

        println!(
            "[3/6] throughput: {} notifications as fast as confirms allow",
            plan.notifications
        );
        // The warm-up's transactions counted first, then the run's (see `STATS_DELAY`).
        tokio::time::sleep(STATS_DELAY).await;
        let before = db.transactions().await?;
        let throughput = runs::throughput(&mut system, plan.notifications, users, plan.timeout)
            .await
            .context("throughput run")?;
        tokio::time::sleep(STATS_DELAY).await;
        let transactions =
            (db.transactions().await? - before) as f64 / plan.notifications.max(1) as f64;

        let mut latencies = Vec::new();
        for (run, load) in args.latency_loads.iter().enumerate() {
            let rate = throughput.rate * load;
            println!(
                "[4/6] latency: {} notifications paced at {rate:.1}/s ({:.0}% of {:.0}/s)",
                plan.latency_notifications,
                load * 100.0,
                throughput.rate
            );
            latencies.push(
                runs::latency(
                    &mut system,
                    run,
                    rate,
                    plan.latency_notifications,
                    users,
                    plan.timeout,
                )
                .await
                .context("latency run")?,
            );
        }

        let rest = if args.no_rest {
            println!("[5/6] REST ingress: skipped");
            None
        } else {
            println!(
                "[5/6] REST ingress: wrk, {} connections for {} s, POST /api/messaging/messages",
                args.rest_connections,
                plan.rest.as_secs()
            );
            Some(
                rest::run(
                    &mut system,
                    db,
                    args.rest_connections,
                    plan.rest,
                    users,
                    plan.timeout,
                )
                .await
                .context("REST run")?,
            )
        };

        let fan_out = if plan.registrations == 0 {
            println!("[6/6] fan-out: skipped");
            None
        } else {
            println!(
                "[6/6] fan-out: one request to {} registrations, sender stopped",
                plan.registrations
            );
            Some(
                runs::fan_out(
                    &mut system,
                    db,
                    SUBSCRIPTION,
                    plan.registrations,
                    plan.large_registrations > 0,
                    plan.timeout,
                )
                .await
                .context("fan-out run")?,
            )
        };
        let large_fan_out = if plan.large_registrations == 0 {
            None
        } else {
            println!(
                "[6/6] large fan-out: seeding people up to u{} and their registrations",
                plan.large_registrations
            );
            db.seed_large(users, plan.large_registrations)
                .await
                .context("seed the large fan-out")?;
            println!(
                "[6/6] large fan-out: one request to {} registrations, sender stopped",
                plan.large_registrations
            );
            Some(
                runs::fan_out(
                    &mut system,
                    db,
                    SUBSCRIPTION_LARGE,
                    plan.large_registrations,
                    false,
                    plan.timeout,
                )
                .await
                .context("large fan-out run")?,
            )
        };
        anyhow::Ok(Measured {
            throughput,
            transactions,
            latencies,
            rest,
            fan_out,
            large_fan_out,
        })
    };
    // Ctrl-C still removes the queues (here) and the database (in `main`).
    let result = tokio::select! {
        result = result => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let stopped = system.stop().await;
    let measured = result?;
    // The figures stand once measured: a failed clean-up is said, not allowed to lose them.
    if let Err(error) = stopped {
        eprintln!(
            "WARNING: stopping the router and the sender, or deleting the topology, failed: {error:#} (delete the queues under the prefix by hand)"
        );
    }
    Ok(measured)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One line of the table.
fn row(label: &str, value: &str, note: &str) {
    println!("{label:<46} {value:>14}  {note}");
}

fn report(baseline: f64, r: &Measured) {
    let per_hop = baseline / f64::from(HOPS);
    let ratio = r.throughput.rate / per_hop;
    let t = &r.throughput;
    println!();
    if cfg!(debug_assertions) {
        println!("bench-e2e results (DEBUG build: not representative)");
    } else {
        println!("bench-e2e results (release build)");
    }
    println!("{:-<100}", "");
    row(
        "broker baseline (plain lapin, 1 hop)",
        &format!("{baseline:.0} msg/s"),
        "median of the rounds, measured in this run",
    );
    row(
        "end-to-end throughput",
        &format!("{:.0} notif/s", t.rate),
        &format!(
            "{} notifications, first publish -> last outcome {:.2} s",
            t.notifications,
            t.elapsed.as_secs_f64()
        ),
    );
    row(
        "broker hops per notification",
        &HOPS.to_string(),
        "producer->ingress, router->send, sender->events, router->outcome",
    );
    row(
        "baseline / hops",
        &format!("{per_hop:.0} /s"),
        &format!("what the broker alone allows for {HOPS} hops"),
    );
    row(
        "ratio e2e / (baseline / hops)",
        // Three places: 0.496 is a miss, and "0.50 ... MISSED" would read as a mistake.
        &format!("{ratio:.3}"),
        &format!(
            "target >= {RATIO_TARGET}: {}",
            verdict(ratio >= RATIO_TARGET)
        ),
    );
    row(
        "PostgreSQL transactions per notification",
        &format!("{:.2}", r.transactions),
        &format!(
            "pg_stat_database over the throughput run (the router's background loops included); target <= 1: {}",
            verdict(r.transactions <= 1.0)
        ),
    );
    for l in &r.latencies {
        let load = l.offered_rate / t.rate.max(f64::MIN_POSITIVE);
        // The targets hold at half the throughput; at other loads the figures are reported.
        let target = |what: Duration, target: Duration| {
            if (load - LATENCY_TARGET_LOAD).abs() < 0.01 {
                format!(
                    "; target <= {:.0} ms: {}",
                    ms(target),
                    verdict(what <= target)
                )
            } else {
                String::new()
            }
        };
        row(
            &format!("latency p50 at {:.0}% load", 100.0 * load),
            &format!("{:.1} ms", ms(l.to_sender.p50)),
            &format!(
                "publish -> sender; {} notifications at {:.1}/s offered ({:.1}/s achieved){}",
                l.count,
                l.offered_rate,
                l.achieved_rate,
                target(l.to_sender.p50, LATENCY_TARGET_P50)
            ),
        );
        row(
            "latency p99",
            &format!("{:.1} ms", ms(l.to_sender.p99)),
            &format!(
                "publish -> sender; max {:.1} ms{}",
                ms(l.to_sender.max),
                target(l.to_sender.p99, LATENCY_TARGET_P99)
            ),
        );
        row(
            "  publish -> fan-out begins p50 / p99",
            &format!("{:.1} / {:.1} ms", ms(l.to_router.p50), ms(l.to_router.p99)),
            "the ingress queue and the wait for a group (the job's createdAt)",
        );
        row(
            "  fan-out begins -> sender p50 / p99",
            &format!(
                "{:.1} / {:.1} ms",
                ms(l.router_to_sender.p50),
                ms(l.router_to_sender.p99)
            ),
            "the group's transaction, the job's publish, the send queue",
        );
        row(
            "  to the outcome p50 / p99",
            &format!(
                "{:.1} / {:.1} ms",
                ms(l.to_outcome.p50),
                ms(l.to_outcome.p99)
            ),
            &format!(
                "publish -> the producer has the outcome (two hops more); max {:.1} ms",
                ms(l.to_outcome.max)
            ),
        );
    }
    match &r.rest {
        Some(rest) => {
            row(
                "REST ingress accepted",
                &format!("{:.0} msg/s", rest.accepted_rate),
                &format!(
                    "wrk, {} connections, {} accepted in {:.1} s; target >= {REST_TARGET_RATE:.0}: {}",
                    rest.connections,
                    rest.accepted,
                    rest.duration.as_secs_f64(),
                    verdict(rest.accepted_rate >= REST_TARGET_RATE)
                ),
            );
            row(
                "REST latency p50",
                &format!("{:.1} ms", ms(rest.p50)),
                &format!("{:.0} answers/s as wrk counted them", rest.rate),
            );
            row(
                "REST latency p99",
                &format!("{:.1} ms", ms(rest.p99)),
                &format!(
                    "max {:.1} ms; target <= {:.0} ms: {}",
                    ms(rest.max),
                    ms(REST_TARGET_P99),
                    verdict(rest.p99 <= REST_TARGET_P99)
                ),
            );
            if rest.refused + rest.socket_errors > 0 || rest.delivered < rest.accepted {
                println!(
                    "WARNING: REST run: {} answers not 2xx, {} socket errors, {} of {} accepted delivered",
                    rest.refused, rest.socket_errors, rest.delivered, rest.accepted
                );
            }
        }
        None => row("REST ingress", "skipped", ""),
    }
    match &r.fan_out {
        Some(f) => {
            row(
                &format!("fan-out to {} registrations", f.registrations),
                &format!("{:.0} jobs/s", f.rate),
                &format!(
                    "all jobs queued in {:.2} s; target <= {} s: {}",
                    f.elapsed.as_secs_f64(),
                    FANOUT_TARGET.as_secs(),
                    verdict(f.elapsed <= FANOUT_TARGET)
                ),
            );
            row(
                "  peak RSS, longest transaction",
                &format!("{:.0} MiB", mib(f.rss_peak)),
                &format!(
                    "{:.0} MiB before; longest transaction {:.2} s",
                    mib(f.rss_before),
                    f.longest_transaction.as_secs_f64()
                ),
            );
        }
        None => row("fan-out", "skipped", ""),
    }
    match &r.large_fan_out {
        Some(f) => {
            row(
                &format!("fan-out to {} registrations", f.registrations),
                &format!("{:.0} jobs/s", f.rate),
                &format!("all jobs queued in {:.2} s", f.elapsed.as_secs_f64()),
            );
            row(
                "  peak RSS (the router's process)",
                &format!("{:.0} MiB", mib(f.rss_peak)),
                &format!(
                    "{:.0} MiB before; router, stopped sender and bench together; target <= {:.0} MiB: {}",
                    mib(f.rss_before),
                    mib(LARGE_RSS_TARGET),
                    verdict(f.rss_peak <= LARGE_RSS_TARGET)
                ),
            );
            row(
                "  longest transaction",
                &format!("{:.2} s", f.longest_transaction.as_secs_f64()),
                &format!(
                    "pg_stat_activity sampled every 100 ms; target <= {} s: {}",
                    LARGE_TRANSACTION_TARGET.as_secs(),
                    verdict(f.longest_transaction <= LARGE_TRANSACTION_TARGET)
                ),
            );
        }
        None => row("large fan-out", "skipped", ""),
    }
    let latency_failed: u64 = r.latencies.iter().map(|l| l.failed).sum();
    if t.failed + latency_failed > 0 {
        println!(
            "WARNING: {} outcomes reported a failed delivery (throughput {}, latency runs {})",
            t.failed + latency_failed,
            t.failed,
            latency_failed
        );
    }
    println!("{:-<100}", "");
}
