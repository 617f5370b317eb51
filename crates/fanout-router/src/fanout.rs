//! Fan-out: one accepted message becomes one delivery row and one send job per address.
//!
//! Per batch (at most `router.batch_size` recipients' addresses):
//! 1. the delivery rows are inserted with `ON CONFLICT DO NOTHING` (unique per message and
//!    address), failed ones included (no address, template error, invalid address);
//! 2. the pending rows of the batch whose job is not published yet are read back, with their
//!    stored ids;
//! 3. their jobs are published to `{p}.send` (routing key: the channel) with confirms;
//! 4. those rows are marked published.
//!
//! The ingress message is acked only after the last batch, so a crash anywhere redelivers it,
//! and the next pass publishes only what is still unmarked (R44). One pass at a time holds a
//! message (the ingress handler takes its [`store::FanoutLease`] first), so two copies of a
//! request in work at once do not both publish; a job that still goes out twice (a crash
//! between the confirm and the mark) carries the same delivery id, which senders drop.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use herald_runtime::amqp::{Message, PublishError, Publisher};
use herald_storage::fanout::{self as store, DeliveryKey, NewDelivery, UserRecipient};
use herald_storage::{PgPool, StoreError};
use messaging_core::failure::Failure;
use messaging_core::ingress::{DeliveryMode, NotifyRequest};
use messaging_core::job::{RenderedContent, SendJob};
use messaging_core::topology::Names;
use messaging_core::values::{Locale, TenantKey, UserId};
use messaging_core::{Address, AddressKind, Channel, EnvelopeVersion, MessageStatus};
use uuid::Uuid;

use crate::render::Templates;

/// The AMQP `type` of a send job.
const JOB_KIND: &str = "herald.send_job.v1";

/// Encoded jobs held before they are published, at most (plus one job).
const PUBLISH_CHUNK_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FanOutError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot publish send jobs: {0}")]
    Publish(#[from] PublishError),
}

/// What a message says, ready for every recipient.
pub enum Body {
    Direct(Arc<RenderedContent>),
    /// Boxed: one per message, and far larger than a pointer.
    Templates(Box<Templates>),
}

/// Who gets it.
pub enum Audience {
    /// The tenant's ids for people (R1), each on their active addresses (R2).
    Users(Vec<UserId>),
    /// A subscription's enabled registrations (R12).
    Subscription(Uuid),
}

/// One message to fan out.
pub struct Plan<'a> {
    pub tenant_id: Uuid,
    pub tenant: &'a TenantKey,
    pub message_id: Uuid,
    /// Recorded on every delivery row, for the delivery filters (R15).
    pub subscription_id: Option<Uuid>,
    pub request: &'a NotifyRequest,
    pub audience: Audience,
    pub body: Body,
}

/// What a fan-out did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Delivery rows written by this pass (not those an earlier pass wrote).
    pub new_rows: u64,
    /// Jobs the broker confirmed in this pass.
    pub published: usize,
    /// Deliveries failed at fan-out (no address, template error, invalid address).
    pub failed: usize,
    /// The message's status afterwards: `fanned_out` or `completed`.
    pub status: MessageStatus,
}

/// The fan-out engine; shared by every ingress handler task.
#[derive(Clone)]
pub struct FanOut {
    pool: PgPool,
    publisher: Publisher,
    names: Names,
    batch_size: usize,
}

/// One delivery as planned: the row, and for a pending one the job to publish.
struct Planned {
    row: NewDelivery,
    job: Option<PlannedJob>,
}

struct PlannedJob {
    to: Address,
    user_id: Option<UserId>,
    content: Arc<RenderedContent>,
}

