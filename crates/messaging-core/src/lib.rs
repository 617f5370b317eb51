//! Herald's shared models. Pure types: nothing in this crate does I/O.
//!
//! # Layout
//!
//! - [`channel`]: the delivery channels and their legacy codes (R41).
//! - [`failure`]: why a delivery failed, in the three classes producers can tell apart (R4).
//! - [`values`]: validated newtypes for everything that arrives from outside
//!   (subscription keys, emails, E.164 numbers, JIDs, chat ids, locales, ...).
//! - [`address`]: a typed destination on one channel.
//! - [`states`]: the closed sets of words Herald stores (address kinds and states, message and
//!   delivery statuses, sources, roles, ticket and help-desk room states), mapped to SQL with
//!   the `sqlx` feature.
//! - [`text_enum`]: the macros that define those enums and their SQL mapping.
//! - [`version`]: the envelope version every queue payload carries.
//! - [`ingress`]: what producers publish (versioned requests and events, and the legacy format),
//!   with a decoder that says clearly what is wrong with a bad message.
//! - [`job`]: the per-recipient send job a sender consumes.
//! - [`events`]: what senders and the router emit: delivery events, contact links, outcomes,
//!   help-desk room events and the roster the router answers a restarted bot with.
//! - [`schedule`]: cron expressions in a time zone, and their next run (R14).
//! - [`topology`]: the names of every exchange and queue, derived from one prefix.
//! - [`schema`]: the JSON Schemas of the wire types, for `docs/schemas/`.

pub mod address;
pub mod channel;
pub mod events;
pub mod failure;
pub mod ingress;
pub mod job;
pub mod schedule;
pub mod schema;
pub mod states;
pub mod text_enum;
pub mod topology;
pub mod values;
pub mod version;

pub use address::Address;
pub use channel::Channel;
pub use failure::FailureClass;
pub use states::{
    AddressKind, AddressState, DeliveryStatus, MessageSource, MessageStatus, Role, RoomChangeKind,
    RoomState, TicketState,
};
pub use version::EnvelopeVersion;

/// Largest message body any Herald queue accepts. Producers get a dead-letter with reason
/// `oversized` beyond it; it keeps one bad producer from filling the broker's memory.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
