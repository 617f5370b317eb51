//! The outbox relay against the real PostgreSQL and RabbitMQ: a row the broker will never take
//! is given up after a few refusals, the rows around it go out meanwhile, and an outage
//! counts against no row.
//!
//! This crate has no dev-dependency on `herald-testkit` or `lapin`, so the broker is reached
//! through `herald_runtime::amqp::Broker`, each helper on a connection of its own (lapin's
//! types cannot be named here), with lapin's options left to their defaults by inference.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use herald_runtime::amqp::{Broker, PublishError, Publisher};
use herald_runtime::config::{AmqpConfig, Secret};
use herald_storage::outbox;
use herald_storage::relay::{OutboxRelay, REFUSALS, RelayError};
use sqlx::PgPool;
use uuid::Uuid;

/// The local broker, or `HERALD_TEST_AMQP_URL` (as `herald_testkit::broker::amqp_url`).
fn amqp_url() -> String {
    std::env::var("HERALD_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One test's corner of the broker, under a fresh `t-` prefix: a direct exchange with one
/// queue bound for the routing key `good`, and nothing bound for any other key.
struct Setup {
    pool: PgPool,
    config: AmqpConfig,
    exchange: String,
    queue: String,
    tenant_id: Uuid,
}

impl Setup {
    async fn new(pool: PgPool, test: &str) -> Setup {
        herald_runtime::install_crypto_provider();
        let prefix = format!("t-{test}-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let config = AmqpConfig {
            url: Secret::new(amqp_url()),
            prefix: prefix.clone(),
            // A missing exchange is only told apart once the publish timeout has passed.
            publish_timeout_ms: 1_000,
            reconnect_max_ms: 200,
            ..AmqpConfig::default()
        };
        let exchange = format!("{prefix}.ingress");
        let queue = format!("{prefix}.good");
        let broker = Broker::new(config.clone(), "test");
        let connection = broker.connect("test-setup").await.expect("the test broker");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                Default::default(), // direct
                Default::default(),
                Default::default(),
            )
            .await
            .expect("declare the exchange");
        channel
            .queue_declare(
                queue.as_str().into(),
                Default::default(),
                Default::default(),
            )
            .await
            .expect("declare the queue");
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "good".into(),
                Default::default(),
                Default::default(),
            )
            .await
            .expect("bind the queue");
        let _ = connection.close(200, "declared".into()).await;
        let tenant_id = herald_storage::tenants::create(&pool, "acme", "Acme")
            .await
            .expect("tenant")
            .id;
        Setup {
            pool,
            config,
            exchange,
            queue,
            tenant_id,
        }
    }

    fn relay(&self, config: AmqpConfig) -> OutboxRelay {
        OutboxRelay::new(
            self.pool.clone(),
            Publisher::new(Broker::new(config, "test"), "outbox"),
        )
    }

    /// A message accepted over HTTP, with its outbox row; returns its id.
    async fn enqueue(&self, exchange: &str, routing_key: &str) -> Uuid {
        let id = Uuid::now_v7();
        let mut tx = self.pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO messages (id, tenant_id, source, request) VALUES ($1, $2, 'api', '{}')",
        )
        .bind(id)
        .bind(self.tenant_id)
        .execute(&mut *tx)
        .await
        .unwrap();
        let payload = format!(r#"{{"message": "{id}"}}"#);
        outbox::enqueue(
            &mut tx,
            exchange,
            routing_key,
            &id.to_string(),
            payload.as_bytes(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        id
    }

    /// The message ids waiting in the test's queue, taken off it. Confirms came before
    /// `relay_once` returned, so what was published is there already.
    async fn received(&self) -> Vec<String> {
        let connection = Broker::new(self.config.clone(), "test")
            .connect("test-inspector")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let mut ids = Vec::new();
        while let Some(message) = channel
            .basic_get(self.queue.as_str().into(), Default::default())
            .await
            .unwrap()
        {
            let id = message.delivery.properties.message_id().as_ref();
            ids.push(id.map(|id| id.to_string()).unwrap_or_default());
            message
                .delivery
                .acker
                .ack(Default::default())
                .await
                .unwrap();
        }
        let _ = connection.close(200, "read".into()).await;
        ids.sort();
        ids.dedup(); // A batch refused half-way goes out again row by row.
        ids
    }

    /// The row of a message: (attempts, last_error, failed_at, published).
    async fn row(&self, message_id: Uuid) -> (i32, Option<String>, Option<DateTime<Utc>>, bool) {
        sqlx::query_as(
            "SELECT attempts, last_error, failed_at, published_at IS NOT NULL FROM outbox
             WHERE message_id = $1",
        )
        .bind(message_id.to_string())
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// (status, error_code, completed) of a message.
    async fn message(&self, id: Uuid) -> (String, Option<String>, bool) {
        sqlx::query_as(
            "SELECT status, error_code, completed_at IS NOT NULL FROM messages WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// Deletes what the test declared: left behind, queues pile up on the shared broker.
    async fn finish(self) {
        let connection = Broker::new(self.config.clone(), "test")
            .connect("test-teardown")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .queue_delete(self.queue.as_str().into(), Default::default())
            .await
            .unwrap();
        channel
            .exchange_delete(self.exchange.as_str().into(), Default::default())
            .await
            .unwrap();
        let _ = connection.close(200, "done".into()).await;
    }
}

/// One relay pass; returns how many rows it published.
///
/// A publish to a missing exchange is told from an outage only by the broker's reply, and the
/// publisher loses that reply when its timeout strikes while it waits for a confirm. Such a
/// pass counts nothing, as for an outage, and is simply repeated: only that error is let
/// through here.
async fn pass(relay: &OutboxRelay) -> usize {
    for _ in 0..5 {
        match relay.relay_once().await {
            Ok(published) => return published,
            Err(RelayError::Publish(PublishError::Unavailable { last_error, .. }))
                if last_error.starts_with("no confirm within the publish timeout") => {}
            Err(error) => panic!("relay pass failed: {error}"),
        }
    }
    panic!("the relay kept timing out");
}

/// Drives the relay until the poison row is given up, checking it is counted once per pass.
async fn relay_until_given_up(s: &Setup, relay: &OutboxRelay, poison: Uuid) {
    for attempt in 2..=REFUSALS {
        // A refused row waits before it is tried again.
        assert_eq!(pass(relay).await, 0);
        assert_eq!(
            s.row(poison).await.0,
            attempt - 1,
            "not tried again at once"
        );
        sqlx::query("UPDATE outbox SET retry_at = now() WHERE message_id = $1")
            .bind(poison.to_string())
            .execute(&s.pool)
            .await
            .unwrap();
        assert_eq!(pass(relay).await, 0, "only the poison row is left");
        let (attempts, _, failed_at, _) = s.row(poison).await;
        assert_eq!(attempts, attempt);
        assert_eq!(
            failed_at.is_some(),
            attempt == REFUSALS,
            "attempt {attempt}"
        );
    }
    // Given up: not claimed, not counted again.
    assert_eq!(pass(relay).await, 0);
    assert_eq!(s.row(poison).await.0, REFUSALS);
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_row_nothing_routes_is_given_up_after_its_refusals_and_the_rows_around_it_go_out(
    pool: PgPool,
) {
    let s = Setup::new(pool.clone(), "relay-unroutable").await;
    let first = s.enqueue(&s.exchange, "good").await;
    let poison = s.enqueue(&s.exchange, "nowhere").await;
    let last = s.enqueue(&s.exchange, "good").await;
    let relay = s.relay(s.config.clone());

    assert_eq!(pass(&relay).await, 2, "the good rows go out");
    let mut expected = vec![first.to_string(), last.to_string()];
    expected.sort();
    assert_eq!(s.received().await, expected);
    assert!(s.row(first).await.3 && s.row(last).await.3);
    let (attempts, last_error, failed_at, published) = s.row(poison).await;
    assert_eq!((attempts, failed_at, published), (1, None, false));
    assert!(
        last_error
            .as_deref()
            .is_some_and(|e| e.contains("unroutable")),
        "{last_error:?}"
    );
    assert_eq!(s.message(poison).await.0, "accepted", "not given up yet");

    relay_until_given_up(&s, &relay, poison).await;
    assert_eq!(
        s.message(poison).await,
        ("failed".into(), Some("unroutable".into()), true)
    );
    let error_message: Option<String> =
        sqlx::query_scalar("SELECT error_message FROM messages WHERE id = $1")
            .bind(poison)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(error_message.is_some_and(|e| e.contains("nowhere")));
    assert_eq!(
        s.message(first).await.0,
        "accepted",
        "the router's to move on"
    );
    assert_eq!(outbox::backlog(&pool).await.unwrap(), 0);
    assert_eq!(outbox::failed(&pool).await.unwrap(), 1);
    assert!(
        s.received().await.is_empty(),
        "nothing went out twice later"
    );
    s.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_row_for_an_exchange_that_does_not_exist_is_given_up_too(pool: PgPool) {
    let s = Setup::new(pool.clone(), "relay-no-exchange").await;
    let missing = format!("{}.missing", s.config.prefix);
    let mut good = vec![s.enqueue(&s.exchange, "good").await];
    let poison = s.enqueue(&missing, "good").await;
    // Enough rows behind it that the broker's 404 reaches the publisher as "invalid channel
    // state" for the rows after it, not as the broker's reply.
    for _ in 0..100 {
        good.push(s.enqueue(&s.exchange, "good").await);
    }
    let relay = s.relay(s.config.clone());

    // Not counted: a repeated pass (see `pass`) has published some of them before.
    pass(&relay).await;
    assert_eq!(
        outbox::backlog(&pool).await.unwrap(),
        1,
        "the good rows go out"
    );
    let mut expected: Vec<String> = good.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(s.received().await, expected);
    let (attempts, last_error, failed_at, _) = s.row(poison).await;
    assert_eq!((attempts, failed_at), (1, None));
    assert!(
        last_error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("no exchange '{missing}'"))),
        "{last_error:?}"
    );

    relay_until_given_up(&s, &relay, poison).await;
    assert_eq!(
        s.message(poison).await,
        ("failed".into(), Some("unroutable".into()), true)
    );
    assert_eq!(outbox::backlog(&pool).await.unwrap(), 0);
    assert_eq!(outbox::failed(&pool).await.unwrap(), 1);
    s.finish().await;
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_broker_outage_counts_against_no_row(pool: PgPool) {
    let s = Setup::new(pool.clone(), "relay-outage").await;
    let poison = s.enqueue(&s.exchange, "nowhere").await;
    let good = s.enqueue(&s.exchange, "good").await;

    // Nothing listens on port 1.
    let down = s.relay(AmqpConfig {
        url: Secret::new("amqp://guest:guest@127.0.0.1:1/%2f".into()),
        publish_timeout_ms: 300,
        ..s.config.clone()
    });
    for _ in 0..REFUSALS + 1 {
        let r = down.relay_once().await;
        assert!(r.is_err(), "{r:?}");
    }
    assert_eq!(s.row(poison).await, (0, None, None, false));
    assert_eq!(s.row(good).await, (0, None, None, false));
    assert_eq!(outbox::backlog(&pool).await.unwrap(), 2);

    // Back up: the good row goes out, the poison row has its first refusal only now.
    let up = s.relay(s.config.clone());
    assert_eq!(up.relay_once().await.unwrap(), 1);
    assert_eq!(s.received().await, vec![good.to_string()]);
    assert_eq!(s.row(poison).await.0, 1);
    s.finish().await;
}

/// Issue #18: the relay claims its rows and waits for the broker without a transaction open
/// (it used to hold one for up to the publish timeout); a second relay meanwhile skips the
/// claimed rows; after the outage the rows are given back at once.
#[sqlx::test(migrations = "../../migrations")]
async fn the_relay_waits_for_the_broker_without_a_transaction_open(pool: PgPool) {
    let s = Setup::new(pool.clone(), "relay-no-tx").await;
    let row = s.enqueue(&s.exchange, "good").await;
    let down = s.relay(AmqpConfig {
        url: Secret::new("amqp://guest:guest@127.0.0.1:1/%2f".into()),
        publish_timeout_ms: 2_000,
        ..s.config.clone()
    });
    let waiting = tokio::spawn(async move { down.relay_once().await });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(open, 0, "no transaction waits for the broker");
    // Claimed: another relay does not publish it meanwhile.
    let up = s.relay(s.config.clone());
    assert_eq!(up.relay_once().await.unwrap(), 0);
    assert!(waiting.await.unwrap().is_err(), "the broker was down");
    // Given back: published at the next pass, at once.
    assert_eq!(up.relay_once().await.unwrap(), 1);
    assert_eq!(s.received().await, vec![row.to_string()]);
    s.finish().await;
}

/// Issue #18: published rows do not pile up: they are deleted after a day.
#[sqlx::test(migrations = "../../migrations")]
async fn published_rows_are_deleted_after_a_day(pool: PgPool) {
    sqlx::query(
        "INSERT INTO outbox (exchange, routing_key, message_id, payload, published_at)
         VALUES ('x', 'k', 'old', '', now() - interval '25 hours'),
                ('x', 'k', 'recent', '', now() - interval '1 hour'),
                ('x', 'k', 'waiting', '', NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let day = std::time::Duration::from_secs(24 * 3600);
    assert_eq!(outbox::delete_published(&pool, day, 1000).await.unwrap(), 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT message_id FROM outbox ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, ["recent", "waiting"]);
}
