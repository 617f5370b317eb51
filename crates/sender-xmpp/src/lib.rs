//! The XMPP channel (R30-R37): notifications to a person's JID or into a room, people
//! linking their JID and asking for support by writing to the bot (R5, R53), and the pool of
//! help-desk rooms where staff and clients meet (R31-R36).
//!
//! # Layout
//!
//! - this file: the `xmpp.*` settings, [`XmppSender`] and its [`ChannelSender`] and
//!   [`ChatChannel`] implementations: sending, joining rooms for notifications, what people
//!   write to the bot.
//! - [`session`]: the one XMPP session (a task owning tokio-xmpp's client) and its handle.
//! - [`stanzas`]: the stanzas the bot sends, and what the server's refusals mean.
//! - [`pool`]: the help-desk room pool: creating and configuring rooms, watching presence,
//!   reporting every change, rejoining after a restart.
//! - [`rooms`]: one room's state machine, without I/O.
//!
//! # Sending
//!
//! `Address::Xmpp(jid)` gets a `chat` message; `Address::XmppRoom(room)` a `groupchat`
//! message, after the bot joined the room as `nickname` (once; it stays). A room that did
//! not exist is not created for a notification: the bot destroys what its join created and
//! the delivery fails as `unknown_recipient`.
//!
//! XMPP confirms no message; the server bounces what it refuses. The bot sends a ping to
//! the server after each message, waits for its answer (the message has been handled then)
//! and `bounce_wait_ms` more for a refusal, which may arrive just after the answer
//! ([`session::Session::send_message`]).
//!
//! | the server's answer | kind | code |
//! |---|---|---|
//! | no bounce | delivered, the message id as provider id | — |
//! | `item-not-found`, `service-unavailable`, `remote-server-not-found` | permanent: the router marks the address unreachable (R6) | `unknown_recipient` |
//! | `forbidden`, `not-allowed`, `not-acceptable`, `registration-required` | permanent | `refused` |
//! | `policy-violation` | the whole session throttled | `rate_limited` |
//! | `remote-server-timeout`, `internal-server-error`, type `wait` | provider fault | `server_error` |
//! | the stream is down (reconnecting) | unhealthy: retried, opens the breaker | `disconnected` |
//! | no answer within `request_timeout_ms` | provider fault | `timeout` |
//!
//! # Connection
//!
//! One session: `jid`, `password`, `resource`. STARTTLS is required (rustls, the system's
//! roots), except with `tls = "none"`, which is accepted only for a `server` on a loopback
//! address (a test or a local Prosody). The client reconnects by itself with backoff.

pub mod pool;
pub mod rooms;
pub mod session;
pub mod stanzas;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_runtime::amqp::{Consumer, ConsumerSettings};
use herald_runtime::config::Secret;
use messaging_core::job::SendJob;
use messaging_core::{Address, Channel};
use sender_runtime::chat::{ChatChannel, Inbound, Incoming as ChatIncoming, Reply};
use sender_runtime::limits::RateLimits;
use sender_runtime::{BuildError, Built, ChannelSender, Receipt, SendError};
use serde::{Deserialize, Deserializer};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::connect::{DnsConfig, StartTlsServerConnector, TcpServerConnector};
use tokio_xmpp::jid::{BareJid, FullJid, Jid, ResourcePart};
use tokio_xmpp::parsers::message::{Message, MessageType};
use tokio_xmpp::parsers::muc::user::{MucUser, Status};
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::parsers::stanza_error::StanzaError;
use tokio_xmpp::parsers::stanza_id::OriginId;
use tokio_xmpp::stanzastream::StanzaStream;
use tokio_xmpp::xmlstream::Timeouts;

use crate::session::{Bounce, Incoming, Link, Session, SessionError};

/// How the session protects the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// STARTTLS, required: a server that does not offer it is not used.
    #[default]
    Starttls,
    /// Plain TCP: only for a `server` on a loopback address.
    None,
}