impl FanOut {
    pub fn new(pool: PgPool, publisher: Publisher, names: Names, batch_size: usize) -> Self {
        FanOut {
            pool,
            publisher,
            names,
            batch_size: batch_size.max(1),
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub async fn run(&self, plan: Plan<'_>) -> Result<Summary, FanOutError> {
        let started = Utc::now();
        let mut summary = Summary {
            new_rows: 0,
            published: 0,
            failed: 0,
            // Until `finish_fanout` says what it is now.
            status: MessageStatus::Accepted,
        };
        let Plan {
            tenant_id,
            tenant,
            message_id,
            subscription_id,
            request,
            audience,
            mut body,
        } = plan;
        // Under the message's lease, so no other pass writes rows meanwhile.
        // Not known from the message row having been created by this request: a copy that
        // found it could have taken the lease first and died mid-pass.
        let first_pass = !store::has_deliveries(&self.pool, message_id).await?;
        let batch = Batch {
            first_pass,
            fanout: self,
            tenant_id,
            tenant,
            message_id,
            subscription_id,
            expires_at: request.expires_at,
            created_at: started,
        };
        let channels: Option<Vec<Channel>> = request.channels.clone();
        let locale = match &request.content {
            messaging_core::ingress::Content::Template(t) => t.locale.clone(),
            messaging_core::ingress::Content::Direct(_) => None,
        };
        // The jobs of the last batch written, published while the next one is written.
        let mut in_flight = Chunk::default();
        match audience {
            Audience::Users(users) => {
                let mut ids: Vec<String> = users.into_iter().map(UserId::into_inner).collect();
                ids.sort();
                ids.dedup();
                let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
                let people = store::users_for_fanout(&mut conn, tenant_id, &ids).await?;
                drop(conn);
                let mut planned = Vec::new();
                for person in &people {
                    plan_user(
                        person,
                        channels.as_deref(),
                        request.mode,
                        locale.as_ref(),
                        &mut body,
                        &mut planned,
                    );
                }
                let mut planned = planned.into_iter().peekable();
                while planned.peek().is_some() {
                    let chunk: Vec<Planned> = planned.by_ref().take(self.batch_size).collect();
                    in_flight = batch
                        .write_and_publish(chunk, &mut summary, in_flight)
                        .await?;
                }
            }
            Audience::Subscription(subscription) => {
                let page_after = |after: Uuid| {
                    store::registrations_page(
                        &self.pool,
                        tenant_id,
                        subscription,
                        after,
                        self.batch_size as i64,
                        channels.as_deref(),
                    )
                };
                let mut page = page_after(Uuid::nil()).await?;
                while let Some(last) = page.last() {
                    let after = last.id;
                    let full = page.len() == self.batch_size;
                    let planned = page
                        .iter()
                        .map(|r| {
                            plan_address(
                                Some(r.user_id),
                                &r.external_id,
                                r.address_id,
                                AddressKind::of_channel(r.channel),
                                &r.address,
                                |channel| match &mut body {
                                    Body::Direct(content) => Ok(content.clone()),
                                    Body::Templates(t) => {
                                        t.render(channel, locale.as_ref(), r.locale.as_deref())
                                    }
                                },
                            )
                        })
                        .collect();
                    // The next page is read while this one is written and the one before
                    // is published: the three round trips overlap.
                    let next = async {
                        if full {
                            page_after(after).await
                        } else {
                            Ok(Vec::new())
                        }
                    };
                    let (written, next) = tokio::join!(
                        batch.write_and_publish(planned, &mut summary, in_flight),
                        next
                    );
                    in_flight = written?;
                    page = next?;
                    if !full {
                        break;
                    }
                }
            }
        }
        summary.published += batch.publish(in_flight).await?;
        let (status, abandoned) =
            store::finish_fanout(&self.pool, message_id, started, !first_pass).await?;
        if abandoned > 0 {
            tracing::warn!(
                abandoned,
                "deliveries of an interrupted earlier pass lost their recipient; failed them"
            );
        }
        summary.status = status;
        Ok(summary)
    }
}

/// What every batch of one message shares.
struct Batch<'a> {
    fanout: &'a FanOut,
    tenant_id: Uuid,
    tenant: &'a TenantKey,
    message_id: Uuid,
    subscription_id: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    /// No earlier pass wrote rows: a batch's new pending rows are all it has to publish.
    first_pass: bool,
}

impl Batch<'_> {
    /// Writes a batch's rows and encodes its jobs; returns the last chunk of them still to be
    /// published. `previous`, the chunk the batch before returned, is published meanwhile:
    /// the broker confirms one batch while the database writes the next, instead of each
    /// waiting for the other.
    async fn write_and_publish(
        &self,
        planned: Vec<Planned>,
        summary: &mut Summary,
        previous: Chunk,
    ) -> Result<Chunk, FanOutError> {
        let fanout = self.fanout;
        let rows: Vec<NewDelivery> = planned.iter().map(|p| p.row.clone()).collect();
        for failure in rows.iter().filter_map(|r| r.failure.as_ref()) {
            metrics::counter!("herald_router_deliveries_failed_total", "code" => failure.code.clone())
                .increment(1);
        }
        summary.failed += rows.iter().filter(|r| r.failure.is_some()).count();
        let write = async {
            if rows.is_empty() {
                return Ok((0, Vec::new()));
            }
            store::insert_deliveries(
                &fanout.pool,
                self.tenant_id,
                self.message_id,
                self.subscription_id,
                &rows,
            )
            .await
            .map_err(FanOutError::from)
        };
        // Both run to the end even when one fails: a publish cut short after the broker took
        // the jobs would leave them unmarked, to go out again on the next pass.
        let (published, written) = tokio::join!(self.publish(previous), write);
        let (published, (new_rows, new_pending)) = (published?, written?);
        summary.published += published;
        summary.new_rows += new_rows;

        let mut jobs: HashMap<DeliveryKey, PlannedJob> = HashMap::new();
        for p in planned {
            if let (Some(job), Some(channel), Some(address)) = (p.job, p.row.channel, p.row.address)
            {
                let key = DeliveryKey {
                    user_id: p.row.user_id,
                    channel,
                    address,
                };
                jobs.insert(key, job);
            }
        }
        if jobs.is_empty() {
            return Ok(Chunk::default());
        }
        let unpublished = if self.first_pass {
            new_pending
        } else {
            let keys: Vec<_> = jobs.keys().cloned().collect();
            store::unpublished(&fanout.pool, self.message_id, &keys).await?
        };
        let mut oversized = Vec::new();
        // Encoded jobs wait here until they reach `PUBLISH_CHUNK_BYTES`: a batch of rows
        // bounds the rows, this bounds the bytes (a batch of 1,000 jobs near the 256 KiB queue
        // limit would otherwise be a quarter of a gigabyte).
        let mut chunk = Chunk::default();
        for row in unpublished {
            let delivery_id = row.id;
            let Some(job) = jobs.get(&row.key()) else {
                continue;
            };
            let send = SendJob {
                version: EnvelopeVersion,
                delivery_id,
                message_id: self.message_id,
                tenant: self.tenant.clone(),
                to: job.to.clone(),
                user_id: job.user_id.clone(),
                content: (*job.content).clone(),
                created_at: self.created_at,
                expires_at: self.expires_at,
            };
            match serde_json::to_vec(&send) {
                // Larger than a send queue accepts: the sender would dead-letter it without an
                // event, and the delivery would stay pending for ever.
                Ok(body) if body.len() > messaging_core::MAX_MESSAGE_BYTES => {
                    oversized.push(delivery_id);
                }
                Ok(body) => {
                    chunk.push(send.channel(), body, delivery_id);
                    if chunk.bytes >= PUBLISH_CHUNK_BYTES {
                        summary.published += self.publish(std::mem::take(&mut chunk)).await?;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, %delivery_id, "cannot encode a send job");
                    oversized.push(delivery_id);
                }
            }
        }
        if !oversized.is_empty() {
            store::fail_unsendable(
                &fanout.pool,
                &oversized,
                "oversized",
                &format!(
                    "the rendered message is larger than the {} bytes a send queue accepts",
                    messaging_core::MAX_MESSAGE_BYTES
                ),
            )
            .await?;
            summary.failed += oversized.len();
        }
        Ok(chunk)
    }

