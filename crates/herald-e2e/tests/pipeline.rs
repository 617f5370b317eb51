//! The whole pipeline, every part real: a direct message through the API's route, its outbox
//! row relayed to RabbitMQ, the router's fan-out, the email sender delivering to a real SMTP
//! server, the sender's delivery events back through the router's tracking, and the outcome
//! a producer reads on `outcome.<tenant>` and from `GET /messages/{id}`.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use fanout_router::config::{Config, RouterConfig};
use herald_runtime::config::{AmqpConfig, BaseConfig, Secret};
use herald_runtime::service::Service;
use herald_storage::db::DatabaseConfig;
use herald_storage::{PgPool, api_keys, tenants};
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use herald_testkit::smtp::SmtpSink;
use http_body_util::BodyExt;
use messaging_core::events::{MessageOutcome, RecipientResult};
use messaging_core::failure::FailureClass;
use sender_email::{EmailConfig, EmailSender, SmtpSettings, TlsMode};
use serde_json::{Value, json};
use subscription_api::AppState;
use subscription_api::auth::JwtKeys;
use subscription_api::config::{AuthConfig, LimitsConfig};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(30);

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("x-api-key", key);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_direct_message_goes_from_the_api_to_the_mailbox_and_back_as_an_outcome(pool: PgPool) {
    herald_runtime::install_crypto_provider();
    let amqp = AmqpConfig {
        url: Secret::new(amqp_url()),
        prefix: unique_prefix("e2e_pipeline"),
        delays_ms: vec![100, 300, 1_000],
        reconnect_max_ms: 1_000,
        publish_timeout_ms: 20_000,
        ..AmqpConfig::default()
    };
    let base = BaseConfig {
        amqp: amqp.clone(),
        ..BaseConfig::default()
    };
    let shutdown = CancellationToken::new();

    // The router, as its binary runs it (with the outbox relay the API's messages go through).
    let router_service = Service::with_parts(
        "e2e-router",
        base.clone(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        shutdown.clone(),
    );
    let names = router_service.topology.names().clone();
    let topology = router_service.topology.clone();
    let config = Config {
        base: base.clone(),
        router: RouterConfig::default(),
        database: DatabaseConfig::default(),
    };
    let work = fanout_router::start(&router_service, &config, pool.clone()).unwrap();
    let router = tokio::spawn(router_service.run(axum::Router::new(), work));

    // The email sender, against a real SMTP server.
    let sink = SmtpSink::start().await;
    let sender_service = Service::with_parts(
        "e2e-sender-email",
        base.clone(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        shutdown.clone(),
    );
    let email = EmailConfig {
        smtp: SmtpSettings {
            host: "127.0.0.1".into(),
            port: sink.port(),
            tls: TlsMode::None,
            from: "Herald <noreply@herald.test>".into(),
            timeout_ms: 3_000,
            tenants: HashMap::new(),
            ..SmtpSettings::default()
        },
    };
    let work = sender_runtime::run::start::<EmailSender>(
        &sender_service,
        sender_runtime::testing::quick_config(),
        email,
    )
    .await
    .unwrap();
    let sender = tokio::spawn(sender_service.run(axum::Router::new(), work));

    // The API, in-process, on the same database and prefix.
    let limits = LimitsConfig::default();
    let state = AppState {
        pool: pool.clone(),
        jwt: Arc::new(JwtKeys::from_config(&AuthConfig::default()).unwrap()),
        names: names.clone(),
        limits: subscription_api::limits::RateLimits::new(&limits),
        link_code_ttl: limits.link_code_ttl(),
    };
    let api = subscription_api::startup::app(state, &limits);

    let inspector = Inspector::connect().await;
    topology.declare(inspector.connection()).await.unwrap();
    let outcomes = inspector
        .temporary_queue(&names.events_exchange(), "outcome.acme")
        .await;

    tenants::create(&pool, "acme", "Acme").await.unwrap();
    let acme = tenants::by_key(&pool, "acme").await.unwrap();
    let (_, admin) = api_keys::create(
        &pool,
        api_keys::NewKey {
            tenant_id: Some(acme.id),
            role: messaging_core::Role::TenantAdmin,
            user_id: None,
            name: "e2e",
            created_by: "e2e",
        },
    )
    .await
    .unwrap();
    // Ann has a working mailbox and one that the server refuses for good (550).
    for address in ["ann@example.org", "nosuchuser@example.org"] {
        let (status, body) = call(
            &api,
            "POST",
            "/api/messaging/users/ann/addresses",
            &admin,
            Some(json!({"channel": "email", "address": address})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    let (status, accepted) = call(
        &api,
        "POST",
        "/api/messaging/messages",
        &admin,
        Some(json!({
            "userIds": ["ann"],
            "content": {"direct": {"subject": "Order 1001", "body": "Your order has shipped."}}
        })),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let message_id = accepted["messageId"].as_str().unwrap().to_owned();

    let published = inspector
        .wait_get(&outcomes, WAIT)
        .await
        .expect("an outcome for the producer");
    let outcome: MessageOutcome = serde_json::from_slice(&published.delivery.data).unwrap();
    assert_eq!(outcome.message_id.to_string(), message_id);
    assert_eq!((outcome.delivered, outcome.failed), (1, 1));
    let classes: Vec<Option<FailureClass>> = outcome
        .recipients
        .iter()
        .map(|r| match &r.result {
            RecipientResult::Delivered { .. } => None,
            RecipientResult::Failed { failure } => Some(failure.class),
        })
        .collect();
    assert!(classes.contains(&None) && classes.contains(&Some(FailureClass::Permanent)));

    // The mail is in the mailbox, once.
    let mails: Vec<String> = sink
        .messages()
        .into_iter()
        .filter(|m| m.contains("Your order has shipped."))
        .collect();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].contains("ann@example.org"));

    // The producer sees the same over REST; the refused address is unreachable (R6).
    let (status, message) = call(
        &api,
        "GET",
        &format!("/api/messaging/messages/{message_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(message["status"], "completed", "{message}");
    let deliveries = message["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries.iter().any(|d| d["status"] == "sent"));
    assert!(
        deliveries
            .iter()
            .any(|d| d["status"] == "failed" && d["failure"]["class"] == "permanent")
    );
    let (_, ann) = call(&api, "GET", "/api/messaging/users/ann", &admin, None).await;
    let refused = ann["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["address"] == "nosuchuser@example.org")
        .unwrap()
        .clone();
    assert_eq!(refused["state"], "unreachable", "{ann}");

    shutdown.cancel();
    let _ = router.await;
    let _ = sender.await;
    let _ = topology.delete(inspector.channel()).await;
    inspector.close().await;
}