/// `xmpp.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XmppSettings {
    /// The bot's account (`herald@example.org`). Empty: the sender is not configured.
    pub jid: String,
    #[serde(deserialize_with = "secret_string")]
    pub password: Secret<String>,
    pub resource: String,
    /// The bot's nickname in rooms.
    pub nickname: String,
    /// `host:port` of the server; empty: the domain's SRV records, then port 5222.
    pub server: String,
    pub tls: Tls,
    /// One request to the server (a join, an IQ, a message's barrier) may take this long.
    pub request_timeout_ms: u64,
    /// After the server handled a message, how long a refusal of it is waited for.
    pub bounce_wait_ms: u64,
    /// The multi-user chat service of the help-desk rooms (`conference.example.org`). Empty:
    /// no room pool.
    pub muc_service: String,
    /// Free rooms the pool keeps ready (R35).
    pub pool_target: usize,
    /// Rooms the pool holds at most, in any state.
    pub pool_max: usize,
    /// The start of every pool room's name.
    pub room_prefix: String,
}

impl Default for XmppSettings {
    fn default() -> Self {
        XmppSettings {
            jid: String::new(),
            password: Secret::default(),
            resource: "herald".into(),
            nickname: "Herald".into(),
            server: String::new(),
            tls: Tls::Starttls,
            request_timeout_ms: 10_000,
            bounce_wait_ms: 200,
            muc_service: String::new(),
            pool_target: 3,
            pool_max: 20,
            room_prefix: "helpdesk-".into(),
        }
    }
}

/// What the runtime loads. Its field is the `xmpp` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct XmppConfig {
    pub xmpp: XmppSettings,
}

fn secret_string<'de, D: Deserializer<'de>>(d: D) -> Result<Secret<String>, D::Error> {
    herald_runtime::config::lenient_string(d).map(|s| Secret::new(s.unwrap_or_default()))
}

pub struct XmppSender {
    session: Session,
    bot: BareJid,
    nickname: String,
    timeout: Duration,
    /// Rooms joined for notifications, by bare room JID.
    joined: Mutex<HashMap<BareJid, ()>>,
    /// Joins waiting for the room's answer.
    /// The jobs waiting for the answer to a join, by room: the first sends the join, the
    /// others wait for the same answer.
    joins: Arc<Mutex<HashMap<BareJid, Vec<oneshot::Sender<JoinResult>>>>>,
    /// What the session hands on, taken by the listener.
    incoming: Mutex<Option<mpsc::Receiver<Incoming>>>,
    /// Stops the session when the service stops.
    stop: CancellationToken,
    pool: Option<pool::PoolSettings>,
}

/// How a join ended.
#[derive(Debug, Clone)]
enum JoinResult {
    /// In; `created` when the join made a new room.
    Joined {
        created: bool,
    },
    Refused(Box<StanzaError>),
}

impl Drop for XmppSender {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ChannelSender for XmppSender {
    const CHANNEL: Channel = Channel::Xmpp;
    type Config = XmppConfig;

    fn default_limits() -> RateLimits {
        RateLimits {
            // Servers limit a session by bytes (Prosody's mod_limits, ejabberd's shapers);
            // 50 short messages a second stays well inside their defaults.
            account_per_second: 50,
            account_burst: 50,
            // A person or a room: 5 in a row, then one a second.
            recipient_interval: Duration::from_secs(1),
            recipient_burst: 5,
            recipient_windows: Vec::new(),
        }
    }

    async fn build(config: XmppConfig) -> Result<Built<Self>, BuildError> {
        let settings = config.xmpp;
        let jid = settings.jid.trim();
        if jid.is_empty() || settings.password.expose().is_empty() {
            return Ok(Built::NotConfigured(
                "set HERALD_XMPP__JID and HERALD_XMPP__PASSWORD".into(),
            ));
        }
        let invalid = |reason: String| BuildError {
            channel: Channel::Xmpp,
            reason,
        };
        let bot = BareJid::from_str(jid)
            .map_err(|e| invalid(format!("HERALD_XMPP__JID {jid:?} is not a JID: {e}")))?;
        let resource = ResourcePart::new(settings.resource.trim())
            .map_err(|e| invalid(format!("HERALD_XMPP__RESOURCE: {e}")))?;
        let full = bot.with_resource(&resource);
        let nickname = settings.nickname.trim().to_owned();
        ResourcePart::new(&nickname)
            .map_err(|e| invalid(format!("HERALD_XMPP__NICKNAME {nickname:?}: {e}")))?;
        let pool = pool_settings(&settings).map_err(invalid)?;
        let stream = connect(&full, &settings).map_err(invalid)?;
        let timeout = Duration::from_millis(settings.request_timeout_ms.max(1));
        let (incoming_tx, incoming) = mpsc::channel(1024);
        let stop = CancellationToken::new();
        let bounce_wait = Duration::from_millis(settings.bounce_wait_ms);
        let session = Session::start(stream, incoming_tx, timeout, bounce_wait, stop.clone());
        Ok(Built::Ready(XmppSender {
            session,
            bot,
            nickname,
            timeout,
            joined: Mutex::default(),
            joins: Arc::default(),
            incoming: Mutex::new(Some(incoming)),
            stop,
            pool,
        }))
    }

