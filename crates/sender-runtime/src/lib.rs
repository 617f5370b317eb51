//! The runtime every channel sender runs on (R42).
//!
//! A channel implements [`ChannelSender`]: build from its config, and `send(job)` returning a
//! receipt or an error of exactly one kind (retry later, permanent, unhealthy). This crate does
//! everything else, the same way for every channel:
//!
//! # Layout
//!
//! - [`sender`]: the trait and its result types.
//! - [`chat`]: the bot side of chat channels: what people write to a bot ([`chat::Inbox`]),
//!   and the router's answers back to them ([`chat::ChatChannel`]).
//! - [`pipeline`]: one job's way through the runtime: duplicate check, expiry and maximum
//!   age, rate limits, the send, the delivery event, and the outcome for the consumer runner.
//! - [`limits`]: token buckets per provider account and per recipient (R7), and the
//!   provider's retry-after for the whole account.
//! - [`breaker`]: the circuit breaker that pauses consuming while the provider is down and
//!   probes until it is back.
//! - [`replicas`]: counting the sender's replicas, so each takes an equal share of the
//!   provider account's limit.
//! - [`recent`]: the recent-delivery cache that keeps a redelivered job from being sent twice.
//! - [`config`]: `HERALD_SENDER__*` settings shared by all senders.
//! - [`run`]: the sender binary's `main`: [`run::run_sender`].
//! - `testing` (feature `test-support`): a harness that runs a sender against the real broker
//!   under a fresh prefix, for each sender crate's integration tests.

pub mod bounded;
pub mod breaker;
pub mod chat;
pub mod config;
pub mod limits;
pub mod pipeline;
pub mod recent;
pub mod replicas;
pub mod run;
pub mod sender;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod text;

pub use chat::{ChatChannel, Inbound, Inbox, Incoming, Reply, Serving, ServingChannel};
pub use run::{run_chat_sender, run_sender, run_serving_sender};
pub use sender::{BuildError, Built, ChannelSender, Receipt, RetryLater, SendError};