    /// Publishes a chunk of jobs with confirms, then marks their rows published. Returns how
    /// many.
    async fn publish(&self, chunk: Chunk) -> Result<usize, FanOutError> {
        if chunk.ids.is_empty() {
            return Ok(0);
        }
        let fanout = self.fanout;
        let exchange = fanout.names.send_exchange();
        let messages: Vec<Message> = chunk
            .jobs
            .iter()
            .zip(&chunk.ids)
            .map(|((channel, body), id)| {
                Message::new(&exchange, channel.as_str(), body)
                    .message_id(id.to_string())
                    .kind(JOB_KIND)
            })
            .collect();
        fanout.publisher.publish_batch(&messages).await?;
        store::mark_published(&fanout.pool, &chunk.ids).await?;
        for (channel, _) in &chunk.jobs {
            metrics::counter!("herald_router_jobs_published_total", "channel" => channel.as_str())
                .increment(1);
        }
        Ok(chunk.ids.len())
    }
}

/// Encoded send jobs on their way to the broker, with their delivery ids.
#[derive(Default)]
struct Chunk {
    jobs: Vec<(Channel, Vec<u8>)>,
    ids: Vec<Uuid>,
    bytes: usize,
}

impl Chunk {
    fn push(&mut self, channel: Channel, body: Vec<u8>, id: Uuid) {
        self.bytes += body.len();
        self.jobs.push((channel, body));
        self.ids.push(id);
    }
}

