//! Herald's subscription API. `subscription-api` serves; `subscription-api bootstrap` creates
//! the first tenant and a global admin key.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    subscription_api::cli::main().await
}
