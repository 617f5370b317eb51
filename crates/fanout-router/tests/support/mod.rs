//! The router's test harness: a database of the test's own (`#[sqlx::test]`), the real broker
//! under a fresh prefix, the ingress handler driven one message at a time, and seed helpers.

#![allow(dead_code)] // Each test file uses a different part.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fanout_router::config::LegacyDestination;
use fanout_router::fanout::FanOut;
use fanout_router::ingress::IngressHandler;
use herald_runtime::amqp::trace::TraceContext;
use herald_runtime::amqp::{Broker, Context, Handler, Outcome, Publisher, Topology};
use herald_runtime::config::{AmqpConfig, Secret};
use herald_storage::addresses::{self, NewAddress};
use herald_storage::subscriptions::{self, NewSubscription};
use herald_storage::{tenants, users};
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use messaging_core::Channel;
use messaging_core::job::{SendJob, SendJobBundle};
use messaging_core::topology::Names;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub struct Harness {
    pub pool: PgPool,
    topology: Topology,
    pub names: Names,
    pub amqp: AmqpConfig,
    pub inspector: Inspector,
    pub handler: IngressHandler,
    pub publisher: Publisher,
    pub tenant_id: Uuid,
}

/// Broker settings for a test: its own prefix, quick retries and reconnects.
pub fn amqp_config(test: &str) -> AmqpConfig {
    AmqpConfig {
        url: Secret::new(amqp_url()),
        prefix: unique_prefix(test),
        delays_ms: vec![100, 300, 1_000],
        reconnect_max_ms: 1_000,
        publish_timeout_ms: 20_000,
        ..AmqpConfig::default()
    }
}

impl Harness {
    pub async fn new(pool: PgPool, test: &str) -> Harness {
        Self::with(pool, test, 1000, None).await
    }

    pub async fn with(
        pool: PgPool,
        test: &str,
        batch_size: usize,
        legacy: Option<LegacyDestination>,
    ) -> Harness {
        herald_runtime::install_crypto_provider();
        let amqp = amqp_config(test);
        let topology = Topology::from_config(&amqp);
        let names = topology.names().clone();
        let inspector = Inspector::connect().await;
        topology
            .declare(inspector.connection())
            .await
            .expect("declare the topology");
        let publisher = Publisher::new(Broker::new(amqp.clone(), "test-router"), "jobs");
        let fanout = FanOut::new(pool.clone(), publisher.clone(), names.clone(), batch_size);
        let handler = IngressHandler::new(pool.clone(), fanout, legacy, Duration::from_secs(1));
        let tenant_id = tenants::create(&pool, "acme", "Acme")
            .await
            .expect("tenant")
            .id;
        Harness {
            pool,
            topology,
            names,
            amqp,
            inspector,
            handler,
            publisher,
            tenant_id,
        }
    }

    /// The same harness with producers held to their tenants (`strict`: no `user_id`, no
    /// request).
    pub fn with_producers(self, strict: bool) -> Harness {
        let policy = std::sync::Arc::new(fanout_router::producers::ProducerPolicy::new(
            self.pool.clone(),
            strict,
        ));
        Harness {
            handler: self.handler.with_producers(policy),
            ..self
        }
    }

    /// The same harness fanning out small direct requests in groups (issue #16).
    pub fn grouped(self, settings: herald_runtime::batching::BatchSettings) -> Harness {
        Harness {
            handler: self.handler.with_grouping(settings),
            ..self
        }
    }

    /// Removes the test's queues and exchanges: left behind, hundreds of quorum queues slow
    /// the broker down for every later test (and its restarts).
    pub async fn finish(self) {
        self.publisher.close().await;
        let _ = self.topology.delete(self.inspector.channel()).await;
        self.inspector.close().await;
    }

    /// Decodes and handles one ingress body as the consumer runner would.
    pub async fn handle(&self, body: &Value, message_id: Option<&str>) -> Outcome {
        self.handle_in(body, context(message_id)).await
    }

    /// [`Harness::handle`] with a context of the test's making (a `reply_to`, say).
    pub async fn handle_in(&self, body: &Value, ctx: Context) -> Outcome {
        let bytes = serde_json::to_vec(body).expect("json");
        let message = match self.handler.decode(&bytes) {
            Ok(message) => message,
            Err(rejection) => return Outcome::DeadLetter(rejection),
        };
        self.handler.handle(message, &ctx).await
    }

    /// Takes every job waiting in a channel's send queue, alone or in bundles.
    pub async fn jobs(&self, channel: Channel) -> Vec<SendJob> {
        let queue = self.names.send_queue(channel);
        let mut jobs = Vec::new();
        while let Some(message) = self.inspector.get(&queue).await {
            jobs.extend(
                SendJobBundle::jobs_of(&message.delivery.data).expect("a send job or a bundle"),
            );
        }
        jobs
    }

    /// Jobs on every channel.
    pub async fn all_jobs(&self) -> Vec<SendJob> {
        let mut all = Vec::new();
        for channel in Channel::ALL {
            all.extend(self.jobs(channel).await);
        }
        all
    }

    /// A person with settings; returns the user row's id.
    pub async fn user(
        &self,
        external_id: &str,
        locale: Option<&str>,
        preferred: Option<&str>,
        mode: &str,
    ) -> Uuid {
        users::put(
            &self.pool,
            self.tenant_id,
            external_id,
            users::Settings {
                locale,
                preferred_channel: preferred.map(|c| c.parse().expect("a channel")),
                delivery_mode: mode.parse().expect("a delivery mode"),
            },
        )
        .await
        .expect("user")
        .id
    }

