//! The bot's slash commands, registered once at start with the bulk-overwrite route
//! (`PUT /applications/{id}/commands`): it replaces the whole global set, so registering the
//! same commands on every start is idempotent, and Discord keeps each command's id by name.

use std::time::Duration;

use sender_runtime::Inbound;
use serenity::builder::{CreateCommand, CreateCommandOption};
use serenity::model::application::{Command, CommandOptionType};

use crate::DiscordSender;

/// The readiness component of the bot side.
pub const HEALTH_COMPONENT: &str = "bot:discord";

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// `/link code:<code>` and `/support text:<text>`.
pub fn commands() -> Vec<CreateCommand> {
    vec![
        CreateCommand::new("link")
            .description("Get your notifications here: link this Discord account with a code")
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "code",
                    "The link code you were given",
                )
                .required(true),
            ),
        CreateCommand::new("support")
            .description("Ask the support team for help")
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "text",
                    "Your question or problem",
                )
                .required(true),
            ),
    ]
}

/// Registers the commands, retrying with backoff until it works or the service stops. The
/// bot is not ready (`bot:discord`) until then: without its commands nobody can link.
pub(crate) async fn register_until_done(bot: &DiscordSender, inbound: &Inbound) {
    inbound
        .health
        .set(HEALTH_COMPONENT, false, "registering the slash commands");
    let mut wait = FIRST_RETRY;
    loop {
        let result = bot
            .call(Command::set_global_commands(&bot.http, commands()))
            .await;
        match result {
            Ok(registered) => {
                tracing::info!(
                    commands = registered.len(),
                    "Discord slash commands registered"
                );
                inbound
                    .health
                    .set(HEALTH_COMPONENT, true, "slash commands registered");
                return;
            }
            Err(failed) => {
                let reason = failed.error.failure().message.clone();
                tracing::warn!(%reason, retry_in = ?wait, "cannot register the Discord slash commands");
                inbound.health.set(
                    HEALTH_COMPONENT,
                    false,
                    format!("cannot register the slash commands: {reason}"),
                );
            }
        }
        tokio::select! {
            _ = inbound.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(MAX_RETRY);
    }
}
