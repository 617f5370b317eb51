//! The bot's one XMPP session: a task that owns tokio-xmpp's `Client` and serves everyone
//! else through a handle.
//!
//! tokio-xmpp's `StanzaStream` is a stream of events that is also where stanzas are queued;
//! its split halves share one lock, and the receiving half gives up (without waking) when
//! the lock is taken. So one task owns the stream and selects between the next event and
//! the next command, and [`Session`] is the cheap, cloneable handle: send a stanza, send an
//! IQ and await its answer, wait for a bounce of a message, wait to be online. The task
//! matches IQ answers to their requests itself (tokio-xmpp's `Client` does that too, but
//! waits for every write while holding the stream, which deadlocks: see [`Task::run`]).
//!
//! The stream reconnects by itself after a loss; stanzas handed to it meanwhile wait in its
//! queue (bounded by our timeouts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::jid::{BareJid, Jid};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::{Message, MessageType};
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};
use tokio_xmpp::stanzastream::{
    Event as StreamEvent, StanzaStage, StanzaState, StanzaStream, StanzaToken,
    StreamEvent as StreamState,
};
use tokio_xmpp::{IqRequest, Stanza};

/// How many stanzas wait in each direction of the stream before the other side waits.
pub const QUEUE_DEPTH: usize = 64;

/// An IQ's answer: its payload, or the error the other side sent.
type IqAnswer = oneshot::Sender<Result<Option<Element>, StanzaError>>;
/// The IQs we wait on, by (the JID asked, id).
type Pending = Arc<Mutex<HashMap<(Jid, String), IqAnswer>>>;

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
        id: String,
        done: IqAnswer,
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
    pending: Pending,
    timeout: Duration,
    /// How long after the server's answer a message's bounce is waited for.
    bounce_wait: Duration,
}

