//! A sender binary's `main`, and the same start-up for tests.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures::future::BoxFuture;
use herald_runtime::amqp::delivery_events::Events;
use herald_runtime::amqp::{Consumer, ConsumerSettings, Publisher};
use herald_runtime::config::BaseConfig;
use herald_runtime::service::Service;
use serde::Deserialize;

use crate::breaker::Breaker;
use crate::chat::{AnswerHandler, ChatChannel, Inbound, Inbox, Serving, ServingChannel};
use crate::config::SenderConfig;
use crate::limits::Limiter;
use crate::limits::RateLimits;
use crate::pipeline::Pipeline;
use crate::recent::RecentDeliveries;
use crate::replicas::Replicas;
use crate::sender::{BuildError, Built, ChannelSender};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SenderSection {
    sender: SenderConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] herald_runtime::config::ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot serve health endpoints: {0}")]
    Io(#[from] std::io::Error),
}

/// What every sender's `main` starts with: the base, `sender` and channel sections, and
/// the service built from them.
async fn load<S: ChannelSender>(
    name: &'static str,
    default_http_addr: &str,
) -> Result<(Service, SenderConfig, S::Config), RunError> {
    let base: BaseConfig = herald_runtime::config::load(&[("http.addr", default_http_addr)])?;
    let SenderSection { sender } = herald_runtime::config::load(&[])?;
    let channel_config: S::Config = herald_runtime::config::load(&[])?;
    let service = Service::build(name, base).await?;
    Ok((service, sender, channel_config))
}

/// The whole `main` of a sender: `run_sender::<EmailSender>("sender-email", "127.0.0.1:9105")`.
pub async fn run_sender<S: ChannelSender>(
    name: &'static str,
    default_http_addr: &str,
) -> Result<(), RunError> {
    let (service, sender, channel_config) = load::<S>(name, default_http_addr).await?;
    let work = start::<S>(&service, sender, channel_config).await?;
    service.run(Router::new(), work).await?;
    Ok(())
}

/// The whole `main` of a chat channel's sender and bot:
/// `run_chat_sender::<TelegramSender>("sender-telegram", "127.0.0.1:9102")`.
pub async fn run_chat_sender<S: ChatChannel>(
    name: &'static str,
    default_http_addr: &str,
) -> Result<(), RunError> {
    let (service, sender, channel_config) = load::<S>(name, default_http_addr).await?;
    let (routes, work) = start_chat::<S>(&service, sender, channel_config).await?;
    service.run(routes, work).await?;
    Ok(())
}

/// The whole `main` of a sender whose recipients connect to it:
/// `run_serving_sender::<WebsocketSender>("sender-websocket", "127.0.0.1:9108")`.
pub async fn run_serving_sender<S: ServingChannel>(
    name: &'static str,
    default_http_addr: &str,
) -> Result<(), RunError> {
    let (service, sender, channel_config) = load::<S>(name, default_http_addr).await?;
    let (routes, work) = start_serving::<S>(&service, sender, channel_config).await?;
    service.run(routes, work).await?;
    Ok(())
}

/// [`start`] for a [`ServingChannel`]: the sending side, the channel's routes and its task.
pub async fn start_serving<S: ServingChannel>(
    service: &Service,
    config: SenderConfig,
    channel_config: S::Config,
) -> Result<(Router, BoxFuture<'static, ()>), BuildError> {
    let limits = limits::<S>(&config)?;
    let Some(sender) = build::<S>(service, channel_config).await? else {
        return Ok((Router::new(), wait_for_shutdown(service)));
    };
    let serving = Serving {
        health: service.health.clone(),
        shutdown: service.shutdown.clone(),
        broker: service.broker.clone(),
        topology: service.topology.clone(),
    };
    let routes = S::routes(sender.clone());
    let task = tokio::spawn(S::serve(sender.clone(), serving));
    let sending = start_sending(service, config, limits, sender);
    let work: BoxFuture<'static, ()> = Box::pin(async move {
        sending.await;
        let _ = task.await;
    });
    Ok((routes, work))
}

/// Builds the sender and returns its work: consuming the channel's queue until shutdown. A
/// sender that is not configured returns work that only waits for shutdown, and says why in
/// `/readyz`.
pub async fn start<S: ChannelSender>(
    service: &Service,
    config: SenderConfig,
    channel_config: S::Config,
) -> Result<BoxFuture<'static, ()>, BuildError> {
    let limits = limits::<S>(&config)?;
    match build::<S>(service, channel_config).await? {
        Some(sender) => Ok(start_sending(service, config, limits, sender)),
        None => Ok(wait_for_shutdown(service)),
    }
}

