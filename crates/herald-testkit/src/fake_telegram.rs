//! A fake Telegram Bot API server, for tests. It is a real HTTP server on loopback: point
//! teloxide at it with `Bot::new(token).set_api_url(fake.api_url().parse()?)`.
//!
//! Every method is `/bot{token}/{method}`, GET or POST, with the parameters in a JSON body,
//! a form or multipart body or the query string, as Telegram accepts them (teloxide sends
//! JSON, and multipart for methods that may carry a file, such as `setWebhook`). Method names are
//! case-insensitive (teloxide calls `SendMessage`). Answers are Telegram's envelope:
//! `{"ok":true,"result":..}` or `{"ok":false,"error_code":..,"description":..}`, and
//! `parameters.retry_after` on 429; teloxide maps the `description` to its error variants, so
//! the descriptions here are Telegram's, word for word.
//!
//! - `getMe`: the bot, with every field teloxide's `Me` requires.
//! - `sendMessage`: recorded ([`FakeTelegram::sent`]), answered with a `Message`.
//! - `getUpdates`: `offset` confirms the updates below it, `limit`, and `timeout` long-polls
//!   until an update is injected. A second poller terminates the first with 409, and while
//!   a webhook is set every poll answers 409, as Telegram does.
//! - `setWebhook`, `deleteWebhook`, `getWebhookInfo`: while a webhook is set, injected
//!   updates are POSTed to it with `X-Telegram-Bot-Api-Secret-Token`.
//! - `setMyCommands`, `getMyCommands`, `deleteMyCommands`.
//! - With [`FakeTelegram::enforce_limits`], `sendMessage` answers 429 beyond Telegram's
//!   published limits, counted as sliding windows: 30 a second per bot (1,000 with
//!   `allow_paid_broadcast`), one a second per chat, 20 a minute per group (negative chat id).
//! - Anything else: 404 `Not Found`, which is what Telegram answers to an unknown method.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use crate::provider_limits::{KeyedWindows, SlidingWindow, whole_seconds};

/// The header Telegram puts the webhook's secret token in.
pub const SECRET_TOKEN_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";

/// What the fake answers instead of doing what was asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 429 `Too Many Requests: retry after N` with `parameters.retry_after` and `Retry-After`.
    TooManyRequests { retry_after_secs: u64 },
    /// 403 `Forbidden: bot was blocked by the user`.
    BotBlocked,
    /// 403 `Forbidden: user is deactivated`.
    UserDeactivated,
    /// 403 `Forbidden: bot was kicked from the group chat`.
    KickedFromGroup,
    /// 403 `Forbidden: bot was kicked from the supergroup chat`.
    KickedFromSupergroup,
    /// 403 `Forbidden: bot can't initiate conversation with a user` (the user never started
    /// the bot).
    CantInitiateConversation,
    /// 403 `Forbidden: bot can't send messages to the user`.
    CantSendToUser,
    /// 400 `Bad Request: chat not found`.
    ChatNotFound,
    /// Any other Telegram error, e.g. `Api { error_code: 400, description: "Bad Request:
    /// can't parse entities: ..".into() }`.
    Api {
        error_code: u16,
        description: String,
    },
    /// This status (500, 502, ...) with Telegram's JSON envelope.
    Status(u16),
    /// This status with an HTML page instead of JSON, as the proxy in front of the Bot API
    /// answers when the backend is down.
    ProxyErrorPage(u16),
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Close the connection without answering.
    Drop,
}

/// Telegram's limits for one bot (<https://core.telegram.org/bots/faq>, "My bot is hitting
/// limits"). [`Default`] is what Telegram publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelegramLimits {
    pub per_bot_per_second: usize,
    /// The bot's limit for messages sent with `allow_paid_broadcast`.
    pub paid_per_bot_per_second: usize,
    pub per_chat_per_second: usize,
    pub per_group_per_minute: usize,
}

impl Default for TelegramLimits {
    fn default() -> Self {
        TelegramLimits {
            per_bot_per_second: 30,
            paid_per_bot_per_second: 1_000,
            per_chat_per_second: 1,
            per_group_per_minute: 20,
        }
    }
}

/// The windows of [`TelegramLimits`], while enforced.
struct Windows {
    bot: SlidingWindow,
    paid: SlidingWindow,
    chats: KeyedWindows<i64>,
    groups: KeyedWindows<i64>,
}

