//! Herald's XMPP sender and help-desk room bot (R30-R37).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_runtime::service::run_idle(
        "sender-xmpp",
        "127.0.0.1:9104",
        "the XMPP sender does not deliver yet: its queue is left untouched",
    )
    .await?;
    Ok(())
}