/// A user's deliveries (R2): the active addresses on the requested channels; with mode
/// `preferred` only those on the user's preferred channel when there are any. No address at
/// all is a failed delivery (`no_address`), so the producer learns it (R4 b).
fn plan_user(
    person: &UserRecipient,
    channels: Option<&[Channel]>,
    mode: Option<DeliveryMode>,
    locale: Option<&Locale>,
    body: &mut Body,
    out: &mut Vec<Planned>,
) {
    let mode = mode.unwrap_or(person.delivery_mode);
    let wanted = |channel: Channel| channels.is_none_or(|cs| cs.contains(&channel));
    let mut addresses: Vec<_> = person
        .addresses
        .iter()
        .filter(|a| wanted(a.channel()))
        .collect();
    if mode == DeliveryMode::Preferred
        && let Some(preferred) = person.preferred_channel
        && addresses.iter().any(|a| a.channel() == preferred)
    {
        addresses.retain(|a| a.channel() == preferred);
    }
    if addresses.is_empty() {
        let why = if person.addresses.is_empty() {
            format!("user {} has no active address", person.external_id)
        } else {
            format!(
                "user {} has no active address on the requested channels",
                person.external_id
            )
        };
        out.push(Planned {
            row: NewDelivery {
                id: Uuid::now_v7(),
                user_id: Some(person.id),
                address_id: None,
                channel: None,
                address: None,
                failure: Some(failure_row(&Failure::permanent("no_address", why))),
            },
            job: None,
        });
        return;
    }
    for address in addresses {
        out.push(plan_address(
            Some(person.id),
            &person.external_id,
            Some(address.id),
            address.kind,
            &address.value,
            |channel| match body {
                Body::Direct(content) => Ok(content.clone()),
                Body::Templates(t) => t.render(channel, locale, person.locale.as_deref()),
            },
        ));
    }
}

/// One address's delivery: pending with its job, or failed when the stored address does not
/// parse or its content cannot be rendered.
fn plan_address(
    user_id: Option<Uuid>,
    external_id: &str,
    address_id: Option<Uuid>,
    kind: AddressKind,
    value: &str,
    content: impl FnOnce(Channel) -> Result<Arc<RenderedContent>, Failure>,
) -> Planned {
    let channel = kind.channel();
    let failed = |value: &str, failure: Failure| Planned {
        row: NewDelivery {
            id: Uuid::now_v7(),
            user_id,
            address_id,
            channel: Some(channel),
            address: Some(value.to_owned()),
            failure: Some(failure_row(&failure)),
        },
        job: None,
    };
    let to = match Address::from_kind(kind, value) {
        Ok(to) => to,
        Err(invalid) => {
            return failed(
                value,
                Failure::permanent("invalid_address", invalid.to_string()),
            );
        }
    };
    // Stored normalised, so a later pass computes the same key for the same address.
    let value = to.value();
    match content(channel) {
        Ok(content) => Planned {
            row: NewDelivery {
                id: Uuid::now_v7(),
                user_id,
                address_id,
                channel: Some(channel),
                address: Some(value),
                failure: None,
            },
            job: Some(PlannedJob {
                to,
                user_id: UserId::parse(external_id).ok(),
                content,
            }),
        },
        Err(failure) => failed(&value, failure),
    }
}

