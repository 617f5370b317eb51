//! The bot side of chat channels (R5, R53): what people write to a bot, and what the bot
//! answers. Telegram, Discord, XMPP and Teams share it.
//!
//! A chat channel implements [`ChatChannel`] on top of [`ChannelSender`]: it listens for what
//! people write (long polling, a webhook, an interactions endpoint: [`ChatChannel::listen`]
//! and [`ChatChannel::routes`]) and hands each text to the [`Inbox`]. The inbox understands
//! the commands, and publishes, with confirms, a contact-link event (`/start <code>`,
//! `/link <code>`) or a support request (`/support <text>`) to the events exchange. The router,
//! which owns the database, redeems the code or opens the ticket, and answers through the
//! outbox: a [`ChatAnswer`] on `answer.<channel>`, which this runtime consumes from
//! `{p}.answers.<channel>` and passes to [`ChatChannel::answer`]. So the answer survives a
//! restart of either side, and any replica of the sender may give it.
//!
//! More than [`WRONG_CODES_PER_HOUR`] wrong codes from one chat within an hour are refused
//! here, before anything reaches the database. The count is per sender replica (it learns
//! of wrong codes from the answers it gives), so with N replicas a guesser gets at most N
//! times as many tries.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use chrono::Utc;
use herald_runtime::amqp::{
    Broker, Context, Handler, Message, Outcome, PublishError, Publisher, Rejection, Topology,
    decode_json,
};
use herald_runtime::health::Health;
use messaging_core::events::{
    Answer, ChatAnswer, ChatReference, ContactLinkEvent, SupportRequestEvent,
};
use messaging_core::topology::{Names, routing};
use messaging_core::{Address, Channel, EnvelopeVersion};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::sender::{ChannelSender, SendError};

/// Wrong link codes one chat may send per hour before the bot stops asking the router.
pub const WRONG_CODES_PER_HOUR: usize = 5;

/// A chat channel: a sender whose bot also listens (R5).
pub trait ChatChannel: ChannelSender {
    /// Listens for what people write until `inbound.shutdown` (long polling, a gateway), and
    /// hands each text to `inbound.inbox`. A bot that only receives over HTTP (a webhook, an
    /// interactions endpoint) serves [`ChatChannel::routes`] instead and returns at once.
    fn listen(bot: Arc<Self>, inbound: Inbound) -> impl Future<Output = ()> + Send;

    /// HTTP routes for inbound traffic, served beside `/healthz` on the service's address.
    fn routes(_bot: Arc<Self>, _inbound: Inbound) -> Router {
        Router::new()
    }

    /// Tells a person something in their chat: the answer to a link or support request, or a
    /// staff member's reply. Errors mean what they mean for [`ChannelSender::send`].
    fn answer(
        &self,
        chat: &Address,
        text: &str,
    ) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// A channel whose recipients connect to the sender (the WebSocket channel, R39): it serves
/// HTTP routes (the upgrade) and runs a task of its own beside sending, with no bot and no
/// answers queue. `run_serving_sender::<S>` runs it.
pub trait ServingChannel: ChannelSender {
    /// Routes served on the sender's HTTP address beside `/healthz`.
    fn routes(sender: Arc<Self>) -> Router;

    /// Runs until `serving.shutdown` (the sender's own link to the broker, say).
    fn serve(sender: Arc<Self>, serving: Serving) -> impl Future<Output = ()> + Send;
}

/// What a [`ServingChannel`]'s task gets.
#[derive(Clone)]
pub struct Serving {
    pub health: Health,
    pub shutdown: CancellationToken,
    pub broker: Broker,
    pub topology: Topology,
}

/// What a bot's listener gets.
#[derive(Clone)]
pub struct Inbound {
    pub inbox: Inbox,
    /// For the listener's own readiness component (`bot:<channel>`).
    pub health: Health,
    pub shutdown: CancellationToken,
    /// For a bot that consumes a queue of its own (the XMPP room pool's roster).
    pub broker: Broker,
    pub topology: Topology,
}

/// One text a person wrote to the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The chat, as an address of the channel: where answers go, and what a link stores.
    pub chat: Address,
    pub text: String,
    /// The name the chat shows (a username), for the person's address list.
    pub display_name: Option<String>,
    /// What else the bot knows of the chat (Teams' conversation reference), stored with the
    /// address a link makes.
    pub reference: Option<ChatReference>,
}

