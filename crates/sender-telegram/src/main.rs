//! Herald's Telegram sender and bot (R5, R6, R7).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_runtime::service::run_idle(
        "sender-telegram",
        "127.0.0.1:9102",
        "the Telegram sender does not deliver yet: its queue is left untouched",
    )
    .await?;
    Ok(())
}