impl Windows {
    fn new(limits: TelegramLimits) -> Windows {
        let second = Duration::from_secs(1);
        Windows {
            bot: SlidingWindow::new(limits.per_bot_per_second, second),
            paid: SlidingWindow::new(limits.paid_per_bot_per_second, second),
            chats: KeyedWindows::new(limits.per_chat_per_second, second),
            groups: KeyedWindows::new(limits.per_group_per_minute, Duration::from_secs(60)),
        }
    }

    /// Counts one message, or how long until it would be allowed. A refused message counts
    /// nowhere, so a window consulted before a refusal by a later one keeps its hit: Telegram
    /// does not say, and the difference is one message.
    fn hit(&mut self, chat_id: i64, paid: bool, now: Instant) -> Result<(), Duration> {
        if paid {
            self.paid.hit(now)?;
        } else {
            self.bot.hit(now)?;
        }
        self.chats.hit(chat_id, now)?;
        if chat_id < 0 {
            self.groups.hit(chat_id, now)?;
        }
        Ok(())
    }
}

/// A `sendMessage` the fake accepted.
#[derive(Debug, Clone)]
pub struct SentMessage {
    pub chat_id: i64,
    pub text: String,
    pub parse_mode: Option<String>,
    pub message_id: i64,
    /// Every parameter as received (`reply_markup`, `link_preview_options`, ...).
    pub params: Value,
    pub at: Instant,
}

/// Any request the fake received, answered or not.
#[derive(Debug, Clone)]
pub struct TelegramRequest {
    /// The method name as the client spelled it (`SendMessage`, `getUpdates`, ...).
    pub method: String,
    pub params: Value,
    pub at: Instant,
    /// The status answered; `None` while still waiting (a long poll) or if the connection was
    /// dropped.
    pub status: Option<u16>,
}

/// The webhook as the last `setWebhook` left it.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub url: String,
    pub secret_token: Option<String>,
}

/// One POST of an update to the webhook.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub update_id: i64,
    pub url: String,
    /// The status the webhook answered, or why it could not be reached.
    pub outcome: Result<u16, String>,
    pub at: Instant,
}

#[derive(Default)]
struct FakeState {
    requests: Vec<TelegramRequest>,
    sent: Vec<SentMessage>,
    /// Updates not yet confirmed by an `offset`, oldest first.
    pending: VecDeque<Value>,
    next_update_id: i64,
    next_message_id: i64,
    webhook: Option<Webhook>,
    webhook_allowed_updates: Option<Value>,
    webhook_deliveries: Vec<WebhookDelivery>,
    last_webhook_error: Option<(i64, String)>,
    commands: Value,
    /// Queued faults by lower-case method name.
    next_faults: HashMap<String, VecDeque<Fault>>,
    chat_next_faults: HashMap<i64, VecDeque<Fault>>,
    chat_faults: HashMap<i64, Fault>,
    outage: Option<Fault>,
    too_many_requests: usize,
    limits: Option<Windows>,
    /// Bumped by every `getUpdates`, so that a waiting poll knows another one replaced it.
    poll_generation: u64,
}

