//! Scenario 10: a 3-node RabbitMQ cluster with quorum queues on all three nodes. The services
//! name all three (`HERALD_AMQP__URL` the first, `HERALD_AMQP__NODES` the others) and
//! connect to the first; it is killed with SIGKILL under load and not started again. They
//! must go on on another node within seconds, losing nothing and sending nothing twice.

use std::time::Duration;

use tokio::time::Instant;

use super::{Ctx, Outcome, Run, at, delivery_checks};

const RECOVERY: Duration = Duration::from_secs(15);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut options = ctx.options.clone();
    options.cluster = true;
    let run = Run::start("s10", &options).await?;
    // Three nodes share the machine's cores with the services.
    let rate = ctx.pick(60, 100);
    let kill_at = Duration::from_secs(ctx.pick(8, 15));
    let duration = kill_at + Duration::from_secs(40);
    let start = Instant::now();
    let load = run.load("s10", rate, duration);
    at(start, kill_at).await;
    tokio::task::block_in_place(|| run.stack.brokers[0].kill());
    let killed = Instant::now();
    let ledger = load.finish().await;
    let tally = run.settle(&ledger, "s10").await;
    let mut checks = delivery_checks(&tally, &ledger.answers(), 0, 0);
    checks.push(run.back_to_speed(
        "back to full speed on another node",
        killed,
        killed,
        rate,
        RECOVERY,
    ));
    Ok(run.finish(tally, checks, Vec::new()).await)
}
