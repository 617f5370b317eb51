//! Herald's fault suite (issue #18, `just chaos`).
//!
//! It runs the services as the deploy files do, as processes of their release binaries,
//! against a RabbitMQ node and a PostgreSQL cluster it starts itself on free ports (the
//! machine's shared ones are never touched), offers load through both ingresses, injects one
//! fault per scenario, and counts at the fake SMS provider, Jepsen-style: accepted, delivered,
//! lost, duplicated, unexpected.
//!
//! # Layout
//!
//! - [`stack`]: the broker (one node or a 3-node cluster), the database, the fake provider
//!   and the services, configured through their environment.
//! - [`process`]: one service process: start, readiness, SIGKILL, SIGTERM.
//! - [`proxy`]: a TCP proxy that adds latency and cuts connections.
//! - [`load`]: the producers (AMQP with confirms, `POST /messages`) and their ledger.
//! - [`tally`]: counting arrivals against the ledger, waiting for the system to settle, and
//!   the arrival rate over time.
//! - [`scenarios`]: the numbered scenarios of the issue.
//! - [`report`]: the printed results and the table in docs/reliability.md.

pub mod load;
pub mod process;
pub mod proxy;
pub mod report;
pub mod scenarios;
pub mod stack;
pub mod tally;
