//! The WebSocket sender against the real broker, with real WebSocket clients
//! (tokio-tungstenite): two replicas and connections on each, acknowledgements, refusals,
//! silence, no connection at all, and clients that must not receive.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_jwks::ws_token::{self, WsClaims};
use herald_runtime::config::Secret;
use messaging_core::Address;
use messaging_core::events::{AttemptResult, DeliveryEvent};
use messaging_core::failure::FailureClass;
use messaging_core::values::WsKey;
use sender_runtime::testing::{SenderHarness, quick_config};
use sender_websocket::protocol::Delivery;
use sender_websocket::{WebsocketConfig, WebsocketSender, WebsocketSettings};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "websocket-test-secret";
const WAIT: Duration = Duration::from_secs(20);

fn config() -> WebsocketConfig {
    WebsocketConfig {
        websocket: WebsocketSettings {
            token_secret: Secret::new(SECRET.into()),
            ack_timeout_ms: 1_500,
            hello_timeout_ms: 2_000,
            ..WebsocketSettings::default()
        },
    }
}

fn token_signed(secret: &str, tenant: &str, namespaces: &[&str]) -> String {
    let now = chrono::Utc::now().timestamp();
    ws_token::issue(
        secret,
        WsClaims {
            iss: String::new(),
            aud: String::new(),
            tenant: tenant.into(),
            ns: namespaces.iter().map(|n| n.to_string()).collect(),
            iat: now,
            exp: now + 600,
            jti: "test".into(),
        },
    )
    .unwrap()
}

fn token(tenant: &str, namespaces: &[&str]) -> String {
    token_signed(SECRET, tenant, namespaces)
}

fn address(key: &str) -> Address {
    Address::Websocket(WsKey::parse(key).unwrap())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    ws: Socket,
}

impl Client {
    /// Connects, says hello, and returns the first frame Herald sends.
    async fn hello(addr: SocketAddr, token: &str, addresses: &[&str]) -> (Client, Value) {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        let hello = json!({"type": "hello", "token": token, "addresses": addresses});
        ws.send(Message::Text(hello.to_string().into()))
            .await
            .unwrap();
        let mut client = Client { ws };
        let first = client.next_frame().await.expect("a first frame");
        (client, first)
    }

    async fn connect(addr: SocketAddr, token: &str, addresses: &[&str]) -> Client {
        let (client, first) = Self::hello(addr, token, addresses).await;
        assert_eq!(first["type"], "ready", "{first}");
        client
    }

