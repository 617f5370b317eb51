//! The scenarios of issue #18, numbered as there. Each starts a stack of its own, offers load,
//! injects its fault, waits for the system to settle, and returns its counts and checks.

mod broker_kill;
mod cluster;
mod database;
mod network;
mod poison;
mod provider_outage;
mod replicas;
mod rolling_update;
mod router_kill;
mod sender_kill;

use std::time::Duration;

use crate::load::{Answers, Ledger, Load, LoadSpec, Producers};
use crate::stack::{Options, Stack};
use crate::tally::{Sampler, Tally, settle, tally};

/// How the suite runs: the CI's short version or the full one.
#[derive(Clone)]
pub struct Ctx {
    pub options: Options,
    pub short: bool,
}

impl Ctx {
    /// `short` in the short version, `long` in the full one.
    pub fn pick<T>(&self, short: T, long: T) -> T {
        if self.short { short } else { long }
    }
}

pub struct Scenario {
    pub number: u8,
    pub title: &'static str,
    /// In the short version (CI).
    pub short: bool,
    run: for<'a> fn(&'a Ctx) -> futures::future::BoxFuture<'a, anyhow::Result<Outcome>>,
}

impl Scenario {
    pub async fn run(&self, ctx: &Ctx) -> anyhow::Result<Outcome> {
        (self.run)(ctx).await
    }
}

pub const ALL: &[Scenario] = &[
    Scenario {
        number: 1,
        title: "RabbitMQ killed (kill -9) and started again, 3 times, under load",
        short: false,
        run: |ctx| Box::pin(broker_kill::run(ctx)),
    },
    Scenario {
        number: 2,
        title: "a sender killed (SIGKILL) mid-load and started again",
        short: true,
        run: |ctx| Box::pin(sender_kill::run(ctx)),
    },
    Scenario {
        number: 3,
        title: "the router killed (SIGKILL) mid-batch and started again",
        short: true,
        run: |ctx| Box::pin(router_kill::run(ctx)),
    },
    Scenario {
        number: 4,
        title: "PostgreSQL crashed (kill -9) and started again under load",
        short: false,
        run: |ctx| Box::pin(database::run(ctx)),
    },
    Scenario {
        number: 5,
        title: "500 ms latency to the broker, then the connections cut for 30 s",
        short: false,
        run: |ctx| Box::pin(network::run(ctx)),
    },
    Scenario {
        number: 6,
        title: "1% poison messages mixed into the load",
        short: true,
        run: |ctx| Box::pin(poison::run(ctx)),
    },
    Scenario {
        number: 7,
        title: "the provider answering 5xx for 60 s",
        short: false,
        run: |ctx| Box::pin(provider_outage::run(ctx)),
    },
    Scenario {
        number: 8,
        title: "two replicas of a sender on one provider account",
        short: false,
        run: |ctx| Box::pin(replicas::run(ctx)),
    },
    Scenario {
        number: 9,
        title: "SIGTERM under load: a rolling update of the sender, the router and the API",
        short: true,
        run: |ctx| Box::pin(rolling_update::run(ctx)),
    },
    Scenario {
        number: 10,
        title: "the broker node the services use killed, in a 3-node cluster",
        short: false,
        run: |ctx| Box::pin(cluster::run(ctx)),
    },
];

/// What one scenario found.
pub struct Outcome {
    pub tally: Option<Tally>,
    pub checks: Vec<Check>,
    /// Measurements that are not pass/fail (times, rates, refusals).
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

pub struct Check {
    pub what: String,
    pub target: String,
    pub seen: String,
    pub ok: bool,
}

impl Check {
    pub fn new(what: &str, target: &str, seen: impl ToString, ok: bool) -> Check {
        Check {
            what: what.to_owned(),
            target: target.to_owned(),
            seen: seen.to_string(),
            ok,
        }
    }

    /// `seen <= max`.
    pub fn at_most(what: &str, seen: usize, max: usize) -> Check {
        Check::new(what, &format!("<= {max}"), seen, seen <= max)
    }
}

/// A stack with its producers and a sampler of the provider's arrivals.
pub struct Run {
    pub stack: Stack,
    pub producers: Producers,
    pub sampler: Sampler,
}

impl Run {
    /// Starts a stack; its services log to `<log dir>/<name>/`.
    pub async fn start(name: &str, options: &Options) -> anyhow::Result<Run> {
        let mut options = options.clone();
        options.log_dir = options.log_dir.join(name);
        let stack = Stack::start(name, &options).await?;
        let producers = Producers::new(&stack)?;
        let sampler = Sampler::start(stack.sms.clone());
        Ok(Run {
            stack,
            producers,
            sampler,
        })
    }

