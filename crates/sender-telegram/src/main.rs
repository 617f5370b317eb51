//! Herald's Telegram sender and bot (R5, R6, R7).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sender_runtime::run_chat_sender::<sender_telegram::TelegramSender>(
        "sender-telegram",
        "127.0.0.1:9102",
    )
    .await?;
    Ok(())
}
