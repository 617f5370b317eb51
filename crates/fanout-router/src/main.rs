//! Herald's fan-out router: turns requests into one send job per address and tracks deliveries.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_runtime::install_crypto_provider();
    let config = fanout_router::config::Config::load()?;
    fanout_router::run(config).await?;
    Ok(())
}