    /// Starts offering `rate` messages a second for `duration`, half of them through the API.
    pub fn load(&self, prefix: &str, rate: u32, duration: Duration) -> Load {
        Load::start(
            &self.producers,
            LoadSpec {
                prefix: prefix.to_owned(),
                rate,
                duration,
                rest_every: 2,
                poison_every: None,
            },
        )
    }

    /// Waits for the run's messages to arrive (nothing new for 30 s ends the wait) and
    /// counts them.
    pub async fn settle(&self, ledger: &Ledger, prefix: &str) -> Tally {
        settle(
            ledger,
            &self.stack.sms,
            prefix,
            Duration::from_secs(30),
            Duration::from_secs(300),
        )
        .await;
        tally(ledger, &self.stack.sms, prefix)
    }

    /// Whether each service is still running (none crashed), as a check.
    pub fn none_crashed(&mut self) -> Check {
        let down: Vec<String> = self
            .stack
            .processes()
            .into_iter()
            .filter_map(|p| (!p.running()).then(|| p.name.clone()))
            .collect();
        Check::new(
            "services still running",
            "all",
            if down.is_empty() {
                "all".to_owned()
            } else {
                format!("down: {}", down.join(", "))
            },
            down.is_empty(),
        )
    }

    /// "Back to full speed" after a fault at `fault`, healed at `healed`, within `within`
    /// (see [`Sampler::full_speed`]).
    pub fn back_to_speed(
        &self,
        what: &str,
        fault: tokio::time::Instant,
        healed: tokio::time::Instant,
        offered: u32,
        within: Duration,
    ) -> Check {
        let speed = self.sampler.full_speed(fault, offered);
        let back = self.sampler.back_to_speed(healed, speed);
        Check::new(
            what,
            &format!("<= {}s to {speed:.0}/s", within.as_secs()),
            back.map_or("never".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
            back.is_some_and(|d| d <= within),
        )
    }

    /// The end of a scenario: the "none crashed" check, the stack stopped, the outcome.
    pub async fn finish(
        mut self,
        tally: Tally,
        mut checks: Vec<Check>,
        notes: Vec<String>,
    ) -> Outcome {
        checks.push(self.none_crashed());
        self.stop().await;
        Outcome {
            tally: Some(tally),
            checks,
            notes,
        }
    }

    pub async fn stop(self) {
        self.producers.close().await;
        drop(self.sampler);
        self.stack.stop().await;
    }
}

/// The checks every loaded scenario makes: nothing accepted was lost, the duplicates stay
/// within `max_duplicates`, the API refused nothing except with `503` and `Retry-After`, and
/// at most `max_unanswered` requests got no answer at all (a connection refused while the
/// API restarts, a publish that ran out of time).
pub fn delivery_checks(
    tally: &Tally,
    answers: &Answers,
    max_duplicates: usize,
    max_unanswered: u64,
) -> Vec<Check> {
    let Answers {
        refused,
        unanswered,
        errors,
    } = answers.clone();
    vec![
        Check::new(
            "accepted messages lost",
            "0",
            if tally.lost == 0 {
                "0".to_owned()
            } else {
                format!("{} (e.g. {})", tally.lost, tally.lost_examples.join(", "))
            },
            tally.lost == 0,
        ),
        Check::at_most(
            "duplicates at the provider",
            tally.duplicated,
            max_duplicates,
        ),
        Check::new(
            "messages accepted",
            "> 0",
            tally.accepted,
            tally.accepted > 0,
        ),
        Check::new(
            "API answers other than 202 or 503 + Retry-After",
            "0",
            refused,
            refused == 0,
        ),
        Check::new(
            "producer requests without an answer",
            &format!("<= {max_unanswered}"),
            if errors.is_empty() {
                unanswered.to_string()
            } else {
                format!("{unanswered} ({})", errors.join("; "))
            },
            unanswered <= max_unanswered,
        ),
    ]
}

/// Sleeps until `at` after `start`.
pub async fn at(start: tokio::time::Instant, at: Duration) {
    tokio::time::sleep_until(start + at).await;
}
