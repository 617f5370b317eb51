//! A person's XMPP client for the tests (tokio-xmpp over plain TCP to the tests' Prosody),
//! and the sender's settings for a fresh bot account.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use herald_runtime::config::Secret;
use herald_testkit::prosody::{Account, Prosody};
use sender_xmpp::{Tls, XmppConfig, XmppSettings};
use tokio::sync::mpsc;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::jid::{BareJid, Jid};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::message::{Lang, Message, MessageType};
use tokio_xmpp::parsers::muc::Muc;
use tokio_xmpp::parsers::muc::user::{MucUser, Status};
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Client, Event, IqRequest, IqResponse, Stanza};

pub const WAIT: Duration = Duration::from_secs(20);

/// The tests of one binary take turns on the tests' Prosody. With two at once, a person's
/// presence to a room now and then got no answer within 20 s (nothing at all came back to
/// that client); with one at a time it has not happened. Seen on this session's code and on
/// the previous session's alike; the cause is not found yet.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The sender's settings for a new bot account of its own (parallel tests never share a
/// session).
pub async fn bot_config(prosody: &Prosody) -> (XmppConfig, Account) {
    let bot = prosody.register_unique("bot").await;
    let config = XmppConfig {
        xmpp: XmppSettings {
            jid: bot.jid.clone(),
            password: Secret::new(bot.password.clone()),
            server: format!("{}:{}", prosody.host, prosody.port),
            tls: Tls::None,
            request_timeout_ms: 5_000,
            ..XmppSettings::default()
        },
    };
    (config, bot)
}

/// A person online with one client.
pub struct Person {
    pub account: Account,
    sender: mpsc::Sender<Outgoing>,
    stanzas: mpsc::Receiver<Stanza>,
}

enum Outgoing {
    Stanza(Box<Stanza>),
    Iq(Jid, IqRequest, tokio::sync::oneshot::Sender<IqResponse>),
}

/// Sends of one room presence before a test gives up (5 s apart).
const PRESENCE_ATTEMPTS: u64 = 6;