/// What the bot says right away. The router's answer follows later, through the answers
/// queue, for whatever reached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Nothing now: the request went to the router.
    Later,
    /// This, now (help, a malformed command, too many wrong codes). Nothing went to the
    /// router.
    Now(String),
}

/// What a person's text asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/start <code>`, `/link <code>`, `link <code>`: link this chat.
    Link(String),
    /// `/support <text>`, `support <text>`.
    Support(String),
    /// `/start` alone, `/help`, or anything else.
    Help,
}

impl Command {
    /// Understands the commands every bot shares. Telegram's `/cmd@botname` form and any
    /// letter case of the command word are accepted.
    pub fn parse(text: &str) -> Command {
        let text = text.trim();
        let (word, rest) = match text.split_once(char::is_whitespace) {
            Some((word, rest)) => (word, rest.trim()),
            None => (text, ""),
        };
        let word = word.trim_start_matches('/');
        let word = word.split_once('@').map_or(word, |(w, _)| w);
        match word.to_ascii_lowercase().as_str() {
            "start" | "link" if !rest.is_empty() => Command::Link(rest.to_owned()),
            "support" if !rest.is_empty() => Command::Support(rest.to_owned()),
            _ => Command::Help,
        }
    }
}

/// What the bot says when it does not understand, or to `/start` without a code.
pub fn help_text() -> String {
    "Hello! To get your notifications here, send the link code you were given: /start CODE \
     (or /link CODE). To ask the support team for help, send /support followed by your question."
        .to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("cannot publish to the broker: {0}")]
    Publish(#[from] PublishError),
}

/// Where a bot hands what people write. Cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    channel: Channel,
    publisher: Publisher,
    exchange: String,
    wrong_codes: Arc<WrongCodes>,
}

impl Inbox {
    pub fn new(channel: Channel, publisher: Publisher, names: &Names) -> Self {
        Inbox {
            channel,
            publisher,
            exchange: names.events_exchange(),
            wrong_codes: Arc::new(WrongCodes::default()),
        }
    }

    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// Handles one text: publishes what the router must decide (confirmed by the broker
    /// before this returns), or says what to answer now. An error means nothing was
    /// published: the bot should tell the person to try again (or leave the update
    /// unconfirmed, so it comes again).
    pub async fn receive(&self, incoming: Incoming) -> Result<Reply, InboxError> {
        match Command::parse(&incoming.text) {
            Command::Help => Ok(Reply::Now(help_text())),
            Command::Link(code) => self.link(incoming, &code).await,
            Command::Support(text) => self.support(incoming, &text).await,
        }
    }

    async fn link(&self, incoming: Incoming, code: &str) -> Result<Reply, InboxError> {
        if !looks_like_a_code(code) {
            return Ok(Reply::Now(
                "That does not look like a link code. Send /start CODE with the code you were given."
                    .to_owned(),
            ));
        }
        if self.wrong_codes.exhausted(&incoming.chat.value()) {
            metrics::counter!("herald_bot_link_refused_total", "channel" => self.channel.as_str())
                .increment(1);
            return Ok(Reply::Now(format!(
                "Too many wrong codes from this chat: wait an hour, then try again with a new code \
                 (at most {WRONG_CODES_PER_HOUR} wrong codes an hour)."
            )));
        }
        let event = ContactLinkEvent {
            version: EnvelopeVersion,
            channel: self.channel,
            link_code: code.to_owned(),
            address: incoming.chat,
            display_name: incoming.display_name,
            reference: incoming.reference,
            occurred_at: Utc::now(),
        };
        self.publish(
            &routing::contact_link(self.channel),
            &event,
            "herald.contact_link.v1",
        )
        .await?;
        Ok(Reply::Later)
    }

