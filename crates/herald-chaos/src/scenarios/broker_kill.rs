//! Scenario 1: the broker killed with SIGKILL and started again, three times, under load.
//! Quorum queues and persistent messages are on disk, publishers resend what was not
//! confirmed, consumers reconnect. Nothing accepted may be lost; what was in flight may come
//! twice (up to the prefetch windows on the path, per kill); and within 30 s of each restart
//! the provider must be back at full speed (see `Sampler::full_speed`).

use std::time::Duration;

use tokio::time::Instant;

use super::{Ctx, Outcome, Run, at, delivery_checks};

/// The unacked messages a kill can put back: the router's ingress and events consumers and
/// the sender's, 64 each.
const WINDOW: usize = 3 * 64;
const RECOVERY: Duration = Duration::from_secs(30);

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let run = Run::start("s1", &ctx.options).await?;
    let rate = ctx.pick(80, 150);
    let kills: Vec<u64> = ctx.pick(vec![8, 38, 68], vec![15, 50, 85]);
    let last = *kills.last().unwrap_or(&0);
    // Load until 40 s after the last kill, so the speed after it can be measured.
    let duration = Duration::from_secs(last + 40);
    let start = Instant::now();
    let load = run.load("s1", rate, duration);
    let mut restarts = Vec::new();
    let mut notes = Vec::new();
    for second in &kills {
        at(start, Duration::from_secs(*second)).await;
        let broker = &run.stack.brokers[0];
        let down = Instant::now();
        tokio::task::block_in_place(|| broker.kill());
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::block_in_place(|| broker.restart());
        let up = Instant::now();
        notes.push(format!(
            "killed at {second}s, accepting connections again after {:.1}s",
            up.duration_since(down).as_secs_f64()
        ));
        restarts.push((down, up));
    }
    let ledger = load.finish().await;
    let tally = run.settle(&ledger, "s1").await;
    let mut checks = delivery_checks(&tally, &ledger.answers(), WINDOW * kills.len(), 0);
    for (i, (down, up)) in restarts.iter().enumerate() {
        checks.push(run.back_to_speed(
            &format!("back to full speed after restart {}", i + 1),
            *down,
            *up,
            rate,
            RECOVERY,
        ));
    }
    Ok(run.finish(tally, checks, notes).await)
}
