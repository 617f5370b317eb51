//! Scenario 7: the SMS provider answers 503 to everything (its health probe too) for 60 s
//! (20 s in the short version). The sender's circuit breaker opens, jobs wait in the queue
//! instead of failing, the message status shows class (c) `unhealthy` meanwhile, and when
//! the provider recovers the probe closes the breaker and every message is delivered.

use std::time::Duration;

use herald_testkit::fake_sms::Fault;
use serde_json::Value;
use tokio::time::Instant;

use super::{Check, Ctx, Outcome, Run, at, delivery_checks};

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let run = Run::start("s7", &ctx.options).await?;
    let rate = ctx.pick(50, 100);
    let outage = Duration::from_secs(ctx.pick(20, 60));
    let begin = Duration::from_secs(8);
    let duration = begin + outage + Duration::from_secs(20);
    let start = Instant::now();
    let load = run.load("s7", rate, duration);
    at(start, begin).await;
    let requests_before = run.stack.sms.request_times().len();
    let api_before = load.ledger.api_messages_len();
    run.stack.sms.set_outage(Some(Fault::Status(503)));
    let outage_started = Instant::now();
    // The newest message accepted during the outage, as its producer sees it (an older one
    // may be among the few the sender tried before its breaker opened).
    let mut status_seen = None;
    let mut last_seen = Value::Null;
    let http = reqwest::Client::new();
    while outage_started.elapsed() < outage.saturating_sub(Duration::from_secs(2)) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some((_, location)) = load.ledger.api_messages(api_before).into_iter().last() else {
            continue;
        };
        let url = format!("http://{}{location}", run.stack.api.addr);
        let answer = http
            .get(url)
            .header("x-api-key", &run.stack.api_key)
            .send()
            .await;
        if let Ok(answer) = answer {
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            let delivery = body["deliveries"][0].clone();
            if delivery["status"] == "pending"
                && delivery["failure"]["class"] == "unhealthy"
                && delivery["failure"]["code"] == "provider_unavailable"
            {
                status_seen = Some(format!(
                    "{} with class unhealthy ({}) after {:.1}s",
                    delivery["status"].as_str().unwrap_or("?"),
                    delivery["failure"]["code"].as_str().unwrap_or("?"),
                    outage_started.elapsed().as_secs_f64()
                ));
                break;
            }
            last_seen = body;
        }
    }
    at(start, begin + outage).await;
    let requests_during = run.stack.sms.request_times().len() - requests_before;
    let sender_ready_during = run.stack.senders[0].ready().await;
    run.stack.sms.set_outage(None);
    let ledger = load.finish().await;
    let tally = run.settle(&ledger, "s7").await;
    let mut checks = delivery_checks(&tally, &ledger.answers(), 0, 0);
    checks.push(Check::new(
        "a message's status during the outage",
        "pending, class unhealthy (c), provider_unavailable",
        status_seen
            .clone()
            .unwrap_or_else(|| format!("never showed class unhealthy; last answer {last_seen}")),
        status_seen.is_some(),
    ));
    // Without a breaker every offered message would be tried, and retried.
    let offered_during = (f64::from(rate) * outage.as_secs_f64()) as usize;
    checks.push(Check::at_most(
        "requests to the provider during the outage (breaker open)",
        requests_during,
        offered_during / 4,
    ));
    checks.push(Check::new(
        "sender /readyz during the outage",
        "not ready",
        if sender_ready_during {
            "ready"
        } else {
            "not ready"
        },
        !sender_ready_during,
    ));
    let notes = vec![format!(
        "{requests_during} requests reached the provider during the {}s outage, against {offered_during} messages offered",
        outage.as_secs()
    )];
    Ok(run.finish(tally, checks, notes).await)
}
