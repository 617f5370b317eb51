//! Delivery events: one per attempt outcome, on the events exchange (`delivery.<channel>.<status>`).
//!
//! Senders report their attempts here, and so does the router's send-queue watchdog when it
//! withdraws jobs nothing consumes; one implementation keeps the routing key and the message
//! id (which the router's tracking relies on) the same for both.
//!
//! With [`Events::bundling`] (the sender runtime's default), `delivered` events that are
//! ready at the same time go out as one [`DeliveryEventBundle`] (issue #16): one publish, one
//! confirm and one message for the router instead of one each. Every caller still waits for
//! the confirm of the message that carries its event before it acks its job.

use std::collections::BTreeMap;

use chrono::Utc;
use messaging_core::events::{AttemptResult, DeliveryEvent, DeliveryEventBundle};
use messaging_core::job::SendJob;
use messaging_core::topology::{Names, routing};
use messaging_core::{Channel, EnvelopeVersion};

use crate::amqp::publisher::{Message, PublishError, Publisher};
use crate::batching::{BatchSettings, Batcher};

pub struct Events {
    publisher: Publisher,
    exchange: String,
    bundles: Option<Batcher<DeliveryEvent, Result<(), PublishError>>>,
}

impl Events {
    pub fn new(publisher: Publisher, names: &Names) -> Self {
        Events {
            publisher,
            exchange: names.events_exchange(),
            bundles: None,
        }
    }

    /// Sends the `delivered` events that wait together as bundles, up to
    /// [`DeliveryEventBundle::MAX_EVENTS`] a message; a lone event is not held up for company.
    pub fn bundling(mut self) -> Self {
        let publisher = self.publisher.clone();
        let exchange = self.exchange.clone();
        let settings = BatchSettings {
            max: DeliveryEventBundle::MAX_EVENTS,
            linger: std::time::Duration::ZERO,
            parallel: 2,
            name: "delivered_events",
        };
        self.bundles = Some(Batcher::spawn(
            settings,
            move |events: Vec<DeliveryEvent>| {
                let publisher = publisher.clone();
                let exchange = exchange.clone();
                async move {
                    let n = events.len();
                    let result = publish_bundles(&publisher, &exchange, events).await;
                    vec![result; n]
                }
            },
        ));
        self
    }

    /// Publishes with a confirm; the job is acked only after this returns `Ok`.
    pub async fn emit(
        &self,
        job: &SendJob,
        attempt: u32,
        result: AttemptResult,
    ) -> Result<(), PublishError> {
        let status = result.status();
        let bundle = matches!(result, AttemptResult::Delivered { .. });
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
        if bundle
            && let Some(bundles) = &self.bundles
            && let Some(sent) = bundles.submit(event.clone()).await
        {
            return sent;
        }
        // Alone: not a success, no bundling, or the collector is gone (the sender stops).
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

/// One bundle per channel (a sender has one; the watchdog does not bundle), all published
/// together with confirms.
async fn publish_bundles(
    publisher: &Publisher,
    exchange: &str,
    events: Vec<DeliveryEvent>,
) -> Result<(), PublishError> {
    let mut by_channel: BTreeMap<Channel, Vec<DeliveryEvent>> = BTreeMap::new();
    for event in events {
        by_channel.entry(event.channel).or_default().push(event);
    }
    let bodies: Vec<(Channel, String, Vec<u8>)> = by_channel
        .into_iter()
        .map(|(channel, events)| {
            // Named after its first event, so a resend after a reconnect is the same message.
            let id = format!("bundle/{}/{}", events[0].delivery_id, events.len());
            let bundle = DeliveryEventBundle {
                version: EnvelopeVersion,
                events,
            };
            (channel, id, serde_json::to_vec(&bundle).unwrap_or_default())
        })
        .collect();
    let messages: Vec<Message> = bodies
        .iter()
        .map(|(channel, id, body)| {
            Message::new(exchange, routing::delivery_event_bundle(*channel), body)
                .message_id(id.clone())
                .kind("herald.delivery_event_bundle.v1")
        })
        .collect();
    publisher.publish_batch(&messages).await
}
