//! Many small requests fanned out together (issue #16): one transaction writes their message
//! rows, takes their leases and writes their delivery rows; one publish with confirms sends
//! their jobs; one statement marks the jobs and one ends the fan-outs. A request alone takes
//! about eight round trips to the database; a group of 64 takes about ten in all.
//!
//! Only a request to named people with its text given ([`GroupedRequest::fits`]) goes here,
//! and only while it is new: its row is written here, or it was stored before the router saw
//! it and no pass has begun it (the API stores each message with its outbox row; the group
//! takes it over under its lease, as the lone path would). A request whose message was begun
//! already (a repeat, a redelivery after a crash), or whose lease another pass holds, is
//! answered [`Grouped::Alone`] and goes the usual way, alone ([`crate::ingress`]). So does every request of a group that fails
//! (the database or the broker refused): one bad request cannot fail its neighbours, each is
//! tried again on its own.
//!
//! Exactly one job per (message, address) still holds across crashes. The message rows,
//! their leases and their delivery rows are taken in one transaction on the group's
//! connection, so no other pass sees a message before its lease is held. A crash after the
//! commit leaves accepted messages with unpublished rows, which the redelivered requests find
//! and finish alone (the leases went with the connection); a crash after the publish but
//! before the mark sends those jobs again under the same delivery ids, which senders drop, as
//! for any fan-out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use herald_storage::deliveries::{self, DeliveryKey, MessageDeliveries, NewDelivery};
use herald_storage::messages::{self, NewRouterMessage};
use herald_storage::{StoreError, lease, users};
use messaging_core::ingress::{Content, NotifyRequest, Recipients};
use messaging_core::job::RenderedContent;
use messaging_core::values::TenantKey;
use messaging_core::{MessageSource, MessageStatus};
use serde_json::Value;
use sqlx::Acquire;
use uuid::Uuid;

use super::pages::Page;
use super::plan::{self, Choice, Planned, PlannedJob};
use super::{Body, Chunk, FanOut, FanOutError, JobHeader, PUBLISH_CHUNK_BYTES, Summary};

/// One request of a group, with what its message row holds.
pub struct GroupedRequest {
    pub tenant_id: Uuid,
    pub tenant: TenantKey,
    /// The id the message gets if it is new (see the ingress handler's `find_or_create`).
    pub message_id: Uuid,
    pub idempotency_key: Option<String>,
    pub source: MessageSource,
    /// What the producer sent, stored as the message's request.
    pub original: Value,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    pub notify: NotifyRequest,
}

impl GroupedRequest {
    /// The most people one grouped request may name: a larger audience is a fan-out of its
    /// own, paged and pipelined.
    pub const MAX_PEOPLE: usize = 100;

    /// Whether a request can go in a group: named people (not too many), its text given (no
    /// templates to look up), no subscription behind it.
    pub fn fits(notify: &NotifyRequest) -> bool {
        matches!(&notify.to, Recipients::Users(people) if people.len() <= Self::MAX_PEOPLE)
            && matches!(&notify.content, Content::Direct(_))
    }
}

/// What became of one request of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouped {
    /// Fanned out with the group. `outcome_sent`: the message was final already (its
    /// deliveries were reported before the group ended it) and the group published its outcome.
    Done {
        message_id: Uuid,
        summary: Summary,
        outcome_sent: bool,
    },
    /// Left to the usual way: its message exists already, its lease is held elsewhere, or the
    /// group failed.
    Alone,
}

/// One message of the group, as planned.
struct Member<'a> {
    /// The request's place in the group.
    index: usize,
    request: &'a GroupedRequest,
    rows: Vec<NewDelivery>,
    jobs: HashMap<DeliveryKey, PlannedJob>,
    summary: Summary,
}

impl FanOut {
    /// Fans out a group of requests that [`GroupedRequest::fits`]; one answer per request, in
    /// order. Never fails as a whole: what could not be done here is [`Grouped::Alone`].
    pub async fn grouped(&self, requests: Vec<GroupedRequest>) -> Vec<Grouped> {
        match self.try_grouped(&requests).await {
            // Only the very request whose row the group wrote is done: a copy of it in the
            // group, or another tenant's request that happens to carry the same id, goes
            // alone and finds its own way (a repeat, or an id of its own).
            Ok(mut done) => requests
                .iter()
                .enumerate()
                .map(|(i, r)| match done.remove(&i) {
                    Some(summary) => Grouped::Done {
                        message_id: r.message_id,
                        summary,
                        outcome_sent: false,
                    },
                    None => Grouped::Alone,
                })
                .collect(),
            Err(error) => {
                tracing::warn!(%error, requests = requests.len(), "a group of requests failed; each is tried alone");
                requests.iter().map(|_| Grouped::Alone).collect()
            }
        }
    }

