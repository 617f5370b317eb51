//! The ingress consumer: every message on `{p}.router.ingress`, as a consumer-runner
//! [`Handler`].
//!
//! - Undecodable messages are dead-lettered by the runner with the decoder's reason (R43).
//! - A request for an unknown tenant is dead-lettered (`unknown_tenant`): there is no tenant to
//!   record it in. A request that breaks a rule serde cannot express is dead-lettered
//!   (`invalid`), as the API would refuse it with 422.
//! - Everything else becomes a `messages` row first: the API's own row (found by the AMQP
//!   `message_id`), or a new one. Its idempotency key is unique per tenant, so a repeated
//!   request finds the first message and publishes nothing new (R44).
//! - A request that cannot be fanned out for a reason the producer must fix (unknown or
//!   disabled subscription, a subscription without templates) fails its message with an
//!   `error_code`, and is acked, not dead-lettered: the message row is where the producer
//!   looks (`GET /messages/{id}`, R4, R13), and a dead letter would hold the same request a
//!   second time, in a place the tenant cannot read.
//! - Database or broker trouble is retried through the delay queues; the pass after it
//!   finds the rows the earlier one wrote.

use std::sync::Arc;

use herald_runtime::amqp::{Context, Handler, Origin, Outcome, Rejection};
use herald_storage::event_bindings;
use herald_storage::lease;
use herald_storage::messages::{self, NewRouterMessage, RouterMessage};
use herald_storage::subscriptions::{self, Subscription};
use herald_storage::templates;
use herald_storage::tenants::{self, Tenant};
use herald_storage::{PgPool, StoreError};
use messaging_core::ingress::{
    Content, DeliveryMode, DirectContent, EventTrigger, Ingress, LegacyMessage, NotifyRequest,
    Recipients,
};
use messaging_core::job::RenderedContent;
use messaging_core::values::SubscriptionKey;
use messaging_core::{EnvelopeVersion, FailureClass, MessageSource, MessageStatus};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::{LegacyDestination, RetryPolicy};
use crate::fanout::{Audience, Body, FanOut, FanOutError, Grouped, GroupedRequest, Plan, Summary};
use crate::outcome::{OutcomeError, Outcomes};
use crate::producers::ProducerPolicy;
use crate::render::Templates;
use herald_runtime::batching::{BatchSettings, Batcher};

pub struct IngressHandler {
    pool: PgPool,
    fanout: FanOut,
    /// Where legacy messages go (R41); `None` dead-letters them with a reason.
    legacy: Option<LegacyDestination>,
    retry: RetryPolicy,
    /// Publishes a message's outcome when fan-out finishes it (R4): a message that failed as
    /// a whole, or whose recipients all failed at once (no address). `None` in tests that
    /// look at fan-out alone.
    outcomes: Option<Outcomes>,
    tenants: TenantCache,
    /// Which tenant a producer may make requests for (issue #17).
    producers: Arc<ProducerPolicy>,
    /// Small direct requests go here and are fanned out in groups (issue #16); `None`: each
    /// alone.
    grouped: Option<Batcher<GroupedRequest, Grouped>>,
    /// Requests fanned out alone at once, at most: each holds up to three database
    /// connections (its lease, the batch being written, the mark of the batch published).
    alone: Arc<Semaphore>,
}

/// Tenants by key, for a short while: every request names its tenant, and tenants are
/// created and deleted rarely. A deleted tenant's requests then fail on its foreign key
/// until the entry expires or such a failure evicts it; unknown keys are never cached, so a
/// new tenant works at once.
struct TenantCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Tenant, std::time::Instant)>>,
}

impl TenantCache {
    const TTL: std::time::Duration = std::time::Duration::from_secs(30);
    /// More keys than this (a producer inventing tenants) start the cache over.
    const MAX: usize = 10_000;

    fn get(&self, key: &str) -> Option<Tenant> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(tenant, _)| tenant.clone())
    }

    fn forget(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(key);
    }

    fn put(&self, tenant: Tenant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= Self::MAX {
            entries.clear();
        }
        entries.insert(tenant.key.clone(), (tenant, std::time::Instant::now()));
    }
}

/// Why a request could not be handled now.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    FanOut(#[from] FanOutError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outcome(#[from] OutcomeError),
}

