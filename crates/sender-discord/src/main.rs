//! Herald's Discord sender and bot (R5, R6, R7).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sender_runtime::run_chat_sender::<sender_discord::DiscordSender>(
        "sender-discord",
        "127.0.0.1:9103",
    )
    .await?;
    Ok(())
}