#[derive(Clone)]
struct Shared {
    token: String,
    bot_id: i64,
    state: Arc<Mutex<FakeState>>,
    /// Wakes long polls: an update arrived, a webhook was set, or another poll started.
    wake: Arc<Notify>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct FakeTelegram {
    addr: SocketAddr,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

/// The bot's name and username in `getMe` and in the `from` of sent messages.
pub const BOT_FIRST_NAME: &str = "Herald Test Bot";
pub const BOT_USERNAME: &str = "herald_test_bot";

impl FakeTelegram {
    /// Starts on a free loopback port for this bot token (`123456:ABC...`; the number before
    /// the colon is the bot's user id, as in real tokens).
    pub async fn start(token: &str) -> FakeTelegram {
        let bot_id = token
            .split_once(':')
            .and_then(|(id, _)| id.parse().ok())
            .unwrap_or(1);
        let shared = Shared {
            token: token.to_owned(),
            bot_id,
            state: Arc::new(Mutex::new(FakeState {
                // Real update ids are large and keep increasing.
                next_update_id: 700_000_001,
                next_message_id: 1,
                commands: json!([]),
                ..FakeState::default()
            })),
            wake: Arc::default(),
        };
        let app = Router::new()
            .route("/{bot}/{method}", any(handle))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake Telegram");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeTelegram {
            addr,
            shared,
            server,
        }
    }

    /// What teloxide's `set_api_url` takes (`http://127.0.0.1:PORT/`).
    pub fn api_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// The bot's own user id (from the token).
    pub fn bot_id(&self) -> i64 {
        self.shared.bot_id
    }

    // ----- injection -----

    /// A user writes `text` to the bot in a private chat (`chat_id` is the user's id there,
    /// as in Telegram). A leading `/command` gets its `bot_command` entity. Returns the
    /// update id. The update waits for `getUpdates`, or goes to the webhook if one is set.
    pub fn inject_message(&self, chat_id: i64, user_id: i64, text: &str) -> i64 {
        let user = user_json(user_id);
        let mut message = json!({
            "message_id": self.next_message_id(),
            "from": user,
            "chat": chat_json(chat_id, user_id),
            "date": unix_now(),
            "text": text,
        });
        if let Some(command) = text.strip_prefix('/') {
            let length = 1 + command
                .split_whitespace()
                .next()
                .map_or(0, |word| word.encode_utf16().count());
            message["entities"] = json!([{"type": "bot_command", "offset": 0, "length": length}]);
        }
        self.inject_update(json!({ "message": message }))
    }

    /// The user blocks the bot: the `my_chat_member` update Telegram sends then (the bot's
    /// status in the private chat goes from `member` to `kicked`). Returns the update id.
    pub fn inject_bot_blocked(&self, user_id: i64) -> i64 {
        let bot = json!({"id": self.shared.bot_id, "is_bot": true, "first_name": BOT_FIRST_NAME, "username": BOT_USERNAME});
        self.inject_update(json!({
            "my_chat_member": {
                "chat": chat_json(user_id, user_id),
                "from": user_json(user_id),
                "date": unix_now(),
                "old_chat_member": {"user": bot, "status": "member"},
                "new_chat_member": {"user": bot, "status": "kicked", "until_date": 0},
            }
        }))
    }

    /// Any update: `kind` is the update without its id, e.g. `{"callback_query": {..}}`.
    /// Returns the update id it was given.
    pub fn inject_update(&self, kind: Value) -> i64 {
        let (update, webhook) = {
            let mut state = self.shared.state();
            let update_id = state.next_update_id;
            state.next_update_id += 1;
            let mut update = kind;
            update["update_id"] = json!(update_id);
            state.pending.push_back(update.clone());
            (update, state.webhook.clone())
        };
        let update_id = update["update_id"].as_i64().unwrap_or_default();
        match webhook {
            Some(webhook) => {
                tokio::spawn(deliver(self.shared.clone(), webhook, update));
            }
            None => self.shared.wake.notify_waiters(),
        }
        update_id
    }

    fn next_message_id(&self) -> i64 {
        let mut state = self.shared.state();
        state.next_message_id += 1;
        state.next_message_id - 1
    }

    // ----- faults -----

    /// The next `sendMessage` requests get these faults, one each, in order.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.fail_next_on("sendMessage", faults);
    }

    /// The next requests of this method (any case) get these faults, one each, in order.
    pub fn fail_next_on(&self, method: &str, faults: impl IntoIterator<Item = Fault>) {
        self.shared
            .state()
            .next_faults
            .entry(method.to_ascii_lowercase())
            .or_default()
            .extend(faults);
    }

    /// The next `sendMessage` requests to this chat get these faults, one each, in order.
    pub fn fail_next_for_chat(&self, chat_id: i64, faults: impl IntoIterator<Item = Fault>) {
        self.shared
            .state()
            .chat_next_faults
            .entry(chat_id)
            .or_default()
            .extend(faults);
    }

    /// Every `sendMessage` to this chat gets this fault until `None` (a user who blocked the
    /// bot stays blocked).
    pub fn set_chat_fault(&self, chat_id: i64, fault: Option<Fault>) {
        let mut state = self.shared.state();
        match fault {
            Some(fault) => state.chat_faults.insert(chat_id, fault),
            None => state.chat_faults.remove(&chat_id),
        };
    }

    /// Every request, of any method, gets this fault until `None`.
    pub fn set_outage(&self, fault: Option<Fault>) {
        self.shared.state().outage = fault;
    }

    // ----- records -----

    /// Messages accepted by `sendMessage`, in order.
    /// From now on `sendMessage` answers 429 (with `retry_after`) beyond these limits, and
    /// the 429s count in [`FakeTelegram::too_many_requests_answered`].
    pub fn enforce_limits(&self, limits: TelegramLimits) {
        self.shared.state().limits = Some(Windows::new(limits));
    }

