//! Delivery events: one per attempt outcome, on the events exchange (`delivery.<channel>.<status>`).
//!
//! Senders report their attempts here, and so does the router's send-queue watchdog when it
//! withdraws jobs nothing consumes; one implementation keeps the routing key and the message
//! id (which the router's tracking relies on) the same for both.

use chrono::Utc;
use messaging_core::EnvelopeVersion;
use messaging_core::events::{AttemptResult, DeliveryEvent};
use messaging_core::job::SendJob;
use messaging_core::topology::{Names, routing};

use crate::amqp::publisher::{Message, PublishError, Publisher};

pub struct Events {
    publisher: Publisher,
    exchange: String,
}

impl Events {
    pub fn new(publisher: Publisher, names: &Names) -> Self {
        Events {
            publisher,
            exchange: names.events_exchange(),
        }
    }

    /// Publishes with a confirm; the job is acked only after this returns `Ok`.
    pub async fn emit(
        &self,
        job: &SendJob,
        attempt: u32,
        result: AttemptResult,
    ) -> Result<(), PublishError> {
        let status = result.status();
        let event = DeliveryEvent {
            version: EnvelopeVersion,
            delivery_id: job.delivery_id,
            message_id: job.message_id,
            tenant: job.tenant.clone(),
            channel: job.channel(),
            attempt,
            occurred_at: Utc::now(),
            result,
        };
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let message = Message::new(
            &self.exchange,
            routing::delivery_event(job.channel(), status),
            &body,
        )
        // One id per attempt and result: a repeat of the same event is recognisable, and a
        // different result for the same attempt number (a requeued job) is not taken for one.
        .message_id(format!("{}/{attempt}/{status}", job.delivery_id))
        .kind("herald.delivery_event.v1");
        self.publisher.publish(&message).await
    }

    pub async fn close(&self) {
        self.publisher.close().await;
    }
}
