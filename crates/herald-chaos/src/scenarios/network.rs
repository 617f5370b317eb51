//! Scenario 5: a TCP proxy between the services and the broker adds 500 ms of latency in
//! each direction for 20 s, then cuts every connection and refuses new ones for 30 s. The
//! producers reach the broker directly, so load keeps arriving. Nothing accepted may be lost,
//! the services must reconnect by themselves, and be back at full speed within 30 s of
//! the heal.

use std::time::Duration;

use tokio::time::Instant;

use super::{Check, Ctx, Outcome, Run, at, delivery_checks};

const WINDOW: usize = 3 * 64;
const RECOVERY: Duration = Duration::from_secs(30);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut options = ctx.options.clone();
    options.via_proxy = true;
    let run = Run::start("s5", &options).await?;
    let rate = ctx.pick(80, 150);
    let slow_at = Duration::from_secs(10);
    let cut_at = slow_at + Duration::from_secs(20);
    let heal_at = cut_at + Duration::from_secs(30);
    let duration = heal_at + Duration::from_secs(40);
    let start = Instant::now();
    let load = run.load("s5", rate, duration);
    let Some(proxy) = run.stack.proxy.as_ref() else {
        anyhow::bail!("the stack has no proxy");
    };
    at(start, slow_at).await;
    proxy.set_latency(Duration::from_millis(500));
    at(start, cut_at).await;
    proxy.cut();
    proxy.set_latency(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let router_ready_during = run.stack.router.ready().await;
    at(start, heal_at).await;
    proxy.heal();
    let healed = Instant::now();
    let ledger = load.finish().await;
    let tally = run.settle(&ledger, "s5").await;
    let mut checks = delivery_checks(&tally, &ledger.answers(), WINDOW, 0);
    checks.push(Check::new(
        "router /readyz while cut off",
        "not ready",
        if router_ready_during {
            "ready"
        } else {
            "not ready"
        },
        !router_ready_during,
    ));
    checks.push(run.back_to_speed(
        "back to full speed after the heal",
        start + slow_at,
        healed,
        rate,
        RECOVERY,
    ));
    Ok(run.finish(tally, checks, Vec::new()).await)
}