    /// A proven address (imported by an admin): the router delivers to it.
    pub async fn address(&self, user_id: Uuid, channel: &str, value: &str) -> Uuid {
        let id = self.unproven_address(user_id, channel, value).await;
        let mut tx = self.pool.begin().await.expect("a transaction");
        herald_storage::verification::mark_verified(
            &mut tx,
            id,
            herald_storage::verification::Proof::Import,
            "test",
        )
        .await
        .expect("verified");
        tx.commit().await.expect("commit");
        id
    }

    /// An address as a person adds it, before they confirmed its code.
    pub async fn unproven_address(&self, user_id: Uuid, channel: &str, value: &str) -> Uuid {
        addresses::add(
            &self.pool,
            NewAddress {
                tenant_id: self.tenant_id,
                user_id,
                kind: channel.parse().expect("an address kind"),
                value,
                display_name: None,
            },
        )
        .await
        .expect("address")
        .0
        .id
    }

    pub async fn subscription(&self, key: &str, fallback_locale: &str) -> Uuid {
        subscriptions::create(
            &self.pool,
            self.tenant_id,
            NewSubscription {
                key,
                label: key,
                description: "",
                system: false,
                enabled: true,
                fallback_locale,
                actor: "test",
            },
        )
        .await
        .expect("subscription")
        .id
    }

    /// `n` people `user-1..=user-<n>`, each registered to the subscription by email.
    pub async fn email_registrations(&self, subscription_id: Uuid, n: i64) {
        sqlx::query(
            "WITH people AS (
                 INSERT INTO users (id, tenant_id, external_id)
                 SELECT gen_random_uuid(), $1, 'user-' || g FROM generate_series(1, $3) g
                 RETURNING id, external_id)
             , proven AS (
                 INSERT INTO addresses (id, tenant_id, user_id, channel, kind, value, verified)
                 SELECT gen_random_uuid(), $1, id, 'email', 'email', external_id || '@example.org', true
                 FROM people)
             INSERT INTO registrations (id, tenant_id, subscription_id, user_id, channel, address)
             SELECT gen_random_uuid(), $1, $2, id, 'email', external_id || '@example.org'
             FROM people",
        )
        .bind(self.tenant_id)
        .bind(subscription_id)
        .bind(n)
        .execute(&self.pool)
        .await
        .expect("registrations");
    }

    /// Registers the person on a proven address of theirs (created, proven, if they do not
    /// have it yet; one they have keeps its state).
    pub async fn register(
        &self,
        subscription_id: Uuid,
        user_id: Uuid,
        channel: &str,
        address: &str,
    ) {
        sqlx::query(
            "INSERT INTO addresses (id, tenant_id, user_id, channel, kind, value, verified)
             VALUES ($1, $2, $3, $4, $4, $5, true) ON CONFLICT DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(self.tenant_id)
        .bind(user_id)
        .bind(channel)
        .bind(address)
        .execute(&self.pool)
        .await
        .expect("address");
        self.register_only(subscription_id, user_id, channel, address)
            .await;
    }

    /// A registration row alone, naming whatever address it is given.
    pub async fn register_only(
        &self,
        subscription_id: Uuid,
        user_id: Uuid,
        channel: &str,
        address: &str,
    ) {
        sqlx::query(
            "INSERT INTO registrations (id, tenant_id, subscription_id, user_id, channel, address)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(Uuid::now_v7())
        .bind(self.tenant_id)
        .bind(subscription_id)
        .bind(user_id)
        .bind(channel)
        .bind(address)
        .execute(&self.pool)
        .await
        .expect("registration");
    }

    pub async fn template(
        &self,
        subscription_id: Uuid,
        channel: Option<&str>,
        locale: &str,
        subject: Option<&str>,
        body: &str,
    ) {
        sqlx::query(
            "INSERT INTO templates (id, tenant_id, subscription_id, channel, locale, subject, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(Uuid::now_v7())
        .bind(self.tenant_id)
        .bind(subscription_id)
        .bind(channel)
        .bind(locale)
        .bind(subject)
        .bind(body)
        .execute(&self.pool)
        .await
        .expect("template");
    }

    /// Every message of the tenant: (id, status, error_code, source).
    pub async fn messages(&self) -> Vec<(Uuid, String, Option<String>, String)> {
        sqlx::query_as(
            "SELECT id, status, error_code, source FROM messages WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(self.tenant_id)
        .fetch_all(&self.pool)
        .await
        .expect("messages")
    }

    /// The only message of the tenant.
    pub async fn message(&self) -> (Uuid, String, Option<String>, String) {
        let mut all = self.messages().await;
        assert_eq!(all.len(), 1, "one message expected: {all:?}");
        all.remove(0)
    }

    /// A message's deliveries: (id, channel, address, status, failure_class, failure_code).
    pub async fn deliveries(&self, message_id: Uuid) -> Vec<DeliveryRow> {
        sqlx::query_as(
            "SELECT id, channel, address, status, failure_class, failure_code, job_published_at IS NOT NULL
             FROM deliveries WHERE message_id = $1 ORDER BY channel NULLS FIRST, address",
        )
        .bind(message_id)
        .fetch_all(&self.pool)
        .await
        .expect("deliveries")
    }
}

pub type DeliveryRow = (
    Uuid,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    bool,
);

/// What the consumer runner hands a handler, for a first delivery.
pub fn context(message_id: Option<&str>) -> Context {
    Context {
        origin: herald_runtime::amqp::Origin::Anonymous,
        queue: Arc::from("test.router.ingress"),
        message_id: message_id.map(str::to_owned),
        routing_key: "test".into(),
        redelivered: false,
        attempt: 1,
        max_attempts: 30,
        first_attempt_at: Utc::now(),
        last_error: None,
        reply_to: None,
        correlation_id: None,
        headers: Default::default(),
        trace: TraceContext::new_root(),
    }
}
