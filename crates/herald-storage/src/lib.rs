//! Herald's PostgreSQL storage, shared by the subscription API and the router.
//!
//! # Layout
//!
//! - [`db`]: pool, embedded migrations (`migrations/` at the workspace root), readiness check.
//! - [`error`]: [`StoreError`], with constraint violations told apart from outages.
//! - [`secret`]: random tokens (API keys, link codes) and their stored hashes.
//! - [`page`]: keyset pagination (`limit` + opaque cursor).
//! - [`relay`]: the outbox relay, publishing accepted messages to the broker with confirms.
//! - [`lease`]: a fan-out pass's exclusive hold on its message.
//! - [`retention`]: finished messages and their deliveries deleted after a while.
//! - one module per table group: [`tenants`], [`api_keys`], [`users`] and their [`addresses`],
//!   [`subscriptions`] with their [`templates`], [`schedules`] and [`event_bindings`],
//!   [`registrations`], [`link_codes`], [`messages`] (with the [`outbox`] they go through),
//!   [`deliveries`] and their [`tracking`] (attempts, address states, outcomes),
//!   [`support`] tickets with their replies, the help-desk [`rooms`] with their history, and
//!   the API's shared [`rate_windows`], and the senders' [`channel_health`] as the router
//!   sees it.
//!
//! Every query uses bound parameters; every tenant-owned query filters on `tenant_id`, so a
//! caller cannot reach another tenant's rows even with a valid id.

pub mod addresses;
pub mod api_keys;
pub mod channel_health;
pub mod db;
pub mod deliveries;
pub mod error;
pub mod event_bindings;
pub mod lease;
pub mod link_codes;
pub mod messages;
pub mod outbox;
pub mod page;
pub mod producers;
pub mod rate_windows;
pub mod registrations;
pub mod relay;
pub mod retention;
pub mod rooms;
pub mod schedules;
pub mod secret;
pub mod subscriptions;
pub mod support;
pub mod templates;
pub mod tenants;
pub mod tracking;
pub mod users;
pub mod verification;

pub use error::StoreError;
pub use sqlx::PgPool;
