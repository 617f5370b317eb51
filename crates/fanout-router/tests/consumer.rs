//! The router as its binary runs it: consuming `{p}.router.ingress` on the real broker.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use fanout_router::config::{Config, RouterConfig};
use herald_runtime::amqp::headers;
use herald_runtime::amqp::{Broker, Message, Publisher};
use herald_runtime::config::BaseConfig;
use herald_runtime::service::Service;
use herald_storage::db::DatabaseConfig;
use herald_storage::{addresses, tenants, users};
use herald_testkit::broker::Inspector;
use messaging_core::Channel;
use messaging_core::job::SendJob;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[sqlx::test(migrations = "../../migrations")]
async fn the_router_consumes_requests_and_dead_letters_malformed_ones_with_a_reason(pool: PgPool) {
    herald_runtime::install_crypto_provider();
    let amqp = support::amqp_config("router_consumer");
    let config = Config {
        base: BaseConfig {
            amqp: amqp.clone(),
            ..BaseConfig::default()
        },
        router: RouterConfig::default(),
        database: DatabaseConfig::default(),
        verification: Default::default(),
    };
    let tenant = tenants::create(&pool, "acme", "Acme").await.unwrap();
    let ann = users::ensure(&pool, tenant.id, "ann").await.unwrap();
    let (email, _) = addresses::add(
        &pool,
        addresses::NewAddress {
            tenant_id: tenant.id,
            user_id: ann.id,
            kind: messaging_core::AddressKind::Email,
            value: "ann@example.org",
            display_name: None,
        },
    )
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    herald_storage::verification::mark_verified(
        &mut tx,
        email.id,
        herald_storage::verification::Proof::Code,
        "test",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let service = Service::with_parts(
        "test-router",
        config.base.clone(),
        listener,
        shutdown.clone(),
    );
    let names = service.topology.names().clone();
    let service_topology = service.topology.clone();
    let work = fanout_router::start(&service, &config, pool.clone()).expect("router starts");
    let running = tokio::spawn(service.run(axum::Router::new(), work));

    let inspector = Inspector::connect().await;
    // Declared here too: a passive check of a queue that does not exist yet would close the
    // inspector's channel.
    service_topology
        .declare(inspector.connection())
        .await
        .expect("declare");
    assert!(
        inspector
            .wait_for_consumer(&names.ingress_queue(), Duration::from_secs(20))
            .await,
        "the router consumes its queue"
    );
    let producer = Publisher::new(Broker::new(amqp, "test-producer"), "producer");

    producer
        .publish(&Message::new(
            names.ingress_exchange(),
            "billing",
            b"{not json",
        ))
        .await
        .unwrap();
    let dead = inspector
        .wait_get(
            &names.dead_letter_queue(&names.ingress_queue()),
            Duration::from_secs(10),
        )
        .await
        .expect("a dead letter");
    let table = dead.delivery.properties.headers().clone();
    assert_eq!(
        headers::get_str(table.as_ref(), headers::REASON_CODE).as_deref(),
        Some("malformed")
    );
    assert!(
        headers::get_str(table.as_ref(), headers::REASON)
            .unwrap_or_default()
            .contains("malformed JSON"),
    );

    let request = json!({
        "version": 1, "kind": "notify", "tenant": "acme", "idempotencyKey": "e2e-1",
        "to": {"users": ["ann"]}, "content": {"direct": {"body": "through the broker"}}
    });
    let body = serde_json::to_vec(&request).unwrap();
    producer
        .publish(
            &Message::new(names.ingress_exchange(), "billing", &body).message_id("e2e-message"),
        )
        .await
        .unwrap();
    let job = inspector
        .wait_get(&names.send_queue(Channel::Email), Duration::from_secs(10))
        .await
        .expect("a send job");
    let job: SendJob = serde_json::from_slice(&job.delivery.data).unwrap();
    assert_eq!(job.content.text, "through the broker");
    assert_eq!(job.to.value(), "ann@example.org");

    producer.close().await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let _ = service_topology.delete(inspector.channel()).await;
    inspector.close().await;
}