    async fn try_grouped(
        &self,
        requests: &[GroupedRequest],
    ) -> Result<HashMap<usize, Summary>, FanOutError> {
        let started = Utc::now();
        let mut held = Held {
            conn: self.pool.acquire().await.map_err(StoreError::from)?,
            released: false,
        };
        let mut tx = held.conn.begin().await.map_err(StoreError::from)?;
        let rows: Vec<NewRouterMessage> = requests.iter().map(new_message).collect();
        // The rows written, with the tenant each was written for.
        let new: HashMap<Uuid, Uuid> = messages::insert_new(&mut tx, &rows)
            .await?
            .into_iter()
            .collect();
        // The rest may be messages stored before the router saw them (the API's): their
        // leases are tried too, and those not begun yet are taken over.
        let mut ids: Vec<Uuid> = new.keys().copied().collect();
        let stored: HashMap<Uuid, Uuid> = requests
            .iter()
            .filter(|r| !new.contains_key(&r.message_id))
            .map(|r| (r.message_id, r.tenant_id))
            .collect();
        ids.extend(stored.keys());
        let locked: HashSet<Uuid> = lease::try_lock_many(&mut tx, &ids)
            .await?
            .into_iter()
            .collect();
        let held_stored: Vec<(Uuid, Uuid)> = stored
            .iter()
            .filter(|(id, _)| locked.contains(id))
            .map(|(id, tenant)| (*id, *tenant))
            .collect();
        let adopted: HashMap<Uuid, Uuid> = if held_stored.is_empty() {
            HashMap::new()
        } else {
            messages::not_begun(&mut tx, &held_stored)
                .await?
                .into_iter()
                .filter_map(|id| stored.get(&id).map(|tenant| (id, *tenant)))
                .collect()
        };
        // A message id twice in one group (a request and its copy, or two tenants' requests
        // with one id): only the first request of the tenant whose row it is.
        let mut seen = HashSet::new();
        let mine: Vec<(usize, &GroupedRequest)> = requests
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                let owner = new.get(&r.message_id).or(adopted.get(&r.message_id));
                owner == Some(&r.tenant_id)
                    && locked.contains(&r.message_id)
                    && seen.insert(r.message_id)
            })
            .collect();
        let mut members = plan_all(&mut tx, &mine).await?;
        let batch: Vec<MessageDeliveries> = members
            .iter()
            .map(|m| MessageDeliveries {
                tenant_id: m.request.tenant_id,
                message_id: m.request.message_id,
                subscription_id: None,
                rows: &m.rows,
            })
            .collect();
        let (_, pending) = deliveries::insert_for_messages(&mut *tx, &batch).await?;
        drop(batch);
        tx.commit().await.map_err(StoreError::from)?;

        // Stage 4 and 5 for the whole group.
        let index: HashMap<Uuid, usize> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.request.message_id, i))
            .collect();
        let mut oversized = Vec::new();
        let mut chunk = Chunk::default();
        let mut published_of: HashMap<Uuid, usize> = HashMap::new();
        for (message_id, row) in pending {
            let Some(member) = index.get(&message_id).map(|i| &members[*i]) else {
                continue;
            };
            let delivery_id = row.id;
            let Some(job) = member.jobs.get(&row.key()) else {
                continue;
            };
            let header = JobHeader {
                tenant: &member.request.tenant,
                message_id,
                created_at: started,
                expires_at: member.request.notify.expires_at,
            };
            match header.encode(delivery_id, job) {
                Some((channel, body)) => {
                    chunk.push(channel, body, delivery_id);
                    *published_of.entry(message_id).or_default() += 1;
                    if chunk.bytes >= PUBLISH_CHUNK_BYTES {
                        self.publish(std::mem::take(&mut chunk)).await?;
                    }
                }
                None => {
                    oversized.push(delivery_id);
                    if let Some(i) = index.get(&message_id) {
                        members[*i].summary.failed += 1;
                    }
                }
            }
        }
        self.publish(chunk).await?;
        self.fail_unsendable(&oversized).await?;
        let ids: Vec<Uuid> = members.iter().map(|m| m.request.message_id).collect();
        let finished = messages::finish_fanouts(&mut *held.conn, &ids, started).await?;
        // Every lease taken, the members' and those of stored messages left alone.
        let locked: Vec<Uuid> = locked.into_iter().collect();
        lease::unlock_many(&mut held.conn, &locked).await?;
        held.release();

        let mut done = HashMap::new();
        for (message_id, status) in finished {
            let Some(member) = index.get(&message_id).map(|i| &mut members[*i]) else {
                continue;
            };
            member.summary.published = published_of.get(&message_id).copied().unwrap_or(0);
            member.summary.status = status;
            done.insert(member.index, member.summary.clone());
        }
        Ok(done)
    }
}