fn failure_row(failure: &Failure) -> store::DeliveryFailure {
    store::DeliveryFailure {
        class: failure.class,
        code: failure.code.clone(),
        message: failure.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_storage::fanout::ActiveAddress;

    fn person(
        mode: DeliveryMode,
        preferred: Option<Channel>,
        addresses: &[(AddressKind, &str)],
    ) -> UserRecipient {
        UserRecipient {
            id: Uuid::now_v7(),
            external_id: "u-1".into(),
            locale: None,
            preferred_channel: preferred,
            delivery_mode: mode,
            addresses: addresses
                .iter()
                .map(|(kind, value)| ActiveAddress {
                    id: Uuid::now_v7(),
                    kind: *kind,
                    value: value.to_string(),
                })
                .collect(),
        }
    }

    fn direct() -> Body {
        Body::Direct(Arc::new(RenderedContent {
            subject: None,
            text: "hi".into(),
            html: None,
        }))
    }

    fn plan(
        p: &UserRecipient,
        channels: Option<&[Channel]>,
        mode: Option<DeliveryMode>,
    ) -> Vec<Planned> {
        let mut out = Vec::new();
        plan_user(p, channels, mode, None, &mut direct(), &mut out);
        out
    }

    fn channels_of(planned: &[Planned]) -> Vec<Option<Channel>> {
        planned.iter().map(|p| p.row.channel).collect()
    }

    const THREE: [(AddressKind, &str); 3] = [
        (AddressKind::Email, "ann@example.org"),
        (AddressKind::Sms, "+41791234567"),
        (AddressKind::Telegram, "42"),
    ];

    #[test]
    fn mode_all_uses_every_active_address_on_the_requested_channels() {
        let p = person(DeliveryMode::All, Some(Channel::Sms), &THREE);
        assert_eq!(plan(&p, None, None).len(), 3);
        let only = plan(&p, Some(&[Channel::Email, Channel::Discord]), None);
        assert_eq!(channels_of(&only), [Some(Channel::Email)]);
    }

    #[test]
    fn mode_preferred_uses_the_preferred_channel_or_falls_back_to_all() {
        let p = person(DeliveryMode::Preferred, Some(Channel::Sms), &THREE);
        assert_eq!(channels_of(&plan(&p, None, None)), [Some(Channel::Sms)]);
        // The request's mode overrides the user's.
        assert_eq!(plan(&p, None, Some(DeliveryMode::All)).len(), 3);
        let elsewhere = person(DeliveryMode::Preferred, Some(Channel::Discord), &THREE);
        assert_eq!(plan(&elsewhere, None, None).len(), 3);
    }

    #[test]
    fn no_address_is_a_failed_delivery_not_silence() {
        let nobody = plan(&person(DeliveryMode::All, None, &[]), None, None);
        assert_eq!(nobody.len(), 1);
        let failure = nobody[0].row.failure.as_ref().unwrap();
        assert_eq!(
            (failure.class, failure.code.as_str()),
            (messaging_core::FailureClass::Permanent, "no_address")
        );
        assert!(nobody[0].row.channel.is_none() && nobody[0].job.is_none());
        let filtered = plan(
            &person(DeliveryMode::All, None, &THREE),
            Some(&[Channel::Xmpp]),
            None,
        );
        assert!(
            filtered[0]
                .row
                .failure
                .as_ref()
                .unwrap()
                .message
                .contains("requested channels")
        );
    }

    #[test]
    fn a_stored_address_that_does_not_parse_fails_with_invalid_address() {
        let p = person(
            DeliveryMode::All,
            None,
            &[
                (AddressKind::Sms, "not a number"),
                (AddressKind::XmppRoom, "room@muc.example.org"),
            ],
        );
        let planned = plan(&p, None, None);
        assert_eq!(
            planned[0].row.failure.as_ref().unwrap().code,
            "invalid_address"
        );
        let room = planned[1].job.as_ref().unwrap();
        assert!(matches!(room.to, Address::XmppRoom(_)));
    }
}
