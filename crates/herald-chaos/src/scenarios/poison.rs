//! Scenario 6: 1% poison among the requests on RabbitMQ (malformed JSON, wrong types, an
//! oversized body, nesting too deep, an unknown tenant, in turn). Every one must be
//! dead-lettered with its reason, the router must not crash, and the healthy messages must
//! flow at least 90% as fast as without poison. The two loads alternate (clean, poisoned,
//! clean, poisoned) on one stack, so a drift of the machine's speed hits both alike.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_testkit::broker::Inspector;
use tokio::time::Instant;

use super::{Check, Ctx, Outcome, Run, delivery_checks};
use crate::load::{Load, LoadSpec};
use crate::tally::{Tally, all_arrived, tally};

pub async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let mut run = Run::start("s6", &ctx.options).await?;
    let router_pid = run.stack.router.pid();
    let per_round: u32 = ctx.pick(1_000, 5_000);
    // Far above what the path carries: the producer publishes as fast as confirms come back.
    let rate = 5_000;
    let mut clean = (0u64, Duration::ZERO);
    let mut poisoned = (0u64, Duration::ZERO);
    let mut total = Tally::default();
    let mut poison_sent = 0u64;
    let mut answers = crate::load::Answers::default();
    for round in 0..4 {
        let with_poison = round % 2 == 1;
        let prefix = format!("s6r{round}");
        let started = Instant::now();
        let load = Load::start(
            &run.producers,
            LoadSpec {
                prefix: prefix.clone(),
                rate,
                duration: Duration::from_secs_f64(f64::from(per_round) / f64::from(rate)),
                rest_every: 0,
                poison_every: with_poison.then_some(100),
            },
        );
        let ledger = load.finish().await;
        let arrived = all_arrived(&ledger, &run.stack.sms, &prefix, Duration::from_secs(120)).await;
        let elapsed = started.elapsed();
        if !arrived {
            // Counted as lost below; the settle gives stragglers their chance first.
            run.settle(&ledger, &prefix).await;
        }
        let round_tally = tally(&ledger, &run.stack.sms, &prefix);
        let healthy = round_tally.delivered as u64;
        let slot = if with_poison {
            &mut poisoned
        } else {
            &mut clean
        };
        slot.0 += healthy;
        slot.1 += elapsed;
        poison_sent += ledger.poison.load(Ordering::Relaxed);
        answers.add(ledger.answers());
        add(&mut total, &round_tally);
    }
    let rate_of = |(n, t): (u64, Duration)| n as f64 / t.as_secs_f64().max(0.001);
    let clean_rate = rate_of(clean);
    let poisoned_rate = rate_of(poisoned);
    let ratio = poisoned_rate / clean_rate.max(0.001);

    // The dead letters: every poison message, each with a reason.
    let inspector = Inspector::connect_to(run.stack.amqp.url.expose()).await;
    let dead_queue = run
        .stack
        .names
        .dead_letter_queue(&run.stack.names.ingress_queue());
    let dead = inspector
        .wait_queue_len(&dead_queue, Duration::from_secs(30), |n| {
            u64::from(n) >= poison_sent
        })
        .await;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut without_reason = 0u64;
    while let Some(message) = inspector.get(&dead_queue).await {
        let code = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| {
                h.inner()
                    .get(herald_runtime::amqp::headers::REASON_CODE)
                    .cloned()
            })
            .and_then(|v| match v {
                lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
                lapin::types::AMQPValue::ShortString(s) => Some(s.to_string()),
                _ => None,
            });
        match code {
            Some(code) if !code.is_empty() => *reasons.entry(code).or_default() += 1,
            _ => without_reason += 1,
        }
    }
    inspector.close().await;

    // Healthy messages and their ledger checks, on the four rounds together.
    let mut checks = delivery_checks(&total, &answers, 0, 0);
    checks.push(Check::new(
        "poison messages dead-lettered",
        &format!("= {poison_sent} published"),
        dead,
        u64::from(dead) == poison_sent && poison_sent > 0,
    ));
    checks.push(Check::at_most(
        "dead letters without a reason",
        without_reason as usize,
        0,
    ));
    let floor = ctx.pick(0.75, 0.9);
    checks.push(Check::new(
        "healthy throughput with poison / without",
        &format!(">= {floor}"),
        format!("{ratio:.2} ({poisoned_rate:.0}/s vs {clean_rate:.0}/s)"),
        ratio >= floor,
    ));
    checks.push(Check::new(
        "router not restarted",
        "same process",
        if run.stack.router.running() && run.stack.router.pid() == router_pid {
            "same process"
        } else {
            "it exited"
        },
        run.stack.router.running() && run.stack.router.pid() == router_pid,
    ));
    let mut notes = vec![format!(
        "dead-letter reasons: {}",
        reasons
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    if ctx.short {
        notes.push(
            "short run: the throughput floor is 0.75, as 1,000-message rounds are noisy".into(),
        );
    }
    run.stop().await;
    Ok(Outcome {
        tally: Some(total),
        checks,
        notes,
    })
}

fn add(total: &mut Tally, round: &Tally) {
    total.accepted += round.accepted;
    total.delivered += round.delivered;
    total.lost += round.lost;
    total.duplicated += round.duplicated;
    total.unexpected += round.unexpected;
    total.lost_examples.extend(
        round
            .lost_examples
            .iter()
            .take(5 - total.lost_examples.len().min(5))
            .cloned(),
    );
}
