//! Test support shared by Herald's crates.
//!
//! # Layout
//!
//! - [`broker`]: a unique name prefix per test, queue inspection, and closing only the
//!   current test's connections (the broker-side fault every reconnect test needs), so that
//!   tests running in parallel never disturb each other.
//!
//! - [`discord_interactions`]: plays Discord posting slash-command interactions (PING,
//!   `/link`, `/support`, from a DM or a guild) to a bot's endpoint, signed with an ed25519
//!   key, or with a bad or missing signature.
//! - [`fake_discord`]: Discord's REST API (`/api/v10`) on loopback for serenity's `Http`:
//!   DM channels, messages, bulk command overwrites; faults (429 with `retry_after`, 50007,
//!   10013, 10003, 5xx, slow answers, dropped connections) and timestamped records.
//! - [`fake_sms`]: a Twilio-compatible SMS provider on loopback that records what it gets and
//!   injects faults on command (429 with retry-after, 5xx, slow answers, dropped connections,
//!   permanent errors for chosen numbers).
//! - [`fake_telegram`]: the Telegram Bot API on loopback for teloxide: getMe, sendMessage,
//!   getUpdates with offsets and long polls, webhooks; injected user messages; faults
//!   (429 with retry_after, each 403 and 400 Telegram sends, 5xx, slow answers, dropped
//!   connections) and timestamped records.
//! - [`fake_teams`]: the Bot Framework on loopback for the Teams sender: the token endpoint,
//!   the Bot Connector's activities endpoint with its error answers and limits, the OpenID
//!   metadata and keys, and a client posting signed (or wrongly signed) activities to a bot.
//! - [`http`]: a minimal HTTP/1.1 GET and JSON POST, for health endpoints, webhooks and
//!   interactions.
//! - [`pg_node`]: a PostgreSQL cluster of a test's own on a free port, to stop, crash and
//!   start again (never the machine's shared one).
//! - [`prosody`]: the XMPP tests' real Prosody (started by `scripts/prosody.sh` on
//!   127.0.0.1:15222, MUC on `conference.localhost`): the bot account and a fresh account
//!   per test.
//! - [`provider_limits`]: providers' rate limits as sliding windows, which the fakes enforce
//!   when a test or benchmark asks them to.
//! - [`smtp`]: a real SMTP server (aiosmtpd) on a free port, with faults chosen by recipient,
//!   optionally with STARTTLS or implicit TLS and a required login; a throwaway CA and
//!   server certificate for it.
//!
//! This crate does not depend on the runtime, so the runtime's own tests can use it.

// Only tests use this crate: a broken fixture should fail the test on the spot, with the line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod broker;
pub mod discord_interactions;
pub mod fake_discord;
pub mod fake_sms;
pub mod fake_teams;
pub mod fake_telegram;
pub mod http;
mod net;
pub mod pg_node;
pub mod prosody;
pub mod provider_limits;
pub mod rabbit_node;
pub mod smtp;
