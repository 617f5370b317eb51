//! Herald's shared service runtime. Every service binary is a thin `main.rs` over this crate.
//!
//! # Layout
//!
//! - [`config`]: typed configuration from defaults, an optional TOML file and `HERALD_*`
//!   environment variables; [`config::Secret`] keeps credentials out of logs.
//! - [`telemetry`]: tracing (pretty or JSON) and the Prometheus recorder.
//! - [`health`]: readiness registry and the `/healthz`, `/readyz`, `/metrics` HTTP server.
//! - [`shutdown`]: SIGINT/SIGTERM into a `CancellationToken`.
//! - [`amqp`]: everything RabbitMQ: the topology, connections with backoff, a publisher with
//!   pipelined confirms, and the consumer runner (prefetch, bounded concurrency, ack after
//!   work, retry through delay queues, dead letters with reasons, reconnects, drain on stop),
//!   and delivery events, which senders and the router's send-queue watchdog both publish.
//! - [`service`]: the start-up sequence every service shares.

pub mod amqp;
pub mod batching;
pub mod config;
pub mod health;
pub mod service;
pub mod shutdown;
pub mod telemetry;

/// Installs rustls' ring provider as the process default. Herald's TLS clients all use rustls
/// (lapin, sqlx, and reqwest in `sender-sms`, lettre in `sender-email`), and reqwest is built
/// with `rustls-no-provider`, so it panics unless a provider is installed first; every binary
/// calls this (itself, or through `service::Service::build`) before anything else. Repeated
/// calls are harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
