//! Issue #17, part 2: a producer bound to tenant A cannot cause a delivery for tenant B, and a
//! forged delivery or contact event from a broker user outside Herald changes nothing.
//!
//! The handlers get the [`Origin`] the consumer runner derives from the broker-checked
//! `user_id` (that derivation and the broker's check are tested in herald-runtime's
//! `broker_identity.rs`, against a RabbitMQ node with several users).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use fanout_router::outcome::Outcomes;
use fanout_router::producers::ProducerPolicy;
use fanout_router::tracking::TrackingHandler;
use herald_runtime::amqp::{Handler, Origin, Outcome};
use herald_storage::tracking::RemovalPolicy;
use herald_storage::{producers, tenants};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::{Harness, context};

fn notify(tenant: &str) -> Value {
    json!({
        "version": 1, "kind": "notify", "tenant": tenant,
        "to": {"users": ["ann"]},
        "content": {"direct": {"body": "Hello"}}
    })
}

fn code(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::DeadLetter(rejection) => Some(rejection.code.as_str()),
        _ => None,
    }
}

async fn handle_as(h: &Harness, body: &Value, origin: Origin) -> Outcome {
    let mut ctx = context(None);
    ctx.origin = origin;
    h.handle_in(body, ctx).await
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_producer_makes_requests_only_for_its_own_tenant(pool: PgPool) {
    let h = Harness::new(pool.clone(), "producer_tenant")
        .await
        .with_producers(false);
    let ann = h.user("ann", None, None, "all").await;
    h.address(ann, "email", "ann@example.org").await;
    let other = tenants::create(&pool, "other", "Other").await.unwrap();
    producers::bind(&pool, other.id, "other-shop", "test")
        .await
        .unwrap();
    producers::bind(&pool, h.tenant_id, "acme-shop", "test")
        .await
        .unwrap();

    // Bound to `other`, naming acme: dead-lettered, nothing stored or sent.
    let refused = handle_as(&h, &notify("acme"), Origin::Producer("other-shop".into())).await;
    assert_eq!(code(&refused), Some("tenant_mismatch"), "{refused:?}");
    assert!(h.messages().await.is_empty());
    assert!(h.all_jobs().await.is_empty());

    // Bound to acme: taken. Herald's own services (the API's outbox relay) too.
    let taken = handle_as(&h, &notify("acme"), Origin::Producer("acme-shop".into())).await;
    assert_eq!(taken, Outcome::Ack);
    let relayed = handle_as(&h, &notify("acme"), Origin::Service("herald".into())).await;
    assert_eq!(relayed, Outcome::Ack);
    assert_eq!(h.all_jobs().await.len(), 2);

    // An event trigger is a request too.
    let event = json!({
        "version": 1, "kind": "event", "tenant": "acme",
        "eventType": "audit.login", "data": {}
    });
    let refused = handle_as(&h, &event, Origin::Producer("other-shop".into())).await;
    assert_eq!(code(&refused), Some("tenant_mismatch"));

    // The open mode takes an unbound producer and no user_id at all.
    assert_eq!(
        handle_as(&h, &notify("acme"), Origin::Producer("stranger".into())).await,
        Outcome::Ack
    );
    assert_eq!(
        handle_as(&h, &notify("acme"), Origin::Anonymous).await,
        Outcome::Ack
    );
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_producer_neither_triggers_nor_borrows_a_system_subscription(pool: PgPool) {
    let h = Harness::new(pool.clone(), "producer_system")
        .await
        .with_producers(false);
    let ann = h.user("ann", None, None, "all").await;
    h.address(ann, "email", "ann@example.org").await;
    producers::bind(&pool, h.tenant_id, "acme-shop", "test")
        .await
        .unwrap();
    let security = h.subscription("security", "en").await;
    sqlx::query("UPDATE subscriptions SET system = true WHERE id = $1")
        .bind(security)
        .execute(&pool)
        .await
        .unwrap();
    h.template(security, None, "en", Some("Security"), "Hello")
        .await;
    h.register(security, ann, "email", "ann@example.org").await;
    let trigger = json!({
        "version": 1, "kind": "notify", "tenant": "acme",
        "to": {"subscription": "security"}, "content": {"template": {"data": {}}}
    });
    let borrowed = json!({
        "version": 1, "kind": "notify", "tenant": "acme", "to": {"users": ["ann"]},
        "content": {"template": {"subscription": "security", "data": {}}}
    });
    for body in [&trigger, &borrowed] {
        let refused = handle_as(&h, body, Origin::Producer("acme-shop".into())).await;
        assert_eq!(code(&refused), Some("system_subscription"), "{refused:?}");
    }
    assert!(h.all_jobs().await.is_empty());
    // Herald's own services (the API, for the global admin) may.
    assert_eq!(
        handle_as(&h, &trigger, Origin::Service("herald".into())).await,
        Outcome::Ack
    );
    assert_eq!(h.all_jobs().await.len(), 1);
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn the_strict_mode_takes_requests_only_from_bound_producers(pool: PgPool) {
    let h = Harness::new(pool.clone(), "producer_strict")
        .await
        .with_producers(true);
    let ann = h.user("ann", None, None, "all").await;
    h.address(ann, "email", "ann@example.org").await;
    producers::bind(&pool, h.tenant_id, "acme-shop", "test")
        .await
        .unwrap();
    let anonymous = handle_as(&h, &notify("acme"), Origin::Anonymous).await;
    assert_eq!(code(&anonymous), Some("no_user_id"));
    let stranger = handle_as(&h, &notify("acme"), Origin::Producer("stranger".into())).await;
    assert_eq!(code(&stranger), Some("unknown_producer"));
    assert!(h.all_jobs().await.is_empty());
    assert_eq!(
        handle_as(&h, &notify("acme"), Origin::Producer("acme-shop".into())).await,
        Outcome::Ack
    );
    assert_eq!(h.all_jobs().await.len(), 1);
    h.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_forged_delivery_or_contact_event_changes_nothing(pool: PgPool) {
    let h = Harness::new(pool.clone(), "producer_events").await;
    let ann = h.user("ann", None, None, "all").await;
    h.address(ann, "email", "ann@example.org").await;
    assert_eq!(h.handle(&notify("acme"), None).await, Outcome::Ack);
    let job = h.all_jobs().await.pop().unwrap();
    let tracker = TrackingHandler::new(
        pool.clone(),
        Outcomes::new(pool.clone(), h.publisher.clone(), h.names.clone()),
        RemovalPolicy {
            after: chrono::Duration::days(7),
            failures: 5,
        },
        Duration::from_secs(1),
    )
    .with_producers(Arc::new(ProducerPolicy::new(pool.clone(), false)));
    let forged = json!({
        "version": 1, "deliveryId": job.delivery_id, "messageId": job.message_id,
        "tenant": "acme", "channel": "email", "attempt": 1,
        "result": {"status": "failed", "failure": {"class": "permanent", "code": "forged", "message": "x"}},
        "occurredAt": chrono::Utc::now()
    });
    let link = json!({
        "version": 1, "channel": "telegram", "linkCode": "ABCDEFGH",
        "address": {"kind": "telegram", "value": 4242}, "occurredAt": chrono::Utc::now()
    });
    for body in [&forged, &link] {
        let bytes = serde_json::to_vec(body).unwrap();
        let decoded = tracker
            .decode(&bytes)
            .unwrap_or_else(|e| panic!("{e:?}: {body}"));
        let mut ctx = context(None);
        ctx.origin = Origin::Producer("acme-shop".into());
        let outcome = tracker.handle(decoded, &ctx).await;
        assert_eq!(code(&outcome), Some("untrusted_publisher"), "{outcome:?}");
    }
    let (status, state): (String, String) = sqlx::query_as(
        "SELECT d.status, a.state FROM deliveries d JOIN addresses a ON a.id = d.address_id
         WHERE d.id = $1",
    )
    .bind(job.delivery_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), state.as_str()), ("pending", "active"));

    // The same event from Herald's sender is recorded.
    let bytes = serde_json::to_vec(&forged).unwrap();
    let mut ctx = context(None);
    ctx.origin = Origin::Service("herald".into());
    assert_eq!(
        tracker.handle(tracker.decode(&bytes).unwrap(), &ctx).await,
        Outcome::Ack
    );
    let status: String = sqlx::query_scalar("SELECT status FROM deliveries WHERE id = $1")
        .bind(job.delivery_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "failed");
    h.finish().await;
}