/// Stage 1 for every member: their people with their addresses in one query, then each
/// request's plan.
async fn plan_all<'a>(
    conn: &mut sqlx::PgConnection,
    requests: &[(usize, &'a GroupedRequest)],
) -> Result<Vec<Member<'a>>, FanOutError> {
    let mut named: Vec<(Uuid, &str)> = Vec::new();
    for (_, request) in requests {
        if let Recipients::Users(people) = &request.notify.to {
            named.extend(people.iter().map(|p| (request.tenant_id, p.as_str())));
        }
    }
    let people = users::with_active_addresses_in(conn, &named).await?;
    let by_name: HashMap<(Uuid, &str), &users::UserRecipient> = people
        .iter()
        .map(|(tenant_id, person)| ((*tenant_id, person.external_id.as_str()), person))
        .collect();
    let mut members = Vec::with_capacity(requests.len());
    for &(index, request) in requests {
        let notify = &request.notify;
        let (Recipients::Users(named), Content::Direct(direct)) = (&notify.to, &notify.content)
        else {
            continue;
        };
        let mut names: Vec<&str> = named.iter().map(|p| p.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let recipients: Vec<users::UserRecipient> = names
            .iter()
            .filter_map(|name| {
                by_name
                    .get(&(request.tenant_id, *name))
                    .map(|p| (*p).clone())
            })
            .collect();
        let choice = Choice {
            channels: notify.channels.as_deref(),
            mode: notify.mode,
            locale: None,
        };
        let mut body = Body::Direct(Arc::new(RenderedContent {
            subject: direct.subject.clone(),
            text: direct.body.clone(),
            html: direct.html.clone(),
        }));
        let planned = plan::page(Page::Users(recipients), &choice, &mut body);
        members.push(member(index, request, planned));
    }
    Ok(members)
}

fn member(index: usize, request: &GroupedRequest, planned: Vec<Planned>) -> Member<'_> {
    let mut rows = Vec::with_capacity(planned.len());
    let mut failed = 0;
    let mut jobs = HashMap::new();
    for p in planned {
        if let Some(failure) = &p.row.failure {
            failed += 1;
            metrics::counter!("herald_router_deliveries_failed_total", "code" => failure.code.clone())
                .increment(1);
        }
        if let (Some(channel), Some(address), Some(job)) =
            (p.row.channel, p.row.address.clone(), p.job)
        {
            let key = DeliveryKey {
                user_id: p.row.user_id,
                channel,
                address,
            };
            jobs.insert(key, job);
        }
        rows.push(p.row);
    }
    Member {
        index,
        request,
        summary: Summary {
            new_rows: rows.len() as u64,
            published: 0,
            failed,
            status: MessageStatus::Accepted,
        },
        rows,
        jobs,
    }
}

fn new_message(r: &GroupedRequest) -> NewRouterMessage<'_> {
    NewRouterMessage {
        id: r.message_id,
        tenant_id: r.tenant_id,
        idempotency_key: r.idempotency_key.as_deref(),
        source: r.source,
        subscription_id: None,
        request: &r.original,
        reply_to: r.reply_to.as_deref(),
        correlation_id: r.correlation_id.as_deref(),
    }
}

/// The group's connection, which holds its leases from the first transaction on. Dropped
/// before [`Held::release`] (an error, a cancelled task) it is closed rather than returned
/// to the pool, which frees the leases, as [`lease::FanoutLease`] does.
struct Held {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    released: bool,
}

impl Held {
    /// After the leases were given back: the connection may serve others again.
    fn release(mut self) {
        self.released = true;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.released {
            self.conn.close_on_drop();
        }
    }
}
