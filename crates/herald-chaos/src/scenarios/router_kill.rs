//! Scenario 3: the router killed with SIGKILL while it fans out and started again. The
//! delivery rows' unique key makes one delivery per (message, address) whatever is redone; a
//! job whose publish was confirmed but not yet marked can be published again, with the same
//! delivery id, and the sender drops the repeat. A tap queue on the send exchange sees every
//! job the router publishes, so both are counted: jobs for one (message, address) under two
//! delivery ids (must be 0) and repeats of one delivery id (allowed, dropped downstream).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use herald_testkit::broker::Inspector;
use messaging_core::job::SendJobBundle;
use tokio::time::Instant;

use super::{Check, Ctx, Outcome, Run, at, delivery_checks};
use crate::stack::READY_TIMEOUT;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut run = Run::start("s3", &ctx.options).await?;
    let tap = Inspector::connect_to(run.stack.amqp.url.expose()).await;
    let tap_queue = tap
        .temporary_queue(&run.stack.names.send_exchange(), "sms")
        .await;
    let rate = ctx.pick(100, 200);
    let kills: Vec<Duration> = ctx
        .pick(vec![8], vec![10, 25, 40])
        .into_iter()
        .map(Duration::from_secs)
        .collect();
    let duration = ctx.pick(Duration::from_secs(20), Duration::from_secs(55));
    let start = Instant::now();
    let load = run.load("s3", rate, duration);
    let mut notes = Vec::new();
    for kill in &kills {
        at(start, *kill).await;
        notes.push(
            run.stack
                .router
                .crash_and_restart(Duration::from_secs(1), READY_TIMEOUT)
                .await?,
        );
    }
    let ledger = load.finish().await;
    let tally = run.settle(&ledger, "s3").await;

    // Every job the router published, by (message, address) and by delivery id.
    let mut per_target: HashMap<(uuid::Uuid, String), HashSet<uuid::Uuid>> = HashMap::new();
    let mut copies: HashMap<uuid::Uuid, usize> = HashMap::new();
    while let Some(message) = tap.get(&tap_queue).await {
        // A lone job or a bundle of them (issue #16).
        for job in SendJobBundle::jobs_of(&message.delivery.data)? {
            per_target
                .entry((job.message_id, job.to.value().to_owned()))
                .or_default()
                .insert(job.delivery_id);
            *copies.entry(job.delivery_id).or_default() += 1;
        }
    }
    tap.close().await;
    let duplicate_jobs: usize = per_target.values().map(|ids| ids.len() - 1).sum();
    let repeats: usize = copies.values().map(|n| n - 1).sum();
    notes.push(format!(
        "{} jobs published for {} deliveries; {repeats} republished with the same delivery id",
        copies.values().sum::<usize>(),
        copies.len()
    ));

    let mut checks = delivery_checks(&tally, &ledger.answers(), 0, 0);
    checks.push(Check::at_most(
        "duplicate jobs (one message and address, two delivery ids)",
        duplicate_jobs,
        0,
    ));
    Ok(run.finish(tally, checks, notes).await)
}