    async fn send(&self, job: &SendJob) -> Result<Receipt, SendError> {
        let text = stanzas::body(job.content.subject.as_deref(), &job.content.text);
        if text.trim().is_empty() {
            return Err(SendError::permanent(
                "empty_message",
                "the message has no text to send",
            ));
        }
        self.ready().await?;
        let message = match &job.to {
            Address::Xmpp(jid) => {
                let to = Jid::from_str(jid.as_str())
                    .map_err(|e| SendError::permanent("invalid_address", format!("{jid}: {e}")))?;
                stanzas::chat(to, text)
            }
            Address::XmppRoom(room) => {
                let room = BareJid::from_str(room.bare())
                    .map_err(|e| SendError::permanent("invalid_address", format!("{room}: {e}")))?;
                self.join_for_notifications(&room).await?;
                stanzas::groupchat(room, text)
            }
            other => {
                return Err(SendError::permanent(
                    "invalid_address",
                    format!("{} is not an XMPP address", other.kind()),
                ));
            }
        };
        // XEP-0359: an id of ours that survives servers and rooms, the same for every
        // attempt and every replica, so a client that knows it can show a redelivered copy
        // once (issue #18). The stanza id stays new per send: it matches a bounce to its send.
        let message = message.with_payload(OriginId {
            id: job.delivery_id.to_string(),
        });
        self.deliver(message).await
    }