    async fn support(&self, incoming: Incoming, text: &str) -> Result<Reply, InboxError> {
        let text: String = text.chars().take(SupportRequestEvent::MAX_TEXT).collect();
        let event = SupportRequestEvent {
            version: EnvelopeVersion,
            request_id: Uuid::now_v7(),
            channel: self.channel,
            chat: incoming.chat,
            support_text: text,
            display_name: incoming.display_name,
            occurred_at: Utc::now(),
        };
        self.publish(
            &routing::support_request(self.channel),
            &event,
            "herald.support_request.v1",
        )
        .await?;
        Ok(Reply::Later)
    }

    /// Publishes an event of the bot's own on the events exchange (the XMPP bot's room
    /// events), confirmed by the broker before this returns.
    pub async fn publish(
        &self,
        routing_key: &str,
        event: &impl serde::Serialize,
        kind: &str,
    ) -> Result<(), InboxError> {
        let body = serde_json::to_vec(event).unwrap_or_default();
        let message = Message::new(&self.exchange, routing_key, &body)
            .message_id(Uuid::now_v7().to_string())
            .kind(kind);
        self.publisher.publish(&message).await?;
        metrics::counter!("herald_bot_requests_total", "channel" => self.channel.as_str(), "kind" => kind.to_owned())
            .increment(1);
        Ok(())
    }
}

