//! Scenario 8: two replicas of the SMS sender on one provider account whose limit the fake
//! provider enforces (429 beyond it in any second). More is offered than the account takes,
//! so both replicas are busy. Together they must stay within the limit (the provider never
//! answers 429 and never sees more than the limit in a second) and still use most of it,
//! losing nothing.

use std::time::Duration;

use super::{Check, Ctx, Outcome, Run, delivery_checks};

/// The account's limit, a second.
const LIMIT: usize = 40;

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut options = ctx.options.clone();
    options.sender_replicas = 2;
    options.sender_env = vec![
        (
            "HERALD_SENDER__ACCOUNT_PER_SECOND".into(),
            LIMIT.to_string(),
        ),
        // A burst on top of the rate would exceed a provider that counts by the second.
        ("HERALD_SENDER__ACCOUNT_BURST".into(), "1".into()),
    ];
    let run = Run::start("s8", &options).await?;
    run.stack.sms.enforce_account_limit(LIMIT);
    // One replica count (every 2 s) after both started, so each has seen the other.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = run.stack.sms.request_times().len();
    let offered = ctx.pick(80, 100);
    let load = run.load("s8", offered, Duration::from_secs(ctx.pick(15, 30)));
    let ledger = load.finish().await;
    let tally = run.settle(&ledger, "s8").await;
    // Every request the provider got, answered or refused: what its limit counts.
    let mut times: Vec<tokio::time::Instant> = run.stack.sms.request_times()[first..]
        .iter()
        .map(|t| tokio::time::Instant::from_std(*t))
        .collect();
    times.sort();
    let (busiest, rate) = busiest_second(&times);
    let mut checks = delivery_checks(&tally, &ledger.answers(), 0, 0);
    checks.push(Check::at_most(
        "provider's 429 answers (over the account's limit)",
        run.stack.sms.too_many_requests(),
        0,
    ));
    checks.push(Check::at_most(
        "most requests to the provider in any second",
        busiest,
        LIMIT,
    ));
    checks.push(Check::new(
        "the account's limit used",
        &format!(">= 80% of {LIMIT}/s"),
        format!("{rate:.1}/s"),
        rate >= 0.8 * LIMIT as f64,
    ));
    let notes = vec![format!(
        "two replicas, {offered}/s offered against an account limit of {LIMIT}/s"
    )];
    Ok(run.finish(tally, checks, notes).await)
}

/// The most arrivals in any one-second window, and the mean rate over the whole run.
fn busiest_second(times: &[tokio::time::Instant]) -> (usize, f64) {
    let mut busiest = 0;
    let mut start = 0;
    for (end, t) in times.iter().enumerate() {
        while t.duration_since(times[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    let rate = match (times.first(), times.last()) {
        (Some(a), Some(b)) if b > a => {
            (times.len() - 1) as f64 / b.duration_since(*a).as_secs_f64()
        }
        _ => 0.0,
    };
    (busiest, rate)
}
