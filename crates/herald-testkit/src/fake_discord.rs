//! A fake Discord REST API, for tests. It is a real HTTP server on loopback serving
//! `/api/v10/...`: point serenity at it with
//! `HttpBuilder::new(token).proxy(fake.proxy_url()).ratelimiter_disabled(true)`.
//!
//! The ratelimiter must be disabled: serenity 0.12's `Ratelimiter::perform` builds every
//! request without the proxy, so with the ratelimiter on, requests go to discord.com whatever
//! `proxy` says. Without it, serenity does not retry a 429 itself: it returns it as
//! `HttpError::UnsuccessfulRequest` with status 429.
//!
//! - `GET /users/@me`: the bot user.
//! - `GET /oauth2/applications/@me` (and `/applications/@me`): the application, with the
//!   `verify_key` of [`FakeDiscord::set_verify_key`].
//! - `POST /users/@me/channels {recipient_id}`: a DM channel, the same one for the same user.
//! - `POST /channels/{id}/messages`: recorded ([`FakeDiscord::sent`]), answered with a
//!   `Message`; DM channels opened here and channels added with
//!   [`FakeDiscord::add_text_channel`] exist, any other is `10003 Unknown Channel`.
//! - `PUT`/`GET /applications/{id}/commands` and `/applications/{id}/guilds/{guild}/commands`:
//!   bulk overwrite (recorded), answered with the commands with their ids.
//! - `POST /interactions/{id}/{token}/callback`: recorded, 204.
//!
//! With [`FakeDiscord::enforce_limits`], requests beyond Discord's limits get 429, counted
//! as sliding windows: 50 a second in all (global) and 5 messages per 5 s per channel.
//!
//! Every request needs `Authorization: Bot <token>` (except interaction callbacks, which
//! Discord authenticates by the token in the path); otherwise 401. Answers carry Discord's
//! `x-ratelimit-*` headers; errors are Discord's `{"code", "message"}` JSON.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::provider_limits::{KeyedWindows, SlidingWindow};

/// What the fake answers instead of doing what was asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 429 with `{"message", "retry_after": <float seconds>, "global"}` and the headers
    /// Discord sends: `retry-after` (whole seconds, rounded up), `x-ratelimit-limit`,
    /// `-remaining: 0`, `-reset`, `-reset-after`, `-bucket`, `-scope`, and
    /// `x-ratelimit-global: true` when global.
    TooManyRequests { retry_after: f64, global: bool },
    /// 403 `{"code": 50007, "message": "Cannot send messages to this user"}`: the user
    /// blocks DMs from the bot or shares no server with it.
    CannotMessageUser,
    /// 404 `{"code": 10013, "message": "Unknown User"}`.
    UnknownUser,
    /// 404 `{"code": 10003, "message": "Unknown Channel"}`.
    UnknownChannel,
    /// 403 `{"code": 50001, "message": "Missing Access"}`.
    MissingAccess,
    /// 403 `{"code": 50013, "message": "Missing Permissions"}`.
    MissingPermissions,
    /// Any other Discord error.
    Api {
        status: u16,
        code: i64,
        message: String,
    },
    /// This status (500, 502, ...) with `{"code": 0, "message": "502: Bad Gateway"}`.
    Status(u16),
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Close the connection without answering.
    Drop,
}

/// Which kind of request a queued fault is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /users/@me/channels`.
    OpenDm,
    /// `POST /channels/{id}/messages`.
    SendMessage,
    /// `PUT /applications/{id}/commands` (global or guild).
    OverwriteCommands,
}

/// Discord's limits for one bot. [`Default`]: the global 50 requests a second that Discord
/// publishes, and 5 messages per 5 s per channel, the bucket Discord's headers show for
/// `POST /channels/{id}/messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscordLimits {
    pub global_per_second: usize,
    pub per_channel: usize,
    pub per_channel_window: Duration,
}

impl Default for DiscordLimits {
    fn default() -> Self {
        DiscordLimits {
            global_per_second: 50,
            per_channel: 5,
            per_channel_window: Duration::from_secs(5),
        }
    }
}

/// The windows of [`DiscordLimits`], while enforced.
struct Windows {
    global: SlidingWindow,
    channels: KeyedWindows<u64>,
}