/// The message a request belongs to.
struct Found {
    message: RouterMessage,
    /// The row is another request's, found by the idempotency key only: this one is a
    /// repeat and must not continue (or mix its own recipients into) that message's fan-out.
    other_request: bool,
}

/// What travels with one request from its message row to the end of its fan-out.
struct Work<'a> {
    tenant: &'a Tenant,
    request: &'a Request<'a>,
    /// The subscription the request names (to notify, or for its templates), and the row
    /// found for it: `None` when the tenant has no such subscription.
    subscription_key: Option<&'a SubscriptionKey>,
    subscription: Option<&'a Subscription>,
}

/// One request to turn into a message: the notify request and how to store it.
struct Request<'a> {
    notify: NotifyRequest,
    source: MessageSource,
    /// What is stored as the message's request: what the producer sent.
    original: &'a Value,
    /// The key the message row is unique by in its tenant.
    idempotency_key: Option<String>,
    /// Told apart from the AMQP `message_id`, so each subscription an event fires gets its own
    /// message, and a redelivery finds each again.
    discriminator: Option<&'a str>,
}

impl IngressHandler {
    pub fn new(
        pool: PgPool,
        fanout: FanOut,
        legacy: Option<LegacyDestination>,
        retry: impl Into<RetryPolicy>,
    ) -> Self {
        IngressHandler {
            fanout,
            legacy,
            retry: retry.into(),
            outcomes: None,
            tenants: TenantCache {
                entries: Default::default(),
            },
            producers: Arc::new(ProducerPolicy::new(pool.clone(), false)),
            grouped: None,
            alone: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            pool,
        }
    }

    /// Fans out small direct requests in groups ([`crate::fanout::Grouped`]).
    pub fn with_grouping(mut self, settings: BatchSettings) -> Self {
        let fanout = self.fanout.clone();
        let outcomes = self.outcomes.clone();
        self.grouped = Some(Batcher::spawn(settings, move |requests| {
            let fanout = fanout.clone();
            let outcomes = outcomes.clone();
            async move {
                let mut done = fanout.grouped(requests).await;
                if let Some(outcomes) = outcomes {
                    publish_final(&outcomes, &mut done).await;
                }
                done
            }
        }));
        self
    }

