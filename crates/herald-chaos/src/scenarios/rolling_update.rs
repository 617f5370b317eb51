//! Scenario 9: a rolling update under load. The sender, the router and the API are each
//! stopped with SIGTERM, as an orchestrator does, and started again. Each must exit by
//! itself within its drain deadline, with status 0, having finished or handed back its
//! in-flight work: nothing accepted is lost, and nothing is sent twice (a graceful stop acks
//! what it sent). The orchestrator's grace period must be longer than the default deadline.

use std::time::Duration;

use tokio::time::Instant;

use super::{Check, Ctx, Outcome, Run, at, delivery_checks};
use crate::stack::{DRAIN_DEADLINE, READY_TIMEOUT};

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut run = Run::start("s9", &ctx.options).await?;
    let rate = ctx.pick(100, 200);
    let duration = ctx.pick(Duration::from_secs(28), Duration::from_secs(60));
    // Which service goes down when: (seconds into the load, service).
    let plan: Vec<(u64, &str)> = ctx.pick(
        vec![
            (6, "sender-sms"),
            (13, "fanout-router"),
            (20, "subscription-api"),
        ],
        vec![
            (8, "sender-sms"),
            (16, "fanout-router"),
            (24, "subscription-api"),
            (34, "sender-sms"),
            (42, "fanout-router"),
            (50, "subscription-api"),
        ],
    );
    let start = Instant::now();
    let load = run.load("s9", rate, duration);
    let mut checks = Vec::new();
    let mut notes = Vec::new();
    for (second, name) in plan {
        at(start, Duration::from_secs(second)).await;
        let process = match name {
            "sender-sms" => &mut run.stack.senders[0],
            "fanout-router" => &mut run.stack.router,
            _ => &mut run.stack.api,
        };
        let stopped = process
            .terminate(DRAIN_DEADLINE + Duration::from_secs(10))
            .await;
        let (took, clean) = match stopped {
            Ok(stopped) => stopped,
            Err(error) => {
                checks.push(Check::new(
                    &format!("{name} exits after SIGTERM"),
                    "within the drain deadline",
                    format!("{error:#}"),
                    false,
                ));
                (Duration::MAX, false)
            }
        };
        if took != Duration::MAX {
            // A margin over the deadline for the process's own exit after it.
            let limit = DRAIN_DEADLINE + Duration::from_secs(2);
            checks.push(Check::new(
                &format!("{name} exit after SIGTERM at {second}s"),
                &format!("status 0 within {:.0}s", limit.as_secs_f64()),
                format!(
                    "{} after {:.2}s",
                    if clean { "status 0" } else { "failure status" },
                    took.as_secs_f64()
                ),
                clean && took <= limit,
            ));
        }
        process.start()?;
        let ready = process.wait_ready(READY_TIMEOUT).await?;
        notes.push(format!(
            "{name}: stopped in {:.2}s, ready again {:.1}s after its start",
            took.as_secs_f64(),
            ready.as_secs_f64()
        ));
    }
    let ledger = load.finish().await;
    let tally = run.settle(&ledger, "s9").await;
    // Requests to the API while it restarts get no answer (up to about a second's worth).
    checks.extend(delivery_checks(
        &tally,
        &ledger.answers(),
        0,
        u64::from(rate),
    ));
    let default_deadline = herald_runtime::config::AmqpConfig::default().drain_deadline_ms / 1000;
    match grace_period() {
        Ok(grace) => checks.push(Check::new(
            "Kubernetes grace period (deploy/k8s) > default drain deadline",
            &format!("> {default_deadline}s"),
            format!("{grace}s"),
            grace > default_deadline,
        )),
        Err(error) => checks.push(Check::new(
            "Kubernetes grace period (deploy/k8s)",
            "readable",
            format!("{error:#}"),
            false,
        )),
    }
    notes.push(format!(
        "the API refused {} requests while it restarted (not accepted, so not counted as lost)",
        ledger.failed.load(std::sync::atomic::Ordering::Relaxed)
    ));
    Ok(run.finish(tally, checks, notes).await)
}

/// The smallest `terminationGracePeriodSeconds` in the Kubernetes manifests.
fn grace_period() -> anyhow::Result<u64> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s");
    let mut smallest: Option<u64> = None;
    for entry in std::fs::read_dir(&dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            if let Some(value) = line.trim().strip_prefix("terminationGracePeriodSeconds:") {
                let value: u64 = value.trim().parse()?;
                smallest = Some(smallest.map_or(value, |s| s.min(value)));
            }
        }
    }
    smallest.ok_or_else(|| anyhow::anyhow!("no terminationGracePeriodSeconds in {}", dir.display()))
}
