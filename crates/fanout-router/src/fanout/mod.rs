//! Fan-out: one accepted message becomes one delivery row and one send job per address.
//!
//! # Stages
//!
//! For each page of recipients ([`pages`], the same loop for people and for registrations):
//! 1. **plan** ([`plan`]): each recipient's addresses become planned deliveries, pending with
//!    a job or failed (no address, template error, invalid address);
//! 2. **write**: the page's delivery rows are inserted with `ON CONFLICT DO NOTHING` (unique
//!    per message and address);
//! 3. **match**: the rows still pending without a published job, with their stored ids, are
//!    matched to their planned jobs;
//! 4. **encode**: each job becomes bytes, gathered in chunks bounded by bytes; a job larger
//!    than a queue accepts fails its delivery;
//! 5. **publish**: a chunk goes to `{p}.send` (routing key: the channel) with confirms, then
//!    its rows are marked published.
//!
//! One driver ([`Pipeline`]) overlaps the round trips: while page N is written, page N+1 is
//! read and the last chunk of page N-1 is published and marked.
//!
//! The ingress message is acked only after the last chunk, so a crash anywhere redelivers it,
//! and the next pass publishes only what is still unmarked (R44). One pass at a time holds a
//! message (the ingress handler takes its [`herald_storage::lease::FanoutLease`] first), so
//! two copies of a request in work at once do not both publish; a job that still goes out
//! twice (a crash between the confirm and the mark) carries the same delivery id, which
//! senders drop.

mod grouped;
mod pages;
mod plan;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use herald_runtime::amqp::{Message, PublishError, Publisher};
use herald_storage::deliveries::{self, DeliveryKey, NewDelivery, UnpublishedDelivery};
use herald_storage::messages;
use herald_storage::{PgPool, StoreError};
use messaging_core::ingress::{Content, NotifyRequest};
use messaging_core::job::{RenderedContent, SendJob, SendJobBundle};
use messaging_core::topology::Names;
use messaging_core::values::TenantKey;
use messaging_core::{Channel, EnvelopeVersion, MessageStatus};
use uuid::Uuid;

pub use grouped::{Grouped, GroupedRequest};
pub use pages::Audience;
use pages::Pages;
use plan::{Choice, Planned, PlannedJob};

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
    /// An earlier pass wrote delivery rows (found under the lease): this pass must look for
    /// its unpublished rows, and sweep those no recipient claims any more.
    pub resumed: bool,
    /// The message's lease, asked before each chunk of jobs goes out: a pass whose lease
    /// was lost stops (issue #18).
    pub lease: Option<&'a herald_storage::lease::LeaseCheck>,
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
    /// The most jobs in one broker message (`router.bundle_jobs`); 1: every job alone.
    bundle_jobs: usize,
}

impl FanOut {
    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn new(pool: PgPool, publisher: Publisher, names: Names, batch_size: usize) -> Self {
        FanOut {
            pool,
            publisher,
            names,
            batch_size: batch_size.max(1),
            bundle_jobs: SendJobBundle::MAX_JOBS,
        }
    }