    /// At most `n` requests fanned out alone at once (the rest wait for a turn).
    pub fn with_alone_limit(mut self, n: usize) -> Self {
        self.alone = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// Holds producers to their tenants with this policy (the default: the open mode).
    pub fn with_producers(mut self, producers: Arc<ProducerPolicy>) -> Self {
        self.producers = producers;
        self
    }

    pub fn with_outcomes(mut self, outcomes: Outcomes) -> Self {
        self.outcomes = Some(outcomes);
        self
    }

    /// The outcome, when the message is final; also on repeats, in case the first copy died
    /// between finishing the message and publishing it.
    async fn publish_outcome(&self, message_id: uuid::Uuid) -> Result<(), RouteError> {
        if let Some(outcomes) = &self.outcomes {
            outcomes.publish_if_due(message_id).await?;
        }
        Ok(())
    }

    async fn route(&self, ingress: Ingress, ctx: &Context) -> Result<Outcome, RouteError> {
        let original: Value = serde_json::from_slice(&ingress.encode()).unwrap_or(Value::Null);
        match ingress {
            Ingress::Notify(notify) => {
                let idempotency_key = notify.idempotency_key.as_ref().map(|k| k.to_string());
                let request = Request {
                    notify,
                    source: MessageSource::Amqp,
                    original: &original,
                    idempotency_key,
                    discriminator: None,
                };
                self.notify(request, ctx).await
            }
            Ingress::Event(event) => self.event(event, &original, ctx).await,
            Ingress::Legacy(legacy) => self.legacy(legacy, &original, ctx).await,
        }
    }

    async fn notify(&self, request: Request<'_>, ctx: &Context) -> Result<Outcome, RouteError> {
        if let Err(invalid) = request.notify.validate() {
            return Ok(dead_letter("invalid", invalid.to_string()));
        }
        let Some(tenant) = self.tenant(request.notify.tenant.as_str()).await? else {
            return Ok(dead_letter(
                "unknown_tenant",
                format!("no tenant {:?}", request.notify.tenant.as_str()),
            ));
        };
        if let Some(refused) = self.producers.refuse_request(&tenant, ctx).await? {
            return Ok(refused);
        }
        self.notify_in(&tenant, request, ctx).await
    }

    async fn notify_in(
        &self,
        tenant: &Tenant,
        request: Request<'_>,
        ctx: &Context,
    ) -> Result<Outcome, RouteError> {
        if let Some(reply_to) = ctx.reply_to.as_deref().filter(|r| !r.is_empty())
            && !self.fanout.names().is_reply_queue_of(&tenant.key, reply_to)
        {
            return Ok(dead_letter(
                "reply_to_not_allowed",
                format!(
                    "reply_to {reply_to:?} is not one of the tenant's reply queues: name one that starts with {:?}",
                    self.fanout.names().reply_queue_prefix(&tenant.key)
                ),
            ));
        }
        let span = tracing::info_span!(
            "fanout",
            tenant = %tenant.key,
            source = request.source.as_str(),
            message_id = tracing::field::Empty,
        );
        async {
            let notify = &request.notify;
            // Whose templates, or whose registrations: looked up before the message is stored,
            // so the message row names its subscription.
            let subscription_key = match (&notify.to, &notify.content) {
                (Recipients::Subscription(key), _) => Some(key),
                (_, Content::Template(t)) => t.subscription.as_ref(),
                _ => None,
            };
            let subscription = match subscription_key {
                Some(key) => self.subscription(tenant.id, key).await?,
                None => None,
            };
            // R16: system subscriptions are Herald's and the global admin's; a tenant's
            // producer neither triggers them nor borrows their templates.
            if let (Some(s), Origin::Producer(user)) = (&subscription, &ctx.origin)
                && s.system
            {
                return Ok(dead_letter(
                    "system_subscription",
                    format!(
                        "{} is a system subscription; broker user {user:?} may not use it",
                        s.key
                    ),
                ));
            }
            if subscription.is_none()
                && let Some(done) = self.try_grouped(tenant, &request, ctx).await
            {
                return done;
            }
            // Closed only when the handler is dropped, which shutdown does.
            let Ok(_turn) = self.alone.acquire().await else {
                return Ok(Outcome::Defer {
                    after: self.retry.base,
                });
            };
            let found = self
                .find_or_create(tenant, &request, subscription.as_ref(), ctx)
                .await;
            let Found {
                message,
                other_request,
            } = match found {
                Ok(found) => found,
                Err(error) => {
                    // A tenant deleted and created again under the same key fails here on its
                    // old id until the cache forgets it.
                    self.tenants.forget(&tenant.key);
                    return Err(error.into());
                }
            };
            tracing::Span::current().record("message_id", tracing::field::display(message.id));
            if message.status != MessageStatus::Accepted || other_request {
                return self.repeated(&message, request.source).await;
            }
            let work = Work {
                tenant,
                request: &request,
                subscription_key,
                subscription: subscription.as_ref(),
            };
            let result = self.leased(&work, &message).await;
            match result {
                Err(error) if ctx.is_last_attempt() => self.give_up(&message, ctx, error).await,
                other => other,
            }
        }
        .instrument(span)
        .await
    }

    /// Hands a request that fits to the group being formed; `None` when it is to be handled
    /// alone (it does not fit, there is no grouping, or the group left it).
    async fn try_grouped(
        &self,
        tenant: &Tenant,
        request: &Request<'_>,
        ctx: &Context,
    ) -> Option<Result<Outcome, RouteError>> {
        let grouped = self.grouped.as_ref()?;
        if !GroupedRequest::fits(&request.notify) {
            return None;
        }
        let item = GroupedRequest {
            tenant_id: tenant.id,
            tenant: request.notify.tenant.clone(),
            message_id: first_id(tenant, request, ctx).unwrap_or_else(Uuid::now_v7),
            idempotency_key: request.idempotency_key.clone(),
            source: request.source,
            original: request.original.clone(),
            reply_to: ctx.reply_to.clone(),
            correlation_id: ctx.correlation_id.clone(),
            notify: request.notify.clone(),
        };
        let Grouped::Done {
            message_id,
            summary,
            outcome_sent,
        } = grouped.submit(item).await?
        else {
            return None;
        };
        tracing::Span::current().record("message_id", tracing::field::display(message_id));
        Some(
            self.fanned_out(message_id, request.source, &summary, !outcome_sent)
                .await,
        )
    }

    /// The end of a fan-out, alone or in a group: logged and counted, and the outcome
    /// published when the message is already final and `outcome_due` (its group did not
    /// publish it).
    async fn fanned_out(
        &self,
        message_id: Uuid,
        source: MessageSource,
        summary: &Summary,
        outcome_due: bool,
    ) -> Result<Outcome, RouteError> {
        tracing::info!(
            new_deliveries = summary.new_rows,
            jobs = summary.published,
            failed = summary.failed,
            status = %summary.status,
            "fanned out"
        );
        count(source, summary.status.as_str());
        // A message still `fanned_out` gets its outcome from tracking, when its last delivery
        // is final.
        if outcome_due && summary.status != MessageStatus::FannedOut {
            self.publish_outcome(message_id).await?;
        }
        Ok(Outcome::Ack)
    }

    /// A request whose message another copy handled (or is handling under a key it shares).
    async fn repeated(
        &self,
        message: &RouterMessage,
        source: MessageSource,
    ) -> Result<Outcome, RouteError> {
        tracing::info!(status = %message.status, "repeated request; its message is handled already");
        count(source, "repeated");
        self.publish_outcome(message.id).await?;
        Ok(Outcome::Ack)
    }

    /// Fans out the message under its lease: one pass at a time per message.
    async fn leased(
        &self,
        work: &Work<'_>,
        message: &RouterMessage,
    ) -> Result<Outcome, RouteError> {
        let request = work.request;
        let Some((mut lease, check)) = lease::try_lease(&self.pool, message.id).await? else {
            // The pass that holds it finishes the message, or dies and frees it; either way
            // this copy comes back later and finds out which.
            tracing::info!("another pass is fanning out this message; looking again later");
            count(request.source, "busy");
            return Ok(Outcome::Defer {
                after: self.retry.base,
            });
        };
        // Whoever held the lease before may have finished the message meanwhile, or died
        // half-way (even through a message this request created: a copy that found it can
        // have taken the lease first), so the row is read again under the lease.
        let result = match lease.message(work.tenant.id).await {
            Ok(Some(leased)) if leased.message.status == MessageStatus::Accepted => {
                self.fan_out(work, &leased.message, leased.has_deliveries, &check)
                    .await
            }
            Ok(Some(leased)) => self.repeated(&leased.message, request.source).await,
            Ok(None) => Err(StoreError::NotFound.into()),
            Err(error) => Err(error.into()),
        };
        // The work is done (or failed) either way; a lease that cannot be given back is
        // closed with its connection, which frees the lock as well.
        if let Err(error) = lease.release().await {
            tracing::warn!(%error, "cannot release the fan-out lease; its connection is closed instead");
        }
        result
    }

    /// The last attempt failed too: the message records why before the runner dead-letters
    /// the request, so the producer learns it from `GET /messages/{id}` and the outcome rather
    /// than waiting for ever (R4 c: the service was unhealthy). When the database is what
    /// failed, this fails as well and the dead letter is all that is left. The error's detail
    /// (hosts, SQL states) goes to the log, not to the tenant.
    async fn give_up(
        &self,
        message: &RouterMessage,
        ctx: &Context,
        error: RouteError,
    ) -> Result<Outcome, RouteError> {
        let reason = format!(
            "the router could not finish this message in {} attempts: its database or broker was unavailable",
            ctx.attempt
        );
        let recorded = async {
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            messages::fail(
                &mut conn,
                message.id,
                FailureClass::Unhealthy,
                "retries_exhausted",
                &reason,
            )
            .await?;
            self.publish_outcome(message.id).await
        }
        .await;
        if let Err(also) = recorded {
            tracing::error!(%error, %also, "cannot record the give-up on the message");
        }
        Err(error)
    }

    /// Fans out an accepted message, holding its lease. `resumed`: an earlier pass wrote
    /// delivery rows.
    async fn fan_out(
        &self,
        work: &Work<'_>,
        message: &RouterMessage,
        resumed: bool,
        lease: &lease::LeaseCheck,
    ) -> Result<Outcome, RouteError> {
        let Work {
            tenant,
            request,
            subscription_key,
            subscription,
        } = *work;
        let notify = &request.notify;
        if let Some(key) = subscription_key {
            let refusal = match subscription {
                None => Some((
                    "unknown_subscription",
                    format!("tenant {} has no subscription {key}", tenant.key),
                )),
                Some(s) if !s.enabled => Some((
                    "subscription_disabled",
                    format!("subscription {key} is disabled; enable it to trigger it"),
                )),
                Some(_) => None,
            };
            if let Some((code, reason)) = refusal {
                return self.fail(message, request.source, code, &reason).await;
            }
        }
        let body = match &notify.content {
            Content::Direct(direct) => Body::Direct(Arc::new(RenderedContent {
                subject: direct.subject.clone(),
                text: direct.body.clone(),
                html: direct.html.clone(),
            })),
            Content::Template(content) => {
                // The key was looked up above; a template without one never validates.
                let Some(subscription) = subscription else {
                    return Ok(dead_letter("invalid", "a template needs a subscription"));
                };
                let rows =
                    templates::for_subscription(&self.pool, tenant.id, subscription.id).await?;
                let templates = Templates::new(rows, &subscription.fallback_locale, &content.data);
                if templates.is_empty() {
                    let reason = format!(
                        "subscription {} has no template; add one for a channel and locale (or for any channel) to send it",
                        subscription.key
                    );
                    return self
                        .fail(message, request.source, "no_template", &reason)
                        .await;
                }
                Body::Templates(Box::new(templates))
            }
        };
        let audience = match &notify.to {
            Recipients::Users(users) => Audience::Users(users.clone()),
            Recipients::Subscription(_) => match subscription {
                Some(s) => Audience::Subscription(s.id),
                None => return Ok(dead_letter("invalid", "no subscription to notify")),
            },
        };
        let summary = self
            .fanout
            .run(Plan {
                tenant_id: tenant.id,
                tenant: &notify.tenant,
                message_id: message.id,
                subscription_id: subscription.map(|s| s.id),
                request: notify,
                audience,
                body,
                resumed,
                lease: Some(lease),
            })
            .await?;
        self.fanned_out(message.id, request.source, &summary, true)
            .await
    }

    /// An event fires every subscription bound to its type (R14), each as a message of its
    /// own with the event's data as template data.
    async fn event(
        &self,
        event: EventTrigger,
        original: &Value,
        ctx: &Context,
    ) -> Result<Outcome, RouteError> {
        let Some(tenant) = self.tenant(event.tenant.as_str()).await? else {
            return Ok(dead_letter(
                "unknown_tenant",
                format!("no tenant {:?}", event.tenant.as_str()),
            ));
        };
        if let Some(refused) = self.producers.refuse_request(&tenant, ctx).await? {
            return Ok(refused);
        }
        let bound = event_bindings::subscriptions_for_event(
            &self.pool,
            tenant.id,
            event.event_type.as_str(),
        )
        .await?;
        if bound.is_empty() {
            // Not an error: events are published whether or not anyone subscribed to them.
            tracing::info!(tenant = %tenant.key, event_type = event.event_type.as_str(), "no subscription is bound to this event type");
            count(MessageSource::Event, "unbound");
            return Ok(Outcome::Ack);
        }
        for subscription in bound {
            let Ok(key) = SubscriptionKey::parse(&subscription.key) else {
                continue;
            };
            let notify = NotifyRequest {
                version: EnvelopeVersion,
                tenant: event.tenant.clone(),
                idempotency_key: event.idempotency_key.clone(),
                to: Recipients::Subscription(key),
                content: Content::Template(messaging_core::ingress::TemplateContent {
                    subscription: None,
                    data: event.data.clone(),
                    locale: None,
                }),
                channels: None,
                mode: None,
                expires_at: None,
            };
            // One key per subscription: the event's key alone would make the second
            // subscription's message a repeat of the first.
            let idempotency_key = event
                .idempotency_key
                .as_ref()
                .map(|k| format!("event:{k}:{}", subscription.key));
            let request = Request {
                notify,
                source: MessageSource::Event,
                original,
                idempotency_key,
                discriminator: Some(&subscription.key),
            };
            let outcome = self.notify_in(&tenant, request, ctx).await?;
            if outcome != Outcome::Ack {
                return Ok(outcome);
            }
        }
        Ok(Outcome::Ack)
    }

    /// The legacy format (R41): the configured person's addresses on the message's channel.
    async fn legacy(
        &self,
        legacy: LegacyMessage,
        original: &Value,
        ctx: &Context,
    ) -> Result<Outcome, RouteError> {
        let Some(destination) = &self.legacy else {
            return Ok(dead_letter(
                "legacy_not_configured",
                "legacy messages need a default destination: set HERALD_ROUTER__LEGACY_TENANT and HERALD_ROUTER__LEGACY_USER",
            ));
        };
        let Some(tenant) = self.tenant(destination.tenant.as_str()).await? else {
            return Ok(dead_letter(
                "legacy_not_configured",
                format!(
                    "the legacy tenant {:?} (router.legacy_tenant) does not exist",
                    destination.tenant.as_str()
                ),
            ));
        };
        if let Some(refused) = self.producers.refuse_request(&tenant, ctx).await? {
            return Ok(refused);
        }
        let notify = NotifyRequest {
            version: EnvelopeVersion,
            tenant: destination.tenant.clone(),
            idempotency_key: None,
            to: Recipients::Users(vec![destination.user.clone()]),
            content: Content::Direct(DirectContent {
                subject: legacy.title.clone(),
                body: legacy.body.clone(),
                html: None,
            }),
            channels: Some(vec![legacy.sender]),
            mode: Some(DeliveryMode::All),
            expires_at: None,
        };
        if let Err(invalid) = notify.validate() {
            return Ok(dead_letter("invalid", invalid.to_string()));
        }
        let request = Request {
            notify,
            source: MessageSource::Legacy,
            original,
            idempotency_key: None,
            discriminator: None,
        };
        self.notify_in(&tenant, request, ctx).await
    }

    async fn tenant(&self, key: &str) -> Result<Option<Tenant>, StoreError> {
        if let Some(tenant) = self.tenants.get(key) {
            return Ok(Some(tenant));
        }
        match tenants::by_key(&self.pool, key).await {
            Ok(tenant) => {
                self.tenants.put(tenant.clone());
                Ok(Some(tenant))
            }
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn subscription(
        &self,
        tenant_id: Uuid,
        key: &SubscriptionKey,
    ) -> Result<Option<Subscription>, StoreError> {
        match subscriptions::by_key(&self.pool, tenant_id, key.as_str()).await {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The API's row when the AMQP `message_id` names one of this tenant's messages;
    /// otherwise the row of an earlier delivery of the same request, or of the same
    /// idempotency key; otherwise a new row.
    async fn find_or_create(
        &self,
        tenant: &Tenant,
        request: &Request<'_>,
        subscription: Option<&Subscription>,
        ctx: &Context,
    ) -> Result<Found, StoreError> {
        let first = first_id(tenant, request, ctx);
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        let new = |id| NewRouterMessage {
            id,
            tenant_id: tenant.id,
            idempotency_key: request.idempotency_key.as_deref(),
            source: request.source,
            subscription_id: subscription.map(|s| s.id),
            request: request.original,
            reply_to: ctx.reply_to.as_deref(),
            correlation_id: ctx.correlation_id.as_deref(),
        };
        let id = first.unwrap_or_else(Uuid::now_v7);
        let (message, id) = match messages::insert_or_find(&mut conn, new(id)).await {
            Ok((message, _)) => (message, id),
            // The producer's id is another tenant's message: use one derived for this tenant.
            Err(StoreError::Conflict(_)) => {
                let id = derived_id(tenant, request, ctx, "own").unwrap_or_else(Uuid::now_v7);
                let (message, _) = messages::insert_or_find(&mut conn, new(id)).await?;
                (message, id)
            }
            Err(e) => return Err(e),
        };
        Ok(Found {
            other_request: message.id != id,
            message,
        })
    }

    async fn fail(
        &self,
        message: &RouterMessage,
        source: MessageSource,
        code: &str,
        reason: &str,
    ) -> Result<Outcome, RouteError> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        let status =
            messages::fail(&mut conn, message.id, FailureClass::Permanent, code, reason).await?;
        drop(conn);
        tracing::warn!(code, reason, %status, "message refused");
        count(
            source,
            if status == MessageStatus::Failed {
                "failed"
            } else {
                "refused_in_part"
            },
        );
        self.publish_outcome(message.id).await?;
        Ok(Outcome::Ack)
    }
}

impl Handler for IngressHandler {
    type Message = Ingress;

    fn decode(&self, body: &[u8]) -> Result<Ingress, Rejection> {
        Ingress::decode(body).map_err(|e| Rejection::new(e.code(), e.to_string()))
    }

    async fn handle(&self, ingress: Ingress, ctx: &Context) -> Outcome {
        match self.route(ingress, ctx).await {
            Ok(outcome) => outcome,
            // Data the database refuses is refused the same way on every attempt.
            Err(RouteError::Store(StoreError::Invalid(rule))) => dead_letter(
                "invalid",
                format!("the request breaks a rule of the data model ({rule})"),
            ),
            Err(error) => {
                tracing::warn!(%error, "cannot fan out now; retrying");
                metrics::counter!("herald_router_requests_total", "source" => "any", "result" => "retry")
                    .increment(1);
                Outcome::Retry {
                    after: self.retry.after(ctx.attempt),
                    reason: error.to_string(),
                }
            }
        }
    }
}

/// The outcomes of a group's messages that were final when the group ended them (the
/// sender reported every delivery before the fan-out was marked done), in one publish: one
/// per message would cost four round trips each. The messages whose outcome this could not
/// publish are left to their handlers, which try again one by one.
async fn publish_final(outcomes: &Outcomes, done: &mut [Grouped]) {
    let finals: Vec<Uuid> = done
        .iter()
        .filter_map(|g| match g {
            Grouped::Done {
                message_id,
                summary,
                ..
            } if summary.status != MessageStatus::FannedOut => Some(*message_id),
            _ => None,
        })
        .collect();
    if finals.is_empty() {
        return;
    }
    if let Err(error) = outcomes.publish_due(&finals).await {
        tracing::warn!(%error, messages = finals.len(), "cannot publish a group's outcomes; each is tried alone");
        return;
    }
    for g in done.iter_mut() {
        if let Grouped::Done {
            message_id,
            outcome_sent,
            ..
        } = g
            && finals.contains(message_id)
        {
            *outcome_sent = true;
        }
    }
}

/// The id a request's message gets. A producer's UUID message id becomes the message id, so
/// the id `herald publish` prints is the one `GET /messages/{id}` knows (and the API's own
/// row, stored under that id before it was published, is found by it). Otherwise the id is
/// derived from the AMQP id within the tenant, so a redelivery finds its row again. Without
/// any AMQP id (`None`) only the idempotency key can tell a repeat.
fn first_id(tenant: &Tenant, request: &Request<'_>, ctx: &Context) -> Option<Uuid> {
    let amqp_id = ctx.message_id.as_deref().filter(|id| !id.is_empty());
    match (
        amqp_id.and_then(|id| Uuid::parse_str(id).ok()),
        request.discriminator,
    ) {
        (Some(id), None) => Some(id),
        _ => derived_id(tenant, request, ctx, "id"),
    }
}

/// An id derived from the AMQP id within the tenant (`salt` tells the uses apart).
fn derived_id(tenant: &Tenant, request: &Request<'_>, ctx: &Context, salt: &str) -> Option<Uuid> {
    let amqp_id = ctx.message_id.as_deref().filter(|id| !id.is_empty())?;
    let name = format!("{amqp_id}/{}/{salt}", request.discriminator.unwrap_or(""));
    Some(Uuid::new_v5(&tenant.id, name.as_bytes()))
}

fn dead_letter(code: &str, reason: impl Into<String>) -> Outcome {
    metrics::counter!("herald_router_requests_total", "source" => "any", "result" => "dead_letter")
        .increment(1);
    Outcome::DeadLetter(Rejection::new(code, reason))
}

/// `herald_router_requests_total{source, result}`: result is `fanned_out`, `completed`,
/// `failed` (the message records why), `repeated`, `unbound` (an event nobody listens to),
/// `dead_letter` or `retry`.
fn count(source: MessageSource, result: &str) {
    metrics::counter!("herald_router_requests_total", "source" => source.as_str(), "result" => result.to_owned())
        .increment(1);
}