impl Person {
    /// Registers an account, connects, and sends initial presence (so messages to the bare
    /// JID reach this client).
    pub async fn online(prosody: &Prosody, name: &str) -> Person {
        let account = prosody.register_unique(name).await;
        let jid = Jid::from_str(&format!("{}/test", account.jid)).unwrap();
        let mut client = Client::new_plaintext(
            jid,
            account.password.clone(),
            DnsConfig::addr(&format!("{}:{}", prosody.host, prosody.port)),
            Timeouts::tight(),
        );
        loop {
            match tokio::time::timeout(WAIT, client.next())
                .await
                .expect("online in time")
            {
                Some(Event::Online { .. }) => break,
                Some(Event::Disconnected(e)) => panic!("{} cannot log in: {e}", account.jid),
                Some(_) => {}
                None => panic!("client ended"),
            }
        }
        client
            .send_stanza(Presence::available().into())
            .await
            .unwrap();
        let (sender, mut outgoing) = mpsc::channel::<Outgoing>(64);
        let (stanza_tx, stanzas) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    out = outgoing.recv() => match out {
                        Some(Outgoing::Stanza(s)) => { let _ = client.send_stanza(*s).await; }
                        Some(Outgoing::Iq(to, req, done)) => {
                            let token = client.send_iq(Some(to), req).await;
                            tokio::spawn(async move {
                                if let Ok(answer) = token.await { let _ = done.send(answer); }
                            });
                        }
                        None => { let _ = client.send_end().await; break; }
                    },
                    event = client.next() => match event {
                        Some(Event::Stanza(s)) => { let _ = stanza_tx.send(s).await; }
                        // Said, so that a test that waits in vain shows whether its client's
                        // stream went away meanwhile (the unanswered room presences below).
                        Some(Event::Disconnected(e)) => eprintln!("test client disconnected: {e}"),
                        Some(Event::Online { resumed, .. }) => eprintln!("test client online again (resumed: {resumed})"),
                        None => break,
                    },
                }
            }
        });
        Person {
            account,
            sender,
            stanzas,
        }
    }

    pub fn bare(&self) -> BareJid {
        BareJid::from_str(&self.account.jid).unwrap()
    }

    pub async fn send(&self, stanza: impl Into<Stanza>) {
        self.sender
            .send(Outgoing::Stanza(Box::new(stanza.into())))
            .await
            .unwrap();
    }

    pub async fn iq(&self, to: Jid, request: IqRequest) -> IqResponse {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.sender
            .send(Outgoing::Iq(to, request, done))
            .await
            .unwrap();
        tokio::time::timeout(WAIT, answer).await.unwrap().unwrap()
    }

    pub async fn say(&self, to: &str, text: &str) {
        let message =
            Message::chat(Jid::from_str(to).unwrap()).with_body(Lang::default(), text.into());
        self.send(message).await;
    }

    /// The next stanza that `matches`, skipping others.
    pub async fn next(&mut self, mut matches: impl FnMut(&Stanza) -> bool) -> Stanza {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let Ok(stanza) = tokio::time::timeout_at(deadline, self.stanzas.recv()).await else {
                panic!(
                    "the stanza in time; {} skipped meanwhile: {skipped:#?}",
                    skipped.len()
                );
            };
            let stanza = stanza.expect("client running");
            if matches(&stanza) {
                return stanza;
            }
            skipped.push(stanza);
        }
    }

    /// Sends a presence to a room and waits for the answer `matches` picks, sending it again
    /// every 5 s while none came, as XMPP clients do (joining twice is joining once). The
    /// tests' Prosody now and then answered a room presence of a test client not at all, in
    /// a loaded run even four times in a row (session 9's CI), hence six tries.
    pub async fn presence_until(
        &mut self,
        presence: Presence,
        mut matches: impl FnMut(&Stanza) -> bool,
    ) -> Stanza {
        for attempt in 1..=PRESENCE_ATTEMPTS {
            self.send(presence.clone()).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while let Ok(Some(stanza)) =
                tokio::time::timeout_at(deadline, self.stanzas.recv()).await
            {
                if matches(&stanza) {
                    return stanza;
                }
            }
            eprintln!("no answer to a room presence in 5 s (attempt {attempt}); sending it again");
        }
        panic!(
            "no answer to a room presence in {} s: {presence:?}",
            PRESENCE_ATTEMPTS * 5
        );
    }

    /// The body of the next message of this type.
    pub async fn next_body(&mut self, type_: MessageType) -> (Message, String) {
        let stanza = self
            .next(|s| matches!(s, Stanza::Message(m) if m.type_ == type_ && !m.bodies.is_empty()))
            .await;
        let Stanza::Message(message) = stanza else {
            unreachable!()
        };
        let body = message.bodies.values().next().cloned().unwrap();
        (message, body)
    }

    /// Creates a room (joins it, then accepts the default configuration: an instant room).
    pub async fn create_room(&mut self, room: &BareJid, nick: &str) {
        let occupant = room.with_resource_str(nick).unwrap();
        let join = Presence::available()
            .with_to(Jid::from(occupant))
            .with_payload(Muc::new());
        let room_jid = room.clone();
        self.presence_until(join, |s| match s {
            Stanza::Presence(p) => {
                p.from.as_ref().map(|f| f.to_bare()) == Some(room_jid.clone())
                    && p.payloads.iter().any(|e| {
                        MucUser::try_from(e.clone())
                            .is_ok_and(|u| u.status.contains(&Status::SelfPresence))
                    })
            }
            _ => false,
        })
        .await;
        let instant = Element::builder("query", "http://jabber.org/protocol/muc#owner")
            .append(
                Element::builder("x", "jabber:x:data")
                    .attr(
                        tokio_xmpp::minidom::rxml::NcName::try_from("type").unwrap(),
                        "submit",
                    )
                    .build(),
            )
            .build();
        let answer = self
            .iq(Jid::from(room.clone()), IqRequest::Set(instant))
            .await;
        assert!(matches!(answer, IqResponse::Result(_)), "{answer:?}");
    }

    /// Joins a room with its password; waits until in (or panics with the refusal).
    pub async fn join_room(&mut self, room: &BareJid, nick: &str, password: &str) {
        let occupant = room.with_resource_str(nick).unwrap();
        let join = Presence::available()
            .with_to(Jid::from(occupant))
            .with_payload(Muc::new().with_password(password.to_owned()));
        let room_jid = room.clone();
        let answer = self
            .presence_until(join, |s| match s {
                Stanza::Presence(p) => {
                    p.from.as_ref().map(|f| f.to_bare()) == Some(room_jid.clone())
                        && (p.type_ == PresenceType::Error
                            || p.payloads.iter().any(|e| {
                                MucUser::try_from(e.clone())
                                    .is_ok_and(|u| u.status.contains(&Status::SelfPresence))
                            }))
                }
                _ => false,
            })
            .await;
        let Stanza::Presence(presence) = answer else {
            unreachable!()
        };
        assert_ne!(presence.type_, PresenceType::Error, "refused: {presence:?}");
    }

    /// Waits until this person was removed from the room (kicked, or the room destroyed).
    pub async fn removed_from(&mut self, room: &BareJid) -> Vec<Status> {
        let room_jid = room.clone();
        let stanza = self
            .next(|s| match s {
                Stanza::Presence(p) => {
                    p.from.as_ref().map(|f| f.to_bare()) == Some(room_jid.clone())
                        && p.type_ == PresenceType::Unavailable
                        && p.payloads.iter().any(|e| {
                            MucUser::try_from(e.clone())
                                .is_ok_and(|u| u.status.contains(&Status::SelfPresence))
                        })
                }
                _ => false,
            })
            .await;
        let Stanza::Presence(presence) = stanza else {
            unreachable!()
        };
        presence
            .payloads
            .iter()
            .find_map(|e| MucUser::try_from(e.clone()).ok())
            .map(|u| u.status)
            .unwrap_or_default()
    }

    /// Whether the room exists (disco#info answers, or `item-not-found`).
    pub async fn room_exists(&self, room: &BareJid) -> bool {
        let query = Element::builder("query", "http://jabber.org/protocol/disco#info").build();
        match self
            .iq(Jid::from(room.clone()), IqRequest::Get(query))
            .await
        {
            IqResponse::Result(_) => true,
            IqResponse::Error(_) => false,
        }
    }

    pub async fn leave_room(&self, room: &BareJid, nick: &str) {
        let occupant = room.with_resource_str(nick).unwrap();
        self.send(Presence::new(PresenceType::Unavailable).with_to(Jid::from(occupant)))
            .await;
    }
}

/// The sender under a fresh prefix, once it is ready.
pub async fn start(test: &str, config: XmppConfig) -> sender_runtime::testing::SenderHarness {
    let h = sender_runtime::testing::SenderHarness::start_chat::<sender_xmpp::XmppSender>(
        test,
        sender_runtime::testing::quick_config(),
        config,
    )
    .await;
    let ready = h.wait_readiness(WAIT, |status, _| status == 200).await;
    assert!(ready, "not ready: {:?}", h.readyz().await);
    h
}

pub fn xmpp(jid: &str) -> messaging_core::Address {
    messaging_core::Address::Xmpp(messaging_core::values::Jid::parse(jid).unwrap())
}

pub fn room(jid: &BareJid) -> messaging_core::Address {
    messaging_core::Address::XmppRoom(messaging_core::values::Jid::parse(&jid.to_string()).unwrap())
}

pub async fn final_event(
    h: &sender_runtime::testing::SenderHarness,
) -> messaging_core::events::DeliveryEvent {
    loop {
        let event = h.next_event(WAIT).await.expect("a delivery event");
        if event.result.is_final() {
            return event;
        }
    }
}
