//! Herald's SMS sender (Twilio-compatible REST).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sender_runtime::run_sender::<sender_sms::SmsSender>("sender-sms", "127.0.0.1:9106").await?;
    Ok(())
}
