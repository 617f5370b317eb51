//! A fake of Microsoft's Bot Framework for the Teams sender: the token endpoint, the Bot
//! Connector's activities endpoint, the OpenID metadata and keys that sign the Bot
//! Framework's requests, and a client that posts signed activities to a bot, as the Bot
//! Framework does. A real HTTP server on loopback; the sender's real client code talks to it.
//!
//! - `POST /{tenant}/oauth2/v2.0/token` (form: client-credentials grant): a bearer token
//!   for the app, valid for [`FakeTeams::set_token_lifetime`] (an hour by default).
//! - `POST /v3/conversations/{id}/activities` (bearer token): records the activity and
//!   answers `{"id": ...}`; or a fault ([`Fault`]) with the Bot Connector's error body
//!   `{"error": {"code", "message"}}`; with [`FakeTeams::enforce_limits`], the published
//!   limits as sliding windows (per conversation 7/1 s, 8/2 s, 60/30 s, 1,800/h; 30
//!   requests/s for the app), over which it answers 429 `Throttled` with `Retry-After`.
//! - `GET /v1/.well-known/openidconfiguration` and `GET /v1/.well-known/keys`: the metadata
//!   and the JWKS (one RSA key, endorsed for `msteams`).
//! - [`FakeTeams::post_activity`]: an activity to the bot's messaging endpoint with a JWT
//!   signed like the Bot Framework's, or with a token that is wrong in one way ([`Signed`]).
//!
//! The RSA keys below are test keys made for this fake; nothing else trusts them.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::provider_limits::{KeyedWindows, SlidingWindow, whole_seconds};

pub const ISSUER: &str = "https://api.botframework.com";
pub const KEY_ID: &str = "fake-bot-framework-key";

const SIGNING_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC8scVGtsV/S/IK
k5wLLwoMUmERcN7iz1ZuBJdjYyITQL/dRhYOuoAppXJIU2rhgWHlLXjZz78qxG4P
DloYt/CUa+521uD5vxG+RgBDlGoqi1x66hBayEuh5v1yz3NJ0wogXO1JgVWkC1HK
LENmZzf5o+s5qwln4FRxi+4PJMZ3Wj1RC/oqP4RENgMOhOv+sbW1QnDIYGdQ8il7
YkrZFzLbmkzKe/EacAqXTdQl+ROykbzZDmYuSzFIXpdhIKboVuVUN08uEl2Y4z65
08tjx1dyHnxGOmaA/9QwLYxuUwmuq3WWXQFpZ2KoX0+w6qBbH9IE+khbweoYCDMF
ot2knfgTAgMBAAECggEABAL+NWQADEDKbeci039ghfqKYxs0jJCT6dWMfRRyeQOm
EJzuLcn78jwOPfNoEPtLNYV4ovODwPOu01XJcepsjFCZyp+u5iBlztcg0k7+zYDA
/+v8r7FqdOVlpgyQYEAYYFpuwQ1QNiNMzduQY0ZL2QbfIrlm2HUwgRQp2jCR95+Y
1j9rYeo5Bl11ubplruk6mD7T0vgQ8/WF1efhWGdMXv+Cv0xR/dEnB5GCJ7Niijbl
GMzGP9eYlujzXz1qxGYYm98bSIwnrQAv5gDi8IqkNbWzpcm7SbvluJk02yfmEN1U
OBUWVMrAKSq2W5CJ4WXC7uceSyLequyUc1eEEbU5YQKBgQDlKynNQiJHg8nd3Fha
cn6AHBgic1/NzVshI569oAauO2j6Ucs45SghqSQZFWzoXRwhVsC8PVYN4NjLcJh1
mNAZ8bYVVL14dAwmyeBN0JWXNtesMAbRwxXwxANX/CCOQYxlgX1oAo1uYNdhlSiV
PVU7wYP1Ihgq6w+gDN1VCY5bzQKBgQDSyXr8ZreFpYItLzY7E2G5H+LCnE9/DU01
xLU8VCN73+h9Ejd25ZNzswZh6onMO/aXZoWxbBYheV4uYou+VAXAfUJsIfKeYOJx
MjIH+BQ3ObNVM9XNbfTEduVYJWGJvVb2lvXwRJnXJHYiXCT+RFGCDa40bxlekgoV
EYU2jxCDXwKBgCc2gYqbvF3cURhjccLYQIkPRZnvf/8pGmTLQYhU74+0nrvmbw2n
OHy6AnFAV0hTVlLmE0iifi0VwkLdW1kT8tfdojh4LYuE3+drN7RY8p/TRIg0F5ag
+QofoCrX+4Ib+TgNNjYr6aNvcqtB6JXQztrQvBGf6d6+JghO6zh30CIpAoGABr3K
4Sen1u5kK23HHjyQc4tBhVfacwXJ4l5YLYXDXMLcfKOIgpT1Ek43dgo6Pf3s9Qqi
W/pI+ukWygT80yl8xZs79JlhWQ9gLp6cWwTkIKAHzEHMJLXPjjj/PMJ1TCJyFZDe
bMDE6syPuqmXxUoKEU6+s46aERw6llHpIMWSkaECgYEAwZg9tdiwTSU7m1UWE7zi
BJ3GwgE0uHIG8Z6EWDlcSSRe2FWEdX72MdFdVK7XU39Cky1q1wqEzxLrPAGPLtNr
WxWbEUS07/VE0qQEnbYixosNZsvuakipjHcvtJjhirL83GuWKEUkWvZCCfNCEB9g
akD+6EHRQodFU9Ht2Yyz1pc=
-----END PRIVATE KEY-----";

