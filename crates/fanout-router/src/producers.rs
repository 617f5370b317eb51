//! Who may publish what on the broker (issue #17). A producer speaks for the one tenant its
//! broker user is bound to (`broker_producers`, managed through the API); delivery, contact
//! and room events come only from Herald's own services.
//!
//! The runtime tells who published a message ([`Origin`]): RabbitMQ checks the `user_id`
//! property against the publishing connection's user, and a retry keeps its first
//! publisher. A message without `user_id` is taken as before in the open mode (the default,
//! for a broker on loopback) and dead-lettered in the strict mode (`router.strict_producers`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_runtime::amqp::{Context, Origin, Outcome, Rejection};
use herald_storage::tenants::Tenant;
use herald_storage::{PgPool, StoreError, producers};
use uuid::Uuid;

/// Bindings are looked up at most this often per user: a binding removed through the API
/// stops working within this time.
const TTL: Duration = Duration::from_secs(10);
/// More users than this (someone inventing broker users) start the cache over.
const MAX: usize = 10_000;

pub struct ProducerPolicy {
    pool: PgPool,
    strict: bool,
    bindings: Mutex<HashMap<String, (Option<Uuid>, Instant)>>,
}

impl ProducerPolicy {
    pub fn new(pool: PgPool, strict: bool) -> Self {
        ProducerPolicy {
            pool,
            strict,
            bindings: Mutex::default(),
        }
    }

    pub fn strict(&self) -> bool {
        self.strict
    }

    /// `Some(dead letter)` when the message's publisher may not make requests for `tenant`.
    pub async fn refuse_request(
        &self,
        tenant: &Tenant,
        ctx: &Context,
    ) -> Result<Option<Outcome>, StoreError> {
        let producer = match &ctx.origin {
            // The API's outbox relay (which checked the caller's tenant), the scheduler.
            Origin::Service(_) => return Ok(None),
            Origin::Anonymous if self.strict => {
                return Ok(Some(refuse(
                    "no_user_id",
                    "the message has no user_id; this Herald takes requests only from broker users bound to a tenant",
                )));
            }
            Origin::Anonymous => return Ok(None),
            Origin::Producer(user) => user,
        };
        match self.tenant_of(producer).await? {
            Some(bound) if bound == tenant.id => Ok(None),
            Some(_) => Ok(Some(refuse(
                "tenant_mismatch",
                format!(
                    "broker user {producer:?} publishes for another tenant, not {:?}",
                    tenant.key
                ),
            ))),
            None if self.strict => Ok(Some(refuse(
                "unknown_producer",
                format!(
                    "broker user {producer:?} is bound to no tenant (PUT /tenants/{{tenant}}/broker-producers/{{user}})"
                ),
            ))),
            None => Ok(None),
        }
    }

    /// `Some(dead letter)` unless one of Herald's services published this event: a delivery
    /// event changes delivery and address states, a contact link makes a chat someone's
    /// address.
    pub fn refuse_event(&self, ctx: &Context) -> Option<Outcome> {
        match &ctx.origin {
            Origin::Service(_) => None,
            Origin::Anonymous if !self.strict => None,
            Origin::Anonymous => Some(refuse(
                "no_user_id",
                "the event has no user_id; events are taken only from Herald's service users",
            )),
            Origin::Producer(user) => Some(refuse(
                "untrusted_publisher",
                format!(
                    "broker user {user:?} is not one of Herald's service users (amqp.service_users); only they publish events"
                ),
            )),
        }
    }

    async fn tenant_of(&self, user: &str) -> Result<Option<Uuid>, StoreError> {
        {
            let bindings = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((tenant, at)) = bindings.get(user)
                && at.elapsed() < TTL
            {
                return Ok(*tenant);
            }
        }
        let tenant = producers::tenant_of(&self.pool, user).await?;
        let mut bindings = self.bindings.lock().unwrap_or_else(|e| e.into_inner());
        if bindings.len() >= MAX {
            bindings.clear();
        }
        bindings.insert(user.to_owned(), (tenant, Instant::now()));
        Ok(tenant)
    }
}

fn refuse(code: &str, reason: impl Into<String>) -> Outcome {
    let rejection = Rejection::new(code, reason);
    metrics::counter!("herald_router_refused_publishers_total", "code" => rejection.code.clone())
        .increment(1);
    tracing::warn!(code = %rejection.code, reason = %rejection.reason, "publisher refused");
    Outcome::DeadLetter(rejection)
}