    /// At most `jobs` send jobs in one broker message (1: no bundles).
    pub fn with_bundles(mut self, jobs: usize) -> Self {
        self.bundle_jobs = jobs.clamp(1, SendJobBundle::MAX_JOBS);
        self
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub async fn run(&self, plan: Plan<'_>) -> Result<Summary, FanOutError> {
        let started = Utc::now();
        let Plan {
            tenant_id,
            tenant,
            message_id,
            subscription_id,
            request,
            audience,
            mut body,
            resumed,
            lease,
        } = plan;
        let choice = Choice {
            channels: request.channels.as_deref(),
            mode: request.mode,
            locale: match &request.content {
                Content::Template(t) => t.locale.as_ref(),
                Content::Direct(_) => None,
            },
        };
        let mut pages = Pages::new(
            self.pool.clone(),
            tenant_id,
            audience,
            self.batch_size,
            request.channels.clone(),
        );
        let mut pipeline = Pipeline {
            fanout: self,
            tenant_id,
            tenant,
            message_id,
            subscription_id,
            expires_at: request.expires_at,
            created_at: started,
            resumed,
            lease,
            in_flight: Chunk::default(),
            summary: Summary {
                new_rows: 0,
                published: 0,
                failed: 0,
                // Until the end of the fan-out says what it is now.
                status: MessageStatus::Accepted,
            },
        };
        let mut page = pages.next().await?;
        while !page.is_empty() {
            let planned = plan::page(page, &choice, &mut body);
            let (written, next) = tokio::join!(pipeline.write(planned), pages.next());
            written?;
            page = next?;
        }
        let mut summary = pipeline.finish().await?;
        // Finishing fails the rows no recipient claimed on a resumed pass: only while this
        // pass still holds the message.
        if let Some(lease) = lease {
            lease.still_held().await?;
        }
        let (status, abandoned) =
            messages::finish_fanout(&self.pool, message_id, started, resumed).await?;
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

/// Stages 2 to 5 for one message, and the chunk of jobs still to publish.
struct Pipeline<'a> {
    fanout: &'a FanOut,
    tenant_id: Uuid,
    tenant: &'a TenantKey,
    message_id: Uuid,
    subscription_id: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    resumed: bool,
    lease: Option<&'a herald_storage::lease::LeaseCheck>,
    /// The last chunk of the page before, published while this page is written.
    in_flight: Chunk,
    summary: Summary,
}

impl Pipeline<'_> {
    /// Writes a page's rows while the chunk of the page before is published, then matches and
    /// encodes this page's jobs; full chunks go out at once, the last one waits for the next
    /// page (or [`Pipeline::finish`]).
    async fn write(&mut self, planned: Vec<Planned>) -> Result<(), FanOutError> {
        let rows: Vec<NewDelivery> = planned.iter().map(|p| p.row.clone()).collect();
        for failure in rows.iter().filter_map(|r| r.failure.as_ref()) {
            metrics::counter!("herald_router_deliveries_failed_total", "code" => failure.code.clone())
                .increment(1);
        }
        self.summary.failed += rows.iter().filter(|r| r.failure.is_some()).count();
        let previous = std::mem::take(&mut self.in_flight);
        // Both run to the end even when one fails: a publish cut short after the broker took
        // the jobs would leave them unmarked, to go out again on the next pass.
        let (published, written) = tokio::join!(self.publish(previous), self.insert(&rows));
        let (published, (new_rows, new_pending)) = (published?, written?);
        self.summary.published += published;
        self.summary.new_rows += new_rows;

        let jobs = jobs_by_key(planned);
        if jobs.is_empty() {
            return Ok(());
        }
        let unpublished = self.unpublished(&jobs, new_pending).await?;
        self.encode(&jobs, unpublished).await
    }

    /// Publishes what is left; returns what the pass did.
    async fn finish(mut self) -> Result<Summary, FanOutError> {
        let last = std::mem::take(&mut self.in_flight);
        self.summary.published += self.publish(last).await?;
        Ok(self.summary)
    }

    /// Stage 2: the rows, in one statement.
    async fn insert(
        &self,
        rows: &[NewDelivery],
    ) -> Result<(u64, Vec<UnpublishedDelivery>), FanOutError> {
        if rows.is_empty() {
            return Ok((0, Vec::new()));
        }
        Ok(deliveries::insert_batch(
            &self.fanout.pool,
            self.tenant_id,
            self.message_id,
            self.subscription_id,
            rows,
        )
        .await?)
    }

    /// Stage 3: the rows whose jobs are still to publish. On a first pass those are exactly the
    /// new pending rows the insert returned; a resumed pass also finds rows an interrupted one
    /// wrote but did not publish, with their stored ids, so a job sent again keeps its
    /// delivery id and senders drop the repeat.
    async fn unpublished(
        &self,
        jobs: &HashMap<DeliveryKey, PlannedJob>,
        new_pending: Vec<UnpublishedDelivery>,
    ) -> Result<Vec<UnpublishedDelivery>, FanOutError> {
        if !self.resumed {
            return Ok(new_pending);
        }
        let keys: Vec<DeliveryKey> = jobs.keys().cloned().collect();
        Ok(deliveries::unpublished(&self.fanout.pool, self.message_id, &keys).await?)
    }

    /// Stage 4: jobs to bytes, in chunks of at most `PUBLISH_CHUNK_BYTES`: a page bounds the
    /// rows, this bounds the bytes (a page of 1,000 jobs near the 256 KiB queue limit would
    /// otherwise be a quarter of a gigabyte). A job no queue would take fails its delivery.
    async fn encode(
        &mut self,
        jobs: &HashMap<DeliveryKey, PlannedJob>,
        unpublished: Vec<UnpublishedDelivery>,
    ) -> Result<(), FanOutError> {
        let header = JobHeader {
            tenant: self.tenant,
            message_id: self.message_id,
            created_at: self.created_at,
            expires_at: self.expires_at,
        };
        let mut oversized = Vec::new();
        let mut chunk = Chunk::default();
        for row in unpublished {
            let delivery_id = row.id;
            let Some(job) = jobs.get(&row.key()) else {
                continue;
            };
            match header.encode(delivery_id, job) {
                Some((channel, body)) => {
                    chunk.push(channel, body, delivery_id);
                    if chunk.bytes >= PUBLISH_CHUNK_BYTES {
                        self.summary.published += self.publish(std::mem::take(&mut chunk)).await?;
                    }
                }
                None => oversized.push(delivery_id),
            }
        }
        self.in_flight = chunk;
        self.summary.failed += self.fanout.fail_unsendable(&oversized).await?;
        Ok(())
    }

    /// Stage 5, for [`Pipeline::write`]: [`FanOut::publish`].
    async fn publish(&self, chunk: Chunk) -> Result<usize, FanOutError> {
        if let Some(lease) = self.lease
            && !chunk.ids.is_empty()
        {
            lease.still_held().await?;
        }
        self.fanout.publish(chunk).await
    }
}

impl FanOut {
    /// Stage 5: a chunk with confirms, then its rows marked published. Returns how many.
    async fn publish(&self, chunk: Chunk) -> Result<usize, FanOutError> {
        if chunk.ids.is_empty() {
            return Ok(0);
        }
        let exchange = self.names.send_exchange();
        let outgoing = bundles(&chunk, self.bundle_jobs);
        let bundled: Vec<Vec<u8>> = outgoing
            .iter()
            .filter_map(|o| match o {
                Outgoing::One(_) => None,
                Outgoing::Bundle(_, indexes) => Some(SendJobBundle::encode(
                    indexes.iter().map(|&i| chunk.jobs[i].1.as_slice()),
                )),
            })
            .collect();
        let mut bundled = bundled.iter();
        let messages: Vec<Message> = outgoing
            .iter()
            .filter_map(|o| match o {
                Outgoing::One(index) => {
                    let (channel, body) = &chunk.jobs[*index];
                    Some(
                        Message::new(&exchange, channel.as_str(), body)
                            .message_id(chunk.ids[*index].to_string())
                            .kind(JOB_KIND),
                    )
                }
                Outgoing::Bundle(channel, _) => bundled.next().map(|body| {
                    Message::new(&exchange, channel.as_str(), body)
                        .message_id(Uuid::now_v7().to_string())
                        .kind(SendJobBundle::KIND)
                }),
            })
            .collect();
        self.publisher.publish_batch(&messages).await?;
        deliveries::mark_published(&self.pool, &chunk.ids).await?;
        for (channel, _) in &chunk.jobs {
            metrics::counter!("herald_router_jobs_published_total", "channel" => channel.as_str())
                .increment(1);
        }
        Ok(chunk.ids.len())
    }

