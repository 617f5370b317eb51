//! A router killed in the middle of a large fan-out, and another one started after it (issue
//! #4: "crash between publish and ack"): every job goes out, and only the jobs whose confirms
//! were in flight at the moment of the kill can go out twice, with their delivery ids.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fanout_router::config::{Config, RouterConfig};
use herald_runtime::amqp::{Broker, Message, Publisher};
use herald_runtime::config::{AmqpConfig, BaseConfig};
use herald_runtime::service::Service;
use herald_storage::db::DatabaseConfig;
use herald_testkit::broker::{Inspector, close_connections_with_prefix};
use messaging_core::Channel;
use messaging_core::job::SendJob;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const REGISTRATIONS: i64 = 10_000;
const BATCH: usize = 100;

/// A router as its binary runs, on a pool of its own (so killing it takes its database
/// sessions, and with them its fan-out lease, along).
async fn router(
    name: &'static str,
    amqp: &AmqpConfig,
    pool: &PgPool,
) -> (JoinHandle<std::io::Result<()>>, PgPool, CancellationToken) {
    let own = PgPoolOptions::new()
        .max_connections(10)
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("router pool");
    let config = Config {
        base: BaseConfig {
            amqp: amqp.clone(),
            ..BaseConfig::default()
        },
        router: RouterConfig {
            batch_size: BATCH,
            ..RouterConfig::default()
        },
        database: DatabaseConfig::default(),
        verification: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let service = Service::with_parts(name, config.base.clone(), listener, shutdown.clone());
    let work = fanout_router::start(&service, &config, own.clone()).expect("router starts");
    (
        tokio::spawn(service.run(axum::Router::new(), work)),
        own,
        shutdown,
    )
}

/// Kills a router as a process dies: its task dropped where it stands, its database sessions
/// closed, and its broker connections (named `connections`...) closed by the broker.
async fn kill(task: JoinHandle<std::io::Result<()>>, pool: PgPool, connections: &str) {
    task.abort();
    let _ = task.await;
    pool.close().await;
    close_connections_with_prefix(connections)
        .await
        .expect("the killed router's connections");
}

/// Jobs the broker confirmed and the router marked: the send queue holds bundles of them.
async fn jobs_out(pool: &PgPool) -> i64 {
    let (marked,): (i64,) = sqlx::query_as("SELECT count(job_published_at) FROM deliveries")
        .fetch_one(pool)
        .await
        .unwrap();
    marked
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_router_killed_mid_fan_out_is_replaced_and_every_job_goes_out(pool: PgPool) {
    herald_runtime::install_crypto_provider();
    let h = support::Harness::new(pool.clone(), "router_killed").await;
    let news = h.subscription("news", "en").await;
    h.template(news, None, "en", Some("News"), "Hello {{ name }}")
        .await;
    h.email_registrations(news, REGISTRATIONS).await;
    let inspector = Inspector::connect().await;

    let (first, first_pool, _) = router("router-a", &h.amqp, &pool).await;
    let message_id = Uuid::now_v7();
    let request = json!({
        "version": 1, "kind": "notify", "tenant": "acme",
        "to": {"subscription": "news"}, "content": {"template": {"data": {"name": "all"}}}
    });
    let producer = Publisher::new(Broker::new(h.amqp.clone(), "producer"), "producer");
    producer
        .publish(
            &Message::new(
                h.names.ingress_exchange(),
                "test",
                &serde_json::to_vec(&request).unwrap(),
            )
            .message_id(message_id.to_string()),
        )
        .await
        .unwrap();

    // Killed once a tenth of the jobs are out: the task is dropped where it stands, its
    // database sessions closed and the broker closes its connections, as when a process dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let queued = jobs_out(&pool).await;
        if queued >= REGISTRATIONS / 10 {
            break queued;
        }
        assert!(Instant::now() < deadline, "the fan-out did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    kill(first, first_pool, &format!("{}/router-a", h.amqp.prefix)).await;
    assert!(
        at_kill < REGISTRATIONS,
        "killed mid-fan-out ({at_kill} jobs out)"
    );
    let (status,): (String,) = sqlx::query_as("SELECT status FROM messages WHERE id = $1")
        .bind(message_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "accepted", "the first router did not finish");

    // The broker hands the unacked request to the next router, which finishes the message.
    let (second, second_pool, stop) = router("router-b", &h.amqp, &pool).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status,): (String,) = sqlx::query_as("SELECT status FROM messages WHERE id = $1")
            .bind(message_id)
            .fetch_one(&pool)
            .await
            .unwrap();
        if status == "fanned_out" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second router did not finish: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    second.await.unwrap().unwrap();
    second_pool.close().await;

    let jobs: Vec<SendJob> = h.jobs(Channel::Email).await;
    let ids: HashSet<Uuid> = jobs.iter().map(|j| j.delivery_id).collect();
    assert_eq!(
        ids.len() as i64,
        REGISTRATIONS,
        "every delivery's job is out"
    );
    // Repeats are only the jobs confirmed but not yet marked when the first router died: at
    // most the two chunks in flight (one being published while the next is written).
    let repeats = jobs.len() - ids.len();
    assert!(repeats <= 2 * BATCH, "{repeats} jobs went out twice");
    let (rows, marked): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(job_published_at) FROM deliveries WHERE message_id = $1",
    )
    .bind(message_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((rows, marked), (REGISTRATIONS, REGISTRATIONS));
    println!(
        "killed with {at_kill} jobs out; {} jobs in all, {repeats} repeated",
        jobs.len()
    );
    producer.close().await;
    inspector.close().await;
    h.finish().await;
}

/// Issue #16: small direct requests are fanned out in groups. A router killed while groups are
/// in work leaves messages at every stage (rows written, jobs out but not marked, done but not
/// acked); the next router finishes each, every message gets exactly its one delivery, and
/// only jobs of the groups in flight at the kill can go out twice, with their delivery ids.
#[sqlx::test(migrations = "../../migrations")]
async fn a_router_killed_mid_group_is_replaced_and_every_request_gets_exactly_its_jobs(
    pool: PgPool,
) {
    const PEOPLE: usize = 50;
    const REQUESTS: usize = 3_000;
    herald_runtime::install_crypto_provider();
    let h = support::Harness::new(pool.clone(), "router_killed_grouped").await;
    for i in 0..PEOPLE {
        let user = h.user(&format!("p{i}"), None, None, "all").await;
        h.address(user, "email", &format!("p{i}@example.org")).await;
    }
    let inspector = Inspector::connect().await;
    let (first, first_pool, _) = router("router-a", &h.amqp, &pool).await;
    let producer = Publisher::new(Broker::new(h.amqp.clone(), "producer"), "producer");
    let requests: Vec<(Uuid, Vec<u8>)> = (0..REQUESTS)
        .map(|i| {
            let body = json!({
                "version": 1, "kind": "notify", "tenant": "acme",
                "to": {"users": [format!("p{}", i % PEOPLE)]},
                "content": {"direct": {"body": format!("order {i} shipped")}}
            });
            (Uuid::now_v7(), serde_json::to_vec(&body).unwrap())
        })
        .collect();
    let messages: Vec<Message> = requests
        .iter()
        .map(|(id, body)| {
            Message::new(h.names.ingress_exchange(), "test", body).message_id(id.to_string())
        })
        .collect();
    producer.publish_batch(&messages).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        let queued = jobs_out(&pool).await as usize;
        if queued >= REQUESTS / 10 {
            break queued;
        }
        assert!(Instant::now() < deadline, "the fan-out did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    kill(first, first_pool, &format!("{}/router-a", h.amqp.prefix)).await;
    assert!(at_kill < REQUESTS, "killed mid-way ({at_kill} jobs out)");

    let (second, second_pool, stop) = router("router-b", &h.amqp, &pool).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (fanned_out, other): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'fanned_out'),
                    count(*) FILTER (WHERE status <> 'fanned_out')
             FROM messages",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if fanned_out as usize == REQUESTS {
            assert_eq!(other, 0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{fanned_out} of {REQUESTS} messages fanned out, {other} other"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    second.await.unwrap().unwrap();
    second_pool.close().await;

    // Exactly one delivery per request, its job out and marked.
    let (messages, rows, marked): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT message_id), count(*), count(job_published_at) FROM deliveries",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (messages as usize, rows as usize, marked as usize),
        (REQUESTS, REQUESTS, REQUESTS)
    );
    let jobs: Vec<SendJob> = h.jobs(Channel::Email).await;
    let ids: HashSet<Uuid> = jobs.iter().map(|j| j.delivery_id).collect();
    assert_eq!(ids.len(), REQUESTS, "every delivery's job is out");
    let per_message: HashSet<Uuid> = jobs.iter().map(|j| j.message_id).collect();
    assert_eq!(per_message.len(), REQUESTS);
    // Repeats: only jobs confirmed but not marked at the kill, at most the groups in work
    // (two of at most 64 requests, one job each).
    let repeats = jobs.len() - ids.len();
    let grouping = RouterConfig::default().grouping().unwrap();
    assert!(
        repeats <= grouping.parallel * grouping.max,
        "{repeats} jobs went out twice"
    );
    println!(
        "killed with {at_kill} jobs out; {} jobs in all, {repeats} repeated",
        jobs.len()
    );
    producer.close().await;
    inspector.close().await;
    h.finish().await;
}
