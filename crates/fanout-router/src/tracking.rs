//! The router's events consumer on `{p}.router.events`: senders' delivery events become
//! delivery records (R15) and address states (R3, R6); chat bots' contact links become
//! addresses (R5). When the last delivery of a message is final, its outcome goes out (R4).

use herald_runtime::amqp::{Context, Handler, Outcome, Rejection, decode_json};
use herald_storage::addresses::{self, NewAddress};
use herald_storage::tracking::{
    self, Attempt, AttemptOutcome, FailureRef, Recorded, RemovalPolicy,
};
use herald_storage::{PgPool, StoreError, link_codes};
use messaging_core::events::{AttemptResult, ContactLinkEvent, DeliveryEvent};
use serde_json::Value;
use tracing::Instrument;

use crate::config::RetryPolicy;
use crate::outcome::Outcomes;

/// What arrives on the router's events queue.
#[derive(Debug)]
pub enum RouterEvent {
    Delivery(Box<DeliveryEvent>),
    Contact(Box<ContactLinkEvent>),
}

pub struct TrackingHandler {
    pool: PgPool,
    outcomes: Outcomes,
    policy: RemovalPolicy,
    retry: RetryPolicy,
}

impl TrackingHandler {
    pub fn new(
        pool: PgPool,
        outcomes: Outcomes,
        policy: RemovalPolicy,
        retry: impl Into<RetryPolicy>,
    ) -> Self {
        TrackingHandler {
            pool,
            outcomes,
            policy,
            retry: retry.into(),
        }
    }

    /// A database that cannot be reached, or a broker that will not take the outcome, is a
    /// passing problem: the event waits in a delay queue and comes back.
    fn retry(&self, why: impl std::fmt::Display) -> Outcome {
        // The wait grows with the attempt in `handle`, which knows it.
        Outcome::Retry {
            after: self.retry.base,
            reason: why.to_string(),
        }
    }

    fn store_failure(&self, error: StoreError) -> Outcome {
        match error {
            StoreError::Invalid(rule) => Outcome::DeadLetter(Rejection::new(
                "invalid",
                format!("the event breaks a rule of the data model ({rule})"),
            )),
            other => self.retry(other),
        }
    }

    async fn delivery(&self, event: &DeliveryEvent) -> Outcome {
        let result = match &event.result {
            AttemptResult::Delivered { .. } => AttemptOutcome::Delivered,
            AttemptResult::RetryScheduled { failure, retry_at } => AttemptOutcome::RetryScheduled {
                failure: failure_ref(failure),
                retry_at: *retry_at,
            },
            AttemptResult::Failed { failure } => AttemptOutcome::Failed {
                failure: failure_ref(failure),
            },
        };
        let attempt = Attempt {
            delivery_id: event.delivery_id,
            tenant_key: event.tenant.as_str(),
            attempt: i32::try_from(event.attempt).unwrap_or(i32::MAX),
            occurred_at: event.occurred_at,
            result,
        };
        let (recorded, completed) = match self.record(&attempt).await {
            Ok(recorded) => recorded,
            Err(error) => return self.store_failure(error),
        };
        let message_id = match recorded {
            Recorded::Unknown => {
                return Outcome::DeadLetter(Rejection::new(
                    "unknown_delivery",
                    format!(
                        "no delivery {} in tenant {}",
                        event.delivery_id,
                        event.tenant.as_str()
                    ),
                ));
            }
            Recorded::Stale { message_id } => {
                metrics::counter!("herald_router_events_total", "result" => "stale").increment(1);
                message_id
            }
            Recorded::Applied {
                message_id,
                address_change,
            } => {
                metrics::counter!("herald_router_events_total", "result" => event.result.status())
                    .increment(1);
                if let Some((state, reason)) = address_change {
                    metrics::counter!("herald_router_address_changes_total", "state" => state.as_str())
                        .increment(1);
                    tracing::info!(delivery_id = %event.delivery_id, %state, %reason, "address state changed");
                }
                // Not the last delivery to finish: the outcome is not due.
                if !completed {
                    return Outcome::Ack;
                }
                message_id
            }
        };
        // Also for stale events: the first copy may have finished the message and died before
        // its outcome went out.
        match self.outcomes.publish_if_due(message_id).await {
            Ok(_) => Outcome::Ack,
            Err(error) => self.retry(error),
        }
    }

