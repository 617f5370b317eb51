//! Herald's fan-out router: turns requests into one send job per address and tracks deliveries.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_runtime::service::run_idle(
        "fanout-router",
        "127.0.0.1:9101",
        "the router does not consume yet: producer messages wait in the ingress queue",
    )
    .await?;
    Ok(())
}
