//! The router's events consumer on `{p}.router.events`: senders' delivery events become
//! delivery records (R15) and address states (R3, R6); chat bots' contact links become
//! addresses (R5), and their support requests tickets (R53); the XMPP bot's room events
//! become help-desk rooms with their history (R31-R36, see [`crate::rooms`]). When the last
//! delivery of a message is final, its outcome goes out (R4).
//!
//! What a bot must tell the person (linked, wrong code, ticket opened) goes into the outbox in
//! the transaction that decided it, so it is sent exactly when the change is committed, and a
//! redelivered event that finds its work done changes nothing and says nothing new.

mod grouped;

use crate::producers::ProducerPolicy;
use herald_runtime::amqp::{Context, Handler, Outcome, Rejection, decode_json};
use herald_runtime::batching::{BatchSettings, Batcher};
use herald_storage::addresses::{self, NewAddress};
use herald_storage::tracking::{
    self, Attempt, AttemptOutcome, FailureRef, Recorded, RemovalPolicy,
};
use herald_storage::verification::{self, Proof};
use herald_storage::{PgPool, StoreError, link_codes, messages, outbox, support};
use messaging_core::events::{
    Answer, AttemptResult, ChatAnswer, ChatReference, ChatSeenEvent, ContactLinkEvent,
    DeliveryEvent, DeliveryEventBundle, RoomEvent, SupportRequestEvent, short_id,
};
use messaging_core::ingress::{Content, Ingress, NotifyRequest, Recipients, TemplateContent};
use messaging_core::values::{IdempotencyKey, SubscriptionKey, TenantKey};
use messaging_core::{Address, EnvelopeVersion, MessageSource};
use serde_json::{Value, json};
use sqlx::PgConnection;
use std::sync::Arc;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::RetryPolicy;
use crate::outcome::Outcomes;
use crate::rooms::Rooms;

/// What arrives on the router's events queue.
#[derive(Debug)]
pub enum RouterEvent {
    Delivery(Box<DeliveryEvent>),
    /// A sender's bundle of `delivered` events (issue #16): each item decoded on its own, so
    /// one that does not decode is split out and dead-lettered alone.
    Bundle(Vec<Result<DeliveryEvent, Value>>),
    Contact(Box<ContactLinkEvent>),
    Seen(Box<ChatSeenEvent>),
    Support(Box<SupportRequestEvent>),
    Room(Box<RoomEvent>),
}

pub struct TrackingHandler {
    pool: PgPool,
    outcomes: Outcomes,
    rooms: Rooms,
    policy: RemovalPolicy,
    retry: RetryPolicy,
    /// Only Herald's services publish events (issue #17).
    producers: Arc<ProducerPolicy>,
    /// What link codes are hashed with (`verification.code_secret`, shared with the API).
    link_key: Arc<[u8]>,
    /// Delivery events are recorded in groups (issue #16); `None`: each alone.
    grouped: Option<Batcher<DeliveryEvent, Option<Outcome>>>,
    /// Events recorded alone at once, at most: each holds a database connection, and when a
    /// group fails all its events go alone together, more than the pool has.
    alone: Arc<tokio::sync::Semaphore>,
}

impl TrackingHandler {
    /// Takes events with this policy (the default: the open mode).
    pub fn with_producers(mut self, producers: Arc<ProducerPolicy>) -> Self {
        self.producers = producers;
        self
    }

    /// Records the delivery events waiting together in groups ([`grouped`]).
    pub fn with_grouping(mut self, settings: BatchSettings) -> Self {
        let recorder = grouped::GroupRecorder {
            pool: self.pool.clone(),
            outcomes: self.outcomes.clone(),
            policy: self.policy,
        };
        let settings = BatchSettings {
            name: "router_events",
            ..settings
        };
        self.grouped = Some(Batcher::spawn(settings, move |events| {
            let recorder = recorder.clone();
            async move { recorder.record(events).await }
        }));
        self
    }