    /// The next text frame as JSON; `None` once the connection closed.
    async fn next_frame(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
            {
                Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// The close code Herald sends, after any frames before it.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn message(&mut self) -> Delivery {
        let frame = self.next_frame().await.expect("a message");
        assert_eq!(frame["type"], "message", "{frame}");
        serde_json::from_value(frame).unwrap()
    }

    async fn answer(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    async fn ack(&mut self, delivery: &Delivery) {
        self.answer(json!({"type": "ack", "deliveryId": delivery.delivery_id}))
            .await;
    }
}

async fn start(test: &str) -> SenderHarness {
    let h = SenderHarness::start_serving::<WebsocketSender>(test, quick_config(), config()).await;
    assert!(
        h.wait_readiness(WAIT, |status, _| status == 200).await,
        "{:?}",
        h.readyz().await
    );
    h
}

async fn until_final(h: &SenderHarness) -> Vec<DeliveryEvent> {
    h.events_until(WAIT, |e| e.last().is_some_and(|e| e.result.is_final()))
        .await
}

fn retry_code(event: &DeliveryEvent) -> String {
    match &event.result {
        AttemptResult::RetryScheduled { failure, .. } => {
            assert_eq!(failure.class, FailureClass::Temporary, "{event:?}");
            failure.code.clone()
        }
        other => panic!("a retry expected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_on_two_replicas_both_receive_and_an_ack_delivers() {
    let h = start("ws_two_replicas").await;
    let replica = h
        .start_serving_replica::<WebsocketSender>(quick_config(), config())
        .await;
    let token = token("acme", &["support-bot"]);
    let mut here = Client::connect(h.http_addr(), &token, &["support-bot/42"]).await;
    let mut there = Client::connect(replica.addr, &token, &["support-bot/42"]).await;

    let mut job = h.job(address("support-bot/42"), "Ticket 7 was answered.");
    job.content.subject = Some("Ticket 7".into());
    h.publish(&job).await;
    let (a, b) = (here.message().await, there.message().await);
    assert_eq!(a.delivery_id, job.delivery_id);
    assert_eq!(
        b.delivery_id, job.delivery_id,
        "both connections get it (R2)"
    );
    assert_eq!(a.content.text, "Ticket 7 was answered.");
    assert_eq!(a.content.subject.as_deref(), Some("Ticket 7"));
    assert_eq!(
        (a.tenant.as_str(), a.address.as_str()),
        ("acme", "support-bot/42")
    );
    there.ack(&b).await;
    let events = until_final(&h).await;
    assert!(
        matches!(
            events.last().unwrap().result,
            AttemptResult::Delivered { .. }
        ),
        "{events:?}"
    );
    replica.stop().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_silence_map_to_their_class_and_an_unacked_message_comes_again() {
    let h = start("ws_answers").await;
    let token = token("acme", &["crm"]);
    let mut client = Client::connect(h.http_addr(), &token, &["crm/ann"]).await;

    // Refused for good.
    h.publish(&h.job(address("crm/ann"), "one")).await;
    let message = client.message().await;
    client
        .answer(json!({"type": "refuse", "deliveryId": message.delivery_id, "class": "permanent", "reason": "no such person"}))
        .await;
    let events = until_final(&h).await;
    match &events.last().unwrap().result {
        AttemptResult::Failed { failure } => {
            assert_eq!(failure.code, "refused");
            assert_eq!(failure.class, FailureClass::Permanent);
            assert!(failure.message.contains("no such person"), "{failure:?}");
        }
        other => panic!("failed expected: {other:?}"),
    }

    // Refused for now: retried, and taken the second time.
    h.publish(&h.job(address("crm/ann"), "two")).await;
    let first = client.message().await;
    client
        .answer(json!({"type": "refuse", "deliveryId": first.delivery_id, "class": "temporary", "reason": "busy"}))
        .await;
    let again = client.message().await;
    assert_eq!(again.delivery_id, first.delivery_id);
    client.ack(&again).await;
    let events = until_final(&h).await;
    assert_eq!(retry_code(&events[0]), "refused");
    assert!(matches!(
        events.last().unwrap().result,
        AttemptResult::Delivered { .. }
    ));

    // Not acknowledged, and the client goes away: after it reconnects the message comes
    // again, with the same delivery id.
    h.publish(&h.job(address("crm/ann"), "three")).await;
    let unacked = client.message().await;
    drop(client);
    let event = h.next_event(WAIT).await.unwrap();
    let code = retry_code(&event);
    assert!(code == "no_ack" || code == "no_connection", "{code}");
    let mut back = Client::connect(h.http_addr(), &token, &["crm/ann"]).await;
    let resent = back.message().await;
    assert_eq!(resent.delivery_id, unacked.delivery_id);
    back.ack(&resent).await;
    let events = until_final(&h).await;
    assert!(matches!(
        events.last().unwrap().result,
        AttemptResult::Delivered { .. }
    ));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_connection_the_message_waits_as_a_temporary_failure() {
    let h = start("ws_nobody").await;
    h.publish(&h.job(address("support-bot/404"), "anyone?"))
        .await;
    let event = h.next_event(WAIT).await.unwrap();
    assert_eq!(retry_code(&event), "no_connection");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_foreign_namespaces_and_other_tenants_receive_nothing() {
    let h = start("ws_refused").await;
    let (mut forged, first) = Client::hello(
        h.http_addr(),
        &token_signed("another-secret", "acme", &["support-bot"]),
        &["support-bot/42"],
    )
    .await;
    assert_eq!(first["code"], "unauthorized", "{first}");
    assert_eq!(forged.close_code().await, Some(4401));

    let (mut outside, first) =
        Client::hello(h.http_addr(), &token("acme", &["crm"]), &["support-bot/42"]).await;
    assert_eq!(first["code"], "forbidden", "{first}");
    assert_eq!(outside.close_code().await, Some(4403));

    // Globex's client for the same address never gets acme's message.
    let mut globex = Client::connect(
        h.http_addr(),
        &token("globex", &["support-bot"]),
        &["support-bot/42"],
    )
    .await;
    h.publish(&h.job(address("support-bot/42"), "for acme only"))
        .await;
    let event = h.next_event(WAIT).await.unwrap();
    assert_eq!(retry_code(&event), "no_connection");
    let nothing = tokio::time::timeout(Duration::from_millis(500), globex.ws.next()).await;
    assert!(
        !matches!(nothing, Ok(Some(Ok(Message::Text(_))))),
        "globex received {nothing:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_secret_it_says_not_configured() {
    let h = SenderHarness::start_serving::<WebsocketSender>(
        "ws_unconfigured",
        quick_config(),
        WebsocketConfig::default(),
    )
    .await;
    let (status, body) = h.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("HERALD_WEBSOCKET__TOKEN_SECRET"), "{body}");
    h.stop().await;
}
