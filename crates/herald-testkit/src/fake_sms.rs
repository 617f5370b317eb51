//! A fake SMS provider speaking Twilio's Messages API, for tests. It is a real HTTP server on
//! loopback: the SMS sender talks to it with its real client.
//!
//! - `POST /2010-04-01/Accounts/{sid}/Messages.json` (form `To`, `From` or
//!   `MessagingServiceSid`, `Body`; HTTP basic auth `sid:token`) answers `201` with a
//!   message SID, or Twilio's error JSON (`{"code", "message", "status"}`).
//! - `GET /2010-04-01/Accounts/{sid}.json`: the account, which senders use as a health probe.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

/// What the fake does instead of accepting a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// `429` with `Retry-After: <seconds>`.
    TooManyRequests { retry_after_secs: u64 },
    /// This status with Twilio's error body (500, 503, ...; 401 for bad credentials).
    Status(u16),
    /// Wait this long, then accept.
    Slow(Duration),
    /// Close the connection without answering.
    Drop,
}

#[derive(Debug, Clone)]
pub struct ReceivedSms {
    pub to: String,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub body: String,
    pub sid: String,
    pub at: Instant,
}

#[derive(Default)]
struct FakeState {
    received: Vec<ReceivedSms>,
    /// Every request to the Messages endpoint, accepted or not, with its time.
    requests: Vec<Instant>,
    next_faults: VecDeque<Fault>,
    outage: Option<Fault>,
    rejected_numbers: HashMap<String, (u32, String)>,
    /// With [`FakeSms::enforce_account_limit`]: the account's sends in the last second.
    account_limit: Option<crate::provider_limits::SlidingWindow>,
    /// Sends answered 429 for being over that limit.
    too_many: usize,
}

#[derive(Clone)]
struct Shared {
    sid: String,
    token: String,
    state: Arc<Mutex<FakeState>>,
}

pub struct FakeSms {
    addr: SocketAddr,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl FakeSms {
    /// Starts on a free loopback port with these credentials.
    pub async fn start(sid: &str, token: &str) -> FakeSms {
        let shared = Shared {
            sid: sid.to_owned(),
            token: token.to_owned(),
            state: Arc::default(),
        };
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(create_message),
            )
            .route("/2010-04-01/Accounts/{file}", get(account))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake SMS provider");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSms {
            addr,
            shared,
            server,
        }
    }

    /// What the sender's `base_url` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next requests get these faults, one each, in order.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state().next_faults.extend(faults);
    }

    /// Every request gets this fault (the probe too) until `None`.
    pub fn set_outage(&self, fault: Option<Fault>) {
        self.state().outage = fault;
    }

    /// Messages to this number fail with Twilio error `code` (21211 invalid number, 21610
    /// opted out, ...), answered with status 400.
    pub fn reject_number(&self, number: &str, code: u32, message: &str) {
        self.state()
            .rejected_numbers
            .insert(number.to_owned(), (code, message.to_owned()));
    }

    /// Answers 429 (Twilio's error 20429, with `Retry-After`) to sends beyond
    /// `per_second` in any second, as a provider enforcing an account's rate does.
    pub fn enforce_account_limit(&self, per_second: usize) {
        self.state().account_limit = Some(crate::provider_limits::SlidingWindow::new(
            per_second,
            Duration::from_secs(1),
        ));
    }

    /// Sends answered 429 for being over the account's limit.
    pub fn too_many_requests(&self) -> usize {
        self.state().too_many
    }

    pub fn received(&self) -> Vec<ReceivedSms> {
        self.state().received.clone()
    }

    /// How many messages it accepted so far (cheaper than [`FakeSms::received`] for a
    /// progress count).
    pub fn received_len(&self) -> usize {
        self.state().received.len()
    }

    /// Times of every Messages request, accepted or failed.
    pub fn request_times(&self) -> Vec<Instant> {
        self.state().requests.clone()
    }
}

impl Drop for FakeSms {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({"code": code, "message": message, "status": status.as_u16(), "more_info": format!("https://www.twilio.com/docs/errors/{code}")}))).into_response()
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    use std::fmt::Write;
    let expected = {
        // base64 of "sid:token", written out to avoid a dependency for one line.
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let input = format!("{}:{}", shared.sid, shared.token);
        let mut out = String::new();
        for chunk in input.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    let _ = out.write_char(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        format!("Basic {out}")
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str())
}

/// Applies the next or the standing fault. `Some(response)` answers instead of accepting.
async fn injected_fault(shared: &Shared) -> Option<Response> {
    let fault = {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .next_faults
            .pop_front()
            .or_else(|| state.outage.clone())
    };
    match fault? {
        Fault::TooManyRequests { retry_after_secs } => {
            let mut response = twilio_error(429, 20429, "Too Many Requests");
            response.headers_mut().insert(
                header::RETRY_AFTER,
                retry_after_secs.to_string().parse().expect("digits"),
            );
            Some(response)
        }
        Fault::Status(status) => Some(twilio_error(status, 20500, "Internal Server Error")),
        Fault::Slow(wait) => {
            tokio::time::sleep(wait).await;
            None
        }
        // A panic in the handler makes the server drop the connection without a response,
        // which is what a client sees from a connection reset.
        Fault::Drop => panic!("fake SMS provider: dropping the connection on purpose"),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NewMessage {
    to: String,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    body: String,
}

async fn create_message(
    State(shared): State<Shared>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<NewMessage>,
) -> Response {
    shared
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .requests
        .push(Instant::now());
    if sid != shared.sid || !authorized(&shared, &headers) {
        return twilio_error(401, 20003, "Authenticate");
    }
    if let Some(response) = injected_fault(&shared).await {
        return response;
    }
    if form.from.is_none() && form.messaging_service_sid.is_none() {
        return twilio_error(
            400,
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required",
        );
    }
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((code, message)) = state.rejected_numbers.get(&form.to) {
        return twilio_error(400, *code, message);
    }
    if let Some(Err(wait)) = state.account_limit.as_mut().map(|l| l.hit(Instant::now())) {
        state.too_many += 1;
        let mut response = twilio_error(429, 20429, "Too Many Requests");
        if let Ok(value) = crate::provider_limits::whole_seconds(wait)
            .to_string()
            .parse()
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let message_sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    state.received.push(ReceivedSms {
        to: form.to.clone(),
        from: form.from.clone(),
        messaging_service_sid: form.messaging_service_sid.clone(),
        body: form.body.clone(),
        sid: message_sid.clone(),
        at: Instant::now(),
    });
    (
        StatusCode::CREATED,
        axum::Json(json!({"sid": message_sid, "status": "queued", "to": form.to, "from": form.from, "body": form.body, "account_sid": shared.sid})),
    )
        .into_response()
}

async fn account(
    State(shared): State<Shared>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if file != format!("{}.json", shared.sid) || !authorized(&shared, &headers) {
        return twilio_error(401, 20003, "Authenticate");
    }
    let outage = shared
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .outage
        .clone();
    match outage {
        Some(Fault::Status(status)) => twilio_error(status, 20500, "Service Unavailable"),
        Some(Fault::Drop) => panic!("fake SMS provider: dropping the connection on purpose"),
        _ => axum::Json(json!({"sid": shared.sid, "status": "active"})).into_response(),
    }
}
