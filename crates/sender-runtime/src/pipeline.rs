//! One job's way through a sender, as a consumer-runner [`Handler`]:
//!
//! 1. a job for another channel is dead-lettered (a routing mistake, never retried);
//! 2. a delivery id sent recently is not sent again: its `delivered` event is repeated; a
//!    copy arriving while the same delivery is being sent waits for it;
//! 3. an expired job, or one older than the maximum age, fails as temporary (R4 a);
//! 4. the recipient's bucket: empty -> deferred, without counting an attempt (R7);
//! 5. the account's bucket and any provider retry-after: waited for in place;
//! 6. the send, bounded by a timeout;
//! 7. one delivery event for the attempt, confirmed, and only then the outcome (ack, or
//!    retry through a delay queue).
//!
//! A bundle of jobs (`SendJobBundle`, issue #16) takes each job this way at once, at most
//! `amqp.concurrency` sends of the sender in work together; the jobs that are not done
//! (retried, deferred, refused) go back to the queue alone, and the bundle is acked.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use herald_runtime::amqp::delivery_events::Events;
use herald_runtime::amqp::{
    Context, Handler, Outcome, Part, Rejection, decode_json, panic_message,
};
use messaging_core::events::AttemptResult;
use messaging_core::failure::{Failure, FailureClass};
use messaging_core::job::{SendJob, SendJobBundle};
use std::panic::AssertUnwindSafe;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::breaker::Breaker;
use crate::config::SenderConfig;
use crate::limits::Limiter;
use crate::recent::{Claim, RecentDeliveries};
use crate::sender::{ChannelSender, Receipt, SendError};
use herald_runtime::amqp::backoff::retry_delay as backoff;

/// When the delivery event cannot be published, the job comes back this soon; the
/// recent-delivery cache keeps the send itself from being repeated.
const EVENT_RETRY: Duration = Duration::from_secs(1);

/// A copy of a delivery that is being sent right now comes back after this.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(1);

/// The longest a job of a bundle waits for a send slot before it goes back to the queue
/// alone (deferred): bounds a bundle's time in the consumer runner (its handler timeout)
/// while many bundles share the sender's slots behind a slow provider or an account limit.
const BUNDLE_SLOT_WAIT: Duration = Duration::from_secs(10);

pub struct Pipeline<S: ChannelSender> {
    pub sender: Arc<S>,
    pub config: SenderConfig,
    pub limiter: Arc<Limiter>,
    pub breaker: Arc<Breaker>,
    pub recent: Arc<RecentDeliveries>,
    pub events: Arc<Events>,
    pub shutdown: CancellationToken,
    /// Jobs in work at once, alone or from bundles (`amqp.concurrency`): a bundle counts as
    /// one message for the consumer, its jobs count here.
    pub sends: Arc<Semaphore>,
}

/// What a send queue carries.
pub enum Work {
    One(SendJob),
    /// A bundle's jobs; an item that does not decode keeps its bytes and why, to be
    /// dead-lettered alone.
    Bundle(Vec<Result<SendJob, (Vec<u8>, Rejection)>>),
}

/// The AMQP `type` of a job that goes on alone out of a bundle.
const JOB_KIND: &str = "herald.send_job.v1";

impl<S: ChannelSender> Handler for Pipeline<S> {
    type Message = Work;

    fn decode(&self, body: &[u8]) -> Result<Work, Rejection> {
        let lone = match decode_json::<SendJob>(body) {
            Ok(job) => return Ok(Work::One(job)),
            Err(lone) => lone,
        };
        if let Ok(bundle) = serde_json::from_slice::<SendJobBundle>(body) {
            return Ok(Work::Bundle(bundle.jobs.into_iter().map(Ok).collect()));
        }
        match SendJobBundle::items_of(body) {
            Some(items) => Ok(Work::Bundle(
                items
                    .into_iter()
                    .map(|item| {
                        item.map_err(|bad| {
                            let rejection = Rejection::new("invalid", bad.reason);
                            (bad.item.to_string().into_bytes(), rejection)
                        })
                    })
                    .collect(),
            )),
            // Neither a job nor a bundle: the lone job's error says more.
            None => Err(lone),
        }
    }

    async fn handle(&self, work: Work, ctx: &Context) -> Outcome {
        // Only Herald writes send jobs (the router after its checks, the API's verification
        // messages): a job from anyone else could reach an address nobody proved.
        if let Some(refused) = ctx.origin.refuse_unless_herald() {
            return refused;
        }
        match work {
            Work::One(job) => self.one(job, ctx).await,
            Work::Bundle(items) => self.bundle(items, ctx).await,
        }
    }
}

