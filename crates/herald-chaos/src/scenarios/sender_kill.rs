//! Scenario 2: the SMS sender killed with SIGKILL under load and started again. Its unacked
//! jobs go back to the queue; the ones it had sent but not acked are sent again (the fake SMS
//! provider, like Twilio, has no idempotency key), so duplicates are allowed up to the
//! prefetch window per kill, and losses not at all.

use std::time::Duration;

use tokio::time::Instant;

use super::{Ctx, Outcome, Run, at, delivery_checks};
use crate::stack::READY_TIMEOUT;

const PREFETCH: usize = 64;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut run = Run::start("s2", &ctx.options).await?;
    let rate = ctx.pick(100, 200);
    let kills: Vec<Duration> = ctx
        .pick(vec![8], vec![15, 35])
        .into_iter()
        .map(Duration::from_secs)
        .collect();
    let duration = ctx.pick(Duration::from_secs(22), Duration::from_secs(55));
    let start = Instant::now();
    let load = run.load("s2", rate, duration);
    let mut notes = Vec::new();
    let mut checks = Vec::new();
    for kill in &kills {
        at(start, *kill).await;
        notes.push(
            run.stack.senders[0]
                .crash_and_restart(Duration::from_secs(2), READY_TIMEOUT)
                .await?,
        );
    }
    let ledger = load.finish().await;
    let tally = run.settle(&ledger, "s2").await;
    checks.extend(delivery_checks(
        &tally,
        &ledger.answers(),
        PREFETCH * kills.len(),
        0,
    ));
    Ok(run.finish(tally, checks, notes).await)
}
