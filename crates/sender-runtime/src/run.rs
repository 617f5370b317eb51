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
use crate::config::SenderConfig;
use crate::limits::Limiter;
use crate::pipeline::Pipeline;
use crate::recent::RecentDeliveries;
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

/// The whole `main` of a sender: `run_sender::<EmailSender>("sender-email", "127.0.0.1:9105")`.
pub async fn run_sender<S: ChannelSender>(
    name: &'static str,
    default_http_addr: &str,
) -> Result<(), RunError> {
    let base: BaseConfig = herald_runtime::config::load(&[("http.addr", default_http_addr)])?;
    let SenderSection { sender } = herald_runtime::config::load(&[])?;
    let channel_config: S::Config = herald_runtime::config::load(&[])?;
    let service = Service::build(name, base).await?;
    let work = start::<S>(&service, sender, channel_config).await?;
    service.run(Router::new(), work).await?;
    Ok(())
}

/// Builds the sender and returns its work: consuming the channel's queue until shutdown. A
/// sender that is not configured returns work that only waits for shutdown, and says why in
/// `/readyz`.
pub async fn start<S: ChannelSender>(
    service: &Service,
    config: SenderConfig,
    channel_config: S::Config,
) -> Result<BoxFuture<'static, ()>, BuildError> {
    let shutdown = service.shutdown.clone();
    let component = format!("sender:{}", S::CHANNEL);
    let sender = match S::build(channel_config).await? {
        Built::Ready(sender) => Arc::new(sender),
        Built::NotConfigured(what) => {
            tracing::warn!(channel = %S::CHANNEL, "not configured, so not consuming its queue: {what}");
            service
                .health
                .set(&component, false, format!("not configured: {what}"));
            return Ok(Box::pin(async move { shutdown.cancelled().await }));
        }
    };
    let names = service.topology.names().clone();
    let breaker = Arc::new(Breaker::new(
        S::CHANNEL,
        config.breaker_threshold,
        service.health.clone(),
    ));
    let limiter = Arc::new(Limiter::new(config.limits(S::default_limits())));
    let events = Arc::new(Events::new(
        Publisher::new(service.broker.clone(), "events"),
        &names,
    ));
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
    Ok(Box::pin(async move {
        consumer.run(shutdown).await;
        let _ = probe.await;
        let _ = janitor.await;
        events.close().await;
    }))
}