/// A message the fake accepted.
#[derive(Debug, Clone)]
pub struct DiscordMessage {
    pub channel_id: u64,
    /// The user whose DM channel this is; `None` for a text channel.
    pub recipient_id: Option<u64>,
    pub content: String,
    pub embeds: Value,
    /// The whole request body (`allowed_mentions`, `components`, ...).
    pub body: Value,
    pub message_id: u64,
    pub at: Instant,
}

/// Any request the fake received, answered or not.
#[derive(Debug, Clone)]
pub struct DiscordRequest {
    pub method: String,
    /// The path after `/api/v10`, e.g. `/channels/123/messages`.
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
    pub at: Instant,
    /// The status answered; `None` while waiting or if the connection was dropped.
    pub status: Option<u16>,
}

/// One bulk overwrite of application commands.
#[derive(Debug, Clone)]
pub struct CommandOverwrite {
    /// `None` for global commands.
    pub guild_id: Option<u64>,
    /// The commands as sent (a JSON array).
    pub commands: Value,
    pub at: Instant,
}

/// A response to an interaction through `POST /interactions/{id}/{token}/callback`.
#[derive(Debug, Clone)]
pub struct InteractionCallback {
    pub interaction_id: u64,
    pub token: String,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
struct FakeState {
    requests: Vec<DiscordRequest>,
    sent: Vec<DiscordMessage>,
    dm_by_user: HashMap<u64, u64>,
    user_by_dm: HashMap<u64, u64>,
    text_channels: HashSet<u64>,
    /// Current commands per scope (`None` = global), and the id each name keeps across
    /// overwrites, as Discord does.
    commands: HashMap<Option<u64>, Value>,
    command_ids: HashMap<(Option<u64>, String), u64>,
    overwrites: Vec<CommandOverwrite>,
    callbacks: Vec<InteractionCallback>,
    next_faults: HashMap<Endpoint, VecDeque<Fault>>,
    user_faults: HashMap<u64, Fault>,
    outage: Option<Fault>,
    too_many_requests: usize,
    limits: Option<Windows>,
    next_id: u64,
    verify_key: String,
    /// Messages created with `enforce_nonce`, by channel and nonce: what Discord answers
    /// when the same nonce comes again within a few minutes.
    nonces: HashMap<(u64, String), (Value, Instant)>,
}

/// How long Discord remembers an enforced nonce ("the past few minutes").
const NONCE_WINDOW: Duration = Duration::from_secs(5 * 60);

impl FakeState {
    /// A new snowflake; they only need to be unique and increasing here.
    fn snowflake(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

#[derive(Clone)]
struct Shared {
    token: String,
    application_id: u64,
    state: Arc<Mutex<FakeState>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct FakeDiscord {
    addr: SocketAddr,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

/// The bot's username in `/users/@me` and as the author of sent messages.
pub const BOT_USERNAME: &str = "Herald Test Bot";

impl FakeDiscord {
    /// Starts on a free loopback port for this bot token and application. The bot user's id
    /// is the application id, as for every bot made since 2016.
    pub async fn start(token: &str, application_id: u64) -> FakeDiscord {
        let shared = Shared {
            token: token.to_owned(),
            application_id,
            state: Arc::new(Mutex::new(FakeState {
                next_id: 1_300_000_000_000_000_000,
                verify_key: "0".repeat(64),
                ..FakeState::default()
            })),
        };
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake Discord");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeDiscord {
            addr,
            shared,
            server,
        }
    }

    /// What serenity's `HttpBuilder::proxy` takes (`http://127.0.0.1:PORT`).
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn application_id(&self) -> u64 {
        self.shared.application_id
    }

    /// The bot user's id (the application id).
    pub fn bot_user_id(&self) -> u64 {
        self.shared.application_id
    }

    /// The public key `GET /oauth2/applications/@me` reports as `verify_key` (hex), e.g.
    /// `InteractionClient::public_key_hex()`.
    pub fn set_verify_key(&self, hex: &str) {
        self.shared.state().verify_key = hex.to_owned();
    }

    /// A guild text channel messages can be sent to.
    pub fn add_text_channel(&self, channel_id: u64) {
        self.shared.state().text_channels.insert(channel_id);
    }

    // ----- faults -----

    /// The next message sends get these faults, one each, in order.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.fail_next_on(Endpoint::SendMessage, faults);
    }

    /// The next requests to this endpoint get these faults, one each, in order.
    pub fn fail_next_on(&self, endpoint: Endpoint, faults: impl IntoIterator<Item = Fault>) {
        self.shared
            .state()
            .next_faults
            .entry(endpoint)
            .or_default()
            .extend(faults);
    }

    /// This user's fault until `None`. [`Fault::UnknownUser`] answers opening the DM
    /// channel (Discord refuses it there); any other fault answers every message sent to
    /// the user's DM channel (50007 comes on the send: opening the DM succeeds).
    pub fn set_user_fault(&self, user_id: u64, fault: Option<Fault>) {
        let mut state = self.shared.state();
        match fault {
            Some(fault) => state.user_faults.insert(user_id, fault),
            None => state.user_faults.remove(&user_id),
        };
    }

    /// Every request gets this fault until `None`.
    pub fn set_outage(&self, fault: Option<Fault>) {
        self.shared.state().outage = fault;
    }

    // ----- records -----

    /// Messages accepted, in order.
    /// From now on requests beyond these limits get 429 (global or for the channel's bucket),
    /// counted in [`FakeDiscord::too_many_requests_answered`].
    pub fn enforce_limits(&self, limits: DiscordLimits) {
        self.shared.state().limits = Some(Windows {
            global: SlidingWindow::new(limits.global_per_second, Duration::from_secs(1)),
            channels: KeyedWindows::new(limits.per_channel, limits.per_channel_window),
        });
    }

    pub fn sent(&self) -> Vec<DiscordMessage> {
        self.shared.state().sent.clone()
    }

    /// Every request received, in order of arrival.
    pub fn requests(&self) -> Vec<DiscordRequest> {
        self.shared.state().requests.clone()
    }

    /// The DM channel opened for this user, if any.
    pub fn dm_channel_of(&self, user_id: u64) -> Option<u64> {
        self.shared.state().dm_by_user.get(&user_id).copied()
    }

    /// The current global commands (as sent, without ids; a JSON array).
    pub fn commands(&self) -> Value {
        self.shared
            .state()
            .commands
            .get(&None)
            .cloned()
            .unwrap_or(json!([]))
    }

    /// Every bulk overwrite, global or per guild, in order.
    pub fn command_overwrites(&self) -> Vec<CommandOverwrite> {
        self.shared.state().overwrites.clone()
    }

    pub fn interaction_callbacks(&self) -> Vec<InteractionCallback> {
        self.shared.state().callbacks.clone()
    }

    /// How many 429 answers the fake gave.
    pub fn too_many_requests_answered(&self) -> usize {
        self.shared.state().too_many_requests
    }
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn now_iso8601() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

/// A user as Discord shows it since unique usernames (`discriminator` "0").
pub(crate) fn user_json(user_id: u64) -> Value {
    json!({
        "id": user_id.to_string(),
        "username": format!("user{user_id}"),
        "global_name": format!("User {user_id}"),
        "discriminator": "0",
        "avatar": null,
        "public_flags": 0,
        "flags": 0,
    })
}

fn bot_user_json(bot_id: u64) -> Value {
    json!({
        "id": bot_id.to_string(),
        "username": BOT_USERNAME,
        "global_name": null,
        "discriminator": "0",
        "avatar": null,
        "bot": true,
        "public_flags": 0,
        "flags": 0,
    })
}

/// Discord's rate-limit headers on an ordinary answer: plenty left in the bucket.
fn add_ratelimit_headers(headers: &mut HeaderMap, remaining: u32, reset_after: f64) {
    let reset = unix_now_f64() + reset_after;
    let pairs = [
        ("x-ratelimit-limit", "5".to_owned()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset", format!("{reset:.3}")),
        ("x-ratelimit-reset-after", format!("{reset_after:.3}")),
        ("x-ratelimit-bucket", "fakebucket0000".to_owned()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    add_ratelimit_headers(response.headers_mut(), 4, 1.0);
    response
}

fn discord_error(status: u16, code: i64, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, json!({"code": code, "message": message}))
}

/// Counts 429s and turns a fault into its answer; `None` for `Slow` (after the wait).
async fn answer_fault(shared: &Shared, fault: Fault) -> Option<Response> {
    match fault {
        Fault::TooManyRequests {
            retry_after,
            global,
        } => {
            shared.state().too_many_requests += 1;
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({
                    "message": "You are being rate limited.",
                    "retry_after": retry_after,
                    "global": global,
                })),
            )
                .into_response();
            let headers = response.headers_mut();
            add_ratelimit_headers(headers, 0, retry_after);
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.ceil().max(0.0) as u64),
            );
            headers.insert(
                "x-ratelimit-scope",
                HeaderValue::from_static(if global { "global" } else { "user" }),
            );
            if global {
                headers.insert("x-ratelimit-global", HeaderValue::from_static("true"));
            }
            Some(response)
        }
        Fault::CannotMessageUser => Some(discord_error(
            403,
            50007,
            "Cannot send messages to this user",
        )),
        Fault::UnknownUser => Some(discord_error(404, 10013, "Unknown User")),
        Fault::UnknownChannel => Some(discord_error(404, 10003, "Unknown Channel")),
        Fault::MissingAccess => Some(discord_error(403, 50001, "Missing Access")),
        Fault::MissingPermissions => Some(discord_error(403, 50013, "Missing Permissions")),
        Fault::Api {
            status,
            code,
            message,
        } => Some(discord_error(status, code, &message)),
        Fault::Status(status) => {
            let reason = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Internal Server Error");
            Some(discord_error(status, 0, &format!("{status}: {reason}")))
        }
        Fault::Slow(wait) => {
            tokio::time::sleep(wait).await;
            None
        }
        // A panic in the handler makes the server drop the connection without a response,
        // which is what a client sees from a connection reset.
        Fault::Drop => panic!("fake Discord: dropping the connection on purpose"),
    }
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path()
        .strip_prefix("/api/v10")
        .unwrap_or(uri.path())
        .to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let index = {
        let mut state = shared.state();
        state.requests.push(DiscordRequest {
            method: method.to_string(),
            path: path.clone(),
            authorization: authorization.clone(),
            body: body.clone(),
            at: Instant::now(),
            status: None,
        });
        state.requests.len() - 1
    };
    let response = if uri.path().starts_with("/api/v10/") {
        route(&shared, &method, &path, authorization.as_deref(), body).await
    } else {
        discord_error(404, 0, "404: Not Found")
    };
    if let Some(request) = shared.state().requests.get_mut(index) {
        request.status = Some(response.status().as_u16());
    }
    response
}

async fn route(
    shared: &Shared,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    body: Value,
) -> Response {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let ["interactions", id, token, "callback"] = segments.as_slice()
        && *method == Method::POST
    {
        let mut state = shared.state();
        state.callbacks.push(InteractionCallback {
            interaction_id: id.parse().unwrap_or_default(),
            token: (*token).to_owned(),
            body,
            at: Instant::now(),
        });
        return StatusCode::NO_CONTENT.into_response();
    }
    if authorization != Some(format!("Bot {}", shared.token).as_str()) {
        return discord_error(401, 0, "401: Unauthorized");
    }
    let refused = {
        let mut state = shared.state();
        let now = Instant::now();
        state.limits.as_mut().and_then(|limits| {
            limits
                .global
                .hit(now)
                .err()
                .map(|wait| (wait, true))
                .or_else(|| match segments.as_slice() {
                    ["channels", channel, "messages"] if *method == Method::POST => {
                        let channel = channel.parse().unwrap_or_default();
                        limits
                            .channels
                            .hit(channel, now)
                            .err()
                            .map(|wait| (wait, false))
                    }
                    _ => None,
                })
        })
    };
    if let Some((wait, global)) = refused
        && let Some(response) = answer_fault(
            shared,
            Fault::TooManyRequests {
                retry_after: wait.as_secs_f64(),
                global,
            },
        )
        .await
    {
        return response;
    }
    let outage = shared.state().outage.clone();
    if let Some(fault) = outage
        && let Some(response) = answer_fault(shared, fault).await
    {
        return response;
    }
    let app = shared.application_id;
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["users", "@me"]) => json_response(StatusCode::OK, bot_user_json(app)),
        (Method::GET, ["oauth2", "applications", "@me"] | ["applications", "@me"]) => {
            let verify_key = shared.state().verify_key.clone();
            json_response(
                StatusCode::OK,
                json!({
                    "id": app.to_string(),
                    "name": BOT_USERNAME,
                    "icon": null,
                    "description": "",
                    "bot_public": false,
                    "bot_require_code_grant": false,
                    "verify_key": verify_key,
                    "flags": 0,
                    "team": null,
                    "bot": bot_user_json(app),
                }),
            )
        }
        (Method::POST, ["users", "@me", "channels"]) => open_dm(shared, &body).await,
        (Method::POST, ["channels", channel, "messages"]) => {
            send_message(shared, channel, body).await
        }
        (Method::PUT, ["applications", id, "commands"]) => {
            overwrite_commands(shared, id, None, body).await
        }
        (Method::PUT, ["applications", id, "guilds", guild, "commands"]) => match guild.parse() {
            Ok(guild) => overwrite_commands(shared, id, Some(guild), body).await,
            Err(_) => discord_error(404, 10004, "Unknown Guild"),
        },
        (Method::GET, ["applications", id, "commands"]) if *id == app.to_string() => {
            let commands = shared.state().commands.get(&None).cloned();
            json_response(
                StatusCode::OK,
                with_ids(shared, None, &commands.unwrap_or(json!([]))),
            )
        }
        (Method::GET, ["applications", id, "guilds", guild, "commands"])
            if *id == app.to_string() =>
        {
            let guild = guild.parse().ok();
            let commands = shared.state().commands.get(&guild).cloned();
            json_response(
                StatusCode::OK,
                with_ids(shared, guild, &commands.unwrap_or(json!([]))),
            )
        }
        _ => discord_error(404, 0, "404: Not Found"),
    }
}