/// Another key: a token signed with it under [`KEY_ID`] is a forgery.
const ROGUE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQC3oyoq6s61yYg6
knVEteUNO5Y4HjOIcoa0/bMHsXUZXKOBpf/pHzctSSLbj31IQMPY74WFFdV1Jfa5
+JQswR2v+7UV6faVpPn6+sdIvBXPSJA3h+DFztsBxoh2uHY2TsGrD2acIflj47rl
6EaJvvrh2rDD1O9JFRHC1KuvKLN+y0VvGEnHGrd+xVHMO6+3fYbopPfAbRg5K+N3
tOKI5opb1f9cRYOyexWiEFyJ5VFUZgfo/PyA9QK73X77oGJqofIYn/Sl/0UCuZfD
swGdH87sHA3QwCvKWJez4XJMUS8+7Fcb51RwZhfSxheVGdYOU233QY3ZyTlXOZzg
A1+GSN0hAgMBAAECggEAAYWEHdu5AjZWx/g8mzOKrgwDhqpCLJQSA+nBKklOVd7A
pOb042Gx9MYWbaRuUS+tomjkpqREhLAmr5hQW6dLeVtv+2FZEicY2zQwbcWdvXqQ
UFd5o7tGG+lBHBEMLSRvVB0yJo1V5qv+TtHxYnTg4Fz/29yj9PmaZZWo4eWWFtD/
mr+Lj4aVpJYs+YIV8ZVxfwvK7AC7LDMU8knfpZNNFq83UOoA1S4YCMOLS1Ku9yh3
5+WpBCfzoXlfsgS0EdQb4TQA7N/leJ52Uv9s8e26NezeL3LpuJyHjGzPpPcV5cFq
78wwzgp+Rl+VdS4QNkpwKSKXWVUs7YW+zr5YmQi5GQKBgQDt8ztri97YZcSQoqHY
fcNB0eT8j6pJIhEWbgreeQ6KwAnkYrjLFtBzikzJKsaYjH3BR2zuCX2b7J/BYmu4
hAPEdMTZch5HvFGFOUY/IBTQfrga+6Cv2Ng5aFIJidH7+CJ1Qq/PYJ1a8qbQ8lvq
+quZz6Eyd0V+TWjPcGIInJ1ReQKBgQDFkTrSNyh9L6BFD2hL5KcXxsNZSzvST8zV
LcnDk6tX9w+osX2zsidSCMWVrG8eDwPbn+ay4/CILfCqOM+GHXTwrvGnw1wxmr9l
Ct3u1w9DSm8S04664EK//zadQRoRi4k/7/TSPICv8o4vE6R6gOMxyWpfBaD5iR1/
pY0TqF/m6QKBgCB+1SCMy3QWAdAWxa+BDUdR2Mm8/O5b3qWHhah4M8ozC6bK7J2f
kfwVaQMX+mMe3JWmoXOojCTdHbwVKszaCoGryK5BbW0yhJeDCNraEL2gcJgOwRUC
shS08G8pCSo16s7EuqnBcfvXo3xpfLAMZ57rwgHYU/85pxSdLmYqrTlRAoGALy2p
ID3vu0U+Pn+ZZlYp2LGsQIyIsoY/4cBXaA7BYfYrlRsda2Xlod9aX42X01O+lhmv
G5T3AW4HBH8gf2RVYoxERM2QHIBZqCVaLgjJKkaCE7rVYKbhCbxGLHM5aGsr0UrZ
6cJs8Jc5gOBt7JsOpfr1Hc/YSv6FPtAnykPw8tECgYAxjP+3Kk7pKBKxKQbCB92x
1KREB1BWJ9svu9+ehZVRvJqCxmZtHz3jqtdOX6pxLdU2IzqIi4ZEGFaTPcSe/aw6
18uP566twDM3Fgv4dZ1XQrSDPU4O2/WPBF1+kthQMCdWjwGRTXfYgNT20pGPPpKa
RlAigwOqN1FL+QjntxHhrw==
-----END PRIVATE KEY-----";

