//! Herald's router: turns each request on `{p}.router.ingress` into one delivery row and one
//! send job per address (R1, R2, R4, R13-R15, R41, R44), and owns everything else that needs
//! the database behind the senders: delivery tracking, outcomes, schedules and the send-queue
//! watchdog. (The crate keeps its first name, `fanout-router`, which deployments know.)
//!
//! # Layout
//!
//! - [`config`]: `router.*` and `database.*` besides the base settings.
//! - [`ingress`]: the ingress consumer's handler: decode, tenant, the `messages` row (found or
//!   created, idempotent), subscription checks, events and legacy messages, then fan-out.
//! - [`fanout`]: recipients to delivery rows to confirmed send jobs, page by page through named
//!   stages (plan, write, match, encode, publish), exactly one job per (message, address)
//!   across redeliveries.
//! - [`render`]: template choice by channel and locale, and rendering with minijinja.
//! - [`tracking`]: the events consumer: delivery events into delivery records and address
//!   states (R3, R6, R15), contact links into addresses (R5), support requests into tickets
//!   (R53), and room events to [`rooms`].
//! - [`rooms`]: the XMPP bot's help-desk room events into rooms and their history, and the
//!   roster a restarted bot asks for (R31-R36).
//! - [`outcome`]: a finished message's outcome for its producer (R4).
//! - [`scheduler`]: cron-like schedules fired once per due time across replicas (R14).
//! - [`watchdog`]: send queues without a sender (no consumer, and none paused on the standby
//!   queue): gauges, and after a while their jobs withdrawn and reported failed as
//!   `unhealthy` / `no_sender` (R4 c).
//! - [`retention`]: finished messages and their deliveries deleted after
//!   `router.keep_finished_days`.
//!
//! [`run`] is the binary's whole life; [`start`] builds the work on a [`Service`] that tests
//! create themselves: the ingress and events consumers, the scheduler, an outbox relay and the
//! send-queue watchdog, under the service's one shutdown token.

pub mod config;
pub mod fanout;
pub mod ingress;
pub mod outcome;
pub mod producers;
pub mod render;
pub mod retention;
pub mod rooms;
pub mod scheduler;
pub mod tracking;
pub mod watchdog;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use herald_runtime::amqp::delivery_events::Events;
use herald_runtime::amqp::{Consumer, ConsumerSettings, Publisher};
use herald_runtime::health::Health;
use herald_runtime::service::Service;
use herald_storage::PgPool;
use herald_storage::db::{self, DatabaseCheck};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, InvalidConfig};
use crate::fanout::FanOut;
use crate::ingress::IngressHandler;
use crate::outcome::Outcomes;
use crate::scheduler::Scheduler;
use crate::tracking::TrackingHandler;
use crate::watchdog::SendQueueWatchdog;
use herald_storage::relay::OutboxRelay;
use producers::ProducerPolicy;

pub const SERVICE_NAME: &str = "fanout-router";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] InvalidConfig),
    #[error("invalid database.url: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot serve health endpoints: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves until SIGINT/SIGTERM, then drains in-flight requests.
pub async fn run(config: Config) -> Result<(), RunError> {
    let service = Service::build(SERVICE_NAME, config.base.clone()).await?;
    let pool = db::pool(&config.database)?;
    service
        .health
        .add_check(Arc::new(DatabaseCheck(pool.clone())));
    let work = start(&service, &config, pool)?;
    service.run(axum::Router::new(), work).await?;
    Ok(())
}