    /// The attempt's record, and whether it completed its message.
    async fn record(&self, attempt: &Attempt<'_>) -> Result<(Recorded, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        let recorded = tracking::record(&mut tx, attempt, self.policy).await?;
        let completed = match &recorded {
            // A retry leaves the delivery pending, so it cannot complete anything.
            Recorded::Applied { .. }
                if matches!(attempt.result, AttemptOutcome::RetryScheduled { .. }) =>
            {
                false
            }
            Recorded::Applied { message_id, .. } => {
                tracking::complete_if_done(&mut *tx, *message_id).await?
            }
            _ => false,
        };
        tx.commit().await?;
        Ok((recorded, completed))
    }

    /// R5: the code names the person; the chat becomes one of their addresses, verified (the
    /// person wrote from it). Redeeming and adding are one transaction, so a failure does not
    /// use the code up.
    async fn contact(&self, event: &ContactLinkEvent) -> Outcome {
        let linked = async {
            let mut tx = self.pool.begin().await?;
            let Some(redeemed) =
                link_codes::redeem(&mut *tx, &event.link_code, event.channel).await?
            else {
                return Ok(None);
            };
            let value = event.address.value();
            let (address, _) = addresses::add(
                &mut *tx,
                NewAddress {
                    tenant_id: redeemed.tenant_id,
                    user_id: redeemed.user_id,
                    kind: event.address.kind(),
                    value: &value,
                    display_name: event.display_name.as_deref(),
                },
            )
            .await?;
            addresses::mark_verified(&mut *tx, address.id).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(Some(address.id))
        };
        match linked.await {
            Ok(Some(address_id)) => {
                metrics::counter!("herald_router_contact_links_total", "result" => "linked")
                    .increment(1);
                tracing::info!(%address_id, channel = %event.channel, "chat linked to a person");
                Outcome::Ack
            }
            Ok(None) => {
                // A mistyped, expired or used code is the person's everyday mistake, not a
                // broken message: counted and logged, not dead-lettered.
                metrics::counter!("herald_router_contact_links_total", "result" => "invalid_code")
                    .increment(1);
                tracing::warn!(channel = %event.channel, "link code unknown, expired or used");
                Outcome::Ack
            }
            Err(error) => self.store_failure(error),
        }
    }
}

fn failure_ref(failure: &messaging_core::failure::Failure) -> FailureRef<'_> {
    FailureRef {
        class: failure.class,
        code: &failure.code,
        message: &failure.message,
    }
}

impl Handler for TrackingHandler {
    type Message = RouterEvent;

    /// Delivery events carry `deliveryId`, contact links `linkCode`; the reason names what is
    /// wrong with anything else.
    fn decode(&self, body: &[u8]) -> Result<RouterEvent, Rejection> {
        let value: Value = decode_json(body)?;
        let invalid = |e: serde_json::Error| Rejection::new("invalid", e.to_string());
        if value.get("deliveryId").is_some() {
            serde_json::from_value(value)
                .map(|e| RouterEvent::Delivery(Box::new(e)))
                .map_err(invalid)
        } else if value.get("linkCode").is_some() {
            serde_json::from_value(value)
                .map(|e| RouterEvent::Contact(Box::new(e)))
                .map_err(invalid)
        } else {
            Err(Rejection::new(
                "unknown_event",
                "neither a delivery event (no deliveryId) nor a contact link (no linkCode)",
            ))
        }
    }

    async fn handle(&self, event: RouterEvent, ctx: &Context) -> Outcome {
        let outcome = match event {
            RouterEvent::Delivery(event) => {
                let span = tracing::info_span!(
                    "delivery_event",
                    delivery_id = %event.delivery_id,
                    message_id = %event.message_id,
                    tenant = %event.tenant.as_str(),
                    attempt = event.attempt,
                    status = event.result.status(),
                );
                self.delivery(&event).instrument(span).await
            }
            RouterEvent::Contact(event) => {
                let span = tracing::info_span!("contact_link", channel = %event.channel);
                self.contact(&event).instrument(span).await
            }
        };
        match outcome {
            Outcome::Retry { reason, .. } => Outcome::Retry {
                after: self.retry.after(ctx.attempt),
                reason,
            },
            other => other,
        }
    }
}