/// The modulus of [`SIGNING_KEY`], base64url.
const SIGNING_KEY_N: &str = "vLHFRrbFf0vyCpOcCy8KDFJhEXDe4s9WbgSXY2MiE0C_3UYWDrqAKaVySFNq4YFh5S142c-_KsRuDw5aGLfwlGvudtbg-b8RvkYAQ5RqKotceuoQWshLoeb9cs9zSdMKIFztSYFVpAtRyixDZmc3-aPrOasJZ-BUcYvuDyTGd1o9UQv6Kj-ERDYDDoTr_rG1tUJwyGBnUPIpe2JK2Rcy25pMynvxGnAKl03UJfkTspG82Q5mLksxSF6XYSCm6FblVDdPLhJdmOM-udPLY8dXch58RjpmgP_UMC2MblMJrqt1ll0BaWdiqF9PsOqgWx_SBPpIW8HqGAgzBaLdpJ34Ew";

/// What the Bot Connector does instead of accepting an activity.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status and error code (`403 ConversationBlockedByUser`, `404
    /// ConversationNotFound`, `412`, `502`, `413 MessageSizeTooBig`, ...).
    Error { status: u16, code: String },
    /// `429 Throttled` with `Retry-After: <seconds>`.
    Throttled { retry_after_secs: u64 },
    /// `401`: the token is no longer accepted (the fake forgets every token it issued).
    RevokeTokens,
    /// Wait this long, then accept.
    Slow(Duration),
    /// Close the connection without answering.
    Drop,
}

