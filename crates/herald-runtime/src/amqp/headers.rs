//! Header names Herald sets on AMQP messages, and helpers to read them.
//!
//! None starts with `x-`: RabbitMQ reserves those, and its headers exchange ignores them when
//! matching, which would break the delay-queue routing.

use lapin::types::{AMQPValue, FieldTable, ShortString};

/// How many times the message has been handled before, plus one (1 on first delivery).
pub const ATTEMPT: &str = "herald-attempt";
/// Unix milliseconds of the first attempt; senders compute a delivery's age from it.
pub const FIRST_ATTEMPT_AT: &str = "herald-first-attempt-at";
/// Unix milliseconds before which the message must not be handled. Lets a retry wait longer
/// than the largest delay level by chaining through it.
pub const NOT_BEFORE: &str = "herald-not-before";
/// How many times the message waited without being handled (a deferral, or the rest of a
/// wait longer than a delay level). Bounded by `amqp.max_deferrals`.
pub const DEFERRALS: &str = "herald-deferrals";
/// Picks the delay queue: its value is the level in milliseconds.
pub const DELAY: &str = "herald-delay";
/// Why the previous attempt asked for a retry.
pub const LAST_ERROR: &str = "herald-last-error";
/// Why the message was dead-lettered, for people.
pub const REASON: &str = "herald-reason";
/// Why the message was dead-lettered, one stable word for tools (`malformed`, `oversized`...).
pub const REASON_CODE: &str = "herald-reason-code";
/// The queue the message died in.
pub const SOURCE_QUEUE: &str = "herald-source-queue";
/// Unix milliseconds when it was dead-lettered.
pub const DEAD_AT: &str = "herald-dead-at";
/// Who first published a message that a Herald service republished (a retry, a dead
/// letter): `anonymous`, `service` or `producer`, with the broker user in [`PRODUCER`]. Read
/// only from a message whose `user_id` is one of Herald's service users; a producer's own
/// copy of these headers counts for nothing.
pub const ORIGIN: &str = "herald-origin";
/// The broker user of a `producer` [`ORIGIN`].
pub const PRODUCER: &str = "herald-producer";
/// W3C trace context, so one notification's spans share a trace id across services.
pub const TRACEPARENT: &str = "traceparent";

pub fn get_str(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub fn get_u64(headers: Option<&FieldTable>, key: &str) -> Option<u64> {
    match headers?.inner().get(key)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

pub fn set_str(headers: &mut FieldTable, key: &str, value: impl Into<String>) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongString(value.into().into()),
    );
}

pub fn set_u64(headers: &mut FieldTable, key: &str, value: u64) {
    headers.insert(
        ShortString::from(key),
        AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX)),
    );
}

pub fn now_millis() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_strings_parse_as_numbers() {
        let mut headers = FieldTable::default();
        set_u64(&mut headers, ATTEMPT, 3);
        set_str(&mut headers, REASON, "bad");
        set_str(&mut headers, DELAY, "1000");
        assert_eq!(get_u64(Some(&headers), ATTEMPT), Some(3));
        assert_eq!(get_str(Some(&headers), REASON).as_deref(), Some("bad"));
        assert_eq!(get_u64(Some(&headers), DELAY), Some(1000));
        assert_eq!(get_u64(None, ATTEMPT), None);
    }
}