    pub fn sent(&self) -> Vec<SentMessage> {
        self.shared.state().sent.clone()
    }

    /// Every request received, in order of arrival.
    pub fn requests(&self) -> Vec<TelegramRequest> {
        self.shared.state().requests.clone()
    }

    /// The requests of one method (any case).
    pub fn requests_of(&self, method: &str) -> Vec<TelegramRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method))
            .collect()
    }

    /// How many 429 answers the fake gave.
    pub fn too_many_requests_answered(&self) -> usize {
        self.shared.state().too_many_requests
    }

    pub fn webhook(&self) -> Option<Webhook> {
        self.shared.state().webhook.clone()
    }

    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.shared.state().webhook_deliveries.clone()
    }

    /// The commands of the last `setMyCommands` (a JSON array).
    pub fn commands(&self) -> Value {
        self.shared.state().commands.clone()
    }

    /// Updates not yet confirmed by a `getUpdates` offset (or not yet delivered to the
    /// webhook).
    pub fn pending_updates(&self) -> usize {
        self.shared.state().pending.len()
    }
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn user_json(user_id: i64) -> Value {
    json!({
        "id": user_id,
        "is_bot": false,
        "first_name": format!("User{user_id}"),
        "username": format!("user{user_id}"),
        "language_code": "en",
    })
}

/// A chat by Telegram's id conventions: positive ids are private chats (the user's id),
/// `-100...` supergroups and channels, other negative ids basic groups.
fn chat_json(chat_id: i64, user_id: i64) -> Value {
    if chat_id > 0 {
        json!({"id": chat_id, "type": "private", "first_name": format!("User{user_id}"), "username": format!("user{user_id}")})
    } else if chat_id <= -1_000_000_000_000 {
        json!({"id": chat_id, "type": "supergroup", "title": format!("Supergroup {chat_id}")})
    } else {
        json!({"id": chat_id, "type": "group", "title": format!("Group {chat_id}")})
    }
}

fn ok(result: Value) -> Response {
    axum::Json(json!({"ok": true, "result": result})).into_response()
}

fn tg_error(error_code: u16, description: &str) -> Response {
    let status = StatusCode::from_u16(error_code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(json!({"ok": false, "error_code": error_code, "description": description})),
    )
        .into_response()
}

/// Counts 429s and turns a fault into its answer; `None` for `Slow` (after the wait).
async fn answer_fault(shared: &Shared, fault: Fault) -> Option<Response> {
    let forbidden = |description: &str| Some(tg_error(403, description));
    match fault {
        Fault::TooManyRequests { retry_after_secs } => {
            shared.state().too_many_requests += 1;
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({
                    "ok": false,
                    "error_code": 429,
                    "description": format!("Too Many Requests: retry after {retry_after_secs}"),
                    "parameters": {"retry_after": retry_after_secs},
                })),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            Some(response)
        }
        Fault::BotBlocked => forbidden("Forbidden: bot was blocked by the user"),
        Fault::UserDeactivated => forbidden("Forbidden: user is deactivated"),
        Fault::KickedFromGroup => forbidden("Forbidden: bot was kicked from the group chat"),
        Fault::KickedFromSupergroup => {
            forbidden("Forbidden: bot was kicked from the supergroup chat")
        }
        Fault::CantInitiateConversation => {
            forbidden("Forbidden: bot can't initiate conversation with a user")
        }
        Fault::CantSendToUser => forbidden("Forbidden: bot can't send messages to the user"),
        Fault::ChatNotFound => Some(tg_error(400, "Bad Request: chat not found")),
        Fault::Api {
            error_code,
            description,
        } => Some(tg_error(error_code, &description)),
        Fault::Status(status) => {
            let reason = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Internal Server Error");
            Some(tg_error(status, reason))
        }
        Fault::ProxyErrorPage(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            Some(
                (
                    status,
                    [(header::CONTENT_TYPE, "text/html")],
                    format!(
                        "<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n<center><h1>{status}</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n"
                    ),
                )
                    .into_response(),
            )
        }
        Fault::Slow(wait) => {
            tokio::time::sleep(wait).await;
            None
        }
        // A panic in the handler makes the server drop the connection without a response,
        // which is what a client sees from a connection reset.
        Fault::Drop => panic!("fake Telegram: dropping the connection on purpose"),
    }
}