    async fn probe(&self) -> Result<(), String> {
        self.session
            .online()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl XmppSender {
    /// The bot's bare JID.
    pub fn bot(&self) -> &BareJid {
        &self.bot
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The bot's nickname in rooms.
    pub fn nickname(&self) -> &str {
        &self.nickname
    }

    /// The stream is up, or the send fails as unhealthy (retried; repeated, the breaker opens).
    async fn ready(&self) -> Result<(), SendError> {
        match self.session.online().await {
            Ok(_) => Ok(()),
            Err(e) => Err(SendError::unhealthy(
                "disconnected",
                format!("the XMPP session is not connected: {e}"),
            )),
        }
    }

    async fn deliver(&self, message: Message) -> Result<Receipt, SendError> {
        match self.session.send_message(message).await {
            Ok(Bounce::None) => Ok(Receipt::default()),
            Ok(Bounce::Refused(error)) => Err(stanzas::classify(&error)),
            Err(error) => Err(session_failure(error)),
        }
    }

    /// Joins a room once, for notifications. A join that created the room means there was
    /// none: the new room is destroyed and the address is unknown.
    async fn join_for_notifications(&self, room: &BareJid) -> Result<(), SendError> {
        if self.lock_joined().contains_key(room) {
            return Ok(());
        }
        match self.join(room, None).await? {
            JoinResult::Joined { created: false } => {
                self.lock_joined().insert(room.clone(), ());
                Ok(())
            }
            JoinResult::Joined { created: true } => {
                let destroyed = self
                    .session
                    .iq(
                        Jid::from(room.clone()),
                        tokio_xmpp::IqRequest::Set(stanzas::destroy_room(
                            "no such room: created by a notification by mistake",
                        )),
                    )
                    .await;
                if !matches!(destroyed, Ok(Ok(_))) {
                    tracing::warn!(%room, ?destroyed, "could not destroy a room a join created");
                }
                Err(SendError::permanent(
                    "unknown_recipient",
                    format!("the room {room} does not exist"),
                ))
            }
            JoinResult::Refused(error) => Err(stanzas::classify(&error)),
        }
    }

    /// Sends the join presence and waits for the room's answer (our own presence, or an
    /// error). Jobs for a room that is being joined wait for that join's answer: one join
    /// per room however many jobs arrive at once (a second join presence would replace the
    /// first one's waiter, and the first job would see a closed session).
    async fn join(&self, room: &BareJid, password: Option<&str>) -> Result<JoinResult, SendError> {
        let occupant = self.occupant(room)?;
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut joins = self.lock_joins();
            let waiting = joins.entry(room.clone()).or_default();
            waiting.push(tx);
            waiting.len() == 1
        };
        if first && let Err(error) = self.session.send(stanzas::join(occupant, password)).await {
            self.lock_joins().remove(room);
            return Err(session_failure(error));
        }
        let answer = tokio::time::timeout(self.timeout, rx).await;
        match answer {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(session_failure(SessionError::Closed)),
            Err(_) => {
                // Nobody answered: the next job tries a new join.
                self.lock_joins().remove(room);
                Err(session_failure(SessionError::Timeout(self.timeout)))
            }
        }
    }

    fn occupant(&self, room: &BareJid) -> Result<FullJid, SendError> {
        let nick = ResourcePart::new(&self.nickname)
            .map_err(|e| SendError::permanent("invalid_address", e.to_string()))?;
        Ok(room.with_resource(&nick))
    }

    fn lock_joined(&self) -> std::sync::MutexGuard<'_, HashMap<BareJid, ()>> {
        self.joined.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_joins(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<BareJid, Vec<oneshot::Sender<JoinResult>>>> {
        self.joins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A presence from a room: the answer to a join we wait on, if it is one.
    fn room_presence(&self, presence: &Presence) {
        let Some(from) = presence.from.as_ref() else {
            return;
        };
        let room = from.to_bare();
        let answer = match presence.type_ {
            PresenceType::Error => presence
                .payloads
                .iter()
                .find_map(|p| StanzaError::try_from(p.clone()).ok())
                .map(|e| JoinResult::Refused(Box::new(e))),
            PresenceType::None => {
                let user = presence
                    .payloads
                    .iter()
                    .find_map(|p| MucUser::try_from(p.clone()).ok());
                user.filter(|u| u.status.contains(&Status::SelfPresence))
                    .map(|u| JoinResult::Joined {
                        created: u.status.contains(&Status::RoomHasBeenCreated),
                    })
            }
            _ => {
                if presence.type_ == PresenceType::Unavailable {
                    // Kicked, or the room went away: join again next time.
                    self.lock_joined().remove(&room);
                }
                None
            }
        };
        if let Some(answer) = answer
            && let Some(waiting) = self.lock_joins().remove(&room)
        {
            for job in waiting {
                let _ = job.send(answer.clone());
            }
        }
    }

    fn is_pool_room(&self, presence: &Presence) -> bool {
        self.is_pool_room_jid(presence.from.as_ref())
    }

    fn is_pool_room_jid(&self, from: Option<&Jid>) -> bool {
        let (Some(settings), Some(from)) = (&self.pool, from) else {
            return false;
        };
        settings.owns(&from.to_bare())
    }

    /// Starts the room pool and the consumer of its rosters, when a MUC service is set.
    fn start_pool(self: &Arc<Self>, inbound: &Inbound) -> Option<mpsc::Sender<pool::PoolInput>> {
        let settings = self.pool.clone()?;
        let (tx, rx) = mpsc::channel(1024);
        let pool = pool::Pool::new(
            self.clone(),
            settings,
            inbound.inbox.clone(),
            inbound.health.clone(),
        )?;
        tokio::spawn(pool.run(rx, inbound.shutdown.clone()));
        let names = inbound.topology.names().clone();
        let rosters = Consumer::new(
            inbound.broker.clone(),
            inbound.topology.clone(),
            ConsumerSettings::from_config(names.rooms_queue(), inbound.broker.config()),
            pool::RosterHandler { pool: tx.clone() },
            inbound.health.clone(),
        );
        tokio::spawn(rosters.run(inbound.shutdown.clone()));
        Some(tx)
    }

    /// A chat message from a person: what they ask the bot (R5, R53).
    async fn person_wrote(&self, message: Message, inbound: &Inbound) {
        let Some(from) = message.from.clone() else {
            return;
        };
        let Some((_, text)) = message.get_best_body_cloned(vec!["en"]) else {
            return; // chat states, receipts: nothing to answer
        };
        let bare = from.to_bare();
        let chat = match messaging_core::values::Jid::parse(&bare.to_string()) {
            Ok(jid) => Address::Xmpp(jid),
            Err(_) => return,
        };
        let incoming = ChatIncoming {
            chat: chat.clone(),
            text,
            display_name: None,
            reference: None,
        };
        match inbound.inbox.receive(incoming).await {
            Ok(Reply::Later) => {}
            Ok(Reply::Now(text)) => {
                if let Err(error) = self.answer(&chat, &text).await {
                    tracing::warn!(error = %error.failure().message, "could not answer a person");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not hand on what a person wrote");
                let _ = self
                    .answer(
                        &chat,
                        "Sorry, that did not work. Please try again in a minute.",
                    )
                    .await;
            }
        }
    }
}

impl ChatChannel for XmppSender {
    async fn listen(bot: Arc<Self>, inbound: Inbound) {
        let component = format!("bot:{}", Channel::Xmpp);
        inbound
            .health
            .set(&component, false, "connecting to the XMPP server");
        let Some(mut incoming) = bot
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let mut link = bot.session.link();
        let pool = bot.start_pool(&inbound);
        loop {
            tokio::select! {
                _ = inbound.shutdown.cancelled() => break,
                changed = link.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let state = link.borrow_and_update().clone();
                    if let Some(pool) = &pool {
                        let _ = pool.send(pool::PoolInput::Link(state.clone())).await;
                    }
                    match state {
                        Link::Online(jid) => {
                            inbound.health.set(&component, true, format!("online as {jid}"));
                            // Rooms are left when the stream is: join them again when needed.
                            bot.lock_joined().clear();
                        }
                        Link::Connecting => {}
                        Link::Lost(why) => inbound.health.set(
                            &component,
                            false,
                            format!("XMPP stream lost, reconnecting: {why}"),
                        ),
                    }
                }
                next = incoming.recv() => match next {
                    None => break,
                    Some(Incoming::Presence(presence)) => {
                        bot.room_presence(&presence);
                        if let Some(pool) = &pool
                            && bot.is_pool_room(&presence)
                        {
                            let _ = pool.send(pool::PoolInput::Presence(Box::new(presence))).await;
                        }
                    }
                    Some(Incoming::Message(message)) => match message.type_ {
                        MessageType::Chat | MessageType::Normal => {
                            bot.person_wrote(message, &inbound).await;
                        }
                        MessageType::Groupchat => {
                            // The room echoes every message the bot sends into it; only what
                            // people write there matters to the pool (R53).
                            let own = message
                                .from
                                .as_ref()
                                .and_then(|from| from.resource())
                                .is_some_and(|nick| nick.as_str() == bot.nickname());
                            if !own
                                && let Some(pool) = &pool
                                && bot.is_pool_room_jid(message.from.as_ref())
                            {
                                let _ = pool.send(pool::PoolInput::Said(Box::new(message))).await;
                            }
                        }
                        MessageType::Error => {
                            let error = session::stanza_error(&message);
                            tracing::warn!(
                                from = ?message.from,
                                condition = %stanzas::condition_name(&error.defined_condition),
                                "a late bounce (a remote server answered after the delivery was reported)"
                            );
                        }
                        _ => {}
                    },
                },
            }
        }
        bot.stop.cancel();
    }

    async fn answer(&self, chat: &Address, text: &str) -> Result<(), SendError> {
        let Address::Xmpp(jid) = chat else {
            return Err(SendError::permanent(
                "invalid_address",
                format!("{} is not an XMPP chat", chat.kind()),
            ));
        };
        self.ready().await?;
        let to = Jid::from_str(jid.as_str())
            .map_err(|e| SendError::permanent("invalid_address", format!("{jid}: {e}")))?;
        self.deliver(stanzas::chat(to, text.to_owned()))
            .await
            .map(|_| ())
    }
}

/// The pool's settings, or `None` without a MUC service.
fn pool_settings(settings: &XmppSettings) -> Result<Option<pool::PoolSettings>, String> {
    let service = settings.muc_service.trim();
    if service.is_empty() {
        return Ok(None);
    }
    if BareJid::from_str(service).is_err() || service.contains('@') {
        return Err(format!(
            "HERALD_XMPP__MUC_SERVICE {service:?} is not a service's domain (conference.example.org)"
        ));
    }
    if settings.pool_max == 0 || settings.pool_target > settings.pool_max {
        return Err(format!(
            "HERALD_XMPP__POOL_TARGET ({}) must be at most HERALD_XMPP__POOL_MAX ({}), which must be at least 1",
            settings.pool_target, settings.pool_max
        ));
    }
    let prefix = settings.room_prefix.trim();
    if prefix.is_empty() || BareJid::from_str(&format!("{prefix}x@{service}")).is_err() {
        return Err(format!(
            "HERALD_XMPP__ROOM_PREFIX {prefix:?} cannot start a room name"
        ));
    }
    Ok(Some(pool::PoolSettings {
        service: service.to_owned(),
        target: settings.pool_target,
        max: settings.pool_max,
        prefix: prefix.to_owned(),
    }))
}

fn session_failure(error: SessionError) -> SendError {
    match error {
        SessionError::Timeout(after) => SendError::provider_fault(
            "timeout",
            format!("the XMPP server did not answer within {after:?}"),
        ),
        SessionError::Closed | SessionError::Stream(_) => {
            SendError::unhealthy("disconnected", error.to_string())
        }
    }
}

/// The stream for these settings: STARTTLS, or plain TCP to a loopback server only.
fn connect(jid: &FullJid, settings: &XmppSettings) -> Result<StanzaStream, String> {
    let server = settings.server.trim();
    let dns = if server.is_empty() {
        DnsConfig::srv_default_client(jid.domain().as_str())
    } else {
        DnsConfig::addr(server)
    };
    let timeouts = Timeouts::default();
    let password = settings.password.expose().clone();
    match settings.tls {
        Tls::Starttls => Ok(StanzaStream::new_c2s(
            StartTlsServerConnector::from(dns),
            Jid::from(jid.clone()),
            password,
            timeouts,
            session::QUEUE_DEPTH,
        )),
        Tls::None => {
            let loopback = server
                .parse::<SocketAddr>()
                .map(|a| a.ip())
                .or_else(|_| server.parse::<IpAddr>())
                .is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(format!(
                    "HERALD_XMPP__TLS=none is allowed only with HERALD_XMPP__SERVER on a loopback address (127.0.0.1:5222), not {server:?}"
                ));
            }
            Ok(StanzaStream::new_c2s(
                TcpServerConnector::from(dns),
                Jid::from(jid.clone()),
                password,
                timeouts,
                session::QUEUE_DEPTH,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(server: &str, tls: Tls) -> XmppSettings {
        XmppSettings {
            jid: "herald@example.org".into(),
            password: Secret::new("pw".into()),
            server: server.into(),
            tls,
            ..XmppSettings::default()
        }
    }

    #[tokio::test]
    async fn plain_tcp_only_to_loopback() {
        let jid = FullJid::from_str("herald@example.org/herald").unwrap();
        let refused = connect(&jid, &settings("xmpp.example.org:5222", Tls::None)).unwrap_err();
        assert!(refused.contains("loopback"), "{refused}");
        assert!(connect(&jid, &settings("10.0.0.1:5222", Tls::None)).is_err());
        assert!(connect(&jid, &settings("127.0.0.1:5222", Tls::None)).is_ok());
        assert!(connect(&jid, &settings("xmpp.example.org:5222", Tls::Starttls)).is_ok());
    }

    #[tokio::test]
    async fn without_jid_or_password_it_is_not_configured() {
        let built = XmppSender::build(XmppConfig::default()).await.unwrap();
        let Built::NotConfigured(what) = built else {
            panic!("should not be configured");
        };
        assert!(what.contains("HERALD_XMPP__JID"), "{what}");
    }

    #[tokio::test]
    async fn a_bad_jid_stops_the_service_with_the_variable_named() {
        let config = XmppConfig {
            xmpp: XmppSettings {
                jid: "not a jid@".into(),
                ..settings("127.0.0.1:5222", Tls::None)
            },
        };
        let Err(error) = XmppSender::build(config).await else {
            panic!("should fail");
        };
        assert!(
            error.reason.contains("HERALD_XMPP__JID"),
            "{}",
            error.reason
        );
    }
}
