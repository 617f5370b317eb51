//! The command line: `serve` (default) and `bootstrap`.

use clap::{Parser, Subcommand};
use herald_storage::api_keys::{self, NewKey};
use herald_storage::{StoreError, db, tenants};
use messaging_core::values::TenantKey;

use crate::config::ApiConfig;

#[derive(Parser)]
#[command(
    name = "subscription-api",
    version,
    about = "Herald's subscription API"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply migrations, create the first tenant (if named and missing) and a global admin
    /// API key, and print the key. It is shown only this once.
    Bootstrap {
        /// Key of a tenant to create, such as `acme`.
        #[arg(long)]
        tenant: Option<String>,
        /// Display name of that tenant.
        #[arg(long)]
        name: Option<String>,
    },
}

pub async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => crate::startup::serve().await?,
        Command::Bootstrap { tenant, name } => bootstrap(tenant, name).await?,
    }
    Ok(())
}

async fn bootstrap(tenant: Option<String>, name: Option<String>) -> anyhow::Result<()> {
    herald_runtime::install_crypto_provider();
    let config: ApiConfig = herald_runtime::config::load(&[])?;
    let pool = db::pool(&config.database)?;
    db::migrate(&pool).await?;
    if let Some(raw) = tenant {
        let key = TenantKey::parse(&raw)?;
        match tenants::create(&pool, key.as_str(), name.as_deref().unwrap_or(key.as_str())).await {
            Ok(_) => println!("created tenant {key}"),
            Err(StoreError::Conflict(_)) => println!("tenant {key} exists already"),
            Err(e) => return Err(e.into()),
        }
    }
    let (key, plain) = api_keys::create(
        &pool,
        NewKey {
            tenant_id: None,
            role: messaging_core::Role::GlobalAdmin,
            user_id: None,
            name: "bootstrap",
            created_by: "bootstrap",
        },
    )
    .await?;
    println!(
        "global admin API key (id {}), shown only now:\n{plain}",
        key.id
    );
    Ok(())
}
