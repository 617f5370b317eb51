//! Herald's subscription API: the one door people and services use over HTTP (R17).
//!
//! # Layout
//!
//! - [`cli`]: `serve` (the default) and `bootstrap` (first tenant and global admin key).
//! - [`config`]: `database.*`, `auth.*`, `api.*` settings.
//! - [`startup`]: builds the router and runs the service on the shared runtime.
//! - [`accepts`]: group commit of accepted messages: many requests, one transaction.
//! - [`auth`]: who is calling: API keys (hashed) or JWT bearer tokens, their role and tenant.
//! - [`error`]: every error as `application/problem+json`, naming the field when there is one.
//! - [`json`]: the JSON body extractor whose rejections are problem documents too.
//! - [`routes`]: one router per resource, merged in `routes::router`.
//! - [`limits`]: R18's request rate limits, answered with 429 and Retry-After.
//! - [`openapi`]: the OpenAPI document, generated from the handlers as they are registered.
//! - [`schema`]: the document's schemas for values the handlers parse themselves (patterns,
//!   lengths, word lists), so the document states every rule the API enforces.
//! - [`metrics`]: requests by route and status, and their latency, for `/metrics`.
//! - [`verification`]: which addresses may be added, and the codes that prove them.

pub mod accepts;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod json;
pub mod jwt;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod schema;
pub mod startup;
pub mod verification;

pub use startup::AppState;
