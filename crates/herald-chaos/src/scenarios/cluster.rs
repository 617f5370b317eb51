//! Scenario 10: a 3-node RabbitMQ cluster with quorum queues on all three nodes. The services
//! name all three (`HERALD_AMQP__URL` the first, `HERALD_AMQP__NODES` the others) and
//! connect to the first; it is killed with SIGKILL under load and not started again. They
//! must go on on another node within seconds, losing nothing and sending nothing twice.

use std::time::Duration;

use tokio::time::Instant;

use super::{Check, Ctx, Outcome, Run, at, delivery_checks};

const RECOVERY: Duration = Duration::from_secs(15);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut options = ctx.options.clone();
    options.cluster = true;
    let mut run = Run::start("s10", &options).await?;
    let rate = ctx.pick(80, 150);
    let kill_at = Duration::from_secs(ctx.pick(8, 15));
    let duration = kill_at + Duration::from_secs(40);
    let start = Instant::now();
    let load = run.load("s10", rate, duration);
    at(start, kill_at).await;
    tokio::task::block_in_place(|| run.stack.brokers[0].kill());
    let killed = Instant::now();
    let ledger = load.finish().await;
    let tally = run.settle(&ledger, "s10").await;
    let mut checks = delivery_checks(&tally, ledger.refused_other(), 0);
    let back = run.sampler.back_to_speed(killed, f64::from(rate) * 0.9);
    checks.push(Check::new(
        "back to the offered rate on another node",
        &format!("<= {}s", RECOVERY.as_secs()),
        back.map_or("never".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
        back.is_some_and(|d| d <= RECOVERY),
    ));
    checks.push(run.none_crashed());
    run.stop().await;
    Ok(Outcome {
        tally: Some(tally),
        checks,
        notes: Vec::new(),
    })
}
