//! Herald's Microsoft Teams sender and bot (R38).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sender_runtime::run_chat_sender::<sender_teams::TeamsSender>("sender-teams", "127.0.0.1:9107")
        .await?;
    Ok(())
}
