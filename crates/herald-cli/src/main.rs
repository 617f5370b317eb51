//! `herald`: the operator's and producer's command line.
//!
//! - `herald publish FILE` checks a message with the same decoder the router uses, then
//!   publishes it to the ingress exchange with a publisher confirm.
//! - `herald dead-letters QUEUE` shows a queue's dead letters with their reasons, leaving them
//!   in place.
//! - `herald declare` declares the topology (every service also does this on start).
//!
//! Broker settings come from the same `HERALD_AMQP__*` variables the services read.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use chrono::{TimeZone, Utc};
use clap::{Parser, Subcommand};
use herald_cli::dead_letters;
use herald_runtime::amqp::{Broker, Message, Publisher, Topology};
use herald_runtime::config::BaseConfig;
use messaging_core::ingress::Ingress;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Publish to Herald and inspect its queues"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish a message (a JSON file, or `-` for standard input) to the ingress exchange.
    Publish {
        file: PathBuf,
        /// Routing key on the ingress exchange (any key reaches the router).
        #[arg(long, default_value = "cli")]
        routing_key: String,
        /// Queue the router answers to when the message is complete (R4): one of the tenant's
        /// reply queues, `<prefix>.reply.<tenant>.<name>`.
        #[arg(long)]
        reply_to: Option<String>,
        #[arg(long)]
        correlation_id: Option<String>,
        /// Publish even if the local check fails (to test dead-lettering).
        #[arg(long)]
        no_validate: bool,
    },
    /// Show dead letters of a work queue (`herald.router.ingress`) or a dead-letter queue,
    /// with their reasons. They stay in the queue.
    DeadLetters {
        queue: String,
        /// Show at most this many, oldest first (0: all of them).
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// Declare every exchange and queue under the configured prefix.
    Declare,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    herald_runtime::install_crypto_provider();
    // A command line tool answers with its message, not a backtrace.
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config: BaseConfig = herald_runtime::config::load(&[])?;
    let topology = Topology::from_config(&config.amqp);
    let broker = Broker::new(config.amqp.clone(), "herald-cli");
    match cli.command {
        Command::Publish {
            file,
            routing_key,
            reply_to,
            correlation_id,
            no_validate,
        } => {
            let body = read_input(&file)?;
            if !no_validate {
                check(&body)?;
            }
            let id = uuid::Uuid::now_v7().to_string();
            let mut message = Message::new(topology.names().ingress_exchange(), routing_key, &body)
                .message_id(&id);
            if let Some(reply_to) = reply_to {
                message = message.reply_to(reply_to);
            }
            if let Some(correlation_id) = correlation_id {
                message = message.correlation_id(correlation_id);
            }
            let publisher = Publisher::new(broker, "publish");
            publisher.publish(&message).await.context("publish")?;
            publisher.close().await;
            println!(
                "published message {id} to {} (confirmed by the broker)",
                topology.names().ingress_exchange()
            );
        }
        Command::DeadLetters { queue, count } => {
            let dead_queue = if queue.ends_with(".dead") {
                queue
            } else {
                topology.names().dead_letter_queue(&queue)
            };
            show_dead_letters(&broker, &dead_queue, count).await?;
        }
        Command::Declare => {
            let connection = broker.connect("declare").await.context("connect")?;
            for drift in topology.declare(&connection).await.context("declare")? {
                println!("differs from this version's declaration (used as it is): {drift}");
            }
            let _ = connection.close(200, "done".into()).await;
            println!(
                "declared the topology under prefix {:?}",
                config.amqp.prefix
            );
        }
    }
    Ok(())
}

fn read_input(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        return Ok(body);
    }
    std::fs::read(file).with_context(|| format!("read {}", file.display()))
}

/// The router's own checks, run before publishing so a producer learns at once.
fn check(body: &[u8]) -> anyhow::Result<()> {
    match Ingress::decode(body) {
        Ok(Ingress::Notify(request)) => request
            .validate()
            .map_err(|e| anyhow::anyhow!("the router would refuse this message: {e}")),
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "the router would refuse this message ({}): {e}\n(use --no-validate to publish it anyway)",
            e.code()
        ),
    }
}

/// Prints the dead letters, each once, and how many the queue holds.
async fn show_dead_letters(broker: &Broker, queue: &str, count: usize) -> anyhow::Result<()> {
    let peek = dead_letters::peek(broker, queue, count).await?;
    for (i, letter) in peek.letters.iter().enumerate() {
        let code = letter
            .code
            .clone()
            .unwrap_or_else(|| "(broker: delivery limit or expiry, see x-death)".into());
        let when = letter
            .dead_at_ms
            .and_then(|ms| Utc.timestamp_millis_opt(i64::try_from(ms).ok()?).single())
            .map_or_else(|| "?".into(), |t| t.to_rfc3339());
        let body = String::from_utf8_lossy(&letter.body);
        let shown: String = body.chars().take(300).collect();
        let cut = if body.chars().count() > 300 {
            format!(" ... ({} bytes in all)", letter.body.len())
        } else {
            String::new()
        };
        println!(
            "#{} {code} at {when} from {}",
            i + 1,
            letter.source_queue.as_deref().unwrap_or_default()
        );
        if let Some(reason) = &letter.reason {
            println!("   reason: {reason}");
        }
        if let Some(id) = &letter.message_id {
            println!("   message id: {id}");
        }
        println!("   attempts: {}", letter.attempts);
        println!("   body: {shown}{cut}");
    }
    println!(
        "{queue}: {} dead letters, {} shown (they stay in the queue)",
        peek.total,
        peek.letters.len()
    );
    Ok(())
}
