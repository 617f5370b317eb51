//! A client of Herald's WebSocket channel (docs/websocket-clients.md): connects, says hello
//! with its token and addresses, prints each message once and acknowledges it, and connects
//! again after a drop (Herald sends what was not acknowledged again, so a repeat is skipped
//! by its delivery id).
//!
//! ```sh
//! HERALD_WS_URL=ws://127.0.0.1:9108/ws HERALD_WS_TOKEN=... \
//!   HERALD_WS_ADDRESSES=support-bot/42 cargo run -p sender-websocket --example client
//! ```

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Delivery ids remembered to skip repeats: the last this many.
const REMEMBERED: usize = 10_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("HERALD_WS_URL").unwrap_or_else(|_| "ws://127.0.0.1:9108/ws".into());
    let token = std::env::var("HERALD_WS_TOKEN")?;
    let addresses: Vec<String> = std::env::var("HERALD_WS_ADDRESSES")?
        .split(',')
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    let mut seen = Seen::default();
    loop {
        if let Err(error) = session(&url, &token, &addresses, &mut seen).await {
            eprintln!("reconnecting: {error}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// One connection: hello, then messages until it drops.
async fn session(
    url: &str,
    token: &str,
    addresses: &[String],
    seen: &mut Seen,
) -> Result<(), Box<dyn std::error::Error>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let hello = json!({"type": "hello", "token": token, "addresses": addresses});
    ws.send(Message::Text(hello.to_string().into())).await?;
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text)?;
        match frame["type"].as_str() {
            Some("ready") => eprintln!("ready for {}", frame["addresses"]),
            Some("message") => {
                let delivery = frame["deliveryId"].as_str().unwrap_or_default().to_owned();
                if seen.first_time(&delivery) {
                    // Hand the message on here; refuse it instead with
                    // {"type": "refuse", "deliveryId": ..., "class": "temporary", "reason": ...}.
                    println!("{} {}", frame["address"], frame["content"]["text"]);
                }
                let ack = json!({"type": "ack", "deliveryId": delivery});
                ws.send(Message::Text(ack.to_string().into())).await?;
            }
            Some("error") => return Err(format!("refused: {frame}").into()),
            _ => {}
        }
    }
    Ok(())
}

/// The delivery ids seen lately, bounded.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    fn first_time(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }
}
