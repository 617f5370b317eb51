//! Herald's email sender (SMTP).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_runtime::service::run_idle(
        "sender-email",
        "127.0.0.1:9105",
        "the email sender does not deliver yet: its queue is left untouched",
    )
    .await?;
    Ok(())
}
