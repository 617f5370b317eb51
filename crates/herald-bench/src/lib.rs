//! Shared pieces of Herald's benchmarks.
//!
//! # Layout
//!
//! - `src/bin/bench-broker.rs`: publish with confirms -> consume -> ack, through the runtime
//!   and through a plain lapin loop with the same settings, in the same run.
//! - `src/bin/bench-e2e.rs` (with `src/e2e/`): producer -> router -> no-op sender -> tracking
//!   -> outcome, the ratio to the baseline per broker hop, and a 100,000-registration fan-out.
//! - [`baseline`]: the plain lapin loop both binaries measure in the same run.
//! - [`payload`]: a realistic send-job body, so message sizes match production.
//! - [`stats`]: medians and rates.

// A benchmark's fixed inputs are valid by construction; failing on them is a broken benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod baseline;

pub mod payload {
    use chrono::Utc;
    use messaging_core::job::{RenderedContent, SendJob};
    use messaging_core::values::{Email, TenantKey, UserId};
    use messaging_core::{Address, EnvelopeVersion};

    /// A send job like the router publishes (about 400 bytes of JSON).
    pub fn send_job(n: u64) -> Vec<u8> {
        let job = SendJob {
            version: EnvelopeVersion,
            delivery_id: uuid::Uuid::now_v7(),
            message_id: uuid::Uuid::now_v7(),
            tenant: TenantKey::parse("acme").expect("valid"),
            to: Address::Email(Email::parse(&format!("user{n}@example.org")).expect("valid")),
            user_id: Some(UserId::parse(&format!("u-{n}")).expect("valid")),
            content: RenderedContent {
                subject: Some("Your order has shipped".into()),
                text: "Hello! Your order 12345 left our warehouse today and should arrive within two days.".into(),
                html: None,
            },
            created_at: Utc::now(),
            expires_at: None,
        };
        serde_json::to_vec(&job).expect("serializable")
    }
}

pub mod stats {
    use std::time::Duration;

    /// Nearest-rank percentile of sorted values.
    pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub fn rate(messages: u64, elapsed: Duration) -> f64 {
        messages as f64 / elapsed.as_secs_f64()
    }

    pub fn median(mut values: Vec<f64>) -> f64 {
        values.sort_by(|a, b| a.total_cmp(b));
        let mid = values.len() / 2;
        if values.is_empty() {
            0.0
        } else if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        }
    }
}