    /// A turn to record an event alone; `Err` with the outcome to answer when the router is
    /// stopping (the semaphore is closed only when the handler is dropped, which shutdown
    /// does).
    async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Outcome> {
        self.alone.acquire().await.map_err(|_| Outcome::Defer {
            after: self.retry.base,
        })
    }

    /// At most `n` events recorded alone at once (the rest wait for a turn).
    pub fn with_alone_limit(mut self, n: usize) -> Self {
        self.alone = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// Redeems link codes hashed with this key (the default: none, an unkeyed hash).
    pub fn with_link_key(mut self, key: &[u8]) -> Self {
        self.link_key = key.into();
        self
    }

    pub fn new(
        pool: PgPool,
        outcomes: Outcomes,
        policy: RemovalPolicy,
        retry: impl Into<RetryPolicy>,
    ) -> Self {
        let retry = retry.into();
        // Rosters go out on the events exchange like outcomes, through the same publisher.
        let rooms = Rooms::new(
            pool.clone(),
            outcomes.publisher().clone(),
            outcomes.names().clone(),
            retry,
        );
        TrackingHandler {
            producers: Arc::new(ProducerPolicy::new(pool.clone(), false)),
            link_key: Arc::from(&b""[..]),
            grouped: None,
            alone: Arc::new(tokio::sync::Semaphore::new(
                tokio::sync::Semaphore::MAX_PERMITS,
            )),
            pool,
            outcomes,
            rooms,
            policy,
            retry,
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

    /// One delivery event: with its group when events are grouped, else (or when the group
    /// left it) alone.
    async fn delivery_event(&self, event: DeliveryEvent) -> Outcome {
        let span = tracing::info_span!(
            "delivery_event",
            delivery_id = %event.delivery_id,
            message_id = %event.message_id,
            tenant = %event.tenant.as_str(),
            attempt = event.attempt,
            status = event.result.status(),
        );
        let grouped = match &self.grouped {
            Some(groups) => groups.submit(event.clone()).instrument(span.clone()).await,
            None => None,
        };
        match grouped {
            Some(Some(outcome)) => outcome,
            // Alone: no grouping, or the group left it.
            _ => match self.turn().await {
                Ok(_turn) => self.delivery(&event).instrument(span).await,
                Err(later) => later,
            },
        }
    }

    /// A bundle's events, each as if it had come alone. Recording is idempotent (a second
    /// record of the same event is stale), so an event that must be tried again takes the
    /// whole bundle with it through the delay queue, and the others are found done then. An
    /// event that is refused for good, or an item that is no event, is split out: published
    /// alone, where the consumer dead-letters it with its own reason, and the rest is acked.
    /// On the bundle's last attempt the events still to be retried are split out too, each
    /// to go on with attempts of its own, rather than the whole bundle dead-lettered.
    async fn bundle(&self, items: Vec<Result<DeliveryEvent, Value>>, ctx: &Context) -> Outcome {
        let (events, mut refused): (Vec<_>, Vec<_>) = items.into_iter().partition(Result::is_ok);
        let events: Vec<DeliveryEvent> = events.into_iter().flatten().collect();
        let outcomes =
            futures::future::join_all(events.iter().map(|e| self.delivery_event(e.clone()))).await;
        let mut later: Option<Outcome> = None;
        let mut retrying = Vec::new();
        for (event, outcome) in events.into_iter().zip(outcomes) {
            match outcome {
                // One event's handling never splits.
                Outcome::Ack | Outcome::Split(_) => {}
                Outcome::DeadLetter(_) => refused.push(Ok(event)),
                Outcome::Retry { after, reason } => {
                    retrying.push(Ok(event));
                    let after = match &later {
                        Some(Outcome::Retry { after: before, .. }) => after.max(*before),
                        _ => after,
                    };
                    later = Some(Outcome::Retry { after, reason });
                }
                Outcome::Defer { after } => {
                    if later.is_none() {
                        later = Some(Outcome::Defer { after });
                    }
                }
            }
        }
        match later {
            Some(Outcome::Retry { .. }) if ctx.is_last_attempt() => refused.extend(retrying),
            Some(later) => return later,
            None => {}
        }
        if refused.is_empty() {
            return Outcome::Ack;
        }
        match self.split_out(&refused).await {
            Ok(()) => Outcome::Ack,
            Err(error) => self.retry(format!(
                "cannot split refused events out of a bundle: {error}"
            )),
        }
    }

    /// Publishes each item alone on the events exchange, back to this queue.
    async fn split_out(
        &self,
        items: &[Result<DeliveryEvent, Value>],
    ) -> Result<(), herald_runtime::amqp::PublishError> {
        let exchange = self.outcomes.names().events_exchange();
        // As a sender names a single event (`<deliveryId>/<attempt>/<status>`); an item that
        // is no event gets an id of its own.
        let bodies: Vec<(String, String, Vec<u8>)> = items
            .iter()
            .map(|item| match item {
                Ok(event) => (
                    messaging_core::topology::routing::delivery_event(
                        event.channel,
                        event.result.status(),
                    ),
                    format!(
                        "{}/{}/{}",
                        event.delivery_id,
                        event.attempt,
                        event.result.status()
                    ),
                    serde_json::to_vec(event).unwrap_or_default(),
                ),
                Err(value) => (
                    "delivery.bundle.invalid".to_owned(),
                    format!("invalid/{}", Uuid::now_v7()),
                    serde_json::to_vec(value).unwrap_or_default(),
                ),
            })
            .collect();
        tracing::warn!(
            events = bodies.len(),
            "bundled events refused; each goes alone to be dead-lettered with its reason"
        );
        let messages: Vec<herald_runtime::amqp::Message> = bodies
            .iter()
            .map(|(key, id, body)| {
                herald_runtime::amqp::Message::new(&exchange, key.clone(), body)
                    .message_id(id.clone())
                    .kind("herald.delivery_event.v1")
            })
            .collect();
        self.outcomes.publisher().publish_batch(&messages).await
    }

    async fn delivery(&self, event: &DeliveryEvent) -> Outcome {
        let attempt = attempt_of(event);
        let (recorded, completed) = match self.record(&attempt).await {
            Ok(recorded) => recorded,
            Err(error) => return self.store_failure(error),
        };
        let message_id = match settle(event, recorded, completed) {
            Settled::Done(outcome) => return outcome,
            Settled::OutcomeDue(message_id) => message_id,
        };
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
    /// `event_id`: the event's AMQP message id, so an event handled twice answers with the
    /// same answer id (the bot says it once).
    async fn contact(&self, event: &ContactLinkEvent, event_id: Option<&str>) -> Outcome {
        let answer_id = event_id.map_or_else(Uuid::now_v7, |id| {
            Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("herald-answer:{id}").as_bytes(),
            )
        });
        let by = format!("{}:{}", event.address.kind(), event.address.value());
        let linked = async {
            let mut tx = self.pool.begin().await?;
            let Some(redeemed) = link_codes::redeem_by(
                &mut *tx,
                &self.link_key,
                &event.link_code,
                event.channel,
                &by,
            )
            .await?
            else {
                self.answer(&mut tx, event, answer_id, Answer::InvalidCode)
                    .await?;
                tx.commit().await?;
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
            if let Some(reference) = reference_json(event.reference.as_ref()) {
                addresses::set_chat_reference(&mut *tx, address.id, &reference).await?;
            }
            verification::mark_verified(
                &mut tx,
                address.id,
                Proof::Link,
                &format!("{} bot", event.channel),
            )
            .await?;
            self.answer(&mut tx, event, answer_id, Answer::Linked)
                .await?;
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

impl TrackingHandler {
    /// R38: a Teams conversation answered at a new service URL; the addresses that hold it
    /// follow, so proactive messages go where the Bot Framework now takes them.
    async fn seen(&self, event: &ChatSeenEvent) -> Outcome {
        let Address::Teams(chat) = &event.chat else {
            return Outcome::DeadLetter(Rejection::new(
                "invalid",
                format!(
                    "only Teams conversations move; this is a {} address",
                    event.chat.kind()
                ),
            ));
        };
        let moved = async {
            let mut tx = self.pool.begin().await?;
            let moved = addresses::follow_moved_chat(
                &mut tx,
                event.chat.kind(),
                chat.conversation_id(),
                &event.chat.value(),
                reference_json(event.reference.as_ref()).as_ref(),
            )
            .await?;
            tx.commit().await?;
            Ok::<_, StoreError>(moved)
        };
        match moved.await {
            Ok(moved) => {
                if moved.followed + moved.superseded + moved.tickets > 0 {
                    metrics::counter!("herald_router_chat_moves_total")
                        .increment(moved.followed + moved.superseded);
                    tracing::info!(
                        followed = moved.followed,
                        superseded = moved.superseded,
                        tickets = moved.tickets,
                        service_url = chat.service_url(),
                        "a chat moved: its addresses follow"
                    );
                }
                Outcome::Ack
            }
            Err(error) => self.store_failure(error),
        }
    }

    /// Puts what the bot tells the person into the outbox, in `tx`.
    async fn answer(
        &self,
        tx: &mut PgConnection,
        event: &ContactLinkEvent,
        answer_id: Uuid,
        answer: Answer,
    ) -> Result<(), StoreError> {
        let answer = ChatAnswer::new(answer_id, event.address.clone(), answer);
        outbox::enqueue_chat_answer(tx, &self.outcomes.names().events_exchange(), &answer).await
    }

    /// R53: a ticket in the tenant the chat is linked in, a message to the tenant's staff
    /// through the subscription the tenant chose, and the answer to the person; one
    /// transaction. A chat linked to nobody is told to link first.
    async fn support(&self, event: &SupportRequestEvent) -> Outcome {
        let opened = async {
            let mut tx = self.pool.begin().await?;
            let events = self.outcomes.names().events_exchange();
            let kind = event.chat.kind();
            let value = event.chat.value();
            let answer_id = Uuid::new_v5(&event.request_id, b"answer");
            let answer = |answer| ChatAnswer::new(answer_id, event.chat.clone(), answer);
            let Some(chat) = support::linked_chat(&mut *tx, kind, &value).await? else {
                outbox::enqueue_chat_answer(&mut tx, &events, &answer(Answer::NotLinked)).await?;
                tx.commit().await?;
                return Ok::<_, StoreError>(None);
            };
            let (ticket_id, new) = support::open(
                &mut tx,
                support::NewTicket {
                    request_id: event.request_id,
                    chat: &chat,
                    channel: event.channel,
                    chat_kind: kind,
                    chat_value: &value,
                    display_name: event.display_name.as_deref(),
                    body: &event.support_text,
                },
            )
            .await?;
            if !new {
                // A redelivery: the first one told everybody already.
                tx.commit().await?;
                return Ok(Some(ticket_id));
            }
            if let Some(message_id) = self.tell_staff(&mut tx, &chat, ticket_id, event).await? {
                support::set_message(&mut *tx, ticket_id, message_id).await?;
            }
            outbox::enqueue_chat_answer(
                &mut tx,
                &events,
                &answer(Answer::TicketOpened { ticket_id }),
            )
            .await?;
            tx.commit().await?;
            Ok(Some(ticket_id))
        };
        match opened.await {
            Ok(Some(ticket_id)) => {
                metrics::counter!("herald_router_support_requests_total", "result" => "ticket")
                    .increment(1);
                tracing::info!(%ticket_id, channel = %event.channel, "support ticket opened");
                Outcome::Ack
            }
            Ok(None) => {
                metrics::counter!("herald_router_support_requests_total", "result" => "not_linked")
                    .increment(1);
                tracing::info!(channel = %event.channel, "support request from a chat linked to nobody");
                Outcome::Ack
            }
            Err(error) => self.store_failure(error),
        }
    }

    /// The message to the tenant's staff about a new ticket, through the subscription the
    /// tenant chose (its templates get `ticketId`, `ticket`, `text`, `userId`, `channel` and
    /// `displayName`). `None` when the tenant chose none: the ticket is only listed.
    async fn tell_staff(
        &self,
        tx: &mut PgConnection,
        chat: &support::LinkedChat,
        ticket_id: Uuid,
        event: &SupportRequestEvent,
    ) -> Result<Option<Uuid>, StoreError> {
        let Some(subscription) = support::staff_subscription(&mut *tx, chat.tenant_id).await?
        else {
            tracing::info!(%ticket_id, "the tenant chose no subscription for support tickets; the ticket is only listed");
            return Ok(None);
        };
        let invalid = |e: messaging_core::values::InvalidValue| StoreError::Invalid(e.to_string());
        let key = format!("support:{ticket_id}");
        let mut data = serde_json::Map::new();
        for (name, value) in [
            ("ticketId", json!(ticket_id)),
            ("ticket", json!(short_id(&ticket_id))),
            ("text", json!(event.support_text)),
            ("userId", json!(chat.user_external_id)),
            ("channel", json!(event.channel)),
            ("displayName", json!(event.display_name)),
        ] {
            data.insert(name.to_owned(), value);
        }
        let request = NotifyRequest {
            version: EnvelopeVersion,
            tenant: TenantKey::parse(&chat.tenant_key).map_err(invalid)?,
            idempotency_key: Some(IdempotencyKey::parse(&key).map_err(invalid)?),
            to: Recipients::Subscription(
                SubscriptionKey::parse(&subscription.key).map_err(invalid)?,
            ),
            content: Content::Template(TemplateContent {
                subscription: None,
                data,
                locale: None,
            }),
            channels: None,
            mode: None,
            expires_at: None,
        };
        let encoded: Value =
            serde_json::from_slice(&Ingress::Notify(request).encode()).unwrap_or_default();
        let (message, _) = messages::accept(
            tx,
            messages::NewMessage {
                tenant_id: chat.tenant_id,
                idempotency_key: Some(&key),
                source: MessageSource::Event,
                subscription_id: Some(subscription.id),
                request: &encoded,
                exchange: &self.outcomes.names().ingress_exchange(),
                routing_key: "support",
            },
        )
        .await?;
        Ok(Some(message.id))
    }
}

/// A bot's chat reference as stored (`addresses.chat_reference`).
fn reference_json(reference: Option<&ChatReference>) -> Option<Value> {
    reference.and_then(|r| serde_json::to_value(r).ok())
}

/// The attempt a delivery event reports, as the store records it.
fn attempt_of(event: &DeliveryEvent) -> Attempt<'_> {
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
    Attempt {
        delivery_id: event.delivery_id,
        tenant_key: event.tenant.as_str(),
        attempt: i32::try_from(event.attempt).unwrap_or(i32::MAX),
        occurred_at: event.occurred_at,
        result,
    }
}

/// What a recorded delivery event comes to.
enum Settled {
    /// The event's answer, with no outcome to look at.
    Done(Outcome),
    /// The message's outcome may be due now: publish it if so, then ack.
    OutcomeDue(Uuid),
}

/// Counts and logs what recording `event` did, and says what is left to do. `completed`:
/// the record completed the message.
fn settle(event: &DeliveryEvent, recorded: Recorded, completed: bool) -> Settled {
    match recorded {
        Recorded::Unknown => Settled::Done(Outcome::DeadLetter(Rejection::new(
            "unknown_delivery",
            format!(
                "no delivery {} in tenant {}",
                event.delivery_id,
                event.tenant.as_str()
            ),
        ))),
        // Also for stale events: the first copy may have finished the message and died before
        // its outcome went out.
        Recorded::Stale { message_id } => {
            metrics::counter!("herald_router_events_total", "result" => "stale").increment(1);
            Settled::OutcomeDue(message_id)
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
            if completed {
                Settled::OutcomeDue(message_id)
            } else {
                // Not the last delivery to finish: the outcome is not due.
                Settled::Done(Outcome::Ack)
            }
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

    /// Delivery events carry `deliveryId`, contact links `linkCode`, chats seen `seenAt`,
    /// support requests `supportText`, room events `room` and `change`; the reason names what is wrong with
    /// anything else.
    fn decode(&self, body: &[u8]) -> Result<RouterEvent, Rejection> {
        let value: Value = decode_json(body)?;
        let invalid = |e: serde_json::Error| Rejection::new("invalid", e.to_string());
        if let Some(Value::Array(items)) = value.get("events") {
            if items.len() > DeliveryEventBundle::MAX_EVENTS {
                return Err(Rejection::new(
                    "invalid",
                    format!(
                        "a bundle of {} events; at most {}",
                        items.len(),
                        DeliveryEventBundle::MAX_EVENTS
                    ),
                ));
            }
            Ok(RouterEvent::Bundle(
                items
                    .iter()
                    .map(|item| serde_json::from_value(item.clone()).map_err(|_| item.clone()))
                    .collect(),
            ))
        } else if value.get("deliveryId").is_some() {
            serde_json::from_value(value)
                .map(|e| RouterEvent::Delivery(Box::new(e)))
                .map_err(invalid)
        } else if value.get("linkCode").is_some() {
            serde_json::from_value(value)
                .map(|e| RouterEvent::Contact(Box::new(e)))
                .map_err(invalid)
        } else if value.get("seenAt").is_some() {
            serde_json::from_value(value)
                .map(|e| RouterEvent::Seen(Box::new(e)))
                .map_err(invalid)
        } else if value.get("supportText").is_some() {
            serde_json::from_value(value)
                .map(|e| RouterEvent::Support(Box::new(e)))
                .map_err(invalid)
        } else if value.get("room").is_some() && value.get("change").is_some() {
            serde_json::from_value(value)
                .map(|e| RouterEvent::Room(Box::new(e)))
                .map_err(invalid)
        } else {
            Err(Rejection::new(
                "unknown_event",
                "neither a delivery event (no deliveryId), a contact link (no linkCode), a chat seen (no seenAt), a support request (no supportText) nor a room event (no room and change)",
            ))
        }
    }

    async fn handle(&self, event: RouterEvent, ctx: &Context) -> Outcome {
        // A forged delivery event would change delivery and address states; a forged contact
        // link would make an attacker's chat someone's address.
        if let Some(refused) = self.producers.refuse_event(ctx) {
            return refused;
        }
        let outcome = match event {
            RouterEvent::Delivery(event) => self.delivery_event(*event).await,
            RouterEvent::Bundle(items) => self.bundle(items, ctx).await,
            other => match self.turn().await {
                Err(later) => later,
                Ok(_turn) => match other {
                    RouterEvent::Contact(event) => {
                        let span = tracing::info_span!("contact_link", channel = %event.channel);
                        self.contact(&event, ctx.message_id.as_deref())
                            .instrument(span)
                            .await
                    }
                    RouterEvent::Seen(event) => {
                        let span = tracing::info_span!("chat_seen", channel = %event.channel);
                        self.seen(&event).instrument(span).await
                    }
                    RouterEvent::Support(event) => {
                        let span = tracing::info_span!("support_request", channel = %event.channel, request_id = %event.request_id);
                        self.support(&event).instrument(span).await
                    }
                    RouterEvent::Room(event) => {
                        let span = tracing::info_span!("room_event", room = %event.room, event_id = %event.event_id);
                        self.rooms.handle(&event).instrument(span).await
                    }
                    RouterEvent::Delivery(event) => self.delivery(&event).await,
                    RouterEvent::Bundle(items) => self.bundle(items, ctx).await,
                },
            },
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
