//! Scenario 4: PostgreSQL crashes (SIGKILL of the postmaster) under load and comes back 10 s
//! later. Meanwhile the API answers `503` with `Retry-After` (class (c): try later) and says
//! so in `/readyz`; the router retries what it could not store through the delay queues;
//! afterwards every service recovers by itself and nothing accepted is lost.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{Check, Ctx, Outcome, Run, at, delivery_checks};

const OUTAGE: Duration = Duration::from_secs(10);
const RECOVERY: Duration = Duration::from_secs(30);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut run = Run::start("s4", &ctx.options).await?;
    let rate = ctx.pick(80, 150);
    let crash = Duration::from_secs(ctx.pick(8, 15));
    let duration = crash + OUTAGE + Duration::from_secs(30);
    let start = Instant::now();
    let load = run.load("s4", rate, duration);
    at(start, crash).await;
    tokio::task::block_in_place(|| run.stack.pg.crash());
    tokio::time::sleep(OUTAGE / 2).await;
    let api_ready_during = run.stack.api.ready().await;
    let router_ready_during = run.stack.router.ready().await;
    tokio::time::sleep(OUTAGE / 2).await;
    tokio::task::block_in_place(|| run.stack.pg.restart());
    let up = Instant::now();
    // Every service ready again by itself.
    let mut recovered = None;
    while up.elapsed() < RECOVERY * 2 {
        let mut all = true;
        for process in run.stack.processes() {
            all &= process.ready().await;
        }
        if all {
            recovered = Some(up.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ledger = load.finish().await;
    let tally = run.settle(&ledger, "s4").await;
    let mut checks = delivery_checks(&tally, &ledger.answers(), 0, 0);
    let told_later = ledger.refused_retry_after.load(Ordering::Relaxed);
    checks.push(Check::new(
        "API requests answered 503 + Retry-After during the outage",
        "> 0",
        told_later,
        told_later > 0,
    ));
    checks.push(Check::new(
        "API and router /readyz during the outage",
        "not ready",
        format!(
            "api {}, router {}",
            if api_ready_during {
                "ready"
            } else {
                "not ready"
            },
            if router_ready_during {
                "ready"
            } else {
                "not ready"
            }
        ),
        !api_ready_during && !router_ready_during,
    ));
    checks.push(Check::new(
        "every service ready again after the restart",
        &format!("<= {}s", RECOVERY.as_secs()),
        recovered.map_or("never".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
        recovered.is_some_and(|d| d <= RECOVERY),
    ));
    Ok(run.finish(tally, checks, Vec::new()).await)
}
