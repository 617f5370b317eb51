//! The per-recipient send job a sender consumes.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::address::Address;
use crate::channel::Channel;
use crate::values::{TenantKey, UserId};
use crate::version::EnvelopeVersion;

/// One message to one address. The router writes a delivery row and then publishes exactly
/// one job per (message, address); `delivery_id` is the idempotency key senders use so a
/// redelivered job is not sent twice (R44).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendJob {
    pub version: EnvelopeVersion,
    pub delivery_id: Uuid,
    pub message_id: Uuid,
    pub tenant: TenantKey,
    pub to: Address,
    /// The person this address belongs to, when it is a person's (not a legacy default
    /// destination or a room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    pub content: RenderedContent,
    pub created_at: DateTime<Utc>,
    /// Past this time the sender gives up with a temporary failure instead of sending late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl SendJob {
    pub fn channel(&self) -> Channel {
        self.to.channel()
    }
}

/// Several send jobs for one channel in one broker message (issue #16): the router bundles
/// the jobs of one publish that go to the same send queue, so a fan-out or a group of
/// requests costs the broker one message per bundle instead of one per job. A sender handles
/// each job as if it had come alone; a job it must retry, defer or refuse goes back to the
/// queue alone, and the bundle is acked once every job is done or so sent back. A lone job is
/// never bundled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendJobBundle {
    pub version: EnvelopeVersion,
    pub jobs: Vec<SendJob>,
}

impl SendJobBundle {
    /// The most jobs one bundle carries: a bundle is acked when its last job is done, so a
    /// larger one would hold its first jobs' acks longer and send more again after a crash.
    pub const MAX_JOBS: usize = 100;

    /// The AMQP `type` of a bundle (`herald.send_job.v1` is a lone job's).
    pub const KIND: &'static str = "herald.send_job_bundle.v1";

    /// A bundle's body from jobs already encoded: `{"version":1,"jobs":[...]}`.
    pub fn encode<'a>(jobs: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut body = br#"{"version":1,"jobs":["#.to_vec();
        for (i, job) in jobs.into_iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(job);
        }
        body.extend_from_slice(b"]}");
        body
    }

    /// The bytes a job adds to a bundle besides its own (the comma).
    pub const ITEM_OVERHEAD: usize = 1;

    /// The bytes of a bundle around its jobs.
    pub const FRAME_BYTES: usize = r#"{"version":1,"jobs":[]}"#.len();

    /// A bundle read item by item: each job, or the item that does not decode (its JSON, as
    /// read) with the reason; `None` when the body is not a bundle at all. One bad item
    /// leaves the others readable.
    pub fn items_of(body: &[u8]) -> Option<Vec<Result<SendJob, BadItem>>> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Loose {
            #[allow(dead_code)]
            version: EnvelopeVersion,
            jobs: Vec<serde_json::Value>,
        }
        let loose: Loose = serde_json::from_slice(body).ok()?;
        Some(
            loose
                .jobs
                .into_iter()
                .map(|item| {
                    serde_json::from_value::<SendJob>(item.clone()).map_err(|error| BadItem {
                        reason: error.to_string(),
                        item,
                    })
                })
                .collect(),
        )
    }

    /// The jobs of one message read from a send queue: a bundle's, or a lone job. For
    /// readers that take the queue's messages as they come (tests, the router's watchdog); a
    /// sender decodes a bundle's items one by one, so one bad item does not refuse the rest.
    pub fn jobs_of(body: &[u8]) -> Result<Vec<SendJob>, serde_json::Error> {
        match serde_json::from_slice::<SendJob>(body) {
            Ok(job) => Ok(vec![job]),
            Err(lone) => match serde_json::from_slice::<SendJobBundle>(body) {
                Ok(bundle) => Ok(bundle.jobs),
                // Not a bundle either: the lone job's error says more.
                Err(_) => Err(lone),
            },
        }
    }
}

/// An item of a bundle that is not a send job.
#[derive(Debug, Clone, PartialEq)]
pub struct BadItem {
    /// The item as read (its keys may come out in another order when written again).
    pub item: serde_json::Value,
    pub reason: String,
}

/// Text ready for one channel, rendered from direct content or the subscription's templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenderedContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(n: u128) -> serde_json::Value {
        json!({
            "version": 1, "deliveryId": Uuid::from_u128(n), "messageId": Uuid::from_u128(7),
            "tenant": "acme", "to": {"kind": "sms", "value": "+41790000000"},
            "content": {"text": "hi"}, "createdAt": "2026-01-01T00:00:00Z"
        })
    }

    #[test]
    fn a_bundle_is_its_jobs_encoded_side_by_side_and_reads_back_as_them() {
        let bodies: Vec<Vec<u8>> = (1..=3).map(|n| job(n).to_string().into_bytes()).collect();
        let body = SendJobBundle::encode(bodies.iter().map(Vec::as_slice));
        let bundle: SendJobBundle = serde_json::from_slice(&body).unwrap();
        assert_eq!(bundle.jobs.len(), 3);
        assert_eq!(bundle.jobs[2].delivery_id, Uuid::from_u128(3));
        let framing = body.len() - bodies.iter().map(Vec::len).sum::<usize>();
        assert_eq!(
            framing,
            SendJobBundle::FRAME_BYTES + 2 * SendJobBundle::ITEM_OVERHEAD
        );

        assert_eq!(SendJobBundle::jobs_of(&body).unwrap(), bundle.jobs);
        let lone = SendJobBundle::jobs_of(&bodies[0]).unwrap();
        assert_eq!(lone, vec![bundle.jobs[0].clone()]);
        let err = SendJobBundle::jobs_of(br#"{"version":1,"deliveryId":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("UUID"), "{err}");
        assert!(SendJobBundle::jobs_of(b"not json").is_err());
    }

    #[test]
    fn a_bundle_with_a_bad_item_reads_item_by_item() {
        let mut bad = job(2);
        bad["to"]["value"] = "12345".into();
        let body = json!({"version": 1, "jobs": [job(1), bad, job(3)]}).to_string();
        assert!(SendJobBundle::jobs_of(body.as_bytes()).is_err());
        let items = SendJobBundle::items_of(body.as_bytes()).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().delivery_id, Uuid::from_u128(1));
        let refused = items[1].as_ref().unwrap_err();
        assert_eq!(refused.item, bad);
        assert!(refused.reason.contains("phone"), "{}", refused.reason);
        assert_eq!(items[2].as_ref().unwrap().delivery_id, Uuid::from_u128(3));
        assert!(SendJobBundle::items_of(job(1).to_string().as_bytes()).is_none());
        assert!(SendJobBundle::items_of(b"{\"version\": 2, \"jobs\": []}").is_none());
    }
}