    /// Fails the deliveries whose jobs no queue would take; returns how many.
    async fn fail_unsendable(&self, ids: &[Uuid]) -> Result<usize, FanOutError> {
        if ids.is_empty() {
            return Ok(0);
        }
        deliveries::fail_unsendable(
            &self.pool,
            ids,
            "oversized",
            &format!(
                "the rendered message is larger than the {} bytes a send queue accepts",
                messaging_core::MAX_MESSAGE_BYTES
            ),
        )
        .await?;
        Ok(ids.len())
    }
}

/// What every send job of one message carries.
struct JobHeader<'a> {
    tenant: &'a TenantKey,
    message_id: Uuid,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

impl JobHeader<'_> {
    /// Stage 4 for one job: its channel and bytes, or `None` when no send queue would take
    /// it (the sender would dead-letter it without an event, and the delivery would stay
    /// pending for ever), so the caller fails the delivery instead.
    fn encode(&self, delivery_id: Uuid, job: &PlannedJob) -> Option<(Channel, Vec<u8>)> {
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
            Ok(body) if body.len() > messaging_core::MAX_MESSAGE_BYTES => None,
            Ok(body) => Some((send.channel(), body)),
            Err(error) => {
                tracing::error!(%error, %delivery_id, "cannot encode a send job");
                None
            }
        }
    }
}

