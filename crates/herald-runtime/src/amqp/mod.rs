//! RabbitMQ: topology, connections, publishing and consuming.
//!
//! Connections are supervised here rather than by lapin's auto-recovery, so that the runtime
//! decides what happens to in-flight work when a connection drops: handlers finish, their
//! acks fail harmlessly, and the broker redelivers (at least once; idempotency keys and
//! delivery ids drop the repeats).

pub mod acks;
pub mod backoff;
pub mod connection;
pub mod consumer;
pub mod delivery_events;
pub mod headers;
pub mod publisher;
pub mod topology;
pub mod trace;

pub use connection::Broker;
pub use consumer::{
    Consumer, ConsumerSettings, Context, Handler, Origin, Outcome, Part, Rejection, decode_json,
    panic_message,
};
pub use publisher::{Message, PublishError, Publisher};
pub use topology::Topology;
