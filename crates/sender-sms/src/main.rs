//! Herald's SMS sender (Twilio-compatible REST).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_runtime::service::run_idle(
        "sender-sms",
        "127.0.0.1:9106",
        "the SMS sender does not deliver yet: its queue is left untouched",
    )
    .await?;
    Ok(())
}