/// The planned jobs of a page, by the key their rows are unique on.
fn jobs_by_key(planned: Vec<Planned>) -> HashMap<DeliveryKey, PlannedJob> {
    planned
        .into_iter()
        .filter_map(|p| {
            let key = DeliveryKey {
                user_id: p.row.user_id,
                channel: p.row.channel?,
                address: p.row.address?,
            };
            Some((key, p.job?))
        })
        .collect()
}

/// One broker message of a chunk: a job alone, or a bundle of one channel's jobs (indexes
/// into the chunk).
#[derive(Debug, PartialEq, Eq)]
enum Outgoing {
    One(usize),
    Bundle(Channel, Vec<usize>),
}

/// A chunk's jobs as broker messages: each channel's jobs in bundles of at most `max` and at
/// most a send queue's message size; a job left alone goes alone.
fn bundles(chunk: &Chunk, max: usize) -> Vec<Outgoing> {
    if max <= 1 {
        return (0..chunk.jobs.len()).map(Outgoing::One).collect();
    }
    let mut by_channel: Vec<(Channel, Vec<usize>)> = Vec::new();
    for (index, (channel, _)) in chunk.jobs.iter().enumerate() {
        match by_channel.iter_mut().find(|(c, _)| c == channel) {
            Some((_, indexes)) => indexes.push(index),
            None => by_channel.push((*channel, vec![index])),
        }
    }
    let mut out = Vec::new();
    let mut close = |channel: Channel, bundle: &mut Vec<usize>| match bundle.len() {
        0 => {}
        1 => out.push(Outgoing::One(bundle[0])),
        _ => out.push(Outgoing::Bundle(channel, std::mem::take(bundle))),
    };
    for (channel, indexes) in by_channel {
        let mut bundle = Vec::new();
        let mut bytes = SendJobBundle::FRAME_BYTES;
        for index in indexes {
            let size = chunk.jobs[index].1.len() + SendJobBundle::ITEM_OVERHEAD;
            if bundle.len() >= max || bytes + size > messaging_core::MAX_MESSAGE_BYTES {
                close(channel, &mut bundle);
                bytes = SendJobBundle::FRAME_BYTES;
            }
            bundle.push(index);
            bytes += size;
        }
        close(channel, &mut bundle);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(jobs: &[(Channel, usize)]) -> Chunk {
        let mut chunk = Chunk::default();
        for (i, (channel, size)) in jobs.iter().enumerate() {
            chunk.push(*channel, vec![b'x'; *size], Uuid::from_u128(i as u128));
        }
        chunk
    }

    #[test]
    fn each_channels_jobs_go_in_bundles_and_a_job_left_alone_goes_alone() {
        use Channel::{Email, Sms, Telegram};
        let c = chunk(&[
            (Sms, 10),
            (Email, 10),
            (Sms, 10),
            (Telegram, 10),
            (Sms, 10),
            (Email, 10),
            (Sms, 10),
            (Sms, 10),
        ]);
        assert_eq!(
            bundles(&c, 3),
            vec![
                Outgoing::Bundle(Sms, vec![0, 2, 4]),
                Outgoing::Bundle(Sms, vec![6, 7]),
                Outgoing::Bundle(Email, vec![1, 5]),
                Outgoing::One(3),
            ]
        );
        assert_eq!(
            bundles(&c, 1),
            (0..8).map(Outgoing::One).collect::<Vec<_>>(),
            "one message per job, in order, without bundles"
        );
        let c = chunk(&[(Sms, 10), (Sms, 10), (Sms, 10), (Sms, 10), (Sms, 10)]);
        assert_eq!(
            bundles(&c, 2),
            vec![
                Outgoing::Bundle(Sms, vec![0, 1]),
                Outgoing::Bundle(Sms, vec![2, 3]),
                Outgoing::One(4),
            ]
        );
    }

    #[test]
    fn a_bundle_stays_within_a_send_queues_message_size() {
        let big = messaging_core::MAX_MESSAGE_BYTES / 3;
        let c = chunk(&[(Channel::Sms, big); 7]);
        let out = bundles(&c, 100);
        assert_eq!(
            out,
            vec![
                Outgoing::Bundle(Channel::Sms, vec![0, 1]),
                Outgoing::Bundle(Channel::Sms, vec![2, 3]),
                Outgoing::Bundle(Channel::Sms, vec![4, 5]),
                Outgoing::One(6),
            ]
        );
    }
}
