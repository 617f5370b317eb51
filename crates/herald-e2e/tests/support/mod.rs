//! The system the end-to-end tests run: the router as its binary runs it (with its outbox
//! relay), the API in-process, on one test database and one broker prefix, and senders
//! started on the same prefix by each test.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use fanout_router::config::{Config, RouterConfig};
use futures::future::BoxFuture;
use herald_runtime::amqp::Topology;
use herald_runtime::config::{AmqpConfig, BaseConfig, Secret};
use herald_runtime::service::Service;
use herald_storage::db::DatabaseConfig;
use herald_storage::{PgPool, api_keys, tenants};
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use http_body_util::BodyExt;
use messaging_core::topology::Names;
use serde_json::Value;
use subscription_api::AppState;
use subscription_api::auth::JwtKeys;
use subscription_api::config::{AuthConfig, LimitsConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What the tests' API signs WebSocket client tokens with.
/// The API's and the router's `verification.code_secret`.
const CODE_SECRET: &str = "e2e-verification-code-secret";

pub const WS_TOKEN_SECRET: &str = "test-websocket-token-secret";

pub const WAIT: Duration = Duration::from_secs(30);

pub struct System {
    pub pool: PgPool,
    pub api: axum::Router,
    pub names: Names,
    pub inspector: Inspector,
    /// A tenant admin's key in tenant `acme`.
    pub admin: String,
    base: BaseConfig,
    topology: Topology,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<std::io::Result<()>>>,
}

impl System {
    pub async fn start(pool: PgPool, test: &str) -> System {
        herald_runtime::install_crypto_provider();
        let base = BaseConfig {
            amqp: AmqpConfig {
                url: Secret::new(amqp_url()),
                prefix: unique_prefix(test),
                delays_ms: vec![100, 300, 1_000],
                reconnect_max_ms: 1_000,
                publish_timeout_ms: 20_000,
                ..AmqpConfig::default()
            },
            ..BaseConfig::default()
        };
        let shutdown = CancellationToken::new();
        let router_service = service(&base, "e2e-router", &shutdown).await;
        let names = router_service.topology.names().clone();
        let topology = router_service.topology.clone();
        let config = Config {
            base: base.clone(),
            router: RouterConfig::default(),
            database: DatabaseConfig::default(),
            // The API's below: link codes it issues are redeemed here.
            verification: fanout_router::config::LinkCodeKey {
                code_secret: herald_runtime::config::Secret::new(CODE_SECRET.into()),
            },
        };
        let work = fanout_router::start(&router_service, &config, pool.clone()).unwrap();
        let router = tokio::spawn(router_service.run(axum::Router::new(), work));

        let limits = LimitsConfig::default();
        let state = AppState {
            pool: pool.clone(),
            jwt: Arc::new(JwtKeys::from_config(&AuthConfig::default()).unwrap()),
            names: names.clone(),
            limits: subscription_api::limits::RateLimits::new(&limits, Some(pool.clone())).unwrap(),
            link_code_ttl: limits.link_code_ttl(),
            websocket: Arc::new(subscription_api::config::WebsocketTokenConfig {
                token_secret: herald_runtime::config::Secret::new(WS_TOKEN_SECRET.into()),
                ..Default::default()
            }),
            verifier: Arc::new(
                subscription_api::verification::Verifier::from_config(
                    &subscription_api::config::VerificationConfig {
                        code_secret: herald_runtime::config::Secret::new(CODE_SECRET.into()),
                        ..Default::default()
                    },
                    &limits,
                )
                .unwrap(),
            ),
            accepts: subscription_api::accepts::Accepts::spawn(pool.clone()),
        };
        let api = subscription_api::startup::app(state, &limits);

        let inspector = Inspector::connect().await;
        topology.declare(inspector.connection()).await.unwrap();

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
        System {
            pool,
            api,
            names,
            inspector,
            admin,
            base,
            topology,
            shutdown,
            tasks: vec![router],
        }
    }

    /// Runs a sender (or anything built on a [`Service`]) on the system's prefix until the
    /// end of the test: `start` builds its routes and work, as the binary's `main` would.
    /// Returns the service's HTTP address (health, and a bot's inbound routes).
    pub async fn run(
        &mut self,
        name: &'static str,
        start: impl for<'s> FnOnce(&'s Service) -> BoxFuture<'s, (axum::Router, BoxFuture<'static, ()>)>,
    ) -> std::net::SocketAddr {
        let service = service(&self.base, name, &self.shutdown).await;
        let addr = service.local_addr().unwrap();
        let (routes, work) = start(&service).await;
        self.tasks.push(tokio::spawn(service.run(routes, work)));
        addr
    }

    /// A request to the API as the tenant admin: status and JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", &self.admin);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(
                body.map(|b| Body::from(b.to_string()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        let response = self.api.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Polls `GET path` until `done(body)`; panics with the last body after [`WAIT`].
    pub async fn wait_for(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = self.call("GET", path, None).await;
            if status == 200 && done(&body) {
                return body;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("GET {path} never got there; last answer {status}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn finish(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let _ = self.topology.delete(self.inspector.channel()).await;
        self.inspector.close().await;
    }
}

async fn service(base: &BaseConfig, name: &'static str, shutdown: &CancellationToken) -> Service {
    Service::with_parts(
        name,
        base.clone(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        shutdown.clone(),
    )
}

/// Waits until `found()` gives something, or panics with `what` after [`WAIT`].
pub async fn eventually<T>(what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = found() {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