async fn handle(
    State(shared): State<Shared>,
    Path((bot, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = parse_params(query.as_deref(), &headers, &body);
    let index = {
        let mut state = shared.state();
        state.requests.push(TelegramRequest {
            method: method.clone(),
            params: Value::Object(params.clone()),
            at: Instant::now(),
            status: None,
        });
        state.requests.len() - 1
    };
    let response = dispatch(&shared, &bot, &method, &params).await;
    if let Some(request) = shared.state().requests.get_mut(index) {
        request.status = Some(response.status().as_u16());
    }
    response
}

async fn dispatch(
    shared: &Shared,
    bot: &str,
    method: &str,
    params: &Map<String, Value>,
) -> Response {
    match bot.strip_prefix("bot") {
        Some(token) if token == shared.token => {}
        Some(_) => return tg_error(401, "Unauthorized"),
        None => return tg_error(404, "Not Found"),
    }
    let method = method.to_ascii_lowercase();
    let fault = {
        let mut state = shared.state();
        let queued = state
            .next_faults
            .get_mut(&method)
            .and_then(VecDeque::pop_front);
        queued.or_else(|| state.outage.clone())
    };
    if let Some(fault) = fault
        && let Some(response) = answer_fault(shared, fault).await
    {
        return response;
    }
    match method.as_str() {
        "getme" => ok(json!({
            "id": shared.bot_id,
            "is_bot": true,
            "first_name": BOT_FIRST_NAME,
            "username": BOT_USERNAME,
            // teloxide's `Me` fails to parse without these four.
            "can_join_groups": true,
            "can_read_all_group_messages": false,
            "supports_inline_queries": false,
            "has_main_web_app": false,
            "can_connect_to_business": false,
        })),
        "sendmessage" => send_message(shared, params).await,
        "getupdates" => get_updates(shared, params).await,
        "setwebhook" => set_webhook(shared, params),
        "deletewebhook" => {
            let mut state = shared.state();
            state.webhook = None;
            state.webhook_allowed_updates = None;
            if param_bool(params, "drop_pending_updates") {
                state.pending.clear();
            }
            axum::Json(json!({"ok": true, "result": true, "description": "Webhook was deleted"}))
                .into_response()
        }
        "getwebhookinfo" => {
            let state = shared.state();
            let mut info = json!({
                "url": state.webhook.as_ref().map_or("", |w| w.url.as_str()),
                "has_custom_certificate": false,
                "pending_update_count": state.pending.len(),
                "max_connections": 40,
            });
            if let Some(allowed) = &state.webhook_allowed_updates {
                info["allowed_updates"] = allowed.clone();
            }
            if let Some((date, message)) = &state.last_webhook_error {
                info["last_error_date"] = json!(date);
                info["last_error_message"] = json!(message);
            }
            ok(info)
        }
        "setmycommands" => {
            shared.state().commands = params.get("commands").cloned().unwrap_or(json!([]));
            ok(json!(true))
        }
        "getmycommands" => ok(shared.state().commands.clone()),
        "deletemycommands" => {
            shared.state().commands = json!([]);
            ok(json!(true))
        }
        _ => tg_error(404, "Not Found"),
    }
}

async fn send_message(shared: &Shared, params: &Map<String, Value>) -> Response {
    let Some(chat_id) = param_i64(params, "chat_id") else {
        return match params.get("chat_id") {
            // `@channelusername`: the fake knows no public chats.
            Some(_) => tg_error(400, "Bad Request: chat not found"),
            None => tg_error(400, "Bad Request: chat_id is empty"),
        };
    };
    let fault = {
        let mut state = shared.state();
        state
            .chat_next_faults
            .get_mut(&chat_id)
            .and_then(VecDeque::pop_front)
            .or_else(|| state.chat_faults.get(&chat_id).cloned())
    };
    if let Some(fault) = fault
        && let Some(response) = answer_fault(shared, fault).await
    {
        return response;
    }
    let text = param_str(params, "text").unwrap_or_default();
    if text.trim().is_empty() {
        return tg_error(400, "Bad Request: message text is empty");
    }
    if text.chars().count() > 4096 {
        return tg_error(400, "Bad Request: message is too long");
    }
    let parse_mode = param_str(params, "parse_mode");
    if let Some(mode) = &parse_mode
        && !["HTML", "Markdown", "MarkdownV2"]
            .iter()
            .any(|m| m.eq_ignore_ascii_case(mode))
    {
        return tg_error(400, "Bad Request: unsupported parse_mode");
    }
    let paid = param_bool(params, "allow_paid_broadcast");
    let refused = {
        let mut state = shared.state();
        let now = Instant::now();
        state
            .limits
            .as_mut()
            .and_then(|limits| limits.hit(chat_id, paid, now).err())
    };
    if let Some(wait) = refused
        && let Some(response) = answer_fault(
            shared,
            Fault::TooManyRequests {
                retry_after_secs: whole_seconds(wait),
            },
        )
        .await
    {
        return response;
    }
    let date = unix_now();
    let mut state = shared.state();
    let message_id = state.next_message_id;
    state.next_message_id += 1;
    state.sent.push(SentMessage {
        chat_id,
        text: text.clone(),
        parse_mode,
        message_id,
        params: Value::Object(params.clone()),
        at: Instant::now(),
    });
    ok(json!({
        "message_id": message_id,
        "from": {"id": shared.bot_id, "is_bot": true, "first_name": BOT_FIRST_NAME, "username": BOT_USERNAME},
        "chat": chat_json(chat_id, chat_id),
        "date": date,
        // Telegram answers the text with the markup applied; the fake keeps it as sent.
        "text": text,
    }))
}

const WEBHOOK_CONFLICT: &str = "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first";
const TERMINATED_CONFLICT: &str = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";

async fn get_updates(shared: &Shared, params: &Map<String, Value>) -> Response {
    let offset = param_i64(params, "offset");
    let limit = param_i64(params, "limit")
        .map_or(100, |l| l.clamp(1, 100))
        .unsigned_abs() as usize;
    let timeout = Duration::from_secs(
        param_i64(params, "timeout")
            .unwrap_or(0)
            .max(0)
            .unsigned_abs(),
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let generation = {
        let mut state = shared.state();
        state.poll_generation += 1;
        state.poll_generation
    };
    // The poll this one replaces answers 409.
    shared.wake.notify_waiters();
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        {
            let mut state = shared.state();
            if state.webhook.is_some() {
                return tg_error(409, WEBHOOK_CONFLICT);
            }
            if state.poll_generation != generation {
                return tg_error(409, TERMINATED_CONFLICT);
            }
            match offset {
                Some(offset) if offset < 0 => {
                    // `-n`: only the last n updates; the earlier ones are forgotten.
                    let keep = offset.unsigned_abs() as usize;
                    while state.pending.len() > keep {
                        state.pending.pop_front();
                    }
                }
                Some(offset) => {
                    while state
                        .pending
                        .front()
                        .is_some_and(|u| u["update_id"].as_i64().unwrap_or_default() < offset)
                    {
                        state.pending.pop_front();
                    }
                }
                None => {}
            }
            if !state.pending.is_empty() || tokio::time::Instant::now() >= deadline {
                let updates: Vec<Value> = state.pending.iter().take(limit).cloned().collect();
                return ok(Value::Array(updates));
            }
        }
        tokio::select! {
            () = &mut woken => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

fn set_webhook(shared: &Shared, params: &Map<String, Value>) -> Response {
    let url = param_str(params, "url").unwrap_or_default();
    let secret_token = param_str(params, "secret_token").filter(|s| !s.is_empty());
    if let Some(secret) = &secret_token
        && (secret.len() > 256
            || !secret
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return tg_error(
            400,
            "Bad Request: secret token contains unallowed characters",
        );
    }
    if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
        return tg_error(
            400,
            "Bad Request: bad webhook: An HTTPS URL must be provided for webhook",
        );
    }
    let pending: Vec<Value> = {
        let mut state = shared.state();
        if param_bool(params, "drop_pending_updates") {
            state.pending.clear();
        }
        if url.is_empty() {
            // Telegram removes the webhook on an empty URL.
            state.webhook = None;
            state.webhook_allowed_updates = None;
            return axum::Json(
                json!({"ok": true, "result": true, "description": "Webhook was deleted"}),
            )
            .into_response();
        }
        let webhook = Webhook {
            url: url.clone(),
            secret_token,
        };
        state.webhook = Some(webhook);
        state.webhook_allowed_updates = params.get("allowed_updates").cloned();
        state.pending.iter().cloned().collect()
    };
    // A waiting long poll now answers 409.
    shared.wake.notify_waiters();
    if let Some(webhook) = shared.state().webhook.clone() {
        for update in pending {
            tokio::spawn(deliver(shared.clone(), webhook.clone(), update));
        }
    }
    axum::Json(json!({"ok": true, "result": true, "description": "Webhook was set"}))
        .into_response()
}

/// POSTs one update to the webhook, once. A 2xx confirms it; otherwise it stays pending (and
/// `getWebhookInfo` shows the error) until a `getUpdates` after `deleteWebhook` takes it.
async fn deliver(shared: Shared, webhook: Webhook, update: Value) {
    let update_id = update["update_id"].as_i64().unwrap_or_default();
    let body = serde_json::to_vec(&update).expect("an update serializes");
    let mut headers = Vec::new();
    if let Some(secret) = &webhook.secret_token {
        headers.push((SECRET_TOKEN_HEADER, secret.as_str()));
    }
    let outcome = crate::http::post_json(&webhook.url, &headers, &body)
        .await
        .map(|(status, _)| status)
        .map_err(|e| e.to_string());
    let mut state = shared.state();
    match &outcome {
        Ok(status) if (200..300).contains(status) => {
            state
                .pending
                .retain(|u| u["update_id"].as_i64() != Some(update_id));
        }
        Ok(status) => {
            state.last_webhook_error = Some((
                i64::try_from(unix_now()).unwrap_or_default(),
                format!("Wrong response from the webhook: {status}"),
            ));
        }
        Err(error) => {
            state.last_webhook_error = Some((
                i64::try_from(unix_now()).unwrap_or_default(),
                format!("Connection failed: {error}"),
            ));
        }
    }
    state.webhook_deliveries.push(WebhookDelivery {
        update_id,
        url: webhook.url,
        outcome,
        at: Instant::now(),
    });
}

/// The parameters from the query string and the body (JSON or form), as Telegram reads them.
/// Form values are strings; JSON-valued ones (`reply_markup`, `allowed_updates`) are parsed.
fn parse_params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Map<String, Value> {
    let mut params = Map::new();
    let add_form = |raw: &str, params: &mut Map<String, Value>| {
        for (key, value) in parse_form(raw) {
            let value = match serde_json::from_str::<Value>(&value) {
                Ok(parsed @ (Value::Array(_) | Value::Object(_))) => parsed,
                _ => Value::String(value),
            };
            params.insert(key, value);
        }
    };
    if let Some(query) = query {
        add_form(query, &mut params);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/json") {
        if let Ok(Value::Object(map)) = serde_json::from_slice(body) {
            params.extend(map);
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        add_form(&String::from_utf8_lossy(body), &mut params);
    } else if let Some(boundary) = content_type
        .strip_prefix("multipart/form-data")
        .and_then(|rest| rest.split_once("boundary="))
        .map(|(_, boundary)| boundary.trim_matches('"'))
    {
        // teloxide sends methods that may carry a file (setWebhook's certificate, ...) as
        // multipart, even without one.
        for (key, value) in parse_multipart(body, boundary) {
            let value = match serde_json::from_str::<Value>(&value) {
                Ok(parsed @ (Value::Array(_) | Value::Object(_))) => parsed,
                _ => Value::String(value),
            };
            params.insert(key, value);
        }
    }
    params
}

/// The text fields of a `multipart/form-data` body; file parts are kept as `<file NAME>`.
fn parse_multipart(body: &[u8], boundary: &str) -> Vec<(String, String)> {
    let body = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    body.split(delimiter.as_str())
        .filter_map(|part| {
            let part = part.strip_prefix("\r\n")?;
            let (head, value) = part.split_once("\r\n\r\n")?;
            let disposition = head
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))?;
            let name = disposition
                .split(';')
                .find_map(|p| p.trim().strip_prefix("name="))?
                .trim_matches('"')
                .to_owned();
            let value = value.strip_suffix("\r\n").unwrap_or(value);
            match disposition
                .split(';')
                .find_map(|p| p.trim().strip_prefix("filename="))
            {
                Some(file) => Some((name, format!("<file {}>", file.trim_matches('"')))),
                None => Some((name, value.to_owned())),
            }
        })
        .collect()
}

fn parse_form(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match raw
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn param_i64(params: &Map<String, Value>, key: &str) -> Option<i64> {
    match params.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn param_str(params: &Map<String, Value>, key: &str) -> Option<String> {
    match params.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn param_bool(params: &Map<String, Value>, key: &str) -> bool {
    match params.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true" || s == "1",
        _ => false,
    }
}
