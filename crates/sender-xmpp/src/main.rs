//! Herald's XMPP sender and bot (R30-R37).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sender_runtime::run_chat_sender::<sender_xmpp::XmppSender>("sender-xmpp", "127.0.0.1:9104")
        .await?;
    Ok(())
}
