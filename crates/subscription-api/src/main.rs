//! Herald's subscription API: tenants, subscriptions, registrations, users and addresses, triggers (R10-R19).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_runtime::service::run_idle(
        "subscription-api",
        "127.0.0.1:8080",
        "the REST API is not built yet: only health and metrics are served",
    )
    .await?;
    Ok(())
}
