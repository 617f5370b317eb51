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

/// The most bytes of events one bundle carries: far below what a consumer accepts
/// (`MAX_MESSAGE_BYTES`, 256 KiB), so a bundle of events with long provider ids is never
/// refused whole as oversized.
const MAX_BUNDLE_BYTES: usize = 64 * 1024;

/// The events in bundles: by channel (a sender has one; the watchdog does not bundle), each
/// at most [`MAX_BUNDLE_BYTES`] of events, in the order they came.
fn bundles(events: Vec<DeliveryEvent>) -> Vec<(Channel, Vec<DeliveryEvent>)> {
    let mut by_channel: BTreeMap<Channel, Vec<Vec<DeliveryEvent>>> = BTreeMap::new();
    let mut bytes: BTreeMap<Channel, usize> = BTreeMap::new();
    for event in events {
        let size = serde_json::to_vec(&event).map_or(0, |b| b.len()) + 1;
        let bundles = by_channel.entry(event.channel).or_default();
        let used = bytes.entry(event.channel).or_default();
        if bundles.is_empty() || *used + size > MAX_BUNDLE_BYTES {
            bundles.push(Vec::new());
            *used = 0;
        }
        *used += size;
        if let Some(bundle) = bundles.last_mut() {
            bundle.push(event);
        }
    }
    by_channel
        .into_iter()
        .flat_map(|(channel, bundles)| bundles.into_iter().map(move |events| (channel, events)))
        .collect()
}

/// The [`bundles`], all published together with confirms.
async fn publish_bundles(
    publisher: &Publisher,
    exchange: &str,
    events: Vec<DeliveryEvent>,
) -> Result<(), PublishError> {
    let bodies: Vec<(Channel, String, Vec<u8>)> = bundles(events)
        .into_iter()
        .map(|(channel, events)| {
            // Its own id, fixed here, so a resend after a reconnect is the same message.
            let id = format!("bundle/{}", uuid::Uuid::now_v7());
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

#[cfg(test)]
mod tests {
    use super::*;
    use messaging_core::values::TenantKey;

    fn delivered(channel: Channel, provider_id_bytes: usize) -> DeliveryEvent {
        DeliveryEvent {
            version: EnvelopeVersion,
            delivery_id: uuid::Uuid::now_v7(),
            message_id: uuid::Uuid::now_v7(),
            tenant: TenantKey::parse("acme").expect("a key"),
            channel,
            attempt: 1,
            occurred_at: Utc::now(),
            result: AttemptResult::Delivered {
                provider_message_id: Some("x".repeat(provider_id_bytes)),
            },
        }
    }

    #[test]
    fn bundles_hold_one_channel_and_a_bounded_size_each() {
        let events = vec![
            delivered(Channel::Sms, 30_000),
            delivered(Channel::Email, 10),
            delivered(Channel::Sms, 30_000),
            delivered(Channel::Sms, 30_000),
            delivered(Channel::Sms, 10),
        ];
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.delivery_id).collect();
        let bundles = bundles(events);
        let shape: Vec<(Channel, usize)> = bundles.iter().map(|(c, e)| (*c, e.len())).collect();
        // Two 30 kB events fill a bundle; the third starts the next, the small one joins it.
        assert_eq!(
            shape,
            [(Channel::Email, 1), (Channel::Sms, 2), (Channel::Sms, 2)]
        );
        for (_, events) in &bundles {
            let body = serde_json::to_vec(&DeliveryEventBundle {
                version: EnvelopeVersion,
                events: events.clone(),
            })
            .expect("JSON");
            assert!(body.len() < MAX_BUNDLE_BYTES + 1024, "{} bytes", body.len());
        }
        // Every event once, in its order within its channel.
        let sms: Vec<uuid::Uuid> = bundles
            .iter()
            .filter(|(c, _)| *c == Channel::Sms)
            .flat_map(|(_, e)| e.iter().map(|e| e.delivery_id))
            .collect();
        assert_eq!(sms, [ids[0], ids[2], ids[3], ids[4]]);
    }
}
