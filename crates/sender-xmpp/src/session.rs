//! The bot's one XMPP session: a task that owns tokio-xmpp's `Client` and serves everyone
//! else through a handle.
//!
//! tokio-xmpp's `Client` is a stream of events that is also where stanzas are sent; its own
//! split halves share one lock, and the receiving half gives up (without waking) when the
//! lock is taken. So one task owns the client and selects between the next event and the
//! next command, and [`Session`] is the cheap, cloneable handle: send a stanza, send an IQ
//! and await its answer, wait for a bounce of a message, wait to be online.
//!
//! The client reconnects by itself after a stream loss; stanzas handed to it meanwhile wait
//! in its queue (bounded by our timeouts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::jid::{BareJid, Jid};
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::{Message, MessageType};
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use tokio_xmpp::{Client, Event, IqRequest, IqResponse, Stanza};

/// Why a session request did not get its answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// The session task is gone (the service is stopping).
    #[error("the XMPP session is closed")]
    Closed,
    /// The stream could not take the stanza (disconnected for good, or a write failed).
    #[error("the XMPP stream did not take the stanza: {0}")]
    Stream(String),
    #[error("no answer from the XMPP server within {0:?}")]
    Timeout(Duration),
}

/// What the session hands on: messages and presences that are not answers to our requests.
#[derive(Debug)]
pub enum Incoming {
    Message(Message),
    Presence(Presence),
}

enum Command {
    Send {
        stanza: Box<Stanza>,
        done: oneshot::Sender<Result<(), SessionError>>,
    },
    Iq {
        to: Jid,
        request: IqRequest,
        done: oneshot::Sender<tokio_xmpp::IqResponseToken>,
    },
}

/// Whether the stream is up, and with which full JID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connecting,
    Online(Jid),
    /// The stream was lost (the client is reconnecting); the error in words.
    Lost(String),
}

/// The handle to the session. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    commands: mpsc::Sender<Command>,
    link: watch::Receiver<Link>,
    /// Message ids we wait on for an error bounce.
    bounces: Arc<Mutex<HashMap<String, oneshot::Sender<StanzaError>>>>,
    timeout: Duration,
    /// How long after the server's answer a message's bounce is waited for.
    bounce_wait: Duration,
}

impl Session {
    /// Starts the session task with this client. Messages and presences that are not
    /// bounces go to `incoming`.
    pub fn start(
        client: Client,
        incoming: mpsc::Sender<Incoming>,
        timeout: Duration,
        bounce_wait: Duration,
        shutdown: CancellationToken,
    ) -> Session {
        let (commands, command_rx) = mpsc::channel(256);
        let (link_tx, link) = watch::channel(Link::Connecting);
        let bounces = Arc::new(Mutex::new(HashMap::new()));
        let task = Task {
            client,
            commands: command_rx,
            link: link_tx,
            incoming,
            bounces: bounces.clone(),
        };
        tokio::spawn(task.run(shutdown));
        Session {
            commands,
            link,
            bounces,
            timeout,
            bounce_wait,
        }
    }

    /// The stream's state now, and changes to it.
    pub fn link(&self) -> watch::Receiver<Link> {
        self.link.clone()
    }