/// Pops the queued fault for this endpoint, if any.
fn queued_fault(shared: &Shared, endpoint: Endpoint) -> Option<Fault> {
    shared
        .state()
        .next_faults
        .get_mut(&endpoint)
        .and_then(VecDeque::pop_front)
}

fn id_of(value: &Value) -> Option<u64> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

async fn open_dm(shared: &Shared, body: &Value) -> Response {
    if let Some(fault) = queued_fault(shared, Endpoint::OpenDm)
        && let Some(response) = answer_fault(shared, fault).await
    {
        return response;
    }
    let Some(user_id) = id_of(&body["recipient_id"]) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"code": 50035, "message": "Invalid Form Body", "errors": {"recipient_id": {"_errors": [{"code": "NUMBER_TYPE_COERCE", "message": "Value is not snowflake."}]}}}),
        );
    };
    let user_fault = shared.state().user_faults.get(&user_id).cloned();
    if let Some(fault @ Fault::UnknownUser) = user_fault
        && let Some(response) = answer_fault(shared, fault).await
    {
        return response;
    }
    let channel_id = {
        let mut state = shared.state();
        match state.dm_by_user.get(&user_id) {
            Some(channel_id) => *channel_id,
            None => {
                let channel_id = state.snowflake();
                state.dm_by_user.insert(user_id, channel_id);
                state.user_by_dm.insert(channel_id, user_id);
                channel_id
            }
        }
    };
    json_response(
        StatusCode::OK,
        json!({
            "id": channel_id.to_string(),
            "type": 1,
            "last_message_id": null,
            "flags": 0,
            "recipients": [user_json(user_id)],
        }),
    )
}