impl Fault {
    pub fn error(status: u16, code: &str) -> Fault {
        Fault::Error {
            status,
            code: code.to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReceivedActivity {
    pub conversation_id: String,
    /// The service URL's path it came to (`amer` for `<fake>/amer/`), `None` for the root.
    pub region: Option<String>,
    pub activity: Value,
    pub id: String,
    pub at: Instant,
}

impl ReceivedActivity {
    pub fn text(&self) -> &str {
        self.activity["text"].as_str().unwrap_or_default()
    }
}

/// How the token on a posted activity is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// As the Bot Framework signs.
    Properly,
    /// No `Authorization` header.
    Unsigned,
    WrongIssuer,
    WrongAudience,
    Expired,
    /// Names a key id the JWKS does not have.
    UnknownKey,
    /// Signed with another key under the real key id.
    Forged,
    /// The token's `serviceUrl` claim is another than the activity's.
    OtherServiceUrl,
}

struct Limits {
    conversation: Vec<KeyedWindows<String>>,
    app: SlidingWindow,
}

impl Limits {
    fn published() -> Limits {
        let per = |limit, secs| KeyedWindows::new(limit, Duration::from_secs(secs));
        Limits {
            conversation: vec![per(7, 1), per(8, 2), per(60, 30), per(1800, 3600)],
            app: SlidingWindow::new(30, Duration::from_secs(1)),
        }
    }

    fn hit(&mut self, conversation: &str, now: Instant) -> Result<(), Duration> {
        // Counted only when every window has room, as a refused request counts nowhere.
        let mut probe = self.app.clone();
        probe.hit(now)?;
        for windows in &self.conversation {
            windows.clone().hit(conversation.to_owned(), now)?;
        }
        self.app = probe;
        for windows in &mut self.conversation {
            let _ = windows.hit(conversation.to_owned(), now);
        }
        Ok(())
    }
}

#[derive(Default)]
struct FakeState {
    received: Vec<ReceivedActivity>,
    /// Every request to the activities endpoint, accepted or not.
    requests: Vec<Instant>,
    tokens: HashMap<String, Instant>,
    token_lifetime: Option<Duration>,
    next_faults: VecDeque<Fault>,
    /// Faults that stay, per conversation (a person who blocked the bot).
    conversation_faults: HashMap<String, Fault>,
    token_outage: Option<u16>,
    limits: Option<Limits>,
    throttled: usize,
}

#[derive(Clone)]
struct Shared {
    app_id: String,
    app_password: String,
    base_url: String,
    state: Arc<Mutex<FakeState>>,
    token_requests: Arc<AtomicUsize>,
    key_fetches: Arc<AtomicUsize>,
}

pub struct FakeTeams {
    addr: SocketAddr,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl FakeTeams {
    /// Starts on a free loopback port for the app with these credentials.
    pub async fn start(app_id: &str, app_password: &str) -> FakeTeams {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            app_id: app_id.to_owned(),
            app_password: app_password.to_owned(),
            base_url: format!("http://{addr}"),
            state: Arc::default(),
            token_requests: Arc::default(),
            key_fetches: Arc::default(),
        };
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/v1/.well-known/openidconfiguration", get(metadata))
            .route("/v1/.well-known/keys", get(keys))
            .route("/v3/conversations/{id}/activities", post(activity))
            // A service URL with a path, as Teams' regional ones are (`.../emea/`).
            .route(
                "/{region}/v3/conversations/{id}/activities",
                post(regional_activity),
            )
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeTeams {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The service URL of conversations on this fake, as activities carry it.
    pub fn service_url(&self) -> String {
        format!("{}/", self.shared.base_url)
    }

    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.shared.base_url)
    }

    pub fn openid_metadata_url(&self) -> String {
        format!(
            "{}/v1/.well-known/openidconfiguration",
            self.shared.base_url
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next requests to the activities endpoint get these faults, in order.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state().next_faults.extend(faults);
    }

    /// Every request for this conversation gets `fault` (or again succeeds, with `None`).
    pub fn fail_conversation(&self, conversation_id: &str, fault: Option<Fault>) {
        let mut state = self.state();
        match fault {
            Some(fault) => state
                .conversation_faults
                .insert(conversation_id.to_owned(), fault),
            None => state.conversation_faults.remove(conversation_id),
        };
    }

    /// The token endpoint answers this status (or works again, with `None`).
    pub fn set_token_outage(&self, status: Option<u16>) {
        self.state().token_outage = status;
    }

    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.state().token_lifetime = Some(lifetime);
    }

    /// Enforce the Bot Connector's published limits from now on.
    pub fn enforce_limits(&self) {
        self.state().limits = Some(Limits::published());
    }

    pub fn received(&self) -> Vec<ReceivedActivity> {
        self.state().received.clone()
    }

    pub fn request_times(&self) -> Vec<Instant> {
        self.state().requests.clone()
    }

    /// How many requests the limits refused with 429.
    pub fn throttled(&self) -> usize {
        self.state().throttled
    }

    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    pub fn key_fetches(&self) -> usize {
        self.shared.key_fetches.load(Ordering::SeqCst)
    }

    /// A message activity from a person in a personal chat with the bot.
    pub fn message(&self, conversation_id: &str, text: &str) -> Value {
        json!({
            "type": "message",
            "id": uuid::Uuid::new_v4().to_string(),
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "serviceUrl": self.service_url(),
            "channelId": "msteams",
            "from": {"id": "29:1person", "name": "Ann Example", "aadObjectId": "00000000-0000-0000-0000-00000000a11e"},
            "conversation": {"id": conversation_id, "conversationType": "personal", "tenantId": "tenant-1"},
            "recipient": {"id": format!("28:{}", self.shared.app_id), "name": "Herald"},
            "text": text,
            "channelData": {"tenant": {"id": "tenant-1"}},
        })
    }

    /// The bot was added to a personal chat.
    pub fn installation(&self, conversation_id: &str) -> Value {
        let mut activity = self.message(conversation_id, "");
        activity["type"] = json!("installationUpdate");
        activity["action"] = json!("add");
        activity.as_object_mut().unwrap().remove("text");
        activity
    }

    /// Posts `activity` to the bot's messaging endpoint (`http://.../api/messages`) with a
    /// token made as `signed` says; the status and body of the answer.
    pub async fn post_activity(
        &self,
        endpoint: &str,
        activity: &Value,
        signed: Signed,
    ) -> (u16, String) {
        let service_url = activity["serviceUrl"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let token = self.token_for(&service_url, signed);
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        crate::http::post_json(endpoint, &headers, activity.to_string().as_bytes())
            .await
            .unwrap()
    }

    /// A Bot Framework token for a request carrying `service_url`.
    pub fn token_for(&self, service_url: &str, signed: Signed) -> Option<String> {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": ISSUER,
            "aud": self.shared.app_id,
            "nbf": now - 10,
            "exp": now + 3600,
            "serviceUrl": service_url,
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KEY_ID.into());
        let mut key = SIGNING_KEY;
        match signed {
            Signed::Properly => {}
            Signed::Unsigned => return None,
            Signed::WrongIssuer => claims["iss"] = json!("https://sts.example.org"),
            Signed::WrongAudience => claims["aud"] = json!("someone-elses-app"),
            // Well past the bot's five minutes of leeway.
            Signed::Expired => claims["exp"] = json!(now - 3600),
            Signed::UnknownKey => header.kid = Some("not-a-bot-framework-key".into()),
            Signed::Forged => key = ROGUE_KEY,
            Signed::OtherServiceUrl => claims["serviceUrl"] = json!("https://evil.example/"),
        }
        let key = EncodingKey::from_rsa_pem(key.as_bytes()).unwrap();
        Some(jsonwebtoken::encode(&header, &claims, &key).unwrap())
    }
}

impl Drop for FakeTeams {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn connector_error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    client_id: String,
    client_secret: String,
    scope: String,
}

async fn token(State(shared): State<Shared>, Form(form): Form<TokenForm>) -> Response {
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(status) = state.token_outage {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, axum::Json(json!({"error": "temporarily_unavailable", "error_description": "AADSTS: the fake is down"}))).into_response();
    }
    if form.grant_type != "client_credentials"
        || form.client_id != shared.app_id
        || form.client_secret != shared.app_password
        || form.scope != "https://api.botframework.com/.default"
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."})),
        )
            .into_response();
    }
    let lifetime = state.token_lifetime.unwrap_or(Duration::from_secs(3600));
    let value = format!("fake-token-{}", uuid::Uuid::new_v4().simple());
    state
        .tokens
        .insert(value.clone(), Instant::now() + lifetime);
    axum::Json(json!({"token_type": "Bearer", "expires_in": lifetime.as_secs(), "ext_expires_in": lifetime.as_secs(), "access_token": value})).into_response()
}