impl Session {
    /// Starts the session task with this stream. Messages and presences that are not
    /// bounces go to `incoming`.
    pub fn start(
        stream: StanzaStream,
        incoming: mpsc::Sender<Incoming>,
        timeout: Duration,
        bounce_wait: Duration,
        shutdown: CancellationToken,
    ) -> Session {
        let (commands, command_rx) = mpsc::channel(256);
        let (link_tx, link) = watch::channel(Link::Connecting);
        let bounces = Arc::new(Mutex::new(HashMap::new()));
        let pending = Pending::default();
        let task = Task {
            stream,
            commands: command_rx,
            link: link_tx,
            incoming,
            bounces: bounces.clone(),
            pending: pending.clone(),
            account: None,
        };
        tokio::spawn(task.run(shutdown));
        Session {
            commands,
            link,
            bounces,
            pending,
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
    ) -> Result<Result<Option<Element>, StanzaError>, SessionError> {
        let id = uuid::Uuid::now_v7().to_string();
        let key = (to.clone(), id.clone());
        let (done, answer) = oneshot::channel();
        self.commands
            .send(Command::Iq {
                to,
                request,
                id,
                done,
            })
            .await
            .map_err(|_| SessionError::Closed)?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(SessionError::Closed),
            Err(_) => {
                pending(&self.pending).remove(&key);
                Err(SessionError::Timeout(self.timeout))
            }
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
    stream: StanzaStream,
    commands: mpsc::Receiver<Command>,
    link: watch::Sender<Link>,
    incoming: mpsc::Sender<Incoming>,
    bounces: Arc<Mutex<HashMap<String, oneshot::Sender<StanzaError>>>>,
    pending: Pending,
    /// The bare JID the stream is bound to: IQ answers without a `from` come from it.
    account: Option<BareJid>,
}

impl Task {
    async fn run(mut self, shutdown: CancellationToken) {
        // The stream is read and fed from this one task, and nothing here waits for the
        // stream to write: a send only queues the stanza, and a helper task waits for it to
        // be written. (tokio-xmpp's `Client` waited for the write while holding the client,
        // so no event was read meanwhile; its stream stops writing while its queue of
        // incoming events is full, and a burst of messages into a room, each echoed back,
        // hung the session.)
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                event = self.stream.next() => match event {
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
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.close()).await;
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Send { stanza, done } => {
                let token = self.stream.send(stanza).await;
                tokio::spawn(async move {
                    let _ = done.send(written(token).await);
                });
            }
            Command::Iq {
                to,
                request,
                id,
                done,
            } => {
                // Answers are matched on (sender, id), so nobody else can answer for `to`.
                pending(&self.pending).insert((to.clone(), id.clone()), done);
                let iq = match request {
                    IqRequest::Get(payload) => Iq::Get {
                        from: None,
                        to: Some(to),
                        id,
                        payload,
                    },
                    IqRequest::Set(payload) => Iq::Set {
                        from: None,
                        to: Some(to),
                        id,
                        payload,
                    },
                };
                // Queued; the answer is what the caller waits for.
                let _ = self.stream.send(Box::new(iq.into())).await;
            }
        }
    }

    async fn event(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Stream(StreamState::Reset { bound_jid, .. }) => {
                tracing::info!(jid = %bound_jid, "XMPP session online");
                self.account = Some(bound_jid.to_bare());
                // Available, so that what people write to the bot's bare JID reaches it.
                let _ = self
                    .stream
                    .send(Box::new(Presence::available().into()))
                    .await;
                let _ = self.link.send(Link::Online(bound_jid));
            }
            StreamEvent::Stream(StreamState::Suspended) => {
                tracing::warn!("XMPP stream lost; reconnecting");
                let _ = self
                    .link
                    .send(Link::Lost("the connection to the server was lost".into()));
            }
            StreamEvent::Stream(StreamState::Resumed) => {
                tracing::info!("XMPP stream resumed");
                if let Some(account) = &self.account {
                    let _ = self.link.send(Link::Online(Jid::from(account.clone())));
                }
            }
            StreamEvent::Stanza(Stanza::Message(message)) => {
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
            StreamEvent::Stanza(Stanza::Presence(presence)) => {
                let _ = self.incoming.send(Incoming::Presence(presence)).await;
            }
            StreamEvent::Stanza(Stanza::Iq(iq)) => self.iq(iq).await,
        }
    }

    /// An answer to one of our requests goes to whoever waits for it. The bot offers no IQ
    /// services: a request gets `service-unavailable`, as RFC 6120 asks of a client that
    /// does not understand it.
    async fn iq(&mut self, iq: Iq) {
        let (from, id, answer) = match iq {
            Iq::Result {
                from, id, payload, ..
            } => (from, id, Ok(payload)),
            Iq::Error {
                from, id, error, ..
            } => (from, id, Err(error)),
            Iq::Get { from, id, .. } | Iq::Set { from, id, .. } => {
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
                let _ = self.stream.send(Box::new(answer.into())).await;
                return;
            }
        };
        // No `from` means our own account (RFC 6120 8.1.2.1).
        let Some(from) = from.or_else(|| self.account.clone().map(Jid::from)) else {
            return;
        };
        match pending(&self.pending).remove(&(from, id)) {
            Some(waiting) => {
                let _ = waiting.send(answer);
            }
            None => tracing::debug!("an IQ answer nobody waits for (timed out?)"),
        }
    }
}

/// Waits until the stream wrote the stanza (or gave up on it).
async fn written(mut token: StanzaToken) -> Result<(), SessionError> {
    match token.wait_for(StanzaStage::Sent).await {
        Some(StanzaState::Sent { .. }) | Some(StanzaState::Acked { .. }) => Ok(()),
        Some(StanzaState::Failed { error }) => {
            Err(SessionError::Stream(error.into_io_error().to_string()))
        }
        Some(StanzaState::Queued) | Some(StanzaState::Dropped) | None => Err(SessionError::Stream(
            "the stream ended before the stanza was written".into(),
        )),
    }
}

fn pending(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<(Jid, String), IqAnswer>> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
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
