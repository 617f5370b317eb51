//! The API tests' harness (zero2prod's `spawn_app`): the real router over a database of the
//! test's own (`#[sqlx::test]`), called in-process.

#![allow(dead_code)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use herald_runtime::config::Secret;
use herald_storage::api_keys::{self, NewKey};
use herald_storage::{PgPool, tenants};
use http_body_util::BodyExt;
use serde_json::Value;
use subscription_api::AppState;
use subscription_api::auth::JwtKeys;
use subscription_api::config::{AuthConfig, LimitsConfig};
use tower::ServiceExt;

/// What the tests' API signs WebSocket client tokens with.
pub const WS_TOKEN_SECRET: &str = "test-websocket-token-secret";
/// The key verification codes are hashed with in these tests.
pub const CODE_SECRET: &str = "test-verification-code-secret";

pub const JWT_SECRET: &str = "test-secret-of-reasonable-length";

pub const SUBSCRIPTIONS: &str = "/api/messaging/subscriptions";
pub const REGISTRATIONS: &str = "/api/messaging/registrations";

pub fn subscription_path(id: &str) -> String {
    format!("{SUBSCRIPTIONS}/{id}")
}

pub fn registration_path(id: &str) -> String {
    format!("{REGISTRATIONS}/{id}")
}

/// The body that creates subscription `id`, labelled "Order updates".
pub fn new_subscription(id: &str) -> Value {
    serde_json::json!({
        "subscriptionId": id,
        "label": "Order updates",
        "description": "When an order changes",
    })
}

pub struct TestApp {
    pub router: Router,
    pub pool: PgPool,
    /// The test's own exchange and queue names, for tests that use the broker.
    pub names: messaging_core::topology::Names,
    /// The client address every request comes from (tests may change it).
    pub peer: std::net::SocketAddr,
    pub limits: Arc<subscription_api::limits::RateLimits>,
}

pub struct Response {
    pub status: StatusCode,
    pub content_type: String,
    pub retry_after: Option<u64>,
    pub body: Value,
}

impl TestApp {
    /// Rate limits high enough that only the rate-limit tests meet them.
    pub async fn new(pool: PgPool) -> TestApp {
        Self::with_limits(
            pool,
            LimitsConfig {
                max_body_bytes: 16 * 1024,
                caller_per_minute: 10_000,
                trigger_per_minute: 10_000,
                ip_failures_per_minute: 10_000,
                sms_country_codes: "1,41,44,49".into(),
                ..LimitsConfig::default()
            },
        )
        .await
    }