impl<S: ChannelSender> Pipeline<S> {
    /// Every job of a bundle as if it had come alone; those not done go on alone.
    async fn bundle(
        &self,
        items: Vec<Result<SendJob, (Vec<u8>, Rejection)>>,
        ctx: &Context,
    ) -> Outcome {
        let handled = futures::future::join_all(items.into_iter().map(|item| async move {
            let job = match item {
                Ok(job) => job,
                Err((body, rejection)) => {
                    tracing::warn!(code = %rejection.code, reason = %rejection.reason, "undecodable job in a bundle");
                    return Some(Part {
                        body,
                        message_id: None,
                        kind: Some(JOB_KIND.to_owned()),
                        outcome: Outcome::DeadLetter(rejection),
                    });
                }
            };
            let delivery_id = job.delivery_id;
            let part = |outcome| {
                Some(Part {
                    // A job read from JSON writes back to JSON.
                    body: serde_json::to_vec(&job).unwrap_or_default(),
                    message_id: Some(delivery_id.to_string()),
                    kind: Some(JOB_KIND.to_owned()),
                    outcome,
                })
            };
            // The consumer runner times the bundle as one message, while its jobs share the
            // sender's slots with every other bundle in work: a job that finds no slot soon
            // goes back to the queue alone, and the bundle ends in bounded time.
            let Ok(Ok(slot)) = tokio::time::timeout(BUNDLE_SLOT_WAIT, self.sends.acquire()).await
            else {
                return part(Outcome::Defer {
                    after: Duration::ZERO,
                });
            };
            // One job's panic fails that job alone, as a lone job's would.
            match AssertUnwindSafe(self.holding(slot, &job, ctx))
                .catch_unwind()
                .await
            {
                Ok(Outcome::Ack | Outcome::Split(_)) => None,
                Ok(outcome) => part(outcome),
                Err(panic) => {
                    let what = panic_message(panic.as_ref());
                    tracing::error!(panic = %what, %delivery_id, "a job of a bundle panicked; dead-lettering it");
                    part(Outcome::DeadLetter(Rejection::new("handler_panic", what)))
                }
            }
        }))
        .await;
        Outcome::Split(handled.into_iter().flatten().collect())
    }

    /// A lone job: its slot, then [`Self::holding`].
    async fn one(&self, job: SendJob, ctx: &Context) -> Outcome {
        match self.sends.acquire().await {
            Ok(slot) => self.holding(slot, &job, ctx).await,
            // Never closed: the pipeline owns the semaphore.
            Err(_) => Outcome::Defer {
                after: Duration::ZERO,
            },
        }
    }

    /// One job's attempt in its slot, its event and the outcome for the runner.
    async fn holding(&self, slot: SemaphorePermit<'_>, job: &SendJob, ctx: &Context) -> Outcome {
        let channel = S::CHANNEL.as_str();
        let (outcome, result) = if self.shutdown.is_cancelled() {
            // Stopping: what has not begun goes back to wait (a bundle's jobs too, so the
            // bundle is settled before the drain deadline instead of sent again whole).
            drop(slot);
            (
                Outcome::Defer {
                    after: Duration::ZERO,
                },
                None,
            )
        } else {
            let attempted = self.attempt(job, ctx).await;
            drop(slot);
            attempted
        };
        let label = match (&outcome, &result) {
            (_, Some(result)) => result.status(),
            (Outcome::Defer { .. }, None) => "deferred",
            _ => "other",
        };
        metrics::counter!("herald_sender_attempts_total", "channel" => channel, "result" => label)
            .increment(1);
        let Some(result) = result else {
            return outcome;
        };
        match self.events.emit(job, ctx.attempt, result).await {
            Ok(()) => outcome,
            Err(error) => {
                tracing::error!(%error, delivery_id = %job.delivery_id, "could not publish the delivery event; retrying the job");
                // Never sooner than the attempt itself asked for (a provider's retry-after).
                let after = match outcome {
                    Outcome::Retry { after, .. } | Outcome::Defer { after } => {
                        after.max(EVENT_RETRY)
                    }
                    _ => EVENT_RETRY,
                };
                Outcome::Retry {
                    after,
                    reason: format!("delivery event not published: {error}"),
                }
            }
        }
    }

