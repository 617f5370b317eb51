//! A program of the tenant's own on WebSocket, every part real: a token from the API, a
//! client connected to the sender, an address added through the API, a direct message that
//! the client acknowledges (delivered), and one it refuses for good (R39).

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_runtime::config::Secret;
use herald_storage::PgPool;
use sender_websocket::{WebsocketConfig, WebsocketSender, WebsocketSettings};
use serde_json::{Value, json};
use support::{System, WS_TOKEN_SECRET};
use tokio_tungstenite::tungstenite::Message;

async fn next_message(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["type"] == "message" {
                return value;
            }
        }
    }
}

#[sqlx::test(migrations = "../../migrations")]
async fn a_client_of_the_tenant_receives_a_direct_message_and_acknowledges_it(pool: PgPool) {
    let mut system = System::start(pool, "e2e_websocket").await;
    let config = WebsocketConfig {
        websocket: WebsocketSettings {
            token_secret: Secret::new(WS_TOKEN_SECRET.into()),
            ..WebsocketSettings::default()
        },
    };
    let addr = system
        .run("e2e-sender-websocket", |service| {
            Box::pin(async move {
                sender_runtime::run::start_serving::<WebsocketSender>(
                    service,
                    sender_runtime::testing::quick_config(),
                    config,
                )
                .await
                .unwrap()
            })
        })
        .await;

    let (status, issued) = system
        .call(
            "POST",
            "/api/messaging/websocket/tokens",
            Some(json!({"namespaces": ["support-bot"]})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let (status, added) = system
        .call(
            "POST",
            "/api/messaging/users/ann/addresses",
            Some(json!({"channel": "websocket", "address": "support-bot/ann"})),
        )
        .await;
    assert_eq!(status, 201, "{added}");

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let hello =
        json!({"type": "hello", "token": issued["token"], "addresses": ["support-bot/ann"]});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    let Some(Ok(Message::Text(ready))) = ws.next().await else {
        panic!("no ready frame")
    };
    assert!(ready.contains("\"ready\""), "{ready}");

    // Acknowledged: delivered.
    let (status, accepted) = system
        .call(
            "POST",
            "/api/messaging/messages",
            Some(json!({"to": {"users": ["ann"]}, "content": {"direct": {"body": "Build 1234 passed"}}})),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let message = next_message(&mut ws).await;
    assert_eq!(message["content"]["text"], "Build 1234 passed");
    let ack = json!({"type": "ack", "deliveryId": message["deliveryId"]});
    ws.send(Message::Text(ack.to_string().into()))
        .await
        .unwrap();
    let id = accepted["messageId"].as_str().unwrap();
    let done = system
        .wait_for(&format!("/api/messaging/messages/{id}"), |m| {
            m["status"] == "completed"
        })
        .await;
    assert_eq!(done["deliveries"][0]["status"], "sent", "{done}");

    // Refused for good: the delivery fails as permanent, with the client's reason.
    let (_, accepted) = system
        .call(
            "POST",
            "/api/messaging/messages",
            Some(json!({"to": {"users": ["ann"]}, "content": {"direct": {"body": "Build 1235 failed"}}})),
        )
        .await;
    let message = next_message(&mut ws).await;
    let refuse = json!({"type": "refuse", "deliveryId": message["deliveryId"], "class": "permanent", "reason": "ann left the team"});
    ws.send(Message::Text(refuse.to_string().into()))
        .await
        .unwrap();
    let id = accepted["messageId"].as_str().unwrap();
    let done = system
        .wait_for(&format!("/api/messaging/messages/{id}"), |m| {
            m["status"] == "completed"
        })
        .await;
    assert_eq!(
        done["deliveries"][0]["failure"]["class"], "permanent",
        "{done}"
    );
    system.finish().await;
}