async fn metadata(State(shared): State<Shared>) -> Response {
    axum::Json(json!({
        "issuer": ISSUER,
        "authorization_endpoint": "https://invalid.botframework.com",
        "jwks_uri": format!("{}/v1/.well-known/keys", shared.base_url),
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
    }))
    .into_response()
}

async fn keys(State(shared): State<Shared>) -> Response {
    shared.key_fetches.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({"keys": [{
        "kty": "RSA",
        "use": "sig",
        "kid": KEY_ID,
        "n": SIGNING_KEY_N,
        "e": "AQAB",
        "endorsements": ["msteams"],
    }]}))
    .into_response()
}

async fn activity(
    State(shared): State<Shared>,
    Path(conversation_id): Path<String>,
    headers: HeaderMap,
    axum::Json(activity): axum::Json<Value>,
) -> Response {
    receive(shared, None, conversation_id, headers, activity).await
}

async fn regional_activity(
    State(shared): State<Shared>,
    Path((region, conversation_id)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Json(activity): axum::Json<Value>,
) -> Response {
    receive(shared, Some(region), conversation_id, headers, activity).await
}

async fn receive(
    shared: Shared,
    region: Option<String>,
    conversation_id: String,
    headers: HeaderMap,
    activity: Value,
) -> Response {
    let now = Instant::now();
    let fault = {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.requests.push(now);
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if state.tokens.get(token).is_none_or(|until| *until <= now) {
            return connector_error(
                401,
                "Unauthorized",
                "Authorization has been denied for this request.",
            );
        }
        let fault = state
            .next_faults
            .pop_front()
            .or_else(|| state.conversation_faults.get(&conversation_id).cloned());
        if fault.is_none()
            && let Some(limits) = state.limits.as_mut()
            && let Err(wait) = limits.hit(&conversation_id, now)
        {
            state.throttled += 1;
            let mut response = connector_error(429, "Throttled", "Too many requests");
            response.headers_mut().insert(
                "retry-after",
                whole_seconds(wait).to_string().parse().unwrap(),
            );
            return response;
        }
        if fault == Some(Fault::RevokeTokens) {
            state.tokens.clear();
        }
        fault
    };
    match fault {
        Some(Fault::Error { status, code }) => {
            return connector_error(status, &code, "the fake was told to refuse this");
        }
        Some(Fault::Throttled { retry_after_secs }) => {
            let mut response = connector_error(429, "Throttled", "Too many requests");
            response
                .headers_mut()
                .insert("retry-after", retry_after_secs.to_string().parse().unwrap());
            return response;
        }
        Some(Fault::RevokeTokens) => {
            return connector_error(
                401,
                "Unauthorized",
                "Authorization has been denied for this request.",
            );
        }
        Some(Fault::Slow(wait)) => tokio::time::sleep(wait).await,
        // A panic in the handler makes the server drop the connection without a response.
        Some(Fault::Drop) => panic!("fake Bot Connector: dropping the connection on purpose"),
        None => {}
    }
    let id = format!("1:{}", uuid::Uuid::new_v4().simple());
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    state.received.push(ReceivedActivity {
        conversation_id,
        region,
        activity,
        id: id.clone(),
        at: Instant::now(),
    });
    (StatusCode::CREATED, axum::Json(json!({"id": id}))).into_response()
}
