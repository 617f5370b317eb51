//! The recipients of a message, page by page: the same loop for people named in a request and
//! for a subscription's registrations, so a fan-out to 100,000 holds one page in memory.

use herald_storage::registrations::{self, RegistrationRecipient};
use herald_storage::users::{self, UserRecipient};
use herald_storage::{PgPool, StoreError};
use messaging_core::Channel;
use messaging_core::values::UserId;
use uuid::Uuid;

/// Who gets a message.
pub enum Audience {
    /// The tenant's ids for people (R1), each on their active addresses (R2).
    Users(Vec<UserId>),
    /// A subscription's enabled registrations (R12).
    Subscription(Uuid),
}

/// One page of recipients.
pub enum Page {
    Users(Vec<UserRecipient>),
    Registrations(Vec<RegistrationRecipient>),
}

impl Page {
    pub fn is_empty(&self) -> bool {
        match self {
            Page::Users(people) => people.is_empty(),
            Page::Registrations(registrations) => registrations.is_empty(),
        }
    }
}

/// Reads the pages of one audience in order. Each read is one query, so the driver can run
/// the next read while it writes the page before.
pub struct Pages {
    pool: PgPool,
    tenant_id: Uuid,
    size: usize,
    /// Only these channels' registrations (people are filtered at planning, where a person
    /// with no address on them gets a `no_address` delivery).
    channels: Option<Vec<Channel>>,
    cursor: Cursor,
}

enum Cursor {
    /// The named people not read yet, sorted and without repeats.
    Users(std::vec::IntoIter<String>),
    /// Registrations after this id.
    Registrations {
        subscription: Uuid,
        after: Uuid,
    },
    Done,
}

impl Pages {
    pub fn new(
        pool: PgPool,
        tenant_id: Uuid,
        audience: Audience,
        size: usize,
        channels: Option<Vec<Channel>>,
    ) -> Self {
        let cursor = match audience {
            Audience::Users(users) => {
                let mut ids: Vec<String> = users.into_iter().map(UserId::into_inner).collect();
                ids.sort();
                ids.dedup();
                Cursor::Users(ids.into_iter())
            }
            Audience::Subscription(subscription) => Cursor::Registrations {
                subscription,
                after: Uuid::nil(),
            },
        };
        Pages {
            pool,
            tenant_id,
            size: size.max(1),
            channels,
            cursor,
        }
    }

    /// The next page; an empty one when there are no more.
    pub async fn next(&mut self) -> Result<Page, StoreError> {
        match &mut self.cursor {
            Cursor::Users(ids) => {
                let page: Vec<String> = ids.by_ref().take(self.size).collect();
                if page.is_empty() {
                    self.cursor = Cursor::Done;
                    return Ok(Page::Users(Vec::new()));
                }
                let mut conn = self.pool.acquire().await?;
                let people = users::with_active_addresses(&mut conn, self.tenant_id, &page).await?;
                Ok(Page::Users(people))
            }
            Cursor::Registrations {
                subscription,
                after,
            } => {
                let page = registrations::enabled_page(
                    &self.pool,
                    self.tenant_id,
                    *subscription,
                    *after,
                    self.size as i64,
                    self.channels.as_deref(),
                )
                .await?;
                match page.last() {
                    // A short page is the last one: no query to learn that nothing follows.
                    Some(last) if page.len() == self.size => *after = last.id,
                    _ => self.cursor = Cursor::Done,
                }
                Ok(Page::Registrations(page))
            }
            Cursor::Done => Ok(Page::Users(Vec::new())),
        }
    }
}