/// The router's work on `service`: the migrations, then the ingress consumer until shutdown.
pub fn start(
    service: &Service,
    config: &Config,
    pool: PgPool,
) -> Result<BoxFuture<'static, ()>, RunError> {
    config.router.validate()?;
    let legacy = config.router.legacy_destination()?;
    let names = service.topology.names().clone();
    let jobs = Publisher::new(service.broker.clone(), "jobs");
    let fanout = FanOut::new(
        pool.clone(),
        jobs.clone(),
        names.clone(),
        config.router.batch_size,
    )
    .with_bundles(config.router.bundle_jobs);
    let retry_after = config.router.retry_policy();
    let outcomes = Outcomes::new(
        pool.clone(),
        Publisher::new(service.broker.clone(), "outcomes"),
        names.clone(),
    );
    let producers = Arc::new(ProducerPolicy::new(
        pool.clone(),
        config.router.strict_producers,
    ));
    if config.router.strict_producers {
        tracing::info!(service_users = ?service.broker.config().service_users(), "strict producers: requests only from broker users bound to a tenant, events only from Herald's service users");
    } else {
        tracing::warn!(
            "open producers (router.strict_producers=false): a message without user_id may name any tenant; bind each producer's broker user to its tenant and set HERALD_ROUTER__STRICT_PRODUCERS=true (docs/security.md)"
        );
    }
    if config.verification.code_secret.expose().is_empty() {
        tracing::warn!(
            "verification.code_secret is not set: link codes are hashed without a key; set HERALD_VERIFICATION__CODE_SECRET to the API's value"
        );
    }
    let connections = usize::try_from(config.database.max_connections)
        .unwrap_or(1)
        .max(1);
    let mut settings =
        ConsumerSettings::from_config(names.ingress_queue(), service.broker.config());
    let mut handler = IngressHandler::new(pool.clone(), fanout, legacy, retry_after)
        .with_outcomes(outcomes.clone())
        .with_producers(producers.clone());
    // A request fanned out alone holds up to three database connections (its fan-out lease,
    // the batch being written, and the mark of the batch being published); a group holds one
    // and borrows one to mark. More than the pool allows would only wait for it and time out
    // into retries.
    let grouped_connections = match config.router.grouping() {
        Some(grouping) => {
            handler = handler.with_grouping(grouping);
            fill_groups(&mut settings, grouping);
            grouping.parallel * 2
        }
        None => {
            settings.concurrency = settings.concurrency.min((connections / 3).max(1));
            0
        }
    };
    let handler =
        handler.with_alone_limit((connections.saturating_sub(grouped_connections) / 3).max(1));
    let late_outcomes = outcomes.clone();
    let ingress = Consumer::new(
        service.broker.clone(),
        service.topology.clone(),
        settings,
        handler,
        service.health.clone(),
    );
    let mut events_settings =
        ConsumerSettings::from_config(names.router_events_queue(), service.broker.config());
    let mut tracker = TrackingHandler::new(
        pool.clone(),
        outcomes,
        config.router.removal_policy(),
        retry_after,
    )
    .with_producers(producers)
    .with_link_key(config.verification.code_secret.expose().as_bytes());
    match config.router.grouping() {
        // Events recorded in groups hold a connection per group; enough in work to fill them.
        Some(grouping) => {
            // The events of a failed group go alone together: no more at once than the
            // connections the groups leave.
            tracker = tracker
                .with_grouping(grouping)
                .with_alone_limit(connections.saturating_sub(grouping.parallel).max(1));
            fill_groups(&mut events_settings, grouping);
        }
        None => {
            events_settings.concurrency = events_settings.concurrency.min(connections);
            // A bundle's events are recorded at once: no more alone than the pool has.
            tracker = tracker.with_alone_limit(connections);
        }
    }
    let events = Consumer::new(
        service.broker.clone(),
        service.topology.clone(),
        events_settings,
        tracker,
        service.health.clone(),
    );
    let scheduler = Scheduler::new(
        pool.clone(),
        names.clone(),
        Duration::from_millis(config.router.scheduler_poll_ms),
    );
    // Schedules fire into the outbox; the router relays it too, so schedules work without
    // an API replica running.
    let relay = OutboxRelay::new(
        pool.clone(),
        Publisher::new(service.broker.clone(), "outbox"),
    );
    let watchdog = SendQueueWatchdog::new(
        service.broker.clone(),
        names.clone(),
        pool.clone(),
        Events::new(
            Publisher::new(service.broker.clone(), "watchdog-events"),
            &names,
        ),
        Duration::from_millis(config.router.sender_check_ms),
        config.router.no_sender_after(),
    );
    let retention = retention::Retention::new(
        pool.clone(),
        config.router.keep_finished(),
        Duration::from_secs(config.router.retention_every_secs.max(1)),
    );
    let shutdown = service.shutdown.clone();
    let health = service.health.clone();
    Ok(Box::pin(async move {
        // Fan-out writes columns that the router's own migrations add; nothing runs before
        // they exist.
        if migrate_until_done(&pool, &health, &shutdown).await {
            tokio::join!(
                ingress.run(shutdown.clone()),
                events.run(shutdown.clone()),
                scheduler.run(shutdown.clone()),
                relay.run(shutdown.clone()),
                watchdog.run(shutdown.clone()),
                late_outcomes.sweep(OUTCOME_SWEEP, shutdown.clone()),
                async {
                    if let Some(retention) = retention {
                        retention.run(shutdown.clone()).await;
                    }
                },
            );
        }
        jobs.close().await;
    }))
}

/// How often the router looks for finished messages whose outcome nobody published.
const OUTCOME_SWEEP: Duration = Duration::from_secs(30);

/// Applies the migrations, retrying while the database is unreachable, so the router starts
/// (not ready) during a database outage instead of crash-looping. `false`: shut down first.
async fn migrate_until_done(pool: &PgPool, health: &Health, shutdown: &CancellationToken) -> bool {
    const COMPONENT: &str = "database:migrations";
    health.set(COMPONENT, false, "pending");
    let mut wait = Duration::from_millis(200);
    loop {
        match db::migrate(pool).await {
            Ok(()) => {
                health.set(COMPONENT, true, "applied");
                return true;
            }
            Err(error) => {
                health.set(COMPONENT, false, format!("not applied yet: {error}"));
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "cannot apply migrations");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// Enough messages in work, and prefetched behind them, to fill the groups: a group forms
/// from the handlers waiting while the others are in work, so with fewer in hand the groups
/// run small and each pays its round trips for a few requests (issue #16: bench-e2e went
/// from about 1,400 to 1,900 notifications/s with half the groups' capacity in work and
/// twice that prefetched). The configured values win where they are larger.
fn fill_groups(settings: &mut ConsumerSettings, grouping: herald_runtime::batching::BatchSettings) {
    let in_work = (grouping.max * grouping.parallel / 2).max(1);
    settings.concurrency = settings.concurrency.max(in_work);
    let prefetch = u16::try_from(settings.concurrency * 2).unwrap_or(u16::MAX);
    settings.prefetch = settings.prefetch.max(prefetch);
}