    pub async fn with_limits(pool: PgPool, limits: LimitsConfig) -> TestApp {
        let jwt = JwtKeys::from_config(&AuthConfig {
            jwt_hs256_secret: Secret::new(JWT_SECRET.into()),
            ..AuthConfig::default()
        })
        .unwrap();
        let names =
            messaging_core::topology::Names::new(herald_testkit::broker::unique_prefix("api"));
        let rate_limits =
            subscription_api::limits::RateLimits::new(&limits, Some(pool.clone())).unwrap();
        let state = AppState {
            pool: pool.clone(),
            jwt: Arc::new(jwt),
            names: names.clone(),
            limits: rate_limits.clone(),
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
                .expect("verification settings"),
            ),
            accepts: subscription_api::accepts::Accepts::spawn(pool.clone()),
        };
        let router = subscription_api::startup::app(state, &limits);
        TestApp {
            router,
            pool,
            names,
            peer: ([192, 0, 2, 10], 50_000).into(),
            limits: rate_limits,
        }
    }

    /// An app with tenant `acme` and the key of its tenant admin: where most tests start.
    pub async fn with_acme(pool: PgPool) -> (TestApp, String) {
        let app = TestApp::new(pool).await;
        let admin = app.tenant_with_admin("acme").await;
        (app, admin)
    }

    pub async fn tenant(&self, key: &str) {
        tenants::create(&self.pool, key, key).await.unwrap();
    }

    /// Creates tenant `tenant` and returns the key of its tenant admin.
    pub async fn tenant_with_admin(&self, tenant: &str) -> String {
        self.tenant(tenant).await;
        self.tenant_admin(tenant).await
    }

    /// A new key for a tenant admin of `tenant`.
    pub async fn tenant_admin(&self, tenant: &str) -> String {
        self.key(Some(tenant), "tenant_admin", None).await
    }

    /// A new key for `user` of `tenant`.
    pub async fn user_key(&self, tenant: &str, user: &str) -> String {
        self.key(Some(tenant), "user", Some(user)).await
    }

    /// A new key for a global admin (who names its tenant with the `Herald-Tenant` header).
    pub async fn global_admin(&self) -> String {
        self.key(None, "global_admin", None).await
    }

    /// A key of `role` in `tenant` (`None` for a global admin), for `user` when role is user.
    pub async fn key(&self, tenant: Option<&str>, role: &str, user: Option<&str>) -> String {
        let tenant_id = match tenant {
            Some(key) => Some(tenants::by_key(&self.pool, key).await.unwrap().id),
            None => None,
        };
        let new = NewKey {
            tenant_id,
            role: role.parse().expect("a role"),
            user_id: user,
            name: "test",
            created_by: "test",
        };
        api_keys::create(&self.pool, new).await.unwrap().1
    }

    pub async fn get(&self, path: &str, credential: &str) -> Response {
        self.call("GET", path, Some(credential), None).await
    }

    pub async fn post(&self, path: &str, credential: &str, body: Value) -> Response {
        self.call("POST", path, Some(credential), Some(body)).await
    }

    pub async fn put(&self, path: &str, credential: &str, body: Value) -> Response {
        self.call("PUT", path, Some(credential), Some(body)).await
    }

    pub async fn delete(&self, path: &str, credential: &str) -> Response {
        self.call("DELETE", path, Some(credential), None).await
    }

    /// Creates subscription `id` from [`new_subscription`]; panics unless it is created.
    pub async fn create_subscription(&self, admin: &str, id: &str) -> Value {
        self.post(SUBSCRIPTIONS, admin, new_subscription(id))
            .await
            .expect(StatusCode::CREATED)
            .clone()
    }

    /// Gives `user` of `tenant` a proven address, as an admin's import would (only proven
    /// addresses can be subscribed with).
    pub async fn prove(&self, tenant: &str, user: &str, channel: &str, address: &str) {
        let tenant_id = tenants::by_key(&self.pool, tenant).await.unwrap().id;
        let mut tx = self.pool.begin().await.unwrap();
        let person = herald_storage::users::ensure(&mut *tx, tenant_id, user)
            .await
            .unwrap();
        let kind: messaging_core::AddressKind = channel.parse().expect("an address kind");
        let value = messaging_core::Address::parse(kind.channel(), address)
            .expect("a valid address")
            .value();
        let (row, _) = herald_storage::addresses::add(
            &mut *tx,
            herald_storage::addresses::NewAddress {
                tenant_id,
                user_id: person.id,
                kind,
                value: &value,
                display_name: None,
            },
        )
        .await
        .unwrap();
        herald_storage::verification::mark_verified(
            &mut tx,
            row.id,
            herald_storage::verification::Proof::Import,
            "test",
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    /// Subscribes to `subscription` with `body` (`channel`, `address`, maybe `userId`).
    pub async fn subscribe(&self, credential: &str, subscription: &str, body: Value) -> Response {
        let path = format!("{}/subscribe", subscription_path(subscription));
        self.post(&path, credential, body).await
    }

    /// Subscribes like [`TestApp::subscribe`] and returns the new registration's id; panics
    /// unless it is created.
    pub async fn new_registration(
        &self,
        credential: &str,
        subscription: &str,
        body: Value,
    ) -> String {
        self.subscribe(credential, subscription, body)
            .await
            .expect_str(StatusCode::CREATED, "registrationId")
    }

    /// Deletes `path` (204) and checks that it is gone (404 to a GET).
    pub async fn delete_for_good(&self, path: &str, credential: &str) {
        self.delete(path, credential)
            .await
            .expect(StatusCode::NO_CONTENT);
        self.get(path, credential)
            .await
            .expect_problem(StatusCode::NOT_FOUND, None);
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        credential: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        self.call_with(method, path, credential, &[], body.map(|b| b.to_string()))
            .await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        credential: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Response {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(credential) = credential {
            request = request.header("authorization", format!("Bearer {credential}"));
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        // What the server tells handlers about the connection (tests call in-process).
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Response {
            status,
            content_type,
            retry_after,
            body,
        }
    }
}

impl Response {
    #[track_caller]
    pub fn expect(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        &self.body
    }

    /// The `items` of a page answered with 200.
    #[track_caller]
    pub fn items(&self) -> &Vec<Value> {
        self.expect(StatusCode::OK)["items"]
            .as_array()
            .unwrap_or_else(|| panic!("a page with items: {}", self.body))
    }

    /// The string `field` of a body answered with `status`, such as a new object's id.
    #[track_caller]
    pub fn expect_str(&self, status: StatusCode, field: &str) -> String {
        self.expect(status)[field]
            .as_str()
            .unwrap_or_else(|| panic!("a string {field}: {}", self.body))
            .to_owned()
    }

    /// A problem document naming `field`.
    #[track_caller]
    pub fn expect_problem(&self, status: StatusCode, field: Option<&str>) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.content_type, "application/problem+json");
        assert_eq!(self.body["status"], status.as_u16());
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        if let Some(field) = field {
            assert_eq!(self.body["field"], field, "body: {}", self.body);
        }
    }
}
