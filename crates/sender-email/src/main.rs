//! Herald's email sender (SMTP).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sender_runtime::run_sender::<sender_email::EmailSender>("sender-email", "127.0.0.1:9105")
        .await?;
    Ok(())
}