/// Link codes are short words of letters and digits; anything else is a typo, not a guess
/// worth a database lookup.
fn looks_like_a_code(code: &str) -> bool {
    (4..=64).contains(&code.len())
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Wrong codes per chat in the last hour. Bounded: past `MAX_CHATS` chats the oldest
/// entries go, which only ever lets a guesser try more, never locks anyone out.
#[derive(Default)]
struct WrongCodes {
    chats: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl WrongCodes {
    const WINDOW: Duration = Duration::from_secs(3600);
    const MAX_CHATS: usize = 10_000;

    fn exhausted(&self, chat: &str) -> bool {
        let mut chats = self.chats.lock().unwrap_or_else(|e| e.into_inner());
        let Some(times) = chats.get_mut(chat) else {
            return false;
        };
        while times.front().is_some_and(|t| t.elapsed() > Self::WINDOW) {
            times.pop_front();
        }
        times.len() >= WRONG_CODES_PER_HOUR
    }

    fn note(&self, chat: &str) {
        let mut chats = self.chats.lock().unwrap_or_else(|e| e.into_inner());
        if chats.len() >= Self::MAX_CHATS && !chats.contains_key(chat) {
            chats.retain(|_, times| times.back().is_some_and(|t| t.elapsed() < Self::WINDOW));
            if chats.len() >= Self::MAX_CHATS {
                chats.clear();
            }
        }
        let times = chats.entry(chat.to_owned()).or_default();
        times.push_back(Instant::now());
        while times.len() > WRONG_CODES_PER_HOUR {
            times.pop_front();
        }
    }
}

/// Consumes `{p}.answers.<channel>`: each answer goes to its chat through the bot.
pub(crate) struct AnswerHandler<S> {
    pub bot: Arc<S>,
    pub inbox: Inbox,
    /// Answers already given: a redelivered answer is not said twice.
    pub given: Arc<Mutex<VecDeque<Uuid>>>,
}

impl<S> AnswerHandler<S> {
    const REMEMBERED: usize = 10_000;

    fn given(&self, id: Uuid) -> bool {
        let given = self.given.lock().unwrap_or_else(|e| e.into_inner());
        given.contains(&id)
    }

    fn remember(&self, id: Uuid) {
        let mut given = self.given.lock().unwrap_or_else(|e| e.into_inner());
        if given.len() >= Self::REMEMBERED {
            given.pop_front();
        }
        given.push_back(id);
    }
}

impl<S: ChatChannel> Handler for AnswerHandler<S> {
    type Message = ChatAnswer;

    fn decode(&self, body: &[u8]) -> Result<ChatAnswer, Rejection> {
        let answer: ChatAnswer = decode_json(body)?;
        if answer.channel != S::CHANNEL || answer.chat.channel() != S::CHANNEL {
            return Err(Rejection::new(
                "wrong_channel",
                format!(
                    "an answer for {} reached the {} bot",
                    answer.chat.channel(),
                    S::CHANNEL
                ),
            ));
        }
        Ok(answer)
    }

    async fn handle(&self, answer: ChatAnswer, ctx: &Context) -> Outcome {
        // A forged answer would make the bot say something in someone's chat.
        if let Some(refused) = ctx.origin.refuse_unless_herald() {
            return refused;
        }
        if self.given(answer.answer_id) {
            return Outcome::Ack;
        }
        if answer.answer == Answer::InvalidCode {
            self.inbox.wrong_codes.note(&answer.chat.value());
        }
        let kind = answer_kind(&answer.answer);
        let result = self.bot.answer(&answer.chat, &answer.text()).await;
        metrics::counter!("herald_bot_answers_total", "channel" => S::CHANNEL.as_str(), "kind" => kind, "result" => if result.is_ok() { "sent" } else { "failed" })
            .increment(1);
        match result {
            Ok(()) => {
                self.remember(answer.answer_id);
                Outcome::Ack
            }
            Err(SendError::Retry(retry)) => Outcome::Retry {
                after: retry.after.unwrap_or(Duration::from_secs(5)),
                reason: format!("{}: {}", retry.failure.code, retry.failure.message),
            },
            Err(SendError::Unhealthy(failure)) => Outcome::Retry {
                after: Duration::from_secs(30),
                reason: format!("{}: {}", failure.code, failure.message),
            },
            // The chat is gone or blocked the bot: nobody is left to tell.
            Err(SendError::Permanent(failure)) => {
                tracing::warn!(code = %failure.code, reason = %failure.message, kind, "cannot answer in this chat; dropped");
                Outcome::Ack
            }
        }
    }
}

fn answer_kind(answer: &Answer) -> &'static str {
    match answer {
        Answer::Linked => "linked",
        Answer::InvalidCode => "invalid_code",
        Answer::TicketOpened { .. } => "ticket_opened",
        Answer::NotLinked => "not_linked",
        Answer::SupportReply { .. } => "support_reply",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_understood_in_every_form_the_bots_see() {
        assert_eq!(
            Command::parse("/start K7QX2MPA"),
            Command::Link("K7QX2MPA".into())
        );
        assert_eq!(
            Command::parse("/start@herald_bot  K7QX2MPA "),
            Command::Link("K7QX2MPA".into())
        );
        assert_eq!(
            Command::parse("link abc123"),
            Command::Link("abc123".into())
        );
        assert_eq!(
            Command::parse("/LINK abc123"),
            Command::Link("abc123".into())
        );
        assert_eq!(
            Command::parse("/support my parcel is late\nsince Monday"),
            Command::Support("my parcel is late\nsince Monday".into())
        );
        assert_eq!(Command::parse("/start"), Command::Help);
        assert_eq!(Command::parse("/support"), Command::Help);
        assert_eq!(Command::parse("hello"), Command::Help);
    }

    #[test]
    fn only_code_shaped_words_are_looked_up() {
        assert!(looks_like_a_code("K7QX2MPA"));
        assert!(!looks_like_a_code("abc"));
        assert!(!looks_like_a_code("two words"));
        assert!(!looks_like_a_code(&"x".repeat(65)));
    }

    #[test]
    fn a_chat_is_refused_after_five_wrong_codes_within_the_hour() {
        let wrong = WrongCodes::default();
        for _ in 0..WRONG_CODES_PER_HOUR - 1 {
            wrong.note("42");
        }
        assert!(!wrong.exhausted("42"));
        wrong.note("42");
        assert!(wrong.exhausted("42"));
        assert!(!wrong.exhausted("43"), "other chats are not affected");
    }
}
