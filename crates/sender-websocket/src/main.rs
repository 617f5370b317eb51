//! Herald's WebSocket sender (R39).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sender_runtime::run_serving_sender::<sender_websocket::WebsocketSender>(
        "sender-websocket",
        "127.0.0.1:9108",
    )
    .await?;
    Ok(())
}