    /// The outcome for the runner, and the event to emit (none when the job is deferred).
    async fn attempt(&self, job: &SendJob, ctx: &Context) -> (Outcome, Option<AttemptResult>) {
        if job.channel() != S::CHANNEL {
            let reason = format!("a {} job reached the {} sender", job.channel(), S::CHANNEL);
            return (
                Outcome::DeadLetter(Rejection::new("wrong_channel", reason)),
                None,
            );
        }
        let claim = match self.recent.claim(job.delivery_id) {
            Claim::Mine(claim) => claim,
            Claim::AlreadySent(receipt) => {
                tracing::info!(delivery_id = %job.delivery_id, "already sent; not sending again");
                return (Outcome::Ack, Some(delivered(receipt)));
            }
            Claim::InFlight => {
                return (
                    Outcome::Defer {
                        after: IN_FLIGHT_WAIT,
                    },
                    None,
                );
            }
        };
        let now = Utc::now();
        if job.expires_at.is_some_and(|at| at <= now) {
            let failure = Failure::temporary(
                "expired",
                "the message expired before it could be delivered",
            );
            return (Outcome::Ack, Some(AttemptResult::Failed { failure }));
        }
        let age = (now - ctx.first_attempt_at).to_std().unwrap_or_default();
        if age >= self.config.max_age() {
            return (Outcome::Ack, Some(gave_up(ctx, age)));
        }
        let recipient = job.to.value();
        if let Some(wait) = self.limiter.recipient_wait(&recipient) {
            return (Outcome::Defer { after: wait }, None);
        }
        tokio::select! {
            biased;
            // Stopping: the job goes back to wait, not to fail.
            _ = self.shutdown.cancelled() => return (Outcome::Defer { after: Duration::ZERO }, None),
            _ = self.limiter.account() => {}
        }
        // Taken only now, right before the send (see `limits`): another job for this
        // recipient may have gone while this one waited for the account.
        if let Err(wait) = self.limiter.recipient(&recipient) {
            return (Outcome::Defer { after: wait }, None);
        }

        let started = std::time::Instant::now();
        let sent =
            match tokio::time::timeout(self.config.send_timeout(), self.sender.send(job)).await {
                Ok(result) => result,
                Err(_) => Err(SendError::provider_fault(
                    "timeout",
                    format!(
                        "the provider did not answer within {:?}",
                        self.config.send_timeout()
                    ),
                )),
            };
        metrics::histogram!("herald_sender_send_seconds", "channel" => S::CHANNEL.as_str())
            .record(started.elapsed().as_secs_f64());

        match sent {
            Ok(receipt) => {
                self.breaker.record_success();
                claim.sent(receipt.clone());
                (Outcome::Ack, Some(delivered(receipt)))
            }
            Err(SendError::Permanent(failure)) => {
                // A clear answer about the recipient means the provider itself is fine.
                self.breaker.record_success();
                tracing::warn!(code = %failure.code, reason = %failure.message, "permanent failure");
                (Outcome::Ack, Some(AttemptResult::Failed { failure }))
            }
            Err(SendError::Retry(retry)) => {
                if retry.throttles_account {
                    if let Some(after) = retry.after {
                        self.limiter.block_account(after);
                    }
                } else if retry.provider_fault {
                    self.breaker.record_fault(&retry.failure.message);
                }
                self.schedule_retry(ctx, age, retry.failure, retry.after)
            }
            Err(SendError::Unhealthy(failure)) => {
                self.breaker.record_fault(&failure.message);
                self.schedule_retry(ctx, age, failure, None)
            }
        }
    }

    /// Retry after the provider's delay or our backoff, unless that would pass the maximum
    /// age: then fail now, as temporary, saying why.
    fn schedule_retry(
        &self,
        ctx: &Context,
        age: Duration,
        failure: Failure,
        after: Option<Duration>,
    ) -> (Outcome, Option<AttemptResult>) {
        let delay = after.unwrap_or_else(|| {
            backoff(
                ctx.attempt,
                Duration::from_millis(self.config.retry_base_ms),
                Duration::from_millis(self.config.retry_max_ms),
            )
        });
        if age + delay >= self.config.max_age() {
            let failure = Failure::new(
                // An unhealthy provider until the end stays class (c); anything else is (a).
                if failure.class == FailureClass::Unhealthy {
                    FailureClass::Unhealthy
                } else {
                    FailureClass::Temporary
                },
                "max_age_exceeded",
                format!(
                    "gave up after {} attempts over {age:?}; last error: {}",
                    ctx.attempt, failure.message
                ),
            );
            return (Outcome::Ack, Some(AttemptResult::Failed { failure }));
        }
        let retry_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        let reason = failure.message.clone();
        (
            Outcome::Retry {
                after: delay,
                reason,
            },
            Some(AttemptResult::RetryScheduled { failure, retry_at }),
        )
    }
}

fn delivered(receipt: Receipt) -> AttemptResult {
    AttemptResult::Delivered {
        provider_message_id: receipt.provider_message_id,
    }
}

fn gave_up(ctx: &Context, age: Duration) -> AttemptResult {
    let last = ctx.last_error.as_deref().unwrap_or("none recorded");
    AttemptResult::Failed {
        failure: Failure::temporary(
            "max_age_exceeded",
            format!(
                "gave up after {} attempts over {age:?}; last error: {last}",
                ctx.attempt.saturating_sub(1)
            ),
        ),
    }
}