async fn send_message(shared: &Shared, channel: &str, body: Value) -> Response {
    if let Some(fault) = queued_fault(shared, Endpoint::SendMessage)
        && let Some(response) = answer_fault(shared, fault).await
    {
        return response;
    }
    let (known, recipient_id) = {
        let state = shared.state();
        let channel_id = channel.parse::<u64>().ok();
        let recipient = channel_id.and_then(|id| state.user_by_dm.get(&id).copied());
        let known =
            recipient.is_some() || channel_id.is_some_and(|id| state.text_channels.contains(&id));
        (known, recipient)
    };
    let Some(channel_id) = channel.parse::<u64>().ok().filter(|_| known) else {
        return discord_error(404, 10003, "Unknown Channel");
    };
    if let Some(user_id) = recipient_id {
        let fault = shared
            .state()
            .user_faults
            .get(&user_id)
            .filter(|f| **f != Fault::UnknownUser)
            .cloned();
        if let Some(fault) = fault
            && let Some(response) = answer_fault(shared, fault).await
        {
            return response;
        }
    }
    let content = body["content"].as_str().unwrap_or_default().to_owned();
    let embeds = match &body["embeds"] {
        Value::Array(embeds) => Value::Array(embeds.clone()),
        _ => json!([]),
    };
    if content.chars().count() > 2000 {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"code": 50035, "message": "Invalid Form Body", "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}}}),
        );
    }
    if content.trim().is_empty() && embeds.as_array().is_none_or(Vec::is_empty) {
        return discord_error(400, 50006, "Cannot send an empty message");
    }
    let nonce = match &body["nonce"] {
        Value::String(n) => Some(n.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if nonce.as_ref().is_some_and(|n| n.chars().count() > 25) {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"code": 50035, "message": "Invalid Form Body", "errors": {"nonce": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 25 or fewer in length."}]}}}),
        );
    }
    let enforced = nonce.filter(|_| body["enforce_nonce"].as_bool() == Some(true));
    let mut state = shared.state();
    if let Some(nonce) = &enforced
        && let Some((first, at)) = state.nonces.get(&(channel_id, nonce.clone()))
        && at.elapsed() < NONCE_WINDOW
    {
        // The message made with this nonce, not a second one.
        return json_response(StatusCode::OK, first.clone());
    }
    let message_id = state.snowflake();
    state.sent.push(DiscordMessage {
        channel_id,
        recipient_id,
        content: content.clone(),
        embeds: embeds.clone(),
        body: body.clone(),
        message_id,
        at: Instant::now(),
    });
    // Every field serenity 0.12's `Message` requires, plus the usual nulls.
    let message = json!({
            "id": message_id.to_string(),
            "channel_id": channel_id.to_string(),
            "author": bot_user_json(shared.application_id),
            "content": content,
            "timestamp": now_iso8601(),
            "edited_timestamp": null,
            "tts": body["tts"].as_bool().unwrap_or(false),
            "mention_everyone": false,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": embeds,
            "pinned": false,
            "type": 0,
            "flags": 0,
            "components": body.get("components").cloned().unwrap_or(json!([])),
            "nonce": body.get("nonce").cloned().unwrap_or(Value::Null),
    });
    if let Some(nonce) = enforced {
        state
            .nonces
            .insert((channel_id, nonce), (message.clone(), Instant::now()));
    }
    json_response(StatusCode::OK, message)
}

async fn overwrite_commands(
    shared: &Shared,
    application: &str,
    guild_id: Option<u64>,
    body: Value,
) -> Response {
    if application != shared.application_id.to_string() {
        return discord_error(403, 50001, "Missing Access");
    }
    if let Some(fault) = queued_fault(shared, Endpoint::OverwriteCommands)
        && let Some(response) = answer_fault(shared, fault).await
    {
        return response;
    }
    let Value::Array(commands) = &body else {
        return discord_error(400, 50035, "Invalid Form Body");
    };
    if commands.iter().any(|c| c["name"].as_str().is_none()) {
        return discord_error(400, 50035, "Invalid Form Body");
    }
    {
        let mut state = shared.state();
        state.commands.insert(guild_id, body.clone());
        state.overwrites.push(CommandOverwrite {
            guild_id,
            commands: body.clone(),
            at: Instant::now(),
        });
    }
    json_response(StatusCode::OK, with_ids(shared, guild_id, &body))
}

/// The commands as Discord returns them: with `id` (kept per name), `application_id`,
/// `version` and the defaults filled in.
fn with_ids(shared: &Shared, guild_id: Option<u64>, commands: &Value) -> Value {
    let mut state = shared.state();
    let commands = commands.as_array().cloned().unwrap_or_default();
    let mut out = Vec::with_capacity(commands.len());
    for mut command in commands {
        let name = command["name"].as_str().unwrap_or_default().to_owned();
        let id = match state.command_ids.get(&(guild_id, name.clone())) {
            Some(id) => *id,
            None => {
                let id = state.snowflake();
                state.command_ids.insert((guild_id, name), id);
                id
            }
        };
        let version = state.snowflake();
        command["id"] = json!(id.to_string());
        command["application_id"] = json!(shared.application_id.to_string());
        command["version"] = json!(version.to_string());
        if command["type"].is_null() {
            command["type"] = json!(1);
        }
        if command["description"].is_null() {
            command["description"] = json!("");
        }
        if let Some(guild_id) = guild_id {
            command["guild_id"] = json!(guild_id.to_string());
        }
        out.push(command);
    }
    Value::Array(out)
}
