//! Test support shared by Herald's crates.
//!
//! # Layout
//!
//! - [`broker`]: a unique name prefix per test, queue inspection, and closing only the
//!   current test's connections (the broker-side fault every reconnect test needs), so that
//!   tests running in parallel never disturb each other.
//!
//! - [`fake_sms`]: a Twilio-compatible SMS provider on loopback that records what it gets and
//!   injects faults on command (429 with retry-after, 5xx, slow answers, dropped connections,
//!   permanent errors for chosen numbers).
//! - [`http`]: a minimal GET for health endpoints.
//! - [`smtp`]: a real SMTP server (aiosmtpd) on a free port, with faults chosen by recipient.
//!
//! This crate does not depend on the runtime, so the runtime's own tests can use it.

// Only tests use this crate: a broken fixture should fail the test on the spot, with the line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod broker;
pub mod fake_sms;
pub mod http;
pub mod smtp;
