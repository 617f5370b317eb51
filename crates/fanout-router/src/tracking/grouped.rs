//! Delivery events recorded in groups (issue #16): the events waiting on the router's events
//! queue together are recorded in one transaction: one statement locks their messages, one
//! records the deliveries they report delivered and one ends those addresses' failure
//! streaks; a failure or a retry is recorded with the statements it takes alone. The messages
//! they finish are completed in one statement, and their outcomes go out in one publish with
//! confirms ([`Outcomes::publish_due`]).
//!
//! The messages are locked in the order of their ids, the order in which the grouped fan-out
//! ends messages too, so two groups cannot wait for each other's message locks. A
//! group that fails (the database refused one event, a lock timed out) answers `None` for
//! each of its events, and each is recorded again alone, so one bad event cannot fail its
//! neighbours; the alone path finds what a committed group did (the event is stale) and
//! publishes any outcome left due.

use std::collections::HashSet;

use herald_runtime::amqp::Outcome;
use herald_storage::tracking::{self, Attempt, AttemptOutcome, Recorded, RemovalPolicy};
use herald_storage::{PgPool, StoreError};
use messaging_core::events::DeliveryEvent;
use uuid::Uuid;

use super::{Settled, attempt_of, settle};
use crate::outcome::Outcomes;

/// Records groups of delivery events; cheap to clone.
#[derive(Clone)]
pub struct GroupRecorder {
    pub pool: PgPool,
    pub outcomes: Outcomes,
    pub policy: RemovalPolicy,
}

impl GroupRecorder {
    /// One answer per event, in order; `None`: record it alone.
    pub async fn record(&self, events: Vec<DeliveryEvent>) -> Vec<Option<Outcome>> {
        let (recorded, completed) = match self.try_record(&events).await {
            Ok(done) => done,
            Err(error) => {
                tracing::warn!(%error, events = events.len(), "a group of delivery events failed; each is recorded alone");
                return events.iter().map(|_| None).collect();
            }
        };
        let mut answers: Vec<Option<Outcome>> = Vec::with_capacity(events.len());
        let mut due: Vec<Uuid> = Vec::new();
        for (event, recorded) in events.iter().zip(recorded) {
            let message_id = match &recorded {
                Recorded::Applied { message_id, .. } | Recorded::Stale { message_id } => {
                    Some(*message_id)
                }
                Recorded::Unknown => None,
            };
            let done = message_id.is_some_and(|id| completed.contains(&id));
            match settle(event, recorded, done) {
                Settled::Done(outcome) => answers.push(Some(outcome)),
                Settled::OutcomeDue(message_id) => {
                    due.push(message_id);
                    answers.push(Some(Outcome::Ack));
                }
            }
        }
        due.sort_unstable();
        due.dedup();
        if let Err(error) = self.outcomes.publish_due(&due).await {
            // The events whose outcome is due are recorded again alone: stale then, they
            // publish it one by one or are retried.
            tracing::warn!(%error, "cannot publish a group's outcomes; their events go alone");
            let due: HashSet<Uuid> = due.into_iter().collect();
            for (event, answer) in events.iter().zip(answers.iter_mut()) {
                if due.contains(&event.message_id) {
                    *answer = None;
                }
            }
        }
        answers
    }

    /// Every event's record, in the events' order, and the messages the group completed.
    async fn try_record(
        &self,
        events: &[DeliveryEvent],
    ) -> Result<(Vec<Recorded>, HashSet<Uuid>), StoreError> {
        let attempts: Vec<Attempt> = events.iter().map(attempt_of).collect();
        let mut tx = self.pool.begin().await?;
        let named: Vec<(Uuid, &str)> = events
            .iter()
            .map(|e| (e.delivery_id, e.tenant.as_str()))
            .collect();
        let owners = tracking::lock_messages_of(&mut tx, &named).await?;
        // Deliveries, once each, in a few statements for the whole group; a failure, a retry or
        // a second event for a delivery the way one event goes alone (its message is locked
        // already).
        let mut seen = HashSet::new();
        let (bulk, each): (Vec<usize>, Vec<usize>) = (0..events.len()).partition(|&i| {
            matches!(attempts[i].result, AttemptOutcome::Delivered)
                && owners.contains_key(&attempts[i].delivery_id)
                && seen.insert(attempts[i].delivery_id)
        });
        let mut recorded: Vec<Option<Recorded>> = vec![None; events.len()];
        let bulk_attempts: Vec<Attempt> = bulk.iter().map(|&i| attempts[i].clone()).collect();
        for (i, record) in bulk
            .iter()
            .zip(tracking::record_delivered(&mut tx, &bulk_attempts, &owners).await?)
        {
            recorded[*i] = Some(record);
        }
        for i in each {
            recorded[i] = Some(tracking::record(&mut tx, &attempts[i], self.policy).await?);
        }
        // A retry leaves the delivery pending, so it cannot complete anything.
        let mut finished: Vec<Uuid> = recorded
            .iter()
            .zip(&attempts)
            .filter_map(|(record, attempt)| match record {
                Some(Recorded::Applied { message_id, .. })
                    if !matches!(attempt.result, AttemptOutcome::RetryScheduled { .. }) =>
                {
                    Some(*message_id)
                }
                _ => None,
            })
            .collect();
        finished.sort_unstable();
        finished.dedup();
        let completed = tracking::complete_all_if_done(&mut *tx, &finished).await?;
        tx.commit().await?;
        Ok((
            recorded.into_iter().flatten().collect(),
            completed.into_iter().collect(),
        ))
    }
}