/// [`start`] for a chat channel: the sending side, the bot's listener and its routes, and the
/// consumer of the bot's answers.
pub async fn start_chat<S: ChatChannel>(
    service: &Service,
    config: SenderConfig,
    channel_config: S::Config,
) -> Result<(Router, BoxFuture<'static, ()>), BuildError> {
    let limits = limits::<S>(&config)?;
    let Some(bot) = build::<S>(service, channel_config).await? else {
        return Ok((Router::new(), wait_for_shutdown(service)));
    };
    let names = service.topology.names().clone();
    let shutdown = service.shutdown.clone();
    let inbox = Inbox::new(
        S::CHANNEL,
        Publisher::new(service.broker.clone(), "inbox"),
        &names,
    );
    let inbound = Inbound {
        inbox: inbox.clone(),
        health: service.health.clone(),
        shutdown: shutdown.clone(),
        broker: service.broker.clone(),
        topology: service.topology.clone(),
    };
    let routes = S::routes(bot.clone(), inbound.clone());
    let listener = tokio::spawn(S::listen(bot.clone(), inbound));
    let answers = Consumer::new(
        service.broker.clone(),
        service.topology.clone(),
        ConsumerSettings::from_config(names.answers_queue(S::CHANNEL), service.broker.config()),
        AnswerHandler {
            bot: bot.clone(),
            inbox,
            given: Default::default(),
        },
        service.health.clone(),
    );
    let sending = start_sending(service, config, limits, bot);
    let work: BoxFuture<'static, ()> = Box::pin(async move {
        tokio::join!(sending, answers.run(shutdown));
        let _ = listener.await;
    });
    Ok((routes, work))
}

/// The channel's rate limits with the operator's overrides; an override that cannot be read
/// stops the service.
fn limits<S: ChannelSender>(config: &SenderConfig) -> Result<RateLimits, BuildError> {
    config
        .limits(S::default_limits())
        .map_err(|reason| BuildError {
            channel: S::CHANNEL,
            reason,
        })
}

/// The sender, or `None` when it is not configured: then the service says why in its log and
/// `/readyz`, and leaves its queue alone.
async fn build<S: ChannelSender>(
    service: &Service,
    channel_config: S::Config,
) -> Result<Option<Arc<S>>, BuildError> {
    match S::build(channel_config).await? {
        Built::Ready(sender) => Ok(Some(Arc::new(sender))),
        Built::NotConfigured(what) => {
            tracing::warn!(channel = %S::CHANNEL, "not configured, so not consuming its queue: {what}");
            service.health.set(
                &format!("sender:{}", S::CHANNEL),
                false,
                format!("not configured: {what}"),
            );
            Ok(None)
        }
    }
}

fn wait_for_shutdown(service: &Service) -> BoxFuture<'static, ()> {
    let shutdown = service.shutdown.clone();
    Box::pin(async move { shutdown.cancelled().await })
}

/// Consuming the channel's send queue until shutdown.
fn start_sending<S: ChannelSender>(
    service: &Service,
    config: SenderConfig,
    limits: RateLimits,
    sender: Arc<S>,
) -> BoxFuture<'static, ()> {
    let shutdown = service.shutdown.clone();
    let names = service.topology.names().clone();
    let breaker = Arc::new(Breaker::new(
        S::CHANNEL,
        config.breaker_threshold,
        service.health.clone(),
    ));
    let limiter = Arc::new(Limiter::new(limits));
    let events = Events::new(Publisher::new(service.broker.clone(), "events"), &names);
    let events = Arc::new(if config.bundle_events {
        events.bundling()
    } else {
        events
    });
    let mut settings =
        ConsumerSettings::from_config(names.send_queue(S::CHANNEL), service.broker.config());
    // A sender gives up by age (`sender.max_age_secs`) and reports it as a failed delivery;
    // the runner's attempt cap would dead-letter the job first, with no event for anyone.
    settings.max_attempts = u32::MAX;
    // While the breaker holds the consumer, a consumer here tells the router's watchdog that
    // this sender is alive and only waits for its provider, so it leaves the jobs queued.
    settings.standby_queue = Some(names.standby_queue(S::CHANNEL));
    let pipeline = Pipeline {
        sender: sender.clone(),
        recent: Arc::new(RecentDeliveries::new(config.recent_capacity)),
        limiter: limiter.clone(),
        breaker: breaker.clone(),
        events: events.clone(),
        shutdown: shutdown.clone(),
        config: config.clone(),
        sends: Arc::new(tokio::sync::Semaphore::new(settings.concurrency)),
    };
    let consumer = Consumer::new(
        service.broker.clone(),
        service.topology.clone(),
        settings,
        pipeline,
        service.health.clone(),
    )
    .with_pause(breaker.gate());
    let probe =
        tokio::spawn(breaker.probe_while_open(sender, config.breaker_probe(), shutdown.clone()));
    let replicas = config.share_account.then(|| {
        Replicas::new(
            service.broker.clone(),
            [
                names.send_queue(S::CHANNEL),
                names.standby_queue(S::CHANNEL),
            ],
            limiter.clone(),
            config.replica_check(),
        )
    });
    let janitor = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => limiter.forget_idle_recipients(),
                }
            }
        }
    });
    Box::pin(async move {
        let counting = match replicas {
            Some(mut replicas) => {
                replicas.join().await;
                Some(tokio::spawn(replicas.keep_counting(shutdown.clone())))
            }
            None => None,
        };
        consumer.run(shutdown).await;
        let _ = probe.await;
        let _ = janitor.await;
        if let Some(counting) = counting {
            let _ = counting.await;
        }
        events.close().await;
    })
}