    /// Waits until the stream is online (at most the request timeout).
    pub async fn online(&self) -> Result<Jid, SessionError> {
        let mut link = self.link.clone();
        let wait = link.wait_for(|l| matches!(l, Link::Online(_)));
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(Ok(state)) => match &*state {
                Link::Online(jid) => Ok(jid.clone()),
                _ => Err(SessionError::Closed),
            },
            Ok(Err(_)) => Err(SessionError::Closed),
            Err(_) => Err(SessionError::Timeout(self.timeout)),
        }
    }

    /// Hands a stanza to the stream; returns once it was written.
    pub async fn send(&self, stanza: impl Into<Stanza>) -> Result<(), SessionError> {
        let (done, answer) = oneshot::channel();
        self.commands
            .send(Command::Send {
                stanza: Box::new(stanza.into()),
                done,
            })
            .await
            .map_err(|_| SessionError::Closed)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SessionError::Closed),
            Err(_) => Err(SessionError::Timeout(self.timeout)),
        }
    }

    /// Sends an IQ and waits for its answer: `Ok(Ok(payload))` for a result, `Ok(Err(error))`
    /// for an error answer.
    pub async fn iq(
        &self,
        to: Jid,
        request: IqRequest,
    ) -> Result<Result<Option<tokio_xmpp::minidom::Element>, StanzaError>, SessionError> {
        let (done, token) = oneshot::channel();
        self.commands
            .send(Command::Iq { to, request, done })
            .await
            .map_err(|_| SessionError::Closed)?;
        let answer = async {
            let token = token.await.map_err(|_| SessionError::Closed)?;
            token.await.map_err(|e| SessionError::Stream(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(IqResponse::Result(payload))) => Ok(Ok(payload)),
            Ok(Ok(IqResponse::Error(error))) => Ok(Err(error)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(SessionError::Timeout(self.timeout)),
        }
    }

    /// Sends a message and says whether the server bounced it.
    ///
    /// XMPP confirms no message. What the server refuses (no such user, a room we are not in)
    /// comes back as an error message with our id. The bot pings its server after the
    /// message, so the message has been handled once the answer is in, and then waits
    /// `bounce_wait` for a refusal: the answer to the ping may overtake it (Prosody looks
    /// the user up asynchronously; measured: the bounce 40 µs after the answer). A bounce
    /// from a remote server may come later still; [`Session::start`]'s task then hands it on
    /// as an incoming message.
    pub async fn send_message(&self, mut message: Message) -> Result<Bounce, SessionError> {
        let id = uuid::Uuid::now_v7().to_string();
        message.id = Some(tokio_xmpp::parsers::message::Id(id.clone()));
        let server = message
            .to
            .as_ref()
            .map(|to| Jid::from(BareJid::from_parts(None, to.domain())))
            .ok_or_else(|| SessionError::Stream("a message without an address".into()))?;
        let (tx, mut bounce) = oneshot::channel();
        self.bounces().insert(id.clone(), tx);
        let sent = async {
            self.send(message).await?;
            // The barrier: the server's answer to a ping comes after any bounce of the message.
            self.iq(
                server,
                IqRequest::Get(tokio_xmpp::parsers::ping::Ping.into()),
            )
            .await
            .map(|_| ())
        }
        .await;
        if let Err(error) = sent {
            self.bounces().remove(&id);
            return Err(error);
        }
        let refused = tokio::time::timeout(self.bounce_wait, &mut bounce).await;
        self.bounces().remove(&id);
        Ok(match refused {
            Ok(Ok(error)) => Bounce::Refused(Box::new(error)),
            _ => Bounce::None,
        })
    }

    fn bounces(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<StanzaError>>> {
        self.bounces.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What came back for a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Bounce {
    None,
    Refused(Box<StanzaError>),
}

struct Task {
    client: Client,
    commands: mpsc::Receiver<Command>,
    link: watch::Sender<Link>,
    incoming: mpsc::Sender<Incoming>,
    bounces: Arc<Mutex<HashMap<String, oneshot::Sender<StanzaError>>>>,
}

impl Task {
    async fn run(mut self, shutdown: CancellationToken) {
        // What arrives first, then the next command. A send holds the client until the
        // stream has written the stanza, and tokio-xmpp's stream stops writing while its
        // queue of 16 incoming events waits to be read: with commands and events taken in
        // turn, a burst of sends into a room (each echoed back) filled that queue and the
        // session hung, its pings unanswered. Reading every event that is ready before each
        // command keeps the queue empty when a send starts.
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                event = self.client.next() => match event {
                    Some(event) => self.event(event).await,
                    None => break,
                },
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => break,
                },
            }
        }
        let _ = self.link.send(Link::Lost("stopped".into()));
        // An orderly end: the server sends our unavailable presence to the rooms at once.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.send_end()).await;
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Send { stanza, done } => {
                let sent = self
                    .client
                    .send_stanza(*stanza)
                    .await
                    .map(|_| ())
                    .map_err(|e| SessionError::Stream(e.to_string()));
                let _ = done.send(sent);
            }
            Command::Iq { to, request, done } => {
                let token = self.client.send_iq(Some(to), request).await;
                let _ = done.send(token);
            }
        }
    }

    async fn event(&mut self, event: Event) {
        match event {
            Event::Online { bound_jid, .. } => {
                tracing::info!(jid = %bound_jid, "XMPP session online");
                // Available, so that what people write to the bot's bare JID reaches it.
                if let Err(error) = self.client.send_stanza(Presence::available().into()).await {
                    tracing::warn!(%error, "could not send the initial presence");
                }
                let _ = self.link.send(Link::Online(bound_jid));
            }
            Event::Disconnected(error) => {
                tracing::warn!(%error, "XMPP stream lost; reconnecting");
                let _ = self.link.send(Link::Lost(error.to_string()));
            }
            Event::Stanza(Stanza::Message(message)) => {
                if message.type_ == MessageType::Error
                    && let Some(id) = &message.id
                {
                    let waiting = self
                        .bounces
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id.0);
                    if let Some(waiting) = waiting {
                        let _ = waiting.send(stanza_error(&message));
                        return;
                    }
                }
                let _ = self.incoming.send(Incoming::Message(message)).await;
            }
            Event::Stanza(Stanza::Presence(presence)) => {
                let _ = self.incoming.send(Incoming::Presence(presence)).await;
            }
            Event::Stanza(Stanza::Iq(iq)) => self.answer_iq(iq).await,
        }
    }

    /// The bot offers no IQ services: a request gets `service-unavailable`, as RFC 6120
    /// asks of a client that does not understand it. (Answers to our own IQs never get
    /// here: the client matches them to their tokens.)
    async fn answer_iq(&mut self, iq: Iq) {
        let (from, id) = match iq {
            Iq::Get { from, id, .. } | Iq::Set { from, id, .. } => (from, id),
            Iq::Result { .. } | Iq::Error { .. } => return,
        };
        let error = StanzaError::new(
            ErrorType::Cancel,
            DefinedCondition::ServiceUnavailable,
            "en",
            "",
        );
        let answer = Iq::Error {
            from: None,
            to: from,
            id,
            error,
            payload: None,
        };
        if let Err(error) = self.client.send_stanza(answer.into()).await {
            tracing::debug!(%error, "could not answer an IQ");
        }
    }
}

/// The error inside an error message, or `undefined-condition` when it has none we can read.
pub fn stanza_error(message: &Message) -> StanzaError {
    message
        .payloads
        .iter()
        .find_map(|p| StanzaError::try_from(p.clone()).ok())
        .unwrap_or_else(|| {
            StanzaError::new(
                ErrorType::Cancel,
                DefinedCondition::UndefinedCondition,
                "en",
                "the server bounced the message without saying why",
            )
        })
}
